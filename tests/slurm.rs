//! ckrun under a real Slurm (issue 12): `examples/slurm/job.sbatch`
//! submitted to a one-node cluster that each test starts for itself
//! (munged, slurmctld and slurmd from Debian's packages, installed by
//! `scripts/setup.sh`), on 127.0.0.1 with ports, key, sockets, state and
//! logs of its own, so that the two tests run side by side and never meet
//! another run's cluster. Every daemon, and every process of its jobs
//! (found by the cluster's own `SLURM_CONF` in their environment), is
//! killed when the test ends, passes or fails ([`Cluster`]'s `Drop`).
//!
//! - `time_limits_checkpoint_requeue_and_resume`: a 150 s computation
//!   under a 1-minute time limit: the warning signal (`--signal=B:USR1`)
//!   makes ckrun checkpoint and exit 85, the script requeues, the next run
//!   resumes; at least three runs, output equal to a bare run's.
//! - `preemption_checkpoints_requeues_and_resumes`: the job is preempted
//!   twice by a job of a higher partition (`preempt_send_user_signal`,
//!   a grace time): it checkpoints on the signal and resumes each time.
//!
//! Both print what they measured: the time from Slurm's warning signal
//! (slurmctld's log) to the durable image (its ctime: the `linkat` that
//! names it), and from the requeue to the job running again.
//!
//! Synchronised on job states (`scontrol show job`), on files appearing and
//! on the program's output, never on sleeps. Run alone with
//! `cargo test --test slurm` (after `cargo build --workspace --all-targets`).

use ckrun_suite::{assert_same_output, bin_dir, sys, Program, TestDir};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How often job states, outputs and images are looked at.
const POLL: Duration = Duration::from_millis(200);
/// For a daemon to come up, a job to change state: generous (two busy cores).
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

/// The counter example's ticks are 20 ms apart: 7500 take 150 s, so that
/// under a 1-minute limit (a warning 15-45 s before it) the job needs at
/// least three runs.
const TIME_LIMIT_TICKS: &str = "7500";
/// 50 s: time for two preemptions and the resumes after them.
const PREEMPT_TICKS: &str = "2500";

/// A Slurm program: from PATH, or from /usr/sbin (not on every user's PATH).
fn tool(name: &str) -> PathBuf {
    let dirs = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default();
    dirs.into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not installed: run scripts/setup.sh (Slurm and munge from Debian)"))
}

/// A port free on 127.0.0.1 now (the kernel's choice, so that two runs at
/// once get different ones).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// A `[YYYY-MM-DDTHH:MM:SS.mmm]` log time (UTC: the daemons run with
/// TZ=UTC) in milliseconds since the epoch.
fn log_time_ms(line: &str) -> Option<i64> {
    let t = line.strip_prefix('[')?.get(..23)?;
    let num = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let days = era * 146097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719468;
    let ms = num(11..13)? * 3_600_000 + num(14..16)? * 60_000 + num(17..19)? * 1000 + num(20..23)?;
    Some(days * 86_400_000 + ms)
}

/// One job as `scontrol show job -o` tells it.
#[derive(Debug, Default)]
struct JobInfo {
    state: String,
    restarts: u32,
    exit_code: String,
}

