/*
 * blocked: threads that spend their lives blocked in the kernel, or in odd
 * thread set-ups, for ckrun's end-to-end tests. A checkpoint must stop each
 * of them wherever it is, and a restart must put each back so that its
 * blocking call carries on (restarted by the kernel, or failing with EINTR
 * where the kernel says so, which the program handles like any signal).
 *
 *   - "futex":    waits on a condition variable (futex) for 40 ticks at a
 *                 time; main wakes it every 40 ticks and waits for its ack.
 *   - "reader":   blocked in read() on a pipe; main writes a byte every 20
 *                 ticks and waits for the ack.
 *   - "poller":   blocked in poll(-1) on another pipe (EINTR: polls again);
 *                 main writes a byte every 25 ticks.
 *   - "acceptor": blocked in accept() on a listening unix socket (abstract
 *                 name, with the pid in it); main connects at ticks 70 and
 *                 140 and sends one byte.
 *   - "sleeper":  sleeps 250 ms at a time with nanosleep() until main says
 *                 stop (tick 190). A signal handler, the agent's too, makes
 *                 nanosleep return EINTR early, and a restored thread that
 *                 was sleeping wakes with EINTR: like any program that
 *                 handles signals, it loops until its own deadline
 *                 (CLOCK_MONOTONIC), so early wake-ups change nothing.
 *   - "altstack": has its own sigaltstack and waits in pause(); main sends
 *                 it SIGUSR1 (SA_ONSTACK handler) every 10 ticks. The
 *                 handler checks that it runs on that alternate stack and
 *                 that sigaltstack() reports SS_ONSTACK: the alternate
 *                 stack is per-thread kernel state a restart must restore.
 *   - "masked":   blocks every signal with pthread_sigmask (the agent must
 *                 still be able to stop it, so its own signals stay
 *                 deliverable) and checks every 5 ms that the mask is
 *                 still all-blocked. Main sends it SIGTERM at tick 20 (it
 *                 stays pending: blocked); at tick 180 the thread must
 *                 still find it pending with sigtimedwait(), i.e. a
 *                 thread's pending signals survive checkpoint and restart.
 *   - "raw":      created with clone() (CLONE_VM|CLONE_FS|CLONE_FILES|
 *                 CLONE_SIGHAND|CLONE_THREAD|CLONE_SYSVSEM, plus
 *                 CLONE_PARENT_SETTID|CLONE_CHILD_CLEARTID), its own mmap'd
 *                 stack, no TLS of its own (it shares main's, so it only
 *                 uses raw syscalls). It counts in a loop with 1 ms sleeps,
 *                 checks its TID every step and exits with SYS_exit when
 *                 main says stop; main waits for the kernel to clear the
 *                 child TID word (clear-child-tid must survive a restart).
 *                 Main also checks that the count moves between ticks 180
 *                 and 190.
 *
 * Every value printed depends only on the tick number (main waits for each
 * ack), so a restored run prints exactly what a bare run does. A failed
 * check prints "blocked: FAIL: <thread>: ..." on stderr; the failing
 * thread stops, the others carry on (so that one run shows every problem),
 * and the program exits 1 at the end. Waits for a thread give up after 15 s.
 *
 * Output: "tick N futex=F read=R poll=P accept=A alt=S" per tick
 * (flushed), then "done ...". ~20 ms pacing over 200 ticks: about 4 s.
 *
 * Usage: blocked [nofd]   ("nofd": without reader, poller and acceptor,
 * whose pipes and socket need ckrun to restore such fds). Exit code 0.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define TICKS 200
#define PACE_NS 20000000L /* 20 ms */
#define WAIT_TIMEOUT_S 15
#define FUTEX_EVERY 40
#define READ_EVERY 20
#define POLL_EVERY 25
#define ACCEPT_AT_1 70
#define ACCEPT_AT_2 140
#define ALT_EVERY 10
#define SIGTERM_AT 20
#define PENDING_CHECK_AT 180
#define SLEEPER_STOP_AT 190
#define RAW_SAMPLE_1 180
#define RAW_SAMPLE_2 190
#define RAW_STOP_AT 195
#define RAW_STACK (256 * 1024)
#define ALT_SIZE (64 * 1024)

