//! The batch-job workflow: periodic checkpoints (`--interval`), retention
//! (`--keep`), checkpoint-and-stop (`--stop-signal`) and start-or-resume
//! (`--resume`), so that one command line serves the first run of a job
//! and every requeue of it, on any node.

use crate::image::lineage;
use crate::image::manifest::Settings;
use crate::image::ImageReader;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// ckrun's exit status after `--stop-signal` when the checkpoint is
/// durable (the program was then ended): a script can requeue on it. Far
/// from the statuses programs use (0-2), from ckrun's own (1-5) and from
/// 128+N.
pub const EXIT_CHECKPOINTED: i32 = 85;
/// After `--stop-signal` when the checkpoint failed (the program was ended
/// all the same): no new image; the previous ones are untouched.
pub const EXIT_STOP_FAILED: i32 = 86;

/// When the next periodic checkpoint is due.
#[derive(Debug, Default)]
pub struct Interval {
    every: Option<Duration>,
    next: Option<Instant>,
}

impl Interval {
    pub fn new(settings: &Settings) -> Self {
        let every = settings.interval_ms.filter(|&ms| ms > 0).map(Duration::from_millis);
        Interval { every, next: every.map(|d| Instant::now() + d) }
    }

    /// Milliseconds to wait for at most before the next one (-1: never).
    pub fn timeout_ms(&self) -> i32 {
        self.next.map_or(-1, |n| n.saturating_duration_since(Instant::now()).as_millis().min(i32::MAX as u128) as i32)
    }

    pub fn due(&self) -> bool {
        self.next.is_some_and(|n| Instant::now() >= n)
    }

    /// A checkpoint ended (well or not): the next is one interval away.
    pub fn restart(&mut self) {
        self.next = self.every.map(|d| Instant::now() + d);
    }
}

/// The job's images in `dir` (`NAME.ROOT.N.ckimg`), newest (highest N) first.
pub fn images_of(dir: &Path, name: &str, root: i32) -> Vec<(u32, PathBuf)> {
    let prefix = format!("{name}.{root}.");
    let mut out: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let f = e.file_name().to_string_lossy().into_owned();
            let n = f.strip_prefix(&prefix)?.strip_suffix(".ckimg")?.parse::<u32>().ok()?;
            Some((n, e.path()))
        })
        .collect();
    out.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    out
}

