//! Security (issue 9): a local user attacks a root-run ckrun, and every
//! attack must be refused with nothing outside the job changed.
//!
//! The attacker is `nobody` (uid 65534, through `setpriv`); the tests need
//! root to act as two users and say SKIPPED otherwise. The attacks:
//! - connecting to the coordinator's socket (its name is public in
//!   /proc/net/unix) to get a restart's fds, to forge an agent's reports,
//!   or to stall it with silent connections (`tests/progs/attacker.c`);
//! - images: a user's image restarted by root must run as that user, an
//!   image claiming root in a user's file is refused, paths a user
//!   controls (a symlink planted for an output file, a crafted path) are
//!   never opened with root's rights;
//! - the image directory: names planted in a world-writable `--dir` are
//!   never followed or replaced.
//!
//! Each test also runs the job to its end and compares its output with an
//! uninterrupted run's: security that breaks the program is no security.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Instant;

use ckrun_suite::{
    assert_same_output, can_switch_users, examples_bin_dir, list_images, open_to_everyone, reseal_manifest, run_ckrun,
    Ckrun, Program, TestDir, NOBODY, NOBODY_UID, POLL, TIMEOUT,
};

fn attacker() -> PathBuf {
    examples_bin_dir().join("attacker")
}

/// Starts the attacker as `nobody` (or as root, outside the job, when
/// `as_root`), its output in `out`.
fn attack(as_root: bool, args: &[&str], out: &Path) -> Child {
    let mut cmd = if as_root {
        Command::new(attacker())
    } else {
        let mut c = Command::new(NOBODY[0]);
        c.args(&NOBODY[1..]).arg(attacker());
        c
    };
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(fs::File::create(out).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start the attacker: {e}"))
}

fn wait_exit(child: &mut Child, what: &str) {
    let deadline = Instant::now() + TIMEOUT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not finish within {TIMEOUT:?}");
        }
        thread::sleep(POLL);
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(POLL);
    }
}

/// The image's manifest, as `--inspect --json` prints it.
fn manifest(dir: &TestDir, img: &Path) -> serde_json::Value {
    let out = run_ckrun(&[OsStr::new("--inspect"), img.as_os_str(), OsStr::new("--json")], &dir.root, TIMEOUT);
    assert_eq!(out.code, 0, "{out:#?}");
    serde_json::from_str(&out.stdout).expect("inspect --json")
}

/// `sh -c 'exec 7<>secret.dat; exec counter'`: counter with a root-only
/// file open read-write on fd 7.
fn counter_holding_a_secret() -> Program {
    let counter = Program::c("counter");
    let script = format!("exec 7<>secret.dat; exec {} \"$@\"", counter.path().display());
    Program::new("counter-secret", "/bin/sh", &[OsStr::new("-c"), OsStr::new(&script), OsStr::new("counter")])
}

fn make_secret(dir: &Path) -> PathBuf {
    let secret = dir.join("secret.dat");
    fs::write(&secret, "root only\n").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    secret
}

#[test]
fn another_user_gets_no_fds_from_a_restart() {
    if !can_switch_users("another_user_gets_no_fds_from_a_restart") {
        return;
    }
    let dir = TestDir::new("sec-steal-fds");
    let prog = counter_holding_a_secret();
    make_secret(&dir.bare);
    let reference = prog.run_bare(&["150"], &dir.bare);
    let secret = make_secret(&dir.work);

    let mut job = Ckrun::launch(&prog, &["150"], &dir.work, &dir.img, &[]);
    job.wait_for_tick(20);
    let img = job.checkpoint(TIMEOUT);
    job.kill9();

    let m = manifest(&dir, &img);
    let name = m["settings"]["socket_name"].as_str().unwrap().to_string();
    let pid = m["processes"][0]["pid"].as_i64().unwrap().to_string();
    // The attacker hammers the coordinator's name from before the restart
    // binds it until after the program runs again, claiming to be the
    // restore process each time.
    let stop = dir.root.join("stop");
    let report = dir.root.join("attacker.out");
    let mut a = attack(false, &["restore-hello", &name, "0", &pid, stop.to_str().unwrap()], &report);
    let mut job = Ckrun::restart(&img, &dir.work, &[]);
    let at = job.last_tick().unwrap_or(0);
    job.wait_for_tick(at + 10);
    fs::write(&stop, "").unwrap();
    wait_exit(&mut a, "the attacker");
    let said = fs::read_to_string(&report).unwrap();
    assert_eq!(job.wait(TIMEOUT), reference.code, "{}", job.diagnostics());

    let n = |key: &str| -> u64 {
        let w: Vec<&str> = said.split_whitespace().collect();
        w.iter().position(|x| *x == key).and_then(|i| w.get(i + 1)?.parse().ok()).unwrap_or(0)
    };
    assert_eq!(n("stolen"), 0, "the attacker got fds: {said}");
    assert!(n("connected") > 0 && n("refused") > 0, "the attack never reached the coordinator: {said}");
    assert!(job.stderr().contains("refused a connection from process"), "{}", job.diagnostics());
    assert_eq!(fs::read_to_string(&secret).unwrap(), "root only\n", "the root-only file was written to");
    assert_same_output(&reference.stdout, &job.output(), "restart under attack");
}

