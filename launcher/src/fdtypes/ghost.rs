//! Ghost files: files that no path reaches any more but the process still
//! uses, through an fd or a mapping: files deleted while open, and memfds.
//! Their content is saved in the image (read through /proc/PID/fd/N or
//! /proc/PID/map_files/...), and at restart they are recreated (memfd_create,
//! or created at their old path and unlinked again), so that fds and shared
//! mappings of one ghost still see one file.

use super::{file, ProcFd};
use crate::image::manifest::{ChunkRef, FileLock, GhostFile, OpenFile};
use crate::image::{ImageReader, ImageWriter, CHUNK_PAGES};
use crate::restore::kernel::Kernel;
use crate::sys::mem::{is_zero_page, RemoteMemory};
use crate::sys::procfs::MapEntry;
use crate::sys::PAGE_SIZE;
use anyhow::{Context, Result};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const DELETED: &str = " (deleted)";

/// Whether an fd target or mapping path names a ghost.
pub fn is_ghost(path: &str) -> bool {
    path.starts_with("/memfd:") || path.ends_with(DELETED)
}

/// Shared memory with no file behind it, recreated as a memfd: memfds,
/// shared anonymous memory (`/dev/zero (deleted)`), hugetlbfs anonymous
/// memory. (SysV segments come back as segments: `crate::sysv::shm`.)
fn is_memory(path: &str) -> bool {
    ["/memfd:", "/dev/zero", "/SYSV", "/anon_hugepage", "[anon_shmem"].iter().any(|p| path.starts_with(p))
}

/// Whether a path is a POSIX shared memory object (`shm_open`): a file of
/// /dev/shm, a tmpfs, whose content the next boot will not have. Saved
/// with the image like a ghost, and given its name back at restart.
pub fn is_shm_object(path: &str) -> bool {
    path.starts_with("/dev/shm/") && !path.ends_with(DELETED)
}

/// A ghost whose file still has its name (a shared memory object, a file
/// written through a shared mapping): the name is given back at restart.
fn is_named(shown: &str) -> bool {
    !shown.ends_with(DELETED) && !is_memory(shown)
}

/// Files up to this size written through a shared mapping are saved whole.
pub const MAPPED_WRITABLE_MAX: u64 = 64 << 20;

/// Whether mapping `m` of a file of `size` bytes is one whose content the
/// image keeps: shared and writable (what the program wrote through it
/// after the checkpoint must not be what a restart finds), up to
/// [`MAPPED_WRITABLE_MAX`]. Such a file comes back like a shared memory
/// object: made again with the checkpoint's content, renamed over its
/// path once the tree is ready, mapped and opened by every process that
/// had it.
pub fn saved_when_mapped(m: &MapEntry, size: u64) -> bool {
    m.shared && m.write && size <= MAPPED_WRITABLE_MAX && !is_ghost(&m.path)
}

pub fn capture_fd(f: &ProcFd, ghosts: &mut Vec<GhostFile>, out: &ImageWriter) -> Result<OpenFile> {
    let g = find_or_save(&f.proc_path(), &f.target, ghosts, out)?;
    Ok(OpenFile::Ghost { ghost: g, flags: f.flags, pos: f.pos, locks: file::locks(&f.info) })
}

/// The ghost behind a mapping (saved now if no fd showed it yet).
pub fn capture_mapping(pid: i32, m: &MapEntry, ghosts: &mut Vec<GhostFile>, out: &ImageWriter) -> Result<u32> {
    if let Some(i) = ghosts.iter().position(|g| g.dev == m.dev && g.inode == m.inode) {
        return Ok(i as u32);
    }
    match find_or_save(&format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end), &m.path, ghosts, out) {
        Ok(i) => Ok(i),
        // /proc/PID/map_files needs CAP_SYS_ADMIN: without it, a file that
        // still has its name (a shared memory object, a file written
        // through a mapping) is read by its name (if that is still the
        // mapped file), and of another ghost what the mapping shows of it
        // is what there is to save.
        Err(_) if !is_ghost(&m.path) && std::fs::metadata(&m.path).is_ok_and(|s| s.ino() == m.inode) => {
            find_or_save(&m.path, &m.path, ghosts, out)
        }
        Err(_) => save_mapped_part(pid, m, ghosts, out),
    }
}

