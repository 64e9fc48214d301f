//! What the in-process agent (`libckpt.so`) and the coordinator (`ckrun`)
//! say to each other, and the few constants both must agree on.
//!
//! The agent speaks from inside signal handlers, where it may not allocate,
//! so every message is a fixed-layout `#[repr(C)]` header followed by an
//! array of fixed-layout records, sent as one `SOCK_SEQPACKET` datagram.
//! Both ends are built from the same source, so the layout is the contract;
//! [`PROTOCOL_VERSION`] in [`Hello`] catches an agent and a coordinator from
//! different builds.

#![forbid(unsafe_op_in_unsafe_fn)]

/// Environment: abstract unix socket name (without the leading NUL) of the
/// coordinator. The agent stays inert when it is absent.
pub const ENV_SOCKET: &str = "CKRUN_SOCKET";
/// Environment: number of the signal that requests a checkpoint.
pub const ENV_TRIGGER: &str = "CKRUN_SIGNAL";
/// Environment: the coordinator's pid (the root of the tree).
pub const ENV_COORDINATOR: &str = "CKRUN_COORDINATOR";
/// Environment: explicit path of `libckpt.so`.
pub const ENV_PRELOAD: &str = "CKRUN_PRELOAD";

pub mod semadj;

/// The real-time signal the coordinator and the agent use to stop threads.
/// It is reserved: the program's `sigaction` on it is virtualised and no
/// mask the program sets ever blocks it.
pub const SUSPEND_SIGNAL: i32 = 63;
/// SIGUSR2: the default checkpoint trigger.
pub const DEFAULT_TRIGGER: i32 = 12;

/// `si_value` carried by the suspend signal, so a stray `kill -63` from
/// someone else is not taken for a checkpoint. The low byte says why.
pub const SUSPEND_MAGIC: u64 = 0x636b_7275_6e00_0000;
/// Low byte of [`SUSPEND_MAGIC`]: the coordinator asks this process to lead.
pub const SUSPEND_LEAD: u64 = 1;
/// Low byte of [`SUSPEND_MAGIC`]: the leading thread asks a sibling to park.
pub const SUSPEND_PARK: u64 = 2;
/// Bit 7 of a LEAD value: the coordinator has no dirty tracker of this
/// process's memory and asks for one ([`kind::TRACKER`]).
pub const SUSPEND_TRACKER: u64 = 1 << 7;
/// The bits of the low byte that say why (lead or park).
pub const SUSPEND_KIND_MASK: u64 = 0x7f;
/// Bit 8 of a LEAD value: keep the program frozen (`--no-fork`).
pub const SUSPEND_FROZEN: u64 = 1 << 8;
/// Bits 9..24 of a LEAD value: the coordinator's request number
/// (1..=32767), echoed in [`Suspended::request`] and named by the
/// [`Resume`] that ends it, so that a late or stale RESUME is never taken
/// for another's. (Seven bits wrapped after 127 requests, which fifty
/// checkpoints with retries can reach: a RESUME left queued for an old
/// request could then have matched a new one.)
pub const SUSPEND_REQUEST_SHIFT: u32 = 9;
pub const SUSPEND_REQUEST_MASK: u64 = 0x7fff;
/// The bits of a suspend value below [`SUSPEND_MAGIC`]'s.
pub const SUSPEND_VALUE_BITS: u64 = 0xff_ffff;
const _: () = assert!(SUSPEND_MAGIC & SUSPEND_VALUE_BITS == 0);
const _: () = assert!((SUSPEND_REQUEST_MASK << SUSPEND_REQUEST_SHIFT) & !SUSPEND_VALUE_BITS == 0);

/// The name (comm) a copy-on-write snapshot child gives itself, so that
/// the coordinator never takes one for a process of the program.
pub const SNAPSHOT_NAME: &core::ffi::CStr = c"ckrun-snapshot";

/// The agent moves its coordinator connection to the first free fd at or
/// above this number, out of the way of the program's own descriptors.
pub const AGENT_FD_MIN: i32 = 1000;
/// Most threads one process may have at a checkpoint.
pub const MAX_THREADS: usize = 4096;

pub const PROTOCOL_VERSION: u32 = 3;

/// Callee-saved registers and the resume point of a thread parked inside
/// the agent. Restoring them (plus the thread pointer) is enough to resume
/// the thread inside its suspend-signal handler; the handler's return then
/// goes through the kernel's `rt_sigreturn`, which restores every other
/// register, the FPU/AVX state, the signal mask and the sigaltstack from the
/// signal frame saved with memory.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SavedContext {
    pub rbx: u64,
    pub rbp: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rsp: u64,
    pub rip: u64,
}

