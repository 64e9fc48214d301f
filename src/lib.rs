//! Test harness shared by the end-to-end tests in `tests/`.
//!
//! It drives the real `ckrun` binary the way a user would: launch a program
//! under it, wait for the program's progress lines, send `SIGUSR2`, wait for
//! the image file, `SIGKILL` everything, restart from the image, and compare
//! the final output with a bare (no ckrun) run of the same program.
//!
//! Rules the harness keeps so that failures are about the product, not the
//! tests:
//! - It synchronises only on things appearing (output lines, image files,
//!   process ids), polling every [`POLL`]; it never sleeps for a fixed time
//!   and hopes.
//! - Every wait has a deadline and panics with what it was waiting for, the
//!   captured stderr of ckrun, the end of the program's output and the
//!   images present, so a hang turns into a readable failure.
//! - Every process it starts is killed and reaped on `Drop`, and the test
//!   process makes itself a child subreaper, so a program orphaned by a
//!   killed ckrun is reaped by the harness itself. Without that its zombie
//!   would keep the pid taken (pid 1 of a container may never reap it), and
//!   a restart, which needs that very pid, could not succeed.
//! - Each test works in its own directory `target/e2e-tmp/<name>-<pid>/`,
//!   removed when the test passes and kept when it fails.
//!
//! The library only uses `std` (and xxhash, to re-seal images tests
//! alter): dev-dependencies are not visible to it, so the handful of libc
//! calls it needs are declared in [`sys`].

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

/// Default deadline of every wait: generous, since a loaded CI machine with
/// two cores may run several tests at once. A passing test never waits it.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// Interval between two polls of a file or a process.
pub const POLL: Duration = Duration::from_millis(5);

/// Name of the file, in the work directory, that receives the program's
/// stdout (a regular file, so that a restored program can reopen it at the
/// checkpoint's offset).
pub const OUT_FILE: &str = "out.txt";

/// Minimal libc bindings. `std` already links the C library; declaring the
/// few functions here keeps the library free of non-dev dependencies.
pub mod sys {
    use std::ffi::c_int;
    use std::io;

    pub const SIGKILL: c_int = 9;
    pub const SIGUSR1: c_int = 10;
    pub const SIGUSR2: c_int = 12;
    pub const SIGTERM: c_int = 15;
    const WNOHANG: c_int = 1;
    const PR_SET_CHILD_SUBREAPER: c_int = 36;

    extern "C" {
        fn kill(pid: i32, sig: c_int) -> c_int;
        fn waitpid(pid: i32, status: *mut c_int, options: c_int) -> i32;
        fn prctl(option: c_int, ...) -> c_int;
    }

    /// Sends `sig` to `pid` (a process group when `pid` is negative).
    pub fn send_signal(pid: i32, sig: c_int) -> io::Result<()> {
        // SAFETY: kill(2) takes plain integers and touches no memory.
        if unsafe { kill(pid, sig) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Reaps `pid` if it is a zombie child of this process. Returns whether
    /// it was reaped; errors (e.g. ECHILD: not our child) count as "no".
    pub fn try_reap(pid: i32) -> bool {
        let mut status: c_int = 0;
        // SAFETY: `status` is a valid, writable c_int.
        unsafe { waitpid(pid, &mut status, WNOHANG) == pid }
    }

    /// Makes this process a child subreaper (see the crate docs for why).
    pub fn become_subreaper() -> io::Result<()> {
        let on: std::ffi::c_ulong = 1;
        // SAFETY: PR_SET_CHILD_SUBREAPER takes one integer argument.
        if unsafe { prctl(PR_SET_CHILD_SUBREAPER, on) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

// ---------------------------------------------------------------------------
// Locations
// ---------------------------------------------------------------------------

/// Directory of the compiled C examples (made by `build.rs`).
pub fn examples_bin_dir() -> PathBuf {
    Path::new(env!("OUT_DIR")).join("examples")
}

/// Directory of the example sources (for the Python examples).
pub fn examples_src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// `target/<profile>` of the running test executable, which lives in
/// `target/<profile>/deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("unexpected test executable location {}", exe.display()))
        .to_path_buf()
}

/// Where `ckrun` and `libckpt.so` are: `$CKRUN_BIN` (the `ckrun` binary or
/// its directory) when set, else next to the test executable's profile dir.
pub fn bin_dir() -> PathBuf {
    match std::env::var_os("CKRUN_BIN").map(PathBuf::from) {
        Some(p) if p.is_dir() => p,
        Some(p) => p.parent().map(Path::to_path_buf).unwrap_or_default(),
        None => profile_dir(),
    }
}

/// Path of the `ckrun` binary; panics if it (or its agent) is not built.
///
/// `cargo test -p ckrun-suite` does not build the product, hence the hint.
pub fn ckrun_bin() -> PathBuf {
    let bin = match std::env::var_os("CKRUN_BIN").map(PathBuf::from) {
        Some(p) if p.is_file() => p,
        _ => bin_dir().join("ckrun"),
    };
    let agent = bin.with_file_name("libckpt.so");
    if !bin.is_file() || !agent.is_file() {
        panic!(
            "build first: cargo build --workspace (looked for {} and {}; set CKRUN_BIN to override)",
            bin.display(),
            agent.display()
        );
    }
    bin
}

/// Root of the per-test scratch directories: `target/e2e-tmp/`.
pub fn e2e_tmp_root() -> PathBuf {
    let profile = profile_dir();
    profile.parent().unwrap_or(&profile).join("e2e-tmp")
}

/// The Python interpreter for the `.py` examples: `$CKRUN_PYTHON`, else the
/// real executable behind `python3` on PATH. Asking Python for
/// `sys.executable` sees through wrapper scripts (pyenv shims), which ckrun
/// would otherwise run as the "program" instead of the interpreter.
pub fn python_interpreter() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("CKRUN_PYTHON") {
                return PathBuf::from(p);
            }
            let out = Command::new("python3")
                .args(["-c", "import sys; print(sys.executable)"])
                .output()
                .expect("python3 is needed for the Python examples");
            assert!(out.status.success(), "python3 failed: {out:?}");
            let path = String::from_utf8(out.stdout).expect("non-UTF-8 python path");
            PathBuf::from(path.trim())
        })
        .clone()
}

// ---------------------------------------------------------------------------
// Scratch directories
// ---------------------------------------------------------------------------

/// A test's own directory `target/e2e-tmp/<name>-<pid>/` with three parts:
/// `bare/` (the reference run's cwd), `work/` (the cwd under ckrun) and
/// `img/` (checkpoint images). Reference and ckrun runs need separate cwds
/// because the examples write files there.
///
/// Removed on drop unless the test is failing (kept for a post-mortem) or
/// `CKRUN_KEEP_TMP` is set.
pub struct TestDir {
    pub root: PathBuf,
    pub bare: PathBuf,
    pub work: PathBuf,
    pub img: PathBuf,
}

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        let root = e2e_tmp_root().join(format!("{name}-{}", std::process::id()));
        if root.exists() {
            fs::remove_dir_all(&root).unwrap_or_else(|e| panic!("remove stale {}: {e}", root.display()));
        }
        let dir = TestDir { bare: root.join("bare"), work: root.join("work"), img: root.join("img"), root };
        for d in [&dir.bare, &dir.work, &dir.img] {
            fs::create_dir_all(d).unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
        }
        dir
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("e2e: kept {} for inspection", self.root.display());
        } else if std::env::var_os("CKRUN_KEEP_TMP").is_none() {
            let _ = fs::remove_dir_all(&self.root);
        }
    }
}

