//! The restore plan: everything about a restore that can be decided before
//! touching the process, in ordinary Rust, testable and printable
//! (`--dry-run`). The restorer then only executes [`RestorePlan::ops`].
//!
//! Each memory region is first *staged*: mapped and filled at an address
//! that collides with nothing (not the image's regions, not ckrun's own
//! mappings), congruent to its final address modulo 2 MiB so that the final
//! `mremap` moves whole page tables instead of copying entries. Then the
//! restorer, running from its own small reservation:
//!
//! 1. moves the vDSO group (vvar, vvar_vclock, vdso) out of the way;
//! 2. unmaps everything except its reservation, the staged regions and the
//!    moved vDSO (the complement of what it keeps, so it needs no list of
//!    ckrun's mappings, which change while the plan is carried out);
//! 3. moves the vDSO group to the image's addresses (glibc in the image has
//!    the old addresses cached);
//! 4. moves every staged region to its final address;
//! 5. sets brk, arg/env, auxv and the exe link (PR_SET_MM_MAP; the exe link
//!    only works once ckrun's own executable is unmapped);
//! 6. starts each other thread with its TID and TLS, then jumps into the
//!    main thread's saved context (or ends the main thread, if it had ended).

use crate::error::CkError;
use crate::image::manifest::{ProcessImage, RegionKind};
use crate::sys::procfs::MapEntry;
use crate::sys::PAGE_SIZE;

pub use crate::image::validate::TASK_SIZE;
/// Page-table granule that mremap can move without copying entries.
pub const HUGE: u64 = 2 << 20;
/// Where staging starts looking for room (16 TiB): far from where the
/// kernel puts ckrun's own new mappings.
const STAGING_FLOOR: u64 = 0x1000_0000_0000;
/// Room left between reservations, so that nothing merges or touches.
const GAP: u64 = HUGE;
/// The restorer's own stack.
pub const RESTORER_STACK: u64 = 64 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StagedRegion {
    /// Index into `ProcessImage::regions`.
    pub region: usize,
    pub at: u64,
    pub len: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VdsoPart {
    pub name: String,
    pub from: u64,
    pub scratch: u64,
    pub to: u64,
    pub len: u64,
}

/// One step of the restorer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Mremap {
        from: u64,
        len: u64,
        to: u64,
    },
    Munmap {
        start: u64,
        len: u64,
    },
    /// PR_SET_MM_MAP with the image's mm fields, auxv and exe fd.
    SetMm,
    /// Closes the exe fd once PR_SET_MM_MAP has taken it.
    CloseExe,
    SetFs {
        base: u64,
    },
    /// Starts thread `ProcessImage::threads[i]`, which jumps into its context.
    CloneThread(usize),
    /// Makes signal `sig` pending again for thread `tid` (all signals are
    /// blocked until each thread returns from its handler).
    Signal {
        tid: i32,
        sig: i32,
    },
    /// The main thread had ended (pthread_exit in main): end it again.
    ExitThread,
    /// Jumps into the context of thread `i` (the main thread).
    Jump(usize),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestorePlan {
    pub staged: Vec<StagedRegion>,
    pub vdso: Vec<VdsoPart>,
    /// The restorer's reservation: code page, data, stack.
    pub blob_at: u64,
    pub blob_len: u64,
    pub ops: Vec<Op>,
}

/// Free-space finder over a set of busy ranges.
pub struct AddressSpace {
    busy: Vec<(u64, u64)>,
}

impl AddressSpace {
    pub fn new(ranges: impl IntoIterator<Item = (u64, u64)>) -> Self {
        let mut a = AddressSpace { busy: ranges.into_iter().collect() };
        a.normalise();
        a
    }

    fn normalise(&mut self) {
        self.busy.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.busy.len());
        for &(s, e) in &self.busy {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        self.busy = merged;
    }

