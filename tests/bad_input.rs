//! ckrun given bad input: each case must end with the documented exit code
//! and a `ckrun: ...` message on stderr, never a crash or a hang (every run
//! has a deadline).
//!
//! Exit codes: 2 usage, 3 corrupted / truncated / not an image, 4 image
//! from another kernel, 5 environment (pid in use, missing file, static
//! binary, missing program).

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ckrun_suite::{reseal_manifest, run_ckrun, Ckrun, CmdOutput, Program, TestDir, OUT_FILE, TIMEOUT};

/// Deadline of one ckrun command: failing fast is part of the contract.
const CMD_TIMEOUT: Duration = Duration::from_secs(30);

/// A real image of counter at tick 10, taken in `dir` and left there with
/// everything it refers to (cwd, out.txt) intact and its pid free, so that
/// the damage a test does to it is the only thing wrong with it. (Sharing
/// one image between tests would leave its files deleted, a second fault.)
fn real_image(dir: &TestDir) -> PathBuf {
    let mut job = Ckrun::launch(&Program::c("counter"), &[], &dir.work, &dir.img, &[]);
    job.wait_for_tick(10);
    let img = job.checkpoint(TIMEOUT);
    job.kill9();
    img
}

/// Writes `bytes` as `<dir.img>/<name>` and returns its path.
fn put(dir: &TestDir, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.img.join(name);
    fs::write(&path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

fn ckrun(dir: &TestDir, args: &[&OsStr]) -> CmdOutput {
    run_ckrun(args, &dir.root, CMD_TIMEOUT)
}

fn restart(dir: &TestDir, image: &Path) -> CmdOutput {
    ckrun(dir, &[OsStr::new("--restart"), image.as_os_str()])
}

fn inspect(dir: &TestDir, image: &Path) -> CmdOutput {
    ckrun(dir, &[OsStr::new("--inspect"), image.as_os_str()])
}

/// A real image cut in half: what a crash while copying it would leave.
fn truncated(dir: &TestDir) -> PathBuf {
    let img = real_image(dir);
    let len = fs::metadata(&img).unwrap().len();
    let file = fs::OpenOptions::new().write(true).open(&img).unwrap();
    file.set_len(len / 2).unwrap();
    img
}

#[test]
fn restart_truncated_image_exits_3() {
    let dir = TestDir::new("bad-truncated-restart");
    restart(&dir, &truncated(&dir)).assert_error(3, None);
}

#[test]
fn inspect_truncated_image_exits_3() {
    let dir = TestDir::new("bad-truncated-inspect");
    inspect(&dir, &truncated(&dir)).assert_error(3, None);
}

/// One flipped byte in the memory contents must be caught by the image's
/// checksums before anything is restored. The byte is in the first page
/// chunk, which starts right after the header's 4 KiB block (or right
/// after the header itself, without O_DIRECT: then 4 KiB in is inside the
/// chunks too). Not "the middle of the file": chunks written with
/// O_DIRECT start on 4 KiB boundaries, and the middle can fall on the
/// padding between two, which nothing reads (a restart from it is right).
#[test]
fn restart_flipped_byte_exits_3() {
    let dir = TestDir::new("bad-flipped");
    let img = real_image(&dir);
    let mut bytes = fs::read(&img).unwrap();
    assert!(bytes.len() > 3 * 4096, "an image with memory in it: {} bytes", bytes.len());
    bytes[4096 + 16] ^= 0xff;
    fs::write(&img, &bytes).unwrap();
    restart(&dir, &img).assert_error(3, None);
}

#[test]
fn restart_not_an_image_exits_3() {
    let dir = TestDir::new("bad-not-image-restart");
    let img = put(&dir, "passwd.copy", &fs::read("/etc/passwd").unwrap());
    restart(&dir, &img).assert_error(3, None);
}

#[test]
fn inspect_not_an_image_exits_3() {
    let dir = TestDir::new("bad-not-image-inspect");
    let img = put(&dir, "passwd.copy", &fs::read("/etc/passwd").unwrap());
    inspect(&dir, &img).assert_error(3, None);
}

#[test]
fn restart_missing_image_exits_5() {
    let dir = TestDir::new("bad-missing-restart");
    restart(&dir, &dir.img.join("nothing-here.1.1.ckimg")).assert_error(5, None);
}

#[test]
fn inspect_missing_image_exits_5() {
    let dir = TestDir::new("bad-missing-inspect");
    inspect(&dir, &dir.img.join("nothing-here.1.1.ckimg")).assert_error(5, None);
}

/// The kernel build this machine runs (`uname -v`), as the image records it.
fn kernel_version() -> String {
    fs::read_to_string("/proc/sys/kernel/version").unwrap().trim().to_string()
}

#[test]
fn image_from_another_kernel_build_exits_4() {
    let dir = TestDir::new("bad-kernel");
    let img = real_image(&dir);
    let ours = kernel_version();
    // Same length, other build: flip the first character.
    let mut theirs = ours.clone().into_bytes();
    theirs[0] = if theirs[0] == b'#' { b'*' } else { b'#' };
    let sealed = reseal_manifest(&img, |m| {
        let at = m.windows(ours.len()).position(|w| w == ours.as_bytes()).expect("kernel version in the manifest");
        m[at..at + theirs.len()].copy_from_slice(&theirs);
    });
    let foreign = put(&dir, "foreign.ckimg", &sealed);
    // It is a sound image: --inspect reads it...
    let out = inspect(&dir, &foreign);
    assert_eq!(out.code, 0, "inspect of a well-formed foreign image: {}", out.stderr);
    // ... but it cannot run here, and says why.
    restart(&dir, &foreign).assert_error(4, Some("kernel"));
}

/// An image of a program that may use a CPU feature this CPU lacks (its
/// recorded xsave features, XCR0 of the machine that made it, edited to
/// claim one more) is refused with exit 4 naming the feature, before
/// anything runs: no process, its output file untouched.
#[test]
fn image_needing_a_cpu_feature_this_cpu_lacks_exits_4() {
    let dir = TestDir::new("bad-cpu");
    let img = real_image(&dir);
    let ours = kernel_version();
    // The manifest's ImageInfo: ... kernel_version (a string), then the
    // xsave features (a u64, little-endian, bincode's fixed width).
    let bytes = fs::read(&img).unwrap();
    let json = inspect_json(&dir, &img);
    let recorded = json["info"]["xsave_features"].as_u64().expect("xsave_features in --inspect --json");
    let candidates = [("APX", 1u64 << 19), ("AMX", 3 << 17), ("PKRU", 1 << 9), ("AVX-512", 0xe0)];
    let Some(&(name, bits)) = candidates.iter().find(|(_, bits)| recorded & bits == 0) else {
        eprintln!("SKIPPED: this CPU has every feature the test could claim ({recorded:#x})");
        return;
    };
    let sealed = reseal_manifest(&img, |m| {
        let at = m.windows(ours.len()).position(|w| w == ours.as_bytes()).expect("kernel version in the manifest");
        let field = &mut m[at + ours.len()..at + ours.len() + 8];
        assert_eq!(u64::from_le_bytes(field.try_into().unwrap()), recorded, "xsave features after the kernel version");
        field.copy_from_slice(&(recorded | bits).to_le_bytes());
    });
    assert_ne!(sealed, bytes);
    let needy = put(&dir, "needy.ckimg", &sealed);
    assert_eq!(inspect_json(&dir, &needy)["info"]["xsave_features"].as_u64(), Some(recorded | bits));
    let out_before = fs::read(dir.work.join(OUT_FILE)).unwrap();
    let pid = ckrun_suite::ImageName::parse(&img).unwrap().pid;

    let why = format!("this CPU lacks {name}");
    ckrun(&dir, &[OsStr::new("--restart"), needy.as_os_str(), OsStr::new("--dry-run")]).assert_error(4, Some(&why));
    let out = restart(&dir, &needy);
    out.assert_error(4, Some(&why));
    assert!(out.stderr.contains(&format!("{:#x}", recorded | bits)), "{out:#?}");
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "process {pid} exists after the refused restart");
    assert_eq!(fs::read(dir.work.join(OUT_FILE)).unwrap(), out_before, "the program's output changed");
    // The image as it was made restarts here (counter exits with 7).
    let out = restart(&dir, &img);
    assert_eq!(out.code, 7, "{out:#?}");
}

/// `ckrun --inspect --json IMAGE`, parsed.
fn inspect_json(dir: &TestDir, image: &Path) -> serde_json::Value {
    let out = ckrun(dir, &[OsStr::new("--inspect"), image.as_os_str(), OsStr::new("--json")]);
    assert_eq!(out.code, 0, "{out:#?}");
    serde_json::from_str(&out.stdout).expect("--inspect --json prints JSON")
}

#[test]
fn program_changed_since_the_checkpoint_exits_5() {
    let dir = TestDir::new("bad-changed-binary");
    // A private copy of the program, to change it afterwards.
    let exe = dir.work.join("counter-copy");
    fs::copy(Program::c("counter").path(), &exe).unwrap();
    let prog = Program::at(&exe);
    let mut job = Ckrun::launch(&prog, &[], &dir.work, &dir.img, &[]);
    job.wait_for_tick(10);
    let img = job.checkpoint(TIMEOUT);
    job.kill9();
    // Same size, new modification time: other code, as far as ckrun knows.
    let f = fs::File::options().write(true).open(&exe).unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(60)).unwrap();
    drop(f);
    restart(&dir, &img).assert_error(5, Some("modified since the checkpoint"));
}

