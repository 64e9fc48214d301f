//! The copy-on-write snapshot child.
//!
//! It must not be the program's child: the program's `wait()` and SIGCHLD
//! would see it. So the leader starts a short-lived intermediate with
//! `CLONE_VM | CLONE_VFORK` (no signal to anyone when it ends, and the
//! leader reaps it with `__WCLONE`), the intermediate forks the snapshot
//! and exits, and the snapshot is re-parented to the nearest child
//! subreaper: ckrun. The program sees nothing, whichever process of the
//! tree it is.
//!
//! Runs in the leader's signal handler and in the children: raw syscalls only.

use crate::state::RacyCell;
use crate::sys;
use core::sync::atomic::Ordering::Relaxed;
use core::sync::atomic::{AtomicI32, Ordering::*};

core::arch::global_asm!(
    ".text",
    ".globl ckpt_clone_on_stack",
    ".hidden ckpt_clone_on_stack",
    ".type ckpt_clone_on_stack,@function",
    // long ckpt_clone_on_stack(flags, stack_top, fn, arg): the child runs
    // fn(arg) on the new stack and must never return.
    "ckpt_clone_on_stack:",
    "sub rsi, 16",
    "mov [rsi], rdx",
    "mov [rsi + 8], rcx",
    "mov eax, 56",
    "xor edx, edx",
    "xor r10d, r10d",
    "xor r8d, r8d",
    "syscall",
    "test rax, rax",
    "jnz 2f",
    "pop rax",
    "pop rdi",
    "and rsp, -16",
    "call rax",
    "ud2",
    "2:",
    "ret",
    ".size ckpt_clone_on_stack, . - ckpt_clone_on_stack",
);

extern "C" {
    fn ckpt_clone_on_stack(flags: u64, stack_top: u64, f: extern "C" fn(u64) -> !, arg: u64) -> i64;
}

/// The intermediate's stack (it shares the leader's memory; only one
/// checkpoint runs at a time).
static STACK: RacyCell<[u64; 8192]> = RacyCell::new([0; 8192]);
/// The snapshot's pid, written by the intermediate.
static SNAPSHOT: AtomicI32 = AtomicI32::new(0);

/// Forks the snapshot; returns its pid (a child of ckrun by then), or a
/// negative errno.
pub fn fork_snapshot() -> i32 {
    SNAPSHOT.store(-(libc::ECHILD), Relaxed);
    let top = STACK.get() as u64 + core::mem::size_of::<[u64; 8192]>() as u64;
    let flags = (libc::CLONE_VM | libc::CLONE_VFORK) as u64; // exit signal 0
                                                             // SAFETY: the child runs `intermediate` on STACK, which nothing else
                                                             // uses meanwhile (CLONE_VFORK holds this thread until the child exits).
    let mid = unsafe { ckpt_clone_on_stack(flags, top & !15, intermediate, 0) };
    if mid < 0 {
        return mid as i32;
    }
    // Reap the intermediate: once it is a zombie, its child has been
    // re-parented to ckrun.
    // SAFETY: wait4 on our own clone child, no status wanted.
    unsafe { sys::syscall4(libc::SYS_wait4, mid as u64, 0, libc::__WCLONE as u64, 0) };
    SNAPSHOT.load(Acquire)
}

/// The intermediate: forks the snapshot, records its pid, exits.
extern "C" fn intermediate(_: u64) -> ! {
    // SAFETY: a fork-like clone; the child continues here on a private copy
    // of this stack.
    let r = unsafe { sys::syscall6(sys::SYS_clone, libc::SIGCHLD as u64, 0, 0, 0, 0, 0) };
    if r == 0 {
        snapshot_main();
    }
    SNAPSHOT.store(r as i32, Release);
    // SAFETY: ends this process (not the leader's: no CLONE_THREAD).
    unsafe { sys::syscall1(libc::SYS_exit, 0) };
    loop {
        core::hint::spin_loop();
    }
}

/// The snapshot: holds still until the coordinator, done copying its
/// memory, kills it. Dies with the coordinator too.
fn snapshot_main() -> ! {
    let all = !0u64;
    sys::sigprocmask(libc::SIG_SETMASK, Some(&all), None);
    // The name tells ckrun this child of its is a snapshot, not a process
    // of the program (see `coordinator::tree`).
    // SAFETY: PR_SET_NAME reads a NUL-terminated name of at most 16 bytes.
    unsafe { sys::syscall2(sys::SYS_prctl, libc::PR_SET_NAME as u64, ckrun_proto::SNAPSHOT_NAME.as_ptr() as u64) };
    let coordinator = crate::state::COORDINATOR.load(Relaxed) as i64;
    // Wait until re-parented to ckrun (the intermediate is exiting, which
    // it always does at once, however long a loaded machine takes to run
    // it), so that the death signal is tied to ckrun. Inside a PID
    // namespace ckrun is PID 1.
    // SAFETY: getppid, sched_yield, nanosleep and prctl take integers or
    // point to a timespec on this stack.
    unsafe {
        let first = sys::syscall1(libc::SYS_getppid, 0);
        let mut parent = first;
        let nap = libc::timespec { tv_sec: 0, tv_nsec: 1_000_000 };
        let mut spins = 0u32;
        while parent == first {
            if spins < 1000 {
                sys::syscall1(libc::SYS_sched_yield, 0);
                spins += 1;
            } else {
                sys::syscall2(libc::SYS_nanosleep, &nap as *const _ as u64, 0);
            }
            parent = sys::syscall1(libc::SYS_getppid, 0);
        }
        sys::syscall2(sys::SYS_prctl, libc::PR_SET_PDEATHSIG as u64, libc::SIGKILL as u64);
        let now = sys::syscall1(libc::SYS_getppid, 0);
        // Not re-parented to ckrun: it died meanwhile; nobody will read us.
        if now != parent || (coordinator > 0 && now != coordinator) {
            sys::exit_group(0);
        }
        loop {
            sys::syscall1(sys::SYS_pause, 0);
        }
    }
}