    /// Reserves `len` bytes at an address `a` with `a % HUGE == phase`, at
    /// least `GAP` away from anything busy. None if the space is full.
    pub fn reserve(&mut self, len: u64, phase: u64) -> Option<u64> {
        let mut cursor = STAGING_FLOOR;
        loop {
            let mut a = (cursor - cursor % HUGE) + phase;
            if a < cursor {
                a += HUGE;
            }
            let (s, e) = (a.checked_sub(GAP)?, a.checked_add(len)?.checked_add(GAP)?);
            if e > TASK_SIZE {
                return None;
            }
            match self.busy.iter().find(|&&(bs, be)| !(e <= bs || s >= be)) {
                None => {
                    self.busy.push((a, a + len));
                    self.normalise();
                    return Some(a);
                }
                Some(&(_, be)) => cursor = be + GAP,
            }
        }
    }
}

fn vdso_name(k: &RegionKind) -> Option<&'static str> {
    match k {
        RegionKind::Vvar => Some("[vvar]"),
        RegionKind::VvarVclock => Some("[vvar_vclock]"),
        RegionKind::Vdso => Some("[vdso]"),
        _ => None,
    }
}

/// Bytes of restorer data for a plan of this shape (see `restorer`).
pub fn data_len(nops: usize, auxv_words: usize, nthreads: usize) -> u64 {
    let raw = ckrun_proto::restorer_header::SIZE + nops * 80 + 104 + auxv_words * 8 + nthreads * (64 + 88 + 8);
    (raw as u64).div_ceil(PAGE_SIZE) * PAGE_SIZE
}

