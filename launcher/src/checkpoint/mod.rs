//! Taking a checkpoint of the tree, driven by the coordinator:
//!
//! 1. ask each agent to suspend its process (the suspend signal with the
//!    "lead" magic); each replies with its threads and, by default, the pid
//!    of a copy-on-write snapshot child;
//! 2. while the program is stopped, read what changes as soon as it runs
//!    again: fds and their offsets, pipe contents, deleted files
//!    ([`crate::fdtypes`]), cwd, umask, limits, pending signals
//!    ([`process`]), the memory map and shared memory (which a snapshot
//!    child shares with the running program), SysV objects and each
//!    process's semaphore undo adjustments (`crate::sysv`), and what each
//!    process's dirty tracker saw written since the previous image, its
//!    memory protected again ([`dirty`]);
//! 3. resume the program (with `--no-fork`: only after step 4);
//! 4. read the private memory of the snapshot ([`memory`]) but the pages
//!    the tracker knows unchanged, hash it, take the pages the previous
//!    image holds from there ([`dedup`]), compress the others on all
//!    cores, write the image under a temporary name, sync, rename.

pub mod copyout;
pub mod dedup;
pub mod dirty;
pub mod memory;
pub mod process;

use crate::agent::{kind_of, Agent};
use crate::fdtypes;
use crate::image::lineage::{self, BlobRef, Lineage};
use crate::image::manifest::{FdImage, GhostFile, ImageInfo, Manifest, ProcessImage, Settings, ThreadImage, Zombie};
use crate::image::seal::Key;
use crate::image::ImageWriter;
use crate::proctree as tree;
use crate::sys::mem::RemoteMemory;
use crate::sys::{
    machine,
    proc::{sigqueue, tgsigqueue},
    procfs,
};
use anyhow::{anyhow, bail, Context, Result};
use ckrun_proto::{
    decode, kind, read_pod, Failure, MemRange, Resume, Suspended, ThreadRecord, SUSPEND_LEAD, SUSPEND_MAGIC,
    SUSPEND_SIGNAL, THREAD_LEADER,
};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long an agent may take to stop all its threads.
const SUSPEND_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Outcome {
    pub path: PathBuf,
    /// The image's number (the first free one from the number asked for).
    pub sequence: u32,
    pub memory_bytes: u64,
    /// Of those, the bytes taken from earlier images (not stored again).
    pub taken_bytes: u64,
    /// Of those, the bytes the dirty tracker knew unchanged (not read).
    pub unread_bytes: u64,
    /// The bytes copied out of the stopped processes, if no snapshot was
    /// taken (`copyout`).
    pub copied_out: Option<u64>,
    /// How many earlier images the image takes pages from.
    pub parents: usize,
    /// Why the image is self-contained although a base was given.
    pub whole_because: Option<String>,
    pub image_bytes: u64,
    pub paused: Duration,
    pub total: Duration,
    pub warnings: Vec<String>,
    /// Checkpoint requests that arrived meanwhile (merged into this one).
    pub merged_requests: u32,
    /// The index of this image's pages, for the next checkpoint.
    pub next_base: Option<Box<dedup::Base>>,
}

impl Outcome {
    /// What the next image is deduplicated against: this one.
    pub fn take_next_base(&mut self) -> dedup::Previous {
        match self.next_base.take() {
            Some(b) => dedup::Previous::Kept(b),
            None => dedup::Previous::Image(self.path.clone()),
        }
    }
}

/// A suspended process: what its agent reported.
struct Stopped<'a> {
    agent: &'a Agent,
    head: Suspended,
    threads: Vec<ThreadRecord>,
    /// The MADV_DONTFORK mappings the agent made copyable for the snapshot.
    dontfork: Vec<MemRange>,
}

impl Stopped<'_> {
    /// Where the process's /proc files are read: through the thread that
    /// led the checkpoint, which lives; the main thread (and with it
    /// /proc/PID's per-process files) may have ended (pthread_exit in main).
    fn reader(&self) -> i32 {
        self.threads.iter().find(|t| t.flags & THREAD_LEADER != 0).map_or(self.agent.pid, |t| t.tid)
    }

    /// Where the memory image is read: the snapshot, or the frozen process.
    fn source(&self) -> i32 {
        if self.head.snapshot_pid > 0 {
            self.head.snapshot_pid
        } else {
            self.reader()
        }
    }
}

