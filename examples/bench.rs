//! ckrun's benchmark: every performance target of issue 6, measured in one
//! run on the current machine, printed as markdown tables with PASS/MISS.
//!
//! ```text
//! cargo run --release --example bench                 # 64, 256 and 1024 MiB
//! cargo run --release --example bench -- --quick      # 64 MiB only
//! cargo run --release --example bench -- --sizes 128,512 [--tmp DIR] [--keep] [--no-build]
//! ```
//!
//! It first runs `cargo build --release --workspace` (unless `--no-build` or
//! `$CKRUN_BIN` is set), so that the numbers are those of the current code and
//! not of a stale `target/release/ckrun`, and compiles `examples/memhog.c` and
//! `examples/syscalls.c` with `cc -O2` into its temporary directory (so it does
//! not depend on build.rs, which builds the test binaries with `-O1`).
//!
//! What it measures, for each memory size S (MiB):
//! - `ckrun --dir IMG memhog S`, the program's stdout read line by line from a
//!   pipe. After `ready` and 5 ticks, SIGUSR2 goes to ckrun, and the bench
//!   polls the image directory every millisecond:
//!   - *pause*: ckrun's own figure (`paused P ms` in its stderr report), the
//!     time the program was stopped;
//!   - *max tick gap*: the longest interval between two of the program's
//!     output lines around the checkpoint (normally ~50 ms + its work), the
//!     stall as the outside world sees it;
//!   - *durable*: SIGUSR2 sent → the final `.ckimg` name exists. ckrun fsyncs
//!     the image before renaming it, so this is the time to a durable image;
//!   - *all bytes written*: SIGUSR2 sent → the temporary image file first
//!     reached its final length, i.e. every byte was written but not yet
//!     fsync'd (with O_DIRECT the chunks are then on disk already).
//!     ckrun does not report it; sampled from outside, ±1 ms;
//!   - *image/memory*: image bytes / S MiB (the memory the program touched;
//!     memhog's data compresses to 0.508 with `lz4 -1`).
//! - The program is killed (SIGKILL) and `ckrun --restart IMAGE` started with
//!   its stdout on a new pipe: *restart* is spawning ckrun → the restored
//!   program's first `tick` line read from that pipe. Twice: first as the
//!   checkpoint left the image (ckrun writes it with O_DIRECT, so its bytes
//!   are on disk and not in the page cache, as after a crash or on another
//!   machine), then again after reading the image into the page cache.
//!   Were the program to resume inside its 50 ms sleep, the rest of the
//!   sleep would count too; in practice ckrun's suspend signal cuts the
//!   sleep short, and the line follows ckrun's own `restarted ... in X ms`
//!   within a few ms. The bench also checks that this line equals the line the
//!   original program printed for the same tick.
//! - Baseline: a file of S MiB (pseudo-random bytes, written and fsync'd
//!   first) copied with `cp` (page cache only) and with `cp` + fsync of the
//!   copy (durable, like `cp && sync DST`); median of 3 each, compared with the
//!   checkpoint's two times.
//!
//! Interposition overhead of the LD_PRELOAD agent, bare vs under ckrun, runs
//! interleaved: `syscalls getppid 2000000` (getppid + 1-byte write to
//! /dev/null), `syscalls open 200000` (open + close of /etc/hostname) and
//! `syscalls pollt 1000000` (poll of a ready fd with a 1 s timeout: the
//! agent's EINTR wrapper at its dearest), which time their own loops (median of 7 runs, 5 with `--quick`); and
//! start-up, `ckrun true` vs `true`, spawn → exit (median of 50).
//!
//! Every wait has a deadline and every child is killed and reaped, even after
//! an error or Ctrl-C; the temporary directory is removed unless `--keep`.
//! Missed targets are results, not failures: the exit status is 0 unless a
//! measurement could not be made.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

type Res<T> = Result<T, String>;

const MIB: u64 = 1 << 20;
/// Deadline of each phase (filling 1 GiB, a checkpoint, a restart, a cp).
const TIMEOUT: Duration = Duration::from_secs(180);
/// Poll interval while a checkpoint runs: the resolution of the times the
/// bench measures itself, and cheap enough not to steal ckrun's CPU.
const POLL: Duration = Duration::from_millis(1);
/// Ticks the program prints before the checkpoint (their gaps are the
/// "normal" tick interval).
const WARMUP_TICKS: u64 = 5;
const CP_RUNS: usize = 3;
/// Thread counts of the pause-versus-threads table (issue 3).
const THREAD_COUNTS: [usize; 3] = [1, 8, 64];
/// Checkpoints per thread count.
const THREAD_CKPTS: usize = 5;
const STARTUP_RUNS: usize = 50;
const GETPPID_LOOPS: &str = "2000000";
const OPEN_LOOPS: &str = "200000";
const POLL_LOOPS: &str = "1000000";

const USAGE: &str = "\
usage: cargo run --release --example bench -- [OPTIONS]
  --sizes A,B,..  memory sizes in MiB (default 64,256,1024)
  --quick         64 MiB only, 5 runs per syscall loop instead of 7
  --tmp DIR       where the temporary directory goes (default $TMPDIR or /tmp)
  --keep          keep the temporary directory
  --no-build      use the existing target/release/ckrun as is
  --incremental   only the incremental images table (at the largest size)
  (set CKRUN_BIN=/path/to/ckrun to benchmark another build)";

/// Set by SIGINT/SIGTERM. Every wait checks it, so an interrupted bench still
/// kills its children and removes its (possibly multi-GiB) temporary files.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn check_interrupt() -> Res<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------

struct Args {
    sizes: Vec<u64>,
    /// Checkpoint/restart runs per size; the median run is reported (the
    /// first run in a fresh VM also pays for memory the host hands out for
    /// the first time).
    ckpt_runs: usize,
    loop_runs: usize,
    tmp_root: PathBuf,
    keep: bool,
    build: bool,
    /// `--incremental`: only the incremental images table.
    chain_only: bool,
}

/// `Ok(None)` for `--help`.
fn parse_args() -> Res<Option<Args>> {
    let mut args = Args {
        sizes: vec![64, 256, 1024],
        ckpt_runs: 3,
        loop_runs: 7,
        tmp_root: std::env::temp_dir(),
        keep: false,
        build: std::env::var_os("CKRUN_BIN").is_none(),
        chain_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "-h" | "--help" => return Ok(None),
            "--quick" => {
                args.sizes = vec![64];
                args.ckpt_runs = 1;
                args.loop_runs = 5;
            }
            "--runs" => {
                let v = it.next().ok_or("--runs needs a value")?;
                args.ckpt_runs = v.parse().ok().filter(|&n| n > 0).ok_or_else(|| format!("--runs: {v:?}"))?;
            }
            "--sizes" => {
                let v = it.next().ok_or("--sizes needs a value")?;
                args.sizes = v
                    .split(',')
                    .map(|s| s.trim().parse::<u64>().ok().filter(|&n| n > 0))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| format!("--sizes: expected MiB numbers like 64,256,1024, got {v:?}"))?;
            }
            "--tmp" => args.tmp_root = it.next().ok_or("--tmp needs a value")?.into(),
            "--keep" => args.keep = true,
            "--no-build" => args.build = false,
            "--incremental" => args.chain_only = true,
            _ => return Err(format!("unknown argument {a:?}\n{USAGE}")),
        }
    }
    Ok(Some(args))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("bench: {e}");
            return ExitCode::from(2);
        }
    };
    // SAFETY: the handler only stores to an atomic (async-signal-safe), and
    // PR_SET_CHILD_SUBREAPER takes one integer. As subreaper, the bench
    // inherits (and so can reap) a program whose ckrun died; a zombie would
    // keep its pid taken, and a restart needs that very pid.
    unsafe {
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong);
    }
    let tmp = match TempDir::create(&args.tmp_root, args.keep) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = run(&args, &tmp.path);
    kill_and_reap_all_children();
    drop(tmp);
    match result {
        Ok(0) => ExitCode::SUCCESS,
        Ok(n) => {
            eprintln!("bench: {n} measurement(s) failed (see the tables)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs everything and prints the tables; returns the number of
/// measurements that failed.
fn run(args: &Args, tmp: &Path) -> Res<usize> {
    let tools = Tools::prepare(args, tmp)?;
    println!("{}", machine_summary(&tools));
    let largest = args.sizes.iter().copied().max().unwrap_or(64);
    if args.chain_only {
        let chain = chain_pair(&tools, largest)?;
        let mut o = String::new();
        let report = Report { chain: Some(chain), ..Report::empty() };
        report.print_chain(&mut o);
        print!("{o}");
        let _ = std::io::stdout().flush();
        return Ok(report.chain.as_ref().map_or(0, Chains::failures));
    }

    let mut sizes = Vec::new();
    for &size in &args.sizes {
        check_interrupt()?;
        progress(&format!("{size} MiB: checkpoint and restart, {} run(s)", args.ckpt_runs));
        let ckpt = median_run(&tools, size, false, args.ckpt_runs);
        if let Err(e) = &ckpt {
            progress(&format!("{size} MiB: FAILED: {e}"));
        }
        check_interrupt()?;
        progress(&format!("{size} MiB: cp baseline"));
        let cp = cp_baseline(tmp, size);
        if let Err(e) = &cp {
            progress(&format!("{size} MiB: cp FAILED: {e}"));
        }
        sizes.push((size, ckpt, cp));
    }

    // The largest size again, its memory in transparent huge pages: fork
    // (the snapshot) then copies one entry per 2 MiB instead of per 4 KiB.
    check_interrupt()?;
    progress(&format!("{largest} MiB in huge pages: checkpoint and restart"));
    let huge = (largest, median_run(&tools, largest, true, args.ckpt_runs));

    let mut threads = Vec::new();
    for n in THREAD_COUNTS {
        check_interrupt()?;
        progress(&format!("pause with {n} thread(s)"));
        threads.push((n, pause_with_threads(&tools, n)));
    }

    check_interrupt()?;
    progress(&format!("{largest} MiB: checkpoint-and-stop (--stop-signal USR1)"));
    let stop = (largest, checkpoint_and_stop(&tools, largest));

    check_interrupt()?;
    progress("2 TiB MAP_NORESERVE reservation, 5 pages touched: checkpoint");
    let sparse = sparse_checkpoint(&tools);

    check_interrupt()?;
    progress("interposition: getppid+write loop");
    let getppid = syscall_loop(&tools, "getppid", GETPPID_LOOPS, args.loop_runs);
    progress("interposition: open+close loop");
    let open = syscall_loop(&tools, "open", OPEN_LOOPS, args.loop_runs);
    progress("interposition: poll loop");
    let poll = syscall_loop(&tools, "pollt", POLL_LOOPS, args.loop_runs);
    progress("start-up: ckrun true vs true");
    let startup = startup(&tools);
    let chain = Some(chain_pair(&tools, largest)?);

    let report = Report { sizes, huge, threads, stop, sparse, getppid, open, poll, startup, chain };
    report.print();
    Ok(report.failures())
}

fn progress(msg: &str) {
    eprintln!("bench: {msg}");
}

// ---------------------------------------------------------------------------
// Set-up
// ---------------------------------------------------------------------------

/// The temporary directory, removed on drop unless `--keep`.
struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    fn create(root: &Path, keep: bool) -> Res<TempDir> {
        let path = root.join(format!("ckrun-bench.{}", std::process::id()));
        fs::create_dir_all(&path).map_err(|e| format!("create {}: {e}", path.display()))?;
        Ok(TempDir { path, keep })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("bench: kept {}", self.path.display());
        } else if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!("bench: could not remove {}: {e}", self.path.display());
        }
    }
}

