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
                let hint = match code.as_str() {
                    "job_not_found" => "\n`orpoctl list` shows the jobs.",
                    "checkpoint_not_found" => "\n`orpoctl checkpoints ID` lists them.",
                    "unauthorized" | "forbidden" => {
                        "\nCheck the token (--token, ORPOD_TOKEN or the config file)."
                    }
                    _ => "",
                };
                anyhow::anyhow!("{message} ({code}){hint}")
            }
            ClientError::Http(_) => anyhow::anyhow!(
                "talking to orpod at {} failed: {}",
                self.settings.server,
                root_cause(&e)
            ),
        }
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