/// Lets every process that was asked to stop go again, and reaps the
/// snapshot children, whatever happens to the checkpoint.
struct ResumeGuard<'a, 'b> {
    stopped: &'b mut Vec<Stopped<'a>>,
    /// Asked to stop, not yet heard from.
    signalled: Vec<&'a Agent>,
    /// This checkpoint's request number (see `ckrun_proto::SUSPEND_REQUEST_SHIFT`).
    request: u32,
    resumed: bool,
}

impl ResumeGuard<'_, '_> {
    fn resume(&mut self, aborted: bool) {
        if !self.resumed {
            let go = Resume { aborted: aborted as u32, request: self.request };
            for s in self.stopped.iter() {
                let _ = s.agent.send(kind::RESUME, &[go]);
            }
            self.resumed = true;
        }
    }
}

impl ResumeGuard<'_, '_> {
    /// Kills the snapshot children (the drop reaps them).
    fn end_snapshots(&self) {
        for s in self.stopped.iter().filter(|s| s.head.snapshot_pid > 0) {
            // SAFETY: a plain signal to our own child, not reaped yet.
            unsafe { libc::kill(s.head.snapshot_pid, libc::SIGKILL) };
        }
    }
}

impl Drop for ResumeGuard<'_, '_> {
    fn drop(&mut self) {
        // A process asked to stop that has not answered yet gets its RESUME
        // now, queued ahead of its answer: whenever it stops, it goes on at
        // once (and the coordinator kills the snapshot its late report
        // names: `discard_late_report`). Nothing waits for it.
        let go = Resume { aborted: 1, request: self.request };
        for a in std::mem::take(&mut self.signalled) {
            let _ = a.send(kind::RESUME, &[go]);
        }
        self.resume(true);
        for s in self.stopped.iter() {
            if s.head.snapshot_pid > 0 {
                // SAFETY: plain signal and wait on our own child.
                unsafe {
                    libc::kill(s.head.snapshot_pid, libc::SIGKILL);
                    libc::waitpid(s.head.snapshot_pid, std::ptr::null_mut(), 0);
                }
            }
        }
    }
}

/// The tree changed (a process forked or exited) while it was being
/// stopped; the checkpoint is abandoned and may be tried again at once.
#[derive(Debug, thiserror::Error)]
#[error("the process tree changed during the checkpoint")]
pub struct TreeChanged;

/// What to checkpoint: the live processes of the tree (parents first) with
/// their agents, and the zombies among them.
pub struct Tree<'a> {
    pub live: Vec<&'a Agent>,
    pub zombies: Vec<Zombie>,
    /// The program ckrun started (its pid names the image).
    pub root: i32,
    /// Its wait status, if it has ended (the rest of the tree goes on).
    pub root_status: Option<i32>,
    /// This attempt's request number, 1..=127, new for every attempt.
    pub request: u32,
    /// `--stop-signal`: the program is killed once captured instead of
    /// resumed, so that nothing it does after the checkpoint (output that
    /// a restart would have to cut back) ever happens.
    pub end_after_capture: bool,
    /// Try copy-out instead of snapshots (see `copyout`), where the base
    /// and the trackers allow it.
    pub copy_out: bool,
}

/// The image name for number `n`.
pub fn image_name(settings: &Settings, root: i32, n: u32) -> String {
    format!("{}.{root}.{n}.ckimg", settings.image_name)
}