// ---------------------------------------------------------------------------
// Programs and bare runs
// ---------------------------------------------------------------------------

/// An example program: an executable plus the arguments that always come
/// first (the script, for an interpreted example).
#[derive(Clone, Debug)]
pub struct Program {
    name: String,
    exe: PathBuf,
    leading_args: Vec<OsString>,
}

/// Result of a run without ckrun.
#[derive(Clone, Debug)]
pub struct BareRun {
    /// Exit code, or 128+N when killed by signal N (as ckrun reports it).
    pub code: i32,
    /// Everything the program wrote to stdout (a regular file).
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub elapsed: Duration,
}

impl Program {
    /// A compiled C example: `examples/<name>.c`.
    pub fn c(name: &str) -> Program {
        let exe = examples_bin_dir().join(name);
        assert!(exe.is_file(), "example {name} not built: {} is missing", exe.display());
        Program { name: name.to_string(), exe, leading_args: Vec::new() }
    }

    /// Any executable, run with `leading_args` before the test's own
    /// arguments (a script for its interpreter, `-cp DIR Main` for java).
    pub fn new(name: &str, exe: impl Into<PathBuf>, leading_args: &[&OsStr]) -> Program {
        Program {
            name: name.to_string(),
            exe: exe.into(),
            leading_args: leading_args.iter().map(|a| a.into()).collect(),
        }
    }

    /// The executable at `exe`.
    pub fn at(exe: &Path) -> Program {
        let name = exe.file_name().map_or_else(|| "program".into(), |n| n.to_string_lossy().into_owned());
        Program::new(&name, exe, &[])
    }

    /// The executable that runs.
    pub fn path(&self) -> &Path {
        &self.exe
    }

    /// A Python example, `examples/<name>.py`, run by [`python_interpreter`].
    pub fn python(name: &str) -> Program {
        let script = examples_src_dir().join(format!("{name}.py"));
        assert!(script.is_file(), "missing {}", script.display());
        Program { name: format!("{name}.py"), exe: python_interpreter(), leading_args: vec![script.into_os_string()] }
    }

    /// A short name for messages and directory names.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The executable ckrun is asked to run.
    pub fn exe(&self) -> &Path {
        &self.exe
    }

    /// The executable followed by all its arguments.
    pub fn argv(&self, args: &[&str]) -> Vec<OsString> {
        let mut argv = vec![self.exe.clone().into_os_string()];
        argv.extend(self.leading_args.iter().cloned());
        argv.extend(args.iter().map(OsString::from));
        argv
    }

