//! Devices and placement: `GET /v1/gpus` (what each device has free, who uses it) and
//! `POST /v1/plan` (a job's memory estimate and where it would run now).

use serde::{Deserialize, Serialize};

/// A process using a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct ProcessView {
    pub pid: u32,
    /// Memory it holds on the device; absent where the driver does not say.
    pub used_bytes: Option<u64>,
    /// Its command name, where readable.
    pub name: Option<String>,
    /// The job whose worker it is, when it is one of this daemon's.
    pub job: Option<u64>,
}

/// One device jobs can run on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct DeviceView {
    /// `cpu`, `cuda:0`, ...
    pub device: String,
    pub name: String,
    pub total_bytes: u64,
    /// NVML's free memory; `MemAvailable` for the CPU host.
    pub free_bytes: u64,
    pub used_bytes: u64,
    /// Jobs of this daemon running there.
    pub running_jobs: Vec<u64>,
    #[serde(default)]
    pub uuid: Option<String>,
    /// GPU busy percent over the driver's last sample period.
    #[serde(default)]
    pub utilization_percent: Option<u32>,
    /// Percent of that period the memory was read or written.
    #[serde(default)]
    pub memory_utilization_percent: Option<u32>,
    #[serde(default)]
    pub temperature_c: Option<u32>,
    /// Processes using the GPU (this daemon's workers and everyone else's); empty for the CPU.
    #[serde(default)]
    pub processes: Vec<ProcessView>,
    /// Memory running jobs will still take: their estimates less what their workers hold now.
    #[serde(default)]
    pub promised_bytes: u64,
    /// What a new job may use now: free, less promised, less the daemon's headroom.
    #[serde(default)]
    pub available_bytes: u64,
    /// Whether this daemon places jobs here (a build without CUDA lists GPUs but does not).
    #[serde(default)]
    pub takes_jobs: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct GpusView {
    pub devices: Vec<DeviceView>,
    /// Memory kept free on every device beyond a job's estimate.
    #[serde(default)]
    pub headroom_bytes: u64,
    /// How the inventory is read when that is worth saying: CPU-only (no NVIDIA driver), fake
    /// GPUs from the config, a build without CUDA.
    #[serde(default)]
    pub note: Option<String>,
    /// With `executor = "slurm"`, where training jobs run: the cluster's nodes as `sinfo`
    /// reports them (`devices` is then the daemon's own host, which runs generation requests).
    #[serde(default)]
    pub slurm_nodes: Vec<SlurmNodeView>,
}

/// A node of the Slurm cluster, as `sinfo` reports it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct SlurmNodeView {
    pub name: String,
    /// Slurm's state: `idle`, `mix`, `alloc`, `drain`, `down`, ...
    pub state: String,
    pub cpus_total: u32,
    pub cpus_allocated: u32,
    pub memory_bytes: u64,
    pub memory_allocated_bytes: u64,
    /// Its generic resources as configured, e.g. `gpu:a4000:2`.
    pub gres: String,
    /// Those in use, e.g. `gpu:a4000:1(IDX:0)`.
    pub gres_used: String,
    pub partitions: Vec<String>,
    /// This daemon's jobs running there.
    pub running_jobs: Vec<u64>,
}

/// A job's peak memory estimate and its parts, in bytes. `total_bytes = weights + lora +
/// optimizer + activations + max(workspace, logits) + overhead`, or `eval_peak_bytes` when that
/// is larger.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct EstimateView {
    pub total_bytes: u64,
    /// The frozen base model as held: in its dtype, or block-quantized with the dequantized
    /// working tile.
    pub weights_bytes: u64,
    /// LoRA parameters (f32).
    pub lora_bytes: u64,
    /// AdamW's two moments, and the accumulated gradient when `grad_accum` is above 1.
    pub optimizer_bytes: u64,
    /// Activations kept for the backward pass over the largest micro-batch's tokens.
    pub activations_bytes: u64,
    /// One layer's backward working set (attention probabilities; the recomputed layer under
    /// gradient checkpointing) and the LoRA gradient being made.
    pub workspace_bytes: u64,
    /// The output head's logits slice (at most 96 MiB of f32 rows × vocabulary; three such on
    /// CUDA), and a quantized head's dequantized tile or copy.
    pub logits_bytes: u64,
    /// The process (CPU) or the CUDA context, cuBLAS and kernels (GPU).
    pub overhead_bytes: u64,
    /// An evaluation forward's peak; 0 when the job does not evaluate.
    pub eval_peak_bytes: u64,
    /// Tokens of the largest training micro-batch: `batch_size × 2 ×` the longest row (after
    /// truncation) of the data the job trains on, at most `max_length`.
    pub tokens: u64,
}

/// `POST /v1/plan`: the job is checked as a submit would check it, nothing is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct PlanView {
    /// Where it would run now, or the device it would wait for.
    pub device: String,
    /// The estimated peak memory (`estimate.total_bytes`).
    pub estimate_bytes: Option<u64>,
    /// Free memory of `device` now.
    pub free_bytes: u64,
    /// Whether a submit now would start at once.
    pub starts_now: bool,
    /// Why it would wait, in numbers, or where it would start.
    pub reason: String,
    /// The estimate's parts.
    #[serde(default)]
    pub estimate: Option<EstimateView>,
    /// Memory kept free beyond the estimate on every device.
    #[serde(default)]
    pub headroom_bytes: u64,
    /// Queued jobs that run before it (higher priority, or the same and submitted earlier).
    #[serde(default)]
    pub queued_ahead: usize,
}
