//! Raw Linux system calls, for code that runs inside signal handlers or
//! while other threads are parked: no errno, no glibc locks, no allocation.
//! Every function returns the kernel's raw result (negative errno on error).

use core::arch::asm;

pub use libc::{
    SYS_arch_prctl, SYS_brk, SYS_clone, SYS_close, SYS_exit_group, SYS_futex, SYS_get_robust_list, SYS_getdents64,
    SYS_getitimer, SYS_getpid, SYS_gettid, SYS_kill, SYS_madvise, SYS_munmap, SYS_openat, SYS_pause, SYS_prctl,
    SYS_read, SYS_rseq, SYS_rt_sigaction, SYS_rt_sigprocmask, SYS_rt_tgsigqueueinfo, SYS_sendto, SYS_set_robust_list,
    SYS_set_tid_address, SYS_setitimer, SYS_tgkill, SYS_write,
};

/// # Safety
/// The caller must pass arguments valid for syscall `nr`: any pointer must
/// reference memory the kernel may read or write as that call specifies.
#[inline(always)]
pub unsafe fn syscall6(nr: i64, a0: u64, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> i64 {
    let ret: i64;
    // SAFETY: the syscall instruction clobbers only rcx and r11 (declared);
    // argument validity is the caller's contract.
    unsafe {
        asm!("syscall",
            inlateout("rax") nr => ret,
            in("rdi") a0, in("rsi") a1, in("rdx") a2,
            in("r10") a3, in("r8") a4, in("r9") a5,
            lateout("rcx") _, lateout("r11") _,
            options(nostack));
    }
    ret
}

/// # Safety
/// As for [`syscall6`].
#[inline(always)]
pub unsafe fn syscall4(nr: i64, a0: u64, a1: u64, a2: u64, a3: u64) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { syscall6(nr, a0, a1, a2, a3, 0, 0) }
}

/// # Safety
/// As for [`syscall6`].
#[inline(always)]
pub unsafe fn syscall3(nr: i64, a0: u64, a1: u64, a2: u64) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { syscall6(nr, a0, a1, a2, 0, 0, 0) }
}

/// # Safety
/// As for [`syscall6`].
#[inline(always)]
pub unsafe fn syscall2(nr: i64, a0: u64, a1: u64) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { syscall6(nr, a0, a1, 0, 0, 0, 0) }
}

/// # Safety
/// As for [`syscall6`].
#[inline(always)]
pub unsafe fn syscall1(nr: i64, a0: u64) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { syscall6(nr, a0, 0, 0, 0, 0, 0) }
}

pub fn getpid() -> i32 {
    // SAFETY: getpid takes no arguments.
    unsafe { syscall1(SYS_getpid, 0) as i32 }
}

pub fn gettid() -> i32 {
    // SAFETY: gettid takes no arguments.
    unsafe { syscall1(SYS_gettid, 0) as i32 }
}

pub fn write(fd: i32, buf: &[u8]) -> i64 {
    // SAFETY: buf is a valid readable slice of buf.len() bytes.
    unsafe { syscall3(SYS_write, fd as u64, buf.as_ptr() as u64, buf.len() as u64) }
}

pub fn read(fd: i32, buf: &mut [u8]) -> i64 {
    // SAFETY: buf is a valid writable slice of buf.len() bytes.
    unsafe { syscall3(SYS_read, fd as u64, buf.as_mut_ptr() as u64, buf.len() as u64) }
}

/// Sends one datagram; MSG_NOSIGNAL so a dead coordinator is an error, not a SIGPIPE.
pub fn send(fd: i32, buf: &[u8]) -> i64 {
    // SAFETY: buf is valid for reading; no address is passed.
    unsafe { syscall6(SYS_sendto, fd as u64, buf.as_ptr() as u64, buf.len() as u64, libc::MSG_NOSIGNAL as u64, 0, 0) }
}

pub fn close(fd: i32) -> i64 {
    // SAFETY: close takes an integer.
    unsafe { syscall1(SYS_close, fd as u64) }
}

/// Opens a NUL-terminated path.
pub fn open(path: &[u8], flags: i32) -> i64 {
    debug_assert_eq!(path.last(), Some(&0));
    // SAFETY: path is NUL-terminated (checked by callers' literals).
    unsafe { syscall4(SYS_openat, libc::AT_FDCWD as u64, path.as_ptr() as u64, flags as u64, 0) }
}

/// semctl(GETVAL): the value of semaphore `num` of set `id`.
pub fn sem_getval(id: i32, num: u32) -> i64 {
    // SAFETY: GETVAL takes integers only (the fourth argument is unused).
    unsafe { syscall4(libc::SYS_semctl, id as u64, num as u64, libc::GETVAL as u64, 0) }
}

/// semop(id, ops): `SemOp` has the layout of the kernel's `struct sembuf`.
pub fn semop(id: i32, ops: &[ckrun_proto::semadj::SemOp]) -> i64 {
    // SAFETY: the kernel reads ops.len() sembufs from the slice.
    unsafe { syscall3(libc::SYS_semop, id as u64, ops.as_ptr() as u64, ops.len() as u64) }
}

