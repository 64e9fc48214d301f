//! Issue 4: open files, pipes and event fds. The whole fd table must come
//! back as it was: regular files with their offsets, flags, sharing and
//! locks; deleted files and memfds with their content; pipes and FIFOs with
//! the bytes in flight; devices; epoll, eventfd, timerfd and signalfd with
//! their state; the terminal with its settings. What cannot come back must
//! be named at the checkpoint and come back closed (or, with `--strict`,
//! stop the checkpoint).
//!
//! The programs (`examples/fd_*.c`, `examples/fd_files.py`) check their
//! own fds every tick and print `FAIL tick N: ...` and exit 1 when
//! something is off, so a failing test shows that line in the tail of the
//! program's output.
//!
//! Needs the product built: `cargo build --workspace` first.
//!
//! Two things the shared harness (`src/lib.rs`) lacks are done here:
//! - comparing the whole directory tree of the bare and ckrun runs
//!   ([`assert_same_tree`]): `assert_same_files` reads every top-level
//!   entry as a file, so it fails on the `sub/` directory of fd_files and
//!   would block on a FIFO;
//! - running a program on a terminal ([`TtyJob`]): `Ckrun::launch` sends
//!   the program's stdout to `out.txt`.

use std::ffi::{CStr, OsStr, OsString};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ckrun_suite::{
    assert_same_output, ckrun_bin, complete_lines, exit_code, list_images, sys, tick_of, BareRun, Ckrun, ImageName,
    Program, TestDir, OUT_FILE, POLL, TIMEOUT,
};

/// Ticks to let pass after a checkpoint before the SIGKILL (as in
/// tests/spine.rs).
const RUN_ON: u64 = 5;

/// Exit code of every fd_* example when all its checks pass.
const OK: i32 = 0;

// ---------------------------------------------------------------------------
// The spine cycle, with hooks
// ---------------------------------------------------------------------------

/// Points of the cycle where a test may look at the running job.
enum Stage<'a> {
    /// Checkpoint `n` (1 or 2) was just written to `image`.
    Checkpointed { n: u32, job: &'a mut Ckrun, image: &'a Path },
    /// The first restart is running past what the killed run had printed.
    Restored { job: &'a mut Ckrun },
}

/// Runs `prog ARGS` bare and checks that the reference itself is sound: a
/// failure here is a bug in the test or the example, not in ckrun.
fn reference(prog: &Program, args: &[&str], dir: &Path) -> BareRun {
    let run = prog.run_bare(args, dir);
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.code == OK
            && run.stderr.is_empty()
            && !out.contains("FAIL")
            && out.lines().last().is_some_and(|l| l.starts_with("done")),
        "test bug: the bare run of {} {args:?} is not clean: code {}, stderr {:?}, stdout tail:\n{}",
        prog.name(),
        run.code,
        String::from_utf8_lossy(&run.stderr),
        out.lines().rev().take(5).collect::<Vec<_>>().join("\n")
    );
    run
}

/// The cycle of tests/spine.rs: bare run; launch; tick 30; checkpoint;
/// run on; kill -9; restart; run past the killed run; checkpoint; run on;
/// kill -9; restart to completion; same output, exit code and files as
/// the bare run, and only the two requested images.
fn spine(test: &str, prog: &Program, args: &[&str]) {
    spine_with(test, prog, args, |_| {});
}

/// [`spine`], calling `hook` at each [`Stage`]; returns the test's
/// directory for further checks.
fn spine_with(test: &str, prog: &Program, args: &[&str], mut hook: impl FnMut(Stage<'_>)) -> TestDir {
    let dir = TestDir::new(test);
    let reference = reference(prog, args, &dir.bare);

    let mut job = Ckrun::launch(prog, args, &dir.work, &dir.img, &[]);
    job.wait_for_tick(30);
    let img1 = job.checkpoint(TIMEOUT);
    hook(Stage::Checkpointed { n: 1, job: &mut job, image: &img1 });
    let at = job.last_tick().unwrap();
    job.wait_for_tick(at + RUN_ON);
    job.kill9();
    let killed_at = job.last_tick().unwrap();

    let mut job = Ckrun::restart(&img1, &dir.work, &[]);
    job.wait_for_tick(killed_at + 10);
    hook(Stage::Restored { job: &mut job });
    let img2 = job.checkpoint(TIMEOUT);
    hook(Stage::Checkpointed { n: 2, job: &mut job, image: &img2 });
    let at = job.last_tick().unwrap();
    job.wait_for_tick(at + RUN_ON);
    job.kill9();

    let name1 = ImageName::parse(&img1).unwrap();
    let name2 = ImageName::parse(&img2).unwrap();
    assert_eq!(name2.pid, name1.pid, "a restart must keep the pid: {img1:?} then {img2:?}");

    let mut job = Ckrun::restart(&img2, &dir.work, &[]);
    let code = job.wait(TIMEOUT);
    assert_eq!(code, reference.code, "exit code after restart\n{}", job.diagnostics());
    assert_same_output(&reference.stdout, &job.output(), test);
    assert_same_tree(&dir.bare, &dir.work);
    assert_eq!(list_images(&dir.img), vec![img1, img2], "only the requested images");
    dir
}

// ---------------------------------------------------------------------------
// Directory trees
// ---------------------------------------------------------------------------

/// Whether a top-level name in a work directory belongs to the harness
/// rather than to the program.
fn harness_file(name: &str) -> bool {
    name == OUT_FILE || name.ends_with(".stderr") || name.ends_with(".stdout")
}

/// The entries of `dir` (sorted), without the harness's files at the top.
fn entries(dir: &Path, top: bool) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("read_dir entry").file_name().to_string_lossy().into_owned())
        .filter(|n| !(top && harness_file(n)))
        .collect();
    names.sort();
    names
}

