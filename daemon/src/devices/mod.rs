//! The devices jobs run on and what each has free now: NVIDIA GPUs through NVML (loaded at run
//! time, so the binary runs on hosts without a driver), the CPU host's RAM, or a fake inventory
//! from the config for tests.
//!
//! - [`nvml`]: readings from `libnvidia-ml.so.1`.
//! - [`host`]: the CPU host (`/proc/meminfo`) and per-process memory (`/proc/<pid>/status`).
//! - [`admission`]: the policy that decides which queued job starts where, and why the others
//!   wait.
//!
//! Device names are the trainer's: `cpu`, `cuda:N`. The worker is started with
//! `CUDA_DEVICE_ORDER=PCI_BUS_ID` so CUDA's N is NVML's index N (CUDA's default order is
//! fastest-first, NVML's is PCI bus order).

pub mod admission;
pub mod host;
mod nvml;

use serde::{Deserialize, Serialize};

use crate::config::ServeConfig;

/// One process using a device.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessReading {
    pub pid: u32,
    /// Memory it holds on the device; `None` where the driver does not say (Windows WDDM).
    pub used_bytes: Option<u64>,
    /// Its command name, where readable (a process of another user in another namespace is not).
    pub name: Option<String>,
}

/// A device as read now.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceReading {
    /// `cpu`, `cuda:0`, ...
    pub device: String,
    pub name: String,
    pub uuid: Option<String>,
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub used_bytes: u64,
    /// GPU busy percent over the driver's last sample period.
    pub utilization_percent: Option<u32>,
    pub memory_utilization_percent: Option<u32>,
    pub temperature_c: Option<u32>,
    pub processes: Vec<ProcessReading>,
}

impl DeviceReading {
    pub fn is_gpu(&self) -> bool {
        self.device.starts_with("cuda")
    }
}

/// A GPU that exists only in the config (`[[fake_gpus]]`), for tests of the admission policy
/// on a machine without one. Jobs placed on it run their worker on the CPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FakeGpu {
    #[serde(default = "fake_name")]
    pub name: String,
    pub total_mib: u64,
    /// Memory in use by everything but this daemon's jobs (the processes below, the driver).
    #[serde(default)]
    pub used_mib: u64,
    #[serde(default)]
    pub processes: Vec<FakeProcess>,
    #[serde(default)]
    pub utilization_percent: Option<u32>,
    #[serde(default)]
    pub temperature_c: Option<u32>,
}

/// A process of someone else on a fake GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FakeProcess {
    pub pid: u32,
    #[serde(default)]
    pub name: Option<String>,
    pub used_mib: u64,
}

fn fake_name() -> String {
    "Fake GPU".into()
}

/// Where readings come from, decided once at start.
enum Source {
    /// Boxed: NVML's function table is 12 KB.
    Nvml(Box<nvml::Gpus>),
    Fake(Vec<FakeGpu>),
    CpuOnly,
}

/// The device inventory of the daemon.
pub struct Devices {
    source: Source,
    /// Whether jobs may be placed on the GPUs: a build without the `cuda` feature lists them but
    /// runs everything on the CPU; fake GPUs take jobs (their workers run on the CPU).
    gpus_take_jobs: bool,
    /// Said once in the log and shown by `GET /v1/gpus`.
    pub note: Option<String>,
}

const MIB: u64 = 1 << 20;

impl Devices {
    /// Fake GPUs when the config has them; else NVML when it loads and sees a GPU; else the CPU
    /// host alone, said once in the log.
    pub fn detect(config: &ServeConfig) -> Devices {
        if !config.fake_gpus.is_empty() {
            let note = format!(
                "{} fake GPU(s) from the config: admission is checked against them, workers run on the CPU",
                config.fake_gpus.len()
            );
            tracing::warn!("{note}");
            return Devices {
                source: Source::Fake(config.fake_gpus.clone()),
                gpus_take_jobs: true,
                note: Some(note),
            };
        }
        match nvml::Gpus::init() {
            Ok(gpus) if gpus.count() > 0 => {
                let cuda = cfg!(feature = "cuda");
                let note = (!cuda).then(|| {
                    "this orpod was built without the `cuda` feature: GPUs are listed, jobs run on the CPU"
                        .to_string()
                });
                match &note {
                    Some(n) => tracing::warn!("{n}"),
                    None => tracing::info!("NVML: {} GPU(s)", gpus.count()),
                }
                Devices {
                    source: Source::Nvml(Box::new(gpus)),
                    gpus_take_jobs: cuda,
                    note,
                }
            }
            Ok(_) => Self::cpu_only("NVML loaded but reports no GPU".into()),
            Err(e) => Self::cpu_only(format!("no NVIDIA driver ({e})")),
        }
    }

    fn cpu_only(why: String) -> Devices {
        let note = format!("{why}: CPU-only, jobs are admitted against the host's RAM");
        tracing::info!("{note}");
        Devices {
            source: Source::CpuOnly,
            gpus_take_jobs: false,
            note: Some(note),
        }
    }

    /// Every device now: the GPUs (if any), then the CPU host.
    pub fn read(&self) -> anyhow::Result<Vec<DeviceReading>> {
        let mut out = match &self.source {
            Source::Nvml(gpus) => gpus.read(),
            Source::Fake(fakes) => fakes.iter().enumerate().map(fake_reading).collect(),
            Source::CpuOnly => Vec::new(),
        };
        out.push(host::reading()?);
        Ok(out)
    }

    /// Whether jobs go to GPUs (else everything runs on the CPU).
    pub fn gpus_take_jobs(&self) -> bool {
        self.gpus_take_jobs
    }

    /// Fake GPUs: the worker of a job placed on one runs on the CPU.
    pub fn is_fake(&self) -> bool {
        matches!(self.source, Source::Fake(_))
    }

    /// Memory process `pid` holds on `device` now: NVML's figure on a GPU, resident set on the
    /// CPU. `None` when unknown (a fake GPU, an exited process).
    pub fn process_memory(&self, device: &str, pid: u32) -> Option<u64> {
        if device == "cpu" {
            return host::rss(pid);
        }
        match &self.source {
            Source::Nvml(gpus) => gpus.process_memory(device, pid),
            _ => None,
        }
    }
}

fn fake_reading((i, g): (usize, &FakeGpu)) -> DeviceReading {
    let total = g.total_mib * MIB;
    let used = (g.used_mib * MIB).min(total);
    DeviceReading {
        device: format!("cuda:{i}"),
        name: g.name.clone(),
        uuid: Some(format!("GPU-fake-{i}")),
        total_bytes: total,
        free_bytes: total - used,
        used_bytes: used,
        utilization_percent: g.utilization_percent,
        memory_utilization_percent: None,
        temperature_c: g.temperature_c,
        processes: g
            .processes
            .iter()
            .map(|p| ProcessReading {
                pid: p.pid,
                used_bytes: Some(p.used_mib * MIB),
                name: p.name.clone(),
            })
            .collect(),
    }
}
