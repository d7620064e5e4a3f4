//! `/ws`: the automerge-repo WebSocket protocol, so that unchanged `@automerge/automerge-repo` and
//! `samod` clients sync reports with desa-sync — the same documents, rules and storage as
//! `POST /api/v1/sync`.
//!
//! A connection is a task on the actix worker. Everything that touches documents or the store runs
//! in `web::block`, so one peer's automerge work never delays another's handshake.
//!
//! * **Changes are judged before they count.** The changes inside a peer's sync message go through
//!   the same admission and group commit as HTTP uploads; only then does the peer's sync state
//!   learn its heads (the message is replayed with its changes removed). A refused change gets one
//!   `error` message per peer (remembered across its connections: samod treats `error` as fatal
//!   and reconnects, so repeating it would loop), is never stored or relayed, and is not asked for
//!   again; changes building on it are dropped the same way.
//! * **Nothing is announced.** The server only syncs documents a peer asked for or sent. An unknown
//!   document gets `doc-unavailable` at once; if it appears later the peer still gets it.
//! * **Live.** After every commit — from HTTP devices, coordinators or other WebSocket peers — each
//!   connection that has one of the changed documents open is sent a sync message.
//! * **Sync state** of peers with a `storageId` is saved when they disconnect, so a reconnecting
//!   device does not re-download what it has.
//! * **Ephemeral** messages are relayed to the other peers that have the document open, dropping
//!   duplicates by (sender, session, count).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, Session};
use futures_util::StreamExt;
use sync_core::automerge::sync::{Message as SyncMessage, State as SyncState};
use sync_core::automerge::ChangeHash;
use sync_core::protocol::repo::{changes_of, PeerMetadata, RepoMessage, PROTOCOL_VERSION};
use sync_core::rules::{report_village, Verdict};
use sync_core::ReportId;
use tokio::sync::broadcast;

use crate::audit::{Action, AuditEvent, Who};
use crate::auth::{Caller, Directory, Limiter, Principal};
use crate::engine::{Engine, EngineError, Via};
use crate::error::ApiError;

mod hub;

use hub::{without_refused, Full, Relayed, Slot};
pub use hub::{Hub, WsLimits};

/// `GET /ws`: authenticate (bearer header or `?token=`), upgrade and serve one peer.
pub async fn route(
    caller: Caller,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, actix_web::Error> {
    let engine = app_data::<Engine>(&req)?;
    let hub = app_data::<Hub>(&req)?;
    let directory = app_data::<Directory>(&req)?;
    let limits = app_data::<crate::routes::Limits>(&req)?;
    let limiter = app_data::<Limiter>(&req)?;
    if !caller.access.may_write() {
        return Err(ApiError::Forbidden(format!(
            "the {} role does not sync reports",
            caller.role()
        ))
        .into());
    }
    // A bounded number of connections per device and in all: idle and half-open ones are reaped
    // (pings, `WsLimits::idle`), so a phone coming back after a 2G drop finds its place free.
    let slot = match hub.clone().into_inner().open_slot(caller.device) {
        Ok(slot) => slot,
        Err(Full::Device(n)) => {
            return Err(ApiError::RateLimited {
                retry_after: crate::limit::RetryAfter(hub.limits.idle),
                detail: Some(format!(
                    "this device already has {n} open WebSocket connections (the limit); close one, or wait for a dropped one to be reaped"
                )),
            }
            .into())
        }
        Err(Full::Server(n)) => {
            return Err(ApiError::Unavailable(format!(
                "the server has {n} open WebSocket connections (its limit); try again later"
            ))
            .into())
        }
    };
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    // actix's default frame limit (64 KiB) is too small for a first sync: raise it, bounded
    // (`--max-message`; a larger message closes the connection with 1009).
    let max_message = limits.max_message;
    let stream = stream
        .max_frame_size(max_message)
        .aggregate_continuations()
        .max_continuation_size(max_message);
    let hub = hub.into_inner();
    let id = hub.next_connection.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(connection = id, "ws connection opened");
    let connection = Connection {
        _slot: slot,
        engine: engine.into_inner(),
        principal: caller.0,
        directory: directory.into_inner(),
        limiter: limiter.into_inner(),
        hub,
        id,
        peer: None,
        storage: None,
        saved: HashMap::new(),
        docs: HashMap::new(),
        seen: HashMap::new(),
    };
    actix_web::rt::spawn(connection.run(session, stream, max_message));
    Ok(response)
}

/// Run engine work off the executor; its error and the pool's as one text (for the log).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
) -> Result<T, String> {
    match web::block(f).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// Shared server state registered at startup.
fn app_data<T: 'static>(req: &HttpRequest) -> Result<web::Data<T>, ApiError> {
    req.app_data::<web::Data<T>>()
        .cloned()
        .ok_or_else(|| ApiError::Internal(format!("{} not configured", std::any::type_name::<T>())))
}

