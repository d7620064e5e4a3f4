//! HTTP handlers: parse, call the engine off the executor (`web::block`), answer.

use std::collections::BTreeMap;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use sync_core::{DistrictCode, Edit, FieldPath, ReportKind, Role, VillageCode};

use crate::audit::{Action, AuditEvent, Who};
use crate::auth::{Caller, Principal};
use crate::engine::Engine;
use crate::error::ApiError;
use crate::store::{ReportQuery, ReportRow, Store};
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
        .route("/api/v1/export", web::get().to(export))
        .route("/api/v1/villages", web::get().to(villages))
        .route("/api/v1/schemas/{kind}", web::get().to(schema))
        .route("/api/v1/audit", web::get().to(audit_log))
        .route("/api/v1/me", web::get().to(me))
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

/// How long `/healthz` waits for the writer thread to answer.
const HEALTH_PROBE: std::time::Duration = std::time::Duration::from_secs(5);

/// `GET /healthz`: 200 when the store answers and the writer thread takes work; 503 otherwise
/// (a load balancer then stops sending writes here, and monitoring alerts).
async fn healthz(engine: web::Data<Engine>) -> HttpResponse {
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

async fn sync(
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

/// A row's document as the caller may see it, and what was withheld (analysts).
fn visible_document(
    caller: &Principal,
    row: &ReportRow,
) -> Result<(Box<RawValue>, Option<Vec<String>>), ApiError> {
    if caller.access.sees_sensitive() {
        return Ok((RawValue::from_string(row.json.clone())?, None));
    }
    let mut value: serde_json::Value = serde_json::from_str(&row.json)?;
    let redacted = sync_core::redact::redact(row.kind, &mut value);
    let text = serde_json::to_string(&value)?;
    Ok((RawValue::from_string(text)?, Some(redacted)))
}

impl ListParams {
    fn query(&self, limit: usize) -> Result<ReportQuery, ApiError> {
        let unprocessable = |e: sync_core::VillageError| ApiError::Unprocessable(e.to_string());
        Ok(ReportQuery {
            village: self
                .village
                .as_deref()
                .map(VillageCode::parse)
                .transpose()
                .map_err(unprocessable)?,
            district: self
                .district
                .as_deref()
                .map(DistrictCode::parse)
                .transpose()
                .map_err(unprocessable)?,
            kind: self
                .kind
                .as_deref()
                .map(str::parse::<ReportKind>)
                .transpose()
                .map_err(bad)?,
            status: self.status.clone(),
            updated_since: self.updated_since.as_deref().map(parse_time).transpose()?,
            after: self.cursor.as_deref().map(parse_cursor).transpose()?,
            limit,
        })
    }
}

/// Run a query within the caller's villages: a volunteer's query runs once per village of theirs
/// (the village filter, if given, must be one of them) and the pages are merged in order.
fn scoped_query(
    store: &dyn Store,
    caller: &Principal,
    query: &ReportQuery,
) -> Result<Vec<ReportRow>, ApiError> {
    let Some(villages) = caller.access.villages() else {
        return Ok(store.query(query)?);
    };
    let mut rows = Vec::new();
    for village in villages {
        let in_filter = query.village.is_none_or(|v| v == *village)
            && query.district.is_none_or(|d| d == village.district());
        if in_filter {
            let mut q = query.clone();
            q.village = Some(*village);
            rows.extend(store.query(&q)?);
        }
    }
    rows.sort_by_key(|r| (r.last_seq, r.id));
    rows.truncate(query.limit);
    Ok(rows)
}

async fn list_reports(
    caller: Caller,
    engine: web::Data<Engine>,
    params: web::Query<ListParams>,
) -> Result<HttpResponse, ApiError> {
    require_reader(&caller)?;
    let p = params.into_inner();
    let query = p.query(page_limit(p.limit)? + 1)?;
    let store = engine.store().clone();
    let (q, who) = (query.clone(), caller.clone());
    let mut rows = web::block(move || scoped_query(store.as_ref(), &who, &q)).await??;
    let more = rows.len() == query.limit;
    if more {
        rows.pop();
    }
    let documents = rows
        .iter()
        .map(|r| visible_document(&caller, r))
        .collect::<Result<Vec<_>, _>>()?;
    let items: Vec<ReportItem<'_>> = rows
        .iter()
        .zip(&documents)
        .map(|(r, (d, redacted))| ReportItem::new(r, d).with_redacted(redacted.clone()))
        .collect();
    let next_cursor = more
        .then(|| rows.last().map(|r| format!("{}.{}", r.last_seq, r.id)))
        .flatten();
    audit(
        &engine.clone().into_inner(),
        &caller,
        Action::Read {
            via: "GET /api/v1/reports".into(),
            reports: rows.iter().map(|r| r.id.to_string()).collect(),
            redacted: !caller.access.sees_sensitive(),
        },
    )
    .await?;
    Ok(HttpResponse::Ok().json(json!({ "items": items, "next_cursor": next_cursor })))
}

/// `GET /api/v1/export`: every report the caller may read that matches the filters of the list
/// endpoint, as JSON lines (one report per line), redacted for analysts. Audited as an export.
async fn export(
    caller: Caller,
    engine: web::Data<Engine>,
    params: web::Query<ListParams>,
) -> Result<HttpResponse, ApiError> {
    require_reader(&caller)?;
    let p = params.into_inner();
    let mut query = p.query(LIST_MAX)?;
    let store = engine.store().clone();
    let who = caller.clone();
    let rows = web::block(move || -> Result<Vec<ReportRow>, ApiError> {
        let mut all = Vec::new();
        loop {
            let page = scoped_query(store.as_ref(), &who, &query)?;
            let done = page.len() < query.limit;
            query.after = page.last().map(|r| (r.last_seq, r.id));
            all.extend(page);
            if done {
                return Ok(all);
            }
        }
    })
    .await??;
    let mut body = String::new();
    for row in &rows {
        let (document, redacted) = visible_document(&caller, row)?;
        let item = ReportItem::new(row, &document).with_redacted(redacted);
        body.push_str(&serde_json::to_string(&item)?);
        body.push('\n');
    }
    audit(
        &engine.clone().into_inner(),
        &caller,
        Action::Export {
            query: p.describe(),
            reports: rows.iter().map(|r| r.id.to_string()).collect(),
            redacted: !caller.access.sees_sensitive(),
        },
    )
    .await?;
    Ok(HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .body(body))
}

impl ListParams {
    /// The filters, for the audit trail.
    fn describe(&self) -> String {
        let parts = [
            ("village", &self.village),
            ("district", &self.district),
            ("kind", &self.kind),
            ("status", &self.status),
            ("updated_since", &self.updated_since),
        ];
        parts
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
            .collect::<Vec<_>>()
            .join("&")
    }
}

async fn get_report(
    caller: Caller,
    engine: web::Data<Engine>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    require_reader(&caller)?;
    let id = parse_id(&path)?;
    let engine = engine.into_inner();
    let (audit_engine, who) = (engine.clone(), caller.clone());
    let body = web::block(move || -> Result<String, ApiError> {
        let not_found = || ApiError::NotFound(format!("no report {id}"));
        let row = engine.store().row(&id)?;
        // Outside the caller's villages answers exactly as a report that does not exist.
        let row = row
            .filter(|r| who.access.covers(r.village))
            .ok_or_else(not_found)?;
        let working = engine.working(&id)?.ok_or_else(not_found)?;
        let receipts = engine.store().change_receipts(&id)?;
        let (document, redacted) = visible_document(&who, &row)?;
        let view = ReportView::new(&row, &document, &working.doc, &receipts, redacted);
        Ok(serde_json::to_string(&view)?)
    })
    .await??;
    audit(
        &audit_engine,
        &caller,
        Action::Read {
            via: "GET /api/v1/reports/{id}".into(),
            reports: vec![id.to_string()],
            redacted: !caller.access.sees_sensitive(),
        },
    )
    .await?;
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

async fn patch_report(
    caller: Caller,
    engine: web::Data<Engine>,
    path: web::Path<String>,
    body: web::Json<Patch>,
) -> Result<HttpResponse, ApiError> {
    if caller.role() != Role::Coordinator {
        // Refused before the id is even looked at: a volunteer learns nothing about which ids exist.
        return Err(ApiError::Forbidden(format!(
            "only coordinators change reports through the API, not the {} role",
            caller.role()
        )));
    }
    let id = parse_id(&path)?;
    let patch = body.into_inner();
    let now = engine.now();
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
                "author": caller.user,
                "at": rfc3339_ms(now),
                "text": text,
            }),
        });
    }
    if edits.is_empty() {
        return Err(bad("nothing to change: give \"status\" and/or \"note\""));
    }
    // The coordinator's device under the reserved API generation: API edits and the device's
    // own syncs never share an actor, and no upload can pass for an API edit.
    let writer = sync_core::Writer {
        actor: caller.device.actor(sync_core::rules::API_GENERATION),
        role: Role::Coordinator,
        time: now / 1000,
    };
    let nonce = *uuid::Uuid::new_v4().as_bytes();
    let engine = engine.into_inner();
    let changed = web::block(move || engine.edit(id, &edits, &writer, &caller.0, nonce)).await??;
    Ok(HttpResponse::Ok().json(json!({
        "id": id.to_string(),
        "change": changed.map(|h| h.to_string()),
        "changed": changed.is_some(),
    })))
}

