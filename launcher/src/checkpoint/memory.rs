//! Memory capture: which regions a process has, which of their pages must
//! be saved, and the parallel read → zero-skip → compress → write pipeline.
//!
//! Saved: present (or swapped) pages of private anonymous memory, the
//! written pages of private file mappings (pagemap says they are no longer
//! the file's), and every page of memory that has no file to come back
//! from (shared anonymous, memfd, deleted files). Not saved: clean file
//! pages (re-mapped from the file), untouched pages, all-zero pages.

use super::dedup::{page_hash, Base, PageHashes, PageLoc};
use super::dirty::{Known, Page};
use crate::image::lineage::push_block_hashes;
use crate::image::manifest::{
    ChunkRef, FileRef, Region, RegionKind, REGION_DONTFORK, REGION_NORESERVE, REGION_WIPEONFORK,
};
use crate::image::ImageWriter;
use crate::sys::aligned::AlignedBuf;
use crate::sys::mem::{is_zero_page, RemoteMemory, PAGE_IS_FILE, PAGE_IS_SWAPPED, PM_FILE, PM_PRESENT, PM_SWAP};
use crate::sys::procfs::{file_stamp, MapEntry, VmaFlags};
use crate::sys::PAGE_SIZE;
use anyhow::{bail, Context, Result};
use ckrun_proto::MemRange;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

pub use crate::image::CHUNK_PAGES;

/// Turns /proc/PID/maps entries into image regions (without chunks yet).
/// `ghost` finds (saving it if needed) the deleted file or memfd a mapping
/// shows.
pub fn classify(maps: &[MapEntry], mut ghost: impl FnMut(&MapEntry) -> Result<u32>) -> Result<Vec<Region>> {
    let mut out = Vec::with_capacity(maps.len());
    for m in maps {
        let kind = match m.path.as_str() {
            "[vsyscall]" | "[uprobes]" => continue,
            "[vvar]" => RegionKind::Vvar,
            "[vvar_vclock]" => RegionKind::VvarVclock,
            "[vdso]" => RegionKind::Vdso,
            "[stack]" => RegionKind::Stack,
            p if m.shared && p.starts_with("[anon_shmem") => RegionKind::Ghost { ghost: ghost(m)?, offset: m.offset },
            p if m.shared && (p.is_empty() || p.starts_with("[anon")) => RegionKind::Detached,
            // A SysV segment's inode number is its ID (`crate::sysv`).
            p if crate::sysv::is_segment_mapping(p) => {
                RegionKind::Sysv { shmid: m.inode as i32, offset: m.offset, read_only: !m.write }
            }
            p if p.is_empty() || p.starts_with('[') => RegionKind::Anon,
            p if crate::fdtypes::ghost::is_ghost(p) => RegionKind::Ghost { ghost: ghost(m)?, offset: m.offset },
            p if crate::fdtypes::ghost::is_shm_object(p) => RegionKind::Ghost { ghost: ghost(m)?, offset: m.offset },
            p if p.starts_with("/dev/") => {
                bail!("a device is mapped into memory ({p} at {:#x}); ckrun cannot save device memory", m.start)
            }
            p => match file_ref(m, p) {
                // Written through the mapping (sqlite's WAL index): its
                // content at the checkpoint is saved, and comes back.
                Some(file) if crate::fdtypes::ghost::saved_when_mapped(m, file.size) => {
                    RegionKind::Ghost { ghost: ghost(m)?, offset: m.offset }
                }
                Some(file) => RegionKind::File { file, offset: m.offset },
                // Replaced since it was mapped: keep the pages themselves.
                None => RegionKind::Detached,
            },
        };
        out.push(Region {
            start: m.start,
            end: m.end,
            prot: m.prot(),
            shared: m.shared,
            kind,
            name: m.path.clone(),
            flags: 0,
            chunks: Vec::new(),
        });
    }
    Ok(out)
}

