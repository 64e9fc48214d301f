//! Reading another process's memory: which pages exist (the PAGEMAP_SCAN
//! ioctl, or pagemap entries on kernels before 6.7) and their bytes
//! (/proc/PID/mem, which also reads pages the process itself may not,
//! such as PROT_NONE ones: it reads with FOLL_FORCE).

use super::PAGE_SIZE;
use anyhow::{Context, Result};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU8, Ordering};

pub const PM_PRESENT: u64 = 1 << 63;
pub const PM_SWAP: u64 = 1 << 62;
/// The page is a page-cache page of a file, or shared anonymous memory.
pub const PM_FILE: u64 = 1 << 61;

/// PAGEMAP_SCAN page categories (linux/fs.h).
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;
pub const PAGE_IS_FILE: u64 = 1 << 2;
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;
pub const PAGE_IS_PFNZERO: u64 = 1 << 5;

/// PAGEMAP_SCAN flags: write-protect the pages it reports; fail (EPERM)
/// on memory not write-protected asynchronously by a userfaultfd.
const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

/// `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: u64 = 0xc060_6610;

/// struct pm_scan_arg.
#[repr(C)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// What a PAGEMAP_SCAN asks for: pages with all the categories of
/// `all_of` (those of `inverted` inverted) and one of `any_of`.
struct Query {
    flags: u64,
    inverted: u64,
    all_of: u64,
    any_of: u64,
    returned: u64,
}

/// struct page_region: consecutive pages of the same categories.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

/// Whether this kernel has PAGEMAP_SCAN: 0 not known yet, 1 yes, 2 no.
static SCAN: AtomicU8 = AtomicU8::new(0);

pub struct RemoteMemory {
    pid: i32,
    mem: File,
    pagemap: File,
}

impl RemoteMemory {
    pub fn open(pid: i32) -> Result<Self> {
        let mem = File::open(format!("/proc/{pid}/mem")).with_context(|| format!("opening /proc/{pid}/mem"))?;
        let pagemap =
            File::open(format!("/proc/{pid}/pagemap")).with_context(|| format!("opening /proc/{pid}/pagemap"))?;
        Ok(RemoteMemory { pid, mem, pagemap })
    }

    /// One pagemap entry per page of `[start, start + npages * PAGE_SIZE)`.
    pub fn pagemap(&self, start: u64, npages: usize) -> Result<Vec<u64>> {
        let mut raw = vec![0u8; npages * 8];
        self.pagemap
            .read_exact_at(&mut raw, start / PAGE_SIZE * 8)
            .with_context(|| format!("reading pagemap of {} at {start:#x}", self.pid))?;
        Ok(raw.chunks_exact(8).map(|c| u64::from_ne_bytes(c.try_into().unwrap())).collect())
    }

    /// The populated pages of `[start, end)`: present or swapped, except
    /// those that map the shared zero page (read, never written: zeros),
    /// as ranges of consecutive pages with the same categories (of
    /// `PAGE_IS_PRESENT`, `PAGE_IS_SWAPPED`, `PAGE_IS_FILE`). The kernel
    /// walks only the page tables that exist, so this costs what is
    /// populated, not what is mapped: a 2 TiB reservation with a few pages
    /// touched takes microseconds where its pagemap is 4 GiB to read.
    /// None when the kernel has no PAGEMAP_SCAN (before 6.7).
    pub fn populated(&self, start: u64, end: u64) -> Result<Option<Vec<PageRegion>>> {
        if SCAN.load(Ordering::Relaxed) == 0 && std::env::var_os("CKRUN_NO_PAGEMAP_SCAN").is_some() {
            // For tests and measurements: as on a kernel without it.
            SCAN.store(2, Ordering::Relaxed);
        }
        if SCAN.load(Ordering::Relaxed) == 2 {
            return Ok(None);
        }
        let query = Query {
            flags: 0,
            // Not the zero page, and present or swapped.
            inverted: PAGE_IS_PFNZERO,
            all_of: PAGE_IS_PFNZERO,
            any_of: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            returned: PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_FILE,
        };
        match self.scan(start, end, &query) {
            Ok(out) => {
                SCAN.store(1, Ordering::Relaxed);
                Ok(Some(out))
            }
            Err(e) => {
                let missing = matches!(e.raw_os_error(), Some(libc::ENOTTY) | Some(libc::EINVAL));
                if missing && SCAN.load(Ordering::Relaxed) != 1 {
                    SCAN.store(2, Ordering::Relaxed);
                    return Ok(None);
                }
                Err(e).with_context(|| format!("PAGEMAP_SCAN of process {} at {start:#x}", self.pid))
            }
        }
    }

    /// The pages of `[start, end)` (one mapping, write-tracked by a
    /// [`super::uffd::WriteTracker`]) written since they were last
    /// protected, which this protects again, in the same walk of the page
    /// tables: a write after it is seen by the next call. A page that is no
    /// longer there (unmapped by MADV_DONTNEED) counts as written. None
    /// when the mapping is not tracked (made or moved since, or of a kind
    /// the tracker does not take): then nothing is known of it.
    pub fn written(&self, start: u64, end: u64) -> Result<Option<Vec<(u64, u64)>>> {
        self.written_then(start, end, true)
    }

