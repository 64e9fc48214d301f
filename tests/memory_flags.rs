//! Memory with unusual flags is saved and comes back with them (issue 10):
//!
//! - memory the program marked `MADV_DONTFORK` (as V8 marks its heap),
//!   which a copy-on-write snapshot does not get by itself: whole
//!   mappings, the middle of one, two adjacent ones, a private file
//!   mapping and shared memory, each checked by the program itself to
//!   still have the flag (VmFlags "dc") after every restart, and left out
//!   of the program's own forks;
//! - a 2 TiB `MAP_NORESERVE` reservation with five touched pages, which
//!   must be saved as five pages and mapped again at restart (a mapping
//!   of that size without MAP_NORESERVE is refused).
//!
//! `examples/memflags.c` prints a hash of all that memory at every tick;
//! each test runs it bare, then under ckrun through two rounds of
//! checkpoint → kill -9 → restart, and compares the outputs.
//!
//! Needs the product built: `cargo build --workspace` first.

use std::path::Path;

use ckrun_suite::{assert_same_output, list_images, run_ckrun, Ckrun, Program, TestDir, TIMEOUT};

/// Ticks to let pass after a checkpoint before the SIGKILL.
const RUN_ON: u64 = 3;

/// The program run bare, which must succeed on its own.
fn reference(prog: &Program, args: &[&str], dir: &TestDir) -> Vec<u8> {
    let run = prog.run_bare(args, &dir.bare);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.code, 0, "bare run of memflags {args:?} failed: {stderr}");
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    let last = out.lines().last().unwrap_or_default();
    assert!(last.starts_with("done ") && !last.contains("bad") && !last.contains("not"), "bare run: {last}");
    run.stdout
}

/// `ckrun --inspect IMAGE`, which must succeed.
fn inspect(image: &Path, cwd: &Path) -> String {
    let out = run_ckrun(&[std::ffi::OsStr::new("--inspect"), image.as_os_str()], cwd, TIMEOUT);
    assert_eq!(out.code, 0, "inspect {}: {out:#?}", image.display());
    out.stdout
}

/// Checkpoint, kill -9, restart, twice, then the program runs to its end:
/// the same output as a bare run. Returns the two images.
fn two_rounds(test: &str, args: &[&str], flags: &[&str]) -> (TestDir, Vec<std::path::PathBuf>) {
    let dir = TestDir::new(test);
    let prog = Program::c("memflags");
    let expected = reference(&prog, args, &dir);

    let mut job = Ckrun::launch(&prog, args, &dir.work, &dir.img, flags);
    job.wait_for_tick(5);
    let img1 = job.checkpoint(TIMEOUT);
    let at = job.last_tick().unwrap();
    job.wait_for_tick(at + RUN_ON);
    job.kill9();
    let killed_at = job.last_tick().unwrap();

    let mut job = Ckrun::restart(&img1, &dir.work, &[]);
    // Lines up to `killed_at` are in out.txt already: only a later tick
    // shows the restored program runs.
    job.wait_for_tick(killed_at + RUN_ON);
    let img2 = job.checkpoint(TIMEOUT);
    let at = job.last_tick().unwrap();
    job.wait_for_tick(at + RUN_ON);
    job.kill9();

    let mut job = Ckrun::restart(&img2, &dir.work, &[]);
    let code = job.wait(TIMEOUT);
    assert_eq!(code, 0, "exit code after two restarts\n{}", job.diagnostics());
    assert_same_output(&expected, &job.output(), test);
    let images = vec![img1, img2];
    assert_eq!(list_images(&dir.img), images, "only the requested images");
    (dir, images)
}

/// The regions `--inspect` lists as marked MADV_DONTFORK, with what was
/// saved of each.
fn dontfork_regions(text: &str) -> Vec<String> {
    text.lines().filter(|l| l.contains("[dontfork")).map(str::to_string).collect()
}

/// MADV_DONTFORK memory, with the default copy-on-write snapshot: saved,
/// and marked again after each restart (the program checks its smaps and
/// that a fork leaves the memory out).
#[test]
fn dontfork_memory_survives_restarts() {
    let (dir, images) = two_rounds("memflags-dontfork", &["dontfork", "60"], &[]);
    for image in &images {
        let text = inspect(image, &dir.work);
        let marked = dontfork_regions(&text);
        // whole, split (its middle), the pair, the file and shared memory.
        assert_eq!(marked.len(), 6, "regions marked dontfork in {}:\n{text}", image.display());
        // Every written page of the private ones is in the image (the
        // file mapping has a third of its pages written; the shared
        // memory's content is saved with the deleted file it is).
        for line in marked.iter().filter(|l| !l.contains("deleted")) {
            assert!(!line.contains("  0 B"), "nothing saved of a DONTFORK region: {line}\n{text}");
        }
    }
}