/// Marks the regions that lie in a mapping the agent reported it made
/// copyable for the snapshot: the program's MADV_DONTFORK memory (the
/// snapshot's own mappings no longer show the flag).
pub fn mark_dontfork(regions: &mut [Region], dontfork: &[MemRange]) {
    for r in regions.iter_mut() {
        if dontfork.iter().any(|d| d.start <= r.start && r.end <= d.end) {
            r.flags |= REGION_DONTFORK;
        }
    }
}

/// The mapping of `vmas` (sorted, as smaps lists them) that holds `addr`.
fn vma_at(vmas: &[VmaFlags], addr: u64) -> Option<&VmaFlags> {
    let i = vmas.partition_point(|v| v.end <= addr);
    vmas.get(i).filter(|v| v.start <= addr)
}

/// Takes each region's flags from the VmFlags of the process that holds
/// its memory (`vmas`: the frozen process, or the snapshot, where the
/// fork kept every flag but MADV_DONTFORK, which then comes from the
/// agent: `dontfork` false).
pub fn take_vm_flags(regions: &mut [Region], vmas: &[VmaFlags], dontfork: bool) {
    for r in regions.iter_mut() {
        let Some(v) = vma_at(vmas, r.start) else { continue };
        // Attached writable, then made read-only with mprotect: "mw" (may
        // write) tells it from an SHM_RDONLY attachment.
        if let RegionKind::Sysv { read_only, .. } = &mut r.kind {
            *read_only &= !v.has("mw");
        }
        for (code, bit) in [("nr", REGION_NORESERVE), ("wf", REGION_WIPEONFORK), ("dc", REGION_DONTFORK)] {
            if v.has(code) && (bit != REGION_DONTFORK || dontfork) {
                r.flags |= bit;
            }
        }
    }
}

/// Fails, naming the first, when a private region of the program is not
/// in its snapshot (`vmas`): memory a fork leaves out, MADV_DONTFORK that
/// the agent could not clear. Never a silent hole in the image.
pub fn check_in_snapshot(regions: &[Region], vmas: &[VmaFlags]) -> Result<()> {
    for r in regions.iter().filter(|r| !r.shared) {
        if matches!(r.kind, RegionKind::Vvar | RegionKind::VvarVclock | RegionKind::Vdso) {
            continue;
        }
        let mut at = r.start;
        while let Some(v) = vma_at(vmas, at).filter(|_| at < r.end) {
            at = v.end;
        }
        if at < r.end {
            let name = if r.name.is_empty() { "anonymous memory" } else { &r.name };
            bail!(
                "{name} at {:#x}-{:#x} is not in the copy-on-write snapshot (the program marked it \
                 MADV_DONTFORK, and the kernel refused to make it copyable); --no-fork saves it",
                r.start,
                r.end
            );
        }
    }
    Ok(())
}

/// The file behind a mapping, if the path still names the mapped inode.
fn file_ref(m: &MapEntry, path: &str) -> Option<FileRef> {
    let (_, ino, size, mtime_ns) = file_stamp(std::path::Path::new(path)).ok()?;
    (ino == m.inode).then(|| FileRef { path: PathBuf::from(path), size, mtime_ns, inode: ino })
}

/// A run of pages to read and save.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRun {
    pub region: usize,
    pub addr: u64,
    pub npages: u32,
}

/// Which pages of a region are saved.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wanted {
    /// Every page: there is nothing else to come back from.
    All,
    /// Present or swapped pages.
    Populated,
    /// Pages no longer the file's: written (copied on write) or swapped.
    Written,
}

/// Which pages of the regions `which` picks must be saved, as runs of at
/// most [`CHUNK_PAGES`]. The populated ranges come from PAGEMAP_SCAN, so
/// the cost follows the memory used, not the memory mapped (a sparse
/// reservation of terabytes costs nothing); without it (kernels before
/// 6.7), from pagemap entries, read a window at a time.
pub fn select_pages(mem: &RemoteMemory, regions: &[Region], which: impl Fn(&Region) -> bool) -> Result<Vec<PageRun>> {
    select_pages_known(mem, regions, which, None)
}