    /// Runs the program without ckrun in `workdir`, stdout going to
    /// `workdir/out.txt` (a regular file, as under ckrun) and stderr to
    /// `workdir/bare.stderr`. Panics if it takes longer than [`TIMEOUT`].
    pub fn run_bare(&self, args: &[&str], workdir: &Path) -> BareRun {
        let out_path = workdir.join(OUT_FILE);
        let err_path = workdir.join("bare.stderr");
        let argv = self.argv(args);
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .current_dir(workdir)
            .stdin(Stdio::null())
            .stdout(create_file(&out_path))
            .stderr(create_file(&err_path));
        program_env(&mut cmd);
        let start = Instant::now();
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {argv:?}: {e}"));
        let status = wait_child(&mut child, TIMEOUT).unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "bare run of {} did not finish within {TIMEOUT:?}; stdout tail:\n{}",
                self.name,
                tail_lines(&read_or_empty(&out_path), 10)
            )
        });
        BareRun {
            code: exit_code(status),
            stdout: read_or_empty(&out_path),
            stderr: read_or_empty(&err_path),
            elapsed: start.elapsed(),
        }
    }
}

/// Environment shared by bare runs and ckrun runs, so that both behave the
/// same: no `.pyc` files written next to the examples.
fn program_env(cmd: &mut Command) {
    cmd.env("PYTHONDONTWRITEBYTECODE", "1");
}

// ---------------------------------------------------------------------------
// One-shot ckrun commands
// ---------------------------------------------------------------------------

/// Result of a ckrun command run to completion by [`run_ckrun`].
#[derive(Clone, Debug)]
pub struct CmdOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    /// Asserts the exit code and that stderr holds a line starting with
    /// `ckrun:` (the contract for every error), mentioning `needle` when
    /// given (case-insensitively).
    pub fn assert_error(&self, code: i32, needle: Option<&str>) {
        assert_eq!(self.code, code, "expected exit code {code}; got {self:#?}");
        assert!(
            self.stderr.lines().any(|l| l.starts_with("ckrun:")),
            "expected a line starting with `ckrun:` on stderr; got {self:#?}"
        );
        if let Some(needle) = needle {
            assert!(
                self.stderr.to_lowercase().contains(&needle.to_lowercase()),
                "expected stderr to mention {needle:?}; got {self:#?}"
            );
        }
    }
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A number unique in this test process, for file names.
fn next_seq() -> usize {
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// Runs `ckrun ARGS...` in `cwd` to completion, stdout and stderr captured
/// in files of `cwd` (files, not pipes: nothing can block on a full pipe,
/// and a program ckrun might start cannot hold our pipe open). Panics if it
/// does not exit within `timeout`, after killing its process group.
pub fn run_ckrun<S: AsRef<OsStr>>(args: &[S], cwd: &Path, timeout: Duration) -> CmdOutput {
    let seq = next_seq();
    let out_path = cwd.join(format!("ckrun-cmd-{seq}.stdout"));
    let err_path = cwd.join(format!("ckrun-cmd-{seq}.stderr"));
    let mut cmd = Command::new(ckrun_bin());
    cmd.args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(create_file(&out_path))
        .stderr(create_file(&err_path))
        .process_group(0);
    program_env(&mut cmd);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let status = wait_child(&mut child, timeout);
    let output = |code| CmdOutput {
        code,
        stdout: String::from_utf8_lossy(&read_or_empty(&out_path)).into_owned(),
        stderr: String::from_utf8_lossy(&read_or_empty(&err_path)).into_owned(),
    };
    match status {
        Some(status) => output(exit_code(status)),
        None => {
            let _ = sys::send_signal(-(child.id() as i32), sys::SIGKILL);
            let _ = child.wait();
            panic!("{cmd:?} hung: no exit within {timeout:?}; {:#?}", output(-1))
        }
    }
}

// ---------------------------------------------------------------------------
// Checkpoint images
// ---------------------------------------------------------------------------

/// What an image's file name says: `<program basename>.<pid>.<n>.ckimg`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageName {
    pub program: String,
    pub pid: i32,
    pub n: u32,
}

impl ImageName {
    pub fn parse(path: &Path) -> Option<ImageName> {
        let name = path.file_name()?.to_str()?;
        let stem = name.strip_suffix(".ckimg")?;
        let mut parts = stem.rsplitn(3, '.');
        let n = parts.next()?.parse().ok()?;
        let pid = parts.next()?.parse().ok()?;
        let program = parts.next()?.to_string();
        Some(ImageName { program, pid, n })
    }
}

/// The finished images (`*.ckimg`, not temporaries) in `dir`, oldest first
/// (by their sequence number `n`, then by name).
pub fn list_images(dir: &Path) -> Vec<PathBuf> {
    let mut images: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "ckimg") && p.is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    images.sort_by_key(|p| (ImageName::parse(p).map(|i| i.n), p.clone()));
    images
}

/// Rewrites the manifest of `image` with `edit` (same length) and re-seals
/// it as the README documents the format: the trailer (last 64 bytes)
/// holds the manifest's offset (bytes 8..16), length (16..24) and xxh3-64
/// checksum (24..32), and its own checksum of bytes 0..40 at 40..48.
/// Returns the altered image's bytes; anyone could make them.
pub fn reseal_manifest(image: &Path, edit: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let mut b = fs::read(image).unwrap_or_else(|e| panic!("read {}: {e}", image.display()));
    let t = b.len() - 64;
    let word = |b: &[u8], i: usize| u64::from_le_bytes(b[t + i..t + i + 8].try_into().unwrap()) as usize;
    let (off, len) = (word(&b, 8), word(&b, 16));
    edit(&mut b[off..off + len]);
    reseal(&mut b);
    b
}

