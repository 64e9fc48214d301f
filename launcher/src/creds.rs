//! Credentials, one kind of process state with the same capture → image →
//! restore shape as the fd kinds:
//!
//! - **capture**: uids, gids, groups, capability sets and no_new_privs from
//!   /proc/PID/status; securebits and dumpable from the agent (no /proc
//!   file shows them).
//! - **check** (before anything of a restart runs): an image never grants
//!   more than its file's owner has. An image owned by a user may only hold
//!   processes of that user (all four uids), of groups the user belongs to,
//!   with no capabilities; one that claims more is refused (exit 3). A
//!   restart by a user (not root) may only restore that user's own
//!   credentials.
//! - **restore**: each restore child becomes the process's user and groups
//!   as soon as it has made its own children, so that every file, mapping
//!   and directory it opens for the program is opened with the program's
//!   rights, not ckrun's. It keeps only the capabilities the restorer needs
//!   (`CAP_CHECKPOINT_RESTORE` to choose thread IDs and set the exe link,
//!   `CAP_SETPCAP` to set the bounding set and securebits); each restored
//!   thread then takes the image's exact capability sets, securebits and
//!   no_new_privs (the agent, `suspend::kstate`) before the program runs.
//!   Objects the coordinator makes for the whole tree (open files, deleted
//!   files) are opened under the file-system identity of the process that
//!   uses them ([`Identity`], `Kernel::become_identity`).

use crate::error::CkError;
use crate::image::manifest::{Credentials, Manifest, ProcessImage};
use crate::sys::procfs::{read, status_field};
use anyhow::{anyhow, Result};
use std::path::Path;

pub const CAP_SETPCAP: u32 = 8;
pub const CAP_CHECKPOINT_RESTORE: u32 = 40;

/// The capabilities a restore child keeps until its threads take the
/// image's own sets.
pub const RESTORER_CAPS: u64 = 1 << CAP_SETPCAP | 1 << CAP_CHECKPOINT_RESTORE;

/// What files are opened as: file-system uid and gid, and groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl Credentials {
    /// The identity the process's own opens would have.
    pub fn identity(&self) -> Identity {
        Identity { uid: self.uid[3], gid: self.gid[3], groups: self.groups.clone() }
    }

    fn has_capabilities(&self) -> bool {
        self.cap_permitted | self.cap_effective | self.cap_ambient | self.cap_inheritable != 0
    }
}

fn ids(status: &str, key: &str, pid: i32) -> Result<[u32; 4]> {
    let v: Vec<u32> = status_field(status, key)
        .ok_or_else(|| anyhow!("no {key} in /proc/{pid}/status"))?
        .split_whitespace()
        .map(|x| x.parse())
        .collect::<Result<_, _>>()?;
    v.try_into().map_err(|_| anyhow!("/proc/{pid}/status: {key} is not four ids"))
}

fn hex(status: &str, key: &str, pid: i32) -> Result<u64> {
    u64::from_str_radix(status_field(status, key).ok_or_else(|| anyhow!("no {key} in /proc/{pid}/status"))?, 16)
        .map_err(|e| anyhow!("/proc/{pid}/status: {key}: {e}"))
}

/// The credentials of process `pid` (read through any of its threads).
pub fn capture(pid: i32, securebits: u32, dumpable: u32) -> Result<Credentials> {
    let s = read(pid, "status")?;
    let groups = status_field(&s, "Groups").unwrap_or("").split_whitespace().filter_map(|g| g.parse().ok()).collect();
    Ok(Credentials {
        uid: ids(&s, "Uid", pid)?,
        gid: ids(&s, "Gid", pid)?,
        groups,
        cap_inheritable: hex(&s, "CapInh", pid)?,
        cap_permitted: hex(&s, "CapPrm", pid)?,
        cap_effective: hex(&s, "CapEff", pid)?,
        cap_bounding: hex(&s, "CapBnd", pid)?,
        cap_ambient: hex(&s, "CapAmb", pid).unwrap_or(0),
        no_new_privs: status_field(&s, "NoNewPrivs").is_some_and(|v| v == "1"),
        securebits,
        dumpable,
    })
}

