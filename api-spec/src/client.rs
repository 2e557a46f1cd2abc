//! A typed client of the v1 API (feature `client`): one method per route, errors decoded from
//! the daemon's error body. `orpoctl` and the end-to-end tests use it.

use reqwest::StatusCode;
use serde::de::DeserializeOwned;

use crate::{
    CheckpointView, DatasetView, ErrorBody, EventView, GpusView, HealthView, JobList, JobState,
    JobView, MetricRecord, PlanView, SubmitJobRequest,
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
        let req = self.http.post(self.url("/v1/datasets")).body(bytes);
        decode(req.send().await?).await
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
