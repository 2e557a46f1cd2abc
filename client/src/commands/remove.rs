//! `orpoctl rm ID...`: delete finished jobs with their history, checkpoints and adapter. Each
//! id is tried in turn; one that cannot be deleted (still running, not found) is reported and
//! the rest go on, as with `rm` of several files.

use crate::conn::{ApiResult as _, Conn};
use crate::{display, Outcome};

pub async fn remove(conn: &Conn, ids: &[u64]) -> anyhow::Result<Outcome> {
    let mut failed = 0;
    for &id in ids {
        match conn.client.delete_job(id).await.or_explain(conn) {
            Ok(job) => println!(
                "deleted job {id} ({}, {})",
                display::escape(&job.name),
                job.state
            ),
            Err(e) => {
                failed += 1;
                eprintln!("error: job {id}: {e:#}");
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} job(s) not deleted", ids.len());
    }
    Ok(Outcome::Ok)
}