enum { FUTEX, READER, POLLER, ACCEPTOR, SLEEPER, ALTSTACK, MASKED, RAW, MAIN, NROLES };
static const char *const names[NROLES] = {"futex",    "reader", "poller", "acceptor", "sleeper",
                                          "altstack", "masked", "raw",    "main"};

static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv; /* CLOCK_MONOTONIC */

/* Under m. */
static int started;
static int futex_gen, futex_seen;
static int read_count, poll_count, accept_count;
static int sleeper_stop, masked_stop, pending_request, pending_done;
static int failed[NROLES];
static int nfailures;

static int use_fds = 1;
static int read_pipe[2] = {-1, -1}, poll_pipe[2] = {-1, -1};
static int listen_fd = -1;
static struct sockaddr_un addr;
static socklen_t addr_len;

/* altstack thread */
static char *alt_base;
static volatile sig_atomic_t alt_count, alt_bad, alt_stop;
static pthread_t alt_thread;

/* raw clone thread: touched with atomics only. */
static _Atomic long raw_counter;
static _Atomic int raw_stop, raw_bad;
static volatile pid_t raw_ptid, raw_ctid;

static void report(int role, const char *fmt, ...)
{
    char buf[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fprintf(stderr, "blocked: FAIL: %s: %s\n", names[role], buf);
    pthread_mutex_lock(&m);
    if (!failed[role])
        nfailures++;
    failed[role] = 1;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&m);
}

static struct timespec deadline_in(long sec, long nsec)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += sec;
    ts.tv_nsec += nsec;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

static int before(const struct timespec *a, const struct timespec *b)
{
    return a->tv_sec < b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

/* Sleeps until `dl` (CLOCK_MONOTONIC), whatever interrupts nanosleep. */
static int sleep_until(const struct timespec *dl)
{
    int eintr = 0;
    for (;;) {
        struct timespec now, req;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (!before(&now, dl))
            return eintr;
        req.tv_sec = dl->tv_sec - now.tv_sec;
        req.tv_nsec = dl->tv_nsec - now.tv_nsec;
        if (req.tv_nsec < 0) {
            req.tv_sec--;
            req.tv_nsec += 1000000000L;
        }
        if (nanosleep(&req, NULL) == -1) {
            if (errno != EINTR)
                return -1;
            eintr++;
        }
    }
}

/* Main, under m: waits until `cond` holds or `role` has failed. */
#define WAIT_ACK(role, cond, what)                                                                              \
    do {                                                                                                        \
        struct timespec dl_ = deadline_in(WAIT_TIMEOUT_S, 0);                                                   \
        while (!(cond) && !failed[role]) {                                                                      \
            if (pthread_cond_clockwait(&cv, &m, CLOCK_MONOTONIC, &dl_) == ETIMEDOUT) {                          \
                pthread_mutex_unlock(&m);                                                                       \
                report(role, "no ack within %d s for %s", WAIT_TIMEOUT_S, what);                                \
                pthread_mutex_lock(&m);                                                                         \
            }                                                                                                   \
        }                                                                                                       \
    } while (0)

static pid_t enter(int role)
{
    pthread_setname_np(pthread_self(), names[role]);
    pthread_mutex_lock(&m);
    started++;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&m);
    return gettid();
}

static int tid_ok(int role, pid_t recorded)
{
    if (gettid() == recorded)
        return 1;
    report(role, "gettid() is %d, was %d at start", (int)gettid(), (int)recorded);
    return 0;
}

static void ack(int *counter)
{
    pthread_mutex_lock(&m);
    (*counter)++;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&m);
}