/// [`ThreadRecord::flags`]: glibc's rseq area of this thread is registered.
pub const THREAD_RSEQ: u32 = 1;
/// [`ThreadRecord::flags`]: this thread led the checkpoint.
pub const THREAD_LEADER: u32 = 2;

/// Everything about one thread that its memory does not hold.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadRecord {
    pub tid: i32,
    pub flags: u32,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ctx: SavedContext,
    pub robust_head: u64,
    pub robust_len: u64,
    pub clear_child_tid: u64,
    pub rseq_area: u64,
    pub rseq_len: u32,
    pub rseq_sig: u32,
    pub comm: [u8; 16],
}

/// Message kinds. Agent → coordinator unless noted.
pub mod kind {
    /// [`super::Hello`]: a process of the tree checked in.
    pub const HELLO: u32 = 1;
    /// No body: the program received the trigger signal from outside.
    pub const CHECKPOINT_REQUEST: u32 = 2;
    /// [`super::Suspended`]: all threads parked; thread records follow.
    pub const SUSPENDED: u32 = 3;
    /// An array of [`super::ThreadRecord`].
    pub const THREADS: u32 = 4;
    /// [`super::Failure`]: the agent could not suspend its threads.
    pub const SUSPEND_FAILED: u32 = 5;
    /// [`super::Restored`]: the process runs again after a restart.
    pub const RESTORED: u32 = 6;
    /// [`super::RestoreFailure`]: sent by the restorer when a step failed.
    pub const RESTORE_FAILED: u32 = 7;
    /// Bytes: the absolute path of a file the program just created (for
    /// the coordinator's journal of files made since a checkpoint).
    pub const CREATED: u32 = 9;
    /// An array of [`super::MemRange`]: memory the program marked
    /// MADV_DONTFORK, made copyable for the snapshot and marked again;
    /// follows the thread records ([`super::Suspended::ndontfork`] in all).
    pub const DONTFORK: u32 = 8;
    /// An array of [`super::SemUndo`]: the answer to a
    /// [`SEM_PROBE`], non-zero adjustments only, in as many messages as
    /// it takes; [`SEM_UNDO_END`] ends it.
    pub const SEM_UNDO: u32 = 10;
    /// [`super::SemProbeEnd`]: one per [`SEM_PROBE`], after its SEM_UNDOs.
    pub const SEM_UNDO_END: u32 = 11;
    /// No body, one userfaultfd passed with it (SCM_RIGHTS): made by the
    /// process for its own memory (write-protect, async), asked for by
    /// [`super::SUSPEND_TRACKER`]; sent before [`SUSPENDED`], and closed
    /// in the process before that, so that the program never holds it
    /// while its fds are read.
    pub const TRACKER: u32 = 12;
    /// Coordinator → agent, [`super::Resume`]: let the threads go.
    pub const RESUME: u32 = 100;
    /// Coordinator → agent, [`super::Config`]: settings after a restart.
    pub const CONFIG: u32 = 101;
    /// Coordinator → agent while the tree is stopped (before RESUME): an
    /// array of [`super::SemSet`], at most [`super::MAX_PROBE_SETS`]:
    /// read this process's SEM_UNDO adjustments of these semaphore sets.
    pub const SEM_PROBE: u32 = 102;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsgHeader {
    pub kind: u32,
    /// Number of records that follow the header.
    pub count: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hello {
    pub version: u32,
    pub pid: i32,
    /// The fd number the agent keeps its connection on; restored at restart
    /// as a fresh connection to the new coordinator.
    pub agent_fd: i32,
    pub trigger: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Suspended {
    pub epoch: u64,
    /// Copy-on-write child holding the snapshot, or 0 when the program itself
    /// stays frozen until [`kind::RESUME`].
    pub snapshot_pid: i32,
    pub nthreads: u32,
    /// Program break (`brk(0)`), which /proc does not show.
    pub brk: u64,
    /// prctl(PR_GET_SECUREBITS) and prctl(PR_GET_DUMPABLE), which /proc
    /// does not show either.
    pub securebits: u32,
    pub dumpable: u32,
    /// The request this answers (see [`SUSPEND_REQUEST_SHIFT`]).
    pub request: u32,
    /// How many [`MemRange`]s the [`kind::DONTFORK`] messages hold.
    pub ndontfork: u32,
}

/// Most MADV_DONTFORK mappings the agent makes copyable for one snapshot;
/// further ones stay out of it (and fail the checkpoint, by name).
pub const MAX_DONTFORK: usize = 4096;

/// A range of addresses, `[start, end)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemRange {
    pub start: u64,
    pub end: u64,
}

/// A SysV semaphore set whose undo adjustments the agent reads.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SemSet {
    pub id: i32,
    pub nsems: u32,
}

/// Most sets in one [`kind::SEM_PROBE`]: the agent receives it into a
/// 256-byte buffer on its stack.
pub const MAX_PROBE_SETS: usize = 24;
const _: () = assert!(8 + MAX_PROBE_SETS * core::mem::size_of::<SemSet>() <= 256);

/// This process's undo adjustment (semadj) of semaphore `num` of set `id`:
/// what the kernel adds to the semaphore's value when the process exits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SemUndo {
    pub id: i32,
    pub num: u32,
    pub adj: i32,
}

