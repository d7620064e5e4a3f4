//! Who a token belongs to (`GET /api/v1/me`), and the audit trail for admins (`GET /api/v1/audit`).

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use sync_core::Role;

use super::{audit, page_limit};
use crate::audit::Action;
use crate::auth::Caller;
use crate::engine::Engine;
use crate::error::ApiError;

/// `GET /api/v1/me`: who the token belongs to (lets a device check its token and learn its
/// villages, and which versions of the sync exchange the server speaks).
pub(super) async fn me(caller: Caller) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "user": caller.user,
        "role": caller.role().as_str(),
        "device": caller.device.to_string(),
        "villages": caller.access.villages().map(|v| v.iter().map(ToString::to_string).collect::<Vec<_>>()),
        // The versions of the sync exchange this server speaks (`docs/protocol.md`, Versions).
        "sync_versions": sync_core::protocol::wire::VERSIONS,
    }))
}

#[derive(Deserialize)]
pub(super) struct AuditParams {
    after: Option<u64>,
    limit: Option<usize>,
}

/// `GET /api/v1/audit?after=SEQ&limit=N`: the audit trail, for admins.
pub(super) async fn audit_log(
    caller: Caller,
    engine: web::Data<Engine>,
    params: web::Query<AuditParams>,
) -> Result<HttpResponse, ApiError> {
    if caller.role() != Role::Admin {
        return Err(ApiError::Forbidden(format!(
            "only admins read the audit trail, not the {} role",
            caller.role()
        )));
    }
    let after = params.after.unwrap_or(0);
    let limit = page_limit(params.limit)?;
    let store = engine.store().clone();
    let entries = web::block(move || store.audit_entries(after, limit)).await??;
    let items = entries
        .iter()
        .map(|e| {
            let record: serde_json::Value = serde_json::from_str(&e.record)
                .unwrap_or_else(|_| serde_json::Value::String(e.record.clone()));
            json!({"seq": e.seq, "record": record, "mac": crate::audit::hex(&e.mac)})
        })
        .collect::<Vec<_>>();
    audit(
        &engine.clone().into_inner(),
        &caller,
        Action::AuditRead { count: items.len() },
    )
    .await?;
    Ok(HttpResponse::Ok().json(json!({
        "items": items,
        "next_after": entries.last().map(|e| e.seq),
    })))
}