/// The same with `--no-fork`: the program stays stopped while its own
/// memory is read, and the flag is taken from its smaps.
#[test]
fn dontfork_memory_survives_restarts_without_fork() {
    let (dir, images) = two_rounds("memflags-dontfork-nofork", &["dontfork", "60"], &["--no-fork"]);
    for image in &images {
        let text = inspect(image, &dir.work);
        assert!(text.contains("program frozen while copied"), "not a --no-fork image:\n{text}");
        let marked = dontfork_regions(&text);
        for line in marked.iter().filter(|l| !l.contains("deleted")) {
            assert!(!line.contains("  0 B"), "nothing saved of a DONTFORK region: {line}\n{text}");
        }
        assert_eq!(marked.len(), 6, "regions marked dontfork in {}:\n{text}", image.display());
    }
}

/// A 2 TiB MAP_NORESERVE reservation with five touched pages: saved as
/// those pages, restored as a reservation of the whole size, twice.
#[test]
fn sparse_reservation_survives_restarts() {
    let (dir, images) = two_rounds("memflags-sparse", &["sparse", "80"], &[]);
    for image in &images {
        let text = inspect(image, &dir.work);
        let big = text
            .lines()
            // (The untouched 1 GiB reservation may be merged into it.)
            .find(|l| l.starts_with("    0") && (l.contains("2048.0 GiB") || l.contains("2049.0 GiB")))
            .unwrap_or_else(|| panic!("no 2 TiB region in {}:\n{text}", image.display()));
        assert!(big.contains("[noreserve]"), "not marked MAP_NORESERVE: {big}");
        assert!(big.contains("20.0 KiB"), "not five pages saved: {big}");
    }
}

/// MADV_DONTFORK memory that cannot be made copyable (the agent is told
/// to take every MADV_DOFORK as refused, as the kernel refuses it for
/// device memory): the checkpoint fails, naming the memory, and writes no
/// image; the program goes on, its memory still marked; with --no-fork
/// the same program checkpoints and restarts.
#[test]
fn dontfork_memory_that_cannot_be_copied_fails_the_checkpoint_by_name() {
    let test = "memflags-dontfork-refused";
    let dir = TestDir::new(test);
    let prog = Program::c("memflags");
    let args = ["dontfork", "60"];
    let expected = reference(&prog, &args, &dir);
    let env = ["env", "CKRUN_TEST_FAIL=dontfork"];

    let mut job = Ckrun::launch_via(&env, &prog, &args, &dir.work, &dir.img, &[]);
    job.wait_for_tick(3);
    ckrun_suite::sys::send_signal(job.ckrun_pid(), ckrun_suite::sys::SIGUSR2).unwrap();
    let failed =
        |job: &Ckrun| job.stderr().lines().find(|l| l.starts_with("ckrun: checkpoint failed")).map(str::to_string);
    let deadline = std::time::Instant::now() + TIMEOUT;
    let line = loop {
        if let Some(l) = failed(&job) {
            break l;
        }
        assert!(std::time::Instant::now() < deadline, "no failed checkpoint\n{}", job.diagnostics());
        std::thread::sleep(ckrun_suite::POLL);
    };
    assert!(
        line.contains("MADV_DONTFORK") && line.contains(" at 0x") && line.contains("not in the copy-on-write snapshot"),
        "the failure names the memory: {line}"
    );
    assert!(list_images(&dir.img).is_empty(), "a failed checkpoint left an image");
    // The program goes on, unharmed, its memory marked as before (dc=y).
    let code = job.wait(TIMEOUT);
    assert_eq!(code, 0, "exit code after the failed checkpoint\n{}", job.diagnostics());
    assert_same_output(&expected, &job.output(), test);

    // --no-fork copies the stopped program itself: nothing to refuse.
    let dir = TestDir::new(&format!("{test}-nofork"));
    let mut job = Ckrun::launch_via(&env, &prog, &args, &dir.work, &dir.img, &["--no-fork"]);
    job.wait_for_tick(3);
    let image = job.checkpoint(TIMEOUT);
    let at = job.last_tick().unwrap();
    job.wait_for_tick(at + RUN_ON);
    job.kill9();
    let mut job = Ckrun::restart(&image, &dir.work, &[]);
    assert_eq!(job.wait(TIMEOUT), 0, "exit code after the restart\n{}", job.diagnostics());
    assert_same_output(&expected, &job.output(), test);
}
