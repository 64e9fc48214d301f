//! Calls to the functions the agent interposes: each wrapper reaches the
//! next definition (glibc's) through `dlsym(RTLD_NEXT)`, resolved once.

use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// `real!(name: fn(ArgTypes) -> Ret)` evaluates to the next definition of
/// `name` as a function pointer of that type.
macro_rules! real {
    ($name:ident : fn($($arg:ty),*) -> $ret:ty) => {{
        fn resolve() -> unsafe extern "C" fn($($arg),*) -> $ret {
            static CACHE: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
            let p = $crate::real::next_symbol(&CACHE, concat!(stringify!($name), "\0"));
            // SAFETY: p is the address of glibc's `$name`, whose C signature
            // is the one spelled out at the call site.
            unsafe { core::mem::transmute::<usize, unsafe extern "C" fn($($arg),*) -> $ret>(p) }
        }
        resolve()
    }};
}
pub(crate) use real;

/// The next definition of `name` (NUL-terminated) after this library,
/// cached in `cache`. Never returns 0.
pub fn next_symbol(cache: &AtomicUsize, name: &str) -> usize {
    let p = cache.load(Relaxed);
    if p != 0 {
        return p;
    }
    // SAFETY: name is NUL-terminated (the macro appends it).
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr().cast()) } as usize;
    if p == 0 {
        missing(name);
    }
    cache.store(p, Relaxed);
    p
}

/// A wrapped function without a next definition cannot happen with glibc;
/// say so and stop rather than jump to address 0.
#[cold]
fn missing(name: &str) -> ! {
    let _ = crate::sys::write(2, b"ckrun agent: no next definition of ");
    let _ = crate::sys::write(2, name.trim_end_matches('\0').as_bytes());
    let _ = crate::sys::write(2, b"\n");
    crate::sys::exit_group(127)
}