/// A document a peer has open.
struct Open {
    /// The id as the peer spelled it (answers use the same spelling).
    doc_id: String,
    state: SyncState,
    /// Answers sent in a row to change-free messages while the server's heads stayed the same.
    stalled: u32,
    /// The server's heads at the last answer.
    last_heads: Vec<ChangeHash>,
    /// Whether sending this document to the peer has been audited on this connection.
    audited: bool,
    /// Whether the document exists in the peer's villages (checked once: a village is fixed).
    in_scope: bool,
}

/// Documents one connection may have open (each keeps a sync state of a few hundred bytes).
const MAX_OPEN_DOCUMENTS: usize = 10_000;

/// A sync that goes back and forth this many times without any change moving is stuck (e.g. the
/// server needs a change the peer believes it already sent, which automerge does not resend on
/// the same connection): the connection is closed, and the peer reconnects with a fresh state.
const MAX_STALLED_ANSWERS: u32 = 50;

struct Connection {
    /// Its place among the open connections, given back when the connection ends.
    _slot: Slot,
    engine: Arc<Engine>,
    /// Who is on the other end (checked at the upgrade; re-checked when the directory changes).
    principal: Arc<Principal>,
    directory: Arc<Directory>,
    /// The device's request allowance, shared with its HTTP requests: over it, the connection
    /// waits before reading the next message (backpressure, not an error).
    limiter: Arc<Limiter>,
    hub: Arc<Hub>,
    id: u64,
    peer: Option<String>,
    storage: Option<String>,
    /// Sync states saved for this peer's storage, not yet in use.
    saved: HashMap<ReportId, Vec<u8>>,
    docs: HashMap<ReportId, Open>,
    seen: HashMap<(String, String), u64>,
}

/// What to tell a peer about a document after taking in its message.
enum Reply {
    /// The server does not have it and the peer has nothing to offer.
    Unavailable,
    /// The peer lacks nothing.
    Nothing,
    /// This sync message.
    Sync(Vec<u8>),
}

/// The peer went away or a frame could not be sent: end the connection.
struct Gone;

impl From<actix_ws::Closed> for Gone {
    fn from(_: actix_ws::Closed) -> Self {
        Gone
    }
}

