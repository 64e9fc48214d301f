//! The wrapped blocking calls (see the parent module for the design).
//!
//! Each passes straight through while the agent is inert. Otherwise it
//! notes the counters (and, for a finite non-zero relative timeout, a
//! deadline), calls glibc's function, and calls it again after an EINTR
//! of ckrun's own, with the time left. Calls that install a signal mask
//! for their duration go through [`with_call_mask`] as `sigsuspend` does:
//! the agent's signals are taken out of the mask, and the program's
//! virtual blocking of the trigger follows it.
//!
//! `sigsuspend`, `sigtimedwait` and `sigwaitinfo` are in `signals`, which
//! already wrapped them; `sleep` and `usleep` are here because glibc
//! implements them with its internal `nanosleep`, which no wrapper sees.
//!
//! Sockets: the kernel applies `SO_RCVTIMEO` / `SO_SNDTIMEO` afresh to
//! each call, and reading them back would cost a syscall on every call, so
//! a resumed socket call waits for the socket's whole timeout again: never
//! cut short, late at most by the part waited before the checkpoint.

use super::{minus_one, resuming, set_errno, Deadline};
use crate::real::real;
use crate::signals::with_call_mask;
use crate::state::active;
use core::ffi::{c_int, c_long, c_uint, c_void};

type Ts = libc::timespec;
const ZERO_TS: Ts = Ts { tv_sec: 0, tv_nsec: 0 };

/// The failure of a call that returns an error number (0 on success).
fn error_number(r: c_int) -> Option<c_int> {
    (r != 0).then_some(r)
}

/// The timeout to pass: the original on the first attempt, the time left
/// (written into `buf`) on a resumed one.
fn timespec_for(orig: *const Ts, d: &Option<Deadline>, again: bool, buf: &mut Ts) -> *const Ts {
    match d {
        Some(d) if again => {
            *buf = d.left_timespec();
            buf
        }
        _ => orig,
    }
}

fn ms_for(orig: c_int, d: &Option<Deadline>, again: bool) -> c_int {
    match d {
        Some(d) if again => d.left_ms(),
        _ => orig,
    }
}

/// What a call with a mask returns when the mask unblocks a held trigger.
fn interrupted<R: From<i8>>(r: Option<R>) -> R {
    r.unwrap_or_else(|| {
        set_errno(libc::EINTR);
        R::from(-1)
    })
}

// ---- multiplexing -----------------------------------------------------

/// # Safety
/// As glibc's `poll`.
#[no_mangle]
pub unsafe extern "C" fn poll(fds: *mut libc::pollfd, nfds: libc::nfds_t, timeout: c_int) -> c_int {
    let next = real!(poll: fn(*mut libc::pollfd, libc::nfds_t, c_int) -> c_int);
    if !active() {
        // SAFETY: forwarded unchanged.
        return unsafe { next(fds, nfds, timeout) };
    }
    let d = Deadline::from_ms(timeout);
    // SAFETY: forwarded with a valid timeout.
    resuming(minus_one, |again| unsafe { next(fds, nfds, ms_for(timeout, &d, again)) })
}

/// # Safety
/// As glibc's `__poll_chk` (`poll` under `_FORTIFY_SOURCE`).
#[no_mangle]
pub unsafe extern "C" fn __poll_chk(fds: *mut libc::pollfd, nfds: libc::nfds_t, timeout: c_int, len: usize) -> c_int {
    if len / core::mem::size_of::<libc::pollfd>() < nfds as usize {
        // glibc's own reports the overflow and aborts.
        let next = real!(__poll_chk: fn(*mut libc::pollfd, libc::nfds_t, c_int, usize) -> c_int);
        // SAFETY: forwarded unchanged.
        return unsafe { next(fds, nfds, timeout, len) };
    }
    // SAFETY: same contract as poll, the bound checked.
    unsafe { poll(fds, nfds, timeout) }
}