/// The groups `uid` belongs to (its primary group included), from the
/// user database; `None` if it has no entry here.
pub fn groups_of(uid: u32) -> Option<Vec<u32>> {
    // SAFETY: getpwuid_r fills `pw` with pointers into `buf`, which outlives
    // their use; getgrouplist writes at most `n` gids into `gids`.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 16384];
        let mut res: *mut libc::passwd = std::ptr::null_mut();
        if libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut res) != 0 || res.is_null() {
            return None;
        }
        let mut n: libc::c_int = 256;
        let mut gids = vec![0 as libc::gid_t; n as usize];
        if libc::getgrouplist(pw.pw_name, pw.pw_gid, gids.as_mut_ptr(), &mut n) < 0 {
            gids.resize(n.max(0) as usize, 0);
            if libc::getgrouplist(pw.pw_name, pw.pw_gid, gids.as_mut_ptr(), &mut n) < 0 {
                return None;
            }
        }
        gids.truncate(n.max(0) as usize);
        Some(gids)
    }
}

/// The groups this process has (real and effective gid, supplementary).
fn my_groups() -> Vec<u32> {
    // SAFETY: getgroups writes at most the given number of gids.
    unsafe {
        let n = libc::getgroups(0, std::ptr::null_mut());
        let mut v = vec![0 as libc::gid_t; n.max(0) as usize];
        let n = libc::getgroups(v.len() as libc::c_int, v.as_mut_ptr());
        v.truncate(n.max(0) as usize);
        v.push(libc::getgid());
        v.push(libc::getegid());
        v
    }
}

/// Refuses an image whose processes claim credentials that neither its
/// owner (the image file's) nor the user restarting it may give.
/// `owner_group` is the file's group, used when the owner has no entry in
/// the user database here.
pub fn check(m: &Manifest, image: &Path, owner: u32, owner_group: u32) -> Result<(), CkError> {
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    let refuse = |p: &ProcessImage, why: String| {
        CkError::bad_image(image, format!("process {} {why}; refused (see the README's Security section)", p.pid))
    };
    // Who decides what is allowed: a user restarting restores only
    // themselves; root restores what the image's owner may have.
    let (user, groups) = if me != 0 {
        (me, my_groups())
    } else if owner != 0 {
        (owner, groups_of(owner).unwrap_or_else(|| vec![owner_group]))
    } else {
        return Ok(()); // root restarting root's own image
    };
    let whose = if me != 0 { "yours" } else { "the image owner's" };
    for p in &m.processes {
        let c = &p.creds;
        if c.uid.iter().any(|&u| u != user) {
            return Err(refuse(p, format!("ran as uid {:?}, but the image is {whose} (uid {user})", c.uid)));
        }
        if let Some(g) = c.gid.iter().chain(&c.groups).find(|g| !groups.contains(g)) {
            return Err(refuse(p, format!("ran with group {g}, which uid {user} is not a member of")));
        }
        if c.has_capabilities() {
            return Err(refuse(
                p,
                format!("held capabilities (permitted {:#x}); only root's images may restore them", c.cap_permitted),
            ));
        }
    }
    Ok(())
}

/// The per-thread credential calls, raw: glibc's wrappers change every
/// thread of the process (setxid broadcast), which must not happen in the
/// coordinator. All are no-ops when nothing changes.
pub mod raw {
    use std::io;

    fn cvt(r: libc::c_long) -> io::Result<()> {
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    pub fn setgroups(groups: &[u32]) -> io::Result<()> {
        let now = super::current_groups();
        if now == groups {
            return Ok(());
        }
        // SAFETY: the kernel reads groups.len() gids.
        cvt(unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) })
    }

    pub fn setresgid(g: [u32; 3]) -> io::Result<()> {
        // SAFETY: integer arguments.
        cvt(unsafe { libc::syscall(libc::SYS_setresgid, g[0], g[1], g[2]) })
    }

    pub fn setresuid(u: [u32; 3]) -> io::Result<()> {
        // SAFETY: integer arguments.
        cvt(unsafe { libc::syscall(libc::SYS_setresuid, u[0], u[1], u[2]) })
    }

    /// setfsuid/setfsgid report the previous value, never an error: ask
    /// again to know whether it took.
    pub fn setfsuid(uid: u32) -> io::Result<()> {
        // SAFETY: integer arguments.
        let now = unsafe {
            libc::syscall(libc::SYS_setfsuid, uid);
            libc::syscall(libc::SYS_setfsuid, u32::MAX)
        };
        if now as u32 == uid {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(libc::EPERM))
        }
    }

    pub fn setfsgid(gid: u32) -> io::Result<()> {
        // SAFETY: integer arguments.
        let now = unsafe {
            libc::syscall(libc::SYS_setfsgid, gid);
            libc::syscall(libc::SYS_setfsgid, u32::MAX)
        };
        if now as u32 == gid {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(libc::EPERM))
        }
    }

    /// Sets the calling thread's effective, permitted and inheritable sets.
    pub fn capset(effective: u64, permitted: u64, inheritable: u64) -> io::Result<()> {
        let header = [0x2008_0522u32, 0];
        let lo = |v: u64| v as u32;
        let hi = |v: u64| (v >> 32) as u32;
        let data = [lo(effective), lo(permitted), lo(inheritable), hi(effective), hi(permitted), hi(inheritable)];
        // SAFETY: a version-3 header and two data structs on this stack.
        cvt(unsafe { libc::syscall(libc::SYS_capset, header.as_ptr(), data.as_ptr()) })
    }

    pub fn keep_capabilities(on: bool) -> io::Result<()> {
        // SAFETY: integer arguments.
        cvt(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, on as libc::c_ulong, 0, 0, 0) } as libc::c_long)
    }
}

