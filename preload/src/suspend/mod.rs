//! Suspending every thread of the process for a checkpoint, and resuming
//! them, either right after the checkpoint or after a restart.
//!
//! The coordinator sends [`SUSPEND_SIGNAL`] to the process with
//! `SUSPEND_MAGIC | SUSPEND_LEAD`; the thread that receives it becomes the
//! *leader*. It sends the same signal with `SUSPEND_PARK` to each other
//! thread (listed in /proc/self/task, re-listed until no new thread shows
//! up), waits until each has parked or is gone, captures the process-wide
//! kernel state, and reaches its fork point. There it either forks a
//! copy-on-write snapshot child (the default) and lets the coordinator
//! copy the child at leisure, or stays frozen until the coordinator has
//! copied the process itself. It then releases the parked threads.
//!
//! Every thread's resume context is saved at its fork point, inside its
//! signal handler; a restarted thread continues from there, re-establishes
//! what the kernel forgot (see [`kstate`]), and returns from the handler,
//! so that `rt_sigreturn` restores its interrupted registers exactly.
//!
//! All of this runs in signal handlers with every asynchronous signal
//! blocked: raw syscalls, static storage, no allocation, no glibc locks.

mod forkpoint;
mod kstate;
mod snapshot;
mod tasks;
pub(crate) mod vmas;

pub(crate) use snapshot::REFUSE_DOFORK;
pub(crate) use tasks::format_decimal;

use crate::channel::{recv_msg, send_msg};
use crate::state::{RacyCell, TRIGGER};
use crate::sys;
use ckrun_proto::{
    kind, restorer_header as rh, Config, Failure, Restored, Suspended, ThreadRecord, MAX_THREADS, SUSPEND_LEAD,
    SUSPEND_MAGIC, SUSPEND_PARK, SUSPEND_SIGNAL, THREAD_LEADER,
};
use core::ffi::c_int;
use core::sync::atomic::{AtomicU32, Ordering::*};

/// Epoch of the checkpoint being taken (bumped by each leader).
static EPOCH: AtomicU32 = AtomicU32::new(0);
/// Parked threads wait until this reaches their epoch.
static RELEASED: AtomicU32 = AtomicU32::new(0);
/// Threads parked in the current epoch (futex word).
static PARKED: AtomicU32 = AtomicU32::new(0);
/// After a restart: threads back in their handlers (futex word).
static ARRIVED: AtomicU32 = AtomicU32::new(0);
/// Slots of [`RECORDS`] in use; slot 0 is the leader's.
static NSLOTS: AtomicU32 = AtomicU32::new(0);
/// Tid of the current leader, 0 when no checkpoint runs (futex word).
static LEADER: AtomicU32 = AtomicU32::new(0);
/// The coordinator's number for the current checkpoint request (leader only).
static REQUEST: AtomicU32 = AtomicU32::new(0);

/// One record per thread. A slot is written only by the thread that took
/// it (fetch_add on NSLOTS) before it bumps PARKED; the leader reads it
/// after seeing PARKED.
static RECORDS: RacyCell<[ThreadRecord; MAX_THREADS]> = RacyCell::new(
    [ThreadRecord {
        tid: 0,
        flags: 0,
        fs_base: 0,
        gs_base: 0,
        ctx: ckrun_proto::SavedContext { rbx: 0, rbp: 0, r12: 0, r13: 0, r14: 0, r15: 0, rsp: 0, rip: 0 },
        robust_head: 0,
        robust_len: 0,
        clear_child_tid: 0,
        rseq_area: 0,
        rseq_len: 0,
        rseq_sig: 0,
        comm: [0; 16],
    }; MAX_THREADS],
);
/// Threads the leader has signalled in this epoch (leader only).
static SIGNALLED: RacyCell<[i32; MAX_THREADS]> = RacyCell::new([0; MAX_THREADS]);

fn slot(i: usize) -> &'static mut ThreadRecord {
    // SAFETY: callers own slot i (see RECORDS); i < MAX_THREADS is checked
    // by every caller before use.
    unsafe { &mut (*RECORDS.get())[i] }
}

/// How long a thread may take to park before the checkpoint is abandoned.
const PARK_TIMEOUT_TICKS: u32 = 100; // x 100 ms
const TICK_NS: u64 = 100_000_000;

