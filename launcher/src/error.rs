//! ckrun's error kinds, each with its exit code, so that scripts can tell
//! a bad image from a busy PID without parsing messages.

use std::path::PathBuf;
use thiserror::Error;

/// Exit code of a command-line mistake.
pub const EXIT_USAGE: i32 = 2;
/// Exit code of an unreadable, corrupted, truncated or foreign image.
pub const EXIT_BAD_IMAGE: i32 = 3;
/// Exit code of an image this machine cannot run (kernel, CPU).
pub const EXIT_INCOMPATIBLE: i32 = 4;
/// Exit code of an environment problem (PID taken, file missing, static binary...).
pub const EXIT_ENVIRONMENT: i32 = 5;
/// Exit code of any other failure.
pub const EXIT_FAILURE: i32 = 1;

#[derive(Debug, Error)]
pub enum CkError {
    #[error("{0}\nusage: ckrun [--dir DIR] [--resume] [--interval DUR] [--keep N] [--stop-signal SIG] [OPTIONS] PROGRAM [ARGS...]\n       ckrun --restart IMAGE|DIR [--dir DIR] [OPTIONS] [--dry-run]\n       ckrun --inspect IMAGE [--json]\n       ckrun --flatten IMAGE\n(ckrun --help for more)")]
    Usage(String),
    #[error("{path}: {why}")]
    BadImage { path: PathBuf, why: String },
    #[error("{0}")]
    Incompatible(String),
    #[error("{0}")]
    Environment(String),
}

impl CkError {
    pub fn bad_image(path: impl Into<PathBuf>, why: impl Into<String>) -> Self {
        CkError::BadImage { path: path.into(), why: why.into() }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            CkError::Usage(_) => EXIT_USAGE,
            CkError::BadImage { .. } => EXIT_BAD_IMAGE,
            CkError::Incompatible(_) => EXIT_INCOMPATIBLE,
            CkError::Environment(_) => EXIT_ENVIRONMENT,
        }
    }
}

/// The exit code for any error chain: the first [`CkError`] in it decides.
pub fn exit_code_of(e: &anyhow::Error) -> i32 {
    e.chain().find_map(|c| c.downcast_ref::<CkError>()).map_or(EXIT_FAILURE, CkError::exit_code)
}
