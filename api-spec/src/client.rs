//! A typed client of the v1 API (feature `client`): one method per route, errors decoded from
//! the daemon's error body. `orpoctl` and the end-to-end tests use it.
//!
//! Long answers are handed over as streams rather than read whole: [`Client::follow_events`]
//! parses the server-sent events of `GET /v1/jobs/{id}/events?follow=true` ([`Client::generate`]
//! those of `POST /v1/jobs/{id}/generate`), and
//! [`Client::download_from`] returns the response of a (ranged) checkpoint download, so a caller
//! can write it to disk chunk by chunk and show progress.

use std::time::Duration;

use futures_util::{Stream, StreamExt};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;

use crate::{
    CallerView, CheckpointView, CreatedToken, DatasetView, ErrorBody, EventView, GenerateEvent,
    GenerateRequest, GpusView, HealthView, JobList, JobState, JobView, MetricRecord, NewNotify,
    NewToken, NewUser, NotifyTestView, NotifyView, PlanView, SubmitJobRequest, TokenView, UserView,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon answered with an error body.
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// No answer, or one that is not the API's.
    #[error("{0}")]
    Http(#[from] reqwest::Error),
}

impl ClientError {
    /// The API error code (`job_not_found`, ...), when the daemon sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            ClientError::Http(_) => None,
        }
    }

    /// No daemon answered at all (connection refused, no route, timed out connecting): the
    /// caller should say which address it tried, not report an HTTP error.
    pub fn is_unreachable(&self) -> bool {
        match self {
            ClientError::Http(e) => e.is_connect() || (e.is_timeout() && e.status().is_none()),
            ClientError::Api { .. } => false,
        }
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// Filters of `GET /v1/jobs`.
#[derive(Debug, Clone, Default)]
pub struct ListJobs {
    pub state: Option<JobState>,
    pub owner: Option<String>,
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

/// A connection to one daemon (`http://127.0.0.1:8750`).
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base_url: &str) -> Client {
        Client {
            base: base_url.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
        }
    }

    /// A client that sends `Authorization: Bearer <token>` with every request when a token is
    /// given, and gives up connecting after `connect_timeout` (a LAN host that is off should
    /// not hang the command for minutes).
    pub fn with_token(
        base_url: &str,
        token: Option<&str>,
        connect_timeout: Duration,
    ) -> Result<Client> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(t) = token.filter(|t| !t.is_empty()) {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {t}"))
                .map_err(|_| ClientError::Api {
                    status: 0,
                    code: "bad_token".into(),
                    message: "the token has characters a header cannot carry".into(),
                })?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(connect_timeout)
            .build()?;
        Ok(Client {
            base: base_url.trim_end_matches('/').to_string(),
            http,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The underlying reqwest client, for routes read as streams (SSE).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub async fn health(&self) -> Result<HealthView> {
        decode(self.http.get(self.url("/healthz")).send().await?).await
    }

    /// Uploads a JSONL preference file; the daemon checks every row.
    pub async fn upload_dataset(&self, bytes: Vec<u8>) -> Result<DatasetView> {
        let req = self
            .http
            .post(self.url("/v1/datasets"))
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
            .body(bytes);
        decode(req.send().await?).await
    }

    /// The stored data set with this sha256, or `None` when the server does not have it.
    pub async fn dataset(&self, sha256: &str) -> Result<Option<DatasetView>> {
        let resp = self
            .http
            .get(self.url(&format!("/v1/datasets/{sha256}")))
            .send()
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        decode(resp).await.map(Some)
    }

    pub async fn submit(&self, req: &SubmitJobRequest) -> Result<JobView> {
        decode(
            self.http
                .post(self.url("/v1/jobs"))
                .json(req)
                .send()
                .await?,
        )
        .await
    }

    /// Submits with an `Idempotency-Key` and retries while no answer came back (the daemon
    /// restarting, a dropped connection) or it answered 5xx: `attempts` tries in all, waiting
    /// 0.5, 1, 2, ... s (at most 8 s) between them. The key makes a retry of a submit that
    /// did reach the store return that job instead of queueing a second one.
    pub async fn submit_idempotent(
        &self,
        req: &SubmitJobRequest,
        key: &str,
        attempts: u32,
    ) -> Result<JobView> {
        let mut wait = Duration::from_millis(500);
        let mut tried = 0;
        loop {
            tried += 1;
            let sent = self
                .http
                .post(self.url("/v1/jobs"))
                .header("Idempotency-Key", key)
                .json(req)
                .send()
                .await;
            let result = match sent {
                Ok(resp) => decode(resp).await,
                Err(e) => Err(ClientError::Http(e)),
            };
            let retry = match &result {
                Err(ClientError::Http(e)) => e.is_connect() || e.is_request() || e.is_timeout(),
                Err(ClientError::Api { status, .. }) => *status >= 500 && *status != 507,
                Ok(_) => false,
            };
            if !retry || tried >= attempts {
                return result;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(8));
        }
    }

    /// Deletes an uploaded data set that no unfinished job names.
    pub async fn delete_dataset(&self, sha256: &str) -> Result<DatasetView> {
        decode(
            self.http
                .delete(self.url(&format!("/v1/datasets/{sha256}")))
                .send()
                .await?,
        )
        .await
    }

    /// Deletes a finished job with its history and files.
    pub async fn delete_job(&self, id: u64) -> Result<JobView> {
        decode(
            self.http
                .delete(self.url(&format!("/v1/jobs/{id}")))
                .send()
                .await?,
        )
        .await
    }

    pub async fn list(&self, q: &ListJobs) -> Result<JobList> {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(s) = q.state {
            query.push(("state", s.as_str().into()));
        }
        if let Some(o) = &q.owner {
            query.push(("owner", o.clone()));
        }
        if let Some(l) = q.limit {
            query.push(("limit", l.to_string()));
        }
        if let Some(c) = &q.cursor {
            query.push(("cursor", c.clone()));
        }
        let req = self.http.get(self.url("/v1/jobs")).query(&query);
        decode(req.send().await?).await
    }

    pub async fn job(&self, id: u64) -> Result<JobView> {
        decode(
            self.http
                .get(self.url(&format!("/v1/jobs/{id}")))
                .send()
                .await?,
        )
        .await
    }

    pub async fn cancel(&self, id: u64) -> Result<JobView> {
        self.post_verb(id, "cancel").await
    }

    pub async fn pause(&self, id: u64) -> Result<JobView> {
        self.post_verb(id, "pause").await
    }

    pub async fn resume(&self, id: u64) -> Result<JobView> {
        self.post_verb(id, "resume").await
    }

    async fn post_verb(&self, id: u64, verb: &str) -> Result<JobView> {
        let url = self.url(&format!("/v1/jobs/{id}/{verb}"));
        decode(self.http.post(url).send().await?).await
    }

    /// Records with `step > since`.
    pub async fn metrics(&self, id: u64, since: Option<usize>) -> Result<Vec<MetricRecord>> {
        let mut req = self.http.get(self.url(&format!("/v1/jobs/{id}/metrics")));
        if let Some(s) = since {
            req = req.query(&[("since", s)]);
        }
        decode(req.send().await?).await
    }

    /// Events with `seq > since` (not following).
    pub async fn events(&self, id: u64, since: Option<u64>) -> Result<Vec<EventView>> {
        let mut req = self.http.get(self.url(&format!("/v1/jobs/{id}/events")));
        if let Some(s) = since {
            req = req.query(&[("since", s)]);
        }
        decode(req.send().await?).await
    }

    /// Follows a job's events as server-sent events: every event with `seq > since`, then new
    /// ones as they happen. The stream ends after the job reaches a final state.
    pub async fn follow_events(
        &self,
        id: u64,
        since: Option<u64>,
    ) -> Result<impl Stream<Item = Result<EventView>> + Unpin> {
        let mut req = self
            .http
            .get(self.url(&format!("/v1/jobs/{id}/events")))
            .query(&[("follow", "true")]);
        if let Some(s) = since {
            req = req.query(&[("since", s)]);
        }
        Ok(sse_stream(check(req.send().await?).await?))
    }

    /// Answers from a job's checkpoint (`POST /v1/jobs/{id}/generate`): its events as they
    /// come; the stream ends after `done` or `error`. Dropping it stops the daemon's worker.
    pub async fn generate(
        &self,
        id: u64,
        req: &GenerateRequest,
    ) -> Result<impl Stream<Item = Result<GenerateEvent>> + Unpin> {
        let url = self.url(&format!("/v1/jobs/{id}/generate"));
        Ok(sse_stream(
            check(self.http.post(url).json(req).send().await?).await?,
        ))
    }

    /// The SVG chart of one metric of a job (`learning_rate`, `grad_norm`, or a TRL name such
    /// as `rewards/accuracies`, whose slash is percent-encoded in the path).
    pub async fn chart(&self, id: u64, metric: &str) -> Result<String> {
        let bad_url = |message: String| ClientError::Api {
            status: 0,
            code: "bad_url".into(),
            message,
        };
        let mut url = reqwest::Url::parse(&self.url(&format!("/v1/jobs/{id}/charts")))
            .map_err(|e| bad_url(format!("the server address does not make a URL: {e}")))?;
        url.path_segments_mut()
            .map_err(|()| bad_url("the server address cannot take a path".into()))?
            .push(&format!("{metric}.svg"));
        Ok(check(self.http.get(url).send().await?)
            .await?
            .text()
            .await?)
    }

    pub async fn checkpoints(&self, id: u64) -> Result<Vec<CheckpointView>> {
        let url = self.url(&format!("/v1/jobs/{id}/checkpoints"));
        decode(self.http.get(url).send().await?).await
    }

    /// One checkpoint file; `range` is an HTTP Range value such as `bytes=0-99`.
    pub async fn download(
        &self,
        id: u64,
        checkpoint: &str,
        file: &str,
        range: Option<&str>,
    ) -> Result<Vec<u8>> {
        let url = self.url(&format!(
            "/v1/jobs/{id}/checkpoints/{checkpoint}/files/{file}"
        ));
        let mut req = self.http.get(url);
        if let Some(r) = range {
            req = req.header(reqwest::header::RANGE, r);
        }
        let resp = check(req.send().await?).await?;
        Ok(resp.bytes().await?.to_vec())
    }

    /// Starts a download of one checkpoint file at byte `offset` (a `Range` request when it is
    /// not 0). The answer is 206 when the server honoured the range, 200 when it sends the
    /// whole file; read it with `chunk()`.
    pub async fn download_from(
        &self,
        id: u64,
        checkpoint: &str,
        file: &str,
        offset: u64,
    ) -> Result<reqwest::Response> {
        let url = self.url(&format!(
            "/v1/jobs/{id}/checkpoints/{checkpoint}/files/{file}"
        ));
        let mut req = self.http.get(url);
        if offset > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={offset}-"));
        }
        check(req.send().await?).await
    }

    /// Who the daemon takes this client for.
    pub async fn me(&self) -> Result<CallerView> {
        decode(self.http.get(self.url("/v1/me")).send().await?).await
    }

    /// Every user (admins).
    pub async fn users(&self) -> Result<Vec<UserView>> {
        decode(self.http.get(self.url("/v1/users")).send().await?).await
    }

    /// Adds a user (admins).
    pub async fn add_user(&self, user: &NewUser) -> Result<UserView> {
        decode(
            self.http
                .post(self.url("/v1/users"))
                .json(user)
                .send()
                .await?,
        )
        .await
    }

    /// Removes a user (admins): their tokens, endpoints and data set claims go.
    pub async fn remove_user(&self, name: &str) -> Result<UserView> {
        decode(
            self.http
                .delete(self.url(&format!("/v1/users/{name}")))
                .send()
                .await?,
        )
        .await
    }

    /// Creates a token (for the caller, or for `user` when an admin asks).
    pub async fn create_token(&self, req: &NewToken) -> Result<CreatedToken> {
        decode(
            self.http
                .post(self.url("/v1/tokens"))
                .json(req)
                .send()
                .await?,
        )
        .await
    }

    /// The caller's tokens (an admin's: everyone's).
    pub async fn tokens(&self) -> Result<Vec<TokenView>> {
        decode(self.http.get(self.url("/v1/tokens")).send().await?).await
    }

    /// Revokes a token by its id; it stops working at once.
    pub async fn revoke_token(&self, id: &str) -> Result<TokenView> {
        decode(
            self.http
                .delete(self.url(&format!("/v1/tokens/{id}")))
                .send()
                .await?,
        )
        .await
    }

    /// The caller's notification endpoints (an admin's: everyone's).
    pub async fn notify_targets(&self) -> Result<Vec<NotifyView>> {
        decode(self.http.get(self.url("/v1/notify")).send().await?).await
    }

    /// Adds a notification endpoint for the caller.
    pub async fn add_notify(&self, req: &NewNotify) -> Result<NotifyView> {
        decode(
            self.http
                .post(self.url("/v1/notify"))
                .json(req)
                .send()
                .await?,
        )
        .await
    }

    /// Removes a notification endpoint by its id.
    pub async fn remove_notify(&self, id: &str) -> Result<NotifyView> {
        decode(
            self.http
                .delete(self.url(&format!("/v1/notify/{id}")))
                .send()
                .await?,
        )
        .await
    }

    /// Sends one test notification to an endpoint and says how it went.
    pub async fn test_notify(&self, id: &str) -> Result<NotifyTestView> {
        decode(
            self.http
                .post(self.url(&format!("/v1/notify/{id}/test")))
                .send()
                .await?,
        )
        .await
    }

    pub async fn gpus(&self) -> Result<GpusView> {
        decode(self.http.get(self.url("/v1/gpus")).send().await?).await
    }

    pub async fn plan(&self, req: &SubmitJobRequest) -> Result<PlanView> {
        decode(
            self.http
                .post(self.url("/v1/plan"))
                .json(req)
                .send()
                .await?,
        )
        .await
    }
}

/// Where the first complete SSE frame of `buf` ends (after its blank line).
fn frame_end(buf: &[u8]) -> Option<usize> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The server-sent events of `resp`, each frame's `data` read as a `T`.
fn sse_stream<T: DeserializeOwned + 'static>(
    resp: reqwest::Response,
) -> impl Stream<Item = Result<T>> + Unpin {
    let bytes = resp.bytes_stream();
    // SSE frames end with a blank line; a frame can span chunks, so bytes are buffered until
    // one is complete. Only `data:` lines matter: each frame's carries one `T`.
    let events = futures_util::stream::unfold(
        (bytes, Vec::<u8>::new(), std::collections::VecDeque::new()),
        |(mut bytes, mut buf, mut ready)| async move {
            loop {
                if let Some(item) = ready.pop_front() {
                    return Some((item, (bytes, buf, ready)));
                }
                match bytes.next().await {
                    Some(Ok(chunk)) => {
                        buf.extend_from_slice(&chunk);
                        while let Some(end) = frame_end(&buf) {
                            let frame: Vec<u8> = buf.drain(..end).collect();
                            if let Some(ev) = parse_frame(&frame) {
                                ready.push_back(ev);
                            }
                        }
                    }
                    Some(Err(e)) => return Some((Err(e.into()), (bytes, buf, ready))),
                    None => return None,
                }
            }
        },
    );
    Box::pin(events)
}

/// The event in one SSE frame (its `data:` lines joined), if it has one.
fn parse_frame<T: DeserializeOwned>(frame: &[u8]) -> Option<Result<T>> {
    let text = String::from_utf8_lossy(frame);
    let data: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect();
    if data.is_empty() {
        return None;
    }
    Some(
        serde_json::from_str(&data.join("\n")).map_err(|e| ClientError::Api {
            status: 200,
            code: "bad_event".into(),
            message: format!("the daemon sent an event this client cannot read: {e}"),
        }),
    )
}

/// Turns a non-2xx answer into [`ClientError::Api`].
async fn check(resp: reqwest::Response) -> Result<reqwest::Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let text = resp.text().await?;
    Err(match serde_json::from_str::<ErrorBody>(&text) {
        Ok(body) => ClientError::Api {
            status: status.as_u16(),
            code: body.error.code,
            message: body.error.message,
        },
        Err(_) => ClientError::Api {
            status: status.as_u16(),
            code: status_code_name(status),
            message: text,
        },
    })
}

fn status_code_name(status: StatusCode) -> String {
    status
        .canonical_reason()
        .unwrap_or("error")
        .to_ascii_lowercase()
        .replace(' ', "_")
}

async fn decode<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T> {
    Ok(check(resp).await?.json().await?)
}
