/*
 * jobctl: a program that takes its terminal the way an interactive shell
 * does, for ckrun's job-control tests (issue 10, item 6). It makes itself
 * a process group leader, makes its group the terminal's foreground group
 * (tcsetpgrp, SIGTTOU blocked meanwhile, as shells do), and then checks
 * every tick that it still is: tcgetpgrp(0) == getpgrp(). A restart on
 * another terminal must give the restored group that terminal's
 * foreground before the program runs on.
 *
 * stdin and stdout must be the controlling terminal. Output: "tick N
 * foreground" per tick (20 ms pacing, 200 ticks: about 4 s), then "done
 * jobctl". A failed check prints "FAIL tick N: ..." (stdout and stderr)
 * and exits 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define TICKS 200
#define PACE_NS 20000000L

static int tick;

static void fail(const char *what)
{
    printf("FAIL tick %d: %s (%s)\n", tick, what, strerror(errno));
    fprintf(stderr, "jobctl: FAIL tick %d: %s (%s)\n", tick, what, strerror(errno));
    exit(1);
}

static void pace(void)
{
    struct timespec req = {0, PACE_NS}, rem;
    while (nanosleep(&req, &rem) == -1) {
        if (errno != EINTR)
            fail("nanosleep");
        req = rem;
    }
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!isatty(0) || !isatty(1))
        fail("stdin and stdout must be a terminal");
    if (getpgrp() != getpid() && setpgid(0, 0) != 0)
        fail("setpgid");
    sigset_t ttou, old;
    sigemptyset(&ttou);
    sigaddset(&ttou, SIGTTOU);
    sigprocmask(SIG_BLOCK, &ttou, &old);
    if (tcsetpgrp(0, getpgrp()) != 0)
        fail("tcsetpgrp");
    sigprocmask(SIG_SETMASK, &old, NULL);
    for (tick = 1; tick <= TICKS; tick++) {
        pid_t fg = tcgetpgrp(0);
        if (fg != getpgrp()) {
            char what[96];
            snprintf(what, sizeof what, "foreground group %d, mine %d", (int)fg, (int)getpgrp());
            fail(what);
        }
        printf("tick %d foreground\n", tick);
        pace();
    }
    tick = 0;
    printf("done jobctl\n");
    return 0;
}