pub const FUTEX_WAIT_PRIVATE: u64 = (libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG) as u64;
pub const FUTEX_WAKE_PRIVATE: u64 = (libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG) as u64;

/// Sleeps while `*word == expected`, at most `timeout_ns` (0: forever).
pub fn futex_wait(word: &core::sync::atomic::AtomicU32, expected: u32, timeout_ns: u64) -> i64 {
    let ts =
        libc::timespec { tv_sec: (timeout_ns / 1_000_000_000) as i64, tv_nsec: (timeout_ns % 1_000_000_000) as i64 };
    let tsp = if timeout_ns == 0 { 0 } else { &ts as *const _ as u64 };
    // SAFETY: word is a live aligned u32; ts lives across the call.
    unsafe { syscall4(SYS_futex, word.as_ptr() as u64, FUTEX_WAIT_PRIVATE, expected as u64, tsp) }
}

pub fn futex_wake(word: &core::sync::atomic::AtomicU32) {
    // SAFETY: word is a live aligned u32.
    unsafe { syscall3(SYS_futex, word.as_ptr() as u64, FUTEX_WAKE_PRIVATE, i32::MAX as u64) };
}

/// The kernel's flag for "sa_restorer is set" (glibc always sets it).
pub const SA_RESTORER: i32 = 0x0400_0000;

/// A kernel `struct sigaction` (what rt_sigaction takes), not glibc's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KSigaction {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

pub fn rt_sigaction(sig: i32, new: Option<&KSigaction>, old: Option<&mut KSigaction>) -> i64 {
    let n = new.map_or(0, |p| p as *const _ as u64);
    let o = old.map_or(0, |p| p as *mut _ as u64);
    // SAFETY: both pointers are null or reference live KSigaction values;
    // the kernel sigset size on x86-64 is 8 bytes.
    unsafe { syscall4(SYS_rt_sigaction, sig as u64, n, o, 8) }
}

pub fn sigprocmask(how: i32, set: Option<&u64>, old: Option<&mut u64>) -> i64 {
    let n = set.map_or(0, |p| p as *const _ as u64);
    let o = old.map_or(0, |p| p as *mut _ as u64);
    // SAFETY: pointers are null or live u64 sigsets of the kernel's size.
    unsafe { syscall4(SYS_rt_sigprocmask, how as u64, n, o, 8) }
}

/// Sends `sig` to thread `tid` of process `tgid` with `si_value = value`.
pub fn tgsigqueue(tgid: i32, tid: i32, sig: i32, value: u64) -> i64 {
    // SAFETY: siginfo_t is plain data; zeroed is a valid initial state.
    let mut si: libc::siginfo_t = unsafe { core::mem::zeroed() };
    si.si_signo = sig;
    si.si_code = libc::SI_QUEUE;
    let words = &mut si as *mut libc::siginfo_t as *mut u32;
    // SAFETY: x86-64 siginfo layout for SI_QUEUE: si_pid at byte 16,
    // si_uid at 20, si_value at 24; siginfo_t is 128 bytes.
    unsafe {
        *words.add(4) = getpid() as u32;
        *words.add(5) = libc::getuid();
        *(words.add(6) as *mut u64) = value;
        syscall4(SYS_rt_tgsigqueueinfo, tgid as u64, tid as u64, sig as u64, &si as *const _ as u64)
    }
}

pub fn tgkill(tgid: i32, tid: i32, sig: i32) -> i64 {
    // SAFETY: integers only.
    unsafe { syscall3(SYS_tgkill, tgid as u64, tid as u64, sig as u64) }
}

pub fn exit_group(code: i32) -> ! {
    // SAFETY: exit_group does not return.
    unsafe {
        syscall1(SYS_exit_group, code as u64);
        // SAFETY: exit_group does not return.
        core::hint::unreachable_unchecked()
    }
}

pub const ARCH_SET_GS: u64 = 0x1001;
pub const ARCH_SET_FS: u64 = 0x1002;
pub const ARCH_GET_FS: u64 = 0x1003;
pub const ARCH_GET_GS: u64 = 0x1004;

pub fn arch_get(code: u64) -> u64 {
    let mut v: u64 = 0;
    // SAFETY: ARCH_GET_FS/GS write one u64 at the given address.
    unsafe { syscall2(SYS_arch_prctl, code, &mut v as *mut u64 as u64) };
    v
}

/// Reads a little-endian field `off` bytes into a siginfo.
///
/// # Safety
/// `info` must point to a kernel-provided siginfo (128 bytes).
pub unsafe fn siginfo_word<T: Copy>(info: *const libc::siginfo_t, off: usize) -> T {
    // SAFETY: caller guarantees a 128-byte siginfo; off + size_of::<T>() <= 128 at all call sites.
    unsafe { core::ptr::read_unaligned((info as *const u8).add(off) as *const T) }
}