/// # Safety
/// As glibc's `ppoll`.
#[no_mangle]
pub unsafe extern "C" fn ppoll(
    fds: *mut libc::pollfd,
    nfds: libc::nfds_t,
    timeout: *const Ts,
    mask: *const libc::sigset_t,
) -> c_int {
    let next = real!(ppoll: fn(*mut libc::pollfd, libc::nfds_t, *const Ts, *const libc::sigset_t) -> c_int);
    if !active() {
        // SAFETY: forwarded unchanged.
        return unsafe { next(fds, nfds, timeout, mask) };
    }
    // SAFETY: timeout is null or valid per the contract.
    let d = unsafe { Deadline::from_timespec(timeout) };
    let mut left = ZERO_TS;
    // SAFETY: forwarded with a valid mask and timeout.
    interrupted(unsafe {
        with_call_mask(mask, |m| {
            resuming(minus_one, |again| next(fds, nfds, timespec_for(timeout, &d, again, &mut left), m))
        })
    })
}

/// # Safety
/// As glibc's `__ppoll_chk`.
#[no_mangle]
pub unsafe extern "C" fn __ppoll_chk(
    fds: *mut libc::pollfd,
    nfds: libc::nfds_t,
    timeout: *const Ts,
    mask: *const libc::sigset_t,
    len: usize,
) -> c_int {
    if len / core::mem::size_of::<libc::pollfd>() < nfds as usize {
        let next =
            real!(__ppoll_chk: fn(*mut libc::pollfd, libc::nfds_t, *const Ts, *const libc::sigset_t, usize) -> c_int);
        // SAFETY: forwarded unchanged (glibc aborts).
        return unsafe { next(fds, nfds, timeout, mask, len) };
    }
    // SAFETY: same contract as ppoll, the bound checked.
    unsafe { ppoll(fds, nfds, timeout, mask) }
}

/// Linux's `select` writes the time left into `*tv` on every return; a
/// resumed call gets the time left until the first call's deadline.
///
/// # Safety
/// As glibc's `select`.
#[no_mangle]
pub unsafe extern "C" fn select(
    nfds: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    tv: *mut libc::timeval,
) -> c_int {
    let next =
        real!(select: fn(c_int, *mut libc::fd_set, *mut libc::fd_set, *mut libc::fd_set, *mut libc::timeval) -> c_int);
    if !active() {
        // SAFETY: forwarded unchanged.
        return unsafe { next(nfds, r, w, e, tv) };
    }
    // SAFETY: tv is null or valid per the contract.
    let d = unsafe { Deadline::from_timeval(tv) };
    resuming(minus_one, |again| {
        if let (Some(d), true) = (&d, again) {
            // SAFETY: a deadline exists only for a non-null tv. The sets are
            // as the program passed them: a failed select leaves them.
            unsafe { *tv = d.left_timeval() };
        }
        // SAFETY: forwarded per the contract.
        unsafe { next(nfds, r, w, e, tv) }
    })
}

/// # Safety
/// As glibc's `pselect`.
#[no_mangle]
pub unsafe extern "C" fn pselect(
    nfds: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    timeout: *const Ts,
    mask: *const libc::sigset_t,
) -> c_int {
    let next = real!(pselect: fn(
        c_int,
        *mut libc::fd_set,
        *mut libc::fd_set,
        *mut libc::fd_set,
        *const Ts,
        *const libc::sigset_t
    ) -> c_int);
    if !active() {
        // SAFETY: forwarded unchanged.
        return unsafe { next(nfds, r, w, e, timeout, mask) };
    }
    // SAFETY: timeout is null or valid per the contract.
    let d = unsafe { Deadline::from_timespec(timeout) };
    let mut left = ZERO_TS;
    // SAFETY: forwarded with a valid mask and timeout.
    interrupted(unsafe {
        with_call_mask(mask, |m| {
            resuming(minus_one, |again| next(nfds, r, w, e, timespec_for(timeout, &d, again, &mut left), m))
        })
    })
}

/// # Safety
/// As glibc's `epoll_wait`.
#[no_mangle]
pub unsafe extern "C" fn epoll_wait(epfd: c_int, events: *mut libc::epoll_event, max: c_int, timeout: c_int) -> c_int {
    let next = real!(epoll_wait: fn(c_int, *mut libc::epoll_event, c_int, c_int) -> c_int);
    if !active() {
        // SAFETY: forwarded unchanged.
        return unsafe { next(epfd, events, max, timeout) };
    }
    let d = Deadline::from_ms(timeout);
    // SAFETY: forwarded with a valid timeout.
    resuming(minus_one, |again| unsafe { next(epfd, events, max, ms_for(timeout, &d, again)) })
}