impl Connection {
    async fn run(
        mut self,
        mut session: Session,
        mut stream: actix_ws::AggregatedMessageStream,
        max_message: usize,
    ) {
        let mut close = None;
        let mut committed = self.engine.subscribe();
        let mut relay = self.hub.relay.subscribe();
        let mut directory = self.directory.subscribe();
        let limits = self.hub.limits;
        let mut ping = tokio::time::interval(limits.ping);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heard = tokio::time::Instant::now();
        loop {
            let step = tokio::select! {
                changed = directory.changed() => match changed {
                    Ok(()) => self.check_access(&mut session).await,
                    Err(_) => Err(Gone),
                },
                _ = ping.tick() => {
                    if last_heard.elapsed() > limits.idle {
                        tracing::debug!(connection = self.id, "no frame from the peer for too long: closing");
                        close = Some(actix_ws::CloseReason {
                            code: actix_ws::CloseCode::Away,
                            description: Some("idle: no answer to pings".into()),
                        });
                        Err(Gone)
                    } else {
                        session.ping(b"").await.map_err(Gone::from)
                    }
                },
                frame = stream.next() => match frame {
                    Some(Ok(AggregatedMessage::Binary(bytes))) => {
                        last_heard = tokio::time::Instant::now();
                        while let Err(wait) = self.limiter.check(self.principal.device) {
                            tokio::time::sleep(wait.0).await;
                        }
                        self.on_frame(&mut session, &bytes).await
                    }
                    Some(Ok(AggregatedMessage::Ping(bytes))) => {
                        last_heard = tokio::time::Instant::now();
                        session.pong(&bytes).await.map_err(Gone::from)
                    }
                    Some(Ok(AggregatedMessage::Text(_))) => {
                        let _ = self.send(&mut session, RepoMessage::Error { message: "binary frames only".into() }).await;
                        Err(Gone)
                    }
                    Some(Ok(AggregatedMessage::Pong(_))) => {
                        last_heard = tokio::time::Instant::now();
                        Ok(())
                    }
                    Some(Err(e)) => {
                        close = crate::limit::ws_close_reason(&e, max_message);
                        Err(Gone)
                    }
                    Some(Ok(AggregatedMessage::Close(_))) | None => Err(Gone),
                },
                note = committed.recv() => match note {
                    Ok(ids) => {
                        let open: Vec<ReportId> = ids.iter().copied().filter(|id| self.docs.contains_key(id)).collect();
                        self.push(&mut session, open).await
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let open: Vec<ReportId> = self.docs.keys().copied().collect();
                        self.push(&mut session, open).await
                    }
                    Err(broadcast::error::RecvError::Closed) => Err(Gone),
                },
                relayed = relay.recv() => match relayed {
                    Ok(r) => self.relay_ephemeral(&mut session, &r).await,
                    Err(broadcast::error::RecvError::Lagged(_)) => Ok(()),
                    Err(broadcast::error::RecvError::Closed) => Err(Gone),
                },
            };
            if step.is_err() {
                break;
            }
        }
        self.save_sync_states().await;
        let _ = session.close(close).await;
    }

    /// The directory changed: a revoked device (or removed user) is disconnected; a device whose
    /// person's role or villages changed is disconnected too, so that it reconnects with its new
    /// access (nothing it had open stays open under the old one).
    async fn check_access(&mut self, session: &mut Session) -> Result<(), Gone> {
        match self.directory.principal_of(self.principal.device) {
            None => {
                tracing::info!(connection = self.id, device = %self.principal.device, "device revoked: closing its connection");
                let _ = self
                    .error(session, "this device has been revoked".into())
                    .await;
                Err(Gone)
            }
            Some(now) if *now != *self.principal => {
                tracing::info!(connection = self.id, device = %self.principal.device, "access changed: closing the connection");
                let _ = self
                    .error(
                        session,
                        "your access has changed; reconnect to continue with the new one".into(),
                    )
                    .await;
                Err(Gone)
            }
            Some(_) => Ok(()),
        }
    }

    async fn send(&self, session: &mut Session, message: RepoMessage) -> Result<(), Gone> {
        tracing::trace!(connection = self.id, message = ?kind_of(&message), "ws send");
        session.binary(message.encode()).await.map_err(Gone::from)
    }

    async fn error(&self, session: &mut Session, message: String) -> Result<(), Gone> {
        tracing::debug!(connection = self.id, %message, "ws error sent");
        self.send(session, RepoMessage::Error { message }).await
    }

