//! Blocking calls that a checkpoint or a restart interrupted are resumed,
//! so the program sees neither EINTR nor an early return.
//!
//! The agent's two signals (the suspend signal and the trigger) are
//! installed `SA_RESTART`, but the kernel never restarts some calls after
//! a handler ran, whatever the flag: `poll`, `select`, `epoll_wait`, SysV
//! IPC, `nanosleep`, `pause`, `sigsuspend`, `sigtimedwait`, futex waits
//! with a timeout (`sem_timedwait`), sockets with `SO_RCVTIMEO` /
//! `SO_SNDTIMEO`, `io_getevents`... They fail with EINTR at every
//! checkpoint, and again after a restart (each restored thread resumes
//! inside its suspend handler and returns to the interrupted call, which
//! the kernel had already made fail). [`calls`] wraps them: when such a
//! call fails with EINTR because of ckrun alone, it is called again with
//! the time it had left.
//!
//! Telling ckrun's interruptions from the program's takes two counters,
//! both read by the wrappers with plain loads (no syscall, no lock):
//!
//! - [`CKRUN`], process-wide, counts the agent's handler runs the program
//!   does not see: every suspend signal, and every trigger that is a
//!   checkpoint request (or one of the program's own that waits, held, or
//!   that it ignores). The handlers bump it before anything else, so the
//!   image of a checkpoint already holds the bumped value and a restored
//!   thread sees it changed too.
//! - [`PROGRAM`], per thread, counts the program's own handler runs. The
//!   agent's `sigaction`/`signal` install every program handler behind a
//!   trampoline ([`handlers`]) that bumps it and calls the program's
//!   handler; what `sigaction` reports stays the program's own handler.
//!   A trigger the agent forwards to the program's handler bumps it too.
//!
//! A wrapper notes both before the call; after an EINTR it resumes the call
//! only if [`CKRUN`] moved and this thread's [`PROGRAM`] did not: an EINTR
//! caused by one of the program's own signals always reaches it, even when
//! a checkpoint happened during the same call. [`PROGRAM`] is per thread
//! because an EINTR is only ever caused by a handler run on the
//! interrupted thread: another thread's program signals must not let a
//! checkpoint's EINTR through.
//!
//! One EINTR comes with no handler run in the thread at all: a signal sent
//! to the whole process wakes one thread, but another thread that happens
//! to take a signal of its own meanwhile may dequeue it first; the woken
//! thread's `sigtimedwait`, `epoll_wait`, `io_getevents` or timed socket
//! call then fails with EINTR while the other thread is only about to bump
//! [`CKRUN`]. (The coordinator sends its suspend signal to the main thread
//! for that reason, but a trigger sent to the program's pid from outside is
//! process-wide.) After such an EINTR the wrapper waits for [`CKRUN`] to
//! move, on a futex, for at most [`GRACE_NS`]: the bump wakes it at once.
//! An EINTR that really was the program's (or the kernel's: after
//! SIGSTOP/SIGCONT) reaches it that much later.
//!
//! Relative timeouts are recomputed from a deadline noted before the call
//! (only for a finite, non-zero timeout) on `CLOCK_MONOTONIC_COARSE`: the
//! vDSO reads it in a few nanoseconds (the precise clock costs 20-30 ns
//! here, which a ready `poll` with a timeout would pay on every call). The
//! coarse clock lags by up to a tick, so the time left gets two ticks more
//! ([`margin_ns`]): a resumed wait is never cut short, and ends at most a
//! few milliseconds late, once per interruption. The time left never
//! exceeds the original timeout: after a restart on another boot, the
//! monotonic clock may be anywhere. Where the
//! kernel itself reports the time left (`nanosleep`'s `rem`), that is used;
//! absolute deadlines (`TIMER_ABSTIME`, `sem_timedwait`) are passed again
//! unchanged. errno is put back to its value before the call, so a resumed
//! call that succeeds leaves it as an uninterrupted one would.
//!
//! What is not caught: handlers installed with a raw `rt_sigaction`
//! syscall are not counted (their EINTR can be taken for ckrun's if a
//! checkpoint happens during the same call); calls made with raw syscalls
//! are not wrapped.

pub mod calls;
pub mod handlers;

use core::ffi::c_int;
use core::sync::atomic::{
    AtomicU32, AtomicU64, AtomicUsize,
    Ordering::{Relaxed, SeqCst},
};

/// Handler runs of ckrun's own that the program does not see (see the
/// module docs). Wraps around; only equality matters. Also a futex word.
static CKRUN: AtomicU32 = AtomicU32::new(0);

