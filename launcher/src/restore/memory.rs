//! Staging memory in the restore child: each region mapped at its staging
//! address (from its file, or anonymous), its saved pages decompressed into
//! place on all cores, then given its final protection. The restorer later
//! moves each staged region to its final address without copying.

use super::kernel::Kernel;
use super::plan::RestorePlan;
use crate::error::CkError;
use crate::image::manifest::{
    ChunkRef, ProcessImage, RegionKind, REGION_DONTFORK, REGION_NORESERVE, REGION_WIPEONFORK,
};
use crate::image::ImageReader;
use crate::sys::uffd::Userfault;
use crate::sys::PAGE_SIZE;
use anyhow::{Context, Result};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Maps every staged region; writable for now where pages must be filled.
/// `ghosts` are the fds of the recreated deleted files and memfds. A
/// region the program mapped with MAP_NORESERVE is mapped so again (a
/// sparse reservation of terabytes is refused otherwise), and one it
/// marked MADV_DONTFORK or MADV_WIPEONFORK is marked again: the flags
/// move with it into place (`mremap` keeps them), and this process forks
/// no more once memory is staged. An attachment of a SysV shared memory
/// segment is attached again (`segment_ids`: the IDs segments have now),
/// and moves into place like the rest: every process of the tree has
/// it attached before any runs.
pub fn map(
    k: &mut impl Kernel,
    plan: &RestorePlan,
    p: &ProcessImage,
    ghosts: &[i32],
    segment_ids: &[(i32, i32)],
) -> Result<()> {
    for s in &plan.staged {
        let r = &p.regions[s.region];
        let prot = if r.chunks.is_empty() { r.prot } else { r.prot | libc::PROT_READ | libc::PROT_WRITE };
        let share = if r.shared { libc::MAP_SHARED } else { libc::MAP_PRIVATE };
        let reserve = if r.flags & REGION_NORESERVE != 0 { libc::MAP_NORESERVE } else { 0 };
        let flags = libc::MAP_FIXED_NOREPLACE | share | reserve;
        let what = || {
            format!(
                "staging {} ({:#x}-{:#x})",
                if r.name.is_empty() { "anonymous memory" } else { &r.name },
                r.start,
                r.end
            )
        };
        match &r.kind {
            RegionKind::File { file, offset } => {
                let mode = if r.shared && r.prot & libc::PROT_WRITE != 0 { libc::O_RDWR } else { libc::O_RDONLY };
                let fd = k
                    .open(&file.path, mode | libc::O_CLOEXEC)
                    .map_err(|e| CkError::Environment(format!("cannot open {}: {e}", file.path.display())))?;
                let r2 = k.mmap(s.at, s.len, prot, flags, fd, *offset);
                k.close(fd);
                r2.with_context(what)?;
            }
            RegionKind::Ghost { ghost, offset } => {
                k.mmap(s.at, s.len, prot, flags, ghosts[*ghost as usize], *offset).with_context(what)?
            }
            RegionKind::Sysv { shmid, offset, read_only } => {
                let id = crate::sysv::shm::id_now(segment_ids, *shmid);
                let exec = if r.prot & libc::PROT_EXEC != 0 { libc::SHM_EXEC } else { 0 };
                let (shmflg, attached) = match read_only {
                    true => (libc::SHM_RDONLY | exec, libc::PROT_READ | (r.prot & libc::PROT_EXEC)),
                    false => (exec, libc::PROT_READ | libc::PROT_WRITE | (r.prot & libc::PROT_EXEC)),
                };
                k.shm_attach(id, s.at, *offset, s.len, shmflg)
                    .with_context(|| format!("attaching SysV shared memory segment {id}"))
                    .with_context(what)?;
                // Made read-only (or inaccessible) with mprotect since.
                if attached != r.prot {
                    k.mprotect(s.at, s.len, r.prot).with_context(what)?;
                }
            }
            RegionKind::Stack => k
                .mmap(s.at, s.len, prot, flags | libc::MAP_ANONYMOUS | libc::MAP_GROWSDOWN, -1, 0)
                .with_context(what)?,
            _ => k.mmap(s.at, s.len, prot, flags | libc::MAP_ANONYMOUS, -1, 0).with_context(what)?,
        }
        for (bit, advice) in [(REGION_DONTFORK, libc::MADV_DONTFORK), (REGION_WIPEONFORK, libc::MADV_WIPEONFORK)] {
            if r.flags & bit != 0 {
                k.madvise(s.at, s.len, advice).with_context(what)?;
            }
        }
    }
    Ok(())
}

