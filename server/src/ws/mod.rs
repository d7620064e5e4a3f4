//! `/ws`: the automerge-repo WebSocket protocol, so that unchanged `@automerge/automerge-repo` and
//! `samod` clients sync reports with desa-sync — the same documents, rules and storage as
//! `POST /api/v1/sync`.
//!
//! This is the shell: the protocol itself is sync-core's peer state machine
//! (`sync_core::protocol::server::peer`), one per connection. A connection is a task on the actix
//! worker that owns the socket, the pings, the device's rate limit and its place among the open
//! connections; it feeds the state machine what happens (frames, commits, ephemeral messages from
//! other connections, directory changes) and does what it says. Whatever touches documents or the
//! store runs in `web::block`, so one peer's automerge work never delays another's handshake.
//!
//! What the server does with each message — judging changes before they count, answering a
//! document of another village exactly as a missing one, pushing after every commit, saving sync
//! states, relaying ephemeral messages — is documented on the state machine.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, Session};
use futures_util::StreamExt;
use sync_core::automerge::{Change, ChangeHash};
use sync_core::protocol::repo::RepoMessage;
use sync_core::protocol::server::peer::{Effect, Input, Peer, PeerContext};
use sync_core::protocol::server::{EngineError, Via, Working};
use sync_core::rules::Verdict;
use sync_core::{Principal, ReportId};
use tokio::sync::broadcast;

use crate::audit::AuditEvent;
use crate::auth::{Caller, Directory, Limiter};
use crate::engine::Engine;
use crate::error::ApiError;

mod hub;

use hub::{Full, Slot};
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
    let limits = app_data::<crate::limit::Limits>(&req)?;
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
        context: Arc::new(Context {
            engine: engine.into_inner(),
            hub: hub.clone(),
        }),
        device: caller.device,
        principal: caller.0.clone(),
        peer: Some(Peer::new(id, caller.0, hub.identity.clone())),
        directory: directory.into_inner(),
        limiter: limiter.into_inner(),
        hub,
        id,
    };
    actix_web::rt::spawn(connection.run(session, stream, max_message));
    Ok(response)
}

/// Shared server state registered at startup.
fn app_data<T: 'static>(req: &HttpRequest) -> Result<web::Data<T>, ApiError> {
    req.app_data::<web::Data<T>>()
        .cloned()
        .ok_or_else(|| ApiError::Internal(format!("{} not configured", std::any::type_name::<T>())))
}

/// What the peer state machine reads and asks of the server.
struct Context {
    engine: Arc<Engine>,
    hub: Arc<Hub>,
}

impl PeerContext for Context {
    fn working(&self, id: &ReportId) -> Result<Option<Arc<Working>>, EngineError> {
        self.engine.working(id)
    }

    fn ingest(
        &self,
        report: ReportId,
        changes: Vec<Change>,
        principal: &Arc<Principal>,
    ) -> Result<HashMap<ChangeHash, Verdict>, EngineError> {
        let mut judged = self
            .engine
            .ingest(vec![(report, changes)], principal, Via::Ws)
            .inspect_err(|e| tracing::warn!(%report, error = %e, "ws ingest failed"))?;
        Ok(judged.remove(&report).unwrap_or_default())
    }

    fn audit(&self, events: Vec<AuditEvent>) -> Result<(), EngineError> {
        self.engine
            .audit(events)
            .inspect_err(|e| tracing::error!(error = %e, "auditing a WebSocket read"))
    }

    fn sync_states(&self, storage: &str) -> Result<Vec<(ReportId, Vec<u8>)>, EngineError> {
        Ok(self.engine.store().peer_sync_states(storage)?)
    }

    fn refused(&self, peer: &str, report: ReportId) -> HashSet<ChangeHash> {
        self.hub.refused_for(peer, report)
    }

    fn remember_refused(&self, peer: &str, report: ReportId, hashes: &[ChangeHash]) {
        self.hub
            .remember_refused(peer, report, hashes.iter().copied());
    }
}

struct Connection {
    /// Its place among the open connections, given back when the connection ends.
    _slot: Slot,
    context: Arc<Context>,
    device: sync_core::DeviceId,
    /// Who it is, as at the upgrade (a change of access closes the connection): its role's
    /// request allowance applies.
    principal: Arc<Principal>,
    /// The protocol's state (`None` only while it is away in `web::block`, or once lost).
    peer: Option<Peer>,
    directory: Arc<Directory>,
    /// The device's request allowance, shared with its HTTP requests: over it, the connection
    /// waits before reading the next message (backpressure, not an error).
    limiter: Arc<Limiter>,
    hub: Arc<Hub>,
    id: u64,
}

/// Why a connection ends: the peer went away, a frame could not be sent, or the server closed
/// it (the state machine said to, the peer broke the framing, or it went silent).
enum Gone {
    /// The peer closed the connection or the socket failed: nothing to tell an operator.
    Peer,
    /// The server closed it, for this reason.
    Closed(String),
}