/// After image `newest` is durable: deletes the job's images older than
/// the `keep` newest. The newest is always kept (`keep` >= 1), and so is
/// every image newer than it; an image that is not the job's (another name
/// or root) is never looked at. An older image a kept one takes pages from
/// is not deleted but renamed to `NAME.ROOT.N.ckpages` (see
/// `lineage::pages_name`): no longer an image to restart from, still found
/// by the images that use it; and such files no kept image uses any more
/// are deleted.
///
/// Order makes every step safe to interrupt: images go newest first, so no
/// image that is left depends on one already gone (an image depends only
/// on older ones), and page files go last, once every image left is a kept
/// one, whose page files stay. If a kept image's manifest cannot be read,
/// what it needs is unknown, and nothing is deleted.
pub fn retain(settings: &Settings, root: i32, newest: u32) {
    let Some(keep) = settings.keep.filter(|&k| k >= 1) else { return };
    let all = images_of(&settings.dir, &settings.image_name, root);
    let mut n_older = 0;
    type Images<'a> = Vec<&'a (u32, PathBuf)>;
    let (kept, older): (Images, Images) = all.iter().partition(|(n, _)| {
        *n > newest || {
            n_older += 1;
            n_older <= keep
        }
    });
    let mut needed: Vec<String> = Vec::new();
    for (_, path) in &kept {
        match ImageReader::open_alone(path) {
            Ok(img) => needed.extend(img.manifest.lineage.parents.iter().map(|p| p.name.clone())),
            Err(e) => {
                eprintln!(
                    "ckrun: warning: --keep {keep}: nothing removed, {} cannot be read to see which images it needs ({e})",
                    path.display()
                );
                return;
            }
        }
    }
    let name_of = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut steps = 0;
    let mut step = || {
        if steps > 0 {
            crate::checkpoint::hang("retain");
        }
        steps += 1;
    };
    for (_, path) in &older {
        step();
        let name = name_of(path);
        if needed.contains(&name) {
            let to = settings.dir.join(lineage::pages_name(&name));
            match std::fs::rename(path, &to) {
                Ok(()) => eprintln!(
                    "ckrun: {} is no image to restart from any more (--keep {keep}): renamed {}, newer images take pages from it",
                    path.display(),
                    to.display()
                ),
                Err(e) => eprintln!("ckrun: warning: cannot rename {}: {e}", path.display()),
            }
            // No image to restart from: its mark goes with it.
            let _ = std::fs::remove_file(stop_mark(path));
            continue;
        }
        match std::fs::remove_file(path) {
            Ok(()) => eprintln!("ckrun: removed {} (--keep {keep})", path.display()),
            Err(e) => eprintln!("ckrun: warning: cannot remove {}: {e}", path.display()),
        }
        let _ = std::fs::remove_file(stop_mark(path));
    }
    for (_, path) in pages_of(&settings.dir, &settings.image_name, root) {
        let image_name = lineage::image_name_of_pages(&name_of(&path));
        if !needed.contains(&image_name) {
            step();
            match std::fs::remove_file(&path) {
                Ok(()) => eprintln!("ckrun: removed {} (no kept image uses it)", path.display()),
                Err(e) => eprintln!("ckrun: warning: cannot remove {}: {e}", path.display()),
            }
        }
    }
}

/// The job's page files in `dir` (`NAME.ROOT.N.ckpages`).
fn pages_of(dir: &Path, name: &str, root: i32) -> Vec<(u32, PathBuf)> {
    let prefix = format!("{name}.{root}.");
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let f = e.file_name().to_string_lossy().into_owned();
            let n = f.strip_prefix(&prefix)?.strip_suffix(lineage::PAGES_SUFFIX)?.parse::<u32>().ok()?;
            Some((n, e.path()))
        })
        .collect()
}

/// The mark `DIR/NAME.ROOT.N.stopped`, beside image N: the run that took
/// checkpoint N ended there (`--stop-signal`: the program was killed
/// stopped, it wrote nothing after the checkpoint). What the files it
/// writes hold beyond their size at the checkpoint is then not the
/// program's: the lines a batch script, `scontrol` or `slurmstepd` append
/// to the job's output file after ckrun exits. A restart from N that finds
/// the mark takes it away and keeps those lines; without it (the killed
/// run may have gone on after N), files are cut back to their size at the
/// checkpoint as always.
pub fn stop_mark(image: &Path) -> PathBuf {
    image.with_extension("stopped")
}

/// After a `--stop-signal` checkpoint is durable: marks image `n` as where
/// the run ended ([`stop_mark`]). A mark that cannot be made only costs
/// those lines at the restart.
pub fn mark_stopped(settings: &Settings, root: i32, n: u32) {
    use std::os::unix::fs::OpenOptionsExt;
    let image = settings.dir.join(format!("{}.{root}.{n}.ckimg", settings.image_name));
    let mark = stop_mark(&image);
    let made = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&mark)
        .and_then(|f| f.sync_all());
    if let Err(e) = made {
        eprintln!("ckrun: warning: cannot make {}: {e}", mark.display());
    }
}

/// At a restart from `image` (owned by `owner`): takes its stop mark away
/// and says whether there was one (a mark someone else made is not
/// believed).
pub fn take_stop_mark(image: &Path, owner: u32) -> bool {
    // Taken before the program runs: a later restart from the same image
    // must cut back what this run writes.
    has_stop_mark(image, owner) && std::fs::remove_file(stop_mark(image)).is_ok()
}

