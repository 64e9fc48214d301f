//! SysV shared memory and the snapshot.
//!
//! A forked snapshot inherits the program's attachments of SysV shared
//! memory segments, and each one counts in the segment's `shm_nattch`,
//! which the program can read (`shmctl(IPC_STAT)`) while the snapshot
//! lives. The coordinator saves a segment's content itself, never from
//! the snapshot, so the snapshot detaches them all before the program
//! runs again. Only processes that attached a segment through `shmat`
//! pay for it: reading the snapshot's /proc/self/maps.
//!
//! Runs in the snapshot (a forked child, its memory its own): raw
//! syscalls only.
//!
//! Semaphore undo adjustments, read at a checkpoint: [`semundo`].

pub mod semundo;

use crate::real::real;
use crate::sys;
use core::ffi::{c_int, c_void};
use core::sync::atomic::{AtomicBool, Ordering::Relaxed};

/// This process (or the one it was forked from) attached a segment.
static ATTACHED: AtomicBool = AtomicBool::new(false);

/// # Safety
/// As glibc's `shmat`.
#[no_mangle]
pub unsafe extern "C" fn shmat(id: c_int, addr: *const c_void, flags: c_int) -> *mut c_void {
    let next = real!(shmat: fn(c_int, *const c_void, c_int) -> *mut c_void);
    // SAFETY: forwarded unchanged.
    let r = unsafe { next(id, addr, flags) };
    if r as isize != -1 {
        ATTACHED.store(true, Relaxed);
    }
    r
}

/// Whether a snapshot of this process must detach segments.
pub fn attached() -> bool {
    ATTACHED.load(Relaxed)
}

/// Most attachments unmapped per pass over the maps.
const BATCH: usize = 64;

/// In the snapshot: unmaps every attachment of a SysV segment (the
/// program's own mappings are untouched: the snapshot's memory is its
/// own). Reads /proc/self/maps into `buf`, which must be the snapshot's.
pub fn detach_all(buf: &mut [u8]) {
    loop {
        let mut found = [(0u64, 0u64); BATCH];
        let mut n = 0;
        {
            let Some(mut lines) = crate::suspend::vmas::Ranges::open(0, buf) else { return };
            // Listed first, unmapped after: maps is not read while it changes.
            while let Some((start, end, sysv)) = lines.next_range_named(b"/SYSV") {
                if sysv && n < BATCH {
                    found[n] = (start, end);
                    n += 1;
                }
            }
        }
        for &(start, end) in &found[..n] {
            // SAFETY: unmaps a shared mapping of this snapshot, whose memory
            // nothing reads (the coordinator reads segments itself).
            unsafe { sys::syscall2(sys::SYS_munmap, start, end - start) };
        }
        if n < BATCH {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nattch(id: i32) -> u64 {
        // SAFETY: shmid_ds is plain data; IPC_STAT fills it.
        let mut ds: libc::shmid_ds = unsafe { core::mem::zeroed() };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) }, 0);
        ds.shm_nattch as u64
    }

    /// A forked copy that detaches leaves the segment's count as the
    /// program's own, and the program's attachment works on.
    #[test]
    fn a_fork_that_detaches_all_leaves_the_programs_count() {
        // SAFETY: a segment of this test, attached twice (the second
        // split in two by mprotect), removed at the end.
        unsafe {
            let id = libc::shmget(libc::IPC_PRIVATE, 3 * 4096, libc::IPC_CREAT | 0o600);
            assert!(id >= 0);
            let a = shmat(id, core::ptr::null(), 0) as *mut u8;
            let b = shmat(id, core::ptr::null(), libc::SHM_RDONLY) as *mut u8;
            assert!(attached());
            libc::mprotect(a.cast(), 4096, libc::PROT_READ);
            assert_eq!(nattch(id), 3);
            let mut ready = [0i32; 2];
            assert_eq!(libc::pipe(ready.as_mut_ptr()), 0);
            let child = libc::fork();
            if child == 0 {
                let mut buf = [0u8; 512]; // small: several reads of maps
                detach_all(&mut buf);
                libc::write(ready[1], b"d".as_ptr().cast(), 1);
                loop {
                    libc::pause();
                }
            }
            let mut c = 0u8;
            assert_eq!(libc::read(ready[0], (&mut c as *mut u8).cast(), 1), 1);
            let while_forked = nattch(id);
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, core::ptr::null_mut(), 0);
            *a.add(4096) = 5;
            assert_eq!(*b.add(4096), 5);
            libc::shmdt(a.cast());
            libc::shmdt(b.cast());
            libc::shmctl(id, libc::IPC_RMID, core::ptr::null_mut());
            assert_eq!(while_forked, 3, "the fork still had attachments");
        }
    }
}
