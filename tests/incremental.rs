//! Incremental images (issue 13): each checkpoint after the first stores
//! only the pages no earlier image of the job holds. `examples/rewrite.c`
//! rewrites 5% of its pages (scattered) each tick and prints a checksum
//! of all its memory, so a page restored from the wrong image changes
//! every later line. Every restart ends with the bare run's output; every
//! wait is on the program's output or ckrun's stderr, never a sleep.

use ckrun_suite::{
    assert_same_output, list_images, run_ckrun, sys, BareRun, Ckrun, CmdOutput, Program, TestDir, POLL, TIMEOUT,
};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// 16 MiB, 50 per mille of the pages rewritten per tick, 30 ms a tick.
const ARGS: [&str; 4] = ["16", "50", "250", "30"];
/// 10 per mille a tick: a checkpoint comes every few ticks.
const ARGS_TEN: [&str; 4] = ["16", "10", "400", "30"];

fn setup(name: &str, args: &[&str]) -> (Program, TestDir, BareRun) {
    let dir = TestDir::new(name);
    let prog = Program::c("rewrite");
    let reference = prog.run_bare(args, &dir.bare);
    (prog, dir, reference)
}

fn ckrun(dir: &TestDir, args: &[&OsStr]) -> CmdOutput {
    run_ckrun(args, &dir.root, TIMEOUT)
}

fn inspect(dir: &TestDir, image: &Path) -> CmdOutput {
    ckrun(dir, &[OsStr::new("--inspect"), image.as_os_str()])
}

/// A checkpoint after the program printed a tick it had not printed yet.
fn checkpoint_after_a_tick(job: &mut Ckrun) -> PathBuf {
    let at = job.last_tick().unwrap_or(0);
    job.wait_for_tick(at + 1);
    job.checkpoint(TIMEOUT)
}

/// ckrun's `checkpoint N: ...` line naming `image`.
fn announcement(job: &Ckrun, image: &Path) -> String {
    let name = image.file_name().unwrap().to_string_lossy().into_owned();
    job.stderr().lines().find(|l| l.starts_with("ckrun: checkpoint") && l.contains(&name)).unwrap_or_default().into()
}

fn wait_for_stderr(job: &mut Ckrun, what: &str) {
    let deadline = Instant::now() + TIMEOUT;
    while !job.stderr().contains(what) {
        assert!(Instant::now() < deadline, "{what:?} within {TIMEOUT:?}\n{}", job.diagnostics());
        std::thread::sleep(POLL);
    }
}

/// Restarts `image` and lets the program run to its end: the output must
/// be the bare run's.
fn restart_to_the_end(image: &Path, dir: &TestDir, reference: &BareRun, what: &str) {
    let mut job = Ckrun::restart(image, &dir.work, &[]);
    assert_eq!(job.wait(TIMEOUT), reference.code, "{what}\n{}", job.diagnostics());
    assert_same_output(&reference.stdout, &job.output(), what);
}

