//! A job's history: per-step metric records and the event log, the latter also as a live
//! server-sent-event stream (`orpoctl metrics | logs [-f] | watch`), and the metrics as SVG
//! charts (`orpoctl chart`).
//!
//! Followers are counted and capped per job and in all (`max_followers_per_job`,
//! `max_followers`). A client that closes its connection ends its stream at once (the server
//! does not allow half-closed connections, see `server.rs`); one that vanishes without closing
//! (a dead network) is noticed only when a write fails, so a quiet stream sends an SSE comment
//! every `events_keepalive_s`. Either way the stream ends and its count with it, even when its
//! job is paused for days.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::{web, HttpResponse};
use futures_util::stream;
use orpo_api::{ErrorBody, EventView, MetricRecord};
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::ApiError;
use super::jobs::owned_job;
use super::AppState;
use crate::auth::Caller;
use crate::charts;
use crate::config::ServeConfig;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MetricsQuery {
    /// Only records after this step.
    #[param(maximum = 18446744073709551615usize)]
    since: Option<usize>,
}

/// Job metrics
///
/// The logged training steps and evaluations, TRL's metric names, in order.
#[utoipa::path(get, path = "/v1/jobs/{id}/metrics", tag = "jobs", operation_id = "job_metrics",
    params(("id" = u64, Path, description = "Job id", maximum = 18446744073709551615u64), MetricsQuery),
    responses((status = 200, body = Vec<MetricRecord>), (status = 400, description = "Bad id or parameters", body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn metrics(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<u64>,
    q: web::Query<MetricsQuery>,
) -> Result<web::Json<Vec<MetricRecord>>, ApiError> {
    owned_job(&state, &caller, *id, "read its metrics")?;
    Ok(web::Json(state.store.metrics(
        *id,
        q.since.unwrap_or(0),
        usize::MAX,
    )?))
}

/// Chart of a metric
///
/// One metric of the job against the optimizer step as an SVG image (720 x 400): training
/// records as a line, evaluation records (`eval_<metric>`) as dots. `metric` is a TRL name
/// (`loss`, `rewards/accuracies` with its slash percent-encoded, ...), `learning_rate` or
/// `grad_norm`; a metric the job has no points of is a 404 that lists those it has.
#[utoipa::path(get, path = "/v1/jobs/{id}/charts/{metric}.svg", tag = "jobs", operation_id = "job_chart",
    params(("id" = u64, Path, description = "Job id", maximum = 18446744073709551615u64),
        ("metric" = String, Path, description = "Metric name, e.g. `loss` or `rewards%2Faccuracies`")),
    responses((status = 200, description = "The chart", content_type = "image/svg+xml", body = String),
        (status = 400, description = "Bad id", body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn chart(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(u64, String)>,
) -> Result<HttpResponse, ApiError> {
    let (id, metric) = path.into_inner();
    let job = owned_job(&state, &caller, id, "chart its metrics")?;
    let store = state.store.clone();
    let svg = web::block(move || -> Result<String, ApiError> {
        let records = store.metrics(id, 0, usize::MAX)?;
        let series = charts::Series::of(format!("job {id}"), &metric, &records);
        if series.is_empty() {
            return Err(ApiError::NotFound(format!(
                "job {id} has no points of {metric:?}; it has: {}",
                charts::metric_names(&records).join(", ")
            )));
        }
        let title = format!("job {id} ({}): {metric}", job.name);
        charts::svg(&title, &metric, &[series]).map_err(|e| ApiError::Internal(anyhow::anyhow!(e)))
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))??;
    Ok(svg_response(svg))
}

/// The most jobs one compare chart overlays.
pub const MAX_COMPARED: usize = 8;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CompareQuery {
    /// Job ids, comma-separated (1 to 8).
    #[param(pattern = "^[0-9]{1,19}(,[0-9]{1,19}){0,7}$")]
    jobs: String,
}

/// Compare runs
///
/// One metric of several jobs overlaid in one SVG chart (720 x 400) with a legend: which β,
/// which learning rate. Every job must be the caller's (or the caller an admin); a job without
/// points of the metric is left out, and none with points is a 404.
#[utoipa::path(get, path = "/v1/charts/{metric}.svg", tag = "jobs", operation_id = "compare_chart",
    params(("metric" = String, Path, description = "Metric name, e.g. `loss` or `rewards%2Faccuracies`"), CompareQuery),
    responses((status = 200, description = "The chart", content_type = "image/svg+xml", body = String),
        (status = 400, description = "Bad job list", body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn compare_chart(
    state: web::Data<AppState>,
    caller: Caller,
    metric: web::Path<String>,
    q: web::Query<CompareQuery>,
) -> Result<HttpResponse, ApiError> {
    let metric = metric.into_inner();
    let ids: Vec<u64> = q
        .jobs
        .split(',')
        .map(|s| s.trim().parse::<u64>())
        .collect::<Result<_, _>>()
        .map_err(|_| {
            ApiError::BadRequest(format!("jobs: {:?} is not a list of job ids", q.jobs))
        })?;
    if ids.is_empty() || ids.len() > MAX_COMPARED {
        return Err(ApiError::BadRequest(format!(
            "jobs: give 1 to {MAX_COMPARED} job ids, not {}",
            ids.len()
        )));
    }
    let mut jobs = Vec::new();
    for id in ids {
        jobs.push(owned_job(&state, &caller, id, "chart its metrics")?);
    }
    let store = state.store.clone();
    let svg = web::block(move || -> Result<String, ApiError> {
        let mut series = Vec::new();
        for job in &jobs {
            let records = store.metrics(job.id, 0, usize::MAX)?;
            let s = charts::Series::of(format!("job {} ({})", job.id, job.name), &metric, &records);
            if !s.is_empty() {
                series.push(s);
            }
        }
        if series.is_empty() {
            return Err(ApiError::NotFound(format!(
                "none of these jobs has points of {metric:?}"
            )));
        }
        charts::svg(&metric, &metric, &series).map_err(|e| ApiError::Internal(anyhow::anyhow!(e)))
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))??;
    Ok(svg_response(svg))
}

fn svg_response(svg: String) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("image/svg+xml")
        .insert_header(("Cache-Control", "no-cache"))
        // An image, never a document that runs anything, even opened on its own.
        .insert_header((
            "Content-Security-Policy",
            "default-src 'none'; style-src 'unsafe-inline'",
        ))
        .body(svg)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events after this `seq`.
    #[param(maximum = 18446744073709551615u64)]
    since: Option<u64>,
    /// Keep the connection open and stream new events as server-sent events (`text/event-stream`)
    /// until the job ends.
    follow: Option<bool>,
}

/// One message of the `follow=true` stream, as a server-sent event: `id` is the event's `seq`,
/// `event` its kind and `data` the event (an `EventView`) as JSON.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documents the wire format; the stream is written in `events`
pub struct EventMessage {
    #[schema(pattern = "^[0-9]+$")]
    id: String,
    event: orpo_api::EventKind,
    /// An `EventView` as JSON.
    #[schema(content_media_type = "application/json")]
    data: String,
}

/// Job events
///
/// State changes, worker log lines, checkpoints. With `follow=true` the answer is a
/// `text/event-stream`: one SSE message per event (`id` = seq, `event` = kind, `data` = the
/// event as JSON), ending after the job reaches a final state. A quiet stream carries an SSE
/// comment (`: keep-alive`) every `events_keepalive_s` seconds. Followers are capped per job and
/// in all (429 over a cap).
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs", operation_id = "job_events",
    params(("id" = u64, Path, description = "Job id", maximum = 18446744073709551615u64), EventsQuery),
    responses((status = 200, description = "The events; with follow=true a text/event-stream of them",
            content((Vec<EventView> = "application/json"), (EventMessage = "text/event-stream"))),
        (status = 400, description = "Bad id or parameters", body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 429, description = "Too many followers (max_followers_per_job, max_followers)", body = ErrorBody)))]
pub async fn events(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<u64>,
    q: web::Query<EventsQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = *id;
    owned_job(&state, &caller, id, "read its events and logs")?;
    let since = q.since.unwrap_or(0);
    if !q.follow.unwrap_or(false) {
        return Ok(HttpResponse::Ok().json(state.store.events(id, since, usize::MAX)?));
    }
    let follower = Follower::join(id, &state.config)?;
    let keepalive = Duration::from_secs(state.config.events_keepalive_s.max(1));
    // The store is polled rather than subscribed to: appends happen in several places, a poll
    // every 250 ms is cheap, and a follower that falls behind simply reads more at once.
    let store = state.store.clone();
    let start = Follow {
        since,
        done: false,
        last_write: Instant::now(),
        _follower: follower,
    };
    let body = stream::unfold(start, move |mut f| {
        let store = store.clone();
        async move {
            if f.done {
                return None;
            }
            // A job's final state event is appended just after its record changes, so after
            // the job ends the stream looks once more before closing.
            let mut quiet_after_end = 0;
            loop {
                let finished = store.job(id).map(|v| v.state.is_terminal()).unwrap_or(true);
                let batch = match store.events(id, f.since, 256) {
                    Ok(b) => b,
                    Err(e) => {
                        f.done = true;
                        return Some((Err(ApiError::from(e).into()), f));
                    }
                };
                if !batch.is_empty() {
                    let mut text = String::new();
                    for e in &batch {
                        f.since = e.seq;
                        let data = serde_json::to_string(e).expect("events serialise");
                        let kind = serde_json::to_value(e.kind).expect("kinds serialise");
                        let kind = kind.as_str().unwrap_or("log").to_string();
                        text.push_str(&format!("id: {}\nevent: {kind}\ndata: {data}\n\n", e.seq));
                    }
                    f.last_write = Instant::now();
                    return Some((Ok::<_, actix_web::Error>(web::Bytes::from(text)), f));
                }
                if finished {
                    quiet_after_end += 1;
                    if quiet_after_end > 1 {
                        return None;
                    }
                }
                if f.last_write.elapsed() >= keepalive {
                    f.last_write = Instant::now();
                    return Some((Ok(web::Bytes::from_static(b": keep-alive\n\n")), f));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .streaming(body))
}

/// A follow stream's state between polls. Its [`Follower`] is dropped with the stream, however
/// the stream ends: job over, store error, client gone, daemon stopping.
struct Follow {
    since: u64,
    done: bool,
    last_write: Instant,
    _follower: Follower,
}

/// Followers now: in all, and by job.
struct Followers {
    total: usize,
    by_job: BTreeMap<u64, usize>,
}

/// Process-wide, as the daemon is one per process; the lock is held for a counter update only.
static FOLLOWERS: Mutex<Followers> = Mutex::new(Followers {
    total: 0,
    by_job: BTreeMap::new(),
});

/// Clients following events now (`orpod_event_followers` in `/metrics`).
pub fn follower_count() -> usize {
    FOLLOWERS.lock().unwrap_or_else(|e| e.into_inner()).total
}

/// One counted follower of a job's events; dropping it uncounts it.
struct Follower {
    job: u64,
}

impl Follower {
    /// Counts a new follower of `job`, or refuses it when a cap is reached.
    fn join(job: u64, config: &ServeConfig) -> Result<Follower, ApiError> {
        let mut f = FOLLOWERS.lock().unwrap_or_else(|e| e.into_inner());
        let on_job = f.by_job.get(&job).copied().unwrap_or(0);
        if on_job >= config.max_followers_per_job {
            return Err(ApiError::TooManyRequests(format!(
                "job {job} already has {on_job} followers (max_followers_per_job = {}); \
                 close one or poll without follow=true",
                config.max_followers_per_job
            )));
        }
        if f.total >= config.max_followers {
            return Err(ApiError::TooManyRequests(format!(
                "the daemon already has {} event followers (max_followers = {}); close one or \
                 poll without follow=true",
                f.total, config.max_followers
            )));
        }
        f.total += 1;
        *f.by_job.entry(job).or_default() += 1;
        Ok(Follower { job })
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let mut f = FOLLOWERS.lock().unwrap_or_else(|e| e.into_inner());
        f.total -= 1;
        if let Some(n) = f.by_job.get_mut(&self.job) {
            *n -= 1;
            if *n == 0 {
                f.by_job.remove(&self.job);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one test of the process-wide counts, so no other test moves them meanwhile.
    #[test]
    fn followers_are_capped_and_uncounted_on_drop() {
        let config = ServeConfig {
            max_followers_per_job: 2,
            max_followers: 3,
            ..ServeConfig::default()
        };
        let a1 = Follower::join(1, &config).unwrap();
        let a2 = Follower::join(1, &config).unwrap();
        let err = Follower::join(1, &config).err().unwrap().to_string();
        assert!(err.contains("max_followers_per_job = 2"), "{err}");
        let b1 = Follower::join(2, &config).unwrap();
        let err = Follower::join(3, &config).err().unwrap().to_string();
        assert!(err.contains("max_followers = 3"), "{err}");
        assert_eq!(follower_count(), 3);
        drop(a1);
        let a3 = Follower::join(1, &config).unwrap();
        drop((a2, a3, b1));
        assert_eq!(follower_count(), 0);
        assert!(FOLLOWERS.lock().unwrap().by_job.is_empty());
    }
}