/// # Safety
/// As glibc's `epoll_pwait`.
#[no_mangle]
pub unsafe extern "C" fn epoll_pwait(
    epfd: c_int,
    events: *mut libc::epoll_event,
    max: c_int,
    timeout: c_int,
    mask: *const libc::sigset_t,
) -> c_int {
    let next = real!(epoll_pwait: fn(c_int, *mut libc::epoll_event, c_int, c_int, *const libc::sigset_t) -> c_int);
    if !active() {
        // SAFETY: forwarded unchanged.
        return unsafe { next(epfd, events, max, timeout, mask) };
    }
    let d = Deadline::from_ms(timeout);
    // SAFETY: forwarded with a valid mask and timeout.
    interrupted(unsafe {
        with_call_mask(mask, |m| resuming(minus_one, |again| next(epfd, events, max, ms_for(timeout, &d, again), m)))
    })
}

/// # Safety
/// As glibc's `epoll_pwait2` (2.35 and later).
#[no_mangle]
pub unsafe extern "C" fn epoll_pwait2(
    epfd: c_int,
    events: *mut libc::epoll_event,
    max: c_int,
    timeout: *const Ts,
    mask: *const libc::sigset_t,
) -> c_int {
    let next = real!(epoll_pwait2: fn(c_int, *mut libc::epoll_event, c_int, *const Ts, *const libc::sigset_t) -> c_int);
    if !active() {
        // SAFETY: forwarded unchanged.
        return unsafe { next(epfd, events, max, timeout, mask) };
    }
    // SAFETY: timeout is null or valid per the contract.
    let d = unsafe { Deadline::from_timespec(timeout) };
    let mut left = ZERO_TS;
    // SAFETY: forwarded with a valid mask and timeout.
    interrupted(unsafe {
        with_call_mask(mask, |m| {
            resuming(minus_one, |again| next(epfd, events, max, timespec_for(timeout, &d, again, &mut left), m))
        })
    })
}

// ---- System V IPC -----------------------------------------------------

/// An interrupted `semop` applied none of its operations: it is redone.
///
/// # Safety
/// As glibc's `semop`.
#[no_mangle]
pub unsafe extern "C" fn semop(id: c_int, sops: *mut libc::sembuf, n: usize) -> c_int {
    let next = real!(semop: fn(c_int, *mut libc::sembuf, usize) -> c_int);
    if !active() {
        // SAFETY: forwarded unchanged.
        return unsafe { next(id, sops, n) };
    }
    // SAFETY: forwarded unchanged.
    resuming(minus_one, |_| unsafe { next(id, sops, n) })
}

/// # Safety
/// As glibc's `semtimedop`.
#[no_mangle]
pub unsafe extern "C" fn semtimedop(id: c_int, sops: *mut libc::sembuf, n: usize, timeout: *const Ts) -> c_int {
    let next = real!(semtimedop: fn(c_int, *mut libc::sembuf, usize, *const Ts) -> c_int);
    if !active() {
        // SAFETY: forwarded unchanged.
        return unsafe { next(id, sops, n, timeout) };
    }
    // SAFETY: timeout is null or valid per the contract.
    let d = unsafe { Deadline::from_timespec(timeout) };
    let mut left = ZERO_TS;
    // SAFETY: forwarded with a valid timeout.
    resuming(minus_one, |again| unsafe { next(id, sops, n, timespec_for(timeout, &d, again, &mut left)) })
}

/// # Safety
/// As glibc's `msgrcv`.
#[no_mangle]
pub unsafe extern "C" fn msgrcv(id: c_int, msg: *mut c_void, size: usize, typ: c_long, flags: c_int) -> isize {
    let next = real!(msgrcv: fn(c_int, *mut c_void, usize, c_long, c_int) -> isize);
    if !active() {
        // SAFETY: forwarded unchanged.
        return unsafe { next(id, msg, size, typ, flags) };
    }
    // SAFETY: forwarded unchanged.
    resuming(minus_one, |_| unsafe { next(id, msg, size, typ, flags) })
}

/// # Safety
/// As glibc's `msgsnd`.
#[no_mangle]
pub unsafe extern "C" fn msgsnd(id: c_int, msg: *const c_void, size: usize, flags: c_int) -> c_int {
    let next = real!(msgsnd: fn(c_int, *const c_void, usize, c_int) -> c_int);
    if !active() {
        // SAFETY: forwarded unchanged.
        return unsafe { next(id, msg, size, flags) };
    }
    // SAFETY: forwarded unchanged.
    resuming(minus_one, |_| unsafe { next(id, msg, size, flags) })
}

