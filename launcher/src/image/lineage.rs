//! Incremental images: an image may take pages from earlier images of its
//! job instead of storing them again.
//!
//! **Layout.** Images refer to their parents per chunk; there is no chunk
//! store beside them. Every [`ChunkRef`] names a stored block (an lz4 block
//! of up to [`CHUNK_PAGES`](super::CHUNK_PAGES) pages with its xxh3
//! checksum) in this image (`image` 0) or in one of the earlier images
//! listed in [`Lineage::parents`] (`image` k), and the pages of that block
//! it restores (`skip`, `npages`). References are direct: an image lists
//! every image it takes pages from, never "my parent's parent", so a
//! restart opens at most [`MAX_CHAIN`] files and reads no manifest but the
//! newest one. Parents are named by file name in the image's own
//! directory and identified by a random 128-bit id, written in their
//! header and in their manifest, and by their length: a file that took a
//! parent's name since is refused.
//!
//! **Which pages are new.** Each image carries the xxh3-128 hash of every
//! page of memory it stores itself, per stored block (a separate blob,
//! [`Lineage::page_hashes`], so the manifest stays small); the hashes of
//! the pages it takes from a parent are in that parent's blob, which its
//! [`ParentRef`] locates. So an image of 5% changed pages carries 5% of
//! the hashes, not all of them again. The checkpoint after a restart
//! collects them from the chain ([`hashes_in_order`], via
//! `ImageReader::page_hashes`; the coordinator that wrote the previous
//! image has them in memory), hashes every page it reads from the
//! snapshot, and stores only the pages whose hash no usable parent has;
//! 128 bits make an accidental match as likely as a disk returning wrong
//! bytes with a right checksum.
//!
//! **Bounded chains.** An image takes pages only from images fewer than
//! [`MAX_CHAIN`] generations older (generation: 0 for a self-contained
//! image, its parent's + 1 otherwise); a page found only in an older one is
//! stored again (`checkpoint::dedup::Base::store_again` spreads that over
//! the last images that may still take from it, so that no one image
//! stores them all). So any image depends on at most `MAX_CHAIN - 1` others,
//! and `--keep N` keeps at most `N + MAX_CHAIN - 1` images on disk.
//!
//! **Crash safety.** An image is only ever linked under its name once
//! complete and synced (`writer`); it names only parents that were complete
//! when it was written. Retention (`batch::retain`) deletes only images no
//! kept image names, newest first: an image always goes before the images
//! it depends on, so a crash between two deletions leaves every remaining
//! image with all of its parents.

use super::manifest::{ChunkRef, Manifest, OpenFile};
use super::{Trailer, FORMAT_VERSION, HEADER_LEN, MAGIC, TRAILER_LEN};
use crate::error::CkError;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Generations an image may reach back, itself included: it takes pages
/// from images at most `MAX_CHAIN - 1` generations older.
pub const MAX_CHAIN: u32 = 16;

/// What an image is renamed to once retention keeps it only for the
/// pages newer images take from it: `NAME.ROOT.N.ckpages`.
pub const PAGES_SUFFIX: &str = ".ckpages";

/// The page file name of image `name` (`X.ckimg` -> `X.ckpages`).
pub fn pages_name(name: &str) -> String {
    format!("{}{PAGES_SUFFIX}", name.strip_suffix(".ckimg").unwrap_or(name))
}

/// The image name of page file `name` (`X.ckpages` -> `X.ckimg`).
pub fn image_name_of_pages(name: &str) -> String {
    format!("{}.ckimg", name.strip_suffix(PAGES_SUFFIX).unwrap_or(name))
}

/// Bytes of the image id in the header (after magic and version).
pub const HEADER_ID_AT: usize = 16;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Lineage {
    /// Made at random for this image; also in its header, where an image
    /// that takes pages from it checks it.
    pub id: [u8; 16],
    /// 0: self-contained; otherwise one more than the image it was
    /// deduplicated against.
    pub generation: u32,
    /// The earlier images this one takes pages from.
    pub parents: Vec<ParentRef>,
    /// xxh3-128 of the pages of every block of memory pages this image
    /// stores itself (see [`push_block_hashes`]).
    pub page_hashes: Option<BlobRef>,
}