/// The end of the answer to one [`kind::SEM_PROBE`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SemProbeEnd {
    /// [`SemUndo`] records sent for this probe.
    pub entries: u32,
    /// Non-zero: the adjustments of set `unreadable_id` could not be read,
    /// and why (EAGAIN: its values kept changing under the probe, which
    /// only a process outside the tree can do while the tree is stopped).
    pub errno: i32,
    pub unreadable_id: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failure {
    pub errno: i32,
    pub tid: i32,
    pub text: [u8; 120],
}

impl Failure {
    pub fn new(errno: i32, tid: i32, text: &str) -> Self {
        let mut f = Failure { errno, tid, text: [0; 120] };
        let n = text.len().min(f.text.len() - 1);
        f.text[..n].copy_from_slice(&text.as_bytes()[..n]);
        f
    }
    pub fn text(&self) -> &str {
        let end = self.text.iter().position(|&b| b == 0).unwrap_or(self.text.len());
        core::str::from_utf8(&self.text[..end]).unwrap_or("?")
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    pub pid: i32,
    pub nthreads: u32,
}

/// Which step of the restorer's plan failed, and how.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RestoreFailure {
    pub index: u64,
    /// The raw syscall result (a negative errno).
    pub result: i64,
    pub syscall: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resume {
    /// Non-zero: the checkpoint was abandoned (the threads resume all the same).
    pub aborted: u32,
    /// The request whose stop this ends.
    pub request: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub trigger: i32,
    /// The new coordinator's pid.
    pub coordinator: i32,
    /// Its socket's abstract name, NUL-terminated (programs exec'd from
    /// now on connect there).
    pub socket: [u8; 104],
}

impl Config {
    pub fn new(trigger: i32, coordinator: i32, socket: &str) -> Self {
        let mut c = Config { trigger, coordinator, socket: [0; 104] };
        let n = socket.len().min(c.socket.len() - 1);
        c.socket[..n].copy_from_slice(&socket.as_bytes()[..n]);
        c
    }

