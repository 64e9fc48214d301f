/*
 * fd_deleted: files that exist only through the program's fds or mappings,
 * for ckrun's end-to-end tests (issue 4). Their content must survive a
 * restart although no path leads to them any more.
 *
 * Groups, selected by argv (default: all of them):
 *   unlinked  del.dat: written (8 KiB pattern), opened a second time
 *             independently, then unlink()ed while open. Each tick reads
 *             the pattern sequentially through the first fd (its offset
 *             moves), appends a record with pwrite through the second and
 *             checks through the first that the record is there: the two
 *             open file descriptions must still share one inode. fstat
 *             must say st_nlink 0, /proc/self/fd must say "(deleted)", and
 *             no del.dat may reappear in the directory.
 *   mmap      map.dat: 64 KiB, mmap(MAP_SHARED), unlinked, fd kept: writes
 *             through the mapping must show through the fd and the other
 *             way round. map2.dat: mapped shared, fd closed, unlinked: only
 *             the mapping holds it; its content is checked and changed each
 *             tick. /proc/self/maps must show both as shared ("rw-s") and
 *             "(deleted)".
 *   memfd     memfd_create("ckrun-memfd", MFD_CLOEXEC | MFD_ALLOW_SEALING):
 *             16 KiB written through the fd, mapped shared, sealed against
 *             shrinking; each tick appends through the fd (offset checked),
 *             writes through the mapping and through pwrite and checks each
 *             write through the other view; checks the seals (and that
 *             ftruncate to 0 is refused), the name and FD_CLOEXEC.
 *   vanished  vanish.d/sub/v.dat: written (16 KiB pattern), opened, mapped
 *             shared, then unlinked, and its directories removed too (a
 *             build's temporary directory, gone with its files). Each tick
 *             writes a record through the fd and checks it through the
 *             mapping and back; the fd must still show
 *             "vanish.d/sub/v.dat (deleted)", and vanish.d must not exist
 *             again. Not in the default set.
 *
 * Output: "tick N ..." per tick (flushed), then "done ...". 20 ms pacing,
 * 200 ticks: about 4 s. Any failed check prints "FAIL tick N: ..." and
 * exits 1. Exit code 0.
 *
 * Usage: fd_deleted [unlinked] [mmap] [memfd] [vanished]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define TICKS 200
#define PACE_NS 20000000L /* 20 ms */
#define REC 16

static int tick;

static void fail(const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    printf("FAIL tick %d: %s\n", tick, msg);
    fflush(stdout);
    fprintf(stderr, "fd_deleted: FAIL tick %d: %s\n", tick, msg);
    exit(1);
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

static unsigned char pat(unsigned salt, size_t i)
{
    return (unsigned char)((i * 7 + salt * 13 + (i >> 8)) & 0xff);
}

static void record(char *buf, char tag, int t)
{
    snprintf(buf, REC + 1, "%c%05d:%08x\n", tag, t, (unsigned)(t * 2654435761u));
}

static uint64_t fnv(uint64_t h, const void *buf, size_t len)
{
    const unsigned char *p = buf;
    for (size_t i = 0; i < len; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

static int must_open(const char *path, int flags)
{
    int fd = open(path, flags, 0644);
    if (fd < 0)
        fail("open %s: %s", path, strerror(errno));
    return fd;
}

static void write_exact(int fd, const void *buf, size_t len, const char *what)
{
    ssize_t n = write(fd, buf, len);
    if (n != (ssize_t)len)
        fail("write %s: %zd of %zu (%s)", what, n, len, n < 0 ? strerror(errno) : "short");
}

static void pread_exact(int fd, void *buf, size_t len, off_t off, const char *what)
{
    ssize_t n = pread(fd, buf, len, off);
    if (n != (ssize_t)len)
        fail("pread %s at %lld: %zd of %zu (%s)", what, (long long)off, n, len, n < 0 ? strerror(errno) : "short");
}

static void pwrite_exact(int fd, const void *buf, size_t len, off_t off, const char *what)
{
    ssize_t n = pwrite(fd, buf, len, off);
    if (n != (ssize_t)len)
        fail("pwrite %s at %lld: %zd of %zu (%s)", what, (long long)off, n, len, n < 0 ? strerror(errno) : "short");
}

static void check_offset(int fd, off_t want, const char *what)
{
    off_t pos = lseek(fd, 0, SEEK_CUR);
    if (pos != want)
        fail("%s: offset %lld, expected %lld", what, (long long)pos, (long long)want);
}

/* readlink(/proc/self/fd/N) must end with `suffix`. */
static void check_link(int fd, const char *suffix, const char *what)
{
    char path[64], link[512];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, link, sizeof link - 1);
    if (n < 0)
        fail("readlink %s (%s): %s", path, what, strerror(errno));
    link[n] = 0;
    size_t ls = strlen(suffix);
    if ((size_t)n < ls || strcmp(link + n - ls, suffix) != 0)
        fail("%s: fd %d links to \"%s\", expected \"...%s\"", what, fd, link, suffix);
}

/* The line of /proc/self/maps that starts at `addr` must be a shared,
 * writable mapping whose path ends with `suffix`. */
static void check_maps(void *addr, const char *suffix, const char *what)
{
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f)
        fail("open /proc/self/maps: %s", strerror(errno));
    char line[1024];
    int found = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long start;
        char perms[8];
        if (sscanf(line, "%lx-%*x %7s", &start, perms) != 2 || start != (unsigned long)addr)
            continue;
        found = 1;
        line[strcspn(line, "\n")] = 0;
        size_t n = strlen(line), ls = strlen(suffix);
        if (strcmp(perms, "rw-s") != 0 || n < ls || strcmp(line + n - ls, suffix) != 0)
            fail("%s: /proc/self/maps says \"%s\", expected rw-s and \"...%s\"", what, line, suffix);
    }
    fclose(f);
    if (!found)
        fail("%s: no mapping at %p any more", what, addr);
}

