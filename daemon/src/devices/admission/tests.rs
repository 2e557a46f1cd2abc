//! The admission policy on fake inventories read from a daemon config (`[[fake_gpus]]`): queue
//! order, best fit, backfill, pinning, headroom, promised memory and the wording of reasons.

use super::*;
use crate::config::ServeConfig;
use crate::devices::Devices;

const GIB: u64 = 1 << 30;

/// Two GPUs as a shared box has them: a 24 GiB card with someone's Ollama holding 18 GiB, and an
/// idle 12 GiB card. Plus the CPU host, which every inventory has.
const TWO_GPUS: &str = r#"
[[fake_gpus]]
name = "RTX 4090"
total_mib = 24576
used_mib = 19456
[[fake_gpus.processes]]
pid = 4242
name = "ollama"
used_mib = 18432
[[fake_gpus.processes]]
pid = 5151
name = "python3"
used_mib = 1024

[[fake_gpus]]
name = "RTX 3060"
total_mib = 12288
used_mib = 512
"#;

fn devices(config: &str) -> Vec<DeviceState> {
    let config: ServeConfig = toml::from_str(config).unwrap();
    let devices = Devices::detect(&config);
    assert!(devices.is_fake() && devices.gpus_take_jobs());
    devices
        .read()
        .unwrap()
        .into_iter()
        .map(|reading| DeviceState {
            takes_jobs: true,
            reading,
            promised: Vec::new(),
            our_pids: Vec::new(),
        })
        .collect()
}

fn policy(headroom_gib: f64, backfill: bool) -> Policy {
    Policy {
        headroom_bytes: (headroom_gib * GIB as f64) as u64,
        backfill,
        max_running: 8,
    }
}

fn job(id: u64, gib: f64, pin: &str) -> Candidate {
    Candidate {
        id,
        estimate: Some((gib * GIB as f64) as u64),
        pin: pin.into(),
    }
}

fn started(d: &[Decision]) -> Vec<(u64, &str)> {
    d.iter()
        .filter_map(|d| match d {
            Decision::Start { id, device } => Some((*id, device.as_str())),
            _ => None,
        })
        .collect()
}

