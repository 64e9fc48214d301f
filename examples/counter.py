"""counter.py: a deterministic CPython program for ckrun's end-to-end tests.

Its state lives in the interpreter's heap as dicts, lists, a set and a
suspended generator, so a restored run only prints the same lines as a bare
run if the whole interpreter came back intact.

Prints "tick N <checksum>" after every tick (flushed) and a final
"done <checksum> ...", then exits 0. ~20 ms pacing over 200 ticks: about
4 s. time.sleep retries after a signal on its own (PEP 475), and nothing
printed depends on time, so the pacing never changes the output. No use of
hash() on strings: it is randomised per process (PYTHONHASHSEED).

Usage: python3 counter.py [TICKS]   (default 200)
"""

import sys
import time

MASK = (1 << 64) - 1


def splitmix64(seed):
    """An endless deterministic stream; its position is generator state."""
    state = seed
    while True:
        state = (state + 0x9E3779B97F4A7C15) & MASK
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        yield z ^ (z >> 31)


def main():
    ticks = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    rand = splitmix64(42)
    table = {}  # key -> list of values
    history = []  # one entry per tick
    seen = set()
    checksum = 0

    for t in range(1, ticks + 1):
        r = next(rand)
        key = "k%d" % (r % 37)
        table.setdefault(key, []).append(r & 0xFFFF)
        history.append((t, key, r >> 48))
        seen.add(r % 1009)
        checksum = (checksum * 1099511628211 ^ r ^ sum(table[key])) & MASK
        checksum = (checksum + len(seen) + len(table)) & MASK
        print("tick %d %016x" % (t, checksum), flush=True)
        time.sleep(0.02)

    digest = 0
    for t, key, top in history:
        digest = (digest * 31 + t + top + len(table[key])) & MASK
    print(
        "done %016x history %016x keys %d seen %d" % (checksum, digest, len(table), len(seen)),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
