/*
 * signals: a deterministic program that relies on its own signal state, for
 * ckrun's end-to-end tests.
 *
 *   - It paces itself with an interval timer (ITIMER_REAL, every 20 ms) and
 *     waits for each SIGALRM with sigsuspend, SIGALRM blocked otherwise. A
 *     restored process whose timer was not re-armed would hang, and one
 *     whose signal mask was lost is caught by the per-tick mask check.
 *   - It installs its own SIGUSR2 handler, ckrun's default checkpoint
 *     trigger, and raise()s SIGUSR2 on itself every 10 ticks. The handler
 *     tells its own raises (SI_TKILL from its own pid) from anything else:
 *     a "foreign" SIGUSR2 means the checkpoint request leaked into the
 *     program, which ckrun must never let happen. Both counts are printed,
 *     so such a leak makes the output differ from a bare run's.
 *   - Each tick it also checks that sigaction() still reports its own
 *     handlers: an agent that virtualises SIGUSR2 must show the program the
 *     handler it installed.
 *
 * Output: "tick N usr2 U foreign F sum S" per tick (flushed), then
 * "done ...". How many SIGALRMs arrived is not printed, since it depends on
 * timing (a late wakeup may find two); each tick only waits until the count
 * has moved, so early or extra wakeups never change the output.
 *
 * Usage: signals [TICKS]   (default 200). Exit code 0.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

static volatile sig_atomic_t alarms;
static volatile sig_atomic_t own_usr2;
static volatile sig_atomic_t foreign_usr2;

static void on_alarm(int sig)
{
    (void)sig;
    alarms++;
}

static void on_usr2(int sig, siginfo_t *info, void *uctx)
{
    (void)sig;
    (void)uctx;
    /* raise() is tgkill() on the calling thread: SI_TKILL from our pid. */
    if (info->si_code == SI_TKILL && info->si_pid == getpid())
        own_usr2++;
    else
        foreign_usr2++;
}

static void die(const char *what)
{
    fprintf(stderr, "signals: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* Fails loudly if the program's view of its signal state has changed. */
static void check_signal_state(uint64_t tick)
{
    struct sigaction cur;
    if (sigaction(SIGUSR2, NULL, &cur) != 0)
        die("sigaction(SIGUSR2)");
    if (!(cur.sa_flags & SA_SIGINFO) || cur.sa_sigaction != on_usr2) {
        fprintf(stderr, "signals: tick %" PRIu64 ": SIGUSR2 handler is not ours\n", tick);
        exit(1);
    }
    if (sigaction(SIGALRM, NULL, &cur) != 0)
        die("sigaction(SIGALRM)");
    if (cur.sa_handler != on_alarm) {
        fprintf(stderr, "signals: tick %" PRIu64 ": SIGALRM handler is not ours\n", tick);
        exit(1);
    }
    sigset_t mask;
    if (sigprocmask(SIG_BLOCK, NULL, &mask) != 0)
        die("sigprocmask");
    if (sigismember(&mask, SIGALRM) != 1 || sigismember(&mask, SIGUSR2) != 0) {
        fprintf(stderr, "signals: tick %" PRIu64 ": signal mask changed\n", tick);
        exit(1);
    }
}

int main(int argc, char **argv)
{
    uint64_t ticks = argc > 1 ? strtoull(argv[1], NULL, 10) : 200;

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_alarm;
    if (sigaction(SIGALRM, &sa, NULL) != 0)
        die("sigaction(SIGALRM)");
    sa.sa_flags = SA_SIGINFO;
    sa.sa_sigaction = on_usr2;
    if (sigaction(SIGUSR2, &sa, NULL) != 0)
        die("sigaction(SIGUSR2)");

    /* SIGALRM stays blocked except inside sigsuspend: no lost wakeups. */
    sigset_t block, waitmask;
    sigemptyset(&block);
    sigaddset(&block, SIGALRM);
    if (sigprocmask(SIG_BLOCK, &block, &waitmask) != 0)
        die("sigprocmask");
    sigdelset(&waitmask, SIGALRM);

    struct itimerval every = {{0, 20000}, {0, 20000}};
    if (setitimer(ITIMER_REAL, &every, NULL) != 0)
        die("setitimer");

    uint64_t sum = 0;
    for (uint64_t t = 1; t <= ticks; t++) {
        sig_atomic_t seen = alarms;
        while (alarms == seen)
            sigsuspend(&waitmask); /* always returns -1/EINTR */

        if (t % 10 == 0 && raise(SIGUSR2) != 0)
            die("raise");
        check_signal_state(t);

        sum = sum * 6364136223846793005ull + t * 1442695040888963407ull + (uint64_t)own_usr2;
        printf("tick %" PRIu64 " usr2 %d foreign %d sum %016" PRIx64 "\n", t, (int)own_usr2,
               (int)foreign_usr2, sum);
        fflush(stdout);
    }

    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    printf("done usr2 %d foreign %d sum %016" PRIx64 " alarms %s\n", (int)own_usr2,
           (int)foreign_usr2, sum, alarms >= (sig_atomic_t)ticks ? "enough" : "too-few");
    fflush(stdout);
    return 0;
}