    async fn on_frame(&mut self, session: &mut Session, frame: &[u8]) -> Result<(), Gone> {
        let message = match RepoMessage::decode(frame) {
            Ok(m) => m,
            Err(e) => return self.error(session, e.to_string()).await,
        };
        tracing::trace!(connection = self.id, message = ?kind_of(&message), "ws message");
        match message {
            RepoMessage::Join {
                sender_id,
                supported_protocol_versions,
                metadata,
            } => {
                if !supported_protocol_versions.is_empty()
                    && !supported_protocol_versions
                        .iter()
                        .any(|v| v == PROTOCOL_VERSION)
                {
                    self.error(session, format!("unsupported protocol versions {supported_protocol_versions:?}; this server speaks \"{PROTOCOL_VERSION}\"")).await?;
                    return Err(Gone);
                }
                // Answer first: a client gives up after about a second without `peer`.
                self.send(
                    session,
                    RepoMessage::Peer {
                        sender_id: self.hub.peer_id.clone(),
                        target_id: sender_id.clone(),
                        selected_protocol_version: PROTOCOL_VERSION.into(),
                        metadata: PeerMetadata {
                            storage_id: Some(self.hub.storage_id.clone()),
                            is_ephemeral: false,
                        },
                    },
                )
                .await?;
                self.peer = Some(sender_id);
                if let Some(storage) = metadata.storage_id.filter(|_| !metadata.is_ephemeral) {
                    // Keyed by device too: one device's storage id never unlocks another's states.
                    let storage = format!("{}/{storage}", self.principal.device);
                    let engine = self.engine.clone();
                    let key = storage.clone();
                    let saved = web::block(move || engine.store().peer_sync_states(&key)).await;
                    if let Ok(Ok(states)) = saved {
                        self.saved = states.into_iter().collect();
                    }
                    self.storage = Some(storage);
                }
                Ok(())
            }
            RepoMessage::Request {
                document_id, data, ..
            }
            | RepoMessage::Sync {
                document_id, data, ..
            } => {
                if self.peer.is_none() {
                    return self.error(session, "send join first".into()).await;
                }
                self.on_sync(session, document_id, &data).await
            }
            RepoMessage::Ephemeral {
                sender_id,
                count,
                session_id,
                document_id,
                data,
                ..
            } => {
                let Ok(report) = document_id.parse::<ReportId>() else {
                    return Ok(());
                };
                // Only about a document this peer has open and may see.
                if !self.docs.get(&report).is_some_and(|o| o.in_scope) {
                    return Ok(());
                }
                let key = (sender_id.clone(), session_id.clone());
                if self.seen.get(&key).is_some_and(|last| *last >= count) {
                    return Ok(());
                }
                self.seen.insert(key, count);
                let _ = self.hub.relay.send(Arc::new(Relayed {
                    from: self.id,
                    report,
                    sender_id,
                    count,
                    session_id,
                    data,
                }));
                Ok(())
            }
            RepoMessage::Leave { .. } => Err(Gone),
            RepoMessage::Peer { .. }
            | RepoMessage::DocUnavailable { .. }
            | RepoMessage::Error { .. }
            | RepoMessage::Other { .. } => Ok(()),
        }
    }

    /// Who this peer is across connections: its device and storage id, or else its peer id.
    fn peer_key(&self) -> String {
        let peer = self
            .storage
            .clone()
            .or_else(|| self.peer.clone())
            .unwrap_or_default();
        format!("{}/{peer}", self.principal.device)
    }

    fn open(&mut self, report: ReportId, doc_id: String) -> &mut Open {
        let saved = self.saved.remove(&report);
        self.docs.entry(report).or_insert_with(|| Open {
            doc_id,
            // A saved state keeps only what both sides had; decoding it is what automerge expects
            // of a reconnecting peer.
            state: saved
                .and_then(|bytes| sync_core::guard::sync_state(&bytes).ok())
                .unwrap_or_default(),
            stalled: 0,
            last_heads: Vec::new(),
            audited: false,
            in_scope: false,
        })
    }

