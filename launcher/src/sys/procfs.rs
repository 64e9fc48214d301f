//! Parsers for the /proc files a checkpoint reads. Parsing is separated
//! from reading so that it is unit-tested on fixed text.

use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};

/// One line of /proc/PID/maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    pub shared: bool,
    pub offset: u64,
    pub dev: (u32, u32),
    pub inode: u64,
    /// Path or pseudo-name (`[heap]`, `[stack]`, `[vdso]`...), empty for
    /// anonymous memory. A deleted file keeps its " (deleted)" suffix.
    pub path: String,
}

impl MapEntry {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
    /// PROT_* bits.
    pub fn prot(&self) -> i32 {
        (if self.read { libc::PROT_READ } else { 0 })
            | (if self.write { libc::PROT_WRITE } else { 0 })
            | (if self.exec { libc::PROT_EXEC } else { 0 })
    }
}

pub fn parse_maps(text: &str) -> Result<Vec<MapEntry>> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| parse_maps_line(l).with_context(|| format!("maps line {l:?}")))
        .collect()
}

fn parse_maps_line(line: &str) -> Result<MapEntry> {
    // start-end perms offset dev inode [path], where path may hold spaces.
    let mut rest = line;
    let mut field = || -> Result<&str> {
        let t = rest.trim_start();
        let end = t.find(' ').unwrap_or(t.len());
        let (f, r) = t.split_at(end);
        rest = r;
        if f.is_empty() {
            bail!("missing field");
        }
        Ok(f)
    };
    let range = field()?;
    let perms = field()?.as_bytes().to_vec();
    let offset = u64::from_str_radix(field()?, 16)?;
    let dev = field()?;
    let inode: u64 = field()?.parse()?;
    let path = rest.trim_start().to_string();
    let (s, e) = range.split_once('-').ok_or_else(|| anyhow!("bad range"))?;
    let (maj, min) = dev.split_once(':').ok_or_else(|| anyhow!("bad dev"))?;
    if perms.len() != 4 {
        bail!("bad perms");
    }
    Ok(MapEntry {
        start: u64::from_str_radix(s, 16)?,
        end: u64::from_str_radix(e, 16)?,
        read: perms[0] == b'r',
        write: perms[1] == b'w',
        exec: perms[2] == b'x',
        shared: perms[3] == b's',
        offset,
        dev: (u32::from_str_radix(maj, 16)?, u32::from_str_radix(min, 16)?),
        inode,
        path,
    })
}

/// The memory-layout fields of /proc/PID/stat that PR_SET_MM_MAP restores.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatFields {
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    /// Controlling terminal (device number; 0: none).
    pub tty_nr: u64,
    /// Foreground process group of that terminal (-1: none).
    pub tpgid: i32,
    pub start_code: u64,
    pub end_code: u64,
    pub start_stack: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
}

pub fn parse_stat(text: &str) -> Result<StatFields> {
    // Fields after the command name, which may contain spaces and ')'.
    let after = &text[text.rfind(')').ok_or_else(|| anyhow!("no ')' in stat"))? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // f[0] is field 3 (state): field n is f[n - 3].
    let num = |n: usize| -> Result<u64> {
        f.get(n - 3)
            .ok_or_else(|| anyhow!("stat has no field {n}"))?
            .parse::<i64>()
            .map(|v| v as u64)
            .map_err(Into::into)
    };
    Ok(StatFields {
        ppid: num(4)? as i32,
        pgrp: num(5)? as i32,
        session: num(6)? as i32,
        tty_nr: num(7)?,
        tpgid: num(8)? as i32,
        start_code: num(26)?,
        end_code: num(27)?,
        start_stack: num(28)?,
        start_data: num(45)?,
        end_data: num(46)?,
        start_brk: num(47)?,
        arg_start: num(48)?,
        arg_end: num(49)?,
        env_start: num(50)?,
        env_end: num(51)?,
    })
}

/// A `Key:\tvalue` field of /proc/PID/status.
pub fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':').map(str::trim))
}

/// /proc/PID/fdinfo/N: position and open flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FdInfo {
    pub pos: u64,
    pub flags: i32,
}

pub fn parse_fdinfo(text: &str) -> Result<FdInfo> {
    let pos = status_field(text, "pos").ok_or_else(|| anyhow!("fdinfo: no pos"))?.parse()?;
    let flags = i32::from_str_radix(status_field(text, "flags").ok_or_else(|| anyhow!("fdinfo: no flags"))?, 8)?;
    Ok(FdInfo { pos, flags })
}

/// /proc/PID/auxv as (type, value) pairs, the AT_NULL terminator included.
pub fn parse_auxv(bytes: &[u8]) -> Vec<u64> {
    let mut v: Vec<u64> = bytes.chunks_exact(8).map(|c| u64::from_ne_bytes(c.try_into().unwrap())).collect();
    // Keep pairs up to and including AT_NULL.
    if let Some(i) = v.chunks_exact(2).position(|p| p[0] == 0) {
        v.truncate(2 * i + 2);
    }
    v
}

/// Reads /proc/PID/<what> as text.
pub fn read(pid: i32, what: &str) -> Result<String> {
    let p = format!("/proc/{pid}/{what}");
    std::fs::read_to_string(&p).with_context(|| format!("reading {p}"))
}