/// Checkpoints `tree` into image number `sequence`, or the first number
/// after it that is free (an image is never replaced), sealed with `key`;
/// taking the pages the image `base` (the job's previous one) holds from
/// there, unless `--full`.
pub fn take(
    tree: &Tree,
    settings: &Settings,
    command: &[String],
    sequence: u32,
    key: Option<&Key>,
    base: Option<&dedup::Previous>,
) -> Result<Outcome> {
    let t0 = Instant::now();
    let mut sequence = sequence;
    while std::fs::symlink_metadata(settings.dir.join(image_name(settings, tree.root, sequence))).is_ok() {
        sequence += 1;
    }
    // Before the program stops: reading the base's hashes does not add
    // to the pause.
    let (base, whole_because) = match base.filter(|_| !settings.full).map(|b| b.base(&settings.dir)) {
        Some(Ok(b)) => (Some(b), None),
        Some(Err(e)) => (None, Some(format!("{e:#}"))),
        None => (None, None),
    };
    let t_base = t0.elapsed();
    // The pause is counted from here: the base was read while the program ran.
    let t_stop = Instant::now();
    let base = base.as_ref();
    let out = ImageWriter::create(&settings.dir)?;
    let mut merged_requests = 0;

    // 1. Suspend every process, then check nobody forked meanwhile.
    let copy_out = tree.copy_out
        && !settings.frozen
        && !settings.full
        && !tree.end_after_capture
        && base.is_some_and(|b| copyout::possible(&tree.live, b));
    let frozen_bit = if settings.frozen || copy_out { ckrun_proto::SUSPEND_FROZEN } else { 0 };
    let value = SUSPEND_MAGIC
        | SUSPEND_LEAD
        | frozen_bit
        | (tree.request as u64 & ckrun_proto::SUSPEND_REQUEST_MASK) << ckrun_proto::SUSPEND_REQUEST_SHIFT;
    let mut stopped = Vec::new();
    let agents: Vec<i32> = tree.live.iter().map(|a| a.pid).collect();
    let mut guard = ResumeGuard { stopped: &mut stopped, signalled: Vec::new(), request: tree.request, resumed: false };
    inject("create")?;
    for a in &tree.live {
        let value = if dirty::wanted(a) { value | ckrun_proto::SUSPEND_TRACKER } else { value };
        if ask_to_lead(a.pid, value).is_err() {
            return Err(TreeChanged.into()); // gone meanwhile
        }
        guard.signalled.push(a);
    }
    while let Some(a) = guard.signalled.first().copied() {
        if guard.signalled.len() == 1 && guard.stopped.len() + 1 == tree.live.len() {
            inject("late")?; // the last process is left to answer late
        }
        let s = wait_suspended(a, &mut merged_requests, &agents, tree.request)?;
        guard.signalled.remove(0);
        guard.stopped.push(s);
    }
    // The clocks the restart continues: those of the moment the last
    // process stopped, after anything the program saw of them.
    let stopped_at = crate::timens::now();
    inject("stopped")?;
    let snapshots: Vec<i32> = guard.stopped.iter().map(|s| s.head.snapshot_pid).filter(|&p| p > 0).collect();
    let now: Vec<i32> =
        tree::descendants(std::process::id() as i32, &snapshots).iter().filter(|m| !m.zombie).map(|m| m.pid).collect();
    if now.len() != tree.live.len() || tree.live.iter().any(|a| !now.contains(&a.pid)) {
        return Err(TreeChanged.into());
    }

    // 2. What changes once the program runs again, and shared memory.
    // Copy-out asked for no snapshot, and reads the stopped processes
    // below: their private memory is not saved whole now.
    let frozen = !copy_out && guard.stopped.iter().any(|s| s.head.snapshot_pid <= 0);
    // The agent's own signals are never pending for the program.
    let reserved = 1u64 << (SUSPEND_SIGNAL - 1) | 1u64 << (settings.trigger - 1);
    let procs: Vec<(i32, i32)> = guard.stopped.iter().map(|s| (s.reader(), s.agent.agent_fd)).collect();
    let mut fds = fdtypes::capture(&procs, &out)?;
    let pids: Vec<i32> = guard.stopped.iter().map(|s| s.agent.pid).collect();
    let mut sysv = crate::sysv::capture(&pids, &out)?;
    inject("fds")?;
    let what: Vec<String> = fds.unsupported.clone();
    if settings.strict && !what.is_empty() {
        bail!("{} cannot be restored (--strict)", what.join(", "));
    }
    let mut warnings: Vec<String> =
        what.into_iter().map(|w| format!("{w} cannot be restored; it will be closed after a restart")).collect();
    warnings.append(&mut fds.warnings);
    // Each process reads its own semaphore undo adjustments, still stopped.
    let stopped_agents: Vec<&Agent> = guard.stopped.iter().map(|s| s.agent).collect();
    crate::sysv::semundo::capture(&stopped_agents, &mut sysv, &mut warnings, &mut merged_requests)?;
    let mut images = Vec::new();
    let mut saved = memory::Saved::default();
    let mut hashes: Vec<dedup::PageHashes> = Vec::new();
    let mut terminal_groups = Vec::new();
    for (i, s) in guard.stopped.iter().enumerate() {
        let table = std::mem::take(&mut fds.fds[i]);
        let mut h = dedup::PageHashes::default();
        let into = Into { out: &out, base, hashes: &mut h, saved: &mut saved };
        let (image, tpgid) = capture_stopped(s, table, &mut fds.ghosts, into, frozen, reserved)?;
        images.push(image);
        hashes.push(h);
        terminal_groups.extend(tpgid);
    }
    let foreground = foreground_group(&images, &terminal_groups);
    // Copy-out: the pages to save, out of the stopped processes, before
    // the scan protects them again (declining leaves the trackers as
    // they were).
    let copied = match (copy_out, base) {
        (true, Some(b)) => {
            let mut procs: Vec<copyout::Stopped> = guard
                .stopped
                .iter()
                .zip(images.iter_mut())
                .map(|(s, img)| copyout::Stopped {
                    agent: s.agent,
                    reader: s.reader(),
                    pid: img.pid,
                    regions: &mut img.regions,
                })
                .collect();
            Some(copyout::take(&mut procs, b)?)
        }
        _ => None,
    };
    // What each process wrote since the base, and its tracker protected
    // again: still stopped, after the snapshot's fork.
    let base_id = base.map(|b| b.id());
    let scans: Vec<dirty::Scanned> = guard
        .stopped
        .iter()
        .zip(images.iter())
        .map(|(s, img)| dirty::scan(s.agent, s.reader(), &img.regions, base_id))
        .collect();

    inject("captured")?;

    // 3./4. Resume (or end); private memory from the snapshots.
    let t_captured = t0.elapsed();
    if tree.end_after_capture {
        for s in guard.stopped.iter() {
            // SAFETY: plain kill of a process of the job, stopped in its
            // agent; its snapshot (ckrun's child) keeps its memory.
            unsafe { libc::kill(s.agent.pid, libc::SIGKILL) };
        }
        guard.resumed = true;
    } else {
        guard.resume(false);
    }
    let paused = t_stop.elapsed();
    inject("resumed")?;
    let stages = memory::Stages::default();
    if let (Some(copied), Some(b)) = (&copied, base) {
        for (i, (img, h)) in images.iter_mut().zip(hashes.iter_mut()).enumerate() {
            let p = &copied.processes[i];
            let known = dirty::Known { changes: &p.changes, base_pages: b.pages_of(img.pid) };
            let source = copied.source(i);
            saved += memory::save_pages_timed(&source, &p.runs, &mut img.regions, &out, base, Some(&known), h, &stages)
                .with_context(|| format!("process {}", img.pid))?;
        }
    } else if !frozen {
        for (((s, img), h), scan) in guard.stopped.iter().zip(images.iter_mut()).zip(hashes.iter_mut()).zip(&scans) {
            let source = s.source();
            let pid = img.pid;
            // The snapshot's flags, read now that the program runs, while
            // its memory is saved (they are not needed for that): smaps
            // walks the page tables (~20 ms per GiB), the snapshot's own.
            let (vmas, memory) = std::thread::scope(|scope| {
                let vmas = scope.spawn(|| {
                    let t = Instant::now();
                    let v = procfs::vm_flags(source).with_context(|| format!("process {pid}"));
                    memory::Stages::add(&stages.smaps, t);
                    v
                });
                let memory = (|| -> Result<memory::Saved> {
                    let t = Instant::now();
                    let known = match (base, &scan.changes) {
                        (Some(b), Some(changes)) => Some(dirty::Known { changes, base_pages: b.pages_of(pid) }),
                        _ => None,
                    };
                    let mem = RemoteMemory::open(source)?;
                    let runs = memory::select_pages_known(&mem, &img.regions, |r| !r.shared, known.as_ref())?;
                    memory::Stages::add(&stages.select, t);
                    memory::save_pages_timed(&mem, &runs, &mut img.regions, &out, base, known.as_ref(), h, &stages)
                })();
                (vmas.join().unwrap_or_else(|_| Err(anyhow!("reading smaps of process {pid} panicked"))), memory)
            });
            saved += memory?;
            let vmas = vmas?;
            memory::check_in_snapshot(&img.regions, &vmas).with_context(|| format!("process {pid}"))?;
            memory::take_vm_flags(&mut img.regions, &vmas, false);
        }
    }
    let t_memory = t0.elapsed();
    inject("memory")?;
    // A namespace's offsets never change once a process is in it: read
    // now that the program runs.
    let readers: Vec<i32> = guard.stopped.iter().map(|s| s.reader()).collect();
    let clocks = crate::timens::capture(&readers, stopped_at, &mut warnings);
    // The snapshots' memory is freed by their own exit, on another core
    // while the image is finished; they are reaped once it is durable.
    guard.end_snapshots();

    let t_blob = Instant::now();
    let blob = dedup::hashes_blob(&hashes);
    let (offset, checksum) = out.append_chunk(&blob)?;
    let t_blob = t_blob.elapsed();
    let page_hashes = Some(BlobRef { offset, len: blob.len() as u64, checksum });
    let lineage = match base {
        Some(b) => {
            let chunks = images.iter_mut().flat_map(|p| p.regions.iter_mut().flat_map(|r| r.chunks.iter_mut()));
            let parents = b.parents_of(chunks);
            let generation = if parents.is_empty() { 0 } else { b.generation };
            Lineage { id: lineage::new_id(), generation, parents, page_hashes }
        }
        None => Lineage { id: lineage::new_id(), generation: 0, parents: Vec::new(), page_hashes },
    };
    let parents = lineage.parents.len();

    let (hostname, kernel_release, kernel_version) = machine::uname();
    let manifest = Manifest {
        info: ImageInfo {
            ckrun_version: env!("CARGO_PKG_VERSION").into(),
            created_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            hostname,
            kernel_release,
            kernel_version,
            xsave_features: machine::xsave_features(),
            clocks,
            command: command.to_vec(),
            sequence,
            paused_us: paused.as_micros() as u64,
            memory_bytes: saved.bytes,
        },
        settings: settings.clone(),
        root: tree.root,
        root_status: tree.root_status,
        processes: images,
        zombies: tree.zombies.clone(),
        files: fds.files,
        ghosts: fds.ghosts,
        pipes: fds.pipes,
        sysv,
        foreground,
        lineage,
    };
    inject("finish")?;
    hang("finish");
    let t_finish = t0.elapsed();
    let (path, image_bytes) = out.finish(&manifest, &image_name(settings, tree.root, sequence), key)?;
    let total = t0.elapsed();
    let armed: Vec<&Agent> =
        guard.stopped.iter().zip(&scans).filter(|(_, sc)| sc.armed).map(|(s, _)| s.agent).collect();
    dirty::checkpointed(&armed, manifest.lineage.id);
    drop(guard); // reaps the snapshot children
                 // Durable now: the index the next checkpoint is deduplicated against,
                 // from what is in memory (its file is read only after a restart).
    let own = lineage::ParentRef {
        name: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        id: manifest.lineage.id,
        generation: manifest.lineage.generation,
        len: image_bytes,
        page_hashes: manifest.lineage.page_hashes,
    };
    let next_base = match settings.full {
        true => None,
        false => dedup::hashes_in_order(&manifest.processes, &mut hashes, base)
            .and_then(|h| dedup::Base::of_image(&manifest, &h, own).ok())
            .map(Box::new),
    };
    if std::env::var_os("CKRUN_TIMING").is_some() {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let sum = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e6;
        eprintln!(
            "ckrun: timing: base {:.1} ms, stopped+captured {:.1} ms, resumed {:.1} ms, memory {:.1} ms (smaps {:.1}, select {:.1}; threads: read {:.0}, hash {:.0}, compress {:.0}, write {:.0} ms), page hashes {:.1} ms, manifest+fsync+link {:.1} ms (durable at {:.1} ms), next base {:.1} ms",
            ms(t_base),
            ms(t_captured - t_base),
            ms(paused),
            ms(t_memory - t_base - paused),
            sum(&stages.smaps),
            sum(&stages.select),
            sum(&stages.read),
            sum(&stages.hash),
            sum(&stages.compress),
            sum(&stages.write),
            ms(t_blob),
            ms(total - t_finish),
            ms(total),
            ms(t0.elapsed() - total)
        );
    }
    Ok(Outcome {
        path,
        sequence,
        memory_bytes: saved.bytes,
        taken_bytes: saved.taken,
        unread_bytes: saved.unread,
        copied_out: copied.as_ref().map(|c| c.bytes()),
        parents,
        whole_because,
        image_bytes,
        paused,
        total,
        warnings,
        merged_requests,
        next_base,
    })
}

