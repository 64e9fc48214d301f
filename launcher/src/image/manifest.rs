//! What an image holds besides page data: the process tree, each
//! process's memory regions (with references to their page chunks), file
//! descriptors, threads and kernel state. Serialised with bincode; the
//! types are the format, so a change here bumps `FORMAT_VERSION`.

use ckrun_proto::ThreadRecord;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub info: ImageInfo,
    pub settings: Settings,
    /// The program ckrun started.
    pub root: i32,
    /// Its wait status, if it had ended while other processes of the tree
    /// went on (ckrun exits with it once they are all gone).
    pub root_status: Option<i32>,
    /// Parents before their children.
    pub processes: Vec<ProcessImage>,
    /// Exited children not yet reaped by their parent.
    pub zombies: Vec<Zombie>,
    /// Open file descriptions of the whole tree; `FdImage::desc` indexes
    /// this, so that processes that shared one (fork, SCM_RIGHTS) share it
    /// again.
    pub files: Vec<OpenFile>,
    /// Deleted files, memfds and shared anonymous memory of the tree.
    pub ghosts: Vec<GhostFile>,
    /// Pipes and FIFOs of the tree, with the bytes in flight.
    pub pipes: Vec<PipeImage>,
    /// The SysV semaphore sets, message queues and shared memory
    /// segments the job uses.
    pub sysv: Vec<crate::sysv::SysvObject>,
    /// The process group of the tree that was the foreground group of its
    /// controlling terminal (an interactive shell, a full-screen program):
    /// a restart makes it the foreground group of ckrun's terminal again.
    pub foreground: Option<i32>,
    /// Which earlier images this one takes pages from (incremental
    /// images), and the page hashes a later one is deduplicated against.
    pub lineage: crate::image::lineage::Lineage,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Zombie {
    pub pid: i32,
    pub ppid: i32,
    /// As wait() reports it.
    pub status: i32,
}

/// Where and when the image was made.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageInfo {
    pub ckrun_version: String,
    pub created_unix_ms: u64,
    pub hostname: String,
    /// `uname -r` and `uname -v`: the vDSO and the signal frame layout
    /// belong to one kernel build.
    pub kernel_release: String,
    pub kernel_version: String,
    /// XCR0 of the checkpointing machine: the xsave state components
    /// (AVX, AVX-512, PKRU, AMX...) the program may use; a restart needs
    /// them all (see `sys::machine`).
    pub xsave_features: u64,
    /// The program's CLOCK_MONOTONIC and CLOCK_BOOTTIME when it was
    /// stopped: a restart continues them (see `crate::timens`).
    pub clocks: crate::timens::Clocks,
    /// The command line ckrun was started with.
    pub command: Vec<String>,
    /// This image's number in the run (the N in NAME.PID.N.ckimg).
    pub sequence: u32,
    /// How long the program was stopped, and the whole checkpoint.
    pub paused_us: u64,
    /// Bytes of page data before compression.
    pub memory_bytes: u64,
}

/// Settings of the run, kept across restarts unless overridden.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Settings {
    pub dir: PathBuf,
    pub trigger: i32,
    pub frozen: bool,
    /// Abstract socket name the agents connect to; reused at restart so
    /// that programs exec'd later still find the coordinator.
    pub socket_name: String,
    /// Base name of images: PROGRAM in PROGRAM.PID.N.ckimg.
    pub image_name: String,
    /// Refuse to checkpoint when an fd cannot be restored (else: it comes
    /// back closed, with a warning).
    pub strict: bool,
    /// `--key-file`: images of this job are sealed with the key it holds
    /// (the key itself is never stored).
    pub key_file: Option<PathBuf>,
    /// `--interval`, in milliseconds: a checkpoint that long after the end
    /// of the previous one.
    pub interval_ms: Option<u64>,
    /// `--keep`: the job's images kept after each new one.
    pub keep: Option<u32>,
    /// `--stop-signal`: checkpoint, end the tree, exit 85.
    pub stop_signal: Option<i32>,
    /// `--full`: every image is self-contained (takes no page from an
    /// earlier one).
    pub full: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ProcessImage {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub exe: FileRef,
    pub cwd: PathBuf,
    pub umask: u32,
    pub personality: u32,
    pub rlimits: Vec<Rlimit>,
    pub mm: MmFields,
    /// /proc/PID/auxv words, AT_NULL pair included.
    pub auxv: Vec<u64>,
    pub regions: Vec<Region>,
    /// Descriptors; `desc` indexes `Manifest::files`.
    pub fds: Vec<FdImage>,
    /// Signals pending for the whole process at the checkpoint (kernel
    /// sigset bits); each thread's own are in its `ThreadImage`.
    pub pending: u64,
    pub threads: Vec<ThreadImage>,
    /// fd number of the agent's coordinator connection.
    pub agent_fd: i32,
    /// Who the process is and what it may do.
    pub creds: Credentials,
}

