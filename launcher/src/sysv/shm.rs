//! SysV shared memory segments of the job (`shmget`/`shmat`): capture →
//! image → restore side by side.
//!
//! A segment is the job's when a process of the tree has it attached
//! (`/SYSV%08x (deleted)` in /proc/PID/maps, whose inode number is the
//! segment's ID), or attached or detached it last (`shm_lpid`), or made
//! it and nobody attached it since. Saved once per segment, while the
//! tree is stopped: key, ID, owner, mode, size, whether it was marked
//! destroyed (IPC_RMID while attached), and its content (ckrun attaches
//! it read-only for the copy: `shm_lpid` then names ckrun, and holes are
//! read as zero pages, which the image leaves out). Each process's
//! attachments are regions of its memory (`RegionKind::Sysv`), with the
//! offset into the segment and SHM_RDONLY.
//!
//! At restart, before any restore process maps memory ([`place`]), a
//! segment still there with its ID (same key, same size) gets the
//! checkpoint's content in place (what the killed run wrote after the
//! checkpoint is dropped); one that is gone (a reboot; a destroyed
//! segment always is, once its last process was killed) is made again
//! with its ID (root: /proc/sys/kernel/shm_next_id). Each restore process
//! attaches it where its memory is staged, and the restorer moves the
//! attachment into place with the rest of its memory, so that every
//! process of the tree has it attached (`shm_nattch` as before) before
//! any runs. A segment that was marked destroyed is marked again once all
//! of them have it ([`commit`]). Checked before anything runs
//! ([`super::check`]): the ID is free or still the job's segment, its key
//! is not another segment's now, the image's owner could own it.
//!
//! A destroyed segment nobody can find any more except by an ID it keeps:
//! where its ID cannot be had (not root, or taken), it comes back with
//! another one, said on stderr. Huge-page segments (SHM_HUGETLB) are
//! refused at the checkpoint, by name.

use super::Owner;
use crate::error::CkError;
use crate::image::manifest::ChunkRef;
use crate::image::{ImageReader, ImageWriter, CHUNK_PAGES};
use crate::restore::kernel::Kernel;
use crate::sys::mem::is_zero_page;
use crate::sys::PAGE_SIZE;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// `shm_perm.mode` bit of a segment marked destroyed (IPC_RMID while
/// attached): it goes when its last attachment does.
pub const SHM_DEST: u32 = 0o1000;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Segment {
    pub id: i32,
    /// IPC_PRIVATE (0) once destroyed.
    pub key: i32,
    pub owner: Owner,
    /// `shm_segsz`, in bytes (its mappings are rounded up to pages).
    pub size: u64,
    pub destroyed: bool,
    /// Content in pieces of up to `CHUNK_PAGES` pages; `ChunkRef::addr`
    /// is the offset in the segment. Zero pages are left out.
    pub chunks: Vec<ChunkRef>,
}

impl Segment {
    pub fn describe(&self) -> String {
        let dest = if self.destroyed { ", marked destroyed" } else { "" };
        format!("SysV shared memory segment {} (key {:#x}, {} bytes{dest})", self.id, self.key, self.size)
    }

    /// Bytes its mappings cover.
    pub fn mapped_len(&self) -> u64 {
        self.size.div_ceil(PAGE_SIZE) * PAGE_SIZE
    }
}

/// Whether a /proc/PID/maps path is an attachment of a SysV segment.
pub fn is_segment_mapping(path: &str) -> bool {
    path.starts_with("/SYSV") && path.ends_with(" (deleted)")
}

/// The IDs of the segments process `pid` has attached.
fn attached(pid: i32) -> Vec<i32> {
    let maps = crate::sys::procfs::maps(pid).unwrap_or_default();
    maps.iter().filter(|m| m.shared && is_segment_mapping(&m.path)).map(|m| m.inode as i32).collect()
}

/// The job's segments (`pids`: the tree's processes, stopped), with
/// their content, written to `out`.
pub fn capture(pids: &[i32], out: &ImageWriter) -> Result<Vec<Segment>> {
    let attached: HashSet<i32> = pids.iter().flat_map(|&p| attached(p)).collect();
    // ckrun's own copy at the previous checkpoint (or its writing at a
    // restart) made it the last to attach a segment nobody has attached.
    let me = std::process::id() as i64;
    let mut out_segments = Vec::new();
    // key shmid perms size cpid lpid nattch uid gid cuid cgid ...
    for row in super::table("shm") {
        let [_, id, _, _, cpid, lpid, ..] = row[..] else { continue };
        let in_tree = |p: i64| pids.contains(&(p as i32));
        let ours = attached.contains(&(id as i32)) || in_tree(lpid) || lpid == me || (lpid == 0 && in_tree(cpid));
        if ours {
            out_segments.push(save(id as i32, out)?);
        }
    }
    Ok(out_segments)
}

