//! Who is calling: one extractor turns the request's `Authorization: Bearer <token>` into a
//! [`Caller`], and every `/v1` route takes one, so no route can forget to ask.
//!
//! While the store has no users the daemon is open: it listens on loopback only (`orpod serve`
//! refuses any other address) and every caller is an admin named `anonymous`. The first user
//! (`orpod user add NAME --admin` on the stopped daemon's state folder, or `POST /v1/users`
//! while it is open) closes it: from then on a request without a valid token gets a 401.
//!
//! What a caller may do: everyone sees the queue (ids, owners, states, reasons); a job's spec,
//! metrics, events and checkpoints, and cancelling, pausing, resuming or deleting it, are for
//! its owner and admins ([`Caller::owns`]). Refusals of a job that exists are 403s: the queue is
//! public, so its ids are no secret.

pub mod tokens;

use actix_web::{dev::Payload, web, FromRequest, HttpRequest};
use futures_util::future::{ready, Ready};
use orpo_api::JobView;

use crate::http::error::ApiError;
use crate::http::AppState;
use tokens::{Refused, VerifyError};

/// The user of an open daemon (no users yet).
pub const OPEN_USER: &str = "anonymous";

/// Where a client puts its token; said in every 401.
const TOKEN_HINT: &str = "send `Authorization: Bearer <token>` (orpoctl: --token, ORPOD_TOKEN or \
                          `token = \"...\"` in ~/.config/orpoctl/config.toml); an admin makes \
                          one with `orpoctl token create --user NAME`";

/// The caller of a request, as its token says.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    pub user: String,
    pub admin: bool,
    /// The daemon has no users: every caller is this admin.
    pub open: bool,
}

impl Caller {
    /// Whether the caller may see and change what belongs to `owner`.
    pub fn owns(&self, owner: &str) -> bool {
        self.admin || self.user == owner
    }

    /// `Ok` when the caller owns the job (or is an admin); else a 403 saying what was refused.
    pub fn check_job(&self, job: &JobView, doing: &str) -> Result<(), ApiError> {
        if self.owns(&job.owner) {
            return Ok(());
        }
        Err(ApiError::Forbidden(format!(
            "job {} belongs to {}; only its owner or an admin may {doing}",
            job.id, job.owner
        )))
    }

    pub fn check_admin(&self, doing: &str) -> Result<(), ApiError> {
        if self.admin {
            return Ok(());
        }
        Err(ApiError::Forbidden(format!(
            "only an admin may {doing}; you are {}",
            self.user
        )))
    }

    /// The user a request acts for when its body may name one (`field`: a job's `owner`, an
    /// endpoint's `user`). On an open daemon: the name sent, `anonymous` when none. Otherwise
    /// the caller; another name is refused unless `admin_may` says what an admin may then do
    /// for that user (whether the user exists is the route's to check).
    pub fn acting_for(
        &self,
        field: &str,
        sent: Option<&str>,
        admin_may: Option<&str>,
    ) -> Result<String, ApiError> {
        let sent = sent.filter(|name| !name.trim().is_empty());
        if self.open {
            let name = sent.unwrap_or(OPEN_USER).to_string();
            orpo_api::check_label(field, &name, orpo_api::OWNER_MAX_CHARS)
                .map_err(ApiError::BadRequest)?;
            return Ok(name);
        }
        match (sent, admin_may) {
            (Some(other), _) if other == self.user => Ok(self.user.clone()),
            (Some(other), Some(doing)) => {
                self.check_admin(doing)?;
                Ok(other.to_string())
            }
            (Some(other), None) => Err(ApiError::Forbidden(format!(
                "`{field}` is the user of your token ({}), not {other}; leave `{field}` out",
                self.user
            ))),
            (None, _) => Ok(self.user.clone()),
        }
    }

    /// The job as this caller may see it: whole for its owner and admins; for anyone else the
    /// queue's view without what the job does (spec, metrics, the error's text).
    pub fn view(&self, mut job: JobView) -> JobView {
        if !self.owns(&job.owner) {
            job.spec = None;
            job.metrics = None;
            job.eval_metrics = None;
            if let Some(e) = &mut job.error {
                e.message = "(shown to the job's owner and admins)".into();
            }
        }
        job
    }
}

impl FromRequest for Caller {
    type Error = actix_web::Error;
    type Future = Ready<Result<Caller, actix_web::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req
            .app_data::<web::Data<AppState>>()
            .expect("AppState is registered");
        ready(caller(&state.store, req).map_err(Into::into))
    }
}

/// The token of an `Authorization` header value `Bearer <token>` (the scheme in any case).
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The caller of `req` by its bearer token; sled reads only, no await.
fn caller(store: &crate::store::Store, req: &HttpRequest) -> Result<Caller, ApiError> {
    if !store.has_users()? {
        return Ok(Caller {
            user: OPEN_USER.into(),
            admin: true,
            open: true,
        });
    }
    let header = req.headers().get(actix_web::http::header::AUTHORIZATION);
    let Some(header) = header else {
        return Err(ApiError::Unauthorized(format!(
            "this daemon needs a token: {TOKEN_HINT}"
        )));
    };
    let token = header.to_str().ok().and_then(bearer).ok_or_else(|| {
        ApiError::Unauthorized(format!(
            "the Authorization header is not `Bearer <token>`: {TOKEN_HINT}"
        ))
    })?;
    match tokens::verify(store, token) {
        Ok(user) => Ok(Caller {
            user: user.name,
            admin: user.admin,
            open: false,
        }),
        Err(VerifyError::Store(e)) => Err(e.into()),
        Err(VerifyError::Refused(why)) => {
            Err(ApiError::Unauthorized(match why {
                Refused::Unknown => {
                    format!("the token is not one this daemon honours (unknown or revoked): {TOKEN_HINT}")
                }
                Refused::Expired(at) => format!("the token expired at {at}: {TOKEN_HINT}"),
                Refused::NoUser(user) => {
                    format!("the token's user {user} no longer exists: {TOKEN_HINT}")
                }
            }))
        }
    }
}
