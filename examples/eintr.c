/*
 * eintr: spends its time inside the blocking calls that the kernel never
 * restarts after a signal handler, so that checkpoints and restarts land
 * in them, and dies on any EINTR or early return it did not cause itself.
 *
 * Each tick sits in turn, for a few milliseconds, in: poll, ppoll, select,
 * pselect, epoll_wait, epoll_pwait, epoll_pwait2, semop (posted later by a
 * helper thread), semtimedop, msgrcv (a message sent later), msgsnd (on a
 * full queue drained later), nanosleep, clock_nanosleep (relative and
 * TIMER_ABSTIME), usleep, sleep (every 50 ticks), sigtimedwait,
 * sigwaitinfo (a signal sent later), recv / recvfrom / recvmsg / recvmmsg /
 * read / readv / accept with SO_RCVTIMEO, write / writev / sendmmsg with
 * SO_SNDTIMEO on a full socket (a timeout, or bytes taken once the queue
 * has room: never EINTR), thrd_sleep, sem_timedwait, sem_clockwait and,
 * with "aio",
 * io_getevents. Every call must end as it would without a checkpoint: a
 * timeout after at least its time (checked on CLOCK_MONOTONIC where the
 * kernel's timer is a high-resolution one), or the event the helper
 * provides.
 *
 * The program's own signals must still interrupt: pause and sigsuspend are
 * woken by the helper's pthread_kill(SIGUSR1) (blocked everywhere else),
 * and one of ppoll, pselect, epoll_pwait per tick waits 10 s with a mask
 * that lets SIGUSR1 in, which the helper sends after a few ms: each must
 * fail with EINTR, at once. Meanwhile a "noise" thread takes SIGALRM from
 * a 1 ms interval timer: the program's signals in another thread must not
 * let a checkpoint's EINTR through to the main thread.
 *
 * Before the ticks it checks that sigaction and signal report its own
 * handlers and flags, and that SA_RESETHAND works.
 *
 * Prints "tick N calls=C own=O" per tick (flushed) and a final "done ...";
 * exits 0. Any failure: a line "eintr: tick N: CALL: rc = R; errno = E
 * (...)" on stderr and exit 1.
 *
 * Usage: eintr [TICKS] [nosysv] [aio]
 *   nosysv  no System V semaphore or message queue (ckrun does not restore
 *           them: a restarted program finds them as the killed run left them)
 *   aio     also io_getevents, from libaio.so.1 if it is installed
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/select.h>
#include <sys/sem.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/uio.h>
#include <threads.h>
#include <time.h>
#include <unistd.h>

#define WAIT_MS 2
#define WAIT_NS (WAIT_MS * 1000000L)
#define LONG_S 10 /* what an own-signal check would wait if its signal were lost */
#define MSG_SIZE 64
#define QUEUE_BYTES (2 * MSG_SIZE)

static int tick;
static long calls, own_eintr;
static int use_sysv = 1, use_aio;

static pthread_t main_thread;
static int pipe_fd[2] = {-1, -1}, ep = -1, sv[2] = {-1, -1}, listener = -1, wv[2] = {-1, -1};
static int semid = -1, msqid = -1;
static sem_t psem;
static sigset_t blocked;     /* the program's mask: USR1, ALRM, RT2, RT3 */
static sigset_t let_usr1_in; /* the same without SIGUSR1 */

static volatile sig_atomic_t usr1_bad, winch_count;
static atomic_long alrm_count;
static atomic_int noise_stop, ack;

struct msg {
    long type;
    char text[MSG_SIZE];
};

/* ---- reporting ---- */

static void fail(const char *call, long rc, int err)
{
    fprintf(stderr, "eintr: tick %d: %s: rc = %ld; errno = %d (%s)\n", tick, call, rc, err, strerror(err));
    exit(1);
}

static void fail_msg(const char *call, const char *what)
{
    fprintf(stderr, "eintr: tick %d: %s: %s\n", tick, call, what);
    exit(1);
}

static void now(clockid_t c, struct timespec *t)
{
    clock_gettime(c, t);
}

static long long ns_between(const struct timespec *a, const struct timespec *b)
{
    return (long long)(b->tv_sec - a->tv_sec) * 1000000000LL + (b->tv_nsec - a->tv_nsec);
}