/// Reads segment `id` whole (attached read-only for the copy).
fn save(id: i32, out: &ImageWriter) -> Result<Segment> {
    let mut k = crate::restore::kernel::Linux::default();
    let st = k.shm_stat(id).map_err(|e| anyhow::anyhow!("reading SysV shared memory segment {id}: {e}"))?;
    let owner = Owner { uid: st.uid, gid: st.gid, mode: st.mode & 0o777 };
    let mut seg = Segment { id, key: st.key, owner, size: st.size, destroyed: st.mode & SHM_DEST != 0, chunks: vec![] };
    // SAFETY: attaches read-only where the kernel finds room.
    let at = unsafe { libc::shmat(id, std::ptr::null(), libc::SHM_RDONLY) };
    if at as isize == -1 {
        bail!("{}: ckrun cannot read it: {}", seg.describe(), std::io::Error::last_os_error());
    }
    let len = seg.mapped_len() as usize;
    let r = (|| -> Result<()> {
        if kernel_page_size(at as u64) != PAGE_SIZE {
            bail!("{} is made of huge pages (SHM_HUGETLB): ckrun cannot restore it", seg.describe());
        }
        let piece = CHUNK_PAGES as usize * PAGE_SIZE as usize;
        let mut buf = vec![0u8; piece];
        let mut off = 0;
        while off < len {
            let n = piece.min(len - off);
            // SAFETY: off..off + n lies in the attachment, readable; the
            // job's processes, which could write it, are stopped.
            unsafe { std::ptr::copy_nonoverlapping((at as *const u8).add(off), buf.as_mut_ptr(), n) };
            if !buf[..n].chunks(PAGE_SIZE as usize).all(is_zero_page) {
                let data = lz4_flex::block::compress(&buf[..n]);
                let (offset, checksum) = out.append_chunk(&data)?;
                let npages = (n / PAGE_SIZE as usize) as u32;
                seg.chunks.push(ChunkRef::own(off as u64, npages, data.len() as u32, offset, checksum));
            }
            off += n;
        }
        Ok(())
    })();
    // SAFETY: detaches the attachment made above.
    unsafe { libc::shmdt(at) };
    r.map(|_| seg)
}

/// KernelPageSize of ckrun's own mapping at `at` (huge-page segments
/// show 2048 kB), from /proc/self/smaps.
fn kernel_page_size(at: u64) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let head = format!("{at:x}-");
    let Some(start) = smaps.find(&format!("\n{head}")).map(|i| i + 1).or(smaps.starts_with(&head).then_some(0)) else {
        return PAGE_SIZE;
    };
    smaps[start..]
        .lines()
        .find_map(|l| l.strip_prefix("KernelPageSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(PAGE_SIZE, |kb| kb * 1024)
}

/// What a restart finds of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// Still there with its ID, key and size: given its content in place.
    InPlace,
    /// Nothing has its ID: made again.
    Gone,
    /// Another segment has its ID now.
    Taken,
}

pub fn find(k: &mut impl Kernel, s: &Segment) -> Found {
    match k.shm_stat(s.id) {
        Err(_) => Found::Gone,
        // Destroyed, its key is IPC_PRIVATE: only the size tells.
        Ok(st) if st.size == s.size && (st.key == s.key || st.mode & SHM_DEST != 0 && s.destroyed) => Found::InPlace,
        Ok(_) => Found::Taken,
    }
}

/// Before anything of the restart happens: whether `s` can come back.
/// `root`: ckrun may choose IDs.
pub fn check(k: &mut impl Kernel, s: &Segment, root: bool) -> Result<(), CkError> {
    let env = |why: &str| Err(CkError::Environment(format!("{}: {why}", s.describe())));
    match find(k, s) {
        Found::InPlace => Ok(()),
        // Nobody can look a destroyed segment up by key; another ID it
        // may get (see `place`).
        _ if s.destroyed => Ok(()),
        Found::Taken => env("its ID is another object's now; the program knows its segments by their IDs"),
        Found::Gone if !root => env("it is gone (a reboot?), and only root can make it again with its ID"),
        Found::Gone if key_taken(s.key) => env("it is gone, and another segment has its key now"),
        Found::Gone => Ok(()),
    }
}

fn key_taken(key: i32) -> bool {
    // SAFETY: integer arguments only; size 0 looks the key up.
    key != libc::IPC_PRIVATE && unsafe { libc::shmget(key, 0, 0) } >= 0
}

/// A segment as the restart has it: the ID it has now (`image_id` in
/// the image), whether this restart made it (a restart called off
/// removes it again) and whether it is to be marked destroyed once every
/// process has attached it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placed {
    pub image_id: i32,
    pub id: i32,
    pub made: bool,
    pub destroyed: bool,
}

