/*
 * rewrite: a program that rewrites a known fraction of its memory between
 * checkpoints, for ckrun's incremental images (tests/incremental.rs,
 * examples/bench.rs).
 *
 * It maps SIZE_MIB MiB of anonymous memory and fills every page the way
 * examples/memhog.c does (2 KiB of pseudo-random bytes, 2 KiB of text:
 * about 2x compressible by lz4). Then, for each tick 1..TICKS, it rewrites
 * the random half of PERMILLE/1000 of its pages, chosen pseudo-randomly
 * (scattered, as a simulation's updates are: not one contiguous range),
 * computes a checksum of the whole memory, prints "tick N CHECKSUM"
 * (flushed) and sleeps PACE_MS milliseconds. At the end it prints
 * "done CHECKSUM" and exits 0.
 *
 * With a fifth argument `same`, every tick rewrites the same pages (a hot
 * set: the first tick's choice) with new bytes, instead of new ones.
 *
 * Every value depends only on the tick number, so a restored run prints
 * exactly the lines an uninterrupted run prints, and any page restored
 * wrong (from the wrong image, or a stale copy) changes every later
 * checksum.
 *
 * Usage: rewrite SIZE_MIB PERMILLE TICKS [PACE_MS [same]]
 */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define PAGE 4096u
#define RANDOM_BYTES 2048u

static uint64_t next_rand(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void fill_random(unsigned char *page, uint64_t *seed)
{
    for (size_t i = 0; i < RANDOM_BYTES; i += 8) {
        uint64_t r = next_rand(seed);
        memcpy(page + i, &r, 8);
    }
}

int main(int argc, char **argv)
{
    if (argc < 4 || atol(argv[1]) <= 0 || atol(argv[2]) < 0 || atol(argv[2]) > 1000 || atol(argv[3]) <= 0) {
        fprintf(stderr, "usage: rewrite SIZE_MIB PERMILLE TICKS [PACE_MS [same]]\n");
        return 2;
    }
    size_t size = (size_t)atol(argv[1]) << 20;
    size_t pages = size / PAGE;
    long permille = atol(argv[2]);
    long ticks = atol(argv[3]);
    long pace_ms = argc > 4 ? atol(argv[4]) : 30;
    int same_pages = argc > 5 && strcmp(argv[5], "same") == 0;
    unsigned char *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        perror("rewrite: mmap");
        return 1;
    }
    static const char text[] = "It was the best of times, it was the worst of times, it was the age of "
                               "wisdom, it was the age of foolishness, it was the epoch of belief. ";
    uint64_t seed = 42;
    for (size_t p = 0; p < pages; p++) {
        fill_random(mem + p * PAGE, &seed);
        for (size_t i = RANDOM_BYTES; i < PAGE; i++)
            mem[p * PAGE + i] = (unsigned char)text[(p * 7 + i) % (sizeof text - 1)];
    }
    printf("ready\n");
    fflush(stdout);
    size_t per_tick = pages * (size_t)permille / 1000;
    for (long t = 1; t <= ticks; t++) {
        uint64_t pick = 1000 + (same_pages ? 1 : (uint64_t)t);
        for (size_t k = 0; k < per_tick; k++) {
            size_t p = next_rand(&pick) % pages;
            uint64_t s = ((uint64_t)t << 32) ^ p;
            fill_random(mem + p * PAGE, &s);
        }
        uint64_t sum = 0xcbf29ce484222325ull;
        const uint64_t *w = (const uint64_t *)mem;
        for (size_t i = 0; i < size / 8; i += 4)
            sum = (sum ^ (w[i] + w[i + 1] * 3 + w[i + 2] * 5 + w[i + 3] * 7)) * 0x100000001b3ull;
        printf("tick %ld %016" PRIx64 "\n", t, sum);
        fflush(stdout);
        struct timespec ts = { pace_ms / 1000, (pace_ms % 1000) * 1000000L };
        nanosleep(&ts, NULL);
    }
    uint64_t sum = 0;
    for (size_t i = 0; i < size / 8; i++)
        sum += ((const uint64_t *)mem)[i] * (i | 1);
    printf("done %016" PRIx64 "\n", sum);
    return 0;
}