/// Asserts that the bare run and the ckrun run left the same tree: the same
/// names (in both directions: a file ckrun resurrected counts), the same
/// kinds, the same bytes in regular files. FIFOs are compared by kind only
/// (reading one would block).
fn assert_same_tree(bare: &Path, work: &Path) {
    compare_dirs(bare, work, true);
}

fn compare_dirs(bare: &Path, work: &Path, top: bool) {
    let (a, b) = (entries(bare, top), entries(work, top));
    assert_eq!(a, b, "the directories {} and {} hold different names", bare.display(), work.display());
    for name in a {
        let (pa, pb) = (bare.join(&name), work.join(&name));
        let (ta, tb) = (kind(&pa), kind(&pb));
        assert_eq!(ta, tb, "{} and {} are of different kinds", pa.display(), pb.display());
        match ta {
            "dir" => compare_dirs(&pa, &pb, false),
            "file" => {
                let (x, y) = (fs::read(&pa).unwrap(), fs::read(&pb).unwrap());
                assert!(
                    x == y,
                    "{} differs between the bare run ({} bytes) and the ckrun run ({} bytes)",
                    pb.display(),
                    x.len(),
                    y.len()
                );
            }
            _ => {}
        }
    }
}

fn kind(path: &Path) -> &'static str {
    let ft = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display())).file_type();
    if ft.is_dir() {
        "dir"
    } else if ft.is_file() {
        "file"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_symlink() {
        "symlink"
    } else {
        "other"
    }
}

// ---------------------------------------------------------------------------
// Bare runs: the examples themselves must be sound
// ---------------------------------------------------------------------------

/// Every example, with all its groups, run bare twice side by side: clean
/// (exit 0, no FAIL, nothing on stderr, ends with "done"), 200 ticks, quick,
/// and the same output and files both times. This one needs no ckrun
/// support and must pass now: it shows the other tests' failures are not
/// the examples' fault.
#[test]
fn examples_are_deterministic_when_run_bare() {
    let names = [
        "fd_files",
        "fd_deleted",
        "fd_pipes",
        "fd_devices",
        "fd_events",
        "fd_inotify",
        "fd_proc",
        "shm_posix",
        "fd_files.py",
    ];
    thread::scope(|s| {
        let handles: Vec<_> = names
            .iter()
            .map(|&name| {
                s.spawn(move || {
                    let prog = match name.strip_suffix(".py") {
                        Some(script) => Program::python(script),
                        None => Program::c(name),
                    };
                    let first = TestDir::new(&format!("fds-bare-{name}-1"));
                    let second = TestDir::new(&format!("fds-bare-{name}-2"));
                    let (a, b) = thread::scope(|s2| {
                        let a = s2.spawn(|| reference(&prog, &[], &first.bare));
                        let b = reference(&prog, &[], &second.bare);
                        (a.join().expect("first run"), b)
                    });
                    for run in [&a, &b] {
                        assert!(run.elapsed < Duration::from_secs(20), "{name} too slow: {:?}", run.elapsed);
                        assert_eq!(ckrun_suite::last_tick(&run.stdout), Some(200), "{name}");
                    }
                    assert_same_output(&a.stdout, &b.stdout, name);
                    assert_same_tree(&first.bare, &second.bare);
                })
            })
            .collect();
        for h in handles {
            h.join().expect("an example is not deterministic (see above)");
        }
    });
    // The terminal example too, on a pseudo-terminal of its own, twice.
    let first = tty_bare_run();
    let second = tty_bare_run();
    assert_eq!(first, second, "fd_tty prints different things on two bare runs");
}

// ---------------------------------------------------------------------------
// Regular files, directories, locks
// ---------------------------------------------------------------------------

/// O_RDONLY, O_WRONLY, O_RDWR, O_CLOEXEC, a relative open after
/// chdir, directory fds: same file, flags, FD_CLOEXEC and offset.
#[test]
fn files_basic() {
    spine("fds-files-basic", &Program::c("fd_files"), &["basic"]);
}

/// O_APPEND: each write lands at the end, and the file ends as in a bare
/// run, although the killed run appended past the checkpoint.
#[test]
fn files_append() {
    spine("fds-files-append", &Program::c("fd_files"), &["append"]);
}

