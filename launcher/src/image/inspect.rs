//! `ckrun --inspect`: what an image holds, for people (a table) and for
//! programs (`--json`).

use super::manifest::{
    Manifest, OpenFile, ProcessImage, Region, RegionKind, REGION_DONTFORK, REGION_NORESERVE, REGION_WIPEONFORK,
};
use super::ImageReader;
use crate::sys::PAGE_SIZE;
use std::fmt::Write;

pub fn human(img: &ImageReader) -> String {
    let m = &img.manifest;
    let mut o = String::new();
    let i = &m.info;
    let mem: u64 = m.processes.iter().map(ProcessImage::saved_bytes).sum();
    let _ = writeln!(o, "image       {}", img.path().display());
    let _ = writeln!(
        o,
        "made        {} on {} (kernel {}), ckrun {}",
        utc(i.created_unix_ms),
        i.hostname,
        i.kernel_release,
        i.ckrun_version
    );
    let _ = writeln!(o, "command     {}", i.command.join(" "));
    let _ = writeln!(o, "checkpoint  #{}, program paused {:.1} ms", i.sequence, i.paused_us as f64 / 1000.0);
    let _ = writeln!(
        o,
        "clocks      CLOCK_MONOTONIC {:.3} s, CLOCK_BOOTTIME {:.3} s (a restart continues them)",
        i.clocks.monotonic_ns as f64 / 1e9,
        i.clocks.boottime_ns as f64 / 1e9
    );
    let _ = writeln!(
        o,
        "cpu         xsave features {:#x}: {} (a restart needs them all)",
        i.xsave_features,
        crate::sys::machine::xsave_feature_names(i.xsave_features).join(", ")
    );
    let _ = writeln!(
        o,
        "size        image {}, memory saved {} (ratio {:.2})",
        bytes(img.len),
        bytes(mem),
        if mem == 0 { 0.0 } else { img.len as f64 / mem as f64 }
    );
    lineage(&mut o, img);
    let s = &m.settings;
    let _ = writeln!(
        o,
        "settings    dir {}, trigger signal {}, {}",
        s.dir.display(),
        s.trigger,
        if s.frozen { "program frozen while copied" } else { "copy-on-write snapshot" }
    );
    if let Some(g) = m.foreground {
        let _ = writeln!(o, "terminal    process group {g} in the foreground (it gets ckrun's terminal at restart)");
    }
    for p in &m.processes {
        process(&mut o, m, p);
    }
    for z in &m.zombies {
        let _ = writeln!(o, "\nzombie {} (child of {}, exit status {:#x})", z.pid, z.ppid, z.status);
    }
    if !m.sysv.is_empty() {
        let _ = writeln!(o, "\nSysV objects (given back their state, by ID, at restart):");
        for x in &m.sysv {
            let _ = writeln!(o, "  {} (ID {})", x.describe(), x.id());
            for line in crate::sysv::semundo::inspect_lines(x) {
                let _ = writeln!(o, "    {line}");
            }
        }
    }
    o
}

/// How much of the image is its own, and which earlier images it takes
/// the rest from (all verified, as the rest of the image, by `--inspect`).
fn lineage(o: &mut String, img: &ImageReader) {
    let m = &img.manifest;
    let (own, taken) = super::lineage::own_and_taken(m);
    let total = own + taken.iter().sum::<u64>();
    let pct = |b: u64| if total == 0 { 0.0 } else { b as f64 * 100.0 / total as f64 };
    let l = &m.lineage;
    if l.parents.is_empty() {
        let _ =
            writeln!(o, "pages       self-contained: all {} its own (id {})", bytes(own), super::lineage::hex(&l.id));
        return;
    }
    let _ = writeln!(
        o,
        "pages       incremental (generation {}, id {}): {} its own ({:.1}%), {} from {} earlier image(s):",
        l.generation,
        super::lineage::hex(&l.id),
        bytes(own),
        pct(own),
        bytes(taken.iter().sum()),
        l.parents.len()
    );
    for ((p, t), path) in l.parents.iter().zip(&taken).zip(img.parent_paths()) {
        let _ = writeln!(
            o,
            "              {:>9} ({:>5.1}%) from {} (generation {})",
            bytes(*t),
            pct(*t),
            path.display(),
            p.generation
        );
    }
}

