//! SysV semaphore sets and message queues of the job: capture → image →
//! restore side by side. Shared memory segments: [`shm`].
//!
//! They belong to no process: they outlive the job (a killed run leaves
//! them behind, with what it did after the checkpoint) and a reboot ends
//! them. The job's are those a process of the tree used last: a semaphore
//! whose `sempid` (GETPID) is one of the tree's, a queue whose last sender
//! or receiver (`lspid`, `lrpid`) is. Saved: key, ID, owner, mode, every
//! semaphore's value; a queue's messages in order with their types, copied
//! without taking them (`MSG_COPY`), and its byte limit.
//!
//! At restart, once the whole tree is ready (nothing is changed before:
//! `fdtypes::Deferred`), an object that is still there with its ID (same
//! key, same size) is given the checkpoint's state in place: values set
//! again, a queue emptied and refilled. One that is gone (a reboot, another
//! machine) is made again with its ID, which the kernel lets root choose
//! (`/proc/sys/kernel/{sem,msg}_next_id`); the program keeps using the IDs
//! in its memory. Before anything runs, a restart checks that each ID is
//! free or still the job's object, and that the image's owner could own
//! each object; otherwise it stops with a message naming the object.
//!
//! Each process's semaphore undo adjustments (`SEM_UNDO`) are saved with
//! their set and taken back by each restored process after the sets have
//! their values: [`semundo`].
//!
//! Not restored: the times of last operations, and the last pids. A set
//! whose last operation was a restart's (ckrun's SETALL, or its queue's
//! refilling) is still the job's at the next checkpoint.

pub mod semundo;
pub mod shm;