/// Gives the filled regions their final protection.
pub fn protect(k: &mut impl Kernel, plan: &RestorePlan, p: &ProcessImage) -> Result<()> {
    for s in &plan.staged {
        let r = &p.regions[s.region];
        if !r.chunks.is_empty() && r.prot != r.prot | libc::PROT_READ | libc::PROT_WRITE {
            k.mprotect(s.at, s.len, r.prot).with_context(|| format!("protecting {:#x}", r.start))?;
        }
    }
    Ok(())
}

/// Decompresses every saved page into its staged region, on all cores.
/// Anonymous regions are filled with UFFDIO_COPY from a small buffer that
/// stays in cache (no zeroing, no fault per page); file-backed ones, and
/// all of them where userfaultfd is not available, by decompressing
/// straight into place. A stored block is read and decompressed once,
/// whichever image holds it and however many runs take pages from it.
///
/// An incremental image takes most of its pages from blocks of older
/// images with holes in them: the pages rewritten since, which come from
/// newer blocks, one or a few pages per run. Such a block is *placed*
/// whole at the address its pages had when it was written, when that range
/// lies in one staged region and every page of it is restored by some run
/// (so no page that must stay empty gets stale bytes), in a first pass:
/// one UFFDIO_COPY or one decompression in place, as for a full image. The
/// second pass, once the first is complete, puts back every other block's
/// runs, copying over the placed ranges' stale pages (already present: a
/// plain copy, no fault) and filling the rest as before.
pub fn fill(img: &ImageReader, plan: &RestorePlan, p: &ProcessImage) -> Result<u64, CkError> {
    let uffd = Userfault::new();
    let mut work: Vec<Run> = Vec::new();
    let mut registered = Vec::new();
    let mut regions = Vec::new();
    for (i, s) in plan.staged.iter().enumerate() {
        let r = &p.regions[s.region];
        let anon = matches!(r.kind, RegionKind::Anon | RegionKind::Stack | RegionKind::Detached) && !r.shared;
        let via_uffd = anon && !r.chunks.is_empty() && uffd.as_ref().is_some_and(|u| u.register(s.at, s.len).is_ok());
        if via_uffd {
            registered.push((s.at, s.len));
        }
        regions.push((s.at, s.at + s.len));
        work.extend(r.chunks.iter().map(|c| Run { c, dest: s.at + (c.addr - r.start), via_uffd, region: i }));
    }
    // In file order, each file in turn, so that the kernel's readahead
    // streams an image that is not in the page cache (the usual case at a
    // restart: the job died, or this is another machine). Blocks are at
    // most 1 MiB, so taking them one at a time balances the threads well
    // enough. A read blocks its thread until the disk answers: one more
    // thread than cores keeps them all decompressing meanwhile.
    // (A block is its image, place, length, checksum and page count: runs
    // that disagree on any of them are not taken for one block.) The key
    // is the place (image, offset) and the page in the block, as one
    // integer: a tenth image's ~140k runs sort in a few ms (20 ms with the
    // whole block as a tuple); runs of one place that disagree on the rest
    // are kept apart below.
    // What runs cover is taken first, from `work` in address order (each
    // region's chunks ascend), where it needs no sort.
    let covered = Placed::covered(&work, regions.len());
    let block = |c: &ChunkRef| (c.image, c.offset, c.clen, c.checksum, c.block_pages);
    work.sort_unstable_by_key(|r| (r.c.image as u128) << 96 | (r.c.offset as u128) << 32 | r.c.skip as u128);
    let mut blocks: Vec<std::ops::Range<usize>> = Vec::new();
    for (i, r) in work.iter().enumerate() {
        match blocks.last_mut() {
            Some(b) if block(work[b.start].c) == block(r.c) => b.end = i + 1,
            _ => blocks.push(i..i + 1),
        }
    }
    let placed = Placed::choose(&work, &blocks, &regions, covered);
    let (first, second): (Vec<_>, Vec<_>) = blocks.into_iter().enumerate().partition(|(i, _)| placed.blocks[*i]);
    let first: Vec<_> = first.into_iter().map(|(_, b)| b).collect();
    let second: Vec<_> = second.into_iter().map(|(_, b)| b).collect();
    let first_err = std::sync::Mutex::new(None);
    for (pass, blocks) in [(Pass::Placed, &first), (Pass::Rest, &second)] {
        let next = AtomicUsize::new(0);
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(16) + 1;
        // The scope's end is the barrier between the passes: every placed
        // range is complete before the second pass copies over it.
        std::thread::scope(|sc| {
            for _ in 0..threads {
                sc.spawn(|| {
                    let mut scratch = Vec::new();
                    let mut buf = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(runs) = blocks.get(i) else { break };
                        let runs = &work[runs.clone()];
                        let r = match pass {
                            Pass::Placed => place_block(img, runs, uffd.as_ref(), &mut buf, &mut scratch),
                            Pass::Rest => fill_block(img, runs, &placed, uffd.as_ref(), &mut buf, &mut scratch),
                        };
                        if let Err(e) = r {
                            first_err.lock().unwrap().get_or_insert(e);
                            next.store(blocks.len(), Ordering::Relaxed);
                            break;
                        }
                    }
                });
            }
        });
        if first_err.lock().unwrap().is_some() {
            break;
        }
    }
    if let Some(u) = &uffd {
        for (at, len) in registered {
            u.unregister(at, len).map_err(|e| CkError::Environment(format!("releasing memory at {at:#x}: {e}")))?;
        }
    }
    match first_err.into_inner().unwrap() {
        Some(e) => Err(e),
        None => Ok(work.iter().map(|r| r.c.npages as u64 * PAGE_SIZE).sum()),
    }
}