/// Whether `image` (owned by `owner`) has its stop mark.
pub fn has_stop_mark(image: &Path, owner: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(stop_mark(image)).is_ok_and(|m| m.is_file() && m.uid() == owner)
}

/// A restart's deferred steps after a stop mark: no file is cut back.
pub fn keep_after_stop(deferred: Vec<crate::fdtypes::Deferred>) -> Vec<crate::fdtypes::Deferred> {
    use crate::fdtypes::Deferred;
    deferred
        .into_iter()
        .map(|d| match d {
            Deferred::CutBack(c) => Deferred::KeepAfterStop(c),
            other => other,
        })
        .collect()
}

/// `--resume`: the newest image in `dir` of the job `program args` that
/// verifies, saying what is wrong with newer ones; `None` when there is
/// none (the program is then started).
pub fn resumable(dir: &Path, program: &OsString, args: &[OsString], key: Option<&Path>) -> Option<PathBuf> {
    let name = Path::new(program).file_name().map_or("program".into(), |n| n.to_string_lossy().into_owned());
    let mut candidates: Vec<(u64, u32, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = file.strip_prefix(&format!("{name}.")).and_then(|r| r.strip_suffix(".ckimg")) else {
            continue;
        };
        let Some(n) = rest.rsplit_once('.').and_then(|(_, n)| n.parse::<u32>().ok()) else { continue };
        // Damaged manifests are named below, with the newest first.
        let made = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        let ms = made.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_millis() as u64);
        candidates.push((ms, n, path));
    }
    // Newest first: by the time each was written, then by number.
    candidates.sort_by_key(|(ms, n, _)| std::cmp::Reverse((*ms, *n)));
    for (_, _, path) in candidates {
        let img = match ImageReader::open(&path) {
            Ok(i) => i,
            Err(e) => {
                eprintln!("ckrun: {} cannot be resumed from ({e:#}); trying an older image", path.display());
                continue;
            }
        };
        if !same_job(&img.manifest.info.command, program, args) {
            continue;
        }
        let sealed =
            key.map_or(Ok(()), |k| crate::image::seal::Key::load(k).and_then(|k| crate::image::seal::check(&img, &k)));
        if let Err(e) = sealed.map_err(anyhow::Error::from).and_then(|()| img.verify_chunks().map_err(Into::into)) {
            eprintln!("ckrun: {} is damaged or incomplete ({e:#}); trying an older image", path.display());
            continue;
        }
        return Some(path);
    }
    None
}

