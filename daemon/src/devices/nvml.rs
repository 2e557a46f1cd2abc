//! GPU readings through NVML (`nvml-wrapper`, which opens `libnvidia-ml.so.1` at run time).
//!
//! Memory comes from `nvmlDeviceGetMemoryInfo_v2`, whose `free` is what admission uses: v1's
//! `used` counted the driver's reservation (912 MB vs 7.8 MB on an A100, nvml-wrapper#57).
//! A reading that fails (a GPU fallen off the bus, a query the board does not support) leaves
//! its field empty instead of failing the whole inventory.

use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;

use super::{host, DeviceReading, ProcessReading};

/// An initialised NVML and its GPU count.
pub(super) struct Gpus {
    nvml: Nvml,
    count: u32,
}

impl Gpus {
    pub(super) fn init() -> Result<Gpus, NvmlError> {
        let nvml = Nvml::init()?;
        let count = nvml.device_count()?;
        Ok(Gpus { nvml, count })
    }

    pub(super) fn count(&self) -> u32 {
        self.count
    }

    pub(super) fn read(&self) -> Vec<DeviceReading> {
        (0..self.count)
            .filter_map(|i| match self.read_one(i) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(gpu = i, "NVML reading failed: {e}");
                    None
                }
            })
            .collect()
    }

    fn read_one(&self, index: u32) -> Result<DeviceReading, NvmlError> {
        let dev = self.nvml.device_by_index(index)?;
        let mem = dev.memory_info()?;
        let util = dev.utilization_rates().ok();
        let processes = dev
            .running_compute_processes()
            .unwrap_or_default()
            .into_iter()
            .map(|p| ProcessReading {
                pid: p.pid,
                used_bytes: match p.used_gpu_memory {
                    UsedGpuMemory::Used(b) => Some(b),
                    UsedGpuMemory::Unavailable => None,
                },
                // /proc first: NVML truncates names and needs the same permissions anyway.
                name: host::process_name(p.pid)
                    .or_else(|| self.nvml.sys_process_name(p.pid, 64).ok()),
            })
            .collect();
        Ok(DeviceReading {
            device: format!("cuda:{index}"),
            name: dev.name().unwrap_or_else(|_| "NVIDIA GPU".into()),
            uuid: dev.uuid().ok(),
            total_bytes: mem.total,
            free_bytes: mem.free,
            used_bytes: mem.used,
            utilization_percent: util.as_ref().map(|u| u.gpu),
            memory_utilization_percent: util.as_ref().map(|u| u.memory),
            temperature_c: dev.temperature(TemperatureSensor::Gpu).ok(),
            processes,
        })
    }

    /// NVML's figure for `pid` on `device` (`cuda:N`).
    pub(super) fn process_memory(&self, device: &str, pid: u32) -> Option<u64> {
        let index: u32 = device.strip_prefix("cuda:")?.parse().ok()?;
        let dev = self.nvml.device_by_index(index).ok()?;
        dev.running_compute_processes()
            .ok()?
            .into_iter()
            .find(|p| p.pid == pid)
            .and_then(|p| match p.used_gpu_memory {
                UsedGpuMemory::Used(b) => Some(b),
                UsedGpuMemory::Unavailable => None,
            })
    }
}
