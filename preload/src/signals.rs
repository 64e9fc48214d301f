//! Signal virtualisation: the agent owns two signals (the checkpoint
//! trigger, SIGUSR2 by default, and [`SUSPEND_SIGNAL`]). The program's
//! `sigaction`/`signal` on them are recorded here and never reach the
//! kernel; masks and wait sets it passes never contain them. A trigger
//! signal the program sends itself (raise, kill(getpid()), pthread_kill) is
//! still delivered to the program's own handler, so a program that uses
//! SIGUSR2 internally keeps working; one from outside means "checkpoint".

use crate::eintr::{self, handlers, set_errno};
use crate::real::real;
use crate::state::{active, is_reserved, reserved_mask, RacyCell, TRIGGER};
use crate::sys;
use crate::vmask;
use ckrun_proto::SUSPEND_SIGNAL;
use core::ffi::c_int;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};

/// The program's view of the reserved signals' dispositions, indexed by
/// signal number. Written under [`VLOCK`] by the wrappers.
static VIRTUAL: RacyCell<[libc::sigaction; 65]> = RacyCell::new(
    // SAFETY: an all-zero sigaction is SIG_DFL with an empty mask.
    unsafe { core::mem::zeroed() },
);
static VLOCK: AtomicBool = AtomicBool::new(false);

fn with_virtual<R>(f: impl FnOnce(&mut [libc::sigaction; 65]) -> R) -> R {
    while VLOCK.compare_exchange_weak(false, true, Acquire, Relaxed).is_err() {
        core::hint::spin_loop();
    }
    // SAFETY: VLOCK gives exclusive access to VIRTUAL.
    let r = f(unsafe { &mut *VIRTUAL.get() });
    VLOCK.store(false, Release);
    r
}

/// Reads the program's disposition of `sig` without the lock (signal
/// handlers must not spin on a lock the interrupted thread may hold).
fn virtual_of(sig: i32) -> libc::sigaction {
    // SAFETY: a racy copy of plain data; at worst it mixes an old and a new
    // disposition set by a concurrent sigaction(), which the program could
    // not have ordered against the signal anyway.
    unsafe { core::ptr::read_volatile(&(*VIRTUAL.get())[sig as usize]) }
}

/// Clears the reserved signals from a glibc `sigset_t` (signals 1..64 are
/// its first word).
///
/// # Safety
/// `set` must point to a valid, writable sigset_t.
pub(crate) unsafe fn strip(set: *mut libc::sigset_t) {
    // SAFETY: sigset_t is at least 8 bytes and the caller owns it.
    unsafe { *(set as *mut u64) &= !reserved_mask() };
}

/// Copies `set` (if not null) with the reserved signals removed.
///
/// # Safety
/// `set` must be null or point to a valid sigset_t.
unsafe fn stripped(set: *const libc::sigset_t) -> Option<libc::sigset_t> {
    if set.is_null() {
        return None;
    }
    // SAFETY: set is valid per the caller; the copy is ours to modify.
    let mut s = unsafe { *set };
    // SAFETY: s is a local sigset_t.
    unsafe { strip(&mut s) };
    Some(s)
}

fn ptr_or_null(s: &Option<libc::sigset_t>, orig: *const libc::sigset_t) -> *const libc::sigset_t {
    s.as_ref().map_or(orig, |s| s as *const _)
}

