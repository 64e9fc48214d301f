//! Writes an image: under a temporary name, synced, then renamed, so that
//! the final name only ever holds a complete image and a crash at any
//! moment leaves the previous images intact.
//!
//! Chunks are appended by many threads at once: each reserves its place
//! (an atomic end offset) and writes it with pwrite, so compression and
//! writing proceed on all cores with no writer thread in between.

use super::manifest::Manifest;
use super::{checksum, header_bytes, Trailer, HEADER_LEN};
use anyhow::{Context, Result};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub struct ImageWriter {
    file: File,
    tmp: PathBuf,
    dest: PathBuf,
    end: AtomicU64,
    finished: bool,
}

impl ImageWriter {
    pub fn create(dest: &Path) -> Result<Self> {
        let mut tmp = dest.as_os_str().to_owned();
        tmp.push(format!(".tmp.{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        file.write_all_at(&header_bytes(), 0).with_context(|| format!("writing {}", tmp.display()))?;
        Ok(ImageWriter { file, tmp, dest: dest.to_owned(), end: AtomicU64::new(HEADER_LEN), finished: false })
    }

    /// Appends compressed chunk bytes (from any thread); returns where they
    /// went and their checksum.
    pub fn append_chunk(&self, data: &[u8]) -> Result<(u64, u64)> {
        let sum = checksum(data);
        let off = self.end.fetch_add(data.len() as u64, Ordering::Relaxed);
        self.file.write_all_at(data, off).with_context(|| format!("writing {}", self.tmp.display()))?;
        Ok((off, sum))
    }

    /// Writes the manifest and trailer, syncs, renames into place and syncs
    /// the directory. Returns the image size.
    pub fn finish(mut self, manifest: &Manifest) -> Result<u64> {
        let m = bincode::serialize(manifest).context("encoding the manifest")?;
        let at = self.end.load(Ordering::Relaxed);
        let trailer = Trailer {
            manifest_offset: at,
            manifest_len: m.len() as u64,
            manifest_checksum: checksum(&m),
            file_len: at + m.len() as u64 + super::TRAILER_LEN,
        };
        let ctx = || format!("writing {}", self.tmp.display());
        self.file.write_all_at(&m, at).with_context(ctx)?;
        self.file.write_all_at(&trailer.to_bytes(), at + m.len() as u64).with_context(ctx)?;
        self.file.sync_all().with_context(|| format!("syncing {}", self.tmp.display()))?;
        std::fs::rename(&self.tmp, &self.dest)
            .with_context(|| format!("renaming {} to {}", self.tmp.display(), self.dest.display()))?;
        self.finished = true;
        if let Some(dir) = self.dest.parent() {
            let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
            File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dir.display()))?;
        }
        Ok(trailer.file_len)
    }
}

impl Drop for ImageWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