/// Where a process's saved memory goes.
struct Into<'a> {
    out: &'a ImageWriter,
    base: Option<&'a dedup::Base>,
    hashes: &'a mut dedup::PageHashes,
    saved: &'a mut memory::Saved,
}

/// The group of the tree that is the foreground group of the terminal
/// its processes have as controlling terminal (`terminal_groups`: what
/// /proc/PID/stat says of each process that has one), if any.
fn foreground_group(images: &[ProcessImage], terminal_groups: &[i32]) -> Option<i32> {
    terminal_groups.iter().copied().find(|&g| g > 0 && images.iter().any(|p| p.pgid == g))
}

/// Everything about one stopped process that must be read before it runs
/// again: kernel state, fds, the memory map, shared memory, and with
/// `frozen` all of its memory. Returns the image and the foreground group
/// of its controlling terminal, if it has one.
fn capture_stopped(
    s: &Stopped,
    fds: Vec<FdImage>,
    ghosts: &mut Vec<GhostFile>,
    into: Into,
    frozen: bool,
    reserved: u64,
) -> Result<(ProcessImage, Option<i32>)> {
    let out = into.out;
    let pid = s.agent.pid;
    let reader = s.reader();
    let st = process::capture_state(reader)?;
    let layout = process::capture_layout(reader, s.head.brk)?;
    let mut regions = memory::classify(&layout.maps, |m| fdtypes::ghost::capture_mapping(reader, m, ghosts, out))
        .with_context(|| format!("process {pid}"))?;
    if frozen {
        // Read from the process itself, which is stopped for the whole
        // copy anyway: its smaps shows every flag.
        memory::take_vm_flags(&mut regions, &procfs::vm_flags(reader)?, true);
    } else {
        memory::mark_dontfork(&mut regions, &s.dontfork);
    }
    let mem = RemoteMemory::open(reader)?;
    let runs = memory::select_pages(&mem, &regions, |r| frozen || r.shared)?;
    *into.saved += memory::save_pages(&mem, &runs, &mut regions, out, into.base, into.hashes)?;
    let tpgid = (st.stat.tty_nr != 0 && st.stat.tpgid > 0).then_some(st.stat.tpgid);
    let image = ProcessImage {
        pid,
        ppid: st.stat.ppid,
        pgid: st.stat.pgrp,
        sid: st.stat.session,
        exe: layout.exe,
        cwd: st.cwd,
        umask: st.umask,
        personality: st.personality,
        rlimits: st.rlimits,
        mm: layout.mm,
        auxv: layout.auxv,
        regions,
        fds,
        pending: process::process_pending(reader, reserved)?,
        threads: s
            .threads
            .iter()
            .map(|t| ThreadImage { pending: process::thread_pending(pid, t.tid, reserved), ..ThreadImage::from(t) })
            .collect(),
        agent_fd: s.agent.agent_fd,
        creds: crate::creds::capture(reader, s.head.securebits, s.head.dumpable)?,
    };
    Ok((image, tpgid))
}

