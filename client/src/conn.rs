//! The connection to the daemon: the typed client of `orpo-api` plus one place that turns its
//! errors into messages that say what to do next (which address was tried and where it came
//! from, which verb lists what was not found).

use std::time::Duration;

use orpo_api::client::{Client, ClientError};

use crate::config::Settings;

pub struct Conn {
    pub client: Client,
    pub settings: Settings,
}

impl Conn {
    pub fn new(settings: Settings) -> anyhow::Result<Conn> {
        let client = Client::with_token(
            &settings.server,
            settings.token.as_deref(),
            Duration::from_secs(5),
        )
        .map_err(|e| anyhow::anyhow!("{e}; check --token, ORPOD_TOKEN or the config file"))?;
        Ok(Conn { client, settings })
    }

    /// The message for a failed request.
    pub fn error(&self, e: ClientError) -> anyhow::Error {
        if e.is_unreachable() {
            return anyhow::anyhow!(
                "cannot reach orpod at {} (from {}): {}\n\
                 Check that the daemon runs there (`orpod serve`, or `systemctl status orpod`), \
                 that the host and port are right (--server, ORPOD_URL or \
                 ~/.config/orpoctl/config.toml), and that it listens on an address you can \
                 reach (`listen = \"0.0.0.0:8750\"` for the LAN).",
                self.settings.server,
                self.settings.server_from,
                root_cause(&e)
            );
        }
        match &e {
            ClientError::Api { code, message, .. } => {
                anyhow::anyhow!("{}", explain_api(&self.settings, code, message))
            }
            ClientError::Http(_) => anyhow::anyhow!(
                "talking to orpod at {} failed: {}",
                self.settings.server,
                root_cause(&e)
            ),
        }
    }
}

/// Where a token goes and who makes one: the second line of every 401.
pub const TOKEN_HINT: &str = "Set one with --token, ORPOD_TOKEN or `token = \"...\"` in \
    ~/.config/orpoctl/config.toml; an admin makes one with `orpoctl token create --user NAME` \
    (or `orpod token create --user NAME` on the server while the daemon is stopped).";

/// The message for an error answer of the daemon: its message and code, and for the codes a
/// person can act on, what to do next. A 401 says whether a token was sent at all (and from
/// where) and where one goes; a 403 is the daemon's own message, which says what was refused.
pub fn explain_api(settings: &Settings, code: &str, message: &str) -> String {
    match code {
        "unauthorized" => match &settings.token {
            None => format!(
                "orpod at {} needs a token and none is set (unauthorized)\n{TOKEN_HINT}",
                settings.server
            ),
            Some(_) => format!(
                "orpod at {} refused the token from {}: {} (unauthorized)\n{TOKEN_HINT}",
                settings.server,
                settings.token_from,
                refusal_reason(message)
            ),
        },
        _ => {
            let hint = match code {
                "job_not_found" => "\n`orpoctl list` shows the jobs.",
                "checkpoint_not_found" => "\n`orpoctl checkpoints ID` lists them.",
                _ => "",
            };
            format!("{message} ({code}){hint}")
        }
    }
}

/// The daemon's reason for a 401 without the advice it appends for any client (`...: send
/// \`Authorization: Bearer <token>\` (orpoctl: ...)`): [`TOKEN_HINT`] says it for orpoctl.
fn refusal_reason(message: &str) -> &str {
    match message.find(": send `Authorization") {
        Some(i) => &message[..i],
        None => message.trim_end(),
    }
}

/// The innermost cause ("Connection refused (os error 111)"), which is what a person can act on.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// `conn.call(client.job(id)).await?` maps the error with [`Conn::error`].
pub trait ApiResult<T> {
    fn or_explain(self, conn: &Conn) -> anyhow::Result<T>;
}

impl<T> ApiResult<T> for Result<T, ClientError> {
    fn or_explain(self, conn: &Conn) -> anyhow::Result<T> {
        self.map_err(|e| conn.error(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(token: Option<&str>, token_from: &'static str) -> Settings {
        Settings {
            server: "http://gpu-box:8750".into(),
            server_from: "ORPOD_URL",
            token: token.map(String::from),
            token_from,
            owner: "alice".into(),
        }
    }

    #[test]
    fn a_401_without_a_token_says_where_one_goes() {
        let msg = explain_api(
            &settings(None, ""),
            "unauthorized",
            "this daemon needs a token: send `Authorization: Bearer <token>` (orpoctl: ...)",
        );
        assert_eq!(
            msg,
            "orpod at http://gpu-box:8750 needs a token and none is set (unauthorized)\n\
             Set one with --token, ORPOD_TOKEN or `token = \"...\"` in \
             ~/.config/orpoctl/config.toml; an admin makes one with `orpoctl token create \
             --user NAME` (or `orpod token create --user NAME` on the server while the daemon \
             is stopped)."
        );
    }

    #[test]
    fn a_401_with_a_token_gives_the_daemons_reason_and_the_hint() {
        let msg = explain_api(
            &settings(Some("orpod_x"), "ORPOD_TOKEN"),
            "unauthorized",
            "the token expired at 2026-11-27T12:00:00Z: send `Authorization: Bearer <token>` \
             (orpoctl: --token, ORPOD_TOKEN or ...)",
        );
        assert_eq!(
            msg,
            format!(
                "orpod at http://gpu-box:8750 refused the token from ORPOD_TOKEN: the token \
                 expired at 2026-11-27T12:00:00Z (unauthorized)\n{TOKEN_HINT}"
            )
        );
        // A reason without the daemon's advice is shown whole.
        let msg = explain_api(
            &settings(Some("x"), "--token"),
            "unauthorized",
            "unknown token",
        );
        assert!(
            msg.starts_with(
                "orpod at http://gpu-box:8750 refused the token from --token: unknown token \
                 (unauthorized)\nSet one with --token"
            ),
            "{msg}"
        );
    }

    #[test]
    fn a_403_is_the_daemons_message() {
        let msg = explain_api(
            &settings(Some("x"), "--token"),
            "forbidden",
            "job 3 belongs to alice; only its owner or an admin may cancel it",
        );
        assert_eq!(
            msg,
            "job 3 belongs to alice; only its owner or an admin may cancel it (forbidden)"
        );
        assert_eq!(
            explain_api(&settings(None, ""), "job_not_found", "no job 42"),
            "no job 42 (job_not_found)\n`orpoctl list` shows the jobs."
        );
    }
}
