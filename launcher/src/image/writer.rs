//! Writes an image so that a name only ever holds a complete image, no
//! image is ever replaced, and nobody else's file is ever written to:
//!
//! - the image is created as an unnamed file in the image directory
//!   (`O_TMPFILE`, mode 0600): no name exists that anyone could plant a
//!   symlink at or open meanwhile; it is synced, then linked under its
//!   final name with `linkat`, which fails rather than replace an existing
//!   name (symlinks included), and the directory is synced;
//! - where the file system has no `O_TMPFILE` (some network file systems),
//!   it is a named temporary `.NAME.tmp-RANDOM`, created exclusively
//!   (`O_EXCL | O_NOFOLLOW`), flock'ed while it is written, linked under its
//!   final name the same way and unlinked. A ckrun that dies mid-write
//!   leaves it behind; the next ckrun using the directory removes the ones
//!   whose lock nobody holds any more ([`remove_stale_temporaries`]).
//!
//! Chunks are appended by many threads at once: each reserves its place
//! (an atomic end offset) and writes it with pwrite, so compression and
//! writing proceed on all cores with no writer thread in between.
//!
//! Chunks go to disk with `O_DIRECT` where the file system allows it, each
//! padded to a 4 KiB boundary. Why: an image is written once and read only
//! at a restart, usually after the job died or on another machine, so
//! passing it through the page cache buys nothing and costs a lot. Every
//! image byte would take a page the program may want (on an HPC node the
//! cache evicts the job's own files), and fresh page-cache pages are slow to
//! get where the kernel must first ask for them (on a VM with free-page
//! reporting, ~0.45 GB/s against ~1.5 GB/s straight to disk here); the
//! final fsync then has nothing left to flush. Where `O_DIRECT` is refused
//! (tmpfs, some network file systems) the writer falls back to ordinary
//! buffered writes, with the same image format.

use super::manifest::Manifest;
use super::seal::Key;
use super::{checksum, Trailer};
use crate::error::CkError;
use crate::sys::aligned::{round_up, AlignedBuf, DIRECT_ALIGN};
use anyhow::{Context, Result};
use std::cell::RefCell;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Where the first chunk goes: the header's block is written last, by
/// `finish`, with ordinary writes.
const FIRST_CHUNK: u64 = DIRECT_ALIGN as u64;

/// The prefix and infix of named temporaries: `.NAME.tmp-RANDOM`.
const TMP_INFIX: &str = ".tmp-";

pub struct ImageWriter {
    file: File,
    dir: PathBuf,
    /// The named temporary, where the file system has no O_TMPFILE.
    tmp: Option<PathBuf>,
    /// For messages: the directory, or the temporary.
    shown: PathBuf,
    end: AtomicU64,
    /// Chunks are written with O_DIRECT (cleared for good on the first
    /// write the file system refuses).
    direct: AtomicBool,
    finished: bool,
}

thread_local! {
    /// Bounce buffer for `append_chunk` callers whose data is not aligned.
    static BOUNCE: RefCell<AlignedBuf> = RefCell::new(AlignedBuf::new(DIRECT_ALIGN));
}

fn cpath(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

/// open(2) with a mode, as an owned File.
fn open_raw(path: &Path, flags: i32, mode: u32) -> std::io::Result<File> {
    let c = cpath(path)?;
    // SAFETY: c is NUL-terminated; the fd returned is owned right away.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn random_hex() -> String {
    let mut r = [0u8; 8];
    // SAFETY: getrandom writes at most r.len() bytes.
    unsafe { libc::getrandom(r.as_mut_ptr().cast(), r.len(), 0) };
    format!("{:016x}", u64::from_ne_bytes(r))
}

/// O_TMPFILE is not offered here (the kernel's or the file system's answer).
fn no_tmpfile(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP) | Some(libc::EISDIR) | Some(libc::ENOENT))
}

impl ImageWriter {
    /// A new, unnamed image in `dir`.
    pub fn create(dir: &Path) -> Result<Self> {
        Self::create_with(dir, true)
    }