/// The binaries the bench runs.
struct Tools {
    ckrun: PathBuf,
    memhog: PathBuf,
    syscalls: PathBuf,
    manythreads: PathBuf,
    memflags: PathBuf,
    rewrite: PathBuf,
    tmp: PathBuf,
}

impl Tools {
    fn prepare(args: &Args, tmp: &Path) -> Res<Tools> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let ckrun = match std::env::var_os("CKRUN_BIN") {
            Some(p) => PathBuf::from(p),
            None => release_dir(root).join("ckrun"),
        };
        if args.build {
            progress("cargo build --release --workspace (so that the numbers are the current code's)");
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "--release", "--workspace", "-q"]).current_dir(root);
            let (status, _) = run_timed(&mut cmd, Duration::from_secs(1800))?;
            if !status.success() {
                return Err(format!(
                    "cargo build --release --workspace failed ({status}); fix the build or rerun with --no-build"
                ));
            }
        }
        if !ckrun.is_file() || !ckrun.with_file_name("libckpt.so").is_file() {
            return Err(format!(
                "{} (or libckpt.so next to it) is missing: run `cargo build --release --workspace` first",
                ckrun.display()
            ));
        }
        let bin = tmp.join("bin");
        fs::create_dir_all(&bin).map_err(|e| format!("create {}: {e}", bin.display()))?;
        let memhog = compile_c(&root.join("examples/memhog.c"), &bin)?;
        let syscalls = compile_c(&root.join("examples/syscalls.c"), &bin)?;
        let manythreads = compile_c(&root.join("examples/manythreads.c"), &bin)?;
        let memflags = compile_c(&root.join("examples/memflags.c"), &bin)?;
        let rewrite = compile_c(&root.join("examples/rewrite.c"), &bin)?;
        Ok(Tools { ckrun, memhog, syscalls, manythreads, memflags, rewrite, tmp: tmp.to_path_buf() })
    }
}

/// `target/release`, where `target` is the directory cargo built this example
/// in (`$CARGO_TARGET_DIR` may move it): the bench runs as
/// `target/<profile>/examples/bench`, and benchmarks the release build even
/// when it was itself built without `--release`.
fn release_dir(root: &Path) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            let examples = exe.parent()?;
            (examples.file_name()? == "examples").then(|| Some(examples.parent()?.parent()?.join("release")))?
        })
        .unwrap_or_else(|| root.join("target/release"))
}

/// `cc -O2` (`$CC` if set): the bench measures ckrun, not a debug build of
/// the examples.
fn compile_c(src: &Path, bin_dir: &Path) -> Res<PathBuf> {
    let stem = src.file_stem().and_then(|s| s.to_str()).ok_or("bad example name")?;
    let out = bin_dir.join(stem);
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let output = Command::new(&cc)
        .args(["-O2", "-Wall", "-o"])
        .arg(&out)
        .arg(src)
        .output()
        .map_err(|e| format!("cannot run the C compiler {cc:?}: {e}"))?;
    if !output.status.success() {
        return Err(format!("compiling {} failed:\n{}", src.display(), String::from_utf8_lossy(&output.stderr)));
    }
    Ok(out)
}

/// One line about the machine and the build, since every number depends on them.
fn machine_summary(t: &Tools) -> String {
    let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map_or("?", |l| l.trim_start_matches([' ', '\t', ':']));
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = read("/proc/meminfo");
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let version = Command::new(&t.ckrun)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!(
        "# ckrun benchmark (issue 6)\n\n\
         - machine: {cpu}, {cpus} CPUs, {:.1} GiB RAM, Linux {}\n\
         - ckrun: {version} ({})\n\
         - files: {} on {}; no drop_caches\n\
         - load average at start: {} (other work on the machine makes the numbers noisy)",
        mem_kib as f64 / (1 << 20) as f64,
        read("/proc/sys/kernel/osrelease").trim(),
        t.ckrun.display(),
        t.tmp.display(),
        fs_type(&t.tmp),
        load_average()
    )
}

/// The 1, 5 and 15 minute load averages.
fn load_average() -> String {
    let l = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// File-system type of `dir`: a tmpfs would make fsync free and flatter the
/// durable times.
fn fs_type(dir: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return "?".into() };
    // SAFETY: `c` is a valid C string and `st` a writable statfs.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return "?".into();
    }
    match st.f_type as u64 {
        0xEF53 => "ext2/3/4".into(),
        0x0102_1994 => "tmpfs (fsync is free: durable times are flattered)".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683E => "btrfs".into(),
        0x794C_7630 => "overlayfs".into(),
        m => format!("fs type {m:#x}"),
    }
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// One line of a child's output and when the bench read it.
#[derive(Clone, Debug)]
struct Line {
    at: Instant,
    text: String,
}

/// Reads `r` line by line in a thread, so that the bench can wait on output
/// with a deadline and timestamp every line as it arrives. Lines also go to
/// `log` (when given), for error messages.
fn line_reader(r: impl Read + Send + 'static, log: Option<Arc<Mutex<Vec<String>>>>) -> Receiver<Line> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut buf = String::new();
        loop {
            buf.clear();
            match r.read_line(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = Line { at: Instant::now(), text: buf.trim_end_matches('\n').to_string() };
                    if let Some(log) = &log {
                        if let Ok(mut l) = log.lock() {
                            l.push(line.text.clone());
                        }
                    }
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });
    rx
}

/// A ckrun process with its stdout and stderr read line by line. Dropping it
/// kills (SIGKILL) and reaps whatever is left of it and of its program.
struct Job {
    label: String,
    child: Child,
    pid: i32,
    out: Receiver<Line>,
    err: Receiver<Line>,
    err_log: Arc<Mutex<Vec<String>>>,
    /// The program ckrun runs, once known.
    program: Option<i32>,
}

impl Job {
    fn spawn(label: String, cmd: &mut Command) -> Res<Job> {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("spawn {label}: {e}"))?;
        let err_log = Arc::new(Mutex::new(Vec::new()));
        let out = line_reader(child.stdout.take().ok_or("no stdout pipe")?, None);
        let err = line_reader(child.stderr.take().ok_or("no stderr pipe")?, Some(err_log.clone()));
        Ok(Job { label, pid: child.id() as i32, child, out, err, err_log, program: None })
    }

    /// An error message ending with ckrun's stderr so far.
    fn fail(&self, msg: &str) -> String {
        // ckrun's last words may still be in the pipe: let the reader
        // thread log them (it stops at EOF, which disconnects the channel).
        let deadline = Instant::now() + Duration::from_millis(300);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if let Err(RecvTimeoutError::Disconnected) = self.err.recv_timeout(left) {
                break;
            }
        }
        let log = self.err_log.lock().map(|l| l.join("\n    ")).unwrap_or_default();
        format!("{}: {msg}; ckrun's stderr:\n    {log}", self.label)
    }

    /// The next line of the program's stdout.
    fn next_out(&self, what: &str, deadline: Instant) -> Res<Line> {
        loop {
            check_interrupt()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.fail(&format!("timed out waiting for {what}")));
            }
            match self.out.recv_timeout(left.min(Duration::from_millis(50))) {
                Ok(line) => return Ok(line),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(self.fail(&format!("the program's stdout closed before {what}")))
                }
            }
        }
    }

    /// The next stderr line containing `needle`, or `None` after `wait`.
    fn err_line(&self, needle: &str, wait: Duration) -> Option<Line> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.err.recv_timeout(left.min(Duration::from_millis(50))) {
                Ok(l) if l.text.contains(needle) => return Some(l),
                Ok(_) | Err(RecvTimeoutError::Timeout) if !left.is_zero() && !INTERRUPTED.load(Ordering::Relaxed) => {}
                _ => return None,
            }
        }
    }

    /// The program's pid: ckrun's (only) child.
    fn find_program(&mut self, deadline: Instant) -> Res<i32> {
        loop {
            if let Some(&p) = children_of(self.pid).first() {
                self.program = Some(p);
                return Ok(p);
            }
            check_interrupt()?;
            if Instant::now() > deadline {
                return Err(self.fail("ckrun has no child process"));
            }
            thread::sleep(POLL);
        }
    }

    /// Waits for ckrun to exit.
    fn wait_exit(&mut self, timeout: Duration) -> Res<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().map_err(|e| format!("wait for {}: {e}", self.label))? {
                return Ok(st);
            }
            check_interrupt()?;
            if Instant::now() > deadline {
                return Err(self.fail("ckrun did not exit"));
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        let ckrun_alive = matches!(self.child.try_wait(), Ok(None));
        // The program only while it is still ours: ckrun's child, or ours
        // once orphaned. A reaped pid might already be someone else's.
        let program =
            self.program.filter(|&p| ppid_of(p).is_some_and(|pp| pp == self.pid || pp == std::process::id() as i32));
        if let Some(p) = program {
            signal(p, libc::SIGKILL);
        }
        if ckrun_alive {
            signal(self.pid, libc::SIGKILL);
        }
        let _ = self.child.wait();
        if let Some(p) = program {
            let _ = wait_gone(p, Duration::from_secs(10));
        }
    }
}