    /// As [`RemoteMemory::written`], leaving the pages as they are: the
    /// next call (either) reports them again.
    pub fn written_so_far(&self, start: u64, end: u64) -> Result<Option<Vec<(u64, u64)>>> {
        self.written_then(start, end, false)
    }

    fn written_then(&self, start: u64, end: u64, protect: bool) -> Result<Option<Vec<(u64, u64)>>> {
        let query = Query {
            flags: if protect { PM_SCAN_WP_MATCHING } else { 0 } | PM_SCAN_CHECK_WPASYNC,
            inverted: 0,
            all_of: PAGE_IS_WRITTEN,
            any_of: 0,
            returned: PAGE_IS_WRITTEN,
        };
        match self.scan(start, end, &query) {
            Ok(out) => Ok(Some(out.into_iter().map(|r| (r.start, r.end)).collect())),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::ENOTTY) | Some(libc::EINVAL)) => {
                Ok(None)
            }
            Err(e) => Err(e).with_context(|| format!("PAGEMAP_SCAN of process {} at {start:#x}", self.pid)),
        }
    }

    /// PAGEMAP_SCAN of `[start, end)` until its walk reaches `end` (it may
    /// stop early: a full output, a huge page split), ranges joined.
    fn scan(&self, start: u64, end: u64, q: &Query) -> std::io::Result<Vec<PageRegion>> {
        let mut out: Vec<PageRegion> = Vec::new();
        let mut batch = vec![PageRegion::default(); 512];
        let mut at = start;
        while at < end {
            let mut arg = PmScanArg {
                size: std::mem::size_of::<PmScanArg>() as u64,
                flags: q.flags,
                start: at,
                end,
                walk_end: 0,
                vec: batch.as_mut_ptr() as u64,
                vec_len: batch.len() as u64,
                max_pages: 0,
                category_inverted: q.inverted,
                category_mask: q.all_of,
                category_anyof_mask: q.any_of,
                return_mask: q.returned,
            };
            // SAFETY: the kernel reads `arg` and writes at most vec_len
            // page_regions into `batch`, which outlives the call, and
            // walk_end into `arg`.
            let n = unsafe { libc::ioctl(self.pagemap.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg) };
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            for r in &batch[..(n as usize).min(batch.len())] {
                match out.last_mut() {
                    Some(l) if l.end == r.start && l.categories == r.categories => l.end = r.end,
                    _ => out.push(*r),
                }
            }
            if arg.walk_end <= at || arg.walk_end > end {
                return Err(std::io::Error::other(format!(
                    "PAGEMAP_SCAN of process {} stopped at {:#x} (from {at:#x})",
                    self.pid, arg.walk_end
                )));
            }
            at = arg.walk_end;
        }
        Ok(out)
    }

    /// Copies `buf.len()` bytes from `addr`.
    ///
    /// Always through /proc/PID/mem: it reads with FOLL_FORCE (PROT_NONE
    /// pages too) and, unlike process_vm_readv, does not pin the pages it
    /// reads, which on a copy-on-write snapshot makes the kernel copy each
    /// one (measured: 1 GiB snapshot, 1.5 s and +935 MiB of memory with
    /// process_vm_readv, 0.64 s and +4 MiB with pread).
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        self.mem
            .read_exact_at(buf, addr)
            .with_context(|| format!("reading {} bytes of process {} at {addr:#x}", buf.len(), self.pid))
    }

    /// Copies each range `(addr, len)` of `ranges` into `buf`, one after
    /// the other, with process_vm_readv: up to 1024 ranges per call, ~1.5
    /// us per page where /proc/PID/mem costs a call of ~2.4 us per range.
    /// Only for pages of a stopped process that it has to itself (written
    /// since its last fork: pinning them copies nothing); a range
    /// process_vm_readv cannot read (PROT_NONE) is read through
    /// /proc/PID/mem instead.
    pub fn read_scattered(&self, ranges: &[(u64, usize)], buf: &mut [u8]) -> Result<()> {
        const BATCH: usize = 1024; // IOV_MAX
        let mut at = 0usize;
        for batch in ranges.chunks(BATCH) {
            let len: usize = batch.iter().map(|r| r.1).sum();
            let local = [libc::iovec { iov_base: buf[at..at + len].as_mut_ptr().cast(), iov_len: len }];
            let remote: Vec<libc::iovec> =
                batch.iter().map(|&(a, l)| libc::iovec { iov_base: a as *mut libc::c_void, iov_len: l }).collect();
            // SAFETY: the local iovec is `len` bytes of `buf`, ours to
            // write; the remote ones are only read, in the other process.
            let n =
                unsafe { libc::process_vm_readv(self.pid, local.as_ptr(), 1, remote.as_ptr(), remote.len() as u64, 0) };
            // A short read stops at the first range it could not read:
            // the rest of the batch through /proc/PID/mem.
            let mut done = n.max(0) as usize;
            let mut off = 0usize;
            for &(a, l) in batch {
                if off + l > done {
                    let skip = done.saturating_sub(off);
                    self.read(a + skip as u64, &mut buf[at + off + skip..at + off + l])?;
                    done = off + l;
                }
                off += l;
            }
            at += len;
        }
        Ok(())
    }
}