/// As [`select_pages`]; in the mappings the dirty tracker covers
/// (`known`), the pages are those the base restores and the tracker
/// says unchanged, and those written since (read, a page no longer there
/// reads as zeros and is dropped): no walk of their page tables.
pub fn select_pages_known(
    mem: &RemoteMemory,
    regions: &[Region],
    which: impl Fn(&Region) -> bool,
    known: Option<&Known>,
) -> Result<Vec<PageRun>> {
    let mut runs = Vec::new();
    for (i, r) in regions.iter().enumerate().filter(|(_, r)| which(r)) {
        let wanted = match &r.kind {
            RegionKind::Vvar | RegionKind::VvarVclock | RegionKind::Vdso => continue,
            // The file (or the ghost's saved content) holds shared pages.
            RegionKind::File { .. } | RegionKind::Ghost { .. } if r.shared => continue,
            // The segment's content is saved once, with the segment.
            RegionKind::Sysv { .. } => continue,
            RegionKind::Detached => Wanted::All,
            RegionKind::File { .. } | RegionKind::Ghost { .. } => Wanted::Written,
            RegionKind::Anon | RegionKind::Stack => Wanted::Populated,
        };
        let mut out = Runs { region: i, runs: &mut runs, pending: None };
        if let Some(k) = known.filter(|k| wanted == Wanted::Populated && k.tracks(r.start, r.end)) {
            k.candidates(r.start, r.end, |start, end| out.add(start, end));
            out.flush();
            continue;
        }
        match wanted {
            Wanted::All => out.add(r.start, r.end),
            _ => match mem.populated(r.start, r.end)? {
                Some(ranges) => {
                    for p in ranges {
                        let c = p.categories;
                        let file = c & PAGE_IS_FILE != 0 && c & PAGE_IS_SWAPPED == 0;
                        if wanted == Wanted::Populated || !file {
                            out.add(p.start, p.end);
                        }
                    }
                }
                None => from_pagemap(mem, r, wanted, &mut out)?,
            },
        }
        out.flush();
    }
    Ok(runs)
}

/// The wanted pages of `r` from its pagemap entries, a window at a time.
fn from_pagemap(mem: &RemoteMemory, r: &Region, wanted: Wanted, out: &mut Runs) -> Result<()> {
    const WINDOW: u64 = 1 << 16; // pages: 512 KiB of entries
    let take = |e: u64| match wanted {
        Wanted::Written => e & PM_SWAP != 0 || (e & PM_PRESENT != 0 && e & PM_FILE == 0),
        _ => e & (PM_PRESENT | PM_SWAP) != 0,
    };
    let mut at = r.start;
    while at < r.end {
        let n = ((r.end - at) / PAGE_SIZE).min(WINDOW);
        for (k, e) in mem.pagemap(at, n as usize)?.into_iter().enumerate() {
            if take(e) {
                let page = at + k as u64 * PAGE_SIZE;
                out.add(page, page + PAGE_SIZE);
            }
        }
        at += n * PAGE_SIZE;
    }
    Ok(())
}

/// Collects the ranges of one region into [`PageRun`]s: consecutive
/// ranges joined, then cut at [`CHUNK_PAGES`].
struct Runs<'a> {
    region: usize,
    runs: &'a mut Vec<PageRun>,
    pending: Option<(u64, u64)>,
}

impl Runs<'_> {
    fn add(&mut self, start: u64, end: u64) {
        match &mut self.pending {
            Some((_, e)) if *e == start => *e = end,
            _ => {
                self.flush();
                self.pending = Some((start, end));
            }
        }
    }

    fn flush(&mut self) {
        let Some((mut at, end)) = self.pending.take() else { return };
        while at < end {
            let npages = ((end - at) / PAGE_SIZE).min(CHUNK_PAGES as u64);
            self.runs.push(PageRun { region: self.region, addr: at, npages: npages as u32 });
            at += npages * PAGE_SIZE;
        }
    }
}

/// Where [`save_pages`] reads the pages it saves: a snapshot (or the
/// frozen process) through /proc/PID/mem, or the pages copied out of the
/// stopped process (`copyout`).
pub trait PageSource: Sync {
    /// Copies `buf.len()` bytes from `addr`.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<()>;
}

