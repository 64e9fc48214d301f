//! The on-disk form of a `Vec<ChunkRef>` (`#[serde(with = "chunk_list")]`):
//! one byte string holding a table of the distinct blocks the list uses,
//! then its runs, each naming a block by index and its address as the
//! distance from the previous run's end. An incremental image's list has
//! ~100k runs into a few thousand blocks; 44 fixed bytes a run made its
//! manifest megabytes, the writing of which took a tenth of a checkpoint.
//!
//! ```text
//! blocks: varint n, n x (varint image, varint offset, varint clen,
//!                        checksum u64 LE, varint block_pages)
//! runs:   varint n, n x (zigzag varint addr - previous end, varint npages,
//!                        varint block index, varint skip)
//! ```
//!
//! Varints are LEB128; "previous end" starts at 0 and all address
//! arithmetic wraps, so any list round-trips, sorted or not. Decoding
//! trusts nothing: a bad list is a `de::Error`, never a panic or an
//! allocation larger than the bytes justify.
//!
//! Human-readable formats (`--inspect --json`) get the plain list.

use super::manifest::ChunkRef;
use crate::sys::PAGE_SIZE;
use serde::de::{self, Deserialize, Deserializer, Visitor};
use serde::{Serialize, Serializer};
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

/// What identifies a stored block: (image, offset, clen, checksum, block_pages).
type Block = (u32, u64, u32, u64, u32);

/// Smallest encodings of a block and of a run, to bound counts by the bytes left.
const MIN_BLOCK: usize = 4 + 8;
const MIN_RUN: usize = 4;

fn block(c: &ChunkRef) -> Block {
    (c.image, c.offset, c.clen, c.checksum, c.block_pages)
}

fn end(c: &ChunkRef) -> u64 {
    c.addr.wrapping_add((c.npages as u64).wrapping_mul(PAGE_SIZE))
}

fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A hasher for a block's place (image, offset): one multiply, the map is
/// ours (a checkpoint encodes ~100k runs in its critical path; SipHash
/// over the whole block made that milliseconds).
#[derive(Default)]
struct PlaceHasher(u64);