// ---- sleeping ---------------------------------------------------------

/// A relative sleep resumed with the time the kernel says was left
/// (`rem`, exact to the nanosecond, never more than asked).
///
/// # Safety
/// `req` must point to a readable timespec; `rem` null or writable.
unsafe fn sleep_for(
    mut sleep: impl FnMut(*const Ts, *mut Ts) -> c_int,
    failure: impl Fn(c_int) -> Option<c_int>,
    req: *const Ts,
    rem: *mut Ts,
) -> c_int {
    let mut w = super::Watch::start();
    let mut asked = req;
    let mut next_req;
    loop {
        let mut left = ZERO_TS;
        let r = sleep(asked, &mut left);
        let Some(e) = failure(r) else { return r };
        if !w.resume(e) {
            if e == libc::EINTR && !rem.is_null() {
                // SAFETY: rem is writable per the contract.
                unsafe { *rem = left };
            }
            return r;
        }
        next_req = left;
        asked = &next_req;
    }
}

/// # Safety
/// As glibc's `nanosleep`.
#[no_mangle]
pub unsafe extern "C" fn nanosleep(req: *const Ts, rem: *mut Ts) -> c_int {
    let next = real!(nanosleep: fn(*const Ts, *mut Ts) -> c_int);
    if !active() {
        // SAFETY: forwarded unchanged.
        return unsafe { next(req, rem) };
    }
    // SAFETY: forwarded per the contract.
    unsafe { sleep_for(|q, m| next(q, m), minus_one, req, rem) }
}

/// `TIMER_ABSTIME` sleeps are redone as they are; relative ones as
/// `nanosleep`. Returns an error number, as glibc's.
///
/// # Safety
/// As glibc's `clock_nanosleep`.
#[no_mangle]
pub unsafe extern "C" fn clock_nanosleep(clock: libc::clockid_t, flags: c_int, req: *const Ts, rem: *mut Ts) -> c_int {
    let next = real!(clock_nanosleep: fn(libc::clockid_t, c_int, *const Ts, *mut Ts) -> c_int);
    if !active() {
        // SAFETY: forwarded unchanged.
        return unsafe { next(clock, flags, req, rem) };
    }
    if flags & libc::TIMER_ABSTIME != 0 {
        // SAFETY: forwarded unchanged.
        return resuming(error_number, |_| unsafe { next(clock, flags, req, rem) });
    }
    // SAFETY: forwarded per the contract.
    unsafe { sleep_for(|q, m| next(clock, flags, q, m), error_number, req, rem) }
}

/// glibc's `sleep`: the unslept seconds (truncated) when a signal of the
/// program ends it, else 0 with errno unchanged.
///
/// # Safety
/// As glibc's `sleep`.
#[no_mangle]
pub unsafe extern "C" fn sleep(seconds: c_uint) -> c_uint {
    let next = real!(sleep: fn(c_uint) -> c_uint);
    if !active() {
        // SAFETY: forwarded unchanged.
        return unsafe { next(seconds) };
    }
    let saved = super::errno();
    let mut ts = Ts { tv_sec: seconds as i64, tv_nsec: 0 };
    // SAFETY: ts is a local, both read and written as glibc does.
    if unsafe { nanosleep(&ts, &mut ts) } < 0 {
        return ts.tv_sec as c_uint;
    }
    set_errno(saved);
    0
}

/// # Safety
/// As glibc's `usleep`.
#[no_mangle]
pub unsafe extern "C" fn usleep(usec: libc::useconds_t) -> c_int {
    let next = real!(usleep: fn(libc::useconds_t) -> c_int);
    if !active() {
        // SAFETY: forwarded unchanged.
        return unsafe { next(usec) };
    }
    let ts = Ts { tv_sec: (usec / 1_000_000) as i64, tv_nsec: (usec % 1_000_000) as i64 * 1000 };
    // SAFETY: ts is a local.
    unsafe { nanosleep(&ts, core::ptr::null_mut()) }
}

