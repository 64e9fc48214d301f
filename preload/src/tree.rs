//! Keeping every process of the tree under the agent: a forked child gets
//! its own connection to the coordinator (`pthread_atfork`), and a program
//! exec'd from here gets the agent again even if it was given an
//! environment without it (the exec wrappers put `LD_PRELOAD` and the
//! `CKRUN_*` variables back).

use crate::real::real;
use crate::state::{active, RacyCell, CTL_FD};
use core::ffi::{c_char, c_int};
use core::sync::atomic::Ordering::Relaxed;

/// The environment entries every process of the tree must have, NUL
/// terminated, written once at start-up.
struct AgentEnv {
    preload: [u8; 4096],
    socket: [u8; 256],
    trigger: [u8; 64],
    coordinator: [u8; 64],
    lib: [u8; 4096],
}

static ENV: RacyCell<AgentEnv> = RacyCell::new(AgentEnv {
    preload: [0; 4096],
    socket: [0; 256],
    trigger: [0; 64],
    coordinator: [0; 64],
    lib: [0; 4096],
});

fn copy_z(dst: &mut [u8], parts: &[&[u8]]) -> bool {
    let mut n = 0;
    for p in parts {
        if n + p.len() + 1 > dst.len() {
            return false;
        }
        dst[n..n + p.len()].copy_from_slice(p);
        n += p.len();
    }
    dst[n] = 0;
    true
}

/// Records what exec wrappers must put back, and starts reconnecting
/// forked children. Called once from the constructor, before the program
/// runs.
pub fn remember_env(socket_name: &[u8], trigger: i32, coordinator: i32) {
    // SAFETY: the constructor runs before any other thread of the program.
    let e = unsafe { &mut *ENV.get() };
    let lib = own_path();
    copy_z(&mut e.lib, &[lib]);
    copy_z(&mut e.preload, &[b"LD_PRELOAD=", lib]);
    set_env(socket_name, trigger, coordinator);
    // SAFETY: registering plain extern "C" functions.
    unsafe { libc::pthread_atfork(None, None, Some(after_fork_child)) };
}

/// Updates the coordinator's socket, trigger and pid that exec'd programs
/// get (at start-up, and after a restart, from the leading thread while
/// the others are parked: no allocation, no locks).
pub fn set_env(socket_name: &[u8], trigger: i32, coordinator: i32) {
    // SAFETY: see the callers: no other thread of the program runs.
    let e = unsafe { &mut *ENV.get() };
    copy_z(&mut e.socket, &[ckrun_proto::ENV_SOCKET.as_bytes(), b"=", socket_name]);
    let mut num = [0u8; 12];
    let t = fmt_i32(trigger, &mut num);
    copy_z(&mut e.trigger, &[ckrun_proto::ENV_TRIGGER.as_bytes(), b"=", t]);
    let c = fmt_i32(coordinator, &mut num);
    copy_z(&mut e.coordinator, &[ckrun_proto::ENV_COORDINATOR.as_bytes(), b"=", c]);
}

fn fmt_i32(v: i32, out: &mut [u8; 12]) -> &[u8] {
    let n = crate::suspend::format_decimal(v.unsigned_abs(), &mut out[..]);
    &out[..n]
}

/// This library's own path, as the dynamic loader knows it.
fn own_path() -> &'static [u8] {
    // SAFETY: dladdr fills `info` for an address inside this library; the
    // path it points to lives as long as the library.
    unsafe {
        let mut info: libc::Dl_info = core::mem::zeroed();
        if libc::dladdr(own_path as *const libc::c_void, &mut info) != 0 && !info.dli_fname.is_null() {
            return core::ffi::CStr::from_ptr(info.dli_fname).to_bytes();
        }
    }
    b""
}

/// In a forked child: the inherited connection is the parent's; open our own.
extern "C" fn after_fork_child() {
    if !active() {
        return;
    }
    let old = CTL_FD.load(Relaxed);
    // SAFETY: ENV was written before the program started.
    let e = unsafe { &*ENV.get() };
    let name = &e.socket[ckrun_proto::ENV_SOCKET.len() + 1..];
    let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(0)];
    match crate::connect_at(name, old) {
        Some(fd) => CTL_FD.store(fd, Relaxed),
        None => {
            CTL_FD.store(-1, Relaxed);
            crate::sys::close(old);
        }
    }
    crate::hello();
}

/// Whether `entry` (NUL-terminated) starts with `key=`.
///
/// # Safety
/// `entry` must be a NUL-terminated string.
unsafe fn is_var(entry: *const c_char, key: &str) -> bool {
    // SAFETY: entry is NUL-terminated per the contract.
    let s = unsafe { core::ffi::CStr::from_ptr(entry) }.to_bytes();
    s.len() > key.len() && s.starts_with(key.as_bytes()) && s[key.len()] == b'='
}