/// An agent's report names processes and threads that ckrun then reads
/// (and kills, for the snapshot): each must be what it says. The threads
/// are threads of the agent's own process; the snapshot is a child of
/// ckrun (the agent's leader forked it, and it was re-parented to ckrun)
/// that is not a process of the tree (none of `agents`).
fn check_report(
    pid: i32,
    h: &Suspended,
    threads: &[ThreadRecord],
    dontfork: &[MemRange],
    agents: &[i32],
) -> Result<()> {
    let bad = |why: String| anyhow!("process {pid} reported {why}; checkpoint abandoned");
    if threads.is_empty() || threads.len() > ckrun_proto::MAX_THREADS || threads.len() != h.nthreads as usize {
        return Err(bad(format!("{} threads", threads.len())));
    }
    if dontfork.len() != h.ndontfork as usize || dontfork.len() > ckrun_proto::MAX_DONTFORK {
        return Err(bad(format!("{} MADV_DONTFORK mappings", dontfork.len())));
    }
    for t in threads {
        if t.tid <= 0 || !std::path::Path::new(&format!("/proc/{pid}/task/{}", t.tid)).exists() {
            return Err(bad(format!("thread {}, which is not one of its own", t.tid)));
        }
    }
    if h.snapshot_pid > 0 {
        let me = std::process::id() as i32;
        let parent = crate::sys::procfs::read(h.snapshot_pid, "stat")
            .ok()
            .and_then(|t| crate::sys::procfs::parse_stat(&t).ok())
            .map(|s| s.ppid);
        if parent != Some(me) || agents.contains(&h.snapshot_pid) {
            return Err(bad(format!("a snapshot {} that is not ckrun's", h.snapshot_pid)));
        }
    }
    Ok(())
}

