/*
 * threads: a deterministic multi-threaded (pthreads) program for ckrun's
 * end-to-end tests. Every thread must come back from a restart with its
 * own TID, its TLS, its kernel-side state (robust list, clear-child-tid
 * address, name) and the locks it holds.
 *
 * Threads and what each one checks:
 *   - 4 workers take turns under one mutex + condition variable: each tick
 *     (a "round") worker 0, 1, 2, 3 in this order folds its id and the
 *     round into a shared hash. Each keeps a __thread turn counter and a
 *     __thread id that must match the shared copies every turn (TLS base
 *     restored), and checks gettid() against the TID it recorded at start.
 *     Worker 0 holds an ERRORCHECK mutex for its whole life (its owner is
 *     its TID in the mutex word: the final unlock fails with EPERM if the
 *     TID changed). Worker 1 holds a robust mutex from each odd round to the
 *     next even one, i.e. across tick boundaries (and checkpoints).
 *   - "early" exits at tick 10 (before any checkpoint of the tests) and is
 *     only joined at the very end: pthread_join of a thread that exited
 *     before the checkpoint must still work after a restart.
 *   - "dier" locks a second robust mutex at start and exits at tick 150
 *     while still holding it; main joins it (clear-child-tid wake-up) and
 *     must then get EOWNERDEAD. That only happens if the kernel knows the
 *     thread's robust list (set_robust_list) and the TID in the mutex word
 *     is the thread's own: both must survive a restart.
 *   - "reader" blocks in read() on a pipe; main writes one byte every 20
 *     ticks and waits for the reader to have consumed it. (Pipes are only
 *     restorable once ckrun supports them: without that, the restored
 *     reader gets EBADF and the program fails loudly. `threads nopipe`
 *     leaves this thread out.)
 *   - "sleeper" sleeps in nanosleep(); at tick 185 main sends it SIGUSR1
 *     (its handler records the TID it runs on: must be the sleeper's) and
 *     SIGUSR2 (ckrun's default trigger, but sent by the program to its own
 *     thread: it must reach the program's handler and produce no image);
 *     at tick 190 main cancels it and joins it (PTHREAD_CANCELED).
 *     pthread_kill/pthread_cancel use the TID stored in the thread's
 *     struct pthread: they only work if the TID is unchanged.
 *   - main checks its own TID (== pid), and every tick: an ERRORCHECK mutex
 *     (lock 0, relock EDEADLK, unlock 0, unlock again EPERM), trylock of
 *     worker 0's mutex (EBUSY), trylock of worker 1's robust mutex (EBUSY
 *     after odd rounds, 0 after even ones), and the names of all live
 *     threads (pthread_getname_np reads /proc/self/task/TID/comm: it fails
 *     if a thread's TID changed, and the name must be restored).
 *
 * Every printed value depends only on the tick number (waits for other
 * threads always wait for a known state), so a restored run prints exactly
 * what a bare run does. Any failed check prints "threads: FAIL ..." on
 * stderr and exits 1. Waits for another thread time out after 15 s.
 *
 * Output: "tick N hash=H pipe=P" per tick (flushed), then "done ...".
 * ~20 ms pacing over 200 ticks: about 4 s.
 *
 * "mainexit": main starts a "ticker" thread that runs all of the above,
 * and ends itself with pthread_exit(): the process lives on with a zombie
 * main thread, which a checkpoint cannot stop (someone else must lead it)
 * and a restart must leave ended.
 *
 * Usage: threads [nopipe] [mainexit]. Exit code 0.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define TICKS 200
#define NWORKERS 4
#define PACE_NS 20000000L /* 20 ms */
#define WAIT_TIMEOUT_S 15
#define EARLY_EXIT_TICK 10
#define DIER_EXIT_TICK 150
#define KILL_TICK 185
#define CANCEL_TICK 190
#define PIPE_EVERY 20

/* Thread roles, indexes of tids[] and names[]. */
enum { W0 = 0, EARLY = NWORKERS, DIER, READER, SLEEPER, NROLES };
static const char *const names[NROLES] = {"worker-0", "worker-1", "worker-2", "worker-3",
                                          "early",    "dier",     "reader",   "sleeper"};

