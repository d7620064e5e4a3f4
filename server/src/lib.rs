//! # desa-server
//!
//! The HTTP shell around sync-core's server half. A request flows:
//!
//! `routes` (parse, limits) → `web::block` → [`engine::Engine`] (sync-core: plan, admit, feed) →
//! [`store::Store`] (one atomic commit per ingest) → back as bytes or JSON.
//!
//! * `POST /api/v1/sync` — the device exchange (`docs/protocol.md`);
//! * `GET /ws` — the automerge-repo WebSocket protocol ([`ws`], `docs/protocol.md`);
//! * `GET /api/v1/reports`, `GET|PATCH /api/v1/reports/{id}`, `GET /api/v1/villages`,
//!   `GET /api/v1/schemas/{kind}`, `GET /healthz` — the coordinators' API (`docs/api.md`).

pub mod admin;
pub mod audit;
pub mod auth;
pub mod clock;
pub mod config;
pub mod engine;
pub mod error;
pub mod http;
pub mod ingest;
pub mod keys;
pub mod limit;
pub mod shared;
pub mod startup;
pub mod store;
pub mod tls;
pub mod view;
pub mod ws;