/// A file the job rewrites in place (same size, other bytes): its content
/// comes back as it was at the checkpoint, although the killed run
/// rewrote records past it.
#[test]
fn files_rewritten_in_place() {
    spine("fds-files-inplace", &Program::c("fd_files"), &["inplace"]);
}

/// dup, dup2 to 77, dup3 to 78 with O_CLOEXEC share one offset; a separate
/// open of the same file keeps its own.
#[test]
fn files_shared_descriptions() {
    spine("fds-files-shared", &Program::c("fd_files"), &["shared"]);
}

/// POSIX record locks (write and read ranges), flock (exclusive and
/// shared) and an OFD lock held across checkpoint and restart.
#[test]
fn files_locks() {
    spine("fds-files-locks", &Program::c("fd_files"), &["locks"]);
}

/// Python file objects: a buffered text file with unflushed lines at the
/// checkpoint, a buffered reader, a read-write file with seek/tell, and an
/// os.dup() of it sharing the offset.
#[test]
fn python_file_objects() {
    spine("fds-files-py", &Program::python("fd_files"), &[]);
}

// ---------------------------------------------------------------------------
// Deleted files, shared mappings of them, memfds
// ---------------------------------------------------------------------------

/// A file unlinked while open (twice, as two open file descriptions of one
/// inode): content, size, offset, nlink 0, and no resurrected name.
#[test]
fn deleted_file_open() {
    spine("fds-deleted-unlinked", &Program::c("fd_deleted"), &["unlinked"]);
}

/// MAP_SHARED mappings of unlinked files, one with its fd kept (mapping and
/// fd must still be one file), one held by the mapping alone.
#[test]
fn deleted_file_mapped_shared() {
    spine("fds-deleted-mmap", &Program::c("fd_deleted"), &["mmap"]);
}

/// A deleted file whose directories were removed too (a build's temporary
/// directory): recreated where it was (the directories made for the
/// moment and removed again), so the fd still shows its old path, with its
/// content, and shared with its mapping.
#[test]
fn deleted_file_whose_directory_is_gone() {
    spine("fds-deleted-vanished", &Program::c("fd_deleted"), &["vanished"]);
}

/// Files of /proc kept open (/proc/self/status, maps, the fd directory,
/// /proc/meminfo): after a restart they describe the restored process,
/// and a sequential reader's offset is kept.
#[test]
fn proc_files_reopen_for_the_restored_process() {
    spine("fds-proc", &Program::c("fd_proc"), &[]);
}

/// A POSIX shared memory object (shm_open) mapped by two processes, which
/// open it by name all the time: saved with the image, recreated with the
/// checkpoint's content (not the killed run's later one) and given its
/// name back, shared by both again.
#[test]
fn posix_shared_memory_between_two_processes() {
    spine("fds-shm-posix", &Program::c("shm_posix"), &[]);
}

/// TCP inside the job: a connection between two of its processes comes
/// back connected with the bytes queued both ways (up to 50 KB), a
/// connection whose peer process is gone gives its unread bytes and then
/// EOF, and the listener is bound again to its port although the killed
/// run's connections hold it in TIME_WAIT.
#[test]
fn tcp_connections_inside_the_tree() {
    spine("fds-tcp-tree", &Program::c("tcp_tree"), &[]);
}

/// Temporary files the job writes and deletes (phases of 8 ticks): the
/// one open at the checkpoint is gone when the restart comes, and is made
/// again from the image with the checkpoint's content (and its name given
/// back only once the restart goes ahead).
///
/// The next phase's file, made by the killed run after the checkpoint and
/// created exclusively by the program, must have been set aside by each
/// restart (`PATH.ckrun-after-N`, named on stderr).
#[test]
fn a_written_file_deleted_after_the_checkpoint_comes_back() {
    let dir = TestDir::new("fds-temp");
    let prog = Program::c("fd_temp");
    let reference = reference(&prog, &[], &dir.bare);
    let mut job = Ckrun::launch(&prog, &[], &dir.work, &dir.img, &[]);
    job.wait_for_tick(30);
    let mut image = job.checkpoint(TIMEOUT);
    for round in 1..=2 {
        // Into the next 8-tick phase: its file made after the checkpoint.
        let at = job.last_tick().unwrap();
        job.wait_for_tick((at / 8 + 1) * 8 + 2);
        job.kill9();
        job = Ckrun::restart(&image, &dir.work, &[]);
        if round == 1 {
            let killed_at = job.last_tick().unwrap_or(0);
            job.wait_for_tick(killed_at + 10);
            image = job.checkpoint(TIMEOUT);
        }
    }
    let code = job.wait(TIMEOUT);
    assert_eq!(code, reference.code, "exit code after two restarts\n{}", job.diagnostics());
    assert_same_output(&reference.stdout, &job.output(), "fds-temp");
    let aside: Vec<PathBuf> = fs::read_dir(&dir.work)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains(".tmp.ckrun-after-"))
        .collect();
    assert_eq!(aside.len(), 2, "one file set aside per restart: {aside:?}\n{}", job.diagnostics());
    assert!(job.stderr().contains("ckrun: set aside "), "{}", job.diagnostics());
    for p in &aside {
        fs::remove_file(p).unwrap();
    }
    assert_same_tree(&dir.bare, &dir.work);
}

