//! `orpoctl gpus` and the answer of `orpoctl plan`: where jobs can run, how much memory is
//! free there and for a new job, who uses it, and a job's memory estimate with its parts.

use orpo_api::{GpusView, PlanView, SlurmNodeView};

use crate::conn::{ApiResult as _, Conn};
use crate::display::{self, Table};
use crate::Outcome;

pub async fn gpus(conn: &Conn, json: bool) -> anyhow::Result<Outcome> {
    let view = conn.client.gpus().await.or_explain(conn)?;
    if json {
        return super::print_json(&view);
    }
    print!("{}", render_gpus(&view));
    Ok(Outcome::Ok)
}

pub fn render_gpus(view: &GpusView) -> String {
    // Utilization and temperature come from NVML only: no columns of dashes on a CPU host.
    let util = view.devices.iter().any(|d| d.utilization_percent.is_some());
    let temp = view.devices.iter().any(|d| d.temperature_c.is_some());
    let mut header = vec!["DEVICE", "NAME", "TOTAL", "USED", "FREE", "AVAILABLE"];
    if util {
        header.push("UTIL");
    }
    if temp {
        header.push("TEMP");
    }
    header.push("JOBS");
    let mut t = Table::new(&header);
    let mut procs = String::new();
    for d in &view.devices {
        let mut row = vec![
            display::escape(&d.device),
            display::escape(&d.name),
            display::bytes(d.total_bytes),
            display::bytes(d.used_bytes),
            display::bytes(d.free_bytes),
            if d.takes_jobs {
                display::bytes(d.available_bytes)
            } else {
                "- (no jobs)".into()
            },
        ];
        if util {
            row.push(
                d.utilization_percent
                    .map_or("-".into(), |u| format!("{u}%")),
            );
        }
        if temp {
            row.push(d.temperature_c.map_or("-".into(), |c| format!("{c}°C")));
        }
        let jobs: Vec<String> = d.running_jobs.iter().map(|j| j.to_string()).collect();
        row.push(if jobs.is_empty() {
            "-".into()
        } else {
            jobs.join(",")
        });
        t.row(row);
        for p in &d.processes {
            procs.push_str(&format!(
                "  {}  pid {}  {}  {}{}\n",
                display::escape(&d.device),
                p.pid,
                display::escape(p.name.as_deref().unwrap_or("?")),
                p.used_bytes.map_or("-".into(), display::bytes),
                p.job.map(|j| format!("  (job {j})")).unwrap_or_default()
            ));
        }
    }
    let mut out = t.render();
    if !procs.is_empty() {
        out.push_str("\nprocesses:\n");
        out.push_str(&procs);
    }
    if view.headroom_bytes > 0 {
        out.push_str(&format!(
            "\nAVAILABLE is free memory less what running jobs will still take and a headroom of {}.\n",
            display::bytes(view.headroom_bytes)
        ));
    }
    if !view.slurm_nodes.is_empty() {
        out.push_str("\nslurm nodes:\n");
        out.push_str(&render_nodes(&view.slurm_nodes));
    }
    if let Some(note) = &view.note {
        out.push_str(&format!("note: {}\n", display::escape_lines(note)));
    }
    one_trailing_newline(out)
}

/// The Slurm cluster's nodes, as `sinfo` reports them to the daemon.
fn render_nodes(nodes: &[SlurmNodeView]) -> String {
    let mut t = Table::new(&[
        "NODE",
        "STATE",
        "CPUS",
        "MEMORY",
        "GRES",
        "GRES USED",
        "PARTITIONS",
        "JOBS",
    ]);
    for n in nodes {
        let jobs: Vec<String> = n.running_jobs.iter().map(|j| j.to_string()).collect();
        t.row(vec![
            display::escape(&n.name),
            display::escape(&n.state),
            format!("{}/{}", n.cpus_allocated, n.cpus_total),
            format!(
                "{}/{}",
                display::bytes(n.memory_allocated_bytes),
                display::bytes(n.memory_bytes)
            ),
            display::escape(&n.gres),
            display::escape(&n.gres_used),
            display::escape(&n.partitions.join(",")),
            if jobs.is_empty() {
                "-".into()
            } else {
                jobs.join(",")
            },
        ]);
    }
    t.render()
}