/// A static binary never loads the LD_PRELOAD agent: ckrun must refuse it
/// instead of running it uncheckpointable.
#[test]
fn static_binary_is_refused_with_5() {
    let dir = TestDir::new("bad-static");
    let prog = Program::c("static_hello");
    let out = ckrun(&dir, &[OsStr::new("--dir"), dir.img.as_os_str(), prog.exe().as_os_str()]);
    out.assert_error(5, Some("static"));
    assert!(!out.stdout.contains("hello"), "the static program ran anyway: {out:#?}");
}

#[test]
fn missing_program_exits_5() {
    let dir = TestDir::new("bad-missing-program");
    let missing = dir.root.join("no-such-program");
    ckrun(&dir, &[OsStr::new("--dir"), dir.img.as_os_str(), missing.as_os_str()]).assert_error(5, None);
}

#[test]
fn bogus_flag_exits_2() {
    let dir = TestDir::new("bad-flag");
    ckrun(&dir, &[OsStr::new("--bogus")]).assert_error(2, None);
}

#[test]
fn no_arguments_exits_2() {
    let dir = TestDir::new("bad-no-args");
    ckrun(&dir, &[]).assert_error(2, None);
}

/// Restarting while the checkpointed program still runs cannot get its pid:
/// exit 5 naming the pid, and the running program must not be disturbed.
#[test]
fn restart_while_original_runs_with_no_pidns_exits_5() {
    // (Without --no-pidns the restart goes to a new PID namespace: tests/trees.rs.)
    let dir = TestDir::new("bad-pid-in-use");
    let mut job = Ckrun::launch(&Program::c("counter"), &[], &dir.work, &dir.img, &[]);
    job.wait_for_tick(10);
    let img = job.checkpoint(TIMEOUT);
    let pid = job.program_pid();

    ckrun(&dir, &[OsStr::new("--restart"), img.as_os_str(), OsStr::new("--no-pidns")])
        .assert_error(5, Some(&pid.to_string()));

    assert_eq!(job.wait(TIMEOUT), 7, "the original run was disturbed\n{}", job.diagnostics());
    let last = job.output();
    let text = String::from_utf8_lossy(&last);
    assert!(text.lines().last().unwrap_or("").starts_with("done "), "{}", job.diagnostics());
}

