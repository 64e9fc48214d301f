/*
 * stress: 16 threads moving money between 64 accounts under fine-grained
 * locks, for ckrun's stress test (checkpointed 50 times in a row, then
 * killed and restarted from the last image). Checkpoints land anywhere:
 * inside a mutex or spinlock, in a futex wait, at a barrier.
 *
 * Each tick (a "round"), every worker makes 5000 transfers: it picks two
 * accounts and an amount from its own generator, locks both accounts (in
 * index order), moves the amount, stamps each account with its TID while
 * holding it (and checks the stamp is still its own before unlocking:
 * mutual exclusion), counts the transfer in a global counter under a
 * spinlock, and unlocks. One worker per round audits: it locks all
 * accounts and checks that the total is unchanged and that the per-account
 * operation counts add up to twice the global count. Each worker keeps its
 * transfer count and net flow in __thread variables, checked against
 * shared copies every round, and checks gettid() against its start TID.
 *
 * A "spawner" thread starts 4 short-lived threads per round (2500
 * transfers each) and joins them, so that checkpoints also land on threads
 * being created or ending (the image then holds some of them).
 *
 * Rounds are fenced by two barriers shared with main, so between rounds
 * the balances are exactly determined (a transfer's amount never depends
 * on a balance, and additions commute): main prints their hash.
 *
 * Output: "tick N hash=H" per round (flushed), then "done ...". A failed
 * check prints "stress: FAIL ..." on stderr and exits 1. The rounds keep
 * the CPUs busy (a 2 ms pause between them), so that checkpoints find
 * threads at work: 400 rounds take about 3.5 s on two cores.
 *
 * Usage: stress [THREADS [ROUNDS]]   (default 16 400). Exit code 0.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NACCOUNTS 64
#define START_BALANCE 1000
#define TOTAL ((int64_t)NACCOUNTS * START_BALANCE)
#define OPS_PER_ROUND 5000
#define PACE_NS 2000000L /* 2 ms */
#define MAX_THREADS 256
#define SPAWN_PER_ROUND 4
#define SPAWN_OPS 2500

struct account {
    pthread_mutex_t lock;
    int64_t balance;
    uint64_t ops;
    pid_t holder; /* TID of the thread holding `lock` */
};

static struct account accounts[NACCOUNTS];
static pthread_spinlock_t global_lock;
static uint64_t global_ops;
static pthread_barrier_t round_start, round_end;
static int nthreads, rounds;

/* Per worker, written only by that worker. */
static uint64_t shared_ops[MAX_THREADS];
static int64_t shared_net[MAX_THREADS];
static uint64_t audits;
static uint64_t spawned, spawn_net; /* spawner only */

static __thread uint64_t tls_ops;
static __thread int64_t tls_net;
static __thread int tls_id = -1;

