/*
 * tcp_tree: TCP connections inside the job, for ckrun's end-to-end tests
 * (issue 11: in-tree TCP keeps its data).
 *
 * The parent listens on 127.0.0.1 (a port the kernel picks, no
 * SO_REUSEADDR: after a kill the port's old connections wait in
 * TIME_WAIT, and a restart must bind it again all the same) and forks:
 *
 *   - a "closer" child that connects, sends 200 bytes and exits at once
 *     (the parent reaps it): its connection's peer is gone, and the
 *     parent reads those bytes one per tick, then must see EOF;
 *   - a "worker" child that connects and stays. Each tick the parent
 *     sends a block (1500 bytes for ticks 1-100, 500 after) and the worker
 *     reads 1000 bytes (then sleeps 20 ms), so up to 50 KB wait in the
 *     worker's receive queue
 *     at a checkpoint; the worker answers 16 bytes (a hash of what it
 *     read) per tick and the parent reads 8 bytes per tick for ticks
 *     1-100, 24 after, so answers wait in the parent's queue too. At the
 *     end the parent shuts down writing; the worker must read EOF then.
 *
 * Every read is a full read of a fixed size, so the output depends only
 * on the tick, never on timing. A listener also accepts a connection from
 * the parent itself at every 50th tick (a new connection after a restart
 * must work: the listener is bound again).
 *
 * Output: "tick N hash" per tick (flushed), then "done hash". 20 ms
 * pacing, 200 ticks: about 4 s. Any failed check prints "FAIL ..." and
 * exits 1.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TICKS 200

static void fail(const char *what)
{
    printf("FAIL %s: %s\n", what, strerror(errno));
    fflush(stdout);
    fprintf(stderr, "tcp_tree: FAIL %s: %s\n", what, strerror(errno));
    exit(1);
}

static uint64_t fnv(uint64_t h, const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

static void read_full(int fd, void *buf, size_t n, const char *what)
{
    size_t have = 0;
    while (have < n) {
        ssize_t r = read(fd, (char *)buf + have, n - have);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            if (r == 0)
                errno = EPIPE;
            fail(what);
        }
        have += (size_t)r;
    }
}

static void write_full(int fd, const void *buf, size_t n, const char *what)
{
    size_t done = 0;
    while (done < n) {
        ssize_t r = write(fd, (const char *)buf + done, n - done);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            fail(what);
        done += (size_t)r;
    }
}

static int dial(struct sockaddr_in *at)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)at, sizeof *at) != 0)
        fail("connect");
    return fd;
}

static void block(unsigned char *buf, size_t n, int tick)
{
    for (size_t i = 0; i < n; i++)
        buf[i] = (unsigned char)(i * 31 + (size_t)tick * 7);
}

static void worker(int conn)
{
    unsigned char buf[1000];
    uint64_t h = 1469598103934665603ull;
    for (int t = 1; t <= TICKS; t++) {
        read_full(conn, buf, sizeof buf, "worker read");
        h = fnv(h, buf, sizeof buf);
        uint64_t answer[2] = {h, (uint64_t)t};
        write_full(conn, answer, sizeof answer, "worker answer");
        /* Slower than the parent sends: its bytes queue up here. */
        struct timespec ts = {0, 20000000L};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
            ;
    }
    char c;
    ssize_t r = read(conn, &c, 1);
    if (r != 0) {
        errno = EPROTO;
        fail("worker: no EOF after the parent shut down writing");
    }
    _exit(0);
}

int main(void)
{
    int lis = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in at = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof at;
    if (lis < 0 || bind(lis, (struct sockaddr *)&at, sizeof at) != 0 || listen(lis, 8) != 0 ||
        getsockname(lis, (struct sockaddr *)&at, &len) != 0)
        fail("listen");

    pid_t closer = fork();
    if (closer == 0) {
        int c = dial(&at);
        unsigned char msg[200];
        for (int i = 0; i < 200; i++)
            msg[i] = (unsigned char)('a' + i % 26);
        write_full(c, msg, sizeof msg, "closer write");
        _exit(0);
    }
    int from_closer = accept4(lis, NULL, NULL, SOCK_CLOEXEC);
    if (from_closer < 0)
        fail("accept closer");
    int st;
    if (waitpid(closer, &st, 0) != closer)
        fail("waitpid closer");

    pid_t w = fork();
    if (w == 0) {
        close(lis);
        close(from_closer);
        worker(dial(&at));
    }
    int conn = accept4(lis, NULL, NULL, SOCK_CLOEXEC);
    if (conn < 0)
        fail("accept worker");
    int one = 1;
    setsockopt(conn, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);

    uint64_t h = 1469598103934665603ull;
    unsigned char out[1500], in[24];
    for (int t = 1; t <= TICKS; t++) {
        size_t n = t <= 100 ? 1500 : 500;
        block(out, n, t);
        write_full(conn, out, n, "parent write");
        size_t m = t <= 100 ? 8 : 24;
        read_full(conn, in, m, "parent read");
        h = fnv(h, in, m);
        char c;
        read_full(from_closer, &c, 1, "read from the closer");
        h = fnv(h, (unsigned char *)&c, 1);
        if (t % 50 == 0) {
            /* The listener still listens: a fresh connection to it. */
            int me = dial(&at);
            int back = accept4(lis, NULL, NULL, SOCK_CLOEXEC);
            if (back < 0)
                fail("accept a fresh connection");
            write_full(me, "hi", 2, "fresh write");
            char got[2];
            read_full(back, got, 2, "fresh read");
            close(me);
            close(back);
        }
        printf("tick %d %016" PRIx64 "\n", t, h);
        fflush(stdout);
        struct timespec ts = {0, 20000000L};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
            ;
    }
    char c;
    if (read(from_closer, &c, 1) != 0) {
        errno = EPROTO;
        fail("no EOF from the closer's connection after its 200 bytes");
    }
    if (shutdown(conn, SHUT_WR) != 0)
        fail("shutdown");
    if (waitpid(w, &st, 0) != w || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        errno = EPROTO;
        fail("the worker's end");
    }
    printf("done %016" PRIx64 "\n", h);
    return 0;
}