/* ---- futex ---- */
static void *futex_thread(void *arg)
{
    (void)arg;
    pid_t me = enter(FUTEX);
    pthread_mutex_lock(&m);
    for (;;) {
        while (futex_gen == futex_seen)
            pthread_cond_wait(&cv, &m);
        futex_seen = futex_gen;
        pthread_cond_broadcast(&cv);
        if (futex_seen == TICKS / FUTEX_EVERY)
            break;
    }
    pthread_mutex_unlock(&m);
    tid_ok(FUTEX, me);
    return NULL;
}

/* ---- reader ---- */
static void *reader_thread(void *arg)
{
    (void)arg;
    pid_t me = enter(READER);
    for (int expect = 1;; expect++) {
        unsigned char b;
        ssize_t n;
        do
            n = read(read_pipe[0], &b, 1);
        while (n < 0 && errno == EINTR);
        if (n == 0)
            break;
        if (n < 0) {
            report(READER, "read(pipe): %s", strerror(errno));
            return NULL;
        }
        if (b != (unsigned char)expect || !tid_ok(READER, me)) {
            report(READER, "byte %d reads %d", expect, b);
            return NULL;
        }
        ack(&read_count);
    }
    return NULL;
}

/* ---- poller ---- */
static void *poller_thread(void *arg)
{
    (void)arg;
    pid_t me = enter(POLLER);
    for (int expect = 1;; expect++) {
        struct pollfd p = {.fd = poll_pipe[0], .events = POLLIN};
        int r;
        do
            r = poll(&p, 1, -1);
        while (r < 0 && errno == EINTR);
        if (r != 1 || (p.revents & (POLLNVAL | POLLERR))) {
            report(POLLER, "poll returned %d, revents %#x: %s", r, p.revents, r < 0 ? strerror(errno) : "-");
            return NULL;
        }
        unsigned char b;
        ssize_t n = read(poll_pipe[0], &b, 1);
        if (n == 0)
            break;
        if (n != 1 || b != (unsigned char)expect || !tid_ok(POLLER, me)) {
            report(POLLER, "read after poll: %zd, byte %d (expected %d)", n, n == 1 ? b : -1, expect);
            return NULL;
        }
        ack(&poll_count);
    }
    return NULL;
}

/* ---- acceptor ---- */
static void *acceptor_thread(void *arg)
{
    (void)arg;
    pid_t me = enter(ACCEPTOR);
    for (int expect = 1;; expect++) {
        int c;
        do
            c = accept(listen_fd, NULL, NULL);
        while (c < 0 && errno == EINTR);
        if (c < 0) {
            report(ACCEPTOR, "accept: %s", strerror(errno));
            return NULL;
        }
        unsigned char b;
        ssize_t n;
        do
            n = read(c, &b, 1);
        while (n < 0 && errno == EINTR);
        close(c);
        if (n == 1 && b == 0)
            break; /* main's "stop" connection */
        if (n != 1 || b != (unsigned char)expect || !tid_ok(ACCEPTOR, me)) {
            report(ACCEPTOR, "connection %d: read %zd, byte %d", expect, n, n == 1 ? b : -1);
            return NULL;
        }
        ack(&accept_count);
    }
    return NULL;
}

/* ---- sleeper ---- */
static void *sleeper_thread(void *arg)
{
    (void)arg;
    pid_t me = enter(SLEEPER);
    for (;;) {
        struct timespec dl = deadline_in(0, 250000000L);
        if (sleep_until(&dl) < 0) {
            report(SLEEPER, "nanosleep: %s", strerror(errno));
            return NULL;
        }
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (before(&now, &dl)) {
            report(SLEEPER, "woke before its deadline");
            return NULL;
        }
        if (!tid_ok(SLEEPER, me))
            return NULL;
        pthread_mutex_lock(&m);
        int stop = sleeper_stop;
        pthread_mutex_unlock(&m);
        if (stop)
            return NULL;
    }
}

/* ---- altstack ---- */
static void on_usr1(int sig)
{
    (void)sig;
    char here;
    stack_t cur;
    if (&here < alt_base || &here >= alt_base + ALT_SIZE)
        alt_bad |= 1; /* not on the alternate stack */
    if (sigaltstack(NULL, &cur) != 0 || !(cur.ss_flags & SS_ONSTACK) || cur.ss_sp != alt_base ||
        cur.ss_size != ALT_SIZE)
        alt_bad |= 2;
    alt_count++;
}