#[test]
fn forged_agent_messages_are_refused() {
    if !can_switch_users("forged_agent_messages_are_refused") {
        return;
    }
    let dir = TestDir::new("sec-forge");
    let prog = Program::c("counter");
    let reference = prog.run_bare(&["150"], &dir.bare);
    let mut victim = Command::new("sleep").arg("600").spawn().unwrap();

    let mut job = Ckrun::launch(&prog, &["150"], &dir.work, &dir.img, &[]);
    job.wait_for_tick(10);
    let pid = job.program_pid();
    let env = fs::read(format!("/proc/{pid}/environ")).unwrap();
    let name = env
        .split(|&b| b == 0)
        .find_map(|v| v.strip_prefix(b"CKRUN_SOCKET="))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .expect("CKRUN_SOCKET in the program's environment");
    // As another user, and as root from outside the job: both are strangers.
    for (as_root, who) in [(false, "nobody"), (true, "root outside the job")] {
        let report = dir.root.join(format!("forge-{as_root}.out"));
        let mut a = attack(as_root, &["forge", &name, &pid.to_string(), &victim.id().to_string()], &report);
        wait_exit(&mut a, "the attacker");
        let said = fs::read_to_string(&report).unwrap();
        assert_eq!(said.trim(), "closed", "ckrun listened to {who}: {said}");
    }
    assert!(victim.try_wait().unwrap().is_none(), "ckrun killed the victim process");
    assert!(list_images(&dir.img).is_empty(), "a forged request made a checkpoint");
    assert!(job.is_running(), "a forged FAILED ended ckrun: {}", job.diagnostics());
    assert!(job.stderr().contains("refused a connection from process"), "{}", job.diagnostics());

    // The job itself is unharmed: checkpoint, kill, restart, finish.
    let img = job.checkpoint(TIMEOUT);
    job.kill9();
    let mut job = Ckrun::restart(&img, &dir.work, &[]);
    assert_eq!(job.wait(TIMEOUT), reference.code, "{}", job.diagnostics());
    assert_same_output(&reference.stdout, &job.output(), "after forged messages");
    victim.kill().unwrap();
    victim.wait().unwrap();
}

/// Connections that never say anything do not hold the coordinator up: a
/// process of the job keeps 20 of them open (re-opening each one ckrun
/// drops), and checkpoints, a kill and a restart go on as usual. (Before,
/// each such connection stalled ckrun for 5 s, and a checkpoint waited for
/// all of them in turn: 100 s, past the harness's deadline.)
#[test]
fn silent_connections_never_stall_the_coordinator() {
    let dir = TestDir::new("sec-silent");
    let counter = Program::c("counter");
    let script = format!(
        "[ -n \"$CKRUN_SOCKET\" ] && {} silent \"$CKRUN_SOCKET\" 20 ready & exec {} \"$@\"",
        attacker().display(),
        counter.path().display()
    );
    let prog = Program::new("counter-silent", "/bin/sh", &[OsStr::new("-c"), OsStr::new(&script), OsStr::new("c")]);
    let reference = prog.run_bare(&["300"], &dir.bare);

    let mut job = Ckrun::launch(&prog, &["300"], &dir.work, &dir.img, &[]);
    wait_until("the silent connections", || dir.work.join("ready").exists());
    job.wait_for_tick(10);
    let img = job.checkpoint(TIMEOUT);
    job.wait_for_tick(job.last_tick().unwrap_or(0) + 3);
    job.kill9();
    let mut job = Ckrun::restart(&img, &dir.work, &[]);
    assert_eq!(job.wait(TIMEOUT), reference.code, "{}", job.diagnostics());
    assert_same_output(&reference.stdout, &job.output(), "with silent connections");
}