/// # Safety
/// Same contract as glibc's `sigaction`.
#[no_mangle]
pub unsafe extern "C" fn sigaction(sig: c_int, act: *const libc::sigaction, old: *mut libc::sigaction) -> c_int {
    let next = real!(sigaction: fn(c_int, *const libc::sigaction, *mut libc::sigaction) -> c_int);
    if !is_reserved(sig) {
        if act.is_null() || !active() {
            // SAFETY: forwarded unchanged (the program's handler is still
            // reported for the trampoline, should one be installed).
            return unsafe { handlers::sigaction(next, sig, act, old) };
        }
        // SAFETY: act is valid per the contract.
        let mut a = unsafe { *act };
        // SAFETY: a is a local.
        unsafe { strip(&mut a.sa_mask) };
        // SAFETY: forwarded with a valid local copy; the program's handler
        // goes behind the EINTR accounting's trampoline.
        return unsafe { handlers::sigaction(next, sig, &a, old) };
    }
    with_virtual(|v| {
        if !old.is_null() {
            // SAFETY: old is writable per the contract.
            unsafe { *old = v[sig as usize] };
        }
        if !act.is_null() {
            // SAFETY: act is readable per the contract.
            v[sig as usize] = unsafe { *act };
        }
    });
    0
}

/// Signals `siginterrupt` made interrupting: `signal` installs their
/// handlers without SA_RESTART (glibc keeps this in its private
/// `_sigintr`, which the agent's own `signal` cannot read).
static INTERRUPTING: AtomicU64 = AtomicU64::new(0);

/// `signal()` and its variants, through the agent's `sigaction` (glibc's
/// would call its internal one, which bypasses the reserved signals'
/// virtualisation and the program handlers' trampoline).
///
/// # Safety
/// As glibc's `signal`.
unsafe fn signal_with(sig: c_int, handler: libc::sighandler_t, kind: SignalFn) -> libc::sighandler_t {
    if !active() {
        // SAFETY: forwarded unchanged to the matching glibc function.
        let h = unsafe {
            match kind {
                SignalFn::Bsd => real!(bsd_signal: fn(c_int, libc::sighandler_t) -> libc::sighandler_t)(sig, handler),
                SignalFn::Sysv => real!(sysv_signal: fn(c_int, libc::sighandler_t) -> libc::sighandler_t)(sig, handler),
            }
        };
        return handlers::program_handler(sig, h);
    }
    if handler == libc::SIG_ERR || !(1..=64).contains(&sig) {
        set_errno(libc::EINVAL);
        return libc::SIG_ERR;
    }
    // SAFETY: zeroed sigaction is valid plain data.
    let mut new: libc::sigaction = unsafe { core::mem::zeroed() };
    new.sa_sigaction = handler;
    match kind {
        // glibc's: the signal blocked in its handler, calls restarted
        // unless siginterrupt said otherwise.
        SignalFn::Bsd => {
            // SAFETY: a local sigset; sig is in range.
            unsafe { libc::sigaddset(&mut new.sa_mask, sig) };
            if INTERRUPTING.load(Relaxed) & (1u64 << (sig - 1)) == 0 {
                new.sa_flags = libc::SA_RESTART;
            }
        }
        SignalFn::Sysv => new.sa_flags = libc::SA_RESETHAND | libc::SA_NODEFER,
    }
    // SAFETY: zeroed sigaction is valid plain data.
    let mut old: libc::sigaction = unsafe { core::mem::zeroed() };
    // SAFETY: both point to locals.
    if unsafe { sigaction(sig, &new, &mut old) } != 0 {
        return libc::SIG_ERR;
    }
    old.sa_sigaction
}

enum SignalFn {
    /// `signal`, `bsd_signal`, `ssignal`.
    Bsd,
    /// `sysv_signal`: one-shot, not blocked in its handler, not restarting.
    Sysv,
}

/// # Safety
/// As glibc's `signal`.
#[no_mangle]
pub unsafe extern "C" fn signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    // SAFETY: forwarded contract.
    unsafe { signal_with(sig, handler, SignalFn::Bsd) }
}

/// # Safety
/// As glibc's `bsd_signal`.
#[no_mangle]
pub unsafe extern "C" fn bsd_signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    // SAFETY: forwarded contract.
    unsafe { signal_with(sig, handler, SignalFn::Bsd) }
}

/// # Safety
/// As glibc's `ssignal` (an alias of `signal`).
#[no_mangle]
pub unsafe extern "C" fn ssignal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    // SAFETY: forwarded contract.
    unsafe { signal_with(sig, handler, SignalFn::Bsd) }
}