/// A run of pages to put back: where its pages come from, where they go
/// (staged address), whether through userfaultfd, in which staged region.
#[derive(Clone, Copy)]
struct Run<'a> {
    c: &'a ChunkRef,
    dest: u64,
    via_uffd: bool,
    region: usize,
}

#[derive(Clone, Copy)]
enum Pass {
    Placed,
    Rest,
}

/// The blocks placed whole in the first pass, and the staged ranges they
/// fill (sorted, disjoint).
struct Placed {
    blocks: Vec<bool>,
    ranges: Vec<(u64, u64)>,
}

impl Placed {
    /// The pages `work` covers, per region (of `nregions`), merged into
    /// maximal intervals. Cheapest with `work` in address order.
    fn covered(work: &[Run], nregions: usize) -> Vec<Vec<(u64, u64)>> {
        let mut covered: Vec<Vec<(u64, u64)>> = vec![Vec::new(); nregions];
        for r in work {
            covered[r.region].push((r.dest, r.dest + r.c.npages as u64 * PAGE_SIZE));
        }
        for v in &mut covered {
            if !v.is_sorted() {
                v.sort_unstable();
            }
            let mut merged: Vec<(u64, u64)> = Vec::with_capacity(v.len());
            for &(a, b) in v.iter() {
                match merged.last_mut() {
                    Some(m) if m.1 >= a => m.1 = m.1.max(b),
                    _ => merged.push((a, b)),
                }
            }
            *v = merged;
        }
        covered
    }