pub fn read_bytes(pid: i32, what: &str) -> Result<Vec<u8>> {
    let p = format!("/proc/{pid}/{what}");
    std::fs::read(&p).with_context(|| format!("reading {p}"))
}

pub fn read_link(pid: i32, what: &str) -> Result<PathBuf> {
    let p = format!("/proc/{pid}/{what}");
    std::fs::read_link(&p).with_context(|| format!("reading link {p}"))
}

pub fn maps(pid: i32) -> Result<Vec<MapEntry>> {
    parse_maps(&read(pid, "maps")?)
}

/// A mapping's flags as /proc/PID/smaps shows them ("VmFlags: rd wr mr
/// mw me dc ...", two letters each).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmaFlags {
    pub start: u64,
    pub end: u64,
    pub flags: String,
}

impl VmaFlags {
    pub fn has(&self, code: &str) -> bool {
        self.flags.split_ascii_whitespace().any(|f| f == code)
    }
}

/// The ranges and VmFlags of /proc/PID/smaps (its other lines are skipped).
pub fn parse_vm_flags(text: &str) -> Result<Vec<VmaFlags>> {
    let mut out: Vec<VmaFlags> = Vec::new();
    for line in text.lines() {
        let first = line.split_ascii_whitespace().next().unwrap_or("");
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            let last = out.last_mut().ok_or_else(|| anyhow!("smaps: VmFlags before any mapping"))?;
            last.flags = flags.trim().to_string();
        } else if !first.is_empty() && !first.ends_with(':') {
            let (s, e) = first.split_once('-').ok_or_else(|| anyhow!("smaps line {line:?}"))?;
            let start = u64::from_str_radix(s, 16).with_context(|| format!("smaps line {line:?}"))?;
            let end = u64::from_str_radix(e, 16).with_context(|| format!("smaps line {line:?}"))?;
            out.push(VmaFlags { start, end, flags: String::new() });
        }
    }
    Ok(out)
}

/// The VmFlags of every mapping of `pid`. Costs a walk of its page tables
/// (the kernel counts each mapping's pages for smaps): ~20 ms per GiB of
/// touched memory.
pub fn vm_flags(pid: i32) -> Result<Vec<VmaFlags>> {
    parse_vm_flags(&read(pid, "smaps")?)
}

/// File identity that tells whether a file changed since the checkpoint.
pub fn file_stamp(path: &Path) -> std::io::Result<(u64, u64, u64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino(), m.size(), m.mtime() * 1_000_000_000 + m.mtime_nsec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines() {
        let t = "55d0c0a00000-55d0c0a02000 r--p 00000000 fd:01 1311 /usr/bin/my prog\n\
                 7ffd1000-7ffd3000 rw-p 00000000 00:00 0                          [stack]\n\
                 7f00-8f00 rw-s 00001000 00:01 99 /dev/zero (deleted)\n";
        let m = parse_maps(t).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].path, "/usr/bin/my prog");
        assert_eq!(m[0].dev, (0xfd, 1));
        assert!(m[0].read && !m[0].write && !m[0].shared);
        assert_eq!(m[1].path, "[stack]");
        assert_eq!(m[1].prot(), libc::PROT_READ | libc::PROT_WRITE);
        assert!(m[2].shared);
        assert_eq!(m[2].offset, 0x1000);
        assert!(parse_maps("zzz").is_err());
    }

    #[test]
    fn smaps_flags() {
        let t = "7f00-8f00 rw-p 00000000 00:00 0   /odd: name\n\
                 Size:                 64 kB\n\
                 VmFlags: rd wr mr mw me dc ac \n\
                 9000-a000 ---p 00000000 00:00 0\n\
                 Rss:                   0 kB\n\
                 VmFlags: mr mw me nr \n";
        let v = parse_vm_flags(t).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].start, v[0].end), (0x7f00, 0x8f00));
        assert!(v[0].has("dc") && !v[0].has("nr") && !v[0].has("d"));
        assert!(v[1].has("nr") && !v[1].has("dc"));
        assert!(parse_vm_flags("VmFlags: dc\n").is_err());
    }

    #[test]
    fn stat_with_odd_name() {
        let mut fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        fields[0] = "S".into();
        let t = format!("123 (a) b) {}", fields.join(" "));
        let s = parse_stat(&t).unwrap();
        assert_eq!(s.ppid, 4);
        assert_eq!(s.start_code, 26);
        assert_eq!(s.env_end, 51);
        assert_eq!((s.tty_nr, s.tpgid), (7, 8));
    }

    #[test]
    fn fdinfo_and_status() {
        let f = parse_fdinfo("pos:\t42\nflags:\t02100002\nmnt_id:\t20\nino:\t5\n").unwrap();
        assert_eq!(f, FdInfo { pos: 42, flags: 0o2100002 });
        assert_eq!(status_field("Name:\tx\nUmask:\t0022\n", "Umask"), Some("0022"));
    }

    #[test]
    fn auxv_stops_at_null() {
        let words: Vec<u8> = [6u64, 4096, 0, 0, 7, 7].iter().flat_map(|w| w.to_ne_bytes()).collect();
        assert_eq!(parse_auxv(&words), vec![6, 4096, 0, 0]);
    }
}
