//! Content dedup: what a new image may take from the image before it.
//!
//! The base is the job's previous image (the last one this coordinator
//! wrote, or the one it restarted from): its page hashes and its parents'
//! (`lineage::Lineage::page_hashes`, each image's of the pages it stores)
//! say, for every page it puts back, the page's xxh3-128 and the stored
//! block holding it, in the base itself or in one of its parents. A page of the new checkpoint whose hash is found
//! is not stored again: the new image refers to that block. Only blocks of
//! images fewer than `MAX_CHAIN` generations older than the new image are
//! offered, so chains stay bounded (see `image::lineage`).
//!
//! The index holds 24 bytes per page of the base (about 6 MiB per GiB of
//! memory). The coordinator keeps the index of the image it wrote last
//! ([`Previous::Kept`], made from what it has in memory once the image is
//! durable) for the next checkpoint, instead of reading that image's
//! hashes back (20-30 ms per GiB, before the program is stopped); after a
//! restart, or when an image the kept index refers to is no longer there
//! as it was, the index is built from the image ([`Base::load`]).

use crate::image::lineage::{self, ParentRef, MAX_CHAIN};
use crate::image::manifest::{ChunkRef, Manifest, ProcessImage};
use crate::image::ImageReader;
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Images before the chain limit over which the pages of an old image
/// still in use are stored again (see [`Base::store_again`]).
pub const STORE_AGAIN_OVER: u32 = 4;

/// What the next image is deduplicated against: the job's previous image.
pub enum Previous {
    /// Its file (the image a run restarted from): the index is read from it.
    Image(PathBuf),
    /// The index of the image this coordinator wrote last.
    Kept(Box<Base>),
}

impl Previous {
    /// The base for an image written into `dir`: the kept index while
    /// every image it refers to is still in `dir` as it was, else the one
    /// read from the previous image's file.
    pub fn base(&self, dir: &Path) -> Result<Base> {
        match self {
            Previous::Image(path) => Base::load(path, dir),
            Previous::Kept(b) if b.all_present(dir) => Ok((**b).clone()),
            Previous::Kept(b) => Base::load(&dir.join(&b.images[0].name), dir),
        }
    }
}

/// The hash of one page, as stored in the page hashes.
pub fn page_hash(page: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(page)
}

/// Where a page is stored: a block and the page's index in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageLoc {
    pub block: u32,
    pub page: u32,
}

/// A page the base restores: its address, hash, and block (None when the
/// image holding it is beyond the chain's reach).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BasePage {
    pub addr: u64,
    pub hash: u128,
    pub loc: Option<PageLoc>,
}

/// A stored block of an image the new one may refer to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    /// Index into [`Base::images`].
    pub image: u32,
    pub offset: u64,
    pub clen: u32,
    pub checksum: u64,
    pub pages: u32,
}

/// The keys are hashes already: the map uses their low bits as they are.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes.iter().take(8) {
            self.0 = self.0 << 8 | *b as u64;
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

#[derive(Clone)]
pub struct Base {
    /// The images blocks may be taken from: the base first, then its
    /// parents that are recent enough.
    pub images: Vec<ParentRef>,
    pub blocks: Vec<Block>,
    /// Shared: the coordinator's kept base is handed to each checkpoint
    /// without copying it (tens of ms per GiB).
    index: std::sync::Arc<HashMap<u128, PageLoc, BuildHasherDefault<PassThrough>>>,
    /// The generation of an image made on this base.
    pub generation: u32,
    /// Every page the base restores into memory, by process and address:
    /// its hash and, if the base offers its block, where (for the pages
    /// the dirty tracker knows unchanged: no lookup by hash).
    pages: std::sync::Arc<HashMap<i32, Vec<BasePage>>>,
    /// Whether every page the base restores is offered (its image is
    /// within the chain's reach) and none is due to be stored again
    /// ([`Base::store_again`]): then a page the dirty tracker vouches for
    /// is never read, which `copyout` relies on.
    pub copy_out_ok: bool,
}