static void fail(const char *fmt, ...)
{
    char buf[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fprintf(stderr, "stress: FAIL: %s\n", buf);
    _exit(1);
}

static uint64_t next_rand(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void lock_account(int i, pid_t me)
{
    int r = pthread_mutex_lock(&accounts[i].lock);
    if (r != 0)
        fail("lock account %d: %s", i, strerror(r));
    if (accounts[i].holder != 0)
        fail("account %d locked by TID %d while stamped by TID %d", i, (int)me, (int)accounts[i].holder);
    accounts[i].holder = me;
}

static void unlock_account(int i, pid_t me)
{
    if (accounts[i].holder != me)
        fail("account %d: stamp is TID %d, expected the holder %d", i, (int)accounts[i].holder, (int)me);
    accounts[i].holder = 0;
    int r = pthread_mutex_unlock(&accounts[i].lock);
    if (r != 0)
        fail("unlock account %d: %s", i, strerror(r));
}

static void audit(pid_t me, int round)
{
    int64_t sum = 0;
    uint64_t ops = 0;
    for (int i = 0; i < NACCOUNTS; i++)
        lock_account(i, me);
    for (int i = 0; i < NACCOUNTS; i++) {
        sum += accounts[i].balance;
        ops += accounts[i].ops;
    }
    pthread_spin_lock(&global_lock);
    uint64_t g = global_ops;
    pthread_spin_unlock(&global_lock);
    for (int i = NACCOUNTS - 1; i >= 0; i--)
        unlock_account(i, me);
    if (sum != TOTAL)
        fail("round %d: total is %" PRId64 ", expected %" PRId64, round, sum, TOTAL);
    if (ops != 2 * g)
        fail("round %d: accounts count %" PRIu64 " operations, the global counter %" PRIu64 " transfers", round,
             ops, g);
}

static void barrier(pthread_barrier_t *b)
{
    int r = pthread_barrier_wait(b);
    if (r != 0 && r != PTHREAD_BARRIER_SERIAL_THREAD)
        fail("pthread_barrier_wait: %s", strerror(r));
}

/* One transfer drawn from `seed`; returns its flow (+ towards the higher
 * account number, - towards the lower). */
static int64_t transfer(uint64_t *seed, pid_t me)
{
    uint64_t r = next_rand(seed);
    int a = (int)(r % NACCOUNTS);
    int b = (int)((r >> 16) % (NACCOUNTS - 1));
    if (b >= a)
        b++;
    int64_t amount = (int64_t)((r >> 32) % 100) + 1;
    int lo = a < b ? a : b, hi = a < b ? b : a;
    lock_account(lo, me);
    lock_account(hi, me);
    accounts[a].balance -= amount;
    accounts[b].balance += amount;
    accounts[a].ops++;
    accounts[b].ops++;
    pthread_spin_lock(&global_lock);
    global_ops++;
    pthread_spin_unlock(&global_lock);
    unlock_account(hi, me);
    unlock_account(lo, me);
    return a < b ? amount : -amount;
}

static void *worker(void *arg)
{
    int id = (int)(intptr_t)arg;
    tls_id = id;
    char name[16];
    snprintf(name, sizeof name, "worker-%d", id);
    pthread_setname_np(pthread_self(), name);
    pid_t me = gettid();
    uint64_t seed = 0x5eed0000ull + (uint64_t)id;
    for (int round = 1; round <= rounds; round++) {
        barrier(&round_start);
        if (gettid() != me)
            fail("worker %d: gettid() is %d, was %d", id, (int)gettid(), (int)me);
        for (int k = 0; k < OPS_PER_ROUND; k++) {
            tls_net += transfer(&seed, me);
            tls_ops++;
        }
        shared_ops[id] += OPS_PER_ROUND;
        if (tls_id != id || tls_ops != shared_ops[id])
            fail("worker %d: __thread id %d ops %" PRIu64 ", shared %" PRIu64, id, tls_id, tls_ops, shared_ops[id]);
        shared_net[id] = tls_net;
        if (round % nthreads == id) {
            audit(me, round);
            audits++;
        }
        barrier(&round_end);
    }
    return NULL;
}

/* A short-lived thread: SPAWN_OPS transfers, then it ends. */
struct job {
    int round, k;
    int64_t net;
};

static void *ephemeral(void *arg)
{
    struct job *j = arg;
    pthread_setname_np(pthread_self(), "ephemeral");
    pid_t me = gettid();
    uint64_t seed = 0xe0000000ull + (uint64_t)j->round * 64 + (uint64_t)j->k;
    for (int n = 0; n < SPAWN_OPS; n++)
        j->net += transfer(&seed, me);
    return j;
}

/* Each round, starts SPAWN_PER_ROUND short-lived threads and joins them:
 * checkpoints keep landing on threads being created or ending. */
static void *spawner(void *arg)
{
    (void)arg;
    pthread_setname_np(pthread_self(), "spawner");
    for (int round = 1; round <= rounds; round++) {
        barrier(&round_start);
        struct job jobs[SPAWN_PER_ROUND];
        pthread_t th[SPAWN_PER_ROUND];
        for (int k = 0; k < SPAWN_PER_ROUND; k++) {
            jobs[k] = (struct job){.round = round, .k = k, .net = 0};
            int r = pthread_create(&th[k], NULL, ephemeral, &jobs[k]);
            if (r != 0)
                fail("spawner: pthread_create: %s", strerror(r));
        }
        for (int k = 0; k < SPAWN_PER_ROUND; k++) {
            void *ret = NULL;
            int r = pthread_join(th[k], &ret);
            if (r != 0 || ret != &jobs[k])
                fail("spawner: pthread_join of thread %d of round %d: %s", k, round, strerror(r));
            spawn_net = spawn_net * 31 + (uint64_t)jobs[k].net;
        }
        spawned += SPAWN_PER_ROUND;
        barrier(&round_end);
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

int main(int argc, char **argv)
{
    nthreads = argc > 1 ? atoi(argv[1]) : 16;
    rounds = argc > 2 ? atoi(argv[2]) : 400;
    if (nthreads < 1 || nthreads > MAX_THREADS || rounds < 1)
        fail("usage: stress [THREADS [ROUNDS]]");
    for (int i = 0; i < NACCOUNTS; i++) {
        pthread_mutex_init(&accounts[i].lock, NULL);
        accounts[i].balance = START_BALANCE;
    }
    pthread_spin_init(&global_lock, PTHREAD_PROCESS_PRIVATE);
    /* Workers, the spawner and main. */
    pthread_barrier_init(&round_start, NULL, (unsigned)nthreads + 2);
    pthread_barrier_init(&round_end, NULL, (unsigned)nthreads + 2);

    pthread_t *th = calloc((size_t)nthreads, sizeof *th);
    for (int i = 0; i < nthreads; i++) {
        int r = pthread_create(&th[i], NULL, worker, (void *)(intptr_t)i);
        if (r != 0)
            fail("pthread_create: %s", strerror(r));
    }
    pthread_t spawner_th;
    int r = pthread_create(&spawner_th, NULL, spawner, NULL);
    if (r != 0)
        fail("pthread_create: %s", strerror(r));
    uint64_t h = 0;
    for (int t = 1; t <= rounds; t++) {
        pace();
        barrier(&round_start);
        barrier(&round_end);
        h = 0xcbf29ce484222325ull;
        int64_t sum = 0;
        for (int i = 0; i < NACCOUNTS; i++) {
            h = (h ^ (uint64_t)accounts[i].balance) * 0x100000001b3ull;
            sum += accounts[i].balance;
        }
        if (sum != TOTAL)
            fail("main: total %" PRId64 " after round %d", sum, t);
        printf("tick %d hash=%016" PRIx64 "\n", t, h);
        fflush(stdout);
    }
    for (int i = 0; i < nthreads; i++)
        pthread_join(th[i], NULL);
    pthread_join(spawner_th, NULL);
    uint64_t net = 0;
    for (int i = 0; i < nthreads; i++)
        net = net * 31 + (uint64_t)shared_net[i];
    printf("done hash=%016" PRIx64 " total=%" PRId64 " transfers=%" PRIu64 " audits=%" PRIu64 " net=%016" PRIx64
           " spawned=%" PRIu64 " spawn_net=%016" PRIx64 "\n",
           h, (int64_t)TOTAL, global_ops, audits, net, spawned, spawn_net);
    fflush(stdout);
    return 0;
}
