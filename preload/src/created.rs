//! Files the program creates, reported to the coordinator, which keeps a
//! journal of them next to the images: a restart sets aside those the
//! killed run made after the image's checkpoint (a `make` killed mid-build
//! leaves 0-byte `.o` files newer than their sources, which the restarted
//! `make` would take for up to date).
//!
//! Creation is told apart from opening an existing file without a stat on
//! every call: an `open` with `O_CREAT` and without `O_EXCL` first tries
//! with `O_EXCL` added, and only if the file exists (`EEXIST`) makes the
//! program's own call, so a creating open costs nothing more and an open
//! of an existing file one failed syscall. `fopen` for writing asks
//! `access` first. The path reported is the kernel's (the fd's
//! /proc/self/fd link): absolute, whatever the program's cwd.
//!
//! glibc's own internal opens (`fopen`'s, `mkstemp`'s) do not come through
//! these wrappers: `fopen`, `fopen64` and the `mkstemp` family are
//! wrapped themselves.

use crate::real::real;
use crate::state::active;
use core::ffi::{c_char, c_int, c_uint};

/// Tells the coordinator that `fd` is a file this call created.
fn report(fd: c_int) {
    if fd < 0 {
        return;
    }
    let mut link = [0u8; 64];
    let n = crate::suspend::format_decimal(fd as u32, &mut link[14..]);
    link[..14].copy_from_slice(b"/proc/self/fd/");
    link[14 + n] = 0;
    let mut path = [0u8; crate::channel::MAX_MSG - 16];
    // SAFETY: link is NUL-terminated; path is writable for its length.
    let len = unsafe { libc::readlink(link.as_ptr().cast(), path.as_mut_ptr().cast(), path.len()) };
    if len <= 0 || len as usize >= path.len() || path[0] != b'/' {
        return;
    }
    crate::channel::send_msg(ckrun_proto::kind::CREATED, &path[..len as usize]);
}

/// An open with `flags` that may create: try exclusively first (see the
/// module docs).
fn creating(flags: c_int, open: impl Fn(c_int) -> c_int) -> c_int {
    if !active() || flags & libc::O_CREAT == 0 {
        return open(flags);
    }
    if flags & libc::O_EXCL != 0 {
        let fd = open(flags);
        report(fd);
        return fd;
    }
    let fd = open(flags | libc::O_EXCL);
    if fd >= 0 {
        report(fd);
        return fd;
    }
    if crate::eintr::errno() != libc::EEXIST {
        return fd;
    }
    open(flags)
}

/// # Safety
/// As glibc's `open` (the mode is read only with `O_CREAT`/`O_TMPFILE`,
/// as the C variadic one does: on x86-64 the third argument is passed the
/// same way).
#[no_mangle]
pub unsafe extern "C" fn open(path: *const c_char, flags: c_int, mode: c_uint) -> c_int {
    let next = real!(open: fn(*const c_char, c_int, c_uint) -> c_int);
    // SAFETY: forwarded with the program's own arguments.
    creating(flags, |f| unsafe { next(path, f, mode) })
}

/// # Safety
/// As glibc's `open64`.
#[no_mangle]
pub unsafe extern "C" fn open64(path: *const c_char, flags: c_int, mode: c_uint) -> c_int {
    let next = real!(open64: fn(*const c_char, c_int, c_uint) -> c_int);
    // SAFETY: forwarded with the program's own arguments.
    creating(flags, |f| unsafe { next(path, f, mode) })
}

/// # Safety
/// As glibc's `openat`.
#[no_mangle]
pub unsafe extern "C" fn openat(dir: c_int, path: *const c_char, flags: c_int, mode: c_uint) -> c_int {
    let next = real!(openat: fn(c_int, *const c_char, c_int, c_uint) -> c_int);
    // SAFETY: forwarded with the program's own arguments.
    creating(flags, |f| unsafe { next(dir, path, f, mode) })
}

