//! Opens and checks an image. Every failure is a [`CkError::BadImage`]
//! that says what is wrong, found before anything is restored: the file is
//! a regular file (a FIFO or a device is refused without blocking on it),
//! its trailer and manifest checksums match, the manifest's length is
//! bounded before it is read, its decoding cannot allocate more than the
//! manifest's own size, and [`super::validate`] checks every field that
//! anything later relies on. An incremental image's parents are opened and
//! checked with it ([`super::lineage::open_parents`]): one that is
//! missing, replaced or incomplete fails the open, naming it.

use super::lineage::{self, BlobRef, ParentFile};
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
    /// The earlier images it takes pages from (`lineage.parents`, in order).
    parents: Vec<ParentFile>,
    /// Where its chunk area ends.
    chunks_end: u64,
}

/// The decoder for manifests: bincode's fixed-width encoding (as
/// `bincode::serialize` writes it), reading at most `limit` bytes, so that
/// a crafted length prefix fails instead of allocating.
pub fn decoder(limit: u64) -> impl Options {
    bincode::DefaultOptions::new().with_fixint_encoding().with_limit(limit)
}

/// Reads blob `b` of the image `file` (whose chunk area ends at
/// `chunks_end`), checking that it lies in the chunk area and its
/// checksum; `bad` makes the error of each failure.
fn read_blob_in(
    file: &File,
    chunks_end: u64,
    b: &BlobRef,
    bad: impl Fn(String) -> CkError,
) -> Result<Vec<u8>, CkError> {
    if b.offset < HEADER_LEN || b.offset.checked_add(b.len).is_none_or(|e| e > chunks_end) {
        return Err(bad("damaged manifest (a blob out of bounds)".into()));
    }
    let mut buf = vec![0u8; b.len as usize];
    file.read_exact_at(&mut buf, b.offset).map_err(|e| bad(format!("cannot read at {}: {e}", b.offset)))?;
    if checksum(&buf) != b.checksum {
        return Err(bad("damaged image (page hashes checksum mismatch)".into()));
    }
    Ok(buf)
}

impl ImageReader {
    /// Opens the image at `path` and the parents it names beside it.
    pub fn open(path: &Path) -> Result<Self, CkError> {
        let mut img = Self::open_alone(path)?;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        img.parents = lineage::open_parents(dir, path, &img.manifest, img.owner)?;
        lineage::check_references(&img.manifest, &img.parents, path)?;
        Ok(img)
    }

    /// Opens the image `file` (shown as `path`) with its parents already
    /// open (`parents`, as [`Self::parent_fds`] listed them), checking
    /// each again.
    pub fn from_files(file: File, path: &Path, parents: Vec<File>) -> Result<Self, CkError> {
        let mut img = Self::from_file(file, path)?;
        let names = &img.manifest.lineage.parents;
        if names.len() != parents.len() {
            return Err(CkError::bad_image(
                path,
                format!("{} parent images given, {} named", parents.len(), names.len()),
            ));
        }
        for (f, p) in parents.into_iter().zip(names) {
            let shown = PathBuf::from(&p.name);
            img.parents.push(lineage::check_parent(f, shown, p, img.owner, path)?);
        }
        lineage::check_references(&img.manifest, &img.parents, path)?;
        Ok(img)
    }