/// A one-node cluster of its own; its `Drop` ends it and everything it ran.
struct Cluster {
    dir: PathBuf,
    conf: PathBuf,
    daemons: Vec<(&'static str, Child)>,
}

impl Cluster {
    /// Starts munged, slurmctld and slurmd with a slurm.conf in `dir`
    /// ending with `partitions` (and any other lines a test needs).
    fn start(dir: &Path, name: &str, partitions: &str) -> Cluster {
        assert_eq!(effective_uid(), 0, "the Slurm tests run slurmd, which must be root");
        let dir = dir.join("cluster");
        let munge = dir.join("munge");
        for d in ["state", "spool", "log", "munge"] {
            fs::create_dir_all(dir.join(d)).unwrap();
        }
        // munged wants its socket's directory open to all, its key to itself.
        fs::set_permissions(&munge, fs::Permissions::from_mode(0o755)).unwrap();
        let mut key = vec![0u8; 1024];
        std::io::Read::read_exact(&mut fs::File::open("/dev/urandom").unwrap(), &mut key).unwrap();
        fs::write(munge.join("key"), &key).unwrap();
        fs::set_permissions(munge.join("key"), fs::Permissions::from_mode(0o400)).unwrap();
        let socket = munge.join("socket");
        let conf = dir.join("slurm.conf");
        let d = dir.display();
        fs::write(
            &conf,
            format!(
                "# Written by tests/slurm.rs: a one-node cluster on 127.0.0.1 for one test.\n\
                 ClusterName={name}\n\
                 SlurmctldHost=localhost(127.0.0.1)\n\
                 SlurmctldPort={ctld_port}\n\
                 SlurmdPort={slurmd_port}\n\
                 CommunicationParameters=NoCtldInAddrAny\n\
                 SlurmUser=root\n\
                 SlurmdUser=root\n\
                 AuthType=auth/munge\n\
                 CredType=cred/munge\n\
                 # cred_expire: a requeued job may start again 1 s after it (default 120 s; 5 is the least).\n\
                 AuthInfo=socket={socket},cred_expire=5\n\
                 StateSaveLocation={d}/state\n\
                 SlurmdSpoolDir={d}/spool\n\
                 SlurmctldPidFile={d}/slurmctld.pid\n\
                 SlurmdPidFile={d}/slurmd.pid\n\
                 SlurmctldLogFile={d}/log/slurmctld.log\n\
                 SlurmdLogFile={d}/log/slurmd.log\n\
                 # debug: the warning signals sent are logged.\n\
                 SlurmctldDebug=debug\n\
                 SlurmdDebug=info\n\
                 MailProg=/bin/true\n\
                 ProctrackType=proctrack/linuxproc\n\
                 TaskPlugin=task/none\n\
                 JobAcctGatherType=jobacct_gather/none\n\
                 AccountingStorageType=accounting_storage/none\n\
                 JobCompType=jobcomp/none\n\
                 SwitchType=switch/none\n\
                 MpiDefault=none\n\
                 SchedulerType=sched/backfill\n\
                 # A pending job is looked at every 2 s (default 60).\n\
                 SchedulerParameters=sched_interval=2\n\
                 SelectType=select/cons_tres\n\
                 SelectTypeParameters=CR_CPU\n\
                 ReturnToService=2\n\
                 MinJobAge=600\n\
                 NodeName=ck1 NodeHostname=localhost NodeAddr=127.0.0.1 CPUs=1 RealMemory=1000 State=UNKNOWN\n\
                 {partitions}\n",
                socket = socket.display(),
                ctld_port = free_port(),
                slurmd_port = free_port(),
            ),
        )
        .unwrap();
        let mut cluster = Cluster { dir: dir.clone(), conf, daemons: Vec::new() };
        let log = |n: &str| fs::File::create(dir.join("log").join(n)).unwrap();
        let mut munged = cluster.command("munged");
        munged
            .arg("--foreground")
            .arg("--force")
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--key-file={}", munge.join("key").display()))
            .arg(format!("--pid-file={}", munge.join("pid").display()))
            .arg(format!("--log-file={}", munge.join("log").display()))
            .arg(format!("--seed-file={}", munge.join("seed").display()));
        cluster.spawn("munged", munged, log("munged.out"));
        cluster.wait_for("munged's socket", || socket.exists());
        let mut ctld = cluster.command("slurmctld");
        ctld.arg("-D");
        cluster.spawn("slurmctld", ctld, log("slurmctld.out"));
        let mut slurmd = cluster.command("slurmd");
        slurmd.args(["-D", "-N", "ck1"]);
        cluster.spawn("slurmd", slurmd, log("slurmd.out"));
        cluster.wait_for("node ck1 idle", || {
            cluster.output("scontrol", &["show", "node", "-o", "ck1"]).split_whitespace().any(|f| f == "State=IDLE")
        });
        cluster
    }

    /// A Slurm command or daemon of this cluster: its slurm.conf, UTC log
    /// times, ckrun first on PATH (jobs inherit it), nothing of any other
    /// cluster's environment.
    fn command(&self, name: &str) -> Command {
        let mut c = Command::new(tool(name));
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SLURM") {
                c.env_remove(k);
            }
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![bin_dir()];
        dirs.extend(std::env::split_paths(&path));
        c.env("SLURM_CONF", &self.conf)
            .env("TZ", "UTC")
            .env("PATH", std::env::join_paths(dirs).unwrap())
            .stdin(Stdio::null());
        c
    }

    fn spawn(&mut self, name: &'static str, mut cmd: Command, log: fs::File) {
        let err = log.try_clone().unwrap();
        let child = cmd.stdout(log).stderr(err).spawn().unwrap_or_else(|e| panic!("starting {name}: {e}"));
        self.daemons.push((name, child));
    }

