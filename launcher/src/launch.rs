//! `ckrun PROGRAM ARGS`: checks the program, starts it as a child with the
//! agent preloaded, and returns the job for the coordinator.

use crate::cli::Overrides;
use crate::elf::{linkage, Linkage};
use crate::error::CkError;
use crate::image::manifest::Settings;
use crate::image::writer::image_dir;
use crate::job::Job;
use crate::sys::socket;
use anyhow::{Context, Result};
use ckrun_proto::{DEFAULT_TRIGGER, ENV_PRELOAD, ENV_SOCKET, ENV_TRIGGER};
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Starts the program with the agent preloaded: the job's tree.
pub fn start(program: OsString, args: Vec<OsString>, opts: Overrides) -> Result<Job> {
    if opts.stop_signal.is_some() && opts.stop_signal == Some(opts.trigger.unwrap_or(DEFAULT_TRIGGER)) {
        return Err(CkError::Usage("--stop-signal must differ from the trigger signal".into()).into());
    }
    let path = find_program(&program)?;
    check_dynamic(&path)?;
    check_not_setid(&path)?;
    let agent = agent_library()?;
    let dir = image_dir(opts.dir.as_deref())?;
    crate::image::writer::check_writable(&dir)?;
    crate::image::writer::remove_stale_temporaries(&dir);
    let key_file = opts.key_file();
    let key = key_file.as_deref().map(crate::image::seal::Key::load).transpose()?;
    let settings = Settings {
        dir,
        trigger: opts.trigger.unwrap_or(DEFAULT_TRIGGER),
        frozen: opts.frozen.unwrap_or(false),
        socket_name: socket::fresh_name(),
        strict: opts.strict,
        key_file,
        image_name: Path::new(&program).file_name().map_or("program".into(), |n| n.to_string_lossy().into_owned()),
        interval_ms: opts.interval.map(|d| d.as_millis() as u64),
        keep: opts.keep,
        stop_signal: opts.stop_signal,
        full: opts.full,
    };
    let listener = socket::listen(&settings.socket_name).context("creating the coordinator socket")?;
    let sigfd = crate::job::signal_fd(settings.trigger, settings.stop_signal)?;
    crate::sys::proc::become_subreaper();

    let mut preload = agent.into_os_string();
    if let Some(user) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
        preload.push(":");
        preload.push(user);
    }
    let mut cmd = Command::new(&program);
    // SAFETY: the hook runs in the forked child before exec and only calls
    // the async-signal-safe pthread_sigmask on a local set.
    unsafe {
        cmd.pre_exec(|| {
            // ckrun blocks the signals its signalfd reads; the program must
            // start with the empty mask it would have had without ckrun.
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            Ok(())
        });
    }
    let child = cmd
        .args(&args)
        .env("LD_PRELOAD", preload)
        .env(ENV_SOCKET, &settings.socket_name)
        .env(ENV_TRIGGER, settings.trigger.to_string())
        .env(ckrun_proto::ENV_COORDINATOR, std::process::id().to_string())
        .spawn()
        .map_err(|e| CkError::Environment(format!("cannot start {}: {e}", path.display())))?;
    let command: Vec<String> = std::env::args().collect();
    Ok(Job {
        settings,
        command,
        listener,
        sigfd,
        root: child.id() as i32,
        sequence: 0,
        root_status: None,
        key,
        base: None,
        restore: None,
        terminal: crate::terminal::ours(),
    })
}

/// The program as the shell would find it.
fn find_program(program: &std::ffi::OsStr) -> Result<PathBuf, CkError> {
    let p = Path::new(program);
    if p.components().count() > 1 || program.to_string_lossy().contains('/') {
        return if p.is_file() {
            Ok(p.to_owned())
        } else {
            Err(CkError::Environment(format!("{}: no such program", p.display())))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(p))
        .find(|c| c.is_file())
        .ok_or_else(|| CkError::Environment(format!("{}: command not found", p.display())))
}

fn check_dynamic(path: &Path) -> Result<(), CkError> {
    let mut p = path.to_owned();
    for _ in 0..4 {
        match linkage(&p).map_err(|e| CkError::Environment(format!("{}: {e}", p.display())))? {
            Linkage::Dynamic => return Ok(()),
            Linkage::Script(interp) => p = interp,
            Linkage::Static => {
                return Err(CkError::Environment(format!(
                    "{} is statically linked; ckrun needs a dynamically linked program \
                     (its agent is injected with LD_PRELOAD, which a static binary ignores)",
                    p.display()
                )))
            }
            Linkage::NotElf => {
                return Err(CkError::Environment(format!("{}: not an executable ckrun can run", p.display())))
            }
        }
    }
    Err(CkError::Environment(format!("{}: too many levels of #! interpreters", path.display())))
}

/// `libckpt.so`: `$CKRUN_PRELOAD`, else next to the ckrun binary.
pub fn agent_library() -> Result<PathBuf, CkError> {
    let p = match std::env::var_os(ENV_PRELOAD) {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()
            .map_err(|e| CkError::Environment(format!("cannot locate ckrun itself: {e}")))?
            .with_file_name("libckpt.so"),
    };
    if p.is_file() {
        Ok(p)
    } else {
        Err(CkError::Environment(format!("agent library {} not found (set {ENV_PRELOAD})", p.display())))
    }
}

/// A set-user-ID or set-group-ID program run by someone else than root:
/// the dynamic loader ignores LD_PRELOAD for it (secure execution), so it
/// would run without the agent.
fn check_not_setid(path: &Path) -> Result<(), CkError> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    let Ok(meta) = std::fs::metadata(path) else { return Ok(()) };
    let setuid = meta.mode() & libc::S_ISUID != 0 && meta.uid() != me;
    let setgid = meta.mode() & libc::S_ISGID != 0 && meta.gid() != unsafe { libc::getegid() };
    if me != 0 && (setuid || setgid) {
        return Err(CkError::Environment(format!(
            "{} is a set-user-ID or set-group-ID program; the dynamic loader runs it without ckrun's agent \
             (LD_PRELOAD is ignored for it), so it cannot be checkpointed",
            path.display()
        )));
    }
    Ok(())
}