fn process(o: &mut String, m: &Manifest, p: &ProcessImage) {
    let _ = writeln!(o, "\nprocess {} ({}), parent {}, {} thread(s)", p.pid, p.program_name(), p.ppid, p.threads.len());
    let _ = writeln!(o, "  exe   {}", p.exe.path.display());
    let _ = writeln!(o, "  cwd   {}   umask {:03o}", p.cwd.display(), p.umask);
    let _ = writeln!(
        o,
        "  regions ({}; {} mapped, {} saved):",
        p.regions.len(),
        bytes(p.regions.iter().map(Region::len).sum()),
        bytes(p.saved_bytes())
    );
    let _ = writeln!(o, "    {:<33} {:>9} {:<5} {:<9} {:>9}  name", "address", "size", "prot", "kind", "saved");
    for r in &p.regions {
        let _ = writeln!(
            o,
            "    {:016x}-{:016x} {:>9} {:<5} {:<9} {:>9}  {}",
            r.start,
            r.end,
            bytes(r.len()),
            prot(r),
            kind(&r.kind),
            bytes(r.saved_pages() * PAGE_SIZE),
            name_and_flags(r)
        );
    }
    let _ = writeln!(o, "  file descriptors:");
    for f in &p.fds {
        let what = m.files.get(f.desc as usize).map_or_else(|| "?".into(), |d| describe_file(m, d));
        let _ = writeln!(o, "    {:>4}{} {}", f.fd, if f.cloexec { "*" } else { " " }, what);
    }
    let _ = writeln!(o, "  threads:");
    for t in &p.threads {
        let lead = if t.flags & ckrun_proto::THREAD_LEADER != 0 { "  (led the checkpoint)" } else { "" };
        let _ = writeln!(o, "    tid {:<8} {:<16} fs {:#x}{}", t.tid, t.name(), t.fs_base, lead);
    }
    let mut deps: Vec<String> = p
        .regions
        .iter()
        .filter_map(|r| match &r.kind {
            RegionKind::File { file, .. } => Some(format!("{} ({} bytes)", file.path.display(), file.size)),
            _ => None,
        })
        .collect();
    deps.sort();
    deps.dedup();
    let _ = writeln!(o, "  depends on (must be unchanged at restart):");
    for d in deps {
        let _ = writeln!(o, "    {d}");
    }
}

