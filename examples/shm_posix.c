/*
 * shm_posix: a POSIX shared memory object (shm_open, a file of /dev/shm)
 * shared by two processes, for ckrun's end-to-end tests (issue 11).
 *
 * The parent creates the object (its name made from the working
 * directory's inode, so that runs side by side do not meet), sizes it to
 * 64 KiB and maps it shared; it forks a child that opens the object by its
 * name and maps it too. Each tick the parent writes the tick into the
 * object and tells the child (a byte on a pipe); the child folds the
 * object's accumulator with the tick (acc = mix(acc + tick), in the shared
 * memory), stamps a slot, and answers. The parent checks the slot, opens
 * the object by its name again (it must be the same file: same content
 * through a fresh mapping) and prints the accumulator. So the output
 * depends on the object's content at every step: a restart that gave it
 * back with another content (the killed run's later one, say) prints
 * something else.
 *
 * Output: "tick N acc" per tick (flushed), then "done acc"; the object is
 * unlinked at the end. 20 ms pacing, 200 ticks: about 4 s. Any failed
 * check prints "FAIL ..." and exits 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TICKS 200
#define LEN (64 * 1024)
#define SLOTS 1000

struct shared {
    uint64_t acc;
    uint64_t tick;
    uint64_t slot[SLOTS];
};

static void fail(const char *what)
{
    printf("FAIL %s: %s\n", what, strerror(errno));
    fflush(stdout);
    fprintf(stderr, "shm_posix: FAIL %s: %s\n", what, strerror(errno));
    exit(1);
}

static uint64_t mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return x;
}

static struct shared *map_by_name(const char *name, int flags)
{
    int fd = shm_open(name, flags, 0600);
    if (fd < 0)
        fail("shm_open");
    if ((flags & O_CREAT) && ftruncate(fd, LEN) != 0)
        fail("ftruncate");
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size != LEN)
        fail("fstat of the object");
    void *p = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        fail("mmap");
    close(fd);
    return p;
}

static void full(int fd, void *buf, int n, int writing)
{
    ssize_t r = writing ? write(fd, buf, (size_t)n) : read(fd, buf, (size_t)n);
    if (r != n)
        fail(writing ? "pipe write" : "pipe read");
}

int main(void)
{
    struct stat cwd;
    if (stat(".", &cwd) != 0)
        fail("stat .");
    char name[64];
    snprintf(name, sizeof name, "/ckrun-shm-test-%llu", (unsigned long long)cwd.st_ino);
    shm_unlink(name);
    struct shared *s = map_by_name(name, O_RDWR | O_CREAT | O_EXCL);
    s->acc = 1;

    int down[2], up[2];
    if (pipe(down) != 0 || pipe(up) != 0)
        fail("pipe");
    pid_t child = fork();
    if (child < 0)
        fail("fork");
    if (child == 0) {
        struct shared *c = map_by_name(name, O_RDWR);
        close(down[1]);
        close(up[0]);
        for (;;) {
            char b;
            if (read(down[0], &b, 1) != 1)
                _exit(0);
            c->acc = mix(c->acc + c->tick);
            c->slot[c->tick % SLOTS] = c->acc ^ c->tick;
            full(up[1], &b, 1, 1);
        }
    }
    close(down[0]);
    close(up[1]);
    for (uint64_t t = 1; t <= TICKS; t++) {
        s->tick = t;
        char b = 'x';
        full(down[1], &b, 1, 1);
        full(up[0], &b, 1, 0);
        if (s->slot[t % SLOTS] != (s->acc ^ t)) {
            errno = EPROTO;
            fail("the child's stamp");
        }
        /* By its name again: the same object. */
        struct shared *again = map_by_name(name, O_RDWR);
        if (again->acc != s->acc || again->slot[t % SLOTS] != s->slot[t % SLOTS]) {
            errno = EPROTO;
            fail("the object by its name is another one");
        }
        munmap(again, LEN);
        printf("tick %" PRIu64 " %016" PRIx64 "\n", t, s->acc);
        fflush(stdout);
        struct timespec ts = {0, 20000000L};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
            ;
    }
    close(down[1]);
    int status;
    if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail("the child's end");
    if (shm_unlink(name) != 0)
        fail("shm_unlink");
    printf("done %016" PRIx64 "\n", s->acc);
    return 0;
}