/// A SQLite database in WAL mode: the log is cut back to the checkpoint,
/// and the WAL index, which SQLite writes through a shared mapping, comes
/// back with its content at the checkpoint (before, the restart said
/// "disk I/O error"); SQLite's integrity check and its dump at the end are
/// the bare run's.
#[test]
fn sqlite_in_wal_mode() {
    spine("fds-sqlite-wal", &Program::python("sqlite_wal"), &[]);
}

/// A sealed memfd, written through its fd and a shared mapping.
#[test]
fn memfd_with_mapping_and_seals() {
    spine("fds-deleted-memfd", &Program::c("fd_deleted"), &["memfd"]);
}

// ---------------------------------------------------------------------------
// Pipes and FIFOs
// ---------------------------------------------------------------------------

/// A pipe with 3 blocks always in flight, and a 256 KiB pipe holding
/// 200000 bytes: exactly those bytes after a restart, pipe size kept.
#[test]
fn pipe_bytes_in_flight() {
    spine("fds-pipes-pipe", &Program::c("fd_pipes"), &["pipe"]);
}

/// A named FIFO opened O_RDWR with bytes in flight, still reachable by its
/// name after a restart.
#[test]
fn fifo_bytes_in_flight() {
    spine("fds-pipes-fifo", &Program::c("fd_pipes"), &["fifo"]);
}

/// Half-closed pipes: writing where the read end is closed gives EPIPE;
/// reading where the write end is closed gives the bytes left, then EOF.
#[test]
fn pipes_with_one_end_closed() {
    spine("fds-pipes-widowed", &Program::c("fd_pipes"), &["widowed"]);
}

/// A stdin pipe whose writer is gone, bytes still in it (`a | b` in the
/// job once `a` exited): the tree's pipe, saved with its bytes, not the
/// outside's (which a restart would replace with ckrun's stdin). A shell
/// pipeline lost the output of a whole stage so, once in ~30 runs of the
/// fifty-checkpoints test.
#[test]
fn stdin_pipe_whose_writer_exited() {
    spine("fds-pipes-widowed-stdin", &Program::c("fd_pipes"), &["widowed", "stdin"]);
}

// ---------------------------------------------------------------------------
// Devices
// ---------------------------------------------------------------------------

/// /dev/null, /dev/zero, /dev/urandom, /dev/full at fixed fd numbers.
#[test]
fn devices() {
    spine("fds-devices", &Program::c("fd_devices"), &[]);
}

// ---------------------------------------------------------------------------
// epoll, timerfd, eventfd, signalfd
// ---------------------------------------------------------------------------

/// A timerfd pacing the program through an epoll instance: interval kept,
/// re-armed, registrations kept.
#[test]
fn events_timerfd_and_epoll() {
    spine("fds-events-timer", &Program::c("fd_events"), &["timer"]);
}

/// eventfds (a counter usually pending at the checkpoint, and a semaphore).
#[test]
fn events_eventfd() {
    spine("fds-events-eventfd", &Program::c("fd_events"), &["eventfd"]);
}

/// A signalfd for SIGUSR1, with the signal pending across some checkpoints.
#[test]
fn events_signalfd() {
    spine("fds-events-signalfd", &Program::c("fd_events"), &["signalfd"]);
}

/// Everything in one epoll loop: timerfd, eventfd, pipe, signalfd.
#[test]
fn events_all_in_one_epoll() {
    spine("fds-events-all", &Program::c("fd_events"), &[]);
}

// ---------------------------------------------------------------------------
// What cannot be restored
// ---------------------------------------------------------------------------

/// The fd fd_inotify.c keeps its inotify instance at.
const INOTIFY_FD: i32 = 42;

/// Whether `stderr` has a `ckrun:` line naming fd 42 and inotify.
fn names_inotify_fd(stderr: &str) -> bool {
    let fd = format!("fd {INOTIFY_FD}");
    stderr.lines().any(|l| {
        let l = l.to_lowercase();
        l.starts_with("ckrun:") && l.contains(&fd) && l.contains("inotify")
    })
}

