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
//! Memory the program marked `MADV_DONTFORK` (V8 marks its heap so, RDMA
//! libraries their buffers) is not in a forked child. The intermediate
//! finds such mappings by comparing the child with the program
//! ([`super::vmas`]); if there are any, it kills that child, clears the
//! flag (`MADV_DOFORK`), forks the snapshot again, and sets the flag
//! again at once, all while the program is stopped: the program never runs
//! without it, and each mapping gets exactly its own flag back (only the
//! mappings the first fork left out are touched). Why not copy those
//! mappings from the stopped program instead: the program would stay
//! stopped for the copy (~1 s per GiB read and compressed), where a
//! second fork costs the time the first one took (~25 ms per GiB of
//! memory in all); and the common case, no such memory, costs two reads of
//! /proc/PID/statm. Pages the program later writes are copied on write,
//! as for all its other memory (pinned pages, the reason some programs
//! use the flag, are copied for the child at the fork by the kernel, so
//! the program's DMA keeps going to its own pages). Mappings the kernel
//! refuses to make copyable (device memory) stay out of the snapshot; the
//! coordinator then fails the checkpoint naming them.
//!
//! Runs in the leader's signal handler and in the children: raw syscalls only.

use super::vmas;
use crate::state::RacyCell;
use crate::sys;
use ckrun_proto::{MemRange, MAX_DONTFORK};
use core::sync::atomic::Ordering::Relaxed;
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering::*};

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
/// The MADV_DONTFORK mappings the intermediate made copyable for the
/// snapshot (and marked again), [`NDONTFORK`] of them. Written by the
/// intermediate, read by the leader once it has reaped it.
static DONTFORK: RacyCell<[MemRange; MAX_DONTFORK]> = RacyCell::new([MemRange { start: 0, end: 0 }; MAX_DONTFORK]);
static NDONTFORK: AtomicU32 = AtomicU32::new(0);
/// Test hook (`CKRUN_TEST_FAIL=dontfork`, read at start-up): every
/// MADV_DOFORK is taken as refused, as the kernel refuses it for device
/// memory, so that the coordinator's check is seen to fail the checkpoint.
pub static REFUSE_DOFORK: AtomicBool = AtomicBool::new(false);

/// The MADV_DONTFORK mappings the last [`fork_snapshot`] put into the
/// snapshot. Only the leader calls it, after `fork_snapshot`.
pub fn dontfork() -> &'static [MemRange] {
    let n = (NDONTFORK.load(Acquire) as usize).min(MAX_DONTFORK);
    // SAFETY: the intermediate that wrote the first n entries has exited
    // (Acquire pairs with its Release store of NDONTFORK); nothing writes
    // them until the next checkpoint's fork_snapshot.
    unsafe { &(&*DONTFORK.get())[..n] }
}