/// An earlier image of the job.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ParentRef {
    /// File name, in the directory of the image that names it.
    pub name: String,
    pub id: [u8; 16],
    pub generation: u32,
    /// Its length in bytes.
    pub len: u64,
    /// Its [`Lineage::page_hashes`], in its file.
    pub page_hashes: Option<BlobRef>,
}

/// Bytes stored in the chunk area, outside any chunk.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlobRef {
    pub offset: u64,
    pub len: u64,
    /// xxh3-64.
    pub checksum: u64,
}

/// A fresh image id.
pub fn new_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    // SAFETY: getrandom writes at most id.len() bytes into it.
    let n = unsafe { libc::getrandom(id.as_mut_ptr().cast(), id.len(), 0) };
    if n != id.len() as isize {
        // Never all zero, never the same twice in this process.
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        id = xxhash_rust::xxh3::xxh3_128(format!("{t:?} {}", std::process::id()).as_bytes()).to_le_bytes();
    }
    id
}

pub fn hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// An opened parent image: only its chunk area is ever read.
pub struct ParentFile {
    pub file: File,
    pub path: PathBuf,
    /// Where its chunk area ends (its manifest begins).
    pub chunks_end: u64,
}

/// Every chunk of `m`: memory, deleted files and memfds, saved file
/// content.
pub fn all_chunks(m: &Manifest) -> impl Iterator<Item = &ChunkRef> {
    let memory = m.processes.iter().flat_map(|p| p.regions.iter().flat_map(|r| r.chunks.iter()));
    let files = m.ghosts.iter().flat_map(|g| g.chunks.iter());
    let written = m.files.iter().flat_map(|f| match f {
        OpenFile::Path { content: Some(c), .. } => c.chunks.iter(),
        _ => [].iter(),
    });
    memory.chain(files).chain(written)
}

/// The memory chunks of `m`, in the order of [`Lineage::page_hashes`].
pub fn memory_chunks(m: &Manifest) -> impl Iterator<Item = &ChunkRef> {
    m.processes.iter().flat_map(|p| p.regions.iter().flat_map(|r| r.chunks.iter()))
}

/// Checks the lineage fields of `m` (read from `path`, whose chunk area
/// ends at `chunks_end`): parents bounded in number, plain file names, older
/// than the image; the hash blob inside the chunk area.
pub fn validate(m: &Manifest, path: &Path, chunks_end: u64) -> Result<(), CkError> {
    let l = &m.lineage;
    let bad = |why: String| CkError::bad_image(path, format!("damaged manifest ({why})"));
    if l.parents.len() >= MAX_CHAIN as usize {
        return Err(bad(format!("{} parent images", l.parents.len())));
    }
    for p in &l.parents {
        let plain = !p.name.is_empty()
            && p.name.len() <= 255
            && !p.name.contains(['/', '\0'])
            && p.name != "."
            && p.name != ".."
            && p.name.ends_with(".ckimg");
        if !plain || p.generation >= l.generation || l.generation - p.generation >= MAX_CHAIN {
            return Err(bad(format!("parent image {:?}", p.name)));
        }
    }
    if let Some(b) = &l.page_hashes {
        if b.offset < HEADER_LEN
            || b.offset.checked_add(b.len).is_none_or(|e| e > chunks_end)
            || b.len != page_hashes_len(m)
        {
            return Err(bad("page hashes out of bounds".into()));
        }
    }
    if l.parents.is_empty() && l.generation != 0 {
        return Err(bad("a self-contained image of a later generation".into()));
    }
    Ok(())
}

/// The header of an image with id `id`.
pub fn header_with(id: &[u8; 16]) -> [u8; HEADER_LEN as usize] {
    let mut h = super::header_bytes();
    h[HEADER_ID_AT..HEADER_ID_AT + 16].copy_from_slice(id);
    h
}