/// Wrappers waiting on [`CKRUN`] after an EINTR without a handler.
static WAITERS: AtomicU32 = AtomicU32::new(0);

/// How long such a wrapper waits for another thread's handler of a ckrun
/// signal to bump [`CKRUN`] (it normally does within microseconds).
pub const GRACE_NS: u64 = 20_000_000;

thread_local! {
    /// The program's handler runs on this thread. Reached through
    /// [`program_counter`], never through `with` (see there).
    static PROGRAM: AtomicU32 = const { AtomicU32::new(0) };
}

/// Where [`PROGRAM`] lies below the thread pointer, the same in every
/// thread; 0 until [`init`] found it.
static PROGRAM_OFFSET: AtomicUsize = AtomicUsize::new(0);

/// Stands for every thread's counter if [`PROGRAM`]'s place is unknown:
/// then any program handler run lets EINTR through (the safe side).
static PROGRAM_ANY_THREAD: AtomicU32 = AtomicU32::new(0);

/// Notes, from a handler of the agent, that ckrun interrupted this thread.
#[inline]
pub(crate) fn ckrun_signal() {
    CKRUN.fetch_add(1, SeqCst);
    if WAITERS.load(SeqCst) != 0 {
        crate::sys::futex_wake(&CKRUN);
    }
}

/// Waits until [`CKRUN`] is no longer `seen`, at most [`GRACE_NS`] (less
/// if a signal interrupts the wait); returns its value.
#[cold]
fn grace(seen: u32) -> u32 {
    // SeqCst on both sides: either the bumper sees a waiter and wakes it,
    // or the futex sees the new value and does not sleep.
    WAITERS.fetch_add(1, SeqCst);
    crate::sys::futex_wait(&CKRUN, seen, GRACE_NS);
    WAITERS.fetch_sub(1, SeqCst);
    CKRUN.load(SeqCst)
}

/// Notes, just before a program handler runs, that the program's own
/// signal interrupted this thread.
#[inline]
pub(crate) fn program_signal() {
    program_counter().fetch_add(1, Relaxed);
}

/// The x86-64 thread pointer: the ABI keeps its own value in its first word.
#[inline(always)]
fn thread_pointer() -> usize {
    let tp: usize;
    // SAFETY: reads one word at %fs:0, which the x86-64 TLS ABI defines for
    // every thread that runs C library code (glibc's errno is reached the
    // same way).
    unsafe { core::arch::asm!("mov {}, fs:[0]", out(reg) tp, options(nostack, readonly, preserves_flags)) };
    tp
}

/// This thread's [`PROGRAM`]. Signal handlers must not go through Rust's
/// `thread_local!` access: in a library it calls `__tls_get_addr`, which
/// may allocate (after a `dlopen`) and the interrupted code may hold
/// malloc's lock. The agent is loaded with the program, so glibc puts its
/// TLS in the static block, at a fixed offset below each thread's pointer:
/// the counter is reached there with one load, as glibc reaches errno.
#[inline(always)]
fn program_counter() -> &'static AtomicU32 {
    let off = PROGRAM_OFFSET.load(Relaxed);
    if off == 0 {
        return &PROGRAM_ANY_THREAD;
    }
    // SAFETY: `init` checked that this thread's PROGRAM is at tp - off; the
    // static TLS layout is the same in every thread, and a thread's TLS
    // lives as long as the thread.
    unsafe { &*((thread_pointer() - off) as *const AtomicU32) }
}

/// Finds where [`PROGRAM`] lies relative to the thread pointer. Called
/// once by the constructor, before any program handler is wrapped.
pub(crate) fn init() {
    let here = PROGRAM.with(|c| c as *const AtomicU32 as usize);
    let tp = thread_pointer();
    // Static TLS is below the thread pointer and small; anything else
    // (the agent loaded with dlopen, into dynamic TLS) keeps the fallback.
    if here < tp && tp - here < (1 << 20) {
        PROGRAM_OFFSET.store(tp - here, Relaxed);
    }
    handlers::adopt_existing();
    calls::resolve_early();
}

pub(crate) fn errno() -> c_int {
    // SAFETY: errno is thread-local; the location is always valid.
    unsafe { *libc::__errno_location() }
}

pub(crate) fn set_errno(e: c_int) {
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = e };
}

/// What a wrapper notes before its call.
#[derive(Clone, Copy)]
pub(crate) struct Watch {
    ckrun: u32,
    program: u32,
    errno: c_int,
}

