//! Word when a job ends: users name webhook endpoints (`/v1/notify`, `orpoctl notify add URL`)
//! under the URL prefixes the operator allows (`notify_allow`), and the daemon posts to them
//! when one of their jobs succeeds, fails or is cancelled, or has waited in the queue longer
//! than `notify_wait_after_s`.
//!
//! It never holds up the queue: the store broadcasts every state change ([`Store::transitions`])
//! without waiting, this module's own task reads them, and each delivery is a task of its own
//! (at most [`IN_FLIGHT`] sending at once), tried `1 + notify_retries` times, 1 s apart and
//! doubling, with a 10 s timeout per try. A 4xx other than 429 is not retried: the endpoint
//! said the request is wrong, and asking again will not change that. Redirects are not
//! followed, so an allowed endpoint cannot send the daemon elsewhere. Each delivery is kept in
//! the store (`outbox`) from the moment it is made until it is delivered or given up on, so one
//! the daemon was still trying when it stopped is tried again at the next start: at least once,
//! as one whose answer came just before a crash is sent again.
//!
//! Formats: `json` ([`Notification`]), `ntfy` (the text as the body, `Title`, `Tags`,
//! `Priority` headers), `slack` (`{"text"}`: Slack, Mattermost, Discord's `/slack` URLs) and
//! `discord` (`{"content"}`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use orpo_api::{JobState, JobView, Notification, NotifyFormat, NotifyOn, NotifyView};
use reqwest::Url;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::Semaphore;

use crate::config::ServeConfig;
use crate::store::{Pending, Store};

/// Deliveries sending at once; the rest wait their turn.
pub const IN_FLIGHT: usize = 16;

/// One try's limit.
const TRY_TIMEOUT: Duration = Duration::from_secs(10);

/// The wait before the first retry; it doubles after each.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// Discord refuses messages over 2000 characters; the others take this much too.
const TEXT_MAX_CHARS: usize = 1900;

pub struct Notifications {
    store: Store,
    allow: Vec<Url>,
    retries: u32,
    wait_after: Option<Duration>,
    http: reqwest::Client,
    sending: Arc<Semaphore>,
}

/// How one try went: delivered with a 2xx, or why not and whether to try again.
#[derive(Debug)]
pub enum Outcome {
    Delivered(u16),
    Failed {
        status: Option<u16>,
        message: String,
        retry: bool,
    },
}