/// An inotify fd: the checkpoint names it (fd number and kind) on ckrun's
/// stderr; the restored program finds it closed (seen from outside in
/// /proc, and by the program itself, which says so on its stderr), and
/// otherwise runs on exactly as a bare run does.
#[test]
fn unrestorable_fd_is_reported_and_comes_back_closed() {
    let dir = spine_with("fds-inotify", &Program::c("fd_inotify"), &[], |stage| match stage {
        Stage::Checkpointed { n: 1, job, image } => {
            let stderr = job.stderr();
            assert!(
                names_inotify_fd(&stderr),
                "checkpoint {} must say on ckrun's stderr that fd {INOTIFY_FD} (inotify) will not be restored\n{}",
                image.display(),
                job.diagnostics()
            );
        }
        Stage::Restored { job } => {
            let pid = job.program_pid();
            let fd = PathBuf::from(format!("/proc/{pid}/fd/{INOTIFY_FD}"));
            assert!(
                fs::symlink_metadata(&fd).is_err(),
                "the restored program still has fd {INOTIFY_FD}: {:?}\n{}",
                fs::read_link(&fd),
                job.diagnostics()
            );
        }
        Stage::Checkpointed { .. } => {}
    });
    // The program's stderr is a file of the work directory (the launch's
    // ckrun-N.stderr, which the restored program reopens).
    let notice = format!("fd_inotify: fd {INOTIFY_FD} is closed (EBADF)");
    let said: Vec<String> = fs::read_dir(&dir.work)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "stderr"))
        .filter_map(|p| fs::read_to_string(p).ok())
        .filter(|s| s.contains(&notice))
        .collect();
    assert_eq!(said.len(), 1, "the restored program must have found fd {INOTIFY_FD} closed (and said so once)");
}

/// With `--strict`, a checkpoint of a program holding an fd ckrun cannot
/// restore fails with a clear message naming it; no image is written, and
/// the program runs on undisturbed to its normal end.
#[test]
fn strict_refuses_to_checkpoint_an_unrestorable_fd() {
    let dir = TestDir::new("fds-strict-inotify");
    let prog = Program::c("fd_inotify");
    let reference = reference(&prog, &[], &dir.bare);

    let mut job = Ckrun::launch(&prog, &[], &dir.work, &dir.img, &["--strict"]);
    job.wait_for_tick(30);
    sys::send_signal(job.ckrun_pid(), sys::SIGUSR2).expect("kill -USR2 ckrun");
    let deadline = Instant::now() + TIMEOUT;
    while !names_inotify_fd(&job.stderr()) {
        if !job.is_running() || Instant::now() >= deadline {
            panic!(
                "with --strict, a checkpoint request must fail with a `ckrun:` message naming fd {INOTIFY_FD} \
                 (inotify)\n{}",
                job.diagnostics()
            );
        }
        thread::sleep(POLL);
    }
    // Let the program run on a while: no image may turn up late either.
    let at = job.last_tick().unwrap();
    job.wait_for_tick(at + 10);
    // (The journal of files the job made, NAME.PID.created, is no image.)
    let left: Vec<PathBuf> = fs::read_dir(&dir.img)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| !p.to_string_lossy().ends_with(".created"))
        .collect();
    assert!(left.is_empty(), "a refused checkpoint must write no image (not even a temporary): {left:?}");
    assert!(
        !job.stderr().lines().any(|l| l.starts_with("ckrun: checkpoint") && l.contains(".ckimg")),
        "a refused checkpoint must not be announced as written\n{}",
        job.diagnostics()
    );

    let code = job.wait(TIMEOUT);
    assert_eq!(code, reference.code, "exit code\n{}", job.diagnostics());
    assert_same_output(&reference.stdout, &job.output(), "--strict");
    assert_same_tree(&dir.bare, &dir.work);
    assert!(list_images(&dir.img).is_empty());
}

/// `--strict` refuses only what cannot be restored: a program whose fds
/// are all restorable (devices, stdio on files) checkpoints and restarts.
#[test]
fn strict_checkpoints_a_restorable_fd_table() {
    let dir = TestDir::new("fds-strict-devices");
    let prog = Program::c("fd_devices");
    let reference = reference(&prog, &[], &dir.bare);

    let mut job = Ckrun::launch(&prog, &[], &dir.work, &dir.img, &["--strict"]);
    job.wait_for_tick(30);
    let img = job.checkpoint(TIMEOUT);
    let at = job.last_tick().unwrap();
    job.wait_for_tick(at + RUN_ON);
    job.kill9();

    let mut job = Ckrun::restart(&img, &dir.work, &[]);
    let code = job.wait(TIMEOUT);
    assert_eq!(code, reference.code, "exit code\n{}", job.diagnostics());
    assert_same_output(&reference.stdout, &job.output(), "--strict, restorable");
    assert_same_tree(&dir.bare, &dir.work);
}

// ---------------------------------------------------------------------------
// Terminals
// ---------------------------------------------------------------------------

/// A pseudo-terminal pair: the master (owned and read by a thread) and the
/// slave's path.
struct Pty {
    slave_path: PathBuf,
    output: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    reader: Option<thread::JoinHandle<()>>,
}

