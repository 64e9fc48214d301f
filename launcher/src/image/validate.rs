//! Checks a decoded manifest before anything acts on it: every count and
//! length bounded, every index in range, every address inside the user
//! address space, chunks inside their region or file and not overlapping,
//! file names without NUL bytes. The checksums only tell a damaged image
//! from an intact one; anyone who can write an image can also recompute
//! them, so nothing below trusts a field because the checksum matched.
//!
//! A failed check is a [`CkError::BadImage`] (exit 3) naming the field.
//! What cannot be checked here (a register value, a page's content) is
//! either the program's own business (it only harms the restored program,
//! which runs with the image owner's credentials) or covered by the
//! optional keyed seal (see `image::seal`).

use super::manifest::{
    ChunkRef, GhostFile, Manifest, OpenFile, ProcessImage, Region, RegionKind, SocketState, REGION_FLAGS,
};
use super::{CHUNK_PAGES, HEADER_LEN};
use crate::error::CkError;
use crate::sys::PAGE_SIZE;
use std::path::Path;

/// Top of the x86-64 user address space (4-level page tables).
pub const TASK_SIZE: u64 = 0x7fff_ffff_f000;
/// The kernel's largest PID (`PID_MAX_LIMIT`).
pub const PID_MAX_LIMIT: i32 = 4 << 20;

const MAX_PROCESSES: usize = 1 << 16;
const MAX_REGIONS: usize = 1 << 20;
const MAX_FDS: usize = 1 << 20;
const MAX_FD: i32 = 1 << 30;
const MAX_OBJECTS: usize = 1 << 20;
const MAX_PATH: usize = 4096;
/// Words of auxv the kernel keeps (`AT_VECTOR_SIZE` is far below).
const MAX_AUXV: usize = 512;
/// The largest pipe buffer the kernel allows by default is 1 MiB.
const MAX_PIPE: u32 = 1 << 28;
const MAX_GHOST: u64 = 1 << 46;

struct Check<'a> {
    path: &'a Path,
    chunks_end: u64,
    /// How many parent images chunks may name.
    parents: usize,
}

