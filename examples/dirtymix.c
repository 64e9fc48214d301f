/*
 * dirtymix: a program that changes its memory, between ticks, in every way
 * ckrun's dirty tracker must see (tests/incremental.rs). An incremental
 * checkpoint takes each page the tracker says was not written from the
 * previous image: a change it missed restores a stale page, and every
 * later checksum differs from an uninterrupted run's.
 *
 * Each tick T (1..TICKS):
 *  - writes a few pages of an anonymous region (plain stores);
 *  - read(2)s bytes from a pipe into another region (the kernel writes);
 *  - drops a page with MADV_DONTNEED (it reads zeros again) and writes
 *    another one;
 *  - every 3rd tick, unmaps a region and maps a new one at the same
 *    address (MAP_FIXED), filled anew;
 *  - every 2nd tick, moves a region with mremap to the other half of its
 *    reservation, then writes one page of it;
 *  - grows the heap with sbrk and writes the new page;
 *  - has a second thread fill a buffer on its own stack and sum it;
 *  - makes a region read-only and writable again (mprotect), then writes it;
 *  - forks a child that scribbles over its copy of the first region and
 *    exits (the parent's pages must stay as they were);
 * then prints "tick T CHECKSUM" (a hash of all these bytes, flushed) and
 * sleeps PACE_MS milliseconds. At the end: "done CHECKSUM", exit 0.
 *
 * Usage: dirtymix TICKS [PACE_MS]
 */
#define _GNU_SOURCE
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096u
#define REGION_PAGES 256u /* 1 MiB */
#define REGION (REGION_PAGES * PAGE)

static uint64_t mix(uint64_t h, uint64_t v)
{
    h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    return h * 0xbf58476d1ce4e5b9ull;
}

static uint64_t hash_bytes(uint64_t h, const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i += 8) {
        uint64_t v;
        memcpy(&v, p + i, 8);
        h = mix(h, v);
    }
    return h;
}

static void fill(unsigned char *p, size_t n, uint64_t seed)
{
    for (size_t i = 0; i < n; i += 8) {
        uint64_t v = mix(seed, i);
        memcpy(p + i, &v, 8);
    }
}

static unsigned char *map(size_t n, int prot)
{
    unsigned char *p = mmap(NULL, n, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("dirtymix: mmap");
        exit(1);
    }
    return p;
}