/// Saves the part of a ghost a mapping shows, read through the process's
/// memory (reading faults in what the process did not touch yet).
fn save_mapped_part(pid: i32, m: &MapEntry, ghosts: &mut Vec<GhostFile>, out: &ImageWriter) -> Result<u32> {
    let mem = RemoteMemory::open(pid)?;
    let piece = CHUNK_PAGES as usize * PAGE_SIZE as usize;
    let mut buf = vec![0u8; piece];
    let mut chunks = Vec::new();
    let mut at = 0u64;
    while at < m.len() {
        let n = piece.min((m.len() - at) as usize);
        mem.read(m.start + at, &mut buf[..n]).with_context(|| format!("saving {}", m.path))?;
        if !buf[..n].chunks(PAGE_SIZE as usize).all(is_zero_page) {
            let data = lz4_flex::block::compress(&buf[..n]);
            let (offset, checksum) = out.append_chunk(&data)?;
            let npages = (n / PAGE_SIZE as usize) as u32;
            chunks.push(ChunkRef::own(m.offset + at, npages, data.len() as u32, offset, checksum));
        }
        at += n as u64;
    }
    let path = PathBuf::from(m.path.strip_suffix(DELETED).unwrap_or(&m.path));
    let size = m.offset + m.len();
    ghosts.push(GhostFile {
        path,
        memfd: is_memory(&m.path),
        named: is_named(&m.path),
        mode: 0o600,
        size,
        seals: 0,
        dev: m.dev,
        inode: m.inode,
        chunks,
    });
    Ok((ghosts.len() - 1) as u32)
}

fn find_or_save(open_path: &str, shown: &str, ghosts: &mut Vec<GhostFile>, out: &ImageWriter) -> Result<u32> {
    let meta = std::fs::metadata(open_path).with_context(|| format!("reaching {shown} through {open_path}"))?;
    let dev = (libc::major(meta.dev()), libc::minor(meta.dev()));
    if let Some(i) = ghosts.iter().position(|g| g.dev == dev && g.inode == meta.ino()) {
        return Ok(i as u32);
    }
    let memfd = is_memory(shown);
    let path = PathBuf::from(shown.strip_suffix(DELETED).unwrap_or(shown));
    let mut f = std::fs::File::open(open_path).with_context(|| format!("opening {open_path}"))?;
    let seals = if memfd {
        use std::os::fd::AsRawFd;
        // SAFETY: fcntl on an fd we own.
        unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GET_SEALS) }.max(0)
    } else {
        0
    };
    let chunks = save_content(&mut f, meta.len(), out).with_context(|| format!("saving the content of {shown}"))?;
    ghosts.push(GhostFile {
        path,
        memfd,
        named: is_named(shown),
        mode: meta.mode() & 0o7777,
        size: meta.len(),
        seals,
        dev,
        inode: meta.ino(),
        chunks,
    });
    Ok((ghosts.len() - 1) as u32)
}

/// The file's bytes in page-padded, compressed pieces; all-zero pieces are
/// left out (they come back as holes).
pub(super) fn save_content(f: &mut std::fs::File, size: u64, out: &ImageWriter) -> Result<Vec<ChunkRef>> {
    let piece = CHUNK_PAGES as usize * PAGE_SIZE as usize;
    let mut buf = vec![0u8; piece];
    let mut chunks = Vec::new();
    let mut off = 0u64;
    while off < size {
        let want = piece.min((size - off) as usize);
        buf.fill(0);
        f.read_exact(&mut buf[..want])?;
        let padded = want.div_ceil(PAGE_SIZE as usize) * PAGE_SIZE as usize;
        if !buf[..padded].chunks(PAGE_SIZE as usize).all(is_zero_page) {
            let data = lz4_flex::block::compress(&buf[..padded]);
            let (offset, checksum) = out.append_chunk(&data)?;
            chunks.push(ChunkRef::own(off, (padded / PAGE_SIZE as usize) as u32, data.len() as u32, offset, checksum));
        }
        off += want as u64;
    }
    Ok(chunks)
}