/// Handler of [`SUSPEND_SIGNAL`].
pub(crate) extern "C" fn on_suspend(_sig: c_int, info: *mut libc::siginfo_t, _uc: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo: si_code at 8, si_pid at 16,
    // si_value at 24.
    let (code, sender, value): (i32, i32, u64) =
        unsafe { (sys::siginfo_word(info, 8), sys::siginfo_word(info, 16), sys::siginfo_word(info, 24)) };
    if code != libc::SI_QUEUE || value & !ckrun_proto::SUSPEND_VALUE_BITS != SUSPEND_MAGIC {
        return; // not ours: someone else's stray real-time signal
    }
    // Before the fork point, so that a restored thread, whose interrupted
    // call fails with EINTR once the handler returns, sees it too.
    crate::eintr::ckrun_signal();
    match value & ckrun_proto::SUSPEND_KIND_MASK {
        SUSPEND_LEAD => lead(
            value & ckrun_proto::SUSPEND_FROZEN != 0,
            value & ckrun_proto::SUSPEND_TRACKER != 0,
            (value >> ckrun_proto::SUSPEND_REQUEST_SHIFT & ckrun_proto::SUSPEND_REQUEST_MASK) as u32,
        ),
        SUSPEND_PARK if sender == sys::getpid() => park(),
        _ => {}
    }
}

// ---- the leader -------------------------------------------------------

fn lead(frozen: bool, tracker: bool, request: u32) {
    let me = sys::gettid() as u32;
    // The previous checkpoint's leader may still be letting its threads go
    // (the coordinator is done with it already): wait for it rather than
    // drop this request.
    let mut ticks = 0;
    while let Err(other) = LEADER.compare_exchange(0, me, Acquire, Relaxed) {
        ticks += 1;
        if ticks > PARK_TIMEOUT_TICKS {
            send_msg(
                kind::SUSPEND_FAILED,
                &[Failure::new(libc::EBUSY, other as i32, "the previous checkpoint never ended")],
            );
            return;
        }
        sys::futex_wait(&LEADER, other, TICK_NS);
    }
    let epoch = EPOCH.load(Relaxed).wrapping_add(1);
    REQUEST.store(request, Relaxed);
    NSLOTS.store(1, Relaxed);
    PARKED.store(0, Relaxed);
    ARRIVED.store(0, Relaxed);
    EPOCH.store(epoch, Release);

    if let Err(f) = suspend_siblings(me as i32) {
        send_msg(kind::SUSPEND_FAILED, &[f]);
        release(epoch);
        end_leading();
        return;
    }
    let rec = slot(0);
    kstate::capture_thread(rec);
    rec.flags |= THREAD_LEADER;
    let arg = epoch as u64 | (frozen as u64) << 32 | (tracker as u64) << 33;
    forkpoint::fork_point(&mut rec.ctx, leader_checkpoint, leader_restarted, arg);
    release(epoch);
    end_leading();
}

fn end_leading() {
    LEADER.store(0, Release);
    sys::futex_wake(&LEADER);
}

/// Signals every other thread to park and waits until all have.
// The failure is returned by value: a signal handler cannot box it.
#[allow(clippy::result_large_err)]
fn suspend_siblings(me: i32) -> Result<(), Failure> {
    let pid = sys::getpid();
    // SAFETY: the leader owns SIGNALLED.
    let signalled = unsafe { &mut *SIGNALLED.get() };
    let mut n = 0usize;
    loop {
        let mut fresh = 0;
        let mut err = None;
        let listed = tasks::for_each_task(|tid| {
            if tid == me || signalled[..n].contains(&tid) || err.is_some() {
                return;
            }
            if n + 1 >= MAX_THREADS {
                err = Some(Failure::new(libc::E2BIG, tid, "too many threads"));
                return;
            }
            let v = SUSPEND_MAGIC | SUSPEND_PARK;
            let r = sys::tgsigqueue(pid, tid, SUSPEND_SIGNAL, v);
            if r == 0 {
                signalled[n] = tid;
                n += 1;
                fresh += 1;
            } else if r != -(libc::ESRCH as i64) {
                err = Some(Failure::new(-r as i32, tid, "cannot signal thread"));
            }
        });
        if let Some(e) = err {
            return Err(e);
        }
        if !listed {
            return Err(Failure::new(libc::EIO, me, "cannot list /proc/self/task"));
        }
        if fresh == 0 {
            return Ok(());
        }
        wait_parked(&signalled[..n])?;
    }
}