fn signal(pid: i32, sig: libc::c_int) -> bool {
    // SAFETY: kill(2) takes plain integers.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Parent pid from /proc/PID/stat (the name may hold spaces and parentheses).
fn ppid_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(1)?.parse().ok()
}

/// Children of `pid`, over all its threads.
fn children_of(pid: i32) -> Vec<i32> {
    let mut kids = Vec::new();
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(list) = fs::read_to_string(t.path().join("children")) {
                kids.extend(list.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
            }
        }
    }
    kids
}

/// Waits until `pid` no longer exists, reaping it if it became our child.
/// A restart needs the pid free.
fn wait_gone(pid: i32, timeout: Duration) -> Res<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid c_int; WNOHANG never blocks.
        unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("process {pid} still exists {timeout:?} after SIGKILL"));
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// Last-resort cleanup: anything still our child (e.g. a snapshot process
/// orphaned by a killed ckrun) is killed and reaped.
fn kill_and_reap_all_children() {
    for pid in children_of(std::process::id() as i32) {
        signal(pid, libc::SIGKILL);
        let _ = wait_gone(pid, Duration::from_secs(10));
    }
}

/// Runs `cmd` to its end (stdio as set by the caller), killing it after
/// `timeout`. Returns its status and the time from spawn to exit, taken by a
/// thread blocked in wait(), so polling does not blur short runs.
fn run_timed(cmd: &mut Command, timeout: Duration) -> Res<(ExitStatus, Duration)> {
    check_interrupt()?;
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("spawn {cmd:?}: {e}"))?;
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let r = child.wait();
        let _ = tx.send((r, Instant::now()));
    });
    match rx.recv_timeout(timeout) {
        Ok((Ok(status), end)) => Ok((status, end - start)),
        Ok((Err(e), _)) => Err(format!("wait for {cmd:?}: {e}")),
        Err(_) => {
            signal(pid, libc::SIGKILL);
            let _ = rx.recv_timeout(Duration::from_secs(10));
            Err(format!("{cmd:?} did not finish within {timeout:?}"))
        }
    }
}

/// Runs `cmd` to its end and returns its stdout; fails on a non-zero exit.
fn run_output(cmd: &mut Command, timeout: Duration) -> Res<String> {
    let log = Arc::new(Mutex::new(Vec::new()));
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("spawn {cmd:?}: {e}"))?;
    let out = line_reader(child.stdout.take().ok_or("no stdout pipe")?, None);
    let _err = line_reader(child.stderr.take().ok_or("no stderr pipe")?, Some(log.clone()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().map_err(|e| format!("wait for {cmd:?}: {e}"))? {
            break st;
        }
        if Instant::now() > deadline || INTERRUPTED.load(Ordering::Relaxed) {
            let _ = child.kill();
            let _ = child.wait();
            check_interrupt()?;
            return Err(format!("{cmd:?} did not finish within {timeout:?}"));
        }
        thread::sleep(Duration::from_millis(5));
    };
    let mut text = String::new();
    while let Ok(l) = out.recv_timeout(Duration::from_secs(5)) {
        text.push_str(&l.text);
        text.push('\n');
    }
    if !status.success() {
        let err = log.lock().map(|l| l.join("\n")).unwrap_or_default();
        return Err(format!("{cmd:?} failed ({status}): {err}"));
    }
    Ok(text)
}

// ---------------------------------------------------------------------------
// Checkpoint and restart
// ---------------------------------------------------------------------------

/// Everything measured for one memory size (times in seconds unless `_ms`).
struct Ckpt {
    pause_ms: f64,
    normal_gap_ms: f64,
    max_gap_ms: f64,
    /// SIGUSR2 → the temporary image file appeared.
    created: Option<f64>,
    /// SIGUSR2 → the temporary file reached its final length (not yet fsync'd).
    in_cache: Option<f64>,
    /// SIGUSR2 → the final name exists (fsync'd).
    durable: f64,
    ckrun_total: f64,
    image_bytes: u64,
    /// ckrun's "memory X" figure: all the memory it saved.
    ckrun_memory: String,
    /// Spawning ckrun --restart → the first output line, image on disk.
    restart: f64,
    /// The same with the image in the page cache.
    restart_cached: f64,
    ckrun_restore_ms: Option<f64>,
    /// Whether the restored program's first line equals the original's for
    /// the same tick (`None`: the original never printed that tick).
    same_output: Option<bool>,
    resumed_tick: u64,
}

/// `tick N ...` → N.
fn tick_of(line: &str) -> Option<u64> {
    line.strip_prefix("tick ")?.split_whitespace().next()?.parse().ok()
}

/// Files a `tick N` line under N; other lines are the program's business.
fn record_tick(ticks: &mut BTreeMap<u64, Line>, l: Line) {
    if let Some(n) = tick_of(&l.text) {
        ticks.insert(n, l);
    }
}

/// The number right after the last `key` in `line` (`paused 6.6 ms` → 6.6).
fn number_after(line: &str, key: &str) -> Option<f64> {
    let rest = &line[line.rfind(key)? + key.len()..];
    rest.split([' ', ',', ')']).next()?.parse().ok()
}

/// The text after `key` up to the next `,` or `)` (`memory 256.1 MiB`).
fn field_after(line: &str, key: &str) -> Option<String> {
    let rest = &line[line.rfind(key)? + key.len()..];
    Some(rest.split([',', ')']).next()?.to_string())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Runs [`checkpoint_and_restart`] `runs` times; returns the run with the
/// median durable checkpoint time.
fn median_run(t: &Tools, size: u64, huge: bool, runs: usize) -> Res<Ckpt> {
    let mut done = Vec::new();
    for _ in 0..runs {
        check_interrupt()?;
        done.push(checkpoint_and_restart(t, size, huge)?);
    }
    done.sort_by(|a, b| a.durable.total_cmp(&b.durable));
    let n = done.len();
    Ok(done.swap_remove(n / 2))
}

fn checkpoint_and_restart(t: &Tools, size: u64, huge: bool) -> Res<Ckpt> {
    let imgdir = t.tmp.join(format!("img-{size}"));
    fs::create_dir_all(&imgdir).map_err(|e| format!("create {}: {e}", imgdir.display()))?;
    let deadline = Instant::now() + TIMEOUT;
    let mut cmd = Command::new(&t.ckrun);
    cmd.arg("--dir").arg(&imgdir).arg(&t.memhog).arg(size.to_string()).current_dir(&t.tmp);
    if huge {
        cmd.env("MEMHOG_THP", "1");
    }
    let mut job = Job::spawn(format!("ckrun memhog {size}"), &mut cmd)?;

    // The program's lines by tick number, to compare with the restored run.
    let mut ticks: BTreeMap<u64, Line> = BTreeMap::new();
    while job.next_out("`ready`", deadline)?.text != "ready" {}
    while ticks.keys().next_back().copied().unwrap_or(0) < WARMUP_TICKS {
        let l = job.next_out("the first ticks", deadline)?;
        record_tick(&mut ticks, l);
    }
    let program = job.find_program(deadline)?;

    // Flush others' dirty data, so that the checkpoint's fsync pays for its
    // own writes only.
    // SAFETY: sync(2) has no arguments.
    unsafe { libc::sync() };
    let t0 = Instant::now();
    if !signal(job.pid, libc::SIGUSR2) {
        return Err(job.fail("cannot signal ckrun"));
    }
    let mut created: Option<Instant> = None;
    let mut sizes: Vec<(Instant, u64)> = Vec::new();
    let mut renamed: Option<(Instant, PathBuf)> = None;
    let mut report: Option<Line> = None;
    while renamed.is_none() || report.is_none() {
        check_interrupt()?;
        if Instant::now() > deadline {
            return Err(job.fail("timed out waiting for checkpoint 1"));
        }
        while let Ok(l) = job.out.try_recv() {
            record_tick(&mut ticks, l);
        }
        loop {
            match job.err.try_recv() {
                Ok(l) if l.text.starts_with("ckrun: checkpoint 1:") => report = Some(l),
                Ok(l) if l.text.contains("checkpoint failed") => return Err(job.fail("the checkpoint failed")),
                Ok(_) => {}
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) if report.is_some() => break,
                Err(TryRecvError::Disconnected) => return Err(job.fail("ckrun exited during the checkpoint")),
            }
        }
        if renamed.is_none() {
            let now = Instant::now();
            for e in fs::read_dir(&imgdir).map_err(|e| format!("read {}: {e}", imgdir.display()))?.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(".ckimg") {
                    renamed = Some((now, e.path()));
                } else if name.contains(".ckimg.tmp.") {
                    created.get_or_insert(now);
                    if let Ok(m) = e.metadata() {
                        sizes.push((now, m.len()));
                    }
                }
            }
        }
        thread::sleep(POLL);
    }
    let (renamed_at, image) = renamed.ok_or("unreachable: no image")?;
    let report = report.ok_or("unreachable: no report")?;
    let image_bytes = fs::metadata(&image).map_err(|e| format!("stat {}: {e}", image.display()))?.len();
    let secs = |at: Instant| (at - t0).as_secs_f64();

    // Two more ticks: the program runs on, and the gaps around the
    // checkpoint are complete.
    let last = ticks.keys().next_back().copied().unwrap_or(0);
    while ticks.keys().next_back().copied().unwrap_or(0) < last + 2 {
        let l = job.next_out("ticks after the checkpoint", deadline)?;
        record_tick(&mut ticks, l);
    }
    let timeline: Vec<&Line> = ticks.values().collect();
    let gaps = timeline.windows(2).map(|w| (w[1].at, (w[1].at - w[0].at).as_secs_f64() * 1000.0));
    let normal_gap_ms = median(gaps.clone().filter(|(at, _)| *at < t0).map(|(_, g)| g).collect());
    let max_gap_ms = gaps.filter(|(at, _)| *at >= t0).map(|(_, g)| g).fold(0.0, f64::max);

    // Kill the program; ckrun reaps it and exits, freeing the pid.
    signal(program, libc::SIGKILL);
    job.wait_exit(Duration::from_secs(30))?;
    wait_gone(program, Duration::from_secs(10))?;
    drop(job);

    // From disk first (ckrun wrote the image past the page cache, as a
    // restart after a crash or on another machine finds it), then again
    // with the image read into the page cache beforehand.
    let cold = restart(t, &image, program, size, &ticks)?;
    File::open(&image)
        .and_then(|mut f| std::io::copy(&mut f, &mut std::io::sink()))
        .map_err(|e| format!("read {}: {e}", image.display()))?;
    let cached = restart(t, &image, program, size, &ticks)?;
    let _ = fs::remove_file(&image);

    Ok(Ckpt {
        pause_ms: number_after(&report.text, "paused ").ok_or_else(|| format!("no pause in {:?}", report.text))?,
        normal_gap_ms,
        max_gap_ms,
        created: created.map(secs),
        in_cache: sizes.iter().find(|(_, len)| *len == image_bytes).map(|&(at, _)| secs(at)),
        durable: secs(renamed_at),
        ckrun_total: number_after(&report.text, "total ").map_or(f64::NAN, |ms| ms / 1000.0),
        image_bytes,
        ckrun_memory: field_after(&report.text, "(memory ").unwrap_or_default(),
        restart: cold.secs,
        restart_cached: cached.secs,
        ckrun_restore_ms: cold.ckrun_ms,
        same_output: cold.same_output.and_then(|a| cached.same_output.map(|b| a && b)),
        resumed_tick: cold.resumed_tick,
    })
}

