/*
 * fd_devices: character devices held open, for ckrun's end-to-end tests
 * (issue 4): /dev/null (O_RDWR), /dev/zero (O_RDONLY), /dev/urandom
 * (O_RDONLY | O_CLOEXEC) and /dev/full (O_WRONLY), at fixed fd numbers
 * (dup2 to 40..43).
 *
 * Each tick uses every one of them and checks that it still behaves as
 * that device does (null: writes vanish, reads give end of file; zero:
 * zeros; urandom: full reads, not all zero; full: ENOSPC), that fstat
 * still says character device with the right st_rdev (1:3, 1:5, 1:9, 1:7),
 * that F_GETFL and FD_CLOEXEC are unchanged and that /proc/self/fd still
 * names the device. Random bytes are never printed.
 *
 * Output: "tick N ..." per tick (flushed), then "done ...". 20 ms pacing,
 * 200 ticks: about 4 s. Any failed check prints "FAIL tick N: ..." and
 * exits 1. Exit code 0.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#define TICKS 200
#define PACE_NS 20000000L /* 20 ms */

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
    fprintf(stderr, "fd_devices: FAIL tick %d: %s\n", tick, msg);
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

struct dev {
    const char *path;
    int flags;
    int fd;    /* fixed number */
    int major, minor;
    int fl;    /* F_GETFL as the kernel reported it at open */
};

static struct dev devs[] = {
    {"/dev/null", O_RDWR, 40, 1, 3, 0},
    {"/dev/zero", O_RDONLY, 41, 1, 5, 0},
    {"/dev/urandom", O_RDONLY | O_CLOEXEC, 42, 1, 9, 0},
    {"/dev/full", O_WRONLY, 43, 1, 7, 0},
};
#define NDEVS (sizeof devs / sizeof devs[0])

static void check_dev(const struct dev *d)
{
    struct stat st;
    if (fstat(d->fd, &st) != 0)
        fail("fstat %s (fd %d): %s", d->path, d->fd, strerror(errno));
    if (!S_ISCHR(st.st_mode) || major(st.st_rdev) != (unsigned)d->major || minor(st.st_rdev) != (unsigned)d->minor)
        fail("%s (fd %d): mode %o rdev %u:%u, expected a character device %d:%d", d->path, d->fd,
             (unsigned)st.st_mode, major(st.st_rdev), minor(st.st_rdev), d->major, d->minor);
    int fl = fcntl(d->fd, F_GETFL);
    if (fl != d->fl)
        fail("%s (fd %d): F_GETFL %#o, expected %#o", d->path, d->fd, fl, d->fl);
    int cloexec = (d->flags & O_CLOEXEC) != 0;
    int fdfl = fcntl(d->fd, F_GETFD);
    if (fdfl < 0 || ((fdfl & FD_CLOEXEC) != 0) != cloexec)
        fail("%s (fd %d): F_GETFD %d, expected FD_CLOEXEC %d", d->path, d->fd, fdfl, cloexec);
    char path[64], link[256];
    snprintf(path, sizeof path, "/proc/self/fd/%d", d->fd);
    ssize_t n = readlink(path, link, sizeof link - 1);
    if (n < 0)
        fail("readlink %s: %s", path, strerror(errno));
    link[n] = 0;
    if (strcmp(link, d->path) != 0)
        fail("fd %d links to %s, expected %s", d->fd, link, d->path);
}

int main(void)
{
    for (size_t i = 0; i < NDEVS; i++) {
        int fd = open(devs[i].path, devs[i].flags);
        if (fd < 0)
            fail("open %s: %s", devs[i].path, strerror(errno));
        int flags = devs[i].flags & O_CLOEXEC;
        if (dup3(fd, devs[i].fd, flags) != devs[i].fd)
            fail("dup3 %s to %d: %s", devs[i].path, devs[i].fd, strerror(errno));
        close(fd);
        devs[i].fl = fcntl(devs[i].fd, F_GETFL);
        if ((devs[i].fl & O_ACCMODE) != (devs[i].flags & O_ACCMODE))
            fail("%s: F_GETFL %#o at open", devs[i].path, devs[i].fl);
    }
    const int null_fd = devs[0].fd, zero_fd = devs[1].fd, rnd_fd = devs[2].fd, full_fd = devs[3].fd;

    uint64_t nulled = 0, zeros = 0, random_bytes = 0;
    for (tick = 1; tick <= TICKS; tick++) {
        unsigned char buf[256];
        size_t len = 16 + (size_t)(tick * 7) % 200;
        memset(buf, 0xa5, sizeof buf);

        ssize_t n = write(null_fd, buf, len);
        if (n != (ssize_t)len)
            fail("write /dev/null: %zd (%s)", n, n < 0 ? strerror(errno) : "short");
        nulled += (uint64_t)n;
        n = read(null_fd, buf, len);
        if (n != 0)
            fail("read /dev/null: %zd (%s), expected 0", n, n < 0 ? strerror(errno) : "data");

        n = read(zero_fd, buf, len);
        if (n != (ssize_t)len)
            fail("read /dev/zero: %zd (%s)", n, n < 0 ? strerror(errno) : "short");
        for (size_t i = 0; i < len; i++)
            if (buf[i] != 0)
                fail("/dev/zero gave a non-zero byte");
        zeros += (uint64_t)n;
        if (write(zero_fd, buf, 1) != -1 || errno != EBADF)
            fail("write to O_RDONLY /dev/zero did not fail with EBADF");

        memset(buf, 0, sizeof buf);
        n = read(rnd_fd, buf, 64);
        if (n != 64)
            fail("read /dev/urandom: %zd (%s)", n, n < 0 ? strerror(errno) : "short");
        int nonzero = 0;
        for (size_t i = 0; i < 64; i++)
            nonzero |= buf[i];
        if (!nonzero)
            fail("/dev/urandom gave 64 zero bytes");
        random_bytes += (uint64_t)n;

        n = write(full_fd, "x", 1);
        if (n != -1 || errno != ENOSPC)
            fail("write /dev/full: %zd (%s), expected ENOSPC", n, n < 0 ? strerror(errno) : "written");

        for (size_t i = 0; i < NDEVS; i++)
            check_dev(&devs[i]);

        printf("tick %d null %" PRIu64 " zero %" PRIu64 " urandom %" PRIu64 "\n", tick, nulled, zeros, random_bytes);
        fflush(stdout);
        pace();
    }
    tick = 0;
    printf("done null %" PRIu64 " zero %" PRIu64 " urandom %" PRIu64 "\n", nulled, zeros, random_bytes);
    fflush(stdout);
    return 0;
}
