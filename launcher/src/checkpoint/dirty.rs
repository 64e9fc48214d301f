//! Dirty tracking: which pages of a process were written since the
//! previous image, known without reading them.
//!
//! Each process of the tree makes, when asked at a checkpoint, a
//! userfaultfd for its own memory and passes it to the coordinator (the
//! agent's `tracker` module), which keeps it with the process's agent
//! connection ([`crate::agent::Tracked`]). While the tree is stopped, for
//! each private anonymous mapping (heap, stacks, malloc's arenas and
//! mmaps: the memory that is saved page by page):
//! - tracked already: PAGEMAP_SCAN lists the pages written since the last
//!   checkpoint and protects them again, in one walk of the page tables
//!   (1 GiB: 1-2 ms);
//! - not yet (new since, moved by mremap, or a first checkpoint): it is
//!   registered and protected (1 GiB populated: about 18 ms, once), and
//!   nothing is known of it this time; unless it is sparse (see
//!   [`DENSITY`]): then it is never tracked.
//!
//! The memory phase then reads, hashes and compresses only the pages the
//! tracker does not vouch for ([`Known::page`]); every other page is
//! the page the previous image restores at that address, taken from
//! there by its hash (`dedup::Base::hash_at`). That is only true if the
//! previous image is the one whose checkpoint protected them last: each
//! tracker carries the id of that image (`clean_since`), cleared while a
//! checkpoint is under way and set once its image is durable; any other
//! base (a failed checkpoint in between, a restart, `--full`) makes the
//! memory phase read everything (content dedup).
//!
//! Writes by the program, by the kernel on its behalf (read(2) into a
//! buffer, futexes) and by debuggers all go through a write fault and are
//! seen. Not seen: memory written by a device through pages pinned before
//! the checkpoint (RDMA, in-flight O_DIRECT by io_uring or Linux AIO), and
//! a program that runs PAGEMAP_SCAN with write-protection on its own
//! memory (it would clear the written state the coordinator reads); such
//! programs take `CKRUN_NO_DIRTY_TRACKING=1` (content dedup only).

use super::dedup::BasePage;
use crate::agent::Agent;
use crate::image::manifest::{Region, RegionKind};
use crate::sys::mem::RemoteMemory;

/// Whether dirty tracking is off for this run (`CKRUN_NO_DIRTY_TRACKING`):
/// every page is read and deduplicated by content.
pub fn disabled() -> bool {
    std::env::var_os("CKRUN_NO_DIRTY_TRACKING").is_some_and(|v| !v.is_empty() && v != "0")
}

/// Whether the coordinator should ask this process for a tracker.
pub fn wanted(agent: &Agent) -> bool {
    !disabled() && agent.tracker.lock().unwrap().is_none() && crate::sys::uffd::WriteTracker::room_for_one_more()
}

/// Takes the tracker an agent passed (a userfaultfd; anything else is
/// dropped); its pages are not known clean until its first checkpoint.
pub fn adopt(agent: &Agent) {
    let Some(fd) = agent.take_passed() else { return };
    if disabled() {
        return;
    }
    if let Some(uffd) = crate::sys::uffd::WriteTracker::from_fd(fd) {
        *agent.tracker.lock().unwrap() = Some(crate::agent::Tracked { uffd, clean_since: None });
    }
}

/// The memory the tracker covers: private anonymous mappings.
fn trackable(r: &Region) -> bool {
    !r.shared && matches!(r.kind, RegionKind::Anon | RegionKind::Stack) && r.end > r.start
}

/// What the tracker knows of one process's memory against the base.
#[derive(Debug, Default)]
pub struct Changes {
    /// Tracked mappings since the base (sorted): outside them nothing is known.
    tracked: Vec<(u64, u64)>,
    /// Their pages written since the base (sorted).
    written: Vec<(u64, u64)>,
}

/// What one scan did.
pub struct Scanned {
    /// What is known against the base, if the tracker's protection dates
    /// from the base image.
    pub changes: Option<Changes>,
    /// Whether every tracked page was protected again (its clean state
    /// then dates from the image being written, once it is durable).
    pub armed: bool,
}