/// # Safety
/// As glibc's `sysv_signal`.
#[no_mangle]
pub unsafe extern "C" fn sysv_signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    // SAFETY: forwarded contract.
    unsafe { signal_with(sig, handler, SignalFn::Sysv) }
}

/// # Safety
/// As glibc's `__sysv_signal`.
#[no_mangle]
pub unsafe extern "C" fn __sysv_signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    // SAFETY: forwarded contract.
    unsafe { signal_with(sig, handler, SignalFn::Sysv) }
}

/// # Safety
/// As glibc's `__sigaction` (an alias of `sigaction`).
#[no_mangle]
pub unsafe extern "C" fn __sigaction(sig: c_int, act: *const libc::sigaction, old: *mut libc::sigaction) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { sigaction(sig, act, old) }
}

/// As glibc's, through the agent's `sigaction`.
///
/// # Safety
/// As glibc's `siginterrupt`.
#[no_mangle]
pub unsafe extern "C" fn siginterrupt(sig: c_int, interrupt: c_int) -> c_int {
    if !active() {
        // SAFETY: forwarded unchanged.
        return unsafe { real!(siginterrupt: fn(c_int, c_int) -> c_int)(sig, interrupt) };
    }
    // SAFETY: zeroed sigaction is valid plain data.
    let mut a: libc::sigaction = unsafe { core::mem::zeroed() };
    // SAFETY: a query into a local (EINVAL for a signal out of range).
    if unsafe { sigaction(sig, core::ptr::null(), &mut a) } != 0 {
        return -1;
    }
    let bit = 1u64 << (sig - 1);
    if interrupt != 0 {
        INTERRUPTING.fetch_or(bit, Relaxed);
        a.sa_flags &= !libc::SA_RESTART;
    } else {
        INTERRUPTING.fetch_and(!bit, Relaxed);
        a.sa_flags |= libc::SA_RESTART;
    }
    // SAFETY: a is a valid local.
    if unsafe { sigaction(sig, &a, core::ptr::null_mut()) } != 0 {
        return -1;
    }
    0
}

/// As glibc's (System V's `sigset`, with `SIG_HOLD`), through the agent's
/// `sigaction` and `sigprocmask`.
///
/// # Safety
/// As glibc's `sigset`.
#[no_mangle]
pub unsafe extern "C" fn sigset(sig: c_int, disp: libc::sighandler_t) -> libc::sighandler_t {
    const SIG_HOLD: libc::sighandler_t = 2;
    if !active() {
        // SAFETY: forwarded unchanged.
        let h = unsafe { real!(sigset: fn(c_int, libc::sighandler_t) -> libc::sighandler_t)(sig, disp) };
        return handlers::program_handler(sig, h);
    }
    if !(1..=64).contains(&sig) {
        set_errno(libc::EINVAL);
        return libc::SIG_ERR;
    }
    // SAFETY: sigsets and sigactions are plain data; every pointer below
    // is to a local.
    unsafe {
        let mut set: libc::sigset_t = core::mem::zeroed();
        let mut oset: libc::sigset_t = core::mem::zeroed();
        let mut oact: libc::sigaction = core::mem::zeroed();
        libc::sigaddset(&mut set, sig);
        if disp == SIG_HOLD {
            if sigprocmask(libc::SIG_BLOCK, &set, &mut oset) != 0 {
                return libc::SIG_ERR;
            }
            if libc::sigismember(&oset, sig) == 1 {
                return SIG_HOLD;
            }
            if sigaction(sig, core::ptr::null(), &mut oact) != 0 {
                return libc::SIG_ERR;
            }
            return oact.sa_sigaction;
        }
        let mut act: libc::sigaction = core::mem::zeroed();
        act.sa_sigaction = disp;
        if sigaction(sig, &act, &mut oact) != 0 || sigprocmask(libc::SIG_UNBLOCK, &set, &mut oset) != 0 {
            return libc::SIG_ERR;
        }
        if libc::sigismember(&oset, sig) == 1 {
            SIG_HOLD
        } else {
            oact.sa_sigaction
        }
    }
}