/// Most environment entries handled without allocating (a vfork child may
/// not allocate); larger environments are passed on unchanged.
const MAX_ENV: usize = 4096;

/// Calls `f` with `envp` plus the agent's variables. Everything lives on
/// this stack frame: exec wrappers may run in a vfork child.
///
/// # Safety
/// `envp` must be null or a valid NULL-terminated environment array.
unsafe fn with_agent_env<R>(envp: *const *const c_char, f: impl FnOnce(*const *const c_char) -> R) -> R {
    if !active() {
        return f(envp);
    }
    // SAFETY: ENV was written before the program started.
    let e = unsafe { &*ENV.get() };
    let mut out: [*const c_char; MAX_ENV + 5] = [core::ptr::null(); MAX_ENV + 5];
    let mut preload_buf = [0u8; 8192];
    let mut n = 0;
    let mut had_preload = false;
    if !envp.is_null() {
        let mut i = 0;
        loop {
            // SAFETY: envp is NULL-terminated per the contract.
            let entry = unsafe { *envp.add(i) };
            if entry.is_null() {
                break;
            }
            i += 1;
            if n >= MAX_ENV {
                return f(envp);
            }
            // SAFETY: entries are NUL-terminated strings.
            unsafe {
                if is_var(entry, ckrun_proto::ENV_SOCKET)
                    || is_var(entry, ckrun_proto::ENV_TRIGGER)
                    || is_var(entry, ckrun_proto::ENV_COORDINATOR)
                {
                    continue; // ours are added below
                }
                if is_var(entry, "LD_PRELOAD") {
                    had_preload = true;
                    let cur = core::ffi::CStr::from_ptr(entry).to_bytes();
                    let lib = &e.lib[..e.lib.iter().position(|&b| b == 0).unwrap_or(0)];
                    let value = &cur[b"LD_PRELOAD=".len()..];
                    if !lib.is_empty()
                        && !contains_word(value, lib)
                        && copy_z(&mut preload_buf, &[b"LD_PRELOAD=", lib, b":", value])
                    {
                        out[n] = preload_buf.as_ptr().cast();
                        n += 1;
                        continue;
                    }
                }
            }
            out[n] = entry;
            n += 1;
        }
    }
    if !had_preload {
        out[n] = e.preload.as_ptr().cast();
        n += 1;
    }
    out[n] = e.socket.as_ptr().cast();
    out[n + 1] = e.trigger.as_ptr().cast();
    out[n + 2] = e.coordinator.as_ptr().cast();
    f(out.as_ptr())
}

/// Runs an exec with the suspend signal blocked: a checkpoint that catches
/// the process in the middle of it must not kill the new program before
/// its agent is up (the signal's default action). If the exec fails, the
/// process handles the signal as usual once unblocked; if it succeeds, the
/// new program's agent discards it (see `agent_init`).
fn across_exec<R>(exec: impl FnOnce() -> R) -> R {
    let suspend = 1u64 << (ckrun_proto::SUSPEND_SIGNAL - 1);
    let mut old = 0u64;
    crate::sys::sigprocmask(libc::SIG_BLOCK, Some(&suspend), Some(&mut old));
    let r = exec();
    crate::sys::sigprocmask(libc::SIG_SETMASK, Some(&old), None);
    r
}

/// Whether the colon- or space-separated list `list` names `item`.
fn contains_word(list: &[u8], item: &[u8]) -> bool {
    list.split(|&c| c == b':' || c == b' ').any(|w| w == item)
}

extern "C" {
    static environ: *const *const c_char;
}

/// # Safety
/// As glibc's `execve`.
#[no_mangle]
pub unsafe extern "C" fn execve(path: *const c_char, argv: *const *const c_char, envp: *const *const c_char) -> c_int {
    let next = real!(execve: fn(*const c_char, *const *const c_char, *const *const c_char) -> c_int);
    // SAFETY: forwarded with an environment that is valid for the call.
    unsafe { with_agent_env(envp, |env| across_exec(|| next(path, argv, env))) }
}

/// # Safety
/// As glibc's `execv`.
#[no_mangle]
pub unsafe extern "C" fn execv(path: *const c_char, argv: *const *const c_char) -> c_int {
    // SAFETY: forwarded with the process environment.
    unsafe { execve(path, argv, environ) }
}

/// # Safety
/// As glibc's `execvpe`.
#[no_mangle]
pub unsafe extern "C" fn execvpe(file: *const c_char, argv: *const *const c_char, envp: *const *const c_char) -> c_int {
    let next = real!(execvpe: fn(*const c_char, *const *const c_char, *const *const c_char) -> c_int);
    // SAFETY: forwarded with an environment that is valid for the call.
    unsafe { with_agent_env(envp, |env| across_exec(|| next(file, argv, env))) }
}

