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
pub mod plan;
mod restorer;
mod settings;

pub use restorer::RESTORER_FAILED;

use crate::cli::Overrides;
use crate::coordinator::{self, agent::Agent, socket, Coordinator};
use crate::error::CkError;
use crate::image::inspect;
use crate::image::manifest::{Manifest, OpenFile, RegionKind};
use crate::image::ImageReader;
use crate::launch::{become_subreaper, image_dir};
use crate::sys::{machine, proc::fork_with_pid, procfs::file_stamp};
use anyhow::{bail, Context, Result};
use std::ffi::CString;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub fn inspect(path: &Path, json: bool) -> Result<i32> {
    let img = ImageReader::open(path)?;
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
    let have = machine::xsave_features();
    if i.xsave_features & !have != 0 {
        return Err(CkError::Incompatible(format!(
            "the image uses CPU state features {:#x}, this CPU has {have:#x}",
            i.xsave_features
        )));
    }
    Ok(())
}

/// The files the image maps must have their size (a mapping of a shorter
/// file faults, of a longer one shows other data); code must be unchanged.
/// Data files a program keeps writing through a shared mapping change
/// after every checkpoint: they are used as they are now. The files it had
/// open must exist.
fn check_files(m: &Manifest) -> Result<(), CkError> {
    for p in &m.processes {
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
                )));
            }
            if code && mtime != f.mtime_ns {
                return Err(CkError::Environment(format!(
                    "{} was modified since the checkpoint; the program runs code from it",
                    f.path.display()
                )));
            }
        }
        for f in &p.files {
            if let OpenFile::Path { path, .. } = f {
                if !path.exists() {
                    return Err(CkError::Environment(format!(
                        "{}: process {} had this file open, and it is gone",
                        path.display(),
                        p.pid
                    )));
                }
            }
        }
    }
    Ok(())
}

pub fn restart(image: &Path, opts: Overrides, dry_run: bool) -> Result<i32> {
    let path = resolve_image(image)?;
    let img = ImageReader::open(&path)?;
    check_compatible(&img.manifest)?;
    check_files(&img.manifest)?;
    let m = &img.manifest;
    let mut settings = m.settings.clone();
    if let Some(d) = opts.dir {
        settings.dir = image_dir(Some(&d))?;
    } else if !settings.dir.is_dir() {
        settings.dir = image_dir(None)?;
    }
    settings.trigger = opts.trigger.unwrap_or(settings.trigger);
    settings.frozen = opts.frozen.unwrap_or(settings.frozen);
    settings.strict |= opts.strict;
    if dry_run {
        print!("{}", dry_run_text(&img)?);
        return Ok(0);
    }
    if m.processes.len() != 1 {
        bail!("the image holds {} processes; restoring process trees is not supported yet", m.processes.len());
    }
    let p = &m.processes[0];

    let listener = match socket::listen(&settings.socket_name) {
        Ok(l) => l,
        Err(_) => {
            // The original coordinator still runs: programs exec'd later
            // will not find this one under the old name.
            settings.socket_name = socket::fresh_name();
            socket::listen(&settings.socket_name).context("creating the coordinator socket")?
        }
    };
    let sigfd = coordinator::signal_fd(settings.trigger)?;
    become_subreaper();

    let (ours, theirs) = socket::pair().context("socketpair")?;
    let image_file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let image_fd = image_file.into_raw_fd();
    // Inherited by the restore child (std opened it close-on-exec).
    // SAFETY: fcntl on our own fd.
    unsafe { libc::fcntl(image_fd, libc::F_SETFD, 0) };
    let exe = CString::new(std::env::current_exe()?.as_os_str().as_bytes())?;
    let args: Vec<CString> = [
        "ckrun".to_string(),
        "--restore-child".into(),
        image_fd.to_string(),
        "0".into(),
        theirs.as_raw_fd().to_string(),
    ]
    .into_iter()
    .map(|s| CString::new(s).unwrap())
    .collect();
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());

    let pid = fork_with_pid(p.pid, || {
        // In the child: async-signal-safe calls only, then exec.
        // SAFETY: sigset on the stack; execv with NUL-terminated strings
        // prepared before the fork; _exit if exec fails.
        unsafe {
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            libc::execv(exe.as_ptr(), argv.as_ptr());
        }
    });
    // SAFETY: closing our copy of the fd the child inherited.
    unsafe { libc::close(image_fd) };
    drop(theirs);
    let pid = match pid {
        Ok(pid) => pid,
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            return Err(CkError::Environment(format!(
                "PID {} is in use by another process (is the original program still running?); cannot restore it with its PID",
                p.pid
            ))
            .into())
        }
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            return Err(CkError::Environment(format!(
                "choosing PID {} needs CAP_SYS_ADMIN (run ckrun --restart as root)",
                p.pid
            ))
            .into())
        }
        Err(e) => return Err(e).context("creating the process to restore"),
    };
    let mut c = Coordinator::new(settings, m.info.command.clone(), listener, sigfd, pid, m.info.sequence);
    c.add_restored(Agent { pid, agent_fd: p.agent_fd, conn: ours, running: false }, path.clone());
    drop(img);
    let end = c.run()?;
    Ok(end.exit_code())
}

/// What a restore would do, computed against this process's own layout.
fn dry_run_text(img: &ImageReader) -> Result<String> {
    use std::fmt::Write;
    let mut o = String::new();
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
