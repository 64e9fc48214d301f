/*
 * fd_files: regular files, directories and locks that must come back after
 * a restart exactly as they were, for ckrun's end-to-end tests (issue 4).
 *
 * Every tick it uses each fd (so offsets move) and checks, through the
 * kernel's own view, that each one is still what it opened: same file
 * (st_dev/st_ino), same access mode and status flags (F_GETFL), same
 * close-on-exec flag (F_GETFD), offset where the program's own arithmetic
 * says it is, and sharing of open file descriptions intact. Any mismatch
 * prints "FAIL tick N: ..." (stdout and stderr) and exits 1.
 *
 * Groups, selected by argv (default: all of them):
 *   basic   ro.dat O_RDONLY (read sequentially), wo.dat O_WRONLY, rw.dat
 *           O_RDWR, ro.dat again with O_CLOEXEC, sub/rel.dat opened by a
 *           relative path after chdir("sub") (and chdir back), and
 *           directory fds on "." and "sub" checked with fstatat().
 *           Sizes are never checked against the offsets: after a restart
 *           a file may still hold what the killed run wrote past the
 *           checkpoint (the same bytes, about to be written again).
 *   append  app.dat O_WRONLY | O_APPEND: each tick seeks to 0 and writes a
 *           record, which must land at the end; the size must be exactly
 *           what this run appended. After a kill, the records the killed
 *           run appended past the checkpoint are still in the file, so a
 *           restart must take the file back to its size at the checkpoint
 *           for the run to end as an uninterrupted one does.
 *   shared  shared.dat: fd a, b = dup(a), dup2(a, 77), dup3(a, 78,
 *           O_CLOEXEC) all share one offset, written in turn; a second,
 *           independent open of shared.dat keeps its own offset.
 *   locks   lock.dat: a POSIX write lock on [10,30) and read lock on
 *           [50,60) (fcntl F_SETLK); flock.dat: flock(LOCK_EX);
 *           flock_sh.dat: flock(LOCK_SH); ofd.dat: an OFD write lock.
 *           Checked each tick without forking: from separately opened
 *           probe fds (F_OFD_GETLK sees the process's POSIX locks as
 *           conflicts with their pid; flock(LOCK_NB) on a second open file
 *           description conflicts with the held flock), and in the "lock:"
 *           lines of /proc/self/fdinfo (POSIX locks with this pid, flock
 *           and OFD locks on the very open file description that set them;
 *           not /proc/locks: its listing shifts while other processes lock
 *           and unlock).
 *   inplace inplace.dat O_RDWR, 64 records: each tick rewrites one of them
 *           in place (pwrite at a slot that moves), after checking that
 *           the whole file still holds what this run wrote. After a kill,
 *           the records the killed run rewrote past the checkpoint are in
 *           the file (same size, other bytes): a restart must put the
 *           file's content back as it was at the checkpoint.
 *
 * Output: "tick N ..." per tick (flushed), then "done ...". 20 ms pacing,
 * 200 ticks: about 4 s. Exit code 0.
 *
 * Usage: fd_files [basic] [append] [shared] [locks] [inplace]
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
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define TICKS 200
#define PACE_NS 20000000L /* 20 ms */
#define REC 16            /* bytes per record */

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
    fprintf(stderr, "fd_files: FAIL tick %d: %s\n", tick, msg);
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

/* The record of tick t for file `tag`: 16 bytes that depend on both. */
static void record(char *buf, char tag, int t)
{
    snprintf(buf, REC + 1, "%c%05d:%08x\n", tag, t, (unsigned)(t * 2654435761u));
}

static void write_exact(int fd, const void *buf, size_t len, const char *what)
{
    ssize_t n = write(fd, buf, len);
    if (n != (ssize_t)len)
        fail("write %s: %zd of %zu (%s)", what, n, len, n < 0 ? strerror(errno) : "short");
}

static void read_exact(int fd, void *buf, size_t len, const char *what)
{
    ssize_t n = read(fd, buf, len);
    if (n != (ssize_t)len)
        fail("read %s: %zd of %zu (%s)", what, n, len, n < 0 ? strerror(errno) : "short");
}

