//! Who is calling: device tokens, the directory of users and devices, and the [`Caller`] extractor
//! every protected handler takes.
//!
//! A request carries `Authorization: Bearer <token>` (a WebSocket upgrade may instead put the token
//! in the URL, `/ws?token=…`, because a browser's WebSocket cannot set headers). The token names
//! its device; the device row holds the SHA-256 of the token's secret, its user and whether it is
//! revoked. The [`Directory`] is held in memory and reloaded when its version in the database
//! changes (within a second).
//!
//! A failed authentication answers 401 with nothing served — 429 once its client address is over
//! its allowance — and is audited in aggregate, never with the token ([`failures`]).

mod directory;
pub mod failures;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use actix_web::{web, FromRequest, HttpRequest};

pub use directory::{watch, Directory};
pub use failures::FailedAuth;

use crate::error::ApiError;

/// The per-device request limiter.
pub type Limiter = crate::limit::DeviceLimiter;

/// An authenticated caller: a device of a user, with that user's access (sync-core's type: the
/// rules judge every change with the principal that uploaded it).
pub use sync_core::Principal;

pub use crate::error::AuthFailure;

/// The token of a request: the bearer header, or for the WebSocket upgrade only, `?token=`.
fn token_of(req: &HttpRequest) -> Option<String> {
    if let Some(value) = req.headers().get(actix_web::http::header::AUTHORIZATION) {
        let text = value.to_str().ok()?;
        let (scheme, token) = text.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned());
    }
    if req.path() == "/ws" {
        return web::Query::<HashMap<String, String>>::from_query(req.query_string())
            .ok()
            .and_then(|q| q.get("token").cloned());
    }
    None
}

/// The authenticated caller of a request. Extracting it answers 401 (and audits the failure) when
/// the token is missing, malformed, unknown, wrong or revoked.
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<Principal>);

impl std::ops::Deref for Caller {
    type Target = Principal;

    fn deref(&self) -> &Principal {
        &self.0
    }
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let directory = req.app_data::<web::Data<Directory>>().cloned();
        let limiter = req.app_data::<web::Data<Limiter>>().cloned();
        let failures = req.app_data::<web::Data<FailedAuth>>().cloned();
        let token = token_of(req);
        let client = failures.as_ref().and_then(|f| f.client_of(req));
        let path = req.path().chars().take(200).collect::<String>();
        Box::pin(async move {
            let directory =
                directory.ok_or_else(|| ApiError::Internal("no directory configured".into()))?;
            let outcome = match &token {
                None => Err(AuthFailure::Missing),
                Some(t) => directory.authenticate(t),
            };
            match outcome {
                Ok(principal) => {
                    // Counted per device, after authentication: a stranger cannot use up a
                    // volunteer's allowance.
                    if let Some(limiter) = limiter {
                        limiter.check(&principal)?;
                    }
                    Ok(Caller(principal))
                }
                Err(failure) => {
                    let now = crate::clock::now_ms();
                    if let Some(failures) = failures {
                        failures.fail(client, &failure, &path, now)?;
                    }
                    Err(ApiError::Unauthorized(failure))
                }
            }
        })
    }
}
