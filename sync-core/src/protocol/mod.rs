//! The device–server exchange: one round trip carries a device's unacknowledged changes and its
//! position in each scope; the answer carries a verdict per change and everything the device is
//! missing. Both halves are pure state machines; `docs/protocol.md` gives the bytes.

pub mod absorb;
pub mod device;
pub mod rebuild;
pub mod repo;
pub mod server;
pub mod wire;

pub use wire::{
    Bytes, Delta, Envelope, Extension, FeedItem, PageMark, Position, Rebuild, Scope, ScopeFeed,
    ScopePosition, SyncRequest, SyncResponse, Upload, WireError, WireVerdict,
};