/* The second thread: fills a buffer on its stack for tick `tick`. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static long asked, answered;
static uint64_t thread_sum;

static void *stack_worker(void *arg)
{
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&lock);
        while (asked == answered)
            pthread_cond_wait(&cond, &lock);
        long t = asked;
        pthread_mutex_unlock(&lock);
        unsigned char buf[64 * 1024];
        fill(buf, sizeof buf, 7000 + (uint64_t)t);
        uint64_t h = hash_bytes(1, buf, sizeof buf);
        pthread_mutex_lock(&lock);
        thread_sum = mix(thread_sum, h);
        answered = t;
        pthread_cond_broadcast(&cond);
        pthread_mutex_unlock(&lock);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 2 || atol(argv[1]) <= 0 || atol(argv[1]) > 100000) {
        fprintf(stderr, "usage: dirtymix TICKS [PACE_MS]\n");
        return 2;
    }
    long ticks = atol(argv[1]);
    long pace_ms = argc > 2 ? atol(argv[2]) : 30;
    unsigned char *written = map(REGION, PROT_READ | PROT_WRITE);
    unsigned char *by_kernel = map(REGION, PROT_READ | PROT_WRITE);
    unsigned char *dropped = map(REGION, PROT_READ | PROT_WRITE);
    unsigned char *remapped = map(REGION, PROT_READ | PROT_WRITE);
    unsigned char *reserve = map(2 * REGION, PROT_NONE);
    unsigned char *moved = mremap(map(REGION, PROT_READ | PROT_WRITE), REGION, REGION, MREMAP_MAYMOVE | MREMAP_FIXED,
                                  reserve);
    unsigned char *flipped = map(REGION, PROT_READ | PROT_WRITE);
    if (moved == MAP_FAILED) {
        perror("dirtymix: mremap");
        return 1;
    }
    fill(written, REGION, 1);
    fill(by_kernel, REGION, 2);
    fill(dropped, REGION, 3);
    fill(remapped, REGION, 4);
    fill(moved, REGION, 5);
    fill(flipped, REGION, 6);
    /* The pages sbrk gave (malloc may take brk memory in between). */
    static unsigned char *heap[100000];
    int fds[2];
    if (pipe(fds) != 0) {
        perror("dirtymix: pipe");
        return 1;
    }
    pthread_t th;
    pthread_create(&th, NULL, stack_worker, NULL);
    printf("ready\n");
    fflush(stdout);
    for (long t = 1; t <= ticks; t++) {
        uint64_t s = (uint64_t)t;
        for (unsigned k = 0; k < 3; k++)
            fill(written + (mix(s, k) % REGION_PAGES) * PAGE, PAGE, 100 * s + k);

        unsigned char msg[3000];
        fill(msg, sizeof msg - 8, 200 + s);
        if (write(fds[1], msg, sizeof msg) != (ssize_t)sizeof msg ||
            read(fds[0], by_kernel + (mix(s, 9) % REGION_PAGES) * PAGE + 512, sizeof msg) != (ssize_t)sizeof msg) {
            perror("dirtymix: pipe i/o");
            return 1;
        }

        madvise(dropped + (mix(s, 10) % REGION_PAGES) * PAGE, PAGE, MADV_DONTNEED);
        fill(dropped + (mix(s, 11) % REGION_PAGES) * PAGE, PAGE, 300 + s);

        if (t % 3 == 0) {
            munmap(remapped, REGION);
            if (mmap(remapped, REGION, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) !=
                remapped) {
                perror("dirtymix: mmap fixed");
                return 1;
            }
            fill(remapped, REGION / 2, 400 + s); /* the other half: zeros */
        }

        if (t % 2 == 0) {
            unsigned char *to = moved == reserve ? reserve + REGION : reserve;
            moved = mremap(moved, REGION, REGION, MREMAP_MAYMOVE | MREMAP_FIXED, to);
            if (moved != to) {
                perror("dirtymix: mremap");
                return 1;
            }
            fill(moved + (mix(s, 12) % REGION_PAGES) * PAGE, PAGE, 500 + s);
        }

        heap[t - 1] = sbrk(PAGE);
        if (heap[t - 1] == (void *)-1) {
            perror("dirtymix: sbrk");
            return 1;
        }
        fill(heap[t - 1], PAGE, 600 + s);

        pthread_mutex_lock(&lock);
        asked = t;
        pthread_cond_broadcast(&cond);
        while (answered != t)
            pthread_cond_wait(&cond, &lock);
        pthread_mutex_unlock(&lock);

        mprotect(flipped, REGION, PROT_READ);
        mprotect(flipped, REGION, PROT_READ | PROT_WRITE);
        fill(flipped + (mix(s, 13) % REGION_PAGES) * PAGE, PAGE, 700 + s);

        pid_t child = fork();
        if (child == 0) {
            fill(written, REGION, 999);
            _exit(0);
        }
        int status;
        if (child < 0 || waitpid(child, &status, 0) != child || status != 0) {
            perror("dirtymix: fork");
            return 1;
        }

        uint64_t h = 0;
        h = hash_bytes(h, written, REGION);
        h = hash_bytes(h, by_kernel, REGION);
        h = hash_bytes(h, dropped, REGION);
        h = hash_bytes(h, remapped, REGION);
        h = hash_bytes(h, moved, REGION);
        h = hash_bytes(h, flipped, REGION);
        for (long k = 0; k < t; k++)
            h = hash_bytes(h, heap[k], PAGE);
        h = mix(h, thread_sum);
        printf("tick %ld %016" PRIx64 "\n", t, h);
        fflush(stdout);
        struct timespec d = { pace_ms / 1000, (pace_ms % 1000) * 1000000L };
        while (nanosleep(&d, &d) != 0)
            ;
    }
    uint64_t h = hash_bytes(0, written, REGION);
    printf("done %016" PRIx64 "\n", mix(h, thread_sum));
    return 0;
}