/// Runs counter as nobody in `dir` up to a checkpoint, kills it; returns
/// the image (owned by nobody) and the bare run's output.
fn users_image(dir: &TestDir, args: &[&str]) -> (PathBuf, Vec<u8>, i32) {
    let prog = Program::c("counter");
    let reference = prog.run_bare(args, &dir.bare);
    open_to_everyone(&dir.root);
    open_to_everyone(&dir.work);
    open_to_everyone(&dir.img);
    let mut job = Ckrun::launch_via(&NOBODY, &prog, args, &dir.work, &dir.img, &[]);
    open_to_everyone(&dir.work);
    job.wait_for_tick(20);
    let img = job.checkpoint(TIMEOUT);
    job.kill9();
    let meta = fs::metadata(&img).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (NOBODY_UID, 0o600), "the image's owner and mode");
    (img, reference.stdout, reference.code)
}

#[test]
fn root_restarts_a_users_image_as_that_user() {
    if !can_switch_users("root_restarts_a_users_image_as_that_user") {
        return;
    }
    let dir = TestDir::new("sec-user-image");
    let (img, reference, code) = users_image(&dir, &["150"]);
    let mut job = Ckrun::restart(&img, &dir.work, &[]);
    let at = job.last_tick().unwrap_or(0);
    job.wait_for_tick(at + 5);
    let pid = job.program_pid();
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(field("Uid:"), "65534 65534 65534 65534", "{status}");
    assert_eq!(field("Gid:"), "65534 65534 65534 65534", "{status}");
    assert_eq!(field("Groups:"), "", "{status}");
    assert_eq!(field("CapEff:"), "0000000000000000", "{status}");
    assert_eq!(field("CapPrm:"), "0000000000000000", "{status}");
    // Its next checkpoint, by root's ckrun, is still an image of the user's
    // program, and restarts as the user again.
    let img2 = job.checkpoint(TIMEOUT);
    job.kill9();
    let mut job = Ckrun::restart(&img2, &dir.work, &[]);
    assert_eq!(job.wait(TIMEOUT), code, "{}", job.diagnostics());
    assert_same_output(&reference, &job.output(), "a user's image restarted by root");
}

#[test]
fn an_image_claiming_root_in_a_users_file_is_refused() {
    if !can_switch_users("an_image_claiming_root_in_a_users_file_is_refused") {
        return;
    }
    let dir = TestDir::new("sec-claim-root");
    let (img, _, _) = users_image(&dir, &["150"]);
    // uid [65534; 4] then gid [65534; 4] in the manifest: make the uids 0.
    let nobody: Vec<u8> = std::iter::repeat_n(NOBODY_UID.to_le_bytes(), 8).flatten().collect();
    let forged = reseal_manifest(&img, |m| {
        let at = m.windows(nobody.len()).position(|w| w == nobody.as_slice()).expect("credentials in the manifest");
        m[at..at + 16].fill(0);
    });
    let path = dir.img.join("forged.ckimg");
    fs::write(&path, forged).unwrap();
    std::os::unix::fs::chown(&path, Some(NOBODY_UID), Some(NOBODY_UID)).unwrap();
    let out = run_ckrun(&[OsStr::new("--restart"), path.as_os_str()], &dir.work, TIMEOUT);
    out.assert_error(3, Some("uid"));
    assert!(list_images(&dir.img).len() == 2, "a refused restart wrote an image");
}

