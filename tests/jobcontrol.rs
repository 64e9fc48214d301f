//! Issue 10, item 6: terminal job control. A program that took its
//! terminal the way an interactive shell does (its own process group, made
//! the terminal's foreground group with tcsetpgrp) must find itself in the
//! foreground of the new terminal after a restart; else it reads in the
//! background, and a restarted `bash -i` prints `exit` and quits.
//!
//! Every ckrun here runs as a user would start it from a terminal: the
//! leader of a session whose controlling terminal is a fresh
//! pseudo-terminal (setsid + TIOCSCTTY), stdin and stdout on it, stderr in
//! a file. The test plays the terminal emulator: it reads the master and
//! types into it.
//!
//! Needs the product built: `cargo build --workspace` first.

use std::ffi::{CStr, OsStr, OsString};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ckrun_suite::{
    assert_same_output, ckrun_bin, complete_lines, exit_code, list_images, ns_pid, run_ckrun, sys, tick_of, ImageName,
    Program, TestDir, POLL, TIMEOUT,
};

/// Ticks to let pass after a checkpoint before the SIGKILL.
const RUN_ON: u64 = 5;

/// A pseudo-terminal: the master, read by a thread into `output`, and
/// the slave's path.
struct Pty {
    master: Arc<OwnedFd>,
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
            (master, PathBuf::from(CStr::from_ptr(buf.as_ptr()).to_str().expect("pty name")))
        };
        let master = Arc::new(master);
        let output = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (master, output, stop) = (master.clone(), output.clone(), stop.clone());
            thread::spawn(move || read_master(&master, &output, &stop))
        };
        Pty { master, slave_path, output, stop, reader: Some(reader) }
    }

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

    /// Types `text` on the terminal.
    fn type_in(&self, text: &str) {
        let mut left = text.as_bytes();
        while !left.is_empty() {
            // SAFETY: writes from a live buffer of the length given.
            let n = unsafe { libc::write(self.master.as_raw_fd(), left.as_ptr().cast(), left.len()) };
            assert!(n > 0, "write to the pty master: {}", io::Error::last_os_error());
            left = &left[n as usize..];
        }
    }

    /// Waits (up to [`TIMEOUT`]) until no one has the slave open any more
    /// and returns everything read.
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

fn read_master(master: &OwnedFd, output: &Mutex<Vec<u8>>, stop: &AtomicBool) {
    let fd = master.as_raw_fd();
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, 50) } <= 0 {
            continue;
        }
        // SAFETY: reads into a buffer of the length given.
        let got = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if got > 0 {
            output.lock().unwrap().extend_from_slice(&buf[..got as usize]);
        } else if got == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EIO) {
            return;
        }
    }
}

/// Runs `cmd` as the leader of a new session whose controlling terminal is
/// `pty` (stdin, stdout), stderr to `stderr` (None: the terminal too).
fn spawn_on_terminal(mut cmd: Command, pty: &Pty, stderr: Option<&Path>) -> Child {
    let slave = pty.slave();
    // SAFETY: the hook runs in the child before exec and only makes
    // async-signal-safe calls (setsid, ioctl).
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let err = match stderr {
        Some(path) => fs::File::create(path).unwrap(),
        None => slave.try_clone().unwrap(),
    };
    cmd.stdin(slave.try_clone().unwrap())
        .stdout(slave)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"))
}

/// Start time of a process, to tell it from a later one with its pid.
fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(19)?.parse().ok()
}

fn descendants(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let Ok(tasks) = fs::read_dir(format!("/proc/{p}/task")) else { continue };
        for t in tasks.flatten() {
            if let Ok(list) = fs::read_to_string(t.path().join("children")) {
                for k in list.split_whitespace().filter_map(|x| x.parse::<i32>().ok()) {
                    out.push(k);
                    todo.push(k);
                }
            }
        }
    }
    out
}

/// ckrun on a terminal of its own.
struct TermJob {
    child: Option<Child>,
    ckrun_pid: i32,
    /// The program's pid in its own namespace (known for a restart).
    expected_pid: Option<i32>,
    program: Option<(i32, u64)>,
    pty: Option<Pty>,
    /// ckrun's stderr, unless it is the terminal.
    stderr_path: Option<PathBuf>,
    imgdir: PathBuf,
}

