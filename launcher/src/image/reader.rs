//! Opens and checks an image. Every failure is a [`CkError::BadImage`]
//! that says what is wrong, found before anything is restored.

use super::manifest::{ChunkRef, Manifest};
use super::{checksum, Trailer, FORMAT_VERSION, HEADER_LEN, MAGIC, TRAILER_LEN};
use crate::error::CkError;
use crate::sys::PAGE_SIZE;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub struct ImageReader {
    file: File,
    path: PathBuf,
    pub manifest: Manifest,
    /// Bytes on disk.
    pub len: u64,
    chunks_end: u64,
}

impl ImageReader {
    pub fn open(path: &Path) -> Result<Self, CkError> {
        let file = File::open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                CkError::Environment(format!("{}: no such image", path.display()))
            } else {
                CkError::bad_image(path, format!("cannot open: {e}"))
            }
        })?;
        Self::from_file(file, path)
    }

    pub fn from_file(file: File, path: &Path) -> Result<Self, CkError> {
        let bad = |why: &str| CkError::bad_image(path, why.to_string());
        let meta = file.metadata().map_err(|e| bad(&format!("cannot stat: {e}")))?;
        if meta.is_dir() {
            return Err(bad("is a directory"));
        }
        let len = meta.len();
        let mut head = [0u8; HEADER_LEN as usize];
        if len < HEADER_LEN || file.read_exact_at(&mut head, 0).is_err() || &head[..8] != MAGIC {
            return Err(bad("not a ckrun image"));
        }
        let version = u32::from_le_bytes(head[8..12].try_into().unwrap());
        if version != FORMAT_VERSION {
            return Err(bad(&format!("image format {version}, this ckrun reads format {FORMAT_VERSION}")));
        }
        let mut t = [0u8; TRAILER_LEN as usize];
        let trailer = (len >= HEADER_LEN + TRAILER_LEN)
            .then(|| file.read_exact_at(&mut t, len - TRAILER_LEN).ok())
            .flatten()
            .and_then(|_| Trailer::parse(&t))
            .ok_or_else(|| bad("truncated or damaged image (no valid trailer); was the checkpoint interrupted?"))?;
        if trailer.file_len != len {
            return Err(bad(&format!("image is {len} bytes, its trailer says {}", trailer.file_len)));
        }
        if trailer.manifest_offset < HEADER_LEN
            || trailer.manifest_offset.checked_add(trailer.manifest_len) != Some(len - TRAILER_LEN)
        {
            return Err(bad("damaged image (manifest out of bounds)"));
        }
        let mut m = vec![0u8; trailer.manifest_len as usize];
        file.read_exact_at(&mut m, trailer.manifest_offset).map_err(|e| bad(&format!("cannot read manifest: {e}")))?;
        if checksum(&m) != trailer.manifest_checksum {
            return Err(bad("damaged image (manifest checksum mismatch)"));
        }
        let manifest: Manifest = bincode::deserialize(&m).map_err(|e| bad(&format!("damaged manifest: {e}")))?;
        let r = ImageReader { file, path: path.to_owned(), manifest, len, chunks_end: trailer.manifest_offset };
        r.check_chunk_bounds()?;
        Ok(r)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check_chunk_bounds(&self) -> Result<(), CkError> {
        for p in &self.manifest.processes {
            for r in &p.regions {
                for c in &r.chunks {
                    let end = c.addr + c.npages as u64 * PAGE_SIZE;
                    if c.offset < HEADER_LEN
                        || c.offset + c.clen as u64 > self.chunks_end
                        || c.addr < r.start
                        || end > r.end
                    {
                        return Err(CkError::bad_image(&self.path, "damaged manifest (chunk out of bounds)"));
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads, checks and decompresses chunk `c` into `out` (exactly its
    /// pages). `scratch` is reused between calls.
    pub fn read_chunk(&self, c: &ChunkRef, out: &mut [u8], scratch: &mut Vec<u8>) -> Result<(), CkError> {
        let bad = |why: String| CkError::bad_image(&self.path, why);
        scratch.resize(c.clen as usize, 0);
        self.file
            .read_exact_at(scratch, c.offset)
            .map_err(|e| bad(format!("cannot read chunk at {}: {e}", c.offset)))?;
        if checksum(scratch) != c.checksum {
            return Err(bad(format!("damaged image (checksum mismatch in the pages at {:#x})", c.addr)));
        }
        match lz4_flex::block::decompress_into(scratch, out) {
            Ok(n) if n == out.len() => Ok(()),
            _ => Err(bad(format!("damaged image (pages at {:#x} do not decompress)", c.addr))),
        }
    }

    /// Checks every chunk's checksum (what `--inspect` does besides printing).
    pub fn verify_chunks(&self) -> Result<(), CkError> {
        let mut buf = Vec::new();
        for p in &self.manifest.processes {
            for r in &p.regions {
                for c in &r.chunks {
                    buf.resize(c.clen as usize, 0);
                    self.file
                        .read_exact_at(&mut buf, c.offset)
                        .map_err(|e| CkError::bad_image(&self.path, format!("cannot read chunk: {e}")))?;
                    if checksum(&buf) != c.checksum {
                        return Err(CkError::bad_image(
                            &self.path,
                            format!("damaged image (checksum mismatch in the pages at {:#x})", c.addr),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}