impl Notifications {
    /// Reads `notify_allow` (an entry that is not an `http(s)` URL is a config error).
    pub fn new(store: Store, config: &ServeConfig) -> anyhow::Result<Arc<Notifications>> {
        let allow = config
            .notify_allow
            .iter()
            .map(|p| {
                let url =
                    Url::parse(p).with_context(|| format!("notify_allow: {p:?} is not a URL"))?;
                anyhow::ensure!(
                    matches!(url.scheme(), "http" | "https") && url.host_str().is_some(),
                    "notify_allow: {p:?} is not an http or https URL with a host"
                );
                Ok(url)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let http = reqwest::Client::builder()
            .timeout(TRY_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("orpod/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client for notifications")?;
        Ok(Arc::new(Notifications {
            store,
            allow,
            retries: config.notify_retries,
            wait_after: (config.notify_wait_after_s > 0)
                .then(|| Duration::from_secs(config.notify_wait_after_s)),
            http,
            sending: Arc::new(Semaphore::new(IN_FLIGHT)),
        }))
    }

    /// `Ok` with the URL as it will be used when it is under an allowed prefix; `Err` says
    /// what is allowed.
    pub fn check_url(&self, url: &str) -> Result<Url, String> {
        let allowed = || {
            if self.allow.is_empty() {
                "this server allows no notification endpoints (the operator lists URL prefixes \
                 in notify_allow in the daemon's config)"
                    .to_string()
            } else {
                let list: Vec<&str> = self.allow.iter().map(Url::as_str).collect();
                format!("allowed prefixes: {}", list.join(", "))
            }
        };
        let parsed = Url::parse(url).map_err(|e| format!("not a URL ({e}); {}", allowed()))?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(
                "a URL with a user or password is not taken; put a token in the path \
                        or query instead"
                    .into(),
            );
        }
        if self.allow.iter().any(|a| under(&parsed, a)) {
            Ok(parsed)
        } else {
            Err(format!("not under an allowed prefix; {}", allowed()))
        }
    }

    /// Reads the store's state changes and checks the queue for long waits until the daemon
    /// stops.
    pub async fn run(self: Arc<Self>) {
        let mut changes = self.store.transitions();
        let mut told_waiting = HashSet::new();
        let period = self.wait_after.map_or(Duration::from_secs(30), |w| {
            (w / 4).clamp(Duration::from_secs(1), Duration::from_secs(30))
        });
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.resume_pending();
        loop {
            tokio::select! {
                change = changes.recv() => match change {
                    Ok(job) => {
                        let event = match job.state {
                            JobState::Succeeded => NotifyOn::Succeeded,
                            JobState::Failed => NotifyOn::Failed,
                            JobState::Cancelled => NotifyOn::Cancelled,
                            _ => continue,
                        };
                        self.job_event(&job, event);
                    }
                    Err(RecvError::Lagged(n)) => tracing::warn!(
                        "notifications: missed {n} job state change(s) under load; their \
                         owners are not told"
                    ),
                    Err(RecvError::Closed) => return,
                },
                _ = tick.tick() => self.check_waits(&mut told_waiting),
            }
        }
    }

    /// Tells the owners of jobs queued longer than `notify_wait_after_s`, once per job.
    fn check_waits(&self, told: &mut HashSet<u64>) {
        let Some(after) = self.wait_after else { return };
        for id in self.store.queued() {
            if told.contains(&id) {
                continue;
            }
            let Ok(job) = self.store.job(id) else {
                continue;
            };
            if job.state == JobState::Queued && waited(&job).is_some_and(|w| w >= after) {
                told.insert(id);
                self.job_event(&job, NotifyOn::Waiting);
            }
        }
    }

    /// Starts a delivery to each of the owner's endpoints that wants `event`.
    fn job_event(&self, job: &JobView, event: NotifyOn) {
        let targets = match self.store.notify_targets(Some(&job.owner)) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(job = job.id, "notifications: cannot read endpoints: {e}");
                return;
            }
        };
        let note = Notification {
            event: event.as_str().into(),
            text: text(job, event),
            job: Some(Box::new(job.clone())),
        };
        for target in targets.into_iter().filter(|t| t.on.contains(&event)) {
            let pending = Pending {
                user: target.user.clone(),
                endpoint: target.id.clone(),
                note: note.clone(),
            };
            self.spawn_delivery(target, pending, false);
        }
    }

    /// Tries again what the daemon had not delivered, nor given up on, when it stopped; an
    /// endpoint removed meanwhile gets nothing.
    fn resume_pending(&self) {
        let pending = match self.store.pending() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("notifications: cannot read the undelivered ones: {e}");
                return;
            }
        };
        for p in pending {
            match self.store.notify_target(&p.endpoint) {
                Ok(Some(target)) if target.user == p.user => self.spawn_delivery(target, p, true),
                _ => {
                    let store = self.store.clone();
                    tokio::spawn(async move { store.delivered(&p).await });
                }
            }
        }
    }

    /// Sends `pending` to `target` on a task of its own: kept in the store first (unless it
    /// comes from there), dropped from it once delivered or given up on.
    fn spawn_delivery(&self, target: NotifyView, pending: Pending, kept: bool) {
        let (http, sending, retries) = (self.http.clone(), self.sending.clone(), self.retries);
        let store = self.store.clone();
        tokio::spawn(async move {
            if !kept {
                if let Err(e) = store.add_pending(&pending).await {
                    tracing::warn!(endpoint = %target.id, "notifications: not kept for a restart: {e}");
                }
            }
            let Ok(_turn) = sending.acquire_owned().await else {
                return;
            };
            let job = pending.note.job.as_ref().map_or(0, |j| j.id);
            deliver(&http, &target, &pending.note, retries, job).await;
            if let Err(e) = store.delivered(&pending).await {
                tracing::warn!(endpoint = %target.id, "notifications: cannot drop a sent one: {e}");
            }
        });
    }

    /// One try, no retries (`POST /v1/notify/{id}/test`).
    pub async fn send_test(&self, target: &NotifyView) -> Outcome {
        let note = Notification {
            event: "test".into(),
            text: format!(
                "orpod: a test notification for {} ({} endpoint {})",
                target.user,
                target.format.as_str(),
                target.id
            ),
            job: None,
        };
        send(&self.http, target, &note).await
    }
}