/// A trailer that claims a manifest as long as a 6 GiB (sparse) file: the
/// length is refused before anything is allocated (the run's address
/// space is limited to 1 GiB, so an allocation would abort it).
#[test]
fn a_huge_manifest_length_is_refused_without_allocating() {
    use std::os::unix::process::CommandExt;
    let dir = TestDir::new("bad-huge-manifest");
    let img = real_image(&dir);
    let mut b = fs::read(&img).unwrap();
    let t = b.len() - 64;
    let trailer = b[t..].to_vec();
    b.truncate(t);
    let huge: u64 = 6 << 30;
    let f = fs::OpenOptions::new().write(true).create(true).truncate(true).open(dir.img.join("huge.ckimg")).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&b[..4096.min(b.len())], 0).unwrap();
    let mut tr = trailer;
    tr[8..16].copy_from_slice(&4096u64.to_le_bytes());
    tr[16..24].copy_from_slice(&(huge - 4096).to_le_bytes());
    tr[32..40].copy_from_slice(&(huge + 64).to_le_bytes());
    let own = xxhash_rust::xxh3::xxh3_64(&tr[..40]);
    tr[40..48].copy_from_slice(&own.to_le_bytes());
    f.write_all_at(&tr, huge).unwrap();
    drop(f);
    for args in [["--inspect"], ["--restart"]] {
        let out = dir.root.join("huge.stderr");
        let mut cmd = std::process::Command::new(ckrun_suite::ckrun_bin());
        cmd.args(args).arg(dir.img.join("huge.ckimg")).stderr(fs::File::create(&out).unwrap());
        // SAFETY: setrlimit only touches the child, before it execs.
        unsafe {
            cmd.pre_exec(|| {
                let l = libc::rlimit { rlim_cur: 1 << 30, rlim_max: 1 << 30 };
                libc::setrlimit(libc::RLIMIT_AS, &l);
                Ok(())
            });
        }
        let status = cmd.status().unwrap();
        let stderr = fs::read_to_string(&out).unwrap();
        assert_eq!(status.code(), Some(3), "{args:?}: {stderr}");
        assert!(stderr.starts_with("ckrun:") && stderr.contains("manifest"), "{stderr}");
    }
}

/// An image path that is a FIFO (or a device) is refused at once: opening
/// it must not wait for a writer.
#[test]
fn a_fifo_as_image_is_refused_without_blocking() {
    let dir = TestDir::new("bad-fifo");
    let fifo = dir.img.join("fifo.ckimg");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    inspect(&dir, &fifo).assert_error(3, Some("not a regular file"));
    restart(&dir, &fifo).assert_error(3, Some("not a regular file"));
    restart(&dir, Path::new("/dev/zero")).assert_error(3, Some("not a regular file"));
}
