//! The image parser against damaged and crafted images (issue 9): thousands
//! of truncations, byte flips and re-sealed manifest edits (checksums
//! recomputed, as anyone who can write an image can do) of one real image,
//! against `--inspect`, `--restart --dry-run` and real restarts.
//!
//! Every outcome must be one of: exit 0 with the program's result the
//! uninterrupted run's (a real restart), exit 0 (inspect, dry run), or exit
//! 3/4/5 with a `ckrun:` message; never a signal, an abort, a hang (every
//! run has a deadline) or more than a bounded amount of memory (every run
//! has an address-space limit far below what a crafted length asks for).
//!
//! What the checksums cannot tell: a re-sealed edit of a value only the
//! program interprets (a saved register, a page's protection) is
//! indistinguishable from the real thing, and may make the restored program
//! misbehave. Such images are refused by the keyed seal (`--key-file`),
//! which the last test checks for every re-sealed edit; real restarts of
//! unsealed edits are therefore only run for damage the checksums catch.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ckrun_suite::{assert_same_output, ckrun_bin, reseal, Ckrun, Program, TestDir, TIMEOUT};

/// Address space each ckrun run may use (ckrun itself needs far less; a
/// crafted length would ask for far more).
const MEMORY_LIMIT: u64 = 2 << 30;
/// Deadline of one run: a refusal is immediate.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// xorshift64*: deterministic, so that a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

struct Outcome {
    code: Option<i32>,
    signal: Option<i32>,
    stderr: String,
}

