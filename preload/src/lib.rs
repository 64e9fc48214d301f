//! `libckpt.so`, ckrun's in-process agent.
//!
//! ckrun injects it with `LD_PRELOAD` into every process of the tree it
//! checkpoints. At load time it connects to the coordinator named by
//! `CKRUN_SOCKET` and installs two signal handlers: the checkpoint trigger
//! ([`signals`]) and the suspend signal ([`suspend`]). Nothing else runs
//! until a checkpoint: no thread, no timer, no syscall on the program's
//! hot paths. Without `CKRUN_SOCKET` it stays inert and every wrapper
//! passes straight through.
//!
//! Modules by role:
//! - [`sys`]: raw syscalls (the only way code in handlers talks to the kernel);
//! - [`signals`]: interposed signal functions and the trigger handler;
//! - [`vmask`]: the program's own blocking of the trigger, kept virtually;
//! - [`eintr`]: blocking calls a checkpoint or a restart interrupted are
//!   resumed with the time they had left (poll, select, epoll, SysV IPC,
//!   sleeps, pause, socket timeouts...), and the program's handlers run
//!   behind a trampoline that tells their EINTRs from ckrun's;
//! - [`suspend`]: parking threads, the fork point, restart fix-ups;
//! - [`tree`]: forked children and exec'd programs stay under the agent;
//! - [`created`]: files the program creates are reported, for the
//!   coordinator's journal (a restart sets aside what the killed run made
//!   after the checkpoint);
//! - [`sysv`]: a snapshot detaches the program's SysV shared memory; the
//!   process's semaphore undo adjustments are read at a checkpoint;
//! - [`channel`]: messages to and from the coordinator.

pub mod channel;
pub mod created;
pub mod eintr;
mod real;
pub mod signals;
pub mod state;
pub mod suspend;
pub mod sys;
pub mod sysv;
pub mod tracker;
pub mod tree;
pub mod vmask;

use ckrun_proto::{
    kind, Hello, AGENT_FD_MIN, DEFAULT_TRIGGER, ENV_SOCKET, ENV_TRIGGER, PROTOCOL_VERSION, SUSPEND_SIGNAL,
};
use core::sync::atomic::Ordering::Relaxed;
use state::{CTL_FD, RSEQ_OFFSET, RSEQ_SIZE, TRIGGER};

#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = agent_init;

extern "C" fn agent_init() {
    let Some(name) = getenv(ENV_SOCKET) else {
        return;
    };
    let trigger = getenv(ENV_TRIGGER)
        .and_then(|s| core::str::from_utf8(s).ok()?.parse::<i32>().ok())
        .filter(|s| (1..=64).contains(s) && *s != SUSPEND_SIGNAL)
        .unwrap_or(DEFAULT_TRIGGER);
    let coordinator = getenv(ckrun_proto::ENV_COORDINATOR)
        .and_then(|s| core::str::from_utf8(s).ok()?.parse::<i32>().ok())
        .unwrap_or(0);
    state::COORDINATOR.store(coordinator, Relaxed);
    if getenv("CKRUN_TEST_FAIL") == Some(b"dontfork") {
        suspend::REFUSE_DOFORK.store(true, Relaxed);
    }
    let Some(fd) = connect_at(name, -1) else {
        warn(b"ckrun agent: cannot reach the coordinator; running without checkpoints\n");
        return;
    };
    read_rseq_layout();
    TRIGGER.store(trigger, Relaxed);
    CTL_FD.store(fd, Relaxed);
    let ok = signals::install(SUSPEND_SIGNAL, suspend::on_suspend) && signals::install(trigger, signals::on_trigger);
    if !ok {
        warn(b"ckrun agent: cannot install signal handlers; running without checkpoints\n");
        CTL_FD.store(-1, Relaxed);
        sys::close(fd);
        return;
    }
    // Before the program's handlers run: they go behind the trampoline.
    eintr::init();
    tree::remember_env(name, trigger, coordinator);
    // A suspend signal pending from before an exec belongs to a checkpoint
    // of the program that exec'd (which the coordinator abandons): drop it.
    discard_pending(SUSPEND_SIGNAL);
    // Whatever mask the program inherited, the agent's signals get through.
    let reserved = state::reserved_mask();
    sys::sigprocmask(libc::SIG_UNBLOCK, Some(&reserved), None);
    hello();
}