static int must_open(const char *path, int flags)
{
    int fd = open(path, flags, 0644);
    if (fd < 0)
        fail("open %s: %s", path, strerror(errno));
    return fd;
}

/* What the program knows about one of its fds. */
struct known {
    const char *name;
    int fd;
    dev_t dev;
    ino_t ino;
    int fl;      /* F_GETFL as set at open (access mode + status flags) */
    int cloexec; /* expected FD_CLOEXEC */
};

static struct known remember(const char *name, int fd, int cloexec)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        fail("fstat %s: %s", name, strerror(errno));
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0)
        fail("F_GETFL %s: %s", name, strerror(errno));
    int fdfl = fcntl(fd, F_GETFD);
    if (((fdfl & FD_CLOEXEC) != 0) != cloexec)
        fail("%s: FD_CLOEXEC is %d at open, expected %d", name, fdfl & FD_CLOEXEC, cloexec);
    return (struct known){name, fd, st.st_dev, st.st_ino, fl, cloexec};
}

/* Same file, same flags, same close-on-exec; offset `off` unless -1. */
static void check_fd(const struct known *k, off_t off)
{
    struct stat st;
    if (fstat(k->fd, &st) != 0)
        fail("fstat %s (fd %d): %s", k->name, k->fd, strerror(errno));
    if (st.st_dev != k->dev || st.st_ino != k->ino)
        fail("%s (fd %d) is another file now: dev/ino %lx/%lu, was %lx/%lu", k->name, k->fd,
             (unsigned long)st.st_dev, (unsigned long)st.st_ino, (unsigned long)k->dev, (unsigned long)k->ino);
    int fl = fcntl(k->fd, F_GETFL);
    if (fl != k->fl)
        fail("%s (fd %d): F_GETFL %#o, expected %#o", k->name, k->fd, fl, k->fl);
    int fdfl = fcntl(k->fd, F_GETFD);
    if (fdfl < 0 || ((fdfl & FD_CLOEXEC) != 0) != k->cloexec)
        fail("%s (fd %d): F_GETFD %d, expected FD_CLOEXEC %d", k->name, k->fd, fdfl, k->cloexec);
    if (off >= 0) {
        off_t pos = lseek(k->fd, 0, SEEK_CUR);
        if (pos != off)
            fail("%s (fd %d): offset %lld, expected %lld", k->name, k->fd, (long long)pos, (long long)off);
    }
}

/* The fd refers to the file that `dirfd`/`name` names. */
static void check_at(int dirfd, const char *name, const struct known *k)
{
    struct stat st;
    if (fstatat(dirfd, name, &st, 0) != 0)
        fail("fstatat(%d, %s): %s", dirfd, name, strerror(errno));
    if (st.st_dev != k->dev || st.st_ino != k->ino)
        fail("%s: the file at %s is not the one fd %d holds", k->name, name, k->fd);
}

