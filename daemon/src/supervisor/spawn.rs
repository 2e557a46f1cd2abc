//! Starting one `orpod worker` process: its job folder, its job.toml with data set references
//! resolved to files, and the process settings that tie it to the daemon.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context;
use orpo_api::{parse_dataset_ref, JobSpec};

/// `<state_dir>/jobs/<id>`: job.toml, checkpoints, final/, worker.log.
pub fn job_dir(state_dir: &Path, id: u64) -> PathBuf {
    state_dir.join("jobs").join(id.to_string())
}

/// Where an uploaded data set's bytes live.
pub fn dataset_path(state_dir: &Path, sha256: &str) -> PathBuf {
    state_dir.join("datasets").join(format!("{sha256}.jsonl"))
}

/// Writes `<dir>/job.toml` for the worker: the spec as submitted, with `sha256:` references
/// replaced by the stored files and `resources.device` set to the device admission chose.
/// Written to a temporary file and renamed, so a worker never reads half of one.
pub fn write_job_file(
    state_dir: &Path,
    dir: &Path,
    spec: &JobSpec,
    device: &str,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut spec = spec.clone();
    spec.resources.device = device.to_string();
    for field in [&mut spec.data.train, &mut spec.data.eval] {
        if let Some(hex) = parse_dataset_ref(field) {
            *field = dataset_path(state_dir, hex).to_string_lossy().into_owned();
        }
    }
    let text = toml::to_string(&spec).context("serialising job.toml")?;
    let path = dir.join("job.toml");
    let tmp = dir.join("job.toml.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Spawns `<exe> worker --job-dir DIR` with stdout piped to the daemon and stderr appended to
/// `DIR/worker.log`.
///
/// The child asks the kernel for SIGTERM when its parent dies (PR_SET_PDEATHSIG): a worker
/// whose daemon was killed checkpoints and exits instead of training on unsupervised; the
/// restarted daemon resumes it from that checkpoint. The signal follows the parent *thread*,
/// so this must run on one of the runtime's long-lived worker threads, never in
/// `spawn_blocking` (those threads exit when idle).
pub fn spawn_worker(
    exe: &Path,
    dir: &Path,
    nice: Option<i32>,
) -> anyhow::Result<tokio::process::Child> {
    let log_path = dir.join("worker.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut cmd = worker_command(exe, dir);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log));
    tie_to_daemon(&mut cmd, libc::SIGTERM, nice);
    let child = tokio::process::Command::from(cmd)
        .spawn()
        .with_context(|| format!("starting {} worker", exe.display()))?;
    Ok(child)
}

/// Makes `cmd`'s process get `death_signal` when the daemon dies (PR_SET_PDEATHSIG; see
/// [`spawn_worker`] on which thread must spawn it), exit at once if the daemon died before
/// that took effect, and run at niceness `nice`.
pub fn tie_to_daemon(
    cmd: &mut std::process::Command,
    death_signal: libc::c_int,
    nice: Option<i32>,
) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec and calls only async-signal-safe libc
    // functions (prctl, getppid, setpriority, _exit); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, death_signal) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The daemon may have died before prctl took effect.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            if let Some(n) = nice {
                libc::setpriority(libc::PRIO_PROCESS, 0, n);
            }
            Ok(())
        });
    }
}

/// The daemon's environment for a child, less systemd's notify variables (a worker must not
/// tell systemd anything, nor inherit its watchdog), with CUDA's device N as NVML's index N,
/// the one admission placed the work on.
pub fn worker_env(cmd: &mut std::process::Command) {
    cmd.env("CUDA_DEVICE_ORDER", "PCI_BUS_ID");
    for var in crate::sdnotify::ENV_VARS {
        cmd.env_remove(var);
    }
}

/// `<exe> worker --job-dir DIR` and its environment: the daemon's, less systemd's notify
/// variables (a worker must not tell systemd anything, nor inherit its watchdog).
fn worker_command(exe: &Path, dir: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("worker").arg("--job-dir").arg(dir);
    worker_env(&mut cmd);
    cmd
}

/// Sends `signal` to a worker that has not been reaped yet.
pub fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn workers_do_not_inherit_systemds_notify_socket() {
        let cmd = worker_command(Path::new("/usr/local/bin/orpod"), Path::new("/tmp/job"));
        let envs: Vec<(&OsStr, Option<&OsStr>)> = cmd.get_envs().collect();
        for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            assert!(
                envs.contains(&(OsStr::new(var), None)),
                "{var} not removed: {envs:?}"
            );
        }
        assert!(envs.contains(&(
            OsStr::new("CUDA_DEVICE_ORDER"),
            Some(OsStr::new("PCI_BUS_ID"))
        )));
    }
}
