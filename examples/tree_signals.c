/*
 * tree_signals: processes of one tree that signal each other with SIGUSR2
 * as their own protocol, for ckrun's end-to-end tests (issue 5). ckrun's
 * trigger is SIGUSR2 too: a SIGUSR2 sent from inside the tree must reach
 * the program's handler like any signal and must never make an image; only
 * one sent from outside means "checkpoint".
 *
 * A parent and two children, each counting the SIGUSR2s it receives in a
 * SA_SIGINFO handler, by sender (si_pid): parent, sibling, itself. Every
 * tick, strictly one signal at a time (each is acknowledged through a
 * pipe before the next is sent, so that no two are ever pending together
 * and merged into one):
 *   1. the parent signals child B; B signals its sibling A, then
 *      acknowledges; A acknowledges the sibling's signal;
 *   2. the parent signals A; A signals the parent (kill(getppid())), then
 *      itself (raise), then acknowledges; the parent waits in sigsuspend
 *      for its own handler to have counted A's signal.
 * Each acknowledgement carries the sender's counts, which must be exactly
 * what the tick number says; the parent prints them. SIGUSR2 is blocked
 * outside sigsuspend (and unblocked around raise, which then delivers at
 * once), so the counts never depend on timing.
 *
 * A child leaves after its last expected signal with exit status 20 (A) or
 * 21 (B) when all its counts are right, 1 otherwise. Any failed check
 * prints "FAIL ..." on stderr and exits 1.
 *
 * Output: "tick N parent P a F/S/M b F/S/M" per tick (flushed; F: from the
 * parent, S: from the sibling, M: from itself), then "child a exit 20",
 * "child b exit 21", "done ...". 20 ms pacing, 150 ticks: about 3 s. Exit 0.
 *
 * Usage: tree_signals [TICKS]   (default 150)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PACE_NS 20000000L /* 20 ms */

/* Counts by sender, written only by the handler. */
static volatile sig_atomic_t from_parent, from_sibling, from_self, from_other;
static pid_t parent_pid;
static const char *who = "parent";

struct ack {
    int32_t from_parent, from_sibling, from_self, from_other;
};

static void fail(const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "FAIL tree_signals %s: %s\n", who, msg);
    exit(1);
}

static void on_usr2(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    (void)uc;
    pid_t me = getpid();
    if (si->si_code != SI_USER && si->si_code != SI_TKILL)
        from_other++;
    else if (si->si_pid == me)
        from_self++;
    else if (me != parent_pid && si->si_pid == parent_pid)
        from_parent++;
    else
        from_sibling++; /* in the parent: from a child */
}

static int total(void)
{
    return from_parent + from_sibling + from_self + from_other;
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

static void write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            fail("write: %s", strerror(errno));
        p += n;
        len -= (size_t)n;
    }
}