impl PageSource for RemoteMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        RemoteMemory::read(self, addr, buf)
    }
}

/// Where the time of [`save_pages`] went, summed over its threads
/// (nanoseconds), for `CKRUN_TIMING`.
#[derive(Default, Debug)]
pub struct Stages {
    /// The coordinator's own steps before the workers start.
    pub smaps: AtomicU64,
    pub select: AtomicU64,
    pub read: AtomicU64,
    pub hash: AtomicU64,
    pub compress: AtomicU64,
    pub write: AtomicU64,
}

impl Stages {
    pub fn add(counter: &AtomicU64, since: Instant) -> Instant {
        let now = Instant::now();
        counter.fetch_add((now - since).as_nanos() as u64, Ordering::Relaxed);
        now
    }
}

/// What [`save_pages`] saved: bytes of page data (before compression),
/// of which `taken` are referred to in earlier images, not stored, and of
/// those `unread` were known unchanged by the dirty tracker (not read).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Saved {
    pub bytes: u64,
    pub taken: u64,
    pub unread: u64,
}

impl std::ops::AddAssign for Saved {
    fn add_assign(&mut self, o: Saved) {
        self.bytes += o.bytes;
        self.taken += o.taken;
        self.unread += o.unread;
    }
}

/// Reads the runs from `mem` on all cores, drops zero pages, hashes the
/// others (into `hashes`), takes those `base` holds from there,
/// compresses and appends the rest to `out` (each worker writes its own
/// chunks at reserved offsets), recording them in `regions`. The pages
/// `known` (the dirty tracker) vouches for are not read: they are the
/// base's.
pub fn save_pages(
    mem: &dyn PageSource,
    runs: &[PageRun],
    regions: &mut [Region],
    out: &ImageWriter,
    base: Option<&Base>,
    hashes: &mut PageHashes,
) -> Result<Saved> {
    save_pages_timed(mem, runs, regions, out, base, None, hashes, &Stages::default())
}

#[allow(clippy::too_many_arguments)]
pub fn save_pages_timed(
    mem: &dyn PageSource,
    runs: &[PageRun],
    regions: &mut [Region],
    out: &ImageWriter,
    base: Option<&Base>,
    known: Option<&Known>,
    hashes: &mut PageHashes,
    stages: &Stages,
) -> Result<Saved> {
    // A direct write blocks its thread until the disk has the data: one
    // more worker keeps the cores busy compressing meanwhile.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()).min(16);
    let workers = if out.is_direct() { cores + 1 } else { cores };
    let next = AtomicUsize::new(0);
    let first_err: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    // Each worker's chunks, hashes and unread bytes, handed back whole:
    // an incremental image of 1 GiB ten generations on has ~150k chunks
    // (8 MiB), and gathering them into one vector first, then into the
    // regions, cost 5-25 ms of copying and of faulting in fresh memory.
    let parts: Vec<WorkerSaved> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut buf = vec![0u8; CHUNK_PAGES as usize * PAGE_SIZE as usize];
                    let mut packed = AlignedBuf::new(lz4_flex::block::get_maximum_output_size(buf.len()));
                    let mut mine = Vec::new();
                    let mut my_hashes = PageHashes::default();
                    let mut to = Output {
                        image: out,
                        base,
                        known,
                        unread: 0,
                        chunks: &mut mine,
                        hashes: &mut my_hashes,
                        pending: Pending::default(),
                        packed: &mut packed,
                    };
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let r = match runs.get(i) {
                            Some(run) => save_run(mem, run, &mut buf, &mut to, stages),
                            None => to.flush(stages),
                        };
                        if let Err(e) = r {
                            first_err.lock().unwrap().get_or_insert(e);
                            // Stop the others quickly.
                            next.store(runs.len(), Ordering::Relaxed);
                            break;
                        }
                        if i >= runs.len() {
                            break;
                        }
                    }
                    let unread = to.unread;
                    (mine, my_hashes, unread)
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    if let Some(e) = first_err.into_inner().unwrap() {
        return Err(e);
    }
    if parts.len() < workers {
        bail!("a thread saving memory panicked");
    }
    let mut total = Saved::default();
    let mut per_region = vec![0usize; regions.len()];
    for (chunks, found, unread) in &parts {
        total.unread += unread;
        hashes.pages.extend_from_slice(&found.pages);
        hashes.own_blocks.extend_from_slice(&found.own_blocks);
        for (region, _) in chunks {
            per_region[*region] += 1;
        }
    }
    for (r, n) in regions.iter_mut().zip(&per_region) {
        r.chunks.reserve_exact(*n);
    }
    for (region, c) in parts.into_iter().flat_map(|(chunks, _, _)| chunks) {
        total.bytes += c.npages as u64 * PAGE_SIZE;
        if c.image > 0 {
            total.taken += c.npages as u64 * PAGE_SIZE;
        }
        regions[region].chunks.push(c);
    }
    // A region's chunks are disjoint (each page is saved once): their
    // addresses are distinct, and an unstable sort gives the one order,
    // 1-3 ms sooner than a stable one for the ~40k runs of an incremental
    // image of 1 GiB.
    for r in regions.iter_mut() {
        r.chunks.sort_unstable_by_key(|c| c.addr);
    }
    Ok(total)
}