impl Pty {
    fn open() -> Pty {
        // SAFETY: plain libc calls on an fd we own; ptsname_r writes at
        // most `buf.len()` bytes into `buf`.
        let (master, slave_path) = unsafe {
            let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
            assert!(fd >= 0, "posix_openpt: {}", io::Error::last_os_error());
            let master = OwnedFd::from_raw_fd(fd);
            assert_eq!(libc::grantpt(fd), 0, "grantpt: {}", io::Error::last_os_error());
            assert_eq!(libc::unlockpt(fd), 0, "unlockpt: {}", io::Error::last_os_error());
            let mut buf = [0 as libc::c_char; 128];
            assert_eq!(libc::ptsname_r(fd, buf.as_mut_ptr(), buf.len()), 0, "ptsname_r");
            let path = CStr::from_ptr(buf.as_ptr()).to_str().expect("pty name").to_owned();
            (master, PathBuf::from(path))
        };
        let output = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (output, stop) = (output.clone(), stop.clone());
            thread::spawn(move || read_master(&master, &output, &stop))
        };
        Pty { slave_path, output, stop, reader: Some(reader) }
    }

    /// The slave, opened without becoming anyone's controlling terminal.
    fn slave(&self) -> fs::File {
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(&self.slave_path)
            .unwrap_or_else(|e| panic!("open {}: {e}", self.slave_path.display()))
    }

    fn output(&self) -> Vec<u8> {
        self.output.lock().unwrap().clone()
    }

    /// Waits (up to [`TIMEOUT`]) until the slave side is closed by everyone
    /// (the master reads EIO) and returns everything read.
    fn finish(mut self) -> Vec<u8> {
        if let Some(r) = self.reader.take() {
            let deadline = Instant::now() + TIMEOUT;
            while !r.is_finished() && Instant::now() < deadline {
                thread::sleep(POLL);
            }
            self.stop.store(true, Ordering::Relaxed);
            r.join().expect("pty reader");
        }
        self.output()
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// Copies what arrives on the master into `output` until the slave is
/// closed by all (EIO) or `stop` is set.
fn read_master(master: &OwnedFd, output: &Mutex<Vec<u8>>, stop: &AtomicBool) {
    let fd = master.as_raw_fd();
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, 50) };
        if n <= 0 {
            continue;
        }
        // SAFETY: reads into a buffer of the length given.
        let got = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if got > 0 {
            output.lock().unwrap().extend_from_slice(&buf[..got as usize]);
        } else if got == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EIO) {
            return; // no slave left
        }
    }
}

/// The terminal example run bare on a pty of its own: its whole output.
fn tty_bare_run() -> Vec<u8> {
    let pty = Pty::open();
    let slave = pty.slave();
    let err = tempfile_in(&std::env::temp_dir(), "fd_tty-bare.stderr");
    let mut child = Command::new(Program::c("fd_tty").exe())
        .stdin(slave.try_clone().unwrap())
        .stdout(slave)
        .stderr(fs::File::create(&err).unwrap())
        .spawn()
        .expect("spawn fd_tty");
    let status = wait_within(&mut child, TIMEOUT).expect("bare fd_tty did not finish");
    let out = pty.finish();
    let stderr = fs::read_to_string(&err).unwrap_or_default();
    let _ = fs::remove_file(&err);
    assert_eq!(exit_code(status), OK, "test bug: bare fd_tty failed: {stderr}\n{}", String::from_utf8_lossy(&out));
    assert!(out.ends_with(b"tick 200 raw\ndone\n"), "test bug: bare fd_tty output:\n{}", String::from_utf8_lossy(&out));
    out
}

fn tempfile_in(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{}-{name}", std::process::id()))
}

fn wait_within(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        thread::sleep(POLL);
    }
}

/// Start time of a process (field 22 of /proc/PID/stat), to tell it from a
/// later process that got the same pid.
fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(19)?.parse().ok()
}

/// The children of `pid`, over all its threads.
fn children_of(pid: i32) -> Vec<i32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    let mut tasks: Vec<PathBuf> = tasks.filter_map(|t| t.ok().map(|t| t.path())).collect();
    tasks.sort();
    tasks
        .iter()
        .filter_map(|t| fs::read_to_string(t.join("children")).ok())
        .flat_map(|l| l.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<i32>>())
        .collect()
}

/// ckrun run by hand with its stdin and stdout on a terminal (stderr in a
/// file, so that its messages do not mix with the program's output).
struct TtyJob {
    child: Option<Child>,
    ckrun_pid: i32,
    /// Program pid and start time, once known.
    program: Option<(i32, u64)>,
    expected_pid: Option<i32>,
    pty: Option<Pty>,
    stderr_path: PathBuf,
    imgdir: PathBuf,
}