    /// Which of `blocks` (ranges of `work`, each one block's runs) to place
    /// whole: a block whose runs agree on where its first page goes, whose
    /// whole range lies in their staged region (`regions`: start, end) and
    /// is covered by runs of any block (`covered`: [`Placed::covered`]),
    /// and overlaps no other placed one.
    fn choose(
        work: &[Run],
        blocks: &[std::ops::Range<usize>],
        regions: &[(u64, u64)],
        covered: Vec<Vec<(u64, u64)>>,
    ) -> Placed {
        let ps = PAGE_SIZE;
        let mut candidates: Vec<(u64, u64, usize)> = Vec::new();
        for (i, b) in blocks.iter().enumerate() {
            let runs = &work[b.clone()];
            let first = runs[0];
            let Some(base) = first.dest.checked_sub(first.c.skip as u64 * ps) else { continue };
            let end = base + first.c.block_pages as u64 * ps;
            let (lo, hi) = regions[first.region];
            let agree = runs.iter().all(|r| r.region == first.region && r.dest - r.c.skip as u64 * ps == base);
            if !agree || base < lo || end > hi {
                continue;
            }
            let cov = &covered[first.region];
            let k = cov.partition_point(|m| m.0 <= base);
            if k > 0 && cov[k - 1].1 >= end {
                candidates.push((base, end, i));
            }
        }
        candidates.sort_unstable();
        let mut placed = Placed { blocks: vec![false; blocks.len()], ranges: Vec::new() };
        for (a, b, i) in candidates {
            if placed.ranges.last().is_none_or(|l| l.1 <= a) {
                placed.ranges.push((a, b));
                placed.blocks[i] = true;
            }
        }
        placed
    }

    /// Whether the staged page at `at` is in a placed range.
    fn holds(&self, at: u64) -> bool {
        let k = self.ranges.partition_point(|r| r.0 <= at);
        k > 0 && self.ranges[k - 1].1 > at
    }
}

