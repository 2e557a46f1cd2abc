//! A job's history: per-step metric records and the event log, the latter also as a live
//! server-sent-event stream (`orpoctl metrics | logs [-f] | watch`).

use std::time::Duration;

use actix_web::{web, HttpResponse};
use futures_util::stream;
use orpo_api::{ErrorBody, EventView, MetricRecord};
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::ApiError;
use super::AppState;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MetricsQuery {
    /// Only records after this step.
    since: Option<usize>,
}

/// Job metrics
///
/// The logged training steps and evaluations, TRL's metric names, in order.
#[utoipa::path(get, path = "/v1/jobs/{id}/metrics", tag = "jobs",
    params(("id" = u64, Path, description = "Job id"), MetricsQuery),
    responses((status = 200, body = Vec<MetricRecord>), (status = 400, description = "Bad id or parameters", body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn metrics(
    state: web::Data<AppState>,
    id: web::Path<u64>,
    q: web::Query<MetricsQuery>,
) -> Result<web::Json<Vec<MetricRecord>>, ApiError> {
    state.store.job(*id)?;
    Ok(web::Json(state.store.metrics(
        *id,
        q.since.unwrap_or(0),
        usize::MAX,
    )?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events after this `seq`.
    since: Option<u64>,
    /// Keep the connection open and stream new events as server-sent events (`text/event-stream`)
    /// until the job ends.
    follow: Option<bool>,
}

/// Job events
///
/// State changes, worker log lines, checkpoints. With `follow=true` the answer is a
/// `text/event-stream`: one SSE message per event (`id` = seq, `event` = kind, `data` = the
/// event as JSON), ending after the job reaches a final state.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs",
    params(("id" = u64, Path, description = "Job id"), EventsQuery),
    responses((status = 200, body = Vec<EventView>, description = "The events; with follow=true a text/event-stream"),
        (status = 400, description = "Bad id or parameters", body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn events(
    state: web::Data<AppState>,
    id: web::Path<u64>,
    q: web::Query<EventsQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = *id;
    state.store.job(id)?;
    let since = q.since.unwrap_or(0);
    if !q.follow.unwrap_or(false) {
        return Ok(HttpResponse::Ok().json(state.store.events(id, since, usize::MAX)?));
    }
    // The store is polled rather than subscribed to: appends happen in several places, a poll
    // every 250 ms is cheap, and a follower that falls behind simply reads more at once.
    let store = state.store.clone();
    let body = stream::unfold(since, move |mut since| {
        let store = store.clone();
        async move {
            // A job's final state event is appended just after its record changes, so after
            // the job ends the stream looks once more before closing.
            let mut quiet_after_end = 0;
            loop {
                let finished = store.job(id).map(|v| v.state.is_terminal()).unwrap_or(true);
                let batch = match store.events(id, since, 256) {
                    Ok(b) => b,
                    Err(e) => return Some((Err(ApiError::from(e).into()), u64::MAX)),
                };
                if !batch.is_empty() {
                    let mut text = String::new();
                    for e in &batch {
                        since = e.seq;
                        let data = serde_json::to_string(e).expect("events serialise");
                        let kind = serde_json::to_value(e.kind).expect("kinds serialise");
                        let kind = kind.as_str().unwrap_or("log").to_string();
                        text.push_str(&format!("id: {}\nevent: {kind}\ndata: {data}\n\n", e.seq));
                    }
                    return Some((Ok::<_, actix_web::Error>(web::Bytes::from(text)), since));
                }
                if finished || since == u64::MAX {
                    quiet_after_end += 1;
                    if quiet_after_end > 1 || since == u64::MAX {
                        return None;
                    }
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
