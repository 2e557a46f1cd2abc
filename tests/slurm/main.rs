//! The Slurm executor on a real single-node cluster (`orpo_tests::slurm`). Here: the cluster
//! does what the executor relies on (a second job asking for the one GPU gres waits with
//! Slurm's reason `Resources`, `scancel --signal=TERM --full` reaches the batch script, stopping
//! the cluster leaves none of its processes behind); `executor.rs`: the daemon running jobs
//! through it.
//!
//! Outside CI a host without root or without `slurm-wlm` skips with a note; in CI (where
//! `.ci/run` installs it) that is a failure.

mod executor;

use std::time::Duration;

use orpo_tests::slurm::{self, Cluster};

fn cluster_or_skip() -> Option<Cluster> {
    match slurm::unavailable() {
        None => Some(Cluster::start()),
        Some(why) if std::env::var_os("CI").is_some() => panic!("CI must have Slurm: {why}"),
        Some(why) => {
            eprintln!("skipped: {why}");
            None
        }
    }
}

/// `squeue`'s state and reason of job `id` ("PENDING Resources").
fn state(c: &Cluster, id: &str) -> String {
    c.run("squeue", &["-h", "-j", id, "-o", "%T %r"])
        .trim()
        .to_string()
}

fn sbatch(c: &Cluster, script: &str) -> String {
    let path = c.dir().join(format!("job-{}.sh", script.len()));
    std::fs::write(&path, script).unwrap();
    let path = path.to_string_lossy().into_owned();
    c.run(
        "sbatch",
        &["--parsable", "--gres=gpu:1", "-o", "/dev/null", &path],
    )
    .trim()
    .to_string()
}

#[test]
fn jobs_compete_for_the_gres_and_a_signal_reaches_the_script() {
    let Some(c) = cluster_or_skip() else {
        return;
    };
    let dir = c.dir().display().to_string();
    // The first holds the GPU until it is told to stop; on TERM it writes a mark and exits.
    let first = sbatch(
        &c,
        &format!(
            "#!/bin/sh\ntrap 'echo checkpointed > {dir}/term; exit 0' TERM\n\
             echo running > {dir}/started\nwhile true; do sleep 0.1; done\n"
        ),
    );
    let started = c.dir().join("started");
    c.wait_for("the first job to run", || started.exists());
    assert_eq!(state(&c, &first), "RUNNING None");

    let second = sbatch(&c, "#!/bin/sh\ntrue\n");
    // The scheduler needs a pass to give its reason.
    c.wait_for("the second job's reason", || {
        state(&c, &second) == "PENDING Resources"
    });

    c.run("scancel", &["--signal=TERM", "--full", &first]);
    let term = c.dir().join("term");
    c.wait_for("the TERM trap", || term.exists());
    assert_eq!(std::fs::read_to_string(&term).unwrap(), "checkpointed\n");
    // The GPU is free: the second runs and ends.
    c.wait_for("the second job to end", || state(&c, &second).is_empty());

    let root = c.dir().to_path_buf();
    drop(c);
    std::thread::sleep(Duration::from_millis(200));
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|p| std::fs::read(p.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&*root.to_string_lossy()))
        .collect();
    assert!(left.is_empty(), "left running: {left:?}");
}
