/*
 * memhog: a program with a lot of memory, for ckrun's benchmark
 * (examples/bench.rs) and for trying large checkpoints by hand.
 *
 * It allocates SIZE_MIB MiB with one anonymous mmap and fills every page
 * so that the memory is about 2x compressible by lz4, like a typical
 * numeric heap rather than a best case (zeros) or a worst case (noise):
 * each 4 KiB page is 2 KiB of pseudo-random bytes followed by 2 KiB of
 * repeated English text. lz4 cannot shrink the random half and squeezes
 * the text half to almost nothing, so an image should be a little over
 * half the memory (`lz4 -1` on a dump of this memory: ratio 0.508).
 *
 * Then it prints "ready" (flushed) and loops forever: each tick it reads
 * one word of every page of a 64 MiB window (the window moves on each
 * tick, so the whole memory is read in turn) and writes one byte in every
 * 16th of those pages (in the random half, so compressibility stays the
 * same): 4 MiB of pages dirtied per tick, ~70 MiB/s. Then it prints
 * "tick N SUM" (flushed) and sleeps 50 ms. SUM depends only on the tick
 * number, so a restored run prints exactly the lines the original would
 * have printed: the benchmark compares them.
 *
 * The writes matter: while ckrun copies a copy-on-write snapshot, they
 * make the kernel copy pages, a cost real programs impose too. They are
 * kept moderate on purpose: a program rewriting all its memory every
 * second would turn a multi-second checkpoint into a copy of everything.
 *
 * Usage: memhog SIZE_MIB
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
#define WINDOW (64u << 20) /* bytes read per tick */
#define WRITE_EVERY 16     /* pages: one write per 16 pages read */
#define PACE_NS 50000000L  /* 50 ms */

/* splitmix64: fast, deterministic, and incompressible enough for lz4. */
static uint64_t next_rand(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

int main(int argc, char **argv)
{
    if (argc != 2 || atol(argv[1]) <= 0) {
        fprintf(stderr, "usage: memhog SIZE_MIB\n");
        return 2;
    }
    size_t size = (size_t)atol(argv[1]) << 20;
    unsigned char *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        perror("memhog: mmap");
        return 1;
    }
    /* MEMHOG_THP=1: transparent huge pages (the bench's "huge pages" row). */
    if (getenv("MEMHOG_THP"))
        madvise(mem, size, MADV_HUGEPAGE);

    static const char text[] = "It was the best of times, it was the worst of times, it was the age of "
                               "wisdom, it was the age of foolishness, it was the epoch of belief. ";
    uint64_t seed = 42;
    for (size_t page = 0; page < size; page += PAGE) {
        for (size_t i = 0; i < RANDOM_BYTES; i += 8) {
            uint64_t r = next_rand(&seed);
            memcpy(mem + page + i, &r, 8);
        }
        for (size_t i = RANDOM_BYTES; i < PAGE; i++) {
            mem[page + i] = (unsigned char)text[(page / PAGE * 7 + i) % (sizeof text - 1)];
        }
    }
    printf("ready\n");
    fflush(stdout);

    size_t window = size < WINDOW ? size : WINDOW;
    size_t start = 0;
    for (uint64_t tick = 1;; tick++) {
        uint64_t sum = tick;
        for (size_t off = 0; off < window; off += PAGE) {
            unsigned char *p = mem + (start + off) % size;
            uint64_t word;
            memcpy(&word, p, 8);
            sum = sum * 31 + word;
            if (off / PAGE % WRITE_EVERY == 0)
                p[8]++;
        }
        start = (start + window) % size;
        printf("tick %" PRIu64 " %016" PRIx64 "\n", tick, sum);
        fflush(stdout);
        struct timespec pace = {0, PACE_NS};
        nanosleep(&pace, NULL);
    }
}