/// What one worker saved: its chunks (with their regions), the hashes of
/// the pages it read, and the bytes it took unread.
type WorkerSaved = (Vec<(usize, ChunkRef)>, PageHashes, u64);

/// Where one worker's saved pages go.
struct Output<'a> {
    image: &'a ImageWriter,
    base: Option<&'a Base>,
    known: Option<&'a Known<'a>>,
    /// Bytes of pages taken from the base on the tracker's word, unread.
    unread: u64,
    chunks: &'a mut Vec<(usize, ChunkRef)>,
    hashes: &'a mut PageHashes,
    /// Pages to store, gathered until they make a whole block.
    pending: Pending,
    packed: &'a mut AlignedBuf,
}

/// The pages a worker has yet to store: an incremental checkpoint finds a
/// few changed pages per chunk read, and gathering them from many reads
/// into one block of up to [`CHUNK_PAGES`] pages makes one compression,
/// one 4 KiB-padded direct write and one block for a restart to read,
/// instead of one per read.
#[derive(Default)]
struct Pending {
    data: Vec<u8>,
    /// Their hashes, in the same order.
    hashes: Vec<u128>,
    /// (region, address, pages) of each piece, in the order of `data`.
    pieces: Vec<(usize, u64, u32)>,
}

impl Output<'_> {
    /// Adds `pages` (whole pages, from `addr` in region `region`, whose
    /// hashes are `hashes`) to the pending block, storing it first if they
    /// do not fit.
    fn store(&mut self, region: usize, addr: u64, pages: &[u8], hashes: &[u128], stages: &Stages) -> Result<()> {
        let ps = PAGE_SIZE as usize;
        if self.pending.data.len() + pages.len() > CHUNK_PAGES as usize * ps {
            self.flush(stages)?;
        }
        self.pending.data.extend_from_slice(pages);
        self.pending.hashes.extend_from_slice(hashes);
        self.pending.pieces.push((region, addr, (pages.len() / ps) as u32));
        Ok(())
    }

    /// Compresses and writes the pending pages as one block.
    fn flush(&mut self, stages: &Stages) -> Result<()> {
        if self.pending.data.is_empty() {
            return Ok(());
        }
        let t = Instant::now();
        let block_pages = (self.pending.data.len() / PAGE_SIZE as usize) as u32;
        let len = lz4_flex::block::compress_into(&self.pending.data, self.packed)
            .map_err(|e| anyhow::anyhow!("compressing: {e}"))?;
        let t = Stages::add(&stages.compress, t);
        let (offset, checksum) = self.image.append_aligned(self.packed, len)?;
        Stages::add(&stages.write, t);
        push_block_hashes(&mut self.hashes.own_blocks, offset, &self.pending.hashes);
        self.pending.hashes.clear();
        let mut skip = 0;
        for (region, addr, npages) in self.pending.pieces.drain(..) {
            let c = ChunkRef { skip, block_pages, ..ChunkRef::own(addr, npages, len as u32, offset, checksum) };
            self.chunks.push((region, c));
            skip += npages;
        }
        self.pending.data.clear();
        Ok(())
    }
}