use crate::error::CkError;
use anyhow::Result;
use serde::{Deserialize, Serialize};
pub use shm::is_segment_mapping;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum SysvObject {
    /// `undo`: the processes' non-zero undo adjustments of its semaphores.
    Semaphores {
        id: i32,
        key: i32,
        owner: Owner,
        values: Vec<u16>,
        undo: Vec<semundo::Undo>,
    },
    Queue {
        id: i32,
        key: i32,
        owner: Owner,
        max_bytes: u64,
        messages: Vec<Message>,
    },
    Segment(shm::Segment),
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Message {
    pub mtype: i64,
    pub text: Vec<u8>,
}

/// Largest message ckrun copies (the kernel's own limit, msgmax, is 8 KiB
/// by default and at most what fits in an int).
const MAX_MESSAGE: usize = 1 << 20;

impl SysvObject {
    pub fn id(&self) -> i32 {
        match self {
            SysvObject::Semaphores { id, .. } | SysvObject::Queue { id, .. } => *id,
            SysvObject::Segment(s) => s.id,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            SysvObject::Semaphores { id, key, values, .. } => {
                format!("SysV semaphore set {id} (key {key:#x}, {} semaphores: {values:?})", values.len())
            }
            SysvObject::Queue { id, key, messages, .. } => format!(
                "SysV message queue {id} (key {key:#x}, {} messages, {} bytes)",
                messages.len(),
                messages.iter().map(|m| m.text.len()).sum::<usize>()
            ),
            SysvObject::Segment(s) => s.describe(),
        }
    }

    fn owner(&self) -> Owner {
        match self {
            SysvObject::Semaphores { owner, .. } | SysvObject::Queue { owner, .. } => *owner,
            SysvObject::Segment(s) => s.owner,
        }
    }
}

/// Rows of a /proc/sysvipc table, as numbers (the header skipped; the
/// third column, perms, is octal).
fn table(name: &str) -> Vec<Vec<i64>> {
    let text = std::fs::read_to_string(format!("/proc/sysvipc/{name}")).unwrap_or_default();
    let number = |(i, w): (usize, &str)| if i == 2 { i64::from_str_radix(w, 8).ok() } else { w.parse().ok() };
    text.lines().skip(1).map(|l| l.split_whitespace().enumerate().filter_map(number).collect()).collect()
}

/// The job's objects; `pids` are the tree's processes (stopped). The
/// content of shared memory segments goes to `image`.
pub fn capture(pids: &[i32], image: &crate::image::ImageWriter) -> Result<Vec<SysvObject>> {
    let mut out: Vec<SysvObject> = shm::capture(pids, image)?.into_iter().map(SysvObject::Segment).collect();
    // A restart gives the objects their state itself: until the program
    // uses them again, ckrun is their last user.
    let ours = |pid: i32| pids.contains(&pid) || pid == std::process::id() as i32;
    // key semid perms nsems uid gid cuid cgid otime ctime
    for row in table("sem") {
        let [key, id, perms, nsems, uid, gid, ..] = row[..] else { continue };
        let (id, n) = (id as i32, nsems as usize);
        // SAFETY: GETPID takes no argument.
        let used = (0..n).any(|i| ours(unsafe { libc::semctl(id, i as i32, libc::GETPID) }));
        if !used {
            continue;
        }
        let mut values = vec![0u16; n];
        // SAFETY: GETALL writes nsems unsigned shorts into `values`.
        if unsafe { libc::semctl(id, 0, libc::GETALL, values.as_mut_ptr()) } != 0 {
            anyhow::bail!("reading SysV semaphore set {id}: {}", std::io::Error::last_os_error());
        }
        let owner = Owner { uid: uid as u32, gid: gid as u32, mode: perms as u32 & 0o777 };
        out.push(SysvObject::Semaphores { id, key: key as i32, owner, values, undo: vec![] });
    }
    // key msqid perms cbytes qnum lspid lrpid uid gid cuid cgid ...
    for row in table("msg") {
        let [key, id, perms, _cbytes, qnum, lspid, lrpid, uid, gid, ..] = row[..] else { continue };
        if !ours(lspid as i32) && !ours(lrpid as i32) {
            continue;
        }
        let id = id as i32;
        let owner = Owner { uid: uid as u32, gid: gid as u32, mode: perms as u32 & 0o777 };
        out.push(SysvObject::Queue {
            id,
            key: key as i32,
            owner,
            max_bytes: queue_limit(id)?,
            messages: copy(id, qnum)?,
        });
    }
    Ok(out)
}

fn queue_limit(id: i32) -> Result<u64> {
    // SAFETY: msqid_ds is plain data; IPC_STAT fills it.
    let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: ds is a valid msqid_ds.
    if unsafe { libc::msgctl(id, libc::IPC_STAT, &mut ds) } != 0 {
        anyhow::bail!("reading SysV message queue {id}: {}", std::io::Error::last_os_error());
    }
    Ok(ds.msg_qbytes as u64)
}

/// The queue's messages, in order, left in place.
fn copy(id: i32, count: i64) -> Result<Vec<Message>> {
    let mut buf = vec![0u8; 8 + MAX_MESSAGE];
    let mut out = Vec::new();
    for i in 0..count {
        // SAFETY: buf holds a long and MAX_MESSAGE bytes, as msgrcv writes.
        let n = unsafe {
            libc::msgrcv(
                id,
                buf.as_mut_ptr().cast(),
                MAX_MESSAGE,
                i,
                libc::IPC_NOWAIT | libc::MSG_COPY | libc::MSG_NOERROR,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOMSG) {
                break; // taken meanwhile by a process outside the job
            }
            anyhow::bail!("copying message {i} of SysV message queue {id}: {e}");
        }
        let mtype = i64::from_ne_bytes(buf[..8].try_into().expect("8 bytes"));
        out.push(Message { mtype, text: buf[8..8 + n as usize].to_vec() });
    }
    Ok(out)
}

/// Whether `id` names a live object of the kind `o` is, and the same one
/// (same key and size); `None`: no object has that ID.
fn still_there(o: &SysvObject) -> Option<bool> {
    match o {
        SysvObject::Semaphores { id, key, values, .. } => {
            // SAFETY: semid_ds is plain data; IPC_STAT fills it.
            let mut ds: libc::semid_ds = unsafe { std::mem::zeroed() };
            // SAFETY: ds is a valid semid_ds.
            if unsafe { libc::semctl(*id, 0, libc::IPC_STAT, &mut ds) } != 0 {
                return None;
            }
            Some(ds.sem_perm.__key == *key && ds.sem_nsems as usize == values.len())
        }
        SysvObject::Queue { id, key, .. } => {
            // SAFETY: msqid_ds is plain data; IPC_STAT fills it.
            let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
            // SAFETY: ds is a valid msqid_ds.
            if unsafe { libc::msgctl(*id, libc::IPC_STAT, &mut ds) } != 0 {
                return None;
            }
            Some(ds.msg_perm.__key == *key)
        }
        SysvObject::Segment(s) => match shm::find(&mut crate::restore::kernel::Linux::default(), s) {
            shm::Found::Gone => None,
            found => Some(found == shm::Found::InPlace),
        },
    }
}

/// Before anything of the restart happens: every object can come back.
/// `owner`: the image file's owner (a user's image may only hold objects
/// that user owns).
pub fn check(objects: &[SysvObject], image: &std::path::Path, owner: u32) -> Result<()> {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    for o in objects {
        if owner != 0 && o.owner().uid != owner {
            let why = format!("{} belongs to uid {}, but the image to uid {owner}", o.describe(), o.owner().uid);
            return Err(CkError::BadImage { path: image.into(), why }.into());
        }
        if let SysvObject::Segment(s) = o {
            shm::check(&mut crate::restore::kernel::Linux::default(), s, root)?;
            continue;
        }
        match still_there(o) {
            Some(true) => {}
            Some(false) => {
                return Err(CkError::Environment(format!(
                    "{}: its ID is another object's now; the program knows its objects by their IDs",
                    o.describe()
                ))
                .into())
            }
            None if !root => {
                return Err(CkError::Environment(format!(
                    "{} is gone (a reboot?), and only root can make it again with its ID",
                    o.describe()
                ))
                .into())
            }
            None => {}
        }
    }
    Ok(())
}

/// Gives the object the checkpoint's state, making it again if it is gone
/// (a semaphore set or a queue: segments are [`shm::place`]d earlier).
pub fn restore(o: &SysvObject) -> Result<()> {
    if matches!(o, SysvObject::Segment(_)) {
        return Ok(());
    }
    let fail = |what: &str| {
        anyhow::Error::new(CkError::Environment(format!(
            "{}: {what}: {}",
            o.describe(),
            std::io::Error::last_os_error()
        )))
    };
    if still_there(o).is_none() {
        make(o).map_err(|e| fail(&format!("making it again: {e}")))?;
    }
    match o {
        SysvObject::Semaphores { id, values, .. } => {
            let mut v = values.clone();
            // SAFETY: SETALL reads nsems unsigned shorts from `v` (nsems checked).
            if unsafe { libc::semctl(*id, 0, libc::SETALL, v.as_mut_ptr()) } != 0 {
                return Err(fail("setting its values"));
            }
        }
        SysvObject::Segment(_) => {}
        SysvObject::Queue { id, messages, .. } => {
            // What the killed run queued after the checkpoint goes first.
            let mut buf = vec![0u8; 8 + MAX_MESSAGE];
            // SAFETY: buf holds a long and MAX_MESSAGE bytes.
            while unsafe {
                libc::msgrcv(*id, buf.as_mut_ptr().cast(), MAX_MESSAGE, 0, libc::IPC_NOWAIT | libc::MSG_NOERROR)
            } >= 0
            {}
            for m in messages {
                buf[..8].copy_from_slice(&m.mtype.to_ne_bytes());
                buf[8..8 + m.text.len()].copy_from_slice(&m.text);
                // SAFETY: buf holds the type and the text's bytes.
                if unsafe { libc::msgsnd(*id, buf.as_ptr().cast(), m.text.len(), libc::IPC_NOWAIT) } != 0 {
                    return Err(fail("queueing its messages again"));
                }
            }
        }
    }
    Ok(())
}

/// Runs `make` (an IPC_CREAT | IPC_EXCL get, returning the new ID or -1)
/// so that the kernel gives the object ID `id`: the next-ID knob
/// (`/proc/sys/kernel/{sem,msg,shm}_next_id`, root of the first user
/// namespace only) is set just before. The knob is one per IPC namespace
/// and the next creation by anyone consumes it, so two restarts at once
/// would take each other's IDs (seen: two tests' segments swapped): ckrun
/// processes take turns under a lock (`/run/ckrun-ipc-ids.lock`), and an
/// object that still got another ID (a program outside ckrun created one
/// in between) is removed by `remove` and made again, a few times. Returns
/// the ID the object got: `id`, or what the kernel chose where the knob
/// cannot be set (the caller decides whether that will do).
pub fn make_with_id(
    knob: &str,
    id: Option<i32>,
    mut make: impl FnMut() -> i32,
    mut remove: impl FnMut(i32),
) -> std::io::Result<i32> {
    let Some(id) = id else {
        return got_or_error(make());
    };
    let _turn = IdLock::take();
    let path = format!("/proc/sys/kernel/{knob}");
    for _ in 0..5 {
        if std::fs::write(&path, id.to_string()).is_err() {
            return got_or_error(make());
        }
        let got = make();
        let err = std::io::Error::last_os_error();
        let _ = std::fs::write(&path, "-1");
        if got < 0 {
            return Err(err);
        }
        if got == id {
            return Ok(got);
        }
        remove(got);
    }
    Err(std::io::Error::other(format!(
        "the kernel kept giving another ID than {id} (something else creates {knob} objects meanwhile)"
    )))
}

fn got_or_error(got: i32) -> std::io::Result<i32> {
    if got < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(got)
    }
}