/// Sends the suspend signal that makes one thread of `pid` lead its
/// checkpoint: to the main thread while it lives. A signal for the whole
/// process wakes one thread but may be taken by another (one that handles
/// a signal of its own meanwhile), and the woken thread's sigtimedwait,
/// epoll_wait, io_getevents or timed socket call then fails with an EINTR
/// the agent cannot tell from the program's: no handler ran in that
/// thread. A main thread that ended (pthread_exit) gets nothing: then the
/// process is signalled.
fn ask_to_lead(pid: i32, value: u64) -> std::io::Result<()> {
    let main_alive = crate::sys::procfs::read(pid, &format!("task/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])));
    if main_alive {
        tgsigqueue(pid, pid, SUSPEND_SIGNAL, value)
    } else {
        sigqueue(pid, SUSPEND_SIGNAL, value)
    }
}

/// Collects an agent's SUSPENDED report and its thread records.
fn wait_suspended<'a>(a: &'a Agent, merged: &mut u32, agents: &[i32], request: u32) -> Result<Stopped<'a>> {
    let deadline = Instant::now() + SUSPEND_TIMEOUT;
    let mut head: Option<Suspended> = None;
    let mut threads = Vec::new();
    let mut dontfork = Vec::new();
    loop {
        if let Some(h) = &head {
            if threads.len() >= h.nthreads as usize && dontfork.len() >= h.ndontfork as usize {
                check_report(a.pid, h, &threads, &dontfork, agents)?;
                return Ok(Stopped { agent: a, head: *h, threads, dontfork });
            }
        }
        let msg = match a.recv(Some(deadline)) {
            Ok(Some(m)) => m,
            Ok(None) => bail!("process {} did not stop within {}s", a.pid, SUSPEND_TIMEOUT.as_secs()),
            // It exited or exec'd (a new program checks in anew): again.
            Err(_) => return Err(TreeChanged.into()),
        };
        match kind_of(&msg) {
            kind::SUSPENDED => {
                let h = decode::<Suspended>(&msg)
                    .and_then(|(_, v)| v.first().copied())
                    .ok_or_else(|| anyhow!("bad SUSPENDED message"))?;
                if h.request != request {
                    // The late answer to an abandoned request.
                    discard_late_report(a, &msg, agents);
                    continue;
                }
                head = Some(h);
            }
            kind::THREADS if head.is_some() => {
                threads.extend(decode::<ThreadRecord>(&msg).ok_or_else(|| anyhow!("bad THREADS message"))?.1)
            }
            kind::DONTFORK if head.is_some() => {
                dontfork.extend(decode::<MemRange>(&msg).ok_or_else(|| anyhow!("bad DONTFORK message"))?.1)
            }
            kind::SUSPEND_FAILED => {
                let f: Failure = read_pod(&msg[8..]).ok_or_else(|| anyhow!("bad SUSPEND_FAILED message"))?;
                bail!(
                    "process {} could not stop its threads: {} (thread {}, {})",
                    a.pid,
                    f.text(),
                    f.tid,
                    std::io::Error::from_raw_os_error(f.errno)
                );
            }
            kind::CHECKPOINT_REQUEST => *merged += 1,
            kind::TRACKER => dirty::adopt(a),
            _ => {}
        }
    }
}