pub fn render_plan(p: &PlanView) -> String {
    let mut out = String::new();
    let mut kv = |k: &str, val: String| out.push_str(&format!("{k:<13} {val}\n"));
    kv("device", display::escape(&p.device));
    kv(
        "estimate",
        p.estimate_bytes
            .map(display::bytes)
            .unwrap_or_else(|| "- (the server gave no estimate)".into()),
    );
    if let Some(e) = &p.estimate {
        let parts = [
            ("weights", e.weights_bytes),
            ("lora", e.lora_bytes),
            ("optimizer", e.optimizer_bytes),
            ("activations", e.activations_bytes),
            ("workspace", e.workspace_bytes),
            ("logits", e.logits_bytes),
            ("overhead", e.overhead_bytes),
            ("eval peak", e.eval_peak_bytes),
        ];
        for (label, b) in parts.into_iter().filter(|(_, b)| *b > 0) {
            kv(&format!("  {label}"), display::bytes(b));
        }
    }
    kv("free", display::bytes(p.free_bytes));
    if p.headroom_bytes > 0 {
        kv("headroom", display::bytes(p.headroom_bytes));
    }
    kv("queued ahead", p.queued_ahead.to_string());
    kv("starts now", if p.starts_now { "yes" } else { "no" }.into());
    kv("reason", display::escape_lines(&p.reason));
    one_trailing_newline(out)
}