impl Check<'_> {
    fn fail(&self, why: String) -> CkError {
        CkError::bad_image(self.path, format!("damaged manifest ({why})"))
    }

    fn ensure(&self, ok: bool, why: impl FnOnce() -> String) -> Result<(), CkError> {
        if ok {
            Ok(())
        } else {
            Err(self.fail(why()))
        }
    }

    fn path_ok(&self, p: &Path, what: &str) -> Result<(), CkError> {
        use std::os::unix::ffi::OsStrExt;
        let b = p.as_os_str().as_bytes();
        self.ensure(!b.contains(&0) && b.len() <= MAX_PATH, || format!("{what}: not a usable path"))
    }

    fn pid_ok(&self, pid: i32, what: &str) -> Result<(), CkError> {
        self.ensure((1..PID_MAX_LIMIT).contains(&pid), || format!("{what} {pid} is not a PID"))
    }

    /// Chunks of pages in `[lo, hi)`, ascending, not overlapping, each
    /// at most [`CHUNK_PAGES`] long, a part of its block, which lies inside
    /// the image's chunk area (or names one of its parents, whose chunk
    /// area `lineage::check_references` checks once they are open).
    fn chunks(&self, chunks: &[ChunkRef], lo: u64, hi: u64, what: &str) -> Result<(), CkError> {
        let mut next = lo;
        for c in chunks {
            let bytes = c.npages as u64 * PAGE_SIZE;
            let block = c.block_pages as u64 * PAGE_SIZE;
            let bound = lz4_flex::block::get_maximum_output_size(block as usize) as u64;
            let in_file = c.image != 0 || c.offset.checked_add(c.clen as u64).is_some_and(|e| e <= self.chunks_end);
            self.ensure(
                (1..=CHUNK_PAGES).contains(&c.npages)
                    && c.block_pages <= CHUNK_PAGES
                    && c.skip.checked_add(c.npages).is_some_and(|e| e <= c.block_pages)
                    && c.image as usize <= self.parents
                    && c.addr.is_multiple_of(PAGE_SIZE)
                    && c.addr >= next
                    && c.addr.checked_add(bytes).is_some_and(|e| e <= hi)
                    && c.clen > 0
                    && c.clen as u64 <= bound
                    && c.offset >= HEADER_LEN
                    && in_file,
                || format!("{what}: chunk at {:#x} out of bounds", c.addr),
            )?;
            next = c.addr + bytes;
        }
        Ok(())
    }

    fn region(&self, r: &Region, m: &Manifest, prev_end: u64) -> Result<(), CkError> {
        let what = || format!("region {:#x}-{:#x}", r.start, r.end);
        self.ensure(
            r.start < r.end
                && r.start.is_multiple_of(PAGE_SIZE)
                && r.end.is_multiple_of(PAGE_SIZE)
                && r.end <= TASK_SIZE
                && r.start >= prev_end
                && r.prot & !(libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) == 0,
            || format!("{} overlaps another, or lies outside the address space", what()),
        )?;
        self.ensure(r.flags & !REGION_FLAGS == 0, || format!("{}: unknown flags {:#x}", what(), r.flags))?;
        match &r.kind {
            RegionKind::File { file, offset } => {
                self.path_ok(&file.path, &what())?;
                self.ensure(offset.is_multiple_of(PAGE_SIZE), || format!("{}: file offset not page-aligned", what()))?;
            }
            RegionKind::Ghost { ghost, offset } => self
                .ensure((*ghost as usize) < m.ghosts.len() && offset.is_multiple_of(PAGE_SIZE), || {
                    format!("{}: no such deleted file or memfd", what())
                })?,
            RegionKind::Sysv { shmid, offset, .. } => {
                let seg = m.sysv.iter().find_map(|o| match o {
                    crate::sysv::SysvObject::Segment(s) if s.id == *shmid => Some(s),
                    _ => None,
                });
                self.ensure(
                    seg.is_some_and(|s| {
                        offset.is_multiple_of(PAGE_SIZE)
                            && offset.checked_add(r.len()).is_some_and(|e| e <= s.mapped_len())
                    }),
                    || format!("{}: no such SysV shared memory segment, or beyond its end", what()),
                )?
            }
            _ => {}
        }
        self.chunks(&r.chunks, r.start, r.end, &what())
    }

    fn process(&self, p: &ProcessImage, m: &Manifest) -> Result<(), CkError> {
        self.pid_ok(p.pid, "process")?;
        let who = format!("process {}", p.pid);
        self.ensure(p.ppid >= 0 && p.pgid >= 0 && p.sid >= 0, || format!("{who}: bad parent, group or session"))?;
        self.path_ok(&p.exe.path, &who)?;
        self.path_ok(&p.cwd, &who)?;
        self.ensure(p.umask <= 0o777, || format!("{who}: umask"))?;
        // (uid_t)-1 is no ID: the kernel's "leave unchanged".
        let c = &p.creds;
        self.ensure(!c.uid.iter().chain(&c.gid).chain(&c.groups).any(|&id| id == u32::MAX), || {
            format!("{who}: credentials hold the invalid ID -1")
        })?;
        self.ensure(p.rlimits.len() <= 16 && p.rlimits.iter().all(|l| l.resource < 16), || {
            format!("{who}: resource limits")
        })?;
        self.ensure(p.auxv.len() <= MAX_AUXV && p.auxv.len().is_multiple_of(2), || format!("{who}: auxv"))?;
        self.ensure(!p.threads.is_empty() && p.threads.len() <= ckrun_proto::MAX_THREADS, || {
            format!("{who}: {} threads", p.threads.len())
        })?;
        self.ensure(p.regions.len() <= MAX_REGIONS, || format!("{who}: too many regions"))?;
        let mut end = 0;
        for r in &p.regions {
            self.region(r, m, end)?;
            end = r.end;
        }
        let inside = |a: u64, prot: i32| p.regions.iter().any(|r| r.start <= a && a < r.end && r.prot & prot == prot);
        let mut tids: Vec<i32> = Vec::with_capacity(p.threads.len());
        for t in &p.threads {
            self.pid_ok(t.tid, "thread")?;
            self.ensure(!tids.contains(&t.tid), || format!("{who}: thread {} twice", t.tid))?;
            tids.push(t.tid);
            // The saved context resumes inside the agent's code, on the
            // thread's stack: anything else cannot be a parked thread.
            let (rsp, rip) = (t.ctx[6], t.ctx[7]);
            self.ensure(
                inside(rip, libc::PROT_EXEC) && inside(rsp.wrapping_sub(8), libc::PROT_READ | libc::PROT_WRITE),
                || format!("{who}: thread {} resumes outside its memory", t.tid),
            )?;
        }
        let mm = &p.mm;
        for (a, name) in [
            (mm.start_code, "start_code"),
            (mm.start_data, "start_data"),
            (mm.start_stack, "start_stack"),
            (mm.arg_start, "arg_start"),
            (mm.env_start, "env_start"),
        ] {
            self.ensure(a < TASK_SIZE, || format!("{who}: {name} outside the address space"))?;
        }
        self.ensure(
            mm.start_code <= mm.end_code
                && mm.start_data <= mm.end_data
                && mm.start_brk <= mm.brk
                && mm.arg_start <= mm.arg_end
                && mm.env_start <= mm.env_end
                && mm.end_code <= TASK_SIZE
                && mm.end_data <= TASK_SIZE
                && mm.brk <= TASK_SIZE
                && mm.arg_end <= TASK_SIZE
                && mm.env_end <= TASK_SIZE,
            || format!("{who}: memory layout fields"),
        )?;
        self.ensure(p.fds.len() <= MAX_FDS, || format!("{who}: too many fds"))?;
        self.ensure((0..MAX_FD).contains(&p.agent_fd), || format!("{who}: agent fd"))?;
        let mut seen: Vec<i32> = p.fds.iter().map(|f| f.fd).collect();
        seen.sort_unstable();
        self.ensure(
            seen.windows(2).all(|w| w[0] != w[1])
                && p.fds.iter().all(|f| (0..MAX_FD).contains(&f.fd) && f.fd != p.agent_fd)
                && p.fds.iter().all(|f| (f.desc as usize) < m.files.len()),
            || format!("{who}: fd table"),
        )?;
        Ok(())
    }

    fn ghost(&self, g: &GhostFile, i: usize) -> Result<(), CkError> {
        let what = format!("deleted file or memfd #{i}");
        self.path_ok(&g.path, &what)?;
        self.ensure(g.size <= MAX_GHOST && g.mode <= 0o7777, || format!("{what}: size or mode"))?;
        self.chunks(&g.chunks, 0, g.size.div_ceil(PAGE_SIZE) * PAGE_SIZE, &what)
    }

    fn file(&self, f: &OpenFile, m: &Manifest, i: usize) -> Result<(), CkError> {
        let what = || format!("open file #{i}");
        match f {
            OpenFile::Path { path, content, .. } => {
                self.path_ok(path, &what())?;
                match content {
                    Some(c) => {
                        self.ensure(c.size <= MAX_GHOST && c.mode <= 0o777, || format!("{}: saved content", what()))?;
                        self.chunks(&c.chunks, 0, c.size.div_ceil(PAGE_SIZE) * PAGE_SIZE, &what())
                    }
                    None => Ok(()),
                }
            }
            OpenFile::Proc { pid, rel, .. } => {
                self.path_ok(rel, &what())?;
                if let Some(p) = pid {
                    self.pid_ok(*p, &what())?;
                }
                self.ensure(crate::fdtypes::procfile::rel_ok(rel), || format!("{}: a path outside /proc", what()))
            }
            OpenFile::Inherited { fd, termios, .. } => self.ensure(
                (0..=2).contains(fd)
                    && termios.as_ref().is_none_or(|t| t.len() == std::mem::size_of::<libc::termios>()),
                || format!("{}: not a standard stream", what()),
            ),
            OpenFile::Ghost { ghost, .. } => {
                self.ensure((*ghost as usize) < m.ghosts.len(), || format!("{}: no such deleted file", what()))
            }
            OpenFile::Pipe { pipe, .. } => {
                self.ensure((*pipe as usize) < m.pipes.len(), || format!("{}: no such pipe", what()))
            }
            OpenFile::Epoll { items, .. } => self
                .ensure(items.len() <= MAX_FDS && items.iter().all(|e| (0..MAX_FD).contains(&e.fd)), || {
                    format!("{}: epoll interest list", what())
                }),
            OpenFile::Socket(s) => {
                let addr_ok = match &s.state {
                    SocketState::Bound { addr, .. } => {
                        addr.len() <= std::mem::size_of::<libc::sockaddr_storage>() && addr.len() >= 2
                    }
                    SocketState::Pair { queued, .. } | SocketState::Disconnected { queued, .. } => {
                        queued.len() <= 1 << 20
                    }
                    _ => true,
                };
                self.ensure(addr_ok && s.options.len() <= 64, || format!("{}: socket", what()))
            }
            _ => Ok(()),
        }
    }
}

