/*
 * fd_events: an epoll loop over a timerfd, an eventfd, a pipe and a
 * signalfd, for ckrun's end-to-end tests (issue 4). What it prints depends
 * only on the tick number, never on timing, so a restored run must print
 * exactly what a bare run does.
 *
 *   - A timerfd (CLOCK_MONOTONIC, 20 ms interval) paces the ticks: each
 *     tick waits for it through an epoll instance of its own (a timer that
 *     was not re-armed turns into "FAIL ... timer did not fire" after 10 s)
 *     and checks timerfd_gettime(): same interval, still armed. How many
 *     expirations one read returns depends on timing, so it is not printed.
 *   - The main epoll instance watches all four; after each tick's reads and
 *     writes, epoll_wait(timeout 0) must report exactly the sources that
 *     hold something (the timerfd is ignored: timing), and the registered
 *     fds, event masks and 64-bit data words (/proc/self/fdinfo) must be
 *     the ones registered at the start.
 *   - eventfd: counter += t on ticks not divisible by 3, read only every 7
 *     ticks, so a value is usually pending at a checkpoint; the pending
 *     value is checked each tick in fdinfo ("eventfd-count") without
 *     reading it. A second eventfd, EFD_SEMAPHORE with initial value 1000,
 *     is read once per tick (always 1) and its count checked.
 *   - pipe: a block (size and content from the tick) written on ticks not
 *     divisible by 5, everything read back every 4 ticks: FIONREAD and
 *     content checked.
 *   - signalfd: SIGUSR1 is blocked and raised by the program itself every
 *     10 ticks, read through the signalfd 3 ticks later (SI_TKILL from its
 *     own pid), so it is pending across some checkpoints; the signalfd's
 *     mask (fdinfo "sigmask"), the blocked mask and sigpending() are
 *     checked each tick.
 *
 * Groups, selected by argv: timer (the timerfd and epoll alone), eventfd,
 * pipe, signalfd; default: all. Output: "tick N ..." per tick (flushed),
 * then "done ...". 200 ticks of 20 ms: about 4 s. Any failed check prints
 * "FAIL tick N: ..." and exits 1. Exit code 0.
 *
 * Usage: fd_events [timer] [eventfd] [pipe] [signalfd]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#define TICKS 200
#define INTERVAL_NS 20000000L /* 20 ms */

#define D_TIMER 0x7100000000000001ull
#define D_EVENT 0x7200000000000002ull
#define D_PIPE 0x7300000000000003ull
#define D_SIGNAL 0x7400000000000004ull

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
    fprintf(stderr, "fd_events: FAIL tick %d: %s\n", tick, msg);
    exit(1);
}

/* The text of /proc/self/fdinfo/<fd>. */
static void fdinfo(int fd, char *buf, size_t size)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
    FILE *f = fopen(path, "r");
    if (!f)
        fail("open %s: %s", path, strerror(errno));
    size_t n = fread(buf, 1, size - 1, f);
    buf[n] = 0;
    fclose(f);
}

/* The value after "key" on its line of fdinfo, parsed in `base`. */
static unsigned long long fdinfo_value(int fd, const char *key, int base)
{
    char buf[4096];
    fdinfo(fd, buf, sizeof buf);
    for (char *line = buf; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        if (strncmp(line, key, strlen(key)) == 0)
            return strtoull(line + strlen(key), NULL, base);
    }
    fail("fd %d: no \"%s\" in fdinfo:\n%s", fd, key, buf);
    return 0;
}

/* One registration of an epoll instance, as fdinfo shows it. */
struct reg {
    int tfd;
    unsigned events;
    unsigned long long data;
};

static int cmp_reg(const void *a, const void *b)
{
    const struct reg *x = a, *y = b;
    return x->tfd - y->tfd;
}

