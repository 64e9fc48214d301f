/*
 * Workers: a deterministic multi-threaded Java program for ckrun's
 * end-to-end tests (compiled by the test with javac). Besides its own
 * threads, the JVM runs a dozen of its own (GC, JIT compilers, signal
 * dispatcher, reference handler, finalizer...), all of which a checkpoint
 * must stop and a restart must bring back.
 *
 * The program's threads:
 *   - 4 workers take turns with synchronized/wait/notifyAll: each tick,
 *     worker 0, 1, 2, 3 in this order folds its id and the tick into a
 *     shared hash (the same hash as examples/threads.c and threads.py). Each
 *     keeps its own count in a ThreadLocal, checked against a shared copy,
 *     and checks its kernel TID (read from /proc/thread-self) against the
 *     one it had at start: a restart must keep every TID.
 *   - a pipeline through a BlockingQueue: main puts a job each tick, the
 *     "squarer" thread answers through a second queue.
 *   - an ExecutorService of 3 threads: each tick main submits 3 tasks and
 *     combines their Futures (integer sums: order-independent).
 *   - "waiter" blocks on a CountDownLatch until tick 150.
 *   - "locker" blocks in ReentrantLock.lock() (a parked thread) while main
 *     holds the lock from tick 60 to 119, and records when it got it.
 *   - "sleeper" sleeps 1 s at a time until main interrupts it at tick 185.
 *
 * Every printed value depends only on the tick number. A failed check
 * prints "Workers: FAIL ..." on stderr and halts the JVM with status 1.
 * Output: "tick N hash=H acc=A" per tick (flushed), then "done ...".
 * ~20 ms pacing over 200 ticks: about 4 s plus JVM start-up.
 *
 * Usage: java -cp DIR Workers [TICKS]   (default 200). Exit code 0.
 */
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ArrayBlockingQueue;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.locks.ReentrantLock;

public class Workers {
    static final int NWORKERS = 4;
    static final long WAIT_MS = 15000;

    static final Object game = new Object();
    static int round, turn;
    static boolean stopping;
    static long hash = 0xcbf29ce484222325L;
    static final long[] turns = new long[NWORKERS];
    static final long[] results = new long[NWORKERS];
    static int started;
    static final ThreadLocal<long[]> local = ThreadLocal.withInitial(() -> new long[2]);
    static volatile int ticksDone;

    static void fail(String msg) {
        System.err.println("Workers: FAIL: " + msg);
        System.err.flush();
        Runtime.getRuntime().halt(1);
    }

    static long mix(long z) {
        z += 0x9e3779b97f4a7c15L;
        z = (z ^ (z >>> 30)) * 0xbf58476d1ce4e5b9L;
        z = (z ^ (z >>> 27)) * 0x94d049bb133111ebL;
        return z ^ (z >>> 31);
    }

    /** The calling thread's kernel TID: /proc/thread-self is "PID/task/TID". */
    static int tid() {
        try {
            String link = Files.readSymbolicLink(Paths.get("/proc/thread-self")).toString();
            return Integer.parseInt(link.substring(link.lastIndexOf('/') + 1));
        } catch (IOException | RuntimeException e) {
            fail("cannot read /proc/thread-self: " + e);
            return -1;
        }
    }

    static void worker(int id) {
        int me = tid();
        long[] mine = local.get();
        mine[0] = 0; // turns
        mine[1] = mix(id); // mix
        int last = 0;
        synchronized (game) {
            started++;
            game.notifyAll();
            while (true) {
                while (!stopping && !(round > last && turn == id)) {
                    try {
                        game.wait();
                    } catch (InterruptedException e) {
                        fail("worker " + id + " interrupted");
                    }
                }
                if (stopping) {
                    break;
                }
                last = round;
                if (tid() != me) {
                    fail("worker " + id + ": TID " + tid() + ", was " + me);
                }
                if (local.get() != mine || mine[0] != turns[id]) {
                    fail("worker " + id + ": ThreadLocal count " + mine[0] + ", shared " + turns[id]);
                }
                mine[0]++;
                turns[id]++;
                mine[1] = mix(mine[1] ^ last);
                hash = mix(hash ^ ((long) (id + 1) << 32 | last));
                turn++;
                game.notifyAll();
            }
        }
        results[id] = mine[1];
    }

    static Thread start(String name, Runnable body) {
        Thread t = new Thread(body, name);
        t.setUncaughtExceptionHandler((th, e) -> fail(th.getName() + ": " + e));
        t.start();
        return t;
    }

    static void join(Thread t) throws InterruptedException {
        t.join(WAIT_MS);
        if (t.isAlive()) {
            fail("main: " + t.getName() + " did not finish");
        }
    }