static uint64_t fnv(uint64_t h, const void *buf, size_t len)
{
    const unsigned char *p = buf;
    for (size_t i = 0; i < len; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

/* ------------------------------------------------------------------ basic */

static struct known ro, wo, rw, ce, rel, dot, subdir;

static void basic_setup(void)
{
    char buf[REC + 1];
    int fd = must_open("ro.dat", O_WRONLY | O_CREAT | O_TRUNC);
    for (int t = 1; t <= TICKS; t++) {
        record(buf, 'r', t);
        write_exact(fd, buf, REC, "ro.dat (setup)");
    }
    close(fd);
    ro = remember("ro.dat O_RDONLY", must_open("ro.dat", O_RDONLY), 0);
    wo = remember("wo.dat O_WRONLY", must_open("wo.dat", O_WRONLY | O_CREAT | O_TRUNC), 0);
    rw = remember("rw.dat O_RDWR", must_open("rw.dat", O_RDWR | O_CREAT | O_TRUNC), 0);
    ce = remember("ro.dat O_CLOEXEC", must_open("ro.dat", O_RDONLY | O_CLOEXEC), 1);
    if (mkdir("sub", 0755) != 0 && errno != EEXIST)
        fail("mkdir sub: %s", strerror(errno));
    if (chdir("sub") != 0)
        fail("chdir sub: %s", strerror(errno));
    rel = remember("sub/rel.dat (relative open)", must_open("rel.dat", O_RDWR | O_CREAT | O_TRUNC), 0);
    if (chdir("..") != 0)
        fail("chdir ..: %s", strerror(errno));
    dot = remember("directory .", must_open(".", O_RDONLY | O_DIRECTORY), 0);
    subdir = remember("directory sub", must_open("sub", O_RDONLY | O_DIRECTORY | O_CLOEXEC), 1);
    if ((ro.fl & O_ACCMODE) != O_RDONLY || (wo.fl & O_ACCMODE) != O_WRONLY || (rw.fl & O_ACCMODE) != O_RDWR)
        fail("unexpected flags at open");
}

static uint64_t basic_tick(int t)
{
    char buf[REC + 1], want[REC + 1], got[REC];
    uint64_t h = 1469598103934665603ull;

    /* ro.dat: read the next record; writing must stay impossible. */
    read_exact(ro.fd, got, REC, ro.name);
    record(want, 'r', t);
    if (memcmp(got, want, REC) != 0)
        fail("%s: read %.15s, expected %.15s", ro.name, got, want);
    if (write(ro.fd, "x", 1) != -1 || errno != EBADF)
        fail("%s: write did not fail with EBADF", ro.name);
    check_fd(&ro, (off_t)t * REC);
    h = fnv(h, got, REC);

    /* wo.dat: append a record through the offset; reading must fail. */
    record(buf, 'w', t);
    write_exact(wo.fd, buf, REC, wo.name);
    if (read(wo.fd, got, 1) != -1 || errno != EBADF)
        fail("%s: read did not fail with EBADF", wo.name);
    check_fd(&wo, (off_t)t * REC);

    /* rw.dat: write, step back, read it again: offset ends at t*REC. */
    record(buf, 'x', t);
    write_exact(rw.fd, buf, REC, rw.name);
    if (lseek(rw.fd, -REC, SEEK_CUR) != (off_t)(t - 1) * REC)
        fail("%s: lseek back: %s", rw.name, strerror(errno));
    read_exact(rw.fd, got, REC, rw.name);
    if (memcmp(got, buf, REC) != 0)
        fail("%s: read back %.15s, expected %.15s", rw.name, got, buf);
    if (t > 1) {
        record(want, 'x', t - 1);
        if (pread(rw.fd, got, REC, (off_t)(t - 2) * REC) != REC || memcmp(got, want, REC) != 0)
            fail("%s: record %d lost", rw.name, t - 1);
    }
    check_fd(&rw, (off_t)t * REC);
    h = fnv(h, got, REC);

    /* ro.dat again, close-on-exec, its own offset: one record every 2 ticks. */
    if (t % 2 == 0) {
        read_exact(ce.fd, got, REC, ce.name);
        record(want, 'r', t / 2);
        if (memcmp(got, want, REC) != 0)
            fail("%s: read %.15s, expected %.15s", ce.name, got, want);
        h = fnv(h, got, REC);
    }
    check_fd(&ce, (off_t)(t / 2) * REC);

    /* sub/rel.dat, opened relative to "sub". */
    record(buf, 's', t);
    write_exact(rel.fd, buf, REC, rel.name);
    check_fd(&rel, (off_t)t * REC);
    check_at(AT_FDCWD, "sub/rel.dat", &rel);

    /* Directory fds: still those directories, still holding the files. */
    check_fd(&dot, -1);
    check_fd(&subdir, -1);
    check_at(dot.fd, "ro.dat", &ro);
    check_at(dot.fd, "wo.dat", &wo);
    check_at(subdir.fd, "rel.dat", &rel);
    check_at(AT_FDCWD, ".", &dot);
    check_at(AT_FDCWD, "sub", &subdir);
    return h;
}

/* ----------------------------------------------------------------- append */

static struct known app;

static void append_setup(void)
{
    app = remember("app.dat O_APPEND", must_open("app.dat", O_WRONLY | O_APPEND | O_CREAT | O_TRUNC), 0);
    if (!(app.fl & O_APPEND))
        fail("app.dat: no O_APPEND at open");
}

static uint64_t append_tick(int t)
{
    char buf[REC + 1], got[REC];
    /* O_APPEND sends even a write at offset 0 to the end of the file. */
    if (lseek(app.fd, 0, SEEK_SET) != 0)
        fail("%s: lseek 0: %s", app.name, strerror(errno));
    record(buf, 'a', t);
    write_exact(app.fd, buf, REC, app.name);
    struct stat st;
    if (fstat(app.fd, &st) != 0)
        fail("fstat %s: %s", app.name, strerror(errno));
    if (st.st_size != (off_t)t * REC) {
        /* Say which of the two ways it went wrong. */
        int at0 = open("app.dat", O_RDONLY);
        if (at0 < 0 || pread(at0, got, REC, 0) != REC)
            fail("%s: size %lld, expected %lld", app.name, (long long)st.st_size, (long long)t * REC);
        close(at0);
        if (memcmp(got, buf, REC) == 0)
            fail("%s: the append of tick %d went to offset 0: O_APPEND lost", app.name, t);
        fail("%s: size %lld after the append of tick %d, expected %lld: the file holds %lld bytes more than this "
             "run wrote (appended after the checkpoint by the killed run? a restart must take the file back to its "
             "size at the checkpoint)",
             app.name, (long long)st.st_size, t, (long long)t * REC, (long long)(st.st_size - (off_t)t * REC));
    }
    check_fd(&app, (off_t)t * REC);
    return fnv(1469598103934665603ull, buf, REC);
}

/* ----------------------------------------------------------------- shared */

static struct known sh[4], ind;

static void shared_setup(void)
{
    int a = must_open("shared.dat", O_RDWR | O_CREAT | O_TRUNC);
    int b = dup(a);
    if (b < 0 || dup2(a, 77) != 77 || dup3(a, 78, O_CLOEXEC) != 78)
        fail("dup: %s", strerror(errno));
    sh[0] = remember("shared.dat fd a", a, 0);
    sh[1] = remember("shared.dat dup(a)", b, 0);
    sh[2] = remember("shared.dat dup2(a, 77)", 77, 0);
    sh[3] = remember("shared.dat dup3(a, 78, O_CLOEXEC)", 78, 1);
    ind = remember("shared.dat independent open", must_open("shared.dat", O_RDONLY), 0);
}

static uint64_t shared_tick(int t)
{
    char buf[REC + 1], got[REC];
    const struct known *w = &sh[t % 4];
    record(buf, 'S', t);
    write_exact(w->fd, buf, REC, w->name);
    /* One offset for all four: each sees the write made through the other. */
    for (int i = 0; i < 4; i++)
        check_fd(&sh[i], (off_t)t * REC);
    /* The independent open moves only when it reads. */
    read_exact(ind.fd, got, REC, ind.name);
    if (memcmp(got, buf, REC) != 0)
        fail("%s: read %.15s, expected %.15s", ind.name, got, buf);
    check_fd(&ind, (off_t)t * REC);
    return fnv(1469598103934665603ull, got, REC);
}

/* ------------------------------------------------------------------ locks */

static struct known lk, lk_probe, fl_ex, fl_ex_probe, fl_sh, fl_sh_probe, ofd, ofd_probe;

static void set_lock(int fd, int cmd, short type, off_t start, off_t len, const char *what)
{
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len};
    if (fcntl(fd, cmd, &fl) != 0)
        fail("lock %s: %s", what, strerror(errno));
}

static void locks_setup(void)
{
    lk = remember("lock.dat", must_open("lock.dat", O_RDWR | O_CREAT | O_TRUNC), 0);
    char zeros[100] = {0};
    write_exact(lk.fd, zeros, sizeof zeros, "lock.dat");
    set_lock(lk.fd, F_SETLK, F_WRLCK, 10, 20, "lock.dat [10,30) write");
    set_lock(lk.fd, F_SETLK, F_RDLCK, 50, 10, "lock.dat [50,60) read");
    /* Never closed: closing any fd of lock.dat drops the process's locks. */
    lk_probe = remember("lock.dat probe", must_open("lock.dat", O_RDWR), 0);

    fl_ex = remember("flock.dat", must_open("flock.dat", O_RDWR | O_CREAT | O_TRUNC), 0);
    if (flock(fl_ex.fd, LOCK_EX) != 0)
        fail("flock flock.dat: %s", strerror(errno));
    fl_ex_probe = remember("flock.dat probe", must_open("flock.dat", O_RDONLY), 0);

    fl_sh = remember("flock_sh.dat", must_open("flock_sh.dat", O_RDWR | O_CREAT | O_TRUNC), 0);
    if (flock(fl_sh.fd, LOCK_SH) != 0)
        fail("flock flock_sh.dat: %s", strerror(errno));
    fl_sh_probe = remember("flock_sh.dat probe", must_open("flock_sh.dat", O_RDONLY), 0);

    ofd = remember("ofd.dat", must_open("ofd.dat", O_RDWR | O_CREAT | O_TRUNC), 0);
    set_lock(ofd.fd, F_OFD_SETLK, F_WRLCK, 0, 0, "ofd.dat OFD write");
    ofd_probe = remember("ofd.dat probe", must_open("ofd.dat", O_RDWR), 0);
}

/* F_OFD_GETLK from `probe`: the conflicting lock must be `want`. */
static void probe_lock(const struct known *probe, short type, off_t start, off_t len, short want_type,
                       off_t want_start, off_t want_len, pid_t want_pid)
{
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len};
    if (fcntl(probe->fd, F_OFD_GETLK, &fl) != 0)
        fail("F_OFD_GETLK on %s: %s", probe->name, strerror(errno));
    if (fl.l_type != want_type)
        fail("%s: probe type %d at [%lld,+%lld) found lock type %d, expected %d", probe->name, type,
             (long long)start, (long long)len, fl.l_type, want_type);
    if (want_type == F_UNLCK)
        return;
    if (fl.l_start != want_start || fl.l_len != want_len || fl.l_pid != want_pid)
        fail("%s: conflicting lock [%lld,+%lld) pid %d, expected [%lld,+%lld) pid %d", probe->name,
             (long long)fl.l_start, (long long)fl.l_len, fl.l_pid, (long long)want_start, (long long)want_len,
             want_pid);
}

