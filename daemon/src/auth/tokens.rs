//! API tokens: `orpod_<id>_<secret>`, 256 random bits from the kernel. The daemon stores the
//! hex sha256 of the whole token (a fast hash is enough for a secret this long: there is no
//! password to guess) and the public `id`, by which a token is listed and revoked.

use std::io::Read as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use orpo_api::{CreatedToken, TokenView};
use sha2::{Digest, Sha256};

use crate::store::{Store, StoreError, TokenRecord};

const PREFIX: &str = "orpod_";

/// The hex sha256 under which a token is stored.
pub fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn random_hex(bytes: usize) -> std::io::Result<String> {
    let mut buf = vec![0u8; bytes];
    // Never a weaker fallback: a daemon that cannot read the kernel's randomness makes no token.
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Makes a token for `user` (who must exist), living `lifetime_s` seconds or forever, and
/// stores its hash. The returned token is the only copy.
pub async fn create(
    store: &Store,
    user: &str,
    lifetime_s: Option<u64>,
) -> anyhow::Result<CreatedToken> {
    let id = random_hex(4)?;
    let token = format!("{PREFIX}{id}_{}", random_hex(32)?);
    let expires_unix = lifetime_s.map(|s| unix_now().saturating_add(s));
    let view = TokenView {
        id,
        user: user.to_string(),
        created_at: crate::now_rfc3339(),
        expires_at: expires_unix.map(|s| {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(s)).to_string()
        }),
    };
    let record = TokenRecord {
        view: view.clone(),
        expires_unix,
    };
    store.add_token(hash(&token), record).await?;
    Ok(CreatedToken { token, info: view })
}

/// Why a presented token does not let its bearer in.
#[derive(Debug, PartialEq)]
pub enum Refused {
    Unknown,
    Expired(String),
    /// Its user is gone from the store (a token outlives no one).
    NoUser(String),
}

/// The user a token belongs to, if it is one this daemon issued and still honours.
pub fn verify(store: &Store, token: &str) -> Result<orpo_api::UserView, VerifyError> {
    if !token.starts_with(PREFIX) {
        return Err(VerifyError::Refused(Refused::Unknown));
    }
    let record = store
        .token_by_hash(&hash(token))?
        .ok_or(VerifyError::Refused(Refused::Unknown))?;
    if record.expires_unix.is_some_and(|at| at <= unix_now()) {
        let at = record.view.expires_at.clone().unwrap_or_default();
        return Err(VerifyError::Refused(Refused::Expired(at)));
    }
    store
        .user(&record.view.user)?
        .ok_or(VerifyError::Refused(Refused::NoUser(record.view.user)))
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("token refused: {0:?}")]
    Refused(Refused),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use orpo_api::UserView;

    #[tokio::test]
    async fn tokens_verify_until_revoked_or_expired() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let alice = UserView {
            name: "alice".into(),
            admin: false,
            created_at: crate::now_rfc3339(),
        };
        assert!(
            create(&store, "alice", None).await.is_err(),
            "no such user yet"
        );
        store.add_user(alice.clone()).await.unwrap();
        let t = create(&store, "alice", None).await.unwrap();
        assert!(t.token.starts_with(&format!("orpod_{}_", t.info.id)));
        assert_eq!(t.token.len(), "orpod_".len() + 8 + 1 + 64);
        assert_eq!(verify(&store, &t.token).unwrap(), alice);
        // The database holds the hash, never the token.
        let stored = store.tokens(Some("alice")).unwrap();
        assert_eq!(stored.len(), 1);
        assert!(!format!("{stored:?}").contains(&t.token[15..]));
        // One character off, another prefix, empty: unknown.
        let mut wrong = t.token.clone();
        wrong.pop();
        wrong.push('x');
        for bad in [wrong.as_str(), "", "Bearer", &t.token[6..]] {
            assert!(matches!(
                verify(&store, bad),
                Err(VerifyError::Refused(Refused::Unknown))
            ));
        }
        // Only a matching `may_revoke` removes it.
        let id = t.info.id.clone();
        assert_eq!(
            store.revoke_token(id.clone(), |_| false).await.unwrap(),
            None
        );
        assert!(verify(&store, &t.token).is_ok());
        assert!(store.revoke_token(id, |_| true).await.unwrap().is_some());
        assert!(matches!(
            verify(&store, &t.token),
            Err(VerifyError::Refused(Refused::Unknown))
        ));
        // A token that expired a second ago.
        let old = create(&store, "alice", Some(1)).await.unwrap();
        let mut record = store.token_by_hash(&hash(&old.token)).unwrap().unwrap();
        record.expires_unix = Some(unix_now() - 1);
        store.add_token(hash(&old.token), record).await.unwrap();
        assert!(matches!(
            verify(&store, &old.token),
            Err(VerifyError::Refused(Refused::Expired(_)))
        ));
    }
}