/// Decompresses a placed block (`runs`: its runs) whole into its range.
fn place_block(
    img: &ImageReader,
    runs: &[Run],
    uffd: Option<&Userfault>,
    buf: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> Result<(), CkError> {
    let ps = PAGE_SIZE as usize;
    let first = runs[0];
    let base = first.dest - first.c.skip as u64 * PAGE_SIZE;
    let len = first.c.block_pages as usize * ps;
    if first.via_uffd {
        buf.resize(len, 0);
        img.read_block(first.c, buf, scratch)?;
        let u = uffd.expect("registered through it");
        return u.copy(base, buf).map_err(|e| CkError::Environment(format!("filling memory at {base:#x}: {e}")));
    }
    // SAFETY: base..base+len lies inside a staged region this process
    // mapped writable (see `map`; checked in `Placed::choose`); placed
    // ranges are disjoint, so no two threads of this pass write the same
    // bytes, and the second pass starts once this one has ended.
    let out = unsafe { std::slice::from_raw_parts_mut(base as *mut u8, len) };
    img.read_block(first.c, out, scratch)
}

/// Puts back the runs that take their pages from one stored block that
/// was not placed (`runs`), after the placed ones: pages in a placed range
/// are copied over its stale ones, the others filled through userfaultfd
/// where their region is registered, else copied.
fn fill_block(
    img: &ImageReader,
    runs: &[Run],
    placed: &Placed,
    uffd: Option<&Userfault>,
    buf: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> Result<(), CkError> {
    let ps = PAGE_SIZE as usize;
    let first = runs[0];
    if runs.len() == 1 && first.c.is_whole_block() && !first.via_uffd && !placed.holds(first.dest) {
        // SAFETY: dest..dest+len lies inside a staged region this process
        // mapped writable (see `map`); chunks of one region never overlap
        // (checked when the image was opened), so no two threads write the
        // same bytes, and nothing else uses staged memory until the
        // restorer.
        let out = unsafe { std::slice::from_raw_parts_mut(first.dest as *mut u8, first.c.npages as usize * ps) };
        return img.read_block(first.c, out, scratch);
    }
    buf.resize(first.c.block_pages as usize * ps, 0);
    img.read_block(first.c, buf, scratch)?;
    for r in runs {
        let pages = &buf[r.c.skip as usize * ps..(r.c.skip + r.c.npages) as usize * ps];
        // Split where the run enters or leaves a placed range.
        let mut from = 0;
        while from < pages.len() {
            let inside = placed.holds(r.dest + from as u64);
            let mut to = from + ps;
            while to < pages.len() && placed.holds(r.dest + to as u64) == inside {
                to += ps;
            }
            let dest = r.dest + from as u64;
            if r.via_uffd && !inside {
                let u = uffd.expect("registered through it");
                u.copy(dest, &pages[from..to])
                    .map_err(|e| CkError::Environment(format!("filling memory at {dest:#x}: {e}")))?;
            } else {
                // SAFETY: as above: a staged, writable range no other
                // thread writes; inside a placed range the pages are
                // present (the first pass put them there), so the copy
                // does not wait on userfaultfd.
                let out = unsafe { std::slice::from_raw_parts_mut(dest as *mut u8, to - from) };
                out.copy_from_slice(&pages[from..to]);
            }
            from = to;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::manifest::{ChunkRef, FileRef, RegionKind};
    use crate::restore::kernel::recording::{Call, Recording};
    use crate::restore::plan::tests::{process, region};
    use crate::sys::procfs::parse_maps;

    /// A run taking `npages` pages from page `skip` of the block at
    /// `offset` (of `block_pages` pages), staged at `dest` in region 0.
    fn run(c: &ChunkRef, dest: u64) -> Run<'_> {
        Run { c, dest, via_uffd: true, region: 0 }
    }

    fn taken(offset: u64, skip: u32, npages: u32, block_pages: u32) -> ChunkRef {
        ChunkRef { image: 1, skip, block_pages, ..ChunkRef::own(0, npages, 10, offset, 0) }
    }

    #[test]
    fn an_old_block_with_holes_is_placed_whole_only_where_newer_runs_fill_them() {
        let ps = PAGE_SIZE;
        // Block A (4 pages at 0x10000): pages 0, 1, 3; page 2 is newer, from block B.
        let (a0, a1, b) = (taken(100, 0, 2, 4), taken(100, 3, 1, 4), taken(900, 5, 1, 8));
        // Block C (4 pages at 0x20000): pages 0 and 1 only, pages 2-3 are empty now.
        let c = taken(200, 0, 2, 4);
        let work = [run(&a0, 0x10000), run(&a1, 0x10000 + 3 * ps), run(&b, 0x10000 + 2 * ps), run(&c, 0x20000)];
        let blocks = [0..2, 2..3, 3..4];
        let placed = Placed::choose(&work, &blocks, &[(0x10000, 0x30000)], Placed::covered(&work, 1));
        assert_eq!(placed.blocks, [true, false, false]);
        assert_eq!(placed.ranges, [(0x10000, 0x10000 + 4 * ps)]);
        assert!(placed.holds(0x10000 + 2 * ps) && !placed.holds(0x20000));
        // Outside its region, or where its runs disagree on its place: not placed.
        let narrow = [(0x10000, 0x10000 + 3 * ps)];
        assert_eq!(Placed::choose(&work, &blocks, &narrow, Placed::covered(&work, 1)).blocks, [false, false, false]);
        let moved = [run(&a0, 0x10000), run(&a1, 0x40000), run(&b, 0x10000 + 2 * ps), run(&c, 0x20000)];
        let wide = [(0x10000, 0x50000)];
        assert_eq!(Placed::choose(&moved, &blocks, &wide, Placed::covered(&moved, 1)).blocks, [false, false, false]);
    }

    #[test]
    fn regions_are_mapped_by_kind_at_their_staging_address() {
        let mut file = region(
            0x5555_0000_0000,
            0x5555_0000_2000,
            RegionKind::File {
                file: FileRef { path: "/lib/x.so".into(), size: 9000, mtime_ns: 1, inode: 2 },
                offset: 0x3000,
            },
        );
        file.prot = libc::PROT_READ;
        file.chunks.push(ChunkRef::own(0x5555_0000_1000, 1, 10, 64, 0));
        let stack = region(0x7ffe_0000_0000, 0x7ffe_0002_0000, RegionKind::Stack);
        let p = process(vec![file, stack], &[100]);
        let plan = RestorePlan::build(&p, &parse_maps("1000-2000 r-xp 00000000 00:00 0 /ckrun\n").unwrap()).unwrap();
        let mut k = Recording::default();
        map(&mut k, &plan, &p, &[], &[]).unwrap();
        protect(&mut k, &plan, &p).unwrap();
        let (s0, s1) = (&plan.staged[0], &plan.staged[1]);
        assert_eq!(
            k.calls,
            vec![
                Call::Open { path: "/lib/x.so".into(), flags: libc::O_RDONLY | libc::O_CLOEXEC, fd: 100 },
                // Writable while its written page is put back...
                Call::Mmap {
                    at: s0.at,
                    len: 0x2000,
                    prot: libc::PROT_READ | libc::PROT_WRITE,
                    flags: libc::MAP_FIXED_NOREPLACE | libc::MAP_PRIVATE,
                    fd: 100,
                    offset: 0x3000
                },
                Call::Close(100),
                Call::Mmap {
                    at: s1.at,
                    len: 0x20000,
                    prot: 3,
                    flags: libc::MAP_FIXED_NOREPLACE | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_GROWSDOWN,
                    fd: -1,
                    offset: 0
                },
                // ... then read-only again.
                Call::Mprotect { at: s0.at, len: 0x2000, prot: libc::PROT_READ },
            ]
        );
    }

    #[test]
    fn segments_are_attached_again_read_only_or_not_then_protected() {
        let mut whole =
            region(0x7f00_0000_0000, 0x7f00_0000_3000, RegionKind::Sysv { shmid: 5, offset: 0, read_only: true });
        whole.shared = true;
        whole.prot = libc::PROT_READ;
        let mut part =
            region(0x7f00_0001_0000, 0x7f00_0001_1000, RegionKind::Sysv { shmid: 6, offset: 0x1000, read_only: false });
        part.shared = true;
        part.prot = libc::PROT_READ; // attached writable, then mprotect
        let p = process(vec![whole, part], &[100]);
        let plan = RestorePlan::build(&p, &parse_maps("1000-2000 r-xp 00000000 00:00 0 /ckrun\n").unwrap()).unwrap();
        let mut k = Recording::default();
        // Segment 6 was made again with another ID.
        map(&mut k, &plan, &p, &[], &[(6, 60)]).unwrap();
        let (s0, s1) = (&plan.staged[0], &plan.staged[1]);
        assert_eq!(
            k.calls,
            vec![
                Call::ShmAttach { id: 5, at: s0.at, offset: 0, len: 0x3000, shmflg: libc::SHM_RDONLY },
                Call::ShmAttach { id: 60, at: s1.at, offset: 0x1000, len: 0x1000, shmflg: 0 },
                Call::Mprotect { at: s1.at, len: 0x1000, prot: libc::PROT_READ },
            ]
        );
    }

    #[test]
    fn flags_the_program_set_are_given_back() {
        let mut big = region(0x1000_0000_0000, 0x1200_0000_0000, RegionKind::Anon);
        big.flags = REGION_NORESERVE;
        let mut heap = region(0x7f00_0000_0000, 0x7f00_0040_0000, RegionKind::Anon);
        heap.flags = REGION_DONTFORK | REGION_WIPEONFORK;
        let p = process(vec![big, heap], &[100]);
        let plan = RestorePlan::build(&p, &parse_maps("1000-2000 r-xp 00000000 00:00 0 /ckrun\n").unwrap()).unwrap();
        let mut k = Recording::default();
        map(&mut k, &plan, &p, &[], &[]).unwrap();
        let (s0, s1) = (&plan.staged[0], &plan.staged[1]);
        let anon = libc::MAP_FIXED_NOREPLACE | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        assert_eq!(
            k.calls,
            vec![
                Call::Mmap {
                    at: s0.at,
                    len: 0x200_0000_0000,
                    prot: 3,
                    flags: anon | libc::MAP_NORESERVE,
                    fd: -1,
                    offset: 0
                },
                Call::Mmap { at: s1.at, len: 0x40_0000, prot: 3, flags: anon, fd: -1, offset: 0 },
                Call::Madvise { at: s1.at, len: 0x40_0000, advice: libc::MADV_DONTFORK },
                Call::Madvise { at: s1.at, len: 0x40_0000, advice: libc::MADV_WIPEONFORK },
            ]
        );
    }
}