/* A timed call that returned its timeout must have waited its time. */
static void not_early(const char *call, const struct timespec *t0, long long ns)
{
    struct timespec t1;
    now(CLOCK_MONOTONIC, &t1);
    long long took = ns_between(t0, &t1);
    if (took < ns) {
        char what[96];
        snprintf(what, sizeof what, "returned after %lld ns, before its %lld ns", took, ns);
        fail_msg(call, what);
    }
}

static struct timespec in_ns(clockid_t c, long ns)
{
    struct timespec t;
    now(c, &t);
    t.tv_nsec += ns;
    if (t.tv_nsec >= 1000000000L) {
        t.tv_sec++;
        t.tv_nsec -= 1000000000L;
    }
    return t;
}

static void expect_rc(const char *call, long rc, long want)
{
    calls++;
    if (rc != want)
        fail(call, rc, rc < 0 ? errno : 0);
}

/* A blocking send on a full socket with SO_SNDTIMEO: its timeout, or some
 * bytes taken (a restored queue may have room that the killed one had
 * not); never an EINTR. */
static void expect_full(const char *call, long rc)
{
    calls++;
    if (rc == -1 && errno != EAGAIN)
        fail(call, rc, errno);
}

static void expect_err(const char *call, long rc, int want)
{
    calls++;
    if (rc != -1 || errno != want)
        fail(call, rc, rc < 0 ? errno : 0);
}

/* An EINTR the program's own SIGUSR1 caused. */
static void expect_own_eintr(const char *call, long rc)
{
    calls++;
    if (rc != -1 || errno != EINTR)
        fail(call, rc, rc < 0 ? errno : 0);
    own_eintr++;
}

/* ---- handlers ---- */

static void on_usr1(int sig, siginfo_t *info, void *uc)
{
    (void)uc;
    /* Not si_pid or si_code: a signal pending at a checkpoint comes back
     * with ckrun's (a limit of ckrun's, not what this program checks). */
    if (sig != SIGUSR1 || info->si_signo != SIGUSR1)
        usr1_bad = 1;
}

static void on_alrm(int sig)
{
    (void)sig;
    atomic_fetch_add(&alrm_count, 1);
}

static void on_winch(int sig)
{
    (void)sig;
    winch_count++;
}

/* ---- the helper: does, a few ms after main asks, what ends main's wait ---- */

enum { REQ_NONE, REQ_SEM_POST, REQ_MSG_SEND, REQ_MSG_DRAIN, REQ_USR1, REQ_USR1_UNTIL_ACK, REQ_RT3, REQ_STOP };

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int req_kind;
static unsigned req_seq, done_seq;

static void wait_done(void)
{
    pthread_mutex_lock(&mu);
    while (done_seq != req_seq)
        pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
}

static void request(int kind)
{
    wait_done();
    pthread_mutex_lock(&mu);
    req_kind = kind;
    req_seq++;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
}

/* The helper's own sleeps: no signal of the program reaches this thread. */
static void helper_sleep(long ns)
{
    struct timespec ts = {0, ns};
    int rc = nanosleep(&ts, NULL);
    if (rc != 0)
        fail("nanosleep (helper)", rc, errno);
}

static void *helper(void *arg)
{
    (void)arg;
    unsigned seen = 0;
    for (;;) {
        pthread_mutex_lock(&mu);
        while (req_seq == seen)
            pthread_cond_wait(&cv, &mu);
        int kind = req_kind;
        seen = req_seq;
        pthread_mutex_unlock(&mu);
        if (kind != REQ_STOP)
            helper_sleep(WAIT_NS);
        struct sembuf post = {0, 1, 0};
        struct msg m = {3, {0}};
        int rc = 0;
        switch (kind) {
        case REQ_SEM_POST:
            rc = semop(semid, &post, 1);
            break;
        case REQ_MSG_SEND:
            snprintf(m.text, sizeof m.text, "message %d", tick);
            rc = msgsnd(msqid, &m, sizeof m.text, IPC_NOWAIT);
            break;
        case REQ_MSG_DRAIN:
            rc = msgrcv(msqid, &m, sizeof m.text, 1, IPC_NOWAIT) == (ssize_t)sizeof m.text ? 0 : -1;
            break;
        case REQ_USR1:
            rc = pthread_kill(main_thread, SIGUSR1);
            break;
        case REQ_USR1_UNTIL_ACK:
            /* main may not be in pause() yet: send until it says it woke */
            while (!atomic_load(&ack) && rc == 0) {
                rc = pthread_kill(main_thread, SIGUSR1);
                helper_sleep(1000000L);
            }
            break;
        case REQ_RT3:
            rc = pthread_kill(main_thread, SIGRTMIN + 3);
            break;
        }
        if (rc != 0)
            fail("helper", rc, errno);
        pthread_mutex_lock(&mu);
        done_seq = seen;
        pthread_cond_broadcast(&cv);
        pthread_mutex_unlock(&mu);
        if (kind == REQ_STOP)
            return NULL;
    }
}