impl From<actix_ws::Closed> for Gone {
    fn from(_: actix_ws::Closed) -> Self {
        Gone::Peer
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
        let mut committed = self.context.engine.subscribe();
        let mut relay = self.hub.relay.subscribe();
        let mut directory = self.directory.subscribe();
        let limits = self.hub.limits;
        let mut ping = tokio::time::interval(limits.ping);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heard = tokio::time::Instant::now();
        loop {
            let step = tokio::select! {
                changed = directory.changed() => match changed {
                    Ok(()) => {
                        let access = self.directory.principal_of(self.device);
                        self.step(&mut session, Input::Access(access)).await
                    }
                    Err(_) => Err(Gone::Closed("the server is shutting down".into())),
                },
                _ = ping.tick() => {
                    if last_heard.elapsed() > limits.idle {
                        tracing::debug!(connection = self.id, "no frame from the peer for too long: closing");
                        close = Some(actix_ws::CloseReason {
                            code: actix_ws::CloseCode::Away,
                            description: Some("idle: no answer to pings".into()),
                        });
                        Err(Gone::Closed("idle: no answer to pings".into()))
                    } else {
                        session.ping(b"").await.map_err(Gone::from)
                    }
                },
                frame = stream.next() => match frame {
                    Some(Ok(AggregatedMessage::Binary(bytes))) => {
                        last_heard = tokio::time::Instant::now();
                        while let Err(wait) = self.limiter.check(&self.principal) {
                            tokio::time::sleep(wait.0).await;
                        }
                        self.step(&mut session, Input::Frame(bytes.to_vec())).await
                    }
                    Some(Ok(AggregatedMessage::Ping(bytes))) => {
                        last_heard = tokio::time::Instant::now();
                        session.pong(&bytes).await.map_err(Gone::from)
                    }
                    Some(Ok(AggregatedMessage::Text(_))) => {
                        let error = RepoMessage::Error { message: "binary frames only".into() };
                        let _ = session.binary(error.encode()).await;
                        Err(Gone::Closed("a text frame (binary frames only)".into()))
                    }
                    Some(Ok(AggregatedMessage::Pong(_))) => {
                        last_heard = tokio::time::Instant::now();
                        Ok(())
                    }
                    Some(Err(e)) => {
                        close = crate::limit::ws_close_reason(&e, max_message);
                        Err(Gone::Closed(format!("a framing error: {e}")))
                    }
                    Some(Ok(AggregatedMessage::Close(_))) | None => Err(Gone::Peer),
                },
                note = committed.recv() => match note {
                    Ok(ids) => self.step(&mut session, Input::Committed(ids)).await,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.step(&mut session, Input::Lagged).await
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        Err(Gone::Closed("the server is shutting down".into()))
                    }
                },
                relayed = relay.recv() => match relayed {
                    Ok(r) => self.step(&mut session, Input::Relayed(r)).await,
                    Err(broadcast::error::RecvError::Lagged(_)) => Ok(()),
                    Err(broadcast::error::RecvError::Closed) => {
                        Err(Gone::Closed("the server is shutting down".into()))
                    }
                },
            };
            match step {
                Ok(()) => {}
                Err(Gone::Peer) => {
                    tracing::debug!(connection = self.id, "ws connection closed by the peer");
                    break;
                }
                Err(Gone::Closed(why)) => {
                    tracing::info!(connection = self.id, %why, "ws connection closed by the server");
                    break;
                }
            }
        }
        self.save_sync_states().await;
        let _ = session.close(close).await;
    }

    /// Feed the state machine one input and do what it says. Inputs that touch documents or the
    /// store run off the executor; relays and access changes are answered in place.
    async fn step(&mut self, session: &mut Session, input: Input) -> Result<(), Gone> {
        let mut peer = self
            .peer
            .take()
            .ok_or_else(|| Gone::Closed("the state machine was lost".into()))?;
        let now = self.context.engine.now();
        let effects = match input {
            Input::Relayed(_) | Input::Access(_) => peer.handle(&*self.context, input, now),
            input => {
                let context = self.context.clone();
                let outcome = web::block(move || {
                    let effects = peer.handle(&*context, input, now);
                    (peer, effects)
                })
                .await;
                match outcome {
                    Ok((back, effects)) => {
                        peer = back;
                        effects
                    }
                    Err(e) => {
                        tracing::error!(connection = self.id, error = %e, "the WebSocket state machine failed; closing");
                        return Err(Gone::Closed("the state machine failed".into()));
                    }
                }
            }
        };
        self.peer = Some(peer);
        // The last error said to the peer: when the protocol closes, it is the reason.
        let mut said = None;
        for effect in effects {
            match effect {
                Effect::Send(message) => {
                    match &message {
                        RepoMessage::Error { message } => {
                            tracing::debug!(connection = self.id, %message, "ws error sent");
                            said = Some(message.clone());
                        }
                        other => {
                            tracing::trace!(connection = self.id, message = ?kind_of(other), "ws send")
                        }
                    }
                    session.binary(message.encode()).await?;
                }
                Effect::Relay(relayed) => {
                    // No other connection listening is not an error.
                    let _ = self.hub.relay.send(Arc::new(relayed));
                }
                Effect::Close => {
                    let why = said.take().unwrap_or_else(|| "the protocol said so".into());
                    return Err(Gone::Closed(why));
                }
            }
        }
        Ok(())
    }

    async fn save_sync_states(&mut self) {
        let Some((storage, states)) = self.peer.as_ref().and_then(Peer::sync_states) else {
            return;
        };
        let engine = self.context.engine.clone();
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
