//! Copy-out: an incremental checkpoint without a snapshot.
//!
//! A checkpoint normally has each process fork a copy-on-write snapshot
//! (the fork costs ~20-30 ms per GiB of memory, all of it inside the
//! pause) and reads the snapshot once the program runs again. When the
//! dirty tracker vouches for all but a few pages, the coordinator instead
//! asks the agents not to fork (`SUSPEND_FROZEN`), copies the pages it
//! must save (the ones written since the base, and those of memory the
//! tracker does not cover) out of the stopped processes into a buffer of
//! its own, on all cores but one (process_vm_readv, ~1.5 us per page),
//! reads the processes' smaps meanwhile on that one, and lets the program go on: the
//! rest of the checkpoint (hashing, compressing, writing) works from that
//! copy. The pause then costs what was written (or the smaps walk, ~15-25
//! ms per GiB, whichever is longer), not a fork of all there is; the
//! memory phase reads no snapshot, and the program takes no copy-on-write
//! faults while one lives. Measured on 1 GiB with 5% of its pages
//! rewritten: request to durable image ~80 ms instead of ~105, the pause
//! the same (README, "Incremental images").
//!
//! It is taken only where it reads exactly what a snapshot would have
//! given the memory phase: every page the base restores is offered by it
//! and none is due to be stored again ([`Base::copy_out_ok`]), so the pages
//! read are exactly those the tracker does not vouch for. The coordinator
//! tries it when the previous checkpoint read little ([`worth_trying`]),
//! and grows the buffer for it then, while the program runs ([`prepare`]);
//! once stopped, if more than 1/[`MAX_SHARE`] of the memory (or
//! [`MAX_BYTES`]) would have to be copied, the attempt is declined before
//! anything is changed ([`Declined`]: the tracker is only read, not reset):
//! the tree goes on at once, and the checkpoint is taken again with
//! snapshots.
//!
//! Pinning a page to read it (process_vm_readv) makes the kernel give the
//! program its own copy of a page it still shares copy-on-write with a
//! child it forked: at most the pages copied, which the program's next
//! write to them would have copied anyway.

use super::dedup::Base;
use super::dirty::{self, Changes, Known};
use super::memory::{self, PageRun, PageSource};
use crate::agent::Agent;
use crate::image::manifest::Region;
use crate::sys::mem::RemoteMemory;
use crate::sys::procfs::{self, VmaFlags};
use crate::sys::PAGE_SIZE;
use anyhow::{anyhow, Context, Result};
use std::sync::Mutex;

/// At most 1/MAX_SHARE of the memory the base restores is copied out:
/// copying a page costs ~15 times what the fork costs per page, so that
/// on two cores the copy takes no longer than the fork would have.
pub const MAX_SHARE: u64 = 16;
/// And at most this many bytes (ckrun keeps the buffer for the next
/// checkpoint).
pub const MAX_BYTES: u64 = 256 << 20;

/// A checkpoint tried with copy-out found more to copy than it takes (or
/// a tracker that no longer vouches for the base): nothing was taken, the
/// tree is resumed, and the checkpoint is taken again with snapshots.
#[derive(Debug, thiserror::Error)]
#[error("copy-out declined: {0}")]
pub struct Declined(pub String);

/// Whether copy-out is off for this run (`CKRUN_NO_COPY_OUT`): every
/// checkpoint forks snapshots.
pub fn disabled() -> bool {
    std::env::var_os("CKRUN_NO_COPY_OUT").is_some_and(|v| !v.is_empty() && v != "0")
}

/// Test hook (`CKRUN_TEST_COPY_OUT=always`): copy-out is tried at every
/// checkpoint it is possible for and taken whatever the share written (up
/// to [`MAX_BYTES`]), so that small test programs that change their memory
/// in every way go through it.
fn forced() -> bool {
    std::env::var_os("CKRUN_TEST_COPY_OUT").is_some_and(|v| v == "always")
}

/// Whether the next checkpoint should try copy-out, after one that saved
/// `memory_bytes` of which it read all but `unread_bytes`.
pub fn worth_trying(memory_bytes: u64, unread_bytes: u64) -> bool {
    let read = memory_bytes.saturating_sub(unread_bytes);
    !disabled() && (forced() || (memory_bytes > 0 && read.saturating_mul(MAX_SHARE) <= memory_bytes))
}