/* ---- the noise thread: the program's SIGALRMs land here ---- */

static void *noise(void *arg)
{
    (void)arg;
    sigset_t alrm;
    sigemptyset(&alrm);
    sigaddset(&alrm, SIGALRM);
    pthread_sigmask(SIG_UNBLOCK, &alrm, NULL);
    while (!atomic_load(&noise_stop)) {
        struct timespec ts = {0, 1000000L};
        if (nanosleep(&ts, NULL) != 0 && errno != EINTR) /* EINTR: its own SIGALRM */
            fail("nanosleep (noise)", -1, errno);
    }
    return NULL;
}

/* ---- set-up ---- */

static void check_handlers(void)
{
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_usr1;
    sa.sa_flags = SA_SIGINFO;
    if (sigaction(SIGUSR1, &sa, NULL) != 0)
        fail("sigaction(SIGUSR1)", -1, errno);
    if (sigaction(SIGUSR1, NULL, &old) != 0 || old.sa_sigaction != on_usr1 || !(old.sa_flags & SA_SIGINFO))
        fail_msg("sigaction(SIGUSR1)", "does not report the handler as installed");

    if (signal(SIGALRM, on_alrm) != SIG_DFL)
        fail_msg("signal(SIGALRM)", "the first call does not return SIG_DFL");
    if (signal(SIGALRM, on_alrm) != on_alrm)
        fail_msg("signal(SIGALRM)", "the second call does not return the handler");
    if (sigaction(SIGALRM, NULL, &old) != 0 || old.sa_handler != on_alrm || (old.sa_flags & SA_SIGINFO) ||
        !(old.sa_flags & SA_RESTART))
        fail_msg("sigaction(SIGALRM)", "does not report signal()'s handler and flags");

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_winch;
    sa.sa_flags = SA_RESETHAND;
    if (sigaction(SIGWINCH, &sa, NULL) != 0 || raise(SIGWINCH) != 0 || winch_count != 1)
        fail_msg("SA_RESETHAND", "the handler did not run once");
    if (sigaction(SIGWINCH, NULL, &old) != 0 || old.sa_handler != SIG_DFL)
        fail_msg("SA_RESETHAND", "the disposition was not reset");
}

static void setup(void)
{
    struct sockaddr_un addr;
    struct timeval rto = {0, WAIT_MS * 1000};
    if (pipe(pipe_fd) != 0 || (ep = epoll_create1(EPOLL_CLOEXEC)) < 0)
        fail("pipe/epoll_create1", -1, errno);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 7};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, pipe_fd[0], &ev) != 0)
        fail("epoll_ctl", -1, errno);
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0 ||
        setsockopt(sv[0], SOL_SOCKET, SO_RCVTIMEO, &rto, sizeof rto) != 0)
        fail("socketpair/SO_RCVTIMEO", -1, errno);
    int small = 4096;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, wv) != 0 ||
        setsockopt(wv[0], SOL_SOCKET, SO_SNDTIMEO, &rto, sizeof rto) != 0 ||
        setsockopt(wv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small) != 0)
        fail("socketpair/SO_SNDTIMEO", -1, errno);
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    int n = snprintf(addr.sun_path + 1, sizeof addr.sun_path - 1, "ckrun-eintr-%d", (int)getpid());
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
    listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listener < 0 || bind(listener, (struct sockaddr *)&addr, len) != 0 || listen(listener, 4) != 0 ||
        setsockopt(listener, SOL_SOCKET, SO_RCVTIMEO, &rto, sizeof rto) != 0)
        fail("listening socket", -1, errno);
    if (sem_init(&psem, 0, 0) != 0)
        fail("sem_init", -1, errno);
    if (use_sysv) {
        semid = semget(IPC_PRIVATE, 1, IPC_CREAT | 0600);
        msqid = msgget(IPC_PRIVATE, IPC_CREAT | 0600);
        struct msqid_ds ds;
        if (semid < 0 || msqid < 0 || msgctl(msqid, IPC_STAT, &ds) != 0)
            fail("semget/msgget", -1, errno);
        ds.msg_qbytes = QUEUE_BYTES;
        if (msgctl(msqid, IPC_SET, &ds) != 0)
            fail("msgctl(IPC_SET)", -1, errno);
    }
}