#[test]
fn a_symlink_planted_for_a_users_file_is_refused() {
    if !can_switch_users("a_symlink_planted_for_a_users_file_is_refused") {
        return;
    }
    let dir = TestDir::new("sec-symlink");
    let (img, _, _) = users_image(&dir, &["150"]);
    let victim = dir.root.join("victim.txt");
    fs::write(&victim, "ROOT DATA\n").unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o644)).unwrap();
    // The user swaps the file the program writes for a symlink to root's file.
    let state = dir.work.join("state.dat");
    let out = Command::new(NOBODY[0])
        .args(&NOBODY[1..])
        .args(["ln", "-sf", victim.to_str().unwrap(), state.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(out.success());
    let r = run_ckrun(&[OsStr::new("--restart"), img.as_os_str()], &dir.work, TIMEOUT);
    r.assert_error(5, Some("state.dat"));
    assert_eq!(fs::read_to_string(&victim).unwrap(), "ROOT DATA\n", "root's file was changed");
}

#[test]
fn a_crafted_path_is_opened_with_the_users_rights_only() {
    if !can_switch_users("a_crafted_path_is_opened_with_the_users_rights_only") {
        return;
    }
    let dir = TestDir::new("sec-crafted-path");
    let (img, _, _) = users_image(&dir, &["150"]);
    // Root's file, next to the user's, with a name of the same length.
    let victim = dir.work.join("victm.dat");
    fs::write(&victim, "ROOT DATA\n").unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o644)).unwrap();
    let state = fs::metadata(dir.work.join("state.dat")).unwrap();
    let theirs = fs::metadata(&victim).unwrap();
    let ident = |m: &fs::Metadata| [m.dev().to_le_bytes(), m.ino().to_le_bytes()].concat();
    let forged = reseal_manifest(&img, |m| {
        let from = b"/state.dat";
        let mut found = false;
        for at in 0..m.len() - from.len() {
            if &m[at..at + from.len()] == from {
                m[at..at + from.len()].copy_from_slice(b"/victm.dat");
                found = true;
            }
        }
        assert!(found, "the path in the manifest");
        // The file's identity too, so that only the open is left to refuse it.
        let (a, b) = (ident(&state), ident(&theirs));
        for at in 0..m.len() - a.len() {
            if m[at..at + a.len()] == a[..] {
                m[at..at + a.len()].copy_from_slice(&b);
            }
        }
    });
    let path = dir.img.join("crafted.ckimg");
    fs::write(&path, forged).unwrap();
    std::os::unix::fs::chown(&path, Some(NOBODY_UID), Some(NOBODY_UID)).unwrap();
    let r = run_ckrun(&[OsStr::new("--restart"), path.as_os_str()], &dir.work, TIMEOUT);
    r.assert_error(5, Some("victm.dat"));
    assert!(r.stderr.contains("ermission denied"), "{r:#?}");
    assert_eq!(fs::read_to_string(&victim).unwrap(), "ROOT DATA\n", "root's file was changed");
}

/// In a world-writable image directory, another user plants symlinks at
/// the names ckrun would use (the image's and the temporaries' a ckrun of
/// old used): ckrun's checkpoint follows none of them and replaces none.
#[test]
fn names_planted_in_a_shared_image_directory_are_never_followed() {
    if !can_switch_users("names_planted_in_a_shared_image_directory_are_never_followed") {
        return;
    }
    let dir = TestDir::new("sec-planted");
    let prog = Program::c("counter");
    let reference = prog.run_bare(&["150"], &dir.bare);
    fs::set_permissions(&dir.img, fs::Permissions::from_mode(0o1777)).unwrap();
    let victim = dir.root.join("victim.txt");
    fs::write(&victim, "ROOT DATA\n").unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o644)).unwrap();

    let mut job = Ckrun::launch(&prog, &["150"], &dir.work, &dir.img, &[]);
    job.wait_for_tick(10);
    let pid = job.program_pid();
    let ckrun = job.ckrun_pid();
    for n in 1..=3 {
        for name in [format!("counter.{pid}.{n}.ckimg"), format!("counter.{pid}.{n}.ckimg.tmp.{ckrun}")] {
            let link = dir.img.join(name);
            let ok = Command::new(NOBODY[0])
                .args(&NOBODY[1..])
                .args(["ln", "-s", victim.to_str().unwrap(), link.to_str().unwrap()])
                .status()
                .unwrap();
            assert!(ok.success());
        }
    }
    let img = job.checkpoint(TIMEOUT);
    assert!(img.ends_with(format!("counter.{pid}.4.ckimg")), "{}", img.display());
    let meta = fs::symlink_metadata(&img).unwrap();
    assert!(meta.is_file() && meta.uid() == 0 && meta.mode() & 0o777 == 0o600, "{meta:?}");
    assert_eq!(fs::read_to_string(&victim).unwrap(), "ROOT DATA\n", "root's file was changed");
    job.kill9();
    let mut job = Ckrun::restart(&img, &dir.work, &[]);
    assert_eq!(job.wait(TIMEOUT), reference.code, "{}", job.diagnostics());
    assert_same_output(&reference.stdout, &job.output(), "with planted names");
}