    public static void main(String[] args) throws Exception {
        int ticks = args.length > 0 ? Integer.parseInt(args[0]) : 200;
        int mainTid = tid();
        List<Thread> workers = new ArrayList<>();
        for (int i = 0; i < NWORKERS; i++) {
            final int id = i;
            workers.add(start("worker-" + i, () -> worker(id)));
        }
        BlockingQueue<Long> jobs = new ArrayBlockingQueue<>(4);
        BlockingQueue<Long> answers = new ArrayBlockingQueue<>(4);
        Thread squarer = start("squarer", () -> {
            int me = tid();
            try {
                while (true) {
                    long job = jobs.take();
                    if (job < 0) {
                        return;
                    }
                    if (tid() != me) {
                        fail("squarer: TID changed");
                    }
                    answers.put(job * job % 1000003);
                }
            } catch (InterruptedException e) {
                fail("squarer interrupted");
            }
        });
        CountDownLatch latch = new CountDownLatch(1);
        long[] waited = new long[1];
        Thread waiter = start("waiter", () -> {
            try {
                if (!latch.await(1, TimeUnit.HOURS)) {
                    fail("waiter: latch timed out");
                }
            } catch (InterruptedException e) {
                fail("waiter interrupted");
            }
            long s = 0;
            for (int i = 0; i < 1000; i++) {
                s += (long) i * i;
            }
            waited[0] = s;
        });
        ReentrantLock lock = new ReentrantLock();
        int[] lockedAt = {-1};
        Thread locker = null;
        int[] sleeps = {0};
        Thread sleeper = start("sleeper", () -> {
            while (true) {
                try {
                    Thread.sleep(1000);
                    sleeps[0]++;
                } catch (InterruptedException e) {
                    return;
                }
            }
        });
        ExecutorService pool = Executors.newFixedThreadPool(3);

        synchronized (game) {
            long deadline = System.currentTimeMillis() + WAIT_MS;
            while (started < NWORKERS) {
                game.wait(Math.max(1, deadline - System.currentTimeMillis()));
                if (System.currentTimeMillis() > deadline) {
                    fail("main: workers did not start");
                }
            }
        }

        long acc = 0;
        for (int t = 1; t <= ticks; t++) {
            Thread.sleep(20);
            if (tid() != mainTid) {
                fail("main: TID changed");
            }
            long h;
            synchronized (game) {
                round = t;
                turn = 0;
                game.notifyAll();
                long deadline = System.currentTimeMillis() + WAIT_MS;
                while (turn < NWORKERS) {
                    game.wait(Math.max(1, deadline - System.currentTimeMillis()));
                    if (turn < NWORKERS && System.currentTimeMillis() > deadline) {
                        fail("main: round " + t + " not played in time");
                    }
                }
                h = hash;
            }
            jobs.put((long) t);
            Long sq = answers.poll(WAIT_MS, TimeUnit.MILLISECONDS);
            if (sq == null) {
                fail("main: no answer from the squarer at tick " + t);
            }
            final int tick = t;
            List<Future<Long>> parts = new ArrayList<>();
            for (int p = 0; p < 3; p++) {
                final int part = p;
                parts.add(pool.submit(() -> {
                    long s = 0;
                    for (int i = part; i < 30000; i += 3) {
                        s += mix(i ^ ((long) tick << 20)) & 0xffff;
                    }
                    return s;
                }));
            }
            long parallel = 0;
            for (Future<Long> f : parts) {
                parallel += f.get(WAIT_MS, TimeUnit.MILLISECONDS);
            }
            acc = mix(acc ^ sq) + parallel;
            ticksDone = t;
            if (t == 60) {
                lock.lock();
                locker = start("locker", () -> {
                    lock.lock();
                    try {
                        lockedAt[0] = ticksDone;
                    } finally {
                        lock.unlock();
                    }
                });
            }
            if (t == 119) {
                lock.unlock();
                join(locker);
                if (lockedAt[0] != 119) {
                    fail("main: locker got the lock at tick " + lockedAt[0]);
                }
            }
            if (t == 150) {
                latch.countDown();
                join(waiter);
                acc ^= waited[0];
            }
            if (t == 185) {
                sleeper.interrupt();
                join(sleeper);
            }
            System.out.println("tick " + t + " hash=" + String.format("%016x", h) + " acc=" + String.format("%016x", acc));
            System.out.flush();
        }

        synchronized (game) {
            stopping = true;
            game.notifyAll();
        }
        jobs.put(-1L);
        for (Thread w : workers) {
            join(w);
        }
        join(squarer);
        pool.shutdown();
        if (!pool.awaitTermination(WAIT_MS, TimeUnit.MILLISECONDS)) {
            fail("main: the pool did not shut down");
        }
        StringBuilder tls = new StringBuilder();
        for (int i = 0; i < NWORKERS; i++) {
            tls.append(i == 0 ? "" : ",").append(String.format("%016x", results[i]));
        }
        System.out.println("done hash=" + String.format("%016x", hash) + " acc=" + String.format("%016x", acc)
                + " tls=" + tls + " locker=" + lockedAt[0]);
        System.out.flush();
        System.exit(0);
    }
}
