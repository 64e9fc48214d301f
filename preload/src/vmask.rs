//! The program's own blocking of the trigger signal.
//!
//! The kernel never sees the trigger blocked (a checkpoint request from
//! outside must always get through), so the agent keeps, per thread, the
//! bit the program believes it set, and holds back the program's own
//! trigger signals (raise, kill from another process of the tree) while
//! that bit is set, as the kernel would: pending, delivered when the
//! program unblocks it, visible in `sigpending`, waited for by
//! `sigsuspend`. Threads inherit the bit from their creator.

use crate::state::TRIGGER;
use core::cell::Cell;
use core::sync::atomic::{AtomicBool, Ordering::*};

thread_local! {
    /// The program has the trigger blocked in this thread.
    static BLOCKED: Cell<bool> = const { Cell::new(false) };
    /// A trigger sent to this thread (tgkill/raise) waits.
    static THREAD_PENDING: Cell<Option<libc::siginfo_t>> = const { Cell::new(None) };
}

/// A trigger sent to the process waits (it found its thread blocking it).
static PROCESS_PENDING: AtomicBool = AtomicBool::new(false);
static PROCESS_INFO: crate::state::RacyCell<Option<libc::siginfo_t>> = crate::state::RacyCell::new(None);

pub fn blocked() -> bool {
    BLOCKED.with(Cell::get)
}

pub fn set_blocked(b: bool) {
    BLOCKED.with(|c| c.set(b));
}

/// Whether the trigger is in the first word of a glibc sigset.
///
/// # Safety
/// `set` must point to a valid sigset_t.
pub unsafe fn contains_trigger(set: *const libc::sigset_t) -> bool {
    let t = TRIGGER.load(Relaxed);
    // SAFETY: the first word of a sigset_t holds signals 1..64.
    (1..=64).contains(&t) && unsafe { *(set as *const u64) } & (1u64 << (t - 1)) != 0
}

/// The program's blocked bit after `sigprocmask(how, set)`.
///
/// # Safety
/// `set` must be null or point to a valid sigset_t.
pub unsafe fn after(how: libc::c_int, set: *const libc::sigset_t) -> bool {
    let was = blocked();
    if set.is_null() {
        return was;
    }
    // SAFETY: per the contract.
    let named = unsafe { contains_trigger(set) };
    match how {
        libc::SIG_BLOCK => was || named,
        libc::SIG_UNBLOCK => was && !named,
        libc::SIG_SETMASK => named,
        _ => was,
    }
}

/// Called by the trigger handler for one of the program's own trigger
/// signals: true if it must wait (the program blocks it here).
pub(crate) fn hold(info: *const libc::siginfo_t) -> bool {
    if !blocked() {
        return false;
    }
    // SAFETY: the kernel's siginfo for this delivery; si_code at byte 8.
    let (copy, code): (libc::siginfo_t, i32) = unsafe { (*info, crate::sys::siginfo_word(info, 8)) };
    if code == libc::SI_TKILL {
        THREAD_PENDING.with(|p| p.set(Some(copy)));
    } else {
        // SAFETY: a plain store; a racing second signal would only replace
        // the first's siginfo, as standard signals do not queue.
        unsafe { *PROCESS_INFO.get() = Some(copy) };
        PROCESS_PENDING.store(true, Release);
    }
    true
}

/// Whether a held trigger waits for this thread.
pub fn pending() -> bool {
    THREAD_PENDING.with(|p| p.get().is_some()) || PROCESS_PENDING.load(Acquire)
}

/// Delivers the held triggers to the program, now that it unblocked them
/// (as the kernel delivers pending signals on unblocking).
pub fn deliver_pending() {
    let sig = TRIGGER.load(Relaxed);
    let mut infos = [None, None];
    infos[0] = THREAD_PENDING.with(|p| p.take());
    if PROCESS_PENDING.swap(false, AcqRel) {
        // SAFETY: the flag was set after the store; we took the flag.
        infos[1] = unsafe { (*PROCESS_INFO.get()).take() };
    }
    for mut info in infos.into_iter().flatten() {
        // SAFETY: ucontext_t is plain data that getcontext fills: the
        // context a handler is given (its mask is the one to restore).
        let mut uc: libc::ucontext_t = unsafe { core::mem::zeroed() };
        // SAFETY: uc is a valid ucontext_t.
        unsafe { libc::getcontext(&mut uc) };
        crate::signals::deliver_to_program(sig, &mut info, &mut uc as *mut _ as *mut libc::c_void);
    }
}

/// What a new thread needs to start with its creator's blocked bit.
struct Start {
    routine: extern "C" fn(*mut libc::c_void) -> *mut libc::c_void,
    arg: *mut libc::c_void,
    blocked: bool,
}

extern "C" fn trampoline(start: *mut libc::c_void) -> *mut libc::c_void {
    // SAFETY: pthread_create below passes a Box<Start> it gave up.
    let s = unsafe { Box::from_raw(start as *mut Start) };
    set_blocked(s.blocked);
    (s.routine)(s.arg)
}

/// # Safety
/// As glibc's `pthread_create`.
#[no_mangle]
pub unsafe extern "C" fn pthread_create(
    thread: *mut libc::pthread_t,
    attr: *const libc::pthread_attr_t,
    routine: extern "C" fn(*mut libc::c_void) -> *mut libc::c_void,
    arg: *mut libc::c_void,
) -> libc::c_int {
    let next = crate::real::real!(pthread_create: fn(
        *mut libc::pthread_t,
        *const libc::pthread_attr_t,
        extern "C" fn(*mut libc::c_void) -> *mut libc::c_void,
        *mut libc::c_void
    ) -> libc::c_int);
    if !blocked() {
        // SAFETY: forwarded unchanged.
        return unsafe { next(thread, attr, routine, arg) };
    }
    let start = Box::into_raw(Box::new(Start { routine, arg, blocked: true }));
    // SAFETY: the trampoline takes the box back in the new thread.
    let r = unsafe { next(thread, attr, trampoline, start.cast()) };
    if r != 0 {
        // SAFETY: no thread was created; the box is still ours.
        drop(unsafe { Box::from_raw(start) });
    }
    r
}