    /// `create`, with O_DIRECT tried only if `try_direct`.
    fn create_with(dir: &Path, try_direct: bool) -> Result<Self> {
        let unnamed = |direct: bool| {
            let d = if direct { libc::O_DIRECT } else { 0 };
            open_raw(dir, libc::O_TMPFILE | libc::O_WRONLY | d, 0o600)
        };
        let named = |direct: bool, tmp: &Path| {
            let d = if direct { libc::O_DIRECT } else { 0 };
            open_raw(tmp, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | d, 0o600)
        };
        let with_fallback = |open: &dyn Fn(bool) -> std::io::Result<File>| match open(try_direct) {
            Ok(f) => Ok((f, try_direct)),
            Err(e) if try_direct && e.raw_os_error() == Some(libc::EINVAL) => open(false).map(|f| (f, false)),
            Err(e) => Err(e),
        };
        let (file, direct, tmp) = match with_fallback(&unnamed) {
            Ok((f, d)) => (f, d, None),
            Err(e) if no_tmpfile(&e) || e.raw_os_error() == Some(libc::EINVAL) => {
                let tmp = dir.join(format!(".image{TMP_INFIX}{}", random_hex()));
                let (f, d) =
                    with_fallback(&|d| named(d, &tmp)).with_context(|| format!("creating {}", tmp.display()))?;
                // Held until the file is linked or removed: a lock nobody
                // holds marks a temporary whose writer died.
                // SAFETY: flock on our own fd.
                unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
                (f, d, Some(tmp))
            }
            Err(e) => return Err(e).with_context(|| format!("creating an image in {}", dir.display())),
        };
        Ok(ImageWriter {
            file,
            dir: dir.to_owned(),
            shown: tmp.clone().unwrap_or_else(|| dir.to_owned()),
            tmp,
            end: AtomicU64::new(FIRST_CHUNK),
            direct: AtomicBool::new(direct),
            finished: false,
        })
    }