fn len(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

#[test]
fn ten_incremental_checkpoints_then_restart_from_the_newest() {
    let (prog, dir, reference) = setup("incr-ten", &ARGS_TEN);
    let mut job = Ckrun::launch(&prog, &ARGS_TEN, &dir.work, &dir.img, &[]);
    let images: Vec<PathBuf> = (0..10).map(|_| checkpoint_after_a_tick(&mut job)).collect();
    let full = len(&images[0]);
    for img in &images[1..] {
        let said = announcement(&job, img);
        assert!(said.contains("earlier image(s)"), "an incremental image: {said}\n{}", job.diagnostics());
        assert!(
            len(img) < full / 2,
            "{} is {} bytes, the first {full}\n{}",
            img.display(),
            len(img),
            job.diagnostics()
        );
    }
    let total: u64 = images.iter().map(|p| len(p)).sum();
    assert!(total < full * 4, "10 images take {total} bytes, one full image {full}");
    // Once a checkpoint read little, the next ones copy the written pages
    // out of the stopped program instead of forking a snapshot.
    let copied = images.iter().filter(|i| announcement(&job, i).contains("copied out while stopped")).count();
    assert!(copied >= 5, "{copied} of 10 checkpoints copied out\n{}", job.diagnostics());
    let shown = inspect(&dir, images.last().unwrap());
    assert_eq!(shown.code, 0, "{shown:#?}");
    assert!(shown.stdout.contains("incremental (generation 9"), "{}", shown.stdout);
    job.kill9();
    restart_to_the_end(images.last().unwrap(), &dir, &reference, "incr-ten");
}

#[test]
fn full_images_and_flatten_are_self_contained() {
    let (prog, dir, reference) = setup("incr-full", &ARGS);
    let mut job = Ckrun::launch(&prog, &ARGS, &dir.work, &dir.img, &["--full"]);
    let a = checkpoint_after_a_tick(&mut job);
    let b = checkpoint_after_a_tick(&mut job);
    assert!(!announcement(&job, &b).contains("earlier image"), "{}", job.diagnostics());
    assert!(inspect(&dir, &b).stdout.contains("self-contained"));
    job.kill9();
    // A restart keeps --full; without it, images are incremental again.
    let mut job = Ckrun::restart(&b, &dir.work, &[]);
    let c = checkpoint_after_a_tick(&mut job);
    assert!(!announcement(&job, &c).contains("earlier image"), "{}", job.diagnostics());
    job.kill9();
    let mut job = Ckrun::restart(&a, &dir.work, &["--full"]);
    let d = checkpoint_after_a_tick(&mut job);
    assert!(!announcement(&job, &d).contains("earlier image"), "{}", job.diagnostics());
    job.kill9();

    // An incremental chain, flattened: the copy restarts alone.
    let (prog, dir, reference2) = (prog, TestDir::new("incr-flatten"), reference);
    let mut job = Ckrun::launch(&prog, &ARGS, &dir.work, &dir.img, &[]);
    checkpoint_after_a_tick(&mut job);
    checkpoint_after_a_tick(&mut job);
    let newest = checkpoint_after_a_tick(&mut job);
    job.kill9();
    let out = ckrun(&dir, &[OsStr::new("--flatten"), newest.as_os_str()]);
    assert_eq!(out.code, 0, "{out:#?}");
    let name = newest.file_name().unwrap().to_string_lossy().replace(".ckimg", ".full.ckimg");
    let flat = dir.img.join(&name);
    assert!(inspect(&dir, &flat).stdout.contains("self-contained"), "{out:#?}");
    // Never over an existing file.
    ckrun(&dir, &[OsStr::new("--flatten"), newest.as_os_str()]).assert_error(5, Some("exists"));
    // The copy carries the hash of every page (gathered from the chain):
    // the first checkpoint after its restart takes the unchanged pages
    // from it by content.
    let mut job = Ckrun::restart(&flat, &dir.work, &[]);
    let next = checkpoint_after_a_tick(&mut job);
    job.kill9();
    let said = announcement(&job, &next);
    assert!(said.contains("in 1 earlier image(s)"), "taken from the flattened image: {said}\n{}", job.diagnostics());
    let alone = dir.root.join("alone");
    std::fs::create_dir_all(&alone).unwrap();
    let moved = alone.join(&name);
    std::fs::rename(&flat, &moved).unwrap();
    for img in list_images(&dir.img) {
        std::fs::remove_file(img).unwrap();
    }
    restart_to_the_end(&moved, &dir, &reference2, "incr-flatten");
}

#[test]
fn a_missing_or_damaged_parent_fails_with_exit_3_before_anything_runs() {
    let (prog, dir, _) = setup("incr-parent", &ARGS);
    let mut job = Ckrun::launch(&prog, &ARGS, &dir.work, &dir.img, &[]);
    let first = checkpoint_after_a_tick(&mut job);
    checkpoint_after_a_tick(&mut job);
    let third = checkpoint_after_a_tick(&mut job);
    job.kill9();
    let before = std::fs::read(dir.work.join("out.txt")).unwrap();
    let first_name = first.file_name().unwrap().to_string_lossy().into_owned();

    // Damaged: a byte of every block of the first image flipped.
    let mut bytes = std::fs::read(&first).unwrap();
    let saved = bytes.clone();
    for at in (4096 + 100..bytes.len() - 4096).step_by(4096) {
        bytes[at] ^= 0x5a;
    }
    std::fs::write(&first, &bytes).unwrap();
    let out = ckrun(&dir, &[OsStr::new("--restart"), third.as_os_str()]);
    out.assert_error(3, Some(&first_name));
    inspect(&dir, &third).assert_error(3, Some(&first_name));
    assert_eq!(std::fs::read(dir.work.join("out.txt")).unwrap(), before, "nothing ran");

    // Missing.
    std::fs::write(&first, &saved).unwrap();
    assert_eq!(inspect(&dir, &third).code, 0);
    std::fs::remove_file(&first).unwrap();
    let out = ckrun(&dir, &[OsStr::new("--restart"), third.as_os_str()]);
    out.assert_error(3, Some(&format!("{first_name}, which is missing")));
    inspect(&dir, &third).assert_error(3, Some("missing"));
    assert_eq!(std::fs::read(dir.work.join("out.txt")).unwrap(), before, "nothing ran");

    // Another file under its name (a copy of the second image).
    std::fs::copy(list_images(&dir.img)[0].clone(), &first).unwrap();
    ckrun(&dir, &[OsStr::new("--restart"), third.as_os_str()]).assert_error(3, Some(&first_name));
    assert_eq!(std::fs::read(dir.work.join("out.txt")).unwrap(), before, "nothing ran");
}

#[test]
fn kill_9_during_an_incremental_write_leaves_every_earlier_image_restartable() {
    let (prog, dir, reference) = setup("incr-kill-write", &ARGS);
    let mut job = Ckrun::launch_via(&["env", "CKRUN_TEST_HANG=finish:3"], &prog, &ARGS, &dir.work, &dir.img, &[]);
    let first = checkpoint_after_a_tick(&mut job);
    let second = checkpoint_after_a_tick(&mut job);
    sys::send_signal(job.ckrun_pid(), sys::SIGUSR2).unwrap();
    wait_for_stderr(&mut job, "ckrun: test: hanging at finish");
    job.kill9();
    assert_eq!(list_images(&dir.img), [first.clone(), second.clone()], "no third image");
    restart_to_the_end(&second, &dir, &reference, "incr-kill-write, second image");
    restart_to_the_end(&first, &dir, &reference, "incr-kill-write, first image");
}

#[test]
fn kill_9_during_retention_leaves_every_remaining_image_restartable() {
    let (prog, dir, reference) = setup("incr-kill-keep", &ARGS);
    // The first retention that removes two files stops between them. With
    // 5% of the pages rewritten per tick, every image takes pages from all
    // the earlier ones, which --keep 1 keeps as page files, until the chain
    // is 16 images long: the 17th takes nothing from the first, whose page
    // file is then removed, after the 16th became one.
    let mut job =
        Ckrun::launch_via(&["env", "CKRUN_TEST_HANG=retain"], &prog, &ARGS, &dir.work, &dir.img, &["--keep", "1"]);
    // Retention runs after ckrun announces the image, so the hang may come
    // after a checkpoint seemed done: each request waits for either its
    // announcement or the hang, never for an image a hung ckrun cannot write.
    let announced = |job: &Ckrun| job.stderr().lines().filter(|l| l.starts_with("ckrun: checkpoint ")).count();
    for n in 1.. {
        assert!(n <= 20, "no retention with two removals in 20 checkpoints\n{}", job.diagnostics());
        let (at, before) = (job.last_tick().unwrap_or(0), announced(&job));
        job.wait_for_tick(at + 1);
        sys::send_signal(job.ckrun_pid(), sys::SIGUSR2).unwrap();
        let deadline = Instant::now() + TIMEOUT;
        while announced(&job) == before && !job.stderr().contains("hanging at retain") {
            assert!(Instant::now() < deadline, "checkpoint {n} within {TIMEOUT:?}\n{}", job.diagnostics());
            std::thread::sleep(POLL);
        }
        if job.stderr().contains("hanging at retain") {
            break;
        }
    }
    job.kill9();
    let left = list_images(&dir.img);
    assert_eq!(left.len(), 1, "--keep 1 leaves one image\n{}", job.diagnostics());
    let pages = std::fs::read_dir(&dir.img)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "ckpages"))
        .count();
    assert!(pages <= 16, "{pages} page files: a chain is at most 16 images (one removal pending)");
    for img in &left {
        let out = inspect(&dir, img);
        assert_eq!(out.code, 0, "{} verifies: {out:#?}", img.display());
    }
    restart_to_the_end(left.last().unwrap(), &dir, &reference, "incr-kill-keep");
}