static int epoll_regs(int ep, struct reg *regs, int max)
{
    char buf[4096];
    fdinfo(ep, buf, sizeof buf);
    int n = 0;
    for (char *line = buf; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        struct reg r;
        if (sscanf(line, "tfd: %d events: %x data: %llx", &r.tfd, &r.events, &r.data) == 3 && n < max)
            regs[n++] = r;
    }
    qsort(regs, (size_t)n, sizeof regs[0], cmp_reg);
    return n;
}

static int do_event, do_pipe, do_signal;
static int tfd, ep, ep_timer, efd, efd_sem, p_r, p_w, sfd;
static int fl_at_start[4096];
static int cloexec_at_start[4096];
static struct reg regs_at_start[8];
static int nregs_at_start;

static void remember(int fd)
{
    fl_at_start[fd] = fcntl(fd, F_GETFL);
    cloexec_at_start[fd] = fcntl(fd, F_GETFD);
    if (fl_at_start[fd] < 0 || cloexec_at_start[fd] < 0)
        fail("fcntl fd %d: %s", fd, strerror(errno));
}

static void check_flags(int fd, const char *what)
{
    int fl = fcntl(fd, F_GETFL), fdfl = fcntl(fd, F_GETFD);
    if (fl != fl_at_start[fd] || fdfl != cloexec_at_start[fd])
        fail("%s (fd %d): F_GETFL %#o F_GETFD %d, expected %#o and %d", what, fd, fl, fdfl, fl_at_start[fd],
             cloexec_at_start[fd]);
}

static void add(int epfd, int fd, unsigned events, unsigned long long data)
{
    struct epoll_event ev = {.events = events, .data.u64 = data};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) != 0)
        fail("epoll_ctl ADD %d: %s", fd, strerror(errno));
}

static unsigned char pat(unsigned t, size_t i)
{
    return (unsigned char)((t * 29 + i * 11 + 5) & 0xff);
}

static size_t block_len(unsigned t)
{
    return 50 + t % 100;
}

static void setup(void)
{
    tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (tfd < 0)
        fail("timerfd_create: %s", strerror(errno));
    struct itimerspec its = {{0, INTERVAL_NS}, {0, INTERVAL_NS}};
    if (timerfd_settime(tfd, 0, &its, NULL) != 0)
        fail("timerfd_settime: %s", strerror(errno));
    ep = epoll_create1(EPOLL_CLOEXEC);
    ep_timer = epoll_create1(0);
    if (ep < 0 || ep_timer < 0)
        fail("epoll_create1: %s", strerror(errno));
    add(ep_timer, tfd, EPOLLIN, 1);
    add(ep, tfd, EPOLLIN, D_TIMER);
    remember(tfd);
    remember(ep);
    remember(ep_timer);
    if (do_event) {
        efd = eventfd(0, EFD_NONBLOCK);
        efd_sem = eventfd(1000, EFD_NONBLOCK | EFD_SEMAPHORE | EFD_CLOEXEC);
        if (efd < 0 || efd_sem < 0)
            fail("eventfd: %s", strerror(errno));
        add(ep, efd, EPOLLIN, D_EVENT);
        remember(efd);
        remember(efd_sem);
    }
    if (do_pipe) {
        int p[2];
        if (pipe(p) != 0)
            fail("pipe: %s", strerror(errno));
        p_r = p[0];
        p_w = p[1];
        if (fcntl(p_r, F_SETFL, O_NONBLOCK) != 0)
            fail("F_SETFL: %s", strerror(errno));
        add(ep, p_r, EPOLLIN | EPOLLRDHUP, D_PIPE);
        remember(p_r);
        remember(p_w);
    }
    if (do_signal) {
        sigset_t m;
        sigemptyset(&m);
        sigaddset(&m, SIGUSR1);
        if (sigprocmask(SIG_BLOCK, &m, NULL) != 0)
            fail("sigprocmask: %s", strerror(errno));
        sfd = signalfd(-1, &m, SFD_NONBLOCK);
        if (sfd < 0)
            fail("signalfd: %s", strerror(errno));
        add(ep, sfd, EPOLLIN, D_SIGNAL);
        remember(sfd);
    }
    nregs_at_start = epoll_regs(ep, regs_at_start, 8);
}

