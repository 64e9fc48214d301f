/*
 * attacker: plays the hostile local user against a running ckrun, for the
 * security tests (tests/security.rs). It speaks ckrun's coordinator
 * protocol on the coordinator's abstract socket, whose name anyone can
 * read in /proc/net/unix.
 *
 *   attacker restore-hello NAME INDEX PID STOPFILE
 *       Until STOPFILE exists: connect, claim to be the restore process
 *       #INDEX with PID (RESTORE_HELLO), and wait for the fds a restart
 *       hands out. Writes "PWNED" through any fd it gets. Prints
 *       "attempts A connected C refused R stolen S" at the end.
 *   attacker forge NAME PID VICTIM
 *       Claims to be the agent of PID (HELLO), then sends a SUSPENDED
 *       report naming VICTIM as its snapshot (which ckrun kills when it is
 *       done with it), a checkpoint request and a FAILED report. Prints
 *       "closed" if ckrun hung up on it, "open" if it listened.
 *   attacker silent NAME N READYFILE
 *       Holds N connections that never say anything (re-opening each one
 *       ckrun closes), after creating READYFILE. Runs until its parent
 *       is gone (it is a process of the job's tree, and the tree is the
 *       job: ckrun stays while it runs).
 *
 * Message layout (proto/src/lib.rs, launcher/src/restore/transfer.rs):
 * a header { u32 kind; u32 count } and fixed-layout records.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int dial(const char *name)
{
    struct sockaddr_un a;
    memset(&a, 0, sizeof a);
    a.sun_family = AF_UNIX;
    size_t n = strlen(name);
    if (n + 1 > sizeof a.sun_path)
        return -1;
    memcpy(a.sun_path + 1, name, n);
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&a, (socklen_t)(sizeof(sa_family_t) + 1 + n)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void send_msg(int fd, uint32_t kind, const void *body, size_t len)
{
    char buf[512];
    uint32_t hdr[2] = {kind, 1};
    memcpy(buf, hdr, 8);
    memcpy(buf + 8, body, len);
    send(fd, buf, 8 + len, MSG_NOSIGNAL);
}

/* Whether the peer closed the connection within `ms` (a close with our
 * messages unread shows as a reset). */
static int closed_within(int fd, int ms)
{
    struct pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, ms) <= 0)
        return 0;
    char b[64];
    ssize_t n = recv(fd, b, sizeof b, MSG_DONTWAIT | MSG_PEEK);
    return n == 0 || (n < 0 && (errno == ECONNRESET || errno == EPIPE));
}

static int restore_hello(const char *name, uint32_t index, int32_t pid, const char *stop)
{
    long attempts = 0, connected = 0, refused = 0, stolen = 0;
    while (access(stop, F_OK) != 0) {
        attempts++;
        int fd = dial(name);
        if (fd < 0)
            continue;
        connected++;
        struct { uint32_t index; int32_t pid; } h = {index, pid};
        send_msg(fd, 200, &h, sizeof h);
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 2000) > 0) {
            char data[4096];
            char ctl[CMSG_SPACE(sizeof(int) * 64)];
            struct iovec iov = {data, sizeof data};
            struct msghdr mh = {0};
            mh.msg_iov = &iov;
            mh.msg_iovlen = 1;
            mh.msg_control = ctl;
            mh.msg_controllen = sizeof ctl;
            ssize_t n = recvmsg(fd, &mh, MSG_DONTWAIT);
            int got = 0;
            for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
                if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
                    int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
                    int *fds = (int *)CMSG_DATA(c);
                    for (int i = 0; i < k; i++) {
                        if (write(fds[i], "PWNED\n", 6) < 0) {
                        }
                        close(fds[i]);
                    }
                    got += k;
                }
            }
            if (got > 0)
                stolen += got;
            else if (n == 0 || (n < 0 && (errno == ECONNRESET || errno == EPIPE)))
                refused++;
        }
        close(fd);
    }
    printf("attempts %ld connected %ld refused %ld stolen %ld\n", attempts, connected, refused, stolen);
    return 0;
}

static int forge(const char *name, int32_t pid, int32_t victim)
{
    int fd = dial(name);
    if (fd < 0) {
        printf("cannot connect: %s\n", strerror(errno));
        return 1;
    }
    struct { uint32_t version; int32_t pid, agent_fd, trigger; } hello = {1, pid, 1000, 12};
    send_msg(fd, 1, &hello, sizeof hello);
    struct { uint64_t epoch; int32_t snapshot; uint32_t nthreads; uint64_t brk; uint32_t sb, dump; } s = {1, victim, 0, 0, 0, 1};
    send_msg(fd, 3, &s, sizeof s);
    send_msg(fd, 2, "", 0);
    struct { int32_t code; char text[8]; } failed = {0, "pwned"};
    send_msg(fd, 205, &failed, sizeof failed);
    printf("%s\n", closed_within(fd, 5000) ? "closed" : "open");
    return 0;
}

static _Noreturn void silent(const char *name, int n, const char *ready)
{
    int fds[256];
    if (n > 256)
        n = 256;
    for (int i = 0; i < n; i++)
        fds[i] = dial(name);
    int f = open(ready, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (f >= 0)
        close(f);
    pid_t parent = getppid();
    for (;;) {
        struct pollfd p[256];
        for (int i = 0; i < n; i++)
            p[i] = (struct pollfd){fds[i], POLLIN, 0};
        int r = poll(p, (nfds_t)n, 100);
        if (getppid() != parent)
            exit(0);
        if (r <= 0)
            continue;
        for (int i = 0; i < n; i++) {
            if (fds[i] < 0 || p[i].revents) {
                if (fds[i] >= 0)
                    close(fds[i]);
                fds[i] = dial(name);
            }
        }
    }
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 6 && !strcmp(argv[1], "restore-hello"))
        return restore_hello(argv[2], (uint32_t)atoi(argv[3]), atoi(argv[4]), argv[5]);
    if (argc == 5 && !strcmp(argv[1], "forge"))
        return forge(argv[2], atoi(argv[3]), atoi(argv[4]));
    if (argc == 5 && !strcmp(argv[1], "silent"))
        silent(argv[2], atoi(argv[3]), argv[4]);
    fprintf(stderr, "usage: see the comment at the top of attacker.c\n");
    return 2;
}
