//! `orpod::server::run`: the daemon as a library call. It opens the store, recovers jobs a
//! previous daemon left running, starts the scheduler and the HTTP server on the listener it is
//! given, and on `shutdown` checkpoints running jobs and returns. `orpod serve` and the tests
//! both start it this way (the caller owns the socket, so tests use port 0).
//!
//! Under systemd (`Type=notify`, see `crate::sdnotify`) it sends `READY=1` once all that is up,
//! pings the watchdog while the scheduler ends its rounds, and sends `STOPPING=1` on shutdown.

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpServer};
use anyhow::Context;

use crate::config::ServeConfig;
use crate::http::{self, AppState};
use crate::sdnotify::{self, Notifier};
use crate::store::Store;
use crate::supervisor::{Supervisor, ROUND_EVERY};

/// Runs the daemon until `shutdown` completes.
pub async fn run(
    config: ServeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let dir = &config.state_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let store = open_store(&dir.join("db"))
        .await
        .with_context(|| format!("opening the store in {}", dir.display()))?;
    let addr = listener.local_addr()?;
    if !store.has_users()? && !addr.ip().is_loopback() {
        store.close().await?;
        anyhow::bail!(
            "this daemon has no users yet, so it would let anyone who reaches {addr} run, read \
             and cancel jobs; it serves only loopback addresses until it has one. Make the first \
             admin with `orpod user add NAME --admin` and `orpod token create --user NAME` (with \
             the same --state-dir or --config), or listen on 127.0.0.1"
        );
    }
    if store.has_users()? {
        tracing::info!("users exist: every /v1 request needs a bearer token");
    } else {
        tracing::warn!("no users: the API is open to every local process (loopback only)");
    }
    if config.model_roots.is_empty() {
        // The default model folder exists from the start, so the operator sees where to put
        // models.
        let models = dir.join(crate::config::MODELS_DIR);
        std::fs::create_dir_all(&models)
            .with_context(|| format!("creating {}", models.display()))?;
    }
    let supervisor = Supervisor::new(store.clone(), config.clone());
    supervisor.set_listen_addr(addr);
    if config.executor == crate::config::Executor::Slurm {
        if let Err(e) = supervisor.check_slurm().await {
            store.close().await?;
            return Err(e);
        }
    }
    let recovered = supervisor.recover().await?;
    if recovered > 0 {
        tracing::info!("requeued {recovered} job(s) left running by the previous daemon");
    }
    match supervisor.queue_missing_samples() {
        Ok(0) => {}
        Ok(n) => tracing::info!("answering the samples of {n} checkpoint(s) left without"),
        Err(e) => tracing::warn!("looking for checkpoints without samples: {e:#}"),
    }
    let notifications = match crate::notify::Notifications::new(store.clone(), &config) {
        Ok(n) => n,
        Err(e) => {
            store.close().await?;
            return Err(e);
        }
    };
    let notify_task = tokio::spawn(notifications.clone().run());
    let scheduler = tokio::spawn(supervisor.clone().run());
    let retention = tokio::spawn(supervisor.clone().retention_loop());
    let state = web::Data::new(AppState {
        store: store.clone(),
        supervisor: supervisor.clone(),
        config: config.clone(),
        notifications,
    });
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
    // The store is open, jobs are recovered, the scheduler runs and the port is bound (a
    // connection made now is answered), so systemd may start what depends on us.
    let notifier = Notifier::from_env();
    notifier.send(&format!("READY=1\nSTATUS=listening on {addr}"));
    let watchdog = sdnotify::watchdog_timeout().map(|timeout| {
        // A round that has not ended within WatchdogSec= (and never less than the idle wait
        // between rounds and a second) stops the pings; systemd restarts the daemon
        // WatchdogSec= after the last one.
        let within = timeout.max(ROUND_EVERY + Duration::from_secs(1));
        tracing::info!(
            ?timeout,
            "pinging systemd's watchdog while the scheduler makes progress"
        );
        let supervisor = supervisor.clone();
        tokio::spawn(sdnotify::watchdog(notifier.clone(), timeout, move || {
            supervisor.scheduler_alive(within)
        }))
    });
    shutdown.await;
    notifier.send("STOPPING=1\nSTATUS=stopping: checkpointing running jobs");
    if let Some(w) = watchdog {
        w.abort();
    }
    tracing::info!("stopping: checkpointing running jobs");
    supervisor.shutdown().await;
    handle.stop(true).await;
    let _ = server_task.await;
    scheduler.abort();
    retention.abort();
    notify_task.abort();
    store.close().await?;
    let _ = std::fs::remove_file(dir.join("orpod.addr"));
    tracing::info!("stopped");
    Ok(())
}

/// How long a start waits for another process to let go of the store's lock.
const STORE_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens the store, waiting up to [`STORE_LOCK_WAIT`] while another process holds its lock:
/// a daemon restarted right after a crash may find the old one's last child still exiting.
/// After that the error names the processes that hold the database open.
async fn open_store(db: &std::path::Path) -> anyhow::Result<Store> {
    let deadline = std::time::Instant::now() + STORE_LOCK_WAIT;
    let mut waited = false;
    loop {
        match Store::open(db) {
            Ok(store) => return Ok(store),
            Err(crate::store::StoreError::Sled(sled::Error::Io(e)))
                if e.kind() == std::io::ErrorKind::WouldBlock =>
            {
                if std::time::Instant::now() >= deadline {
                    let holders = crate::store::holders(db);
                    anyhow::bail!(
                        "another process holds the store's lock ({e}) after {} s: {}; is \
                         another orpod serve running on this state folder?",
                        STORE_LOCK_WAIT.as_secs(),
                        if holders.is_empty() {
                            "no process found with it open".to_string()
                        } else {
                            holders.join(", ")
                        }
                    );
                }
                if !waited {
                    let holders = crate::store::holders(db).join(", ");
                    tracing::warn!("the store is locked by another process ({holders}); waiting");
                    waited = true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}
