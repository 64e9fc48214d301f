/*
 * fd_pipes: pipes and a FIFO with bytes in flight, and half-closed pipes,
 * for ckrun's end-to-end tests (issue 4). At every moment some exactly
 * known bytes sit in the kernel's pipe buffers; after a restart the program
 * must read exactly those bytes: none lost, none duplicated.
 *
 * Groups, selected by argv (default: all of them):
 *   pipe     A pipe with both ends here, read end O_NONBLOCK: each tick
 *            writes a block (size and content depend on the tick) and reads
 *            back the block written 3 ticks earlier, so 3 blocks are always
 *            in flight; FIONREAD must equal their total. A second pipe,
 *            resized to 256 KiB (F_SETPIPE_SZ), both ends O_NONBLOCK, holds
 *            200000 bytes: each tick reads 1000 and writes 1000 more (a
 *            short write means the restored pipe lost its size). Both ends
 *            of a pipe must be one pipe (same inode).
 *   fifo     mkfifo("fifo"), opened O_RDWR | O_NONBLOCK: each tick writes a
 *            block through that fd and a marker through a fresh
 *            open("fifo", O_WRONLY | O_NONBLOCK) (which fails with ENXIO
 *            unless the fd is the named FIFO's reader), and reads back what
 *            was written 2 ticks earlier. Unlinked at the end.
 *   widowed  With SIGPIPE ignored: a pipe whose read end the program closed
 *            (every write must fail with EPIPE); a pipe whose write end it
 *            closed after writing 8 bytes, read one byte every 16 ticks
 *            (O_NONBLOCK: a read past them must give 0, end of file, never
 *            EAGAIN); and an empty pipe with its write end closed (always
 *            end of file).
 *   stdin    With widowed: the pipe without writer is the program's stdin
 *            (fd 0), as `printf ABCDEFGH | prog` gives it once printf
 *            exited: its bytes are the tree's, not the outside's.
 *
 * Output: "tick N ..." per tick (flushed), then "done ...". 20 ms pacing,
 * 200 ticks: about 4 s. Any failed check prints "FAIL tick N: ..." and
 * exits 1. Exit code 0.
 *
 * Usage: fd_pipes [pipe] [fifo] [widowed [stdin]]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
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
    fprintf(stderr, "fd_pipes: FAIL tick %d: %s\n", tick, msg);
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

static uint64_t fnv(uint64_t h, const void *buf, size_t len)
{
    const unsigned char *p = buf;
    for (size_t i = 0; i < len; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

/* Byte i of the block of tick t in stream `salt`. */
static unsigned char pat(unsigned salt, unsigned t, size_t i)
{
    return (unsigned char)((t * 31 + i * 7 + salt * 101 + (i >> 8) * 3) & 0xff);
}

static void fill(unsigned char *buf, unsigned salt, unsigned t, size_t len)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = pat(salt, t, i);
}

static void write_exact(int fd, const void *buf, size_t len, const char *what)
{
    ssize_t n = write(fd, buf, len);
    if (n != (ssize_t)len)
        fail("write %s: %zd of %zu (%s)", what, n, len, n < 0 ? strerror(errno) : "short");
}

/* Reads exactly len bytes from a non-blocking fd: EAGAIN means lost bytes. */
static void read_exact(int fd, void *buf, size_t len, const char *what)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, (char *)buf + got, len - got);
        if (n > 0) {
            got += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        fail("read %s: got %zu of %zu bytes, then %s", what, got, len, n == 0 ? "end of file" : strerror(errno));
    }
}

static void check_expect(const unsigned char *buf, unsigned salt, unsigned t, size_t len, const char *what)
{
    for (size_t i = 0; i < len; i++)
        if (buf[i] != pat(salt, t, i))
            fail("%s: block of tick %u differs at byte %zu: got %u, expected %u", what, t, i, buf[i],
                 pat(salt, t, i));
}

static int fionread(int fd, const char *what)
{
    int n;
    if (ioctl(fd, FIONREAD, &n) != 0)
        fail("FIONREAD %s: %s", what, strerror(errno));
    return n;
}

static void check_fl(int fd, int want, const char *what)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0)
        fail("F_GETFL %s: %s", what, strerror(errno));
    /* O_LARGEFILE may or may not show; everything else must match. */
    if ((fl & ~0100000) != want)
        fail("%s: F_GETFL %#o, expected %#o", what, fl, want);
}

