//! The image file: one per checkpoint of the whole tree.
//!
//! ```text
//! +--------------------+ 0
//! | header (64 bytes)  |  magic "CKRUNIMG", format version, image id
//! +--------------------+ 64
//! | page chunks        |  each an lz4 block of consecutive pages,
//! |   ...              |  checksummed (xxh3-64) in the manifest
//! | page hashes        |  xxh3-128 of every page it stores (for the next image)
//! +--------------------+ manifest_offset
//! | manifest (bincode) |  processes, regions -> chunks, fds, threads
//! |                    |  (chunk lists: a block table and delta-encoded runs)
//! +--------------------+
//! | trailer (64 bytes) |  magic "CKRUNEND", manifest offset/length/checksum,
//! +--------------------+  file length, trailer checksum
//! ```
//!
//! Chunks are written as the compressing threads finish them (any order);
//! the manifest, written last, says where each is. A file cut short has no
//! valid trailer; a flipped bit fails a checksum. Either is reported before
//! anything is restored. A chunk may refer to a block of an earlier
//! image of the job instead (incremental images, see [`lineage`]): the
//! reference is per chunk.

mod chunk_list;
pub mod flatten;
pub mod inspect;
pub mod lineage;
pub mod manifest;
mod reader;
pub mod seal;
pub mod validate;
pub mod writer;

pub use reader::ImageReader;
pub use writer::ImageWriter;

pub const MAGIC: &[u8; 8] = b"CKRUNIMG";
pub const TRAILER_MAGIC: &[u8; 8] = b"CKRUNEND";
pub const FORMAT_VERSION: u32 = 8;
pub const HEADER_LEN: u64 = 64;
pub const TRAILER_LEN: u64 = 64;
/// Largest run of pages compressed as one chunk (1 MiB): small enough to
/// spread over all cores, large enough for lz4 to find its matches. A
/// reader never decompresses more than this at once.
pub const CHUNK_PAGES: u32 = 256;
/// Largest manifest a reader accepts (a tree of thousands of processes
/// with a 1 TiB of memory each stays far below it), so that a crafted
/// length cannot make it allocate without bound.
pub const MAX_MANIFEST: u64 = 256 << 20;

pub fn checksum(b: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(b)
}

fn header_bytes() -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h
}

struct Trailer {
    manifest_offset: u64,
    manifest_len: u64,
    manifest_checksum: u64,
    file_len: u64,
    /// Keyed seal over the manifest and the trailer's first 40 bytes
    /// (`seal`), all zero when the image is not sealed.
    seal: Option<[u8; 16]>,
}

impl Trailer {
    /// The first 40 bytes (magic and the four words), which the trailer's
    /// checksum and the seal cover.
    fn head(&self) -> [u8; 40] {
        let mut t = [0u8; 40];
        t[..8].copy_from_slice(TRAILER_MAGIC);
        for (i, v) in
            [self.manifest_offset, self.manifest_len, self.manifest_checksum, self.file_len].iter().enumerate()
        {
            t[8 + 8 * i..16 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        t
    }

    fn to_bytes(&self) -> [u8; TRAILER_LEN as usize] {
        let mut t = [0u8; TRAILER_LEN as usize];
        t[..40].copy_from_slice(&self.head());
        let c = checksum(&t[..40]);
        t[40..48].copy_from_slice(&c.to_le_bytes());
        if let Some(s) = self.seal {
            t[48..64].copy_from_slice(&s);
        }
        t
    }

    fn parse(t: &[u8]) -> Option<Trailer> {
        if t.len() != TRAILER_LEN as usize || &t[..8] != TRAILER_MAGIC {
            return None;
        }
        let word = |i: usize| u64::from_le_bytes(t[8 + 8 * i..16 + 8 * i].try_into().unwrap());
        if word(4) != checksum(&t[..40]) {
            return None;
        }
        let seal: [u8; 16] = t[48..64].try_into().unwrap();
        Some(Trailer {
            manifest_offset: word(0),
            manifest_len: word(1),
            manifest_checksum: word(2),
            file_len: word(3),
            seal: (seal != [0; 16]).then_some(seal),
        })
    }
}
