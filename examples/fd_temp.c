/*
 * fd_temp: temporary files the job writes, reads back and deletes, for
 * ckrun's end-to-end tests (issue 11: a file the job had open at the
 * checkpoint and deleted afterwards comes back from the image).
 *
 * In phases of 8 ticks, the program creates phase-N.tmp, writes one
 * record per tick into it, and at the phase's end reads it back whole
 * (every record must be there), closes and deletes it: a compiler's
 * temporary file. A checkpoint lands in a phase, and the kill after it in
 * the next one: the restart finds the file gone and must make it again
 * with what it held at the checkpoint. The next phase's file, which the
 * killed run created after the checkpoint, is still there at the restart:
 * the program creates each phase's file exclusively (O_EXCL), so the
 * restart must have set that one aside. Nothing may be left in the
 * directory but what a bare run leaves (out.txt) and the files set aside:
 * no phase file, no temporary name of ckrun's.
 *
 * Output: "tick N hash" per tick (flushed), then "done hash". 20 ms
 * pacing, 200 ticks: about 4 s. Any failed check prints "FAIL ..." and
 * exits 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define TICKS 200
#define PHASE 8
#define REC 64

static void fail(const char *what, int tick)
{
    printf("FAIL tick %d: %s: %s\n", tick, what, strerror(errno));
    fflush(stdout);
    fprintf(stderr, "fd_temp: FAIL tick %d: %s: %s\n", tick, what, strerror(errno));
    exit(1);
}

static void record(char *buf, int tick)
{
    memset(buf, 'a' + tick % 26, REC);
    snprintf(buf, REC, "record of tick %d:", tick);
    buf[REC - 1] = '\n';
}

int main(void)
{
    uint64_t h = 1469598103934665603ull;
    int fd = -1;
    char name[64];
    for (int t = 1; t <= TICKS; t++) {
        int phase = (t - 1) / PHASE, first = phase * PHASE + 1;
        if (t == first) {
            snprintf(name, sizeof name, "phase-%d.tmp", phase);
            fd = open(name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
            if (fd < 0)
                fail("create", t);
        }
        char rec[REC];
        record(rec, t);
        if (write(fd, rec, REC) != REC)
            fail("write", t);
        if (t == first + PHASE - 1 || t == TICKS) {
            char got[REC * PHASE], want[REC];
            int n = t - first + 1;
            ssize_t r = pread(fd, got, sizeof got, 0);
            if (r != (ssize_t)(n * REC)) {
                errno = EPROTO;
                fail("reading the phase back: wrong size", t);
            }
            for (int i = 0; i < n; i++) {
                record(want, first + i);
                if (memcmp(got + i * REC, want, REC) != 0) {
                    errno = EPROTO;
                    fail("reading the phase back: a record differs", t);
                }
                for (int j = 0; j < REC; j++)
                    h = (h ^ (unsigned char)got[i * REC + j]) * 1099511628211ull;
            }
            close(fd);
            if (unlink(name) != 0)
                fail("unlink", t);
        }
        printf("tick %d %016" PRIx64 "\n", t, h);
        fflush(stdout);
        struct timespec ts = {0, 20000000L};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
            ;
    }
    printf("done %016" PRIx64 "\n", h);
    return 0;
}