/* flock(op | LOCK_NB) on the probe must fail with EWOULDBLOCK, or succeed
 * (and then be undone) when `may` is set. */
static void probe_flock(const struct known *probe, int op, int may)
{
    int r = flock(probe->fd, op | LOCK_NB);
    if (may) {
        if (r != 0)
            fail("%s: flock %d failed: %s", probe->name, op, strerror(errno));
        if (flock(probe->fd, LOCK_UN) != 0)
            fail("%s: unlock: %s", probe->name, strerror(errno));
    } else if (r == 0 || errno != EWOULDBLOCK) {
        fail("%s: flock %d got %d (%s), expected EWOULDBLOCK: lock lost", probe->name, op, r,
             r ? strerror(errno) : "granted");
    }
}

/* The "lock:" lines of /proc/self/fdinfo/<fd> (the locks set through that
 * open file description), as "KIND TYPE PID START END" in `out`. A single
 * small file read under the kernel's lock, unlike /proc/locks, whose
 * listing shifts while other processes lock and unlock. */
static int fd_locks(int fd, char out[][64], int max)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
    FILE *f = fopen(path, "r");
    if (!f)
        fail("open %s: %s", path, strerror(errno));
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        char kind[16], adv[16], rw[16], end[24];
        int pid;
        long long start;
        /* "lock:\t1: POSIX  ADVISORY  WRITE 1234 fe:00:1234567 10 29" */
        if (sscanf(line, "lock: %*d: %15s %15s %15s %d %*x:%*x:%*u %lld %23s", kind, adv, rw, &pid, &start, end) != 6)
            continue;
        if (n < max)
            snprintf(out[n], 64, "%s %s %d %lld %s", kind, rw, pid, start, end);
        n++;
    }
    fclose(f);
    return n;
}