/// C11's sleep: 0, or -1 when a signal cut it short (the time left in
/// `rem`), or another negative value on an error. glibc's calls its
/// clock_nanosleep internally, past the wrapper above.
///
/// # Safety
/// As glibc's `thrd_sleep`.
#[no_mangle]
pub unsafe extern "C" fn thrd_sleep(req: *const Ts, rem: *mut Ts) -> c_int {
    let next = real!(thrd_sleep: fn(*const Ts, *mut Ts) -> c_int);
    if !active() {
        // SAFETY: forwarded unchanged.
        return unsafe { next(req, rem) };
    }
    // SAFETY: forwarded per the contract.
    unsafe { sleep_for(|q, m| next(q, m), |r| (r == -1).then_some(libc::EINTR), req, rem) }
}

/// # Safety
/// As glibc's `pause`.
#[no_mangle]
pub unsafe extern "C" fn pause() -> c_int {
    let next = real!(pause: fn() -> c_int);
    if !active() {
        // SAFETY: forwarded.
        return unsafe { next() };
    }
    // SAFETY: forwarded: pause keeps pausing until the program's own signal.
    resuming(minus_one, |_| unsafe { next() })
}

// ---- semaphores -------------------------------------------------------

/// # Safety
/// As glibc's `sem_timedwait` (an absolute deadline: redone as it is).
#[no_mangle]
pub unsafe extern "C" fn sem_timedwait(sem: *mut libc::sem_t, abstime: *const Ts) -> c_int {
    let next = real!(sem_timedwait: fn(*mut libc::sem_t, *const Ts) -> c_int);
    if !active() {
        // SAFETY: forwarded unchanged.
        return unsafe { next(sem, abstime) };
    }
    // SAFETY: forwarded unchanged.
    resuming(minus_one, |_| unsafe { next(sem, abstime) })
}

/// # Safety
/// As glibc's `sem_clockwait` (2.30 and later).
#[no_mangle]
pub unsafe extern "C" fn sem_clockwait(sem: *mut libc::sem_t, clock: libc::clockid_t, abstime: *const Ts) -> c_int {
    let next = real!(sem_clockwait: fn(*mut libc::sem_t, libc::clockid_t, *const Ts) -> c_int);
    if !active() {
        // SAFETY: forwarded unchanged.
        return unsafe { next(sem, clock, abstime) };
    }
    // SAFETY: forwarded unchanged.
    resuming(minus_one, |_| unsafe { next(sem, clock, abstime) })
}

// ---- asynchronous I/O (libaio) ----------------------------------------

/// libaio's `io_getevents`, which returns a negated error number. Without
/// libaio in the process (someone looked the name up and found the agent's),
/// the system call, which has the same convention.
///
/// # Safety
/// As libaio's `io_getevents`.
#[no_mangle]
pub unsafe extern "C" fn io_getevents(
    ctx: usize,
    min: c_long,
    nr: c_long,
    events: *mut c_void,
    timeout: *mut Ts,
) -> c_int {
    type Next = unsafe extern "C" fn(usize, c_long, c_long, *mut c_void, *mut Ts) -> c_int;
    static NEXT: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
    let call = |t: *mut Ts| -> c_int {
        let p = match NEXT.load(core::sync::atomic::Ordering::Relaxed) {
            0 => {
                // SAFETY: a NUL-terminated name.
                let p = unsafe { libc::dlsym(libc::RTLD_NEXT, c"io_getevents".as_ptr()) } as usize;
                NEXT.store(p.max(1), core::sync::atomic::Ordering::Relaxed);
                p.max(1)
            }
            p => p,
        };
        if p == 1 {
            // SAFETY: the syscall's arguments are the function's.
            unsafe {
                crate::sys::syscall6(
                    libc::SYS_io_getevents,
                    ctx as u64,
                    min as u64,
                    nr as u64,
                    events as u64,
                    t as u64,
                    0,
                ) as c_int
            }
        } else {
            // SAFETY: p is libaio's io_getevents, of this signature.
            unsafe { core::mem::transmute::<usize, Next>(p)(ctx, min, nr, events, t) }
        }
    };
    if !active() {
        return call(timeout);
    }
    // SAFETY: timeout is null or valid per the contract.
    let d = unsafe { Deadline::from_timespec(timeout) };
    let mut left = ZERO_TS;
    resuming(|r: c_int| (r < 0).then_some(-r), |again| call(timespec_for(timeout, &d, again, &mut left).cast_mut()))
}

