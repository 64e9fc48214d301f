/*
 * sysv_ipc: a SysV semaphore set and a SysV message queue shared by two
 * processes, for ckrun's end-to-end tests (issue 11: SysV IPC comes back
 * as SysV IPC).
 *
 * The parent makes both (IPC_PRIVATE: the processes know them by their
 * IDs only) and forks a child. Each tick the parent queues messages (types
 * 1-3, 1.5 a tick for ticks 1-100, 0.5 a tick after), the child takes one
 * message a tick in order, folds it into a hash, puts the hash's low bits
 * in semaphore 1 (SETVAL), raises semaphore 0 and waits on semaphore 2;
 * the parent waits on semaphore 0, reads semaphore 1, raises semaphore 2
 * and prints what it read. Up to 50 messages wait in the queue
 * at a checkpoint, and the output depends on every message and on the
 * semaphores' values: a restart that found them as the killed run left
 * them (later messages taken, others queued, other values) prints
 * something else. Both are removed at the end.
 *
 * Output: "tick N value" per tick (flushed), then "done value". 20 ms
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
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TICKS 200

struct msg {
    long mtype;
    char text[64];
};

static void fail(const char *what)
{
    printf("FAIL %s: %s\n", what, strerror(errno));
    fflush(stdout);
    fprintf(stderr, "sysv_ipc: FAIL %s: %s\n", what, strerror(errno));
    exit(1);
}

static int sends_at(int t)
{
    return t <= 100 ? 1 + (t % 2) : t % 2;
}

static void child(int sem, int q)
{
    uint64_t h = 1469598103934665603ull;
    for (int t = 1; t <= TICKS; t++) {
        struct msg m;
        ssize_t n;
        while ((n = msgrcv(q, &m, sizeof m.text, 0, 0)) < 0 && errno == EINTR)
            ;
        if (n < 0)
            fail("msgrcv");
        for (ssize_t i = 0; i < n; i++)
            h = (h ^ (unsigned char)m.text[i]) * 1099511628211ull;
        h = (h ^ (uint64_t)m.mtype) * 1099511628211ull;
        if (semctl(sem, 1, SETVAL, (int)(h & 0x7fff)) != 0)
            fail("SETVAL");
        struct sembuf up = {0, 1, 0};
        if (semop(sem, &up, 1) != 0)
            fail("semop up");
        /* Until the parent has read semaphore 1. */
        struct sembuf wait_read = {2, -1, 0};
        while (semop(sem, &wait_read, 1) != 0) {
            if (errno != EINTR)
                fail("semop wait");
        }
    }
    _exit(0);
}

int main(void)
{
    int sem = semget(IPC_PRIVATE, 3, IPC_CREAT | 0600);
    int q = msgget(IPC_PRIVATE, IPC_CREAT | 0600);
    if (sem < 0 || q < 0)
        fail("semget/msgget");
    pid_t c = fork();
    if (c < 0)
        fail("fork");
    if (c == 0)
        child(sem, q);
    int sent = 0;
    for (int t = 1; t <= TICKS; t++) {
        for (int k = 0; k < sends_at(t); k++) {
            struct msg m = {.mtype = 1 + sent % 3};
            int len = snprintf(m.text, sizeof m.text, "message %d of tick %d", sent, t);
            if (msgsnd(q, &m, (size_t)len, 0) != 0)
                fail("msgsnd");
            sent++;
        }
        struct sembuf down = {0, -1, 0};
        while (semop(sem, &down, 1) != 0) {
            if (errno != EINTR)
                fail("semop down");
        }
        int v = semctl(sem, 1, GETVAL);
        if (v < 0)
            fail("GETVAL");
        struct sembuf read_done = {2, 1, 0};
        if (semop(sem, &read_done, 1) != 0)
            fail("semop read");
        printf("tick %d %d\n", t, v);
        fflush(stdout);
        struct timespec ts = {0, 20000000L};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
            ;
    }
    int st;
    if (waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        errno = EPROTO;
        fail("the child's end");
    }
    struct msqid_ds ds;
    if (msgctl(q, IPC_STAT, &ds) != 0 || ds.msg_qnum != 0) {
        errno = EPROTO;
        fail("messages left in the queue");
    }
    semctl(sem, 0, IPC_RMID);
    msgctl(q, IPC_RMID, NULL);
    printf("done %d\n", sent);
    return 0;
}
