/*
 * tree_launcher: a launcher that starts a worker and exits, for ckrun's
 * end-to-end tests (issue 10: the tree is the job). The process ckrun
 * starts forks a worker and ends (exit status 3) as soon as the worker has
 * done 5 ticks; the worker, re-parented to ckrun, goes on for TICKS ticks
 * and prints "tick N <value>" each (flushed), then "done <value>", and
 * exits 0. ckrun must stay, checkpoint and restart the worker, and exit
 * with the launcher's status (3) once the worker is gone too.
 *
 * Usage: tree_launcher [TICKS]   (default 120); 20 ms pacing.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    int ticks = argc > 1 ? atoi(argv[1]) : 120;
    int p[2];
    if (pipe(p) != 0)
        return 1;
    pid_t w = fork();
    if (w < 0)
        return 1;
    if (w > 0) {
        char b;
        close(p[1]);
        /* The launcher's work is done once the worker is under way. */
        if (read(p[0], &b, 1) != 1)
            return 1;
        return 3;
    }
    close(p[0]);
    uint64_t v = 0x243f6a8885a308d3ull;
    struct timespec pace = {0, 20000000};
    for (int t = 1; t <= ticks; t++) {
        v ^= v << 13;
        v ^= v >> 7;
        v ^= v << 17;
        printf("tick %d %016llx\n", t, (unsigned long long)v);
        fflush(stdout);
        if (t == 5) {
            if (write(p[1], "x", 1) != 1)
                return 1;
            close(p[1]);
        }
        nanosleep(&pace, NULL);
    }
    printf("done %016llx\n", (unsigned long long)v);
    return 0;
}
