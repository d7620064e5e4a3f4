//! What all connections share: the server's automerge-repo identity, the relay of ephemeral
//! messages, and the memory of refused changes per peer.

use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use lru::LruCache;
use sync_core::automerge::{Change, ChangeHash};
use sync_core::ReportId;
use tokio::sync::broadcast;

/// Shared by all connections: the server's identity and the ephemeral relay.
pub struct Hub {
    pub(super) peer_id: String,
    pub(super) storage_id: String,
    pub(super) relay: broadcast::Sender<Arc<Relayed>>,
    pub(super) next_connection: AtomicU64,
    /// Changes refused per (peer, report), across that peer's connections: never judged, asked
    /// for or reported again.
    refused: Mutex<LruCache<(String, ReportId), HashSet<ChangeHash>>>,
}

/// (peer, report) pairs whose refusals are remembered.
const REMEMBERED_REFUSALS: usize = 10_000;

/// An ephemeral message on its way to the other peers of a document.
pub(super) struct Relayed {
    pub(super) from: u64,
    pub(super) report: ReportId,
    pub(super) sender_id: String,
    pub(super) count: u64,
    pub(super) session_id: String,
    pub(super) data: Vec<u8>,
}

impl Hub {
    /// A hub for a server whose storage is identified by `storage_id`.
    pub fn new(storage_id: String) -> Hub {
        let (relay, _) = broadcast::channel(1024);
        Hub {
            peer_id: format!("desa-sync-{}", uuid::Uuid::new_v4().simple()),
            storage_id,
            relay,
            next_connection: AtomicU64::new(1),
            refused: Mutex::new(LruCache::new(
                NonZeroUsize::new(REMEMBERED_REFUSALS).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    pub(super) fn refused_for(&self, peer: &str, report: ReportId) -> HashSet<ChangeHash> {
        self.refused
            .lock()
            .ok()
            .and_then(|mut m| m.get(&(peer.to_owned(), report)).cloned())
            .unwrap_or_default()
    }

    pub(super) fn remember_refused(
        &self,
        peer: &str,
        report: ReportId,
        hashes: impl Iterator<Item = ChangeHash>,
    ) {
        if let Ok(mut m) = self.refused.lock() {
            let entry = m.get_or_insert_mut((peer.to_owned(), report), HashSet::new);
            entry.extend(hashes);
        }
    }
}

/// Split offered changes into those to judge and those that are, or build on, changes already
/// refused for this peer.
pub(super) fn without_refused(
    changes: Vec<Change>,
    refused: &HashSet<ChangeHash>,
) -> (Vec<Change>, Vec<ChangeHash>) {
    let mut bad: HashSet<ChangeHash> = refused.clone();
    let mut pending = changes;
    loop {
        let before = bad.len();
        for c in &pending {
            if bad.contains(&c.hash()) || c.deps().iter().any(|d| bad.contains(d)) {
                bad.insert(c.hash());
            }
        }
        if bad.len() == before {
            break;
        }
    }
    let (dropped, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut pending)
        .into_iter()
        .partition(|c| bad.contains(&c.hash()));
    (kept, dropped.iter().map(|c| c.hash()).collect())
}