#[test]
fn a_chain_goes_on_across_restarts() {
    let (prog, dir, reference) = setup("incr-restarts", &ARGS);
    let mut job = Ckrun::launch(&prog, &ARGS, &dir.work, &dir.img, &["--keep", "2"]);
    checkpoint_after_a_tick(&mut job);
    let second = checkpoint_after_a_tick(&mut job);
    job.kill9();
    let mut job = Ckrun::restart(&second, &dir.work, &[]);
    let third = checkpoint_after_a_tick(&mut job);
    let said = announcement(&job, &third);
    assert!(said.contains("earlier image(s)"), "incremental on top of the restarted image: {said}");
    let fourth = checkpoint_after_a_tick(&mut job);
    // The restarted processes made new trackers at the third checkpoint.
    let said = announcement(&job, &fourth);
    assert!(said.contains("known unchanged by the dirty tracker"), "tracked again after a restart: {said}");
    job.kill9();
    let shown = inspect(&dir, &fourth);
    assert!(shown.stdout.contains("incremental (generation 3"), "{}", shown.stdout);
    restart_to_the_end(&fourth, &dir, &reference, "incr-restarts");
}

/// The coordinator keeps the index of the image it wrote last for the
/// next checkpoint: an image removed (or replaced) meanwhile must not be
/// referred to. The next image is then self-contained, with a warning,
/// and restarts alone.
#[test]
fn an_image_removed_between_checkpoints_is_not_taken_from() {
    let (prog, dir, reference) = setup("incr-removed", &ARGS);
    let mut job = Ckrun::launch(&prog, &ARGS, &dir.work, &dir.img, &[]);
    let first = checkpoint_after_a_tick(&mut job);
    let second = checkpoint_after_a_tick(&mut job);
    std::fs::remove_file(&second).unwrap();
    let third = checkpoint_after_a_tick(&mut job);
    let said = announcement(&job, &third);
    assert!(!said.contains("earlier image"), "{said}\n{}", job.diagnostics());
    assert!(job.stderr().contains("is self-contained"), "{}", job.diagnostics());
    // Replaced by another file of the same length: not taken from either.
    let len3 = len(&third);
    std::fs::remove_file(&third).unwrap();
    std::fs::write(&third, vec![0u8; len3 as usize]).unwrap();
    let fourth = checkpoint_after_a_tick(&mut job);
    assert!(!announcement(&job, &fourth).contains("earlier image"), "{}", job.diagnostics());
    let fifth = checkpoint_after_a_tick(&mut job);
    assert!(announcement(&job, &fifth).contains("earlier image"), "{}", job.diagnostics());
    job.kill9();
    std::fs::remove_file(&first).unwrap();
    std::fs::remove_file(&third).unwrap();
    restart_to_the_end(&fifth, &dir, &reference, "incr-removed");
}