/// Whether a ckrun command line (an image's `info.command`) ran `program
/// args`.
fn same_job(command: &[String], program: &OsString, args: &[OsString]) -> bool {
    let argv: Vec<OsString> = command.iter().map(OsString::from).collect();
    match crate::cli::parse(argv) {
        Ok(crate::cli::Command::Run { program: p, args: a, .. }) => &p == program && a == args,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path, keep: Option<u32>) -> Settings {
        Settings {
            dir: dir.into(),
            trigger: 12,
            frozen: false,
            socket_name: "s".into(),
            image_name: "sim".into(),
            strict: false,
            key_file: None,
            interval_ms: None,
            keep,
            stop_signal: None,
            full: false,
        }
    }

    /// Writes image `sim.77.N.ckimg` taking pages from the images `parents`.
    fn image(dir: &Path, n: u32, parents: &[u32]) {
        use crate::image::lineage::ParentRef;
        let mut m = crate::image::validate::tests::valid_manifest();
        m.lineage.id = crate::image::lineage::new_id();
        m.lineage.generation = if parents.is_empty() { 0 } else { n };
        m.lineage.parents = parents
            .iter()
            .map(|p| ParentRef {
                name: format!("sim.77.{p}.ckimg"),
                id: [0; 16],
                generation: *p - 1,
                len: 0,
                page_hashes: None,
            })
            .collect();
        let w = crate::image::ImageWriter::create(dir).unwrap();
        w.finish(&m, &format!("sim.77.{n}.ckimg"), None).unwrap();
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn retention_keeps_the_newest_what_they_need_and_only_this_jobs() {
        let dir = std::env::temp_dir().join(format!("ckrun-keep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        image(&dir, 1, &[]);
        image(&dir, 2, &[1]);
        image(&dir, 3, &[1, 2]);
        image(&dir, 4, &[3]);
        image(&dir, 5, &[4]);
        std::fs::write(dir.join("sim.78.1.ckimg"), b"another job").unwrap();
        std::fs::write(dir.join("other.77.1.ckimg"), b"another program").unwrap();
        for n in [1, 3, 5] {
            std::fs::write(dir.join(format!("sim.77.{n}.stopped")), b"").unwrap();
        }
        retain(&settings(&dir, Some(2)), 77, 5);
        // 5 and 4 kept; 3, which 4 takes pages from, is no image any more
        // but stays as a page file; 2 and 1 are removed.
        let left: Vec<u32> = images_of(&dir, "sim", 77).into_iter().map(|(n, _)| n).collect();
        assert_eq!(left, [5, 4]);
        assert_eq!(
            names(&dir),
            [
                "other.77.1.ckimg",
                "sim.77.3.ckpages",
                "sim.77.4.ckimg",
                "sim.77.5.ckimg",
                "sim.77.5.stopped",
                "sim.78.1.ckimg"
            ],
            "the marks of removed images and of page files go; the kept image keeps its own"
        );
        retain(&settings(&dir, None), 77, 5);
        assert_eq!(images_of(&dir, "sim", 77).len(), 2, "no --keep: nothing removed");
        // Once no kept image uses a page file, it goes too; 5 takes from 4.
        image(&dir, 6, &[5]);
        retain(&settings(&dir, Some(2)), 77, 6);
        assert_eq!(
            names(&dir),
            [
                "other.77.1.ckimg",
                "sim.77.4.ckpages",
                "sim.77.5.ckimg",
                "sim.77.5.stopped",
                "sim.77.6.ckimg",
                "sim.78.1.ckimg"
            ]
        );
        // A kept image whose manifest cannot be read: nothing is removed.
        image(&dir, 7, &[6]);
        std::fs::write(dir.join("sim.77.8.ckimg"), b"cut short").unwrap();
        retain(&settings(&dir, Some(1)), 77, 8);
        assert_eq!(images_of(&dir, "sim", 77).len(), 4);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_stop_mark_is_taken_once_and_only_from_the_images_owner() {
        use std::os::unix::fs::MetadataExt;
        let dir = std::env::temp_dir().join(format!("ckrun-stopmark-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let s = Settings { dir: dir.clone(), ..settings(&dir, None) };
        let image = dir.join("sim.77.3.ckimg");
        assert_eq!(stop_mark(&image), dir.join("sim.77.3.stopped"));
        mark_stopped(&s, 77, 3);
        let me = std::fs::metadata(&dir).unwrap().uid();
        assert!(!take_stop_mark(&image, me + 1), "another owner's mark is not believed");
        assert!(has_stop_mark(&image, me));
        assert!(take_stop_mark(&image, me));
        assert!(!take_stop_mark(&image, me), "a second restart from the image cuts back");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_same_job_is_the_same_program_and_arguments() {
        let cmd: Vec<String> = ["ckrun", "--dir", "d", "--resume", "./sim", "--steps", "9"].map(String::from).into();
        let args: Vec<OsString> = vec!["--steps".into(), "9".into()];
        assert!(same_job(&cmd, &"./sim".into(), &args));
        assert!(!same_job(&cmd, &"./sim".into(), &[]));
        assert!(!same_job(&cmd, &"./other".into(), &args));
    }
}