/// Recomputes the checksums of an image's trailer for its manifest as it is.
pub fn reseal(b: &mut [u8]) {
    let t = b.len() - 64;
    let word = |b: &[u8], i: usize| u64::from_le_bytes(b[t + i..t + i + 8].try_into().unwrap()) as usize;
    let (off, len) = (word(b, 8), word(b, 16));
    let sum = xxhash_rust::xxh3::xxh3_64(&b[off..off + len]);
    b[t + 24..t + 32].copy_from_slice(&sum.to_le_bytes());
    let own = xxhash_rust::xxh3::xxh3_64(&b[t..t + 40]);
    b[t + 40..t + 48].copy_from_slice(&own.to_le_bytes());
}

// ---------------------------------------------------------------------------
// Another user
// ---------------------------------------------------------------------------

/// The unprivileged user the security and rootless tests act as
/// (`nobody`, uid and gid 65534, no supplementary groups), through
/// `setpriv`, which execs the rest of the command line.
pub const NOBODY: [&str; 4] = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];
pub const NOBODY_UID: u32 = 65534;

/// Whether this test process may act as another user (it is root); when
/// not, says so, so that a skipped test is visible.
pub fn can_switch_users(test: &str) -> bool {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    if !root {
        eprintln!("{test}: SKIPPED: needs root, to act as another user (nobody) against a root-run ckrun");
    }
    root
}

/// Makes `dir` (and the files in it) usable by everyone, so that another
/// user can work there.
pub fn open_to_everyone(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o777)).unwrap();
    for e in fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_file() {
            fs::set_permissions(e.path(), fs::Permissions::from_mode(0o666)).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------
// Output helpers
// ---------------------------------------------------------------------------

/// The tick number of a progress line `tick N ...`.
pub fn tick_of(line: &str) -> Option<u64> {
    let mut words = line.split_whitespace();
    if words.next()? != "tick" {
        return None;
    }
    words.next()?.parse().ok()
}

/// The highest tick among the complete lines of `output`.
pub fn last_tick(output: &[u8]) -> Option<u64> {
    complete_lines(output).filter_map(tick_of).max()
}

/// The newline-terminated lines of `output` (a line still being written is
/// not one yet).
pub fn complete_lines(output: &[u8]) -> impl Iterator<Item = &str> {
    let end = output.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    output[..end].split(|&b| b == b'\n').filter_map(|l| std::str::from_utf8(l).ok()).filter(|l| !l.is_empty())
}

/// Asserts two outputs are byte-identical, reporting the first differing
/// line rather than two walls of bytes.
pub fn assert_same_output(expected: &[u8], actual: &[u8], what: &str) {
    if expected == actual {
        return;
    }
    let exp: Vec<&[u8]> = expected.split(|&b| b == b'\n').collect();
    let act: Vec<&[u8]> = actual.split(|&b| b == b'\n').collect();
    let i = exp.iter().zip(&act).position(|(a, b)| a != b).unwrap_or(exp.len().min(act.len()));
    let show = |v: &[&[u8]]| v.get(i).map_or("<end of output>".into(), |l| String::from_utf8_lossy(l).into_owned());
    panic!(
        "{what}: outputs differ at line {} (expected {} bytes, got {}):\n  expected: {}\n  actual:   {}",
        i + 1,
        expected.len(),
        actual.len(),
        show(&exp),
        show(&act)
    );
}

/// Asserts that every file the program wrote in the bare run's cwd is
/// byte-identical in the ckrun run's cwd (e.g. `state.dat`). Skips the
/// harness's own files: stdout (compared separately) and `*.stderr` /
/// `*.stdout` captures.
pub fn assert_same_files(bare: &Path, work: &Path) {
    let entries = fs::read_dir(bare).unwrap_or_else(|e| panic!("read {}: {e}", bare.display()));
    for entry in entries {
        let path = entry.expect("read_dir entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name == OUT_FILE || name.ends_with(".stderr") || name.ends_with(".stdout") {
            continue;
        }
        let other = work.join(&name);
        let expected = read_or_empty(&path);
        let actual = fs::read(&other).unwrap_or_else(|e| panic!("{} missing: {e}", other.display()));
        assert!(
            expected == actual,
            "{name} differs between the bare run ({} bytes) and the ckrun run ({} bytes)",
            expected.len(),
            actual.len()
        );
    }
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// A process id plus its start time, so that a pid recycled by another
/// process is never mistaken for (and killed as) ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ProcId {
    pid: i32,
    start_time: u64,
}

/// Fields of `/proc/<pid>/stat` after the command name: (ppid, starttime).
fn proc_stat(pid: i32) -> Option<(i32, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: skip past the
    // last ')'. Then: state ppid ... with starttime the 20th field after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some((fields.get(1)?.parse().ok()?, fields.get(19)?.parse().ok()?))
}

impl ProcId {
    fn of(pid: i32) -> Option<ProcId> {
        proc_stat(pid).map(|(_, start_time)| ProcId { pid, start_time })
    }

    /// Whether the very same process (maybe a zombie) still exists.
    fn exists(&self) -> bool {
        proc_stat(self.pid).is_some_and(|(_, t)| t == self.start_time)
    }
}

/// The children of `pid`, over all its threads, in the order listed.
fn children_of(pid: i32) -> Vec<i32> {
    let mut kids = Vec::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return kids;
    };
    let mut tasks: Vec<PathBuf> = tasks.filter_map(|t| t.ok().map(|t| t.path())).collect();
    tasks.sort();
    for task in tasks {
        if let Ok(list) = fs::read_to_string(task.join("children")) {
            kids.extend(list.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
    }
    kids
}

/// Every descendant of `pid`.
fn descendants_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for k in children_of(p) {
            out.push(k);
            todo.push(k);
        }
    }
    out
}