/// A SUSPENDED report that came after its checkpoint was abandoned, or
/// for a request the coordinator never made of this connection: the
/// process is stopped, waiting for the RESUME of *that* request, which it
/// is sent now (one queued earlier, if any, is skipped by the agent as
/// stale at its next stop). A suspend signal sent to a process just
/// before it exec'd reaches the new program, and is answered on the new
/// program's connection, where no RESUME for it was ever queued: without
/// this answer that process would wait for ever. The snapshot the report
/// names is killed, if it is ckrun's (see [`check_report`]).
pub fn discard_late_report(agent: &Agent, msg: &[u8], agents: &[i32]) {
    let Some(h) = decode::<Suspended>(msg).and_then(|(_, v)| v.first().copied()) else { return };
    let _ = agent.send(kind::RESUME, &[Resume { aborted: 1, request: h.request }]);
    if h.snapshot_pid <= 0 || agents.contains(&h.snapshot_pid) {
        return;
    }
    if tree::is_snapshot(h.snapshot_pid, std::process::id() as i32) {
        // SAFETY: plain signal to a snapshot child of ours (checked above);
        // the coordinator's SIGCHLD handling reaps it.
        unsafe { libc::kill(h.snapshot_pid, libc::SIGKILL) };
    }
}

/// Test hook (`CKRUN_TEST_HANG=STEP`, or `STEP:N` for the N-th time):
/// ckrun says `ckrun: test: hanging at STEP` and waits for ever there, so
/// that a test can kill it at that moment. Steps: finish (the image's
/// chunks are written, not its manifest), retain (an image was deleted,
/// the others not yet).
pub fn hang(step: &str) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEEN: AtomicU32 = AtomicU32::new(0);
    let Some(spec) = std::env::var_os("CKRUN_TEST_HANG") else { return };
    let spec = spec.to_string_lossy();
    let (want, nth) = spec.split_once(':').map_or((&*spec, 1), |(s, n)| (s, n.parse().unwrap_or(1)));
    if want == step && SEEN.fetch_add(1, Ordering::Relaxed) + 1 == nth {
        eprintln!("ckrun: test: hanging at {step}");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

/// Test hook (`CKRUN_TEST_FAIL=STEP`, or `STEP:N` for the N-th time): the
/// checkpoint fails at step STEP, to test that every failure lets the
/// program go on and the next checkpoint succeed. Steps, in order:
/// create, late (the last process to stop is left to answer late),
/// stopped, fds, captured, resumed, memory, finish. (`dontfork` is the
/// agent's: it takes every MADV_DOFORK as refused.)
fn inject(step: &str) -> Result<()> {
    if injected(step) {
        bail!("failure injected at step {step} (CKRUN_TEST_FAIL)");
    }
    Ok(())
}

/// Whether `CKRUN_TEST_FAIL` asks for a failure at this step now.
fn injected(step: &str) -> bool {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEEN: AtomicU32 = AtomicU32::new(0);
    let Some(spec) = std::env::var_os("CKRUN_TEST_FAIL") else { return false };
    let spec = spec.to_string_lossy();
    let (want, nth) = spec.split_once(':').map_or((&*spec, 1), |(s, n)| (s, n.parse().unwrap_or(1)));
    want == step && SEEN.fetch_add(1, Ordering::Relaxed) + 1 == nth
}
