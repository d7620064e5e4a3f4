//! What all connections share: the server's automerge-repo identity, the relay of ephemeral
//! messages, and the memory of refused changes per peer.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use lru::LruCache;
use sync_core::automerge::ChangeHash;
use sync_core::protocol::server::peer::{Identity, Relayed};
use sync_core::{DeviceId, ReportId};
use tokio::sync::broadcast;

/// Shared by all connections: the server's identity and the ephemeral relay.
pub struct Hub {
    /// The server as an automerge-repo peer.
    pub(super) identity: Arc<Identity>,
    pub(super) relay: broadcast::Sender<Arc<Relayed>>,
    pub(super) next_connection: AtomicU64,
    /// Changes refused per (peer, report), across that peer's connections: never judged, asked
    /// for or reported again.
    refused: Mutex<LruCache<(String, ReportId), HashSet<ChangeHash>>>,
    pub(super) limits: WsLimits,
    /// Open connections per device, and in all.
    open: Mutex<(HashMap<DeviceId, u32>, u32)>,
}

/// Bounds on WebSocket connections.
#[derive(Debug, Clone, Copy)]
pub struct WsLimits {
    /// Open connections per device.
    pub per_device: u32,
    /// Open connections in all.
    pub total: u32,
    /// How often an idle connection is pinged.
    pub ping: Duration,
    /// A connection with no frame from its peer for this long is closed.
    pub idle: Duration,
}

impl Default for WsLimits {
    fn default() -> Self {
        WsLimits {
            per_device: 8,
            total: 1000,
            ping: Duration::from_secs(15),
            idle: Duration::from_secs(45),
        }
    }
}

/// Why a connection was not opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Full {
    /// The device has this many open already.
    Device(u32),
    /// The server has this many open already.
    Server(u32),
}

/// A place among the open connections, given back when dropped.
pub struct Slot {
    hub: Arc<Hub>,
    device: DeviceId,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.hub.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.0.get_mut(&self.device) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.0.remove(&self.device);
            }
        }
        open.1 = open.1.saturating_sub(1);
    }
}

/// (peer, report) pairs whose refusals are remembered.
const REMEMBERED_REFUSALS: usize = 10_000;

impl Hub {
    /// A hub for a server whose storage is identified by `storage_id`.
    pub fn new(storage_id: String, limits: WsLimits) -> Hub {
        let (relay, _) = broadcast::channel(1024);
        Hub {
            identity: Arc::new(Identity {
                peer_id: format!("desa-sync-{}", uuid::Uuid::new_v4().simple()),
                storage_id,
            }),
            relay,
            next_connection: AtomicU64::new(1),
            refused: Mutex::new(LruCache::new(
                NonZeroUsize::new(REMEMBERED_REFUSALS).unwrap_or(NonZeroUsize::MIN),
            )),
            limits,
            open: Mutex::new((HashMap::new(), 0)),
        }
    }

    /// Take a place for a new connection of `device`, if the limits allow it.
    pub fn open_slot(self: &Arc<Self>, device: DeviceId) -> Result<Slot, Full> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.1 >= self.limits.total {
            return Err(Full::Server(open.1));
        }
        let mine = open.0.get(&device).copied().unwrap_or(0);
        if mine >= self.limits.per_device {
            return Err(Full::Device(mine));
        }
        open.0.insert(device, mine + 1);
        open.1 += 1;
        Ok(Slot {
            hub: self.clone(),
            device,
        })
    }

    /// Open connections in all.
    pub fn open_connections(&self) -> u32 {
        self.open.lock().unwrap_or_else(PoisonError::into_inner).1
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