/// # Safety
/// As glibc's `openat64`.
#[no_mangle]
pub unsafe extern "C" fn openat64(dir: c_int, path: *const c_char, flags: c_int, mode: c_uint) -> c_int {
    let next = real!(openat64: fn(c_int, *const c_char, c_int, c_uint) -> c_int);
    // SAFETY: forwarded with the program's own arguments.
    creating(flags, |f| unsafe { next(dir, path, f, mode) })
}

/// # Safety
/// As glibc's `creat`.
#[no_mangle]
pub unsafe extern "C" fn creat(path: *const c_char, mode: c_uint) -> c_int {
    // SAFETY: creat is open with these flags.
    unsafe { open(path, libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC, mode) }
}

/// # Safety
/// As glibc's `creat64`.
#[no_mangle]
pub unsafe extern "C" fn creat64(path: *const c_char, mode: c_uint) -> c_int {
    // SAFETY: creat64 is open64 with these flags.
    unsafe { open64(path, libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC, mode) }
}

/// Whether an fopen mode may create the file ("w", "a", with or without
/// "+", "b", "e", "x"...).
///
/// # Safety
/// `mode` must be NUL-terminated.
unsafe fn fopen_creates(mode: *const c_char) -> bool {
    // SAFETY: mode is NUL-terminated per the contract.
    let m = unsafe { core::ffi::CStr::from_ptr(mode) }.to_bytes();
    matches!(m.first(), Some(b'w' | b'a'))
}

/// `fopen`-like `f`, reporting the file if it did not exist before.
///
/// # Safety
/// `path` and `mode` must be NUL-terminated.
unsafe fn fopening(path: *const c_char, mode: *const c_char, f: impl Fn() -> *mut libc::FILE) -> *mut libc::FILE {
    // SAFETY: mode is NUL-terminated per the contract.
    if !active() || path.is_null() || mode.is_null() || !unsafe { fopen_creates(mode) } {
        return f();
    }
    // SAFETY: path is NUL-terminated per the contract.
    let existed = unsafe { libc::access(path, libc::F_OK) } == 0;
    let saved = crate::eintr::errno();
    let file = f();
    if !file.is_null() && !existed {
        // SAFETY: a FILE glibc just returned.
        report(unsafe { libc::fileno(file) });
    }
    if file.is_null() {
        return file;
    }
    crate::eintr::set_errno(saved);
    file
}

/// # Safety
/// As glibc's `fopen`.
#[no_mangle]
pub unsafe extern "C" fn fopen(path: *const c_char, mode: *const c_char) -> *mut libc::FILE {
    let next = real!(fopen: fn(*const c_char, *const c_char) -> *mut libc::FILE);
    // SAFETY: forwarded with the program's own arguments.
    unsafe { fopening(path, mode, || next(path, mode)) }
}

/// # Safety
/// As glibc's `fopen64`.
#[no_mangle]
pub unsafe extern "C" fn fopen64(path: *const c_char, mode: *const c_char) -> *mut libc::FILE {
    let next = real!(fopen64: fn(*const c_char, *const c_char) -> *mut libc::FILE);
    // SAFETY: forwarded with the program's own arguments.
    unsafe { fopening(path, mode, || next(path, mode)) }
}

/// # Safety
/// As glibc's `mkstemp`.
#[no_mangle]
pub unsafe extern "C" fn mkstemp(template: *mut c_char) -> c_int {
    let next = real!(mkstemp: fn(*mut c_char) -> c_int);
    // SAFETY: forwarded unchanged.
    let fd = unsafe { next(template) };
    if active() {
        report(fd);
    }
    fd
}

/// # Safety
/// As glibc's `mkostemp`.
#[no_mangle]
pub unsafe extern "C" fn mkostemp(template: *mut c_char, flags: c_int) -> c_int {
    let next = real!(mkostemp: fn(*mut c_char, c_int) -> c_int);
    // SAFETY: forwarded unchanged.
    let fd = unsafe { next(template, flags) };
    if active() {
        report(fd);
    }
    fd
}