/// `text` ending in exactly one newline, so the shell prompt starts on a line of its own and
/// no blank line follows, whatever the server's free text (a reason, a note) ends with.
fn one_trailing_newline(mut text: String) -> String {
    text.truncate(text.trim_end_matches(['\n', '\r']).len());
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use orpo_api::{DeviceView, EstimateView, ProcessView};

    use super::*;

    fn device(dev: &str, name: &str) -> DeviceView {
        DeviceView {
            device: dev.into(),
            name: name.into(),
            total_bytes: 24 << 30,
            free_bytes: 10 << 30,
            used_bytes: 14 << 30,
            running_jobs: vec![],
            uuid: None,
            utilization_percent: None,
            memory_utilization_percent: None,
            temperature_c: None,
            processes: vec![],
            promised_bytes: 0,
            available_bytes: 9 << 30,
            takes_jobs: true,
        }
    }

    #[test]
    fn gpus_table_with_processes() {
        let mut gpu = device("cuda:0", "RTX 3090");
        gpu.running_jobs = vec![3, 4];
        gpu.utilization_percent = Some(97);
        gpu.temperature_c = Some(71);
        gpu.processes = vec![
            ProcessView {
                pid: 4242,
                used_bytes: Some(2 << 30),
                name: Some("python".into()),
                job: None,
            },
            ProcessView {
                pid: 77,
                used_bytes: None,
                name: Some("orpod".into()),
                job: Some(3),
            },
        ];
        let mut cpu = device("cpu", "CPU host (2 cores)");
        cpu.takes_jobs = false;
        let view = GpusView {
            devices: vec![gpu, cpu],
            headroom_bytes: 512 << 20,
            note: None,
            slurm_nodes: vec![],
        };
        assert_eq!(
            render_gpus(&view),
            "\
DEVICE  NAME                TOTAL     USED      FREE      AVAILABLE    UTIL  TEMP  JOBS
cuda:0  RTX 3090            24.0 GiB  14.0 GiB  10.0 GiB  9.0 GiB      97%   71°C  3,4
cpu     CPU host (2 cores)  24.0 GiB  14.0 GiB  10.0 GiB  - (no jobs)  -     -     -

processes:
  cuda:0  pid 4242  python  2.0 GiB
  cuda:0  pid 77  orpod  -  (job 3)

AVAILABLE is free memory less what running jobs will still take and a headroom of 512.0 MiB.
"
        );
    }

    /// With Slurm, the nodes follow the daemon host's devices.
    #[test]
    fn slurm_nodes_table() {
        let view = GpusView {
            devices: vec![],
            headroom_bytes: 0,
            note: None,
            slurm_nodes: vec![
                SlurmNodeView {
                    name: "box1".into(),
                    state: "mix".into(),
                    cpus_total: 16,
                    cpus_allocated: 4,
                    memory_bytes: 64 << 30,
                    memory_allocated_bytes: 16 << 30,
                    gres: "gpu:rtx3090:1".into(),
                    gres_used: "gpu:rtx3090:1(IDX:0)".into(),
                    partitions: vec!["gpu".into()],
                    running_jobs: vec![12],
                },
                SlurmNodeView {
                    name: "box2".into(),
                    state: "idle".into(),
                    cpus_total: 8,
                    memory_bytes: 32 << 30,
                    gres: "gpu:a4000:2".into(),
                    gres_used: "gpu:a4000:0(IDX:N/A)".into(),
                    partitions: vec!["gpu".into(), "long".into()],
                    ..Default::default()
                },
            ],
        };
        assert_eq!(
            render_gpus(&view),
            "\
DEVICE  NAME  TOTAL  USED  FREE  AVAILABLE  JOBS

slurm nodes:
NODE  STATE  CPUS  MEMORY             GRES           GRES USED             PARTITIONS  JOBS
box1  mix    4/16  16.0 GiB/64.0 GiB  gpu:rtx3090:1  gpu:rtx3090:1(IDX:0)  gpu         12
box2  idle   0/8   0 B/32.0 GiB       gpu:a4000:2    gpu:a4000:0(IDX:N/A)  gpu,long    -
"
        );
    }

    /// Process names are other users' text: a terminal escape in one is shown, not obeyed.
    #[test]
    fn process_names_and_server_text_are_escaped() {
        let mut view = GpusView {
            devices: vec![device("cpu", "CPU host (2 cores)")],
            headroom_bytes: 0,
            note: Some("bell \u{7}".into()),
            slurm_nodes: vec![SlurmNodeView {
                name: "node\u{1b}]0;x".into(),
                ..Default::default()
            }],
        };
        view.devices[0].processes.push(orpo_api::ProcessView {
            pid: 7,
            name: Some("evil\u{1b}[2J".into()),
            used_bytes: None,
            job: None,
        });
        let text = render_gpus(&view);
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "{text:?}"
        );
    }

    /// The output ends with one newline: never none (the shell prompt would follow on the
    /// same line), never a blank line, whatever the server's text ends with.
    #[test]
    fn output_ends_with_exactly_one_newline() {
        let ends_once = |text: &str| text.ends_with('\n') && !text.ends_with("\n\n");
        let bare = GpusView {
            devices: vec![device("cpu", "CPU host (2 cores)")],
            headroom_bytes: 0,
            note: None,
            slurm_nodes: vec![],
        };
        let noted = GpusView {
            headroom_bytes: 512 << 20,
            note: Some("CPU-only: no NVIDIA driver\n".into()),
            ..bare.clone()
        };
        let empty = GpusView {
            devices: vec![],
            ..bare.clone()
        };
        for view in [&bare, &noted, &empty] {
            let text = render_gpus(view);
            assert!(ends_once(&text), "{text:?}");
        }
        assert!(render_gpus(&noted).ends_with("note: CPU-only: no NVIDIA driver\n"));

        let mut plan = PlanView {
            device: "cpu".into(),
            estimate_bytes: None,
            free_bytes: 1 << 30,
            starts_now: true,
            reason: String::new(),
            estimate: None,
            headroom_bytes: 0,
            queued_ahead: 0,
        };
        for reason in ["", "fits", "fits\n", "needs 3.0 GiB\n\n"] {
            plan.reason = reason.into();
            let text = render_plan(&plan);
            assert!(ends_once(&text), "{reason:?}: {text:?}");
        }
    }

    #[test]
    fn plan_with_and_without_an_estimate() {
        let mut plan = PlanView {
            device: "cuda:0".into(),
            estimate_bytes: Some(3 << 30),
            free_bytes: 2 << 30,
            starts_now: false,
            reason: "needs 3.0 GiB; cuda:0 has 2.0 GiB free".into(),
            estimate: Some(EstimateView {
                total_bytes: 3 << 30,
                weights_bytes: 2 << 30,
                lora_bytes: 1 << 20,
                overhead_bytes: 512 << 20,
                ..Default::default()
            }),
            headroom_bytes: 0,
            queued_ahead: 2,
        };
        assert_eq!(
            render_plan(&plan),
            "\
device        cuda:0
estimate      3.0 GiB
  weights     2.0 GiB
  lora        1.0 MiB
  overhead    512.0 MiB
free          2.0 GiB
queued ahead  2
starts now    no
reason        needs 3.0 GiB; cuda:0 has 2.0 GiB free
"
        );
        plan.estimate_bytes = None;
        plan.estimate = None;
        assert!(
            render_plan(&plan).contains("\nestimate      - (the server gave no estimate)\nfree ")
        );
    }
}
