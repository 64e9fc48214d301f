//! The coordinator's end of one agent connection.

use ckrun_proto::{encode, Pod};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The dirty tracker of an agent's process (`checkpoint::dirty`).
pub struct Tracked {
    pub uffd: crate::sys::uffd::WriteTracker,
    /// The image at whose checkpoint every tracked page was protected
    /// last (its lineage id): the pages written since are those the
    /// tracker reports. None: not known (a checkpoint failed after the
    /// protection), and the next checkpoint reads every page.
    pub clean_since: Option<[u8; 16]>,
}

pub struct Agent {
    pub pid: i32,
    /// The fd number the agent keeps its connection on, in its process.
    pub agent_fd: i32,
    pub conn: OwnedFd,
    /// False for a restored process until its agent reports back.
    pub running: bool,
    /// A restore child, or a restored process that has not reported back:
    /// its messages are about the restart, never checkpoint requests.
    pub restoring: bool,
    /// The fd passed with the last message received, if any (only a
    /// [`ckrun_proto::kind::TRACKER`] message may carry one).
    pub passed: Mutex<Option<OwnedFd>>,
    /// Its process's dirty tracker, once the agent passed one. The
    /// connection is the process's: an exec (a new address space) checks
    /// in on a new one, without a tracker.
    pub tracker: Mutex<Option<Tracked>>,
}

impl Agent {
    pub fn send<T: Pod>(&self, kind: u32, body: &[T]) -> io::Result<()> {
        let mut buf = vec![0u8; 8 + std::mem::size_of_val(body)];
        let n = encode(&mut buf, kind, body).expect("buffer sized for the message");
        // SAFETY: buf[..n] is initialised; MSG_NOSIGNAL: a dead agent is an error, not SIGPIPE.
        let r = unsafe { libc::send(self.conn.as_raw_fd(), buf.as_ptr().cast(), n, libc::MSG_NOSIGNAL) };
        if r == n as isize {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Next message, waiting at most until `deadline`. `Ok(None)`: timed
    /// out; `Err(UnexpectedEof)`: the agent is gone.
    pub fn recv(&self, deadline: Option<Instant>) -> io::Result<Option<Vec<u8>>> {
        let fd = self.conn.as_raw_fd();
        loop {
            let timeout_ms = match deadline {
                None => -1,
                Some(d) => d.saturating_duration_since(Instant::now()).as_millis().min(i32::MAX as u128) as i32,
            };
            let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if r == 0 {
                return Ok(None);
            }
            let mut buf = vec![0u8; 65536];
            // Room for a few fds: any beyond the first are closed.
            let n = match crate::sys::socket::recv_with_fds(fd, &mut buf, 4) {
                Ok((n, fds)) => {
                    *self.passed.lock().unwrap() = fds.into_iter().next();
                    n
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            buf.truncate(n as usize);
            // Reports of created files go to the journal, wherever the
            // coordinator is reading (a checkpoint waiting for SUSPENDED).
            if kind_of(&buf) == ckrun_proto::kind::CREATED {
                crate::created::record(&buf[8..]);
                continue;
            }
            return Ok(Some(buf));
        }
    }

    /// The fd passed with the last message received, taken.
    pub fn take_passed(&self) -> Option<OwnedFd> {
        self.passed.lock().unwrap().take()
    }

    pub fn recv_within(&self, d: Duration) -> io::Result<Option<Vec<u8>>> {
        self.recv(Some(Instant::now() + d))
    }
}

/// The kind of a received message.
pub fn kind_of(msg: &[u8]) -> u32 {
    ckrun_proto::read_pod::<ckrun_proto::MsgHeader>(msg).map_or(0, |h| h.kind)
}