/// ckrun's turn at the next-ID knobs (an exclusive flock, released on
/// drop). Without /run (or as a user, who cannot set the knobs anyway)
/// there is no lock.
struct IdLock {
    _file: Option<std::fs::File>,
}

impl IdLock {
    fn take() -> IdLock {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open("/run/ckrun-ipc-ids.lock")
            .ok();
        if let Some(f) = &f {
            // SAFETY: flock on an fd we hold; blocks until the other ckrun
            // is done with the knob (a few syscalls).
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        }
        IdLock { _file: f }
    }
}

/// Makes a gone object again with its ID (root: the next-ID knob).
fn make(o: &SysvObject) -> std::io::Result<()> {
    let (knob, id, key, owner) = match o {
        SysvObject::Semaphores { id, key, owner, .. } => ("sem_next_id", *id, *key, owner),
        SysvObject::Queue { id, key, owner, .. } => ("msg_next_id", *id, *key, owner),
        SysvObject::Segment(_) => return Ok(()),
    };
    let flags = libc::IPC_CREAT | libc::IPC_EXCL | owner.mode as i32;
    let create = || {
        // SAFETY: integer arguments only.
        unsafe {
            match o {
                SysvObject::Semaphores { values, .. } => libc::semget(key, values.len() as i32, flags),
                SysvObject::Queue { .. } => libc::msgget(key, flags),
                SysvObject::Segment(_) => unreachable!("segments are made by shm::place"),
            }
        }
    };
    let got = make_with_id(knob, Some(id), create, |other| remove(o, other))?;
    if got != id {
        remove(o, got);
        return Err(std::io::Error::other(format!("the kernel gave ID {got}")));
    }
    set_owner(o, owner)
}