static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv; /* CLOCK_MONOTONIC, for timed waits */

/* All below protected by m. */
static pid_t tids[NROLES];
static int started;
static int round_no; /* round being played (= tick), 0 before the first */
static int turn;     /* whose turn within the round */
static int stopping;
static int early_go, dier_go;
static int pipe_count; /* bytes the reader consumed */
static uint64_t hash = 0xcbf29ce484222325ull;
static long turns_shared[NWORKERS];
static uint64_t mix_result[NWORKERS];

static pthread_mutex_t errchk;      /* main: lock/relock/unlock every tick */
static pthread_mutex_t errchk_held; /* held by worker 0 for its whole life */
static pthread_mutex_t robust_tick; /* held by worker 1 across odd->even ticks */
static pthread_mutex_t robust_dier; /* held by "dier" when it exits */

static int pipefd[2] = {-1, -1};
static int use_pipe = 1;

static volatile sig_atomic_t usr1_count, usr2_count;
static volatile pid_t usr1_tid, usr2_tid;

static __thread long tls_turns;
static __thread int tls_id = -1;
static __thread uint64_t tls_mix;

static void fail(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fprintf(stderr, "threads: FAIL: %s\n", buf);
    _exit(1);
}

static uint64_t mix(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void check(int r, int want, const char *what)
{
    if (r != want)
        fail("%s returned %d (%s), expected %d (%s)", what, r, strerror(r), want, strerror(want));
}

static struct timespec deadline(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += WAIT_TIMEOUT_S;
    return ts;
}

/* Under m: waits for a broadcast, failing at the deadline. */
static void timed_wait(const struct timespec *dl, const char *what)
{
    int r = pthread_cond_clockwait(&cv, &m, CLOCK_MONOTONIC, dl);
    if (r == ETIMEDOUT)
        fail("main: no progress within %d s waiting for %s", WAIT_TIMEOUT_S, what);
    check(r, 0, "pthread_cond_clockwait");
}

#define WAIT_UNTIL(cond, what)                                                                                  \
    do {                                                                                                        \
        struct timespec dl_ = deadline();                                                                       \
        while (!(cond))                                                                                         \
            timed_wait(&dl_, what);                                                                             \
    } while (0)

static void lock(void) { check(pthread_mutex_lock(&m), 0, "lock m"); }
static void unlock(void) { check(pthread_mutex_unlock(&m), 0, "unlock m"); }

/* Records the calling thread's TID and name; called by each thread first. */
static pid_t enter(int role)
{
    pid_t me = gettid();
    check(pthread_setname_np(pthread_self(), names[role]), 0, "pthread_setname_np");
    lock();
    tids[role] = me;
    started++;
    pthread_cond_broadcast(&cv);
    unlock();
    return me;
}

static void check_tid(int role, pid_t recorded)
{
    pid_t now = gettid();
    if (now != recorded)
        fail("%s: gettid() is %d, was %d at start", names[role], (int)now, (int)recorded);
}

static void *worker(void *arg)
{
    int id = (int)(intptr_t)arg;
    pid_t me = enter(W0 + id);
    tls_id = id;
    tls_mix = mix((uint64_t)id);
    if (id == 0)
        check(pthread_mutex_lock(&errchk_held), 0, "worker 0: lock errorcheck mutex");
    int holding_robust = 0;
    int last = 0;

    lock();
    for (;;) {
        while (!stopping && !(round_no > last && turn == id))
            check(pthread_cond_wait(&cv, &m), 0, "pthread_cond_wait");
        if (stopping)
            break;
        last = round_no;
        check_tid(W0 + id, me);
        if (tls_id != id)
            fail("worker %d: __thread id reads %d", id, tls_id);
        if (tls_turns != turns_shared[id])
            fail("worker %d: __thread turn count %ld, shared copy %ld", id, tls_turns, turns_shared[id]);
        tls_turns++;
        turns_shared[id]++;
        tls_mix = mix(tls_mix ^ (uint64_t)last);
        hash = mix(hash ^ ((uint64_t)(id + 1) << 32 | (uint64_t)last));
        if (id == 1) {
            if (last % 2 == 1) {
                check(pthread_mutex_lock(&robust_tick), 0, "worker 1: lock robust mutex");
                holding_robust = 1;
            } else if (holding_robust) {
                check(pthread_mutex_unlock(&robust_tick), 0, "worker 1: unlock robust mutex");
                holding_robust = 0;
            }
        }
        turn++;
        pthread_cond_broadcast(&cv);
    }
    unlock();

    if (tls_turns != TICKS)
        fail("worker %d: played %ld turns, expected %d", id, tls_turns, TICKS);
    if (id == 0)
        check(pthread_mutex_unlock(&errchk_held), 0, "worker 0: unlock errorcheck mutex held since start");
    if (holding_robust)
        check(pthread_mutex_unlock(&robust_tick), 0, "worker 1: final unlock of robust mutex");
    check_tid(W0 + id, me);
    mix_result[id] = tls_mix;
    return NULL;
}

static void *early(void *arg)
{
    (void)arg;
    pid_t me = enter(EARLY);
    lock();
    while (!early_go)
        check(pthread_cond_wait(&cv, &m), 0, "early: pthread_cond_wait");
    unlock();
    check_tid(EARLY, me);
    return (void *)(intptr_t)0xea51;
}

static void *dier(void *arg)
{
    (void)arg;
    /* Locked before it counts as started: main relies on it being held. */
    check(pthread_mutex_lock(&robust_dier), 0, "dier: lock robust mutex");
    pid_t me = enter(DIER);
    lock();
    while (!dier_go)
        check(pthread_cond_wait(&cv, &m), 0, "dier: pthread_cond_wait");
    unlock();
    check_tid(DIER, me);
    /* Exits holding robust_dier: the kernel must mark it owner-dead. */
    return (void *)(intptr_t)0xd1e;
}

static void *reader(void *arg)
{
    (void)arg;
    pid_t me = enter(READER);
    int count = 0;
    for (;;) {
        unsigned char b;
        ssize_t n = read(pipefd[0], &b, 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            fail("reader: read(pipe) after %d bytes: %s", count, strerror(errno));
        if (n == 0)
            break;
        check_tid(READER, me);
        if (b != (unsigned char)(count + 1))
            fail("reader: byte %d reads %d", count + 1, b);
        count++;
        lock();
        pipe_count = count;
        pthread_cond_broadcast(&cv);
        unlock();
    }
    check_tid(READER, me);
    return (void *)(intptr_t)count;
}

static void on_usr1(int sig)
{
    (void)sig;
    usr1_tid = gettid();
    usr1_count++;
}

static void on_usr2(int sig, siginfo_t *info, void *uc)
{
    (void)sig;
    (void)uc;
    if (info->si_code == SI_TKILL && info->si_pid == getpid()) {
        usr2_tid = gettid();
        usr2_count++;
    } else {
        /* A checkpoint request leaked into the program. */
        usr2_count += 1000;
    }
}

static void *sleeper(void *arg)
{
    (void)arg;
    enter(SLEEPER);
    for (;;) {
        struct timespec ts = {1, 0};
        nanosleep(&ts, NULL); /* a cancellation point; EINTR is fine */
    }
    return NULL;
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

/* Waits (without m) until *counter reaches want. */
static void wait_signal_count(volatile sig_atomic_t *counter, int want, const char *what)
{
    struct timespec dl = deadline(), now;
    while (*counter < want) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec > dl.tv_sec || (now.tv_sec == dl.tv_sec && now.tv_nsec >= dl.tv_nsec))
            fail("main: %s not handled within %d s", what, WAIT_TIMEOUT_S);
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
}

static void join_within(pthread_t th, void *want, const char *what)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += WAIT_TIMEOUT_S;
    void *ret = NULL;
    int r = pthread_timedjoin_np(th, &ret, &dl);
    if (r == ETIMEDOUT)
        fail("main: %s did not end within %d s", what, WAIT_TIMEOUT_S);
    check(r, 0, what);
    if (ret != want)
        fail("main: %s returned %p, expected %p", what, ret, want);
}

static void check_names(pthread_t *th, const int *live)
{
    for (int i = 0; i < NROLES; i++) {
        if (!live[i])
            continue;
        char buf[16] = "";
        int r = pthread_getname_np(th[i], buf, sizeof buf);
        if (r != 0)
            fail("main: pthread_getname_np(%s, TID %d): %s", names[i], (int)tids[i], strerror(r));
        if (strcmp(buf, names[i]) != 0)
            fail("main: thread %s (TID %d) is named \"%s\"", names[i], (int)tids[i], buf);
    }
}

static void init_sync(void)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    check(pthread_cond_init(&cv, &ca), 0, "pthread_cond_init");

    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_ERRORCHECK);
    check(pthread_mutex_init(&errchk, &ma), 0, "init errorcheck mutex");
    check(pthread_mutex_init(&errchk_held, &ma), 0, "init errorcheck mutex");
    pthread_mutexattr_destroy(&ma);

    pthread_mutexattr_init(&ma);
    pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST);
    check(pthread_mutex_init(&robust_tick, &ma), 0, "init robust mutex");
    check(pthread_mutex_init(&robust_dier, &ma), 0, "init robust mutex");
    pthread_mutexattr_destroy(&ma);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_handler = NULL;
    sa.sa_sigaction = on_usr2;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGUSR2, &sa, NULL);
}