pub fn json(img: &ImageReader) -> String {
    let m: &Manifest = &img.manifest;
    let mut v = serde_json::to_value(m).unwrap_or_default();
    if let Some(obj) = v.as_object_mut() {
        let mem: u64 = m.processes.iter().map(ProcessImage::saved_bytes).sum();
        obj.insert(
            "summary".into(),
            serde_json::json!({
                "path": img.path(),
                "image_bytes": img.len,
                "memory_saved_bytes": mem,
                "ratio": if mem == 0 { 0.0 } else { img.len as f64 / mem as f64 },
                "own_bytes": super::lineage::own_and_taken(m).0,
                "depends_on": m.lineage.parents.iter().zip(super::lineage::own_and_taken(m).1).zip(img.parent_paths())
                    .map(|((p, t), path)| serde_json::json!({ "image": p.name, "path": path, "bytes": t }))
                    .collect::<Vec<_>>(),
                "pids": m.processes.iter().map(|p| p.pid).collect::<Vec<_>>(),
            }),
        );
    }
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

fn describe_file(p: &Manifest, f: &OpenFile) -> String {
    let locks = |l: &[crate::image::manifest::FileLock]| {
        if l.is_empty() {
            String::new()
        } else {
            format!(", {} lock(s)", l.len())
        }
    };
    match f {
        OpenFile::Path { path, flags, pos, locks: l, .. } => {
            format!("{} ({}, offset {pos}{})", path.display(), access(*flags), locks(l))
        }
        OpenFile::Proc { pid, rel, flags, pos } => format!(
            "{} ({}, offset {pos}): reopened for the restored process",
            crate::fdtypes::procfile::path_of(*pid, rel).display(),
            access(*flags)
        ),
        OpenFile::Inherited { fd, what, termios } => format!(
            "{what}: gets ckrun's fd {fd} at restart{}",
            if termios.is_some() { ", with its terminal settings" } else { "" }
        ),
        OpenFile::Ghost { ghost, flags, pos, locks: l } => {
            let g = &p.ghosts[*ghost as usize];
            let what = if g.memfd { "memfd" } else { "deleted file" };
            format!(
                "{what} {} ({} bytes saved; {}, offset {pos}{})",
                g.path.display(),
                g.size,
                access(*flags),
                locks(l)
            )
        }
        OpenFile::Pipe { pipe, write, .. } => {
            let pi = &p.pipes[*pipe as usize];
            let name =
                pi.fifo.as_ref().map_or_else(|| format!("pipe {}", pi.inode), |f| format!("FIFO {}", f.display()));
            format!("{name}, {} end, {} bytes in flight", if *write { "write" } else { "read" }, pi.data.len())
        }
        OpenFile::EventFd { count, .. } => format!("eventfd, counter {count}"),
        OpenFile::TimerFd { clock, value_ns, interval_ns, .. } => format!(
            "timerfd (clock {clock}), next in {:.3} s, every {:.3} s",
            *value_ns as f64 / 1e9,
            *interval_ns as f64 / 1e9
        ),
        OpenFile::SignalFd { mask, .. } => format!("signalfd, mask {mask:#x}"),
        OpenFile::Epoll { items, .. } => {
            let fds: Vec<String> = items.iter().map(|i| i.fd.to_string()).collect();
            format!("epoll watching fds {}", fds.join(", "))
        }
        OpenFile::Socket(s) => {
            let kind = match s.stype {
                libc::SOCK_STREAM => "stream",
                libc::SOCK_DGRAM => "datagram",
                libc::SOCK_SEQPACKET => "seqpacket",
                _ => "",
            };
            let family = match s.domain {
                libc::AF_UNIX => "unix",
                libc::AF_INET => "IPv4",
                libc::AF_INET6 => "IPv6",
                _ => "?",
            };
            let state = match &s.state {
                crate::image::manifest::SocketState::Fresh => "unbound".to_string(),
                crate::image::manifest::SocketState::Bound { backlog: Some(_), .. } => "listening".into(),
                crate::image::manifest::SocketState::Bound { .. } => "bound".into(),
                crate::image::manifest::SocketState::Pair { queued, eof, .. } => format!(
                    "connection inside the tree, {} bytes queued{}",
                    queued.iter().map(Vec::len).sum::<usize>(),
                    if *eof { ", then EOF" } else { "" }
                ),
                crate::image::manifest::SocketState::Disconnected { peer, queued } => format!(
                    "connected to {peer} outside the tree, or gone: comes back closed by the peer after {} bytes",
                    queued.iter().map(Vec::len).sum::<usize>()
                ),
            };
            format!("{family} {kind} socket, {state}")
        }
        OpenFile::Unsupported { what } => format!("{what}: not restorable, restored closed"),
    }
}

fn prot(r: &Region) -> String {
    let mut s = String::new();
    s.push(if r.prot & libc::PROT_READ != 0 { 'r' } else { '-' });
    s.push(if r.prot & libc::PROT_WRITE != 0 { 'w' } else { '-' });
    s.push(if r.prot & libc::PROT_EXEC != 0 { 'x' } else { '-' });
    s.push(if r.shared { 's' } else { 'p' });
    s
}

/// The region's name, then what the program asked of it (`[dontfork]`).
fn name_and_flags(r: &Region) -> String {
    let names = [(REGION_DONTFORK, "dontfork"), (REGION_NORESERVE, "noreserve"), (REGION_WIPEONFORK, "wipeonfork")];
    let set: Vec<&str> = names.iter().filter(|(b, _)| r.flags & b != 0).map(|(_, n)| *n).collect();
    match (r.name.is_empty(), set.is_empty()) {
        (_, true) => r.name.clone(),
        (true, false) => format!("[{}]", set.join(" ")),
        (false, false) => format!("{}  [{}]", r.name, set.join(" ")),
    }
}

fn kind(k: &RegionKind) -> &'static str {
    match k {
        RegionKind::Anon => "anon",
        RegionKind::Stack => "stack",
        RegionKind::File { .. } => "file",
        RegionKind::Detached => "detached",
        RegionKind::Ghost { .. } => "deleted",
        RegionKind::Sysv { .. } => "sysv-shm",
        RegionKind::Vvar | RegionKind::VvarVclock | RegionKind::Vdso => "vdso",
    }
}

fn access(flags: i32) -> &'static str {
    let app = flags & libc::O_APPEND != 0;
    match (flags & libc::O_ACCMODE, app) {
        (libc::O_RDONLY, _) => "read",
        (libc::O_WRONLY, false) => "write",
        (libc::O_WRONLY, true) => "append",
        (_, false) => "read-write",
        (_, true) => "read-append",
    }
}

/// Human size: 512 B, 12.0 KiB, 3.4 MiB, 1.2 GiB.
pub fn bytes(n: u64) -> String {
    const U: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` from Unix milliseconds.
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem / 60 % 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_dates() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_795_673_497_000), "2026-11-26 06:11:37 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
    }
}
