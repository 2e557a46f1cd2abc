//! Process-wide CPU settings for a training process, applied once at start-up.
//!
//! Two defaults of the libraries underneath cost a CPU step a third of its time on a small
//! machine (measured with `perf` on SmolLM2-135M, 2 cores, 4 pairs x 128 tokens):
//!
//! - candle's barrier pool (its own threads for element-wise ops, beside rayon's for matmuls)
//!   spins 25,000 times after each op before it parks, and the calling thread spin-waits for it
//!   at the end of each op. On two cores the spinning took a core from the next matmul: 11% of
//!   all CPU samples were that spin loop, and with a short spin 14% were the caller waiting for
//!   the pool to wake. We run candle's element-wise ops on the calling thread
//!   (`CANDLE_NUM_THREADS=1`, unless the user set it); the kernels of `ops` that are worth
//!   parallelising use rayon's pool, whose threads are idle between matmuls. user+sys for 3
//!   steps went from 87 to 62 core-s.
//! - glibc serves allocations above its mmap threshold with fresh `mmap`s and gives them back on
//!   free, so every activation-sized tensor costs page faults and zeroing: 13% of the process's
//!   CPU time was in the kernel. A fixed 32 MiB threshold (glibc's largest) and no trimming keep
//!   freed blocks in the heap for the next step's tensors of the same size.

/// Applies the settings above. Call it first thing in `main`, before any thread exists: it
/// writes the environment.
pub fn tune_for_training() {
    const THREADS: &str = "CANDLE_NUM_THREADS";
    if std::env::var_os(THREADS).is_none() {
        // SAFETY: called from `main` before any other thread is started.
        unsafe { std::env::set_var(THREADS, "1") };
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; glibc ignores values it rejects.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// Gives the heap's free pages back to the kernel (glibc's `malloc_trim`). An evaluation
/// forward calls it between its last layer and the output head. With trimming off, the blocks
/// its layers freed stay resident, and whether the head's logits then land in one of them or in
/// fresh pages on top depends on how the heap happens to be cut: the same f32 job peaked at 773
/// to 885 MiB over nine runs. Given back first, the head's pages replace the layers' instead of
/// adding to them (the f32 job: 795 MiB, its layers' peak; the head's is 700 MiB). It costs
/// the next batch its page faults, once per evaluation batch rather than at every op as in
/// training: that job's evaluation took 29.8 to 31.8 s with it and 30.1 to 32.7 s without.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only hands free memory back to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}