/* Waits for the timerfd through its own epoll instance. */
static void wait_timer(void)
{
    for (;;) {
        struct epoll_event ev;
        int n = epoll_wait(ep_timer, &ev, 1, 10000);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            fail("epoll_wait (timer): %s", strerror(errno));
        if (n == 0)
            fail("the timer did not fire within 10 s");
        if (ev.data.u64 != 1 || ev.events != EPOLLIN)
            fail("timer epoll: event %#x data %llx", ev.events, (unsigned long long)ev.data.u64);
        uint64_t expirations;
        ssize_t r = read(tfd, &expirations, sizeof expirations);
        if (r == sizeof expirations && expirations > 0)
            return;
        if (r < 0 && errno != EAGAIN && errno != EINTR)
            fail("read timerfd: %s", strerror(errno));
    }
}

static void check_timer(void)
{
    struct itimerspec its;
    if (timerfd_gettime(tfd, &its) != 0)
        fail("timerfd_gettime: %s", strerror(errno));
    if (its.it_interval.tv_sec != 0 || its.it_interval.tv_nsec != INTERVAL_NS)
        fail("timerfd interval %lld.%09ld s, expected 0.020000000", (long long)its.it_interval.tv_sec,
             its.it_interval.tv_nsec);
    if (its.it_value.tv_sec != 0 || its.it_value.tv_nsec <= 0 || its.it_value.tv_nsec > INTERVAL_NS)
        fail("timerfd not armed as expected: next expiry in %lld.%09ld s", (long long)its.it_value.tv_sec,
             its.it_value.tv_nsec);
    if (fdinfo_value(tfd, "clockid:", 10) != CLOCK_MONOTONIC)
        fail("timerfd clock is not CLOCK_MONOTONIC");
    check_flags(tfd, "timerfd");
    check_flags(ep, "epoll");
    check_flags(ep_timer, "timer epoll");
}