impl RestorePlan {
    /// Plans the restore of `p` into a process whose current mappings are
    /// `current`.
    pub fn build(p: &ProcessImage, current: &[MapEntry]) -> Result<RestorePlan, CkError> {
        let bad = |why: String| CkError::Environment(why);
        check_regions(p)?;
        let main = p.threads.iter().position(|t| t.tid == p.pid);
        if p.threads.is_empty() {
            return Err(bad("the image has no threads".into()));
        }

        // Everything already in use, or to be used by the final layout.
        let mut space = AddressSpace::new(
            current
                .iter()
                .map(|m| (m.start, m.end))
                .chain(p.regions.iter().map(|r| (r.start, r.end)))
                .filter(|&(s, _)| s < TASK_SIZE),
        );

        // The restorer's reservation: code, data, stack.
        let nregions = p.regions.iter().filter(|r| vdso_name(&r.kind).is_none()).count();
        let nvdso = p.regions.len() - nregions;
        let keep_max = 1 + nvdso + nregions;
        let signals: usize = p.threads.iter().map(|t| t.pending.count_ones() as usize).sum();
        let nops_max = 2 * nvdso + (keep_max + 1) + nregions + 2 + p.threads.len() + signals + 2;
        let blob_len = PAGE_SIZE + data_len(nops_max, p.auxv.len(), p.threads.len()) + RESTORER_STACK;
        let blob_at = space.reserve(blob_len, 0).ok_or_else(|| bad("no room for the restorer".into()))?;

        // The vDSO group: same parts, same sizes, or another kernel.
        let wanted: Vec<_> = p.regions.iter().filter_map(|r| Some((vdso_name(&r.kind)?, r.start, r.len()))).collect();
        let have: Vec<_> =
            current.iter().filter(|m| ["[vvar]", "[vvar_vclock]", "[vdso]"].contains(&m.path.as_str())).collect();
        let same = wanted.len() == have.len() && wanted.iter().zip(&have).all(|(w, h)| w.0 == h.path && w.2 == h.len());
        if !same && !wanted.is_empty() {
            return Err(CkError::Incompatible(format!(
                "the vDSO differs from the image's ({} here, {} in the image): the image comes from another kernel build",
                describe(have.iter().map(|h| (h.path.as_str(), h.len()))),
                describe(wanted.iter().map(|w| (w.0, w.2)))
            )));
        }
        let mut vdso = Vec::new();
        for (w, h) in wanted.iter().zip(&have) {
            let scratch = space.reserve(w.2, 0).ok_or_else(|| bad("no room to move the vDSO".into()))?;
            vdso.push(VdsoPart { name: w.0.into(), from: h.start, scratch, to: w.1, len: w.2 });
        }

        // Staging areas.
        let mut staged = Vec::new();
        for (i, r) in p.regions.iter().enumerate() {
            if vdso_name(&r.kind).is_some() {
                continue;
            }
            let at = space.reserve(r.len(), r.start % HUGE).ok_or_else(|| bad("no room to stage memory".into()))?;
            staged.push(StagedRegion { region: i, at, len: r.len() });
        }

        // The restorer's steps.
        let mut ops = Vec::new();
        for v in &vdso {
            ops.push(Op::Mremap { from: v.from, len: v.len, to: v.scratch });
        }
        let mut keep: Vec<(u64, u64)> = std::iter::once((blob_at, blob_at + blob_len))
            .chain(vdso.iter().map(|v| (v.scratch, v.scratch + v.len)))
            .chain(staged.iter().map(|s| (s.at, s.at + s.len)))
            .collect();
        keep.sort_unstable();
        let mut cursor = 0;
        for &(s, e) in &keep {
            if s > cursor {
                ops.push(Op::Munmap { start: cursor, len: s - cursor });
            }
            cursor = e;
        }
        if cursor < TASK_SIZE {
            ops.push(Op::Munmap { start: cursor, len: TASK_SIZE - cursor });
        }
        for v in &vdso {
            ops.push(Op::Mremap { from: v.scratch, len: v.len, to: v.to });
        }
        for s in &staged {
            ops.push(Op::Mremap { from: s.at, len: s.len, to: p.regions[s.region].start });
        }
        ops.push(Op::SetMm);
        ops.push(Op::CloseExe);
        for (i, _) in p.threads.iter().enumerate().filter(|(i, _)| Some(*i) != main) {
            ops.push(Op::CloneThread(i));
        }
        for t in &p.threads {
            for sig in (1..=64).filter(|s| t.pending & (1u64 << (s - 1)) != 0) {
                ops.push(Op::Signal { tid: t.tid, sig });
            }
        }
        match main {
            Some(m) => {
                ops.push(Op::SetFs { base: p.threads[m].fs_base });
                ops.push(Op::Jump(m));
            }
            None => ops.push(Op::ExitThread),
        }
        debug_assert!(ops.len() <= nops_max);
        Ok(RestorePlan { staged, vdso, blob_at, blob_len, ops })
    }
}

