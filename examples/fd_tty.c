/*
 * fd_tty: a program whose stdin and stdout are a terminal, which it puts in
 * raw mode, for ckrun's end-to-end tests (issue 4). A restart runs on
 * another terminal (ckrun's own); ckrun must hand it to the program with
 * the program's terminal settings applied again.
 *
 * At start: stdin and stdout must be the same terminal; the program saves
 * its settings, applies cfmakeraw() plus a distinctive speed (57600 baud)
 * and VMIN 1 / VTIME 0, and reads back what the kernel made of it. Each
 * tick it checks, on both fds, that they are still one terminal in exactly
 * those settings, and prints "tick N raw" with a single write (so raw mode
 * means the terminal gets "\n", not "\r\n"). At the end it prints "done"
 * and puts the original settings back, as polite raw-mode programs do.
 *
 * 20 ms pacing, 200 ticks: about 4 s. Any failed check prints
 * "FAIL tick N: ..." (stdout and stderr) and exits 1. Exit code 0.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define TICKS 200
#define PACE_NS 20000000L /* 20 ms */

static int tick;

static void say(const char *text)
{
    size_t len = strlen(text);
    while (len > 0) {
        ssize_t n = write(1, text, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            exit(1);
        text += n;
        len -= (size_t)n;
    }
}

static void fail(const char *fmt, ...)
{
    char msg[512], line[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(line, sizeof line, "FAIL tick %d: %s\n", tick, msg);
    say(line);
    fprintf(stderr, "fd_tty: %s", line);
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

static int same_termios(const struct termios *a, const struct termios *b)
{
    return a->c_iflag == b->c_iflag && a->c_oflag == b->c_oflag && a->c_cflag == b->c_cflag &&
           a->c_lflag == b->c_lflag && memcmp(a->c_cc, b->c_cc, sizeof a->c_cc) == 0 &&
           cfgetispeed(a) == cfgetispeed(b) && cfgetospeed(a) == cfgetospeed(b);
}

static void check_terminal(int fd, const struct termios *want)
{
    if (!isatty(fd))
        fail("fd %d is not a terminal", fd);
    struct termios cur;
    if (tcgetattr(fd, &cur) != 0)
        fail("tcgetattr(%d): %s", fd, strerror(errno));
    if (!same_termios(&cur, want))
        fail("fd %d: terminal settings changed: iflag %#x oflag %#x cflag %#x lflag %#x speed %u, expected %#x %#x "
             "%#x %#x %u",
             fd, cur.c_iflag, cur.c_oflag, cur.c_cflag, cur.c_lflag, (unsigned)cfgetospeed(&cur), want->c_iflag,
             want->c_oflag, want->c_cflag, want->c_lflag, (unsigned)cfgetospeed(want));
}

int main(void)
{
    struct stat s0, s1;
    if (!isatty(0) || !isatty(1))
        fail("stdin and stdout must be a terminal");
    if (fstat(0, &s0) != 0 || fstat(1, &s1) != 0 || s0.st_rdev != s1.st_rdev)
        fail("stdin and stdout are different terminals");

    struct termios orig, raw, want;
    if (tcgetattr(1, &orig) != 0)
        fail("tcgetattr: %s", strerror(errno));
    raw = orig;
    cfmakeraw(&raw);
    raw.c_cc[VMIN] = 1;
    raw.c_cc[VTIME] = 0;
    cfsetispeed(&raw, B57600);
    cfsetospeed(&raw, B57600);
    if (tcsetattr(1, TCSANOW, &raw) != 0)
        fail("tcsetattr: %s", strerror(errno));
    if (tcgetattr(1, &want) != 0)
        fail("tcgetattr: %s", strerror(errno));
    if ((want.c_lflag & (ICANON | ECHO | ISIG)) || (want.c_oflag & OPOST) || cfgetospeed(&want) != B57600)
        fail("the terminal did not take raw mode");

    for (tick = 1; tick <= TICKS; tick++) {
        check_terminal(0, &want);
        check_terminal(1, &want);
        if (fstat(0, &s0) != 0 || fstat(1, &s1) != 0 || s0.st_rdev != s1.st_rdev)
            fail("stdin and stdout are different terminals");
        char line[64];
        snprintf(line, sizeof line, "tick %d raw\n", tick);
        say(line);
        pace();
    }
    tick = 0;
    say("done\n");
    tcsetattr(1, TCSADRAIN, &orig);
    return 0;
}