/* Each lock must be there once, set through the fd the program used (for
 * POSIX locks, which belong to the process, either fd of lock.dat will
 * do). */
static void check_fdinfo_locks(void)
{
    char got[8][64], want[64];
    int n = fd_locks(lk.fd, got, 8);
    n += fd_locks(lk_probe.fd, got + (n < 8 ? n : 8), 8 - (n < 8 ? n : 8));
    int w = 0, r = 0;
    snprintf(want, sizeof want, "POSIX WRITE %d 10 29", getpid());
    for (int i = 0; i < n && i < 8; i++)
        w += strcmp(got[i], want) == 0;
    snprintf(want, sizeof want, "POSIX READ %d 50 59", getpid());
    for (int i = 0; i < n && i < 8; i++)
        r += strcmp(got[i], want) == 0;
    if (n != 2 || w != 1 || r != 1)
        fail("lock.dat: fdinfo shows %d locks (first: \"%s\"), expected POSIX WRITE [10,29] and READ [50,59] of pid %d", n,
             n ? got[0] : "", getpid());

    n = fd_locks(fl_ex.fd, got, 8);
    if (n != 1 || strncmp(got[0], "FLOCK WRITE ", 12) != 0)
        fail("flock.dat: fdinfo shows %d locks (first: \"%s\"), expected one FLOCK WRITE", n, n ? got[0] : "");
    n = fd_locks(fl_sh.fd, got, 8);
    if (n != 1 || strncmp(got[0], "FLOCK READ ", 11) != 0)
        fail("flock_sh.dat: fdinfo shows %d locks (first: \"%s\"), expected one FLOCK READ", n, n ? got[0] : "");
    n = fd_locks(ofd.fd, got, 8);
    if (n != 1 || strcmp(got[0], "OFDLCK WRITE -1 0 EOF") != 0)
        fail("ofd.dat: fdinfo shows %d locks (first: \"%s\"), expected one OFDLCK WRITE on the whole file", n,
             n ? got[0] : "");
    const struct known *probes[] = {&fl_ex_probe, &fl_sh_probe, &ofd_probe};
    for (size_t i = 0; i < 3; i++)
        if (fd_locks(probes[i]->fd, got, 8) != 0)
            fail("%s: holds a lock: \"%s\"", probes[i]->name, got[0]);
}