/* --------------------------------------------------------------- unlinked */

#define DEL_BASE 8192
static int del_a, del_b, del_fl;

static void unlinked_setup(void)
{
    unsigned char buf[DEL_BASE];
    for (size_t i = 0; i < DEL_BASE; i++)
        buf[i] = pat(1, i);
    del_a = must_open("del.dat", O_RDWR | O_CREAT | O_TRUNC);
    write_exact(del_a, buf, DEL_BASE, "del.dat");
    if (lseek(del_a, 0, SEEK_SET) != 0)
        fail("lseek del.dat: %s", strerror(errno));
    del_b = must_open("del.dat", O_RDWR);
    if (unlink("del.dat") != 0)
        fail("unlink del.dat: %s", strerror(errno));
    /* As the kernel reports it (O_LARGEFILE included). */
    del_fl = fcntl(del_a, F_GETFL);
    if ((del_fl & O_ACCMODE) != O_RDWR)
        fail("del.dat: F_GETFL %#o", del_fl);
}

static uint64_t unlinked_tick(int t)
{
    unsigned char got[32];
    /* Sequential read of the pattern: 32 bytes per tick (6.4 KiB in all). */
    ssize_t n = read(del_a, got, sizeof got);
    if (n != (ssize_t)sizeof got)
        fail("read del.dat: %zd (%s)", n, n < 0 ? strerror(errno) : "short");
    for (size_t i = 0; i < sizeof got; i++)
        if (got[i] != pat(1, (size_t)(t - 1) * sizeof got + i))
            fail("del.dat: byte %zu differs", (size_t)(t - 1) * sizeof got + i);
    check_offset(del_a, (off_t)t * sizeof got, "del.dat fd a");

    /* Append through b, see it through a; last tick's record still there. */
    char rec[REC + 1], back[REC];
    record(rec, 'd', t);
    pwrite_exact(del_b, rec, REC, DEL_BASE + (off_t)(t - 1) * REC, "del.dat fd b");
    pread_exact(del_a, back, REC, DEL_BASE + (off_t)(t - 1) * REC, "del.dat fd a");
    if (memcmp(back, rec, REC) != 0)
        fail("del.dat: a write through one open file description is not seen through the other");
    if (t > 1) {
        record(rec, 'd', t - 1);
        pread_exact(del_b, back, REC, DEL_BASE + (off_t)(t - 2) * REC, "del.dat fd b");
        if (memcmp(back, rec, REC) != 0)
            fail("del.dat: record %d lost", t - 1);
    }
    check_offset(del_b, 0, "del.dat fd b");

    struct stat sa, sb, sp;
    if (fstat(del_a, &sa) != 0 || fstat(del_b, &sb) != 0)
        fail("fstat del.dat: %s", strerror(errno));
    if (sa.st_ino != sb.st_ino || sa.st_dev != sb.st_dev)
        fail("del.dat: the two fds are on different files now");
    if (sa.st_nlink != 0)
        fail("del.dat: st_nlink %lu, expected 0 (deleted)", (unsigned long)sa.st_nlink);
    if (sa.st_size != DEL_BASE + (off_t)t * REC)
        fail("del.dat: size %lld, expected %lld", (long long)sa.st_size, (long long)(DEL_BASE + (off_t)t * REC));
    if (!S_ISREG(sa.st_mode) || (sa.st_mode & 07777) != 0644)
        fail("del.dat: mode %o", (unsigned)sa.st_mode);
    if (fcntl(del_a, F_GETFL) != del_fl || fcntl(del_b, F_GETFL) != del_fl)
        fail("del.dat: F_GETFL %#o / %#o, expected %#o", fcntl(del_a, F_GETFL), fcntl(del_b, F_GETFL), del_fl);
    check_link(del_a, " (deleted)", "del.dat fd a");
    check_link(del_b, " (deleted)", "del.dat fd b");
    if (stat("del.dat", &sp) == 0 || errno != ENOENT)
        fail("del.dat exists again in the directory");
    return fnv(1469598103934665603ull, got, sizeof got);
}