    /// Whether chunks currently bypass the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct.load(Ordering::Relaxed)
    }

    /// Appends compressed chunk bytes (from any thread); returns where they
    /// went and their checksum.
    pub fn append_chunk(&self, data: &[u8]) -> Result<(u64, u64)> {
        if !self.is_direct() {
            return self.append_buffered(data);
        }
        BOUNCE.with(|b| {
            let mut b = b.borrow_mut();
            if b.len() < data.len() {
                *b = AlignedBuf::new(data.len());
            }
            b[..data.len()].copy_from_slice(data);
            self.append_aligned(&mut b, data.len())
        })
    }

    /// Appends the first `len` bytes of `buf`, which must have room for
    /// them rounded up to a block (an [`AlignedBuf`] of the compression
    /// bound always has): the hot path, with no copy.
    pub fn append_aligned(&self, buf: &mut AlignedBuf, len: usize) -> Result<(u64, u64)> {
        if !self.is_direct() {
            return self.append_buffered(&buf[..len]);
        }
        let sum = checksum(&buf[..len]);
        let padded = round_up(len);
        buf[len..padded].fill(0);
        let off = self.end.fetch_add(padded as u64, Ordering::Relaxed);
        match self.file.write_all_at(&buf[..padded], off) {
            Ok(()) => Ok((off, sum)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                // The file system takes O_DIRECT at open but not this
                // write (a larger block size, say): write through the
                // cache from now on. The reserved place stays valid.
                self.stop_direct()?;
                self.write_at(&buf[..len], off).map(|()| (off, sum))
            }
            Err(e) => Err(e).with_context(|| format!("writing {}", self.shown.display())),
        }
    }

    fn append_buffered(&self, data: &[u8]) -> Result<(u64, u64)> {
        let off = self.end.fetch_add(data.len() as u64, Ordering::Relaxed);
        self.write_at(data, off).map(|()| (off, checksum(data)))
    }

    fn write_at(&self, data: &[u8], off: u64) -> Result<()> {
        self.file.write_all_at(data, off).with_context(|| format!("writing {}", self.shown.display()))
    }

    /// Clears O_DIRECT on the file (the header, manifest and trailer are
    /// small and unaligned).
    fn stop_direct(&self) -> Result<()> {
        if self.direct.swap(false, Ordering::Relaxed) {
            let fd = self.file.as_raw_fd();
            // SAFETY: fcntl on an fd this writer owns; only status flags change.
            let r = unsafe {
                let flags = libc::fcntl(fd, libc::F_GETFL);
                if flags < 0 {
                    flags
                } else {
                    libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT)
                }
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("writing {}", self.shown.display()));
            }
        }
        Ok(())
    }

    /// Writes the header, manifest and trailer (sealed with `key`, if
    /// given), syncs, links the image under `name` in its directory (never
    /// replacing anything there) and syncs the directory. Returns the
    /// image's path and size.
    pub fn finish(mut self, manifest: &Manifest, name: &str, key: Option<&Key>) -> Result<(PathBuf, u64)> {
        self.stop_direct()?;
        // Into a buffer, as `bincode::serialize` would, without its first
        // pass that only counts the bytes (which would encode every chunk
        // list twice).
        let mut m = Vec::with_capacity(1 << 20);
        bincode::serialize_into(&mut m, manifest).context("encoding the manifest")?;
        let at = self.end.load(Ordering::Relaxed);
        let mut trailer = Trailer {
            manifest_offset: at,
            manifest_len: m.len() as u64,
            manifest_checksum: checksum(&m),
            file_len: at + m.len() as u64 + super::TRAILER_LEN,
            seal: None,
        };
        if let Some(k) = key {
            let mut covered = m.clone();
            covered.extend_from_slice(&trailer.head());
            trailer.seal = Some(k.seal(&covered));
        }
        self.write_at(&super::lineage::header_with(&manifest.lineage.id), 0)?;
        self.write_at(&m, at)?;
        self.write_at(&trailer.to_bytes(), at + m.len() as u64)?;
        self.file.sync_all().with_context(|| format!("syncing {}", self.shown.display()))?;
        let dest = self.dir.join(name);
        self.link(&dest)?;
        self.finished = true;
        if let Some(tmp) = self.tmp.take() {
            let _ = std::fs::remove_file(tmp);
        }
        File::open(&self.dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", self.dir.display()))?;
        Ok((dest, trailer.file_len))
    }

    /// Gives the image the name `dest`, failing (never replacing) if the
    /// name exists.
    fn link(&self, dest: &Path) -> Result<()> {
        let to = cpath(dest)?;
        let r = match &self.tmp {
            Some(tmp) => {
                let from = cpath(tmp)?;
                // SAFETY: NUL-terminated paths; flags 0: no symlink is followed.
                unsafe { libc::linkat(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), 0) }
            }
            None => {
                let from = CString::new(format!("/proc/self/fd/{}", self.file.as_raw_fd())).unwrap();
                // SAFETY: NUL-terminated paths; AT_SYMLINK_FOLLOW resolves the
                // /proc magic link to our unnamed file (dest is never followed).
                let r = unsafe {
                    libc::linkat(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::AT_SYMLINK_FOLLOW)
                };
                if r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOENT) {
                    // No /proc: the kernel's own way (needs CAP_DAC_READ_SEARCH).
                    // SAFETY: as above, with the fd itself.
                    unsafe {
                        libc::linkat(
                            self.file.as_raw_fd(),
                            c"".as_ptr(),
                            libc::AT_FDCWD,
                            to.as_ptr(),
                            libc::AT_EMPTY_PATH,
                        )
                    }
                } else {
                    r
                }
            }
        };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EEXIST) {
                return Err(CkError::Environment(format!(
                    "{} exists already; an image is never replaced",
                    dest.display()
                ))
                .into());
            }
            return Err(e).with_context(|| format!("naming the image {}", dest.display()));
        }
        Ok(())
    }
}

impl Drop for ImageWriter {
    fn drop(&mut self) {
        if !self.finished {
            if let Some(tmp) = &self.tmp {
                let _ = std::fs::remove_file(tmp);
            }
        }
    }
}

