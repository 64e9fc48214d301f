//! timerfd: clock, interval and remaining time (restarted relative to the
//! restart; the time the program was not running does not count).
//! Expirations not yet read at the checkpoint come back as one pending
//! expiration: the timer fires at once.

use super::{info_u64, ProcFd};
use crate::image::manifest::OpenFile;
use crate::restore::kernel::Kernel;
use crate::sys::procfs::status_field;
use anyhow::{anyhow, Result};

/// `(sec, nsec)` as fdinfo prints it.
fn pair_ns(info: &str, key: &str) -> Option<u64> {
    let v = status_field(info, key)?.trim().strip_prefix('(')?.strip_suffix(')')?;
    let (s, ns) = v.split_once(',')?;
    Some(s.trim().parse::<u64>().ok()? * 1_000_000_000 + ns.trim().parse::<u64>().ok()?)
}

pub fn capture(f: &ProcFd) -> Result<OpenFile> {
    let bad = || anyhow!("unexpected timerfd fdinfo");
    let clock = info_u64(&f.info, "clockid", 10).ok_or_else(bad)? as i32;
    let ticks = info_u64(&f.info, "ticks", 10).unwrap_or(0);
    let value_ns = pair_ns(&f.info, "it_value").ok_or_else(bad)?;
    let interval_ns = pair_ns(&f.info, "it_interval").ok_or_else(bad)?;
    let flags = if f.flags & libc::O_NONBLOCK != 0 { libc::TFD_NONBLOCK } else { 0 };
    Ok(OpenFile::TimerFd { clock, flags, value_ns, interval_ns, ticks })
}

pub fn restore(
    k: &mut impl Kernel,
    clock: i32,
    flags: i32,
    value_ns: u64,
    interval_ns: u64,
    ticks: u64,
) -> Result<i32> {
    let value = if ticks > 0 { 1 } else { value_ns };
    Ok(k.timerfd(clock, flags | libc::TFD_CLOEXEC, value, interval_ns)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        let f = ProcFd {
            pid: 1,
            fd: 4,
            target: "anon_inode:[timerfd]".into(),
            info: "pos:\t0\nflags:\t04002\nmnt_id:\t17\nino:\t20\nclockid: 1\nticks: 0\nsettime flags: 00\n\
                   it_value: (0, 975432708)\nit_interval: (2, 20000000)\n"
                .into(),
            flags: 0o4002,
            pos: 0,
        };
        assert_eq!(
            capture(&f).unwrap(),
            OpenFile::TimerFd {
                clock: 1,
                flags: libc::TFD_NONBLOCK,
                value_ns: 975_432_708,
                interval_ns: 2_020_000_000,
                ticks: 0
            }
        );
    }
}
