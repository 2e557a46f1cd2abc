//! `orpod::server::run`: the daemon as a library call. It opens the store, recovers jobs a
//! previous daemon left running, starts the scheduler and the HTTP server on the listener it is
//! given, and on `shutdown` checkpoints running jobs and returns. `orpod serve` and the tests
//! both start it this way (the caller owns the socket, so tests use port 0).

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;

use actix_web::{web, App, HttpServer};
use anyhow::Context;

use crate::config::ServeConfig;
use crate::http::{self, AppState};
use crate::store::Store;
use crate::supervisor::Supervisor;

/// Runs the daemon until `shutdown` completes.
pub async fn run(
    config: ServeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let dir = &config.state_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let store = Store::open(&dir.join("db"))
        .with_context(|| format!("opening the store in {}", dir.display()))?;
    let supervisor = Supervisor::new(store.clone(), config.clone());
    let recovered = supervisor.recover().await?;
    if recovered > 0 {
        tracing::info!("requeued {recovered} job(s) left running by the previous daemon");
    }
    let scheduler = tokio::spawn(supervisor.clone().run());
    let retention = tokio::spawn(supervisor.clone().retention_loop());
    let state = web::Data::new(AppState {
        store: store.clone(),
        supervisor: supervisor.clone(),
        config: config.clone(),
    });
    let addr = listener.local_addr()?;
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .configure(http::configure)
    })
    .workers(2)
    // A client that closes its end is gone: end its response (an event stream would otherwise
    // run until its next write fails, holding a follower slot and a CLOSE-WAIT socket).
    .h1_allow_half_closed(false)
    .disable_signals()
    .shutdown_timeout(5)
    .listen(listener)?
    .run();
    let handle = server.handle();
    tracing::info!(%addr, state_dir = %dir.display(), "orpod listening");
    // Tests and scripts that asked for port 0 read the bound address from here.
    std::fs::write(dir.join("orpod.addr"), addr.to_string())
        .with_context(|| format!("writing {}", dir.join("orpod.addr").display()))?;
    let server_task = tokio::spawn(server);
    shutdown.await;
    tracing::info!("stopping: checkpointing running jobs");
    supervisor.shutdown().await;
    handle.stop(true).await;
    let _ = server_task.await;
    scheduler.abort();
    retention.abort();
    store.close().await?;
    let _ = std::fs::remove_file(dir.join("orpod.addr"));
    tracing::info!("stopped");
    Ok(())
}