static void remove_ipc(void)
{
    if (semid >= 0)
        semctl(semid, 0, IPC_RMID);
    if (msqid >= 0)
        msgctl(msqid, IPC_RMID, NULL);
}

/* libaio, found at run time (its header may be missing): io_getevents is
 * looked up in the global scope, where ckrun's agent, if present, has it. */
typedef unsigned long aio_ctx;
static int (*aio_setup)(int, aio_ctx *);
static int (*aio_destroy)(aio_ctx);
static int (*aio_getevents)(aio_ctx, long, long, void *, struct timespec *);
static aio_ctx ctx;

static void setup_aio(void)
{
    if (!dlopen("libaio.so.1", RTLD_NOW | RTLD_GLOBAL)) {
        use_aio = 0; /* the same in every run on this machine */
        return;
    }
    aio_setup = (int (*)(int, aio_ctx *))dlsym(RTLD_DEFAULT, "io_setup");
    aio_destroy = (int (*)(aio_ctx))dlsym(RTLD_DEFAULT, "io_destroy");
    aio_getevents = (int (*)(aio_ctx, long, long, void *, struct timespec *))dlsym(RTLD_DEFAULT, "io_getevents");
    if (!aio_setup || !aio_destroy || !aio_getevents || aio_setup(4, &ctx) != 0)
        fail_msg("libaio", "io_setup failed");
}

/* ---- the calls ---- */

static void multiplexing(void)
{
    struct timespec t0, ts;
    struct pollfd p = {.fd = pipe_fd[0], .events = POLLIN};
    struct epoll_event evs[4];
    const sigset_t *mask = tick % 2 ? &blocked : NULL; /* the same mask, or none */

    now(CLOCK_MONOTONIC, &t0);
    expect_rc("poll", poll(&p, 1, WAIT_MS), 0);
    not_early("poll", &t0, WAIT_NS);

    ts = (struct timespec){0, WAIT_NS};
    now(CLOCK_MONOTONIC, &t0);
    expect_rc("ppoll", ppoll(&p, 1, &ts, mask), 0);
    not_early("ppoll", &t0, WAIT_NS);

    fd_set rd;
    FD_ZERO(&rd);
    FD_SET(pipe_fd[0], &rd);
    struct timeval tv = {0, WAIT_MS * 1000};
    now(CLOCK_MONOTONIC, &t0);
    expect_rc("select", select(pipe_fd[0] + 1, &rd, NULL, NULL, &tv), 0);
    not_early("select", &t0, WAIT_NS);
    if (tv.tv_sec != 0 || tv.tv_usec != 0)
        fail_msg("select", "the time left is not 0 after the timeout");

    FD_ZERO(&rd);
    FD_SET(pipe_fd[0], &rd);
    now(CLOCK_MONOTONIC, &t0);
    expect_rc("pselect", pselect(pipe_fd[0] + 1, &rd, NULL, NULL, &ts, mask), 0);
    not_early("pselect", &t0, WAIT_NS);

    now(CLOCK_MONOTONIC, &t0);
    expect_rc("epoll_wait", epoll_wait(ep, evs, 4, WAIT_MS), 0);
    not_early("epoll_wait", &t0, WAIT_NS);

    now(CLOCK_MONOTONIC, &t0);
    expect_rc("epoll_pwait", epoll_pwait(ep, evs, 4, WAIT_MS, mask), 0);
    not_early("epoll_pwait", &t0, WAIT_NS);

    now(CLOCK_MONOTONIC, &t0);
    expect_rc("epoll_pwait2", epoll_pwait2(ep, evs, 4, &ts, mask), 0);
    not_early("epoll_pwait2", &t0, WAIT_NS);
}

