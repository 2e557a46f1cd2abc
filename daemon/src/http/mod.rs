//! The HTTP API (v1, docs/http-api.md): one file per resource, each handler's doc comment is its
//! OpenAPI summary and description, and [`ApiDoc`] gathers them into `api-spec/openapi.json`.

pub mod checkpoints;
pub mod datasets;
pub mod error;
pub mod events;
pub mod generate;
pub mod gpus;
pub mod health;
pub mod jobs;
mod json;
pub mod notify;
mod rules;
pub mod ui;
pub mod users;
mod validate;
pub mod worker;

use std::sync::Arc;

use actix_web::web;
use utoipa::OpenApi;

use crate::config::ServeConfig;
use crate::store::Store;
use crate::supervisor::Supervisor;
use error::{bad_request, ApiError};
use rules::{Auth, Rules};

/// What every handler gets (`web::Data<AppState>`).
pub struct AppState {
    pub store: Store,
    pub supervisor: Arc<Supervisor>,
    pub config: Arc<ServeConfig>,
    pub notifications: Arc<crate::notify::Notifications>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "orpod",
        version = "1",
        description = "ORPO fine-tune jobs with LoRA on a shared GPU box: submit, watch, pause, \
                       cancel, download checkpoints. Errors are `{\"error\": {\"code\", \"message\"}}`."
    ),
    paths(
        jobs::submit, jobs::list, jobs::get, jobs::delete, jobs::cancel, jobs::pause, jobs::resume,
        events::metrics, events::events, events::chart, events::compare_chart,
        checkpoints::list, checkpoints::download,
        generate::generate,
        datasets::upload, datasets::get, datasets::delete,
        gpus::gpus, gpus::plan,
        users::me, users::list_users, users::add_user, users::remove_user, users::create_token, users::list_tokens,
        users::revoke_token,
        notify::list, notify::add, notify::remove, notify::test,
        health::healthz, health::metrics,
    ),
    components(schemas(orpo_api::ErrorBody, orpo_api::EventKind)),
    modifiers(&Rules, &Auth),
    tags(
        (name = "jobs", description = "Fine-tune jobs"),
        (name = "datasets", description = "Uploaded preference data"),
        (name = "checkpoints", description = "Checkpoints and their files"),
        (name = "devices", description = "Devices and placement"),
        (name = "users", description = "Users and API tokens"),
        (name = "notify", description = "Word when a job ends: webhook endpoints"),
        (name = "health", description = "Health and monitoring"),
    )
)]
pub struct ApiDoc;

/// The OpenAPI document as committed in `api-spec/openapi.json`.
pub fn openapi_json() -> String {
    let text = ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serialises");
    // utoipa 5.5 writes a Link Object's `operationId` as `operation_id` (its serde names are not
    // camelCased). Only a link's key is followed by a string: a schema property of that name
    // would be followed by an object.
    let mut text = text.replace("\"operation_id\": \"", "\"operationId\": \"");
    text.push('\n');
    text
}

/// A resource whose other methods get a 405 with the `Allow` header (RFC 9110) and the API's
/// error body.
fn resource(path: &str, allow: &'static str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(move || async move {
        let mut resp = actix_web::ResponseError::error_response(&ApiError::MethodNotAllowed(
            format!("this route takes {allow}"),
        ));
        resp.headers_mut().insert(
            actix_web::http::header::ALLOW,
            actix_web::http::header::HeaderValue::from_static(allow),
        );
        resp
    }))
}

/// Registers every route and the extractor error handlers.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(1 << 20)
            .error_handler(|e, _| bad_request(e)),
    )
    .app_data(web::QueryConfig::default().error_handler(|e, _| bad_request(e)))
    .app_data(web::PathConfig::default().error_handler(|e, _| bad_request(e)))
    .service(
        resource("/v1/jobs", "GET, POST")
            .route(web::post().to(jobs::submit))
            .route(web::get().to(jobs::list)),
    )
    .service(
        resource("/v1/jobs/{id}", "GET, DELETE")
            .route(web::get().to(jobs::get))
            .route(web::delete().to(jobs::delete)),
    )
    .service(resource("/v1/jobs/{id}/cancel", "POST").route(web::post().to(jobs::cancel)))
    .service(resource("/v1/jobs/{id}/pause", "POST").route(web::post().to(jobs::pause)))
    .service(resource("/v1/jobs/{id}/resume", "POST").route(web::post().to(jobs::resume)))
    .service(resource("/v1/jobs/{id}/metrics", "GET").route(web::get().to(events::metrics)))
    .service(resource("/v1/jobs/{id}/events", "GET").route(web::get().to(events::events)))
    .service(
        resource("/v1/jobs/{id}/charts/{metric}.svg", "GET").route(web::get().to(events::chart)),
    )
    .service(resource("/v1/jobs/{id}/generate", "POST").route(web::post().to(generate::generate)))
    .service(resource("/v1/jobs/{id}/checkpoints", "GET").route(web::get().to(checkpoints::list)))
    .service(
        resource("/v1/jobs/{id}/checkpoints/{name}/files/{file}", "GET")
            .route(web::get().to(checkpoints::download)),
    )
    .service(resource("/v1/datasets", "POST").route(web::post().to(datasets::upload)))
    .service(
        resource("/v1/datasets/{sha256}", "GET, DELETE")
            .route(web::get().to(datasets::get))
            .route(web::delete().to(datasets::delete)),
    )
    .service(resource("/v1/gpus", "GET").route(web::get().to(gpus::gpus)))
    .service(resource("/v1/plan", "POST").route(web::post().to(gpus::plan)))
    .service(resource("/v1/me", "GET").route(web::get().to(users::me)))
    .service(
        resource("/v1/users", "GET, POST")
            .route(web::get().to(users::list_users))
            .route(web::post().to(users::add_user)),
    )
    .service(resource("/v1/users/{name}", "DELETE").route(web::delete().to(users::remove_user)))
    .service(
        resource("/v1/tokens", "GET, POST")
            .route(web::get().to(users::list_tokens))
            .route(web::post().to(users::create_token)),
    )
    .service(resource("/v1/tokens/{id}", "DELETE").route(web::delete().to(users::revoke_token)))
    .service(
        resource("/v1/notify", "GET, POST")
            .route(web::get().to(notify::list))
            .route(web::post().to(notify::add)),
    )
    .service(resource("/v1/notify/{id}", "DELETE").route(web::delete().to(notify::remove)))
    .service(resource("/v1/notify/{id}/test", "POST").route(web::post().to(notify::test)))
    .service(resource("/healthz", "GET").route(web::get().to(health::healthz)))
    .configure(ui::configure)
    .service(resource("/v1/charts/{metric}.svg", "GET").route(web::get().to(events::compare_chart)))
    .service(resource("/metrics", "GET").route(web::get().to(health::metrics)))
    .service(
        resource("/internal/v1/jobs/{id}/events", "POST")
            .app_data(web::PayloadConfig::new(worker::MAX_REPORT_BYTES))
            .route(web::post().to(worker::report)),
    )
    .default_service(web::to(|| async {
        Err::<actix_web::HttpResponse, _>(ApiError::NotFound(
            "no such route; see api-spec/openapi.json".into(),
        ))
    }));
}