/// Waits until each thread of `signalled` has parked or is gone.
#[allow(clippy::result_large_err)]
fn wait_parked(signalled: &[i32]) -> Result<(), Failure> {
    let mut ticks = 0;
    let mut gone = 0;
    loop {
        let parked = PARKED.load(Acquire);
        if parked as usize + gone >= signalled.len() {
            return Ok(());
        }
        if sys::futex_wait(&PARKED, parked, TICK_NS) == -(libc::ETIMEDOUT as i64) {
            ticks += 1;
            // Threads that exited (or are zombies) will never park.
            let nslots = NSLOTS.load(Acquire) as usize;
            let is_parked = |tid: i32| (1..nslots.min(MAX_THREADS)).any(|i| slot(i).tid == tid);
            gone = signalled.iter().filter(|&&t| !is_parked(t) && !tasks::thread_alive(t)).count();
            if ticks >= PARK_TIMEOUT_TICKS {
                let stuck = signalled.iter().copied().find(|&t| !is_parked(t) && tasks::thread_alive(t));
                return Err(Failure::new(
                    libc::ETIMEDOUT,
                    stuck.unwrap_or(0),
                    "thread did not stop within 10 s (does it block signals with a raw syscall?)",
                ));
            }
        }
    }
}

/// First life of the leader's fork point: take the snapshot, report, and
/// wait for the coordinator's go.
extern "C" fn leader_checkpoint(arg: u64) {
    let epoch = arg as u32;
    let frozen = arg >> 32 & 1 != 0;
    let tracker = arg >> 33 & 1 != 0;
    let brk = kstate::capture_process();
    let snapshot_pid = if frozen { 0 } else { snapshot::fork_snapshot().max(0) };
    let nthreads = NSLOTS.load(Acquire).min(MAX_THREADS as u32);
    // SAFETY: prctl queries with integer arguments.
    let (securebits, dumpable) = unsafe {
        (
            sys::syscall2(sys::SYS_prctl, libc::PR_GET_SECUREBITS as u64, 0) as u32,
            sys::syscall2(sys::SYS_prctl, libc::PR_GET_DUMPABLE as u64, 0) as u32,
        )
    };
    let request = REQUEST.load(Relaxed);
    let dontfork = if snapshot_pid > 0 { snapshot::dontfork() } else { &[] };
    let ndontfork = dontfork.len() as u32;
    if tracker {
        // After the snapshot's fork (which would copy it), before the
        // report (after which the coordinator reads the fds).
        crate::tracker::offer();
    }
    let head = Suspended { epoch: epoch as u64, snapshot_pid, nthreads, brk, securebits, dumpable, request, ndontfork };
    if send_msg(kind::SUSPENDED, &[head]) {
        // SAFETY: all slots below nthreads are written (their threads bumped
        // PARKED before we got here); the leader only reads them.
        let recs = unsafe { &(&*RECORDS.get())[..nthreads as usize] };
        const BATCH: usize = (crate::channel::MAX_MSG - 8) / core::mem::size_of::<ThreadRecord>();
        for chunk in recs.chunks(BATCH) {
            send_msg(kind::THREADS, chunk);
        }
        const RANGES: usize = (crate::channel::MAX_MSG - 8) / core::mem::size_of::<ckrun_proto::MemRange>();
        for chunk in dontfork.chunks(RANGES) {
            send_msg(kind::DONTFORK, chunk);
        }
        let mut buf = [0u8; 256];
        // Frozen or not, the coordinator says when the /proc state it reads
        // while we are stopped (fds, offsets) is captured. A RESUME for
        // another request (one abandoned before this process answered it)
        // is not ours. The coordinator gone: go on.
        while let Some((h, body)) = recv_msg(&mut buf) {
            // While stopped, the coordinator may ask for this process's
            // semaphore undo adjustments (one SEM_PROBE per batch of sets).
            if h.kind == kind::SEM_PROBE {
                crate::sysv::semundo::answer(body);
                continue;
            }
            let r: Option<ckrun_proto::Resume> = ckrun_proto::read_pod(body);
            if h.kind == kind::RESUME && r.is_some_and(|r| r.request == request) {
                break;
            }
        }
    }
}