    async fn on_sync(
        &mut self,
        session: &mut Session,
        doc_id: String,
        data: &[u8],
    ) -> Result<(), Gone> {
        let Ok(report) = doc_id.parse::<ReportId>() else {
            self.error(session, format!("{doc_id} is not a desa-sync document id"))
                .await?;
            return self.unavailable(session, doc_id).await;
        };
        let message = match sync_core::guard::sync_message(data) {
            Ok(m) => m,
            Err(e) => {
                return self
                    .error(
                        session,
                        format!("{doc_id}: not an automerge sync message: {e}"),
                    )
                    .await
            }
        };
        let unpacked = if message.changes.is_empty() {
            Ok(Default::default())
        } else {
            // Chunks that build on the report (automerge 3's partial documents) are read on top
            // of it — only of a report this peer may see: what can be read must not depend on
            // another village's document.
            let (engine, principal) = (self.engine.clone(), self.principal.clone());
            let message = message.clone();
            blocking(move || {
                let base = engine
                    .working(&report)?
                    .filter(|w| w.exists)
                    .filter(|w| report_village(&w.doc).is_some_and(|v| principal.access.covers(v)))
                    .map(|w| w.doc.clone())
                    .unwrap_or_default();
                Ok(changes_of(&message, &base))
            })
            .await
            .and_then(|r| r)
        };
        let unpacked = match unpacked {
            Ok(u) => u,
            Err(e) => return self.error(session, format!("{doc_id}: {e}")).await,
        };
        if !unpacked.incomplete.is_empty() {
            tracing::debug!(connection = self.id, %report, "a chunk builds on changes the server lacks; asking the peer for them");
        }
        let changes = unpacked.changes;
        let carried = !changes.is_empty();
        // No check of the document's village here: a document of another village is answered
        // exactly as one the server does not have — its changes are refused by admission with the
        // same words as changes to a missing report, and nothing of it is sent (`answer`).
        let peer_key = self.peer_key();
        if !self.docs.contains_key(&report) && self.docs.len() >= MAX_OPEN_DOCUMENTS {
            // Each open document keeps a sync state: a peer cannot make the server hold an
            // unbounded number (a village holds hundreds of reports, not tens of thousands).
            self.error(
                session,
                format!("{doc_id}: this connection has {MAX_OPEN_DOCUMENTS} documents open (the limit); reconnect to start afresh"),
            )
            .await?;
            return Err(Gone);
        }
        self.open(report, doc_id.clone());
        // A peer keeps offering a change it still has. One already refused for this peer — or
        // building on one — is dropped without judging it or saying so again: samod treats every
        // `error` as fatal and reconnects, so repeating it would loop forever.
        let refused = self.hub.refused_for(&peer_key, report);
        let (fresh, dropped) = without_refused(changes, &refused);
        let mut newly_refused: Vec<(ChangeHash, String)> = dropped
            .into_iter()
            .filter(|h| !refused.contains(h))
            .map(|h| (h, "depends on a change refused earlier".to_owned()))
            .collect();
        if !fresh.is_empty() {
            let engine = self.engine.clone();
            let principal = self.principal.clone();
            let judged =
                blocking(move || engine.ingest(vec![(report, fresh)], &principal, Via::Ws)).await;
            let verdicts = match judged {
                Ok(mut j) => j.remove(&report).unwrap_or_default(),
                Err(e) => {
                    tracing::warn!(connection = self.id, %report, error = %e, "ws ingest failed");
                    return self
                        .error(session, format!("{doc_id}: not stored: the server could not store changes now; try again"))
                        .await;
                }
            };
            for (hash, verdict) in verdicts {
                if let Verdict::Refused(r) = verdict {
                    newly_refused.push((hash, r.to_string()));
                }
            }
        }
        if !newly_refused.is_empty() {
            self.hub
                .remember_refused(&peer_key, report, newly_refused.iter().map(|(h, _)| *h));
            // Once per change and peer: the JS client logs it, samod disconnects and comes back.
            for (hash, why) in newly_refused {
                tracing::info!(connection = self.id, %report, %hash, %why, "ws change refused");
                self.error(
                    session,
                    format!("{doc_id}: change {hash} refused ({why}); it is not stored or relayed"),
                )
                .await?;
            }
        }
        let mut stripped = message;
        stripped.changes = Vec::<Vec<u8>>::new().into();
        self.answer(session, report, Some((stripped, carried)))
            .await
    }

