/*
 * tree_workers: a small process tree for ckrun's end-to-end tests
 * (issue 5: process trees). Everything a tree shares or relates by has to
 * come back after a restart, and the program checks it from the inside:
 *
 *   - 3 workers, each fed jobs through a pipe (parent -> worker) and
 *     answering through another (worker -> parent); every tick the parent
 *     sends each worker one job and reads one result;
 *   - a MAP_SHARED | MAP_ANONYMOUS page shared by the parent and all its
 *     children: a counter under a process-shared mutex, a C11 atomic sum
 *     and per-worker sums; after every tick the parent checks that the
 *     counter is exactly 3 * tick and the atomic sum 3 * tick*(tick+1)/2;
 *   - one child that exits at once with status 42 and stays a zombie: the
 *     parent waits for its exit with WNOWAIT (without reaping it), checks
 *     every tick that it is still there, unreaped, with status 42
 *     (waitid WNOWAIT), and reaps it only at the very end;
 *   - process groups and sessions: worker 0 stays in the parent's group,
 *     worker 1 calls setpgid(0, 0), worker 2 calls setsid(); every job
 *     they answer carries flags saying whether getppid(), getpgid(0) and
 *     getsid(0) still relate to their own and their parent's ids as they
 *     did at the start (compared live, never with numbers saved before, so
 *     that a restart in a new PID namespace, where an outside session
 *     leader reads as 0 for everyone, still matches);
 *   - a SIGCHLD handler in the parent (SA_RESTART): its count depends on
 *     timing, so only "seen at least once" is printed, with the statuses
 *     that waitpid reaps at the end.
 *
 * Only values that depend on the tick number are printed, never pids, so
 * a restored run prints exactly what a bare run does. Any failed check
 * prints "FAIL ..." on stderr and exits 1.
 *
 * Output: "tick N <checksum> counter C" per tick (flushed), then one line
 * per reaped child ("worker I exit S", "early exit 42"), "sigchld seen",
 * and "done ...". 20 ms pacing, 150 ticks: about 3 s. Exit code 0.
 *
 * With "private" as second argument the page is mapped MAP_PRIVATE
 * instead, and nothing is checked about it (each process counts in its
 * own copy): the same tree without memory shared between processes, to
 * tell failures about the tree from failures about shared memory.
 *
 * Usage: tree_workers [TICKS [private]]   (default 150, shared)
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
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define NWORK 3
#define PACE_NS 20000000L /* 20 ms */
#define EARLY_STATUS 42

/* Flags a worker sets in every result; all must be set. */
#define F_PARENT 1u  /* getppid() is the parent that forked it */
#define F_GROUP 2u   /* getpgid(0) is what its role says */
#define F_SESSION 4u /* getsid(0) is what its role says */
#define F_ALL (F_PARENT | F_GROUP | F_SESSION)

struct shared {
    pthread_mutex_t mu;
    uint64_t counter;           /* under mu */
    uint64_t per_worker[NWORK]; /* under mu */
    _Atomic uint64_t atomic_sum;
    _Atomic uint32_t early_ran;
};

struct job {
    uint64_t tick;
    uint64_t value;
};

struct result {
    uint64_t tick;
    uint64_t value;
    uint32_t flags;
    uint32_t worker;
};

static struct shared *sh;
static int shared_page = 1; /* 0 with "private": no checks on *sh */
static volatile sig_atomic_t sigchld_count;
static const char *who = "parent";

static void fail(const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "FAIL tree_workers %s: %s\n", who, msg);
    exit(1);
}

static uint64_t mix(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
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
            fail("write fd %d: %s", fd, strerror(errno));
        p += n;
        len -= (size_t)n;
    }
}

/* Reads exactly len bytes; returns 0 at end of file before the first byte. */
static int read_all(int fd, void *buf, size_t len)
{
    char *p = buf;
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, p + got, len - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            fail("read fd %d: %s", fd, strerror(errno));
        if (n == 0) {
            if (got == 0)
                return 0;
            fail("short read on fd %d (%zu of %zu bytes)", fd, got, len);
        }
        got += (size_t)n;
    }
    return 1;
}

static pid_t wait_for(pid_t pid, int *status)
{
    for (;;) {
        pid_t r = waitpid(pid, status, 0);
        if (r >= 0 || errno != EINTR)
            return r;
    }
}

static void on_sigchld(int sig)
{
    (void)sig;
    sigchld_count++;
}

