//! Admission: which queued jobs start now, on which device, and why the others wait.
//!
//! Jobs are taken in queue order (priority, then submit order). A job starts on a device whose
//! free memory, less what is promised to this daemon's jobs that started but have not reached
//! their peak, less the configured headroom, covers its estimate. Among the devices that fit,
//! the tightest is chosen (best fit), so a large hole stays for a large job. A job that fits
//! nowhere waits with a reason in numbers; with `backfill` on, smaller jobs behind it may start
//! where they fit (Slurm's backfill, without run-time limits to protect the head job's start).
//!
//! A pure function of readings, so the tests drive it with fake inventories.

use super::DeviceReading;

/// The configured knobs.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Kept free on every device beyond the estimate: the estimate's error, other users' growth.
    pub headroom_bytes: u64,
    /// Whether jobs behind one that does not fit may start.
    pub backfill: bool,
    /// The most jobs running at once, whatever the memory.
    pub max_running: usize,
}

/// A device as admission sees it.
#[derive(Debug, Clone)]
pub struct DeviceState {
    pub reading: DeviceReading,
    /// Whether jobs may be placed here (GPUs of a non-CUDA build do not take jobs).
    pub takes_jobs: bool,
    /// `(what, bytes)` still promised to this daemon's workers here (`job 3`, `generation 2`):
    /// estimate less what the worker holds now.
    pub promised: Vec<(String, u64)>,
    /// Pids of this daemon's workers, told apart from other people's processes in reasons.
    pub our_pids: Vec<u32>,
}

impl DeviceState {
    pub fn promised_bytes(&self) -> u64 {
        self.promised.iter().map(|(_, b)| b).sum()
    }

    /// What a new job may use: free, less promised, less headroom.
    pub fn available_bytes(&self, policy: &Policy) -> u64 {
        self.reading
            .free_bytes
            .saturating_sub(self.promised_bytes())
            .saturating_sub(policy.headroom_bytes)
    }
}

/// A queued job as admission sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub id: u64,
    /// `None` when the model could not be read; the job starts where it is placed and its
    /// worker reports the real error.
    pub estimate: Option<u64>,
    /// `resources.device`: `auto`, `cpu`, `cuda`, `cuda:N`.
    pub pin: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Start { id: u64, device: String },
    Wait { id: u64, reason: String },
}

/// Decides every queued job, in queue order. `running`: jobs of this daemon with a worker now.
pub fn admit(
    queue: &[Candidate],
    devices: &[DeviceState],
    running: usize,
    policy: &Policy,
) -> Vec<Decision> {
    let mut devices = devices.to_vec();
    let mut running = running;
    let mut blocked_by: Option<u64> = None;
    let mut out = Vec::with_capacity(queue.len());
    for (ahead, job) in queue.iter().enumerate() {
        if running >= policy.max_running.max(1) {
            out.push(Decision::Wait {
                id: job.id,
                reason: format!(
                    "waiting for a free slot: {running} job(s) running (max_running = {}), \
                     {ahead} queued ahead",
                    policy.max_running
                ),
            });
            continue;
        }
        if let (Some(head), false) = (blocked_by, policy.backfill) {
            out.push(Decision::Wait {
                id: job.id,
                reason: format!(
                    "waiting behind job {head}, which runs first and does not fit yet (backfill is off)"
                ),
            });
            continue;
        }
        let eligible = match eligible(&job.pin, &devices) {
            Ok(e) => e,
            Err(reason) => {
                blocked_by.get_or_insert(job.id);
                out.push(Decision::Wait { id: job.id, reason });
                continue;
            }
        };
        let need = job.estimate.unwrap_or(0);
        let best = eligible
            .iter()
            .copied()
            .filter(|&d| devices[d].available_bytes(policy) >= need)
            .min_by_key(|&d| devices[d].available_bytes(policy));
        match best {
            Some(d) => {
                devices[d].promised.push((format!("job {}", job.id), need));
                running += 1;
                out.push(Decision::Start {
                    id: job.id,
                    device: devices[d].reading.device.clone(),
                });
            }
            None => {
                blocked_by.get_or_insert(job.id);
                out.push(Decision::Wait {
                    id: job.id,
                    reason: shortfall(need, &eligible, &devices, policy),
                });
            }
        }
    }
    out
}

/// Indices of the devices `pin` allows, or why there are none.
fn eligible(pin: &str, devices: &[DeviceState]) -> Result<Vec<usize>, String> {
    let gpus: Vec<usize> = (0..devices.len())
        .filter(|&i| devices[i].reading.is_gpu() && devices[i].takes_jobs)
        .collect();
    let by_name = |name: &str| {
        devices
            .iter()
            .position(|d| d.reading.device == name && d.takes_jobs)
    };
    match pin {
        "cpu" => by_name("cpu")
            .map(|i| vec![i])
            .ok_or_else(|| "the CPU host cannot be read".to_string()),
        "auto" if !gpus.is_empty() => Ok(gpus),
        "auto" => by_name("cpu")
            .map(|i| vec![i])
            .ok_or_else(|| "no device can be read".to_string()),
        "cuda" if !gpus.is_empty() => Ok(gpus),
        "cuda" => Err("resources.device = \"cuda\" but this daemon has no GPU it can use".into()),
        named => by_name(named).map(|i| vec![i]).ok_or_else(|| {
            let known: Vec<&str> = devices
                .iter()
                .filter(|d| d.takes_jobs)
                .map(|d| d.reading.device.as_str())
                .collect();
            format!(
                "resources.device = {named:?}: no such device here (this daemon places jobs on {})",
                known.join(", ")
            )
        }),
    }
}

/// Why a job needing `need` bytes fits none of `eligible`, with the numbers of each.
fn shortfall(need: u64, eligible: &[usize], devices: &[DeviceState], policy: &Policy) -> String {
    let mut parts = Vec::new();
    for &i in eligible {
        let d = &devices[i];
        let r = &d.reading;
        let mut s = format!("{}: {} free", r.device, gib(r.free_bytes));
        let promised = d.promised_bytes();
        if promised > 0 {
            let ids: Vec<&str> = d.promised.iter().map(|(what, _)| what.as_str()).collect();
            s.push_str(&format!(
                ", {} of it promised to {} still loading",
                gib(promised),
                ids.join(", ")
            ));
        }
        let others: Vec<_> = r
            .processes
            .iter()
            .filter(|p| !d.our_pids.contains(&p.pid))
            .collect();
        if !others.is_empty() {
            let bytes: u64 = others.iter().filter_map(|p| p.used_bytes).sum();
            let mut names: Vec<String> = others
                .iter()
                .map(|p| match &p.name {
                    Some(n) => format!("{n} ({})", p.pid),
                    None => format!("pid {}", p.pid),
                })
                .collect();
            names.truncate(3);
            s.push_str(&format!(
                ", {} other process(es) use {} ({})",
                others.len(),
                gib(bytes),
                names.join(", ")
            ));
        }
        if need + policy.headroom_bytes > r.total_bytes {
            s.push_str(&format!(
                ", {} in all: too small for this job",
                gib(r.total_bytes)
            ));
        }
        parts.push(s);
    }
    format!(
        "needs {} (+ {} headroom); {}",
        gib(need),
        gib(policy.headroom_bytes),
        parts.join("; ")
    )
}

/// `6.1 GiB`, or `850 MiB` under a GiB.
pub fn gib(bytes: u64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / GIB)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

#[cfg(test)]
mod tests;