impl Base {
    /// The base made of image `path` (which must lie in `dir`, where the
    /// new image goes: images name their parents by file name). Fails when
    /// it, or an image it takes pages from, cannot be used: the new image
    /// is then written whole.
    pub fn load(path: &Path, dir: &Path) -> Result<Base> {
        let same_dir = match (path.parent().map(std::fs::canonicalize), std::fs::canonicalize(dir)) {
            (Some(Ok(a)), Ok(b)) => a == b,
            _ => false,
        };
        if !same_dir {
            bail!("{} is not in the image directory {}", path.display(), dir.display());
        }
        let img = ImageReader::open(path)?;
        // An image takes pages only from files of its own owner (the
        // reader refuses others): root continuing a user's image writes
        // its first image whole.
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        if img.owner != me {
            bail!(
                "{} is owned by uid {}, and images written by uid {me} take no pages from it",
                path.display(),
                img.owner
            );
        }
        let m = &img.manifest;
        let Some(hashes) = img.page_hashes()? else {
            bail!("{} or an image it takes pages from has no page hashes", path.display())
        };
        let name = path.file_name().context("an image path")?.to_string_lossy().into_owned();
        let own = ParentRef {
            name,
            id: m.lineage.id,
            generation: m.lineage.generation,
            len: img.len,
            page_hashes: m.lineage.page_hashes,
        };
        Self::of_image(m, &hashes, own)
    }

    /// The base made of the image `own` whose manifest is `m`; `hashes`:
    /// of every page it puts back into memory, in the order of
    /// `lineage::memory_chunks`.
    pub fn of_image(m: &Manifest, hashes: &[u128], own: ParentRef) -> Result<Base> {
        let generation = m.lineage.generation + 1;
        let images: Vec<ParentRef> = std::iter::once(own).chain(m.lineage.parents.iter().cloned()).collect();
        let usable: Vec<bool> = images.iter().map(|p| p.generation + MAX_CHAIN > generation).collect();
        let mut blocks = Vec::new();
        let mut block_of: HashMap<(u32, u64), u32> = HashMap::new();
        let mut index = HashMap::with_capacity_and_hasher(hashes.len(), Default::default());
        let mut words = hashes.iter().copied();
        let mut pages: HashMap<i32, Vec<BasePage>> = HashMap::new();
        // The runs of one block mostly follow each other (an incremental
        // image takes an old block's pages around the few rewritten ones):
        // the last block looked up is tried first.
        let mut last: Option<((u32, u64), u32)> = None;
        // In the order of `lineage::memory_chunks`, which the hashes follow.
        for p in &m.processes {
            let chunks = p.regions.iter().flat_map(|r| r.chunks.iter());
            let mut of_process: Vec<BasePage> = Vec::with_capacity(chunks.clone().map(|c| c.npages as usize).sum());
            for c in chunks {
                let image = c.image; // 0: the base itself, k: its k-th parent, as in `images`
                let key = (image, c.offset);
                let b = match last {
                    Some((k, b)) if k == key => b,
                    _ => {
                        let b = *block_of.entry(key).or_insert_with(|| {
                            blocks.push(Block {
                                image,
                                offset: c.offset,
                                clen: c.clen,
                                checksum: c.checksum,
                                pages: c.block_pages,
                            });
                            blocks.len() as u32 - 1
                        });
                        last = Some((key, b));
                        b
                    }
                };
                for k in 0..c.npages {
                    let h = words.next().context("page hashes shorter than the pages")?;
                    let loc = usable[image as usize].then_some(PageLoc { block: b, page: c.skip + k });
                    of_process.push(BasePage { addr: c.addr + k as u64 * crate::sys::PAGE_SIZE, hash: h, loc });
                    if let Some(loc) = loc {
                        index.entry(h).or_insert(loc);
                    }
                }
            }
            pages.entry(p.pid).or_default().append(&mut of_process);
        }
        for v in pages.values_mut() {
            if !v.is_sorted_by_key(|p| p.addr) {
                v.sort_unstable_by_key(|p| p.addr);
            }
        }
        let copy_out_ok = blocks.iter().all(|b| {
            let age = generation.saturating_sub(images[b.image as usize].generation);
            age + STORE_AGAIN_OVER < MAX_CHAIN
        });
        let (index, pages) = (std::sync::Arc::new(index), std::sync::Arc::new(pages));
        Ok(Base { images, blocks, index, generation, pages, copy_out_ok })
    }

