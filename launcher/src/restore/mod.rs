//! `ckrun --restart` and `ckrun --inspect`.
//!
//! The coordinator side checks the image (format, checksums, kernel, the
//! files it depends on) before anything runs, creates the restore child
//! with the program's original PID (clone3 `set_tid`), and then
//! coordinates the restored program like a freshly launched one. The
//! restore child ([`child`]) stages memory ([`memory`]), fds ([`crate::fdtypes`]) and
//! settings ([`settings`]) following a [`plan::RestorePlan`], and hands over
//! to the [`restorer`].

pub mod child;
pub mod kernel;
mod memory;
mod pidns;
pub mod placement;
pub mod plan;
mod restorer;
mod settings;
pub mod transfer;

pub use restorer::RESTORER_FAILED;

use crate::cli::Overrides;
use crate::creds;
use crate::error::CkError;
use crate::fdtypes;
use crate::image::inspect;
use crate::image::manifest::{Manifest, OpenFile, ProcessImage, RegionKind};
use crate::image::writer::image_dir;
use crate::image::ImageReader;
use crate::job::{Job, Restoring};
use crate::sys::socket;
use crate::sys::{machine, proc::fork_with_pid, procfs::file_stamp};
use anyhow::{Context, Result};
use kernel::{Kernel, Linux};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub fn inspect(path: &Path, json: bool, given: Option<PathBuf>) -> Result<i32> {
    let img = ImageReader::open(path)?;
    if let Some(k) = &(Overrides { key_file: given, ..Default::default() }).key_file() {
        crate::image::seal::check(&img, &crate::image::seal::Key::load(k)?)?;
    }
    img.verify_chunks()?;
    if json {
        println!("{}", inspect::json(&img));
    } else {
        print!("{}", inspect::human(&img));
    }
    Ok(0)
}

/// An image path, or a directory meaning its newest image.
fn resolve_image(arg: &Path) -> Result<PathBuf, CkError> {
    if !arg.is_dir() {
        return Ok(arg.to_owned());
    }
    let newest = std::fs::read_dir(arg)
        .map_err(|e| CkError::Environment(format!("{}: {e}", arg.display())))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "ckimg"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max();
    newest
        .map(|(_, p)| p)
        .ok_or_else(|| CkError::Environment(format!("{}: no .ckimg image in this directory", arg.display())))
}

/// Can this machine run the image? Same kernel build (vDSO, signal frame),
/// same or more xsave features.
fn check_compatible(m: &Manifest) -> Result<(), CkError> {
    let (_, release, version) = machine::uname();
    let i = &m.info;
    if i.kernel_release != release || i.kernel_version != version {
        return Err(CkError::Incompatible(format!(
            "the image was taken on kernel {} ({}); this machine runs {} ({}): the vDSO and signal frames of another kernel build differ",
            i.kernel_release, i.kernel_version, release, version
        )));
    }
    if let Some(why) = machine::missing_xsave_features(i.xsave_features, machine::xsave_features()) {
        return Err(CkError::Incompatible(why));
    }
    Ok(())
}

/// The files the image maps must have their size (a mapping of a shorter
/// file faults, of a longer one shows other data); code must be unchanged.
/// Data files a program keeps writing through a shared mapping change
/// after every checkpoint: they are used as they are now. The files it had
/// open must still be there, be no symlink now, and be the same file (same
/// inode). Each process's files are looked at with that process's rights,
/// so that an image cannot make a restart by root tell a user about files
/// the user could not see.
fn check_files(m: &Manifest) -> Result<()> {
    let mut k = Linux::default();
    let result = check_files_as_users(&mut k, m);
    k.become_identity(None).context("taking back ckrun's own identity")?;
    result
}