/// A process's credentials, as /proc/PID/status and the agent report
/// them. A restart gives them back exactly, and never more than the
/// image's owner has (see `crate::creds`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Credentials {
    /// Real, effective, saved and file-system user ID.
    pub uid: [u32; 4],
    /// Real, effective, saved and file-system group ID.
    pub gid: [u32; 4],
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Capability sets (bit n: capability n).
    pub cap_inheritable: u64,
    pub cap_permitted: u64,
    pub cap_effective: u64,
    pub cap_bounding: u64,
    pub cap_ambient: u64,
    pub no_new_privs: bool,
    /// prctl(PR_GET_SECUREBITS).
    pub securebits: u32,
    /// prctl(PR_GET_DUMPABLE).
    pub dumpable: u32,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Rlimit {
    pub resource: u32,
    pub cur: u64,
    pub max: u64,
}

/// The mm fields PR_SET_MM_MAP takes.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MmFields {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
}

/// A file the image depends on, with what identifies its content.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileRef {
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: i64,
    pub inode: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Region {
    pub start: u64,
    pub end: u64,
    /// PROT_* bits.
    pub prot: i32,
    pub shared: bool,
    pub kind: RegionKind,
    /// As /proc/PID/maps named it, for people.
    pub name: String,
    /// `REGION_*` bits: what the program asked of this mapping beyond its
    /// protection, given back to it at restart.
    pub flags: u32,
    /// Saved pages, in ascending address order, not overlapping.
    #[serde(with = "super::chunk_list")]
    pub chunks: Vec<ChunkRef>,
}

/// [`Region::flags`]: `madvise(MADV_DONTFORK)` (VmFlags "dc").
pub const REGION_DONTFORK: u32 = 1;
/// [`Region::flags`]: mapped with `MAP_NORESERVE` (VmFlags "nr"): no swap
/// space is reserved for it, so it may be far larger than memory.
pub const REGION_NORESERVE: u32 = 2;
/// [`Region::flags`]: `madvise(MADV_WIPEONFORK)` (VmFlags "wf").
pub const REGION_WIPEONFORK: u32 = 4;
pub const REGION_FLAGS: u32 = REGION_DONTFORK | REGION_NORESERVE | REGION_WIPEONFORK;

impl Region {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
    pub fn saved_pages(&self) -> u64 {
        self.chunks.iter().map(|c| c.npages as u64).sum()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum RegionKind {
    /// Private anonymous memory (including the heap).
    Anon,
    /// The main thread's stack: grows down.
    Stack,
    /// A file mapping: clean pages come back from the file, written
    /// (private) pages from the image. `offset` is the file offset of `start`.
    File {
        file: FileRef,
        offset: u64,
    },
    /// Memory with no file to come back from (a file replaced since it was
    /// mapped): every page is in the image.
    Detached,
    /// A mapping of a deleted file, memfd or shared anonymous memory,
    /// restored from the image's copy of its content (`Manifest::ghosts`).
    Ghost {
        ghost: u32,
        offset: u64,
    },
    /// An attachment of SysV shared memory segment `shmid`
    /// (`Manifest::sysv`): attached again at restart (`offset`: where in
    /// the segment `start` is), SHM_RDONLY if `read_only`.
    Sysv {
        shmid: i32,
        offset: u64,
        read_only: bool,
    },
    /// The kernel's vDSO group, moved back to this address at restart.
    Vvar,
    VvarVclock,
    Vdso,
}

/// A run of consecutive pages, taken from one stored block: an lz4 block
/// of `block_pages` pages in this image (`image` 0) or in an earlier image
/// of the job (`image` k: `Manifest::lineage.parents[k - 1]`), of which
/// this run is the `npages` pages after the first `skip`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkRef {
    /// First page's address.
    pub addr: u64,
    pub npages: u32,
    /// Compressed length and position of the block in its image file.
    pub clen: u32,
    pub offset: u64,
    /// xxh3-64 of the compressed bytes.
    pub checksum: u64,
    /// 0: this image; k >= 1: the k-th of `lineage.parents`.
    pub image: u32,
    /// Pages of the block before this run.
    pub skip: u32,
    /// Pages the block decompresses to.
    pub block_pages: u32,
}

impl ChunkRef {
    /// A block of this image, all of whose pages the run restores.
    pub fn own(addr: u64, npages: u32, clen: u32, offset: u64, checksum: u64) -> ChunkRef {
        ChunkRef { addr, npages, clen, offset, checksum, image: 0, skip: 0, block_pages: npages }
    }