/// While the program runs, before a checkpoint that tries copy-out: grows
/// the buffer to half again the `bytes` the last checkpoint read, so
/// that the next one faults no fresh memory in while the program is
/// stopped (on this VM fresh pages cost the host a fault each: 53 MiB took
/// 110-150 ms inside the pause).
pub fn prepare(bytes: u64) {
    let want = (bytes + bytes / 2).min(MAX_BYTES) as usize;
    let mut buf = BUFFER.lock().unwrap();
    if buf.len() < want {
        buf.resize(want, 0);
    }
}

/// Frees the buffer: the next checkpoint does not try copy-out.
pub fn release() {
    *BUFFER.lock().unwrap() = Vec::new();
}

/// Whether a checkpoint of the processes of `agents` on `base` can be
/// taken with copy-out (see the module's doc).
pub fn possible(agents: &[&Agent], base: &Base) -> bool {
    base.copy_out_ok && agents.iter().all(|a| dirty::vouches_for(a, base.id()))
}

/// The buffer of the copied pages, kept between checkpoints: growing it
/// faults fresh pages in (zeroed by the kernel), which inside the pause
/// would cost as much as the copy.
static BUFFER: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// One process's part of the copy: what its tracker said, the runs the
/// memory phase saves, and the ranges copied (start, end, offset in the
/// buffer), in address order.
pub struct Process {
    pub changes: Changes,
    pub runs: Vec<PageRun>,
    ranges: Vec<(u64, u64, usize)>,
}

/// The pages copied out of the stopped tree.
pub struct CopyOut {
    pub processes: Vec<Process>,
    data: Vec<u8>,
}

impl Drop for CopyOut {
    fn drop(&mut self) {
        let mut kept = BUFFER.lock().unwrap();
        if kept.capacity() < self.data.capacity() {
            *kept = std::mem::take(&mut self.data);
        }
    }
}

impl CopyOut {
    /// The bytes copied.
    pub fn bytes(&self) -> u64 {
        self.processes.iter().flat_map(|p| &p.ranges).map(|&(s, e, _)| e - s).sum()
    }

    /// Process `i`'s copied pages, as the memory phase reads them.
    pub fn source(&self, i: usize) -> Copied<'_> {
        Copied { ranges: &self.processes[i].ranges, data: &self.data }
    }
}

/// One stopped process: its agent, the thread its /proc files are read
/// through, and its regions (from `capture_stopped`).
pub struct Stopped<'a> {
    pub agent: &'a Agent,
    pub reader: i32,
    pub pid: i32,
    pub regions: &'a mut Vec<Region>,
}

/// While the tree is stopped (before the tracker's scan): copies out the
/// pages the memory phase will save of each process, and gives the
/// regions their flags from the process's smaps (read meanwhile, on
/// another core). Declines without changing anything (see [`Declined`]).
pub fn take(procs: &mut [Stopped], base: &Base) -> Result<CopyOut> {
    let ps = PAGE_SIZE;
    let mut processes = Vec::new();
    let mut total = 0u64;
    let restored: u64 = procs.iter().map(|p| base.pages_of(p.pid).len() as u64 * ps).sum();
    for p in procs.iter() {
        let changes = dirty::written_so_far(p.agent, p.reader, p.regions, base.id())
            .ok_or_else(|| Declined(format!("the tracker of process {} does not vouch for the base", p.pid)))?;
        let known = Known { changes: &changes, base_pages: base.pages_of(p.pid) };
        let mem = RemoteMemory::open(p.reader)?;
        let runs = memory::select_pages_known(&mem, p.regions, |r| !r.shared, Some(&known))?;
        let wanted = pages_to_copy(&runs, p.regions, &known);
        let mut ranges = Vec::with_capacity(wanted.len());
        for (start, end) in wanted {
            ranges.push((start, end, total as usize));
            total += end - start;
        }
        processes.push(Process { changes, runs, ranges });
    }
    if total > MAX_BYTES || (total.saturating_mul(MAX_SHARE) > restored && !forced()) {
        return Err(Declined(format!("{} MiB to copy of {} MiB", total >> 20, restored >> 20)).into());
    }
    if super::injected("copy-out") {
        return Err(Declined("declined by CKRUN_TEST_FAIL".into()).into());
    }
    let mut data = std::mem::take(&mut *BUFFER.lock().unwrap());
    // Grown ahead of time by [`prepare`]; here only if more was written
    // than then foreseen. What it holds is overwritten, not zeroed.
    if data.len() < total as usize {
        data.resize(total as usize, 0);
    }
    let mut copy = CopyOut { processes, data };
    let threads = (std::thread::available_parallelism().map_or(2, |n| n.get()).min(16) - 1).max(1);
    for (i, p) in procs.iter_mut().enumerate() {
        let ranges = &copy.processes[i].ranges;
        let Some(&(_, _, first)) = ranges.first() else {
            memory::take_vm_flags(p.regions, &procfs::vm_flags(p.reader)?, true);
            continue;
        };
        let last = ranges.last().map_or(first, |&(s, e, at)| at + (e - s) as usize);
        let area = &mut copy.data[first..last];
        let (reader, pid) = (p.reader, p.pid);
        // The flags (smaps walks the page tables: ~15-25 ms per GiB) on
        // one core while the pages are copied on the others: with both
        // copying on two cores, the three threads took 3-5 ms longer.
        let vmas = std::thread::scope(|sc| {
            let vmas = sc.spawn(|| procfs::vm_flags(reader).with_context(|| format!("process {pid}")));
            copy_ranges(reader, ranges, first, area, threads)?;
            vmas.join().map_err(|_| anyhow!("reading smaps of process {pid} panicked"))?
        })?;
        wipe_on_fork(ranges, &vmas, &mut copy.data);
        memory::take_vm_flags(p.regions, &vmas, true);
    }
    Ok(copy)
}

