/*
 * clocks: a program that keeps deadlines on CLOCK_MONOTONIC and checks
 * the elapsed time it measures, for the clock tests of ckrun (a restart on
 * a machine whose monotonic clock is elsewhere must not show the program a
 * jump).
 *
 * Each tick it
 *   - sleeps until an absolute CLOCK_MONOTONIC deadline, 20 ms after the
 *     previous one (clock_nanosleep with TIMER_ABSTIME);
 *   - reads CLOCK_MONOTONIC, CLOCK_BOOTTIME, CLOCK_MONOTONIC_RAW and
 *     CLOCK_MONOTONIC_COARSE through glibc (the vDSO, no system call), and
 *     MONOTONIC and BOOTTIME again with the raw system call: the vDSO's
 *     view must agree with the kernel's (the vDSO data page a restored
 *     process uses must be its time namespace's);
 *   - checks that every clock moved forward since the previous tick by
 *     less than MAX_STEP_S, and that the deadline it sleeps to is less than
 *     MAX_STEP_S away;
 *   - every 25 ticks, does the same checks in a new thread (a process whose
 *     time namespace is not its children's cannot create one).
 *
 * It prints "tick N <checksum>" after every tick and "done <checksum>" at
 * the end (exit 0); nothing printed depends on the time, so a restored run
 * prints exactly what a bare run does. A failed check prints
 * "clocks: FAIL ..." and exits 3.
 *
 * Usage: clocks [TICKS]   (default 150)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PACE_NS 20000000LL /* 20 ms */
/* A step larger than this is a jump: far above a checkpoint's pause and a
 * restart under load, far below a day. */
#define MAX_STEP_S 120
#define NCLOCKS 4

static const clockid_t clocks[NCLOCKS] = {CLOCK_MONOTONIC, CLOCK_BOOTTIME, CLOCK_MONOTONIC_RAW,
                                          CLOCK_MONOTONIC_COARSE};
static const char *const names[NCLOCKS] = {"CLOCK_MONOTONIC", "CLOCK_BOOTTIME", "CLOCK_MONOTONIC_RAW",
                                           "CLOCK_MONOTONIC_COARSE"};

static void fail(const char *fmt, long long a, long long b)
{
    printf("clocks: FAIL ");
    printf(fmt, a, b);
    printf("\n");
    fflush(stdout);
    exit(3);
}

static int64_t ns_of(struct timespec t)
{
    return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* Through glibc: the vDSO for these clocks. */
static int64_t vdso_now(clockid_t c)
{
    struct timespec t;
    if (clock_gettime(c, &t) != 0)
        fail("clock_gettime(%lld): errno %lld", c, errno);
    return ns_of(t);
}

/* The kernel's own answer. */
static int64_t syscall_now(clockid_t c)
{
    struct timespec t;
    if (syscall(SYS_clock_gettime, c, &t) != 0)
        fail("syscall clock_gettime(%lld): errno %lld", c, errno);
    return ns_of(t);
}

/* The vDSO and the kernel agree on MONOTONIC and BOOTTIME (read in that
 * order, the second is later, by well under a step). */
static void check_vdso(void)
{
    for (int i = 0; i < 2; i++) {
        int64_t v = vdso_now(clocks[i]);
        int64_t k = syscall_now(clocks[i]);
        int64_t d = k - v;
        if (d < -1000000LL || d > MAX_STEP_S * 1000000000LL) {
            printf("clocks: FAIL %s: the vDSO says %lld ns, the kernel %lld ns\n", names[i], (long long)v,
                   (long long)k);
            fflush(stdout);
            exit(3);
        }
    }
}

/* Every clock moved forward from `last` by less than a step. */
static void check_steps(int64_t last[NCLOCKS])
{
    for (int i = 0; i < NCLOCKS; i++) {
        int64_t now = vdso_now(clocks[i]);
        int64_t step = now - last[i];
        /* The coarse clock may lag the fine one it was compared with. */
        int64_t slack = clocks[i] == CLOCK_MONOTONIC_COARSE ? 100000000LL : 0;
        if (step < -slack || step > MAX_STEP_S * 1000000000LL) {
            printf("clocks: FAIL %s moved by %lld ns between two ticks (from %lld to %lld)\n", names[i],
                   (long long)step, (long long)last[i], (long long)now);
            fflush(stdout);
            exit(3);
        }
        last[i] = now;
    }
}

struct thread_check {
    int64_t last[NCLOCKS];
};

static void *in_thread(void *arg)
{
    struct thread_check *c = arg;
    check_vdso();
    check_steps(c->last);
    return NULL;
}

int main(int argc, char **argv)
{
    uint64_t ticks = argc > 1 ? strtoull(argv[1], NULL, 10) : 150;
    int64_t last[NCLOCKS];
    for (int i = 0; i < NCLOCKS; i++)
        last[i] = vdso_now(clocks[i]);
    int64_t deadline = last[0];
    uint64_t checksum = 0xcbf29ce484222325ull;

    for (uint64_t t = 1; t <= ticks; t++) {
        deadline += PACE_NS;
        int64_t ahead = deadline - vdso_now(CLOCK_MONOTONIC);
        if (ahead > MAX_STEP_S * 1000000000LL)
            fail("the next deadline is %lld ns away (tick %lld)", ahead, t);
        /* Late by more than a step: the clock jumped forward. */
        if (ahead < -MAX_STEP_S * 1000000000LL)
            fail("the next deadline passed %lld ns ago (tick %lld)", -ahead, t);
        if (ahead < 0)
            deadline -= ahead; /* late (a checkpoint's pause): catch up, no burst */
        struct timespec at = {deadline / 1000000000LL, deadline % 1000000000LL};
        int r;
        while ((r = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &at, NULL)) == EINTR)
            ;
        if (r != 0)
            fail("clock_nanosleep: error %lld (tick %lld)", r, t);

        check_vdso();
        check_steps(last);
        if (t % 25 == 0) {
            struct thread_check c;
            memcpy(c.last, last, sizeof last);
            pthread_t th;
            if (pthread_create(&th, NULL, in_thread, &c) != 0)
                fail("pthread_create failed at tick %lld (%lld)", t, 0);
            pthread_join(th, NULL);
        }

        checksum = (checksum ^ t) * 1099511628211ull;
        printf("tick %" PRIu64 " %016" PRIx64 "\n", t, checksum);
        fflush(stdout);
    }
    printf("done %016" PRIx64 "\n", checksum);
    fflush(stdout);
    return 0;
}
