//! The agent's process-wide settings. Plain atomics, so that signal
//! handlers can read them without locks.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, Ordering::Relaxed};

/// fd of the connection to the coordinator; -1 while the agent is inert
/// (not started under ckrun, or the coordinator was unreachable).
pub static CTL_FD: AtomicI32 = AtomicI32::new(-1);
/// The checkpoint trigger signal (SIGUSR2 unless `--signal`).
pub static TRIGGER: AtomicI32 = AtomicI32::new(0);
/// ckrun's pid: the processes below it are the tree.
pub static COORDINATOR: AtomicI32 = AtomicI32::new(0);
/// glibc's `__rseq_offset` (from the thread pointer) and `__rseq_size`;
/// size 0 when glibc does not register rseq.
pub static RSEQ_OFFSET: AtomicI64 = AtomicI64::new(0);
pub static RSEQ_SIZE: AtomicU32 = AtomicU32::new(0);

pub fn active() -> bool {
    CTL_FD.load(Relaxed) >= 0
}

/// Kernel sigset bits (signal n is bit n-1) of the signals the agent owns.
pub fn reserved_mask() -> u64 {
    if !active() {
        return 0;
    }
    let t = TRIGGER.load(Relaxed);
    let mut m = 1u64 << (ckrun_proto::SUSPEND_SIGNAL - 1);
    if (1..=64).contains(&t) {
        m |= 1u64 << (t - 1);
    }
    m
}

pub fn is_reserved(sig: i32) -> bool {
    (1..=64).contains(&sig) && reserved_mask() & (1u64 << (sig - 1)) != 0
}

/// Static storage written only by the thread that owns the current phase
/// of a checkpoint (documented at each use), read after a happens-before
/// edge (a futex-protected atomic). Lets signal handlers keep state without
/// allocating.
pub struct RacyCell<T>(UnsafeCell<T>);

// SAFETY: every user documents the ownership protocol that serialises access.
unsafe impl<T> Sync for RacyCell<T> {}

impl<T> RacyCell<T> {
    pub const fn new(v: T) -> Self {
        RacyCell(UnsafeCell::new(v))
    }
    pub fn get(&self) -> *mut T {
        self.0.get()
    }
}
