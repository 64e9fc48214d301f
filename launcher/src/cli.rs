//! Command-line parsing. Hand-written: ckrun's options all come before the
//! program, everything after the program name belongs to the program, and
//! start-up must stay in the low milliseconds.

use crate::error::CkError;
use std::ffi::OsString;
use std::path::PathBuf;

/// Options that shape checkpoints; stored in every image so that a restart
/// keeps them unless its own command line says otherwise.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    pub dir: Option<PathBuf>,
    pub trigger: Option<i32>,
    pub frozen: Option<bool>,
    /// Refuse to checkpoint an fd that cannot be restored.
    pub strict: bool,
    /// With --restart: a PID in use is an error (no PID namespace).
    pub no_pidns: bool,
    /// Internal: this ckrun runs in the PID namespace a restart made.
    pub inside_namespace: bool,
    /// Internal, with `inside_namespace`: ckrun's fd of the terminal the
    /// ckrun the user started runs in the foreground of.
    pub terminal: Option<i32>,
    /// Seal images with (and, at a restart, require a seal made with)
    /// the key in this file.
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Run {
        program: OsString,
        args: Vec<OsString>,
        opts: Overrides,
    },
    Restart {
        image: PathBuf,
        opts: Overrides,
        dry_run: bool,
    },
    Inspect {
        image: PathBuf,
        json: bool,
        key_file: Option<PathBuf>,
    },
    /// Internal: the process that becomes process `index` of the image.
    RestoreChild {
        /// The image, open (the coordinator checked it).
        image_fd: i32,
        index: usize,
        socket: String,
    },
    Help,
    Version,
}

pub const HELP: &str = "\
ckrun: transparent checkpoint/restart for unmodified, dynamically linked programs

usage:
  ckrun [OPTIONS] PROGRAM [ARGS...]        run PROGRAM under checkpoint control
  ckrun --restart IMAGE|DIR [OPTIONS]      continue from an image (DIR: its newest image)
  ckrun --inspect IMAGE [--json]           show what an image holds

Send the trigger signal (SIGUSR2) to ckrun or to the program to write an image
DIR/PROGRAM.PID.N.ckimg; the program keeps running.

options:
  --dir DIR        where images go (default: the current directory)
  --signal SIG     trigger signal instead of SIGUSR2 (name or number)
  --no-fork        keep the program stopped while its memory is copied,
                   instead of copying a copy-on-write snapshot
  --strict         fail a checkpoint when an fd cannot be restored
                   (default: it comes back closed, with a warning)
  --dry-run        with --restart: print the restore plan, run nothing
  --no-pidns       with --restart: fail if a PID or TID of the image is in use
                   or above pid_max (default: restart in a new PID namespace)
  --key-file FILE  seal images with the secret in FILE (mode 0600); with
                   --restart or --inspect: refuse an image without a valid
                   seal (default: $CKRUN_KEY_FILE)
  --json           with --inspect: machine-readable output
  -h, --help       this text
  -V, --version    ckrun's version

exit status: the program's own (128+N if a signal N killed it), or
  2 usage, 3 bad image, 4 incompatible machine, 5 environment, 1 other failure.";