/// Recreates ghost `g` (with the rights of the process that uses it: the
/// caller has taken its identity). A deleted file is created at its old
/// path, exclusively, and unlinked at once, before its content is written,
/// so that a restart that fails later leaves nothing behind (and the
/// program's /proc/self/fd still shows "PATH (deleted)"); if the name is
/// taken again, it is an unnamed O_TMPFILE in the same directory. Set-id
/// bits are never given to a recreated file.
pub fn recreate(k: &mut impl Kernel, img: &ImageReader, g: &GhostFile) -> Result<i32> {
    let fd = if g.memfd {
        let name = g.path.to_string_lossy();
        let name = name.strip_prefix("/memfd:").unwrap_or(name.trim_start_matches('/'));
        k.memfd(name, libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)?
    } else if g.named {
        // Under a name of ckrun's until the restart is sure to go ahead
        // ([`Rename`]). Not an O_TMPFILE linked later: the mappings of one
        // would show its first, unlinked name ("/dev/shm/#95 (deleted)")
        // for ever, and the next checkpoint take it for a deleted file.
        let temp = Rename::temp_name(&g.path);
        let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        k.create(&temp, flags, g.mode & 0o777).map_err(|e| {
            crate::error::CkError::Environment(format!(
                "cannot recreate {} (as {}): {e}",
                g.path.display(),
                temp.display()
            ))
        })?
    } else {
        create_unnamed(k, &g.path, g.mode & 0o777)?
    };
    let mut write = || -> Result<()> {
        fill(k, img, fd, &g.chunks, g.size)?;
        if g.seals != 0 {
            k.fcntl(fd, libc::F_ADD_SEALS, g.seals as i64).context("sealing a memfd")?;
        }
        Ok(())
    };
    if let Err(e) = write() {
        k.close(fd);
        return Err(e);
    }
    Ok(fd)
}

/// Calls `f` with each chunk of saved content, decompressed, and the
/// offset it belongs at (the pages between chunks were zero). The last
/// chunk's pages may run past the content's size.
pub(super) fn each_piece(
    img: &ImageReader,
    chunks: &[ChunkRef],
    mut f: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    let mut buf = Vec::new();
    let mut scratch = Vec::new();
    for c in chunks {
        buf.resize(c.npages as usize * PAGE_SIZE as usize, 0);
        img.read_chunk(c, &mut buf, &mut scratch)?;
        f(c.addr, &buf)?;
    }
    Ok(())
}

/// Writes saved content into `fd`, then gives it its size.
pub(super) fn fill(k: &mut impl Kernel, img: &ImageReader, fd: i32, chunks: &[ChunkRef], size: u64) -> Result<()> {
    each_piece(img, chunks, |at, piece| Ok(k.pwrite_all(fd, piece, at)?))?;
    k.truncate(fd, size)?;
    Ok(())
}