/// While the process is stopped: reads and resets what its tracker saw
/// (`reader`: a live thread of it, for /proc), and tracks the mappings it
/// did not track yet. `base_id`: the image the new one is deduplicated
/// against. Never fails the checkpoint: a tracker that cannot be read
/// says nothing.
pub fn scan(agent: &Agent, reader: i32, regions: &[Region], base_id: Option<[u8; 16]>) -> Scanned {
    let mut guard = agent.tracker.lock().unwrap();
    let Some(t) = guard.as_mut() else { return Scanned { changes: None, armed: false } };
    let usable = t.clean_since.is_some() && t.clean_since == base_id;
    // Until this image is durable, nothing is known against any image.
    t.clean_since = None;
    let Ok(mem) = RemoteMemory::open(reader) else { return Scanned { changes: None, armed: false } };
    let mut changes = Changes::default();
    for r in regions.iter().filter(|r| trackable(r)) {
        match mem.written(r.start, r.end) {
            Ok(Some(w)) => {
                changes.tracked.push((r.start, r.end));
                changes.written.extend(w);
            }
            // New since the last checkpoint: tracked from now on if dense
            // enough, or, if the kernel will not, never known (read every
            // time).
            Ok(None) => {
                if dense(&mem, r.start, r.end) {
                    let _ = t.uffd.track(r.start, r.end - r.start);
                }
            }
            Err(_) => return Scanned { changes: None, armed: false },
        }
    }
    Scanned { changes: usable.then_some(changes), armed: true }
}

/// While the process is stopped, before [`scan`]: what its tracker saw
/// since the base, leaving the tracker as it is (a checkpoint that then
/// declines to copy the pages out, see `copyout`, is taken again with the
/// tracker still vouching for the base). None if it cannot vouch for the
/// base (`base_id`).
pub fn written_so_far(agent: &Agent, reader: i32, regions: &[Region], base_id: [u8; 16]) -> Option<Changes> {
    let guard = agent.tracker.lock().unwrap();
    guard.as_ref().filter(|t| t.clean_since == Some(base_id))?;
    let mem = RemoteMemory::open(reader).ok()?;
    let mut changes = Changes::default();
    for r in regions.iter().filter(|r| trackable(r)) {
        match mem.written_so_far(r.start, r.end) {
            Ok(Some(w)) => {
                changes.tracked.push((r.start, r.end));
                changes.written.extend(w);
            }
            Ok(None) => {}
            Err(_) => return None,
        }
    }
    Some(changes)
}

/// Whether the tracker of `agent` vouches for its pages against image `base_id`.
pub fn vouches_for(agent: &Agent, base_id: [u8; 16]) -> bool {
    agent.tracker.lock().unwrap().as_ref().is_some_and(|t| t.clean_since == Some(base_id))
}

/// Tracking a mapping gives every page of it a page-table entry (the
/// kernel marks even the untouched ones protected): 4 KiB of page tables
/// per 2 MiB mapped, whether used or not. A mapping is tracked only if at
/// least 1/[`DENSITY`] of its pages are populated, so that this costs at
/// most 1/32 of its memory in use; sparse ones (a 2 TiB reservation, a
/// thread's 8 MiB stack with 100 KiB used) are deduplicated by content,
/// which reads only what is populated.
const DENSITY: u64 = 16;

fn dense(mem: &RemoteMemory, start: u64, end: u64) -> bool {
    let Ok(Some(ranges)) = mem.populated(start, end) else { return false };
    let populated: u64 = ranges.iter().map(|r| r.end - r.start).sum();
    populated * DENSITY >= end - start
}

/// Once image `id` is durable: the trackers of `armed` agents vouch for
/// pages against it.
pub fn checkpointed(armed: &[&Agent], id: [u8; 16]) {
    for a in armed {
        if let Some(t) = a.tracker.lock().unwrap().as_mut() {
            t.clean_since = Some(id);
        }
    }
}

/// What is known of a page without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Page<'a> {
    /// Not tracked, or written since the base: read it.
    Unknown,
    /// Unchanged since the base, which restores it as zeros (it did not
    /// save it): still zeros.
    Zero,
    /// Unchanged since the base, which restores it as this page.
    Same(&'a BasePage),
}

/// A process's [`Changes`] with the base's pages of that process (sorted
/// by address).
pub struct Known<'a> {
    pub changes: &'a Changes,
    pub base_pages: &'a [BasePage],
}