/// Finds or makes segment `s` and gives it the checkpoint's content (in
/// the coordinator, before any restore process maps memory).
pub fn place(k: &mut impl Kernel, img: &ImageReader, s: &Segment) -> Result<Placed> {
    let fail = |what: &str, e: std::io::Error| CkError::Environment(format!("{}: {what}: {e}", s.describe()));
    let (id, made) = match find(k, s) {
        Found::InPlace => (s.id, false),
        found => {
            let key = if s.destroyed { libc::IPC_PRIVATE } else { s.key };
            // A destroyed segment's ID is only wanted where it is free.
            let want = (found == Found::Gone).then_some(s.id);
            let got = k.shm_make(key, s.size, s.owner.mode, want).map_err(|e| fail("making it again", e))?;
            if got != s.id && !s.destroyed {
                let _ = k.shm_remove(got);
                return Err(CkError::Environment(format!(
                    "{}: made again, the kernel gave it ID {got}; the program knows it by its ID",
                    s.describe()
                ))
                .into());
            }
            if got != s.id {
                eprintln!("ckrun: {} comes back as segment {got} (its ID cannot be had)", s.describe());
            }
            // Root may give it the image's owner (checked against the
            // image file's); a user's segment is the user's anyway.
            // SAFETY: geteuid cannot fail.
            let me = unsafe { libc::geteuid() };
            let (uid, gid) = if me == 0 { (s.owner.uid, s.owner.gid) } else { (me, unsafe { libc::getegid() }) };
            if let Err(e) = k.shm_set_owner(got, uid, gid, s.owner.mode) {
                let _ = k.shm_remove(got);
                return Err(fail("giving it its owner", e).into());
            }
            (got, true)
        }
    };
    let placed = Placed { image_id: s.id, id, made, destroyed: s.destroyed };
    let mut scratch = Vec::new();
    let mut error = None;
    let r = k.shm_write(id, !made, &mut |mem| {
        for c in &s.chunks {
            let at = c.addr as usize;
            let end = at + c.npages as usize * PAGE_SIZE as usize;
            let Some(dest) = mem.get_mut(at..end) else {
                return Err(std::io::Error::other("a piece of its content lies beyond its end"));
            };
            if let Err(e) = img.read_chunk(c, dest, &mut scratch) {
                let msg = e.to_string();
                error = Some(e);
                return Err(std::io::Error::other(msg));
            }
        }
        Ok(())
    });
    if let Err(e) = r {
        abandon(k, &placed);
        return Err(match error {
            Some(bad) => bad.into(),
            None => fail("writing its content", e).into(),
        });
    }
    Ok(placed)
}

/// Once every process of the tree is ready (each has attached it): a
/// destroyed segment is marked destroyed again.
pub fn commit(k: &mut impl Kernel, p: &Placed) -> Result<()> {
    if p.destroyed {
        k.shm_remove(p.id).map_err(|e| {
            CkError::Environment(format!("cannot mark SysV shared memory segment {} destroyed again: {e}", p.id))
        })?;
    }
    Ok(())
}

/// A restart called off: a segment it made goes again.
pub fn abandon(k: &mut impl Kernel, p: &Placed) {
    if p.made {
        let _ = k.shm_remove(p.id);
    }
}

/// What a restart would do with each segment of `objects`, for
/// `--dry-run`.
pub fn plan_lines(k: &mut impl Kernel, objects: &[super::SysvObject]) -> Vec<String> {
    let segments = objects.iter().filter_map(|o| match o {
        super::SysvObject::Segment(s) => Some(s),
        _ => None,
    });
    segments
        .map(|s| {
            let what = match find(k, s) {
                Found::InPlace => "still there: its content put back in place",
                Found::Gone => "gone: made again with its ID",
                Found::Taken if s.destroyed => "its ID taken: made again with another",
                Found::Taken => "its ID taken by another object: cannot come back",
            };
            let dest = if s.destroyed { ", marked destroyed once every process has it" } else { "" };
            format!("{}: {what}{dest}", s.describe())
        })
        .collect()
}