/// Second life of the leader's fork point, in the restarted process.
extern "C" fn leader_restarted(_arg: u64, restorer: u64) {
    let others = NSLOTS.load(Acquire).saturating_sub(1);
    let creds = kstate::Creds::from_restorer(restorer);
    // The restorer starts the threads one by one; once all are back in
    // their handlers, none executes restorer code any more.
    wait_count(&ARRIVED, others);
    unmap_restorer(restorer);
    kstate::restore_process();
    kstate::restore_thread(slot(0));
    if let Some(c) = &creds {
        c.apply(true);
    }
    let pid = sys::getpid();
    send_msg(kind::RESTORED, &[Restored { pid, nthreads: others + 1 }]);
    let mut buf = [0u8; 256];
    if let Some((h, body)) = recv_msg(&mut buf) {
        if h.kind == kind::CONFIG {
            if let Some(c) = ckrun_proto::read_pod::<Config>(body) {
                let ours = kstate::captured_action(TRIGGER.load(Relaxed));
                crate::signals::move_trigger(c.trigger, &ours);
                crate::state::COORDINATOR.store(c.coordinator, Relaxed);
                // What programs exec'd from now on must be told.
                crate::tree::set_env(c.socket_name(), c.trigger, c.coordinator);
            }
        }
    }
}

fn unmap_restorer(header: u64) {
    if header == 0 {
        return;
    }
    // SAFETY: the restorer passes its header page, mapped and readable;
    // base and length describe the restorer's own reservation, which no
    // thread executes any more.
    unsafe {
        let h = header as *const u64;
        if *h.add(rh::OFF_MAGIC / 8) != rh::MAGIC {
            return;
        }
        let base = *h.add(rh::OFF_BLOB_BASE / 8);
        let len = *h.add(rh::OFF_BLOB_LEN / 8);
        sys::syscall2(sys::SYS_munmap, base, len);
    }
}

/// Whether `pid` is this process or another process of the tree (a
/// descendant of the coordinator): its trigger signals are the program's
/// own business, not checkpoint requests.
pub fn in_tree(pid: i32) -> bool {
    pid == sys::getpid() || tasks::descends_from(pid, crate::state::COORDINATOR.load(Relaxed))
}

// ---- parked threads ---------------------------------------------------

fn park() {
    let epoch = EPOCH.load(Acquire);
    let i = NSLOTS.fetch_add(1, AcqRel) as usize;
    if i >= MAX_THREADS {
        return; // the leader reports "too many threads"
    }
    let rec = slot(i);
    kstate::capture_thread(rec);
    let arg = epoch as u64 | (i as u64) << 32;
    forkpoint::fork_point(&mut rec.ctx, park_checkpoint, park_restarted, arg);
}

extern "C" fn park_checkpoint(arg: u64) {
    PARKED.fetch_add(1, Release);
    sys::futex_wake(&PARKED);
    wait_released(arg as u32);
}

extern "C" fn park_restarted(arg: u64, restorer: u64) {
    // Read before arriving: the leader unmaps the restorer once all arrived.
    let creds = kstate::Creds::from_restorer(restorer);
    ARRIVED.fetch_add(1, Release);
    sys::futex_wake(&ARRIVED);
    wait_released(arg as u32);
    kstate::restore_thread(slot((arg >> 32) as usize));
    if let Some(c) = &creds {
        c.apply(false);
    }
}

fn release(epoch: u32) {
    RELEASED.store(epoch, Release);
    sys::futex_wake(&RELEASED);
}

fn wait_released(epoch: u32) {
    loop {
        let r = RELEASED.load(Acquire);
        if r.wrapping_sub(epoch) as i32 >= 0 {
            return;
        }
        sys::futex_wait(&RELEASED, r, 0);
    }
}

fn wait_count(word: &AtomicU32, target: u32) {
    loop {
        let v = word.load(Acquire);
        if v >= target {
            return;
        }
        sys::futex_wait(word, v, TICK_NS);
    }
}