fn check_files_as_users(k: &mut Linux, m: &Manifest) -> Result<()> {
    let same_machine = m.info.hostname == machine::uname().0;
    for p in &m.processes {
        k.become_identity(Some(&p.creds.identity())).context("taking the program's identity to check its files")?;
        let mapped = p.regions.iter().filter_map(|r| match &r.kind {
            RegionKind::File { file, .. } => Some((file, r.prot & libc::PROT_EXEC != 0)),
            _ => None,
        });
        for (f, code) in std::iter::once((&p.exe, true)).chain(mapped) {
            let (_, _, size, mtime) = file_stamp(&f.path).map_err(|e| {
                CkError::Environment(format!(
                    "{}: the image maps this file, but it cannot be read: {e}",
                    f.path.display()
                ))
            })?;
            if size != f.size {
                return Err(CkError::Environment(format!(
                    "{} changed size since the checkpoint ({} -> {size} bytes); the program has it mapped in memory",
                    f.path.display(),
                    f.size
                ))
                .into());
            }
            if code && mtime != f.mtime_ns {
                return Err(CkError::Environment(format!(
                    "{} was modified since the checkpoint; the program runs code from it",
                    f.path.display()
                ))
                .into());
            }
        }
        for fd in &p.fds {
            let OpenFile::Path { path, identity, content, .. } = &m.files[fd.desc as usize] else { continue };
            let meta = match std::fs::symlink_metadata(path) {
                // Deleted since, and saved: made again at restart.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && content.is_some() => continue,
                r => r,
            };
            let meta = meta.map_err(|e| {
                CkError::Environment(format!(
                    "{}: the program had this file open, and it is gone ({e})",
                    path.display()
                ))
            })?;
            use std::os::unix::fs::MetadataExt;
            if meta.file_type().is_symlink() {
                return Err(fdtypes::file::changed(path, "became a symbolic link").into());
            }
            let expect = fdtypes::file::Expect { identity: *identity, same_machine };
            let now = crate::image::manifest::FileIdentity { dev: meta.dev(), inode: meta.ino() };
            if !expect.matches(now) {
                return Err(fdtypes::file::changed(path, "was replaced by another file").into());
            }
        }
    }
    Ok(())
}

/// What `--restart` comes to, for `main` to carry out.
pub enum Restart {
    /// `--dry-run`: the plan was printed.
    Printed,
    /// The restore processes run: the job for the coordinator.
    Job(Box<Job>),
    /// The image's PIDs cannot be had here: the whole restart is to be
    /// done again in a new PID namespace ([`Nested::run`]).
    Nested(Box<Nested>),
}

/// A restart to be done again as PID 1 of a new PID namespace (and a new
/// time namespace), with `opts`.
pub struct Nested {
    path: PathBuf,
    opts: Overrides,
    trigger: i32,
    stop: Option<i32>,
    host_pid_max: u32,
    pid_max: u32,
    clocks: crate::timens::ClockPlan,
    terminal: Option<crate::terminal::Foreground>,
}

impl Nested {
    /// Runs `restart(path, opts)` inside the new namespaces; returns its
    /// exit code once the namespace's init has ended.
    pub fn run(self, restart: impl FnOnce(&Path, Overrides) -> Result<i32>) -> Result<i32> {
        let Nested { path, opts, trigger, stop, host_pid_max, pid_max, clocks, terminal } = self;
        let code = pidns::run_in_new_namespace(trigger, stop, host_pid_max, pid_max, &clocks, || restart(&path, opts));
        if let Some(t) = terminal {
            crate::terminal::take_back(t);
        }
        code
    }
}