/// Whether `dir` takes new images (checked at launch, so that a job does
/// not run for hours before its first checkpoint fails).
pub fn check_writable(dir: &Path) -> Result<(), CkError> {
    let fail = |e: std::io::Error| {
        CkError::Environment(format!("image directory {}: cannot create images there: {e}", dir.display()))
    };
    match open_raw(dir, libc::O_TMPFILE | libc::O_WRONLY, 0o600) {
        Ok(_) => Ok(()),
        Err(e) if no_tmpfile(&e) || e.raw_os_error() == Some(libc::EINVAL) => {
            let probe = dir.join(format!(".probe{TMP_INFIX}{}", random_hex()));
            open_raw(&probe, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW, 0o600).map_err(fail)?;
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(fail(e)),
    }
}

/// Removes the named temporaries in `dir` that a ckrun which died while
/// writing them left behind: ours (same owner), regular files, whose lock
/// nobody holds. Says so in one line.
pub fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name();
        let n = name.to_string_lossy();
        if !n.starts_with('.') || !n.contains(TMP_INFIX) {
            continue;
        }
        let path = e.path();
        let Ok(f) = open_raw(&path, libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK, 0) else { continue };
        let Ok(meta) = f.metadata() else { continue };
        if !meta.is_file() || meta.uid() != me {
            continue;
        }
        // SAFETY: flock on our own fd.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0
            && std::fs::remove_file(&path).is_ok()
        {
            removed.push(n.into_owned());
        }
    }
    if !removed.is_empty() {
        eprintln!(
            "ckrun: removed {} unfinished image(s) in {} left by a checkpoint that was interrupted: {}",
            removed.len(),
            dir.display(),
            removed.join(", ")
        );
    }
}

/// The image directory, made (mode 0700: images hold the program's memory)
/// if it does not exist.
pub fn image_dir(dir: Option<&std::path::Path>) -> Result<std::path::PathBuf, crate::error::CkError> {
    use std::os::unix::fs::DirBuilderExt;
    let d = dir.unwrap_or(std::path::Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(d)
        .map_err(|e| crate::error::CkError::Environment(format!("image directory {}: {e}", d.display())))?;
    d.canonicalize().map_err(|e| crate::error::CkError::Environment(format!("image directory {}: {e}", d.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::manifest::{ChunkRef, GhostFile};
    use crate::image::ImageReader;

    fn manifest(chunks: Vec<ChunkRef>) -> Manifest {
        let mut m = crate::image::validate::tests::valid_manifest();
        m.ghosts.push(GhostFile {
            path: "g".into(),
            memfd: true,
            named: false,
            mode: 0o600,
            size: chunks.len() as u64 * 8192,
            seals: 0,
            dev: (0, 0),
            inode: 0,
            chunks,
        });
        m
    }

    /// Direct and buffered writers make images the reader takes alike,
    /// through both append paths, with chunks of awkward lengths.
    #[test]
    fn direct_and_buffered_images_read_back() {
        let dir = std::env::temp_dir().join(format!("ckrun-writer-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for try_direct in [true, false] {
            let name = format!("t{try_direct}.ckimg");
            let w = ImageWriter::create_with(&dir, try_direct).unwrap();
            let mut pages = Vec::new();
            let mut chunks = Vec::new();
            for i in 0..6u64 {
                // Two pages: a counter (compressible to a few bytes) then noise.
                let mut data = vec![(i * 37) as u8; 8192];
                for (j, b) in data[4096..].iter_mut().enumerate() {
                    *b = (j as u64).wrapping_mul(0x9e37_79b9).wrapping_add(i).to_le_bytes()[3];
                }
                let packed = lz4_flex::block::compress(&data);
                let (offset, checksum) = if i % 2 == 0 {
                    w.append_chunk(&packed).unwrap()
                } else {
                    let mut buf = AlignedBuf::new(packed.len());
                    buf[..packed.len()].copy_from_slice(&packed);
                    w.append_aligned(&mut buf, packed.len()).unwrap()
                };
                if w.is_direct() {
                    assert_eq!(offset % DIRECT_ALIGN as u64, 0, "direct chunks start on a block");
                }
                chunks.push(ChunkRef::own(i * 8192, 2, packed.len() as u32, offset, checksum));
                pages.push(data);
            }
            let m = manifest(chunks);
            let (dest, _) = w.finish(&m, &name, None).unwrap();
            let r = ImageReader::open(&dest).unwrap();
            assert_eq!(r.manifest, m);
            let mut scratch = Vec::new();
            for (c, want) in r.manifest.ghosts[0].chunks.iter().zip(&pages) {
                let mut got = vec![0u8; 8192];
                r.read_chunk(c, &mut got, &mut scratch).unwrap();
                assert_eq!(&got, want);
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