static uint64_t locks_tick(int t)
{
    pid_t me = getpid();
    probe_lock(&lk_probe, F_WRLCK, 0, 100, F_WRLCK, 10, 20, me);
    probe_lock(&lk_probe, F_WRLCK, 30, 70, F_RDLCK, 50, 10, me);
    probe_lock(&lk_probe, F_RDLCK, 30, 70, F_UNLCK, 0, 0, 0);
    probe_lock(&lk_probe, F_WRLCK, 30, 20, F_UNLCK, 0, 0, 0);
    probe_lock(&ofd_probe, F_RDLCK, 0, 0, F_WRLCK, 0, 0, -1);
    probe_flock(&fl_ex_probe, LOCK_SH, 0);
    probe_flock(&fl_ex_probe, LOCK_EX, 0);
    probe_flock(&fl_sh_probe, LOCK_SH, 1);
    probe_flock(&fl_sh_probe, LOCK_EX, 0);
    check_fdinfo_locks();
    const struct known *all[] = {&lk, &lk_probe, &fl_ex, &fl_ex_probe, &fl_sh, &fl_sh_probe, &ofd, &ofd_probe};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        check_fd(all[i], i == 0 ? 100 : 0);
    /* Writing through the locked fd works and moves nothing else. */
    char c = (char)t;
    if (pwrite(lk.fd, &c, 1, 10 + t % 20) != 1)
        fail("pwrite lock.dat: %s", strerror(errno));
    return (uint64_t)t * 31;
}