/* The flags a worker of role `i` reports (see the header). */
static uint32_t relations(int i, pid_t parent)
{
    pid_t me = getpid();
    pid_t ppid = getppid();
    uint32_t f = 0;
    if (ppid == parent)
        f |= F_PARENT;
    pid_t pg = getpgid(0), sid = getsid(0);
    pid_t ppg = getpgid(ppid), psid = getsid(ppid);
    switch (i) {
    case 0: /* the parent's group and session */
        if (pg == ppg && pg != me)
            f |= F_GROUP;
        if (sid == psid && sid != me)
            f |= F_SESSION;
        break;
    case 1: /* its own group, the parent's session */
        if (pg == me && ppg != me)
            f |= F_GROUP;
        if (sid == psid && sid != me)
            f |= F_SESSION;
        break;
    default: /* its own session (and so its own group) */
        if (pg == me)
            f |= F_GROUP;
        if (sid == me && psid != me)
            f |= F_SESSION;
        break;
    }
    return f;
}

static void worker(int i, int jobs, int results, pid_t parent)
{
    static char name[16];
    snprintf(name, sizeof name, "worker %d", i);
    who = name;
    if (i == 1 && setpgid(0, 0) != 0)
        fail("setpgid: %s", strerror(errno));
    if (i == 2 && setsid() < 0)
        fail("setsid: %s", strerror(errno));

    uint64_t done = 0, local = 0;
    int all_ok = 1;
    struct job j;
    while (read_all(jobs, &j, sizeof j)) {
        if (j.tick != done + 1)
            fail("job for tick %" PRIu64 " after %" PRIu64, j.tick, done);
        uint64_t v = j.value;
        for (int k = 0; k < 1000; k++)
            v = mix(v ^ (uint64_t)k);
        local += v & 0xffff;
        pthread_mutex_lock(&sh->mu);
        sh->counter++;
        sh->per_worker[i] += v & 0xffff;
        pthread_mutex_unlock(&sh->mu);
        atomic_fetch_add(&sh->atomic_sum, j.tick);
        struct result r = {j.tick, v, relations(i, parent), (uint32_t)i};
        if (r.flags != F_ALL)
            all_ok = 0;
        write_all(results, &r, sizeof r);
        done = j.tick;
    }
    pthread_mutex_lock(&sh->mu);
    int sums_agree = sh->per_worker[i] == local;
    pthread_mutex_unlock(&sh->mu);
    _exit(all_ok && sums_agree ? 10 + i : 1);
}

/* Whether the early child is still an unreaped zombie with its status. */
static void check_zombie(pid_t early, uint64_t tick)
{
    siginfo_t si;
    memset(&si, 0, sizeof si);
    if (waitid(P_PID, (id_t)early, &si, WEXITED | WNOHANG | WNOWAIT) != 0)
        fail("tick %" PRIu64 ": waitid(early child, WNOWAIT): %s", tick, strerror(errno));
    if (si.si_pid != early || si.si_code != CLD_EXITED || si.si_status != EARLY_STATUS)
        fail("tick %" PRIu64 ": early child not a zombie with status %d (si_pid %d code %d status %d)", tick,
             EARLY_STATUS, (int)si.si_pid, si.si_code, si.si_status);
}