impl Watch {
    #[inline]
    pub fn start() -> Watch {
        Watch { ckrun: CKRUN.load(Relaxed), program: program_counter().load(Relaxed), errno: errno() }
    }

    /// After the call failed with `err`: whether it must be called again
    /// (EINTR, ckrun's handlers ran during it, none of the program's). If
    /// so, errno is put back and the watch is set for the next attempt.
    #[inline]
    pub fn resume(&mut self, err: c_int) -> bool {
        if err != libc::EINTR {
            return false;
        }
        let program = program_counter();
        let mut now = CKRUN.load(Relaxed);
        if now == self.ckrun && program.load(Relaxed) == self.program {
            // No handler of either kind counted here: perhaps a signal of
            // ckrun's that another thread is taking (see the module docs).
            now = grace(self.ckrun);
        }
        if now == self.ckrun || program.load(Relaxed) != self.program {
            return false;
        }
        self.ckrun = now;
        set_errno(self.errno);
        true
    }
}

/// Calls `call` until it does not fail with an EINTR of ckrun's own;
/// `failure` gives the error number of a failed result. `call` is told
/// whether it is a resumption (to recompute its timeout).
#[inline]
pub(crate) fn resuming<R: Copy>(failure: impl Fn(R) -> Option<c_int>, mut call: impl FnMut(bool) -> R) -> R {
    let mut w = Watch::start();
    let mut again = false;
    loop {
        let r = call(again);
        match failure(r) {
            Some(e) if w.resume(e) => again = true,
            _ => return r,
        }
    }
}

/// The failure of a call that returns -1 and sets errno.
#[inline]
pub(crate) fn minus_one<R: PartialEq + From<i8>>(r: R) -> Option<c_int> {
    (r == R::from(-1)).then(errno)
}

/// The coarse monotonic clock, in nanoseconds.
fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a writable local; the clock id is valid on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// What the time left gets on top for the coarse clock's lag, at the
/// start and at the resumption: two of its ticks.
fn margin_ns() -> u64 {
    static MARGIN: AtomicU64 = AtomicU64::new(0);
    let m = MARGIN.load(Relaxed);
    if m != 0 {
        return m;
    }
    let mut res = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: res is a writable local.
    unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut res) };
    let tick = (res.tv_sec as u64 * 1_000_000_000 + res.tv_nsec as u64).clamp(1_000_000, 100_000_000);
    MARGIN.store(2 * tick, Relaxed);
    2 * tick
}

/// The end of a relative timeout, on CLOCK_MONOTONIC.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadline {
    at: u64,
    total: u64,
}

impl Deadline {
    fn after(total: u64) -> Deadline {
        Deadline { at: now_ns().saturating_add(total), total }
    }

    /// For a timeout in milliseconds (negative: none; 0: no wait).
    pub fn from_ms(ms: c_int) -> Option<Deadline> {
        (ms > 0).then(|| Deadline::after(ms as u64 * 1_000_000))
    }

    /// For a relative timespec (null: none). A zero or invalid one (the
    /// call fails with EINVAL, never EINTR) needs none.
    ///
    /// # Safety
    /// `ts` must be null or point to a readable timespec.
    pub unsafe fn from_timespec(ts: *const libc::timespec) -> Option<Deadline> {
        if ts.is_null() {
            return None;
        }
        // SAFETY: per the contract.
        let t = unsafe { *ts };
        total_ns(t.tv_sec, t.tv_nsec).filter(|&n| n > 0).map(Deadline::after)
    }

    /// For a timeval (null: none).
    ///
    /// # Safety
    /// `tv` must be null or point to a readable timeval.
    pub unsafe fn from_timeval(tv: *const libc::timeval) -> Option<Deadline> {
        if tv.is_null() {
            return None;
        }
        // SAFETY: per the contract.
        let t = unsafe { *tv };
        if t.tv_usec < 0 || t.tv_usec >= 1_000_000 {
            return None;
        }
        total_ns(t.tv_sec, t.tv_usec * 1000).filter(|&n| n > 0).map(Deadline::after)
    }

    /// Nanoseconds left (with the coarse clock's margin), never more than
    /// the original timeout.
    pub fn left_ns(&self) -> u64 {
        left(self.at, now_ns(), margin_ns(), self.total)
    }

    /// Milliseconds left, rounded up (a wait is never cut short).
    pub fn left_ms(&self) -> c_int {
        self.left_ns().div_ceil(1_000_000).min(c_int::MAX as u64) as c_int
    }

    pub fn left_timespec(&self) -> libc::timespec {
        let n = self.left_ns();
        libc::timespec { tv_sec: (n / 1_000_000_000) as i64, tv_nsec: (n % 1_000_000_000) as i64 }
    }

