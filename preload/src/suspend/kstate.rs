//! Kernel state that memory does not hold, captured by the agent at a
//! checkpoint and put back by the agent itself after a restart. One
//! capture/restore pair per kind: per thread (TLS bases, robust futex list,
//! clear-child-tid address, rseq registration, name) and per process
//! (signal dispositions, interval timers, program break).
//!
//! Everything here runs inside signal handlers: raw syscalls only.

use crate::state::{RacyCell, RSEQ_OFFSET, RSEQ_SIZE};
use crate::sys::{self, KSigaction};
use ckrun_proto::{ThreadRecord, THREAD_RSEQ};
use core::sync::atomic::Ordering::Relaxed;

const PR_GET_TID_ADDRESS: u64 = 40;
const RSEQ_SIG: u32 = 0x5305_3053;
/// Length glibc registers (sizeof its rseq area), not `__rseq_size`.
const RSEQ_LEN: u32 = 32;
const RSEQ_FLAG_UNREGISTER: u64 = 1;

// ---- per thread -------------------------------------------------------

/// Fills `rec` for the calling thread (all but its resume context).
pub fn capture_thread(rec: &mut ThreadRecord) {
    *rec = ThreadRecord { tid: sys::gettid(), ..Default::default() };
    rec.fs_base = sys::arch_get(sys::ARCH_GET_FS);
    rec.gs_base = sys::arch_get(sys::ARCH_GET_GS);
    // SAFETY: get_robust_list(0, ...) writes one pointer and one length.
    unsafe {
        sys::syscall3(
            sys::SYS_get_robust_list,
            0,
            &mut rec.robust_head as *mut u64 as u64,
            &mut rec.robust_len as *mut u64 as u64,
        )
    };
    // SAFETY: PR_GET_TID_ADDRESS writes one pointer.
    unsafe { sys::syscall2(sys::SYS_prctl, PR_GET_TID_ADDRESS, &mut rec.clear_child_tid as *mut u64 as u64) };
    // SAFETY: PR_GET_NAME writes at most 16 bytes.
    unsafe { sys::syscall2(sys::SYS_prctl, libc::PR_GET_NAME as u64, rec.comm.as_mut_ptr() as u64) };
    capture_rseq(rec);
}

/// Finds whether glibc's rseq area of this thread is registered. The kernel
/// has no getter for a thread's own registration, but registering the same
/// area again answers EBUSY exactly when it is; if it was not, the probe
/// registered it and is undone at once.
fn capture_rseq(rec: &mut ThreadRecord) {
    if RSEQ_SIZE.load(Relaxed) == 0 || rec.fs_base == 0 {
        return;
    }
    let area = rec.fs_base.wrapping_add(RSEQ_OFFSET.load(Relaxed) as u64);
    // SAFETY: area lies in this thread's TLS block (glibc's layout); the
    // kernel only validates and records it.
    let r = unsafe { sys::syscall4(sys::SYS_rseq, area, RSEQ_LEN as u64, 0, RSEQ_SIG as u64) };
    if r == -(libc::EBUSY as i64) {
        rec.flags |= THREAD_RSEQ;
        rec.rseq_area = area;
        rec.rseq_len = RSEQ_LEN;
        rec.rseq_sig = RSEQ_SIG;
    } else if r == 0 {
        // SAFETY: undoes the registration just made, same arguments.
        unsafe { sys::syscall4(sys::SYS_rseq, area, RSEQ_LEN as u64, RSEQ_FLAG_UNREGISTER, RSEQ_SIG as u64) };
    }
}

/// Puts back the calling thread's kernel state after a restart. The fs base
/// was already set by the restorer (TLS must work before any Rust runs).
pub fn restore_thread(rec: &ThreadRecord) {
    // SAFETY: each call takes the values the same thread had at the
    // checkpoint, pointing into memory restored at the same addresses.
    unsafe {
        sys::syscall1(sys::SYS_set_tid_address, rec.clear_child_tid);
        if rec.robust_head != 0 {
            sys::syscall2(sys::SYS_set_robust_list, rec.robust_head, rec.robust_len);
        }
        if rec.flags & THREAD_RSEQ != 0 {
            sys::syscall4(sys::SYS_rseq, rec.rseq_area, rec.rseq_len as u64, 0, rec.rseq_sig as u64);
        }
        sys::syscall2(sys::SYS_prctl, libc::PR_SET_NAME as u64, rec.comm.as_ptr() as u64);
        if rec.gs_base != 0 {
            sys::syscall2(sys::SYS_arch_prctl, sys::ARCH_SET_GS, rec.gs_base);
        }
    }
}

/// The credentials a restored thread takes before the program resumes,
/// as the restorer's header carries them.
pub struct Creds {
    effective: u64,
    permitted: u64,
    inheritable: u64,
    bounding: u64,
    ambient: u64,
    securebits: u64,
    no_new_privs: bool,
    dumpable: u64,
}

impl Creds {
    /// The credentials in the restorer header at `header`, if it has them.
    pub fn from_restorer(header: u64) -> Option<Creds> {
        use ckrun_proto::restorer_header as rh;
        if header == 0 {
            return None;
        }
        // SAFETY: the restorer passes its header page, mapped and readable
        // until every thread has arrived; every offset is inside it.
        let word = |off: usize| unsafe { *((header + off as u64) as *const u64) };
        if word(rh::OFF_MAGIC) != rh::MAGIC || word(rh::OFF_CREDS) == 0 {
            return None;
        }
        Some(Creds {
            effective: word(rh::OFF_CAP_EFFECTIVE),
            permitted: word(rh::OFF_CAP_PERMITTED),
            inheritable: word(rh::OFF_CAP_INHERITABLE),
            bounding: word(rh::OFF_CAP_BOUNDING),
            ambient: word(rh::OFF_CAP_AMBIENT),
            securebits: word(rh::OFF_SECUREBITS),
            no_new_privs: word(rh::OFF_NO_NEW_PRIVS) != 0,
            dumpable: word(rh::OFF_DUMPABLE),
        })
    }

