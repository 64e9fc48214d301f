//! Process-level calls: clone3 with a chosen PID, kcmp, queued signals.

use std::io;

/// `struct clone_args` of clone3(2).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CloneArgs {
    pub flags: u64,
    pub pidfd: u64,
    pub child_tid: u64,
    pub parent_tid: u64,
    pub exit_signal: u64,
    pub stack: u64,
    pub stack_size: u64,
    pub tls: u64,
    pub set_tid: u64,
    pub set_tid_size: u64,
    pub cgroup: u64,
}

/// Forks a child whose PID is `pid` (EEXIST if taken, EPERM without the
/// privilege) and runs `child` in it, which must not return. `child` runs
/// in a copy of this process right after the clone, so it may only do
/// async-signal-safe work (it should exec at once).
pub fn fork_with_pid(pid: i32, child: impl FnOnce()) -> io::Result<i32> {
    let want = pid;
    let args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        set_tid: &want as *const i32 as u64,
        set_tid_size: 1,
        ..Default::default()
    };
    // SAFETY: a fork-like clone3 (no CLONE_VM): the child gets a private
    // copy of memory and continues on a copy of this stack, as after fork.
    let r = unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>()) };
    match r {
        0 => {
            child();
            // SAFETY: leaving the child without running the parent's exit code.
            unsafe { libc::_exit(127) }
        }
        r if r < 0 => Err(io::Error::last_os_error()),
        r => Ok(r as i32),
    }
}

const KCMP_FILE: i32 = 0;

/// Whether fd `a` of `pid_a` and fd `b` of `pid_b` are one open file
/// description (dup, dup2, inherited across fork).
pub fn same_file_description(pid_a: i32, a: i32, pid_b: i32, b: i32) -> io::Result<bool> {
    // SAFETY: kcmp takes integers only.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid_a, pid_b, KCMP_FILE, a, b) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r == 0)
    }
}

/// Sends `sig` with `si_value = value` (SI_QUEUE) to thread `tid` of
/// process `pid` (rt_tgsigqueueinfo).
pub fn tgsigqueue(pid: i32, tid: i32, sig: i32, value: u64) -> io::Result<()> {
    // SAFETY: siginfo_t is plain data; zeroed is a valid initial state.
    let mut si: libc::siginfo_t = unsafe { std::mem::zeroed() };
    si.si_signo = sig;
    si.si_code = libc::SI_QUEUE;
    let words = &mut si as *mut libc::siginfo_t as *mut u32;
    // SAFETY: x86-64 siginfo layout for SI_QUEUE: si_pid at byte 16,
    // si_uid at 20, si_value at 24, within the 128 bytes of siginfo_t; the
    // kernel copies it.
    let r = unsafe {
        *words.add(4) = libc::getpid() as u32;
        *words.add(5) = libc::getuid();
        *(words.add(6) as *mut u64) = value;
        libc::syscall(libc::SYS_rt_tgsigqueueinfo, pid, tid, sig, &si as *const libc::siginfo_t)
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Sends `sig` to process `pid` with `si_value = value` (SI_QUEUE).
pub fn sigqueue(pid: i32, sig: i32, value: u64) -> io::Result<()> {
    // SAFETY: sigqueue copies the value; the union's pointer member is
    // 8 bytes wide on x86-64.
    let r = unsafe { libc::sigqueue(pid, sig, std::mem::transmute::<u64, libc::sigval>(value)) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Orphaned descendants (daemons) are re-parented to ckrun, not to init,
/// so they stay in the checkpointed tree.
pub fn become_subreaper() {
    // SAFETY: integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
}