    /// Runs a client command to its end; its stdout (stderr goes to the
    /// cluster's log directory).
    fn output(&self, name: &str, args: &[&str]) -> String {
        let err = fs::OpenOptions::new().create(true).append(true).open(self.dir.join("log/clients.err")).unwrap();
        let out = self.command(name).args(args).stderr(err).output().unwrap_or_else(|e| panic!("{name}: {e}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `sbatch --parsable ARGS`: the job's id.
    fn sbatch(&self, args: &[&str]) -> String {
        let id = self.output("sbatch", &[&["--parsable"], args].concat());
        let id = id.trim().split(';').next().unwrap_or("").to_string();
        assert!(id.parse::<u32>().is_ok(), "sbatch {args:?} gave no job id\n{}", self.diagnostics());
        id
    }

    fn job(&self, id: &str) -> JobInfo {
        let line = self.output("scontrol", &["show", "job", "-o", id]);
        let mut info = JobInfo::default();
        for field in line.split_whitespace() {
            if let Some(v) = field.strip_prefix("JobState=") {
                info.state = v.to_string();
            } else if let Some(v) = field.strip_prefix("Restarts=") {
                info.restarts = v.parse().unwrap_or(0);
            } else if let Some(v) = field.strip_prefix("ExitCode=") {
                info.exit_code = v.to_string();
            }
        }
        info
    }

    /// Polls `cond` until it holds; panics after [`STEP_TIMEOUT`].
    fn wait_for(&self, what: &str, cond: impl FnMut() -> bool) {
        self.wait_for_within(what, STEP_TIMEOUT, cond)
    }

    fn wait_for_within(&self, what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !cond() {
            assert!(Instant::now() < deadline, "{what}: not within {timeout:?}\n{}", self.diagnostics());
            std::thread::sleep(POLL);
        }
    }

    fn log(&self, name: &str) -> String {
        fs::read_to_string(self.dir.join("log").join(name)).unwrap_or_default()
    }

    /// What a failure shows: the end of every log, the queue.
    fn diagnostics(&self) -> String {
        let mut s = String::new();
        for name in ["slurmctld.log", "slurmd.log", "munged.out", "slurmctld.out", "slurmd.out", "clients.err"] {
            let text = self.log(name);
            let lines: Vec<&str> = text.lines().collect();
            s += &format!("--- {name} (last 25 lines)\n{}\n", lines[lines.len().saturating_sub(25)..].join("\n"));
        }
        s
    }

    /// The processes started for this cluster that are still there: its
    /// daemons' and jobs' (slurmstepd, batch shells, ckrun, programs), all
    /// of which have its slurm.conf in their environment.
    fn strays(&self) -> Vec<i32> {
        let mark = format!("SLURM_CONF={}", self.conf.display()).into_bytes();
        let me = std::process::id() as i32;
        fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| pid != me)
            .filter(|pid| {
                fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| env.split(|&b| b == 0).any(|v| v == mark))
            })
            .collect()
    }

    /// Kills the daemons and whatever their jobs left; returns what was
    /// still alive after 10 s (nothing, when all went well).
    fn stop(&mut self) -> Vec<i32> {
        for (_, child) in &mut self.daemons {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.daemons.clear();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = self.strays();
            if left.is_empty() || Instant::now() > deadline {
                return left;
            }
            for pid in left {
                // A process of this cluster's own jobs: its SLURM_CONF is ours.
                let _ = sys::send_signal(pid, sys::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Milliseconds since the epoch of each slurmctld log line that holds
    /// `needle`.
    fn log_times(&self, needle: &str) -> Vec<i64> {
        self.log("slurmctld.log").lines().filter(|l| l.contains(needle)).filter_map(log_time_ms).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let left = self.stop();
        if !left.is_empty() {
            eprintln!("slurm: processes of the test cluster {} could not be killed: {left:?}", self.dir.display());
        }
    }
}

/// The effective uid: the owner of /proc/self.
fn effective_uid() -> u32 {
    fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX)
}

/// A program run without ckrun and Slurm, to its end, in a thread: the
/// reference output (the counter takes as long as the job computes).
fn bare_run(prog: &Program, ticks: &str, dir: &Path) -> std::thread::JoinHandle<Vec<u8>> {
    let exe = prog.path().to_path_buf();
    let (ticks, dir) = (ticks.to_string(), dir.to_path_buf());
    std::thread::spawn(move || {
        let out = dir.join("out.txt");
        let status = Command::new(&exe)
            .arg(&ticks)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out).unwrap())
            .status()
            .expect("bare run");
        assert_eq!(status.code(), Some(7), "the counter's bare run");
        fs::read(out).unwrap()
    })
}

/// The images in `dir` as they come and go (`--keep 2` removes the older
/// ones): each one's number and the time it was named (its ctime, set by
/// the `linkat` that makes it durable), in ms since the epoch.
#[derive(Default)]
struct ImagesSeen(BTreeMap<u32, i64>);

impl ImagesSeen {
    fn look(&mut self, dir: &Path) {
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(n) = name.strip_suffix(".ckimg").and_then(|s| s.rsplit('.').next()?.parse::<u32>().ok()) else {
                continue;
            };
            if let Ok(m) = e.metadata() {
                self.0.entry(n).or_insert(m.ctime() * 1000 + m.ctime_nsec() / 1_000_000);
            }
        }
    }
}

/// For each warning signal slurmctld sent the job, the time until the
/// next image was durable; for each requeue, the time until the job was
/// allocated again. Printed, and returned as (warning→image, requeue→run).
fn measure(cluster: &Cluster, job: &str, images: &ImagesSeen, what: &str) -> (Vec<i64>, Vec<i64>) {
    let warnings = cluster.log_times(&format!("warning signal 10 to JobId={job}"));
    let named: Vec<i64> = images.0.values().copied().collect();
    let to_image: Vec<i64> =
        warnings.iter().filter_map(|&w| named.iter().find(|&&t| t >= w - 5).map(|&t| t - w)).collect();
    let requeues = cluster.log_times(&format!("Requeuing JobId={job}"));
    let allocations = cluster.log_times(&format!("sched: Allocate JobId={job} "));
    let to_running: Vec<i64> =
        requeues.iter().filter_map(|&r| allocations.iter().find(|&&a| a >= r).map(|&a| a - r)).collect();
    eprintln!(
        "slurm {what}: warning signal -> durable image: {to_image:?} ms; requeue -> running again: {to_running:?} ms"
    );
    (to_image, to_running)
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

/// Submits `examples/slurm/job.sbatch` running `prog TICKS` in the test's
/// work directory, images under its image directory (`$SCRATCH`), with
/// sbatch options `options` before the script's own; returns the job ID
/// and its output and error files.
fn submit_example(
    cluster: &Cluster,
    dir: &TestDir,
    prog: &Program,
    ticks: &str,
    options: &[&str],
) -> (String, PathBuf, PathBuf) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/slurm/job.sbatch");
    let (out, err) = (dir.work.join("job.out"), dir.work.join("job.err"));
    let placed = [
        format!("--chdir={}", dir.work.display()),
        format!("--output={}", out.display()),
        format!("--error={}", err.display()),
        format!("--export=ALL,SCRATCH={}", dir.img.display()),
    ];
    let mut args: Vec<&str> = options.to_vec();
    args.extend(placed.iter().map(String::as_str));
    args.extend([script.to_str().unwrap(), prog.path().to_str().unwrap(), ticks]);
    (cluster.sbatch(&args), out, err)
}

#[test]
fn time_limits_checkpoint_requeue_and_resume() {
    let dir = TestDir::new("slurm-timelimit");
    let mut cluster =
        Cluster::start(&dir.root, "cktimelimit", "PartitionName=batch Nodes=ck1 Default=YES MaxTime=INFINITE State=UP");
    let prog = Program::c("counter");
    let reference = bare_run(&prog, TIME_LIMIT_TICKS, &dir.bare);
    // 15-45 s before the limit: a run computes 15-45 s.
    let (job, out, err) = submit_example(&cluster, &dir, &prog, TIME_LIMIT_TICKS, &["--time=1", "--signal=B:USR1@15"]);
    let ckpt = dir.img.join("ckpt");
    let mut images = ImagesSeen::default();
    // 150 s of computing, a minute at most per run, seconds per requeue.
    cluster.wait_for_within("the job's end", Duration::from_secs(420), || {
        images.look(&ckpt);
        let state = cluster.job(&job).state;
        !matches!(state.as_str(), "PENDING" | "RUNNING" | "REQUEUED" | "COMPLETING" | "CONFIGURING" | "")
    });
    let info = cluster.job(&job);
    let said = fs::read_to_string(&err).unwrap_or_default();
    let context = format!("{info:?}\n--- job.err\n{said}\n{}", cluster.diagnostics());
    // The counter's own status (7) is the job's: Slurm calls that FAILED.
    assert_eq!(info.exit_code, "7:0", "the program's status at the end\n{context}");
    assert!(info.restarts >= 2, "requeued at least twice\n{context}");
    let stops = count(&said, "ckrun: checkpointed and stopped (exit 85)");
    assert!(stops >= 2 && stops as u32 == info.restarts, "one checkpoint-and-stop per requeue\n{context}");
    assert_eq!(count(&said, "ckrun: resuming from "), stops, "each requeued run resumed\n{context}");
    assert_eq!(count(&said, "ckrun: restarted process "), stops, "{context}");
    assert!(images.0.len() >= 2 && images.0.keys().max() == Some(&(stops as u32)), "images {:?}\n{context}", images.0);
    assert_same_output(&reference.join().unwrap(), &fs::read(&out).unwrap(), "slurm-timelimit");
    let (to_image, to_running) = measure(&cluster, &job, &images, "time limits");
    assert_eq!(to_image.len(), stops, "a warning signal before each image\n{context}");
    assert_eq!(to_running.len(), stops, "{context}");
    let left = cluster.stop();
    assert!(left.is_empty(), "processes of the cluster still there: {left:?}");
}

#[test]
fn preemption_checkpoints_requeues_and_resumes() {
    let dir = TestDir::new("slurm-preempt");
    // The job's partition is preempted by "high"'s jobs: requeued after a
    // grace time, the user's signal sent when it starts.
    let mut cluster = Cluster::start(
        &dir.root,
        "ckpreempt",
        "PreemptType=preempt/partition_prio\n\
         PreemptMode=REQUEUE\n\
         SlurmctldParameters=preempt_send_user_signal\n\
         PartitionName=low Nodes=ck1 Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=60\n\
         PartitionName=high Nodes=ck1 MaxTime=INFINITE State=UP PriorityTier=2",
    );
    let prog = Program::c("counter");
    let reference = bare_run(&prog, PREEMPT_TICKS, &dir.bare);
    // The script's own time limit (4 h) and warning (300 s) stay.
    let (job, out, err) = submit_example(&cluster, &dir, &prog, PREEMPT_TICKS, &[]);
    let ckpt = dir.img.join("ckpt");
    let mut images = ImagesSeen::default();
    let lines = || fs::read(&out).map_or(0, |o| o.iter().filter(|&&b| b == b'\n').count());
    for round in 1..=2 {
        // Running (again), and computing: 100 ticks more than before.
        let before = lines();
        cluster.wait_for("the job running and computing", || {
            cluster.job(&job).state == "RUNNING" && lines() >= before + 100
        });
        let preemptor = cluster.sbatch(&[
            "--partition=high",
            &format!("--chdir={}", dir.work.display()),
            "--output=/dev/null",
            "--wrap=true",
        ]);
        cluster.wait_for("the preemptor's end", || {
            images.look(&ckpt);
            cluster.job(&preemptor).state == "COMPLETED"
        });
        assert_eq!(cluster.job(&job).restarts, round, "requeued by the preemption\n{}", cluster.diagnostics());
    }
    cluster.wait_for("the job's end", || {
        images.look(&ckpt);
        !matches!(cluster.job(&job).state.as_str(), "PENDING" | "RUNNING" | "REQUEUED" | "COMPLETING" | "")
    });
    let info = cluster.job(&job);
    let said = fs::read_to_string(&err).unwrap_or_default();
    let context = format!("{info:?}\n--- job.err\n{said}\n{}", cluster.diagnostics());
    assert_eq!(info.exit_code, "7:0", "the program's status at the end\n{context}");
    assert_eq!(info.restarts, 2, "{context}");
    assert_eq!(count(&said, "ckrun: checkpointed and stopped (exit 85)"), 2, "{context}");
    assert_eq!(count(&said, "ckrun: resuming from "), 2, "{context}");
    assert_same_output(&reference.join().unwrap(), &fs::read(&out).unwrap(), "slurm-preempt");
    let (to_image, to_running) = measure(&cluster, &job, &images, "preemption");
    assert_eq!((to_image.len(), to_running.len()), (2, 2), "{context}");
    let left = cluster.stop();
    assert!(left.is_empty(), "processes of the cluster still there: {left:?}");
}
