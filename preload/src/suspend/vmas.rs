//! Which mappings of this process a fork left out of the child: those the
//! program marked `MADV_DONTFORK` (the kernel's VM_DONTCOPY), read from
//! /proc with raw syscalls (the snapshot's intermediate runs this while
//! every thread of the program is parked).
//!
//! Not from /proc/self/smaps, which alone shows the flag ("dc" in
//! VmFlags): producing it walks the page tables of every mapping (measured
//! here: ~20 ms per GiB of touched memory, nearly as long as the fork
//! itself), which every checkpoint of every program would pay. Instead
//! the child's size is compared with ours (/proc/PID/statm, constant
//! time: a fork subtracts exactly the VM_DONTCOPY mappings from the
//! child's), and only when they differ are the two address lists
//! (/proc/PID/maps, no page walk) compared.

use super::tasks::format_decimal;
use crate::state::RacyCell;
use crate::sys;

/// Read buffers for this process's and the child's maps; only the
/// snapshot's intermediate uses them (one checkpoint at a time).
static OURS: RacyCell<[u8; 8192]> = RacyCell::new([0; 8192]);
static THEIRS: RacyCell<[u8; 8192]> = RacyCell::new([0; 8192]);

/// `/proc/{pid}/{file}` (pid 0: self), NUL-terminated, in `out`.
fn proc_path<'a>(pid: i32, file: &[u8], out: &'a mut [u8; 64]) -> &'a [u8] {
    let mut n = 6;
    out[..n].copy_from_slice(b"/proc/");
    if pid == 0 {
        out[n..n + 4].copy_from_slice(b"self");
        n += 4;
    } else {
        n += format_decimal(pid as u32, &mut out[n..n + 10]);
    }
    out[n] = b'/';
    n += 1;
    out[n..n + file.len()].copy_from_slice(file);
    n += file.len();
    out[n] = 0;
    &out[..n + 1]
}

/// The first field of `/proc/{pid}/statm` (pid 0: self): the pages mapped
/// (the kernel's total_vm).
pub fn mapped_pages(pid: i32) -> Option<u64> {
    let mut path = [0u8; 64];
    let fd = sys::open(proc_path(pid, b"statm", &mut path), libc::O_RDONLY | libc::O_CLOEXEC);
    if fd < 0 {
        return None;
    }
    let mut buf = [0u8; 128];
    let n = sys::read(fd as i32, &mut buf);
    sys::close(fd as i32);
    if n <= 0 {
        return None;
    }
    let mut v = 0u64;
    let mut any = false;
    for &c in &buf[..n as usize] {
        match c {
            b'0'..=b'9' => {
                v = v.checked_mul(10)?.checked_add((c - b'0') as u64)?;
                any = true;
            }
            _ => break,
        }
    }
    any.then_some(v)
}

/// The address ranges of a /proc/PID/maps file, line by line, through a
/// fixed buffer (a line longer than it is skipped over, not held).
pub struct Ranges<'a> {
    fd: i32,
    buf: &'a mut [u8],
    pos: usize,
    len: usize,
}

impl<'a> Ranges<'a> {
    pub fn open(pid: i32, buf: &'a mut [u8]) -> Option<Self> {
        let mut path = [0u8; 64];
        let fd = sys::open(proc_path(pid, b"maps", &mut path), libc::O_RDONLY | libc::O_CLOEXEC);
        (fd >= 0).then_some(Ranges { fd: fd as i32, buf, pos: 0, len: 0 })
    }

    fn byte(&mut self) -> Option<u8> {
        if self.pos == self.len {
            let n = sys::read(self.fd, self.buf);
            if n <= 0 {
                return None;
            }
            self.pos = 0;
            self.len = n as usize;
        }
        self.pos += 1;
        Some(self.buf[self.pos - 1])
    }