/// Checks `m`, read from `path`, whose page chunks end at `chunks_end`.
pub fn validate(m: &Manifest, path: &Path, chunks_end: u64) -> Result<(), CkError> {
    let c = Check { path, chunks_end, parents: m.lineage.parents.len() };
    c.ensure(m.sysv.len() <= MAX_FDS, || "SysV objects".into())?;
    for o in &m.sysv {
        let ok = match o {
            crate::sysv::SysvObject::Semaphores { id, values, undo, .. } => {
                // Adjustments of its own semaphores, by processes of the image.
                *id >= 0
                    && values.len() <= 32000
                    && undo.len() <= values.len() * m.processes.len()
                    && undo
                        .iter()
                        .all(|u| (u.num as usize) < values.len() && m.processes.iter().any(|p| p.pid == u.pid))
            }
            crate::sysv::SysvObject::Queue { id, messages, .. } => {
                *id >= 0 && messages.len() <= 1 << 16 && messages.iter().all(|m| m.text.len() <= 1 << 20 && m.mtype > 0)
            }
            crate::sysv::SysvObject::Segment(s) => {
                c.chunks(&s.chunks, 0, s.mapped_len(), &s.describe())?;
                s.id >= 0 && s.size > 0 && s.size <= TASK_SIZE
            }
        };
        c.ensure(ok, || o.describe())?;
    }
    c.ensure(m.info.clocks.usable(), || "clocks at the checkpoint".into())?;
    let s = &m.settings;
    c.ensure((1..=64).contains(&s.trigger) && s.trigger != ckrun_proto::SUSPEND_SIGNAL, || "trigger signal".into())?;
    c.ensure(!s.socket_name.is_empty() && s.socket_name.len() < 100 && !s.socket_name.contains('\0'), || {
        "socket name".into()
    })?;
    c.ensure(
        !s.image_name.is_empty()
            && s.image_name.len() <= 255
            && !s.image_name.contains(['/', '\0'])
            && s.image_name != "."
            && s.image_name != "..",
        || "image name".into(),
    )?;
    c.path_ok(&s.dir, "image directory")?;
    c.ensure(!m.processes.is_empty() && m.processes.len() <= MAX_PROCESSES, || "number of processes".into())?;
    c.ensure(
        m.zombies.len() <= MAX_PROCESSES
            && m.files.len() <= MAX_OBJECTS
            && m.ghosts.len() <= MAX_OBJECTS
            && m.pipes.len() <= MAX_OBJECTS,
        || "too many objects".into(),
    )?;
    let mut pids: Vec<i32> = m.processes.iter().map(|p| p.pid).chain(m.zombies.iter().map(|z| z.pid)).collect();
    pids.sort_unstable();
    c.ensure(pids.windows(2).all(|w| w[0] != w[1]), || "a PID appears twice".into())?;
    for z in &m.zombies {
        c.pid_ok(z.pid, "zombie")?;
    }
    if let Some(g) = m.foreground {
        c.ensure(m.processes.iter().any(|p| p.pgid == g), || format!("foreground group {g} is no group of the tree"))?;
    }
    for p in &m.processes {
        c.process(p, m)?;
    }
    for (i, g) in m.ghosts.iter().enumerate() {
        c.ghost(g, i)?;
    }
    for (i, f) in m.files.iter().enumerate() {
        c.file(f, m, i)?;
    }
    for p in &m.pipes {
        c.ensure(p.capacity <= MAX_PIPE && p.data.len() as u64 <= p.capacity as u64, || "pipe contents".into())?;
        if let Some(f) = &p.fifo {
            c.path_ok(f, "FIFO")?;
        }
    }
    Ok(())
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::image::manifest::{ChunkRef, GhostFile, ImageInfo, RegionKind, Settings};
    use crate::restore::plan::tests::{process, region};

    /// The smallest manifest that passes: one process, one thread parked in
    /// its one region.
    pub fn valid_manifest() -> Manifest {
        let mut r = region(0x10000, 0x40000, RegionKind::Anon);
        r.prot = libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC;
        let mut p = process(vec![r], &[100]);
        p.threads[0].ctx[6] = 0x30000;
        p.threads[0].ctx[7] = 0x10000;
        Manifest {
            info: ImageInfo {
                ckrun_version: String::new(),
                created_unix_ms: 0,
                hostname: String::new(),
                kernel_release: String::new(),
                kernel_version: String::new(),
                xsave_features: 0,
                clocks: Default::default(),
                command: vec![],
                sequence: 1,
                paused_us: 0,
                memory_bytes: 0,
            },
            settings: Settings {
                dir: "/tmp".into(),
                trigger: 12,
                frozen: false,
                socket_name: "ckrun.test".into(),
                image_name: "test".into(),
                strict: false,
                key_file: None,
                interval_ms: None,
                keep: None,
                stop_signal: None,
                full: false,
            },
            root: 100,
            root_status: None,
            processes: vec![p],
            zombies: vec![],
            files: vec![],
            ghosts: vec![],
            pipes: vec![],
            sysv: vec![],
            foreground: None,
            lineage: Default::default(),
        }
    }

    fn check(m: &Manifest) -> Result<(), CkError> {
        validate(m, Path::new("t.ckimg"), 1 << 20)
    }

    fn chunk(addr: u64, npages: u32, offset: u64) -> ChunkRef {
        ChunkRef::own(addr, npages, 100, offset, 0)
    }

    #[test]
    fn a_consistent_manifest_passes() {
        let mut m = valid_manifest();
        m.processes[0].regions[0].chunks = vec![chunk(0x10000, 2, 4096), chunk(0x12000, 1, 8192)];
        check(&m).unwrap();
    }

    #[test]
    fn bounds_and_indices_are_checked() {
        type Edit = Box<dyn Fn(&mut Manifest)>;
        let cases: Vec<(&str, Edit)> = vec![
            (
                "overlapping chunks",
                Box::new(|m| m.processes[0].regions[0].chunks = vec![chunk(0x10000, 2, 4096), chunk(0x11000, 1, 8192)]),
            ),
            ("chunk past its region", Box::new(|m| m.processes[0].regions[0].chunks = vec![chunk(0x3f000, 2, 4096)])),
            ("huge chunk", Box::new(|m| m.processes[0].regions[0].chunks = vec![chunk(0x10000, u32::MAX, 4096)])),
            ("chunk past the file", Box::new(|m| m.processes[0].regions[0].chunks = vec![chunk(0x10000, 1, 1 << 20)])),
            ("region past the address space", Box::new(|m| m.processes[0].regions[0].end = 0x8000_0000_0000)),
            ("ghost index", Box::new(|m| m.processes[0].regions[0].kind = RegionKind::Ghost { ghost: 3, offset: 0 })),
            (
                "fd index",
                Box::new(|m| {
                    m.processes[0].fds.push(crate::image::manifest::FdImage { fd: 3, cloexec: false, desc: 0 })
                }),
            ),
            ("no threads", Box::new(|m| m.processes[0].threads.clear())),
            ("thread outside its memory", Box::new(|m| m.processes[0].threads[0].ctx[7] = 0xdead_0000)),
            ("PID", Box::new(|m| m.processes[0].pid = -5)),
            ("uid -1", Box::new(|m| m.processes[0].creds.uid[3] = u32::MAX)),
            ("foreground group of no process", Box::new(|m| m.foreground = Some(4242))),
            ("image name", Box::new(|m| m.settings.image_name = "../x".into())),
            ("trigger", Box::new(|m| m.settings.trigger = 63)),
            ("negative clock", Box::new(|m| m.info.clocks.monotonic_ns = -1)),
            ("clock past the kernel's range", Box::new(|m| m.info.clocks.boottime_ns = i64::MAX)),
            ("path with NUL", Box::new(|m| m.processes[0].cwd = "/a\0b".into())),
            (
                "ghost chunk past its size",
                Box::new(|m| {
                    m.ghosts.push(GhostFile {
                        path: "/x".into(),
                        memfd: false,
                        named: false,
                        mode: 0o600,
                        size: 4096,
                        seals: 0,
                        dev: (0, 0),
                        inode: 1,
                        chunks: vec![chunk(0, u32::MAX, 4096)],
                    })
                }),
            ),
        ];
        let sems = |undo: crate::sysv::semundo::Undo| crate::sysv::SysvObject::Semaphores {
            id: 7,
            key: 0,
            owner: crate::sysv::Owner { uid: 0, gid: 0, mode: 0o600 },
            values: vec![1, 2],
            undo: vec![undo],
        };
        let mut cases = cases;
        for (what, undo) in [
            ("undo adjustment of a process not in the image", crate::sysv::semundo::Undo { pid: 101, num: 0, adj: 1 }),
            ("undo adjustment beyond the set", crate::sysv::semundo::Undo { pid: 100, num: 2, adj: 1 }),
        ] {
            cases.push((what, Box::new(move |m: &mut Manifest| m.sysv = vec![sems(undo)])));
        }
        let mut fine = valid_manifest();
        fine.sysv = vec![sems(crate::sysv::semundo::Undo { pid: 100, num: 1, adj: -3 })];
        check(&fine).unwrap();
        for (what, edit) in cases {
            let mut m = valid_manifest();
            edit(&mut m);
            assert!(matches!(check(&m), Err(CkError::BadImage { .. })), "{what} was not caught");
        }
    }
}
