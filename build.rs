//! Compiles the C example programs in `examples/` (and the test-only
//! programs in `tests/progs/`, such as the security tests' attacker) for
//! the end-to-end tests.
//!
//! Every `examples/*.c` and `tests/progs/*.c` becomes
//! `$OUT_DIR/examples/<stem>`, built with
//! `cc -O1 -g -Wall -pthread`. Two naming rules add flags:
//! - `*omp*.c` also gets `-fopenmp` (multi-threaded examples);
//! - `static_*.c` is linked `-static`, to check that ckrun refuses programs
//!   its `LD_PRELOAD` agent cannot enter.
//!
//! The tests find the binaries through `env!("OUT_DIR")` (see `src/lib.rs`).
//! A compiler error fails the build loudly: a test that silently runs a
//! stale or missing example would prove nothing. The compiler is `$CC` when
//! set, else `cc`.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let bin_dir = out_dir.join("examples");
    fs::create_dir_all(&bin_dir).expect("create $OUT_DIR/examples");

    // Re-run when a file is added to or removed from the directories, and
    // when any C source changes (listed one by one below).
    println!("cargo:rerun-if-env-changed=CC");
    let mut sources: Vec<PathBuf> = Vec::new();
    for dir in ["examples", "tests/progs"] {
        println!("cargo:rerun-if-changed={dir}");
        let src_dir = manifest_dir.join(dir);
        sources.extend(
            fs::read_dir(&src_dir)
                .unwrap_or_else(|e| panic!("read {}: {e}", src_dir.display()))
                .map(|entry| entry.expect("read directory entry").path())
                .filter(|p| p.extension().is_some_and(|ext| ext == "c")),
        );
    }
    sources.sort();

    let cc = env::var("CC").unwrap_or_else(|_| "cc".to_string());
    for src in &sources {
        println!("cargo:rerun-if-changed={}", src.display());
        compile(&cc, src, &bin_dir);
    }
}

/// Compiles one example; panics with the compiler's output on failure.
fn compile(cc: &str, src: &Path, bin_dir: &Path) {
    let stem =
        src.file_stem().and_then(|s| s.to_str()).unwrap_or_else(|| panic!("non-UTF-8 example name: {}", src.display()));
    let out = bin_dir.join(stem);

    let mut cmd = Command::new(cc);
    cmd.args(["-O1", "-g", "-Wall", "-pthread"]);
    if stem.contains("omp") {
        cmd.arg("-fopenmp");
    }
    if stem.starts_with("static_") {
        cmd.arg("-static");
    }
    cmd.arg("-o").arg(&out).arg(src);

    let output =
        cmd.output().unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}` (install gcc or set CC): {e}"));
    // Warnings are worth seeing even when the build succeeds.
    for line in String::from_utf8_lossy(&output.stderr).lines() {
        println!("cargo:warning={stem}.c: {line}");
    }
    if !output.status.success() {
        panic!(
            "compiling {} failed ({}): {:?}\n{}",
            src.display(),
            output.status,
            cmd,
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
