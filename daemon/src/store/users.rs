//! Users, their API tokens and who uploaded which data set.
//!
//! - `users`: name → [`UserView`].
//! - `tokens`: hex sha256 of the token → [`TokenRecord`]. The token itself is never stored: it
//!   has 256 random bits, so its hash is enough to find it and useless to whoever reads the
//!   database. A revoked token's record is removed.
//! - `dataset_owners`: `sha256 \0 user` → nothing: `user` uploaded the data set. Data sets are
//!   stored once per content; each uploader holds a claim, and only they (and admins) may name
//!   it in a job or delete it.

use orpo_api::{TokenView, UserView};
use serde::{Deserialize, Serialize};

use super::{from_json, to_json, Result, Store, StoreError};

/// A token as stored: what `GET /v1/tokens` shows, and its expiry in Unix seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub view: TokenView,
    pub expires_unix: Option<u64>,
}

/// What [`Store::remove_user`] removed.
#[derive(Debug, Clone, PartialEq)]
pub struct RemovedUser {
    pub user: UserView,
    pub tokens: usize,
    pub endpoints: usize,
    /// Data sets they had uploaded (the files stay for other uploaders and admins).
    pub claims: usize,
}

fn claim_key(sha256: &str, user: &str) -> Vec<u8> {
    [sha256.as_bytes(), b"\0", user.as_bytes()].concat()
}

impl Store {
    /// Whether any user exists; without one the daemon runs open (loopback only).
    pub fn has_users(&self) -> Result<bool> {
        Ok(self.t()?.users.first()?.is_some())
    }

    pub fn user(&self, name: &str) -> Result<Option<UserView>> {
        self.t()?
            .users
            .get(name.as_bytes())?
            .map(|v| from_json("users", &v))
            .transpose()
    }

    /// Every user, by name.
    pub fn users(&self) -> Result<Vec<UserView>> {
        self.t()?
            .users
            .iter()
            .values()
            .map(|v| from_json("users", &v?))
            .collect()
    }

    /// Adds a user; [`StoreError::Rejected`] when the name is taken.
    pub async fn add_user(&self, user: UserView) -> Result<UserView> {
        self.writer
            .run(true, move |t| {
                if t.users.contains_key(user.name.as_bytes())? {
                    return Err(StoreError::Rejected(format!(
                        "user {} already exists",
                        user.name
                    )));
                }
                t.users.insert(user.name.as_bytes(), to_json(&user))?;
                Ok(user)
            })
            .await
    }

    /// Removes a user with their tokens, notification endpoints and data set claims; their
    /// finished jobs stay, under their name. `None` when there is no such user.
    ///
    /// [`StoreError::Rejected`] while the user has unfinished jobs (cancel them first), and
    /// for the last admin while other users remain (no one could manage them), or at all
    /// when `keep_an_admin` (the API: removing it would leave a running daemon with no admin,
    /// or open).
    pub async fn remove_user(
        &self,
        name: String,
        keep_an_admin: bool,
    ) -> Result<Option<RemovedUser>> {
        self.writer
            .run(true, move |t| {
                let Some(user) = t.users.get(name.as_bytes())? else {
                    return Ok(None);
                };
                let user: UserView = from_json("users", &user)?;
                if user.admin {
                    let mut others = 0;
                    let mut admins = 0;
                    for v in t.users.iter().values() {
                        let u: UserView = from_json("users", &v?)?;
                        if u.name != name {
                            others += 1;
                            admins += usize::from(u.admin);
                        }
                    }
                    if admins == 0 && (keep_an_admin || others > 0) {
                        return Err(StoreError::Rejected(format!(
                            "{name} is the last admin; make another admin first (`orpod user \
                             add NAME --admin` on the stopped daemon's state folder)"
                        )));
                    }
                }
                let mut unfinished = Vec::new();
                for v in t.jobs.iter().values() {
                    let job = super::job_from_json(&v?)?;
                    if job.owner == name && !job.state.is_terminal() {
                        unfinished.push(job.id.to_string());
                    }
                }
                if !unfinished.is_empty() {
                    return Err(StoreError::Rejected(format!(
                        "{name} has unfinished jobs ({}); cancel them first (`orpoctl cancel \
                         ID`) or let them end",
                        unfinished.join(", ")
                    )));
                }
                let mut removed = RemovedUser {
                    user,
                    tokens: 0,
                    endpoints: 0,
                    claims: 0,
                };
                for kv in t.tokens.iter() {
                    let (k, v) = kv?;
                    let record: TokenRecord = from_json("tokens", &v)?;
                    if record.view.user == name {
                        t.tokens.remove(k)?;
                        removed.tokens += 1;
                    }
                }
                for k in t.notify.scan_prefix(super::notify::key(&name, "")).keys() {
                    t.notify.remove(k?)?;
                    removed.endpoints += 1;
                }
                for k in t.dataset_owners.iter().keys() {
                    let k = k?;
                    if k.splitn(2, |&b| b == 0).nth(1) == Some(name.as_bytes()) {
                        t.dataset_owners.remove(k)?;
                        removed.claims += 1;
                    }
                }
                t.users.remove(name.as_bytes())?;
                Ok(Some(removed))
            })
            .await
    }