/// Runs ckrun ARGS in `cwd` with the memory limit and the deadline.
fn ckrun(args: &[&OsStr], cwd: &Path) -> Outcome {
    let err = cwd.join(format!("mut-{}-{:?}.stderr", std::process::id(), std::thread::current().id()));
    let mut cmd = Command::new(ckrun_bin());
    cmd.args(args).current_dir(cwd).stdin(Stdio::null()).stdout(Stdio::null()).stderr(fs::File::create(&err).unwrap());
    // SAFETY: setrlimit is async-signal-safe and only touches the child.
    unsafe {
        cmd.pre_exec(|| {
            let l = libc::rlimit { rlim_cur: MEMORY_LIMIT, rlim_max: MEMORY_LIMIT };
            libc::setrlimit(libc::RLIMIT_AS, &l);
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn ckrun");
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ckrun {args:?} hung (no exit within {RUN_TIMEOUT:?})");
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let stderr = fs::read_to_string(&err).unwrap_or_default();
    let _ = fs::remove_file(&err);
    Outcome { code: status.code(), signal: status.signal(), stderr }
}

/// The contract for an image that may be damaged.
fn assert_clean(o: &Outcome, what: &str, allowed: &[i32]) {
    assert!(o.signal.is_none(), "{what}: ckrun died of signal {:?}\n{}", o.signal, o.stderr);
    let code = o.code.unwrap();
    assert!(allowed.contains(&code), "{what}: exit {code}, expected one of {allowed:?}\n{}", o.stderr);
    if code != 0 {
        assert!(
            o.stderr.lines().any(|l| l.starts_with("ckrun: ")),
            "{what}: exit {code} without a ckrun: line: {:?}",
            o.stderr
        );
        assert!(!o.stderr.contains("ckrun: ckrun:"), "{what}: doubled prefix\n{}", o.stderr);
    }
}

/// A real image of counter at tick 5 of 25, its files left in place.
fn real_image(dir: &TestDir, flags: &[&str]) -> (PathBuf, Vec<u8>, i32) {
    let prog = Program::c("counter");
    let reference = prog.run_bare(&["25"], &dir.bare);
    let mut job = Ckrun::launch(&prog, &["25"], &dir.work, &dir.img, flags);
    job.wait_for_tick(5);
    let img = job.checkpoint(TIMEOUT);
    job.kill9();
    (img, reference.stdout, reference.code)
}

/// The manifest's place in an image: (offset, length).
fn manifest_span(b: &[u8]) -> (usize, usize) {
    let t = b.len() - 64;
    let word = |i: usize| u64::from_le_bytes(b[t + i..t + i + 8].try_into().unwrap()) as usize;
    (word(8), word(16))
}

/// Interesting values for a word of the manifest.
const WORDS: [u64; 10] =
    [0, 1, 0xff, 0x7fff_ffff, 0xffff_ffff, 0x1_0000_0000, 1 << 40, i64::MAX as u64, u64::MAX, 4096];

/// One damaged or crafted image, made from the real one when it is tried
/// (thousands of whole copies would not fit in memory).
#[derive(Clone, Debug)]
enum Mutant {
    /// The image cut to this length.
    Cut(usize),
    /// One byte xor'ed, checksums left as they are.
    Flip(usize, u8),
    /// Bytes of the manifest replaced (at an offset from its start), then
    /// the checksums recomputed.
    Resealed(usize, Vec<u8>),
}

impl Mutant {
    /// Chooses one re-sealed edit of the manifest of `base` that changes it.
    fn resealed(base: &[u8], rng: &mut Rng) -> Mutant {
        let (off, len) = manifest_span(base);
        loop {
            let at = rng.below(len);
            let old = &base[off + at..];
            let new: Vec<u8> = match rng.below(4) {
                0 => vec![rng.next() as u8],
                1 => vec![old[0] ^ 1 << rng.below(8)],
                2 if at + 4 <= len => (WORDS[rng.below(WORDS.len())] as u32).to_le_bytes().to_vec(),
                _ if at + 8 <= len => WORDS[rng.below(WORDS.len())].to_le_bytes().to_vec(),
                _ => vec![old[0].wrapping_add(1)],
            };
            if new[..] != old[..new.len()] {
                return Mutant::Resealed(at, new);
            }
        }
    }

    fn bytes(&self, base: &[u8]) -> Vec<u8> {
        match self {
            Mutant::Cut(n) => base[..*n].to_vec(),
            Mutant::Flip(at, x) => {
                let mut b = base.to_vec();
                b[*at] ^= x;
                b
            }
            Mutant::Resealed(at, new) => {
                let mut b = base.to_vec();
                let (off, _) = manifest_span(&b);
                b[off + at..off + at + new.len()].copy_from_slice(new);
                reseal(&mut b);
                b
            }
        }
    }
}

/// Runs `cases` on two threads, each writing its mutant of `base` under
/// `dir` and calling `run` with its path.
fn in_parallel(base: &[u8], cases: &[Mutant], dir: &Path, run: impl Fn(&Path, &str) + Sync) {
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for w in 0..2 {
            let (next, run) = (&next, &run);
            s.spawn(move || {
                let path = dir.join(format!("mutant-{w}.ckimg"));
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(m) = cases.get(i) else { break };
                    fs::write(&path, m.bytes(base)).unwrap();
                    run(&path, &format!("case {i} ({m:?})"));
                }
            });
        }
    });
}