static void *altstack_thread(void *arg)
{
    (void)arg;
    alt_base = malloc(ALT_SIZE);
    stack_t ss = {.ss_sp = alt_base, .ss_size = ALT_SIZE, .ss_flags = 0};
    if (!alt_base || sigaltstack(&ss, NULL) != 0) {
        report(ALTSTACK, "sigaltstack: %s", strerror(errno));
        return NULL;
    }
    pid_t me = enter(ALTSTACK);
    while (!alt_stop) {
        pause();
        if (alt_bad) {
            report(ALTSTACK, "SIGUSR1 handler %s (signal %d)",
                   alt_bad & 1 ? "ran off the alternate stack" : "saw a wrong sigaltstack() setting",
                   (int)alt_count);
            return NULL;
        }
        if (!tid_ok(ALTSTACK, me))
            return NULL;
    }
    return NULL;
}

/* ---- masked ---- */
static void *masked_thread(void *arg)
{
    (void)arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    pid_t me = enter(MASKED);
    static const int probe[] = {SIGINT, SIGTERM, SIGUSR1, SIGHUP, SIGALRM, SIGCHLD, 34, 40, 50};
    for (;;) {
        struct timespec dl = deadline_in(0, 5000000L);
        sleep_until(&dl);
        sigset_t cur;
        pthread_sigmask(SIG_BLOCK, NULL, &cur);
        for (size_t i = 0; i < sizeof probe / sizeof probe[0]; i++) {
            if (!sigismember(&cur, probe[i])) {
                report(MASKED, "signal %d is no longer blocked", probe[i]);
                return NULL;
            }
        }
        if (!tid_ok(MASKED, me))
            return NULL;
        pthread_mutex_lock(&m);
        int check_pending = pending_request && !pending_done;
        int stop = masked_stop;
        pthread_mutex_unlock(&m);
        if (check_pending) {
            sigset_t term;
            sigemptyset(&term);
            sigaddset(&term, SIGTERM);
            struct timespec zero = {0, 0};
            siginfo_t info;
            int s = sigtimedwait(&term, &info, &zero);
            if (s != SIGTERM) {
                report(MASKED, "the SIGTERM sent at tick %d is no longer pending (sigtimedwait: %d, %s)", SIGTERM_AT,
                       s, s < 0 ? strerror(errno) : "-");
                return NULL;
            }
            if (info.si_pid != getpid()) {
                report(MASKED, "the pending SIGTERM lost its siginfo: si_pid %d (expected %d), si_code %d",
                       (int)info.si_pid, (int)getpid(), info.si_code);
                return NULL;
            }
            ack(&pending_done);
        }
        if (stop)
            return NULL;
    }
}

/* ---- raw clone thread: raw syscalls only (it shares main's TLS) ---- */
static long sys6(long n, long a, long b, long c, long d, long e, long f)
{
    long ret;
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}

static int raw_main(void *arg)
{
    (void)arg;
    long me = sys6(SYS_gettid, 0, 0, 0, 0, 0, 0);
    while (!atomic_load(&raw_stop)) {
        if (sys6(SYS_gettid, 0, 0, 0, 0, 0, 0) != me)
            atomic_store(&raw_bad, 1);
        atomic_fetch_add(&raw_counter, 1);
        struct timespec ms = {0, 1000000L};
        sys6(SYS_nanosleep, (long)&ms, 0, 0, 0, 0, 0); /* EINTR is fine */
    }
    sys6(SYS_exit, 0, 0, 0, 0, 0, 0);
    return 0;
}

static void start_raw(void)
{
    char *stack = mmap(NULL, RAW_STACK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED) {
        report(RAW, "mmap stack: %s", strerror(errno));
        return;
    }
    int flags = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM |
                CLONE_PARENT_SETTID | CLONE_CHILD_CLEARTID;
    int tid = clone(raw_main, stack + RAW_STACK, flags, NULL, &raw_ptid, NULL, &raw_ctid);
    if (tid < 0)
        report(RAW, "clone: %s", strerror(errno));
    else
        raw_ctid = tid; /* the kernel clears it (and wakes us) when the thread exits */
}

