//! The program's signal handlers, each run behind the agent's trampoline
//! so that a wrapper knows the program's own signal interrupted its call.
//!
//! The kernel gets [`trampoline`] (always `SA_SIGINFO`, with the program's
//! other flags and mask: `SA_RESETHAND`, `SA_NODEFER`, `SA_ONSTACK`,
//! `SA_RESTART` keep their meaning); [`HANDLERS`] keeps the program's
//! handler and whether it takes one argument or three. The trampoline
//! bumps the thread's program-signal counter and calls it with the
//! kernel's own `siginfo` and `ucontext` (changes the handler makes to the
//! context take effect as usual). `SIG_DFL` and `SIG_IGN` go to the kernel
//! unchanged. What `sigaction` reports (and `signal` returns) is the
//! program's handler with its own flags, never the trampoline; glibc's own
//! save-and-restore of dispositions (`system`, `posix_spawn`) moves the
//! trampoline around, which still calls the right handler.
//!
//! Runs in signal handlers: atomics only.

use crate::state::{active, is_reserved};
use core::ffi::c_int;
use core::sync::atomic::{AtomicU64, Ordering::*};

/// The program's handler of each signal, with [`THREE_ARGS`] set for an
/// `SA_SIGINFO` one; 0 while none was installed. One word, so that a
/// handler always pairs with its own calling convention.
static HANDLERS: [AtomicU64; 65] = [const { AtomicU64::new(0) }; 65];

/// User-space addresses stay below 2^47: the top bit is free.
const THREE_ARGS: u64 = 1 << 63;

type Action = extern "C" fn(c_int, *mut libc::siginfo_t, *mut libc::c_void);
type Plain = extern "C" fn(c_int);

type SigactionFn = unsafe extern "C" fn(c_int, *const libc::sigaction, *mut libc::sigaction) -> c_int;

/// What the kernel runs for each of the program's handlers.
extern "C" fn trampoline(sig: c_int, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    super::program_signal();
    let entry = HANDLERS.get(sig as usize).map_or(0, |h| h.load(Acquire));
    let h = (entry & !THREE_ARGS) as usize;
    if h == libc::SIG_DFL || h == libc::SIG_IGN {
        return; // never installed so (see `install`)
    }
    if entry & THREE_ARGS != 0 {
        // SAFETY: the program installed h with SA_SIGINFO.
        let f = unsafe { core::mem::transmute::<usize, Action>(h) };
        f(sig, info, uc);
    } else {
        // SAFETY: the program installed h as a one-argument handler.
        let f = unsafe { core::mem::transmute::<usize, Plain>(h) };
        f(sig);
    }
}

/// The trampoline's address, as the kernel and `sigaction` see it.
fn tramp() -> usize {
    trampoline as Action as usize
}

fn is_handler(h: libc::sighandler_t) -> bool {
    h != libc::SIG_DFL && h != libc::SIG_IGN && h != tramp()
}

fn entry_of(act: &libc::sigaction) -> u64 {
    act.sa_sigaction as u64 | if act.sa_flags & libc::SA_SIGINFO != 0 { THREE_ARGS } else { 0 }
}

/// The program's view of a disposition the kernel reported: the
/// trampoline stands for `entry`, the handler it calls.
fn as_program_sees(old: &mut libc::sigaction, entry: u64) {
    if old.sa_sigaction != tramp() || entry == 0 {
        return;
    }
    old.sa_sigaction = (entry & !THREE_ARGS) as usize;
    if entry & THREE_ARGS == 0 {
        old.sa_flags &= !libc::SA_SIGINFO;
    }
}

/// Puts the program's handler in `act` behind the trampoline, recording it
/// for `sig` first (the kernel may call the trampoline as soon as it has
/// it). Returns what was recorded before, or None if `act` is no handler.
/// Atomics only: also runs in the leader's handler after a restart.
pub(crate) fn wrap(sig: c_int, act: &mut libc::sigaction) -> Option<u64> {
    if !(1..=64).contains(&sig) || !is_handler(act.sa_sigaction) {
        return None;
    }
    let before = HANDLERS[sig as usize].swap(entry_of(act), AcqRel);
    act.sa_sigaction = tramp();
    act.sa_flags |= libc::SA_SIGINFO;
    Some(before)
}

