//! `ckrun --flatten IMAGE`: a self-contained copy of an incremental image
//! (for moving a job elsewhere, or keeping one image without its chain),
//! written beside it as `NAME.full.ckimg` the way every image is written:
//! complete and synced before it has a name, never over an existing file.
//! Nothing is restarted; the image and its parents are left as they are.

use super::lineage::{self, BlobRef, Lineage};
use super::manifest::{ChunkRef, OpenFile};
use super::{ImageReader, ImageWriter};
use crate::error::CkError;
use crate::sys::PAGE_SIZE;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

pub fn run(path: &Path, key_file: Option<PathBuf>) -> Result<i32> {
    let img = ImageReader::open(path)?;
    let key_file = crate::cli::Overrides { key_file, ..Default::default() }.key_file();
    let key = key_file.as_deref().map(super::seal::Key::load).transpose()?;
    if let Some(k) = &key {
        super::seal::check(&img, k)?;
    }
    // A damaged block fails here, before anything is written.
    img.verify_chunks()?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let file = path.file_name().context("an image path")?.to_string_lossy().into_owned();
    let name = format!("{}.full.ckimg", file.strip_suffix(".ckimg").unwrap_or(&file));
    if std::fs::symlink_metadata(dir.join(&name)).is_ok() {
        return Err(CkError::Environment(format!(
            "{} exists already (ckrun never replaces a file; remove it first)",
            dir.join(&name).display()
        ))
        .into());
    }
    // Every block of the copy is its own: its page hashes cover them all.
    let hashes = img.page_hashes()?;
    let mut blob = Vec::new();
    let out = ImageWriter::create(dir)?;
    let mut m = img.manifest.clone();
    let mut scratch = Vec::new();
    let mut pages = Vec::new();
    let mut copy = |c: &mut ChunkRef| -> Result<()> {
        *c = if c.image == 0 && c.is_whole_block() {
            img.read_checked(c, &mut scratch)?;
            let (offset, checksum) = out.append_chunk(&scratch)?;
            ChunkRef { offset, checksum, ..*c }
        } else {
            pages.resize(c.npages as usize * PAGE_SIZE as usize, 0);
            img.read_chunk(c, &mut pages, &mut scratch)?;
            let packed = lz4_flex::block::compress(&pages);
            let (offset, checksum) = out.append_chunk(&packed)?;
            ChunkRef::own(c.addr, c.npages, packed.len() as u32, offset, checksum)
        };
        Ok(())
    };
    let mut hashed = 0;
    for p in &mut m.processes {
        for c in p.regions.iter_mut().flat_map(|r| r.chunks.iter_mut()) {
            copy(c)?;
            // In the order of `lineage::memory_chunks`, as `hashes` is.
            if let Some(h) = &hashes {
                let n = c.npages as usize;
                lineage::push_block_hashes(&mut blob, c.offset, &h[hashed..hashed + n]);
                hashed += n;
            }
        }
    }
    for c in m.ghosts.iter_mut().flat_map(|g| g.chunks.iter_mut()) {
        copy(c)?;
    }
    for f in &mut m.files {
        if let OpenFile::Path { content: Some(content), .. } = f {
            for c in &mut content.chunks {
                copy(c)?;
            }
        }
    }
    let page_hashes = match hashes {
        Some(_) => {
            let (offset, checksum) = out.append_chunk(&blob)?;
            Some(BlobRef { offset, len: blob.len() as u64, checksum })
        }
        None => None,
    };
    m.lineage = Lineage { id: lineage::new_id(), generation: 0, parents: Vec::new(), page_hashes };
    let (dest, len) = out.finish(&m, &name, key.as_ref())?;
    let (own, taken) = lineage::own_and_taken(&img.manifest);
    eprintln!(
        "ckrun: {}: self-contained copy of {} ({} bytes; {} bytes of pages were its own, {} taken from {} earlier image(s))",
        dest.display(),
        path.display(),
        len,
        own,
        taken.iter().sum::<u64>(),
        taken.len()
    );
    Ok(0)
}
