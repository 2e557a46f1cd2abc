//! Process-wide CPU settings for a training process, applied once at start-up.
//!
//! Two defaults of the libraries underneath cost a CPU step a third of its time on a small
//! machine (measured with `perf` on SmolLM2-135M, 2 cores, 4 pairs x 128 tokens):
//!
//! - candle's barrier pool (its threads for element-wise ops) spins 25,000 times after each op
//!   before it parks. The next op is usually a matmul on rayon's threads, so the spinning thread
//!   takes a core from it: 11% of all CPU samples were that spin loop. We let it park almost at
//!   once (`CANDLE_BARRIER_POOL_SPIN_LIMIT`, unless the user set it).
//! - glibc serves allocations above its mmap threshold with fresh `mmap`s and gives them back on
//!   free, so every activation-sized tensor costs page faults and zeroing: 13% of the process's
//!   CPU time was in the kernel. A fixed 32 MiB threshold (glibc's largest) and no trimming keep
//!   freed blocks in the heap for the next step's tensors of the same size.

/// Applies the settings above. Call it first thing in `main`, before any thread exists: it
/// writes the environment.
pub fn tune_for_training() {
    const SPIN: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
    if std::env::var_os(SPIN).is_none() {
        // SAFETY: called from `main` before any other thread is started.
        unsafe { std::env::set_var(SPIN, "64") };
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; glibc ignores values it rejects.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