#[test]
fn truncated_and_flipped_images_are_refused_or_harmless() {
    let dir = TestDir::new("mut-damage");
    let (img, reference, code) = real_image(&dir, &[]);
    let base = fs::read(&img).unwrap();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let n = base.len();
    let mut cases: Vec<Mutant> =
        [0, 1, 63, 64, 65, 4095, 4096, n / 2, n - 65, n - 64, n - 63, n - 1].into_iter().map(Mutant::Cut).collect();
    cases.extend((0..300).map(|_| Mutant::Cut(rng.below(n))));
    cases.extend((0..900).map(|_| Mutant::Flip(rng.below(n), (rng.next() as u8).max(1))));
    let harmless = std::sync::Mutex::new(Vec::new());
    in_parallel(&base, &cases, &dir.img, |path, what| {
        let inspect = ckrun(&[OsStr::new("--inspect"), path.as_os_str()], &dir.work);
        assert_clean(&inspect, &format!("inspect {what}"), &[0, 3]);
        let dry = ckrun(&[OsStr::new("--restart"), path.as_os_str(), OsStr::new("--dry-run")], &dir.work);
        assert_clean(&dry, &format!("dry run {what}"), &[0, 3]);
        if inspect.code == Some(0) {
            harmless.lock().unwrap().push(what.to_string());
        }
    });
    // Damage the checksums let through (a flip in padding) must not
    // matter: a real restart of some of them, and of some refused ones.
    let harmless = harmless.into_inner().unwrap();
    let mut real: Vec<&Mutant> =
        cases.iter().filter(|m| harmless.iter().any(|h| h.ends_with(&format!("({m:?})")))).take(6).collect();
    real.extend(cases.iter().step_by(cases.len() / 6).take(6));
    for m in real {
        let what = format!("{m:?}");
        let path = dir.img.join("real.ckimg");
        fs::write(&path, m.bytes(&base)).unwrap();
        let o = ckrun(&[OsStr::new("--restart"), path.as_os_str()], &dir.work);
        if o.code == Some(code) {
            let out = fs::read(dir.work.join("out.txt")).unwrap();
            assert_same_output(&reference, &out, &format!("restart of {what}"));
        } else {
            assert_clean(&o, &format!("restart of {what}"), &[3]);
        }
    }
}

#[test]
fn resealed_manifest_edits_never_crash_ckrun() {
    let dir = TestDir::new("mut-resealed");
    let (img, _, _) = real_image(&dir, &[]);
    let base = fs::read(&img).unwrap();
    let mut rng = Rng(0x5eed_1234_abcd_0002);
    let cases: Vec<Mutant> = (0..2500).map(|_| Mutant::resealed(&base, &mut rng)).collect();
    in_parallel(&base, &cases, &dir.img, |path, what| {
        let inspect = ckrun(&[OsStr::new("--inspect"), path.as_os_str()], &dir.work);
        assert_clean(&inspect, &format!("inspect {what}"), &[0, 3]);
        let dry = ckrun(&[OsStr::new("--restart"), path.as_os_str(), OsStr::new("--dry-run")], &dir.work);
        assert_clean(&dry, &format!("dry run {what}"), &[0, 3, 4, 5]);
    });
}

#[test]
fn sealed_images_refuse_every_edit() {
    let dir = TestDir::new("mut-sealed");
    let key = dir.root.join("key");
    fs::write(&key, "a secret only this test knows\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let flag = ["--key-file", key.to_str().unwrap()];
    let (img, reference, code) = real_image(&dir, &flag);
    let key_arg = [OsStr::new("--key-file"), key.as_os_str()];
    let base = fs::read(&img).unwrap();
    let mut rng = Rng(0x5eed_1234_abcd_0003);
    let cases: Vec<Mutant> = (0..150).map(|_| Mutant::resealed(&base, &mut rng)).collect();
    in_parallel(&base, &cases, &dir.img, |path, what| {
        let mut args = vec![OsStr::new("--restart"), path.as_os_str()];
        args.extend(key_arg);
        let o = ckrun(&args, &dir.work);
        assert_clean(&o, &format!("sealed restart of {what}"), &[3]);
    });
    // Unsealed images are refused too when a key is asked for, and the
    // intact sealed image restarts and finishes as the bare run.
    let unsealed = dir.img.join("unsealed.ckimg");
    let mut b = base.clone();
    let t = b.len() - 64;
    b[t + 48..].fill(0);
    fs::write(&unsealed, b).unwrap();
    let mut args = vec![OsStr::new("--restart"), unsealed.as_os_str()];
    args.extend(key_arg);
    assert_clean(&ckrun(&args, &dir.work), "an unsealed image with --key-file", &[3]);
    let mut job = Ckrun::restart(&img, &dir.work, &flag);
    assert_eq!(job.wait(TIMEOUT), code, "{}", job.diagnostics());
    assert_same_output(&reference, &job.output(), "sealed restart");
}