/// Opens the parents `m` names, in `dir` (the directory of `image`), by
/// their image name or, once retention renamed them, their page file name:
/// each must be a regular file (a symlink is not followed) owned by
/// `owner` (the image's owner: a restart never reads pages another user
/// planted), complete (a valid trailer), of the length and id the image
/// recorded. Fails naming the first that is missing or wrong (exit 3).
pub fn open_parents(dir: &Path, image: &Path, m: &Manifest, owner: u32) -> Result<Vec<ParentFile>, CkError> {
    let mut out = Vec::with_capacity(m.lineage.parents.len());
    let open = |path: &Path| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
    };
    for p in &m.lineage.parents {
        let mut path = dir.join(&p.name);
        // Retention renames an image newer ones need into a page file.
        let file = open(&path)
            .or_else(|e| {
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(e);
                }
                path = dir.join(pages_name(&p.name));
                open(&path)
            })
            .map_err(|e| {
                let why = match e.raw_os_error() {
                    Some(libc::ENOENT) => "is missing (an incremental image needs the earlier images it takes \
                                           pages from, in its directory; ckrun --flatten makes one that does not)"
                        .to_string(),
                    Some(libc::ELOOP) => "is a symbolic link".into(),
                    _ => format!("cannot be opened: {e}"),
                };
                missing(image, &p.name, &why)
            })?;
        out.push(check_parent(file, path, p, owner, image)?);
    }
    Ok(out)
}

fn missing(image: &Path, name: &str, why: &str) -> CkError {
    CkError::bad_image(image, format!("needs pages from the earlier image {name}, which {why}"))
}

/// Checks that `file` is the parent `p` (see [`open_parents`]).
pub fn check_parent(file: File, path: PathBuf, p: &ParentRef, owner: u32, image: &Path) -> Result<ParentFile, CkError> {
    let wrong = |why: String| missing(image, &p.name, &why);
    let meta = file.metadata().map_err(|e| wrong(format!("cannot be read: {e}")))?;
    if !meta.is_file() {
        return Err(wrong("is not a regular file".into()));
    }
    if meta.uid() != owner {
        return Err(wrong(format!("is owned by uid {}, not by the image's owner (uid {owner})", meta.uid())));
    }
    if meta.len() != p.len {
        return Err(wrong(format!("is damaged or was replaced ({} bytes, {} when it was used)", meta.len(), p.len)));
    }
    let mut head = [0u8; HEADER_LEN as usize];
    let mut t = [0u8; TRAILER_LEN as usize];
    let read = file.read_exact_at(&mut head, 0).and_then(|()| file.read_exact_at(&mut t, p.len - TRAILER_LEN));
    let trailer = read.ok().and_then(|()| Trailer::parse(&t)).filter(|t| t.file_len == p.len);
    let Some(trailer) = trailer.filter(|_| &head[..8] == MAGIC) else {
        return Err(wrong("is damaged or incomplete (no valid trailer)".into()));
    };
    if u32::from_le_bytes(head[8..12].try_into().unwrap()) != FORMAT_VERSION
        || head[HEADER_ID_AT..HEADER_ID_AT + 16] != p.id
    {
        return Err(wrong("is another image than the one it was made from (its id differs)".into()));
    }
    if trailer.manifest_offset < HEADER_LEN || trailer.manifest_offset > p.len {
        return Err(wrong("is damaged (manifest out of bounds)".into()));
    }
    Ok(ParentFile { file, path, chunks_end: trailer.manifest_offset })
}

/// Bytes of a block's record in a page hashes blob before its hashes:
/// the block's offset (u64) and page count (u32), little-endian.
const RECORD_HEAD: usize = 12;

/// Appends to a page hashes blob the record of one block of memory pages
/// the image stores at `offset`: the offset, the page count, and the
/// xxh3-128 of each of its pages (16 bytes, little-endian). Records are
/// in any order: each says which block it is.
pub fn push_block_hashes(blob: &mut Vec<u8>, offset: u64, hashes: &[u128]) {
    blob.extend_from_slice(&offset.to_le_bytes());
    blob.extend_from_slice(&(hashes.len() as u32).to_le_bytes());
    for h in hashes {
        blob.extend_from_slice(&h.to_le_bytes());
    }
}