int main(int argc, char **argv)
{
    uint64_t ticks = argc > 1 ? strtoull(argv[1], NULL, 10) : 150;
    pid_t self = getpid();
    if (argc > 2 && strcmp(argv[2], "private") == 0)
        shared_page = 0;

    int share = shared_page ? MAP_SHARED : MAP_PRIVATE;
    sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, share | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED)
        fail("mmap: %s", strerror(errno));
    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
    pthread_mutex_init(&sh->mu, &ma);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigchld;
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGCHLD, &sa, NULL) != 0)
        fail("sigaction: %s", strerror(errno));

    /* The early child: exits at once and stays a zombie until the end. */
    fflush(stdout);
    pid_t early = fork();
    if (early < 0)
        fail("fork: %s", strerror(errno));
    if (early == 0) {
        atomic_store(&sh->early_ran, 1);
        _exit(EARLY_STATUS);
    }
    siginfo_t si;
    for (;;) {
        memset(&si, 0, sizeof si);
        if (waitid(P_PID, (id_t)early, &si, WEXITED | WNOWAIT) == 0)
            break;
        if (errno != EINTR)
            fail("waitid(early child): %s", strerror(errno));
    }
    if (shared_page && !atomic_load(&sh->early_ran))
        fail("the early child's write to shared memory is not seen");

    int to_worker[NWORK], from_worker[NWORK];
    pid_t workers[NWORK];
    for (int i = 0; i < NWORK; i++) {
        int jp[2], rp[2];
        if (pipe(jp) != 0 || pipe(rp) != 0)
            fail("pipe: %s", strerror(errno));
        pid_t pid = fork();
        if (pid < 0)
            fail("fork: %s", strerror(errno));
        if (pid == 0) {
            /* Keep only this worker's own ends: the others' ends would
             * keep their pipes open and hide the end of file. */
            for (int k = 0; k < i; k++) {
                close(to_worker[k]);
                close(from_worker[k]);
            }
            close(jp[1]);
            close(rp[0]);
            worker(i, jp[0], rp[1], self);
        }
        close(jp[0]);
        close(rp[1]);
        to_worker[i] = jp[1];
        from_worker[i] = rp[0];
        workers[i] = pid;
    }

    uint64_t checksum = 0;
    for (uint64_t t = 1; t <= ticks; t++) {
        for (int i = 0; i < NWORK; i++) {
            struct job j = {t, mix(checksum + t * 31 + (uint64_t)i)};
            write_all(to_worker[i], &j, sizeof j);
        }
        for (int i = 0; i < NWORK; i++) {
            struct result r;
            if (!read_all(from_worker[i], &r, sizeof r))
                fail("tick %" PRIu64 ": worker %d closed its results pipe", t, i);
            if (r.tick != t || r.worker != (uint32_t)i)
                fail("tick %" PRIu64 ": worker %d answered tick %" PRIu64 " as worker %u", t, i, r.tick, r.worker);
            if (r.flags != F_ALL)
                fail("tick %" PRIu64 ": worker %d relations flags %#x, expected %#x", t, i, r.flags, F_ALL);
            checksum = checksum * 1099511628211ull ^ r.value;
        }
        pthread_mutex_lock(&sh->mu);
        uint64_t counter = sh->counter;
        pthread_mutex_unlock(&sh->mu);
        if (shared_page && counter != NWORK * t)
            fail("tick %" PRIu64 ": shared counter %" PRIu64 ", expected %" PRIu64, t, counter, NWORK * t);
        uint64_t asum = atomic_load(&sh->atomic_sum);
        if (shared_page && asum != NWORK * t * (t + 1) / 2)
            fail("tick %" PRIu64 ": shared atomic sum %" PRIu64, t, asum);
        check_zombie(early, t);
        printf("tick %" PRIu64 " %016" PRIx64 " counter %" PRIu64 "\n", t, checksum, counter);
        fflush(stdout);
        pace();
    }

    /* End of jobs: each worker sees end of file, answers nothing more and
     * exits with 10 + its number. */
    for (int i = 0; i < NWORK; i++)
        close(to_worker[i]);
    int reaped = 0;
    for (int i = 0; i < NWORK; i++) {
        int status;
        if (wait_for(workers[i], &status) != workers[i])
            fail("waitpid(worker %d): %s", i, strerror(errno));
        reaped++;
        if (WIFEXITED(status))
            printf("worker %d exit %d\n", i, WEXITSTATUS(status));
        else
            printf("worker %d killed by signal %d\n", i, WTERMSIG(status));
        struct result extra;
        if (read_all(from_worker[i], &extra, sizeof extra))
            fail("worker %d wrote a result after its last job", i);
        close(from_worker[i]);
    }
    int status;
    if (wait_for(early, &status) != early)
        fail("waitpid(early child): %s", strerror(errno));
    reaped++;
    printf("early exit %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    if (waitpid(-1, &status, WNOHANG) != -1 || errno != ECHILD)
        fail("a child is left after reaping all %d", reaped);
    printf("reaped %d, sigchld %s\n", reaped, sigchld_count > 0 ? "seen" : "never seen");

    uint64_t worker_sum = 0;
    for (int i = 0; i < NWORK; i++)
        worker_sum = worker_sum * 31 + sh->per_worker[i];
    printf("done %016" PRIx64 " counter %" PRIu64 " workers %016" PRIx64 "\n", checksum, sh->counter, worker_sum);
    fflush(stdout);
    return 0;
}