static void read_all(int fd, void *buf, size_t len)
{
    char *p = buf;
    while (len > 0) {
        ssize_t n = read(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            fail("read: %s", n == 0 ? "end of file" : strerror(errno));
        p += n;
        len -= (size_t)n;
    }
}

/* Waits (SIGUSR2 blocked outside) until counts other than from_self
 * reach `want`. */
static void wait_signals(int want, const sigset_t *open)
{
    while (from_parent + from_sibling + from_other < want)
        sigsuspend(open);
}

static void send(pid_t pid)
{
    if (kill(pid, SIGUSR2) != 0)
        fail("kill(%d, SIGUSR2): %s", (int)pid, strerror(errno));
}

static void ack(int fd)
{
    struct ack a = {from_parent, from_sibling, from_self, from_other};
    write_all(fd, &a, sizeof a);
}

/* Child A: per tick, one signal from its sibling B, then one from the
 * parent; answers the parent's with a signal to the parent and one to
 * itself. Acknowledges each. */
static void child_a(int out, uint64_t ticks, const sigset_t *open, const sigset_t *usr2)
{
    who = "child a";
    for (uint64_t t = 1; t <= ticks; t++) {
        wait_signals((int)(2 * t - 1), open);
        ack(out);
        wait_signals((int)(2 * t), open);
        send(getppid());
        sigprocmask(SIG_UNBLOCK, usr2, NULL);
        raise(SIGUSR2);
        sigprocmask(SIG_BLOCK, usr2, NULL);
        ack(out);
    }
    int ok = from_parent == (int)ticks && from_sibling == (int)ticks && from_self == (int)ticks && from_other == 0;
    _exit(ok ? 20 : 1);
}

/* Child B: per tick, one signal from the parent, answered by a signal to
 * its sibling A, then acknowledged. */
static void child_b(pid_t sibling, int out, uint64_t ticks, const sigset_t *open)
{
    who = "child b";
    for (uint64_t t = 1; t <= ticks; t++) {
        wait_signals((int)t, open);
        send(sibling);
        ack(out);
    }
    int ok = from_parent == (int)ticks && from_sibling == 0 && from_self == 0 && from_other == 0;
    _exit(ok ? 21 : 1);
}

static void check(const char *name, const struct ack *a, int p, int s, int m, uint64_t t)
{
    if (a->from_parent != p || a->from_sibling != s || a->from_self != m || a->from_other != 0)
        fail("tick %" PRIu64 ": %s counts %d/%d/%d/%d, expected %d/%d/%d/0", t, name, a->from_parent,
             a->from_sibling, a->from_self, a->from_other, p, s, m);
}

static void reap(pid_t pid, const char *name)
{
    int status;
    pid_t r;
    while ((r = waitpid(pid, &status, 0)) < 0 && errno == EINTR)
        ;
    if (r != pid)
        fail("waitpid(%s): %s", name, strerror(errno));
    if (WIFEXITED(status))
        printf("%s exit %d\n", name, WEXITSTATUS(status));
    else
        printf("%s killed by signal %d\n", name, WTERMSIG(status));
}

int main(int argc, char **argv)
{
    uint64_t ticks = argc > 1 ? strtoull(argv[1], NULL, 10) : 150;
    parent_pid = getpid();

    sigset_t usr2, open;
    sigemptyset(&usr2);
    sigaddset(&usr2, SIGUSR2);
    if (sigprocmask(SIG_BLOCK, &usr2, &open) != 0)
        fail("sigprocmask: %s", strerror(errno));
    sigdelset(&open, SIGUSR2);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_usr2;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGUSR2, &sa, NULL) != 0)
        fail("sigaction: %s", strerror(errno));

    int pa[2], pb[2];
    if (pipe(pa) != 0 || pipe(pb) != 0)
        fail("pipe: %s", strerror(errno));
    fflush(stdout);
    pid_t a = fork();
    if (a < 0)
        fail("fork: %s", strerror(errno));
    if (a == 0) {
        close(pa[0]);
        close(pb[0]);
        close(pb[1]);
        child_a(pa[1], ticks, &open, &usr2);
    }
    pid_t b = fork();
    if (b < 0)
        fail("fork: %s", strerror(errno));
    if (b == 0) {
        close(pa[0]);
        close(pa[1]);
        close(pb[0]);
        child_b(a, pb[1], ticks, &open);
    }
    close(pa[1]);
    close(pb[1]);

    for (uint64_t t = 1; t <= ticks; t++) {
        struct ack ab, aa1, aa2;
        int n = (int)t;
        send(b);
        read_all(pb[0], &ab, sizeof ab);
        check("b", &ab, n, 0, 0, t);
        read_all(pa[0], &aa1, sizeof aa1);
        check("a (after b)", &aa1, n - 1, n, n - 1, t);
        send(a);
        read_all(pa[0], &aa2, sizeof aa2);
        check("a", &aa2, n, n, n, t);
        while (total() < n)
            sigsuspend(&open);
        if (from_sibling != n || total() != n)
            fail("tick %" PRIu64 ": parent counts %d/%d/%d/%d", t, from_parent, from_sibling, from_self, from_other);
        printf("tick %" PRIu64 " parent %d a %d/%d/%d b %d/%d/%d\n", t, (int)from_sibling, aa2.from_parent,
               aa2.from_sibling, aa2.from_self, ab.from_parent, ab.from_sibling, ab.from_self);
        fflush(stdout);
        pace();
    }
    reap(a, "child a");
    reap(b, "child b");
    printf("done parent %d signals from children, %d from elsewhere\n", (int)from_sibling,
           (int)(from_parent + from_self + from_other));
    fflush(stdout);
    return 0;
}
