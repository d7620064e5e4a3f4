//! `GET /healthz`: whether the server can take writes.

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::engine::Engine;

/// How long `/healthz` waits for the writer thread to answer.
const HEALTH_PROBE: std::time::Duration = std::time::Duration::from_secs(5);

/// `GET /healthz`: 200 when the store answers and the writer thread takes work; 503 otherwise
/// (a load balancer then stops sending writes here, and monitoring alerts).
pub(super) async fn healthz(engine: web::Data<Engine>) -> HttpResponse {
    let engine = engine.into_inner();
    let checked = web::block(move || {
        let seq = engine
            .store()
            .last_seq()
            .map_err(|e| format!("the store does not answer: {e}"))?;
        engine
            .probe(HEALTH_PROBE)
            .map_err(|e| format!("ingestion cannot proceed: {e}"))?;
        Ok::<u64, String>(seq)
    })
    .await;
    match checked {
        Ok(Ok(seq)) => HttpResponse::Ok().json(json!({"status": "ok", "seq": seq})),
        Ok(Err(detail)) => unhealthy(detail),
        Err(e) => unhealthy(format!("worker pool: {e}")),
    }
}

fn unhealthy(detail: String) -> HttpResponse {
    tracing::error!(%detail, "unhealthy");
    HttpResponse::ServiceUnavailable().json(json!({"status": "unhealthy", "detail": detail}))
}