static void sysv(void)
{
    struct timespec t0, ts = {0, WAIT_NS};
    struct sembuf down = {0, -1, 0};
    struct msg m;

    request(REQ_SEM_POST);
    expect_rc("semop", semop(semid, &down, 1), 0);

    now(CLOCK_MONOTONIC, &t0);
    expect_err("semtimedop", semtimedop(semid, &down, 1, &ts), EAGAIN);
    not_early("semtimedop", &t0, WAIT_NS);

    request(REQ_MSG_SEND);
    expect_rc("msgrcv", msgrcv(msqid, &m, sizeof m.text, 3, 0), sizeof m.text);
    char want[MSG_SIZE];
    snprintf(want, sizeof want, "message %d", tick);
    if (strcmp(m.text, want) != 0)
        fail_msg("msgrcv", "received another message");

    /* Fill the queue, then wait in msgsnd until the helper takes one out. */
    m.type = 1;
    memset(m.text, 'x', sizeof m.text);
    int queued = 0;
    while (msgsnd(msqid, &m, sizeof m.text, IPC_NOWAIT) == 0)
        queued++;
    if (errno != EAGAIN || queued != QUEUE_BYTES / MSG_SIZE)
        fail("msgsnd (filling)", queued, errno);
    request(REQ_MSG_DRAIN);
    expect_rc("msgsnd", msgsnd(msqid, &m, sizeof m.text, 0), 0);
    wait_done();
    for (int i = 0; i < queued; i++)
        expect_rc("msgrcv (emptying)", msgrcv(msqid, &m, sizeof m.text, 1, IPC_NOWAIT), sizeof m.text);
}

static void sleeping(void)
{
    struct timespec t0, ts = {0, WAIT_NS}, rem = {42, 42};

    now(CLOCK_MONOTONIC, &t0);
    expect_rc("nanosleep", nanosleep(&ts, &rem), 0);
    not_early("nanosleep", &t0, WAIT_NS);
    if (rem.tv_sec != 42 || rem.tv_nsec != 42)
        fail_msg("nanosleep", "wrote rem although it was not interrupted");

    now(CLOCK_MONOTONIC, &t0);
    calls++;
    int err = clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, &rem);
    if (err != 0)
        fail("clock_nanosleep", err, err);
    not_early("clock_nanosleep", &t0, WAIT_NS);

    struct timespec dl = in_ns(CLOCK_MONOTONIC, WAIT_NS), t1;
    calls++;
    err = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &dl, NULL);
    if (err != 0)
        fail("clock_nanosleep (TIMER_ABSTIME)", err, err);
    now(CLOCK_MONOTONIC, &t1);
    if (ns_between(&dl, &t1) < 0)
        fail_msg("clock_nanosleep (TIMER_ABSTIME)", "woke before its deadline");

    now(CLOCK_MONOTONIC, &t0);
    expect_rc("usleep", usleep(WAIT_MS * 1000), 0);
    not_early("usleep", &t0, WAIT_NS);

    struct timespec nap = {0, WAIT_NS};
    now(CLOCK_MONOTONIC, &t0);
    expect_rc("thrd_sleep", thrd_sleep(&nap, NULL), 0);
    not_early("thrd_sleep", &t0, WAIT_NS);

    if (tick % 50 == 10) {
        now(CLOCK_MONOTONIC, &t0);
        errno = 0;
        expect_rc("sleep", sleep(1), 0);
        not_early("sleep", &t0, 1000000000LL);
        if (errno != 0)
            fail("sleep", 0, errno);
    }
}

/* After an own-signal step: nothing of it may stay pending for the next. */
static void settle_usr1(void)
{
    atomic_store(&ack, 1);
    wait_done();
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    struct timespec zero = {0, 0};
    while (sigtimedwait(&usr1, NULL, &zero) == SIGUSR1)
        ;
    if (usr1_bad)
        fail_msg("SIGUSR1 handler", "got a siginfo of another signal");
}