/// # Safety
/// As glibc's `sigprocmask`.
#[no_mangle]
pub unsafe extern "C" fn sigprocmask(how: c_int, set: *const libc::sigset_t, old: *mut libc::sigset_t) -> c_int {
    let next = real!(sigprocmask: fn(c_int, *const libc::sigset_t, *mut libc::sigset_t) -> c_int);
    // SAFETY: forwarded per the contract.
    unsafe { set_mask(next, how, set, old) }
}

type MaskFn = unsafe extern "C" fn(c_int, *const libc::sigset_t, *mut libc::sigset_t) -> c_int;

/// sigprocmask and pthread_sigmask: the kernel gets the mask without the
/// agent's signals; the program's own blocking of the trigger is kept
/// virtually ([`vmask`]), reported back in `old`, and its held triggers are
/// delivered when it unblocks them.
///
/// # Safety
/// As glibc's `sigprocmask`.
unsafe fn set_mask(next: MaskFn, how: c_int, set: *const libc::sigset_t, old: *mut libc::sigset_t) -> c_int {
    if !active() {
        // SAFETY: forwarded unchanged.
        return unsafe { next(how, set, old) };
    }
    let was = vmask::blocked();
    // SAFETY: set is null or valid per the contract.
    let now = unsafe { vmask::after(how, set) };
    // SAFETY: set is null or valid per the contract.
    let s = if how == libc::SIG_UNBLOCK { None } else { unsafe { stripped(set) } };
    // SAFETY: forwarded with a valid (possibly local) set.
    let r = unsafe { next(how, ptr_or_null(&s, set), old) };
    if r != 0 {
        return r;
    }
    if was && !old.is_null() {
        // SAFETY: old is writable per the contract; signal t is in word 0.
        unsafe { *(old as *mut u64) |= 1u64 << (TRIGGER.load(Relaxed) - 1) };
    }
    vmask::set_blocked(now);
    if was && !now && vmask::pending() {
        vmask::deliver_pending();
    }
    0
}

/// # Safety
/// As glibc's `pthread_sigmask`.
#[no_mangle]
pub unsafe extern "C" fn pthread_sigmask(how: c_int, set: *const libc::sigset_t, old: *mut libc::sigset_t) -> c_int {
    let next = real!(pthread_sigmask: fn(c_int, *const libc::sigset_t, *mut libc::sigset_t) -> c_int);
    // SAFETY: forwarded per the contract.
    unsafe { set_mask(next, how, set, old) }
}

/// Runs `call`, one of the functions that install `mask` for their
/// duration (sigsuspend, ppoll, pselect, epoll_pwait, epoll_pwait2), with
/// the agent's signals taken out of `mask`, and the program's virtual
/// blocking of the trigger ([`vmask`]) switched to what `mask` says while
/// it runs. `None` (without calling): `mask` unblocks a trigger the
/// program holds pending, now delivered to its handler; the caller fails
/// with EINTR, as the kernel does when a signal is delivered on entry.
///
/// # Safety
/// `mask` must be null or point to a valid sigset_t.
pub(crate) unsafe fn with_call_mask<R>(
    mask: *const libc::sigset_t,
    call: impl FnOnce(*const libc::sigset_t) -> R,
) -> Option<R> {
    if mask.is_null() || !active() {
        return Some(call(mask));
    }
    // SAFETY: mask is valid per the contract.
    let s = unsafe { stripped(mask) };
    let m = ptr_or_null(&s, mask);
    // SAFETY: as above.
    let during = unsafe { vmask::contains_trigger(mask) };
    let was = vmask::blocked();
    if was == during && (during || !vmask::pending()) {
        // Nothing to switch: the common case, without a syscall.
        return Some(call(m));
    }
    // The trigger is really blocked while the program's view is switched,
    // so that one sent meanwhile is delivered inside the call (which
    // unblocks it atomically) instead of being lost before it.
    let trigger = 1u64 << (TRIGGER.load(Relaxed) - 1);
    let mut real_old = 0u64;
    sys::sigprocmask(libc::SIG_BLOCK, Some(&trigger), Some(&mut real_old));
    vmask::set_blocked(during);
    let r = if !during && vmask::pending() {
        vmask::deliver_pending();
        None
    } else {
        Some(call(m))
    };
    vmask::set_blocked(was);
    sys::sigprocmask(libc::SIG_SETMASK, Some(&real_old), None);
    r
}

