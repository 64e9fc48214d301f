//! Writes an image: under a temporary name, synced, then renamed, so that
//! the final name only ever holds a complete image and a crash at any
//! moment leaves the previous images intact.

use super::manifest::Manifest;
use super::{checksum, header_bytes, Trailer, HEADER_LEN};
use anyhow::{Context, Result};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub struct ImageWriter {
    out: Option<BufWriter<File>>,
    tmp: PathBuf,
    dest: PathBuf,
    offset: u64,
}

impl ImageWriter {
    pub fn create(dest: &Path) -> Result<Self> {
        let mut tmp = dest.as_os_str().to_owned();
        tmp.push(format!(".tmp.{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        let mut out = BufWriter::with_capacity(4 << 20, f);
        out.write_all(&header_bytes()).with_context(|| format!("writing {}", tmp.display()))?;
        Ok(ImageWriter { out: Some(out), tmp, dest: dest.to_owned(), offset: HEADER_LEN })
    }

    /// Appends compressed chunk bytes; returns where they went and their checksum.
    pub fn append_chunk(&mut self, data: &[u8]) -> Result<(u64, u64)> {
        let off = self.offset;
        self.out
            .as_mut()
            .expect("writer finished")
            .write_all(data)
            .with_context(|| format!("writing {}", self.tmp.display()))?;
        self.offset += data.len() as u64;
        Ok((off, checksum(data)))
    }

    /// Writes the manifest and trailer, syncs, renames into place and syncs
    /// the directory. Returns the image size.
    pub fn finish(mut self, manifest: &Manifest) -> Result<u64> {
        let m = bincode::serialize(manifest).context("encoding the manifest")?;
        let trailer = Trailer {
            manifest_offset: self.offset,
            manifest_len: m.len() as u64,
            manifest_checksum: checksum(&m),
            file_len: self.offset + m.len() as u64 + super::TRAILER_LEN,
        };
        let mut out = self.out.take().expect("writer finished");
        let ctx = || format!("writing {}", self.tmp.display());
        out.write_all(&m).with_context(ctx)?;
        out.write_all(&trailer.to_bytes()).with_context(ctx)?;
        let f = out.into_inner().map_err(|e| e.into_error()).with_context(ctx)?;
        f.sync_all().with_context(|| format!("syncing {}", self.tmp.display()))?;
        drop(f);
        std::fs::rename(&self.tmp, &self.dest)
            .with_context(|| format!("renaming {} to {}", self.tmp.display(), self.dest.display()))?;
        if let Some(dir) = self.dest.parent() {
            let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
            File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dir.display()))?;
        }
        Ok(trailer.file_len)
    }
}

impl Drop for ImageWriter {
    fn drop(&mut self) {
        if self.out.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