    /// Take in a (change-free) message from the peer, then send what it lacks, if anything.
    /// `carried`: the message had changes, which were admitted before this.
    async fn answer(
        &mut self,
        session: &mut Session,
        report: ReportId,
        incoming: Option<(SyncMessage, bool)>,
    ) -> Result<(), Gone> {
        let Some(open) = self.docs.get_mut(&report) else {
            return Ok(());
        };
        let mut state = std::mem::take(&mut open.state);
        let doc_id = open.doc_id.clone();
        let checked = open.in_scope;
        let refused = self.hub.refused_for(&self.peer_key(), report);
        let engine = self.engine.clone();
        let principal = self.principal.clone();
        let carried = incoming.as_ref().is_some_and(|(_, carried)| *carried);
        let outcome = blocking(
            move || -> Result<(SyncState, Reply, Vec<ChangeHash>, bool), EngineError> {
                // A report's village is fixed at creation: checked once per connection.
                let in_scope = |w: &crate::engine::Working| {
                    checked || report_village(&w.doc).is_some_and(|v| principal.access.covers(v))
                };
                let visible = engine.working(&report)?.filter(|w| w.exists && in_scope(w));
                let scope_checked = visible.is_some();
                let mut doc = match visible {
                    Some(working) => working.doc.clone(),
                    // A document the server lacks — or has in another village, which this peer
                    // must not be able to tell apart — is answered as from an empty document,
                    // which asks for its changes when the peer offers some; a peer that has
                    // nothing either learns the document is unavailable (a push about it has
                    // nothing to say).
                    None => match &incoming {
                        Some((m, _)) if !m.heads.is_empty() => {
                            sync_core::automerge::Automerge::new()
                        }
                        Some(_) => return Ok((state, Reply::Unavailable, Vec::new(), false)),
                        None => return Ok((state, Reply::Nothing, Vec::new(), false)),
                    },
                };
                if let Some((m, carried)) = incoming {
                    // No changes inside: this only teaches the state what the peer has. When the
                    // message did carry changes (admitted just before), automerge would take the
                    // peer's heads — now equal to ours — as already answered; the peer waits for
                    // exactly that answer to know its changes are stored, so keep it due.
                    let last_sent = state.last_sent_heads.clone();
                    if sync_core::guard::receive_sync_message(&mut doc, &mut state, m).is_err() {
                        // Whatever the peer sent, the state learns nothing from it (a contained
                        // panic may have left it half-changed): start this document afresh.
                        state = SyncState::new();
                    }
                    if carried {
                        state.last_sent_heads = last_sent;
                    }
                }
                let reply = match sync_core::guard::generate_sync_message(&doc, &mut state) {
                    Ok(reply) => reply.map(|mut m| {
                        m.need.retain(|h| !refused.contains(h));
                        m.encode()
                    }),
                    // Only a state built from a hostile message could do this: forget it.
                    Err(_) => {
                        state = SyncState::new();
                        None
                    }
                };
                let heads = doc.get_heads();
                Ok((
                    state,
                    reply.map_or(Reply::Nothing, Reply::Sync),
                    heads,
                    scope_checked,
                ))
            },
        )
        .await;
        let (state, reply, heads, scope_checked) = match outcome {
            Ok(o) => o,
            // Details stay in the log: an error about a report names nothing of it.
            Err(e) => {
                tracing::warn!(connection = self.id, %report, error = %e, "ws answer failed");
                return self
                    .error(
                        session,
                        format!("{doc_id}: the server could not answer for this document now"),
                    )
                    .await;
            }
        };
        if let Some(open) = self.docs.get_mut(&report) {
            open.state = state;
            let moved = carried || heads != open.last_heads;
            open.stalled = match (&reply, moved) {
                (Reply::Sync(_), false) => open.stalled + 1,
                _ => 0,
            };
            open.last_heads = heads;
            open.in_scope |= scope_checked;
            if open.stalled > MAX_STALLED_ANSWERS {
                tracing::warn!(connection = self.id, %report, "sync not converging; closing so the peer starts afresh");
                self.error(
                    session,
                    format!("{doc_id}: sync is not converging; reconnect"),
                )
                .await?;
                return Err(Gone);
            }
        }
        match reply {
            Reply::Unavailable => self.unavailable(session, doc_id).await,
            Reply::Nothing => Ok(()),
            Reply::Sync(data) => {
                // A document the peer may read is recorded before anything of it leaves; an
                // answer from an empty document (asking for the peer's changes) carries nothing.
                if scope_checked && !self.audit_read(report).await {
                    // Nothing leaves unrecorded.
                    return self
                        .error(
                            session,
                            format!("{doc_id}: not sent: the audit trail could not be written"),
                        )
                        .await;
                }
                let target = self.peer.clone().unwrap_or_default();
                self.send(
                    session,
                    RepoMessage::Sync {
                        sender_id: self.hub.peer_id.clone(),
                        target_id: target,
                        document_id: doc_id,
                        data,
                    },
                )
                .await
            }
        }
    }