    /// Whether every image the base offers blocks of is still in `dir`,
    /// under its image or page file name, as a restart would accept it
    /// (`lineage::check_parent`: ours, complete, its id and length): an
    /// image removed or replaced since would make the new image unusable.
    fn all_present(&self, dir: &Path) -> bool {
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        self.images.iter().all(|p| {
            [dir.join(&p.name), dir.join(lineage::pages_name(&p.name))].into_iter().any(|path| {
                let open = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
                    .open(&path);
                open.is_ok_and(|f| lineage::check_parent(f, path.clone(), p, me, &path).is_ok())
            })
        })
    }

    /// The id of the image the base is (the one a new image follows).
    pub fn id(&self) -> [u8; 16] {
        self.images[0].id
    }

    /// The pages the base restores into process `pid`'s memory, by address.
    pub fn pages_of(&self, pid: i32) -> &[BasePage] {
        self.pages.get(&pid).map_or(&[], |v| v.as_slice())
    }

    pub fn find(&self, hash: u128) -> Option<PageLoc> {
        self.index.get(&hash).copied()
    }

    /// Whether the page at `addr`, found at `loc`, is stored again although
    /// the base holds it: its block is in an image about to fall out of
    /// the chain's reach. Each of the last [`STORE_AGAIN_OVER`] images that
    /// may take pages from an image stores a further share of them again
    /// (by address, 1 MiB at a time), so that the pages still held only by
    /// it cost a few larger images, not one image as large as a full one
    /// when it leaves the chain.
    pub fn store_again(&self, loc: PageLoc, addr: u64) -> bool {
        let Some(b) = self.blocks.get(loc.block as usize) else { return false };
        let age = self.generation - self.images[b.image as usize].generation;
        let Some(step) = (age + STORE_AGAIN_OVER).checked_sub(MAX_CHAIN) else { return false };
        ((addr >> 20) % STORE_AGAIN_OVER as u64) as u32 <= step
    }

    /// A run of `npages` pages at `addr` taken from `block`, from page
    /// `skip` on. Its `image` is the base image's index + 1, until
    /// [`Base::parents_of`] renumbers it.
    pub fn run(&self, block: u32, addr: u64, skip: u32, npages: u32) -> ChunkRef {
        let b = &self.blocks[block as usize];
        ChunkRef {
            addr,
            npages,
            clen: b.clen,
            offset: b.offset,
            checksum: b.checksum,
            image: b.image + 1,
            skip,
            block_pages: b.pages,
        }
    }

    /// The parents of an image whose runs are `chunks` (as [`Base::run`]
    /// made them): the base images they use, in base order; each run's
    /// `image` is renumbered to its place in that list.
    pub fn parents_of<'a>(&self, chunks: impl Iterator<Item = &'a mut ChunkRef>) -> Vec<ParentRef> {
        let mut chunks: Vec<&mut ChunkRef> = chunks.filter(|c| c.image > 0).collect();
        let mut used = vec![false; self.images.len()];
        for c in &chunks {
            used[c.image as usize - 1] = true;
        }
        let mut slot = vec![0u32; self.images.len()];
        let mut parents = Vec::new();
        for (i, p) in self.images.iter().enumerate().filter(|(i, _)| used[*i]) {
            parents.push(p.clone());
            slot[i] = parents.len() as u32;
        }
        for c in chunks.iter_mut() {
            c.image = slot[c.image as usize - 1];
        }
        parents
    }
}

/// The page hashes of one process's saved memory.
#[derive(Default)]
pub struct PageHashes {
    /// Of every page read (own or taken), by address, in no order; the
    /// pages the dirty tracker vouched for are not read, and have the
    /// base's hash. For the next image's base, from memory.
    pub pages: Vec<(u64, u128)>,
    /// The records of the blocks stored for it
    /// (`lineage::push_block_hashes`): its share of the image's blob.
    pub own_blocks: Vec<u8>,
}

/// The page hashes blob of an image: every process's own blocks' records.
pub fn hashes_blob(per_process: &[PageHashes]) -> Vec<u8> {
    per_process.iter().flat_map(|p| p.own_blocks.iter().copied()).collect()
}

