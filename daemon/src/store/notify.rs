//! Users' webhook endpoints: `notify` holds `user \0 id` → [`NotifyView`], so one user's are
//! a prefix scan and an id is looked up with its user.

use orpo_api::{NotifyView, MAX_NOTIFY_PER_USER};

use super::{from_json, to_json, Result, Store, StoreError};

pub(super) fn key(user: &str, id: &str) -> Vec<u8> {
    [user.as_bytes(), b"\0", id.as_bytes()].concat()
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