async fn villages(caller: Caller, engine: web::Data<Engine>) -> Result<HttpResponse, ApiError> {
    let store = engine.store().clone();
    let counts = web::block(move || store.village_counts()).await??;
    let mut per_village: BTreeMap<VillageCode, BTreeMap<&'static str, u64>> = BTreeMap::new();
    for c in counts {
        per_village
            .entry(c.village)
            .or_default()
            .insert(c.kind.as_str(), c.count);
    }
    let list: Vec<_> = sync_core::all_villages()
        .map(|v| {
            // Counts only where the caller may read reports.
            let by_kind = per_village
                .remove(&v.code)
                .filter(|_| caller.access.covers(v.code))
                .unwrap_or_default();
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

async fn schema(_caller: Caller, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let kind: ReportKind = path
        .parse()
        .map_err(|e: sync_core::kind::UnknownKind| ApiError::NotFound(e.to_string()))?;
    Ok(HttpResponse::Ok()
        .content_type("application/schema+json")
        .body(sync_core::schema::schema_text(kind)))
}

/// `GET /api/v1/me`: who the token belongs to (lets a device check its token and learn its
/// villages).
async fn me(caller: Caller) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "user": caller.user,
        "role": caller.role().as_str(),
        "device": caller.device.to_string(),
        "villages": caller.access.villages().map(|v| v.iter().map(ToString::to_string).collect::<Vec<_>>()),
    }))
}

#[derive(Deserialize)]
struct AuditParams {
    after: Option<u64>,
    limit: Option<usize>,
}

/// `GET /api/v1/audit?after=SEQ&limit=N`: the audit trail, for admins.
async fn audit_log(
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
