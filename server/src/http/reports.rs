//! The coordinators' reports: list, export, read one, decide on one (`PATCH`); the villages with
//! their report counts; the report schemas. Reads are audited before they are answered; analysts
//! get redacted documents.

use std::collections::BTreeMap;

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use sync_core::{DistrictCode, Edit, FieldPath, ReportKind, Role, VillageCode};

use super::{audit, bad, page_limit, require_reader, LIST_MAX};
use crate::audit::Action;
use crate::auth::{Caller, Principal};
use crate::engine::Engine;
use crate::error::ApiError;
use crate::store::{ReportQuery, ReportRow, Store};
use crate::view::{parse_id, ReportItem, ReportView};
use sync_core::audit::rfc3339_ms;

#[derive(Deserialize)]
pub(super) struct ListParams {
    village: Option<String>,
    district: Option<String>,
    kind: Option<String>,
    status: Option<String>,
    updated_since: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
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

pub(super) async fn list_reports(
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
pub(super) async fn export(
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

pub(super) async fn get_report(
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
pub(super) struct Patch {
    status: Option<String>,
    note: Option<String>,
}

pub(super) async fn patch_report(
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

pub(super) async fn villages(
    caller: Caller,
    engine: web::Data<Engine>,
) -> Result<HttpResponse, ApiError> {
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

pub(super) async fn schema(
    _caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let kind: ReportKind = path
        .parse()
        .map_err(|e: sync_core::kind::UnknownKind| ApiError::NotFound(e.to_string()))?;
    Ok(HttpResponse::Ok()
        .content_type("application/schema+json")
        .body(sync_core::schema::schema_text(kind)))
}
