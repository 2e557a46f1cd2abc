//! A full disk: the state folder on a small tmpfs that the test mounts (it needs root, which
//! CI has; elsewhere it says so and passes nothing off as checked). Uploads and submits fail
//! with a clear error, the daemon keeps serving, nothing acknowledged is lost, and it takes
//! work again when space returns.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use orpo_api::client::ListJobs;
use orpo_api::{JobState, SubmitJobRequest};
use orpo_tests::{job_toml, prefs_jsonl, TestDaemon};

use crate::{exe, fixture};

/// A tmpfs mounted for the life of the value.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> std::io::Result<Tmpfs> {
        std::fs::create_dir_all(dir)?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()?
            .success();
        if !ok {
            return Err(std::io::Error::other("mount -t tmpfs failed"));
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes zeros into `path` until at most `leave` bytes are free on its file system (in MiB
/// steps, then in pages down to the last one).
fn fill(path: &Path, leave: u64) {
    let mut f = std::fs::File::create(path).unwrap();
    let free = || orpod::disk::free_bytes(path.parent().unwrap()).unwrap();
    for chunk in [vec![0u8; 1 << 20], vec![0u8; 4096]] {
        while free() >= leave + chunk.len() as u64 {
            if f.write_all(&chunk).is_err() {
                break;
            }
        }
    }
    let _ = f.sync_all();
}

#[tokio::test]
async fn a_full_disk_refuses_new_work_clearly_and_loses_nothing() {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: mounting a tmpfs needs root (CI runs as root)");
        return;
    }
    let (tmp, model) = fixture();
    let fs = Tmpfs::mount(&tmp.path().join("small"), "48m").expect("mounting a tmpfs");
    let state = fs.0.join("state");
    let roots = format!("model_roots = [{:?}]\n", tmp.path().to_string_lossy());
    let mut d = TestDaemon::start(exe(), &state, &format!("min_free_mib = 8\n{roots}")).await;
    let ds = d.client.upload_dataset(prefs_jsonl(8)).await.unwrap();
    let req = SubmitJobRequest {
        job_toml: Some(job_toml(&model, &ds.reference, "max_steps = 2")),
        ..Default::default()
    };
    let first = d.client.submit(&req).await.unwrap();
    d.wait_state(first.id, JobState::Succeeded, Duration::from_secs(120))
        .await;
    let long = SubmitJobRequest {
        job_toml: Some(job_toml(
            &model,
            &ds.reference,
            "max_steps = 100000\nsave_every = 0",
        )),
        ..Default::default()
    };
    let parked = d.client.submit(&long).await.unwrap();
    d.client.pause(parked.id).await.unwrap();
    d.wait_state(parked.id, JobState::Paused, Duration::from_secs(60))
        .await;

    // Someone else fills the disk to 2 MiB short of full.
    let filler = fs.0.join("filler");
    fill(&filler, 2 << 20);
    let err = d
        .client
        .upload_dataset(prefs_jsonl(9))
        .await
        .expect_err("an upload on a full disk");
    let text = err.to_string();
    assert!(
        text.contains("min_free_mib") && text.contains("507"),
        "{text}"
    );
    let err = d
        .client
        .submit(&req)
        .await
        .expect_err("a submit on a full disk");
    assert!(err.to_string().contains("disk is nearly full"), "{err}");
    // Still serving: health, the queue, the finished job.
    assert_eq!(d.client.health().await.unwrap().status, "ok");
    let listed = d.client.list(&ListJobs::default()).await.unwrap();
    assert_eq!(listed.jobs.len(), 2);

    // Not one byte left: a change the store cannot make durable is answered with an error,
    // and the daemon keeps serving.
    fill(&fs.0.join("filler2"), 0);
    assert!(orpod::disk::free_bytes(&fs.0).unwrap() < 4096);
    let resumed = d.client.resume(parked.id).await.map(|j| j.state);
    eprintln!("resume with the disk full: {resumed:?}");
    let cancelled = d.client.cancel(parked.id).await.map(|j| j.state);
    eprintln!("cancel with the disk full: {cancelled:?}");
    // Reads go on whatever happened to the writes.
    d.client.job(parked.id).await.unwrap();
    d.client.list(&ListJobs::default()).await.unwrap();
    let health = d.client.health().await;
    eprintln!("health with the disk full: {health:?}");
    // /healthz answers either way: ok, or (the store failed a write and cannot reopen on a
    // full disk) degraded, a 503 that says so.
    if cancelled
        .as_ref()
        .is_err_and(|e| e.code() == Some("unavailable"))
    {
        let err = health.expect_err("degraded is a 503");
        assert!(err.to_string().contains("cannot write"), "{err}");
    } else {
        assert_eq!(health.unwrap().status, "ok");
    }

    // Space returns: work is taken again, and everything survives a restart.
    std::fs::remove_file(fs.0.join("filler2")).unwrap();
    std::fs::remove_file(&filler).unwrap();
    // The parked job first. Its resume may have gone through (the store had room for that
    // write), or been answered with an error after sled had already written it; then it is
    // queued or running (100000 steps, on the only slot), or failed for want of disk. Its
    // owner cancels it, as one would. The store reopens on its own within a second or so;
    // until then it answers 503. A cancel answered 503 above may be gone after the reopen
    // (sled had it in memory only), so this one is not a formality.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match d.client.cancel(parked.id).await {
            Err(e) if e.code() == Some("unavailable") && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            result => {
                let state = result.map(|j| j.state);
                eprintln!("cancel after space returned: {state:?}");
                if let Err(e) = state {
                    // Only a job that already ended may refuse a cancel.
                    assert_eq!(e.code(), Some("conflict"), "{e}\n{}", d.log());
                }
                break;
            }
        }
    }
    d.wait_for(parked.id, Duration::from_secs(60), "cancelled", |j| {
        j.state.is_terminal()
    })
    .await;
    d.client
        .upload_dataset(prefs_jsonl(9))
        .await
        .unwrap_or_else(|e| panic!("upload after space returned: {e}\n{}", d.log()));
    let second = d
        .client
        .submit(&req)
        .await
        .unwrap_or_else(|e| panic!("submit after space returned: {e}\n{}", d.log()));
    d.wait_state(second.id, JobState::Succeeded, Duration::from_secs(120))
        .await;
    // What ended stays ended: a cancel the store lost in its reopen was answered 503, never
    // read back as done (it was, once, and the job then ran again on the only slot).
    let parked_now = d.client.job(parked.id).await.unwrap();
    assert!(parked_now.state.is_terminal(), "{parked_now:?}");
    assert_eq!(d.client.health().await.unwrap().status, "ok");
    d.stop();
    d.restart().await;
    let ids = d.job_ids().await;
    assert_eq!(ids, vec![second.id, parked.id, first.id]);
    d.stop();
    drop(d);
}