impl TtyJob {
    fn spawn(args: &[OsString], workdir: &Path, imgdir: &Path, expected_pid: Option<i32>, name: &str) -> TtyJob {
        sys::become_subreaper().expect("PR_SET_CHILD_SUBREAPER");
        let pty = Pty::open();
        let slave = pty.slave();
        let stderr_path = workdir.join(format!("{name}.stderr"));
        let child = Command::new(ckrun_bin())
            .args(args)
            .current_dir(workdir)
            .stdin(slave.try_clone().unwrap())
            .stdout(slave)
            .stderr(fs::File::create(&stderr_path).unwrap())
            .process_group(0)
            .spawn()
            .expect("spawn ckrun");
        TtyJob {
            ckrun_pid: child.id() as i32,
            child: Some(child),
            program: None,
            expected_pid,
            pty: Some(pty),
            stderr_path,
            imgdir: imgdir.to_path_buf(),
        }
    }

    fn launch(workdir: &Path, imgdir: &Path) -> TtyJob {
        let prog = Program::c("fd_tty");
        let args = [OsStr::new("--dir"), imgdir.as_os_str(), prog.exe().as_os_str()];
        TtyJob::spawn(&args.map(OsString::from), workdir, imgdir, None, "launch")
    }

    fn restart(image: &Path, workdir: &Path, name: &str) -> TtyJob {
        let imgdir = image.parent().unwrap();
        let args = [OsStr::new("--restart"), image.as_os_str(), OsStr::new("--dir"), imgdir.as_os_str()];
        let pid = ImageName::parse(image).map(|i| i.pid);
        TtyJob::spawn(&args.map(OsString::from), workdir, imgdir, pid, name)
    }