/// The length the page hashes blob of `m` has: one record per block its
/// memory chunks store themselves.
fn page_hashes_len(m: &Manifest) -> u64 {
    let mut own: Vec<(u64, u32)> =
        memory_chunks(m).filter(|c| c.image == 0).map(|c| (c.offset, c.block_pages)).collect();
    own.sort_unstable();
    own.dedup_by_key(|(offset, _)| *offset);
    own.iter().map(|(_, pages)| RECORD_HEAD as u64 + 16 * *pages as u64).sum()
}

/// The blocks a page hashes blob describes: offset → their pages' hashes
/// (16 bytes each). The blob is checked as untrusted input: a record cut
/// short, of more pages than a block holds, or repeated, is an error.
pub fn parse_page_hashes(blob: &[u8]) -> Result<std::collections::HashMap<u64, &[u8]>, String> {
    let mut out = std::collections::HashMap::new();
    let mut rest = blob;
    while !rest.is_empty() {
        let Some((head, tail)) = rest.split_at_checked(RECORD_HEAD) else { return Err("a record cut short".into()) };
        let offset = u64::from_le_bytes(head[..8].try_into().unwrap());
        let pages = u32::from_le_bytes(head[8..].try_into().unwrap());
        if pages == 0 || pages > super::CHUNK_PAGES {
            return Err(format!("a block of {pages} pages"));
        }
        let Some((hashes, tail)) = tail.split_at_checked(16 * pages as usize) else {
            return Err("a record cut short".into());
        };
        if out.insert(offset, hashes).is_some() {
            return Err(format!("the block at {offset} twice"));
        }
        rest = tail;
    }
    Ok(out)
}

/// The hash of every page `m` puts back into memory, in the order of
/// [`memory_chunks`], from the parsed page hashes of the image itself
/// (`blobs[0]`) and of each of its parents (`blobs[k]`, None where one
/// has none).
pub fn hashes_in_order(
    m: &Manifest,
    blobs: &[Option<std::collections::HashMap<u64, &[u8]>>],
) -> Result<Vec<u128>, String> {
    let mut out = Vec::new();
    for c in memory_chunks(m) {
        let whose = || if c.image == 0 { "the image".to_string() } else { format!("parent image {}", c.image) };
        let Some(Some(table)) = blobs.get(c.image as usize) else {
            return Err(format!("{} has no page hashes", whose()));
        };
        let block = table
            .get(&c.offset)
            .filter(|b| {
                b.len() == 16 * c.block_pages as usize && c.skip as u64 + c.npages as u64 <= c.block_pages as u64
            })
            .ok_or_else(|| format!("the page hashes of {} lack the block at {}", whose(), c.offset))?;
        let pages = &block[16 * c.skip as usize..16 * (c.skip + c.npages) as usize];
        out.extend(pages.chunks_exact(16).map(|h| u128::from_le_bytes(h.try_into().unwrap())));
    }
    Ok(out)
}

/// Every chunk that names a parent lies inside that parent's chunk area.
pub fn check_references(m: &Manifest, parents: &[ParentFile], image: &Path) -> Result<(), CkError> {
    for c in all_chunks(m).filter(|c| c.image > 0) {
        let p = &parents[c.image as usize - 1];
        if c.offset.checked_add(c.clen as u64).is_none_or(|e| e > p.chunks_end) {
            return Err(CkError::bad_image(
                image,
                format!("damaged manifest (pages at {:#x} lie outside {})", c.addr, p.path.display()),
            ));
        }
    }
    Ok(())
}