/* ------------------------------------------------------------------- mmap */

#define MAP_LEN (64 * 1024)
#define MAP_SLOTS (MAP_LEN / 64)
static int map_fd;
static unsigned char *map1, *map2;

static void mmap_setup(void)
{
    map_fd = must_open("map.dat", O_RDWR | O_CREAT | O_TRUNC);
    if (ftruncate(map_fd, MAP_LEN) != 0)
        fail("ftruncate map.dat: %s", strerror(errno));
    map1 = mmap(NULL, MAP_LEN, PROT_READ | PROT_WRITE, MAP_SHARED, map_fd, 0);
    if (map1 == MAP_FAILED)
        fail("mmap map.dat: %s", strerror(errno));
    for (size_t i = 0; i < MAP_LEN; i++)
        map1[i] = pat(2, i);
    if (unlink("map.dat") != 0)
        fail("unlink map.dat: %s", strerror(errno));

    int fd = must_open("map2.dat", O_RDWR | O_CREAT | O_TRUNC);
    if (ftruncate(fd, MAP_LEN) != 0)
        fail("ftruncate map2.dat: %s", strerror(errno));
    map2 = mmap(NULL, MAP_LEN, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map2 == MAP_FAILED)
        fail("mmap map2.dat: %s", strerror(errno));
    close(fd);
    for (size_t i = 0; i < MAP_LEN; i++)
        map2[i] = pat(3, i);
    if (unlink("map2.dat") != 0)
        fail("unlink map2.dat: %s", strerror(errno));
}

static uint64_t mmap_tick(int t)
{
    char rec[REC + 1], back[REC];
    /* Memory -> file. */
    size_t slot = (size_t)(t * 37) % MAP_SLOTS;
    record(rec, 'm', t);
    memcpy(map1 + slot * 64, rec, REC);
    pread_exact(map_fd, back, REC, (off_t)slot * 64, "map.dat");
    if (memcmp(back, rec, REC) != 0)
        fail("map.dat: a write to the shared mapping is not in the file");
    /* File -> memory. */
    size_t slot2 = (slot + MAP_SLOTS / 2) % MAP_SLOTS;
    record(rec, 'f', t);
    pwrite_exact(map_fd, rec, REC, (off_t)slot2 * 64 + 32, "map.dat");
    if (memcmp(map1 + slot2 * 64 + 32, rec, REC) != 0)
        fail("map.dat: a write to the file is not in the shared mapping");
    struct stat st;
    if (fstat(map_fd, &st) != 0 || st.st_nlink != 0 || st.st_size != MAP_LEN)
        fail("map.dat: fstat nlink %lu size %lld", (unsigned long)st.st_nlink, (long long)st.st_size);
    check_offset(map_fd, 0, "map.dat");
    check_link(map_fd, " (deleted)", "map.dat");
    check_maps(map1, "map.dat (deleted)", "map.dat mapping");

    /* map2: only the mapping is left. Bytes past the written records keep
     * the pattern; written records stay. */
    size_t s3 = (size_t)(t * 53) % MAP_SLOTS;
    record(rec, 'n', t);
    memcpy(map2 + s3 * 64 + 16, rec, REC);
    for (size_t i = 0; i < MAP_LEN; i += 64)
        if (map2[i] != pat(3, i) || map2[i + 63] != pat(3, i + 63))
            fail("map2.dat: mapping content lost at %zu", i);
    check_maps(map2, "map2.dat (deleted)", "map2.dat mapping");
    if (stat("map.dat", &st) == 0 || stat("map2.dat", &st) == 0)
        fail("map.dat or map2.dat exists again in the directory");
    return fnv(fnv(1469598103934665603ull, map1, MAP_LEN), map2, MAP_LEN);
}