/// The hash of every page of an image whose processes are `images` (their
/// `per_process` hashes in the same order), made on `base`, in manifest
/// order, for [`Base::of_image`]: a page read has the hash it was read
/// with, a page the tracker vouched for the base's of that address. Done
/// once the image is durable, so that the checkpoint itself handles only
/// the pages it reads. None if a page has neither (never, unless the
/// image and its hashes disagree).
pub fn hashes_in_order(
    images: &[ProcessImage],
    per_process: &mut [PageHashes],
    base: Option<&Base>,
) -> Option<Vec<u128>> {
    let ps = crate::sys::PAGE_SIZE;
    let mut out = Vec::new();
    for (p, h) in images.iter().zip(per_process.iter_mut()) {
        h.pages.sort_unstable_by_key(|(a, _)| *a);
        let (read, old) = (&h.pages, base.map_or(&[][..], |b| b.pages_of(p.pid)));
        let (mut i, mut j) = (0, 0);
        // Both lists and the chunks ascend by address: one merge.
        for c in p.regions.iter().flat_map(|r| r.chunks.iter()) {
            for addr in (0..c.npages as u64).map(|k| c.addr + k * ps) {
                while read.get(i).is_some_and(|(a, _)| *a < addr) {
                    i += 1;
                }
                if let Some((_, hash)) = read.get(i).filter(|(a, _)| *a == addr) {
                    out.push(*hash);
                    continue;
                }
                while old.get(j).is_some_and(|b| b.addr < addr) {
                    j += 1;
                }
                out.push(old.get(j).filter(|b| b.addr == addr)?.hash);
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_base_has_the_hash_of_every_page_read_or_vouched_for() {
        let ps = crate::sys::PAGE_SIZE;
        let mut m = crate::image::validate::tests::valid_manifest();
        let (pid, start) = (m.processes[0].pid, m.processes[0].regions[0].start);
        // Pages 0-3 restored: 0 and 2 read now, 1 and 3 vouched for (the
        // base's hash of that address).
        m.processes[0].regions[0].chunks =
            vec![ChunkRef::own(start, 2, 1, 4096, 0), ChunkRef::own(start + 2 * ps, 2, 1, 8192, 0)];
        let at = |k: u64| start + k * ps;
        let old = |k: u64, hash| BasePage { addr: at(k), hash, loc: None };
        let base = |pages: Vec<BasePage>| Base {
            images: vec![],
            blocks: vec![],
            index: Default::default(),
            generation: 1,
            pages: std::sync::Arc::new([(pid, pages)].into_iter().collect()),
            copy_out_ok: true,
        };
        let read = || PageHashes { pages: vec![(at(2), 20), (at(0), 10)], own_blocks: vec![] };
        let b = base(vec![old(0, 1), old(1, 11), old(3, 31), old(7, 71)]);
        assert_eq!(hashes_in_order(&m.processes, &mut [read()], Some(&b)), Some(vec![10, 11, 20, 31]));
        // A page neither read nor in the base: no base made of it.
        let b = base(vec![old(1, 11)]);
        assert_eq!(hashes_in_order(&m.processes, &mut [read()], Some(&b)), None);
        assert_eq!(hashes_in_order(&m.processes, &mut [read()], None), None);
    }

    #[test]
    fn an_old_images_pages_are_stored_again_over_the_last_images_of_its_reach() {
        let image = |generation| ParentRef {
            name: format!("x.1.{generation}.ckimg"),
            id: [1; 16],
            generation,
            len: 1,
            page_hashes: None,
        };
        let block = Block { image: 1, offset: 4096, clen: 10, checksum: 0, pages: 1 };
        let loc = PageLoc { block: 0, page: 0 };
        let share = |generation: u32| -> usize {
            let base = Base {
                images: vec![image(generation - 1), image(0)],
                blocks: vec![block],
                index: Default::default(),
                generation,
                pages: Default::default(),
                copy_out_ok: false,
            };
            (0..64u64).filter(|mib| base.store_again(loc, mib << 20)).count()
        };
        // Young: taken; the last four generations that may take from it
        // store a quarter more each, the last one all of it.
        let shares: Vec<usize> = (1..MAX_CHAIN).map(share).collect();
        assert_eq!(shares[..MAX_CHAIN as usize - 5], vec![0; MAX_CHAIN as usize - 5]);
        assert_eq!(shares[MAX_CHAIN as usize - 5..], [16, 32, 48, 64]);
    }
}