fn set_owner(o: &SysvObject, owner: &Owner) -> std::io::Result<()> {
    // SAFETY: the _ds structs are plain data; IPC_STAT fills them and
    // IPC_SET reads them back with the owner changed.
    let r = unsafe {
        match o {
            SysvObject::Semaphores { id, .. } => {
                let mut ds: libc::semid_ds = std::mem::zeroed();
                libc::semctl(*id, 0, libc::IPC_STAT, &mut ds);
                ds.sem_perm.uid = owner.uid;
                ds.sem_perm.gid = owner.gid;
                ds.sem_perm.mode = owner.mode as _;
                libc::semctl(*id, 0, libc::IPC_SET, &mut ds)
            }
            SysvObject::Queue { id, max_bytes, .. } => {
                let mut ds: libc::msqid_ds = std::mem::zeroed();
                libc::msgctl(*id, libc::IPC_STAT, &mut ds);
                ds.msg_perm.uid = owner.uid;
                ds.msg_perm.gid = owner.gid;
                ds.msg_perm.mode = owner.mode as _;
                ds.msg_qbytes = *max_bytes as _;
                libc::msgctl(*id, libc::IPC_SET, &mut ds)
            }
            SysvObject::Segment(_) => 0,
        }
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn remove(o: &SysvObject, id: i32) {
    // SAFETY: IPC_RMID of an object ckrun just made.
    unsafe {
        match o {
            SysvObject::Semaphores { .. } => libc::semctl(id, 0, libc::IPC_RMID),
            SysvObject::Queue { .. } => libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut()),
            SysvObject::Segment(_) => libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_semaphore_set_and_a_queue_of_ours_are_saved_and_set_back() {
        let me = std::process::id() as i32;
        // SAFETY: plain SysV calls on objects this test makes and removes.
        unsafe {
            let sem = libc::semget(libc::IPC_PRIVATE, 2, libc::IPC_CREAT | 0o600);
            let q = libc::msgget(libc::IPC_PRIVATE, libc::IPC_CREAT | 0o600);
            assert!(sem >= 0 && q >= 0);
            let mut v = [3u16, 7];
            assert_eq!(libc::semctl(sem, 0, libc::SETALL, v.as_mut_ptr()), 0);
            let mut msg = [0u8; 16];
            msg[..8].copy_from_slice(&5i64.to_ne_bytes());
            msg[8..13].copy_from_slice(b"hello");
            assert_eq!(libc::msgsnd(q, msg.as_ptr().cast(), 5, 0), 0);

            let dir = std::env::temp_dir().join(format!("ckrun-sysv-test-{me}"));
            std::fs::create_dir_all(&dir).unwrap();
            let image = crate::image::ImageWriter::create(&dir).unwrap();
            let saved = capture(&[me], &image).unwrap();
            let ours: Vec<&SysvObject> = saved.iter().filter(|o| o.id() == sem || o.id() == q).collect();
            assert_eq!(ours.len(), 2, "{saved:?}");
            assert!(ours.iter().any(|o| matches!(o, SysvObject::Semaphores { values, .. } if values == &[3, 7])));
            assert!(ours.iter().any(|o| matches!(o, SysvObject::Queue { messages, .. }
                if messages == &[Message { mtype: 5, text: b"hello".to_vec() }])));
            // Copying left the message there.
            assert!(capture(&[me], &image).unwrap().iter().any(|o| matches!(o, SysvObject::Queue { id, messages, .. }
                if *id == q && messages.len() == 1)));

            // Changed after the checkpoint, then set back.
            let mut w = [0u16, 0];
            libc::semctl(sem, 0, libc::SETALL, w.as_mut_ptr());
            msg[..8].copy_from_slice(&9i64.to_ne_bytes());
            libc::msgsnd(q, msg.as_ptr().cast(), 5, 0);
            let ours_too: Vec<SysvObject> = saved.iter().filter(|o| o.id() == sem || o.id() == q).cloned().collect();
            check(&ours_too, std::path::Path::new("img"), 0).unwrap();
            for o in ours {
                restore(o).unwrap();
            }
            libc::semctl(sem, 0, libc::GETALL, w.as_mut_ptr());
            assert_eq!(w, [3, 7]);
            let again = capture(&[me], &image).unwrap();
            assert!(again.iter().any(|o| matches!(o, SysvObject::Queue { id, messages, .. }
                if *id == q && messages == &[Message { mtype: 5, text: b"hello".to_vec() }])));
            libc::semctl(sem, 0, libc::IPC_RMID);
            libc::msgctl(q, libc::IPC_RMID, std::ptr::null_mut());
            drop(image);
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