/// An image directory ckrun creates is 0700; one a user cannot write to is
/// reported at launch, not at the first checkpoint hours later.
#[test]
fn image_directories_are_private_and_checked_at_launch() {
    let dir = TestDir::new("sec-image-dir");
    let made = dir.root.join("new/images");
    let out = run_ckrun(
        &[OsStr::new("--dir"), made.as_os_str(), Program::c("counter").path().as_os_str(), OsStr::new("1")],
        &dir.work,
        TIMEOUT,
    );
    assert_eq!(out.code, 7, "{out:#?}");
    assert_eq!(fs::metadata(&made).unwrap().mode() & 0o777, 0o700);
    if !can_switch_users("image_directories_are_private_and_checked_at_launch (as another user)") {
        return;
    }
    let closed = dir.root.join("closed");
    fs::create_dir(&closed).unwrap();
    fs::set_permissions(&closed, fs::Permissions::from_mode(0o755)).unwrap();
    open_to_everyone(&dir.root);
    open_to_everyone(&dir.work);
    let mut cmd: Vec<&OsStr> = NOBODY[1..].iter().map(OsStr::new).collect();
    let bin = ckrun_suite::ckrun_bin();
    let counter = Program::c("counter");
    cmd.extend([bin.as_os_str(), OsStr::new("--dir"), closed.as_os_str(), counter.path().as_os_str()]);
    let r = Command::new(NOBODY[0]).args(&cmd).current_dir(&dir.work).output().unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(5), "{stderr}");
    assert!(stderr.starts_with("ckrun:") && stderr.contains("cannot create images there"), "{stderr}");
}

/// A set-user-ID program run by a user runs without the agent (the loader
/// ignores LD_PRELOAD for it): ckrun says so at launch.
#[test]
fn a_setuid_program_is_named_as_such() {
    if !can_switch_users("a_setuid_program_is_named_as_such") {
        return;
    }
    let dir = TestDir::new("sec-setuid");
    let exe = dir.work.join("counter-setuid");
    fs::copy(Program::c("counter").path(), &exe).unwrap();
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o4755)).unwrap();
    open_to_everyone(&dir.root);
    fs::set_permissions(&dir.work, fs::Permissions::from_mode(0o777)).unwrap();
    let bin = ckrun_suite::ckrun_bin();
    let r = Command::new(NOBODY[0])
        .args(&NOBODY[1..])
        .arg(&bin)
        .arg("--dir")
        .arg(&dir.work)
        .arg(&exe)
        .current_dir(&dir.work)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("set-user-ID"), "{stderr}");
}