impl Hasher for PlaceHasher {
    fn finish(&self) -> u64 {
        // The map indexes by the low bits, which a multiply leaves
        // depending only on the low bits of its input (offsets are 4 KiB
        // multiples): fold the well-mixed high half down.
        self.0 ^ (self.0 >> 32)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(*b as u64);
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(v as u64);
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(29) ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

pub fn encode(chunks: &[ChunkRef]) -> Vec<u8> {
    // By place; a place whose block differs (never, in an image ckrun
    // made) gets a block of its own each time.
    let mut index: HashMap<(u32, u64), u32, BuildHasherDefault<PlaceHasher>> = HashMap::default();
    let mut blocks: Vec<Block> = Vec::new();
    let mut runs = Vec::with_capacity(chunks.len() * 6);
    let mut prev = 0u64;
    for c in chunks {
        let i = match index.get(&(c.image, c.offset)) {
            Some(&i) if blocks[i as usize] == block(c) => i,
            known => {
                blocks.push(block(c));
                let i = blocks.len() as u32 - 1;
                if known.is_none() {
                    index.insert((c.image, c.offset), i);
                }
                i
            }
        };
        let delta = c.addr.wrapping_sub(prev) as i64;
        put(&mut runs, ((delta << 1) ^ (delta >> 63)) as u64);
        put(&mut runs, c.npages as u64);
        put(&mut runs, i as u64);
        put(&mut runs, c.skip as u64);
        prev = end(c);
    }
    let mut out = Vec::with_capacity(blocks.len() * 20 + runs.len() + 20);
    put(&mut out, blocks.len() as u64);
    for (image, offset, clen, checksum, block_pages) in blocks {
        put(&mut out, image as u64);
        put(&mut out, offset);
        put(&mut out, clen as u64);
        out.extend_from_slice(&checksum.to_le_bytes());
        put(&mut out, block_pages as u64);
    }
    put(&mut out, chunks.len() as u64);
    out.extend_from_slice(&runs);
    out
}

/// A cursor over the encoded bytes; every read fails cleanly at their end.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn varint(&mut self, what: &str) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let Some((&b, rest)) = self.0.split_first() else {
                return Err(format!("chunk list cut short in {what}"));
            };
            self.0 = rest;
            let bits = (b & 0x7f) as u64;
            // The 10th byte holds bit 63 only.
            if shift == 63 && bits > 1 {
                return Err(format!("chunk list: {what} overflows 64 bits"));
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!("chunk list: {what} is a varint longer than 10 bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let v = self.varint(what)?;
        u32::try_from(v).map_err(|_| format!("chunk list: {what} {v} does not fit 32 bits"))
    }

    /// A count of items at least `min` bytes each, which the rest must hold.
    fn count(&mut self, what: &str, min: usize) -> Result<usize, String> {
        let n = self.varint(what)?;
        match usize::try_from(n) {
            Ok(n) if n <= self.0.len() / min => Ok(n),
            _ => Err(format!("chunk list claims {n} {what} in {} bytes", self.0.len())),
        }
    }

    fn u64_le(&mut self, what: &str) -> Result<u64, String> {
        let (b, rest) = self.0.split_first_chunk::<8>().ok_or_else(|| format!("chunk list cut short in {what}"))?;
        self.0 = rest;
        Ok(u64::from_le_bytes(*b))
    }
}

pub fn decode(bytes: &[u8]) -> Result<Vec<ChunkRef>, String> {
    let mut inp = Input(bytes);
    let nblocks = inp.count("blocks", MIN_BLOCK)?;
    let mut blocks = Vec::with_capacity(nblocks);
    for _ in 0..nblocks {
        let image = inp.u32("block image")?;
        let offset = inp.varint("block offset")?;
        let clen = inp.u32("block clen")?;
        let checksum = inp.u64_le("block checksum")?;
        blocks.push((image, offset, clen, checksum, inp.u32("block_pages")?));
    }
    let nruns = inp.count("runs", MIN_RUN)?;
    let mut chunks = Vec::with_capacity(nruns);
    let mut prev = 0u64;
    for r in 0..nruns {
        let zz = inp.varint("run address")?;
        let delta = (zz >> 1) as i64 ^ -((zz & 1) as i64);
        let addr = prev.wrapping_add(delta as u64);
        let npages = inp.u32("run npages")?;
        let b = inp.varint("run block index")?;
        let &(image, offset, clen, checksum, block_pages) = usize::try_from(b)
            .ok()
            .and_then(|b| blocks.get(b))
            .ok_or_else(|| format!("chunk list: run {r} names block {b} of {nblocks}"))?;
        let skip = inp.u32("run skip")?;
        let c = ChunkRef { addr, npages, clen, offset, checksum, image, skip, block_pages };
        prev = end(&c);
        chunks.push(c);
    }
    if !inp.0.is_empty() {
        return Err(format!("chunk list followed by {} stray bytes", inp.0.len()));
    }
    Ok(chunks)
}

pub fn serialize<S: Serializer>(chunks: &[ChunkRef], s: S) -> Result<S::Ok, S::Error> {
    if s.is_human_readable() {
        return chunks.serialize(s);
    }
    s.serialize_bytes(&encode(chunks))
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ChunkRef>, D::Error> {
    struct Bytes;
    impl Visitor<'_> for Bytes {
        type Value = Vec<ChunkRef>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an encoded chunk list (bytes)")
        }
        fn visit_bytes<E: de::Error>(self, b: &[u8]) -> Result<Self::Value, E> {
            decode(b).map_err(E::custom)
        }
    }
    if d.is_human_readable() {
        return Vec::<ChunkRef>::deserialize(d);
    }
    d.deserialize_bytes(Bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct List(#[serde(with = "super")] Vec<ChunkRef>);

    fn round_trip(chunks: Vec<ChunkRef>) -> usize {
        let bytes = bincode::serialize(&List(chunks.clone())).unwrap();
        assert_eq!(bincode::deserialize::<List>(&bytes).unwrap().0, chunks);
        let json = serde_json::to_string(&List(chunks.clone())).unwrap();
        assert_eq!(serde_json::from_str::<List>(&json).unwrap().0, chunks);
        bytes.len()
    }

    fn run(addr: u64, npages: u32, block: u64, skip: u32) -> ChunkRef {
        let image = (block % 3) as u32;
        ChunkRef { addr, npages, clen: 9000, offset: 4096 * block, checksum: block * 31, image, skip, block_pages: 256 }
    }

    /// `n` runs over ~n/67 blocks of 256 pages, with holes between runs
    /// (the pages a later image rewrote). Deterministic.
    fn incremental(n: usize) -> Vec<ChunkRef> {
        let (mut x, mut out, mut addr, mut block) = (0x9e37_79b9_7f4a_7c15u64, Vec::new(), 0x7f00_0000_0000, 0);
        while out.len() < n {
            let mut skip = 0;
            while skip < 256 && out.len() < n {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let npages = (1 + x % 7).min(256 - skip as u64) as u32;
                let hole = (x >> 8) % 3;
                out.push(run(addr + hole * PAGE_SIZE, npages, block, skip));
                addr += (hole + npages as u64) * PAGE_SIZE;
                skip += npages;
            }
            block += 1;
        }
        out
    }

    #[test]
    fn lists_round_trip() {
        round_trip(vec![]);
        round_trip(
            (0..300)
                .map(|i| ChunkRef::own(0x40_0000 + i * 256 * PAGE_SIZE, 256, 5000 + i as u32, 64 + i * 6000, i))
                .collect(),
        );
        round_trip(incremental(5000));
        let own = ChunkRef::own(u64::MAX, u32::MAX, u32::MAX, u64::MAX, u64::MAX);
        let max = ChunkRef { image: u32::MAX, skip: u32::MAX, ..own };
        round_trip(vec![max, run(0, 1, 0, 0), max, run(1 << 63, 0, 7, 3), run(5 * PAGE_SIZE, 2, 0, 1), max]);
    }

    #[test]
    fn incremental_list_is_small() {
        let chunks = incremental(100_000);
        let blocks = chunks.iter().map(block).collect::<std::collections::HashSet<_>>().len();
        assert!((1400..1600).contains(&blocks), "{blocks} blocks");
        let fixint = 8 + 44 * chunks.len();
        let size = round_trip(chunks);
        eprintln!("100k runs, {blocks} blocks: {size} bytes, {:.3} of fixint {fixint}", size as f64 / fixint as f64);
        assert!(size * 4 < fixint, "{size} bytes, fixint {fixint}");
    }

    fn refused(bytes: &[u8]) -> String {
        let err = bincode::deserialize::<List>(bytes).unwrap_err().to_string();
        assert!(!err.is_empty());
        err
    }

    /// A bincode byte string (u64 length, then the bytes).
    fn framed(b: &[u8]) -> Vec<u8> {
        [&(b.len() as u64).to_le_bytes()[..], b].concat()
    }

    #[test]
    fn hostile_lists_are_errors() {
        let good = encode(&incremental(40));
        assert_eq!(decode(&good).unwrap(), incremental(40));
        for n in 0..good.len() {
            assert!(decode(&good[..n]).is_err(), "cut at {n}");
            refused(&framed(&good[..n]));
            refused(&bincode::serialize(&List(incremental(40))).unwrap()[..n + 8]);
        }
        assert!(refused(&framed(&[&good[..], &[0]].concat())).contains("stray"));
        // One block, one run naming block 1.
        let mut b = vec![1, 0, 0, 0];
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&[1, 1, 0, 1, 1, 0]);
        assert!(refused(&framed(&b)).contains("names block 1 of 1"));
        let at = b.len() - 2;
        b[at] = 0;
        assert_eq!(decode(&b).unwrap().len(), 1);
        assert!(refused(&framed(&[0, 1, 0, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0, 0, 0]))
            .contains("longer than 10"));
        assert!(decode(&[0, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0])
            .unwrap_err()
            .contains("overflows"));
        assert!(decode(&[0, 1, 0, 0x80, 0x80, 0x80, 0x80, 0x10, 0, 0]).unwrap_err().contains("npages"));
        assert!(decode(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0, 0])
            .unwrap_err()
            .contains("claims"));
        assert!(decode(&[0, 0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0]).unwrap_err().contains("claims"));
        // bincode itself bounds the byte string by the input.
        refused(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0]);
    }
}
