//! The HTTP API, by area: [`health`] (`/healthz`), [`sync`] (the device exchange), [`reports`]
//! (the coordinators' reports, villages and schemas), [`account`] (`/me`, the audit trail), and
//! the WebSocket (`crate::ws`). Every handler parses, runs the engine off the executor
//! (`web::block`), and answers; every failure is the API's JSON error.

mod account;
mod health;
mod reports;
mod sync;

use actix_web::{web, HttpRequest, HttpResponse};

use crate::audit::{Action, AuditEvent, Who};
use crate::auth::Principal;
use crate::engine::Engine;
use crate::error::ApiError;
use crate::limit::Limits;

/// Reports per page of `GET /api/v1/reports`: default and maximum.
const LIST_DEFAULT: usize = 100;
const LIST_MAX: usize = 500;

/// Register every route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(health::healthz))
        .route("/api/v1/sync", web::post().to(sync::sync))
        .route("/api/v1/reports", web::get().to(reports::list_reports))
        .route("/api/v1/reports/{id}", web::get().to(reports::get_report))
        .route(
            "/api/v1/reports/{id}",
            web::patch().to(reports::patch_report),
        )
        .route("/api/v1/export", web::get().to(reports::export))
        .route("/api/v1/villages", web::get().to(reports::villages))
        .route("/api/v1/schemas/{kind}", web::get().to(reports::schema))
        .route("/api/v1/audit", web::get().to(account::audit_log))
        .route("/api/v1/me", web::get().to(account::me))
        .route("/ws", web::get().to(crate::ws::route))
        .default_service(web::to(no_route));
}

/// Every path without a route (a typo, a trailing slash, an id too long for any route) gets the
/// API's JSON error, not an empty body.
async fn no_route(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let path = sync_core::rules::clip(req.path().to_owned(), 80);
    Err(ApiError::NotFound(format!(
        "no such endpoint: {} {path}",
        req.method()
    )))
}

/// A page size from `limit`: 1 to 500, [`LIST_DEFAULT`] when absent. Anything else is a 400,
/// not silently another page size.
fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(LIST_DEFAULT),
        Some(n) if (1..=LIST_MAX).contains(&n) => Ok(n),
        Some(n) => Err(bad(format!("limit must be 1 to {LIST_MAX}, not {n}"))),
    }
}

fn bad(e: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest(e.to_string())
}

/// Refuse callers who may not read report contents (admins).
fn require_reader(caller: &Principal) -> Result<(), ApiError> {
    if caller.access.may_read() {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "the {} role reads no report contents",
            caller.role()
        )))
    }
}

/// Record a read in the audit trail before anything is answered.
async fn audit(
    engine: &std::sync::Arc<Engine>,
    caller: &Principal,
    action: Action,
) -> Result<(), ApiError> {
    let engine = engine.clone();
    let event = AuditEvent::at(engine.now(), Who::from(caller), action);
    Ok(web::block(move || engine.audit(vec![event])).await??)
}

/// Turns a rejected JSON body into the API's error shape.
pub fn json_error(err: actix_web::error::JsonPayloadError, req: &HttpRequest) -> actix_web::Error {
    use actix_web::error::JsonPayloadError;
    match err {
        JsonPayloadError::Overflow { limit }
        | JsonPayloadError::OverflowKnownLength { limit, .. } => {
            ApiError::TooLarge { limit }.into()
        }
        JsonPayloadError::Payload(actix_web::error::PayloadError::Overflow) => ApiError::TooLarge {
            limit: req
                .app_data::<web::Data<Limits>>()
                .map_or(0, |l| l.max_body),
        }
        .into(),
        err => bad(format!("JSON body: {err}")).into(),
    }
}

/// Turns a rejected query string into the API's error shape.
pub fn query_error(
    err: actix_web::error::QueryPayloadError,
    _req: &HttpRequest,
) -> actix_web::Error {
    bad(format!("query: {err}")).into()
}
