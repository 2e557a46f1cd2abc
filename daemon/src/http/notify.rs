//! Notification endpoints (`orpoctl notify add | list | rm | test`): each user's webhooks,
//! under the URL prefixes the operator allows; the delivery is `crate::notify`'s.

use actix_web::{web, HttpResponse};
use orpo_api::{
    ErrorBody, NewNotify, NotifyFormat, NotifyOn, NotifyTestView, NotifyView, NOTIFY_URL_MAX_BYTES,
};

use super::error::ApiError;
use super::json::Object;
use super::AppState;
use crate::auth::{tokens, Caller};
use crate::notify::Outcome;

/// List notification endpoints
///
/// The caller's endpoints (an admin's: everyone's).
#[utoipa::path(get, path = "/v1/notify", tag = "notify", operation_id = "list_notify",
    responses((status = 200, body = Vec<NotifyView>)))]
pub async fn list(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<web::Json<Vec<NotifyView>>, ApiError> {
    let user = (!caller.admin).then_some(caller.user.as_str());
    Ok(web::Json(state.store.notify_targets(user)?))
}

/// Add a notification endpoint
///
/// The daemon posts to `url` when one of the user's jobs ends or waits long (`on`), in
/// `format`. The URL must be under one of the prefixes the operator allows (`notify_allow`);
/// at most 16 endpoints per user.
#[utoipa::path(post, path = "/v1/notify", tag = "notify", operation_id = "add_notify", request_body = NewNotify,
    responses((status = 201, body = NotifyView), (status = 400, body = ErrorBody),
        (status = 409, description = "The user has this URL already", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody)))]
pub async fn add(
    state: web::Data<AppState>,
    caller: Caller,
    req: Object<NewNotify>,
) -> Result<HttpResponse, ApiError> {
    let req = req.into_inner();
    let user = caller.acting_for(
        "user",
        req.user.as_deref(),
        Some("add notification endpoints for other users"),
    )?;
    if !caller.open && state.store.user(&user)?.is_none() {
        return Err(ApiError::UnknownUser(format!(
            "no user {user}; an admin adds one with `orpoctl user add {user}`"
        )));
    }
    if req.url.len() > NOTIFY_URL_MAX_BYTES {
        return Err(ApiError::BadRequest(format!(
            "url: {} bytes, at most {NOTIFY_URL_MAX_BYTES}",
            req.url.len()
        )));
    }
    let url = state
        .notifications
        .check_url(&req.url)
        .map_err(|why| ApiError::Forbidden(format!("url: {why}")))?;
    let mut on = req.on.unwrap_or_else(|| NotifyOn::DEFAULT.to_vec());
    on.sort();
    on.dedup();
    if on.is_empty() {
        return Err(ApiError::BadRequest(
            "on: name at least one of succeeded, failed, cancelled, waiting".into(),
        ));
    }
    let id = tokens::random_hex(4).map_err(|e| ApiError::Internal(e.into()))?;
    let view = NotifyView {
        id,
        user,
        format: req
            .format
            .unwrap_or_else(|| NotifyFormat::guess(url.as_str())),
        url: url.into(),
        on,
        created_at: crate::now_rfc3339(),
    };
    let view = state.store.add_notify_target(view).await?;
    tracing::info!(by = %caller.user, user = %view.user, id = %view.id,
        format = view.format.as_str(), "notification endpoint added");
    Ok(HttpResponse::Created().json(view))
}

/// Remove a notification endpoint
///
/// Your own; an admin's: anyone's. Another user's id is answered as one that does not exist.
#[utoipa::path(delete, path = "/v1/notify/{id}", tag = "notify", operation_id = "remove_notify",
    params(("id" = String, Path, description = "The endpoint's id (`GET /v1/notify`)", pattern = "^[0-9a-f]{8}$")),
    responses((status = 200, description = "Removed; the endpoint as it was", body = NotifyView),
        (status = 404, body = ErrorBody)))]
pub async fn remove(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<web::Json<NotifyView>, ApiError> {
    let target = find(&state, &caller, &id)?;
    match state
        .store
        .remove_notify_target(&target.user, &target.id)
        .await?
    {
        Some(view) => {
            tracing::info!(by = %caller.user, user = %view.user, id = %view.id,
                "notification endpoint removed");
            Ok(web::Json(view))
        }
        None => Err(not_found(&id)),
    }
}

/// Test a notification endpoint
///
/// Sends one test notification now (no retries) and says how it went: whether the endpoint
/// answered 2xx, its status, or why it could not be reached.
#[utoipa::path(post, path = "/v1/notify/{id}/test", tag = "notify", operation_id = "test_notify",
    params(("id" = String, Path, description = "The endpoint's id (`GET /v1/notify`)", pattern = "^[0-9a-f]{8}$")),
    responses((status = 200, body = NotifyTestView), (status = 404, body = ErrorBody)))]
pub async fn test(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<web::Json<NotifyTestView>, ApiError> {
    let target = find(&state, &caller, &id)?;
    let view = match state.notifications.send_test(&target).await {
        Outcome::Delivered(status) => NotifyTestView {
            delivered: true,
            status: Some(status),
            message: format!("delivered: the endpoint answered {status}"),
        },
        Outcome::Failed {
            status, message, ..
        } => NotifyTestView {
            delivered: false,
            status,
            message,
        },
    };
    Ok(web::Json(view))
}

/// The endpoint `id` when the caller may use it; another user's is a 404 like a missing one.
fn find(state: &AppState, caller: &Caller, id: &str) -> Result<NotifyView, ApiError> {
    match state.store.notify_target(id)? {
        Some(t) if caller.owns(&t.user) => Ok(t),
        _ => Err(not_found(id)),
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!(
        "no notification endpoint {:?} of yours; `orpoctl notify list` shows them",
        id.chars().take(16).collect::<String>()
    ))
}
