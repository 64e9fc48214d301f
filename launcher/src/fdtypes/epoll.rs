//! epoll: the interest list (target fd, events, user data), re-registered
//! once every other fd is back at its number. Readiness is recomputed by
//! the kernel from the restored fds.

use super::ProcFd;
use crate::image::manifest::{EpollItem, OpenFile};
use crate::restore::kernel::Kernel;
use anyhow::Result;

pub fn capture(f: &ProcFd) -> Result<OpenFile> {
    let items = f.info.lines().filter_map(parse_item).collect();
    Ok(OpenFile::Epoll { flags: 0, items })
}

/// `tfd:        6 events: 80000019 data:       1234567890  pos:0 ino:e03c sdev:f`
fn parse_item(l: &str) -> Option<EpollItem> {
    let w: Vec<&str> = l.split_whitespace().collect();
    if w.first() != Some(&"tfd:") || w.get(2) != Some(&"events:") || w.get(4) != Some(&"data:") {
        return None;
    }
    Some(EpollItem {
        fd: w.get(1)?.parse().ok()?,
        events: u32::from_str_radix(w.get(3)?, 16).ok()?,
        data: u64::from_str_radix(w.get(5)?, 16).ok()?,
    })
}

/// A new epoll instance watching `items`; targets the program no longer
/// has (it closed the fd but not the description) are left out.
pub fn restore(k: &mut impl Kernel, flags: i32, items: &[EpollItem], have: &[i32]) -> Result<i32> {
    let ep = k.epoll(flags | libc::EPOLL_CLOEXEC)?;
    for it in items {
        if have.contains(&it.fd) {
            k.epoll_add(ep, it.fd, it.events, it.data)?;
        } else {
            eprintln!("ckrun: warning: epoll watched fd {}, which the program no longer has; dropped", it.fd);
        }
    }
    Ok(ep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interest_list() {
        let info = "pos:\t0\nflags:\t02\nmnt_id:\t17\nino:\t20\n\
                    tfd:        3 events:       1c data:                7  pos:0 ino:14 sdev:10\n\
                    tfd:        6 events: 80000019 data:       1234567890  pos:0 ino:e03c sdev:f\n";
        let f = ProcFd { pid: 1, fd: 8, target: "anon_inode:[eventpoll]".into(), info: info.into(), flags: 2, pos: 0 };
        assert_eq!(
            capture(&f).unwrap(),
            OpenFile::Epoll {
                flags: 0,
                items: vec![
                    EpollItem { fd: 3, events: 0x1c, data: 7 },
                    EpollItem { fd: 6, events: 0x8000_0019, data: 0x12_3456_7890 },
                ]
            }
        );
    }
}