/* The program proper: run by main, or with "mainexit" by the "ticker"
 * thread after main has ended. */
static int run(void)
{
    pid_t me = gettid();
    init_sync();
    if (use_pipe && pipe(pipefd) != 0)
        fail("pipe: %s", strerror(errno));

    pthread_t th[NROLES];
    int live[NROLES] = {0};
    for (int i = 0; i < NWORKERS; i++)
        check(pthread_create(&th[W0 + i], NULL, worker, (void *)(intptr_t)i), 0, "pthread_create worker");
    check(pthread_create(&th[EARLY], NULL, early, NULL), 0, "pthread_create early");
    check(pthread_create(&th[DIER], NULL, dier, NULL), 0, "pthread_create dier");
    if (use_pipe)
        check(pthread_create(&th[READER], NULL, reader, NULL), 0, "pthread_create reader");
    check(pthread_create(&th[SLEEPER], NULL, sleeper, NULL), 0, "pthread_create sleeper");
    int nthreads = NROLES - !use_pipe;
    lock();
    WAIT_UNTIL(started == nthreads, "the threads to start");
    unlock();
    for (int i = 0; i < NROLES; i++)
        live[i] = i != READER || use_pipe;

    for (int t = 1; t <= TICKS; t++) {
        pace();
        if (gettid() != me)
            fail("main: gettid() is %d, was %d", (int)gettid(), (int)me);

        /* One round of turn-taking. */
        lock();
        round_no = t;
        turn = 0;
        pthread_cond_broadcast(&cv);
        WAIT_UNTIL(turn == NWORKERS, "a round of worker turns");
        uint64_t h = hash;
        unlock();

        check(pthread_mutex_lock(&errchk), 0, "errorcheck lock");
        check(pthread_mutex_lock(&errchk), EDEADLK, "errorcheck relock");
        check(pthread_mutex_unlock(&errchk), 0, "errorcheck unlock");
        check(pthread_mutex_unlock(&errchk), EPERM, "errorcheck unlock of an unlocked mutex");
        check(pthread_mutex_trylock(&errchk_held), EBUSY, "trylock of the mutex worker 0 holds");
        int r = pthread_mutex_trylock(&robust_tick);
        check(r, t % 2 == 1 ? EBUSY : 0, "trylock of worker 1's robust mutex");
        if (r == 0)
            check(pthread_mutex_unlock(&robust_tick), 0, "unlock robust mutex");
        check_names(th, live);

        if (t == EARLY_EXIT_TICK) {
            lock();
            early_go = 1;
            pthread_cond_broadcast(&cv);
            unlock();
            live[EARLY] = 0; /* joined at the very end */
        }
        if (use_pipe && t % PIPE_EVERY == 0) {
            unsigned char b = (unsigned char)(t / PIPE_EVERY);
            if (write(pipefd[1], &b, 1) != 1)
                fail("main: write(pipe) at tick %d: %s", t, strerror(errno));
            lock();
            WAIT_UNTIL(pipe_count == t / PIPE_EVERY, "the reader to consume a byte");
            unlock();
        }
        if (t == DIER_EXIT_TICK) {
            lock();
            dier_go = 1;
            pthread_cond_broadcast(&cv);
            unlock();
            live[DIER] = 0;
            join_within(th[DIER], (void *)(intptr_t)0xd1e, "join dier");
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += 5;
            r = pthread_mutex_timedlock(&robust_dier, &ts);
            if (r == ETIMEDOUT)
                fail("main: robust mutex of the exited thread not marked owner-dead (lock timed out)");
            check(r, EOWNERDEAD, "lock of the robust mutex its owner died holding");
            check(pthread_mutex_consistent(&robust_dier), 0, "pthread_mutex_consistent");
            check(pthread_mutex_unlock(&robust_dier), 0, "unlock recovered robust mutex");
        }
        if (t == KILL_TICK) {
            check(pthread_kill(th[SLEEPER], SIGUSR1), 0, "pthread_kill(sleeper, SIGUSR1)");
            wait_signal_count(&usr1_count, 1, "SIGUSR1 to the sleeper");
            if (usr1_tid != tids[SLEEPER])
                fail("main: SIGUSR1 for the sleeper (TID %d) ran on TID %d", (int)tids[SLEEPER], (int)usr1_tid);
            check(pthread_kill(th[SLEEPER], SIGUSR2), 0, "pthread_kill(sleeper, SIGUSR2)");
            wait_signal_count(&usr2_count, 1, "SIGUSR2 to the sleeper");
            if (usr2_count != 1 || usr2_tid != tids[SLEEPER])
                fail("main: SIGUSR2 count %d on TID %d (sleeper is %d)", (int)usr2_count, (int)usr2_tid,
                     (int)tids[SLEEPER]);
        }
        if (t == CANCEL_TICK) {
            check(pthread_cancel(th[SLEEPER]), 0, "pthread_cancel(sleeper)");
            live[SLEEPER] = 0;
            join_within(th[SLEEPER], PTHREAD_CANCELED, "join cancelled sleeper");
        }
        printf("tick %d hash=%016" PRIx64 " pipe=%d\n", t, h, use_pipe ? t / PIPE_EVERY : -1);
        fflush(stdout);
    }

    lock();
    stopping = 1;
    pthread_cond_broadcast(&cv);
    unlock();
    for (int i = 0; i < NWORKERS; i++)
        join_within(th[W0 + i], NULL, "join worker");
    int pipe_bytes = -1;
    if (use_pipe) {
        close(pipefd[1]);
        join_within(th[READER], (void *)(intptr_t)(TICKS / PIPE_EVERY), "join reader (bytes read)");
        pipe_bytes = TICKS / PIPE_EVERY;
    }
    join_within(th[EARLY], (void *)(intptr_t)0xea51, "join early (exited at tick 10)");
    if (usr2_count != 1 || usr1_count != 1)
        fail("main: usr1 %d usr2 %d at the end", (int)usr1_count, (int)usr2_count);

    printf("done hash=%016" PRIx64 " tls=%016" PRIx64 ",%016" PRIx64 ",%016" PRIx64 ",%016" PRIx64
           " pipe=%d robust=ownerdead usr1=%d usr2=%d cancel=ok early=joined\n",
           hash, mix_result[0], mix_result[1], mix_result[2], mix_result[3], pipe_bytes, (int)usr1_count,
           (int)usr2_count);
    fflush(stdout);
    return 0;
}

static void *ticker(void *arg)
{
    (void)arg;
    pthread_setname_np(pthread_self(), "ticker");
    exit(run());
}

int main(int argc, char **argv)
{
    int main_exits = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "nopipe") == 0)
            use_pipe = 0;
        else if (strcmp(argv[i], "mainexit") == 0)
            main_exits = 1;
        else
            fail("usage: threads [nopipe] [mainexit]");
    }
    if (gettid() != getpid())
        fail("main: gettid() %d != getpid() %d", (int)gettid(), (int)getpid());
    if (!main_exits)
        return run();
    pthread_t th;
    check(pthread_create(&th, NULL, ticker, NULL), 0, "pthread_create ticker");
    pthread_exit(NULL);
}
