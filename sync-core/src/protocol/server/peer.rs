//! One automerge-repo connection, as the server sees it: a state machine that takes what happens
//! ([`Input`]: a frame from the peer, a commit, an ephemeral message from another connection, a
//! change of the peer's access) and says what to do ([`Effect`]: send a message, relay one, close).
//! The shell owns the socket, the pings, the rate limit and the timers.
//!
//! * **Changes are judged before they count.** The changes inside a peer's sync message go through
//!   the same admission and commit as HTTP uploads ([`PeerContext::ingest`]); only then does the
//!   peer's sync state learn its heads (the message is replayed with its changes removed). A
//!   refused change gets one `error` message per peer (remembered across its connections: samod
//!   treats `error` as fatal and reconnects, so repeating it would loop), is never stored or
//!   relayed, and is not asked for again; changes building on it are dropped the same way.
//! * **Every change is read, one by one.** automerge 3 packs several changes into a *partial
//!   document* that can only be read on top of the changes it builds on
//!   ([`super::super::repo::changes_of`]). One whose dependencies are in neither the document nor
//!   the message is kept by the connection — at most [`PENDING_CHUNKS`] chunks and
//!   [`PENDING_BYTES`] — and read again with each later message about that document, which brings
//!   what it lacks (the server's answer tells the peer what it has).
//! * **Nothing is announced.** The server only syncs documents a peer asked for or sent. An unknown
//!   document gets `doc-unavailable` at once; if it appears later the peer still gets it. A
//!   document of a village outside the peer's is answered exactly as a missing one.
//! * **Live.** After every commit, each connection that has one of the changed documents open
//!   sends what its peer lacks ([`Input::Committed`]).
//! * **Said once.** A change-free message that asks for nothing, sent again while the answer
//!   would be the same one again, is not answered: an automerge-repo client whose advertised
//!   heads lag behind its document would otherwise ping-pong with the server until its next edit.
//!   A sync in which one side keeps asking in vain is closed instead ([`MAX_STALLED_ANSWERS`]).
//! * **Sync state** of peers with a `storageId` is handed to the shell when the connection ends
//!   ([`Peer::sync_states`]), so a reconnecting device does not re-download what it has.
//! * **Ephemeral** messages are relayed to the other peers that have the document open, dropping
//!   duplicates by (sender, session, count).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use automerge::sync::{Message as SyncMessage, State as SyncState};
use automerge::{Automerge, Change, ChangeHash};

use super::{EngineError, Working};
use crate::audit::{Action, AuditEvent, Who};
use crate::protocol::repo::{changes_of, PeerMetadata, RepoMessage, PROTOCOL_VERSION};
use crate::rules::{report_village, Verdict};
use crate::{Principal, ReportId};

/// Documents one connection may have open (each keeps a sync state of a few hundred bytes).
pub const MAX_OPEN_DOCUMENTS: usize = 10_000;

/// A sync that goes back and forth this many times without any change moving, while one side
/// asks for something, is stuck (e.g. the server needs a change the peer believes it already
/// sent, which automerge does not resend on the same connection): the connection is closed, and
/// the peer reconnects with a fresh state. (An exchange in which neither side asks for or gives
/// anything is not answered twice.)
pub const MAX_STALLED_ANSWERS: u32 = 50;

/// Chunks a connection keeps for their dependencies, at most (as many as a device may have
/// changes held on the server)…
pub const PENDING_CHUNKS: usize = 64;
/// …and bytes.
pub const PENDING_BYTES: usize = 4 << 20;

/// Ephemeral sessions whose last count one connection remembers (to drop duplicates); past it the
/// memory starts afresh (a duplicate may then be relayed once: ephemeral data is never stored).
pub const EPHEMERAL_SESSIONS: usize = 256;
/// Longest ephemeral session id kept, in bytes (a longer one is not relayed).
pub const SESSION_ID_BYTES: usize = 128;

/// A peer's sync state per document, encoded (automerge's `sync::State::encode`).
pub type SyncStates = Vec<(ReportId, Vec<u8>)>;