/* Main: waits for the raw thread's exit through its clear-child-tid word. */
static void join_raw(void)
{
    struct timespec dl = deadline_in(WAIT_TIMEOUT_S, 0);
    for (;;) {
        pid_t t = raw_ctid;
        if (t == 0)
            return;
        struct timespec now, rel = {0, 100000000L};
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (!before(&now, &dl)) {
            report(RAW, "clear-child-tid word still %d %d s after stop (exit not seen)", (int)t, WAIT_TIMEOUT_S);
            return;
        }
        syscall(SYS_futex, &raw_ctid, FUTEX_WAIT, t, &rel, NULL, 0);
    }
}

/* ---- main ---- */
static void pace(void)
{
    struct timespec dl = deadline_in(0, PACE_NS);
    sleep_until(&dl);
}

static void send_byte(int role, int fd, unsigned char b)
{
    if (failed[role])
        return;
    if (write(fd, &b, 1) != 1)
        report(role, "main: write to its pipe: %s", strerror(errno));
}

static void connect_and_send(unsigned char b)
{
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0 || connect(s, (struct sockaddr *)&addr, addr_len) != 0 || write(s, &b, 1) != 1)
        report(ACCEPTOR, "main: connect/send to the listening socket: %s", strerror(errno));
    if (s >= 0)
        close(s);
}

static void setup_fds(void)
{
    if (pipe(read_pipe) != 0 || pipe(poll_pipe) != 0) {
        perror("blocked: pipe");
        exit(2);
    }
    listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    int n = snprintf(addr.sun_path + 1, sizeof addr.sun_path - 1, "ckrun-blocked-%d", (int)getpid());
    addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
    if (listen_fd < 0 || bind(listen_fd, (struct sockaddr *)&addr, addr_len) != 0 || listen(listen_fd, 4) != 0) {
        perror("blocked: listening socket");
        exit(2);
    }
}