/// Forks the snapshot; returns its pid (a child of ckrun by then), or a
/// negative errno.
pub fn fork_snapshot() -> i32 {
    SNAPSHOT.store(-(libc::ECHILD), Relaxed);
    NDONTFORK.store(0, Relaxed);
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

/// The intermediate: forks the snapshot (twice when the first one lacks
/// memory marked MADV_DONTFORK, see the module's doc), records its pid
/// and the mappings it made copyable, exits.
extern "C" fn intermediate(_: u64) -> ! {
    // No signal handler of the program may run here (it shares the
    // program's memory, not its thread): a dying first snapshot's SIGCHLD
    // stays pending until this process exits.
    sys::sigprocmask(libc::SIG_SETMASK, Some(&!0u64), None);
    let mut r = fork_one();
    if r > 0 && make_copyable(r as i32) {
        // SAFETY: kill and wait4 of our own child, no status wanted.
        unsafe {
            sys::syscall2(sys::SYS_kill, r as u64, libc::SIGKILL as u64);
            sys::syscall4(libc::SYS_wait4, r as u64, 0, 0, 0);
        }
        r = fork_one();
        mark_again();
        if r < 0 {
            NDONTFORK.store(0, Release);
        }
    }
    SNAPSHOT.store(r as i32, Release);
    // SAFETY: ends this process (not the leader's: no CLONE_THREAD).
    unsafe { sys::syscall1(libc::SYS_exit, 0) };
    loop {
        core::hint::spin_loop();
    }
}

/// Forks a snapshot; returns its pid or a negative errno. A snapshot of
/// a process that attached SysV shared memory detaches it before the
/// program can run again (see `crate::sysv`): the intermediate waits for
/// its word on a pipe (or its end).
fn fork_one() -> i64 {
    let sysv = crate::sysv::attached();
    let mut pipe = [-1i32; 2];
    // SAFETY: pipe2 writes two fds into `pipe`.
    if sysv && unsafe { sys::syscall2(libc::SYS_pipe2, pipe.as_mut_ptr() as u64, libc::O_CLOEXEC as u64) } != 0 {
        pipe = [-1, -1];
    }
    // SAFETY: a fork-like clone; the child continues here on a private copy
    // of this stack.
    let r = unsafe { sys::syscall6(sys::SYS_clone, libc::SIGCHLD as u64, 0, 0, 0, 0, 0) };
    if r == 0 {
        if sysv {
            // SAFETY: the snapshot's own copy of the buffer: its memory is
            // private to it, whatever the intermediate does with its own.
            crate::sysv::detach_all(unsafe { &mut *OURS_MAPS.get() });
            if pipe[1] >= 0 {
                sys::write(pipe[1], b"d");
            }
        }
        snapshot_main();
    }
    if pipe[0] >= 0 {
        sys::close(pipe[1]);
        if r > 0 {
            let mut b = [0u8; 1];
            while sys::read(pipe[0], &mut b) == -(libc::EINTR as i64) {}
        }
        sys::close(pipe[0]);
    }
    r
}

/// The snapshot's maps read buffer (its own copy after the fork).
static OURS_MAPS: RacyCell<[u8; 4096]> = RacyCell::new([0; 4096]);

/// Clears MADV_DONTFORK on each mapping the fork of `child` left out (the
/// intermediate shares the program's memory: this is the program's own
/// mappings' flag), recording those it could clear. Returns whether there
/// were any.
fn make_copyable(child: i32) -> bool {
    // SAFETY: only the intermediate writes DONTFORK (see there).
    let list = unsafe { &mut *DONTFORK.get() };
    let mut n = 0usize;
    // Listed first, changed after: clearing the flag may merge a mapping
    // with its neighbours, which must not happen while maps is read.
    vmas::for_each_left_out(child, |start, end| {
        if n < MAX_DONTFORK {
            list[n] = MemRange { start, end };
            n += 1;
        }
    });
    let mut kept = 0;
    for i in 0..n {
        let r = list[i];
        // SAFETY: madvise changes a flag of mappings of this process; it
        // reads no memory of ours.
        let rc = unsafe { sys::syscall3(sys::SYS_madvise, r.start, r.end - r.start, libc::MADV_DOFORK as u64) };
        if rc == 0 && REFUSE_DOFORK.load(Relaxed) {
            // SAFETY: as above: the flag is set again at once.
            unsafe { sys::syscall3(sys::SYS_madvise, r.start, r.end - r.start, libc::MADV_DONTFORK as u64) };
        } else if rc == 0 {
            list[kept] = r;
            kept += 1;
        }
    }
    NDONTFORK.store(kept as u32, Release);
    kept > 0
}

/// Sets MADV_DONTFORK again on every mapping [`make_copyable`] cleared it
/// on (exactly those: after a merge, this splits them out again).
fn mark_again() {
    // SAFETY: only the intermediate writes DONTFORK; it wrote these.
    let list = unsafe { &*DONTFORK.get() };
    for r in &list[..(NDONTFORK.load(Relaxed) as usize).min(MAX_DONTFORK)] {
        // SAFETY: as in make_copyable. It cannot fail for want of memory:
        // it restores the split the mapping had a moment ago.
        unsafe { sys::syscall3(sys::SYS_madvise, r.start, r.end - r.start, libc::MADV_DONTFORK as u64) };
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