static void own_signals(void)
{
    /* pause: SIGUSR1 let in; the helper sends it until main says it woke. */
    atomic_store(&ack, 0);
    request(REQ_USR1_UNTIL_ACK);
    pthread_sigmask(SIG_SETMASK, &let_usr1_in, NULL);
    long rc = pause();
    int err = errno;
    pthread_sigmask(SIG_SETMASK, &blocked, NULL);
    errno = err;
    expect_own_eintr("pause", rc);
    settle_usr1();

    /* sigsuspend: SIGUSR1 blocked until the call lets it in. */
    atomic_store(&ack, 0);
    request(REQ_USR1);
    expect_own_eintr("sigsuspend", sigsuspend(&let_usr1_in));
    settle_usr1();

    /* A 10 s wait the program's own signal cuts short. */
    struct timespec t0, t1, ts = {LONG_S, 0};
    struct pollfd p = {.fd = pipe_fd[0], .events = POLLIN};
    struct epoll_event evs[4];
    fd_set rd;
    FD_ZERO(&rd);
    FD_SET(pipe_fd[0], &rd);
    atomic_store(&ack, 0);
    request(REQ_USR1);
    now(CLOCK_MONOTONIC, &t0);
    switch (tick % 3) {
    case 0:
        expect_own_eintr("ppoll (own SIGUSR1)", ppoll(&p, 1, &ts, &let_usr1_in));
        break;
    case 1:
        expect_own_eintr("pselect (own SIGUSR1)", pselect(pipe_fd[0] + 1, &rd, NULL, NULL, &ts, &let_usr1_in));
        break;
    default:
        expect_own_eintr("epoll_pwait (own SIGUSR1)", epoll_pwait(ep, evs, 4, LONG_S * 1000, &let_usr1_in));
        break;
    }
    now(CLOCK_MONOTONIC, &t1);
    if (ns_between(&t0, &t1) >= LONG_S * 1000000000LL)
        fail_msg("own SIGUSR1", "did not cut the wait short");
    settle_usr1();
}

static void signal_waits(void)
{
    struct timespec t0, ts = {0, WAIT_NS};
    sigset_t set;
    siginfo_t info;

    sigemptyset(&set);
    sigaddset(&set, SIGRTMIN + 2); /* never sent */
    now(CLOCK_MONOTONIC, &t0);
    expect_err("sigtimedwait", sigtimedwait(&set, &info, &ts), EAGAIN);
    not_early("sigtimedwait", &t0, WAIT_NS);

    sigemptyset(&set);
    sigaddset(&set, SIGRTMIN + 3);
    request(REQ_RT3);
    expect_rc("sigwaitinfo", sigwaitinfo(&set, &info), SIGRTMIN + 3);
    if (info.si_signo != SIGRTMIN + 3)
        fail_msg("sigwaitinfo", "the siginfo is not the signal's");
}

/* Fills wv[0]'s queue without blocking, so that the next send waits. */
static void fill_wv(void)
{
    static char chunk[4096];
    while (send(wv[0], chunk, sizeof chunk, MSG_DONTWAIT) > 0)
        ;
}

static void drain_wv(void)
{
    static char sink[65536];
    while (recv(wv[1], sink, sizeof sink, MSG_DONTWAIT) > 0)
        ;
}