/// Bytes of page data `m` stores itself, and those it takes from each of
/// its parents (by index into `lineage.parents`).
pub fn own_and_taken(m: &Manifest) -> (u64, Vec<u64>) {
    let mut own = 0;
    let mut taken = vec![0u64; m.lineage.parents.len()];
    for c in all_chunks(m) {
        let b = c.npages as u64 * crate::sys::PAGE_SIZE;
        match c.image {
            0 => own += b,
            k => taken[k as usize - 1] += b,
        }
    }
    (own, taken)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::validate::tests::valid_manifest;

    #[test]
    fn page_hashes_come_from_the_image_that_stores_each_block() {
        let h = |i: u128| i * 0x1_0000_0001;
        // Own block at 4096 of 3 pages (runs of 2 and 1 pages), and a run
        // of pages 1..3 of the parent's block at 8192 (4 pages).
        let mut own = Vec::new();
        push_block_hashes(&mut own, 4096, &[h(1), h(2), h(3)]);
        let mut parent = Vec::new();
        push_block_hashes(&mut parent, 12288, &[h(9)]);
        push_block_hashes(&mut parent, 8192, &[h(5), h(6), h(7), h(8)]);
        let mut m = crate::image::validate::tests::valid_manifest();
        let ps = crate::sys::PAGE_SIZE;
        let chunk = |addr, npages, offset, image, skip, block_pages| ChunkRef {
            addr,
            npages,
            clen: 10,
            offset,
            checksum: 0,
            image,
            skip,
            block_pages,
        };
        let start = m.processes[0].regions[0].start;
        m.processes[0].regions[0].chunks = vec![
            chunk(start, 2, 4096, 0, 0, 3),
            chunk(start + 2 * ps, 2, 8192, 1, 1, 4),
            chunk(start + 4 * ps, 1, 4096, 0, 2, 3),
        ];
        assert_eq!(page_hashes_len(&m), own.len() as u64);
        let tables = [Some(parse_page_hashes(&own).unwrap()), Some(parse_page_hashes(&parent).unwrap())];
        assert_eq!(hashes_in_order(&m, &tables).unwrap(), [h(1), h(2), h(6), h(7), h(3)]);
        // A parent without hashes, a block missing, a run past its block.
        assert!(hashes_in_order(&m, &tables[..1]).is_err());
        assert!(hashes_in_order(&m, &[tables[0].clone(), None]).is_err());
        let mut m2 = m.clone();
        m2.processes[0].regions[0].chunks[1].skip = 3;
        assert!(hashes_in_order(&m2, &tables).is_err());
        m2.processes[0].regions[0].chunks[1] = chunk(start + 2 * ps, 1, 4096 * 9, 1, 0, 1);
        assert!(hashes_in_order(&m2, &tables).is_err());
        // A damaged blob: cut short anywhere, a block twice, no pages, too many.
        for cut in 1..own.len() {
            assert!(parse_page_hashes(&own[..cut]).is_err() || cut % (RECORD_HEAD + 16) == 0, "{cut}");
        }
        assert!(parse_page_hashes(&[own.clone(), own.clone()].concat()).is_err());
        let mut empty = Vec::new();
        push_block_hashes(&mut empty, 0, &[]);
        assert!(parse_page_hashes(&empty).is_err());
        let mut huge = own.clone();
        huge[8..12].copy_from_slice(&(crate::image::CHUNK_PAGES + 1).to_le_bytes());
        assert!(parse_page_hashes(&huge).is_err());
    }

    #[test]
    fn parent_names_and_generations_are_checked() {
        let mut m = valid_manifest();
        let parent =
            ParentRef { name: "sim.7.1.ckimg".into(), id: [1; 16], generation: 0, len: 200, page_hashes: None };
        m.lineage.generation = 1;
        m.lineage.parents.push(parent.clone());
        validate(&m, Path::new("t"), 1 << 20).unwrap();
        for (name, generation, own) in
            [("../sim.7.1.ckimg", 0, 1), ("sim.7.1.ckimg", 1, 1), ("x", 0, 1), ("sim.7.1.ckimg", 0, MAX_CHAIN)]
        {
            let mut m = m.clone();
            m.lineage.parents[0] = ParentRef { name: name.into(), generation, ..parent.clone() };
            m.lineage.generation = own;
            assert!(validate(&m, Path::new("t"), 1 << 20).is_err(), "{name} {generation} {own}");
        }
    }
}