/// A process's pid in its own (innermost) PID namespace: the last field of
/// `NSpid` in /proc/PID/status. The image names processes by it.
pub fn ns_pid(pid: i32) -> Option<i32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("NSpid:"))?.split_whitespace().last()?.parse().ok()
}

/// Becomes a child subreaper once per test process.
fn ensure_subreaper() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        sys::become_subreaper().expect("prctl(PR_SET_CHILD_SUBREAPER)");
    });
}

/// Polls `child` until it exits or `timeout` passes (then `None`).
fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(POLL);
    }
}

/// Exit code the way ckrun reports its program's: 128+N for signal N.
pub fn exit_code(status: ExitStatus) -> i32 {
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

// ---------------------------------------------------------------------------
// A program running under ckrun
// ---------------------------------------------------------------------------

/// Which process a checkpoint request is sent to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignalTarget {
    /// The ckrun process.
    Ckrun,
    /// The program itself (its agent must forward the request).
    Program,
}

/// One `ckrun` process (a launch or a restart) and the program it runs.
///
/// The program writes its stdout to `workdir/out.txt`; ckrun's own stderr
/// (which the program shares) goes to `workdir/ckrun-<seq>.stderr` and is
/// quoted by every failure message. Dropping a `Ckrun` kills whatever is
/// left of it.
pub struct Ckrun {
    label: String,
    child: Option<Child>,
    ckrun_pid: i32,
    status: Option<ExitStatus>,
    /// Program pid known in advance: a restart restores the image's pid.
    expected_pid: Option<i32>,
    program: Option<ProcId>,
    out_path: PathBuf,
    stderr_path: PathBuf,
    imgdir: PathBuf,
}

impl Ckrun {
    /// `ckrun --dir IMGDIR [EXTRA_FLAGS] PROGRAM ARGS...` in `workdir`.
    pub fn launch(prog: &Program, args: &[&str], workdir: &Path, imgdir: &Path, extra_flags: &[&str]) -> Ckrun {
        Ckrun::launch_via(&[], prog, args, workdir, imgdir, extra_flags)
    }

    /// As [`Ckrun::launch`], with ckrun started through `prefix` (a command
    /// that execs the rest, such as `setpriv --reuid=65534 ...`).
    pub fn launch_via(
        prefix: &[&str],
        prog: &Program,
        args: &[&str],
        workdir: &Path,
        imgdir: &Path,
        extra_flags: &[&str],
    ) -> Ckrun {
        let mut cmd_args: Vec<OsString> = vec!["--dir".into(), imgdir.as_os_str().to_owned()];
        cmd_args.extend(extra_flags.iter().map(OsString::from));
        cmd_args.extend(prog.argv(args));
        let out = create_file(&workdir.join(OUT_FILE));
        let label = format!("ckrun {}", prog.name());
        Ckrun::spawn(label, prefix, &cmd_args, workdir, imgdir, out)
    }

    /// `ckrun --dir IMGDIR [EXTRA_FLAGS] PROG ARGS` as a batch script runs
    /// it again after a requeue (`--resume`): its stdout `workdir/out.txt`
    /// is opened for appending (Slurm's `--open-mode=append`), not
    /// truncated, so that a restart's cut-back finds what it expects.
    pub fn launch_appending(
        prog: &Program,
        args: &[&str],
        workdir: &Path,
        imgdir: &Path,
        extra_flags: &[&str],
    ) -> Ckrun {
        let mut cmd_args: Vec<OsString> = vec!["--dir".into(), imgdir.as_os_str().to_owned()];
        cmd_args.extend(extra_flags.iter().map(OsString::from));
        cmd_args.extend(prog.argv(args));
        let out = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(workdir.join(OUT_FILE))
            .unwrap_or_else(|e| panic!("open {}: {e}", workdir.join(OUT_FILE).display()));
        let label = format!("ckrun {} (appending)", prog.name());
        Ckrun::spawn(label, &[], &cmd_args, workdir, imgdir, out)
    }

    /// `ckrun --restart IMAGE_OR_DIR --dir IMGDIR [EXTRA_FLAGS]` in
    /// `workdir`, where IMGDIR (for later checkpoints) is the image's
    /// directory unless EXTRA_FLAGS has its own `--dir`. The restored
    /// program reopens `workdir/out.txt` itself; ckrun's own stdout goes to
    /// a separate file, which should stay empty.
    pub fn restart(image: &Path, workdir: &Path, extra_flags: &[&str]) -> Ckrun {
        Ckrun::restart_via(&[], image, workdir, extra_flags)
    }