// ---- sockets with SO_RCVTIMEO / SO_SNDTIMEO ---------------------------
//
// Without a socket timeout the kernel restarts these (SA_RESTART); with
// one, an EINTR means nothing was received, sent or accepted.

/// # Safety
/// As glibc's `recv`.
#[no_mangle]
pub unsafe extern "C" fn recv(fd: c_int, buf: *mut c_void, len: usize, flags: c_int) -> isize {
    let next = real!(recv: fn(c_int, *mut c_void, usize, c_int) -> isize);
    if !active() {
        // SAFETY: forwarded unchanged.
        return unsafe { next(fd, buf, len, flags) };
    }
    // SAFETY: forwarded unchanged.
    resuming(minus_one, |_| unsafe { next(fd, buf, len, flags) })
}

/// # Safety
/// As glibc's `__recv_chk` (`recv` under `_FORTIFY_SOURCE`).
#[no_mangle]
pub unsafe extern "C" fn __recv_chk(fd: c_int, buf: *mut c_void, len: usize, buflen: usize, flags: c_int) -> isize {
    if len > buflen {
        let next = real!(__recv_chk: fn(c_int, *mut c_void, usize, usize, c_int) -> isize);
        // SAFETY: forwarded unchanged (glibc aborts).
        return unsafe { next(fd, buf, len, buflen, flags) };
    }
    // SAFETY: same contract as recv, the bound checked.
    unsafe { recv(fd, buf, len, flags) }
}

