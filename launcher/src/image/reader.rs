//! Opens and checks an image. Every failure is a [`CkError::BadImage`]
//! that says what is wrong, found before anything is restored: the file is
//! a regular file (a FIFO or a device is refused without blocking on it),
//! its trailer and manifest checksums match, the manifest's length is
//! bounded before it is read, its decoding cannot allocate more than the
//! manifest's own size, and [`super::validate`] checks every field that
//! anything later relies on.

use super::manifest::{ChunkRef, Manifest};
use super::{checksum, Trailer, FORMAT_VERSION, HEADER_LEN, MAGIC, MAX_MANIFEST, TRAILER_LEN};
use crate::error::CkError;
use crate::sys::PAGE_SIZE;
use bincode::Options;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub struct ImageReader {
    file: File,
    path: PathBuf,
    pub manifest: Manifest,
    /// Bytes on disk.
    pub len: u64,
    /// The file's owner: a restart never gives the program more
    /// privilege than this user has.
    pub owner: u32,
    /// The keyed seal in the trailer, if the image has one, and the bytes
    /// it covers (see `image::seal`).
    pub seal: Option<([u8; 16], Vec<u8>)>,
}

/// The decoder for manifests: bincode's fixed-width encoding (as
/// `bincode::serialize` writes it), reading at most `limit` bytes, so that
/// a crafted length prefix fails instead of allocating.
pub fn decoder(limit: u64) -> impl Options {
    bincode::DefaultOptions::new().with_fixint_encoding().with_limit(limit)
}

impl ImageReader {
    pub fn open(path: &Path) -> Result<Self, CkError> {
        // O_NONBLOCK: opening a FIFO must not wait for a writer.
        let file =
            std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path).map_err(
                |e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        CkError::Environment(format!("{}: no such image", path.display()))
                    } else {
                        CkError::bad_image(path, format!("cannot open: {e}"))
                    }
                },
            )?;
        Self::from_file(file, path)
    }

    pub fn from_file(file: File, path: &Path) -> Result<Self, CkError> {
        let bad = |why: &str| CkError::bad_image(path, why.to_string());
        let meta = file.metadata().map_err(|e| bad(&format!("cannot stat: {e}")))?;
        if meta.is_dir() {
            return Err(bad("is a directory"));
        }
        if !meta.is_file() {
            return Err(bad("not a regular file"));
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
        if trailer.manifest_len > MAX_MANIFEST {
            return Err(bad(&format!(
                "damaged image (a manifest of {} bytes; at most {MAX_MANIFEST} are accepted)",
                trailer.manifest_len
            )));
        }
        let mut m = vec![0u8; trailer.manifest_len as usize];
        file.read_exact_at(&mut m, trailer.manifest_offset).map_err(|e| bad(&format!("cannot read manifest: {e}")))?;
        if checksum(&m) != trailer.manifest_checksum {
            return Err(bad("damaged image (manifest checksum mismatch)"));
        }
        let manifest: Manifest =
            decoder(m.len() as u64).deserialize(&m).map_err(|e| bad(&format!("damaged manifest: {e}")))?;
        super::validate::validate(&manifest, path, trailer.manifest_offset)?;
        let seal = trailer.seal.map(|s| {
            let mut covered = m;
            covered.extend_from_slice(&t[..40]);
            (s, covered)
        });
        Ok(ImageReader { file, path: path.to_owned(), manifest, len, owner: meta.uid(), seal })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open image file (restore children inherit it).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.file)
    }

    /// Reads, checks and decompresses chunk `c` into `out` (exactly its
    /// pages). `scratch` is reused between calls.
    pub fn read_chunk(&self, c: &ChunkRef, out: &mut [u8], scratch: &mut Vec<u8>) -> Result<(), CkError> {
        let bad = |why: String| CkError::bad_image(&self.path, why);
        self.read_checked(c, scratch)?;
        match lz4_flex::block::decompress_into(scratch, out) {
            Ok(n) if n == out.len() => Ok(()),
            _ => Err(bad(format!("damaged image (pages at {:#x} do not decompress)", c.addr))),
        }
    }

    /// Reads chunk `c`'s compressed bytes into `buf` and checks them.
    fn read_checked(&self, c: &ChunkRef, buf: &mut Vec<u8>) -> Result<(), CkError> {
        let bad = |why: String| CkError::bad_image(&self.path, why);
        buf.resize(c.clen as usize, 0);
        self.file.read_exact_at(buf, c.offset).map_err(|e| bad(format!("cannot read chunk at {}: {e}", c.offset)))?;
        if checksum(buf) != c.checksum {
            return Err(bad(format!("damaged image (checksum mismatch in the pages at {:#x})", c.addr)));
        }
        Ok(())
    }

    /// Checks every chunk (memory and the content of deleted files and
    /// memfds): checksum and decompression. What `--inspect` does besides
    /// printing.
    pub fn verify_chunks(&self) -> Result<(), CkError> {
        let mut scratch = Vec::new();
        let mut out = vec![0u8; super::CHUNK_PAGES as usize * PAGE_SIZE as usize];
        let m = &self.manifest;
        let memory = m.processes.iter().flat_map(|p| p.regions.iter().flat_map(|r| r.chunks.iter()));
        let files = m.ghosts.iter().flat_map(|g| g.chunks.iter());
        let written = m.files.iter().flat_map(|f| match f {
            crate::image::manifest::OpenFile::Path { content: Some(c), .. } => c.chunks.iter(),
            _ => [].iter(),
        });
        for c in memory.chain(files).chain(written) {
            let n = c.npages as usize * PAGE_SIZE as usize;
            self.read_chunk(c, &mut out[..n], &mut scratch)?;
        }
        Ok(())
    }
}