static void sockets(void)
{
    static char out[4096];
    struct iovec oiov = {out, sizeof out};
    struct mmsghdr omm = {.msg_hdr = {.msg_iov = &oiov, .msg_iovlen = 1}};
    char buf[16];
    struct sockaddr_un from;
    socklen_t flen = sizeof from;
    struct iovec iov = {buf, sizeof buf};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    /* SO_RCVTIMEO counts in jiffies: no early-return check here. */
    struct mmsghdr mm = {.msg_hdr = {.msg_iov = &iov, .msg_iovlen = 1}};
    switch (tick % 10) {
    case 4:
        expect_err("read", read(sv[0], buf, sizeof buf), EAGAIN);
        break;
    case 5:
        expect_err("readv", readv(sv[0], &iov, 1), EAGAIN);
        break;
    case 6:
        expect_err("recvmmsg", recvmmsg(sv[0], &mm, 1, 0, NULL), EAGAIN);
        break;
    case 7:
        fill_wv();
        expect_full("write", write(wv[0], out, sizeof out));
        drain_wv();
        break;
    case 8:
        fill_wv();
        expect_full("writev", writev(wv[0], &oiov, 1));
        drain_wv();
        break;
    case 9:
        fill_wv();
        expect_full("sendmmsg", sendmmsg(wv[0], &omm, 1, 0));
        drain_wv();
        break;
    case 0:
        expect_err("recv", recv(sv[0], buf, sizeof buf, 0), EAGAIN);
        break;
    case 1:
        expect_err("recvfrom", recvfrom(sv[0], buf, sizeof buf, 0, (struct sockaddr *)&from, &flen), EAGAIN);
        break;
    case 2:
        expect_err("recvmsg", recvmsg(sv[0], &mh, 0), EAGAIN);
        break;
    default:
        expect_err("accept", accept(listener, NULL, NULL), EAGAIN);
        break;
    }
}

static void semaphores(void)
{
    struct timespec dl = in_ns(CLOCK_REALTIME, WAIT_NS);
    expect_err("sem_timedwait", sem_timedwait(&psem, &dl), ETIMEDOUT);

    struct timespec t1;
    dl = in_ns(CLOCK_MONOTONIC, WAIT_NS);
    expect_err("sem_clockwait", sem_clockwait(&psem, CLOCK_MONOTONIC, &dl), ETIMEDOUT);
    now(CLOCK_MONOTONIC, &t1);
    if (ns_between(&dl, &t1) < 0)
        fail_msg("sem_clockwait", "timed out before its deadline");
}

static void aio(void)
{
    struct timespec t0, ts = {0, WAIT_NS};
    char events[4 * 32];
    now(CLOCK_MONOTONIC, &t0);
    calls++;
    int rc = aio_getevents(ctx, 1, 4, events, &ts);
    if (rc != 0)
        fail("io_getevents", rc, -rc); /* libaio returns -errno */
    not_early("io_getevents", &t0, WAIT_NS);
}

int main(int argc, char **argv)
{
    int ticks = 60;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "nosysv") == 0)
            use_sysv = 0;
        else if (strcmp(argv[i], "aio") == 0)
            use_aio = 1;
        else
            ticks = atoi(argv[i]);
    }
    main_thread = pthread_self();
    atexit(remove_ipc);
    check_handlers();
    setup();
    if (use_aio)
        setup_aio();

    sigemptyset(&blocked);
    sigaddset(&blocked, SIGUSR1);
    sigaddset(&blocked, SIGALRM);
    sigaddset(&blocked, SIGRTMIN + 2);
    sigaddset(&blocked, SIGRTMIN + 3);
    let_usr1_in = blocked;
    sigdelset(&let_usr1_in, SIGUSR1);
    pthread_sigmask(SIG_SETMASK, &blocked, NULL); /* the threads inherit it */

    pthread_t th_helper, th_noise;
    if (pthread_create(&th_helper, NULL, helper, NULL) != 0 || pthread_create(&th_noise, NULL, noise, NULL) != 0)
        fail("pthread_create", -1, errno);
    struct itimerval it = {{0, 1000}, {0, 1000}};
    if (setitimer(ITIMER_REAL, &it, NULL) != 0)
        fail("setitimer", -1, errno);

    for (tick = 1; tick <= ticks; tick++) {
        multiplexing();
        if (use_sysv)
            sysv();
        sleeping();
        own_signals();
        signal_waits();
        sockets();
        semaphores();
        if (use_aio)
            aio();
        printf("tick %d calls=%ld own=%ld\n", tick, calls, own_eintr);
        fflush(stdout);
    }

    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    atomic_store(&noise_stop, 1);
    request(REQ_STOP);
    pthread_join(th_helper, NULL);
    pthread_join(th_noise, NULL);
    if (use_aio)
        aio_destroy(ctx);
    printf("done ticks=%d calls=%ld own_eintr=%ld alarms=%s\n", ticks, calls, own_eintr,
           atomic_load(&alrm_count) > 0 ? "seen" : "none");
    fflush(stdout);
    return 0;
}
