/*
 * event_loop: a multi-threaded event loop in the shape of a server's, for
 * ckrun's stress test (issue 10: 20 rounds of checkpoint -> kill ->
 * restart, each of which must make progress).
 *
 * The main thread runs an epoll loop over a timerfd (CLOCK_MONOTONIC,
 * 10 ms interval), an eventfd and a pipe. Each timer expiration starts a
 * tick: main queues JOBS jobs (tick, index) for WORKERS worker threads
 * (a mutex and a condition variable), then waits in epoll_wait for them:
 * a worker that finished a job writes the job's index and result to the
 * pipe and adds 1 to the eventfd. Main reads the eventfd (how many jobs
 * finished), drains the pipe, and once all JOBS results of the tick are in
 * folds them into the running value, in index order, and prints it. The
 * output depends only on the tick number, never on timing or on which
 * worker took which job.
 *
 * Every call that can fail with EINTR is treated as fatal when it does
 * (epoll_wait, read, write, pthread_cond_wait cannot): a checkpoint must
 * never show through as an interrupted call. A tick whose jobs do not all
 * arrive within 10 s fails too ("FAIL ... stalled").
 *
 * Output: "tick N value" per tick (flushed), then "done value". Exit 0;
 * any failed check prints "event_loop: FAIL ..." on stderr and exits 1.
 *
 * Usage: event_loop [TICKS]   (default 600: about 6 s)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#define WORKERS 4
#define JOBS 8

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t more = PTHREAD_COND_INITIALIZER;
static uint64_t queue_tick;   /* the tick whose jobs are queued */
static int queue_next = JOBS; /* next job index to take; JOBS: none */
static int done_fd, pipe_w;

static void fail(const char *what, long tick)
{
    fprintf(stderr, "event_loop: FAIL tick %ld: %s (%s)\n", tick, what, strerror(errno));
    exit(1);
}

static uint64_t mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

/* A job's result: some work, so that checkpoints find workers busy. */
static uint64_t work(uint64_t tick, int index)
{
    uint64_t h = mix(tick * 131 + (uint64_t)index);
    for (int i = 0; i < 20000; i++)
        h = mix(h + (uint64_t)i);
    return h;
}

struct result {
    uint32_t index;
    uint32_t tick;
    uint64_t value;
};

static void *worker(void *arg)
{
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&lock);
        while (queue_next >= JOBS)
            pthread_cond_wait(&more, &lock);
        uint64_t tick = queue_tick;
        int index = queue_next++;
        pthread_mutex_unlock(&lock);

        struct result r = {(uint32_t)index, (uint32_t)tick, work(tick, index)};
        /* Writes of at most PIPE_BUF bytes are atomic: results never mix. */
        if (write(pipe_w, &r, sizeof r) != (ssize_t)sizeof r)
            fail("write to the pipe", (long)tick);
        uint64_t one = 1;
        if (write(done_fd, &one, sizeof one) != (ssize_t)sizeof one)
            fail("write to the eventfd", (long)tick);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    long ticks = argc > 1 ? atol(argv[1]) : 600;
    int pipe_fds[2];
    if (pipe(pipe_fds) != 0)
        fail("pipe", 0);
    pipe_w = pipe_fds[1];
    done_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    int timer = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (done_fd < 0 || timer < 0 || ep < 0)
        fail("creating the fds", 0);
    struct itimerspec its = {{0, 10000000}, {0, 10000000}};
    if (timerfd_settime(timer, 0, &its, NULL) != 0)
        fail("timerfd_settime", 0);
    int fds[3] = {timer, done_fd, pipe_fds[0]};
    for (int i = 0; i < 3; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev) != 0)
            fail("epoll_ctl", 0);
    }
    pthread_t t[WORKERS];
    for (int i = 0; i < WORKERS; i++) {
        if (pthread_create(&t[i], NULL, worker, NULL) != 0)
            fail("pthread_create", 0);
        char name[16];
        snprintf(name, sizeof name, "worker-%d", i);
        pthread_setname_np(t[i], name);
    }

    uint64_t value = 1;
    for (long tick = 1; tick <= ticks; tick++) {
        /* Wait for the timer (results of earlier ticks are all in). */
        for (;;) {
            struct epoll_event ev[3];
            int n = epoll_wait(ep, ev, 3, 10000);
            if (n < 0)
                fail("epoll_wait for the timer", tick);
            if (n == 0) {
                errno = ETIMEDOUT;
                fail("timer stalled", tick);
            }
            int fired = 0;
            for (int i = 0; i < n; i++)
                fired |= ev[i].data.u64 == 0;
            if (fired) {
                uint64_t expirations;
                if (read(timer, &expirations, sizeof expirations) != (ssize_t)sizeof expirations)
                    fail("read of the timerfd", tick);
                break;
            }
        }
        pthread_mutex_lock(&lock);
        queue_tick = (uint64_t)tick;
        queue_next = 0;
        pthread_cond_broadcast(&more);
        pthread_mutex_unlock(&lock);

        uint64_t results[JOBS];
        int have = 0, counted = 0;
        unsigned seen = 0;
        while (have < JOBS || counted < JOBS) {
            struct epoll_event ev[3];
            int n = epoll_wait(ep, ev, 3, 10000);
            if (n < 0)
                fail("epoll_wait for the jobs", tick);
            if (n == 0) {
                errno = ETIMEDOUT;
                fail("jobs stalled", tick);
            }
            for (int i = 0; i < n; i++) {
                if (ev[i].data.u64 == 1) {
                    uint64_t c;
                    if (read(done_fd, &c, sizeof c) == (ssize_t)sizeof c)
                        counted += (int)c;
                    else if (errno != EAGAIN)
                        fail("read of the eventfd", tick);
                } else if (ev[i].data.u64 == 2) {
                    struct result r;
                    if (read(pipe_fds[0], &r, sizeof r) != (ssize_t)sizeof r)
                        fail("read of the pipe", tick);
                    if (r.tick != (uint32_t)tick || r.index >= JOBS || (seen >> r.index & 1)) {
                        errno = EPROTO;
                        fail("a result of another tick, or twice", tick);
                    }
                    seen |= 1u << r.index;
                    results[r.index] = r.value;
                    have++;
                }
            }
        }
        if (counted != JOBS) {
            errno = EPROTO;
            fail("eventfd count", tick);
        }
        for (int i = 0; i < JOBS; i++)
            value = mix(value ^ results[i]);
        printf("tick %ld %016" PRIx64 "\n", tick, value);
        fflush(stdout);
    }
    printf("done %016" PRIx64 "\n", value);
    fflush(stdout);
    return 0;
}
