/*
 * fd_inotify: a program holding an fd that ckrun cannot restore (an
 * inotify instance, at the fixed number 42), next to ordinary ones, for
 * ckrun's end-to-end tests (issue 4).
 *
 * ckrun must say at the checkpoint that fd 42 (inotify) will not come back,
 * and the restored program must find fd 42 closed: fcntl(42, F_GETFD) fails
 * with EBADF. The program notices it by itself: each tick it looks at fd
 * 42; while it is open it must be the inotify instance (anything else there
 * is a FAIL), and the first time it is closed the program says so on
 * stderr ("fd_inotify: fd 42 is closed (EBADF) at tick N"), once. Its
 * stdout never depends on it, so a restored run prints exactly what a bare
 * run does.
 *
 * Alongside: a watch on the cwd for IN_CREATE, events drained each tick
 * while fd 42 is open (never printed), and an ordinary file log.dat
 * appended each tick.
 *
 * Output: "tick N ..." per tick (flushed), then "done ...". 20 ms pacing,
 * 200 ticks: about 4 s. Exit code 0.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <time.h>
#include <unistd.h>

#define TICKS 200
#define PACE_NS 20000000L /* 20 ms */
#define INOTIFY_FD 42

static int tick;

static void fail(const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    printf("FAIL tick %d: %s\n", tick, msg);
    fflush(stdout);
    fprintf(stderr, "fd_inotify: FAIL tick %d: %s\n", tick, msg);
    exit(1);
}

static void pace(void)
{
    struct timespec req = {0, PACE_NS}, rem;
    while (nanosleep(&req, &rem) == -1) {
        if (errno != EINTR)
            fail("nanosleep: %s", strerror(errno));
        req = rem;
    }
}

int main(void)
{
    int fd = inotify_init1(IN_NONBLOCK);
    if (fd < 0)
        fail("inotify_init1: %s", strerror(errno));
    if (dup2(fd, INOTIFY_FD) != INOTIFY_FD)
        fail("dup2: %s", strerror(errno));
    close(fd);
    if (inotify_add_watch(INOTIFY_FD, ".", IN_CREATE) < 0)
        fail("inotify_add_watch: %s", strerror(errno));
    int log = open("log.dat", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (log < 0)
        fail("open log.dat: %s", strerror(errno));

    int closed_at = 0;
    off_t logged = 0;
    for (tick = 1; tick <= TICKS; tick++) {
        if (!closed_at) {
            if (fcntl(INOTIFY_FD, F_GETFD) == -1) {
                if (errno != EBADF)
                    fail("fcntl(%d, F_GETFD): %s", INOTIFY_FD, strerror(errno));
                closed_at = tick;
                fprintf(stderr, "fd_inotify: fd %d is closed (EBADF) at tick %d\n", INOTIFY_FD, tick);
            } else {
                char link[256];
                ssize_t n = readlink("/proc/self/fd/42", link, sizeof link - 1);
                if (n < 0)
                    fail("readlink /proc/self/fd/42: %s", strerror(errno));
                link[n] = 0;
                if (strcmp(link, "anon_inode:inotify") != 0)
                    fail("fd %d is %s, expected the inotify instance or nothing", INOTIFY_FD, link);
                char events[4096];
                while (read(INOTIFY_FD, events, sizeof events) > 0)
                    ;
            }
        } else if (fcntl(INOTIFY_FD, F_GETFD) != -1) {
            fail("fd %d was closed at tick %d, is open again", INOTIFY_FD, closed_at);
        }
        char rec[32];
        int len = snprintf(rec, sizeof rec, "%d\n", tick);
        if (write(log, rec, (size_t)len) != len)
            fail("write log.dat: %s", strerror(errno));
        logged += len;
        /* Not compared with the size: after a restart the file may still
         * hold what the killed run wrote past the checkpoint (the same
         * bytes, about to be written again). */
        if (lseek(log, 0, SEEK_CUR) != logged)
            fail("log.dat: offset %lld, expected %lld", (long long)lseek(log, 0, SEEK_CUR), (long long)logged);
        printf("tick %d log %lld\n", tick, (long long)logged);
        fflush(stdout);
        pace();
    }
    tick = 0;
    printf("done\n");
    fflush(stdout);
    return 0;
}