/// The ID segment `image_id` of the image has now (`ids`: what
/// [`place`] did).
pub fn id_now(ids: &[(i32, i32)], image_id: i32) -> i32 {
    ids.iter().find(|(was, _)| *was == image_id).map_or(image_id, |(_, now)| *now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restore::kernel::recording::{Call, Recording};
    use crate::restore::kernel::ShmStat;

    fn segment(id: i32, destroyed: bool) -> Segment {
        Segment {
            id,
            key: if destroyed { 0 } else { 0x1234 },
            owner: Owner { uid: 1000, gid: 100, mode: 0o640 },
            size: 10000,
            destroyed,
            chunks: vec![],
        }
    }

    #[test]
    fn a_segment_is_found_in_place_made_again_or_refused() {
        let mut k = Recording::default();
        let s = segment(7, false);
        assert_eq!(find(&mut k, &s), Found::Gone);
        assert!(check(&mut k, &s, false).unwrap_err().to_string().contains("only root"));
        check(&mut k, &s, true).unwrap();
        k.segments.insert(7, ShmStat { key: 0x1234, size: 10000, ..Default::default() });
        assert_eq!(find(&mut k, &s), Found::InPlace);
        check(&mut k, &s, false).unwrap();
        // Another segment has the ID now (another key, or another size).
        k.segments.insert(7, ShmStat { key: 0x99, size: 10000, ..Default::default() });
        assert_eq!(find(&mut k, &s), Found::Taken);
        assert!(check(&mut k, &s, true).unwrap_err().to_string().contains("another object's"));
        // A destroyed one comes back whatever happened to its ID.
        let d = segment(7, true);
        check(&mut k, &d, false).unwrap();
        k.segments.insert(7, ShmStat { key: 0, size: 10000, mode: SHM_DEST | 0o600, ..Default::default() });
        assert_eq!(find(&mut k, &d), Found::InPlace);
    }

    /// An image holding segment `s` with one page of content at 4096.
    fn image_with(s: &mut Segment, dir: &std::path::Path) -> ImageReader {
        std::fs::create_dir_all(dir).unwrap();
        let w = ImageWriter::create(dir).unwrap();
        let page = vec![7u8; PAGE_SIZE as usize];
        let data = lz4_flex::block::compress(&page);
        let (offset, checksum) = w.append_chunk(&data).unwrap();
        s.chunks = vec![ChunkRef::own(4096, 1, data.len() as u32, offset, checksum)];
        let mut m = crate::image::validate::tests::valid_manifest();
        m.sysv.push(super::super::SysvObject::Segment(s.clone()));
        let (path, _) = w.finish(&m, "shm.ckimg", None).unwrap();
        ImageReader::open(&path).unwrap()
    }

    #[test]
    fn placing_makes_with_the_id_and_destroyed_ones_are_marked_at_commit() {
        let dir = std::env::temp_dir().join(format!("ckrun-shm-test-{}", std::process::id()));
        let mut k = Recording::default();
        k.next_shm_id = 99;
        let mut s = segment(7, false);
        let img = image_with(&mut s, &dir);
        let p = place(&mut k, &img, &s).unwrap();
        assert_eq!(p, Placed { image_id: 7, id: 7, made: true, destroyed: false });
        // SAFETY: geteuid and getegid cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let owner = if uid == 0 { (1000, 100) } else { (uid, gid) };
        assert_eq!(
            k.calls,
            vec![
                Call::ShmMake { key: 0x1234, size: 10000, mode: 0o640, id: Some(7) },
                Call::ShmSetOwner { id: 7, uid: owner.0, gid: owner.1, mode: 0o640 },
                // A new segment is empty already.
                Call::ShmWrite { id: 7, clear: false },
            ]
        );
        let written = &k.written[&7];
        assert_eq!(written.len(), 3 * 4096);
        assert!(written[..4096].iter().all(|&b| b == 0) && written[4096..8192].iter().all(|&b| b == 7));
        commit(&mut k, &p).unwrap();
        assert!(!k.calls.contains(&Call::ShmRemove(7)));
        // Found again: rewritten in place, emptied first.
        k.calls.clear();
        let again = place(&mut k, &img, &s).unwrap();
        assert!(!again.made);
        assert_eq!(k.calls, vec![Call::ShmWrite { id: 7, clear: true }]);
        abandon(&mut k, &again);
        assert_eq!(k.calls.len(), 1, "a segment found is not removed");
        // A destroyed one whose ID is taken: another ID, marked destroyed
        // at commit; a restart called off removes what it made.
        k.calls.clear();
        let mut d = segment(7, true);
        d.chunks = s.chunks.clone();
        let p = place(&mut k, &img, &d).unwrap();
        assert_eq!(p, Placed { image_id: 7, id: 99, made: true, destroyed: true });
        assert_eq!(k.calls[0], Call::ShmMake { key: 0, size: 10000, mode: 0o640, id: None });
        commit(&mut k, &p).unwrap();
        assert_eq!(k.calls.last(), Some(&Call::ShmRemove(99)));
        assert_eq!(id_now(&[(7, 99)], 7), 99);
        assert_eq!(id_now(&[(7, 99)], 8), 8);
        // A live segment must get its ID.
        k.calls.clear();
        k.segments.insert(7, ShmStat { key: 0x55, size: 1, ..Default::default() });
        assert!(place(&mut k, &img, &s).unwrap_err().to_string().contains("gave it ID 99"));
        assert_eq!(k.calls.last(), Some(&Call::ShmRemove(99)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