/// Creates the file where it was and unlinks it again at once (as the
/// program had it: "/old/path (deleted)"). If that name is taken, it is
/// an unnamed O_TMPFILE in the same directory. If the directory is gone
/// too (a build's temporary directory), the missing directories are made
/// for the moment (0700, as the process's user) and removed again once
/// the file is unlinked, so that the fd still shows the old path. Where
/// none of that works (a file system without O_TMPFILE, a parent no
/// longer writable), the file comes back as a memfd named after its old
/// path: the program's fds and shared mappings still share one file with
/// the checkpoint's content. A deleted file never fails a restart.
fn create_unnamed(k: &mut impl Kernel, path: &Path, mode: u32) -> Result<i32> {
    let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let made = match k.create(path, flags, mode) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            let made = make_parents(k, path);
            k.create(path, flags, mode).map(|fd| (fd, made))
        }
        r => r.map(|fd| (fd, Vec::new())),
    };
    let named = match made {
        Ok((fd, made)) => {
            let unlinked = k.unlink(path);
            for dir in made.iter().rev() {
                // Someone's file in it meanwhile: the directory stays.
                let _ = k.rmdir(dir);
            }
            match unlinked {
                Ok(()) => return Ok(fd),
                Err(e) => {
                    k.close(fd);
                    return Err(anyhow::Error::new(e).context(format!("removing the recreated {}", path.display())));
                }
            }
        }
        Err(e) => e,
    };
    let dir = path.parent().unwrap_or(Path::new("/tmp"));
    match k.create(dir, libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC, mode) {
        Ok(fd) => Ok(fd),
        Err(unnamed) => {
            let name = path.to_string_lossy();
            let name: String = name.chars().take(200).collect();
            k.memfd(&name, libc::MFD_CLOEXEC).map_err(|e| {
                crate::error::CkError::Environment(format!(
                    "cannot recreate the deleted file {} (at its path: {named}; in {}: {unnamed}; as a memfd: {e})",
                    path.display(),
                    dir.display()
                ))
                .into()
            })
        }
    }
}

/// Makes the missing ancestors of `path` (0700); returns those it made,
/// outermost first.
fn make_parents(k: &mut impl Kernel, path: &Path) -> Vec<PathBuf> {
    let missing: Vec<&Path> =
        path.ancestors().skip(1).take_while(|d| !d.as_os_str().is_empty() && !d.exists()).collect();
    let mut made = Vec::new();
    for dir in missing.into_iter().rev() {
        if k.mkdir(dir, 0o700).is_err() {
            break;
        }
        made.push(dir.to_path_buf());
    }
    made
}

/// A POSIX shared memory object recreated under a temporary name beside
/// its own, to get its name back once the whole tree is ready
/// (`fdtypes::commit`): renamed over whatever has the name now (the killed
/// run's object, with what it wrote after the checkpoint), as the process
/// that uses it (in a sticky /dev/shm, nobody else's object can be
/// replaced). A restart called off removes it ([`Rename::abandon`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rename {
    pub path: PathBuf,
    pub identity: Option<crate::creds::Identity>,
}

impl Rename {
    pub fn temp_name(path: &Path) -> PathBuf {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        path.with_file_name(format!(".{name}.ckrun-{}", std::process::id()))
    }

    pub fn apply(&self, k: &mut impl Kernel) -> Result<()> {
        let temp = Self::temp_name(&self.path);
        self.as_user(k, |k| {
            k.rename(&temp, &self.path).map_err(|e| {
                let _ = k.unlink(&temp);
                crate::error::CkError::Environment(format!("cannot give {} its name back: {e}", self.path.display()))
                    .into()
            })
        })
    }

    pub fn abandon(&self, k: &mut impl Kernel) {
        let temp = Self::temp_name(&self.path);
        let _ = self.as_user(k, |k| Ok(k.unlink(&temp)?));
    }

    fn as_user<K: Kernel>(&self, k: &mut K, f: impl FnOnce(&mut K) -> Result<()>) -> Result<()> {
        k.become_identity(self.identity.as_ref()).context("taking the program's identity to name its files")?;
        let r = f(k);
        k.become_identity(None).context("taking back ckrun's own identity")?;
        r
    }
}

/// A new open file description of a recreated ghost, as the program had it.
pub fn reopen(k: &mut impl Kernel, ghost_fd: i32, flags: i32, pos: u64, locks: &[FileLock]) -> Result<i32> {
    let fd = k.reopen(ghost_fd, file::reopen_flags(flags)).context("reopening a recreated deleted file")?;
    if pos != 0 {
        k.seek(fd, pos)?;
    }
    file::take_locks(k, fd, locks, Path::new(&format!("fd {ghost_fd}")))?;
    Ok(fd)
}