impl TermJob {
    /// `name`: of ckrun's stderr file; None: stderr is the terminal too.
    fn spawn(args: &[OsString], dir: &TestDir, expected_pid: Option<i32>, name: Option<&str>) -> TermJob {
        sys::become_subreaper().expect("PR_SET_CHILD_SUBREAPER");
        let pty = Pty::open();
        let stderr_path = name.map(|n| dir.work.join(format!("{n}.stderr")));
        let mut cmd = Command::new(ckrun_bin());
        cmd.args(args).current_dir(&dir.work).env("TERM", "dumb").env("PS1", "$ ");
        let child = spawn_on_terminal(cmd, &pty, stderr_path.as_deref());
        TermJob {
            ckrun_pid: child.id() as i32,
            child: Some(child),
            expected_pid,
            program: None,
            pty: Some(pty),
            stderr_path,
            imgdir: dir.img.clone(),
        }
    }

    fn launch(dir: &TestDir, program: &[&OsStr], name: Option<&str>) -> TermJob {
        let mut args: Vec<OsString> = vec!["--dir".into(), dir.img.clone().into()];
        args.extend(program.iter().map(|a| a.to_os_string()));
        TermJob::spawn(&args, dir, None, name)
    }

    fn restart(image: &Path, dir: &TestDir, name: Option<&str>) -> TermJob {
        let args: Vec<OsString> = vec!["--restart".into(), image.into(), "--dir".into(), dir.img.clone().into()];
        TermJob::spawn(&args, dir, ImageName::parse(image).map(|i| i.pid), name)
    }

    fn pty(&self) -> &Pty {
        self.pty.as_ref().expect("terminal")
    }

    fn output(&self) -> Vec<u8> {
        self.pty.as_ref().map(Pty::output).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        match &self.stderr_path {
            Some(p) => fs::read_to_string(p).unwrap_or_default(),
            None => String::from_utf8_lossy(&self.output()).into_owned(),
        }
    }

    fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().expect("try_wait").is_none())
    }

    fn diagnostics(&self) -> String {
        let out = String::from_utf8_lossy(&self.output()).into_owned();
        let tail: Vec<&str> = out.lines().rev().take(12).collect();
        format!(
            "ckrun pid {}, program {:?}, images {:?}\n--- ckrun stderr ---\n{}\n--- terminal (last lines, newest \
             first) ---\n{}",
            self.ckrun_pid,
            self.program,
            list_images(&self.imgdir),
            self.stderr(),
            tail.join("\n")
        )
    }

    /// Waits until the terminal shows `what` (after byte `from`).
    fn wait_for_text(&mut self, what: &str, from: usize) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let exited = !self.is_running();
            let out = self.output();
            if String::from_utf8_lossy(out.get(from..).unwrap_or_default()).contains(what) {
                return;
            }
            if exited || Instant::now() >= deadline {
                let why = if exited { "ckrun exited" } else { "timeout" };
                panic!("{what:?} never appeared on the terminal ({why})\n{}", self.diagnostics());
            }
            thread::sleep(POLL);
        }
    }

    fn wait_for_tick(&mut self, n: u64) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let exited = !self.is_running();
            if complete_lines(&self.output()).any(|l| tick_of(l).is_some_and(|t| t >= n)) {
                return;
            }
            if exited || Instant::now() >= deadline {
                let why = if exited { "ckrun exited" } else { "timeout" };
                panic!("no tick {n} on the terminal ({why})\n{}", self.diagnostics());
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
            let kids = descendants(self.ckrun_pid);
            let pid = match self.expected_pid {
                Some(want) => kids.into_iter().find(|&k| ns_pid(k) == Some(want)),
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
                if self.stderr().lines().any(|l| l.contains("ckrun: checkpoint") && l.contains(&name)) {
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

    /// SIGKILL to the program and ckrun's session; returns once all are
    /// gone and reaped (the processes of the tree in groups of their own
    /// too: their zombies come to this process, the subreaper), with the
    /// terminal's output.
    fn kill9(&mut self) -> Vec<u8> {
        if self.is_running() {
            self.program_pid();
        }
        let tree: Vec<(i32, u64)> =
            descendants(self.ckrun_pid).into_iter().filter_map(|p| Some((p, start_time(p)?))).collect();
        for &(p, t) in &tree {
            if start_time(p) == Some(t) {
                let _ = sys::send_signal(p, sys::SIGKILL);
            }
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
        for (p, t) in tree {
            while start_time(p) == Some(t) {
                sys::try_reap(p);
                assert!(Instant::now() < deadline, "process {p} of the tree still exists after SIGKILL");
                thread::sleep(POLL);
            }
        }
        self.pty.take().map(Pty::finish).unwrap_or_default()
    }

    /// Waits for ckrun to exit: its exit code and the terminal's output.
    fn wait(&mut self) -> (i32, Vec<u8>) {
        let mut child = self.child.take().expect("running ckrun");
        let deadline = Instant::now() + TIMEOUT;
        let status = loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("ckrun did not exit within {TIMEOUT:?}\n{}", self.diagnostics());
            }
            thread::sleep(POLL);
        };
        (exit_code(status), self.pty.take().map(Pty::finish).unwrap_or_default())
    }
}

impl Drop for TermJob {
    fn drop(&mut self) {
        if self.program_alive() {
            let _ = sys::send_signal(self.program.unwrap().0, sys::SIGKILL);
        }
        if let Some(mut child) = self.child.take() {
            let _ = sys::send_signal(-self.ckrun_pid, sys::SIGKILL);
            let _ = child.kill();
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.program_alive() && Instant::now() < deadline {
            sys::try_reap(self.program.unwrap().0);
            thread::sleep(POLL);
        }
    }
}

/// jobctl run bare as the leader of a session on a terminal: its output.
fn jobctl_bare(dir: &TestDir) -> Vec<u8> {
    let pty = Pty::open();
    let err = dir.bare.join("jobctl.stderr");
    let mut child = spawn_on_terminal(Command::new(Program::c("jobctl").exe()), &pty, Some(&err));
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "bare jobctl did not finish");
        thread::sleep(POLL);
    };
    let out = pty.finish();
    let text = String::from_utf8_lossy(&out);
    assert_eq!(exit_code(status), 0, "test bug: bare jobctl failed: {text}");
    assert!(text.ends_with("tick 200 foreground\r\ndone jobctl\r\n"), "test bug: bare jobctl output:\n{text}");
    out
}

fn first_tick(out: &[u8]) -> Option<u64> {
    complete_lines(out).find_map(tick_of)
}

/// The lines of `out` whose tick is below `limit`, with the terminal's
/// line ends.
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