/* ------------------------------------------------------------------ memfd */

#define MEMFD_LEN (16 * 1024)
#define MEMFD_SLOTS (MEMFD_LEN / 64)
static int mfd, mfd_fl;
static unsigned char *mmem;

static void memfd_setup(void)
{
    mfd = memfd_create("ckrun-memfd", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (mfd < 0)
        fail("memfd_create: %s", strerror(errno));
    unsigned char buf[MEMFD_LEN];
    for (size_t i = 0; i < MEMFD_LEN; i++)
        buf[i] = pat(4, i);
    write_exact(mfd, buf, MEMFD_LEN, "memfd");
    mmem = mmap(NULL, MEMFD_LEN, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    if (mmem == MAP_FAILED)
        fail("mmap memfd: %s", strerror(errno));
    if (fcntl(mfd, F_ADD_SEALS, F_SEAL_SHRINK) != 0)
        fail("F_ADD_SEALS: %s", strerror(errno));
    mfd_fl = fcntl(mfd, F_GETFL);
    if ((mfd_fl & O_ACCMODE) != O_RDWR)
        fail("memfd: F_GETFL %#o", mfd_fl);
}

static uint64_t memfd_tick(int t)
{
    char rec[REC + 1], back[REC];
    /* Append through the fd's own offset. */
    record(rec, 'M', t);
    write_exact(mfd, rec, REC, "memfd");
    check_offset(mfd, MEMFD_LEN + (off_t)t * REC, "memfd");
    if (t > 1) {
        record(rec, 'M', t - 1);
        pread_exact(mfd, back, REC, MEMFD_LEN + (off_t)(t - 2) * REC, "memfd");
        if (memcmp(back, rec, REC) != 0)
            fail("memfd: record %d lost", t - 1);
    }
    /* Mapping <-> file, both ways. */
    size_t slot = (size_t)(t * 41) % MEMFD_SLOTS;
    record(rec, 'p', t);
    memcpy(mmem + slot * 64, rec, REC);
    pread_exact(mfd, back, REC, (off_t)slot * 64, "memfd");
    if (memcmp(back, rec, REC) != 0)
        fail("memfd: a write to the shared mapping is not in the memfd");
    record(rec, 'q', t);
    pwrite_exact(mfd, rec, REC, (off_t)slot * 64 + 32, "memfd");
    if (memcmp(mmem + slot * 64 + 32, rec, REC) != 0)
        fail("memfd: a pwrite is not in the shared mapping");
    if (mmem[slot * 64 + 63] != pat(4, slot * 64 + 63))
        fail("memfd: pattern lost at %zu", slot * 64 + 63);

    struct stat st;
    if (fstat(mfd, &st) != 0 || st.st_size != MEMFD_LEN + (off_t)t * REC)
        fail("memfd: size %lld, expected %lld", (long long)st.st_size, (long long)(MEMFD_LEN + (off_t)t * REC));
    int seals = fcntl(mfd, F_GET_SEALS);
    if (seals != F_SEAL_SHRINK)
        fail("memfd: seals %#x, expected F_SEAL_SHRINK (%#x)", seals, F_SEAL_SHRINK);
    if (ftruncate(mfd, 0) != -1 || errno != EPERM)
        fail("memfd: ftruncate to 0 was not refused by the seal");
    if (fcntl(mfd, F_GETFL) != mfd_fl || fcntl(mfd, F_GETFD) != FD_CLOEXEC)
        fail("memfd: F_GETFL %#o F_GETFD %d, expected %#o and FD_CLOEXEC", fcntl(mfd, F_GETFL), fcntl(mfd, F_GETFD),
             mfd_fl);
    check_link(mfd, "/memfd:ckrun-memfd (deleted)", "memfd");
    check_maps(mmem, "/memfd:ckrun-memfd (deleted)", "memfd mapping");
    return fnv(1469598103934665603ull, mmem, MEMFD_LEN);
}

/* --------------------------------------------------------------- vanished */

#define VAN_LEN (16 * 1024)
#define VAN_SLOTS (VAN_LEN / 64)
static int van_fd;
static unsigned char *van_map;

static void vanished_setup(void)
{
    if (mkdir("vanish.d", 0755) != 0 || mkdir("vanish.d/sub", 0755) != 0)
        fail("mkdir vanish.d/sub: %s", strerror(errno));
    van_fd = must_open("vanish.d/sub/v.dat", O_RDWR | O_CREAT | O_TRUNC);
    unsigned char buf[VAN_LEN];
    for (size_t i = 0; i < VAN_LEN; i++)
        buf[i] = pat(5, i);
    write_exact(van_fd, buf, VAN_LEN, "v.dat");
    van_map = mmap(NULL, VAN_LEN, PROT_READ | PROT_WRITE, MAP_SHARED, van_fd, 0);
    if (van_map == MAP_FAILED)
        fail("mmap v.dat: %s", strerror(errno));
    if (unlink("vanish.d/sub/v.dat") != 0 || rmdir("vanish.d/sub") != 0 || rmdir("vanish.d") != 0)
        fail("removing vanish.d: %s", strerror(errno));
}

static uint64_t vanished_tick(int t)
{
    char rec[REC + 1], back[REC];
    size_t slot = (size_t)(t * 29) % VAN_SLOTS;
    record(rec, 'v', t);
    pwrite_exact(van_fd, rec, REC, (off_t)slot * 64, "v.dat");
    if (memcmp(van_map + slot * 64, rec, REC) != 0)
        fail("v.dat: a write to the file is not in the shared mapping");
    record(rec, 'w', t);
    memcpy(van_map + slot * 64 + 32, rec, REC);
    pread_exact(van_fd, back, REC, (off_t)slot * 64 + 32, "v.dat");
    if (memcmp(back, rec, REC) != 0)
        fail("v.dat: a write to the shared mapping is not in the file");
    if (van_map[slot * 64 + 63] != pat(5, slot * 64 + 63))
        fail("v.dat: pattern lost at %zu", slot * 64 + 63);
    struct stat st;
    if (fstat(van_fd, &st) != 0 || st.st_nlink != 0 || st.st_size != VAN_LEN)
        fail("v.dat: fstat nlink %lu size %lld", (unsigned long)st.st_nlink, (long long)st.st_size);
    check_link(van_fd, "/vanish.d/sub/v.dat (deleted)", "v.dat");
    check_maps(van_map, "/vanish.d/sub/v.dat (deleted)", "v.dat mapping");
    if (stat("vanish.d", &st) == 0 || errno != ENOENT)
        fail("vanish.d exists again");
    return fnv(1469598103934665603ull, van_map, VAN_LEN);
}

/* ------------------------------------------------------------------- main */

int main(int argc, char **argv)
{
    int do_unlinked = argc <= 1, do_mmap = argc <= 1, do_memfd = argc <= 1, do_vanished = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "unlinked") == 0)
            do_unlinked = 1;
        else if (strcmp(argv[i], "mmap") == 0)
            do_mmap = 1;
        else if (strcmp(argv[i], "memfd") == 0)
            do_memfd = 1;
        else if (strcmp(argv[i], "vanished") == 0)
            do_vanished = 1;
        else {
            fprintf(stderr, "usage: fd_deleted [unlinked] [mmap] [memfd] [vanished]\n");
            return 2;
        }
    }
    if (do_unlinked)
        unlinked_setup();
    if (do_mmap)
        mmap_setup();
    if (do_memfd)
        memfd_setup();
    if (do_vanished)
        vanished_setup();

    uint64_t sum = 0;
    for (tick = 1; tick <= TICKS; tick++) {
        char line[256];
        int len = snprintf(line, sizeof line, "tick %d", tick);
        if (do_unlinked) {
            uint64_t h = unlinked_tick(tick);
            sum = sum * 31 + h;
            len += snprintf(line + len, sizeof line - len, " unlinked %016" PRIx64, h);
        }
        if (do_mmap) {
            uint64_t h = mmap_tick(tick);
            sum = sum * 31 + h;
            len += snprintf(line + len, sizeof line - len, " mmap %016" PRIx64, h);
        }
        if (do_memfd) {
            uint64_t h = memfd_tick(tick);
            sum = sum * 31 + h;
            len += snprintf(line + len, sizeof line - len, " memfd %016" PRIx64, h);
        }
        if (do_vanished) {
            uint64_t h = vanished_tick(tick);
            sum = sum * 31 + h;
            len += snprintf(line + len, sizeof line - len, " vanished %016" PRIx64, h);
        }
        printf("%s sum %016" PRIx64 "\n", line, sum);
        fflush(stdout);
        pace();
    }
    tick = 0;
    printf("done sum %016" PRIx64 "\n", sum);
    fflush(stdout);
    return 0;
}