/// Reads one run, splits it around zero pages and around the pages the
/// base holds (runs of consecutive pages of one of its blocks are taken
/// from there), and stores the other pages: as a block of their own when
/// the run stores all of its pages (a full image), else gathered with
/// other runs' pages (see [`Pending`]).
fn save_run(mem: &dyn PageSource, run: &PageRun, buf: &mut [u8], out: &mut Output, stages: &Stages) -> Result<()> {
    let ps = PAGE_SIZE as usize;
    let n = run.npages as usize;
    let data = &mut buf[..n * ps];
    let addr_of = |p: usize| run.addr + (p * ps) as u64;
    // Per page: None if all zero (not saved), else where the base holds it.
    let mut found: [Option<Option<PageLoc>>; CHUNK_PAGES as usize] = [None; CHUNK_PAGES as usize];
    // The pages to read: all but those the tracker knows unchanged (zero,
    // or the base's page of that hash, while the base may give it).
    let mut read = [true; CHUNK_PAGES as usize];
    if let (Some(known), Some(base)) = (out.known, out.base) {
        let mut pages = [Page::Unknown; CHUNK_PAGES as usize];
        known.pages(run.addr, n, &mut pages);
        for p in 0..n {
            match pages[p] {
                Page::Unknown => {}
                Page::Zero => read[p] = false,
                Page::Same(same) => {
                    if let Some(loc) = same.loc.filter(|loc| !base.store_again(*loc, addr_of(p))) {
                        read[p] = false;
                        found[p] = Some(Some(loc));
                        out.unread += PAGE_SIZE;
                    }
                }
            }
        }
    }
    let t = Instant::now();
    let mut p = 0;
    while p < n {
        if !read[p] {
            p += 1;
            continue;
        }
        let begin = p;
        while p < n && read[p] {
            p += 1;
        }
        let at = addr_of(begin);
        mem.read(at, &mut data[begin * ps..p * ps]).with_context(|| format!("saving memory at {at:#x}"))?;
    }
    let mut t = Stages::add(&stages.read, t);
    let mut hash_of = [0u128; CHUNK_PAGES as usize];
    for (p, slot) in found.iter_mut().enumerate().take(n).filter(|(p, _)| read[*p]) {
        let page = &data[p * ps..(p + 1) * ps];
        if !is_zero_page(page) {
            let h = page_hash(page);
            hash_of[p] = h;
            out.hashes.pages.push((run.addr + (p * ps) as u64, h));
            let at = run.addr + (p * ps) as u64;
            *slot = Some(out.base.and_then(|b| b.find(h).filter(|loc| !b.store_again(*loc, at))));
        }
    }
    t = Stages::add(&stages.hash, t);
    // The pages to store, gathered into one block (scattered changes make
    // one block, not one per page: each block is padded to 4 KiB for
    // O_DIRECT and written by one call); each piece of them is a run that
    // takes its pages from it.
    let mut own: Vec<(usize, usize)> = Vec::new();
    let mut gathered = 0usize;
    let mut p = 0usize;
    while p < n {
        match found[p] {
            None => p += 1,
            Some(Some(loc)) => {
                let base = out.base.expect("found in the base");
                let begin = p;
                p += 1;
                while p < n && found[p] == Some(Some(PageLoc { block: loc.block, page: loc.page + (p - begin) as u32 }))
                {
                    p += 1;
                }
                let c = base.run(loc.block, addr_of(begin), loc.page, (p - begin) as u32);
                out.chunks.push((run.region, c));
            }
            Some(None) => {
                let begin = p;
                while p < n && found[p] == Some(None) {
                    p += 1;
                }
                own.push((begin, p - begin));
                gathered += p - begin;
            }
        }
    }
    if gathered == n {
        // Every page is new: the run is a block of its own, as in a full
        // image (a restart decompresses it straight into place).
        let len = lz4_flex::block::compress_into(data, out.packed).map_err(|e| anyhow::anyhow!("compressing: {e}"))?;
        t = Stages::add(&stages.compress, t);
        let (offset, checksum) = out.image.append_aligned(out.packed, len)?;
        Stages::add(&stages.write, t);
        push_block_hashes(&mut out.hashes.own_blocks, offset, &hash_of[..n]);
        out.chunks.push((run.region, ChunkRef::own(run.addr, n as u32, len as u32, offset, checksum)));
        return Ok(());
    }
    // Copied once, from where they were read, into the pending block.
    for (begin, npages) in own {
        let hashes = &hash_of[begin..begin + npages];
        out.store(run.region, addr_of(begin), &data[begin * ps..(begin + npages) * ps], hashes, stages)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::procfs::parse_maps;

    #[test]
    fn classification() {
        let maps = parse_maps(
            "1000-2000 r-xp 00000000 00:00 0 [vdso]\n\
             2000-3000 rw-p 00000000 00:00 0 [heap]\n\
             3000-4000 rw-s 00000000 00:01 5 /dev/zero (deleted)\n\
             4000-5000 rw-p 00000000 00:00 0 [stack]\n\
             5000-6000 rw-p 00000000 00:00 0\n\
             ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]\n",
        )
        .unwrap();
        let r = classify(&maps, |_| Ok(0)).unwrap();
        let kinds: Vec<_> = r.iter().map(|r| r.kind.clone()).collect();
        // Shared anonymous memory is one object for the whole tree (a ghost).
        let ghost0 = RegionKind::Ghost { ghost: 0, offset: 0 };
        assert_eq!(kinds, vec![RegionKind::Vdso, RegionKind::Anon, ghost0, RegionKind::Stack, RegionKind::Anon]);
        assert!(classify(&parse_maps("1000-2000 rw-s 00000000 00:05 9 /dev/nvidia0\n").unwrap(), |_| Ok(0)).is_err());
        let ghost = classify(&parse_maps("1000-2000 rw-s 00000000 00:01 9 /memfd:x (deleted)\n").unwrap(), |_| Ok(7));
        assert_eq!(ghost.unwrap()[0].kind, RegionKind::Ghost { ghost: 7, offset: 0 });
    }

    fn anon(start: u64, end: u64) -> Region {
        Region {
            start,
            end,
            prot: 3,
            shared: false,
            kind: RegionKind::Anon,
            name: String::new(),
            flags: 0,
            chunks: vec![],
        }
    }

    fn vma(start: u64, end: u64, flags: &str) -> VmaFlags {
        VmaFlags { start, end, flags: flags.into() }
    }

    #[test]
    fn regions_missing_from_the_snapshot_fail_by_name() {
        let mut regions = vec![anon(0x1000, 0x3000), anon(0x3000, 0x5000), anon(0x8000, 0x9000)];
        regions[2].name = "/some/file".into();
        // The snapshot may merge what the program has apart (a mapping
        // whose MADV_DONTFORK was cleared joins its neighbours).
        let snapshot = vec![vma(0x1000, 0x5000, "rd wr nr"), vma(0x8000, 0x9000, "rd wr wf")];
        check_in_snapshot(&regions, &snapshot).unwrap();
        take_vm_flags(&mut regions, &snapshot, false);
        assert_eq!(regions.iter().map(|r| r.flags).collect::<Vec<_>>(), [2, 2, 4]);
        let holed = vec![vma(0x1000, 0x2000, ""), vma(0x8000, 0x9000, "")];
        let e = check_in_snapshot(&regions, &holed).unwrap_err().to_string();
        assert!(e.contains("anonymous memory at 0x1000-0x3000") && e.contains("MADV_DONTFORK"), "{e}");
        let later = vec![vma(0x1000, 0x3000, ""), vma(0x8000, 0x9000, "")];
        let e = check_in_snapshot(&regions, &later).unwrap_err().to_string();
        assert!(e.contains("anonymous memory at 0x3000-0x5000"), "{e}");
        // Shared memory is read from the program itself.
        regions[1].shared = true;
        check_in_snapshot(&regions, &later).unwrap();
        let e = check_in_snapshot(&regions, &later[..1]).unwrap_err().to_string();
        assert!(e.contains("/some/file at 0x8000-0x9000"), "{e}");
        // Flags from the frozen program's smaps, and from the agent.
        let mut r = vec![anon(0x1000, 0x3000), anon(0x3000, 0x5000)];
        take_vm_flags(&mut r, &[vma(0x1000, 0x3000, "dc"), vma(0x3000, 0x5000, "dc")], true);
        assert_eq!(r[0].flags, REGION_DONTFORK);
        let mut r = vec![anon(0x1000, 0x3000), anon(0x3000, 0x5000)];
        mark_dontfork(&mut r, &[MemRange { start: 0x3000, end: 0x5000 }]);
        assert_eq!((r[0].flags, r[1].flags), (0, REGION_DONTFORK));
    }

    #[test]
    fn scan_and_pagemap_select_the_same_pages() {
        let ps = PAGE_SIZE as usize;
        let len = 700 * ps;
        let p = crate::sys::mem::test_mapping(len, 0);
        // SAFETY: within the mapping: runs of written pages, longer than a
        // chunk too, and read-only touched ones (the zero page).
        unsafe {
            libc::madvise(p.cast(), len, libc::MADV_NOHUGEPAGE);
            for i in (0..700).filter(|i| i % 7 < 3 || (300..600).contains(i)) {
                *p.add(i * ps) = 1;
            }
            std::ptr::read_volatile(p.add(5 * ps));
        }
        let start = p as u64;
        let regions = vec![anon(start, start + len as u64)];
        let mem = RemoteMemory::open(std::process::id() as i32).unwrap();
        let scanned = select_pages(&mem, &regions, |_| true).unwrap();
        let mut runs = Vec::new();
        let mut out = Runs { region: 0, runs: &mut runs, pending: None };
        from_pagemap(&mem, &regions[0], Wanted::Populated, &mut out).unwrap();
        out.flush();
        // pagemap counts the zero page as present (its page is then
        // skipped as all zeros); PAGEMAP_SCAN leaves it out at once.
        let zero = start + 5 * PAGE_SIZE;
        let pages = |runs: &[PageRun]| -> Vec<u64> {
            runs.iter().flat_map(|r| (0..r.npages as u64).map(move |k| r.addr + k * PAGE_SIZE)).collect()
        };
        let mut from_pm = pages(&runs);
        from_pm.retain(|&a| a != zero);
        assert_eq!(pages(&scanned), from_pm);
        assert!(scanned.iter().all(|r| r.npages <= CHUNK_PAGES));
        // SAFETY: unmapping our own mapping.
        unsafe { libc::munmap(p.cast(), len) };
    }

    #[test]
    fn pages_of_this_process() {
        // A region with pages 0 and 2 written, 1 untouched: two runs.
        let len = 3 * PAGE_SIZE as usize;
        let p = crate::sys::mem::test_mapping(len, 0);
        // SAFETY: within the mapping.
        unsafe {
            *p = 1;
            *p.add(2 * PAGE_SIZE as usize) = 2;
        }
        let start = p as u64;
        let regions = vec![Region {
            start,
            end: start + len as u64,
            prot: libc::PROT_READ | libc::PROT_WRITE,
            shared: false,
            kind: RegionKind::Anon,
            name: String::new(),
            flags: 0,
            chunks: vec![],
        }];
        let mem = RemoteMemory::open(std::process::id() as i32).unwrap();
        let runs = select_pages(&mem, &regions, |_| true).unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[1].addr, start + 2 * PAGE_SIZE);
        // SAFETY: unmapping our own mapping.
        unsafe { libc::munmap(p.cast(), len) };
    }
}