/// The program's view of `sig`'s disposition `act` as the kernel has it.
pub(crate) fn unwrap(sig: c_int, act: &mut libc::sigaction) {
    if (1..=64).contains(&sig) {
        as_program_sees(act, HANDLERS[sig as usize].load(Acquire));
    }
}

/// `sigaction` for a signal the agent does not reserve: `next` is glibc's.
/// `act` has already lost the reserved signals from its mask.
///
/// # Safety
/// As glibc's `sigaction`.
pub(crate) unsafe fn sigaction(
    next: SigactionFn,
    sig: c_int,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> c_int {
    if !(1..=64).contains(&sig) {
        // SAFETY: forwarded unchanged (the kernel says EINVAL).
        return unsafe { next(sig, act, old) };
    }
    let slot = &HANDLERS[sig as usize];
    let mut before = slot.load(Acquire);
    let r = if active() && !act.is_null() {
        // SAFETY: act is valid per the contract.
        let mut a = unsafe { *act };
        let entry = entry_of(&a);
        match wrap(sig, &mut a) {
            Some(prev) => {
                before = prev;
                // SAFETY: a is a valid local copy; old per the contract.
                let r = unsafe { next(sig, &a, old) };
                if r != 0 {
                    let _ = slot.compare_exchange(entry, prev, AcqRel, Relaxed);
                }
                r
            }
            // SAFETY: forwarded; SIG_DFL and SIG_IGN need no trampoline (the
            // program's last handler stays recorded, for a signal being
            // delivered to the trampoline meanwhile).
            None => unsafe { next(sig, act, old) },
        }
    } else {
        // SAFETY: forwarded unchanged.
        unsafe { next(sig, act, old) }
    };
    if r == 0 && !old.is_null() {
        // SAFETY: the call succeeded, so old is a written, writable sigaction.
        as_program_sees(unsafe { &mut *old }, before);
    }
    r
}

/// The handler that `signal()` and friends return for the disposition the
/// kernel reported.
pub(crate) fn program_handler(sig: c_int, h: libc::sighandler_t) -> libc::sighandler_t {
    if h != tramp() || !(1..=64).contains(&sig) {
        return h;
    }
    (HANDLERS[sig as usize].load(Acquire) & !THREE_ARGS) as usize
}

/// Wraps the handlers installed before the agent started (by constructors
/// of libraries initialised before it).
pub(crate) fn adopt_existing() {
    let next: SigactionFn =
        crate::real::real!(sigaction: fn(c_int, *const libc::sigaction, *mut libc::sigaction) -> c_int);
    for sig in 1..=64 {
        if is_reserved(sig) || sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: zeroed sigaction is valid plain data.
        let mut cur: libc::sigaction = unsafe { core::mem::zeroed() };
        // SAFETY: a query into a local.
        if unsafe { next(sig, core::ptr::null(), &mut cur) } != 0 || wrap(sig, &mut cur).is_none() {
            continue;
        }
        // SAFETY: cur is a valid local.
        unsafe { next(sig, &cur, core::ptr::null_mut()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    extern "C" fn plain_fn(_: c_int) {}

    fn plain() -> usize {
        plain_fn as Plain as usize
    }

    #[test]
    fn the_program_sees_its_own_handler_and_flags() {
        // SAFETY: zeroed sigaction is valid plain data.
        let mut k: libc::sigaction = unsafe { core::mem::zeroed() };
        k.sa_sigaction = tramp();
        k.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        let mut mine = k;
        mine.sa_sigaction = plain();
        mine.sa_flags = libc::SA_RESTART;
        let mut seen = k;
        as_program_sees(&mut seen, entry_of(&mine));
        assert_eq!((seen.sa_sigaction, seen.sa_flags), (plain(), libc::SA_RESTART));
        mine.sa_flags |= libc::SA_SIGINFO;
        let mut seen = k;
        as_program_sees(&mut seen, entry_of(&mine));
        assert_eq!(seen.sa_flags, libc::SA_SIGINFO | libc::SA_RESTART, "SA_SIGINFO was the program's");
        let mut dfl = k;
        dfl.sa_sigaction = libc::SIG_DFL;
        as_program_sees(&mut dfl, entry_of(&mine));
        assert_eq!(dfl.sa_sigaction, libc::SIG_DFL, "only the trampoline is replaced");
        assert!(!is_handler(libc::SIG_IGN) && !is_handler(tramp()) && is_handler(plain()));
    }
}
