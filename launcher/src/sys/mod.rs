//! Thin, typed wrappers over the Linux interfaces ckrun needs and nix does
//! not cover: /proc parsing, pagemap, cross-process memory reads, clone3,
//! kcmp. Unsafe code of the launcher lives here and in
//! `restore::restorer`, each block with its `SAFETY:` reason.

pub mod aligned;
pub mod machine;
pub mod mem;
pub mod proc;
pub mod procfs;
pub mod socket;
pub mod uffd;

pub const PAGE_SIZE: u64 = 4096;

/// `Err(io::Error)` from a raw libc return value.
pub fn check(r: libc::c_long) -> std::io::Result<libc::c_long> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}