/// What the peer state machine reads of the server, and what it asks of it.
pub trait PeerContext {
    /// A report's committed state (`None`: no such report).
    fn working(&self, id: &ReportId) -> Result<Option<Arc<Working>>, EngineError>;
    /// Admit and durably commit `changes` to `report`, uploaded by `principal` over the
    /// WebSocket; returns their verdicts once committed.
    fn ingest(
        &self,
        report: ReportId,
        changes: Vec<Change>,
        principal: &Arc<Principal>,
    ) -> Result<HashMap<ChangeHash, Verdict>, EngineError>;
    /// Durably append audit events.
    fn audit(&self, events: Vec<AuditEvent>) -> Result<(), EngineError>;
    /// The sync states saved for a peer's storage (keyed by device and storage id).
    fn sync_states(&self, storage: &str) -> Result<SyncStates, EngineError>;
    /// Changes of `report` refused for `peer` (across its connections).
    fn refused(&self, peer: &str, report: ReportId) -> HashSet<ChangeHash>;
    /// Remember changes of `report` refused for `peer`.
    fn remember_refused(&self, peer: &str, report: ReportId, hashes: &[ChangeHash]);
}

/// The server as an automerge-repo peer.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The server's peer id.
    pub peer_id: String,
    /// The id of the server's storage.
    pub storage_id: String,
}

/// An ephemeral message on its way to the other connections with the document open.
#[derive(Debug, Clone, PartialEq)]
pub struct Relayed {
    /// The connection it came from (not sent back there).
    pub from: u64,
    /// The document.
    pub report: ReportId,
    /// The original sender.
    pub sender_id: String,
    /// Its count within the session.
    pub count: u64,
    /// The sender's session.
    pub session_id: String,
    /// The payload, as it came.
    pub data: Vec<u8>,
}

/// What happened.
#[derive(Debug, Clone)]
pub enum Input {
    /// A binary frame from the peer.
    Frame(Vec<u8>),
    /// These reports were committed (by anyone).
    Committed(Arc<Vec<ReportId>>),
    /// Commits were missed (the shell's notifications fell behind): any open document may have
    /// changed.
    Lagged,
    /// An ephemeral message from another connection.
    Relayed(Arc<Relayed>),
    /// The directory changed: the device's access now (`None`: revoked, or its person removed).
    Access(Option<Arc<Principal>>),
}

/// What to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send this message to the peer.
    Send(RepoMessage),
    /// Pass this ephemeral message to the other connections.
    Relay(Relayed),
    /// End the connection (after sending what came before).
    Close,
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
    /// Chunks that could not be read yet (their dependencies were missing).
    pending: Vec<Vec<u8>>,
    /// The last idle exchange: digests of the peer's change-free message that asked for nothing
    /// and of the server's answer that gave and asked for nothing. The same message again gets
    /// no answer when the answer would be the same: it would tell the peer nothing, and an
    /// automerge-repo client whose advertised heads lag behind its document (two people typing
    /// into one document) answers every answer — a ping-pong that only its next edit ends,
    /// costing bytes on the field's network and, counted as stalled, the connection.
    exchanged: Option<(u64, u64)>,
}

/// What to tell a peer about a document after taking in its message.
enum Reply {
    /// The server does not have it and the peer has nothing to offer.
    Unavailable,
    /// The peer lacks nothing.
    Nothing,
    /// This sync message; `idle` when it carries no change and asks for none.
    Sync { data: Vec<u8>, idle: bool },
}

