/*
 * memflags: memory with unusual flags, for ckrun's end-to-end tests
 * (tests/memory_flags.rs).
 *
 *   memflags dontfork [TICKS]   (default 120)
 *
 * Memory the program marked MADV_DONTFORK, as V8 (node.js) marks its heap:
 *   - a 6 MiB private anonymous region, all of it DONTFORK;
 *   - a 12 MiB private anonymous region whose middle 4 MiB only are
 *     DONTFORK (three VMAs: the flag splits it);
 *   - two adjacent DONTFORK regions of 1 MiB, the second read-only;
 *   - a private mapping of a file (memflags.dat, written here), DONTFORK,
 *     with some of its pages written (no longer the file's);
 *   - 2 MiB of shared anonymous memory, DONTFORK.
 * Every tick rewrites a few words of each writable region and prints
 * "tick N HASH dc=FLAGS" (flushed): HASH covers every byte of every
 * region, FLAGS says for each region whether /proc/self/smaps shows it
 * with VM_DONTCOPY ("dc"), and must say so after a restart too. At the end,
 * a forked child checks that none of the DONTFORK memory is in it, and the
 * program prints "done HASH fork=ok".
 *
 *   memflags sparse [TICKS]     (default 120)
 *
 * A 2 TiB MAP_NORESERVE reservation with 5 touched pages (its first,
 * its last, and three in between), and a 1 GiB one with none: every tick
 * rewrites a word of each touched page and prints "tick N HASH". At the
 * end it checks that pages it never touched still read as zeros and that
 * the reservation is whole, and prints "done HASH".
 *
 * Every value printed depends only on the tick number, so a restored run
 * prints exactly what a bare run does. ~20 ms pacing.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096ul
#define MIB (1ul << 20)
#define PACE_NS 20000000L

static void die(const char *what)
{
    fprintf(stderr, "memflags: %s: %s\n", what, strerror(errno));
    exit(1);
}

static uint64_t next_rand(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void pace(void)
{
    struct timespec req = {0, PACE_NS}, rem;
    while (nanosleep(&req, &rem) == -1) {
        if (errno != EINTR)
            die("nanosleep");
        req = rem;
    }
}

static uint64_t hash_words(uint64_t h, const uint64_t *p, size_t words)
{
    for (size_t i = 0; i < words; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

static void *map(size_t len, int prot, int flags, int fd)
{
    void *p = mmap(NULL, len, prot, flags, fd, 0);
    if (p == MAP_FAILED)
        die("mmap");
    return p;
}

static void advise(void *p, size_t len, int advice)
{
    if (madvise(p, len, advice) != 0)
        die("madvise");
}

/* Whether /proc/self/smaps shows the VMA holding `addr` with VmFlags
 * `flag`; -1 when no VMA holds it. */
static int vm_flag(const void *addr, const char *flag)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f)
        die("open /proc/self/smaps");
    char line[512];
    int in = 0, found = -1;
    uintptr_t a = (uintptr_t)addr;
    while (fgets(line, sizeof line, f)) {
        size_t hex = strspn(line, "0123456789abcdef");
        if (hex > 0 && line[hex] == '-') {
            unsigned long lo = strtoul(line, NULL, 16), hi = strtoul(line + hex + 1, NULL, 16);
            in = a >= lo && a < hi;
        } else if (in && strncmp(line, "VmFlags:", 8) == 0) {
            found = 0;
            for (char *t = strtok(line + 8, " \n"); t; t = strtok(NULL, " \n"))
                if (strcmp(t, flag) == 0)
                    found = 1;
            in = 0;
        }
    }
    fclose(f);
    return found;
}

/* ---- dontfork ---------------------------------------------------------- */

struct region {
    const char *name;
    uint64_t *p;
    size_t len;
    int writable;
    /* Where the DONTFORK part is (the whole region unless split). */
    char *dc_at;
    size_t dc_len;
};