/// Whether `url` is under the prefix `allow`: same scheme, host and port, and a path equal to
/// the prefix's or below it (`/hooks` allows `/hooks` and `/hooks/x`, not `/hooksx`).
fn under(url: &Url, allow: &Url) -> bool {
    let (path, prefix) = (url.path(), allow.path());
    url.scheme() == allow.scheme()
        && url.host_str() == allow.host_str()
        && url.port_or_known_default() == allow.port_or_known_default()
        && (path == prefix
            || (path.starts_with(prefix)
                && (prefix.ends_with('/') || path.as_bytes().get(prefix.len()) == Some(&b'/'))))
}

/// Tries until delivered, refused for good, or out of retries; logs the end either way. The
/// URL is not logged (webhook URLs are often secrets): the endpoint's id and host are.
async fn deliver(
    http: &reqwest::Client,
    target: &NotifyView,
    note: &Notification,
    retries: u32,
    job: u64,
) {
    let host = Url::parse(&target.url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_default();
    let mut backoff = FIRST_BACKOFF;
    for attempt in 0..=retries {
        match send(http, target, note).await {
            Outcome::Delivered(status) => {
                tracing::info!(job, endpoint = %target.id, %host, status, event = %note.event,
                    "notification delivered");
                return;
            }
            Outcome::Failed { message, retry, .. } => {
                if !retry || attempt == retries {
                    tracing::warn!(job, endpoint = %target.id, %host, tries = attempt + 1,
                        event = %note.event, "notification not delivered: {message}");
                    return;
                }
                tracing::debug!(job, endpoint = %target.id, "notification try failed: {message}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(300));
            }
        }
    }
}

/// One POST in the endpoint's format.
async fn send(http: &reqwest::Client, target: &NotifyView, note: &Notification) -> Outcome {
    let req = http.post(&target.url);
    let req = match target.format {
        NotifyFormat::Json => req.json(note),
        NotifyFormat::Ntfy => {
            let (tags, priority) = match note.event.as_str() {
                "succeeded" => ("white_check_mark", "3"),
                "failed" => ("x", "4"),
                "cancelled" => ("no_entry_sign", "3"),
                "waiting" => ("hourglass", "3"),
                _ => ("bell", "3"),
            };
            // Header values must be ASCII: the title carries the id, the body the name.
            let title = match &note.job {
                Some(job) => format!("orpod: job {} {}", job.id, note.event),
                None => "orpod".to_string(),
            };
            req.header("Title", title)
                .header("Tags", tags)
                .header("Priority", priority)
                .header(reqwest::header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .body(note.text.clone())
        }
        NotifyFormat::Slack => req.json(&serde_json::json!({ "text": note.text })),
        NotifyFormat::Discord => {
            req.json(&serde_json::json!({ "content": note.text, "username": "orpod" }))
        }
    };
    match req.send().await {
        Ok(resp) if resp.status().is_success() => Outcome::Delivered(resp.status().as_u16()),
        Ok(resp) => {
            let status = resp.status();
            Outcome::Failed {
                status: Some(status.as_u16()),
                message: format!("the endpoint answered {status}"),
                retry: status.is_server_error()
                    || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                    || status.is_redirection(),
            }
        }
        Err(e) => Outcome::Failed {
            status: None,
            // Without the URL: reqwest's message would carry it.
            message: if e.is_timeout() {
                format!("no answer within {} s", TRY_TIMEOUT.as_secs())
            } else if e.is_connect() {
                "cannot connect".into()
            } else {
                "the request failed".into()
            },
            retry: true,
        },
    }
}

/// How long the job has been in the queue (since it was submitted).
fn waited(job: &JobView) -> Option<Duration> {
    let created = humantime::parse_rfc3339_weak(&job.created_at).ok()?;
    SystemTime::now().duration_since(created).ok()
}

/// The one line people read: what happened to which job, with the numbers that say how it
/// went.
pub fn text(job: &JobView, event: NotifyOn) -> String {
    let name = if job.name.is_empty() {
        format!("job {}", job.id)
    } else {
        format!("job {} ({})", job.id, job.name)
    };
    let p = &job.progress;
    let steps = format!("{} of {} steps", p.step, p.total_steps);
    let took = match (&job.started_at, &job.finished_at) {
        (Some(s), Some(f)) => span(s, f).map(|d| format!(" in {d}")).unwrap_or_default(),
        _ => String::new(),
    };
    let s = match event {
        NotifyOn::Succeeded => {
            let loss = job
                .metrics
                .as_ref()
                .and_then(|m| m.metrics.get("loss"))
                .map(|l| format!(", loss {l:.4}"))
                .unwrap_or_default();
            let eval = job
                .eval_metrics
                .as_ref()
                .and_then(|m| m.metrics.get("eval_loss").or(m.metrics.get("loss")))
                .map(|l| format!(", eval loss {l:.4}"))
                .unwrap_or_default();
            format!("{name} succeeded: {steps}{took}{loss}{eval}")
        }
        NotifyOn::Failed => {
            let why = job
                .error
                .as_ref()
                .map(|e| format!(": {}: {}", e.kind, e.message))
                .unwrap_or_default();
            format!("{name} failed after {steps}{took}{why}")
        }
        NotifyOn::Cancelled => format!("{name} was cancelled after {steps}"),
        NotifyOn::Waiting => {
            let waited = waited(job)
                .map(|w| format!(" for {}", round(w)))
                .unwrap_or_default();
            let why = job
                .pending_reason
                .as_ref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default();
            format!("{name} has waited in the queue{waited}{why}")
        }
    };
    s.chars().take(TEXT_MAX_CHARS).collect()
}

fn span(start: &str, end: &str) -> Option<String> {
    let s = humantime::parse_rfc3339_weak(start).ok()?;
    let e = humantime::parse_rfc3339_weak(end).ok()?;
    Some(round(e.duration_since(s).ok()?))
}

/// A duration to the second (`1h 2m 5s`).
fn round(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn endpoints_must_be_under_an_allowed_prefix() {
        let ntfy = url("https://ntfy.sh/");
        let hooks = url("http://10.0.0.5:8080/hooks");
        assert!(under(&url("https://ntfy.sh/lab"), &ntfy));
        assert!(under(&url("https://NTFY.sh:443/lab?x=1"), &ntfy));
        assert!(!under(&url("http://ntfy.sh/lab"), &ntfy), "scheme");
        assert!(!under(&url("https://ntfy.sh:8443/lab"), &ntfy), "port");
        assert!(!under(&url("https://ntfy.sh.evil.com/lab"), &ntfy), "host");
        assert!(under(&url("http://10.0.0.5:8080/hooks"), &hooks));
        assert!(under(&url("http://10.0.0.5:8080/hooks/a"), &hooks));
        assert!(!under(&url("http://10.0.0.5:8080/hooksx"), &hooks));
        assert!(!under(&url("http://10.0.0.5:8080/hooks/../admin"), &hooks));
        assert!(
            !under(&url("http://10.0.0.5/hooks/a"), &hooks),
            "default port"
        );
    }

    #[test]
    fn texts_say_what_happened_with_numbers() {
        let mut job: JobView = serde_json::from_value(serde_json::json!({
            "id": 12, "name": "tulu-orpo", "owner": "ada", "state": "succeeded",
            "pending_reason": null, "device": "cpu",
            "progress": {"step": 100, "total_steps": 100, "epoch": 1.0, "tokens": 0,
                         "elapsed_s": 0.0},
            "metrics": {"step": 100, "epoch": 1.0, "learning_rate": 0.0, "grad_norm": 1.0, "tokens": 0,
                        "elapsed_s": 0.0,
                        "metrics": {"loss": 0.41234}},
            "eval_metrics": null, "memory": {}, "error": null, "attempts": 1,
            "created_at": "2026-12-01T10:00:00Z", "started_at": "2026-12-01T10:00:00Z",
            "finished_at": "2026-12-01T11:02:05Z"
        }))
        .unwrap();
        assert_eq!(
            text(&job, NotifyOn::Succeeded),
            "job 12 (tulu-orpo) succeeded: 100 of 100 steps in 1h 2m 5s, loss 0.4123"
        );
        job.progress.step = 40;
        job.error = Some(orpo_api::JobError {
            kind: "oom".into(),
            message: "out of memory".into(),
        });
        assert_eq!(
            text(&job, NotifyOn::Failed),
            "job 12 (tulu-orpo) failed after 40 of 100 steps in 1h 2m 5s: oom: out of memory"
        );
        job.pending_reason = Some("needs 7.0 GiB".into());
        let waiting = text(&job, NotifyOn::Waiting);
        assert!(
            waiting.starts_with("job 12 (tulu-orpo) has waited in the queue for ")
                && waiting.ends_with(": needs 7.0 GiB"),
            "{waiting}"
        );
        job.error = Some(orpo_api::JobError {
            kind: "x".into(),
            message: "é".repeat(5000),
        });
        assert_eq!(text(&job, NotifyOn::Failed).chars().count(), TEXT_MAX_CHARS);
    }
}