    /// Audit the first time this connection sends a document's contents. `false`: the entry
    /// could not be written, so the contents must not be sent.
    async fn audit_read(&mut self, report: ReportId) -> bool {
        let Some(open) = self.docs.get_mut(&report) else {
            return false;
        };
        if open.audited {
            return true;
        }
        let engine = self.engine.clone();
        let event = AuditEvent::at(
            engine.now(),
            Who::from(&*self.principal),
            Action::Read {
                via: "ws".into(),
                reports: vec![report.to_string()],
                redacted: false,
            },
        );
        let written = match web::block(move || engine.audit(vec![event])).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "auditing a WebSocket read");
                false
            }
            Err(e) => {
                tracing::error!(error = %e, "auditing a WebSocket read");
                false
            }
        };
        if let (true, Some(open)) = (written, self.docs.get_mut(&report)) {
            open.audited = true;
        }
        written
    }

    async fn unavailable(&self, session: &mut Session, doc_id: String) -> Result<(), Gone> {
        let target = self.peer.clone().unwrap_or_default();
        self.send(
            session,
            RepoMessage::DocUnavailable {
                sender_id: self.hub.peer_id.clone(),
                target_id: target,
                document_id: doc_id,
            },
        )
        .await
    }

    /// Documents this peer has open changed on the server: send what it lacks.
    async fn push(&mut self, session: &mut Session, reports: Vec<ReportId>) -> Result<(), Gone> {
        for report in reports {
            self.answer(session, report, None).await?;
        }
        Ok(())
    }

    async fn relay_ephemeral(
        &mut self,
        session: &mut Session,
        relayed: &Relayed,
    ) -> Result<(), Gone> {
        if relayed.from == self.id {
            return Ok(());
        }
        let Some(open) = self.docs.get(&relayed.report).filter(|o| o.in_scope) else {
            return Ok(());
        };
        let message = RepoMessage::Ephemeral {
            sender_id: relayed.sender_id.clone(),
            target_id: self.peer.clone().unwrap_or_default(),
            count: relayed.count,
            session_id: relayed.session_id.clone(),
            document_id: open.doc_id.clone(),
            data: relayed.data.clone(),
        };
        self.send(session, message).await
    }

    async fn save_sync_states(&mut self) {
        let Some(storage) = self.storage.clone() else {
            return;
        };
        let states: Vec<(ReportId, Vec<u8>)> = self
            .docs
            .iter()
            .map(|(id, open)| (*id, open.state.encode()))
            .collect();
        if states.is_empty() {
            return;
        }
        let engine = self.engine.clone();
        let saved =
            web::block(move || engine.store().save_peer_sync_states(&storage, &states)).await;
        if let Ok(Err(e)) = saved {
            tracing::warn!(error = %e, "saving a peer's sync states failed (it will re-sync more)");
        }
    }
}

fn kind_of(message: &RepoMessage) -> String {
    match message {
        RepoMessage::Join { .. } => "join".into(),
        RepoMessage::Peer { .. } => "peer".into(),
        RepoMessage::Request {
            document_id, data, ..
        } => format!("request {document_id} ({} B)", data.len()),
        RepoMessage::Sync {
            document_id, data, ..
        } => format!("sync {document_id} ({} B)", data.len()),
        RepoMessage::DocUnavailable { document_id, .. } => format!("doc-unavailable {document_id}"),
        RepoMessage::Ephemeral { document_id, .. } => format!("ephemeral {document_id}"),
        RepoMessage::Error { message } => format!("error {message}"),
        RepoMessage::Leave { .. } => "leave".into(),
        RepoMessage::Other { kind } => kind.clone(),
    }
}
