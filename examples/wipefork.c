/*
 * wipefork: MADV_WIPEONFORK memory across checkpoints (tests/incremental.rs).
 *
 * It maps 4 pages, marks them MADV_WIPEONFORK, and for each tick T
 * (1..TICKS) prints "tick T seen A B C D" (the first byte of each page as
 * it finds it), then writes T into page T % 4 only, and sleeps PACE_MS.
 * A fork's child finds such memory zeroed, and so does a restart (ckrun
 * saves it as a snapshot, a fork, reads it): the first line after a
 * restart must read "seen 0 0 0 0", never some pages zeroed and others
 * not (an incremental image takes the unwritten pages from its base).
 *
 * Usage: wipefork TICKS [PACE_MS]
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

#define PAGE 4096u

int main(int argc, char **argv)
{
    if (argc < 2 || atol(argv[1]) <= 0) {
        fprintf(stderr, "usage: wipefork TICKS [PACE_MS]\n");
        return 2;
    }
    long ticks = atol(argv[1]);
    long pace_ms = argc > 2 ? atol(argv[2]) : 30;
    unsigned char *m = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED || madvise(m, 4 * PAGE, MADV_WIPEONFORK) != 0) {
        perror("wipefork: mmap/madvise");
        return 1;
    }
    for (long t = 1; t <= ticks; t++) {
        printf("tick %ld seen %3u %3u %3u %3u\n", t, m[0], m[PAGE], m[2 * PAGE], m[3 * PAGE]);
        fflush(stdout);
        m[(t % 4) * PAGE] = (unsigned char)t;
        struct timespec ts = { pace_ms / 1000, (pace_ms % 1000) * 1000000L };
        nanosleep(&ts, NULL);
    }
    printf("done\n");
    return 0;
}
