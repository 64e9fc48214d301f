/*
 * manythreads: a program with N threads and little memory, for the pause
 * of a checkpoint as a function of the number of threads (examples/bench.rs).
 * Half the threads wait on a condition variable, half count in a loop
 * (so some are stopped in a system call, some in user code). The main
 * thread prints `ready`, then `tick N` every 50 ms.
 * usage: manythreads N
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static volatile unsigned long counters[1024];

static void *waiter(void *arg) {
    (void)arg;
    pthread_mutex_lock(&mu);
    for (;;)
        pthread_cond_wait(&cv, &mu);
    return NULL;
}

static void *counter(void *arg) {
    volatile unsigned long *c = arg;
    for (;;) {
        (*c)++;
        if ((*c & 0xfffff) == 0) {
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 1;
    if (n < 1 || n > 1024) {
        fprintf(stderr, "usage: manythreads N (1..1024)\n");
        return 2;
    }
    /* The main thread is one of the N. */
    for (int i = 1; i < n; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, i % 2 ? waiter : counter, (void *)&counters[i]) != 0) {
            perror("pthread_create");
            return 1;
        }
    }
    printf("ready\n");
    fflush(stdout);
    for (unsigned long tick = 1;; tick++) {
        struct timespec ts = {0, 50000000};
        nanosleep(&ts, NULL);
        printf("tick %lu\n", tick);
        fflush(stdout);
    }
}