/// Checks the image and everything it needs, decides where its PIDs can
/// be had, makes the tree's shared objects and starts the restore
/// processes of its roots (or says that all this must happen in a new PID
/// namespace).
pub fn prepare(image: &Path, opts: Overrides, dry_run: bool) -> Result<Restart> {
    let path = resolve_image(image)?;
    let img = ImageReader::open(&path)?;
    let given_key = opts.key_file();
    if let Some(k) = &given_key {
        crate::image::seal::check(&img, &crate::image::seal::Key::load(k)?)?;
    }
    {
        use std::os::unix::fs::MetadataExt;
        let group = std::fs::metadata(&path).map(|m| m.gid()).unwrap_or(u32::MAX);
        creds::check(&img.manifest, &path, img.owner, group)?;
    }
    check_compatible(&img.manifest)?;
    check_files(&img.manifest)?;
    crate::sysv::check(&img.manifest.sysv, &path, img.owner)?;
    let m = &img.manifest;
    let mut settings = m.settings.clone();
    if let Some(d) = &opts.dir {
        settings.dir = image_dir(Some(d))?;
    } else if !settings.dir.is_dir() {
        settings.dir = image_dir(None)?;
    }
    settings.trigger = opts.trigger.unwrap_or(settings.trigger);
    settings.frozen = opts.frozen.unwrap_or(settings.frozen);
    settings.strict |= opts.strict;
    if let Some(d) = opts.interval {
        settings.interval_ms = Some(d.as_millis() as u64);
    }
    settings.keep = opts.keep.or(settings.keep);
    settings.full |= opts.full;
    settings.stop_signal = opts.stop_signal.or(settings.stop_signal);
    // The image names a key file to seal later images with; only its own
    // owner's choice is followed (root does not read a file a user named).
    // SAFETY: geteuid cannot fail.
    if img.owner != unsafe { libc::geteuid() } {
        settings.key_file = None;
    }
    if given_key.is_some() {
        settings.key_file = given_key;
    }
    let key = settings.key_file.as_deref().map(crate::image::seal::Key::load).transpose()?;
    let needs = placement::needs(m);
    let policy = placement::Policy {
        privileged: pidns::privileged(),
        no_pidns: opts.no_pidns,
        inside_namespace: opts.inside_namespace,
    };
    if dry_run {
        print!("{}", dry_run_text(&img, &needs, policy)?);
        if crate::batch::has_stop_mark(&path, img.owner) {
            println!("files: not cut back (the run ended at this checkpoint: --stop-signal)");
        }
        return Ok(Restart::Printed);
    }
    crate::image::writer::check_writable(&settings.dir)?;
    crate::image::writer::remove_stale_temporaries(&settings.dir);
    let mut k = Linux::default();
    let mut warn = |s: String| eprintln!("ckrun: {s}");
    let decision = placement::place(&mut k, &needs, policy, placement::EXIT_WAIT, &mut warn).map_err(CkError::from)?;
    // The terminal ckrun runs in the foreground of: the ckrun the user
    // started knows it (in a new PID namespace, ckrun's group is not seen).
    let terminal = if opts.inside_namespace {
        opts.terminal.map(|fd| crate::terminal::Foreground { fd, pgrp: 0 })
    } else {
        crate::terminal::ours()
    };
    if let placement::Decision::Namespace { why, pid_max } = decision {
        match &why {
            placement::Why::Unprivileged => {
                eprintln!("ckrun: not root: restarting in a new user and PID namespace, where ckrun may choose PIDs")
            }
            placement::Why::InUse(ids) => eprintln!(
                "ckrun: {} in use here: restarting in a new PID namespace, where the image's PIDs are free",
                placement::list(ids)
            ),
            placement::Why::AboveLimit { ids, pid_max: here } => eprintln!(
                "ckrun: {} at or above this machine's pid_max ({here}; the image was taken in a PID namespace): \
                 restarting in a new PID namespace with pid_max {pid_max}",
                placement::list(ids)
            ),
        }
        let host_pid_max = k.pid_max().map_err(placement::PlaceError::PidMax).map_err(CkError::from)?;
        let (trigger, stop) = (settings.trigger, settings.stop_signal);
        let clocks = crate::timens::plan_restart(&mut k, m.info.clocks, &mut warn)?;
        drop(img);
        let inner = Overrides { no_pidns: true, inside_namespace: true, terminal: terminal.map(|t| t.fd), ..opts };
        return Ok(Restart::Nested(Box::new(Nested {
            path,
            opts: inner,
            trigger,
            stop,
            host_pid_max,
            pid_max,
            clocks,
            terminal,
        })));
    }
    let listener = match socket::listen(&settings.socket_name) {
        Ok(l) => l,
        Err(_) => {
            // The original coordinator still runs: programs exec'd later
            // will not find this one under the old name.
            settings.socket_name = socket::fresh_name();
            socket::listen(&settings.socket_name).context("creating the coordinator socket")?
        }
    };
    let sigfd = crate::job::signal_fd(settings.trigger, settings.stop_signal)?;
    crate::sys::proc::become_subreaper();

    // The tree's shared objects, made once here and handed out.
    let mut objects = fdtypes::create_objects(&mut Linux::default(), &img)?;
    objects
        .deferred
        .extend(crate::created::to_set_aside(m, &path, img.owner).into_iter().map(fdtypes::Deferred::SetAside));
    if crate::batch::take_stop_mark(&path, img.owner) {
        objects.deferred = crate::batch::keep_after_stop(objects.deferred);
    }
    let sends: Vec<(Vec<u32>, Vec<i32>)> = m.processes.iter().map(|p| share_of(p, &objects)).collect();
    let all_fds: Vec<i32> = objects.files.iter().flatten().copied().chain(objects.ghosts.iter().copied()).collect();
    let restoring = Restoring {
        image: path.clone(),
        sends,
        pids: m.processes.iter().map(|p| p.pid).collect(),
        agent_fds: m.processes.iter().map(|p| p.agent_fd).collect(),
        objects: all_fds,
        deferred: objects.deferred.clone(),
        segment_ids: objects.segment_ids.clone(),
        // The tree's foreground group, once its processes exist, gets
        // ckrun's terminal (if ckrun has it): a group one of them leads.
        foreground: match (terminal, m.foreground) {
            (Some(t), Some(g)) if m.processes.iter().any(|p| p.pid == g) => Some((t.fd, g)),
            _ => None,
        },
    };

    // The roots of the tree are ckrun's children; each restores its own.
    let pids: Vec<i32> = m.processes.iter().map(|p| p.pid).collect();
    let exe = CString::new(std::env::current_exe()?.as_os_str().as_bytes())?;
    // The children read the very files checked here, never a path again.
    let image_fds: Vec<i32> = std::iter::once(img.raw_fd()).chain(img.parent_fds()).collect();
    let image_arg = CString::new(fd_list(&image_fds))?;
    let socket_arg = CString::new(settings.socket_name.clone())?;
    // They are born in a time namespace where the program's clocks go on
    // (in ckrun's own PID namespace, ckrun was born in it).
    let clocks = match policy.inside_namespace {
        true => None,
        false => Some(crate::timens::plan_restart(&mut k, m.info.clocks, &mut warn)?),
    };
    let start_roots = || -> Result<()> {
        for (i, p) in m.processes.iter().enumerate().filter(|(_, p)| !pids.contains(&p.ppid)) {
            start_root(p, i, &exe, &image_fds, &image_arg, &socket_arg)?;
        }
        Ok(())
    };
    match &clocks {
        Some(plan) => crate::timens::around_children(&mut k, plan, &mut warn, start_roots)?,
        None => start_roots()?,
    }
    Ok(Restart::Job(Box::new(Job {
        settings,
        command: m.info.command.clone(),
        listener,
        sigfd,
        root: m.root,
        sequence: m.info.sequence,
        root_status: m.root_status,
        key,
        base: Some(path.clone()),
        restore: Some(restoring),
        // In ckrun's own PID namespace the ckrun outside takes it back.
        terminal: terminal.filter(|_| !policy.inside_namespace),
    })))
}

