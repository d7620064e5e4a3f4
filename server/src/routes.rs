//! HTTP handlers: parse, call the engine off the executor (`web::block`), answer.

use std::collections::BTreeMap;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use sync_core::{DistrictCode, Edit, FieldPath, ReportKind, Role, VillageCode};

use crate::engine::Engine;
use crate::error::ApiError;
use crate::store::ReportQuery;
use crate::view::{parse_id, rfc3339_ms, ReportItem, ReportView};

/// Request limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted body, bytes.
    pub max_body: usize,
    /// Largest accepted WebSocket message, bytes.
    pub max_message: usize,
}

/// Reports per page of `GET /api/v1/reports`: default and maximum.
const LIST_DEFAULT: usize = 100;
const LIST_MAX: usize = 500;

/// Register every route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/api/v1/sync", web::post().to(sync))
        .route("/api/v1/reports", web::get().to(list_reports))
        .route("/api/v1/reports/{id}", web::get().to(get_report))
        .route("/api/v1/reports/{id}", web::patch().to(patch_report))
        .route("/api/v1/villages", web::get().to(villages))
        .route("/api/v1/schemas/{kind}", web::get().to(schema))
        .route("/ws", web::get().to(crate::ws::route));
}

async fn healthz(engine: web::Data<Engine>) -> Result<HttpResponse, ApiError> {
    let store = engine.store().clone();
    let seq = web::block(move || store.last_seq())
        .await?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(HttpResponse::Ok().json(json!({"status": "ok", "seq": seq})))
}

async fn sync(
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
    let answer = web::block(move || engine.sync(&body, Role::Volunteer)).await??;
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .body(answer))
}

#[derive(Deserialize)]
struct ListParams {
    village: Option<String>,
    district: Option<String>,
    kind: Option<String>,
    status: Option<String>,
    updated_since: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

fn bad(e: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest(e.to_string())
}

/// Unix ms from an RFC 3339 time or a number of milliseconds.
fn parse_time(text: &str) -> Result<i64, ApiError> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let t = humantime::parse_rfc3339_weak(text).map_err(|e| {
        bad(format!(
            "updated_since: {e} (use RFC 3339, e.g. 2026-11-28T08:00:00Z)"
        ))
    })?;
    let d = t.duration_since(std::time::UNIX_EPOCH).map_err(bad)?;
    Ok(d.as_millis() as i64)
}

fn parse_cursor(text: &str) -> Result<(u64, sync_core::ReportId), ApiError> {
    let (seq, id) = text
        .split_once('.')
        .ok_or_else(|| bad("cursor: not a cursor from this API"))?;
    Ok((
        seq.parse().map_err(|_| bad("cursor: bad seq"))?,
        id.parse().map_err(bad)?,
    ))
}