/// The dirty tracker: each incremental checkpoint after the first reads
/// only the pages written since, and takes the rest from the previous
/// image. `examples/dirtymix.c` changes its memory in every way the
/// tracker must see (stores, read(2) into memory, MADV_DONTNEED,
/// unmapped and mapped again, moved by mremap, sbrk, a thread's stack,
/// mprotect, a forked child's writes to its copy): one change missed and
/// every later checksum differs.
/// Every kind of change, seen by the tracker: with snapshots (the
/// program's memory is small, and it changes too much of it for copy-out
/// to be tried), and again with copy-out forced at every checkpoint.
#[test]
fn the_dirty_tracker_sees_every_kind_of_change() {
    let args = ["400", "30"];
    let prog = Program::c("dirtymix");
    for (name, copy_out) in [("incr-dirtymix", "auto"), ("incr-dirtymix-copy-out", "always")] {
        let dir = TestDir::new(name);
        let reference = prog.run_bare(&args, &dir.bare);
        let env = format!("CKRUN_TEST_COPY_OUT={copy_out}");
        let mut job = Ckrun::launch_via(&["env", &env], &prog, &args, &dir.work, &dir.img, &[]);
        let images: Vec<PathBuf> = (0..8).map(|_| checkpoint_after_a_tick(&mut job)).collect();
        let said: Vec<String> = images.iter().map(|i| announcement(&job, i)).collect();
        let tracked = said[1..].iter().filter(|l| l.contains("known unchanged by the dirty tracker")).count();
        assert!(tracked >= 6, "{name}: the tracker vouched for pages\n{}", job.diagnostics());
        let copied = said.iter().filter(|l| l.contains("copied out while stopped")).count();
        match copy_out {
            "always" => assert!(copied >= 5, "{name}: {copied} of 8 copied out\n{said:#?}"),
            _ => assert_eq!(copied, 0, "{name}: {said:#?}"),
        }
        job.kill9();
        restart_to_the_end(&images[7], &dir, &reference, &format!("{name}, 8th image"));
        restart_to_the_end(&images[4], &dir, &reference, &format!("{name}, 5th image"));
    }
}