    /// Stores a token under its hash; [`StoreError::Rejected`] when its user does not exist.
    pub async fn add_token(&self, hash: String, record: TokenRecord) -> Result<()> {
        self.writer
            .run(true, move |t| {
                if !t.users.contains_key(record.view.user.as_bytes())? {
                    return Err(StoreError::Rejected(format!(
                        "no user {}: add it first",
                        record.view.user
                    )));
                }
                t.tokens.insert(hash.as_bytes(), to_json(&record))?;
                Ok(())
            })
            .await
    }

    /// The token with this hash, if it exists (expired ones too: the caller tells them apart).
    pub fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>> {
        self.t()?
            .tokens
            .get(hash.as_bytes())?
            .map(|v| from_json("tokens", &v))
            .transpose()
    }

    /// Tokens of `user` (all users' when `None`), oldest first.
    pub fn tokens(&self, user: Option<&str>) -> Result<Vec<TokenRecord>> {
        let mut out = Vec::new();
        for v in self.t()?.tokens.iter().values() {
            let record: TokenRecord = from_json("tokens", &v?)?;
            if user.is_none_or(|u| u == record.view.user) {
                out.push(record);
            }
        }
        out.sort_by(|a, b| a.view.created_at.cmp(&b.view.created_at));
        Ok(out)
    }

    /// Removes the token with this id when `may_revoke` allows it; `None` when there is no
    /// such token or `may_revoke` says no (the caller cannot tell which: someone else's token
    /// ids are not theirs to learn).
    pub async fn revoke_token(
        &self,
        id: String,
        may_revoke: impl FnOnce(&TokenRecord) -> bool + Send + 'static,
    ) -> Result<Option<TokenRecord>> {
        self.writer
            .run(true, move |t| {
                for kv in t.tokens.iter() {
                    let (k, v) = kv?;
                    let record: TokenRecord = from_json("tokens", &v)?;
                    if record.view.id == id {
                        if !may_revoke(&record) {
                            return Ok(None);
                        }
                        t.tokens.remove(k)?;
                        return Ok(Some(record));
                    }
                }
                Ok(None)
            })
            .await
    }

    /// Records that `user` uploaded the data set.
    pub async fn claim_dataset(&self, sha256: &str, user: &str) -> Result<()> {
        let key = claim_key(sha256, user);
        self.writer
            .run(false, move |t| {
                t.dataset_owners.insert(key, &[])?;
                Ok(())
            })
            .await
    }

    /// Whether `user` uploaded the data set.
    pub fn dataset_claimed(&self, sha256: &str, user: &str) -> Result<bool> {
        Ok(self
            .t()?
            .dataset_owners
            .contains_key(claim_key(sha256, user))?)
    }

    /// The users who uploaded the data set.
    pub fn dataset_claimants(&self, sha256: &str) -> Result<Vec<String>> {
        let prefix = claim_key(sha256, "");
        self.t()?
            .dataset_owners
            .scan_prefix(&prefix)
            .keys()
            .map(|k| Ok(String::from_utf8_lossy(&k?[prefix.len()..]).into_owned()))
            .collect()
    }

    /// Drops `user`'s claim (every claim when `None`); returns how many users still hold one.
    pub async fn unclaim_dataset(&self, sha256: &str, user: Option<&str>) -> Result<usize> {
        let (sha256, user) = (sha256.to_string(), user.map(str::to_string));
        self.writer
            .run(false, move |t| {
                let prefix = claim_key(&sha256, "");
                let mut left = 0;
                for k in t.dataset_owners.scan_prefix(&prefix).keys() {
                    let k = k?;
                    if user
                        .as_deref()
                        .is_none_or(|u| k[prefix.len()..] == *u.as_bytes())
                    {
                        t.dataset_owners.remove(k)?;
                    } else {
                        left += 1;
                    }
                }
                Ok(left)
            })
            .await
    }
}
