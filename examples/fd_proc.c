/*
 * fd_proc: files of /proc kept open, for ckrun's end-to-end tests (issue
 * 11: /proc/self files reopen for the restored process).
 *
 * At the start the program opens /proc/self/status, /proc/self/maps,
 * /proc/self/fd (a directory) and /proc/meminfo, and keeps them open.
 * Each tick it reads each of them again from the start (pread, or lseek +
 * getdents for the directory) and checks that they describe *this*
 * process as it is now: status says "Pid:" getpid() and its name;
 * maps has a line covering a variable of the program (and the address
 * just malloc'ed this tick); fd lists the four fds; meminfo has MemTotal.
 * It also checks where /proc/self/fd/N of each one links to:
 * "/proc/<getpid()>/status" and so on. A second status fd, read one line
 * every 40 ticks, checks that the offset comes back too.
 *
 * Output: "tick N" per tick (flushed), then "done". 20 ms pacing, 200
 * ticks: about 4 s. Any failed check prints "FAIL tick N: ..." and exits 1.
 *
 * Usage: fd_proc
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define TICKS 200

static int tick;
static volatile uint64_t marker = 42;

static void fail(const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    printf("FAIL tick %d: %s\n", tick, msg);
    fflush(stdout);
    fprintf(stderr, "fd_proc: FAIL tick %d: %s\n", tick, msg);
    exit(1);
}

static void pace(void)
{
    struct timespec req = {0, 20000000L}, rem;
    while (nanosleep(&req, &rem) == -1) {
        if (errno != EINTR)
            fail("nanosleep: %s", strerror(errno));
        req = rem;
    }
}

static int must_open(const char *path, int flags)
{
    int fd = open(path, flags);
    if (fd < 0)
        fail("open %s: %s", path, strerror(errno));
    return fd;
}

/* The whole file, from offset 0, into a static buffer. */
static char *slurp(int fd, const char *what)
{
    static char buf[1 << 20];
    size_t have = 0;
    for (;;) {
        ssize_t n = pread(fd, buf + have, sizeof buf - 1 - have, (off_t)have);
        if (n < 0)
            fail("pread %s: %s", what, strerror(errno));
        if (n == 0 || have + (size_t)n >= sizeof buf - 1) {
            have += (size_t)n;
            break;
        }
        have += (size_t)n;
    }
    buf[have] = 0;
    return buf;
}

static int covers(const char *maps, uintptr_t addr)
{
    const char *line = maps;
    while (*line) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx", &lo, &hi) == 2 && addr >= lo && addr < hi)
            return 1;
        const char *nl = strchr(line, '\n');
        if (!nl)
            break;
        line = nl + 1;
    }
    return 0;
}

static void check_link(int fd, const char *rest)
{
    char path[64], link[256], want[256];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, link, sizeof link - 1);
    if (n < 0)
        fail("readlink %s: %s", path, strerror(errno));
    link[n] = 0;
    if (rest[0] == '/')
        snprintf(want, sizeof want, "/proc%s", rest);
    else
        snprintf(want, sizeof want, "/proc/%d/%s", getpid(), rest);
    if (strcmp(link, want) != 0)
        fail("fd %d links to %s, expected %s", fd, link, want);
}

static int lists(int dirfd, int want)
{
    char buf[8192];
    if (lseek(dirfd, 0, SEEK_SET) != 0)
        fail("lseek /proc/self/fd: %s", strerror(errno));
    for (;;) {
        long n = syscall(SYS_getdents64, dirfd, buf, sizeof buf);
        if (n < 0)
            fail("getdents /proc/self/fd: %s", strerror(errno));
        if (n == 0)
            return 0;
        for (long off = 0; off < n;) {
            struct dirent64 *d = (struct dirent64 *)(buf + off);
            if (atoi(d->d_name) == want && d->d_name[0] != '.')
                return 1;
            off += d->d_reclen;
        }
    }
}

int main(void)
{
    int status = must_open("/proc/self/status", O_RDONLY);
    int maps = must_open("/proc/self/maps", O_RDONLY);
    int fds = must_open("/proc/self/fd", O_RDONLY | O_DIRECTORY);
    int meminfo = must_open("/proc/meminfo", O_RDONLY);
    int seq = must_open("/proc/self/status", O_RDONLY);
    FILE *seqf = fdopen(seq, "r");
    if (!seqf)
        fail("fdopen: %s", strerror(errno));
    setvbuf(seqf, NULL, _IONBF, 0);

    for (tick = 1; tick <= TICKS; tick++) {
        char want[64];
        char *s = slurp(status, "status");
        snprintf(want, sizeof want, "\nPid:\t%d\n", getpid());
        if (!strstr(s, want))
            fail("/proc/self/status does not say %s", want + 1);
        if (strncmp(s, "Name:\tfd_proc\n", 14) != 0)
            fail("/proc/self/status names another program: %.40s", s);

        void *fresh = malloc(4096 + (size_t)tick * 64);
        s = slurp(maps, "maps");
        if (!covers(s, (uintptr_t)&marker) || !covers(s, (uintptr_t)fresh))
            fail("/proc/self/maps does not show this process's memory");
        free(fresh);
        marker++;

        for (int i = 0; i < 4; i++) {
            int f = (int[]){status, maps, fds, meminfo}[i];
            if (!lists(fds, f))
                fail("/proc/self/fd does not list fd %d", f);
        }
        s = slurp(meminfo, "meminfo");
        if (strncmp(s, "MemTotal:", 9) != 0)
            fail("/proc/meminfo starts with %.20s", s);

        check_link(status, "status");
        check_link(maps, "maps");
        check_link(fds, "fd");
        check_link(meminfo, "/meminfo");

        /* Sequential: every 40 ticks the next line of the status file
         * (Name, Umask, State, Tgid: lines whose order and keys do not
         * change), through an unbuffered stream, so the fd's offset is
         * just past the lines read: checkpoints in between must keep it. */
        if (tick % 40 == 0 && tick / 40 <= 4) {
            int k = tick / 40 - 1;
            char line[256];
            if (!fgets(line, sizeof line, seqf))
                fail("sequential read of status: end of file at line %d", k + 1);
            static const char *const keys[] = {"Name:", "Umask:", "State:", "Tgid:"};
            if (strncmp(line, keys[k], strlen(keys[k])) != 0)
                fail("sequential read of status: line %d is \"%.30s\"", k + 1, line);
        }
        printf("tick %d\n", tick);
        fflush(stdout);
        pace();
    }
    printf("done\n");
    return 0;
}