/// One restart of an image: how long to the first output line, and
/// whether that line is the original's.
struct Restart {
    secs: f64,
    ckrun_ms: Option<f64>,
    same_output: Option<bool>,
    resumed_tick: u64,
}

/// Restarts `image` (`program` is the pid it restores), waits for the first
/// tick, compares it with the original's, and kills the program again.
fn restart(t: &Tools, image: &Path, program: i32, size: u64, ticks: &BTreeMap<u64, Line>) -> Res<Restart> {
    let deadline = Instant::now() + TIMEOUT;
    let t1 = Instant::now();
    let mut cmd = Command::new(&t.ckrun);
    cmd.arg("--restart").arg(image).current_dir(&t.tmp);
    let mut rjob = Job::spawn(format!("ckrun --restart ({size} MiB)"), &mut cmd)?;
    rjob.program = Some(program); // a restart restores the same pid
    let first = loop {
        let l = rjob.next_out("the restored program's first tick", deadline)?;
        if tick_of(&l.text).is_some() {
            break l;
        }
    };
    let secs = (first.at - t1).as_secs_f64();
    let ckrun_ms =
        rjob.err_line("restarted process", Duration::from_secs(5)).and_then(|l| number_after(&l.text, " in "));
    let resumed_tick = tick_of(&first.text).unwrap_or(0);
    let same_output = ticks.get(&resumed_tick).map(|l| l.text == first.text);
    signal(program, libc::SIGKILL);
    rjob.wait_exit(Duration::from_secs(30))?;
    wait_gone(program, Duration::from_secs(10))?;
    Ok(Restart { secs, ckrun_ms, same_output, resumed_tick })
}

/// The pauses of [`THREAD_CKPTS`] checkpoints of `manythreads N` (little
/// memory): what the number of threads costs.
fn pause_with_threads(t: &Tools, n: usize) -> Res<Vec<f64>> {
    let imgdir = t.tmp.join(format!("img-threads-{n}"));
    fs::create_dir_all(&imgdir).map_err(|e| format!("create {}: {e}", imgdir.display()))?;
    let deadline = Instant::now() + TIMEOUT;
    let mut cmd = Command::new(&t.ckrun);
    cmd.arg("--dir").arg(&imgdir).arg(&t.manythreads).arg(n.to_string()).current_dir(&t.tmp);
    let mut job = Job::spawn(format!("ckrun manythreads {n}"), &mut cmd)?;
    while job.next_out("`ready`", deadline)?.text != "ready" {}
    let program = job.find_program(deadline)?;
    let mut pauses = Vec::new();
    for k in 1..=THREAD_CKPTS {
        if !signal(job.pid, libc::SIGUSR2) {
            return Err(job.fail("cannot signal ckrun"));
        }
        let needle = format!("checkpoint {k}:");
        let line = job.err_line(&needle, TIMEOUT).ok_or_else(|| job.fail(&format!("no `{needle}` line from ckrun")))?;
        pauses.push(number_after(&line.text, "paused ").ok_or_else(|| format!("no pause in {:?}", line.text))?);
    }
    signal(program, libc::SIGKILL);
    job.wait_exit(Duration::from_secs(30))?;
    let _ = fs::remove_dir_all(&imgdir);
    Ok(pauses)
}

/// A batch job's end (`--stop-signal USR1`, as a Slurm script passes on
/// `--signal=B:USR1@T`) of `memhog SIZE`: seconds from the signal to ckrun's
/// exit 85, when the image is durable and the tree is gone; the warning
/// time a batch script needs is this plus margin.
fn checkpoint_and_stop(t: &Tools, size: u64) -> Res<f64> {
    let imgdir = t.tmp.join(format!("img-stop-{size}"));
    fs::create_dir_all(&imgdir).map_err(|e| format!("create {}: {e}", imgdir.display()))?;
    let deadline = Instant::now() + TIMEOUT;
    let mut cmd = Command::new(&t.ckrun);
    cmd.arg("--dir").arg(&imgdir).args(["--stop-signal", "USR1"]).arg(&t.memhog).arg(size.to_string());
    let mut job = Job::spawn(format!("ckrun --stop-signal USR1 memhog {size}"), cmd.current_dir(&t.tmp))?;
    while job.next_out("`ready`", deadline)?.text != "ready" {}
    while tick_of(&job.next_out("a tick", deadline)?.text).unwrap_or(0) < WARMUP_TICKS {}
    // SAFETY: sync(2) has no arguments.
    unsafe { libc::sync() };
    let t0 = Instant::now();
    if !signal(job.pid, libc::SIGUSR1) {
        return Err(job.fail("cannot signal ckrun"));
    }
    let status = job.wait_exit(TIMEOUT)?;
    let secs = t0.elapsed().as_secs_f64();
    if status.code() != Some(85) {
        return Err(job.fail(&format!("ckrun exited with {status}, not 85 (checkpointed)")));
    }
    // The image, and its `.stopped` mark.
    let images = fs::read_dir(&imgdir)
        .map_err(|e| format!("read {}: {e}", imgdir.display()))?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".ckimg"))
        .count();
    let _ = fs::remove_dir_all(&imgdir);
    if images != 1 {
        return Err(format!("{images} images in the image directory after exit 85, not one"));
    }
    Ok(secs)
}

/// Checkpoints of `memflags sparse` (a 2 TiB MAP_NORESERVE reservation
/// with 5 pages touched): (total ms, pause ms) of each. What a checkpoint
/// costs must follow the memory used, not the memory reserved.
fn sparse_checkpoint(t: &Tools) -> Res<Vec<(f64, f64)>> {
    let imgdir = t.tmp.join("img-sparse");
    fs::create_dir_all(&imgdir).map_err(|e| format!("create {}: {e}", imgdir.display()))?;
    let deadline = Instant::now() + TIMEOUT;
    let mut cmd = Command::new(&t.ckrun);
    cmd.arg("--dir").arg(&imgdir).arg(&t.memflags).args(["sparse", "1000000"]).current_dir(&t.tmp);
    let mut job = Job::spawn("ckrun memflags sparse".into(), &mut cmd)?;
    while tick_of(&job.next_out("a tick", deadline)?.text).is_none() {}
    let program = job.find_program(deadline)?;
    let mut out = Vec::new();
    for k in 1..=THREAD_CKPTS {
        if !signal(job.pid, libc::SIGUSR2) {
            return Err(job.fail("cannot signal ckrun"));
        }
        let needle = format!("checkpoint {k}:");
        let line = job.err_line(&needle, TIMEOUT).ok_or_else(|| job.fail(&format!("no `{needle}` line from ckrun")))?;
        let total = number_after(&line.text, "total ").ok_or_else(|| format!("no total in {:?}", line.text))?;
        let paused = number_after(&line.text, "paused ").ok_or_else(|| format!("no pause in {:?}", line.text))?;
        out.push((total, paused));
    }
    signal(program, libc::SIGKILL);
    job.wait_exit(Duration::from_secs(30))?;
    let _ = fs::remove_dir_all(&imgdir);
    Ok(out)
}

// ---------------------------------------------------------------------------
// cp baseline
// ---------------------------------------------------------------------------

struct Cp {
    /// `cp` alone: the copy is in the page cache.
    cache: f64,
    /// `cp` then fsync of the copy.
    durable: f64,
}