/// The pages `save_pages` reads of `runs` with `known`, when every page
/// the tracker vouches for is the base's (as [`Base::copy_out_ok`]
/// ensures): in mappings the tracker covers, the pages written since; in
/// the others, every page of the runs. Adjacent ranges joined.
fn pages_to_copy(runs: &[PageRun], regions: &[Region], known: &Known) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut add = |s: u64, e: u64| match out.last_mut() {
        Some(last) if last.1 == s => last.1 = e,
        _ => out.push((s, e)),
    };
    for run in runs {
        let r = &regions[run.region];
        let (start, end) = (run.addr, run.addr + run.npages as u64 * PAGE_SIZE);
        if known.tracks(r.start, r.end) {
            for (s, e) in known.written_in(start, end) {
                add(s, e);
            }
        } else {
            add(start, end);
        }
    }
    out
}

/// Zeroes the copied bytes of `MADV_WIPEONFORK` mappings (`vmas` with
/// "wf"): a snapshot, a fork, reads them as zeros, and the images before
/// this one (and after it, with snapshots) hold them so; copied as they
/// are, such a mapping (a random generator's state, which tells a fork by
/// finding it zeroed) would come back part zeroed, part not.
fn wipe_on_fork(ranges: &[(u64, u64, usize)], vmas: &[VmaFlags], data: &mut [u8]) {
    for v in vmas.iter().filter(|v| v.has("wf")) {
        let from = ranges.partition_point(|&(_, e, _)| e <= v.start);
        for &(s, e, off) in ranges[from..].iter().take_while(|&&(s, _, _)| s < v.end) {
            let (a, b) = (s.max(v.start), e.min(v.end));
            if a < b {
                let at = off + (a - s) as usize;
                data[at..at + (b - a) as usize].fill(0);
            }
        }
    }
}

/// One copying thread's ranges (address, end, offset in the buffer) and
/// the bytes of the buffer they fill.
type Part<'a> = (&'a [(u64, u64, usize)], &'a mut [u8]);