/// # Safety
/// As glibc's `execvp`.
#[no_mangle]
pub unsafe extern "C" fn execvp(file: *const c_char, argv: *const *const c_char) -> c_int {
    // SAFETY: forwarded with the process environment.
    unsafe { execvpe(file, argv, environ) }
}

/// # Safety
/// As glibc's `fexecve`.
#[no_mangle]
pub unsafe extern "C" fn fexecve(fd: c_int, argv: *const *const c_char, envp: *const *const c_char) -> c_int {
    let next = real!(fexecve: fn(c_int, *const *const c_char, *const *const c_char) -> c_int);
    // SAFETY: forwarded with an environment that is valid for the call.
    unsafe { with_agent_env(envp, |env| across_exec(|| next(fd, argv, env))) }
}

/// Calls `f` with spawn attributes that start the child with the suspend
/// signal blocked (as `across_exec` does for exec).
///
/// # Safety
/// `attr` must be null or point to initialised spawn attributes.
unsafe fn with_suspend_blocked<R>(
    attr: *const libc::posix_spawnattr_t,
    f: impl FnOnce(*const libc::posix_spawnattr_t) -> R,
) -> R {
    if !active() {
        return f(attr);
    }
    // SAFETY: posix_spawnattr_t is plain data in glibc (no pointers to
    // itself); a bitwise copy is an independent set of attributes, which
    // the getters and setters below only read and write.
    unsafe {
        let mut a: libc::posix_spawnattr_t = core::mem::zeroed();
        if attr.is_null() {
            libc::posix_spawnattr_init(&mut a);
        } else {
            a = core::ptr::read(attr);
        }
        let mut flags: libc::c_short = 0;
        libc::posix_spawnattr_getflags(&a, &mut flags);
        let mut mask: libc::sigset_t = core::mem::zeroed();
        if flags as i32 & libc::POSIX_SPAWN_SETSIGMASK != 0 {
            libc::posix_spawnattr_getsigmask(&a, &mut mask);
        } else {
            libc::pthread_sigmask(libc::SIG_SETMASK, core::ptr::null(), &mut mask);
        }
        libc::sigaddset(&mut mask, ckrun_proto::SUSPEND_SIGNAL);
        libc::posix_spawnattr_setsigmask(&mut a, &mask);
        libc::posix_spawnattr_setflags(&mut a, flags | libc::POSIX_SPAWN_SETSIGMASK as libc::c_short);
        f(&a)
    }
}

type SpawnFn = unsafe extern "C" fn(
    *mut libc::pid_t,
    *const c_char,
    *const libc::posix_spawn_file_actions_t,
    *const libc::posix_spawnattr_t,
    *const *mut c_char,
    *const *mut c_char,
) -> c_int;

/// # Safety
/// As glibc's `posix_spawn`.
#[no_mangle]
pub unsafe extern "C" fn posix_spawn(
    pid: *mut libc::pid_t,
    path: *const c_char,
    actions: *const libc::posix_spawn_file_actions_t,
    attr: *const libc::posix_spawnattr_t,
    argv: *const *mut c_char,
    envp: *const *mut c_char,
) -> c_int {
    let next: SpawnFn = real!(posix_spawn: fn(
        *mut libc::pid_t,
        *const c_char,
        *const libc::posix_spawn_file_actions_t,
        *const libc::posix_spawnattr_t,
        *const *mut c_char,
        *const *mut c_char
    ) -> c_int);
    // SAFETY: forwarded with an environment and attributes valid for the call.
    unsafe {
        with_agent_env(envp.cast(), |env| with_suspend_blocked(attr, |a| next(pid, path, actions, a, argv, env.cast())))
    }
}

/// # Safety
/// As glibc's `posix_spawnp`.
#[no_mangle]
pub unsafe extern "C" fn posix_spawnp(
    pid: *mut libc::pid_t,
    file: *const c_char,
    actions: *const libc::posix_spawn_file_actions_t,
    attr: *const libc::posix_spawnattr_t,
    argv: *const *mut c_char,
    envp: *const *mut c_char,
) -> c_int {
    let next: SpawnFn = real!(posix_spawnp: fn(
        *mut libc::pid_t,
        *const c_char,
        *const libc::posix_spawn_file_actions_t,
        *const libc::posix_spawnattr_t,
        *const *mut c_char,
        *const *mut c_char
    ) -> c_int);
    // SAFETY: forwarded with an environment and attributes valid for the call.
    unsafe {
        with_agent_env(envp.cast(), |env| with_suspend_blocked(attr, |a| next(pid, file, actions, a, argv, env.cast())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_numbers() {
        assert!(contains_word(b"/a/libckpt.so:/b/x.so", b"/a/libckpt.so"));
        assert!(!contains_word(b"/a/libckpt.so.1", b"/a/libckpt.so"));
        let mut b = [0u8; 12];
        assert_eq!(fmt_i32(12, &mut b), b"12");
    }
}