static int dontfork(uint64_t ticks)
{
    struct region r[6];
    int n = 0;
    uint64_t seed = 7;

    uint64_t *whole = map(6 * MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1);
    r[n++] = (struct region){"whole", whole, 6 * MIB, 1, (char *)whole, 6 * MIB};

    uint64_t *split = map(12 * MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1);
    r[n++] = (struct region){"split", split, 12 * MIB, 1, (char *)split + 4 * MIB, 4 * MIB};

    /* Two adjacent DONTFORK VMAs of different protection. */
    char *pair = map(2 * MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1);
    r[n++] = (struct region){"pair-rw", (uint64_t *)pair, MIB, 1, pair, MIB};
    r[n++] = (struct region){"pair-ro", (uint64_t *)(pair + MIB), MIB, 0, pair + MIB, MIB};

    /* A private file mapping, some of its pages written. */
    int fd = open("memflags.dat", O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        die("open memflags.dat");
    static uint64_t block[PAGE / 8];
    for (size_t i = 0; i < 4 * MIB / PAGE; i++) {
        for (size_t k = 0; k < PAGE / 8; k++)
            block[k] = next_rand(&seed);
        if (write(fd, block, PAGE) != (ssize_t)PAGE)
            die("write memflags.dat");
    }
    uint64_t *file = map(4 * MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd);
    close(fd);
    r[n++] = (struct region){"file", file, 4 * MIB, 1, (char *)file, 4 * MIB};

    uint64_t *shared = map(2 * MIB, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1);
    r[n++] = (struct region){"shared", shared, 2 * MIB, 1, (char *)shared, 2 * MIB};

    /* Known data everywhere (the file's pages: every 3rd one written). */
    for (int i = 0; i < n; i++) {
        if (r[i].p == file) {
            for (size_t pg = 0; pg < r[i].len / PAGE; pg += 3)
                r[i].p[pg * PAGE / 8] ^= next_rand(&seed);
            continue;
        }
        for (size_t k = 0; k < r[i].len / 8; k++)
            r[i].p[k] = (k % 5 == 0) ? 0 : next_rand(&seed) | 1;
    }
    if (mprotect(pair + MIB, MIB, PROT_READ) != 0)
        die("mprotect");
    for (int i = 0; i < n; i++)
        advise(r[i].dc_at, r[i].dc_len, MADV_DONTFORK);

    for (uint64_t t = 1; t <= ticks; t++) {
        uint64_t h = 0xcbf29ce484222325ull;
        char dc[16];
        for (int i = 0; i < n; i++) {
            if (r[i].writable) {
                for (int k = 0; k < 16; k++) {
                    uint64_t x = next_rand(&seed);
                    r[i].p[x % (r[i].len / 8)] += x ^ t;
                }
            }
            h = hash_words(h, r[i].p, r[i].len / 8);
            int f = vm_flag(r[i].dc_at, "dc");
            dc[i] = f == 1 ? 'y' : f == 0 ? 'n' : '?';
        }
        /* The split region's other parts must not have the flag. */
        dc[n] = vm_flag(split, "dc") == 0 && vm_flag((char *)split + 8 * MIB, "dc") == 0 ? 'n' : '!';
        dc[n + 1] = 0;
        printf("tick %" PRIu64 " %016" PRIx64 " dc=%s\n", t, h, dc);
        fflush(stdout);
        pace();
    }

    uint64_t h = 0xcbf29ce484222325ull;
    for (int i = 0; i < n; i++)
        h = hash_words(h, r[i].p, r[i].len / 8);
    /* A child must have none of the DONTFORK memory, and the rest. */
    pid_t child = fork();
    if (child < 0)
        die("fork");
    if (child == 0) {
        for (int i = 0; i < n; i++)
            if (msync(r[i].dc_at, PAGE, MS_ASYNC) == 0 || errno != ENOMEM)
                _exit(10 + i);
        if (split[0] == 0 && split[1] == 0 && split[2] == 0)
            _exit(20); /* the split region's first part is copied */
        _exit(0);
    }
    int status;
    if (waitpid(child, &status, 0) != child)
        die("waitpid");
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        printf("done %016" PRIx64 " fork=ok\n", h);
    else
        printf("done %016" PRIx64 " fork=bad(%d)\n", h, status);
    fflush(stdout);
    return 0;
}

/* ---- sparse ------------------------------------------------------------ */

static int sparse(uint64_t ticks)
{
    const size_t len = 2ul << 40;
    char *res = map(len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1);
    /* Never touched at all. */
    char *empty = map(1ul << 30, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1);
    size_t at[5] = {0, len / 3 & ~(PAGE - 1), len / 2 + 17 * PAGE, len - 1000 * PAGE, len - PAGE};
    uint64_t seed = 11;
    for (int i = 0; i < 5; i++) {
        uint64_t *p = (uint64_t *)(res + at[i]);
        for (size_t k = 0; k < PAGE / 8; k++)
            p[k] = next_rand(&seed);
    }
    for (uint64_t t = 1; t <= ticks; t++) {
        uint64_t h = 0xcbf29ce484222325ull;
        for (int i = 0; i < 5; i++) {
            uint64_t *p = (uint64_t *)(res + at[i]);
            uint64_t x = next_rand(&seed);
            p[x % (PAGE / 8)] ^= x + t;
            h = hash_words(h, p, PAGE / 8);
        }
        printf("tick %" PRIu64 " %016" PRIx64 "\n", t, h);
        fflush(stdout);
        pace();
    }
    uint64_t h = 0xcbf29ce484222325ull;
    for (int i = 0; i < 5; i++)
        h = hash_words(h, (uint64_t *)(res + at[i]), PAGE / 8);
    /* Untouched pages (reading them maps the zero page: harmless). */
    size_t probe[4] = {PAGE, len / 4, len / 2, len - 2 * PAGE};
    for (int i = 0; i < 4; i++)
        if (*(volatile uint64_t *)(res + probe[i]) != 0) {
            printf("done: page at +%#zx is not zero\n", probe[i]);
            return 1;
        }
    if (*(volatile uint64_t *)(empty + 12345 * PAGE) != 0) {
        printf("done: the empty reservation is not zero\n");
        return 1;
    }
    /* Still one reservation of the whole length. */
    if (msync(res, len, MS_ASYNC) != 0)
        die("msync of the reservation");
    printf("done %016" PRIx64 " nr=%d\n", h, vm_flag(res, "nr"));
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "dontfork";
    uint64_t ticks = argc > 2 ? strtoull(argv[2], NULL, 10) : 120;
    if (strcmp(mode, "dontfork") == 0)
        return dontfork(ticks);
    if (strcmp(mode, "sparse") == 0)
        return sparse(ticks);
    fprintf(stderr, "usage: memflags dontfork|sparse [TICKS]\n");
    return 2;
}
