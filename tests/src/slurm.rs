//! A single-node Slurm cluster, started and stopped by the tests that use it: the ground the
//! Slurm executor (issue 18) is tested on. Debian's `slurm-wlm` 22.05 and `munge`, installed by
//! `.ci/run`; everything else lives in a temporary folder: the munge key and socket, one
//! `slurm.conf` and `gres.conf` (clients find them through `SLURM_CONF`), the state and spool
//! folders, the logs, and free ports, so nothing of the host's own Slurm is read or touched.
//!
//! The node has the host's CPUs and memory and one GPU gres that is no GPU
//! (`gpu:fake:1`, `File=/dev/null`), so two jobs that each ask for a GPU compete for it. As the
//! daemons run as root here: `SlurmUser=root`, `proctrack/linuxproc` and `task/none` (no
//! cgroups in a container), no accounting (`sacct` has nothing; `squeue` and `scontrol` do).
//!
//! [`Cluster::start`] waits until the node takes jobs; dropping the cluster cancels every job
//! and stops slurmd, slurmctld and munged, waiting for each to exit.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A running single-node cluster; stopped when dropped.
pub struct Cluster {
    dir: tempfile::TempDir,
    conf: PathBuf,
    /// In start order; a mutex so that waiting (`&self`) can look at them.
    daemons: std::sync::Mutex<Vec<(&'static str, Child)>>,
}

/// Why no cluster can be started here, or `None` where one can: the Slurm and munge programs,
/// and root (the daemons switch users only as root).
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: slurmd runs jobs as their users only as root".into());
    }
    for exe in [
        "slurmctld",
        "slurmd",
        "munged",
        "sbatch",
        "squeue",
        "scancel",
    ] {
        let found = ["/usr/sbin", "/usr/bin"]
            .iter()
            .any(|d| Path::new(d).join(exe).is_file());
        if !found {
            return Some(format!(
                "{exe} is not installed (apt-get install slurm-wlm munge)"
            ));
        }
    }
    None
}

/// MemTotal of /proc/meminfo, in MiB.
fn host_memory_mib() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").expect("/proc/meminfo");
    let kib = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("MemTotal in /proc/meminfo");
    kib / 1024
}