    /// As [`Ckrun::restart`], through `prefix` (see [`Ckrun::launch_via`]).
    pub fn restart_via(prefix: &[&str], image: &Path, workdir: &Path, extra_flags: &[&str]) -> Ckrun {
        let (imgdir, newest) = if image.is_dir() {
            (image.to_path_buf(), list_images(image).pop())
        } else {
            (image.parent().expect("image has a parent dir").to_path_buf(), Some(image.into()))
        };
        let mut cmd_args: Vec<OsString> = vec!["--restart".into(), image.as_os_str().to_owned()];
        let own_dir = extra_flags.iter().position(|f| *f == "--dir");
        let imgdir = match own_dir {
            Some(i) => PathBuf::from(extra_flags.get(i + 1).expect("--dir needs a value")),
            None => {
                cmd_args.extend(["--dir".into(), imgdir.clone().into_os_string()]);
                imgdir
            }
        };
        cmd_args.extend(extra_flags.iter().map(OsString::from));
        let seq = next_seq();
        let stdout = create_file(&workdir.join(format!("ckrun-{seq}.stdout")));
        let label = format!("ckrun --restart {}", image.display());
        let mut job = Ckrun::spawn(label, prefix, &cmd_args, workdir, &imgdir, stdout);
        job.out_path = workdir.join(OUT_FILE);
        job.expected_pid = newest.as_deref().and_then(ImageName::parse).map(|i| i.pid);
        job
    }