/* ---------------------------------------------------------------- inplace */

#define SLOTS 64
static struct known inp;
static char mirror[SLOTS * REC]; /* what the file must hold */

static void inplace_setup(void)
{
    inp = remember("inplace.dat", must_open("inplace.dat", O_RDWR | O_CREAT | O_TRUNC), 0);
    char buf[REC + 1];
    record(buf, 'i', 0);
    for (int i = 0; i < SLOTS; i++)
        memcpy(mirror + i * REC, buf, REC);
    write_exact(inp.fd, mirror, sizeof mirror, inp.name);
}

static uint64_t inplace_tick(int t)
{
    char got[SLOTS * REC];
    if (pread(inp.fd, got, sizeof got, 0) != (ssize_t)sizeof got)
        fail("%s: pread: %s", inp.name, strerror(errno));
    for (int i = 0; i < SLOTS; i++)
        if (memcmp(got + i * REC, mirror + i * REC, REC) != 0)
            fail("%s: record %d is not what this run wrote there (rewritten in place after the checkpoint by the "
                 "killed run? a restart must put the content back as it was at the checkpoint)",
                 inp.name, i);
    int slot = (t * 37) % SLOTS;
    char buf[REC + 1];
    record(buf, 'i', t);
    memcpy(mirror + slot * REC, buf, REC);
    if (pwrite(inp.fd, mirror + slot * REC, REC, (off_t)slot * REC) != REC)
        fail("%s: pwrite: %s", inp.name, strerror(errno));
    check_fd(&inp, sizeof mirror);
    return fnv(1469598103934665603ull, mirror, sizeof mirror);
}

/* ------------------------------------------------------------------- main */

int main(int argc, char **argv)
{
    int do_basic = argc <= 1, do_append = argc <= 1, do_shared = argc <= 1, do_locks = argc <= 1;
    int do_inplace = argc <= 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "basic") == 0)
            do_basic = 1;
        else if (strcmp(argv[i], "append") == 0)
            do_append = 1;
        else if (strcmp(argv[i], "shared") == 0)
            do_shared = 1;
        else if (strcmp(argv[i], "locks") == 0)
            do_locks = 1;
        else if (strcmp(argv[i], "inplace") == 0)
            do_inplace = 1;
        else {
            fprintf(stderr, "usage: fd_files [basic] [append] [shared] [locks] [inplace]\n");
            return 2;
        }
    }
    if (do_basic)
        basic_setup();
    if (do_append)
        append_setup();
    if (do_shared)
        shared_setup();
    if (do_locks)
        locks_setup();
    if (do_inplace)
        inplace_setup();

    uint64_t sum = 0;
    for (tick = 1; tick <= TICKS; tick++) {
        /* All checks first: a failing tick prints only its FAIL line. */
        char line[256];
        int len = snprintf(line, sizeof line, "tick %d", tick);
        if (do_basic) {
            uint64_t h = basic_tick(tick);
            sum = sum * 31 + h;
            len += snprintf(line + len, sizeof line - len, " basic %016" PRIx64, h);
        }
        if (do_append) {
            uint64_t h = append_tick(tick);
            sum = sum * 31 + h;
            len += snprintf(line + len, sizeof line - len, " append %016" PRIx64, h);
        }
        if (do_shared) {
            uint64_t h = shared_tick(tick);
            sum = sum * 31 + h;
            len += snprintf(line + len, sizeof line - len, " shared %016" PRIx64, h);
        }
        if (do_locks) {
            sum = sum * 31 + locks_tick(tick);
            len += snprintf(line + len, sizeof line - len, " locks held");
        }
        if (do_inplace) {
            uint64_t h = inplace_tick(tick);
            sum = sum * 31 + h;
            len += snprintf(line + len, sizeof line - len, " inplace %016" PRIx64, h);
        }
        printf("%s sum %016" PRIx64 "\n", line, sum);
        fflush(stdout);
        pace();
    }
    tick = 0;
    printf("done sum %016" PRIx64 "\n", sum);
    fflush(stdout);
    return 0;
}