fn describe<'a>(parts: impl Iterator<Item = (&'a str, u64)>) -> String {
    let v: Vec<String> = parts.map(|(n, l)| format!("{n} {} KiB", l / 1024)).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// The image's regions must be page-aligned, ordered, disjoint, in user space.
fn check_regions(p: &ProcessImage) -> Result<(), CkError> {
    let mut prev_end = 0;
    for r in &p.regions {
        let ok = r.start % PAGE_SIZE == 0
            && r.end % PAGE_SIZE == 0
            && r.start < r.end
            && r.end <= TASK_SIZE
            && r.start >= prev_end;
        if !ok {
            return Err(CkError::Environment(format!("image region {:#x}-{:#x} is malformed", r.start, r.end)));
        }
        prev_end = r.end;
    }
    Ok(())
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::image::manifest::*;
    use crate::sys::procfs::parse_maps;

    pub fn region(start: u64, end: u64, kind: RegionKind) -> Region {
        Region { start, end, prot: 3, shared: false, kind, name: String::new(), flags: 0, chunks: vec![] }
    }

    pub fn process(regions: Vec<Region>, tids: &[i32]) -> ProcessImage {
        ProcessImage {
            pid: 100,
            ppid: 1,
            pgid: 100,
            sid: 100,
            exe: FileRef { path: "/bin/x".into(), size: 1, mtime_ns: 0, inode: 1 },
            cwd: "/".into(),
            umask: 0o22,
            personality: 0,
            rlimits: vec![],
            mm: MmFields::default(),
            auxv: vec![0, 0],
            regions,
            fds: vec![],
            pending: 0,
            threads: tids
                .iter()
                .map(|&tid| ThreadImage {
                    tid,
                    flags: 0,
                    fs_base: 0x7000 + tid as u64,
                    gs_base: 0,
                    ctx: [0; 8],
                    comm: [0; 16],
                    pending: 0,
                })
                .collect(),
            agent_fd: 1000,
            creds: Default::default(),
        }
    }

    fn sample() -> (ProcessImage, Vec<MapEntry>) {
        let p = process(
            vec![
                region(0x5555_0000_0000, 0x5555_0000_3000, RegionKind::Anon),
                region(0x7f00_0000_0000, 0x7f00_4000_0000, RegionKind::Anon),
                region(0x7ffd_0000_0000, 0x7ffd_0000_4000, RegionKind::Vvar),
                region(0x7ffd_0000_4000, 0x7ffd_0000_6000, RegionKind::VvarVclock),
                region(0x7ffd_0000_6000, 0x7ffd_0000_8000, RegionKind::Vdso),
                region(0x7ffe_0000_0000, 0x7ffe_0002_1000, RegionKind::Stack),
            ],
            &[100, 101, 102],
        );
        let current = parse_maps(
            "560000000000-560000100000 r-xp 00000000 00:00 0 /usr/bin/ckrun\n\
             7f0000001000-7f0000005000 r--p 00000000 00:00 0 [vvar]\n\
             7f0000005000-7f0000007000 r--p 00000000 00:00 0 [vvar_vclock]\n\
             7f0000007000-7f0000009000 r-xp 00000000 00:00 0 [vdso]\n",
        )
        .unwrap();
        (p, current)
    }

    fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
        a.0 < b.1 && b.0 < a.1
    }

    #[test]
    fn staging_collides_with_nothing_and_keeps_huge_page_phase() {
        let (p, current) = sample();
        let plan = RestorePlan::build(&p, &current).unwrap();
        assert_eq!(plan.staged.len(), 3);
        let mut taken: Vec<(u64, u64)> = current.iter().map(|m| (m.start, m.end)).collect();
        taken.extend(p.regions.iter().map(|r| (r.start, r.end)));
        let mut mine: Vec<(u64, u64)> = plan.staged.iter().map(|s| (s.at, s.at + s.len)).collect();
        mine.push((plan.blob_at, plan.blob_at + plan.blob_len));
        mine.extend(plan.vdso.iter().map(|v| (v.scratch, v.scratch + v.len)));
        for (i, a) in mine.iter().enumerate() {
            assert!(taken.iter().all(|t| !overlaps(*a, *t)), "{a:x?} collides");
            assert!(mine[i + 1..].iter().all(|b| !overlaps(*a, *b)), "{a:x?} collides with another reservation");
        }
        for s in &plan.staged {
            assert_eq!(s.at % HUGE, p.regions[s.region].start % HUGE);
        }
    }

    #[test]
    fn ops_unmap_everything_else_then_move_into_place() {
        let (p, current) = sample();
        let plan = RestorePlan::build(&p, &current).unwrap();
        // Munmaps plus kept ranges cover the whole user address space exactly once.
        let mut covered: Vec<(u64, u64)> = plan
            .ops
            .iter()
            .filter_map(|o| if let Op::Munmap { start, len } = o { Some((*start, start + len)) } else { None })
            .collect();
        covered.push((plan.blob_at, plan.blob_at + plan.blob_len));
        covered.extend(plan.staged.iter().map(|s| (s.at, s.at + s.len)));
        covered.extend(plan.vdso.iter().map(|v| (v.scratch, v.scratch + v.len)));
        covered.sort_unstable();
        assert_eq!(covered[0].0, 0);
        assert_eq!(covered.last().unwrap().1, TASK_SIZE);
        for w in covered.windows(2) {
            assert_eq!(w[0].1, w[1].0, "gap or overlap at {:x}", w[0].1);
        }
        // The vDSO leaves before the unmapping and comes back after it.
        let first_unmap = plan.ops.iter().position(|o| matches!(o, Op::Munmap { .. })).unwrap();
        let vdso_out =
            plan.ops.iter().position(|o| matches!(o, Op::Mremap { from, .. } if *from == 0x7f00_0000_7000)).unwrap();
        let vdso_in =
            plan.ops.iter().position(|o| matches!(o, Op::Mremap { to, .. } if *to == 0x7ffd_0000_6000)).unwrap();
        assert!(vdso_out < first_unmap && first_unmap < vdso_in);
        // Every region moves to its own address; then mm, threads, main jump.
        for s in &plan.staged {
            assert!(plan.ops.contains(&Op::Mremap { from: s.at, len: s.len, to: p.regions[s.region].start }));
        }
        let n = plan.ops.len();
        assert_eq!(plan.ops[n - 1], Op::Jump(0));
        assert_eq!(plan.ops[n - 2], Op::SetFs { base: 0x7000 + 100 });
        assert_eq!(plan.ops.iter().filter(|o| matches!(o, Op::CloneThread(_))).count(), 2);
        let setmm = plan.ops.iter().position(|o| *o == Op::SetMm).unwrap();
        assert!(plan.ops[..setmm].iter().all(|o| !matches!(o, Op::CloneThread(_))));
    }

    #[test]
    fn pending_signals_are_raised_for_their_threads_once_they_exist() {
        let (mut p, current) = sample();
        p.threads[2].pending = 1 << (libc::SIGTERM - 1) | 1 << (libc::SIGUSR1 - 1);
        let plan = RestorePlan::build(&p, &current).unwrap();
        let last_clone = plan.ops.iter().rposition(|o| matches!(o, Op::CloneThread(_))).unwrap();
        let sigs: Vec<(usize, &Op)> =
            plan.ops.iter().enumerate().filter(|(_, o)| matches!(o, Op::Signal { .. })).collect();
        assert_eq!(
            sigs.iter().map(|(_, o)| (*o).clone()).collect::<Vec<_>>(),
            vec![Op::Signal { tid: 102, sig: libc::SIGUSR1 }, Op::Signal { tid: 102, sig: libc::SIGTERM }]
        );
        assert!(sigs.iter().all(|(i, _)| *i > last_clone));
    }

    #[test]
    fn ended_main_thread_stays_ended() {
        let (mut p, current) = sample();
        p.threads.remove(0);
        let plan = RestorePlan::build(&p, &current).unwrap();
        assert_eq!(plan.ops.last(), Some(&Op::ExitThread));
    }

    #[test]
    fn another_kernels_vdso_is_refused() {
        let (mut p, current) = sample();
        p.regions[4].end += PAGE_SIZE; // a larger [vdso]
        assert!(matches!(RestorePlan::build(&p, &current), Err(CkError::Incompatible(_))));
    }

    #[test]
    fn malformed_regions_are_refused() {
        let (mut p, current) = sample();
        p.regions[1].start = p.regions[0].start; // overlap
        assert!(RestorePlan::build(&p, &current).is_err());
    }

    #[test]
    fn address_space_respects_phase_and_gaps() {
        let mut a = AddressSpace::new([(STAGING_FLOOR, STAGING_FLOOR + HUGE)]);
        let x = a.reserve(3 * PAGE_SIZE, 0x5000).unwrap();
        assert_eq!(x % HUGE, 0x5000);
        assert!(x >= STAGING_FLOOR + HUGE + GAP);
        let y = a.reserve(PAGE_SIZE, 0).unwrap();
        assert!(y >= x + 3 * PAGE_SIZE + GAP);
    }
}