/// # Safety
/// As glibc's `recvfrom`.
#[no_mangle]
pub unsafe extern "C" fn recvfrom(
    fd: c_int,
    buf: *mut c_void,
    len: usize,
    flags: c_int,
    addr: *mut libc::sockaddr,
    alen: *mut libc::socklen_t,
) -> isize {
    let next =
        real!(recvfrom: fn(c_int, *mut c_void, usize, c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> isize);
    if !active() {
        // SAFETY: forwarded unchanged.
        return unsafe { next(fd, buf, len, flags, addr, alen) };
    }
    // SAFETY: forwarded unchanged (a failed call writes no address).
    resuming(minus_one, |_| unsafe { next(fd, buf, len, flags, addr, alen) })
}

/// # Safety
/// As glibc's `__recvfrom_chk`.
#[no_mangle]
pub unsafe extern "C" fn __recvfrom_chk(
    fd: c_int,
    buf: *mut c_void,
    len: usize,
    buflen: usize,
    flags: c_int,
    addr: *mut libc::sockaddr,
    alen: *mut libc::socklen_t,
) -> isize {
    if len > buflen {
        let next = real!(__recvfrom_chk: fn(
            c_int,
            *mut c_void,
            usize,
            usize,
            c_int,
            *mut libc::sockaddr,
            *mut libc::socklen_t
        ) -> isize);
        // SAFETY: forwarded unchanged (glibc aborts).
        return unsafe { next(fd, buf, len, buflen, flags, addr, alen) };
    }
    // SAFETY: same contract as recvfrom, the bound checked.
    unsafe { recvfrom(fd, buf, len, flags, addr, alen) }
}

/// # Safety
/// As glibc's `recvmsg`.
#[no_mangle]
pub unsafe extern "C" fn recvmsg(fd: c_int, msg: *mut libc::msghdr, flags: c_int) -> isize {
    let next = real!(recvmsg: fn(c_int, *mut libc::msghdr, c_int) -> isize);
    if !active() {
        // SAFETY: forwarded unchanged.
        return unsafe { next(fd, msg, flags) };
    }
    // SAFETY: forwarded unchanged (a failed call leaves msg as it was).
    resuming(minus_one, |_| unsafe { next(fd, msg, flags) })
}

/// # Safety
/// As glibc's `send`.
#[no_mangle]
pub unsafe extern "C" fn send(fd: c_int, buf: *const c_void, len: usize, flags: c_int) -> isize {
    let next = real!(send: fn(c_int, *const c_void, usize, c_int) -> isize);
    if !active() {
        // SAFETY: forwarded unchanged.
        return unsafe { next(fd, buf, len, flags) };
    }
    // SAFETY: forwarded unchanged (EINTR: nothing was sent).
    resuming(minus_one, |_| unsafe { next(fd, buf, len, flags) })
}

/// # Safety
/// As glibc's `sendto`.
#[no_mangle]
pub unsafe extern "C" fn sendto(
    fd: c_int,
    buf: *const c_void,
    len: usize,
    flags: c_int,
    addr: *const libc::sockaddr,
    alen: libc::socklen_t,
) -> isize {
    let next = real!(sendto: fn(c_int, *const c_void, usize, c_int, *const libc::sockaddr, libc::socklen_t) -> isize);
    if !active() {
        // SAFETY: forwarded unchanged.
        return unsafe { next(fd, buf, len, flags, addr, alen) };
    }
    // SAFETY: forwarded unchanged.
    resuming(minus_one, |_| unsafe { next(fd, buf, len, flags, addr, alen) })
}

/// # Safety
/// As glibc's `sendmsg`.
#[no_mangle]
pub unsafe extern "C" fn sendmsg(fd: c_int, msg: *const libc::msghdr, flags: c_int) -> isize {
    let next = real!(sendmsg: fn(c_int, *const libc::msghdr, c_int) -> isize);
    if !active() {
        // SAFETY: forwarded unchanged.
        return unsafe { next(fd, msg, flags) };
    }
    // SAFETY: forwarded unchanged.
    resuming(minus_one, |_| unsafe { next(fd, msg, flags) })
}

/// # Safety
/// As glibc's `recvmmsg`. The timeout, if any, is the kernel's (checked
/// after each datagram, not a wait): passed on unchanged.
#[no_mangle]
pub unsafe extern "C" fn recvmmsg(
    fd: c_int,
    msgs: *mut libc::mmsghdr,
    n: libc::c_uint,
    flags: c_int,
    timeout: *mut Ts,
) -> c_int {
    let next = real!(recvmmsg: fn(c_int, *mut libc::mmsghdr, libc::c_uint, c_int, *mut Ts) -> c_int);
    if !active() {
        // SAFETY: forwarded unchanged.
        return unsafe { next(fd, msgs, n, flags, timeout) };
    }
    // SAFETY: forwarded unchanged.
    resuming(minus_one, |_| unsafe { next(fd, msgs, n, flags, timeout) })
}

/// # Safety
/// As glibc's `sendmmsg`.
#[no_mangle]
pub unsafe extern "C" fn sendmmsg(fd: c_int, msgs: *mut libc::mmsghdr, n: libc::c_uint, flags: c_int) -> c_int {
    let next = real!(sendmmsg: fn(c_int, *mut libc::mmsghdr, libc::c_uint, c_int) -> c_int);
    if !active() {
        // SAFETY: forwarded unchanged.
        return unsafe { next(fd, msgs, n, flags) };
    }
    // SAFETY: forwarded unchanged.
    resuming(minus_one, |_| unsafe { next(fd, msgs, n, flags) })
}

/// Resolves the wrappers that signal handlers call (`write` above all) now:
/// each finds glibc's function with dlsym at its first call, which must not
/// happen inside a handler (dlsym is not async-signal-safe). Calls on fd
/// -1 fail at once with EBADF; errno is left as it was.
pub(crate) fn resolve_early() {
    let saved = super::errno();
    // SAFETY: an invalid fd and empty buffers: the calls fail with EBADF.
    unsafe {
        read(-1, core::ptr::null_mut(), 0);
        write(-1, core::ptr::null(), 0);
        readv(-1, core::ptr::null(), 0);
        writev(-1, core::ptr::null(), 0);
    }
    super::set_errno(saved);
}

// ---- read / write on sockets with a timeout ---------------------------
//
// The kernel restarts them after a handler (SA_RESTART) on pipes, files
// and sockets without a timeout; an EINTR means nothing was read or
// written. Off the EINTR path these cost the two loads of `Watch::start`.

/// # Safety
/// As glibc's `read`.
#[no_mangle]
pub unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, len: usize) -> isize {
    let next = real!(read: fn(c_int, *mut c_void, usize) -> isize);
    if !active() {
        // SAFETY: forwarded unchanged.
        return unsafe { next(fd, buf, len) };
    }
    // SAFETY: forwarded unchanged.
    resuming(minus_one, |_| unsafe { next(fd, buf, len) })
}

