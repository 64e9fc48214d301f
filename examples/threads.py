"""threads.py: a deterministic multi-threaded CPython program for ckrun's
end-to-end tests. Python threads are real OS threads that take turns on the
GIL; waits on a Lock, Condition, Queue or Event block in futexes (sem_wait /
pthread condition variables) with the GIL released, so a checkpoint finds
them parked in the kernel or waiting for the GIL.

Threads:
  - 4 workers take turns through one Condition: each tick, worker 0, 1, 2, 3
    in this order folds its id and the tick into a shared hash. Each keeps
    its own count in a threading.local() and checks it against a shared
    copy, and checks threading.get_native_id() (the TID) against the one it
    recorded at start: a restart must bring each thread back with its TID.
  - a Queue pipeline: main puts a job each tick; the "squarer" thread takes
    it, computes, and puts the result on a second Queue; main waits for it.
  - "waiter" blocks on an Event for most of the run (set at tick 150) and
    then hands its result back through the result Queue.
  - "locker" takes a Lock main holds during ticks 60-119 (so it blocks on
    the lock for 60 ticks) and records the tick it got it.

Every printed value depends only on the tick number, so a restored run
prints exactly what a bare run does. A failed check, or an exception in any
thread, prints "threads.py: FAIL ..." on stderr and exits 1 at once.
time.sleep and the blocking waits resume after a signal on their own
(PEP 475). ~20 ms pacing over 200 ticks: about 4 s.

Usage: python3 threads.py [TICKS]   (default 200). Exit code 0.
"""

import os
import queue
import sys
import threading
import time

MASK = (1 << 64) - 1
NWORKERS = 4
WAIT = 15.0  # seconds any wait may take before the program gives up



def fail(msg):
    """Ends the whole program at once, from any thread."""
    print("threads.py: FAIL: %s" % msg, file=sys.stderr, flush=True)
    os._exit(1)


def mix(z):
    z = (z + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


class Game:
    """Turn-taking state, guarded by `cond`."""

    def __init__(self):
        self.cond = threading.Condition()
        self.round = 0
        self.turn = 0
        self.stopping = False
        self.hash = 0xCBF29CE484222325
        self.turns = [0] * NWORKERS
        self.results = [None] * NWORKERS
        self.tids = {}


game = Game()
local = threading.local()


def worker(i):
    local.id = i
    local.turns = 0
    local.mix = mix(i)
    tid = threading.get_native_id()
    last = 0
    with game.cond:
        game.tids[i] = tid
        game.cond.notify_all()
        while True:
            while not game.stopping and not (game.round > last and game.turn == i):
                game.cond.wait()
            if game.stopping:
                break
            last = game.round
            if threading.get_native_id() != tid:
                fail("worker %d: native id %d, was %d" % (i, threading.get_native_id(), tid))
            if local.id != i or local.turns != game.turns[i]:
                fail("worker %d: thread-local id %d turns %d, shared %d" % (i, local.id, local.turns, game.turns[i]))
            local.turns += 1
            game.turns[i] += 1
            local.mix = mix(local.mix ^ last)
            game.hash = mix(game.hash ^ ((i + 1) << 32 | last))
            game.turn += 1
            game.cond.notify_all()
    game.results[i] = local.mix


def squarer(jobs, results):
    tid = threading.get_native_id()
    while True:
        job = jobs.get()
        if job is None:
            return
        if threading.get_native_id() != tid:
            fail("squarer: native id changed")
        results.put(("square", job, (job * job) % 1000003))


def waiter(event, results):
    if not event.wait(timeout=None):
        fail("waiter: event not set")
    results.put(("waited", threading.current_thread().name, sum(i * i for i in range(1000))))


def locker(lock, got):
    with lock:
        got.append(ticks_done[0])


ticks_done = [0]


def main():
    ticks = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    workers = [threading.Thread(target=worker, args=(i,), name="worker-%d" % i) for i in range(NWORKERS)]
    jobs, results = queue.Queue(), queue.Queue()
    event = threading.Event()
    lock = threading.Lock()
    got = []
    sq = threading.Thread(target=squarer, args=(jobs, results), name="squarer")
    wt = threading.Thread(target=waiter, args=(event, results), name="waiter")
    lk = None
    for t in workers + [sq, wt]:
        t.start()
    with game.cond:
        if not game.cond.wait_for(lambda: len(game.tids) == NWORKERS, timeout=WAIT):
            fail("main: workers did not start")
    main_tid = threading.get_native_id()

    acc = 0
    for t in range(1, ticks + 1):
        time.sleep(0.02)
        if threading.get_native_id() != main_tid:
            fail("main: native id changed")
        with game.cond:
            game.round = t
            game.turn = 0
            game.cond.notify_all()
            if not game.cond.wait_for(lambda: game.turn == NWORKERS, timeout=WAIT):
                fail("main: round %d not played within %s s" % (t, WAIT))
            h = game.hash
        jobs.put(t)
        try:
            kind, job, sq_val = results.get(timeout=WAIT)
        except queue.Empty:
            fail("main: no result from the squarer at tick %d" % t)
        if (kind, job) != ("square", t):
            fail("main: unexpected result %r" % ((kind, job),))
        acc = (acc * 31 + sq_val) & MASK
        if t == 60:
            lock.acquire()
            lk = threading.Thread(target=locker, args=(lock, got), name="locker")
            lk.start()
        ticks_done[0] = t
        if t == 119:
            lock.release()
            lk.join(timeout=WAIT)
            if lk.is_alive() or got != [119]:
                fail("main: locker got the lock at %r" % (got,))
        if t == 150:
            event.set()
            try:
                kind, name, val = results.get(timeout=WAIT)
            except queue.Empty:
                fail("main: the waiter did not answer")
            if (kind, name) != ("waited", "waiter"):
                fail("main: unexpected answer %r" % ((kind, name),))
            acc ^= val
            wt.join(timeout=WAIT)
        print("tick %d hash=%016x acc=%016x" % (t, h, acc), flush=True)

    with game.cond:
        game.stopping = True
        game.cond.notify_all()
    jobs.put(None)
    for t in workers + [sq]:
        t.join(timeout=WAIT)
        if t.is_alive():
            fail("main: %s did not finish" % t.name)
    mixes = ",".join("%016x" % r for r in game.results)
    print("done hash=%016x acc=%016x tls=%s locker=%s" % (game.hash, acc, mixes, got), flush=True)


def excepthook(args):
    """An exception in any thread fails the whole program."""
    fail("%s: %r" % (args.thread.name, args.exc_value))


if __name__ == "__main__":
    threading.excepthook = excepthook
    main()