pub fn parse(argv: Vec<OsString>) -> Result<Command, CkError> {
    let mut it = argv.into_iter().skip(1).peekable();
    let mut opts = Overrides::default();
    let mut restart: Option<PathBuf> = None;
    let mut inspect: Option<PathBuf> = None;
    let mut json = false;
    let mut dry_run = false;
    let usage = |m: String| CkError::Usage(m);
    while let Some(a) = it.peek() {
        let s = a.to_string_lossy().into_owned();
        if !s.starts_with('-') || s == "-" {
            break;
        }
        it.next();
        let mut value = |name: &str| it.next().ok_or_else(|| usage(format!("{name} needs a value")));
        match s.as_str() {
            "--" => break,
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--dir" => opts.dir = Some(PathBuf::from(value("--dir")?)),
            "--key-file" => opts.key_file = Some(PathBuf::from(value("--key-file")?)),
            "--signal" => {
                let v = value("--signal")?;
                opts.trigger =
                    Some(parse_signal(&v.to_string_lossy()).ok_or_else(|| {
                        usage(format!("--signal: unknown or reserved signal {:?}", v.to_string_lossy()))
                    })?)
            }
            "--no-fork" => opts.frozen = Some(true),
            "--strict" => opts.strict = true,
            "--no-pidns" => opts.no_pidns = true,
            "--fork" => opts.frozen = Some(false),
            "--restart" => restart = Some(PathBuf::from(value("--restart")?)),
            "--inspect" => inspect = Some(PathBuf::from(value("--inspect")?)),
            "--json" => json = true,
            "--dry-run" => dry_run = true,
            "--restore-child" => {
                let number = |v: OsString, what: &str| {
                    v.to_string_lossy().parse().map_err(|_| usage(format!("{what}: not a number")))
                };
                let image_fd = number(value("image fd")?, "image fd")?;
                let index = number(value("index")?, "index")? as usize;
                let socket = value("socket")?.to_string_lossy().into_owned();
                return Ok(Command::RestoreChild { image_fd, index, socket });
            }
            _ => return Err(usage(format!("unknown option {s}"))),
        }
    }
    let rest: Vec<OsString> = it.collect();
    match (restart, inspect) {
        (Some(_), Some(_)) => Err(usage("--restart and --inspect exclude each other".into())),
        (Some(image), None) => {
            if !rest.is_empty() {
                return Err(usage("--restart takes no program".into()));
            }
            Ok(Command::Restart { image, opts, dry_run })
        }
        (None, Some(image)) => {
            if !rest.is_empty() {
                return Err(usage("--inspect takes no program".into()));
            }
            Ok(Command::Inspect { image, json, key_file: opts.key_file })
        }
        (None, None) => {
            if dry_run || json {
                return Err(usage("--dry-run and --json go with --restart and --inspect".into()));
            }
            let mut rest = rest.into_iter();
            let program = rest.next().ok_or_else(|| usage("no program given".into()))?;
            Ok(Command::Run { program, args: rest.collect(), opts })
        }
    }
}

/// A signal by number or name (`USR1`, `SIGUSR1`, `RTMIN+3`); refuses
/// SIGKILL, SIGSTOP and ckrun's reserved suspend signal.
pub fn parse_signal(s: &str) -> Option<i32> {
    let name = s.trim().to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    let n = if let Ok(n) = name.parse::<i32>() {
        n
    } else if let Some(off) = name.strip_prefix("RTMIN+") {
        libc::SIGRTMIN() + off.parse::<i32>().ok()?
    } else {
        match name {
            "HUP" => libc::SIGHUP,
            "INT" => libc::SIGINT,
            "QUIT" => libc::SIGQUIT,
            "USR1" => libc::SIGUSR1,
            "USR2" => libc::SIGUSR2,
            "ALRM" => libc::SIGALRM,
            "TERM" => libc::SIGTERM,
            "URG" => libc::SIGURG,
            "XCPU" => libc::SIGXCPU,
            "VTALRM" => libc::SIGVTALRM,
            "PWR" => libc::SIGPWR,
            "RTMIN" => libc::SIGRTMIN(),
            _ => return None,
        }
    };
    let reserved = [libc::SIGKILL, libc::SIGSTOP, ckrun_proto::SUSPEND_SIGNAL];
    ((1..=64).contains(&n) && !reserved.contains(&n)).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Command, CkError> {
        parse(std::iter::once("ckrun").chain(args.iter().copied()).map(OsString::from).collect())
    }

    #[test]
    fn program_args_are_left_alone() {
        let c = p(&["--dir", "/x", "prog", "--dir", "-y"]).unwrap();
        assert_eq!(
            c,
            Command::Run {
                program: "prog".into(),
                args: vec!["--dir".into(), "-y".into()],
                opts: Overrides { dir: Some("/x".into()), ..Default::default() }
            }
        );
    }

    #[test]
    fn restart_and_inspect() {
        assert!(matches!(
            p(&["--restart", "a.ckimg", "--no-fork"]).unwrap(),
            Command::Restart { opts: Overrides { frozen: Some(true), .. }, .. }
        ));
        assert!(matches!(p(&["--inspect", "a", "--json"]).unwrap(), Command::Inspect { json: true, .. }));
    }

    #[test]
    fn mistakes_are_usage_errors() {
        for bad in [&["--bogus"][..], &[], &["--dir"], &["--signal", "KILL", "x"], &["--restart", "a", "prog"]] {
            assert!(matches!(p(bad), Err(CkError::Usage(_))), "{bad:?}");
        }
    }

    #[test]
    fn signal_names() {
        assert_eq!(parse_signal("USR1"), Some(10));
        assert_eq!(parse_signal("sigusr2"), Some(12));
        assert_eq!(parse_signal("34"), Some(34));
        assert_eq!(parse_signal("63"), None);
        assert_eq!(parse_signal("nope"), None);
    }
}
