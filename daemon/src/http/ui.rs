//! The web page (`GET /`): the queue, a page per job with live charts, and a compare view. Its
//! three files are compiled into the binary, so it works offline; it reads everything through
//! the v1 API with the token the user pastes (kept in the browser's local storage). The
//! Content-Security-Policy lets the page run only its own script and show only its own images
//! (the charts, fetched as blobs), so text a user wrote can never become code.

use actix_web::{web, HttpResponse};

const INDEX: &str = include_str!("../../ui/index.html");
const APP_JS: &str = include_str!("../../ui/app.js");
const STYLE: &str = include_str!("../../ui/style.css");

/// Only this origin's script, style and API; images from it or from blobs (the charts).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; \
                   connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

fn asset(content_type: &str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header(("Content-Security-Policy", CSP))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("Cache-Control", "no-cache"))
        .body(body)
}

pub async fn index() -> HttpResponse {
    asset("text/html; charset=utf-8", INDEX)
}

pub async fn app_js() -> HttpResponse {
    asset("text/javascript; charset=utf-8", APP_JS)
}

pub async fn style() -> HttpResponse {
    asset("text/css; charset=utf-8", STYLE)
}

/// Registers `/` and `/ui/*`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(index))
        .route("/ui/app.js", web::get().to(app_js))
        .route("/ui/style.css", web::get().to(style));
}