/* Both fds are FIFOs on the same inode (the two ends of one pipe). */
static void check_same_pipe(int a, int b, const char *what)
{
    struct stat sa, sb;
    if (fstat(a, &sa) != 0 || fstat(b, &sb) != 0)
        fail("fstat %s: %s", what, strerror(errno));
    if (!S_ISFIFO(sa.st_mode) || !S_ISFIFO(sb.st_mode))
        fail("%s: not a pipe (modes %o %o)", what, (unsigned)sa.st_mode, (unsigned)sb.st_mode);
    if (sa.st_ino != sb.st_ino || sa.st_dev != sb.st_dev)
        fail("%s: read and write ends are different pipes", what);
}

/* ------------------------------------------------------------------- pipe */

#define LAG 3
#define BIG_SIZE (256 * 1024)
#define BIG_FILL 200000
#define BIG_STEP 1000
static int p_r, p_w, big_r, big_w;
static uint64_t big_written, big_read; /* stream positions */

static size_t block_len(unsigned t)
{
    return 1000 + (t * 7919u) % 3000;
}

/* The big pipe carries one endless stream: byte k is pat(9, k / 4096, k % 4096). */
static void big_stream(unsigned char *buf, uint64_t from, size_t len)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = pat(9, (unsigned)((from + i) / 4096), (from + i) % 4096);
}

static void pipe_setup(void)
{
    int p[2];
    if (pipe(p) != 0)
        fail("pipe: %s", strerror(errno));
    p_r = p[0];
    p_w = p[1];
    if (fcntl(p_r, F_SETFL, O_NONBLOCK) != 0)
        fail("F_SETFL: %s", strerror(errno));

    if (pipe2(p, O_NONBLOCK) != 0)
        fail("pipe2: %s", strerror(errno));
    big_r = p[0];
    big_w = p[1];
    if (fcntl(big_w, F_SETPIPE_SZ, BIG_SIZE) != BIG_SIZE)
        fail("F_SETPIPE_SZ %d: %s", BIG_SIZE, strerror(errno));
    static unsigned char buf[BIG_FILL];
    big_stream(buf, 0, BIG_FILL);
    write_exact(big_w, buf, BIG_FILL, "big pipe (fill)");
    big_written = BIG_FILL;
}

static uint64_t pipe_tick(int t)
{
    static unsigned char buf[4096];
    uint64_t h = 1469598103934665603ull;
    size_t len = block_len((unsigned)t);
    fill(buf, 1, (unsigned)t, len);
    write_exact(p_w, buf, len, "pipe");
    if (t > LAG) {
        size_t old = block_len((unsigned)(t - LAG));
        read_exact(p_r, buf, old, "pipe");
        check_expect(buf, 1, (unsigned)(t - LAG), old, "pipe");
        h = fnv(h, buf, old);
    }
    int want = 0;
    for (int k = t > LAG ? t - LAG + 1 : 1; k <= t; k++)
        want += (int)block_len((unsigned)k);
    int have = fionread(p_r, "pipe");
    if (have != want)
        fail("pipe: %d bytes in flight, expected %d", have, want);
    check_fl(p_r, O_RDONLY | O_NONBLOCK, "pipe read end");
    check_fl(p_w, O_WRONLY, "pipe write end");
    check_same_pipe(p_r, p_w, "pipe");

    /* The big pipe: capacity, then 1000 bytes out and 1000 in. */
    int sz = fcntl(big_r, F_GETPIPE_SZ);
    if (sz != BIG_SIZE)
        fail("big pipe: F_GETPIPE_SZ %d, expected %d", sz, BIG_SIZE);
    have = fionread(big_r, "big pipe");
    if (have != BIG_FILL)
        fail("big pipe: %d bytes in flight, expected %d", have, BIG_FILL);
    unsigned char got[BIG_STEP], want_buf[BIG_STEP];
    read_exact(big_r, got, BIG_STEP, "big pipe");
    big_stream(want_buf, big_read, BIG_STEP);
    if (memcmp(got, want_buf, BIG_STEP) != 0)
        fail("big pipe: bytes %llu.. differ", (unsigned long long)big_read);
    big_read += BIG_STEP;
    big_stream(want_buf, big_written, BIG_STEP);
    write_exact(big_w, want_buf, BIG_STEP, "big pipe");
    big_written += BIG_STEP;
    check_fl(big_r, O_RDONLY | O_NONBLOCK, "big pipe read end");
    check_fl(big_w, O_WRONLY | O_NONBLOCK, "big pipe write end");
    check_same_pipe(big_r, big_w, "big pipe");
    return fnv(h, got, BIG_STEP);
}