    fn output(&self) -> Vec<u8> {
        self.pty.as_ref().map(Pty::output).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().expect("try_wait").is_none())
    }

    fn diagnostics(&self) -> String {
        let out = String::from_utf8_lossy(&self.output()).into_owned();
        let tail: Vec<&str> = out.lines().rev().take(8).collect();
        format!(
            "ckrun pid {}, program {:?}, images {:?}\n--- ckrun stderr ---\n{}\n--- terminal output (last lines, \
             newest first) ---\n{}",
            self.ckrun_pid,
            self.program,
            list_images(&self.imgdir),
            self.stderr(),
            tail.join("\n")
        )
    }

    fn wait_for_tick(&mut self, n: u64) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let exited = !self.is_running();
            if complete_lines(&self.output()).any(|l| tick_of(l).is_some_and(|t| t >= n)) {
                return;
            }
            if exited || Instant::now() >= deadline {
                panic!(
                    "no tick {n} on the terminal ({})\n{}",
                    if exited { "ckrun exited" } else { "timeout" },
                    self.diagnostics()
                );
            }
            thread::sleep(POLL);
        }
    }

    fn last_tick(&self) -> u64 {
        complete_lines(&self.output()).filter_map(tick_of).max().expect("some tick")
    }

    fn program_pid(&mut self) -> i32 {
        let deadline = Instant::now() + TIMEOUT;
        while self.program.is_none() {
            let kids = children_of(self.ckrun_pid);
            let pid = match self.expected_pid {
                Some(want) => kids.into_iter().find(|&k| k == want),
                None => kids.first().copied(),
            };
            self.program = pid.and_then(|p| start_time(p).map(|t| (p, t)));
            if self.program.is_none() {
                assert!(self.is_running() && Instant::now() < deadline, "program not found\n{}", self.diagnostics());
                thread::sleep(POLL);
            }
        }
        self.program.unwrap().0
    }

    fn checkpoint(&mut self) -> PathBuf {
        let before = list_images(&self.imgdir);
        self.program_pid();
        sys::send_signal(self.ckrun_pid, sys::SIGUSR2).expect("kill -USR2 ckrun");
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let new: Vec<PathBuf> = list_images(&self.imgdir).into_iter().filter(|p| !before.contains(p)).collect();
            if let Some(img) = new.last() {
                let name = img.file_name().unwrap().to_string_lossy().into_owned();
                if self.stderr().lines().any(|l| l.starts_with("ckrun: checkpoint") && l.contains(&name)) {
                    return img.clone();
                }
            }
            if !self.is_running() || Instant::now() >= deadline {
                panic!("no checkpoint\n{}", self.diagnostics());
            }
            thread::sleep(POLL);
        }
    }

    fn program_alive(&self) -> bool {
        self.program.is_some_and(|(p, t)| start_time(p) == Some(t))
    }

    /// SIGKILL to the program and ckrun's group; returns once both are gone
    /// and the pid is free. Returns the terminal output.
    fn kill9(&mut self) -> Vec<u8> {
        if self.is_running() {
            self.program_pid();
        }
        if self.program_alive() {
            let _ = sys::send_signal(self.program.unwrap().0, sys::SIGKILL);
        }
        if let Some(mut child) = self.child.take() {
            if child.try_wait().ok().flatten().is_none() {
                let _ = sys::send_signal(-self.ckrun_pid, sys::SIGKILL);
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        let deadline = Instant::now() + TIMEOUT;
        while self.program_alive() {
            sys::try_reap(self.program.unwrap().0);
            assert!(Instant::now() < deadline, "program still exists after SIGKILL");
            thread::sleep(POLL);
        }
        self.pty.take().map(Pty::finish).unwrap_or_default()
    }

    /// Waits for ckrun to exit; returns its exit code and the terminal
    /// output.
    fn wait(&mut self) -> (i32, Vec<u8>) {
        let mut child = self.child.take().expect("running ckrun");
        let status = wait_within(&mut child, TIMEOUT);
        let out = self.pty.take().map(Pty::finish).unwrap_or_default();
        let code = status.map(exit_code).unwrap_or_else(|| {
            panic!("ckrun did not exit within {TIMEOUT:?}; output:\n{}", String::from_utf8_lossy(&out))
        });
        (code, out)
    }
}

impl Drop for TtyJob {
    fn drop(&mut self) {
        if self.program.is_none() && self.child.is_some() {
            self.program = children_of(self.ckrun_pid).first().and_then(|&p| start_time(p).map(|t| (p, t)));
        }
        if self.program_alive() {
            let _ = sys::send_signal(self.program.unwrap().0, sys::SIGKILL);
        }
        if let Some(mut child) = self.child.take() {
            if child.try_wait().ok().flatten().is_none() {
                let _ = sys::send_signal(-self.ckrun_pid, sys::SIGKILL);
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.program_alive() && Instant::now() < deadline {
            sys::try_reap(self.program.unwrap().0);
            thread::sleep(POLL);
        }
    }
}

/// The first tick printed in `out`.
fn first_tick(out: &[u8]) -> Option<u64> {
    complete_lines(out).find_map(tick_of)
}

/// The complete lines of `out` whose tick is below `limit` (with their
/// newlines).
fn lines_before(out: &[u8], limit: u64) -> Vec<u8> {
    let mut kept = Vec::new();
    for line in complete_lines(out) {
        if tick_of(line).is_some_and(|t| t < limit) {
            kept.extend_from_slice(line.as_bytes());
            kept.push(b'\n');
        }
    }
    kept
}

/// A raw-mode program on a terminal, checkpointed, killed and restarted
/// twice, each restart on a new terminal (ckrun's stdin and stdout): the
/// restored program must find its raw-mode settings on the new terminal
/// (it checks them every tick), and the terminals together must have shown
/// exactly what a bare run shows: each restart picks up at the line after
/// the checkpoint, nothing lost or repeated.
#[test]
fn terminal_settings_come_back_on_a_new_terminal() {
    let dir = TestDir::new("fds-tty");
    let reference = tty_bare_run();

    let mut job = TtyJob::launch(&dir.work, &dir.img);
    job.wait_for_tick(30);
    let img1 = job.checkpoint();
    let at = job.last_tick();
    job.wait_for_tick(at + RUN_ON);
    let out1 = job.kill9();
    let killed_at = complete_lines(&out1).filter_map(tick_of).max().unwrap();
    assert!(reference.starts_with(&lines_before(&out1, killed_at + 1)), "the launched run printed something else");

    let mut job = TtyJob::restart(&img1, &dir.work, "restart1");
    job.wait_for_tick(killed_at + 10);
    let img2 = job.checkpoint();
    let at = job.last_tick();
    job.wait_for_tick(at + RUN_ON);
    let out2 = job.kill9();

    let mut job = TtyJob::restart(&img2, &dir.work, "restart2");
    let (code, out3) = job.wait();
    assert_eq!(code, OK, "exit code after restart\n{}", String::from_utf8_lossy(&out3));

    let second = first_tick(&out2).expect("restart 1 printed nothing");
    let third = first_tick(&out3).expect("restart 2 printed nothing");
    let mut all = lines_before(&out1, second);
    all.extend(lines_before(&out2, third));
    all.extend_from_slice(&out3);
    assert_same_output(&reference, &all, "terminal output of launch + restart + restart");
}

/// Sockets: a listening TCP socket keeps accepting after restarts, unix
/// stream and datagram pairs keep their bytes in flight, and a connection
/// to a peer outside the tree comes back closed; `--inspect` says so.
#[test]
fn sockets() {
    let outside = std::net::TcpListener::bind("127.0.0.1:0").expect("outside listener");
    let outside_port = outside.local_addr().unwrap().port().to_string();
    // Keep the outside peer's connections open without ever writing.
    let keep = std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in outside.incoming().take(8) {
            match c {
                Ok(c) => held.push(c),
                Err(_) => break,
            }
        }
    });
    let free_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let dir = spine_with("fds-sockets", &Program::c("fd_sockets"), &[&free_port, &outside_port], |stage| {
        if let Stage::Checkpointed { image, .. } = stage {
            let cwd = image.parent().unwrap();
            let out = ckrun_suite::run_ckrun(&[OsStr::new("--inspect"), image.as_os_str()], cwd, TIMEOUT);
            assert!(
                out.stdout.contains("listening") && out.stdout.contains("connection inside the tree"),
                "{}",
                out.stdout
            );
            assert!(out.stdout.contains("outside the tree, or gone: comes back closed by the peer"), "{}", out.stdout);
        }
    });
    drop(dir);
    drop(keep);
}
