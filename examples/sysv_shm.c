/*
 * sysv_shm: SysV shared memory segments shared by two processes, for
 * ckrun's end-to-end tests (issue 11: SysV IPC comes back as SysV IPC).
 *
 * The parent makes three segments and forks a child:
 *  - A (IPC_PRIVATE, 3 pages + 100 bytes), attached by both; the parent
 *    makes its middle page read-only with mprotect (its attachment is
 *    then three mappings, and shm_nattch counts each);
 *  - B (a key of its own), written by the parent; the child detaches
 *    the copy it inherited and attaches B again read-only (SHM_RDONLY,
 *    checked each tick: mprotect cannot make it writable);
 *  - D (IPC_PRIVATE, a page), attached by both, then marked destroyed
 *    (IPC_RMID) while they use it.
 * Each tick (a byte each way on a pipe) the parent writes t*t into B's
 * table, the child folds B's entry and D's counter into a hash kept in
 * A and bumps D's counter; the parent prints the hash, the counter, each
 * segment's shm_nattch, A's size, B's mode, whether B's key still finds
 * B, and whether D is still marked destroyed. The state lives only in
 * the segments: a restart that gave them back as private copies, or as
 * the killed run left them, prints something else.
 *
 * Output: "tick N ..." per tick (flushed), then "done HASH". 20 ms
 * pacing, 200 ticks: about 4 s. Any failed check prints "FAIL ..." and
 * exits 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TICKS 200
#define PAGE 4096

static void fail(const char *what)
{
    printf("FAIL %s: %s\n", what, strerror(errno));
    fflush(stdout);
    fprintf(stderr, "sysv_shm: FAIL %s: %s\n", what, strerror(errno));
    exit(1);
}

static struct shmid_ds stat_of(int id)
{
    struct shmid_ds ds;
    if (shmctl(id, IPC_STAT, &ds) != 0)
        fail("IPC_STAT");
    return ds;
}

static void xread(int fd)
{
    char c;
    ssize_t n;
    while ((n = read(fd, &c, 1)) < 0 && errno == EINTR)
        ;
    if (n != 1)
        fail("read");
}

static void xwrite(int fd)
{
    while (write(fd, "x", 1) != 1)
        if (errno != EINTR)
            fail("write");
}

int main(void)
{
    key_t key = 0x5c000000 | (getpid() & 0xffffff);
    int a = shmget(IPC_PRIVATE, 3 * PAGE + 100, IPC_CREAT | 0600);
    int b = shmget(key, 2 * PAGE, IPC_CREAT | IPC_EXCL | 0640);
    int d = shmget(IPC_PRIVATE, PAGE, IPC_CREAT | 0600);
    if (a < 0 || b < 0 || d < 0)
        fail("shmget");
    uint64_t *pa = shmat(a, NULL, 0);
    uint64_t *pb = shmat(b, NULL, 0);
    uint64_t *pd = shmat(d, NULL, 0);
    if (pa == (void *)-1 || pb == (void *)-1 || pd == (void *)-1)
        fail("shmat");
    pa[0] = 1469598103934665603ull;
    int down[2], up[2];
    if (pipe(down) != 0 || pipe(up) != 0)
        fail("pipe");
    pid_t c = fork();
    if (c < 0)
        fail("fork");
    if (c == 0) {
        /* B again, read-only. */
        if (shmdt(pb) != 0)
            fail("shmdt");
        const uint64_t *table = shmat(b, NULL, SHM_RDONLY);
        if (table == (void *)-1)
            fail("shmat ro");
        for (int t = 1; t <= TICKS; t++) {
            xread(down[0]);
            /* SHM_RDONLY: it can never be made writable. */
            if (mprotect((void *)table, PAGE, PROT_READ | PROT_WRITE) == 0) {
                errno = EPROTO;
                fail("B is attached writable");
            }
            uint64_t h = pa[0];
            h = (h ^ table[t % 64]) * 1099511628211ull;
            h = (h ^ pd[0]) * 1099511628211ull;
            pa[0] = h;
            pa[3 * PAGE / 8] = h; /* the last page, past the read-only one */
            pd[0] += h & 0xff;
            xwrite(up[1]);
        }
        /* Attached until the parent has looked at the last tick's counts. */
        xread(down[0]);
        _exit(0);
    }
    if (mprotect((char *)pa + PAGE, PAGE, PROT_READ) != 0)
        fail("mprotect");
    if (shmctl(d, IPC_RMID, NULL) != 0)
        fail("IPC_RMID");
    for (int t = 1; t <= TICKS; t++) {
        pb[t % 64] = (uint64_t)t * t;
        xwrite(down[1]);
        xread(up[0]);
        struct shmid_ds sa = stat_of(a), sb = stat_of(b), sd = stat_of(d);
        if (pa[3 * PAGE / 8] != pa[0]) {
            errno = EPROTO;
            fail("A's pages differ");
        }
        printf("tick %d %llu %llu nattch %lu %lu %lu size %zu mode %o key %s destroyed %s\n", t,
               (unsigned long long)pa[0], (unsigned long long)pd[0], (unsigned long)sa.shm_nattch,
               (unsigned long)sb.shm_nattch, (unsigned long)sd.shm_nattch, (size_t)sa.shm_segsz,
               (unsigned)sb.shm_perm.mode & 0777, shmget(key, 0, 0) == b ? "ok" : "lost",
               (sd.shm_perm.mode & SHM_DEST) ? "yes" : "no");
        fflush(stdout);
        struct timespec ts = {0, 20000000L};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
            ;
    }
    xwrite(down[1]);
    int st;
    if (waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        errno = EPROTO;
        fail("the child's end");
    }
    printf("done %llu\n", (unsigned long long)pa[0]);
    shmctl(a, IPC_RMID, NULL);
    shmctl(b, IPC_RMID, NULL);
    return 0;
}
