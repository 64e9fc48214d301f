/*
 * omp: a deterministic OpenMP program for ckrun's end-to-end tests. The
 * runtime (libgomp) keeps a pool of worker threads that sleep in futexes
 * between parallel regions (after spinning a while); a checkpoint may catch
 * them in either state, or inside a region, and a restored pool must work
 * on as if nothing happened.
 *
 * Each tick the master runs a few parallel constructs, then prints a tick
 * line between regions and sleeps 20 ms:
 *   - a `parallel for reduction(+:...)` over an integer array (integer sums
 *     do not depend on the order in which partial results are combined);
 *   - a `parallel` region with `critical`, `barrier` and `single`, where
 *     each thread also bumps a `threadprivate` counter (TLS): with a fixed
 *     thread count and dynamic adjustment off, OpenMP keeps threadprivate
 *     data from region to region, so every thread's counter must equal the
 *     number of regions run so far, after a restart too;
 *   - each thread records gettid(): the set of TIDs of the team must be the
 *     same at every tick (libgomp reuses its pool), so a restart must bring
 *     the same threads back with the same TIDs.
 *
 * Output: "tick N sum=S" per tick (flushed), then "done ...". A failed
 * check prints "omp: FAIL ..." on stderr and exits 1. ~20 ms pacing over
 * 200 ticks: about 4 s.
 *
 * Usage: omp [NTHREADS]   (default 4; set here, not via OMP_NUM_THREADS,
 * so that the test needs no environment). Exit code 0.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define TICKS 200
#define N 1000000
#define PACE_NS 20000000L /* 20 ms */
#define MAX_THREADS 64

static uint64_t data[N];
static long tp_count;
#pragma omp threadprivate(tp_count)

static pid_t team_tids[MAX_THREADS];
static pid_t first_tids[MAX_THREADS];

static void fail(const char *fmt, long a, long b)
{
    fprintf(stderr, "omp: FAIL: ");
    fprintf(stderr, fmt, a, b);
    fprintf(stderr, "\n");
    exit(1);
}

static void pace(void)
{
    struct timespec req = {0, PACE_NS}, rem;
    while (nanosleep(&req, &rem) == -1) {
        if (errno != EINTR)
            fail("nanosleep: errno %ld %ld", errno, 0);
        req = rem;
    }
}

static int cmp_pid(const void *a, const void *b)
{
    pid_t x = *(const pid_t *)a, y = *(const pid_t *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    int nthreads = argc > 1 ? atoi(argv[1]) : 4;
    if (nthreads < 1 || nthreads > MAX_THREADS)
        fail("bad thread count %ld (max %ld)", nthreads, MAX_THREADS);
    omp_set_dynamic(0);
    omp_set_num_threads(nthreads);

    for (long i = 0; i < N; i++)
        data[i] = (uint64_t)i * 2654435761u % 1000003;

    uint64_t total = 0;
    for (int t = 1; t <= TICKS; t++) {
        uint64_t sum = 0;
#pragma omp parallel for reduction(+ : sum) schedule(static)
        for (long i = 0; i < N; i++) {
            data[i] = (data[i] * 6364136223846793005ull + (uint64_t)t) % 1000000007ull;
            sum += data[i] ^ (uint64_t)i;
        }

        int team = 0, bad_tp = 0;
        long critical_sum = 0;
#pragma omp parallel
        {
            tp_count++;
            int me = omp_get_thread_num();
            team_tids[me] = gettid();
            if (tp_count != t) {
#pragma omp atomic
                bad_tp++;
            }
#pragma omp critical
            critical_sum += me + 1;
#pragma omp barrier
#pragma omp single
            team = omp_get_num_threads();
        }
        if (team != nthreads)
            fail("team of %ld threads, expected %ld", team, nthreads);
        if (bad_tp)
            fail("%ld threads have a threadprivate counter != tick %ld", bad_tp, t);
        if (critical_sum != (long)nthreads * (nthreads + 1) / 2)
            fail("critical sum %ld at tick %ld", critical_sum, t);
        if (team_tids[0] != getpid())
            fail("master's TID %ld is not the pid %ld", team_tids[0], getpid());
        qsort(team_tids, nthreads, sizeof team_tids[0], cmp_pid);
        if (t == 1)
            memcpy(first_tids, team_tids, sizeof first_tids);
        for (int i = 0; i < nthreads; i++)
            if (team_tids[i] != first_tids[i])
                fail("the team's TIDs changed: %ld is now %ld", first_tids[i], team_tids[i]);

        total = total * 1099511628211ull ^ sum;
        printf("tick %d sum=%016" PRIx64 "\n", t, sum);
        fflush(stdout);
        pace();
    }
    printf("done total=%016" PRIx64 " threads=%d\n", total, nthreads);
    fflush(stdout);
    return 0;
}