/// Tells the coordinator who we are.
pub(crate) fn hello() {
    let fd = CTL_FD.load(Relaxed);
    if fd < 0 {
        return;
    }
    let hello = Hello { version: PROTOCOL_VERSION, pid: sys::getpid(), agent_fd: fd, trigger: TRIGGER.load(Relaxed) };
    channel::send_msg(kind::HELLO, &[hello]);
}

fn discard_pending(sig: i32) {
    // glibc's own sigtimedwait: the agent's wrapper would leave `sig` out.
    let next = real::real!(sigtimedwait: fn(*const libc::sigset_t, *mut libc::siginfo_t, *const libc::timespec) -> i32);
    // SAFETY: sigset operations on locals; a zero timeout never blocks.
    unsafe {
        let mut pending: libc::sigset_t = core::mem::zeroed();
        libc::sigpending(&mut pending);
        if libc::sigismember(&pending, sig) == 1 {
            let mut set: libc::sigset_t = core::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            next(&set, core::ptr::null_mut(), &zero);
        }
    }
}

fn getenv(name: &str) -> Option<&'static [u8]> {
    let mut buf = [0u8; 64];
    buf[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: buf is NUL-terminated; the returned string lives in the
    // environment, which nobody frees while constructors run.
    let p = unsafe { libc::getenv(buf.as_ptr().cast()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: getenv returns a NUL-terminated string.
    Some(unsafe { core::ffi::CStr::from_ptr(p) }.to_bytes())
}

/// Connects to the coordinator's abstract socket and moves the connection
/// to a high fd, close-on-exec (a program exec'd from here reconnects):
/// onto `at` if it is an fd number already (after fork), else the first
/// free one from AGENT_FD_MIN. Plain syscalls only: it also runs in a child
/// right after fork.
pub(crate) fn connect_at(name: &[u8], at: i32) -> Option<i32> {
    // SAFETY: plain socket calls on locals.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let mut addr: libc::sockaddr_un = core::mem::zeroed();
        addr.sun_family = libc::AF_UNIX as u16;
        if name.len() + 1 > addr.sun_path.len() {
            libc::close(fd);
            return None;
        }
        for (i, &b) in name.iter().enumerate() {
            addr.sun_path[i + 1] = b as libc::c_char; // abstract: leading NUL
        }
        let len = (core::mem::size_of::<libc::sa_family_t>() + 1 + name.len()) as libc::socklen_t;
        if libc::connect(fd, &addr as *const _ as *const libc::sockaddr, len) != 0 || !is_coordinator(fd) {
            libc::close(fd);
            return None;
        }
        if at >= 0 {
            let r = libc::dup3(fd, at, libc::O_CLOEXEC);
            libc::close(fd);
            return (r >= 0).then_some(at);
        }
        let mut lim: libc::rlimit = core::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        let floor = (AGENT_FD_MIN as u64).min(lim.rlim_cur.saturating_sub(16)) as i32;
        let high = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, floor.max(3));
        libc::close(fd);
        (high >= 0).then_some(high)
    }
}

/// Whether the process listening at the other end of `fd` is the
/// coordinator ckrun said it is (the kernel's word, SO_PEERCRED): anyone
/// may bind an abstract name, and the agent must not take orders from a
/// stranger who took the coordinator's after it died.
fn is_coordinator(fd: i32) -> bool {
    let want = state::COORDINATOR.load(Relaxed);
    if want <= 0 {
        return true;
    }
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = core::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`.
    let r = unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEERCRED, (&mut cred as *mut libc::ucred).cast(), &mut len)
    };
    r == 0 && cred.pid == want
}

fn read_rseq_layout() {
    // SAFETY: dlsym with NUL-terminated names; the symbols, when glibc has
    // them (2.35+), are a ptrdiff_t and an unsigned int.
    unsafe {
        let off = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_offset".as_ptr());
        let size = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr());
        if !off.is_null() && !size.is_null() {
            RSEQ_OFFSET.store(*(off as *const isize) as i64, Relaxed);
            RSEQ_SIZE.store(*(size as *const u32), Relaxed);
        }
    }
}

fn warn(msg: &[u8]) {
    sys::write(2, msg);
}