    fn spawn(
        label: String,
        prefix: &[&str],
        args: &[OsString],
        workdir: &Path,
        imgdir: &Path,
        stdout: fs::File,
    ) -> Ckrun {
        ensure_subreaper();
        let bin = ckrun_bin();
        let stderr_path = workdir.join(format!("ckrun-{}.stderr", next_seq()));
        let mut cmd = match prefix.split_first() {
            None => Command::new(&bin),
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&bin);
                c
            }
        };
        cmd.args(args)
            .current_dir(workdir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(create_file(&stderr_path))
            // Its own process group, so that cleanup can kill all of it.
            .process_group(0);
        program_env(&mut cmd);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        Ckrun {
            label,
            ckrun_pid: child.id() as i32,
            child: Some(child),
            status: None,
            expected_pid: None,
            program: None,
            out_path: workdir.join(OUT_FILE),
            stderr_path,
            imgdir: imgdir.to_path_buf(),
        }
    }

    pub fn ckrun_pid(&self) -> i32 {
        self.ckrun_pid
    }

    /// Directory where this job's checkpoints are expected.
    pub fn imgdir(&self) -> &Path {
        &self.imgdir
    }

    /// The program's stdout so far (`workdir/out.txt`).
    pub fn output(&self) -> Vec<u8> {
        read_or_empty(&self.out_path)
    }

    /// ckrun's stderr so far (the program's stderr too).
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&read_or_empty(&self.stderr_path)).into_owned()
    }

    /// The highest tick in the output so far.
    pub fn last_tick(&self) -> Option<u64> {
        last_tick(&self.output())
    }

    /// Whether ckrun is still running (reaps it if it has exited).
    pub fn is_running(&mut self) -> bool {
        self.poll_exit().is_none()
    }

    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Some(child) = self.child.as_mut() {
                self.status = child.try_wait().expect("try_wait on ckrun");
            }
        }
        self.status
    }

    /// Everything useful about this job for a failure message.
    pub fn diagnostics(&mut self) -> String {
        let status = match self.poll_exit() {
            Some(s) => format!("exited with code {}", exit_code(s)),
            None if self.child.is_some() => "still running".to_string(),
            None => "killed".to_string(),
        };
        let images: Vec<String> = list_images(&self.imgdir).iter().map(|p| p.display().to_string()).collect();
        format!(
            "[{}] ckrun pid {} {status}; program pid {:?}\n\
             images in {}: {images:?}\n\
             --- ckrun stderr ({}) ---\n{}\n\
             --- last lines of {} ---\n{}",
            self.label,
            self.ckrun_pid,
            self.program.map(|p| p.pid),
            self.imgdir.display(),
            self.stderr_path.display(),
            tail_chars(&self.stderr(), 8000),
            self.out_path.display(),
            tail_lines(&self.output(), 8),
        )
    }

    fn fail(&mut self, what: &str) -> ! {
        panic!("{what}\n{}", self.diagnostics())
    }

    /// Waits until a complete line of the program's output satisfies
    /// `pred`, and returns that line. Fails early if ckrun exits first.
    ///
    /// After a restart, `out.txt` still holds what the killed run wrote
    /// beyond the checkpoint (the restored program rewrites it with the
    /// same bytes), so wait for a tick past [`Ckrun::last_tick`] of the
    /// killed job to know the restored program is really running.
    pub fn wait_for_output_line(&mut self, mut pred: impl FnMut(&str) -> bool, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            // Check for exit before reading, so that a line written just
            // before the exit is still seen.
            let exited = !self.is_running();
            let output = self.output();
            if let Some(line) = complete_lines(&output).find(|l| pred(l)) {
                return line.to_string();
            }
            if exited {
                self.fail("ckrun exited before the awaited output line appeared");
            }
            if Instant::now() >= deadline {
                self.fail(&format!("no awaited output line within {timeout:?}"));
            }
            thread::sleep(POLL);
        }
    }

    /// Waits for a line `tick M ...` with M >= `n`.
    pub fn wait_for_tick(&mut self, n: u64) -> String {
        self.wait_for_output_line(|l| tick_of(l).is_some_and(|t| t >= n), TIMEOUT)
    }

    /// The program's pid, waiting (up to [`TIMEOUT`]) for it to exist:
    /// for a restart, the image's pid once it is a child of ckrun (the
    /// restored process); for a launch, ckrun's first child. Checkpoints
    /// cross-check it against the pid in the image's name.
    pub fn program_pid(&mut self) -> i32 {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(p) = self.find_program() {
                return p.pid;
            }
            if !self.is_running() {
                self.fail("ckrun exited before its program could be found");
            }
            if Instant::now() >= deadline {
                let kids = children_of(self.ckrun_pid);
                self.fail(&format!(
                    "program process not found within {TIMEOUT:?} (expected pid {:?}, \
                     children of ckrun: {kids:?})",
                    self.expected_pid
                ));
            }
            thread::sleep(POLL);
        }
    }

    /// One look for the program's process, without waiting.
    fn find_program(&mut self) -> Option<ProcId> {
        if self.program.is_none() && self.status.is_none() && self.child.is_some() {
            let pid = match self.expected_pid {
                // After a restart in a new PID namespace the program is a
                // grandchild, known by its pid in that namespace.
                Some(want) => descendants_of(self.ckrun_pid).into_iter().find(|&k| ns_pid(k) == Some(want)),
                None => children_of(self.ckrun_pid).first().copied(),
            };
            self.program = pid.and_then(ProcId::of);
        }
        self.program
    }

    /// Requests a checkpoint by sending SIGUSR2 to ckrun.
    pub fn checkpoint(&mut self, timeout: Duration) -> PathBuf {
        self.checkpoint_via(SignalTarget::Ckrun, timeout)
    }

    /// Requests a checkpoint by sending SIGUSR2 to `target`, then waits for
    /// a new image in the image directory and for ckrun's
    /// `ckrun: checkpoint ...` line naming it. Returns the image's path.
    /// Also checks that the image's name carries the program's pid.
    pub fn checkpoint_via(&mut self, target: SignalTarget, timeout: Duration) -> PathBuf {
        self.checkpoint_with(target, sys::SIGUSR2, timeout)
    }

    /// As [`Ckrun::checkpoint_via`], with trigger signal `sig` (`--signal`).
    pub fn checkpoint_with(&mut self, target: SignalTarget, sig: i32, timeout: Duration) -> PathBuf {
        let before = list_images(&self.imgdir);
        let program_pid = self.program_pid();
        let pid = match target {
            SignalTarget::Ckrun => self.ckrun_pid,
            SignalTarget::Program => program_pid,
        };
        if let Err(e) = sys::send_signal(pid, sig) {
            self.fail(&format!("kill -{sig} {pid}: {e}"));
        }
        let deadline = Instant::now() + timeout;
        let image = loop {
            let exited = !self.is_running();
            let new: Vec<PathBuf> = list_images(&self.imgdir).into_iter().filter(|p| !before.contains(p)).collect();
            if let Some(newest) = new.last() {
                break newest.clone();
            }
            if exited {
                self.fail(&format!("ckrun exited instead of writing a checkpoint ({target:?})"));
            }
            if Instant::now() >= deadline {
                self.fail(&format!("no new image within {timeout:?} after SIGUSR2 to {target:?}"));
            }
            thread::sleep(POLL);
        };
        let file_name = image.file_name().unwrap().to_string_lossy().into_owned();
        loop {
            let announced = self.stderr().lines().any(|l| l.starts_with("ckrun: checkpoint") && l.contains(&file_name));
            if announced {
                break;
            }
            if Instant::now() >= deadline {
                self.fail(&format!("ckrun did not print `ckrun: checkpoint ... {file_name}`"));
            }
            thread::sleep(POLL);
        }
        let named = ns_pid(program_pid).unwrap_or(program_pid);
        match ImageName::parse(&image) {
            Some(name) if name.pid == named => {}
            other => {
                self.fail(&format!("image {} does not name the program pid {program_pid}: {other:?}", image.display()))
            }
        }
        image
    }

    /// SIGKILL to the program and to ckrun; returns once both are gone,
    /// reaped, and the program's pid is free again (a restart needs it).
    pub fn kill9(&mut self) {
        if self.child.is_none() {
            return;
        }
        if self.is_running() {
            // Learn the program's pid first: once ckrun is dead it is lost.
            self.program_pid();
        }
        if let Some(p) = self.program.filter(ProcId::exists) {
            let _ = sys::send_signal(p.pid, sys::SIGKILL);
        }
        self.reap_all();
        if let Some(p) = self.program {
            let deadline = Instant::now() + TIMEOUT;
            while p.exists() {
                sys::try_reap(p.pid);
                if Instant::now() >= deadline {
                    self.fail(&format!("program pid {} still exists after SIGKILL", p.pid));
                }
                thread::sleep(POLL);
            }
        }
    }

    /// SIGKILL to the program and to ckrun, as [`Ckrun::kill9`], but the
    /// program's zombie is left unreaped (re-parented to this test
    /// process, the subreaper): it holds the program's pid until
    /// [`sys::try_reap`] of the returned pid, as a killed job's zombie
    /// does until its new parent gets to it.
    pub fn kill9_leaving_zombie(&mut self) -> i32 {
        assert!(self.is_running(), "kill9_leaving_zombie of a ckrun that has exited");
        let pid = self.program_pid();
        let _ = sys::send_signal(pid, sys::SIGKILL);
        self.reap_all();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let state = fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(')').and_then(|(_, r)| r.trim_start().chars().next()));
            match state {
                Some('Z') => {
                    // Forgotten, so that drop leaves the zombie alone.
                    self.program = None;
                    return pid;
                }
                None => self.fail(&format!("program {pid} was reaped by someone else")),
                _ if Instant::now() >= deadline => self.fail(&format!("program {pid} never became a zombie")),
                _ => thread::sleep(POLL),
            }
        }
    }

    /// Kills ckrun's process group and ckrun, and reaps ckrun.
    fn reap_all(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.status.is_none() {
                // ckrun is unreaped, so its process group id cannot have
                // been recycled: killing the group is safe.
                let _ = sys::send_signal(-self.ckrun_pid, sys::SIGKILL);
                let _ = child.kill();
                self.status = child.wait().ok();
            }
        }
    }

    /// Waits for ckrun to exit and returns its exit code (128+N for a
    /// signal), which must be the program's.
    pub fn wait(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.poll_exit() {
                return exit_code(status);
            }
            if self.child.is_none() {
                self.fail("wait() on a killed ckrun");
            }
            if Instant::now() >= deadline {
                self.fail(&format!("ckrun did not exit within {timeout:?}"));
            }
            thread::sleep(POLL);
        }
    }
}

