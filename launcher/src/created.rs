//! Files the job creates: a journal of them beside the images (the agent
//! reports each creation, `preload/src/created.rs`), and, at restart, the
//! files the killed run made after the image's checkpoint set aside.
//!
//! Why: the restored program is at the checkpoint, where those files did
//! not exist yet; left in place they mislead it (a `make` killed mid-build
//! leaves 0-byte `.o` files newer than their sources, which the restarted
//! `make` takes for up to date, and the link fails). Deleting them could
//! lose work nobody can redo (the job may have written something the
//! restarted run will not), so they are renamed beside themselves,
//! `PATH.ckrun-after-N`, and named on stderr.
//!
//! The journal (`NAME.PID.created`, mode 0600, in the image directory,
//! made at the job's first creation) holds `SEQUENCE\tPATH\0` records: the checkpoint after which the file
//! was made. A restart from image N sets aside the paths recorded with a
//! sequence of N or more that exist, and that the image itself does not
//! use (open or mapped). It does so as the program's root process, once the
//! whole tree is ready to run (`fdtypes::Deferred`).

use crate::image::manifest::{Manifest, OpenFile, RegionKind};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Largest journal a restart reads (a week of a parallel build's files).
const MAX_JOURNAL: u64 = 64 << 20;

struct Journal {
    path: PathBuf,
    /// Opened at the first creation: a job that makes no file has no journal.
    file: Option<std::fs::File>,
    /// Gave up on the file (not ckrun's, or not writable): said once.
    failed: bool,
    sequence: u32,
}

static JOURNAL: Mutex<Option<Journal>> = Mutex::new(None);

/// The journal of the job whose images are `DIR/NAME.ROOT.N.ckimg`.
pub fn journal_path(dir: &Path, image_name: &str, root: i32) -> PathBuf {
    dir.join(format!("{image_name}.{root}.created"))
}

/// Starts recording (the coordinator, at launch or restart): creations are
/// after checkpoint `sequence` (0: none yet).
pub fn start(path: &Path, sequence: u32) {
    *JOURNAL.lock().unwrap_or_else(|e| e.into_inner()) =
        Some(Journal { path: path.to_path_buf(), file: None, failed: false, sequence });
}

fn open(path: &Path) -> std::io::Result<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    // Someone else's file planted at that name is not written to.
    if f.metadata().is_ok_and(|m| m.uid() == me && m.is_file()) {
        Ok(f)
    } else {
        Err(std::io::Error::other("it is not ckrun's file"))
    }
}

/// A checkpoint is durable: later creations are after it.
pub fn checkpointed(sequence: u32) {
    if let Some(j) = JOURNAL.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        j.sequence = sequence;
    }
}

/// Records a creation an agent reported (an absolute path, as bytes).
pub fn record(path: &[u8]) {
    if path.first() != Some(&b'/') || path.contains(&0) {
        return;
    }
    let mut guard = JOURNAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(j) = guard.as_mut() else { return };
    if j.file.is_none() && !j.failed {
        match open(&j.path) {
            Ok(f) => j.file = Some(f),
            Err(e) => {
                j.failed = true;
                eprintln!(
                    "ckrun: warning: cannot keep {}: {e}; files the job makes are not recorded",
                    j.path.display()
                );
            }
        }
    }
    if let Some(f) = j.file.as_mut() {
        let mut rec = format!("{}\t", j.sequence).into_bytes();
        rec.extend_from_slice(path);
        rec.push(0);
        // Lost records only lose a set-aside; the job goes on regardless.
        let _ = f.write_all(&rec);
    }
}

/// A file to set aside at restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetAside {
    pub path: PathBuf,
    pub to: PathBuf,
    pub after: u32,
    pub identity: crate::creds::Identity,
}

/// What a restart from `m` (read from `image`) sets aside. `owner`: the
/// image's owner, who must own the journal too.
pub fn to_set_aside(m: &Manifest, image: &Path, owner: u32) -> Vec<SetAside> {
    let dir = image.parent().unwrap_or(Path::new("."));
    let journal = journal_path(dir, &m.settings.image_name, m.root);
    let Ok(meta) = std::fs::symlink_metadata(&journal) else { return Vec::new() };
    if !meta.is_file() || meta.uid() != owner || meta.len() > MAX_JOURNAL {
        eprintln!("ckrun: warning: {} is not this job's journal; nothing is set aside", journal.display());
        return Vec::new();
    }
    let Ok(bytes) = std::fs::read(&journal) else { return Vec::new() };
    let n = m.info.sequence;
    let used: std::collections::HashSet<&Path> = m
        .files
        .iter()
        .filter_map(|f| match f {
            OpenFile::Path { path, .. } => Some(path.as_path()),
            _ => None,
        })
        .chain(m.processes.iter().flat_map(|p| {
            p.regions.iter().filter_map(|r| match &r.kind {
                RegionKind::File { file, .. } => Some(file.path.as_path()),
                _ => None,
            })
        }))
        .collect();
    let Some(root) = m.processes.iter().find(|p| p.pid == m.root).or(m.processes.first()) else { return Vec::new() };
    let mut out: Vec<SetAside> = Vec::new();
    for rec in bytes.split(|&b| b == 0) {
        let Some(tab) = rec.iter().position(|&b| b == b'\t') else { continue };
        let Some(seq) = std::str::from_utf8(&rec[..tab]).ok().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(&rec[tab + 1..]));
        if seq < n || !path.is_absolute() || used.contains(path.as_path()) || out.iter().any(|s| s.path == path) {
            continue;
        }
        if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
            continue;
        }
        let mut to = PathBuf::from(format!("{}.ckrun-after-{n}", path.display()));
        let mut k = 1;
        while std::fs::symlink_metadata(&to).is_ok() {
            to = PathBuf::from(format!("{}.ckrun-after-{n}.{k}", path.display()));
            k += 1;
        }
        out.push(SetAside { path, to, after: n, identity: root.creds.identity() });
    }
    out
}

impl SetAside {
    /// Renames the file beside itself, as the program's root process.
    pub fn apply(&self, k: &mut impl crate::restore::kernel::Kernel) -> anyhow::Result<()> {
        use anyhow::Context;
        k.become_identity(Some(&self.identity)).context("taking the program's identity to set files aside")?;
        let r = k.rename(&self.path, &self.to);
        k.become_identity(None).context("taking back ckrun's own identity")?;
        match r {
            Ok(()) => eprintln!(
                "ckrun: set aside {} (made by the killed run after checkpoint {}) as {}",
                self.path.display(),
                self.after,
                self.to.display()
            ),
            // Gone meanwhile, or not ours to move: it stays, said once.
            Err(e) => eprintln!("ckrun: warning: cannot set aside {}: {e}", self.path.display()),
        }
        Ok(())
    }
}