    /// Whether the run is its block, whole.
    pub fn is_whole_block(&self) -> bool {
        self.skip == 0 && self.npages == self.block_pages
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FdImage {
    pub fd: i32,
    pub cloexec: bool,
    pub desc: u32,
}

/// One open file description, by kind. Each kind is captured and restored
/// by its module in `crate::fdtypes`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum OpenFile {
    /// Reopened by path at the same offset, with the same flags and locks.
    Path {
        path: PathBuf,
        flags: i32,
        pos: u64,
        kind: PathKind,
        locks: Vec<FileLock>,
        /// Size at the checkpoint of a regular file open for writing: what
        /// the job wrote after the checkpoint is cut off at restart (it
        /// writes it again), so output files end as after an
        /// uninterrupted run.
        written_size: Option<u64>,
        /// Device and inode at the checkpoint: a restart refuses to use
        /// another file that has taken the path since.
        identity: FileIdentity,
        /// The content of a file the job writes, saved within the
        /// checkpoint's budget (`fdtypes::file::save_budget`): a
        /// restart that finds the file gone (a temporary the job deleted
        /// after the checkpoint) makes it again with it.
        content: Option<SavedContent>,
    },
    /// The terminal or a pipe/socket from outside the tree, on fd 0..2 of
    /// the program: at restart the program gets ckrun's own fd `fd` (with
    /// the terminal settings the program had, if both are terminals).
    Inherited {
        fd: i32,
        what: String,
        termios: Option<Vec<u8>>,
    },
    /// A deleted file or a memfd, recreated from the image.
    Ghost {
        ghost: u32,
        flags: i32,
        pos: u64,
        locks: Vec<FileLock>,
    },
    /// One end of `Manifest::pipes[pipe]`.
    Pipe {
        pipe: u32,
        write: bool,
        flags: i32,
    },
    EventFd {
        count: u64,
        flags: i32,
    },
    /// Remaining time and interval; `ticks` expirations not yet read.
    TimerFd {
        clock: i32,
        flags: i32,
        value_ns: u64,
        interval_ns: u64,
        ticks: u64,
    },
    SignalFd {
        mask: u64,
        flags: i32,
    },
    /// The interest list, by target fd number.
    Epoll {
        flags: i32,
        items: Vec<EpollItem>,
    },
    Socket(SocketImage),
    /// A file of /proc: `/proc/PID/REL` for a process of the tree (`pid`),
    /// or `/proc/REL`; reopened for the restored process.
    Proc {
        pid: Option<i32>,
        rel: PathBuf,
        flags: i32,
        pos: u64,
    },
    /// Not restorable: restored as a closed descriptor.
    Unsupported {
        what: String,
    },
}

/// A file's bytes at the checkpoint, and its mode.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SavedContent {
    pub mode: u32,
    pub size: u64,
    /// Page-padded pieces; `ChunkRef::addr` is the file offset.
    #[serde(with = "super::chunk_list")]
    pub chunks: Vec<ChunkRef>,
}

/// A socket: its kind, options, and what it was doing.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SocketImage {
    pub domain: i32,
    /// SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET.
    pub stype: i32,
    pub protocol: i32,
    /// O_NONBLOCK and friends.
    pub flags: i32,
    /// (level, option, value) of the integer options worth keeping.
    pub options: Vec<(i32, i32, i32)>,
    pub state: SocketState,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum SocketState {
    /// Created, neither bound nor connected.
    Fresh,
    /// Bound to `addr` (a sockaddr); listening with `backlog` if set.
    Bound { addr: Vec<u8>, backlog: Option<i32> },
    /// One end of a connection inside the tree (a unix socket pair, or a
    /// TCP connection whose two ends are both the job's): `key` is the
    /// lower of the two socket inodes, `first` says which end; `queued`
    /// holds what waited in this end's receive queue (one entry per
    /// datagram, or one for a stream); `eof`: the other end had shut down
    /// writing, so this end reads EOF after the queued bytes.
    Pair { key: u64, first: bool, queued: Vec<Vec<u8>>, eof: bool },
    /// Connected to a peer outside the tree, or to one that is gone: comes
    /// back as a socket whose peer has closed, with the bytes that waited
    /// in its receive queue first (then reads see EOF, writes EPIPE).
    Disconnected { peer: String, queued: Vec<Vec<u8>> },
}

/// What tells one file from another at the same path.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileIdentity {
    pub dev: u64,
    pub inode: u64,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum LockKind {
    /// fcntl(F_SETLK): owned by the process.
    Posix,
    /// flock(): owned by the open file description.
    Flock,
    /// fcntl(F_OFD_SETLK): owned by the open file description.
    Ofd,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileLock {
    pub kind: LockKind,
    pub write: bool,
    pub start: u64,
    /// Bytes locked; 0 means to the end of the file.
    pub len: u64,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EpollItem {
    pub fd: i32,
    pub events: u32,
    pub data: u64,
}

/// A file that no path reaches any more: deleted while open, a memfd, or
/// shared anonymous memory (recreated as a memfd).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct GhostFile {
    /// The path it had (recreated there, then unlinked), or the memfd name.
    pub path: PathBuf,
    pub memfd: bool,
    /// It still had its name at the checkpoint (a POSIX shared memory
    /// object in /dev/shm, which lives as long as the machine runs and is
    /// gone after a reboot): the restart gives the name back, with the
    /// checkpoint's content.
    pub named: bool,
    pub mode: u32,
    pub size: u64,
    /// memfd seals (F_GET_SEALS).
    pub seals: i32,
    /// Identity, to match the process's mappings of it.
    pub dev: (u32, u32),
    pub inode: u64,
    /// Content, in page-padded pieces; `ChunkRef::addr` is the file offset.
    #[serde(with = "super::chunk_list")]
    pub chunks: Vec<ChunkRef>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PipeImage {
    pub inode: u64,
    /// The named FIFO, if it is one.
    pub fifo: Option<PathBuf>,
    pub capacity: u32,
    /// Bytes written but not yet read at the checkpoint, in order.
    pub data: Vec<u8>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum PathKind {
    Regular,
    Directory,
    CharDevice,
}

/// A thread: the agent's record, kept whole.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ThreadImage {
    pub tid: i32,
    pub flags: u32,
    pub fs_base: u64,
    pub gs_base: u64,
    /// rbx rbp r12 r13 r14 r15 rsp rip of the parked thread.
    pub ctx: [u64; 8],
    pub comm: [u8; 16],
    /// Signals pending for this thread only (kernel sigset bits).
    pub pending: u64,
}

impl From<&ThreadRecord> for ThreadImage {
    fn from(r: &ThreadRecord) -> Self {
        let c = &r.ctx;
        ThreadImage {
            tid: r.tid,
            flags: r.flags,
            fs_base: r.fs_base,
            gs_base: r.gs_base,
            ctx: [c.rbx, c.rbp, c.r12, c.r13, c.r14, c.r15, c.rsp, c.rip],
            comm: r.comm,
            pending: 0,
        }
    }
}

impl ThreadImage {
    pub fn name(&self) -> String {
        let end = self.comm.iter().position(|&b| b == 0).unwrap_or(16);
        String::from_utf8_lossy(&self.comm[..end]).into_owned()
    }
}

impl ProcessImage {
    pub fn program_name(&self) -> String {
        self.exe.path.file_name().map_or_else(|| "program".into(), |n| n.to_string_lossy().into_owned())
    }
    /// Bytes of page data the image holds for this process.
    pub fn saved_bytes(&self) -> u64 {
        self.regions.iter().map(|r| r.saved_pages() * crate::sys::PAGE_SIZE).sum()
    }
}
