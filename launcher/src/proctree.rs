//! The process tree below ckrun, read from /proc/PID/task/TID/children.

use crate::sys::procfs::{parse_stat, read};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub pid: i32,
    pub ppid: i32,
    /// Exited, waiting for its parent to reap it.
    pub zombie: bool,
}

/// Whether `pid` is a copy-on-write snapshot child of `root` (ckrun): a
/// child of it that gave itself the snapshot's name.
pub fn is_snapshot(pid: i32, root: i32) -> bool {
    read(pid, "comm").is_ok_and(|c| c.trim_end() == SNAPSHOT)
        && read(pid, "stat").ok().and_then(|t| parse_stat(&t).ok()).is_some_and(|s| s.ppid == root)
}

const SNAPSHOT: &str = match ckrun_proto::SNAPSHOT_NAME.to_str() {
    Ok(s) => s,
    Err(_) => "",
};

/// ckrun's snapshot children (`root` is ckrun).
pub fn snapshots(root: i32) -> Vec<i32> {
    children(root).into_iter().filter(|&c| is_snapshot(c, root)).collect()
}

/// Every descendant of `root`, parents before children, except `skip`
/// and ckrun's snapshot children (which are no part of the program).
pub fn descendants(root: i32, skip: &[i32]) -> Vec<Member> {
    let mut out = Vec::new();
    let mut queue = vec![root];
    while let Some(p) = queue.pop() {
        let mut kids = children(p);
        kids.sort_unstable();
        for c in kids {
            if skip.contains(&c) || out.iter().any(|m: &Member| m.pid == c) || (p == root && is_snapshot(c, root)) {
                continue;
            }
            let Ok(text) = read(c, "stat") else { continue };
            let zombie = is_zombie(&text) && !has_live_thread(c);
            let ppid = parse_stat(&text).map_or(p, |s| s.ppid);
            out.push(Member { pid: c, ppid, zombie });
            if !zombie {
                queue.insert(0, c);
            }
        }
    }
    out
}

fn is_zombie(stat: &str) -> bool {
    stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
}

/// A process whose main thread ended (pthread_exit in main) shows as a
/// zombie in /proc/PID/stat while its other threads run on.
fn has_live_thread(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    tasks.flatten().any(|t| std::fs::read_to_string(t.path().join("stat")).is_ok_and(|s| !is_zombie(&s)))
}

fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    let mut v = Vec::new();
    for t in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
            v.extend(s.split_whitespace().filter_map(|x| x.parse::<i32>().ok()));
        }
    }
    v
}

/// The wait status a zombie will report (field 52 of /proc/PID/stat).
pub fn exit_status(pid: i32) -> i32 {
    read(pid, "stat")
        .ok()
        .and_then(|t| t.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(49)?.parse().ok()))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_child_and_its_zombie_state() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let me = std::process::id() as i32;
        let found = descendants(me, &[]);
        assert!(found.iter().any(|m| m.pid == child.id() as i32 && m.ppid == me && !m.zombie), "{found:?}");
        child.kill().unwrap();
        // Wait until it is a zombie (not reaped: no wait yet).
        let pid = child.id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !descendants(me, &[]).iter().any(|m| m.pid == pid && m.zombie) {
            assert!(std::time::Instant::now() < deadline, "no zombie");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(exit_status(pid) & 0x7f, libc::SIGKILL);
        assert!(descendants(me, &[pid]).iter().all(|m| m.pid != pid));
        child.wait().unwrap();
    }
}