static uint64_t pipe_finish(void)
{
    static unsigned char buf[4096];
    uint64_t h = 0;
    for (int k = TICKS - LAG + 1; k <= TICKS; k++) {
        size_t len = block_len((unsigned)k);
        read_exact(p_r, buf, len, "pipe (drain)");
        check_expect(buf, 1, (unsigned)k, len, "pipe (drain)");
        h = fnv(h, buf, len);
    }
    if (read(p_r, buf, 1) != -1 || errno != EAGAIN)
        fail("pipe: bytes left after draining");
    return h;
}

/* ------------------------------------------------------------------- fifo */

#define FIFO_LAG 2
#define MARK 8
static int f_rw;
static ino_t fifo_ino;

static size_t fifo_len(unsigned t)
{
    return 100 + (t * 13u) % 400;
}

static void fifo_setup(void)
{
    unlink("fifo");
    if (mkfifo("fifo", 0644) != 0)
        fail("mkfifo: %s", strerror(errno));
    f_rw = open("fifo", O_RDWR | O_NONBLOCK);
    if (f_rw < 0)
        fail("open fifo: %s", strerror(errno));
    struct stat st;
    if (fstat(f_rw, &st) != 0)
        fail("fstat fifo: %s", strerror(errno));
    fifo_ino = st.st_ino;
}

static void marker(char *buf, unsigned t)
{
    snprintf(buf, MARK + 1, "M%06u\n", t % 1000000);
}

static uint64_t fifo_tick(int t)
{
    unsigned char buf[512];
    char mark[MARK + 1], got_mark[MARK];
    uint64_t h = 1469598103934665603ull;
    size_t len = fifo_len((unsigned)t);
    fill(buf, 2, (unsigned)t, len);
    write_exact(f_rw, buf, len, "fifo");
    /* A second writer through the name. */
    int w = open("fifo", O_WRONLY | O_NONBLOCK);
    if (w < 0)
        fail("open(\"fifo\", O_WRONLY | O_NONBLOCK): %s (the fd is not the FIFO's reader)", strerror(errno));
    marker(mark, (unsigned)t);
    write_exact(w, mark, MARK, "fifo (by name)");
    close(w);
    if (t > FIFO_LAG) {
        unsigned old = (unsigned)(t - FIFO_LAG);
        size_t olen = fifo_len(old);
        read_exact(f_rw, buf, olen, "fifo");
        check_expect(buf, 2, old, olen, "fifo");
        read_exact(f_rw, got_mark, MARK, "fifo marker");
        marker(mark, old);
        if (memcmp(got_mark, mark, MARK) != 0)
            fail("fifo: marker %.7s, expected %.7s", got_mark, mark);
        h = fnv(h, buf, olen);
    }
    int want = 0;
    for (int k = t > FIFO_LAG ? t - FIFO_LAG + 1 : 1; k <= t; k++)
        want += (int)fifo_len((unsigned)k) + MARK;
    int have = fionread(f_rw, "fifo");
    if (have != want)
        fail("fifo: %d bytes in flight, expected %d", have, want);
    check_fl(f_rw, O_RDWR | O_NONBLOCK, "fifo");
    struct stat st;
    if (fstat(f_rw, &st) != 0 || !S_ISFIFO(st.st_mode) || st.st_ino != fifo_ino)
        fail("fifo: the fd is not the FIFO it opened");
    if (stat("fifo", &st) != 0 || st.st_ino != fifo_ino)
        fail("fifo: the FIFO in the directory is another one");
    return h;
}

static uint64_t fifo_finish(void)
{
    unsigned char buf[512];
    char mark[MARK + 1], got_mark[MARK];
    uint64_t h = 0;
    for (int k = TICKS - FIFO_LAG + 1; k <= TICKS; k++) {
        size_t len = fifo_len((unsigned)k);
        read_exact(f_rw, buf, len, "fifo (drain)");
        check_expect(buf, 2, (unsigned)k, len, "fifo (drain)");
        read_exact(f_rw, got_mark, MARK, "fifo marker (drain)");
        marker(mark, (unsigned)k);
        if (memcmp(got_mark, mark, MARK) != 0)
            fail("fifo: marker %.7s, expected %.7s", got_mark, mark);
        h = fnv(h, buf, len);
    }
    close(f_rw);
    if (unlink("fifo") != 0)
        fail("unlink fifo: %s", strerror(errno));
    return h;
}

/* ---------------------------------------------------------------- widowed */

#define TAIL "ABCDEFGH"
#define TAIL_EVERY 16
static int no_reader_w, no_writer_r, empty_r;
static int tail_read;
static int widowed_on_stdin;