int main(int argc, char **argv)
{
    use_fds = !(argc > 1 && strcmp(argv[1], "nofd") == 0);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&cv, &ca);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_ONSTACK;
    sigaction(SIGUSR1, &sa, NULL);

    if (use_fds)
        setup_fds();

    pthread_t th[NROLES];
    int created[NROLES] = {0};
    void *(*body[NROLES])(void *) = {futex_thread,   reader_thread,   poller_thread, acceptor_thread,
                                     sleeper_thread, altstack_thread, masked_thread};
    int nthreads = 0;
    for (int i = 0; i < RAW; i++) {
        if (!use_fds && (i == READER || i == POLLER || i == ACCEPTOR))
            continue;
        if (pthread_create(&th[i], NULL, body[i], NULL) != 0) {
            perror("blocked: pthread_create");
            exit(2);
        }
        created[i] = 1;
        nthreads++;
    }
    alt_thread = th[ALTSTACK];
    pthread_mutex_lock(&m);
    WAIT_ACK(MAIN, started == nthreads || nfailures, "the threads to start");
    pthread_mutex_unlock(&m);
    start_raw();

    long raw_at_1 = 0;
    for (int t = 1; t <= TICKS; t++) {
        pace();
        if (t % FUTEX_EVERY == 0) {
            pthread_mutex_lock(&m);
            futex_gen++;
            pthread_cond_broadcast(&cv);
            WAIT_ACK(FUTEX, futex_seen == futex_gen, "a condition variable wake-up");
            pthread_mutex_unlock(&m);
        }
        if (use_fds && t % READ_EVERY == 0) {
            send_byte(READER, read_pipe[1], (unsigned char)(t / READ_EVERY));
            pthread_mutex_lock(&m);
            WAIT_ACK(READER, read_count == t / READ_EVERY, "a byte through the pipe");
            pthread_mutex_unlock(&m);
        }
        if (use_fds && t % POLL_EVERY == 0) {
            send_byte(POLLER, poll_pipe[1], (unsigned char)(t / POLL_EVERY));
            pthread_mutex_lock(&m);
            WAIT_ACK(POLLER, poll_count == t / POLL_EVERY, "a byte through the polled pipe");
            pthread_mutex_unlock(&m);
        }
        if (use_fds && (t == ACCEPT_AT_1 || t == ACCEPT_AT_2)) {
            int n = t == ACCEPT_AT_1 ? 1 : 2;
            if (!failed[ACCEPTOR])
                connect_and_send((unsigned char)n);
            pthread_mutex_lock(&m);
            WAIT_ACK(ACCEPTOR, accept_count == n, "a connection");
            pthread_mutex_unlock(&m);
        }
        if (t % ALT_EVERY == 0 && !failed[ALTSTACK]) {
            int want = alt_count + 1;
            if (t == TICKS)
                alt_stop = 1;
            pthread_kill(alt_thread, SIGUSR1);
            struct timespec dl = deadline_in(WAIT_TIMEOUT_S, 0), now;
            for (;;) {
                clock_gettime(CLOCK_MONOTONIC, &now);
                if (alt_count >= want || failed[ALTSTACK])
                    break;
                if (!before(&now, &dl)) {
                    report(ALTSTACK, "SIGUSR1 not handled within %d s", WAIT_TIMEOUT_S);
                    break;
                }
                struct timespec ms = {0, 1000000L};
                nanosleep(&ms, NULL);
            }
        }
        if (t == SIGTERM_AT)
            pthread_kill(th[MASKED], SIGTERM);
        if (t == PENDING_CHECK_AT) {
            pthread_mutex_lock(&m);
            pending_request = 1;
            WAIT_ACK(MASKED, pending_done, "the pending SIGTERM check");
            pthread_mutex_unlock(&m);
        }
        if (t == SLEEPER_STOP_AT) {
            pthread_mutex_lock(&m);
            sleeper_stop = 1;
            pthread_mutex_unlock(&m);
        }
        if (t == RAW_SAMPLE_1)
            raw_at_1 = atomic_load(&raw_counter);
        if (t == RAW_SAMPLE_2 && atomic_load(&raw_counter) == raw_at_1)
            report(RAW, "its counter did not move between ticks %d and %d", RAW_SAMPLE_1, RAW_SAMPLE_2);
        if (t == RAW_STOP_AT) {
            if (atomic_load(&raw_bad))
                report(RAW, "its gettid() changed");
            atomic_store(&raw_stop, 1);
            join_raw();
        }
        pthread_mutex_lock(&m);
        printf("tick %d futex=%d read=%d poll=%d accept=%d alt=%d\n", t, futex_seen, read_count, poll_count,
               accept_count, (int)alt_count);
        pthread_mutex_unlock(&m);
        fflush(stdout);
    }

    pthread_mutex_lock(&m);
    masked_stop = 1;
    pthread_mutex_unlock(&m);
    if (use_fds) {
        close(read_pipe[1]);
        close(poll_pipe[1]);
        if (!failed[ACCEPTOR])
            connect_and_send(0);
    }
    for (int i = 0; i < RAW; i++) {
        if (!created[i])
            continue;
        struct timespec dl;
        clock_gettime(CLOCK_REALTIME, &dl);
        dl.tv_sec += WAIT_TIMEOUT_S;
        if (pthread_timedjoin_np(th[i], NULL, &dl) != 0) {
            report(i, "not joined within %d s", WAIT_TIMEOUT_S);
            fflush(stdout);
            _exit(1);
        }
    }
    printf("done futex=%d read=%d poll=%d accept=%d alt=%d pending=%d raw=%s failures=%d\n", futex_seen,
           read_count, poll_count, accept_count, (int)alt_count, pending_done,
           atomic_load(&raw_counter) > 0 ? "counted" : "stuck", nfailures);
    fflush(stdout);
    return nfailures ? 1 : 0;
}
