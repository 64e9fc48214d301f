"""tree_pool.py: a multiprocessing.Pool of 3 worker processes, for ckrun's
end-to-end tests (issue 5: process trees).

The pool is a process tree with everything ckrun has to bring back at once:
3 forked worker processes, pipes between them and the parent (tasks in,
results out, with bytes possibly in flight at a checkpoint), the
semaphores of multiprocessing's queues and locks (POSIX semaphores in
deleted /dev/shm files, mapped shared by every process), and the parent's
own helper threads (task handler, result handler, worker handler).

Every tick maps deterministic work over the pool (6 tasks, chunksize 1,
so that every worker takes part) and folds the results, in order, into a
running total; nothing printed depends on which worker did what, or on
pids, or on time. The "fork" start method is asked for explicitly: it is
the Linux default up to Python 3.13, and later ones default to
"forkserver", which would change the shape of the tree.

Prints "tick N <total>" after every tick (flushed) and "done <total> ..."
at the end, after closing and joining the pool; exits 0. ~20 ms pacing
over 120 ticks: about 3 s.

Usage: python3 tree_pool.py [TICKS]   (default 120)
"""

import multiprocessing
import sys
import time

MASK = (1 << 64) - 1
TASKS = 6


def work(args):
    """Deterministic work: a few thousand multiply-xor rounds."""
    tick, i = args
    z = (tick * 0x9E3779B97F4A7C15 + i * 0xBF58476D1CE4E5B9) & MASK
    for k in range(2000):
        z = ((z ^ (z >> 29)) * 0x94D049BB133111EB + k) & MASK
    return z


def main():
    ticks = int(sys.argv[1]) if len(sys.argv) > 1 else 120
    ctx = multiprocessing.get_context("fork")
    total = 0
    results_seen = 0
    with ctx.Pool(3) as pool:
        for t in range(1, ticks + 1):
            results = pool.map(work, [(t, i) for i in range(TASKS)], chunksize=1)
            # An async call too: its result travels through the same pipes
            # while the parent waits on a condition variable.
            extra = pool.apply_async(work, ((t, 100),)).get(timeout=60)
            for r in results + [extra]:
                total = (total * 1099511628211 ^ r) & MASK
            results_seen += len(results) + 1
            print("tick %d %016x" % (t, total), flush=True)
            time.sleep(0.02)
        pool.close()
        pool.join()
    print("done %016x results %d" % (total, results_seen), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