/// A fresh private anonymous read-write mapping of `len` bytes (with
/// `extra` mmap flags), for tests; never unmapped by anyone else.
#[cfg(test)]
pub fn test_mapping(len: usize, extra: i32) -> *mut u8 {
    // SAFETY: a new mapping at an address the kernel picks, overlapping
    // nothing; the caller alone uses it.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | extra,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED, "mmap of {len} bytes");
    p.cast()
}

/// Whether a 4 KiB page holds only zeros.
pub fn is_zero_page(p: &[u8]) -> bool {
    let (pre, words, post) =
        // SAFETY: u128 has no invalid bit patterns; align_to splits correctly.
        unsafe { p.align_to::<u128>() };
    pre.iter().all(|&b| b == 0) && post.iter().all(|&b| b == 0) && words.iter().fold(0u128, |a, &w| a | w) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_pages() {
        let mut p = vec![0u8; PAGE_SIZE as usize];
        assert!(is_zero_page(&p));
        p[4095] = 1;
        assert!(!is_zero_page(&p));
    }

    #[test]
    fn reads_own_memory_and_pagemap() {
        let data = vec![0x5au8; 3 * PAGE_SIZE as usize];
        let m = RemoteMemory::open(std::process::id() as i32).unwrap();
        let mut out = vec![0u8; 100];
        m.read(data.as_ptr() as u64 + 10, &mut out).unwrap();
        assert!(out.iter().all(|&b| b == 0x5a));
        let start = (data.as_ptr() as u64).div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let pm = m.pagemap(start, 1).unwrap();
        assert!(pm[0] & PM_PRESENT != 0);
    }

    #[test]
    fn scattered_reads_take_protected_pages_through_proc_mem() {
        let ps = PAGE_SIZE as usize;
        let p = test_mapping(8 * ps, 0);
        // SAFETY: within the mapping: page k holds k + 1; page 5 is then
        // made PROT_NONE (process_vm_readv refuses it, /proc/PID/mem reads
        // it by force).
        unsafe {
            for k in 0..8 {
                std::ptr::write_bytes(p.add(k * ps), k as u8 + 1, ps);
            }
            assert_eq!(libc::mprotect(p.add(5 * ps).cast(), ps, libc::PROT_NONE), 0);
        }
        let at = |k: usize| p as u64 + (k * ps) as u64;
        let m = RemoteMemory::open(std::process::id() as i32).unwrap();
        // Pages 1, 4-6 (across the protected one), 7, in that order.
        let ranges = [(at(1), ps), (at(4), 3 * ps), (at(7), ps)];
        let mut buf = vec![0u8; 5 * ps];
        m.read_scattered(&ranges, &mut buf).unwrap();
        let firsts: Vec<u8> = buf.chunks(ps).map(|c| c[0]).collect();
        assert_eq!(firsts, [2, 5, 6, 7, 8]);
        assert!(buf.chunks(ps).all(|c| c.iter().all(|&b| b == c[0])));
        // SAFETY: unmapping our own mapping.
        unsafe { libc::munmap(p.cast(), 8 * ps) };
    }

    #[test]
    fn scans_populated_pages() {
        let ps = PAGE_SIZE as usize;
        let len = 64 * ps;
        let p = test_mapping(len, 0);
        // SAFETY: within the mapping: pages 3, 4 and 40 written, page 10
        // only read (the zero page).
        unsafe {
            libc::madvise(p.cast(), len, libc::MADV_NOHUGEPAGE);
            *p.add(3 * ps) = 1;
            *p.add(4 * ps) = 1;
            *p.add(40 * ps) = 1;
            std::ptr::read_volatile(p.add(10 * ps));
        }
        let m = RemoteMemory::open(std::process::id() as i32).unwrap();
        let start = p as u64;
        let Some(got) = m.populated(start, start + len as u64).unwrap() else {
            eprintln!("no PAGEMAP_SCAN on this kernel");
            return;
        };
        let page = |i: u64| start + i * PAGE_SIZE;
        let ranges: Vec<(u64, u64)> = got.iter().map(|r| (r.start, r.end)).collect();
        assert_eq!(ranges, vec![(page(3), page(5)), (page(40), page(41))]);
        assert!(got.iter().all(|r| r.categories == PAGE_IS_PRESENT));
        // SAFETY: unmapping our own mapping.
        unsafe { libc::munmap(p.cast(), len) };
    }
}