/// splitmix64, for incompressible file contents.
fn next_rand(s: &mut u64) -> u64 {
    *s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *s;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn cp_baseline(tmp: &Path, size: u64) -> Res<Cp> {
    let src = tmp.join("cp-src");
    let dst = tmp.join("cp-dst");
    let io = |what: &str, p: &Path, e: std::io::Error| format!("{what} {}: {e}", p.display());
    {
        let mut f = File::create(&src).map_err(|e| io("create", &src, e))?;
        let mut buf = vec![0u8; 4 << 20];
        let mut seed = size;
        for _ in 0..(size * MIB).div_ceil(buf.len() as u64) {
            check_interrupt()?;
            for c in buf.chunks_exact_mut(8) {
                c.copy_from_slice(&next_rand(&mut seed).to_le_bytes());
            }
            f.write_all(&buf).map_err(|e| io("write", &src, e))?;
        }
        f.set_len(size * MIB).map_err(|e| io("truncate", &src, e))?;
        f.sync_all().map_err(|e| io("fsync", &src, e))?;
    }
    let mut cache = Vec::new();
    let mut durable = Vec::new();
    for _ in 0..CP_RUNS {
        for fsync in [true, false] {
            // SAFETY: sync(2) has no arguments.
            unsafe { libc::sync() };
            let mut cmd = Command::new("cp");
            cmd.arg(&src).arg(&dst).stdin(Stdio::null());
            let (status, copy) = run_timed(&mut cmd, TIMEOUT)?;
            if !status.success() {
                return Err(format!("cp failed: {status}"));
            }
            let t = Instant::now();
            File::open(&dst).and_then(|f| f.sync_all()).map_err(|e| io("fsync", &dst, e))?;
            if fsync {
                durable.push((copy + t.elapsed()).as_secs_f64());
            } else {
                cache.push(copy.as_secs_f64());
            }
            fs::remove_file(&dst).map_err(|e| io("remove", &dst, e))?;
        }
    }
    fs::remove_file(&src).map_err(|e| io("remove", &src, e))?;
    Ok(Cp { cache: median(cache), durable: median(durable) })
}

// ---------------------------------------------------------------------------
// Interposition overhead
// ---------------------------------------------------------------------------

/// Times in milliseconds of every run, bare and under ckrun.
struct Overhead {
    bare: Vec<f64>,
    ckrun: Vec<f64>,
}

impl Overhead {
    fn bare_ms(&self) -> f64 {
        median(self.bare.clone())
    }

    fn ckrun_ms(&self) -> f64 {
        median(self.ckrun.clone())
    }

    /// Overhead of the medians, in percent.
    fn percent(&self) -> f64 {
        (self.ckrun_ms() - self.bare_ms()) / self.bare_ms() * 100.0
    }

    /// Overhead of the fastest runs, in percent: less sensitive to other
    /// load on the machine, so a large difference from [`Self::percent`]
    /// means the medians are noise.
    fn percent_of_min(&self) -> f64 {
        let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
        (min(&self.ckrun) - min(&self.bare)) / min(&self.bare) * 100.0
    }

    /// `median (min–max)`.
    fn spread(v: &[f64]) -> String {
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(0.0, f64::max);
        format!("{:.2} ({min:.2}–{max:.2})", median(v.to_vec()))
    }
}

/// `syscalls MODE N` bare and under ckrun, interleaved so that drift in the
/// machine's speed hits both alike; the program times its own loop.
fn syscall_loop(t: &Tools, mode: &str, n: &str, runs: usize) -> Res<Overhead> {
    let imgdir = t.tmp.join("img-syscalls");
    fs::create_dir_all(&imgdir).map_err(|e| format!("create {}: {e}", imgdir.display()))?;
    let parse = |out: String| -> Res<f64> {
        out.lines()
            .find_map(|l| l.strip_prefix("ns ")?.trim().parse::<f64>().ok())
            .map(|ns| ns / 1e6)
            .ok_or_else(|| format!("no `ns` line in {out:?}"))
    };
    let (mut bare, mut under) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let out = run_output(Command::new(&t.syscalls).args([mode, n]).current_dir(&t.tmp), TIMEOUT)?;
        bare.push(parse(out)?);
        let mut cmd = Command::new(&t.ckrun);
        cmd.arg("--dir").arg(&imgdir).arg(&t.syscalls).args([mode, n]).current_dir(&t.tmp);
        under.push(parse(run_output(&mut cmd, TIMEOUT)?)?);
    }
    Ok(Overhead { bare, ckrun: under })
}

/// `true` vs `ckrun true`, spawn → exit, interleaved.
fn startup(t: &Tools) -> Res<Overhead> {
    let (mut bare, mut under) = (Vec::new(), Vec::new());
    for _ in 0..STARTUP_RUNS {
        for with_ckrun in [false, true] {
            let mut cmd = if with_ckrun {
                let mut c = Command::new(&t.ckrun);
                c.arg("--dir").arg(&t.tmp).arg("true");
                c
            } else {
                Command::new("true")
            };
            cmd.current_dir(&t.tmp).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
            let (status, took) = run_timed(&mut cmd, Duration::from_secs(30))?;
            if !status.success() {
                return Err(format!("{cmd:?} failed: {status}"));
            }
            let ms = took.as_secs_f64() * 1000.0;
            if with_ckrun {
                under.push(ms)
            } else {
                bare.push(ms)
            }
        }
    }
    Ok(Overhead { bare, ckrun: under })
}

// ---------------------------------------------------------------------------
// Incremental images
// ---------------------------------------------------------------------------

/// Checkpoints in a row of the incremental table (issue 13).
const CHAIN_CKPTS: u64 = 10;
/// Pages `rewrite` rewrites between two checkpoints, per mille.
const CHAIN_PERMILLE: &str = "50";
/// `rewrite`'s sleep after each tick: longer than a full checkpoint of
/// 1 GiB, so that each checkpoint sees exactly one tick's rewrites.
const CHAIN_PACE_MS: &str = "2500";
/// Restarts of each chain's tenth image, from disk and cached (medians).
const CHAIN_RESTARTS: usize = 5;

/// Ten checkpoints of `rewrite SIZE 50 11`, one after each tick, incremental
/// or `--full`, then restarts of the tenth.
struct Chain {
    /// Each image's bytes, in order.
    images: Vec<u64>,
    /// Every file left in the image directory (images and page files).
    total_bytes: u64,
    /// SIGUSR2 → the new image's final name exists, per checkpoint.
    durable: Vec<f64>,
    pauses_ms: Vec<f64>,
    /// ckrun's `total` figure, per checkpoint.
    ckrun_total: Vec<f64>,
    /// Checkpoints still being written when the next tick began (their
    /// image may hold more than one tick's rewrites).
    overlapped: usize,
    /// Spawning `ckrun --restart` of the tenth image → ckrun's `restarted`
    /// line (the program then finishes its sleep), every file of the chain
    /// dropped from the page cache first; one per round.
    restart: Vec<f64>,
    /// The same with every file of the chain in the page cache.
    restart_cached: Vec<f64>,
    ckrun_restore_ms: Vec<f64>,
    /// The restored program's output after the tenth tick equals the
    /// uninterrupted run's.
    same_output: bool,
    label: String,
    imgdir: PathBuf,
    tenth: PathBuf,
    /// The program's pid (a restart restores it).
    program: i32,
    /// The uninterrupted run's lines after the tenth tick.
    tail: Vec<String>,
}

fn image_files(dir: &Path) -> Res<Vec<(String, u64)>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(|e| format!("read {}: {e}", dir.display()))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".ckimg") || name.ends_with(".ckpages") {
            out.push((name, e.metadata().map_err(|e| format!("stat {}: {e}", e))?.len()));
        }
    }
    Ok(out)
}