/// This thread's supplementary groups.
pub fn current_groups() -> Vec<u32> {
    // SAFETY: getgroups writes at most the given number of gids.
    unsafe {
        let n = libc::getgroups(0, std::ptr::null_mut());
        let mut v = vec![0 as libc::gid_t; n.max(0) as usize];
        let n = libc::getgroups(v.len() as libc::c_int, v.as_mut_ptr());
        v.truncate(n.max(0) as usize);
        v
    }
}

/// In a restore child, once its children exist: becomes the process's
/// users and groups, keeping only [`RESTORER_CAPS`] (and the image's own
/// permitted set) for what is left to do. From here on every open, mmap
/// and chdir for the program has the program's rights.
pub fn become_process(c: &Credentials) -> Result<(), CkError> {
    // SAFETY: getresuid/getresgid write three ids each.
    let (uid, gid) = unsafe {
        let (mut r, mut e, mut s) = (0, 0, 0);
        libc::getresuid(&mut r, &mut e, &mut s);
        let u = [r, e, s];
        libc::getresgid(&mut r, &mut e, &mut s);
        (u, [r, e, s])
    };
    let want_uid = [c.uid[0], c.uid[1], c.uid[2]];
    let want_gid = [c.gid[0], c.gid[1], c.gid[2]];
    let fail = |what: &str, e: std::io::Error| CkError::Environment(format!("restoring the process's {what}: {e}"));
    if uid == want_uid && gid == want_gid {
        // A restart by the same user: its groups where it may set them
        // (without privileges it keeps the ones it has).
        return match raw::setgroups(&c.groups) {
            Err(e) if e.raw_os_error() != Some(libc::EPERM) => Err(fail("groups", e)),
            _ => Ok(()),
        };
    }
    raw::keep_capabilities(true).map_err(|e| fail("capabilities", e))?;
    raw::setgroups(&c.groups).map_err(|e| fail("groups", e))?;
    raw::setresgid(want_gid).map_err(|e| fail("group IDs", e))?;
    raw::setfsgid(c.gid[3]).map_err(|e| fail("file-system group ID", e))?;
    raw::setresuid(want_uid).map_err(|e| fail("user IDs", e))?;
    raw::setfsuid(c.uid[3]).map_err(|e| fail("file-system user ID", e))?;
    let keep = RESTORER_CAPS | c.cap_permitted;
    raw::capset(RESTORER_CAPS, keep, 0).map_err(|e| fail("capabilities", e))?;
    raw::keep_capabilities(false).map_err(|e| fail("capabilities", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::validate::tests::valid_manifest;

    fn creds(uid: u32, gid: u32, perm: u64) -> Credentials {
        Credentials { uid: [uid; 4], gid: [gid; 4], cap_permitted: perm, ..Default::default() }
    }

    #[test]
    fn a_users_image_holds_only_that_user() {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return; // the rules for root are what is tested here
        }
        let mut m = valid_manifest();
        let img = Path::new("x.ckimg");
        m.processes[0].creds = creds(65534, 65534, 0);
        assert!(check(&m, img, 65534, 65534).is_ok());
        m.processes[0].creds = creds(0, 0, !0);
        assert!(matches!(check(&m, img, 65534, 65534), Err(CkError::BadImage { .. })));
        m.processes[0].creds = creds(65534, 0, 0);
        assert!(matches!(check(&m, img, 65534, 65534), Err(CkError::BadImage { .. })));
        m.processes[0].creds = creds(65534, 65534, 1 << 21);
        assert!(matches!(check(&m, img, 65534, 65534), Err(CkError::BadImage { .. })));
        // Root's image may hold anyone.
        m.processes[0].creds = creds(0, 0, !0);
        assert!(check(&m, img, 0, 0).is_ok());
    }

    #[test]
    fn own_credentials_are_read() {
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        let c = capture(std::process::id() as i32, 0, 1).unwrap();
        assert_eq!(c.uid[0], uid);
        assert_eq!(c.identity().uid, c.uid[3]);
    }
}