/// Creates the restore child of root process `p` (number `i` in the
/// image) with its PID: a fresh ckrun in restore mode, reading the image
/// from `image_fds` (the image, then its parents).
fn start_root(
    p: &ProcessImage,
    i: usize,
    exe: &CString,
    image_fds: &[i32],
    image_arg: &CString,
    socket_arg: &CString,
) -> Result<()> {
    {
        let index = CString::new(i.to_string())?;
        let argv = [
            c"ckrun".as_ptr(),
            c"--restore-child".as_ptr(),
            image_arg.as_ptr(),
            index.as_ptr(),
            socket_arg.as_ptr(),
            std::ptr::null(),
        ];
        fork_with_pid(p.pid, || {
            // In the child: async-signal-safe calls only, then exec.
            // SAFETY: sigset on the stack; execv with NUL-terminated strings
            // prepared before the fork.
            unsafe {
                let mut none: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut none);
                libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
                for &fd in image_fds {
                    libc::fcntl(fd, libc::F_SETFD, 0);
                }
                libc::execv(exe.as_ptr(), argv.as_ptr());
            }
        })
        .map_err(|e| pid_error(p.pid, e))?;
    }
    Ok(())
}

/// `--restore-child`'s list of image fds: the image's, then its parents'.
pub fn fd_list(fds: &[i32]) -> String {
    fds.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(",")
}