impl Drop for Ckrun {
    /// Leaves nothing running: kills the program (if it is still the same
    /// process) and ckrun's group, and reaps what it can. Never panics.
    fn drop(&mut self) {
        let program = self.find_program();
        if let Some(p) = program.filter(ProcId::exists) {
            let _ = sys::send_signal(p.pid, sys::SIGKILL);
        }
        self.reap_all();
        if let Some(p) = program {
            let deadline = Instant::now() + Duration::from_secs(5);
            while p.exists() && Instant::now() < deadline {
                sys::try_reap(p.pid);
                thread::sleep(POLL);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Small file helpers
// ---------------------------------------------------------------------------

fn create_file(path: &Path) -> fs::File {
    fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()))
}

/// The file's bytes, or nothing if it does not exist (yet).
fn read_or_empty(path: &Path) -> Vec<u8> {
    match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("read {}: {e}", path.display()),
    }
}

fn tail_lines(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn tail_chars(text: &str, n: usize) -> &str {
    let mut start = text.len().saturating_sub(n);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

#[cfg(test)]
mod tests {
    //! Self-tests of the harness that need no ckrun: the examples must be
    //! deterministic and quick when run bare, or no end-to-end comparison
    //! could mean anything.
    use super::*;

    /// Runs `prog` bare twice in fresh directories; both runs must print
    /// the same bytes, leave the same files, exit with `code`, and finish
    /// within 20 s.
    fn check_deterministic(prog: Program, code: i32) {
        let name = format!("selftest-{}", prog.name());
        let first = TestDir::new(&format!("{name}-1"));
        let second = TestDir::new(&format!("{name}-2"));
        // Side by side: halves the wall time, and shows that two runs at
        // once do not disturb each other either.
        let (a, b) = thread::scope(|s| {
            let a = s.spawn(|| prog.run_bare(&[], &first.bare));
            let b = prog.run_bare(&[], &second.bare);
            (a.join().expect("first run"), b)
        });
        for run in [&a, &b] {
            assert_eq!(run.code, code, "{}: {run:?}", prog.name());
            assert!(run.stderr.is_empty(), "{}: stderr {run:?}", prog.name());
            assert!(run.elapsed < Duration::from_secs(20), "{} too slow: {run:?}", prog.name());
            let last = complete_lines(&run.stdout).last().unwrap_or_default().to_string();
            assert!(last.starts_with("done "), "{}: last line {last:?}", prog.name());
            assert_eq!(last_tick(&run.stdout), Some(200), "{}", prog.name());
        }
        assert_same_output(&a.stdout, &b.stdout, prog.name());
        assert_same_files(&first.bare, &second.bare);
    }

    #[test]
    fn counter_is_deterministic() {
        check_deterministic(Program::c("counter"), 7);
    }

    #[test]
    fn signals_is_deterministic() {
        check_deterministic(Program::c("signals"), 0);
    }

    #[test]
    fn counter_py_is_deterministic() {
        check_deterministic(Program::python("counter"), 0);
    }

    #[test]
    fn static_hello_runs() {
        let dir = TestDir::new("selftest-static_hello");
        let run = Program::c("static_hello").run_bare(&[], &dir.bare);
        assert_eq!(run.code, 0);
        assert_eq!(run.stdout, b"hello from a static binary\n");
    }

    #[test]
    fn image_names_parse() {
        let name = ImageName::parse(Path::new("/x/python3.11.4242.3.ckimg")).unwrap();
        assert_eq!(name, ImageName { program: "python3.11".into(), pid: 4242, n: 3 });
        assert_eq!(ImageName::parse(Path::new("counter.12.1.ckimg.tmp")), None);
        assert_eq!(ImageName::parse(Path::new("counter.ckimg")), None);
    }

    #[test]
    fn lines_and_ticks() {
        let out = b"tick 1 a\ntick 2 b\ntick 3";
        assert_eq!(complete_lines(out).collect::<Vec<_>>(), ["tick 1 a", "tick 2 b"]);
        assert_eq!(last_tick(out), Some(2));
        assert_eq!(last_tick(b"tick 9"), None);
        assert_eq!(tick_of("done 5"), None);
    }
}
