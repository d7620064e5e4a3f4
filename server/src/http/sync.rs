//! `POST /api/v1/sync`: the device exchange (`docs/protocol.md`), one round trip.

use actix_web::{web, HttpRequest, HttpResponse};

use crate::auth::Caller;
use crate::engine::Engine;
use crate::error::ApiError;
use crate::limit::Limits;

pub(super) async fn sync(
    caller: Caller,
    engine: web::Data<Engine>,
    limits: web::Data<Limits>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let limit = limits.max_body;
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::TooLarge { limit });
    }
    let body = payload
        .to_bytes_limited(limit)
        .await
        .map_err(|_| ApiError::TooLarge { limit })?
        .map_err(|e| ApiError::BadRequest(format!("reading body: {e}")))?;
    let engine = engine.into_inner();
    if !caller.access.may_write() {
        return Err(ApiError::Forbidden(format!(
            "the {} role does not sync reports",
            caller.role()
        )));
    }
    let answer = web::block(move || engine.sync(&body, &caller.0)).await??;
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .body(answer))
}
