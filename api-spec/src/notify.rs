//! Word when a job ends (`/v1/notify`): each user names webhook endpoints, among those the
//! server's admin allows, and the daemon posts to them when one of their jobs succeeds, fails,
//! is cancelled or has waited long.

use serde::{Deserialize, Serialize};

use crate::JobView;

/// The most endpoints one user may have.
pub const MAX_NOTIFY_PER_USER: usize = 16;

/// The longest endpoint URL, in bytes.
pub const NOTIFY_URL_MAX_BYTES: usize = 2048;

/// How a notification is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum NotifyFormat {
    /// A [`Notification`] as JSON.
    Json,
    /// ntfy (ntfy.sh or self-hosted): the text as the body, `Title`, `Tags` and `Priority`
    /// headers.
    Ntfy,
    /// A Slack incoming webhook, or anything Slack-compatible (Mattermost, Rocket.Chat,
    /// Discord's `/slack` URLs): `{"text": ...}`.
    Slack,
    /// A Discord webhook: `{"content": ..., "username": "orpod"}`.
    Discord,
}

impl NotifyFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyFormat::Json => "json",
            NotifyFormat::Ntfy => "ntfy",
            NotifyFormat::Slack => "slack",
            NotifyFormat::Discord => "discord",
        }
    }

    /// The format a URL's service speaks: ntfy for a host starting with `ntfy.`, Slack for
    /// `hooks.slack.com` and any URL ending in `/slack`, Discord for its webhooks, else JSON.
    pub fn guess(url: &str) -> NotifyFormat {
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let host = rest.split(['/', ':', '?']).next().unwrap_or("");
        let path = rest.split('?').next().unwrap_or("");
        if host.starts_with("ntfy.") {
            NotifyFormat::Ntfy
        } else if host == "hooks.slack.com" || path.ends_with("/slack") {
            NotifyFormat::Slack
        } else if (host == "discord.com" || host == "discordapp.com")
            && path.contains("/api/webhooks/")
        {
            NotifyFormat::Discord
        } else {
            NotifyFormat::Json
        }
    }
}

/// What a notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum NotifyOn {
    Succeeded,
    Failed,
    Cancelled,
    /// The job has been queued longer than the server's `notify_wait_after_s` (once per job).
    Waiting,
}

impl NotifyOn {
    /// What an endpoint gets when `on` is left out: a job's end and a long wait, not a cancel
    /// (the owner usually cancelled it).
    pub const DEFAULT: [NotifyOn; 3] = [NotifyOn::Succeeded, NotifyOn::Failed, NotifyOn::Waiting];

    pub fn as_str(self) -> &'static str {
        match self {
            NotifyOn::Succeeded => "succeeded",
            NotifyOn::Failed => "failed",
            NotifyOn::Cancelled => "cancelled",
            NotifyOn::Waiting => "waiting",
        }
    }
}

impl std::str::FromStr for NotifyOn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "succeeded" => Ok(NotifyOn::Succeeded),
            "failed" => Ok(NotifyOn::Failed),
            "cancelled" => Ok(NotifyOn::Cancelled),
            "waiting" => Ok(NotifyOn::Waiting),
            other => Err(format!(
                "{other:?} is not an event: use succeeded, failed, cancelled or waiting"
            )),
        }
    }
}

/// `POST /v1/notify`: a new endpoint for the caller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewNotify {
    /// Whose endpoint; default: the caller. Another user's needs an admin; on an open daemon
    /// (no users) it is the job owner name to notify for, as `owner` is for a submit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schema(min_length = 1, max_length = 64))]
    pub user: Option<String>,
    /// An `http` or `https` URL under one of the prefixes in the daemon's `notify_allow`.
    #[cfg_attr(feature = "schema", schema(min_length = 1, max_length = 2048))]
    pub url: String,
    /// Default: guessed from the URL ([`NotifyFormat::guess`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<NotifyFormat>,
    /// Default: succeeded, failed and waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<Vec<NotifyOn>>,
}

/// An endpoint as stored and listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct NotifyView {
    /// Its id (`orpoctl notify rm ID`).
    pub id: String,
    pub user: String,
    pub url: String,
    pub format: NotifyFormat,
    pub on: Vec<NotifyOn>,
    /// RFC 3339.
    pub created_at: String,
}

/// `POST /v1/notify/{id}/test`: how one test delivery went (no retries).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct NotifyTestView {
    pub delivered: bool,
    /// The endpoint's HTTP status, when it answered.
    pub status: Option<u16>,
    /// What happened, in words.
    pub message: String,
}

/// The body of a `json` notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Notification {
    /// `succeeded`, `failed`, `cancelled`, `waiting`, or `test` (`orpoctl notify test`).
    pub event: String,
    /// One line for people, as ntfy and Slack show it.
    pub text: String,
    /// The job as its owner sees it (absent for a test).
    pub job: Option<Box<JobView>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_guessed_from_the_url() {
        let cases = [
            ("https://ntfy.sh/lab-runs", NotifyFormat::Ntfy),
            ("http://ntfy.home.lan:8080/x", NotifyFormat::Ntfy),
            (
                "https://hooks.slack.com/services/T/B/X",
                NotifyFormat::Slack,
            ),
            (
                "https://discord.com/api/webhooks/1/abc",
                NotifyFormat::Discord,
            ),
            (
                "https://discord.com/api/webhooks/1/abc/slack",
                NotifyFormat::Slack,
            ),
            ("http://127.0.0.1:9000/hook", NotifyFormat::Json),
            ("https://example.com/ntfy.sh", NotifyFormat::Json),
        ];
        for (url, want) in cases {
            assert_eq!(NotifyFormat::guess(url), want, "{url}");
        }
    }
}
