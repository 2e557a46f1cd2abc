//! Which server and token to use. Flags win over the environment (`ORPOD_URL`, `ORPOD_TOKEN`),
//! which wins over `~/.config/orpoctl/config.toml` (or `$XDG_CONFIG_HOME/orpoctl/config.toml`):
//!
//! ```toml
//! server = "http://gpu-box:8750"
//! token = "..."
//! owner = "alice"      # shown in `orpoctl list`; defaults to $USER (or $LOGNAME)
//! ```

use std::path::PathBuf;

use anyhow::Context as _;
use serde::Deserialize;

use crate::cli::Global;
use crate::UsageError;

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8750";

/// The settings a command runs with, and where the server came from (for error messages).
#[derive(Debug, Clone)]
pub struct Settings {
    pub server: String,
    pub server_from: &'static str,
    /// Sent as a bearer token; never empty.
    pub token: Option<String>,
    /// Where the token came from (`--token`, `ORPOD_TOKEN`, the config file), for error
    /// messages; empty when there is none.
    pub token_from: &'static str,
    /// The owner named in submits to an open daemon (one without users); with a token the
    /// daemon takes the token's user instead.
    pub owner: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    server: Option<String>,
    token: Option<String>,
    owner: Option<String>,
}

/// `$XDG_CONFIG_HOME/orpoctl/config.toml`, else `~/.config/orpoctl/config.toml`.
pub fn config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("orpoctl/config.toml"))
}

pub fn resolve(global: &Global) -> anyhow::Result<Settings> {
    let file = match config_path() {
        Some(path) if path.exists() => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str::<FileConfig>(&text).map_err(|e| {
                UsageError(format!(
                    "{}: {}\n(its keys are server, token and owner)",
                    path.display(),
                    e.to_string().trim_end()
                ))
            })?
        }
        _ => FileConfig::default(),
    };
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let (server, server_from) = if let Some(s) = &global.server {
        (s.clone(), "--server")
    } else if let Some(s) = env("ORPOD_URL") {
        (s, "ORPOD_URL")
    } else if let Some(s) = file.server {
        (s, "~/.config/orpoctl/config.toml")
    } else {
        (DEFAULT_SERVER.to_string(), "the default")
    };
    let server = normalise(&server)?;
    // The first place that names one wins; an empty one there (`--token ""`) means none.
    let (token, token_from) = if let Some(t) = &global.token {
        (Some(t.clone()), "--token")
    } else if let Some(t) = env("ORPOD_TOKEN") {
        (Some(t), "ORPOD_TOKEN")
    } else if let Some(t) = file.token {
        (Some(t), "~/.config/orpoctl/config.toml")
    } else {
        (None, "")
    };
    let token = token.filter(|t| !t.trim().is_empty());
    let token_from = if token.is_some() { token_from } else { "" };
    let owner = file
        .owner
        .or_else(|| env("USER"))
        .or_else(|| env("LOGNAME"))
        .unwrap_or_else(|| "anonymous".into());
    Ok(Settings {
        server,
        server_from,
        token,
        token_from,
        owner,
    })
}

/// `gpu-box:8750` → `http://gpu-box:8750`: people type what they see in `orpod serve`'s log.
fn normalise(server: &str) -> anyhow::Result<String> {
    let s = server.trim().trim_end_matches('/');
    if s.is_empty() {
        return Err(UsageError("the server URL is empty".into()).into());
    }
    if s.starts_with("http://") || s.starts_with("https://") {
        Ok(s.to_string())
    } else if s.contains("://") {
        Err(UsageError(format!(
            "{server:?}: only http:// and https:// servers are supported"
        ))
        .into())
    } else {
        Ok(format!("http://{s}"))
    }
}

#[cfg(test)]
mod tests {
    use super::normalise;

    #[test]
    fn bare_host_port_gets_http() {
        assert_eq!(normalise("gpu-box:8750").unwrap(), "http://gpu-box:8750");
        assert_eq!(normalise("https://x/").unwrap(), "https://x");
        assert!(normalise("ftp://x").is_err());
    }
}