static void widowed_setup(void)
{
    if (signal(SIGPIPE, SIG_IGN) == SIG_ERR)
        fail("signal(SIGPIPE): %s", strerror(errno));
    int p[2];
    if (pipe(p) != 0)
        fail("pipe: %s", strerror(errno));
    close(p[0]);
    no_reader_w = p[1];

    if (pipe2(p, O_NONBLOCK) != 0)
        fail("pipe2: %s", strerror(errno));
    write_exact(p[1], TAIL, strlen(TAIL), "widowed pipe");
    close(p[1]);
    no_writer_r = p[0];
    if (widowed_on_stdin) {
        if (dup2(p[0], 0) != 0)
            fail("dup2: %s", strerror(errno));
        close(p[0]);
        no_writer_r = 0;
    }

    if (pipe2(p, O_NONBLOCK) != 0)
        fail("pipe2: %s", strerror(errno));
    close(p[1]);
    empty_r = p[0];
}

static uint64_t widowed_tick(int t)
{
    /* No reader: EPIPE, every time. */
    ssize_t n = write(no_reader_w, "x", 1);
    if (n != -1 || errno != EPIPE)
        fail("pipe without reader: write gave %zd (%s), expected EPIPE", n, n < 0 ? strerror(errno) : "written");
    check_fl(no_reader_w, O_WRONLY, "pipe without reader");

    /* No writer, bytes left: one byte every TAIL_EVERY ticks, then EOF. */
    int left = (int)strlen(TAIL) - tail_read;
    int have = fionread(no_writer_r, "pipe without writer");
    if (have != left)
        fail("pipe without writer: %d bytes left, expected %d", have, left);
    char c;
    if (left == 0 || t % TAIL_EVERY == 0) {
        n = read(no_writer_r, &c, 1);
        if (left == 0 && n != 0)
            fail("pipe without writer: read gave %zd (%s), expected 0 (end of file)", n,
                 n < 0 ? strerror(errno) : "a byte");
        if (left > 0) {
            if (n != 1 || c != TAIL[tail_read])
                fail("pipe without writer: read gave %zd (%s), expected '%c'", n, n < 0 ? strerror(errno) : "?",
                     TAIL[tail_read]);
            tail_read++;
        }
    }
    check_fl(no_writer_r, O_RDONLY | O_NONBLOCK, "pipe without writer");

    /* No writer, empty: end of file, never EAGAIN. */
    n = read(empty_r, &c, 1);
    if (n != 0)
        fail("empty pipe without writer: read gave %zd (%s), expected 0 (end of file)", n,
             n < 0 ? strerror(errno) : "a byte");
    check_fl(empty_r, O_RDONLY | O_NONBLOCK, "empty pipe without writer");
    return (uint64_t)tail_read;
}

/* ------------------------------------------------------------------- main */

int main(int argc, char **argv)
{
    int do_pipe = argc <= 1, do_fifo = argc <= 1, do_widowed = argc <= 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "pipe") == 0)
            do_pipe = 1;
        else if (strcmp(argv[i], "fifo") == 0)
            do_fifo = 1;
        else if (strcmp(argv[i], "widowed") == 0)
            do_widowed = 1;
        else if (strcmp(argv[i], "stdin") == 0)
            widowed_on_stdin = 1;
        else {
            fprintf(stderr, "usage: fd_pipes [pipe] [fifo] [widowed [stdin]]\n");
            return 2;
        }
    }
    if (do_pipe)
        pipe_setup();
    if (do_fifo)
        fifo_setup();
    if (do_widowed)
        widowed_setup();

    uint64_t sum = 0;
    for (tick = 1; tick <= TICKS; tick++) {
        char line[256];
        int len = snprintf(line, sizeof line, "tick %d", tick);
        if (do_pipe) {
            uint64_t h = pipe_tick(tick);
            sum = sum * 31 + h;
            len += snprintf(line + len, sizeof line - len, " pipe %016" PRIx64, h);
        }
        if (do_fifo) {
            uint64_t h = fifo_tick(tick);
            sum = sum * 31 + h;
            len += snprintf(line + len, sizeof line - len, " fifo %016" PRIx64, h);
        }
        if (do_widowed) {
            uint64_t h = widowed_tick(tick);
            sum = sum * 31 + h;
            len += snprintf(line + len, sizeof line - len, " widowed %" PRIu64, h);
        }
        printf("%s sum %016" PRIx64 "\n", line, sum);
        fflush(stdout);
        pace();
    }
    tick = 0;
    if (do_pipe)
        sum = sum * 31 + pipe_finish();
    if (do_fifo)
        sum = sum * 31 + fifo_finish();
    printf("done sum %016" PRIx64 "\n", sum);
    fflush(stdout);
    return 0;
}
