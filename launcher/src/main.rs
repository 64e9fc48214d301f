//! `ckrun`: launcher, coordinator, image writer and reader, restorer.
//!
//! Where each kind of state is handled:
//!
//! | state | captured in | restored in |
//! |---|---|---|
//! | threads, registers, TLS, rseq, robust lists | agent `suspend` | restorer + agent `suspend::kstate` |
//! | signal dispositions, itimers | agent `suspend::kstate` | agent `suspend::kstate` |
//! | memory regions and pages | [`checkpoint::memory`] | [`restore::memory`] + restorer |
//! | brk, arg/env, auxv, exe | [`checkpoint::process`] | restorer (PR_SET_MM_MAP) |
//! | file descriptors, by kind | [`fdtypes`] | [`fdtypes`] |
//! | cwd, umask, rlimits, personality | [`checkpoint::process`] | [`restore::settings`] |
//! | uids, gids, groups, capabilities | [`creds`] | [`creds`] + agent `suspend::kstate` |
//! | CLOCK_MONOTONIC, CLOCK_BOOTTIME | [`timens`] | [`timens`] (a time namespace) |

mod agent;
mod batch;
mod checkpoint;
mod cli;
mod coordinator;
mod created;
mod creds;
mod elf;
mod error;
mod fdtypes;
mod image;
mod job;
mod launch;
mod proctree;
mod restore;
mod sys;
mod sysv;
mod terminal;
mod timens;

use error::exit_code_of;
use std::io::Write;

fn main() {
    let code = match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ckrun: {e:#}");
            exit_code_of(&e)
        }
    };
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

fn run() -> anyhow::Result<i32> {
    match cli::parse(std::env::args_os().collect())? {
        cli::Command::Help => {
            println!("{}", cli::help());
            Ok(0)
        }
        cli::Command::Version => {
            println!("ckrun {}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
        cli::Command::Run { program, args, opts, resume } => {
            if resume {
                let dir = image::writer::image_dir(opts.dir.as_deref())?;
                if let Some(image) = batch::resumable(&dir, &program, &args, opts.key_file().as_deref()) {
                    eprintln!("ckrun: resuming from {}", image.display());
                    return restart(&image, opts, false);
                }
            }
            coordinator::run(launch::start(program, args, opts)?)
        }
        cli::Command::Restart { image, opts, dry_run } => restart(&image, opts, dry_run),
        cli::Command::Inspect { image, json, key_file } => restore::inspect(&image, json, key_file),
        cli::Command::Flatten { image, key_file } => image::flatten::run(&image, key_file),
        cli::Command::RestoreChild { image_fds, index, socket } => restore::child::main(&image_fds, index, &socket),
    }
}

/// `--restart` (and `--resume` with an image): the restart is prepared
/// below; its job is handed to the coordinator here, or the whole restart
/// is done again inside a new PID namespace.
fn restart(image: &std::path::Path, opts: cli::Overrides, dry_run: bool) -> anyhow::Result<i32> {
    match restore::prepare(image, opts, dry_run)? {
        restore::Restart::Printed => Ok(0),
        restore::Restart::Job(job) => coordinator::run(*job),
        restore::Restart::Nested(n) => n.run(|path, inner| restart(path, inner, false)),
    }
}
