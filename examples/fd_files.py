"""fd_files.py: Python file objects across a checkpoint, for ckrun's
end-to-end tests (issue 4).

- log.txt, a text file opened "w" with a 64 KiB buffer: one line per tick,
  flushed only every 7 ticks, so unflushed lines sit in the interpreter's
  memory at most checkpoints; tell() must match the characters written.
- data.bin, written first, then read "rb" 16 bytes per tick: content and
  tell() checked.
- rw.bin, opened "r+b": each tick seeks to a slot, writes a record, seeks
  back and reads it again; offset checked.
- an os.dup() of rw.bin's fd must share its offset (os.lseek on both,
  which the buffered object moves on each seek, write and read).

Prints "tick N ..." per tick (flushed), then "done ...". 20 ms pacing, 200
ticks: about 4 s. A failed check prints "FAIL tick N: ..." and exits 1.
Exit code 0.
"""

import hashlib
import os
import sys
import time

TICKS = 200
PACE = 0.02
REC = 16

tick = 0


def fail(msg):
    print(f"FAIL tick {tick}: {msg}", flush=True)
    print(f"fd_files.py: FAIL tick {tick}: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def record(tag, t):
    return f"{tag}{t:05d}:{(t * 2654435761) % 2**32:08x}\n".encode()


def main():
    global tick
    with open("data.bin", "wb") as f:
        for t in range(1, TICKS + 1):
            f.write(record("D", t))
    data = open("data.bin", "rb")
    log = open("log.txt", "w", buffering=64 * 1024)
    rw = open("rw.bin", "w+b")
    rw.write(b"\0" * REC * 64)
    rw.flush()
    dup_fd = os.dup(rw.fileno())
    chars = 0
    digest = hashlib.sha256()

    for tick in range(1, TICKS + 1):
        line = f"line {tick} " + "x" * (tick % 37) + "\n"
        log.write(line)
        chars += len(line)
        if tick % 7 == 0:
            log.flush()
        # tell() of a text file flushes it first: call it only when flushed.
        if tick % 7 == 0 and log.tell() != chars:
            fail(f"log.txt: tell {log.tell()}, expected {chars}")

        got = data.read(REC)
        if got != record("D", tick):
            fail(f"data.bin: read {got!r}, expected {record('D', tick)!r}")
        if data.tell() != tick * REC:
            fail(f"data.bin: tell {data.tell()}, expected {tick * REC}")
        digest.update(got)

        slot = (tick * 7) % 64
        rw.seek(slot * REC)
        rw.write(record("W", tick))
        rw.flush()
        rw.seek(slot * REC)
        back = rw.read(REC)
        if back != record("W", tick):
            fail(f"rw.bin: read back {back!r}")
        if rw.tell() != (slot + 1) * REC:
            fail(f"rw.bin: tell {rw.tell()}, expected {(slot + 1) * REC}")
        # The dup shares the open file description, hence the raw offset
        # (wherever the buffered object's read-ahead left it).
        raw, dup = os.lseek(rw.fileno(), 0, os.SEEK_CUR), os.lseek(dup_fd, 0, os.SEEK_CUR)
        if raw != dup:
            fail(f"rw.bin: offset {raw}, the dup's {dup}: not one open file description")
        digest.update(back)

        print(f"tick {tick} chars {chars} sum {digest.hexdigest()[:16]}", flush=True)
        time.sleep(PACE)

    tick = 0
    log.close()
    with open("log.txt") as f:
        if len(f.read()) != chars:
            fail("log.txt: wrong length at the end")
    os.close(dup_fd)
    rw.close()
    data.close()
    print(f"done chars {chars} sum {digest.hexdigest()[:16]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