/// Drops every file of `dir` from the page cache (they are clean: ckrun
/// wrote and synced them), so that a restart reads them from disk.
fn drop_from_cache(dir: &Path) -> Res<()> {
    for (name, _) in image_files(dir)? {
        let f = File::open(dir.join(&name)).map_err(|e| format!("open {name}: {e}"))?;
        // SAFETY: plain integers on a file we hold open.
        unsafe { libc::posix_fadvise(std::os::fd::AsRawFd::as_raw_fd(&f), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
    Ok(())
}

fn read_into_cache(dir: &Path) -> Res<()> {
    for (name, _) in image_files(dir)? {
        File::open(dir.join(&name))
            .and_then(|mut f| std::io::copy(&mut f, &mut std::io::sink()))
            .map_err(|e| format!("read {name}: {e}"))?;
    }
    Ok(())
}

/// How a chain's images are made.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ChainMode {
    /// Incremental, with dirty tracking (the default).
    Tracked,
    /// The same with a snapshot at every checkpoint (`CKRUN_NO_COPY_OUT=1`).
    Snapshots,
    /// The same, with `rewrite` rewriting the same pages each tick.
    SamePages,
    /// Incremental, content dedup alone (`CKRUN_NO_DIRTY_TRACKING=1`).
    ContentDedup,
    /// `--full`.
    Full,
}

impl ChainMode {
    fn label(self) -> &'static str {
        match self {
            ChainMode::Tracked => "incremental",
            ChainMode::Snapshots => "incremental, snapshots",
            ChainMode::SamePages => "incremental, same pages",
            ChainMode::ContentDedup => "content dedup",
            ChainMode::Full => "full",
        }
    }
}

/// The chains of the incremental images table, of `size` MiB.
struct Chains {
    size: u64,
    /// Incremental (scattered rewrites, new pages each tick).
    incr: Res<Chain>,
    /// The same with snapshots, no copy-out (not restarted: its images
    /// have the shape of `incr`'s).
    snap: Res<Chain>,
    /// The same with content dedup alone (not restarted either).
    dedup: Res<Chain>,
    /// Incremental, the same pages rewritten each tick.
    same: Res<Chain>,
    full: Res<Chain>,
}

impl Chains {
    fn failures(&self) -> usize {
        [&self.incr, &self.snap, &self.dedup, &self.same, &self.full].iter().filter(|c| c.is_err()).count()
    }
}

fn chain_pair(t: &Tools, size: u64) -> Res<Chains> {
    let run = |mode: ChainMode| -> Res<Res<Chain>> {
        check_interrupt()?;
        progress(&format!("{size} MiB: {CHAIN_CKPTS} checkpoints in a row ({}), restart from the last", mode.label()));
        let c = chain_run(t, size, mode);
        if let Err(e) = &c {
            progress(&format!("{} chain FAILED: {e}", mode.label()));
        }
        Ok(c)
    };
    let mut incr = run(ChainMode::Tracked)?;
    let snap = run(ChainMode::Snapshots)?;
    let dedup = run(ChainMode::ContentDedup)?;
    for c in [&snap, &dedup].into_iter().flatten() {
        let _ = fs::remove_dir_all(&c.imgdir);
    }
    let mut same = run(ChainMode::SamePages)?;
    let mut full = run(ChainMode::Full)?;
    // Restarts alternate between the two, so that other load on the
    // machine weighs on both alike; the last cached one runs to the end.
    for round in 0..CHAIN_RESTARTS {
        check_interrupt()?;
        progress(&format!("restarts of the 10th images, round {} of {CHAIN_RESTARTS}", round + 1));
        for cached in [false, true] {
            for c in [&mut incr, &mut same, &mut full] {
                let to_the_end = cached && round + 1 == CHAIN_RESTARTS;
                if let Ok(chain) = c {
                    if let Err(e) = restart_chain(t, chain, cached, to_the_end) {
                        progress(&format!("{} restart FAILED: {e}", chain.label));
                        *c = Err(e);
                    }
                }
            }
        }
    }
    for c in [&incr, &same, &full].into_iter().flatten() {
        let _ = fs::remove_dir_all(&c.imgdir);
    }
    Ok(Chains { size, incr, snap, dedup, same, full })
}

fn chain_run(t: &Tools, size: u64, chain_mode: ChainMode) -> Res<Chain> {
    let full = chain_mode == ChainMode::Full;
    let mode = chain_mode.label();
    let imgdir = t.tmp.join(format!("img-chain-{}", mode.replace(' ', "-")));
    let _ = fs::remove_dir_all(&imgdir);
    fs::create_dir_all(&imgdir).map_err(|e| format!("create {}: {e}", imgdir.display()))?;
    let ticks = (CHAIN_CKPTS + 1).to_string();
    let mut cmd = Command::new(&t.ckrun);
    cmd.arg("--dir").arg(&imgdir);
    if full {
        cmd.arg("--full");
    }
    if chain_mode == ChainMode::ContentDedup {
        cmd.env("CKRUN_NO_DIRTY_TRACKING", "1");
    }
    if chain_mode == ChainMode::Snapshots {
        cmd.env("CKRUN_NO_COPY_OUT", "1");
    }
    cmd.arg(&t.rewrite).args([&size.to_string(), CHAIN_PERMILLE, &ticks, CHAIN_PACE_MS]).current_dir(&t.tmp);
    if chain_mode == ChainMode::SamePages {
        cmd.arg("same");
    }
    let mut job = Job::spawn(format!("ckrun rewrite {size} ({mode})"), &mut cmd)?;
    let deadline = Instant::now() + TIMEOUT;
    let mut lines: Vec<String> = Vec::new();
    while job.next_out("`ready`", deadline)?.text != "ready" {}
    let program = job.find_program(deadline)?;
    let (mut durable, mut pauses_ms, mut ckrun_total, mut images) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut overlapped = 0;
    let mut last_durable: Option<Instant> = None;
    for k in 1..=CHAIN_CKPTS {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let l = job.next_out(&format!("tick {k}"), deadline)?;
            lines.push(l.text.clone());
            if tick_of(&l.text) == Some(k) {
                if last_durable.is_some_and(|d| d > l.at) {
                    overlapped += 1;
                }
                break;
            }
        }
        let known: Vec<String> = image_files(&imgdir)?.into_iter().map(|(n, _)| n).collect();
        // SAFETY: sync(2) has no arguments.
        unsafe { libc::sync() };
        let t0 = Instant::now();
        if !signal(job.pid, libc::SIGUSR2) {
            return Err(job.fail("cannot signal ckrun"));
        }
        let image = loop {
            check_interrupt()?;
            if Instant::now() > deadline {
                return Err(job.fail(&format!("timed out waiting for checkpoint {k}")));
            }
            let new = image_files(&imgdir)?.into_iter().find(|(n, _)| n.ends_with(".ckimg") && !known.contains(n));
            if let Some((name, len)) = new {
                break (Instant::now(), name, len);
            }
            thread::sleep(POLL);
        };
        durable.push((image.0 - t0).as_secs_f64());
        last_durable = Some(image.0);
        images.push((image.1, image.2));
        let needle = format!("checkpoint {k}:");
        let report = job.err_line(&needle, TIMEOUT).ok_or_else(|| job.fail(&format!("no `{needle}` line")))?;
        pauses_ms.push(number_after(&report.text, "paused ").ok_or_else(|| format!("no pause in {:?}", report.text))?);
        ckrun_total.push(number_after(&report.text, "total ").map_or(f64::NAN, |ms| ms / 1000.0));
    }
    // The uninterrupted run's end: what the restored one must print.
    let mut tail = Vec::new();
    loop {
        let l = job.next_out("the end of the run", Instant::now() + TIMEOUT)?;
        lines.push(l.text.clone());
        tail.push(l.text.clone());
        if l.text.starts_with("done ") {
            break;
        }
    }
    let status = job.wait_exit(TIMEOUT)?;
    if !status.success() {
        return Err(job.fail(&format!("the uninterrupted run exited with {status}")));
    }
    wait_gone(program, Duration::from_secs(10))?;
    drop(job);
    let total_bytes = image_files(&imgdir)?.iter().map(|(_, l)| l).sum();
    let tenth = imgdir.join(&images.last().ok_or("no image")?.0);

    if full {
        // Only the tenth is restarted: the others need not take the disk.
        for (name, _) in &images[..images.len() - 1] {
            let _ = fs::remove_file(imgdir.join(name));
        }
    }
    Ok(Chain {
        images: images.iter().map(|(_, l)| *l).collect(),
        total_bytes,
        durable,
        pauses_ms,
        ckrun_total,
        overlapped,
        restart: Vec::new(),
        restart_cached: Vec::new(),
        ckrun_restore_ms: Vec::new(),
        same_output: false,
        label: format!("{mode}, {size} MiB"),
        imgdir,
        tenth,
        program,
        tail,
    })
}

/// Restarts the tenth image of `c` once: with its files dropped from the
/// page cache, or read into it; with `to_the_end` the restored run goes to
/// its end and its output is compared.
fn restart_chain(t: &Tools, c: &mut Chain, cached: bool, to_the_end: bool) -> Res<()> {
    if cached {
        read_into_cache(&c.imgdir)?;
    } else {
        drop_from_cache(&c.imgdir)?;
    }
    let t1 = Instant::now();
    let mut cmd = Command::new(&t.ckrun);
    cmd.arg("--restart").arg(&c.tenth).current_dir(&t.tmp);
    let mut rjob = Job::spawn(format!("ckrun --restart ({})", c.label), &mut cmd)?;
    rjob.program = Some(c.program);
    let line = rjob.err_line("ckrun: restarted ", TIMEOUT).ok_or_else(|| rjob.fail("no `restarted` line"))?;
    let secs = (line.at - t1).as_secs_f64();
    if let Some(ms) = number_after(&line.text, " in ").filter(|_| !cached) {
        c.ckrun_restore_ms.push(ms);
    }
    if cached { &mut c.restart_cached } else { &mut c.restart }.push(secs);
    if to_the_end {
        let mut got = Vec::new();
        let deadline = Instant::now() + TIMEOUT;
        while got.len() < c.tail.len() {
            got.push(rjob.next_out("the restored run's end", deadline)?.text);
        }
        let status = rjob.wait_exit(TIMEOUT)?;
        c.same_output = got == c.tail && status.success();
    } else {
        signal(c.program, libc::SIGKILL);
        rjob.wait_exit(Duration::from_secs(30))?;
    }
    wait_gone(c.program, Duration::from_secs(10))
}

/// Checkpoints 2 to 10: the ones an incremental image is written for.
fn later(v: &[f64]) -> Vec<f64> {
    v.iter().skip(1).copied().collect()
}

/// The smallest of `v`, NaN if it is empty (as [`median`]).
fn fastest(v: &[f64]) -> f64 {
    v.iter().copied().reduce(f64::min).unwrap_or(f64::NAN)
}

fn min_max(v: &[f64]) -> (f64, f64) {
    (v.iter().copied().fold(f64::INFINITY, f64::min), v.iter().copied().fold(0.0, f64::max))
}