int main(int argc, char **argv)
{
    do_event = do_pipe = do_signal = argc <= 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "timer") == 0)
            ;
        else if (strcmp(argv[i], "eventfd") == 0)
            do_event = 1;
        else if (strcmp(argv[i], "pipe") == 0)
            do_pipe = 1;
        else if (strcmp(argv[i], "signalfd") == 0)
            do_signal = 1;
        else {
            fprintf(stderr, "usage: fd_events [timer] [eventfd] [pipe] [signalfd]\n");
            return 2;
        }
    }
    setup();

    uint64_t pending = 0;          /* eventfd counter */
    uint64_t sem_left = 1000;      /* semaphore eventfd counter */
    int in_flight_from = 0;        /* first tick whose block is in the pipe */
    int in_flight_bytes = 0;
    int sig_pending = 0, sig_count = 0;
    uint64_t sum = 0;
    for (tick = 1; tick <= TICKS; tick++) {
        char line[256];
        int len = snprintf(line, sizeof line, "tick %d", tick);
        wait_timer();
        check_timer();

        /* Reads. */
        if (do_event) {
            if (tick % 7 == 0) {
                uint64_t v = 0;
                ssize_t r = read(efd, &v, sizeof v);
                if (pending == 0 ? !(r < 0 && errno == EAGAIN) : (r != sizeof v || v != pending))
                    fail("read eventfd: %zd value %llu, expected %llu", r, (unsigned long long)v,
                         (unsigned long long)pending);
                len += snprintf(line + len, sizeof line - len, " ev %" PRIu64, pending);
                sum = sum * 31 + pending;
                pending = 0;
            } else {
                len += snprintf(line + len, sizeof line - len, " ev -");
            }
            uint64_t one = 0;
            if (read(efd_sem, &one, sizeof one) != sizeof one || one != 1)
                fail("read semaphore eventfd: %llu (%s)", (unsigned long long)one, strerror(errno));
            sem_left--;
            len += snprintf(line + len, sizeof line - len, " sem %" PRIu64, sem_left);
        }
        if (do_pipe) {
            int got_bytes = 0;
            if (tick % 4 == 0) {
                unsigned char buf[4096];
                for (int k = in_flight_from; k > 0 && k < tick; k++) {
                    if (k % 5 == 0)
                        continue;
                    size_t bl = block_len((unsigned)k);
                    ssize_t r = read(p_r, buf, bl);
                    if (r != (ssize_t)bl)
                        fail("read pipe: block of tick %d: %zd of %zu (%s)", k, r, bl,
                             r < 0 ? strerror(errno) : "short");
                    for (size_t i = 0; i < bl; i++)
                        if (buf[i] != pat((unsigned)k, i))
                            fail("pipe: block of tick %d differs at byte %zu", k, i);
                    got_bytes += (int)r;
                }
                if (read(p_r, buf, 1) != -1 || errno != EAGAIN)
                    fail("pipe: more bytes than were written");
                if (got_bytes != in_flight_bytes)
                    fail("pipe: read %d bytes, expected %d", got_bytes, in_flight_bytes);
                in_flight_from = 0;
                in_flight_bytes = 0;
            }
            len += snprintf(line + len, sizeof line - len, " pipe %d", got_bytes);
            sum = sum * 31 + (uint64_t)got_bytes;
        }
        if (do_signal) {
            if (tick % 10 == 3 && tick > 10) {
                struct signalfd_siginfo si;
                ssize_t r = read(sfd, &si, sizeof si);
                if (r != sizeof si)
                    fail("read signalfd: %zd (%s)", r, r < 0 ? strerror(errno) : "short");
                if (si.ssi_signo != SIGUSR1 || si.ssi_code != SI_TKILL || si.ssi_pid != (uint32_t)getpid())
                    fail("signalfd: signal %u code %d pid %u, expected SIGUSR1 SI_TKILL from %d", si.ssi_signo,
                         si.ssi_code, si.ssi_pid, getpid());
                if (read(sfd, &si, sizeof si) != -1 || errno != EAGAIN)
                    fail("signalfd: a second signal");
                sig_pending = 0;
                sig_count++;
            }
            len += snprintf(line + len, sizeof line - len, " sig %d", sig_count);
        }

        /* Writes. */
        if (do_event && tick % 3 != 0) {
            uint64_t v = (uint64_t)tick;
            if (write(efd, &v, sizeof v) != sizeof v)
                fail("write eventfd: %s", strerror(errno));
            pending += v;
        }
        if (do_pipe && tick % 5 != 0) {
            unsigned char buf[256];
            size_t bl = block_len((unsigned)tick);
            for (size_t i = 0; i < bl; i++)
                buf[i] = pat((unsigned)tick, i);
            if (write(p_w, buf, bl) != (ssize_t)bl)
                fail("write pipe: %s", strerror(errno));
            if (in_flight_from == 0)
                in_flight_from = tick;
            in_flight_bytes += (int)bl;
        }
        if (do_signal && tick % 10 == 0) {
            if (raise(SIGUSR1) != 0)
                fail("raise: %s", strerror(errno));
            sig_pending = 1;
        }

        /* What the main epoll instance reports, and what it holds. */
        struct epoll_event evs[8];
        int n;
        do
            n = epoll_wait(ep, evs, 8, 0);
        while (n < 0 && errno == EINTR);
        if (n < 0)
            fail("epoll_wait: %s", strerror(errno));
        int ready_e = 0, ready_p = 0, ready_s = 0;
        for (int i = 0; i < n; i++) {
            unsigned long long d = evs[i].data.u64;
            if (d == D_TIMER)
                continue;
            if (evs[i].events != EPOLLIN)
                fail("epoll: events %#x for data %llx, expected EPOLLIN", evs[i].events, d);
            if (d == D_EVENT)
                ready_e++;
            else if (d == D_PIPE)
                ready_p++;
            else if (d == D_SIGNAL)
                ready_s++;
            else
                fail("epoll: unknown data %llx", d);
        }
        if (ready_e != (pending != 0) || ready_p != (in_flight_bytes != 0) || ready_s != sig_pending)
            fail("epoll ready: eventfd %d pipe %d signalfd %d, expected %d %d %d", ready_e, ready_p, ready_s,
                 pending != 0, in_flight_bytes != 0, sig_pending);
        struct reg regs[8];
        int nregs = epoll_regs(ep, regs, 8);
        if (nregs != nregs_at_start)
            fail("epoll: %d registrations, expected %d", nregs, nregs_at_start);
        for (int i = 0; i < nregs; i++)
            if (regs[i].tfd != regs_at_start[i].tfd || regs[i].events != regs_at_start[i].events ||
                regs[i].data != regs_at_start[i].data)
                fail("epoll: registration fd %d events %#x data %llx, expected fd %d events %#x data %llx",
                     regs[i].tfd, regs[i].events, regs[i].data, regs_at_start[i].tfd, regs_at_start[i].events,
                     regs_at_start[i].data);
        struct reg tregs[2];
        if (epoll_regs(ep_timer, tregs, 2) != 1 || tregs[0].tfd != tfd || tregs[0].data != 1)
            fail("timer epoll: registrations changed");

        if (do_event) {
            if (fdinfo_value(efd, "eventfd-count:", 16) != pending)
                fail("eventfd counter %llx, expected %llx", fdinfo_value(efd, "eventfd-count:", 16),
                     (unsigned long long)pending);
            if (fdinfo_value(efd_sem, "eventfd-count:", 16) != sem_left)
                fail("semaphore eventfd counter %llu, expected %llu", fdinfo_value(efd_sem, "eventfd-count:", 16),
                     (unsigned long long)sem_left);
            if (fdinfo_value(efd, "eventfd-semaphore:", 10) != 0 || fdinfo_value(efd_sem, "eventfd-semaphore:", 10) != 1)
                fail("eventfd semaphore mode changed");
            check_flags(efd, "eventfd");
            check_flags(efd_sem, "semaphore eventfd");
        }
        if (do_pipe) {
            int avail;
            if (ioctl(p_r, FIONREAD, &avail) != 0 || avail != in_flight_bytes)
                fail("pipe: %d bytes in flight, expected %d", avail, in_flight_bytes);
            check_flags(p_r, "pipe read end");
            check_flags(p_w, "pipe write end");
        }
        if (do_signal) {
            if (fdinfo_value(sfd, "sigmask:", 16) != 1ull << (SIGUSR1 - 1))
                fail("signalfd mask %llx, expected %llx", fdinfo_value(sfd, "sigmask:", 16), 1ull << (SIGUSR1 - 1));
            sigset_t cur, pend;
            if (sigprocmask(SIG_BLOCK, NULL, &cur) != 0 || sigpending(&pend) != 0)
                fail("sigprocmask/sigpending: %s", strerror(errno));
            if (!sigismember(&cur, SIGUSR1))
                fail("SIGUSR1 is not blocked any more");
            if (sigismember(&pend, SIGUSR1) != sig_pending)
                fail("SIGUSR1 pending %d, expected %d", sigismember(&pend, SIGUSR1), sig_pending);
            check_flags(sfd, "signalfd");
        }

        len += snprintf(line + len, sizeof line - len, " ready %c%c%c", ready_e ? 'e' : '-', ready_p ? 'p' : '-',
                        ready_s ? 's' : '-');
        sum = sum * 31 + (uint64_t)tick;
        printf("%s sum %016" PRIx64 "\n", line, sum);
        fflush(stdout);
    }
    tick = 0;
    printf("done sum %016" PRIx64 "\n", sum);
    fflush(stdout);
    return 0;
}
