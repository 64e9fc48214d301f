/*
 * sysv_undo: processes that hold SysV semaphore undo adjustments
 * (SEM_UNDO), for ckrun's end-to-end tests (issue 11: the adjustments of
 * each process come back).
 *
 * The parent makes a set of 4 semaphores (IPC_PRIVATE), all 20, and forks
 * three workers; each tick it may tell a worker (through a pipe of its
 * own, the worker answering on a shared pipe) to do something, then prints
 * the four values (GETVAL). What the workers do:
 *
 *   tick 5   W1: -3 on #0, +2 on #1, with SEM_UNDO   (W1: #0 +3, #1 -2)
 *   tick 6   W2: -1 on #0, -4 on #2, with SEM_UNDO   (W2: #0 +1, #2 +4)
 *   tick 7   W3: a thread -5 on #3, the main thread +1 on #3 (W3: #3 +4:
 *            threads share one undo list)
 *   tick 8   the parent: SETVAL #2 = 30, which zeroes W2's #2
 *   tick 9   W2: -2 on #2 with SEM_UNDO               (W2: #2 +2)
 *   tick 10  W1 forks W1c, which starts with none: -1 on #1 (W1c: #1 +1)
 *   tick 200 W1c exits (W1 reaps it): #1 +1
 *   tick 210 W1 exits: #0 +3, #1 -2
 *   tick 220 W2 exits: #0 +1, #2 +2
 *   tick 230 W3 exits: #3 +4
 *
 * So the values after each exit depend on every process's adjustments
 * being what the kernel would have: a restart that lost them leaves the
 * values where they were before the exits. Output: "tick N a b c d" per
 * tick (flushed), then "done a b c d". 20 ms pacing, 240 ticks: about 5 s.
 * Any failed check prints "FAIL ..." and exits 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/sem.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TICKS 240
#define NSEMS 4

static int sem;
static int acks[2];

static void fail(const char *what)
{
    printf("FAIL %s: %s\n", what, strerror(errno));
    fflush(stdout);
    fprintf(stderr, "sysv_undo: FAIL %s: %s\n", what, strerror(errno));
    exit(1);
}

static void op(int num, int delta, int flags)
{
    struct sembuf b = {(unsigned short)num, (short)delta, (short)flags};
    while (semop(sem, &b, 1) != 0) {
        if (errno != EINTR)
            fail("semop");
    }
}

static char get(int fd)
{
    char c;
    ssize_t n;
    while ((n = read(fd, &c, 1)) < 0 && errno == EINTR)
        ;
    if (n != 1)
        fail("read command");
    return c;
}

static void put(int fd, char c)
{
    while (write(fd, &c, 1) != 1) {
        if (errno != EINTR)
            fail("write");
    }
}

static void *w3_thread(void *arg)
{
    (void)arg;
    op(3, -5, SEM_UNDO);
    return NULL;
}

/* W1's child: waits for its end. */
static void w1c(int cmd)
{
    if (get(cmd) != 'x') {
        errno = EINVAL;
        fail("unknown command");
    }
    _exit(0);
}

/* Worker `w` (1-3), commands on `cmd`, answers on acks. */
static void worker(int w, int cmd, int child_cmd)
{
    pid_t child = -1;
    for (;;) {
        char c = get(cmd);
        if (c == 'x')
            _exit(0);
        if (w == 1 && c == '1') {
            op(0, -3, SEM_UNDO);
            op(1, 2, SEM_UNDO);
        } else if (w == 1 && c == 'f') {
            child = fork();
            if (child < 0)
                fail("fork");
            if (child == 0) {
                op(1, -1, SEM_UNDO);
                put(acks[1], 'k');
                w1c(child_cmd);
            }
            continue; /* the child answers */
        } else if (w == 1 && c == 'r') {
            int st;
            pid_t r;
            while ((r = waitpid(child, &st, 0)) < 0 && errno == EINTR)
                ;
            if (r != child)
                fail("waitpid W1c");
        } else if (w == 2 && c == '1') {
            op(0, -1, SEM_UNDO);
            op(2, -4, SEM_UNDO);
        } else if (w == 2 && c == '2') {
            op(2, -2, SEM_UNDO);
        } else if (w == 3 && c == '1') {
            pthread_t t;
            if (pthread_create(&t, NULL, w3_thread, NULL) != 0 || pthread_join(t, NULL) != 0)
                fail("thread");
            op(3, 1, SEM_UNDO);
        } else {
            errno = EINVAL;
            fail("unknown command");
        }
        put(acks[1], 'k');
    }
}

int main(void)
{
    int cmds[5][2];
    pid_t pids[4] = {0};
    sem = semget(IPC_PRIVATE, NSEMS, IPC_CREAT | 0600);
    if (sem < 0)
        fail("semget");
    unsigned short init[NSEMS] = {20, 20, 20, 20};
    if (semctl(sem, 0, SETALL, init) != 0)
        fail("SETALL");
    if (pipe(acks) != 0)
        fail("pipe");
    for (int w = 1; w <= 4; w++) {
        if (pipe(cmds[w]) != 0)
            fail("pipe");
    }
    for (int w = 1; w <= 3; w++) {
        pids[w] = fork();
        if (pids[w] < 0)
            fail("fork");
        if (pids[w] == 0)
            worker(w, cmds[w][0], cmds[4][0]);
    }
    for (int t = 1; t <= TICKS; t++) {
        int to = 0, waits = 0;
        char what = 0;
        switch (t) {
        case 5: to = 1, what = '1'; break;
        case 6: to = 2, what = '1'; break;
        case 7: to = 3, what = '1'; break;
        case 8:
            if (semctl(sem, 2, SETVAL, 30) != 0)
                fail("SETVAL");
            break;
        case 9: to = 2, what = '2'; break;
        case 10: to = 1, what = 'f'; break;
        case 200:
            put(cmds[4][1], 'x');
            to = 1, what = 'r';
            break;
        case 210: waits = 1; break;
        case 220: waits = 2; break;
        case 230: waits = 3; break;
        }
        if (to) {
            put(cmds[to][1], what);
            if (get(acks[0]) != 'k')
                fail("ack");
        }
        if (waits) {
            put(cmds[waits][1], 'x');
            int st;
            pid_t r;
            while ((r = waitpid(pids[waits], &st, 0)) < 0 && errno == EINTR)
                ;
            if (r != pids[waits] || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
                errno = EPROTO;
                fail("a worker's end");
            }
        }
        printf("tick %d", t);
        for (int i = 0; i < NSEMS; i++)
            printf(" %d", semctl(sem, i, GETVAL));
        printf("\n");
        fflush(stdout);
        struct timespec ts = {0, 20000000L};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
            ;
    }
    printf("done");
    for (int i = 0; i < NSEMS; i++)
        printf(" %d", semctl(sem, i, GETVAL));
    printf("\n");
    semctl(sem, 0, IPC_RMID);
    return 0;
}