impl Report {
    fn print_chain(&self, o: &mut String) {
        let Some(Chains { size, incr, snap, dedup, same, full }) = &self.chain else { return };
        o.push_str(&format!(
            "\n## Incremental images\n\n\
             `rewrite {size} {CHAIN_PERMILLE} 11 {CHAIN_PACE_MS}` ({size} MiB touched, 2x compressible, \
             {}% of its pages rewritten, scattered, each tick), one checkpoint after each of ticks 1 to \
             {CHAIN_CKPTS}; the program runs on to its end (the uninterrupted run), then the {CHAIN_CKPTS}th \
             image is restarted: with every file of the image directory dropped from the page cache, and \
             read into it, {CHAIN_RESTARTS} times each, alternating with the `--full` chain's; the last run \
             goes to the end and its output is compared. Once with incremental images (the default: dirty \
             tracking, and content dedup where the tracker cannot vouch for a page; copy-out of the written \
             pages, no snapshot, where little was written), once the same with a snapshot at every checkpoint \
             (`CKRUN_NO_COPY_OUT=1`; not restarted), once with content dedup \
             alone (`CKRUN_NO_DIRTY_TRACKING=1`, as where userfaultfd is not allowed; not restarted), once \
             incremental with `rewrite` rewriting the same pages each tick (`same`: a hot set, restarted \
             like the first), once with `--full`, in the same run. Checkpoint times: median of checkpoints 2 to {CHAIN_CKPTS} \
             (min–max); restart: spawning ckrun → its `restarted` line, median (and fastest: on a VM that \
             hands freed memory back to its host, a restart's fresh pages may each fault on the host first, \
             and the fastest run is the one that paid least for it).\n\n\
             | images | {CHAIN_CKPTS} images MiB | first MiB | later MiB (min–max) | ckpt durable s | ckrun total s \
             | pause ms | restart s, from disk (fastest) | restart s, cached (fastest) | ckrun restore ms | restored output |\n\
             |---|---|---|---|---|---|---|---|---|---|---|\n",
            CHAIN_PERMILLE.parse::<f64>().unwrap_or(0.0) / 10.0
        ));
        for (what, r) in [
            ("incremental", incr),
            ("incremental, snapshots (`CKRUN_NO_COPY_OUT=1`)", snap),
            ("content dedup", dedup),
            ("incremental, same pages each tick", same),
            ("--full", full),
        ] {
            match r {
                Ok(c) => {
                    let mib: Vec<f64> = c.images.iter().map(|b| *b as f64 / MIB as f64).collect();
                    let (lo, hi) = min_max(&mib[1..]);
                    let (dlo, dhi) = min_max(&later(&c.durable));
                    let (plo, phi) = min_max(&later(&c.pauses_ms));
                    o.push_str(&format!(
                        "| {what} | {:.1} | {:.1} | {lo:.1}–{hi:.1} | {:.3} ({dlo:.3}–{dhi:.3}) | {:.3} | {:.1} ({plo:.1}–{phi:.1}) \
                         | {:.3} ({:.3}) | {:.3} ({:.3}) | {} | {}{} |\n",
                        c.total_bytes as f64 / MIB as f64,
                        mib[0],
                        median(later(&c.durable)),
                        median(later(&c.ckrun_total)),
                        median(later(&c.pauses_ms)),
                        median(c.restart.clone()),
                        fastest(&c.restart),
                        median(c.restart_cached.clone()),
                        fastest(&c.restart_cached),
                        opt(Some(median(c.ckrun_restore_ms.clone())), 1),
                        match (c.same_output, c.restart_cached.is_empty()) {
                            (_, true) => "not restarted",
                            (true, false) => "same as uninterrupted",
                            (false, false) => "DIFFERS",
                        },
                        match c.overlapped {
                            0 => String::new(),
                            n => format!(" ({n} checkpoint(s) overlapped the next tick)"),
                        }
                    ));
                }
                Err(e) => o.push_str(&format!("| {what} | FAILED: {} |\n", one_line(e))),
            }
        }
        let (Ok(i), Ok(f)) = (incr, full) else { return };
        let same = same.as_ref().ok();
        let one_full = median(f.images.iter().map(|b| *b as f64).collect());
        let mut rows: Vec<(String, String, String, f64, &str, bool)> = {
            let bytes = i.total_bytes as f64 / one_full;
            let (di, df) = (median(later(&i.durable)), median(later(&f.durable)));
            let dd = dedup.as_ref().map_or(f64::NAN, |d| median(later(&d.durable)));
            let (pi, pf) = (median(later(&i.pauses_ms)), median(later(&f.pauses_ms)));
            let ds = snap.as_ref().map_or(f64::NAN, |s| median(later(&s.durable)));
            let ps = snap.as_ref().map_or(f64::NAN, |s| median(later(&s.pauses_ms)));
            let (ri, rf) = (median(i.restart.clone()), median(f.restart.clone()));
            let (ci, cf) = (median(i.restart_cached.clone()), median(f.restart_cached.clone()));
            [
                (
                    format!("bytes written for {CHAIN_CKPTS} checkpoints / one full image"),
                    format!("{:.1} MiB", i.total_bytes as f64 / MIB as f64),
                    format!("{:.1} MiB", one_full / MIB as f64),
                    bytes,
                    "≤ 1.6×",
                    bytes <= 1.6,
                ),
                (
                    "checkpoint, request to durable image (dirty tracking)".into(),
                    format!("{di:.3} s"),
                    format!("{df:.3} s"),
                    di / df,
                    "≤ 0.1 s",
                    di <= 0.1,
                ),
                (
                    "checkpoint, request to durable image (content dedup alone)".into(),
                    format!("{dd:.3} s"),
                    format!("{df:.3} s"),
                    dd / df,
                    "≤ 0.45 s",
                    dd <= 0.45,
                ),
                ("pause".into(), format!("{pi:.1} ms"), format!("{pf:.1} ms"), pi / pf, "≤ 1× full", pi <= pf),
                (
                    "the same two with a snapshot at every checkpoint (`CKRUN_NO_COPY_OUT=1`): durable".into(),
                    format!("{ds:.3} s"),
                    format!("{df:.3} s"),
                    ds / df,
                    "≤ 0.1 s",
                    ds <= 0.1,
                ),
                ("… and pause".into(), format!("{ps:.1} ms"), format!("{pf:.1} ms"), ps / pf, "≤ 1× full", ps <= pf),
                (
                    format!("restart from the {CHAIN_CKPTS}th image, from disk"),
                    format!("{ri:.3} s"),
                    format!("{rf:.3} s"),
                    ri / rf,
                    "≤ 1.1×",
                    ri <= 1.1 * rf && i.same_output,
                ),
                (
                    format!("restart from the {CHAIN_CKPTS}th image, in page cache"),
                    format!("{ci:.3} s"),
                    format!("{cf:.3} s"),
                    ci / cf,
                    "≤ 1.1×",
                    ci <= 1.1 * cf && i.same_output,
                ),
            ]
            .into()
        };
        // The restart's cost follows how many blocks still hold a current
        // page: with a hot set, only the first image's and the newest's.
        if let Some(h) = same {
            let (rf, cf) = (median(f.restart.clone()), median(f.restart_cached.clone()));
            for (what, t, base) in [("from disk", &h.restart, rf), ("in page cache", &h.restart_cached, cf)] {
                let t = median(t.clone());
                rows.push((
                    format!("the same, same pages rewritten each tick, {what}"),
                    format!("{t:.3} s"),
                    format!("{base:.3} s"),
                    t / base,
                    "≤ 1.1×",
                    t <= 1.1 * base && h.same_output,
                ));
            }
        }
        o.push_str(
            "\n| figure (issue 13) | incremental | full | ratio | target | result |\n|---|---|---|---|---|---|\n",
        );
        for (what, a, b, ratio, goal, pass) in rows {
            o.push_str(&format!("| {what} | {a} | {b} | {ratio:.2}× | {goal} | {} |\n", mark(Some(pass))));
        }
    }
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

struct Report {
    sizes: Vec<(u64, Res<Ckpt>, Res<Cp>)>,
    /// The largest size with its memory in transparent huge pages.
    huge: (u64, Res<Ckpt>),
    /// Pauses (ms) by number of threads.
    threads: Vec<(usize, Res<Vec<f64>>)>,
    /// (MiB, seconds from --stop-signal to exit 85).
    stop: (u64, Res<f64>),
    /// (total ms, pause ms) of checkpoints of a sparse 2 TiB reservation.
    sparse: Res<Vec<(f64, f64)>>,
    getppid: Res<Overhead>,
    open: Res<Overhead>,
    poll: Res<Overhead>,
    startup: Res<Overhead>,
    /// (MiB, incremental, content dedup alone, --full) of the incremental
    /// images table.
    chain: Option<Chains>,
}

/// One target of issue 6 and how the run did.
struct Target {
    what: String,
    goal: &'static str,
    measured: String,
    pass: Option<bool>,
}

fn mark(pass: Option<bool>) -> &'static str {
    match pass {
        Some(true) => "PASS",
        Some(false) => "MISS",
        None => "n/a",
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |v| format!("{v:.digits$}"))
}

impl Report {
    fn failures(&self) -> usize {
        let sizes = self.sizes.iter().map(|(_, c, p)| c.is_err() as usize + p.is_err() as usize).sum::<usize>();
        let threads = self.threads.iter().filter(|(_, r)| r.is_err()).count();
        sizes
            + threads
            + self.sparse.is_err() as usize
            + self.stop.1.is_err() as usize
            + [&self.getppid, &self.open, &self.poll, &self.startup].iter().filter(|r| r.is_err()).count()
            + self.chain.as_ref().map_or(0, Chains::failures)
    }

    /// A report with nothing measured but what is filled in after it.
    fn empty() -> Report {
        let none = || Err::<Overhead, _>("not measured".to_string());
        Report {
            sizes: Vec::new(),
            huge: (0, Err("not measured".into())),
            threads: Vec::new(),
            stop: (0, Err("not measured".into())),
            sparse: Ok(Vec::new()),
            getppid: none(),
            open: none(),
            poll: none(),
            startup: none(),
            chain: None,
        }
    }

    fn print(&self) {
        let mut o = String::new();
        self.print_checkpoints(&mut o);
        self.print_threads(&mut o);
        self.print_stop(&mut o);
        self.print_sparse(&mut o);
        self.print_overheads(&mut o);
        self.print_chain(&mut o);
        self.print_targets(&mut o);
        print!("{o}");
        let _ = std::io::stdout().flush();
    }

    fn print_checkpoints(&self, o: &mut String) {
        o.push_str(
            "\n## Checkpoint and restart\n\n\
             A checkpoint (SIGUSR2 to ckrun) of `memhog SIZE`, which keeps running; then SIGKILL and \
             `ckrun --restart`, once with the image on disk only and once with it in the page cache. Times \
             from SIGUSR2 (restart: from spawning ckrun to the first output). Each row is the run with \
             the median durable time of several (`--runs`). The huge-pages row is the largest size with \
             its memory in transparent huge pages, where the fork that makes the snapshot copies one \
             page-table entry per 2 MiB instead of 512.\n\n\
             | size | pause ms | tick gap ms (normal) | ckpt all bytes written s | ckpt durable s | ckrun total s \
             | image MiB | image/memory | ckrun memory | restart s (from disk) | restart s (cached) \
             | ckrun restore ms | restored output |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for (size, c, _) in &self.sizes {
            match c {
                Ok(c) => o.push_str(&format!(
                    "| {size} MiB | {:.1} | {:.0} ({:.0}) | {} | {:.3} | {:.3} | {:.1} | {:.3} | {} | {:.3} | {:.3} | {} | {} |\n",
                    c.pause_ms,
                    c.max_gap_ms,
                    c.normal_gap_ms,
                    opt(c.in_cache, 3),
                    c.durable,
                    c.ckrun_total,
                    c.image_bytes as f64 / MIB as f64,
                    c.image_bytes as f64 / (size * MIB) as f64,
                    c.ckrun_memory,
                    c.restart,
                    c.restart_cached,
                    opt(c.ckrun_restore_ms, 1),
                    match c.same_output {
                        Some(true) => format!("same as original (tick {})", c.resumed_tick),
                        Some(false) => format!("DIFFERS at tick {}", c.resumed_tick),
                        None => format!("tick {} (not compared)", c.resumed_tick),
                    }
                )),
                Err(e) => o.push_str(&format!("| {size} MiB | FAILED: {} |\n", one_line(e))),
            }
        }
        let (size, huge) = &self.huge;
        match huge {
            Ok(c) => o.push_str(&format!(
                "| {size} MiB, huge pages | {:.1} | {:.0} ({:.0}) | {} | {:.3} | {:.3} | {:.1} | {:.3} | {} | {:.3} | {:.3} | {} | {} |\n",
                c.pause_ms,
                c.max_gap_ms,
                c.normal_gap_ms,
                opt(c.in_cache, 3),
                c.durable,
                c.ckrun_total,
                c.image_bytes as f64 / MIB as f64,
                c.image_bytes as f64 / (size * MIB) as f64,
                c.ckrun_memory,
                c.restart,
                c.restart_cached,
                opt(c.ckrun_restore_ms, 1),
                if c.same_output == Some(true) { "same as original" } else { "see above" }
            )),
            Err(e) => o.push_str(&format!("| {size} MiB, huge pages | FAILED: {} |\n", one_line(e))),
        }

        o.push_str(
            "\n## Where the checkpoint time goes (seen from outside, ±1 ms)\n\n\
             | size | SIGUSR2 → image file created s | → all bytes written s | → fsync'd and renamed s |\n\
             |---|---|---|---|\n",
        );
        for (size, c, _) in &self.sizes {
            match c {
                Ok(c) => o.push_str(&format!(
                    "| {size} MiB | {} | {} | {:.3} |\n",
                    opt(c.created, 3),
                    opt(c.in_cache, 3),
                    c.durable
                )),
                Err(_) => o.push_str(&format!("| {size} MiB | failed (see above) |\n")),
            }
        }

        o.push_str(&format!(
            "\n## Baseline: cp of a file as large as the memory (median of {CP_RUNS})\n\n\
             | size | cp s (page cache) | cp + fsync s (durable) | ckpt written / cp | ckpt durable / cp + fsync |\n\
             |---|---|---|---|---|\n"
        ));
        for (size, c, p) in &self.sizes {
            match p {
                Ok(p) => {
                    let (cache, durable) = match c {
                        Ok(c) => (c.in_cache.map(|s| s / p.cache), Some(c.durable / p.durable)),
                        Err(_) => (None, None),
                    };
                    o.push_str(&format!(
                        "| {size} MiB | {:.3} | {:.3} | {} | {} |\n",
                        p.cache,
                        p.durable,
                        opt(cache, 2),
                        opt(durable, 2)
                    ));
                }
                Err(e) => o.push_str(&format!("| {size} MiB | FAILED: {} |\n", one_line(e))),
            }
        }
    }