    /// Microseconds left, rounded up.
    pub fn left_timeval(&self) -> libc::timeval {
        let us = self.left_ns().div_ceil(1000);
        libc::timeval { tv_sec: (us / 1_000_000) as i64, tv_usec: (us % 1_000_000) as i64 }
    }
}

/// A valid relative time in nanoseconds (saturating), or None.
fn total_ns(sec: i64, nsec: i64) -> Option<u64> {
    if sec < 0 || !(0..1_000_000_000).contains(&nsec) {
        return None;
    }
    Some((sec as u64).saturating_mul(1_000_000_000).saturating_add(nsec as u64))
}

/// Time left until `at` seen at `now`, plus `margin`, capped at `total`:
/// after a restart the monotonic clock may have started again from anywhere.
fn left(at: u64, now: u64, margin: u64, total: u64) -> u64 {
    at.saturating_add(margin).saturating_sub(now).min(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_left_is_capped_at_the_original_timeout() {
        assert_eq!(left(1_000, 400, 0, 1_000), 600);
        assert_eq!(left(1_000, 400, 100, 1_000), 700, "the coarse clock's margin");
        assert_eq!(left(1_000, 400, 900, 1_000), 1_000, "never more than the timeout");
        assert_eq!(left(1_000, 2_000, 100, 1_000), 0, "deadline passed");
        // A restart on a boot whose monotonic clock is behind the deadline's.
        assert_eq!(left(10_000_000, 5, 100, 1_000), 1_000);
    }

    #[test]
    fn relative_times() {
        assert_eq!(total_ns(1, 5), Some(1_000_000_005));
        assert_eq!(total_ns(-1, 0), None);
        assert_eq!(total_ns(0, 1_000_000_000), None);
        assert_eq!(total_ns(i64::MAX, 0), Some(u64::MAX));
        let ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: a local timespec.
        assert!(unsafe { Deadline::from_timespec(&ts) }.is_none(), "a zero timeout needs no deadline");
        assert!(Deadline::from_ms(0).is_none() && Deadline::from_ms(-1).is_none());
    }

    #[test]
    fn rounding_never_shortens_a_wait() {
        let d = Deadline { at: now_ns() + 1_000_000_000, total: 1_500_000_000 };
        let ms = d.left_ms() as u64;
        assert!(ms >= 1_000 + margin_ns() / 1_000_000 - 100 && ms <= 1_500, "{ms}");
        let d = Deadline { at: now_ns() + 10_000_000_000, total: 1 };
        assert_eq!(d.left_ms(), 1, "1 ns left is a 1 ms wait, not 0");
        assert_eq!(d.left_timeval().tv_usec, 1);
        assert_eq!(d.left_timespec().tv_nsec, 1);
    }

    /// The tests below move the process-wide counters: one at a time.
    static COUNTERS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// What the wrappers decide after an EINTR, driven by the counters as
    /// the handlers move them.
    #[test]
    fn only_ckrun_alone_resumes() {
        let _one = COUNTERS.lock().unwrap();
        let w = Watch::start();
        // On the precise clock: the coarse one (the wrappers') may show a
        // tick less than the futex waited.
        let t0 = std::time::Instant::now();
        assert!(!{ w }.resume(libc::EINTR), "nothing ran: the EINTR came from elsewhere");
        assert!(t0.elapsed().as_nanos() >= GRACE_NS as u128, "after waiting for another thread's handler");
        let mut w = Watch::start();
        ckrun_signal();
        assert!(!w.resume(libc::EAGAIN), "only EINTR is resumed");
        assert!(w.resume(libc::EINTR), "ckrun's signal alone");
        assert!(!w.resume(libc::EINTR), "re-armed: a second EINTR needs a second signal");
        let mut w = Watch::start();
        ckrun_signal();
        program_signal();
        assert!(!w.resume(libc::EINTR), "the program's own signal ran too");
    }

    /// A ckrun signal that another thread handles wakes a wrapper that got
    /// an EINTR with no handler run in its own thread.
    #[test]
    fn another_threads_ckrun_signal_ends_the_grace_wait() {
        let _one = COUNTERS.lock().unwrap();
        let mut w = Watch::start();
        let other = std::thread::spawn(|| {
            while WAITERS.load(SeqCst) == 0 {
                core::hint::spin_loop();
            }
            ckrun_signal();
        });
        assert!(w.resume(libc::EINTR), "the other thread's ckrun signal counts");
        other.join().unwrap();
    }
}