/// A TCP port nobody listens on now.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a port");
    l.local_addr().unwrap().port()
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Cluster {
    /// Starts munged, slurmctld and slurmd on a fresh configuration and waits (up to a minute)
    /// until the node is idle. Panics, with the daemons' logs, when it cannot.
    pub fn start() -> Cluster {
        if let Some(why) = unavailable() {
            panic!("no Slurm cluster here: {why}");
        }
        let dir = tempfile::Builder::new()
            .prefix("orpod-slurm")
            .tempdir()
            .unwrap();
        let root = dir.path();
        let munge = root.join("munge");
        std::fs::create_dir(&munge).unwrap();
        // munged runs as its own user, reads a key only it can read, and refuses a socket
        // folder others may write to.
        let mut key = vec![0u8; 1024];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut key))
            .expect("reading /dev/urandom");
        std::fs::write(munge.join("munge.key"), &key).unwrap();
        run(Command::new("chown")
            .args(["-R", "munge:munge"])
            .arg(&munge));
        run(Command::new("chmod").arg("0700").arg(&munge));
        run(Command::new("chmod")
            .arg("0400")
            .arg(munge.join("munge.key")));
        let socket = munge.join("munge.socket");

        let host = String::from_utf8(run(Command::new("hostname").arg("-s")).stdout)
            .unwrap()
            .trim()
            .to_string();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mem_mib = host_memory_mib() * 9 / 10;
        for sub in ["state", "spool", "log"] {
            std::fs::create_dir(root.join(sub)).unwrap();
        }
        let conf = root.join("slurm.conf");
        let r = root.display();
        std::fs::write(
            &conf,
            format!(
                "ClusterName=orpodtest\n\
                 SlurmctldHost={host}(127.0.0.1)\n\
                 SlurmctldPort={ctld}\n\
                 SlurmdPort={slurmd}\n\
                 SlurmUser=root\n\
                 AuthType=auth/munge\n\
                 CredType=cred/munge\n\
                 AuthInfo=socket={socket}\n\
                 StateSaveLocation={r}/state\n\
                 SlurmdSpoolDir={r}/spool\n\
                 SlurmctldPidFile={r}/slurmctld.pid\n\
                 SlurmdPidFile={r}/slurmd.pid\n\
                 SlurmctldLogFile={r}/log/slurmctld.log\n\
                 SlurmdLogFile={r}/log/slurmd.log\n\
                 ProctrackType=proctrack/linuxproc\n\
                 TaskPlugin=task/none\n\
                 JobAcctGatherType=jobacct_gather/none\n\
                 AccountingStorageType=accounting_storage/none\n\
                 SchedulerType=sched/backfill\n\
                 SelectType=select/cons_tres\n\
                 SelectTypeParameters=CR_Core_Memory\n\
                 ReturnToService=2\n\
                 GresTypes=gpu\n\
                 NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mib} \
                 Gres=gpu:fake:1 State=UNKNOWN\n\
                 PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP\n",
                ctld = free_port(),
                slurmd = free_port(),
                socket = socket.display(),
            ),
        )
        .unwrap();
        std::fs::write(
            root.join("gres.conf"),
            "Name=gpu Type=fake File=/dev/null\n",
        )
        .unwrap();

        let cluster = Cluster {
            conf: conf.clone(),
            daemons: Default::default(),
            dir,
        };
        let root = cluster.dir.path().to_path_buf();
        let log = |name: &str| std::fs::File::create(root.join("log").join(name)).unwrap();
        // In the foreground (-F / -D), so that dropping the cluster can wait for each.
        let munged = Command::new("runuser")
            .args(["-u", "munge", "--", "munged", "--foreground", "--force"])
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--key-file={}", munge.join("munge.key").display()))
            .arg(format!("--pid-file={}", munge.join("munged.pid").display()))
            .arg(format!("--log-file={}", munge.join("munged.log").display()))
            .arg(format!(
                "--seed-file={}",
                munge.join("munged.seed").display()
            ))
            .stdout(Stdio::null())
            .stderr(log("munged.err"))
            .spawn()
            .expect("starting munged");
        cluster.daemons().push(("munged", munged));
        cluster.wait_for("munged's socket", || socket.exists());
        for (name, exe) in [("slurmctld", "slurmctld"), ("slurmd", "slurmd")] {
            let child = Command::new(exe)
                .arg("-D")
                .arg("-f")
                .arg(&conf)
                .env("SLURM_CONF", &conf)
                .stdout(Stdio::null())
                .stderr(log(&format!("{name}.err")))
                .spawn()
                .unwrap_or_else(|e| panic!("starting {exe}: {e}"));
            cluster.daemons().push((name, child));
        }
        cluster.wait_for("the node to take jobs", || {
            let out = cluster.command("sinfo").args(["-h", "-o", "%t"]).output();
            out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "idle")
        });
        cluster
    }

    fn daemons(&self) -> std::sync::MutexGuard<'_, Vec<(&'static str, Child)>> {
        self.daemons.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A Slurm client command (`sbatch`, `squeue`, ...) talking to this cluster.
    pub fn command(&self, exe: &str) -> Command {
        let mut cmd = Command::new(exe);
        cmd.env("SLURM_CONF", &self.conf);
        cmd
    }

    /// Runs a client command; panics with its output when it fails.
    pub fn run(&self, exe: &str, args: &[&str]) -> String {
        String::from_utf8(run(self.command(exe).args(args)).stdout).unwrap()
    }

    /// The cluster's folder (configuration, state, logs); jobs may write under it.
    /// The cluster's slurm.conf (what `SLURM_CONF` names for its commands).
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// The ids of the Slurm jobs named `name` that are pending or running.
    pub fn jobs_named(&self, name: &str) -> Vec<u64> {
        self.run("squeue", &["-h", "-n", name, "-o", "%i"])
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The daemons' logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for name in [
            "slurmctld.log",
            "slurmd.log",
            "slurmctld.err",
            "slurmd.err",
            "munged.err",
        ] {
            let text = std::fs::read_to_string(self.dir().join("log").join(name));
            out += &format!("--- {name}\n{}\n", text.unwrap_or_default());
        }
        out
    }

    /// Polls `ready` every 200 ms for up to a minute; panics with the logs after that, or when
    /// a daemon has exited.
    pub fn wait_for(&self, what: &str, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready() {
            let exited = self.daemons().iter_mut().find_map(|(name, child)| {
                let status = child.try_wait().ok().flatten()?;
                Some(format!("{name} exited ({status})"))
            });
            if let Some(exited) = exited {
                panic!("{exited} waiting for {what}:\n{}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "waited a minute for {what}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.command("scancel").args(["--user", "root"]).output();
        // slurmd first (it ends the jobs' steps), munged last (the others authenticate with it).
        for (_, child) in self.daemons().iter_mut().rev() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