/// Copy-out declined once stopped (`CKRUN_TEST_FAIL=copy-out:N`, as when
/// more was written than it takes): the tree goes on, the checkpoint is
/// taken again at once with snapshots, and the chain goes on from it;
/// with `CKRUN_NO_COPY_OUT=1` every checkpoint forks snapshots. Both
/// restart to the bare run's output.
#[test]
fn a_declined_or_disabled_copy_out_takes_snapshots() {
    for (name, env) in [("incr-declined", "CKRUN_TEST_FAIL=copy-out:2"), ("incr-no-copy-out", "CKRUN_NO_COPY_OUT=1")] {
        let (prog, dir, reference) = setup(name, &ARGS_TEN);
        let mut job = Ckrun::launch_via(&["env", env], &prog, &ARGS_TEN, &dir.work, &dir.img, &[]);
        let images: Vec<PathBuf> = (0..6).map(|_| checkpoint_after_a_tick(&mut job)).collect();
        let said: Vec<String> = images.iter().map(|i| announcement(&job, i)).collect();
        assert!(said[1..].iter().all(|l| l.contains("known unchanged by the dirty tracker")), "{said:#?}");
        let copied: Vec<bool> = said.iter().map(|l| l.contains("copied out while stopped")).collect();
        if env.starts_with("CKRUN_NO_COPY_OUT") {
            assert!(copied.iter().all(|c| !c), "{name}: {said:#?}");
        } else {
            // Tried from the third on; the second try declined.
            assert_eq!(copied, [false, false, true, false, true, true], "{name}: {said:#?}\n{}", job.diagnostics());
        }
        job.kill9();
        restart_to_the_end(&images[5], &dir, &reference, name);
        restart_to_the_end(&images[3], &dir, &reference, name);
    }
}

/// Without the tracker (`CKRUN_NO_DIRTY_TRACKING=1`, as where userfaultfd
/// is not allowed): content dedup alone, every page read and hashed; the
/// images are incremental all the same, and restart as well.
#[test]
fn without_the_tracker_content_dedup_alone_makes_incremental_images() {
    let (prog, dir, reference) = setup("incr-untracked", &ARGS);
    let mut job = Ckrun::launch_via(&["env", "CKRUN_NO_DIRTY_TRACKING=1"], &prog, &ARGS, &dir.work, &dir.img, &[]);
    let images: Vec<PathBuf> = (0..5).map(|_| checkpoint_after_a_tick(&mut job)).collect();
    for img in &images[1..] {
        let said = announcement(&job, img);
        assert!(said.contains("earlier image(s)") && !said.contains("dirty tracker"), "{said}\n{}", job.diagnostics());
    }
    job.kill9();
    restart_to_the_end(&images[4], &dir, &reference, "incr-untracked");
}

/// `MADV_WIPEONFORK` memory comes back zeroed (as a snapshot, a fork,
/// reads it), all of it, whether the image was copied out of the stopped
/// program or read from a snapshot: `examples/wipefork.c` writes one of
/// its four such pages per tick and prints what it finds in all four, so
/// a restart that zeroed some and not others shows a line with both (the
/// page copied out as written beside the others taken from the base).
#[test]
fn wipe_on_fork_memory_comes_back_zeroed_with_copy_out_or_snapshots() {
    // Fewer than 256 ticks: the pages hold the tick as a byte.
    let args = ["200", "30"];
    let prog = Program::c("wipefork");
    for (name, env) in
        [("incr-wipefork-copy-out", "CKRUN_TEST_COPY_OUT=always"), ("incr-wipefork", "CKRUN_NO_COPY_OUT=1")]
    {
        let dir = TestDir::new(name);
        let mut job = Ckrun::launch_via(&["env", env], &prog, &args, &dir.work, &dir.img, &[]);
        job.wait_for_tick(5);
        let images: Vec<PathBuf> = (0..3).map(|_| checkpoint_after_a_tick(&mut job)).collect();
        let said = announcement(&job, &images[2]);
        assert_eq!(said.contains("copied out while stopped"), env.contains("always"), "{name}: {said}");
        job.kill9();
        let mut job = Ckrun::restart(&images[2], &dir.work, &[]);
        assert_eq!(job.wait(TIMEOUT), 0, "{name}\n{}", job.diagnostics());
        let out = String::from_utf8_lossy(&job.output()).into_owned();
        let seen: Vec<Vec<u32>> = out
            .lines()
            .filter(|l| l.starts_with("tick ") && ckrun_suite::tick_of(l).is_some_and(|t| t >= 5))
            .map(|l| l.split_whitespace().skip(3).map(|v| v.parse().unwrap()).collect())
            .collect();
        // Uninterrupted, no line from tick 5 on finds a zero; the first
        // that does is the restart's, and it must find all four zeroed.
        let restarted = seen.iter().find(|v| v.contains(&0));
        assert_eq!(restarted, Some(&vec![0; 4]), "{name}: all zeroed at the restart\n{out}");
    }
}