/// Waits again after an interruption by ckrun alone, with the same mask.
///
/// # Safety
/// As glibc's `sigsuspend`.
#[no_mangle]
pub unsafe extern "C" fn sigsuspend(set: *const libc::sigset_t) -> c_int {
    let next = real!(sigsuspend: fn(*const libc::sigset_t) -> c_int);
    if !active() {
        // SAFETY: forwarded unchanged.
        return unsafe { next(set) };
    }
    // SAFETY: set is valid per the contract; forwarded with a valid set.
    let r = unsafe { with_call_mask(set, |m| eintr::resuming(eintr::minus_one, |_| next(m))) };
    r.unwrap_or_else(|| {
        set_errno(libc::EINTR);
        -1
    })
}

/// # Safety
/// As glibc's `sigpending`.
#[no_mangle]
pub unsafe extern "C" fn sigpending(set: *mut libc::sigset_t) -> c_int {
    let next = real!(sigpending: fn(*mut libc::sigset_t) -> c_int);
    // SAFETY: set is writable per the contract.
    let r = unsafe { next(set) };
    if r == 0 && active() && vmask::pending() {
        // SAFETY: signal t lives in the first word of the set.
        unsafe { *(set as *mut u64) |= 1u64 << (TRIGGER.load(Relaxed) - 1) };
    }
    r
}

/// # Safety
/// As glibc's `sigwait`.
#[no_mangle]
pub unsafe extern "C" fn sigwait(set: *const libc::sigset_t, sig: *mut c_int) -> c_int {
    let next = real!(sigwait: fn(*const libc::sigset_t, *mut c_int) -> c_int);
    // SAFETY: set is valid per the contract.
    let s = unsafe { stripped(set) };
    // SAFETY: forwarded with a valid set.
    unsafe { next(ptr_or_null(&s, set), sig) }
}

/// # Safety
/// As glibc's `sigwaitinfo`.
#[no_mangle]
pub unsafe extern "C" fn sigwaitinfo(set: *const libc::sigset_t, info: *mut libc::siginfo_t) -> c_int {
    let next = real!(sigwaitinfo: fn(*const libc::sigset_t, *mut libc::siginfo_t) -> c_int);
    // SAFETY: set is valid per the contract.
    let s = unsafe { stripped(set) };
    let set = ptr_or_null(&s, set);
    if !active() {
        // SAFETY: forwarded with a valid set.
        return unsafe { next(set, info) };
    }
    // SAFETY: forwarded with a valid set; waits again after ckrun's signals.
    eintr::resuming(eintr::minus_one, |_| unsafe { next(set, info) })
}

/// # Safety
/// As glibc's `sigtimedwait`.
#[no_mangle]
pub unsafe extern "C" fn sigtimedwait(
    set: *const libc::sigset_t,
    info: *mut libc::siginfo_t,
    timeout: *const libc::timespec,
) -> c_int {
    let next = real!(sigtimedwait: fn(*const libc::sigset_t, *mut libc::siginfo_t, *const libc::timespec) -> c_int);
    // SAFETY: set is valid per the contract.
    let s = unsafe { stripped(set) };
    let set = ptr_or_null(&s, set);
    if !active() {
        // SAFETY: forwarded with a valid set.
        return unsafe { next(set, info, timeout) };
    }
    // SAFETY: timeout is null or valid per the contract.
    let d = unsafe { eintr::Deadline::from_timespec(timeout) };
    let mut left = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    eintr::resuming(eintr::minus_one, |again| {
        let t = match &d {
            Some(d) if again => {
                left = d.left_timespec();
                &left as *const libc::timespec
            }
            _ => timeout,
        };
        // SAFETY: forwarded with a valid set and timeout.
        unsafe { next(set, info, t) }
    })
}

