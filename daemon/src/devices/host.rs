//! The CPU host as a device: its RAM from `/proc/meminfo` (`MemAvailable`, the kernel's own
//! estimate of what can be allocated without swapping, page cache included), and per-process
//! figures from `/proc/<pid>`.

use super::DeviceReading;

/// The host's RAM as a device.
pub fn reading() -> anyhow::Result<DeviceReading> {
    let (total, available) = meminfo()?;
    Ok(DeviceReading {
        device: "cpu".into(),
        name: format!(
            "CPU host ({} cores)",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        ),
        uuid: None,
        total_bytes: total,
        free_bytes: available,
        used_bytes: total.saturating_sub(available),
        utilization_percent: None,
        memory_utilization_percent: None,
        temperature_c: None,
        processes: Vec::new(),
    })
}

/// `(MemTotal, MemAvailable)` in bytes.
fn meminfo() -> anyhow::Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    let total = kib_field(&text, "MemTotal:")
        .ok_or_else(|| anyhow::anyhow!("/proc/meminfo: no readable MemTotal"))?;
    let available = kib_field(&text, "MemAvailable:")
        .ok_or_else(|| anyhow::anyhow!("/proc/meminfo: no readable MemAvailable"))?;
    Ok((total, available))
}

/// A `Name:   1234 kB` line of a /proc file, in bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Resident set of `pid` now (`VmRSS`).
pub fn rss(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    kib_field(&text, "VmRSS:")
}

/// Peak resident set of this process so far (`VmHWM`).
pub fn own_peak_rss() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    kib_field(&text, "VmHWM:")
}

/// The command name of `pid` (`/proc/<pid>/comm`).
pub fn process_name(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_host_and_this_process() {
        let r = reading().unwrap();
        assert!(r.total_bytes > 0 && r.free_bytes <= r.total_bytes);
        assert_eq!(r.used_bytes, r.total_bytes - r.free_bytes);
        let me = std::process::id();
        let now = rss(me).unwrap();
        assert!(now > 1 << 20);
        // Read after: the peak so far covers every earlier resident set (other tests allocate
        // in parallel, so not the other way round). The kernel's RSS counters are per-CPU and
        // summed approximately (VmRSS and VmHWM may disagree by a few pages each way: a CI run
        // saw the peak below a resident set read just before), so a margin of 16 MiB.
        let peak = own_peak_rss().unwrap();
        assert!(peak + (16 << 20) >= now, "peak {peak} < now {now}");
        assert!(process_name(me).is_some());
        assert_eq!(kib_field("VmHWM:\t  2048 kB\n", "VmHWM:"), Some(2 << 20));
    }
}
