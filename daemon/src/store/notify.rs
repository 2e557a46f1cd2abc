//! Users' webhook endpoints: `notify` holds `user \0 id` → [`NotifyView`], so one user's are
//! a prefix scan and an id is looked up with its user.

use orpo_api::{Notification, NotifyView, MAX_NOTIFY_PER_USER};
use serde::{Deserialize, Serialize};

use super::{from_json, to_json, Result, Store, StoreError};

pub(super) fn key(user: &str, id: &str) -> Vec<u8> {
    [user.as_bytes(), b"\0", id.as_bytes()].concat()
}

/// A notification on its way to one endpoint, kept in the `outbox` tree from the moment it is
/// made until it is delivered or given up on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pending {
    /// The endpoint's owner and id: a restart that resumes the delivery reads the endpoint
    /// again, so one removed meanwhile gets nothing.
    pub user: String,
    pub endpoint: String,
    pub note: Notification,
}

impl Pending {
    /// Its `outbox` key: one per job, event and endpoint.
    pub fn key(&self) -> Vec<u8> {
        let job = self.note.job.as_ref().map_or(0, |j| j.id);
        [
            &job.to_be_bytes()[..],
            self.note.event.as_bytes(),
            b"\0",
            self.endpoint.as_bytes(),
        ]
        .concat()
    }
}

impl Store {
    /// `user`'s endpoints (everyone's for `None`), by user, then id.
    pub fn notify_targets(&self, user: Option<&str>) -> Result<Vec<NotifyView>> {
        let t = self.t()?;
        let iter = match user {
            Some(u) => t.notify.scan_prefix(key(u, "")),
            None => t.notify.iter(),
        };
        iter.values().map(|v| from_json("notify", &v?)).collect()
    }

    /// Stores an endpoint; [`StoreError::Limit`] when its user has [`MAX_NOTIFY_PER_USER`]
    /// already, [`StoreError::Rejected`] when they have the same URL.
    pub async fn add_notify_target(&self, view: NotifyView) -> Result<NotifyView> {
        self.writer
            .run(true, move |t| {
                let mut count = 0;
                for v in t.notify.scan_prefix(key(&view.user, "")).values() {
                    let old: NotifyView = from_json("notify", &v?)?;
                    if old.url == view.url {
                        return Err(StoreError::Rejected(format!(
                            "{} already has this URL as endpoint {}; remove it first to change \
                             its format or events",
                            view.user, old.id
                        )));
                    }
                    count += 1;
                }
                if count >= MAX_NOTIFY_PER_USER {
                    return Err(StoreError::Limit(format!(
                        "{} has {count} notification endpoints, the most one user may have \
                         ({MAX_NOTIFY_PER_USER}); remove one first",
                        view.user
                    )));
                }
                t.notify.insert(key(&view.user, &view.id), to_json(&view))?;
                Ok(view)
            })
            .await
    }

    /// Keeps `pending` (durably) until [`Store::delivered`].
    pub async fn add_pending(&self, pending: &Pending) -> Result<()> {
        let (k, v) = (pending.key(), to_json(pending));
        self.writer
            .run(true, move |t| Ok(t.outbox.insert(k, v).map(|_| ())?))
            .await
    }

    /// Every notification not yet delivered nor given up on, oldest job first.
    pub fn pending(&self) -> Result<Vec<Pending>> {
        let t = self.t()?;
        t.outbox
            .iter()
            .values()
            .map(|v| from_json("outbox", &v?))
            .collect()
    }

    /// Drops `pending` from the outbox (durably: a restart must not send it again): delivered,
    /// or given up on.
    pub async fn delivered(&self, pending: &Pending) -> Result<()> {
        let k = pending.key();
        self.writer
            .run(true, move |t| Ok(t.outbox.remove(k).map(|_| ())?))
            .await
    }

    /// The endpoint `id`, whoever's it is.
    pub fn notify_target(&self, id: &str) -> Result<Option<NotifyView>> {
        for v in self.t()?.notify.iter().values() {
            let view: NotifyView = from_json("notify", &v?)?;
            if view.id == id {
                return Ok(Some(view));
            }
        }
        Ok(None)
    }

    /// Removes the endpoint `id` of `user`; `None` when they have no such endpoint.
    pub async fn remove_notify_target(&self, user: &str, id: &str) -> Result<Option<NotifyView>> {
        let k = key(user, id);
        self.writer
            .run(true, move |t| {
                t.notify
                    .remove(k)?
                    .map(|v| from_json("notify", &v))
                    .transpose()
            })
            .await
    }
}