/// A program that made its own group the terminal's foreground group
/// checks every tick that it still is; checkpointed and restarted twice,
/// each time on a new terminal (ckrun's): first while the original still
/// runs (so in a new PID namespace, where the ckrun inside hands over the
/// terminal the ckrun outside runs in the foreground of), then after a
/// kill, here. The terminals together must show what a bare run shows,
/// with no FAIL line.
#[test]
fn a_program_in_the_foreground_is_in_the_foreground_after_restarts() {
    let dir = TestDir::new("jobctl-foreground");
    let reference = jobctl_bare(&dir);
    let exe = Program::c("jobctl").exe().to_path_buf();

    let mut original = TermJob::launch(&dir, &[exe.as_os_str()], Some("launch"));
    original.wait_for_tick(30);
    let img1 = original.checkpoint();
    let pid = original.program_pid();
    let shown = run_ckrun(&[OsStr::new("--inspect"), img1.as_os_str()], &dir.root, TIMEOUT);
    assert!(shown.stdout.contains(&format!("terminal    process group {pid} in the foreground")), "{shown:#?}");

    let mut job = TermJob::restart(&img1, &dir, Some("restart1"));
    let deadline = Instant::now() + TIMEOUT;
    while !job.stderr().contains("ckrun: restarted") {
        assert!(job.is_running() && Instant::now() < deadline, "no restart\n{}", job.diagnostics());
        thread::sleep(POLL);
    }
    assert!(job.stderr().contains("in use here: restarting in a new PID namespace"), "{}", job.diagnostics());
    let out1 = original.kill9();
    let killed_at = complete_lines(&out1).filter_map(tick_of).max().unwrap();
    job.wait_for_tick(killed_at + 10);
    let img2 = job.checkpoint();
    let at = job.last_tick();
    job.wait_for_tick(at + RUN_ON);
    let out2 = job.kill9();

    let mut job = TermJob::restart(&img2, &dir, Some("restart2"));
    let (code, out3) = job.wait();
    let text3 = String::from_utf8_lossy(&out3).into_owned();
    assert_eq!(code, 0, "exit code after the second restart\n{text3}\n{}", job.stderr());

    let second = first_tick(&out2).expect("restart 1 printed nothing");
    let third = first_tick(&out3).expect("restart 2 printed nothing");
    let mut all = lines_before(&out1, second);
    all.extend(lines_before(&out2, third));
    all.extend_from_slice(&out3);
    let norm = |b: &[u8]| String::from_utf8_lossy(b).replace("\r\n", "\n").into_bytes();
    assert_same_output(&norm(&reference), &norm(&all), "terminal output of launch + restart + restart");
}

/// An interactive bash keeps working across two checkpoint/kill/restart
/// rounds, each restart on a new terminal (stdin, stdout and stderr, as
/// from a terminal emulator; ckrun's messages appear there too): a variable set before the first
/// checkpoint is there after each restart, builtins and external commands
/// run, and `exit 3` ends ckrun with status 3. Today's failure: bash reads
/// in the background, gets EIO, prints `exit` and quits.
#[test]
fn interactive_bash_survives_two_restarts() {
    let dir = TestDir::new("jobctl-bash");
    let bash = ["bash", "--norc", "--noprofile", "-i"].map(OsStr::new);
    let mut job = TermJob::launch(&dir, &bash, None);
    job.pty().type_in("X=41; echo start-$X\n");
    job.wait_for_text("start-41", 0);
    let img1 = job.checkpoint();
    job.kill9();

    let mut job = TermJob::restart(&img1, &dir, None);
    // The restored shell waits at its prompt; ckrun says it is back.
    let deadline = Instant::now() + TIMEOUT;
    while !job.stderr().contains("ckrun: restarted") {
        assert!(job.is_running() && Instant::now() < deadline, "no restart\n{}", job.diagnostics());
        thread::sleep(POLL);
    }
    assert!(!job.stderr().contains("namespace"), "{}", job.diagnostics());
    job.pty().type_in("echo after-$((X+1)); /bin/echo external-$X\n");
    job.wait_for_text("after-42", 0);
    job.wait_for_text("external-41", 0);
    let img2 = job.checkpoint();
    job.kill9();

    let mut job = TermJob::restart(&img2, &dir, None);
    let deadline = Instant::now() + TIMEOUT;
    while !job.stderr().contains("ckrun: restarted") {
        assert!(job.is_running() && Instant::now() < deadline, "no restart\n{}", job.diagnostics());
        thread::sleep(POLL);
    }
    job.pty().type_in("echo again-$((X+2)); exit 3\n");
    let (code, out) = job.wait();
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(text.contains("again-43"), "after the second restart:\n{text}\n{}", job.stderr());
    assert_eq!(code, 3, "bash's exit status through ckrun\n{text}\n{}", job.stderr());
}