    fn print_threads(&self, o: &mut String) {
        o.push_str(&format!(
            "\n## Pause by number of threads\n\n\
             {THREAD_CKPTS} checkpoints of `manythreads N` (half the threads wait on a condition variable, half \
             compute; little memory): the program's pause grows with its threads, not with its memory.\n\n\
             | threads | pause ms, median | min | max |\n|---|---|---|---|\n"
        ));
        for (n, r) in &self.threads {
            match r {
                Ok(p) => {
                    let min = p.iter().copied().fold(f64::INFINITY, f64::min);
                    let max = p.iter().copied().fold(0.0, f64::max);
                    o.push_str(&format!("| {n} | {:.1} | {min:.1} | {max:.1} |\n", median(p.clone())));
                }
                Err(e) => o.push_str(&format!("| {n} | FAILED: {} |\n", one_line(e))),
            }
        }
    }

    fn print_stop(&self, o: &mut String) {
        let (size, r) = &self.stop;
        o.push_str(&format!(
            "\n## Checkpoint-and-stop\n\n\
             `ckrun --stop-signal USR1 memhog {size}`, then SIGUSR1 to ckrun (what a Slurm script passes \
             on from `--signal=B:USR1@T`): time until ckrun exits 85, the image durable and the program \
             gone. A batch script's warning time must exceed it.\n\n| memory | USR1 to exit 85 |\n|---|---|\n"
        ));
        match r {
            Ok(s) => o.push_str(&format!("| {size} MiB | {s:.2} s |\n")),
            Err(e) => o.push_str(&format!("| {size} MiB | FAILED: {} |\n", one_line(e))),
        }
    }

    fn print_sparse(&self, o: &mut String) {
        o.push_str(&format!(
            "\n## Sparse memory\n\n\
             {THREAD_CKPTS} checkpoints of `memflags sparse` (a 2 TiB MAP_NORESERVE reservation, 5 pages \
             touched): the checkpoint costs the memory used, not the memory reserved.\n\n\
             | reservation | checkpoint ms, median | min | max | pause ms, median |\n|---|---|---|---|---|\n"
        ));
        match &self.sparse {
            Ok(v) => {
                let totals: Vec<f64> = v.iter().map(|p| p.0).collect();
                let min = totals.iter().copied().fold(f64::INFINITY, f64::min);
                let max = totals.iter().copied().fold(0.0, f64::max);
                let pause = median(v.iter().map(|p| p.1).collect());
                o.push_str(&format!("| 2 TiB, 5 pages | {:.1} | {min:.1} | {max:.1} | {pause:.1} |\n", median(totals)));
            }
            Err(e) => o.push_str(&format!("| 2 TiB, 5 pages | FAILED: {} |\n", one_line(e))),
        }
    }

    fn print_overheads(&self, o: &mut String) {
        o.push_str(
            "\n## Interposition overhead (LD_PRELOAD agent)\n\n\
             Runs alternate bare / under ckrun. Times in ms: median (min–max). The overhead of the fastest runs \
             is less sensitive to other load on the machine.\n\n\
             | test | runs | bare ms | under ckrun ms | overhead (medians) | overhead (fastest runs) |\n\
             |---|---|---|---|---|---|\n",
        );
        let rows: [(&str, &Res<Overhead>); 4] = [
            ("2,000,000 x getppid + write(/dev/null, 1 byte): loop time", &self.getppid),
            ("200,000 x open + close of /etc/hostname: loop time", &self.open),
            ("1,000,000 x poll(/dev/null, 1 s timeout), ready at once: loop time", &self.poll),
            ("`ckrun true` vs `true`: spawn → exit", &self.startup),
        ];
        for (i, (what, r)) in rows.iter().enumerate() {
            match r {
                Ok(r) => {
                    let (diff, diff_min) = if i == rows.len() - 1 {
                        let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
                        (
                            format!("{:+.2} ms ({:+.0}%)", r.ckrun_ms() - r.bare_ms(), r.percent()),
                            format!("{:+.2} ms", min(&r.ckrun) - min(&r.bare)),
                        )
                    } else {
                        (format!("{:+.2}%", r.percent()), format!("{:+.2}%", r.percent_of_min()))
                    };
                    o.push_str(&format!(
                        "| {what} | {} | {} | {} | {diff} | {diff_min} |\n",
                        r.bare.len(),
                        Overhead::spread(&r.bare),
                        Overhead::spread(&r.ckrun)
                    ));
                }
                Err(e) => o.push_str(&format!("| {what} | FAILED: {} |\n", one_line(e))),
            }
        }
    }

    fn print_targets(&self, o: &mut String) {
        // The checkpoint targets are for 1 GiB; without it, the largest size
        // measured stands in (and says so).
        let pick = self
            .sizes
            .iter()
            .filter(|(_, c, _)| c.is_ok())
            .max_by_key(|(s, _, _)| (*s == 1024, *s))
            .and_then(|(s, c, _)| c.as_ref().ok().map(|c| (*s, c)));
        let at = match pick {
            Some((1024, _)) => "1 GiB".to_string(),
            Some((s, _)) => format!("{s} MiB (target is for 1 GiB)"),
            None => "1 GiB".to_string(),
        };
        let ck = pick.map(|(_, c)| c);
        let size = pick.map_or(1024, |(s, _)| s);
        let mut t = Vec::new();
        let mut add = |what: String, goal, value: Option<(String, bool)>| {
            let (measured, pass) = value.map_or(("not measured".into(), None), |(m, p)| (m, Some(p)));
            t.push(Target { what, goal, measured, pass });
        };
        add(format!("pause, {at}"), "< 20 ms", ck.map(|c| (format!("{:.1} ms", c.pause_ms), c.pause_ms < 20.0)));
        // With O_DIRECT the image is on disk once its bytes are written;
        // the durable time bounds the moment they all are when the
        // sampling from outside missed it.
        add(
            format!("checkpoint, all image bytes written, {at}"),
            "< 0.7 s",
            ck.map(|c| c.in_cache.unwrap_or(c.durable)).map(|s| (format!("{s:.3} s"), s < 0.7)),
        );
        add(
            format!("checkpoint, durable image (incl. fsync), {at}"),
            "< 1.2 s",
            ck.map(|c| (format!("{:.3} s", c.durable), c.durable < 1.2)),
        );
        add(
            format!("image size / touched memory, {at}"),
            "≤ 0.55",
            ck.map(|c| {
                let r = c.image_bytes as f64 / (size * MIB) as f64;
                (format!("{r:.3}"), r <= 0.55)
            }),
        );
        add(
            format!("restart to next output, image on disk, {at}"),
            "< 0.4 s",
            ck.map(|c| (format!("{:.3} s", c.restart), c.restart < 0.4 && c.same_output != Some(false))),
        );
        add(
            format!("restart to next output, image in page cache, {at}"),
            "< 0.4 s",
            ck.map(|c| (format!("{:.3} s", c.restart_cached), c.restart_cached < 0.4 && c.same_output != Some(false))),
        );
        let pct = |r: &Res<Overhead>, limit: f64| {
            r.as_ref().ok().map(|r| (format!("{:+.2}%", r.percent()), r.percent() < limit))
        };
        add("getppid + write overhead".into(), "< 2%", pct(&self.getppid, 2.0));
        add("open + close overhead".into(), "< 5%", pct(&self.open, 5.0));
        add(
            "`ckrun true` start-up over `true`".into(),
            "< 5 ms",
            self.startup.as_ref().ok().map(|r| {
                let d = r.ckrun_ms() - r.bare_ms();
                (format!("+{d:.2} ms"), d < 5.0)
            }),
        );

        o.push_str("\n## Targets (issue 6)\n\n| target | goal | measured | result |\n|---|---|---|---|\n");
        for x in &t {
            o.push_str(&format!("| {} | {} | {} | {} |\n", x.what, x.goal, x.measured, mark(x.pass)));
        }
        let passed = t.iter().filter(|x| x.pass == Some(true)).count();
        o.push_str(&format!("\n{passed} of {} targets met. Load average at the end: {}.\n", t.len(), load_average()));
    }
}

/// An error on one table row.
fn one_line(s: &str) -> String {
    s.replace('\n', " ").replace('|', "/")
}