/// # Safety
/// As glibc's `signalfd`.
#[no_mangle]
pub unsafe extern "C" fn signalfd(fd: c_int, set: *const libc::sigset_t, flags: c_int) -> c_int {
    let next = real!(signalfd: fn(c_int, *const libc::sigset_t, c_int) -> c_int);
    // SAFETY: set is valid per the contract.
    let s = unsafe { stripped(set) };
    // SAFETY: forwarded with a valid set.
    unsafe { next(fd, ptr_or_null(&s, set), flags) }
}

/// Signals the agent's own handlers never block: faults must stay fatal.
const SYNCHRONOUS: [c_int; 6] = [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE, libc::SIGTRAP, libc::SIGSYS];

type Handler = extern "C" fn(c_int, *mut libc::siginfo_t, *mut libc::c_void);

/// Installs one of the agent's handlers through glibc, which supplies the
/// `sa_restorer` trampoline the kernel needs on x86-64. The program's
/// previous disposition of `sig` becomes its virtual one.
pub fn install(sig: c_int, handler: Handler) -> bool {
    // SAFETY: zeroed sigaction is valid plain data.
    let mut sa: libc::sigaction = unsafe { core::mem::zeroed() };
    sa.sa_sigaction = handler as usize;
    sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    // SAFETY: sa.sa_mask is a local sigset.
    unsafe {
        libc::sigfillset(&mut sa.sa_mask);
        for s in SYNCHRONOUS {
            libc::sigdelset(&mut sa.sa_mask, s);
        }
    }
    // SAFETY: zeroed sigaction is valid plain data.
    let mut old: libc::sigaction = unsafe { core::mem::zeroed() };
    let next = real!(sigaction: fn(c_int, *const libc::sigaction, *mut libc::sigaction) -> c_int);
    // SAFETY: both pointers reference locals.
    let ok = unsafe { next(sig, &sa, &mut old) } == 0;
    if ok {
        with_virtual(|v| v[sig as usize] = old);
    }
    ok
}

/// Moves the trigger to `new` (after a restart with another `--signal`):
/// the old signal gets back the program's disposition, the new one becomes
/// the agent's. Runs in a handler: raw syscalls only. `ours` is the kernel
/// form of the agent's trigger handler (with glibc's restorer).
pub fn move_trigger(new: i32, ours: &sys::KSigaction) {
    let old = TRIGGER.load(Relaxed);
    if old == new || !(1..=64).contains(&new) || new == SUSPEND_SIGNAL {
        return;
    }
    // The program's disposition of `old` is in VIRTUAL; it only differs from
    // the kernel form in the mask width and field order, and in the
    // trampoline that runs the program's handlers.
    let mut v = virtual_of(old);
    handlers::wrap(old, &mut v);
    let back = sys::KSigaction {
        handler: v.sa_sigaction as u64,
        flags: v.sa_flags as u64 | sys::SA_RESTORER as u64,
        restorer: ours.restorer,
        // SAFETY: sa_mask's first word holds signals 1..64.
        mask: unsafe { *(&v.sa_mask as *const libc::sigset_t as *const u64) },
    };
    let mut prev = sys::KSigaction::default();
    sys::rt_sigaction(new, Some(ours), Some(&mut prev));
    sys::rt_sigaction(old, Some(&back), None);
    // SAFETY: we run in the leader's handler while every other thread is
    // parked, so nothing else touches VIRTUAL[new].
    unsafe {
        let slot = &mut (*VIRTUAL.get())[new as usize];
        slot.sa_sigaction = prev.handler as usize;
        slot.sa_flags = (prev.flags as c_int) & !sys::SA_RESTORER;
        *(&mut slot.sa_mask as *mut libc::sigset_t as *mut u64) = prev.mask;
        handlers::unwrap(new, slot);
    }
    TRIGGER.store(new, Relaxed);
}

