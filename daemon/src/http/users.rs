//! Users and tokens while the daemon runs (`orpoctl whoami | user | token`): who am I, adding
//! users (admins), creating, listing and revoking tokens (your own; an admin's: anyone's).
//! `orpod user` and `orpod token` do the same on a stopped daemon's state folder.

use actix_web::{web, HttpResponse};
use orpo_api::{
    CallerView, CreatedToken, ErrorBody, NewToken, NewUser, TokenView, UserView,
    MAX_TOKEN_LIFETIME_S,
};

use super::error::ApiError;
use super::json::Object;
use super::AppState;
use crate::auth::{tokens, Caller};
use crate::store::StoreError;

/// Who am I
///
/// The user the daemon takes the caller for, and whether the daemon is open (no users yet).
#[utoipa::path(get, path = "/v1/me", tag = "users", operation_id = "whoami",
    responses((status = 200, body = CallerView)))]
pub async fn me(caller: Caller) -> web::Json<CallerView> {
    web::Json(CallerView {
        user: caller.user,
        admin: caller.admin,
        open: caller.open,
    })
}

/// List users
///
/// Every user, by name (admins).
#[utoipa::path(get, path = "/v1/users", tag = "users", operation_id = "list_users",
    responses((status = 200, body = Vec<UserView>)))]
pub async fn list_users(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<web::Json<Vec<UserView>>, ApiError> {
    caller.check_admin("list users")?;
    Ok(web::Json(state.store.users()?))
}

/// Add a user
///
/// Admins only. On an open daemon (no users yet) the first user closes it: from then on every
/// request needs a token, so make the first user an admin and create their token at once.
#[utoipa::path(post, path = "/v1/users", tag = "users", operation_id = "add_user", request_body = NewUser,
    responses((status = 201, body = UserView), (status = 400, body = ErrorBody),
        (status = 409, description = "The name is taken", body = ErrorBody)))]
pub async fn add_user(
    state: web::Data<AppState>,
    caller: Caller,
    req: Object<NewUser>,
) -> Result<HttpResponse, ApiError> {
    caller.check_admin("add users")?;
    orpo_api::check_user_name(&req.name).map_err(ApiError::BadRequest)?;
    let user = state
        .store
        .add_user(UserView {
            name: req.name.clone(),
            admin: req.admin,
            created_at: crate::now_rfc3339(),
        })
        .await?;
    tracing::info!(by = %caller.user, user = %user.name, admin = user.admin, "user added");
    Ok(HttpResponse::Created().json(user))
}

/// Remove a user
///
/// Admins only. The user's tokens stop working, their notification endpoints and data set
/// claims go; their finished jobs stay under their name. Refused (409) while they have
/// unfinished jobs (cancel them first) and for the last admin.
#[utoipa::path(delete, path = "/v1/users/{name}", tag = "users", operation_id = "remove_user",
    params(("name" = String, Path, description = "The user's name", pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")),
    responses((status = 200, description = "Removed; the user as they were", body = UserView),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "Unfinished jobs, or the last admin", body = ErrorBody)))]
pub async fn remove_user(
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
) -> Result<web::Json<UserView>, ApiError> {
    caller.check_admin("remove users")?;
    let name = name.into_inner();
    orpo_api::check_user_name(&name).map_err(ApiError::BadRequest)?;
    match state.store.remove_user(name.clone(), true).await? {
        Some(removed) => {
            tracing::info!(by = %caller.user, user = %name, tokens = removed.tokens,
                endpoints = removed.endpoints, "user removed");
            Ok(web::Json(removed.user))
        }
        None => Err(ApiError::UnknownUser(format!("no user {name}"))),
    }
}

/// Create a token
///
/// A token for the caller, or (admins) for `user`. The answer is the only time the token is
/// shown: the daemon keeps its hash.
#[utoipa::path(post, path = "/v1/tokens", tag = "users", operation_id = "create_token", request_body = NewToken,
    responses((status = 201, body = CreatedToken), (status = 400, body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody)))]
pub async fn create_token(
    state: web::Data<AppState>,
    caller: Caller,
    req: Object<NewToken>,
) -> Result<HttpResponse, ApiError> {
    let user = req.user.clone().unwrap_or_else(|| caller.user.clone());
    if user != caller.user {
        caller.check_admin("create tokens for other users")?;
    }
    if let Some(s) = req.expires_in_s {
        if !(1..=MAX_TOKEN_LIFETIME_S).contains(&s) {
            return Err(ApiError::BadRequest(format!(
                "expires_in_s must be between 1 and {MAX_TOKEN_LIFETIME_S} (10 years)"
            )));
        }
    }
    if state.store.user(&user)?.is_none() {
        // On an open daemon the caller (`anonymous`) is no user either.
        return Err(ApiError::UnknownUser(format!(
            "no user {user}; an admin adds one with `orpoctl user add {user}`"
        )));
    }
    let created = tokens::create(&state.store, &user, req.expires_in_s)
        .await
        .map_err(|e| match e.downcast::<StoreError>() {
            Ok(e) => e.into(),
            Err(e) => ApiError::Internal(e),
        })?;
    tracing::info!(by = %caller.user, user = %user, id = %created.info.id, "token created");
    Ok(HttpResponse::Created().json(created))
}

/// List tokens
///
/// The caller's tokens (an admin's: everyone's), oldest first; never the tokens themselves.
#[utoipa::path(get, path = "/v1/tokens", tag = "users", operation_id = "list_tokens",
    responses((status = 200, body = Vec<TokenView>)))]
pub async fn list_tokens(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<web::Json<Vec<TokenView>>, ApiError> {
    let user = (!caller.admin).then_some(caller.user.as_str());
    let tokens = state.store.tokens(user)?;
    Ok(web::Json(tokens.into_iter().map(|t| t.view).collect()))
}

/// Revoke a token
///
/// The token stops working at once. Your own tokens; an admin's: anyone's. Another user's
/// token id is answered as one that does not exist.
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "users", operation_id = "revoke_token",
    params(("id" = String, Path, description = "The token's id (`GET /v1/tokens`)", pattern = "^[0-9a-f]{8}$")),
    responses((status = 200, description = "Revoked; the token as it was", body = TokenView),
        (status = 404, body = ErrorBody)))]
pub async fn revoke_token(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<web::Json<TokenView>, ApiError> {
    let id = id.into_inner();
    let who = caller.clone();
    let revoked = state
        .store
        .revoke_token(id.clone(), move |t| who.owns(&t.view.user))
        .await?;
    match revoked {
        Some(t) => {
            tracing::info!(by = %caller.user, user = %t.view.user, %id, "token revoked");
            Ok(web::Json(t.view))
        }
        None => Err(ApiError::NotFound(format!(
            "no token {:?} of yours; GET /v1/tokens lists them",
            id.chars().take(16).collect::<String>()
        ))),
    }
}