/// A digest of a message's bytes, to tell a repeated one (not a security boundary: a peer that
/// forges a collision only silences an answer to itself).
fn digest(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

/// The connection ends.
struct Closed;

/// One connection's state.
pub struct Peer {
    connection: u64,
    server: Arc<Identity>,
    /// Who is on the other end (checked at the upgrade; re-checked when the directory changes).
    principal: Arc<Principal>,
    peer: Option<String>,
    storage: Option<String>,
    /// Sync states saved for this peer's storage, not yet in use.
    saved: HashMap<ReportId, Vec<u8>>,
    docs: HashMap<ReportId, Open>,
    /// The last ephemeral count relayed per session of this peer (at most [`EPHEMERAL_SESSIONS`]).
    seen: HashMap<String, u64>,
    out: Vec<Effect>,
}

impl Peer {
    /// The state of connection number `connection` (unique in the process), from `principal`.
    pub fn new(connection: u64, principal: Arc<Principal>, server: Arc<Identity>) -> Peer {
        Peer {
            connection,
            server,
            principal,
            peer: None,
            storage: None,
            saved: HashMap::new(),
            docs: HashMap::new(),
            seen: HashMap::new(),
            out: Vec::new(),
        }
    }

    /// Take in what happened; say what to do. After [`Effect::Close`], nothing more.
    pub fn handle<C: PeerContext + ?Sized>(
        &mut self,
        ctx: &C,
        input: Input,
        now: i64,
    ) -> Vec<Effect> {
        let step = match input {
            Input::Frame(frame) => self.on_frame(ctx, &frame, now),
            Input::Committed(ids) => {
                let open: Vec<ReportId> = ids
                    .iter()
                    .copied()
                    .filter(|id| self.docs.contains_key(id))
                    .collect();
                self.push(ctx, open, now)
            }
            Input::Lagged => {
                let open: Vec<ReportId> = self.docs.keys().copied().collect();
                self.push(ctx, open, now)
            }
            Input::Relayed(relayed) => {
                self.relay_ephemeral(&relayed);
                Ok(())
            }
            Input::Access(now_access) => self.check_access(now_access),
        };
        if step.is_err() {
            self.out.push(Effect::Close);
        }
        std::mem::take(&mut self.out)
    }

    /// The sync states to save for this peer, when it has a storage id: `(storage key, states)`.
    pub fn sync_states(&self) -> Option<(String, SyncStates)> {
        let storage = self.storage.clone()?;
        let states: SyncStates = self
            .docs
            .iter()
            .map(|(id, open)| (*id, open.state.encode()))
            .collect();
        (!states.is_empty()).then_some((storage, states))
    }

    /// Documents open on this connection.
    pub fn open_documents(&self) -> usize {
        self.docs.len()
    }

    /// Ephemeral sessions whose last count this connection remembers.
    pub fn ephemeral_sessions(&self) -> usize {
        self.seen.len()
    }

    fn send(&mut self, message: RepoMessage) {
        self.out.push(Effect::Send(message));
    }

    fn error(&mut self, message: String) {
        self.send(RepoMessage::Error { message });
    }

    /// A revoked device (or removed person) is disconnected; a device whose person's role or
    /// villages changed is disconnected too, so that it reconnects with its new access (nothing
    /// it had open stays open under the old one).
    fn check_access(&mut self, now: Option<Arc<Principal>>) -> Result<(), Closed> {
        match now {
            None => {
                self.error("this device has been revoked".into());
                Err(Closed)
            }
            Some(now) if *now != *self.principal => {
                self.error(
                    "your access has changed; reconnect to continue with the new one".into(),
                );
                Err(Closed)
            }
            Some(_) => Ok(()),
        }
    }

    fn on_frame<C: PeerContext + ?Sized>(
        &mut self,
        ctx: &C,
        frame: &[u8],
        now: i64,
    ) -> Result<(), Closed> {
        let message = match RepoMessage::decode(frame) {
            Ok(m) => m,
            Err(e) => {
                self.error(e.to_string());
                return Ok(());
            }
        };
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
                    self.error(format!("unsupported protocol versions {supported_protocol_versions:?}; this server speaks \"{PROTOCOL_VERSION}\""));
                    return Err(Closed);
                }
                self.send(RepoMessage::Peer {
                    sender_id: self.server.peer_id.clone(),
                    target_id: sender_id.clone(),
                    selected_protocol_version: PROTOCOL_VERSION.into(),
                    metadata: PeerMetadata {
                        storage_id: Some(self.server.storage_id.clone()),
                        is_ephemeral: false,
                    },
                });
                self.peer = Some(sender_id);
                if let Some(storage) = metadata.storage_id.filter(|_| !metadata.is_ephemeral) {
                    // Keyed by device too: one device's storage id never unlocks another's states.
                    let storage = format!("{}/{storage}", self.principal.device);
                    // Without them the peer only re-syncs more.
                    if let Ok(states) = ctx.sync_states(&storage) {
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
                    self.error("send join first".into());
                    return Ok(());
                }
                self.on_sync(ctx, document_id, &data, now)
            }
            RepoMessage::Ephemeral {
                count,
                session_id,
                document_id,
                data,
                ..
            } => {
                let Ok(report) = document_id.parse::<ReportId>() else {
                    return Ok(());
                };
                // Only about a document this peer has open and may see, and under the peer's own
                // id (the one it joined with): a peer cannot speak for another.
                let Some(sender_id) = self.peer.clone() else {
                    return Ok(());
                };
                if !self.docs.get(&report).is_some_and(|o| o.in_scope)
                    || session_id.len() > SESSION_ID_BYTES
                {
                    return Ok(());
                }
                if self
                    .seen
                    .get(&session_id)
                    .is_some_and(|last| *last >= count)
                {
                    return Ok(());
                }
                if self.seen.len() >= EPHEMERAL_SESSIONS && !self.seen.contains_key(&session_id) {
                    self.seen.clear();
                }
                self.seen.insert(session_id.clone(), count);
                self.out.push(Effect::Relay(Relayed {
                    from: self.connection,
                    report,
                    sender_id,
                    count,
                    session_id,
                    data,
                }));
                Ok(())
            }
            RepoMessage::Leave { .. } => Err(Closed),
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

    /// The report as this peer may see it: it exists and is in one of the peer's villages
    /// (checked once per connection: a report's village is fixed at creation).
    fn visible<C: PeerContext + ?Sized>(
        &self,
        ctx: &C,
        report: ReportId,
    ) -> Result<Option<Arc<Working>>, EngineError> {
        let checked = self.docs.get(&report).is_some_and(|o| o.in_scope);
        let access = &self.principal.access;
        Ok(ctx.working(&report)?.filter(|w| {
            w.exists && (checked || report_village(&w.doc).is_some_and(|v| access.covers(v)))
        }))
    }

    fn on_sync<C: PeerContext + ?Sized>(
        &mut self,
        ctx: &C,
        doc_id: String,
        data: &[u8],
        now: i64,
    ) -> Result<(), Closed> {
        let Ok(report) = doc_id.parse::<ReportId>() else {
            self.error(format!("{doc_id} is not a desa-sync document id"));
            self.unavailable(doc_id);
            return Ok(());
        };
        let mut message = match crate::guard::sync_message(data) {
            Ok(m) => m,
            Err(e) => {
                self.error(format!("{doc_id}: not an automerge sync message: {e}"));
                return Ok(());
            }
        };
        if !self.docs.contains_key(&report) && self.docs.len() >= MAX_OPEN_DOCUMENTS {
            // Each open document keeps a sync state: a peer cannot make the server hold an
            // unbounded number (a village holds hundreds of reports, not tens of thousands).
            self.error(format!("{doc_id}: this connection has {MAX_OPEN_DOCUMENTS} documents open (the limit); reconnect to start afresh"));
            return Err(Closed);
        }
        self.open(report, doc_id.clone());
        let carried = !message.changes.is_empty();
        if carried {
            if let Err(why) = self.take_changes(ctx, report, &message) {
                self.error(format!("{doc_id}: {why}"));
                return Ok(());
            }
        }
        // No changes inside: what is left only teaches the sync state what the peer has.
        message.changes = Vec::<Vec<u8>>::new().into();
        self.answer(ctx, report, Some((message, carried)), now)
    }

    /// Judge and commit the changes a message carries (with the chunks kept from earlier
    /// messages); say what was refused, once per change and peer. `Err`: nothing was stored.
    fn take_changes<C: PeerContext + ?Sized>(
        &mut self,
        ctx: &C,
        report: ReportId,
        message: &SyncMessage,
    ) -> Result<(), String> {
        // Chunks that build on the report (automerge 3's partial documents) are read on top of
        // it — only of a report this peer may see: what can be read must not depend on another
        // village's document. No check of the village beyond that: a document of another village
        // is answered exactly as one the server does not have — its changes are refused by
        // admission with the same words as changes to a missing report.
        let visible = self
            .visible(ctx, report)
            .map_err(|_| "not stored: the server could not read this document now".to_owned())?;
        // Borrowed: `changes_of` copies it only when a document chunk needs it.
        let empty;
        let base = match &visible {
            Some(working) => &working.doc,
            None => {
                empty = Automerge::new();
                &empty
            }
        };
        let pending = self
            .docs
            .get_mut(&report)
            .map(|o| std::mem::take(&mut o.pending))
            .unwrap_or_default();
        let mut with_pending = message.clone();
        if !pending.is_empty() {
            let mut entries: Vec<Vec<u8>> = message.changes.iter().map(<[u8]>::to_vec).collect();
            entries.extend(pending);
            with_pending.changes = entries.into();
        }
        let unpacked = changes_of(&with_pending, base)?;
        self.keep_pending(report, unpacked.incomplete);
        // A peer keeps offering a change it still has. One already refused for this peer — or
        // building on one — is dropped without judging it or saying so again: samod treats every
        // `error` as fatal and reconnects, so repeating it would loop forever.
        let peer_key = self.peer_key();
        let refused = ctx.refused(&peer_key, report);
        let (fresh, dropped) = without_refused(unpacked.changes, &refused);
        let mut newly_refused: Vec<(ChangeHash, String)> = dropped
            .into_iter()
            .filter(|h| !refused.contains(h))
            .map(|h| (h, "depends on a change refused earlier".to_owned()))
            .collect();
        if !fresh.is_empty() {
            let verdicts = ctx.ingest(report, fresh, &self.principal).map_err(|_| {
                "not stored: the server could not store changes now; try again".to_owned()
            })?;
            for (hash, verdict) in verdicts {
                if let Verdict::Refused(r) = verdict {
                    newly_refused.push((hash, r.to_string()));
                }
            }
        }
        if !newly_refused.is_empty() {
            let hashes: Vec<ChangeHash> = newly_refused.iter().map(|(h, _)| *h).collect();
            ctx.remember_refused(&peer_key, report, &hashes);
            let doc_id = self.docs.get(&report).map(|o| o.doc_id.clone());
            let doc_id = doc_id.unwrap_or_else(|| report.to_string());
            for (hash, why) in newly_refused {
                self.error(format!(
                    "{doc_id}: change {hash} refused ({why}); it is not stored or relayed"
                ));
            }
        }
        Ok(())
    }

    /// Keep chunks that could not be read yet, within the connection's bounds (the oldest go
    /// first: the peer still has them and offers them again).
    fn keep_pending(&mut self, report: ReportId, incomplete: Vec<Vec<u8>>) {
        if let Some(open) = self.docs.get_mut(&report) {
            open.pending = incomplete;
        }
        let mut all: Vec<(ReportId, usize)> = self
            .docs
            .iter()
            .flat_map(|(id, o)| o.pending.iter().map(move |c| (*id, c.len())))
            .collect();
        let mut bytes: usize = all.iter().map(|(_, n)| n).sum();
        while all.len() > PENDING_CHUNKS || bytes > PENDING_BYTES {
            let (id, n) = all.remove(0);
            bytes -= n;
            if let Some(o) = self.docs.get_mut(&id) {
                if !o.pending.is_empty() {
                    o.pending.remove(0);
                }
            }
        }
    }

    fn open(&mut self, report: ReportId, doc_id: String) {
        let saved = self.saved.remove(&report);
        self.docs.entry(report).or_insert_with(|| Open {
            doc_id,
            // A saved state keeps only what both sides had; decoding it is what automerge expects
            // of a reconnecting peer.
            state: saved
                .and_then(|bytes| crate::guard::sync_state(&bytes).ok())
                .unwrap_or_default(),
            stalled: 0,
            last_heads: Vec::new(),
            audited: false,
            in_scope: false,
            pending: Vec::new(),
            exchanged: None,
        });
    }

    /// Take in a (change-free) message from the peer, then send what it lacks, if anything.
    /// `carried`: the message had changes, which were admitted before this.
    fn answer<C: PeerContext + ?Sized>(
        &mut self,
        ctx: &C,
        report: ReportId,
        incoming: Option<(SyncMessage, bool)>,
        now: i64,
    ) -> Result<(), Closed> {
        let Some(doc_id) = self.docs.get(&report).map(|o| o.doc_id.clone()) else {
            return Ok(());
        };
        let carried = incoming.as_ref().is_some_and(|(_, carried)| *carried);
        // A change-free message that asks for nothing, as the peer sent it (its changes are gone).
        let heard = incoming
            .as_ref()
            .filter(|(m, carried)| !carried && m.need.is_empty())
            .map(|(m, _)| digest(&m.clone().encode()));
        let outcome = self.reply(ctx, report, incoming);
        let (reply, heads, scope_checked) = match outcome {
            Ok(o) => o,
            // An error about a report names nothing of it.
            Err(_) => {
                self.error(format!(
                    "{doc_id}: the server could not answer for this document now"
                ));
                return Ok(());
            }
        };
        if let Some(open) = self.docs.get_mut(&report) {
            let exchange = match (&reply, heard) {
                (Reply::Sync { data, idle: true }, Some(heard)) => Some((heard, digest(data))),
                _ => None,
            };
            let repeated = exchange.is_some() && exchange == open.exchanged;
            open.exchanged = exchange;
            if repeated {
                // Said already, to this very message: the sync state stays as if said again.
                open.last_heads = heads;
                return Ok(());
            }
            let moved = carried || heads != open.last_heads;
            open.stalled = match (&reply, moved) {
                (Reply::Sync { .. }, false) => open.stalled + 1,
                _ => 0,
            };
            open.last_heads = heads;
            open.in_scope |= scope_checked;
            if open.stalled > MAX_STALLED_ANSWERS {
                self.error(format!("{doc_id}: sync is not converging; reconnect"));
                return Err(Closed);
            }
        }
        match reply {
            Reply::Unavailable => self.unavailable(doc_id),
            Reply::Nothing => {}
            Reply::Sync { data, .. } => {
                // A document the peer may read is recorded before anything of it leaves; an
                // answer from an empty document (asking for the peer's changes) carries nothing.
                if scope_checked && !self.audit_read(ctx, report, now) {
                    self.error(format!(
                        "{doc_id}: not sent: the audit trail could not be written"
                    ));
                    return Ok(());
                }
                self.send(RepoMessage::Sync {
                    sender_id: self.server.peer_id.clone(),
                    target_id: self.peer.clone().unwrap_or_default(),
                    document_id: doc_id,
                    data,
                });
            }
        }
        Ok(())
    }

    /// The answer to a document's message (or to a commit, without one), from the state the peer
    /// may see: the reply, the server's heads, and whether the document is visible.
    fn reply<C: PeerContext + ?Sized>(
        &mut self,
        ctx: &C,
        report: ReportId,
        incoming: Option<(SyncMessage, bool)>,
    ) -> Result<(Reply, Vec<ChangeHash>, bool), EngineError> {
        let visible = self.visible(ctx, report)?;
        let refused = ctx.refused(&self.peer_key(), report);
        let Some(open) = self.docs.get_mut(&report) else {
            return Ok((Reply::Nothing, Vec::new(), false));
        };
        let scope_checked = visible.is_some();
        let mut doc = match visible {
            Some(working) => working.doc.clone(),
            // A document the server lacks — or has in another village, which this peer must not
            // be able to tell apart — is answered as from an empty document, which asks for its
            // changes when the peer offers some; a peer that has nothing either learns the
            // document is unavailable (a push about it has nothing to say).
            None => match &incoming {
                Some((m, _)) if !m.heads.is_empty() => Automerge::new(),
                Some(_) => return Ok((Reply::Unavailable, Vec::new(), false)),
                None => return Ok((Reply::Nothing, Vec::new(), false)),
            },
        };
        let state = &mut open.state;
        if let Some((m, carried)) = incoming {
            // When the message did carry changes (admitted just before), automerge would take the
            // peer's heads — now equal to ours — as already answered; the peer waits for exactly
            // that answer to know its changes are stored, so keep it due.
            let last_sent = state.last_sent_heads.clone();
            if crate::guard::receive_sync_message(&mut doc, state, m).is_err() {
                // Whatever the peer sent, the state learns nothing from it (a contained panic may
                // have left it half-changed): start this document afresh.
                *state = SyncState::new();
            }
            if carried {
                state.last_sent_heads = last_sent;
            }
        }
        let reply = match crate::guard::generate_sync_message(&doc, state) {
            Ok(reply) => reply.map(|mut m| {
                m.need.retain(|h| !refused.contains(h));
                let idle = m.need.is_empty() && m.changes.is_empty();
                (m.encode(), idle)
            }),
            // Only a state built from a hostile message could do this: forget it.
            Err(_) => {
                *state = SyncState::new();
                None
            }
        };
        Ok((
            reply.map_or(Reply::Nothing, |(data, idle)| Reply::Sync { data, idle }),
            doc.get_heads(),
            scope_checked,
        ))
    }

    /// Audit the first time this connection sends a document's contents. `false`: the entry
    /// could not be written, so the contents must not be sent.
    fn audit_read<C: PeerContext + ?Sized>(&mut self, ctx: &C, report: ReportId, now: i64) -> bool {
        let Some(open) = self.docs.get_mut(&report) else {
            return false;
        };
        if open.audited {
            return true;
        }
        let event = AuditEvent::at(
            now,
            Who::from(&*self.principal),
            Action::Read {
                via: "ws".into(),
                reports: vec![report.to_string()],
                redacted: false,
            },
        );
        let written = ctx.audit(vec![event]).is_ok();
        open.audited = written;
        written
    }

    fn unavailable(&mut self, doc_id: String) {
        self.send(RepoMessage::DocUnavailable {
            sender_id: self.server.peer_id.clone(),
            target_id: self.peer.clone().unwrap_or_default(),
            document_id: doc_id,
        });
    }

    /// Documents this peer has open changed on the server: send what it lacks.
    fn push<C: PeerContext + ?Sized>(
        &mut self,
        ctx: &C,
        reports: Vec<ReportId>,
        now: i64,
    ) -> Result<(), Closed> {
        for report in reports {
            self.answer(ctx, report, None, now)?;
        }
        Ok(())
    }

    fn relay_ephemeral(&mut self, relayed: &Relayed) {
        if relayed.from == self.connection {
            return;
        }
        let Some(open) = self.docs.get(&relayed.report).filter(|o| o.in_scope) else {
            return;
        };
        let message = RepoMessage::Ephemeral {
            sender_id: relayed.sender_id.clone(),
            target_id: self.peer.clone().unwrap_or_default(),
            count: relayed.count,
            session_id: relayed.session_id.clone(),
            document_id: open.doc_id.clone(),
            data: relayed.data.clone(),
        };
        self.send(message);
    }
}

/// Split offered changes into those to judge and those that are, or build on, changes already
/// refused for this peer.
pub fn without_refused(
    changes: Vec<Change>,
    refused: &HashSet<ChangeHash>,
) -> (Vec<Change>, Vec<ChangeHash>) {
    let mut bad: HashSet<ChangeHash> = refused.clone();
    loop {
        let before = bad.len();
        for c in &changes {
            if bad.contains(&c.hash()) || c.deps().iter().any(|d| bad.contains(d)) {
                bad.insert(c.hash());
            }
        }
        if bad.len() == before {
            break;
        }
    }
    let (dropped, kept): (Vec<_>, Vec<_>) =
        changes.into_iter().partition(|c| bad.contains(&c.hash()));
    (kept, dropped.iter().map(|c| c.hash()).collect())
}
