/*
 * pid_relay: a program that keeps creating threads, for ckrun's PID and
 * TID tests (issue 10, item 5). Each tick main starts a new "relay"
 * thread, which records its TID, computes the tick's value and waits to
 * be relieved; main then relieves and joins the previous one. So at any
 * checkpoint one thread is alive that was created moments before: after a
 * restart in a new PID namespace, a thread with an ID that namespace
 * handed out, which a later restart must be able to give back.
 *
 * Each relay checks, when relieved, that its TID is still the one it
 * recorded (restored with its TID). Output: "tick N relay=V" (V depends
 * only on N), then "done relays=N". 20 ms pacing, 200 ticks: about 4 s.
 * Any failed check prints "pid_relay: FAIL ..." on stderr and exits 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define TICKS 200
#define PACE_NS 20000000L

struct relay {
    pthread_t th;
    int n;
    pid_t tid;
    int ready, relieved;
    unsigned long value;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;

static void fail(const char *what, int n)
{
    fprintf(stderr, "pid_relay: FAIL tick %d: %s\n", n, what);
    exit(1);
}

static void *run(void *arg)
{
    struct relay *r = arg;
    unsigned long v = 1469598103934665603UL;
    for (int i = 0; i <= r->n; i++)
        v = (v ^ (unsigned long)i) * 1099511628211UL;
    pthread_mutex_lock(&mu);
    r->tid = gettid();
    r->value = v % 1000003;
    r->ready = 1;
    pthread_cond_broadcast(&cv);
    while (!r->relieved)
        pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    if (gettid() != r->tid)
        fail("a relay's TID changed", r->n);
    return NULL;
}

static void pace(void)
{
    struct timespec req = {0, PACE_NS}, rem;
    while (nanosleep(&req, &rem) == -1) {
        if (errno != EINTR)
            fail("nanosleep", 0);
        req = rem;
    }
}

int main(void)
{
    struct relay *prev = NULL;
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int n = 1; n <= TICKS; n++) {
        struct relay *cur = calloc(1, sizeof *cur);
        if (!cur)
            fail("calloc", n);
        cur->n = n;
        if (pthread_create(&cur->th, NULL, run, cur) != 0)
            fail("pthread_create", n);
        pthread_mutex_lock(&mu);
        while (!cur->ready)
            pthread_cond_wait(&cv, &mu);
        if (prev) {
            prev->relieved = 1;
            pthread_cond_broadcast(&cv);
        }
        pthread_mutex_unlock(&mu);
        if (prev) {
            if (pthread_join(prev->th, NULL) != 0)
                fail("pthread_join", n);
            free(prev);
        }
        prev = cur;
        printf("tick %d relay=%lu\n", n, cur->value);
        pace();
    }
    pthread_mutex_lock(&mu);
    prev->relieved = 1;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    pthread_join(prev->th, NULL);
    printf("done relays=%d\n", TICKS);
    return 0;
}