    /// A hexadecimal number ended by `end`.
    fn hex(&mut self, end: u8) -> Option<u64> {
        let mut v = 0u64;
        loop {
            let c = self.byte()?;
            let d = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                _ if c == end => return Some(v),
                _ => return None,
            };
            v = v << 4 | d as u64;
        }
    }

    /// The next line's `[start, end)` and whether its path starts with
    /// `prefix`; None at the end (or on garbage).
    pub fn next_range_named(&mut self, prefix: &[u8]) -> Option<(u64, u64, bool)> {
        let start = self.hex(b'-')?;
        let end = self.hex(b' ')?;
        // The path is the first field starting with '/' after the five
        // fixed ones (perms offset dev inode), none of which holds one.
        let mut matched = 0usize;
        let mut in_path = false;
        let mut ok = false;
        loop {
            let c = self.byte()?;
            if c == b'\n' {
                return Some((start, end, ok));
            }
            if !in_path && c == b'/' {
                in_path = true;
            }
            if in_path && !ok && matched < prefix.len() {
                if c == prefix[matched] {
                    matched += 1;
                    ok = matched == prefix.len();
                } else {
                    matched = prefix.len(); // not this path
                }
            }
        }
    }

    /// The next line's `[start, end)`; None at the end (or on garbage).
    fn next_range(&mut self) -> Option<(u64, u64)> {
        let start = self.hex(b'-')?;
        let end = self.hex(b' ')?;
        while self.byte()? != b'\n' {}
        Some((start, end))
    }
}

impl Drop for Ranges<'_> {
    fn drop(&mut self) {
        sys::close(self.fd);
    }
}

/// Calls `f` with each mapping of this process that the fork of `child`
/// left out: no mapping of the child overlaps it. Returns false when the
/// maps cannot be read (then nothing is known to be left out).
///
/// Only the snapshot's intermediate may call it (it owns the buffers).
pub fn for_each_left_out(child: i32, mut f: impl FnMut(u64, u64)) -> bool {
    if let (Some(ours), Some(theirs)) = (mapped_pages(0), mapped_pages(child)) {
        if ours == theirs {
            return true;
        }
    }
    // SAFETY: the intermediate owns both buffers (see above).
    let (a, b) = unsafe { (&mut *OURS.get(), &mut *THEIRS.get()) };
    let (Some(mut us), Some(mut them)) = (Ranges::open(0, a), Ranges::open(child, b)) else {
        return false;
    };
    // Both lists are sorted by address; the child's is ours minus the
    // mappings left out.
    // SysV segments are not in the snapshot: it detached them itself
    // (`crate::sysv`), whatever their flags.
    let mut c = them.next_range();
    while let Some((start, end, sysv)) = us.next_range_named(b"/SYSV") {
        while c.is_some_and(|(_, ce)| ce <= start) {
            c = them.next_range();
        }
        if !sysv && c.is_none_or(|(cs, _)| cs >= end) {
            f(start, end);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_size_and_maps() {
        assert!(mapped_pages(0).is_some_and(|p| p > 0));
        let mut path = [0u8; 64];
        assert_eq!(proc_path(1234, b"maps", &mut path), b"/proc/1234/maps\0");
        // A fork leaves out exactly what was marked MADV_DONTFORK.
        // SAFETY: a fresh anonymous mapping, used only here.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                3 << 16,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let mid = p as u64 + (1 << 16);
        // SAFETY: within the mapping just made.
        assert_eq!(unsafe { libc::madvise(mid as *mut _, 1 << 16, libc::MADV_DONTFORK) }, 0);
        // SAFETY: the child only pauses until killed.
        let child = unsafe { libc::fork() };
        if child == 0 {
            loop {
                // SAFETY: pause takes no arguments.
                unsafe { libc::pause() };
            }
        }
        let mut left_out = [(0, 0); 4];
        let mut n = 0;
        let ok = for_each_left_out(child, |s, e| {
            left_out[n] = (s, e);
            n += 1;
        });
        // SAFETY: our own child, killed and reaped; our own mapping.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, core::ptr::null_mut(), 0);
            libc::munmap(p, 3 << 16);
        }
        assert!(ok);
        assert_eq!(&left_out[..n], &[(mid, mid + (1 << 16))]);
    }
}