/// Reads `ranges` (offsets from `base` on) of process `reader` into
/// `area`, split over `threads` threads by bytes.
fn copy_ranges(reader: i32, ranges: &[(u64, u64, usize)], base: usize, area: &mut [u8], threads: usize) -> Result<()> {
    let mem = RemoteMemory::open(reader)?;
    let share = area.len().div_ceil(threads.max(1)).max(1);
    // Each thread takes the ranges that start in its share of the bytes,
    // and the bytes those ranges cover.
    let mut parts: Vec<Part> = Vec::new();
    let (mut rest, mut rest_area, mut at) = (ranges, area, base);
    while !rest.is_empty() {
        let n = rest.partition_point(|&(_, _, off)| off < at + share).max(1);
        let (mine, others) = rest.split_at(n);
        let end = mine.last().map_or(at, |&(s, e, off)| off + (e - s) as usize);
        let (area_mine, area_rest) = std::mem::take(&mut rest_area).split_at_mut(end - at);
        parts.push((mine, area_mine));
        (rest, rest_area, at) = (others, area_rest, end);
    }
    std::thread::scope(|sc| {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|(mine, area)| {
                let mem = &mem;
                sc.spawn(move || -> Result<()> {
                    let list: Vec<(u64, usize)> = mine.iter().map(|&(s, e, _)| (s, (e - s) as usize)).collect();
                    mem.read_scattered(&list, area)
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| h.join().map_err(|_| anyhow!("copying memory panicked"))?)
    })
}

/// One process's copied pages, read as the snapshot would be.
pub struct Copied<'a> {
    ranges: &'a [(u64, u64, usize)],
    data: &'a [u8],
}

impl PageSource for Copied<'_> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        let mut at = addr;
        let mut done = 0usize;
        let mut k = self.ranges.partition_point(|&(_, e, _)| e <= at);
        while done < buf.len() {
            let Some(&(s, e, off)) = self.ranges.get(k).filter(|&&(s, _, _)| s <= at) else {
                return Err(anyhow!("the page at {at:#x} was not copied while the program was stopped"));
            };
            let n = ((e - at) as usize).min(buf.len() - done);
            let from = off + (at - s) as usize;
            buf[done..done + n].copy_from_slice(&self.data[from..from + n]);
            done += n;
            at += n as u64;
            k += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copied_pages_read_across_adjacent_ranges_and_refuse_others() {
        let ps = PAGE_SIZE as usize;
        let data: Vec<u8> = (0..4 * ps).map(|i| (i / ps) as u8 + 1).collect();
        // Pages 0x10000-0x12000 and 0x12000-0x13000 (adjacent), 0x20000.
        let ranges = [(0x10000, 0x12000, 0), (0x12000, 0x13000, 2 * ps), (0x20000, 0x21000, 3 * ps)];
        let c = Copied { ranges: &ranges, data: &data };
        let mut buf = vec![0u8; 2 * ps];
        c.read(0x11000, &mut buf).unwrap();
        assert!(buf[..ps].iter().all(|&b| b == 2) && buf[ps..].iter().all(|&b| b == 3));
        c.read(0x20000, &mut buf[..ps]).unwrap();
        assert!(buf[..ps].iter().all(|&b| b == 4));
        assert!(c.read(0x13000, &mut buf[..ps]).is_err());
        assert!(c.read(0x12000, &mut buf).is_err(), "runs past the last adjacent range");
        assert!(c.read(0xf000, &mut buf[..ps]).is_err());
    }

    #[test]
    fn wipe_on_fork_mappings_are_copied_as_zeros() {
        let ps = PAGE_SIZE as usize;
        let mut data = vec![7u8; 4 * ps];
        // Pages 0x10000-0x12000, 0x13000 and 0x20000; "wf" on 0x11000-0x14000.
        let ranges = [(0x10000, 0x12000, 0), (0x13000, 0x14000, 2 * ps), (0x20000, 0x21000, 3 * ps)];
        let vmas = [
            VmaFlags { start: 0x10000, end: 0x11000, flags: "rd wr".into() },
            VmaFlags { start: 0x11000, end: 0x14000, flags: "rd wr wf".into() },
            VmaFlags { start: 0x20000, end: 0x21000, flags: "rd wr".into() },
        ];
        wipe_on_fork(&ranges, &vmas, &mut data);
        let firsts: Vec<u8> = data.chunks(ps).map(|c| c[0]).collect();
        assert_eq!(firsts, [7, 0, 0, 7]);
        assert!(data[ps..3 * ps].iter().all(|&b| b == 0));
    }

    #[test]
    fn copy_out_is_tried_after_a_checkpoint_that_read_little() {
        assert!(worth_trying(1 << 30, (1 << 30) - (50 << 20)));
        assert!(!worth_trying(1 << 30, 0));
        assert!(!worth_trying(1 << 30, (1 << 30) - (100 << 20)), "a tenth of the memory: the fork is cheaper");
        assert!(!worth_trying(0, 0));
    }
}