    /// Takes these credentials in the calling thread (credentials are per
    /// thread): the bounding set and securebits while CAP_SETPCAP is still
    /// there, then the capability sets, the ambient set, no_new_privs, and
    /// (`process_wide`, once) dumpable. Raw syscalls: it runs with the
    /// other threads parked.
    pub fn apply(&self, process_wide: bool) {
        let prctl = |a: i32, b: u64| {
            // SAFETY: prctl with integer arguments only.
            unsafe { sys::syscall6(sys::SYS_prctl, a as u64, b, 0, 0, 0, 0) }
        };
        for cap in 0..64u64 {
            if self.bounding & (1 << cap) == 0 {
                // EINVAL past the kernel's last capability: harmless.
                prctl(libc::PR_CAPBSET_DROP, cap);
            }
        }
        if prctl(libc::PR_GET_SECUREBITS, 0) as u64 != self.securebits {
            prctl(libc::PR_SET_SECUREBITS, self.securebits);
        }
        const VERSION_3: u32 = 0x2008_0522;
        let header = [VERSION_3, 0u32];
        let (lo, hi) = (|v: u64| v as u32, |v: u64| (v >> 32) as u32);
        let data = [
            lo(self.effective),
            lo(self.permitted),
            lo(self.inheritable),
            hi(self.effective),
            hi(self.permitted),
            hi(self.inheritable),
        ];
        // SAFETY: capset reads a version-3 header and two data structs, all
        // on this stack.
        unsafe { sys::syscall2(libc::SYS_capset, header.as_ptr() as u64, data.as_ptr() as u64) };
        // SAFETY: prctl with integer arguments only.
        unsafe {
            sys::syscall6(
                sys::SYS_prctl,
                libc::PR_CAP_AMBIENT as u64,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as u64,
                0,
                0,
                0,
                0,
            );
            for cap in (0..64u64).filter(|c| self.ambient & (1 << c) != 0) {
                sys::syscall6(
                    sys::SYS_prctl,
                    libc::PR_CAP_AMBIENT as u64,
                    libc::PR_CAP_AMBIENT_RAISE as u64,
                    cap,
                    0,
                    0,
                    0,
                );
            }
        }
        if self.no_new_privs {
            prctl(libc::PR_SET_NO_NEW_PRIVS, 1);
        }
        if process_wide {
            prctl(libc::PR_SET_DUMPABLE, self.dumpable);
        }
    }
}

// ---- per process ------------------------------------------------------

struct ProcessState {
    actions: [KSigaction; 65],
    itimers: [libc::itimerval; 3],
    brk: u64,
}

/// Written by the leading thread while the others are parked; read by the
/// same role after a restart.
static PROCESS: RacyCell<ProcessState> = RacyCell::new(ProcessState {
    actions: [KSigaction { handler: 0, flags: 0, restorer: 0, mask: 0 }; 65],
    itimers: [libc::itimerval {
        it_interval: libc::timeval { tv_sec: 0, tv_usec: 0 },
        it_value: libc::timeval { tv_sec: 0, tv_usec: 0 },
    }; 3],
    brk: 0,
});

fn settable(sig: i32) -> bool {
    sig != libc::SIGKILL && sig != libc::SIGSTOP
}

/// Captures the process-wide state; returns the program break.
pub fn capture_process() -> u64 {
    // SAFETY: only the leading thread calls this, while the others are parked.
    let p = unsafe { &mut *PROCESS.get() };
    for sig in 1..=64 {
        if settable(sig) {
            sys::rt_sigaction(sig, None, Some(&mut p.actions[sig as usize]));
        }
    }
    for (which, t) in p.itimers.iter_mut().enumerate() {
        // SAFETY: getitimer writes one itimerval.
        unsafe { sys::syscall2(sys::SYS_getitimer, which as u64, t as *mut _ as u64) };
    }
    // SAFETY: brk(0) only queries.
    p.brk = unsafe { sys::syscall1(sys::SYS_brk, 0) } as u64;
    p.brk
}

/// Puts back the process-wide state after a restart (leader only).
pub fn restore_process() {
    // SAFETY: only the leading thread calls this, before releasing the others.
    let p = unsafe { &*PROCESS.get() };
    for sig in 1..=64 {
        if settable(sig) {
            sys::rt_sigaction(sig, Some(&p.actions[sig as usize]), None);
        }
    }
    for (which, t) in p.itimers.iter().enumerate() {
        let armed = t.it_value.tv_sec != 0 || t.it_value.tv_usec != 0;
        if armed {
            // SAFETY: setitimer reads one itimerval.
            unsafe { sys::syscall3(sys::SYS_setitimer, which as u64, t as *const _ as u64, 0) };
        }
    }
}

/// The kernel form of the agent's trigger handler as captured (for moving
/// the trigger to another signal after a restart).
pub fn captured_action(sig: i32) -> KSigaction {
    // SAFETY: read by the leader, which wrote it.
    unsafe { (*PROCESS.get()).actions[sig as usize] }
}