/// The children of `pid`, with their names and process groups, and the
/// terminal's foreground group as each one's stat shows it.
fn children_stat(pid: i32) -> Vec<(i32, String, i32, i32)> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return vec![] };
    let mut kids = Vec::new();
    for t in tasks.flatten() {
        let list = fs::read_to_string(t.path().join("children")).unwrap_or_default();
        for k in list.split_whitespace().filter_map(|x| x.parse::<i32>().ok()) {
            let Ok(stat) = fs::read_to_string(format!("/proc/{k}/stat")) else { continue };
            let Some((head, rest)) = stat.rsplit_once(')') else { continue };
            let name = head.split_once('(').map(|(_, n)| n.to_string()).unwrap_or_default();
            let f: Vec<&str> = rest.split_whitespace().collect();
            let (pgrp, tpgid) = (f[2].parse().unwrap_or(0), f[5].parse().unwrap_or(0));
            kids.push((k, name, pgrp, tpgid));
        }
    }
    kids
}

/// Waits until `text` appears `n` times on the terminal after byte `from`.
fn wait_for_count(job: &mut TermJob, text: &str, n: usize, from: usize) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let exited = !job.is_running();
        let out = job.output();
        if String::from_utf8_lossy(out.get(from..).unwrap_or_default()).matches(text).count() >= n {
            return;
        }
        if exited || Instant::now() >= deadline {
            panic!("{text:?} not {n} times on the terminal\n{}", job.diagnostics());
        }
        thread::sleep(POLL);
    }
}

/// An interactive bash running a foreground job, `cat` reading the
/// terminal, when it is checkpointed: after the restart on a new terminal
/// cat's group has the terminal (cat reads and echoes a line), and when
/// cat ends at ^D bash takes the terminal back itself and runs on, its
/// variables intact; a second round at the prompt ends with `exit 4`.
#[test]
fn interactive_bash_with_a_foreground_job_survives_restarts() {
    let dir = TestDir::new("jobctl-bash-job");
    let bash = ["bash", "--norc", "--noprofile", "-i"].map(OsStr::new);
    let mut job = TermJob::launch(&dir, &bash, None);
    job.pty().type_in("X=41; echo start-$X\n");
    job.wait_for_text("start-41", 0);
    job.pty().type_in("cat\n");
    let shell = job.program_pid();
    let deadline = Instant::now() + TIMEOUT;
    let cat = loop {
        // cat runs, in its own group, which has the terminal.
        if let Some(&(pid, _, pgrp, _)) =
            children_stat(shell).iter().find(|(_, n, pgrp, tpgid)| n == "cat" && pgrp == tpgid)
        {
            assert_eq!(pid, pgrp, "cat leads its job's group");
            break pid;
        }
        assert!(job.is_running() && Instant::now() < deadline, "no cat in the foreground\n{}", job.diagnostics());
        thread::sleep(POLL);
    };
    let img1 = job.checkpoint();
    let shown = run_ckrun(&[OsStr::new("--inspect"), img1.as_os_str()], &dir.root, TIMEOUT);
    assert!(shown.stdout.contains(&format!("terminal    process group {cat} in the foreground")), "{shown:#?}");
    job.kill9();

    let mut job = TermJob::restart(&img1, &dir, None);
    let deadline = Instant::now() + TIMEOUT;
    while !job.stderr().contains("ckrun: restarted 2 processes") {
        assert!(job.is_running() && Instant::now() < deadline, "no restart\n{}", job.diagnostics());
        thread::sleep(POLL);
    }
    assert!(!job.stderr().contains("namespace"), "{}", job.diagnostics());
    let from = job.output().len();
    job.pty().type_in("through-cat\n");
    // Once echoed by the terminal, once written by cat.
    wait_for_count(&mut job, "through-cat", 2, from);
    job.pty().type_in("\x04");
    job.pty().type_in("echo back-$X\n");
    job.wait_for_text("back-41", from);
    let img2 = job.checkpoint();
    job.kill9();

    let mut job = TermJob::restart(&img2, &dir, None);
    let deadline = Instant::now() + TIMEOUT;
    while !job.stderr().contains("ckrun: restarted") {
        assert!(job.is_running() && Instant::now() < deadline, "no restart\n{}", job.diagnostics());
        thread::sleep(POLL);
    }
    job.pty().type_in("echo last-$((X+1)); exit 4\n");
    let (code, out) = job.wait();
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(text.contains("last-42"), "after the second restart:\n{text}");
    assert_eq!(code, 4, "bash's exit status through ckrun\n{text}");
}
