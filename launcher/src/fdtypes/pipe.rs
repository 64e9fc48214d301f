//! Pipes and FIFOs. The bytes in flight at the checkpoint are copied
//! without being consumed: the coordinator opens the pipe through
//! /proc/PID/fd/N and tee(2)s its content into a pipe of its own. At
//! restart a new pipe gets them back, in order, before the program runs.
//! An end the process had closed stays closed: a reader then sees EOF after
//! the saved bytes, a writer EPIPE.

use super::ProcFd;
use crate::image::manifest::{OpenFile, PipeImage};
use crate::restore::kernel::Kernel;
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

/// Which ends of each pipe (by inode) the process holds.
pub struct Ends(HashMap<u64, (bool, bool)>);

impl Ends {
    pub fn of<'a>(fds: impl Iterator<Item = &'a ProcFd>) -> Self {
        let mut m: HashMap<u64, (bool, bool)> = HashMap::new();
        for f in fds {
            let Some(ino) =
                f.target.strip_prefix("pipe:[").and_then(|s| s.strip_suffix(']')).and_then(|s| s.parse().ok())
            else {
                continue;
            };
            let e = m.entry(ino).or_default();
            match f.flags & libc::O_ACCMODE {
                libc::O_WRONLY => e.1 = true,
                libc::O_RDONLY => e.0 = true,
                _ => *e = (true, true),
            }
        }
        Ends(m)
    }

    pub fn both(&self, ino: u64) -> bool {
        self.0.get(&ino) == Some(&(true, true))
    }
}

pub fn capture(f: &ProcFd, inode: u64, fifo: Option<PathBuf>, pipes: &mut Vec<PipeImage>) -> Result<OpenFile> {
    let idx = match pipes.iter().position(|p| p.inode == inode) {
        Some(i) => i,
        None => {
            let (capacity, data) =
                peek(&f.proc_path()).with_context(|| format!("copying the bytes in {}", f.target))?;
            pipes.push(PipeImage { inode, fifo, capacity, data });
            pipes.len() - 1
        }
    };
    let write = f.flags & libc::O_ACCMODE == libc::O_WRONLY;
    Ok(OpenFile::Pipe { pipe: idx as u32, write, flags: f.flags })
}

/// Capacity and content of a pipe, left in place.
fn peek(path: &str) -> Result<(u32, Vec<u8>)> {
    let src = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    let s = src.as_raw_fd();
    // SAFETY: fcntl and ioctl on an fd we own, writing into a local int.
    let (cap, avail) = unsafe {
        let mut n: libc::c_int = 0;
        (libc::fcntl(s, libc::F_GETPIPE_SZ), (libc::ioctl(s, libc::FIONREAD, &mut n) == 0).then_some(n as usize))
    };
    if cap <= 0 {
        bail!("not a pipe");
    }
    let avail = avail.unwrap_or(0);
    if avail == 0 {
        return Ok((cap as u32, Vec::new()));
    }
    let mut fds = [0; 2];
    // SAFETY: fds is an array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        bail!("pipe2: {}", std::io::Error::last_os_error());
    }
    // SAFETY: fresh fds we own.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: fcntl on our own pipe; tee reads src without consuming it and
    // fills our pipe, which is as large as the source (one call copies all).
    let copied = unsafe {
        libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, cap);
        libc::tee(s, w.as_raw_fd(), cap as usize, libc::SPLICE_F_NONBLOCK)
    };
    if copied < 0 || copied as usize != avail {
        bail!("tee copied {copied} of {avail} bytes: {}", std::io::Error::last_os_error());
    }
    let mut data = vec![0u8; avail];
    // SAFETY: data is writable for its length.
    let n = unsafe { libc::read(r.as_raw_fd(), data.as_mut_ptr().cast(), avail) };
    if n as usize != avail {
        bail!("reading back the pipe copy");
    }
    Ok((cap as u32, data))
}

/// The pipes made so far in a restore: both ends of each (or, for a FIFO,
/// a read-write keeper), kept until every description has its copy.
#[derive(Default)]
pub struct Restored {
    made: HashMap<u32, (i32, i32)>,
}

impl Restored {
    /// A new description of one end of pipe `idx`, made on first use.
    pub fn end(&mut self, k: &mut impl Kernel, p: &PipeImage, idx: u32, write: bool, flags: i32) -> Result<i32> {
        if let Some(path) = &p.fifo {
            let keeper = match self.made.get(&idx) {
                Some(&(keeper, _)) => keeper,
                None => {
                    // O_RDWR never blocks on a FIFO; it holds both ends open
                    // while the program's descriptions are made.
                    let keeper = k.open(path, libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC)?;
                    fill(k, keeper, p)?;
                    self.made.insert(idx, (keeper, -1));
                    keeper
                }
            };
            let _ = keeper;
            let fd = k.open(path, flags & !libc::O_CREAT | libc::O_NONBLOCK | libc::O_CLOEXEC)?;
            k.fcntl(fd, libc::F_SETFL, flags as i64)?;
            return Ok(fd);
        }
        let (r, w) = match self.made.get(&idx) {
            Some(&e) => e,
            None => {
                let (r, w) = k.pipe(libc::O_CLOEXEC)?;
                fill(k, w, p)?;
                self.made.insert(idx, (r, w));
                (r, w)
            }
        };
        let fd = k.dup_above(if write { w } else { r }, 0)?;
        k.fcntl(fd, libc::F_SETFL, flags as i64)?;
        Ok(fd)
    }

    /// Drops ckrun's own ends: what the program did not hold is closed.
    pub fn finish(self, k: &mut impl Kernel) {
        for (_, (a, b)) in self.made {
            for fd in [a, b] {
                if fd >= 0 {
                    k.close(fd);
                }
            }
        }
    }
}

fn fill(k: &mut impl Kernel, w: i32, p: &PipeImage) -> Result<()> {
    if p.capacity > 0 {
        // Shrinking below the content fails; the content fits the original size.
        let _ = k.fcntl(w, libc::F_SETPIPE_SZ, p.capacity as i64);
    }
    if !p.data.is_empty() {
        k.write_all(w, &p.data).context("refilling a pipe")?;
    }
    Ok(())
}