/// The objects process `p` receives: the descriptions its fds use, the
/// ghosts it maps.
fn share_of(p: &ProcessImage, o: &fdtypes::Objects) -> (Vec<u32>, Vec<i32>) {
    let mut tags = Vec::new();
    let mut fds = Vec::new();
    for f in &p.fds {
        if let Some(Some(fd)) = o.files.get(f.desc as usize) {
            if !tags.contains(&f.desc) {
                tags.push(f.desc);
                fds.push(*fd);
            }
        }
    }
    for r in &p.regions {
        if let RegionKind::Ghost { ghost, .. } = r.kind {
            let tag = ghost | transfer::GHOST;
            if !tags.contains(&tag) {
                tags.push(tag);
                fds.push(o.ghosts[ghost as usize]);
            }
        }
    }
    (tags, fds)
}

/// A clone3 `set_tid` failure, for people.
pub fn pid_error(pid: i32, e: std::io::Error) -> anyhow::Error {
    match e.raw_os_error() {
        Some(libc::EEXIST) => CkError::Environment(format!(
            "PID {pid} is in use by another process (is the original program still running?); cannot restore it with its PID"
        ))
        .into(),
        Some(libc::EPERM) => {
            CkError::Environment(format!("choosing PID {pid} needs CAP_SYS_ADMIN (run ckrun --restart as root)")).into()
        }
        _ => anyhow::Error::new(e).context(format!("creating process {pid}")),
    }
}

/// What a restore would do: where (PIDs, namespace), and each process's
/// plan, computed against this process's own layout.
fn dry_run_text(img: &ImageReader, needs: &[placement::Need], policy: placement::Policy) -> Result<String> {
    use std::fmt::Write;
    let mut o = String::new();
    let mut k = Linux::default();
    let place = placement::assess(&mut k, needs).and_then(|a| placement::decide(&a, needs, policy, false));
    match place {
        Ok(d) => {
            let _ = writeln!(o, "restore {d}");
        }
        Err(e) => {
            let _ = writeln!(o, "restore impossible: {e}");
        }
    }
    match crate::timens::decide(&mut k, img.manifest.info.clocks) {
        Ok(plan) => {
            let _ = writeln!(o, "{plan}");
        }
        Err(e) => {
            let _ = writeln!(o, "clocks: restart impossible: {e}");
        }
    }
    if let Some(g) = img.manifest.foreground {
        let _ = writeln!(o, "terminal: process group {g} gets the foreground of ckrun's terminal");
    }
    let sysv = &img.manifest.sysv;
    for line in crate::sysv::shm::plan_lines(&mut Linux::default(), sysv)
        .into_iter()
        .chain(crate::sysv::semundo::plan_lines(sysv))
    {
        let _ = writeln!(o, "{line}");
    }
    let current = crate::sys::procfs::maps(std::process::id() as i32)?;
    for p in &img.manifest.processes {
        let plan = plan::RestorePlan::build(p, &current)?;
        let _ = writeln!(
            o,
            "process {} ({}): {} regions, {} threads",
            p.pid,
            p.program_name(),
            p.regions.len(),
            p.threads.len()
        );
        let _ = writeln!(o, "  restorer at {:#x} ({} bytes)", plan.blob_at, plan.blob_len);
        for s in &plan.staged {
            let r = &p.regions[s.region];
            let _ = writeln!(o, "  stage {:#014x}-{:#014x} at {:#014x}  {}", r.start, r.end, s.at, r.name);
        }
        for v in &plan.vdso {
            let _ = writeln!(o, "  vdso  {} {:#x} -> {:#x} (via {:#x})", v.name, v.from, v.to, v.scratch);
        }
        let _ = writeln!(o, "  restorer steps:");
        for (i, op) in plan.ops.iter().enumerate() {
            let _ = writeln!(o, "    {i:3} {op:?}");
        }
    }
    Ok(o)
}

/// A restorer failure, for people.
pub fn describe_failure(f: &ckrun_proto::RestoreFailure) -> String {
    let name = match f.syscall as i64 {
        libc::SYS_mremap => "mremap",
        libc::SYS_munmap => "munmap",
        libc::SYS_prctl => "prctl(PR_SET_MM_MAP)",
        libc::SYS_close => "close",
        libc::SYS_arch_prctl => "arch_prctl",
        libc::SYS_clone3 => "clone3",
        _ => "a system call",
    };
    let err = if f.result < 0 && f.result > -4096 {
        std::io::Error::from_raw_os_error(-f.result as i32).to_string()
    } else {
        format!("unexpected result {:#x}", f.result)
    };
    format!("restore failed in the restorer, step {} ({name}): {err}", f.index)
}