fn reason(d: &[Decision], job: u64) -> &str {
    d.iter()
        .find_map(|d| match d {
            Decision::Wait { id, reason } if *id == job => Some(reason.as_str()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("job {job} does not wait: {d:?}"))
}

#[test]
fn the_fake_inventory_reads_as_configured() {
    let d = devices(TWO_GPUS);
    let names: Vec<&str> = d.iter().map(|d| d.reading.device.as_str()).collect();
    assert_eq!(names, ["cuda:0", "cuda:1", "cpu"]);
    assert_eq!(d[0].reading.free_bytes, 5 * GIB);
    assert_eq!(d[0].reading.processes.len(), 2);
    assert_eq!(d[1].reading.free_bytes, 11_776 << 20);
}

#[test]
fn best_fit_keeps_the_big_hole_for_the_big_job() {
    let d = devices(TWO_GPUS);
    // 3 GiB fits both cards (5 GiB and 11.5 GiB free); it goes to the tighter one, and the 9 GiB
    // job behind it still finds the 11.5 GiB card.
    let out = admit(
        &[job(1, 3.0, "auto"), job(2, 9.0, "auto")],
        &d,
        0,
        &policy(0.5, true),
    );
    assert_eq!(started(&out), [(1, "cuda:0"), (2, "cuda:1")]);
}

#[test]
fn memory_admitted_this_round_counts_for_the_next_job() {
    let d = devices(TWO_GPUS);
    let out = admit(
        &[job(1, 8.0, "cuda:1"), job(2, 4.0, "cuda:1")],
        &d,
        0,
        &policy(0.5, true),
    );
    assert_eq!(started(&out), [(1, "cuda:1")]);
    assert_eq!(
        reason(&out, 2),
        "needs 4.0 GiB (+ 512 MiB headroom); cuda:1: 11.5 GiB free, 8.0 GiB of it promised to job 1 still loading"
    );
}

#[test]
fn a_head_job_that_does_not_fit_says_why_and_backfill_lets_small_jobs_pass() {
    let d = devices(TWO_GPUS);
    let queue = [
        job(1, 14.0, "auto"),
        job(2, 2.0, "auto"),
        job(3, 4.0, "auto"),
    ];
    let out = admit(&queue, &d, 0, &policy(0.5, true));
    assert_eq!(started(&out), [(2, "cuda:0"), (3, "cuda:1")]);
    assert_eq!(
        reason(&out, 1),
        "needs 14.0 GiB (+ 512 MiB headroom); cuda:0: 5.0 GiB free, 2 other process(es) use \
         19.0 GiB (ollama (4242), python3 (5151)); cuda:1: 11.5 GiB free, 12.0 GiB in all: too small \
         for this job"
    );
    // Without backfill the queue holds strictly.
    let out = admit(&queue, &d, 0, &policy(0.5, false));
    assert!(started(&out).is_empty());
    assert_eq!(
        reason(&out, 3),
        "waiting behind job 1, which runs first and does not fit yet (backfill is off)"
    );
}

#[test]
fn headroom_is_kept_free() {
    let d = devices(TWO_GPUS);
    // cuda:0 has exactly 5 GiB free: a 4.6 GiB job fits with 0.25 GiB headroom, not with 0.5.
    let q = [job(1, 4.6, "cuda:0")];
    assert_eq!(
        started(&admit(&q, &d, 0, &policy(0.25, true))),
        [(1, "cuda:0")]
    );
    let out = admit(&q, &d, 0, &policy(0.5, true));
    assert!(reason(&out, 1).starts_with("needs 4.6 GiB (+ 512 MiB headroom); cuda:0: 5.0 GiB free"));
}

#[test]
fn pinning_holds_a_job_to_its_device() {
    let d = devices(TWO_GPUS);
    let out = admit(
        &[
            job(1, 6.0, "cuda:0"),
            job(2, 1.0, "cpu"),
            job(3, 1.0, "cuda:7"),
            job(4, 1.0, "cuda"),
        ],
        &d,
        0,
        &policy(0.5, true),
    );
    // Job 1 would fit cuda:1 but is pinned to cuda:0, which has 5 GiB free.
    assert!(reason(&out, 1).starts_with("needs 6.0 GiB"));
    assert!(!reason(&out, 1).contains("cuda:1"));
    assert_eq!(started(&out), [(2, "cpu"), (4, "cuda:0")]);
    assert_eq!(
        reason(&out, 3),
        "resources.device = \"cuda:7\": no such device here (this daemon places jobs on cuda:0, cuda:1, cpu)"
    );
}

#[test]
fn a_job_larger_than_any_card_is_told_so() {
    let d = devices(TWO_GPUS);
    let out = admit(&[job(1, 30.0, "auto")], &d, 0, &policy(0.5, true));
    let r = reason(&out, 1);
    assert!(
        r.contains("cuda:0: 5.0 GiB free") && r.contains("24.0 GiB in all: too small for this job"),
        "{r}"
    );
    assert!(
        r.contains("cuda:1: 11.5 GiB free, 12.0 GiB in all: too small"),
        "{r}"
    );
}

#[test]
fn memory_promised_to_a_loading_job_and_our_own_workers() {
    let mut d = devices(TWO_GPUS);
    // Job 9 started on cuda:1 with an 8 GiB estimate and holds 3 GiB so far: 5 GiB more will go.
    d[1].promised.push(("job 9".into(), 5 * GIB));
    // Our worker shows up among cuda:0's processes; it is not "other people's".
    d[0].our_pids.push(5151);
    let out = admit(&[job(1, 7.0, "auto")], &d, 1, &policy(0.5, true));
    assert_eq!(
        reason(&out, 1),
        "needs 7.0 GiB (+ 512 MiB headroom); cuda:0: 5.0 GiB free, 1 other process(es) use \
         18.0 GiB (ollama (4242)); cuda:1: 11.5 GiB free, 5.0 GiB of it promised to job 9 still loading"
    );
    // Without the promise it would start.
    d[1].promised.clear();
    assert_eq!(
        started(&admit(&[job(1, 7.0, "auto")], &d, 1, &policy(0.5, true))),
        [(1, "cuda:1")]
    );
}

#[test]
fn max_running_caps_whatever_the_memory() {
    let d = devices(TWO_GPUS);
    let mut p = policy(0.5, true);
    p.max_running = 2;
    let out = admit(&[job(1, 1.0, "auto"), job(2, 1.0, "auto")], &d, 1, &p);
    assert_eq!(started(&out), [(1, "cuda:0")]);
    assert_eq!(
        reason(&out, 2),
        "waiting for a free slot: 2 job(s) running (max_running = 2), 1 queued ahead"
    );
}

#[test]
fn a_job_without_an_estimate_starts_where_it_may() {
    let d = devices(TWO_GPUS);
    let q = [Candidate {
        id: 1,
        estimate: None,
        pin: "auto".into(),
    }];
    assert_eq!(
        started(&admit(&q, &d, 0, &policy(0.5, true))),
        [(1, "cuda:0")]
    );
}

#[test]
fn gib_reads_well() {
    assert_eq!(gib(6_549_825_126), "6.1 GiB");
    assert_eq!(gib(850 << 20), "850 MiB");
}