    pub fn socket_name(&self) -> &[u8] {
        &self.socket[..self.socket.iter().position(|&b| b == 0).unwrap_or(self.socket.len())]
    }
}

/// Plain old data: `#[repr(C)]`, no padding bytes, no pointers, every bit
/// pattern valid. Only such types cross the socket.
///
/// # Safety
/// Implementors must satisfy all of the above.
pub unsafe trait Pod: Copy + 'static {}
// SAFETY: each is repr(C), made of integers laid out without padding
// (field sizes are multiples of the following fields' alignment).
unsafe impl Pod for SavedContext {}
// SAFETY: as above; 4+4+8+8+64+8+8+8+8+4+4+16 bytes, no gaps.
unsafe impl Pod for ThreadRecord {}
// SAFETY: as above.
unsafe impl Pod for MsgHeader {}
// SAFETY: as above.
unsafe impl Pod for Hello {}
// SAFETY: as above.
unsafe impl Pod for Suspended {}
// SAFETY: as above.
unsafe impl Pod for Failure {}
// SAFETY: as above.
unsafe impl Pod for Restored {}
// SAFETY: as above.
unsafe impl Pod for Resume {}
// SAFETY: as above.
unsafe impl Pod for RestoreFailure {}
// SAFETY: as above.
unsafe impl Pod for Config {}
// SAFETY: as above: two u64.
unsafe impl Pod for MemRange {}
// SAFETY: as above: two 4-byte integers.
unsafe impl Pod for SemSet {}
// SAFETY: as above: three 4-byte integers.
unsafe impl Pod for SemUndo {}
// SAFETY: as above: three 4-byte integers.
unsafe impl Pod for SemProbeEnd {}
// SAFETY: a byte has no padding and every bit pattern is valid.
unsafe impl Pod for u8 {}

/// The bytes of a POD value.
pub fn bytes_of<T: Pod>(v: &T) -> &[u8] {
    // SAFETY: T is Pod: every byte is initialised and the slice covers exactly v.
    unsafe { core::slice::from_raw_parts(v as *const T as *const u8, core::mem::size_of::<T>()) }
}

/// The bytes of a slice of POD values.
pub fn bytes_of_slice<T: Pod>(v: &[T]) -> &[u8] {
    // SAFETY: as for bytes_of, over the whole slice.
    unsafe { core::slice::from_raw_parts(v.as_ptr() as *const u8, core::mem::size_of_val(v)) }
}

/// Reads a POD value from the start of `b`, if it is long enough.
pub fn read_pod<T: Pod>(b: &[u8]) -> Option<T> {
    if b.len() < core::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: length checked; T is Pod so any bytes are a valid T;
    // read_unaligned has no alignment requirement.
    Some(unsafe { core::ptr::read_unaligned(b.as_ptr() as *const T) })
}

/// Writes a message (header, then `body` records) into `buf` without
/// allocating; returns its length, or `None` when `buf` is too small.
pub fn encode<T: Pod>(buf: &mut [u8], kind: u32, body: &[T]) -> Option<usize> {
    let hdr = MsgHeader { kind, count: body.len() as u32 };
    let h = bytes_of(&hdr);
    let b = bytes_of_slice(body);
    let n = h.len() + b.len();
    if buf.len() < n {
        return None;
    }
    buf[..h.len()].copy_from_slice(h);
    buf[h.len()..n].copy_from_slice(b);
    Some(n)
}

/// Splits a received datagram into its header and its records.
pub fn decode<T: Pod>(msg: &[u8]) -> Option<(MsgHeader, Vec<T>)> {
    let hdr: MsgHeader = read_pod(msg)?;
    let sz = core::mem::size_of::<T>();
    let body = &msg[core::mem::size_of::<MsgHeader>()..];
    if sz == 0 || body.len() != sz * hdr.count as usize {
        return None;
    }
    Some((hdr, body.chunks_exact(sz).map(|c| read_pod(c).unwrap()).collect()))
}

/// The header at the start of the restorer's data page, shared by the
/// launcher (which writes it) and the agent (which, once restarted, unmaps
/// the restorer with it). All fields are u64; offsets are in bytes.
pub mod restorer_header {
    pub const MAGIC: u64 = 0x5253_4e55_524b_4321; // "!CKRUNSR"
    pub const OFF_MAGIC: usize = 0;
    pub const OFF_OPS: usize = 8;
    pub const OFF_NOPS: usize = 16;
    pub const OFF_STACK_TOP: usize = 24;
    pub const OFF_REPORT_FD: usize = 32;
    /// Start and length of the whole restorer reservation (code and data).
    pub const OFF_BLOB_BASE: usize = 40;
    pub const OFF_BLOB_LEN: usize = 48;
    /// A ready-made RESTORE_FAILED message (header, then a
    /// `RestoreFailure` the restorer fills) that it sends when a step fails.
    pub const OFF_FAIL_MSG: usize = 56;
    pub const OFF_FAIL_INDEX: usize = 64;
    pub const OFF_FAIL_RESULT: usize = 72;
    pub const OFF_FAIL_NR: usize = 80;
    pub const FAIL_MSG_LEN: usize = 32;
    /// Non-zero: each restored thread takes the credentials that follow
    /// before the program resumes (the restore process kept the
    /// capabilities the restorer needs; the program gets its own).
    pub const OFF_CREDS: usize = 88;
    /// Capability sets, each a u64 (bit n: capability n).
    pub const OFF_CAP_EFFECTIVE: usize = 96;
    pub const OFF_CAP_PERMITTED: usize = 104;
    pub const OFF_CAP_INHERITABLE: usize = 112;
    pub const OFF_CAP_BOUNDING: usize = 120;
    pub const OFF_CAP_AMBIENT: usize = 128;
    pub const OFF_SECUREBITS: usize = 136;
    pub const OFF_NO_NEW_PRIVS: usize = 144;
    pub const OFF_DUMPABLE: usize = 152;
    pub const SIZE: usize = 192;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_have_no_padding() {
        assert_eq!(core::mem::size_of::<SavedContext>(), 64);
        assert_eq!(core::mem::size_of::<ThreadRecord>(), 4 + 4 + 8 + 8 + 64 + 8 * 4 + 8 + 16);
        assert_eq!(core::mem::size_of::<Failure>(), 128);
    }

    #[test]
    fn encode_decode_round_trip() {
        let recs = [ThreadRecord { tid: 7, fs_base: 0x1234, ..Default::default() }; 3];
        let mut buf = [0u8; 1024];
        let n = encode(&mut buf, kind::THREADS, &recs).unwrap();
        let (h, back): (MsgHeader, Vec<ThreadRecord>) = decode(&buf[..n]).unwrap();
        assert_eq!(h.kind, kind::THREADS);
        assert_eq!(back, recs);
        assert!(decode::<ThreadRecord>(&buf[..n - 1]).is_none());
        assert!(encode(&mut buf[..10], kind::THREADS, &recs).is_none());
    }
}