/// Restarting from image 1 after image 2 exists, then checkpointing: the
/// new image takes the next free number (3) and image 2 stays as it was.
#[test]
fn an_image_is_never_replaced() {
    let dir = TestDir::new("sec-never-replace");
    let prog = Program::c("counter");
    let reference = prog.run_bare(&["150"], &dir.bare);
    let mut job = Ckrun::launch(&prog, &["150"], &dir.work, &dir.img, &[]);
    job.wait_for_tick(10);
    let img1 = job.checkpoint(TIMEOUT);
    job.wait_for_tick(20);
    let img2 = job.checkpoint(TIMEOUT);
    job.kill9();
    let before = fs::read(&img2).unwrap();
    let mut job = Ckrun::restart(&img1, &dir.work, &[]);
    job.wait_for_tick(job.last_tick().unwrap_or(0) + 3);
    let img3 = job.checkpoint(TIMEOUT);
    assert!(img3.to_string_lossy().ends_with(".3.ckimg"), "{}", img3.display());
    assert_eq!(fs::read(&img2).unwrap(), before, "image 2 was replaced");
    assert_eq!(job.wait(TIMEOUT), reference.code, "{}", job.diagnostics());
    assert_same_output(&reference.stdout, &job.output(), "restart from an older image");
}

/// `ckrun prog >> log 2>&1`: the program's output and ckrun's own lines in
/// one file. A restart cuts the file back to the checkpoint, and ckrun's
/// lines written after it (the checkpoint's own line among them) survive.
#[test]
fn ckruns_own_lines_survive_in_a_shared_log() {
    let dir = TestDir::new("sec-shared-log");
    let prog = Program::c("counter");
    let reference = prog.run_bare(&["150"], &dir.bare);
    let log = dir.work.join("log.txt");
    let bin = ckrun_suite::ckrun_bin();
    // The killed program is re-parented to us, and reaped by its pid.
    ckrun_suite::sys::become_subreaper().unwrap();
    let sh = |args: &str| {
        Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("exec \"$0\" {args} >> log.txt 2>&1"))
            .arg(&bin)
            .current_dir(&dir.work)
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap()
    };
    use std::os::unix::process::CommandExt;
    let lines = || fs::read_to_string(&log).unwrap_or_default();
    let mut first = sh(&format!("--dir {} {} 150", dir.img.display(), prog.path().display()));
    wait_until("tick 20", || lines().contains("tick 20 "));
    ckrun_suite::sys::send_signal(first.id() as i32, ckrun_suite::sys::SIGUSR2).unwrap();
    wait_until("the checkpoint line", || lines().contains("ckrun: checkpoint 1:"));
    wait_until("tick 30", || lines().contains("tick 30 "));
    let _ = ckrun_suite::sys::send_signal(-(first.id() as i32), ckrun_suite::sys::SIGKILL);
    first.wait().unwrap();
    let img = list_images(&dir.img).pop().expect("an image");
    // The program is gone once its pid is free.
    let pid = ckrun_suite::ImageName::parse(&img).unwrap().pid;
    wait_until("the program's end", || {
        ckrun_suite::sys::try_reap(pid);
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    let mut second = sh(&format!("--restart {}", img.display()));
    wait_exit(&mut second, "the restart");
    let all = lines();
    assert!(all.contains("ckrun: checkpoint 1:"), "the checkpoint's line was lost:\n{all}");
    assert!(all.contains("ckrun: restarted"), "{all}");
    let program: String = all.lines().filter(|l| !l.starts_with("ckrun: ")).map(|l| format!("{l}\n")).collect();
    assert_same_output(&reference.stdout, program.as_bytes(), "the program's lines in the shared log");
}

/// `--inspect` checks the saved content of deleted files and memfds too,
/// not only memory: one flipped byte there is reported (exit 3).
#[test]
fn inspect_verifies_deleted_files_content() {
    let dir = TestDir::new("sec-inspect-ghosts");
    let mut job = Ckrun::launch(&Program::c("fd_deleted"), &["unlinked"], &dir.work, &dir.img, &[]);
    job.wait_for_tick(5);
    let img = job.checkpoint(TIMEOUT);
    job.kill9();
    let m = manifest(&dir, &img);
    let chunk = &m["ghosts"][0]["chunks"][0];
    let at = chunk["offset"].as_u64().unwrap() as usize + chunk["clen"].as_u64().unwrap() as usize / 2;
    let mut b = fs::read(&img).unwrap();
    b[at] ^= 0x40;
    let bad = dir.img.join("bad-ghost.ckimg");
    fs::write(&bad, b).unwrap();
    let out = run_ckrun(&[OsStr::new("--inspect"), bad.as_os_str()], &dir.root, TIMEOUT);
    out.assert_error(3, Some("checksum"));
}