/// The ranges of sorted `ranges` that may hold addresses from `addr` on.
fn from(ranges: &[(u64, u64)], addr: u64) -> &[(u64, u64)] {
    &ranges[ranges.partition_point(|&(_, end)| end <= addr)..]
}

impl Known<'_> {
    /// What is known of each of the `n` pages from `addr` (one lookup per
    /// run, then a walk: a GiB is 262144 pages).
    pub fn pages<'b>(&'b self, addr: u64, n: usize, out: &mut [Page<'b>]) {
        let ps = crate::sys::PAGE_SIZE;
        let (mut tracked, mut written) = (from(&self.changes.tracked, addr), from(&self.changes.written, addr));
        let mut base = &self.base_pages[self.base_pages.partition_point(|p| p.addr < addr)..];
        for (k, slot) in out.iter_mut().enumerate().take(n) {
            let at = addr + k as u64 * ps;
            while tracked.first().is_some_and(|&(_, e)| e <= at) {
                tracked = &tracked[1..];
            }
            while written.first().is_some_and(|&(_, e)| e <= at) {
                written = &written[1..];
            }
            while base.first().is_some_and(|p| p.addr < at) {
                base = &base[1..];
            }
            let inside = |r: &[(u64, u64)]| r.first().is_some_and(|&(s, _)| s <= at);
            *slot = if !inside(tracked) || inside(written) {
                Page::Unknown
            } else {
                match base.first() {
                    Some(p) if p.addr == at => Page::Same(p),
                    _ => Page::Zero,
                }
            };
        }
    }

    /// The written pages of `[start, end)`, as ranges in address order.
    pub fn written_in(&self, start: u64, end: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        from(&self.changes.written, start)
            .iter()
            .map(move |&(s, e)| (s.max(start), e.min(end)))
            .take_while(move |&(s, _)| s < end)
            .filter(|&(s, e)| s < e)
    }

    /// Whether the mapping `[start, end)` is tracked since the base.
    pub fn tracks(&self, start: u64, end: u64) -> bool {
        self.changes.tracked.binary_search(&(start, end)).is_ok()
    }

    /// The pages of the tracked mapping `[start, end)` to save, in
    /// address order (as ranges, given to `add`): the base's pages the
    /// tracker says unchanged, and every page written since.
    pub fn candidates(&self, start: u64, end: u64, mut add: impl FnMut(u64, u64)) {
        let ps = crate::sys::PAGE_SIZE;
        let mut written = from(&self.changes.written, start).iter().map(|&(s, e)| (s.max(start), e.min(end)));
        let mut base = self.base_pages[self.base_pages.partition_point(|p| p.addr < start)..]
            .iter()
            .map(|p| p.addr)
            .take_while(|&a| a < end)
            .peekable();
        let mut next_written = written.next().filter(|&(s, e)| s < e && s < end);
        loop {
            match (base.peek().copied(), next_written) {
                (Some(a), Some((ws, _))) if a < ws => {
                    add(a, a + ps);
                    base.next();
                }
                (_, Some((ws, we))) => {
                    add(ws, we);
                    while base.next_if(|&a| a < we).is_some() {}
                    next_written = written.next().filter(|&(s, e)| s < e && s < end);
                }
                (Some(a), None) => {
                    add(a, a + ps);
                    base.next();
                }
                (None, None) => break,
            }
        }
    }

    #[cfg(test)]
    fn page(&self, addr: u64) -> Page<'_> {
        let mut one = [Page::Unknown];
        self.pages(addr, 1, &mut one);
        one[0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::dedup::PageLoc;
    use crate::sys::uffd::WriteTracker;
    use crate::sys::PAGE_SIZE;

    #[test]
    fn pages_are_unknown_outside_tracked_memory_and_where_written() {
        let changes = Changes { tracked: vec![(0x10000, 0x20000)], written: vec![(0x11000, 0x13000)] };
        let page = |addr, hash| BasePage { addr, hash, loc: Some(PageLoc { block: 0, page: hash as u32 }) };
        let base_pages = [page(0x10000, 7), page(0x11000, 8), page(0x14000, 9)];
        let k = Known { changes: &changes, base_pages: &base_pages };
        assert_eq!(k.page(0x10000), Page::Same(&base_pages[0]));
        assert_eq!(k.page(0x11000), Page::Unknown);
        assert_eq!(k.page(0x12000), Page::Unknown);
        assert_eq!(k.page(0x13000), Page::Zero);
        assert_eq!(k.page(0x14000), Page::Same(&base_pages[2]));
        assert_eq!(k.page(0x20000), Page::Unknown);
        assert_eq!(k.page(0xf000), Page::Unknown);
        // What to save of the tracked mapping: base pages outside the
        // written range, the written range whole.
        let mut got = Vec::new();
        k.candidates(0x10000, 0x20000, |s, e| got.push((s, e)));
        assert_eq!(got, [(0x10000, 0x11000), (0x11000, 0x13000), (0x14000, 0x15000)]);
        assert!(k.tracks(0x10000, 0x20000) && !k.tracks(0x10000, 0x18000));
        // A run from 0xf000 over all of it: the same, page by page.
        let mut run = [Page::Unknown; 18];
        k.pages(0xf000, 18, &mut run);
        let one: Vec<Page> = (0..18u64).map(|i| k.page(0xf000 + i * 0x1000)).collect();
        assert_eq!(run.to_vec(), one);
    }

    /// A sparse mapping is not tracked: its page tables would cost more
    /// than the pages it uses.
    #[test]
    fn only_dense_mappings_are_tracked() {
        let ps = PAGE_SIZE as usize;
        let len = 4096 * ps; // 16 MiB
        let p = crate::sys::mem::test_mapping(len, libc::MAP_NORESERVE);
        let (start, end) = (p as u64, p as u64 + len as u64);
        let mem = RemoteMemory::open(std::process::id() as i32).unwrap();
        // SAFETY: within the mapping; no huge pages, so that one write
        // populates one page.
        unsafe {
            libc::madvise(p.cast(), len, libc::MADV_NOHUGEPAGE);
            for k in 0..200 {
                *p.add(k * 20 * ps) = 1;
            }
        }
        assert!(!dense(&mem, start, end), "200 of 4096 pages");
        // SAFETY: within the mapping.
        unsafe { std::ptr::write_bytes(p, 1, 256 * ps) };
        assert!(dense(&mem, start, end), "256 and 190 more of 4096 pages");
        // SAFETY: unmapping our own mapping.
        unsafe { libc::munmap(p.cast(), len) };
    }

    /// The kernel side, on this process's own memory: tracked, written,
    /// scanned (and protected again), written again; MADV_DONTNEED counts
    /// as written. Skipped where userfaultfd is not allowed.
    #[test]
    fn the_scan_reports_the_pages_written_since_the_last_scan() {
        let Some(t) = WriteTracker::of_this_process() else {
            eprintln!("skipped: no userfaultfd here");
            return;
        };
        let ps = PAGE_SIZE as usize;
        let len = 64 * ps;
        let p = crate::sys::mem::test_mapping(len, 0);
        let start = p as u64;
        let end = start + len as u64;
        // SAFETY: within the mapping.
        unsafe { std::ptr::write_bytes(p, 1, len) };
        let mem = RemoteMemory::open(std::process::id() as i32).unwrap();
        if mem.written(start, end).unwrap().is_some() {
            panic!("an untracked mapping must say so");
        }
        if let Err(e) = t.track(start, len as u64) {
            eprintln!("skipped: the kernel has no asynchronous write-protection ({e})");
            return;
        }
        assert_eq!(mem.written(start, end).unwrap(), Some(vec![]));
        // SAFETY: within the mapping.
        unsafe {
            *p.add(3 * ps) = 2;
            *p.add(4 * ps + 17) = 2;
            *p.add(40 * ps) = 2;
        }
        let a = |k: usize| start + (k * ps) as u64;
        assert_eq!(mem.written(start, end).unwrap(), Some(vec![(a(3), a(5)), (a(40), a(41))]));
        assert_eq!(mem.written(start, end).unwrap(), Some(vec![]), "protected again by the scan");
        // SAFETY: within the mapping.
        unsafe {
            libc::madvise(p.add(10 * ps).cast(), ps, libc::MADV_DONTNEED);
            *p.add(63 * ps) = 3;
        }
        assert_eq!(mem.written(start, end).unwrap(), Some(vec![(a(10), a(11)), (a(63), a(64))]));
        // SAFETY: unmapping our own mapping.
        unsafe { libc::munmap(p.cast(), len) };
    }
}