    /// Opens the image at `path` without its parents: its manifest only
    /// (what retention reads), no page of a parent can be read.
    pub fn open_alone(path: &Path) -> Result<Self, CkError> {
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

    fn from_file(file: File, path: &Path) -> Result<Self, CkError> {
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
        lineage::validate(&manifest, path, trailer.manifest_offset)?;
        if head[lineage::HEADER_ID_AT..lineage::HEADER_ID_AT + 16] != manifest.lineage.id {
            return Err(bad("damaged image (the header's id is not the manifest's)"));
        }
        let seal = trailer.seal.map(|s| {
            let mut covered = m;
            covered.extend_from_slice(&t[..40]);
            (s, covered)
        });
        Ok(ImageReader {
            file,
            path: path.to_owned(),
            manifest,
            len,
            owner: meta.uid(),
            seal,
            parents: Vec::new(),
            chunks_end: trailer.manifest_offset,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open image file (restore children inherit it).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.file)
    }

    /// The open parent images, in `lineage.parents` order (restore
    /// children inherit them).
    pub fn parent_fds(&self) -> Vec<std::os::fd::RawFd> {
        self.parents.iter().map(|p| std::os::fd::AsRawFd::as_raw_fd(&p.file)).collect()
    }

    /// The paths of the parents, in `lineage.parents` order.
    pub fn parent_paths(&self) -> Vec<&Path> {
        self.parents.iter().map(|p| p.path.as_path()).collect()
    }

    /// The file holding `c`'s block, and its path for messages.
    fn holder(&self, c: &ChunkRef) -> (&File, &Path) {
        match c.image {
            0 => (&self.file, &self.path),
            k => {
                let p = &self.parents[k as usize - 1];
                (&p.file, &p.path)
            }
        }
    }

    /// Reads, checks and decompresses chunk `c` into `out` (exactly its
    /// pages). `scratch` is reused between calls.
    pub fn read_chunk(&self, c: &ChunkRef, out: &mut [u8], scratch: &mut Vec<u8>) -> Result<(), CkError> {
        if c.is_whole_block() {
            return self.read_block(c, out, scratch);
        }
        let mut block = vec![0u8; c.block_pages as usize * PAGE_SIZE as usize];
        self.read_block(c, &mut block, scratch)?;
        let from = c.skip as usize * PAGE_SIZE as usize;
        out.copy_from_slice(&block[from..from + out.len()]);
        Ok(())
    }

    /// Reads, checks and decompresses the whole block `c` takes its pages
    /// from into `out` (`c.block_pages` pages), from this image or a parent.
    pub fn read_block(&self, c: &ChunkRef, out: &mut [u8], scratch: &mut Vec<u8>) -> Result<(), CkError> {
        let (_, path) = self.holder(c);
        self.read_checked(c, scratch)?;
        match lz4_flex::block::decompress_into(scratch, out) {
            Ok(n) if n == out.len() => Ok(()),
            _ => Err(CkError::bad_image(path, format!("damaged image (pages at {:#x} do not decompress)", c.addr))),
        }
    }

    /// Reads chunk `c`'s compressed bytes (its whole block) into `buf`
    /// and checks them.
    pub fn read_checked(&self, c: &ChunkRef, buf: &mut Vec<u8>) -> Result<(), CkError> {
        let (file, path) = self.holder(c);
        let bad = |why: String| {
            if c.image == 0 {
                CkError::bad_image(path, why)
            } else {
                CkError::bad_image(
                    &self.path,
                    format!("needs pages from the earlier image {}, which is {why}", path.display()),
                )
            }
        };
        buf.resize(c.clen as usize, 0);
        file.read_exact_at(buf, c.offset).map_err(|e| bad(format!("unreadable (chunk at {}: {e})", c.offset)))?;
        if checksum(buf) != c.checksum {
            return Err(bad(format!("damaged image (checksum mismatch in the pages at {:#x})", c.addr)));
        }
        Ok(())
    }

    /// Reads and checks a blob of this image's chunk area.
    pub fn read_blob(&self, b: &BlobRef) -> Result<Vec<u8>, CkError> {
        read_blob_in(&self.file, self.chunks_end, b, |why| CkError::bad_image(&self.path, why))
    }

    /// Reads and checks the blob `b` of parent `k` (1-based, as
    /// `ChunkRef::image` counts).
    fn read_parent_blob(&self, k: usize, b: &BlobRef) -> Result<Vec<u8>, CkError> {
        let p = &self.parents[k - 1];
        read_blob_in(&p.file, p.chunks_end, b, |why| {
            CkError::bad_image(&self.path, format!("the earlier image {}: {why}", p.path.display()))
        })
    }

    /// The hash of every page the image puts back into memory, in the
    /// order of `lineage::memory_chunks`, gathered from its own page
    /// hashes and its parents' (each holds those of the pages it stores).
    /// None if one of them has none.
    pub fn page_hashes(&self) -> Result<Option<Vec<u128>>, CkError> {
        let l = &self.manifest.lineage;
        let Some(own) = &l.page_hashes else { return Ok(None) };
        let mut blobs = vec![self.read_blob(own)?];
        for (k, p) in l.parents.iter().enumerate() {
            match &p.page_hashes {
                Some(b) => blobs.push(self.read_parent_blob(k + 1, b)?),
                None => return Ok(None),
            }
        }
        let damaged = |why: String| CkError::bad_image(&self.path, format!("damaged page hashes ({why})"));
        let tables = blobs
            .iter()
            .map(|b| lineage::parse_page_hashes(b).map(Some))
            .collect::<Result<Vec<_>, _>>()
            .map_err(damaged)?;
        lineage::hashes_in_order(&self.manifest, &tables).map(Some).map_err(damaged)
    }

    /// Checks every block the image restores from, its own and its
    /// parents' (each once): checksum and decompression; and its page
    /// hashes. What `--inspect` does besides printing.
    pub fn verify_chunks(&self) -> Result<(), CkError> {
        let mut scratch = Vec::new();
        let mut out = vec![0u8; super::CHUNK_PAGES as usize * PAGE_SIZE as usize];
        let mut blocks: Vec<&ChunkRef> = lineage::all_chunks(&self.manifest).collect();
        blocks.sort_unstable_by_key(|c| (c.image, c.offset));
        blocks.dedup_by_key(|c| (c.image, c.offset));
        for c in blocks {
            let n = c.block_pages as usize * PAGE_SIZE as usize;
            self.read_block(c, &mut out[..n], &mut scratch)?;
        }
        if let Some(b) = &self.manifest.lineage.page_hashes {
            self.read_blob(b)?;
        }
        Ok(())
    }
}
