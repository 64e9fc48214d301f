/*
 * syscalls: tight system-call loops that measure what ckrun's LD_PRELOAD
 * agent costs a running program (examples/bench.rs runs them bare and
 * under ckrun and compares).
 *
 *   syscalls getppid N   N x (getppid() + write(fd of /dev/null, 1 byte))
 *   syscalls open N      N x (open("/etc/hostname") + close())
 *   syscalls poll0 N     N x poll() of /dev/null, timeout 0
 *   syscalls pollt N     N x poll() of /dev/null, timeout 1 s (ready at
 *                        once: the agent's wrapper notes a deadline)
 *
 * It prints the loop's elapsed time in nanoseconds (CLOCK_MONOTONIC) as
 * "ns ELAPSED", so that neither process start-up nor ckrun's launch is
 * counted: only calls the agent may interpose on. The calls go through
 * the C library's wrappers, the way real programs make them.
 */
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(int argc, char **argv)
{
    long n = argc == 3 ? atol(argv[2]) : 0;
    const char *mode = argc == 3 ? argv[1] : "";
    int polling = strcmp(mode, "poll0") == 0 || strcmp(mode, "pollt") == 0;
    if (n <= 0 || (strcmp(mode, "getppid") != 0 && strcmp(mode, "open") != 0 && !polling)) {
        fprintf(stderr, "usage: syscalls getppid|open|poll0|pollt N\n");
        return 2;
    }
    /* Keeps the compiler from dropping or merging calls. */
    volatile long sink = 0;
    long long start, elapsed;
    if (strcmp(argv[1], "getppid") == 0) {
        int fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
        if (fd < 0) {
            perror("syscalls: /dev/null");
            return 1;
        }
        start = now_ns();
        for (long i = 0; i < n; i++) {
            sink += getppid();
            sink += write(fd, "x", 1);
        }
        elapsed = now_ns() - start;
        close(fd);
    } else if (polling) {
        struct pollfd p = {.fd = open("/dev/null", O_RDONLY | O_CLOEXEC), .events = POLLIN};
        int timeout = strcmp(mode, "pollt") == 0 ? 1000 : 0;
        if (p.fd < 0) {
            perror("syscalls: /dev/null");
            return 1;
        }
        start = now_ns();
        for (long i = 0; i < n; i++)
            sink += poll(&p, 1, timeout);
        elapsed = now_ns() - start;
        close(p.fd);
    } else {
        start = now_ns();
        for (long i = 0; i < n; i++) {
            int fd = open("/etc/hostname", O_RDONLY | O_CLOEXEC);
            if (fd < 0) {
                perror("syscalls: /etc/hostname");
                return 1;
            }
            sink += fd;
            close(fd);
        }
        elapsed = now_ns() - start;
    }
    printf("ns %lld\n", elapsed);
    return 0;
}
