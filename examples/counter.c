/*
 * counter: a deterministic program whose state lives everywhere a
 * checkpoint has to capture it, for ckrun's end-to-end tests.
 *
 *   - static data: initialised globals (.data) and zeroed globals (.bss);
 *   - the heap: a small malloc'd array (brk heap) and a large one that
 *     glibc serves with its own mmap;
 *   - the stack: a local array in main;
 *   - an open file: state.dat in the current directory, one record appended
 *     per tick through the fd's own offset, spot-checked with pread while
 *     running, and re-read in full at the end.
 *
 * It prints "tick N <checksum>" after every tick (flushed) and a final
 * "done <checksum>", then exits with 7 so that the tests can check that the
 * exit status is passed through. ~20 ms pacing over 200 ticks: about 4 s.
 * The pacing never changes the output: every value printed depends only on
 * the tick number, so a restored run prints exactly what a bare run does.
 *
 * Usage: counter [TICKS]   (default 200)
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SMALL_WORDS 512              /* 4 KiB: brk heap */
#define BIG_WORDS (4u << 20) / 8     /* 4 MiB: mmap'd by malloc */
#define STACK_WORDS 256
#define PACE_NS 20000000L            /* 20 ms */

/* One record of state.dat: fixed size so that its offset is known. */
struct record {
    uint64_t tick;
    uint64_t checksum;
};

/* .data: must keep its initial values and later updates across restarts. */
static uint64_t data_seed = 0x9e3779b97f4a7c15ull;
static const char banner[] = "counter";
/* .bss */
static uint64_t ticks_done;
static uint64_t bss_sum;

/* splitmix64: a small deterministic generator. */
static uint64_t next_rand(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void die(const char *what)
{
    fprintf(stderr, "%s: %s: %s\n", banner, what, strerror(errno));
    exit(1);
}

/* Sleeps PACE_NS, resuming after a signal interrupts the sleep. */
static void pace(void)
{
    struct timespec req = {0, PACE_NS}, rem;
    while (nanosleep(&req, &rem) == -1) {
        if (errno != EINTR)
            die("nanosleep");
        req = rem;
    }
}

static void write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("write state.dat");
        }
        p += n;
        len -= (size_t)n;
    }
}

static void read_all(int fd, void *buf, size_t len, off_t off)
{
    char *p = buf;
    while (len > 0) {
        ssize_t n = pread(fd, p, len, off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            fprintf(stderr, "%s: short read of state.dat at %lld\n", banner, (long long)off);
            exit(1);
        }
        p += n;
        off += n;
        len -= (size_t)n;
    }
}

int main(int argc, char **argv)
{
    uint64_t ticks = argc > 1 ? strtoull(argv[1], NULL, 10) : 200;
    uint64_t stack_words[STACK_WORDS];
    uint64_t *small = malloc(SMALL_WORDS * sizeof *small);
    uint64_t *big = malloc(BIG_WORDS * sizeof *big);
    if (!small || !big)
        die("malloc");

    uint64_t seed = 42;
    for (size_t i = 0; i < STACK_WORDS; i++)
        stack_words[i] = next_rand(&seed);
    for (size_t i = 0; i < SMALL_WORDS; i++)
        small[i] = next_rand(&seed);
    for (size_t i = 0; i < BIG_WORDS; i++)
        big[i] = i * 0x100000001b3ull;

    /* O_TRUNC: a leftover state.dat from an earlier run must not count. */
    int fd = open("state.dat", O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        die("open state.dat");

    uint64_t checksum = 0;
    for (uint64_t t = 1; t <= ticks; t++) {
        /* Touch every kind of memory; fold what was touched into the sum. */
        uint64_t r = next_rand(&data_seed);
        stack_words[r % STACK_WORDS] ^= r;
        small[(r >> 8) % SMALL_WORDS] += r;
        for (int k = 0; k < 64; k++) {
            size_t at = next_rand(&seed) % BIG_WORDS;
            big[at] = big[at] * 31 + t;
            checksum = checksum * 1099511628211ull ^ big[at];
        }
        checksum ^= stack_words[(r >> 16) % STACK_WORDS] + small[(r >> 24) % SMALL_WORDS];
        bss_sum += checksum >> 7;
        ticks_done = t;

        struct record rec = {t, checksum};
        write_all(fd, &rec, sizeof rec);
        /* The fd's offset must be where the records say it is. */
        off_t pos = lseek(fd, 0, SEEK_CUR);
        if (pos != (off_t)(t * sizeof rec)) {
            fprintf(stderr, "%s: state.dat offset %lld, expected %llu\n", banner,
                    (long long)pos, (unsigned long long)(t * sizeof rec));
            exit(1);
        }
        if (t % 10 == 0) {
            struct record back;
            read_all(fd, &back, sizeof back, (off_t)((t - 5) * sizeof back));
            checksum += back.checksum ^ back.tick;
        }

        printf("tick %" PRIu64 " %016" PRIx64 "\n", t, checksum);
        fflush(stdout);
        pace();
    }

    /* Re-read the whole file: every record must be there, in order. */
    uint64_t file_sum = 0;
    for (uint64_t t = 1; t <= ticks_done; t++) {
        struct record rec;
        read_all(fd, &rec, sizeof rec, (off_t)((t - 1) * sizeof rec));
        if (rec.tick != t) {
            fprintf(stderr, "%s: state.dat record %llu holds tick %llu\n", banner,
                    (unsigned long long)t, (unsigned long long)rec.tick);
            exit(1);
        }
        file_sum = file_sum * 31 + rec.checksum;
    }
    uint64_t big_sum = 0;
    for (size_t i = 0; i < BIG_WORDS; i++)
        big_sum += big[i] ^ i;
    close(fd);

    printf("done %016" PRIx64 " file %016" PRIx64 " heap %016" PRIx64 " bss %016" PRIx64 "\n",
           checksum, file_sum, big_sum, bss_sum);
    fflush(stdout);
    free(big);
    free(small);
    return 7;
}