/// # Safety
/// As glibc's `__read_chk` (`read` under `_FORTIFY_SOURCE`).
#[no_mangle]
pub unsafe extern "C" fn __read_chk(fd: c_int, buf: *mut c_void, len: usize, buflen: usize) -> isize {
    if len > buflen {
        let next = real!(__read_chk: fn(c_int, *mut c_void, usize, usize) -> isize);
        // SAFETY: forwarded unchanged (glibc aborts).
        return unsafe { next(fd, buf, len, buflen) };
    }
    // SAFETY: same contract as read, the bound checked.
    unsafe { read(fd, buf, len) }
}

/// # Safety
/// As glibc's `readv`.
#[no_mangle]
pub unsafe extern "C" fn readv(fd: c_int, iov: *const libc::iovec, n: c_int) -> isize {
    let next = real!(readv: fn(c_int, *const libc::iovec, c_int) -> isize);
    if !active() {
        // SAFETY: forwarded unchanged.
        return unsafe { next(fd, iov, n) };
    }
    // SAFETY: forwarded unchanged.
    resuming(minus_one, |_| unsafe { next(fd, iov, n) })
}

/// # Safety
/// As glibc's `write`.
#[no_mangle]
pub unsafe extern "C" fn write(fd: c_int, buf: *const c_void, len: usize) -> isize {
    let next = real!(write: fn(c_int, *const c_void, usize) -> isize);
    if !active() {
        // SAFETY: forwarded unchanged.
        return unsafe { next(fd, buf, len) };
    }
    // SAFETY: forwarded unchanged.
    resuming(minus_one, |_| unsafe { next(fd, buf, len) })
}

/// # Safety
/// As glibc's `writev`.
#[no_mangle]
pub unsafe extern "C" fn writev(fd: c_int, iov: *const libc::iovec, n: c_int) -> isize {
    let next = real!(writev: fn(c_int, *const libc::iovec, c_int) -> isize);
    if !active() {
        // SAFETY: forwarded unchanged.
        return unsafe { next(fd, iov, n) };
    }
    // SAFETY: forwarded unchanged.
    resuming(minus_one, |_| unsafe { next(fd, iov, n) })
}

/// # Safety
/// As glibc's `accept`.
#[no_mangle]
pub unsafe extern "C" fn accept(fd: c_int, addr: *mut libc::sockaddr, alen: *mut libc::socklen_t) -> c_int {
    let next = real!(accept: fn(c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> c_int);
    if !active() {
        // SAFETY: forwarded unchanged.
        return unsafe { next(fd, addr, alen) };
    }
    // SAFETY: forwarded unchanged (EINTR: nothing was accepted).
    resuming(minus_one, |_| unsafe { next(fd, addr, alen) })
}

/// # Safety
/// As glibc's `accept4`.
#[no_mangle]
pub unsafe extern "C" fn accept4(
    fd: c_int,
    addr: *mut libc::sockaddr,
    alen: *mut libc::socklen_t,
    flags: c_int,
) -> c_int {
    let next = real!(accept4: fn(c_int, *mut libc::sockaddr, *mut libc::socklen_t, c_int) -> c_int);
    if !active() {
        // SAFETY: forwarded unchanged.
        return unsafe { next(fd, addr, alen, flags) };
    }
    // SAFETY: forwarded unchanged.
    resuming(minus_one, |_| unsafe { next(fd, addr, alen, flags) })
}

/// An interrupted TCP connect goes on in the background: called again, it
/// waits for the same connection, or says EISCONN if it is already made,
/// which is the interrupted call's success.
///
/// # Safety
/// As glibc's `connect`.
#[no_mangle]
pub unsafe extern "C" fn connect(fd: c_int, addr: *const libc::sockaddr, alen: libc::socklen_t) -> c_int {
    let next = real!(connect: fn(c_int, *const libc::sockaddr, libc::socklen_t) -> c_int);
    if !active() {
        // SAFETY: forwarded unchanged.
        return unsafe { next(fd, addr, alen) };
    }
    let saved = super::errno();
    let mut resumed = false;
    let r = resuming(minus_one, |again| {
        resumed = again;
        // SAFETY: forwarded unchanged.
        unsafe { next(fd, addr, alen) }
    });
    if r == -1 && resumed && super::errno() == libc::EISCONN {
        set_errno(saved);
        return 0;
    }
    r
}