async fn list_reports(
    engine: web::Data<Engine>,
    params: web::Query<ListParams>,
) -> Result<HttpResponse, ApiError> {
    let p = params.into_inner();
    let unprocessable = |e: sync_core::VillageError| ApiError::Unprocessable(e.to_string());
    let query = ReportQuery {
        village: p
            .village
            .as_deref()
            .map(VillageCode::parse)
            .transpose()
            .map_err(unprocessable)?,
        district: p
            .district
            .as_deref()
            .map(DistrictCode::parse)
            .transpose()
            .map_err(unprocessable)?,
        kind: p
            .kind
            .as_deref()
            .map(str::parse::<ReportKind>)
            .transpose()
            .map_err(bad)?,
        status: p.status,
        updated_since: p.updated_since.as_deref().map(parse_time).transpose()?,
        after: p.cursor.as_deref().map(parse_cursor).transpose()?,
        limit: p.limit.unwrap_or(LIST_DEFAULT).clamp(1, LIST_MAX) + 1,
    };
    let store = engine.store().clone();
    let q = query.clone();
    let mut rows = web::block(move || store.query(&q))
        .await?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let more = rows.len() == query.limit;
    if more {
        rows.pop();
    }
    let documents = rows
        .iter()
        .map(|r| {
            RawValue::from_string(r.json.clone()).map_err(|e| ApiError::Internal(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let items: Vec<ReportItem<'_>> = rows
        .iter()
        .zip(&documents)
        .map(|(r, d)| ReportItem::new(r, d))
        .collect();
    let next_cursor = more
        .then(|| rows.last().map(|r| format!("{}.{}", r.last_seq, r.id)))
        .flatten();
    Ok(HttpResponse::Ok().json(json!({ "items": items, "next_cursor": next_cursor })))
}

async fn get_report(
    engine: web::Data<Engine>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let engine = engine.into_inner();
    let body = web::block(move || -> Result<String, ApiError> {
        let row = engine
            .store()
            .row(&id)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let row = row.ok_or_else(|| ApiError::NotFound(format!("no report {id}")))?;
        let working = engine
            .working(&id)?
            .ok_or_else(|| ApiError::NotFound(format!("no report {id}")))?;
        let receipts = engine
            .store()
            .change_receipts(&id)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let document = RawValue::from_string(row.json.clone())
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let view = ReportView::new(&row, &document, &working.doc, &receipts);
        serde_json::to_string(&view).map_err(|e| ApiError::Internal(e.to_string()))
    })
    .await??;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(body))
}

/// `PATCH /api/v1/reports/{id}`: a coordinator's decision.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Patch {
    status: Option<String>,
    note: Option<String>,
}

/// The device id under which API edits are written until accounts exist (issue 5 replaces it with
/// the authenticated coordinator's device): fixed, so history shows "the office".
pub fn office_device() -> sync_core::DeviceId {
    sync_core::DeviceId::from_bytes(*b"desa-sync-office")
}

async fn patch_report(
    engine: web::Data<Engine>,
    path: web::Path<String>,
    body: web::Json<Patch>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let patch = body.into_inner();
    let now = crate::engine::now_ms();
    let mut edits = Vec::new();
    if let Some(status) = patch.status {
        edits.push(Edit::Set {
            path: FieldPath::root("status"),
            value: status.into(),
        });
    }
    if let Some(text) = patch.note {
        edits.push(Edit::Append {
            list: FieldPath::root("notes"),
            item: json!({
                "id": uuid::Uuid::new_v4().simple().to_string(),
                "author": "coordinator",
                "at": rfc3339_ms(now),
                "text": text,
            }),
        });
    }
    if edits.is_empty() {
        return Err(bad("nothing to change: give \"status\" and/or \"note\""));
    }
    let writer = sync_core::Writer {
        actor: office_device().actor(0),
        role: Role::Coordinator,
        time: now / 1000,
    };
    let engine = engine.into_inner();
    let changed = web::block(move || engine.edit(id, &edits, &writer)).await??;
    Ok(HttpResponse::Ok().json(json!({
        "id": id.to_string(),
        "change": changed.map(|h| h.to_string()),
        "changed": changed.is_some(),
    })))
}

async fn villages(engine: web::Data<Engine>) -> Result<HttpResponse, ApiError> {
    let store = engine.store().clone();
    let counts = web::block(move || store.village_counts())
        .await?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut per_village: BTreeMap<VillageCode, BTreeMap<&'static str, u64>> = BTreeMap::new();
    for c in counts {
        per_village
            .entry(c.village)
            .or_default()
            .insert(c.kind.as_str(), c.count);
    }
    let list: Vec<_> = sync_core::all_villages()
        .map(|v| {
            let by_kind = per_village.remove(&v.code).unwrap_or_default();
            json!({
                "code": v.code.to_string(),
                "name": v.name,
                "district": v.district.to_string(),
                "district_name": v.district_name,
                "regency": v.regency_name,
                "reports": by_kind.values().sum::<u64>(),
                "reports_by_kind": by_kind,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(list))
}

async fn schema(path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let kind: ReportKind = path
        .parse()
        .map_err(|e: sync_core::kind::UnknownKind| ApiError::NotFound(e.to_string()))?;
    Ok(HttpResponse::Ok()
        .content_type("application/schema+json")
        .body(sync_core::schema::schema_text(kind)))
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