/// Handler of the trigger signal.
pub(crate) extern "C" fn on_trigger(sig: c_int, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo; si_code at byte 8, si_pid at 16.
    let (code, sender): (i32, i32) = unsafe { (sys::siginfo_word(info, 8), sys::siginfo_word(info, 16)) };
    let from_user = code <= 0; // SI_USER, SI_QUEUE, SI_TKILL...
    if !from_user || !active() || crate::suspend::in_tree(sender) {
        // The program's own: the interruption is its own if its handler
        // runs, ckrun's if the signal waits (held) or does nothing.
        if vmask::hold(info) || !deliver_to_program(sig, info, uc) {
            eintr::ckrun_signal();
        }
        return;
    }
    eintr::ckrun_signal();
    crate::channel::send_msg::<u8>(ckrun_proto::kind::CHECKPOINT_REQUEST, &[]);
}

/// Runs the program's own disposition of a reserved signal, as the kernel
/// would have. Returns whether a handler of the program ran.
pub(crate) fn deliver_to_program(sig: c_int, info: *mut libc::siginfo_t, uc: *mut libc::c_void) -> bool {
    let act = virtual_of(sig);
    let h = act.sa_sigaction;
    if h == libc::SIG_IGN {
        return false;
    }
    // SAFETY: uc is the kernel's ucontext for this delivery.
    let interrupted = unsafe { *(&(*(uc as *mut libc::ucontext_t)).uc_sigmask as *const libc::sigset_t as *const u64) };
    if h == libc::SIG_DFL {
        // Take the default action for real: the kernel decides (terminate,
        // stop, ignore), then the agent's handler goes back.
        let mut ours = sys::KSigaction::default();
        let dfl = sys::KSigaction::default();
        sys::rt_sigaction(sig, Some(&dfl), Some(&mut ours));
        let unblock = 1u64 << (sig - 1);
        let mut saved = 0u64;
        sys::sigprocmask(libc::SIG_UNBLOCK, Some(&unblock), Some(&mut saved));
        sys::tgkill(sys::getpid(), sys::gettid(), sig);
        sys::sigprocmask(libc::SIG_SETMASK, Some(&saved), None);
        sys::rt_sigaction(sig, Some(&ours), None);
        return false;
    }
    // SAFETY: sa_mask's first word holds signals 1..64.
    let mut mask = interrupted | unsafe { *(&act.sa_mask as *const libc::sigset_t as *const u64) };
    if act.sa_flags & libc::SA_NODEFER == 0 {
        mask |= 1u64 << (sig - 1);
    }
    mask &= !reserved_mask();
    let mut saved = 0u64;
    sys::sigprocmask(libc::SIG_SETMASK, Some(&mask), Some(&mut saved));
    if act.sa_flags & libc::SA_RESETHAND != 0 {
        // SAFETY: a single aligned word store; a handler must not take VLOCK,
        // which the interrupted thread may hold.
        unsafe { core::ptr::write_volatile(&mut (*VIRTUAL.get())[sig as usize].sa_sigaction, libc::SIG_DFL) };
    }
    eintr::program_signal();
    if act.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the program registered h as a three-argument handler.
        let f: Handler = unsafe { core::mem::transmute::<usize, Handler>(h) };
        f(sig, info, uc);
    } else {
        // SAFETY: the program registered h as a one-argument handler.
        let f: extern "C" fn(c_int) = unsafe { core::mem::transmute::<usize, extern "C" fn(c_int)>(h) };
        f(sig);
    }
    sys::sigprocmask(libc::SIG_SETMASK, Some(&saved), None);
    true
}
