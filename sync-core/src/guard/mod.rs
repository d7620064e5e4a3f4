//! automerge behind a wall: every call that takes untrusted bytes goes through here.
//!
//! automerge 0.12 can panic on hostile input that its own checks let through: the project's fuzz
//! targets found a 21-byte change that `Change::from_bytes` accepts and `apply_changes` then
//! panics on (`op_set2/change/batch.rs`), and a 27-byte document that panics `Automerge::load`
//! (`hexane`). A panic on the server's writer thread would stop every later write, so each such
//! call is contained: the panic becomes an ordinary error, and the caller refuses the input.
//!
//! A document that was being changed when automerge panicked may be half-updated. Functions here
//! that change a document in place say so, and their callers throw that document away (they work
//! on a copy, or reload the committed state).
//!
//! Time and memory cannot be contained that way: [`screen`] refuses, before automerge sees them,
//! the bytes the fuzzers found to cost gigabytes or minutes (bundles, deflate bombs, hostile bloom
//! filters), and every function here screens its input first.
//!
//! The panic message itself still reaches the process's panic hook (stderr); nothing else of it
//! escapes.

pub mod screen;

use std::panic::{catch_unwind, AssertUnwindSafe};

use automerge::{sync, Automerge, Change, ExpandedChange};

/// automerge failed on these bytes: an error, or a contained panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Contained {
    /// automerge returned an error.
    #[error("{0}")]
    Error(String),
    /// automerge panicked; the input is hostile or automerge has a bug. Nothing of it was kept.
    #[error("automerge could not process this input (contained panic)")]
    Panic,
    /// Refused before automerge saw it: decoding it would cost far more than its size.
    #[error("{0}")]
    Refused(#[from] screen::Refused),
}

/// Run `f` over untrusted input, turning a panic into [`Contained::Panic`].
pub fn contain<T>(f: impl FnOnce() -> T) -> Result<T, Contained> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|_| Contained::Panic)
}

/// `Change::from_bytes` of untrusted bytes (it panics on some: the fuzzers keep them in
/// `fuzz/regressions/stored_doc/load-panics-in-hexane-*`).
pub fn parse_change(bytes: Vec<u8>) -> Result<Change, Contained> {
    screen::chunks(&bytes)?;
    contain(|| Change::from_bytes(bytes))?.map_err(|e| Contained::Error(e.to_string()))
}

/// `load_incremental` of untrusted bytes into `doc`: it applies what it can and queues changes
/// whose dependencies `doc` lacks. Only ever on a scratch document (queued changes would later be
/// applied unchecked); on `Err(Contained::Panic)` the caller must discard it.
pub fn load_incremental(doc: &mut Automerge, bytes: &[u8]) -> Result<usize, Contained> {
    screen::chunks(bytes)?;
    contain(|| doc.load_incremental(bytes))?.map_err(|e| Contained::Error(e.to_string()))
}

/// An automerge sync message from untrusted bytes, screened ([`screen::sync_message`]).
pub fn sync_message(bytes: &[u8]) -> Result<sync::Message, Contained> {
    let message =
        contain(|| sync::Message::decode(bytes))?.map_err(|e| Contained::Error(e.to_string()))?;
    screen::sync_message(&message)?;
    Ok(message)
}

/// An automerge sync state from bytes kept for a peer.
pub fn sync_state(bytes: &[u8]) -> Result<sync::State, Contained> {
    contain(|| sync::State::decode(bytes))?.map_err(|e| Contained::Error(e.to_string()))
}

/// `receive_sync_message` of a peer's message. On `Err(Contained::Panic)` both `doc` and `state`
/// may be half-updated: the caller must discard them.
pub fn receive_sync_message(
    doc: &mut Automerge,
    state: &mut sync::State,
    message: sync::Message,
) -> Result<(), Contained> {
    use automerge::sync::SyncDoc;
    screen::sync_message(&message)?;
    let received = contain(|| doc.receive_sync_message(state, message))?;
    received.map_err(|e| Contained::Error(e.to_string()))
}

/// `generate_sync_message` for a peer whose state was built from its (screened) messages.
/// Contained too: automerge reads the peer's `have` filters here.
pub fn generate_sync_message(
    doc: &Automerge,
    state: &mut sync::State,
) -> Result<Option<sync::Message>, Contained> {
    use automerge::sync::SyncDoc;
    contain(|| doc.generate_sync_message(state))
}

/// `Automerge::load` of untrusted bytes.
pub fn load(bytes: &[u8]) -> Result<Automerge, Contained> {
    screen::chunks(bytes)?;
    contain(|| Automerge::load(bytes))?.map_err(|e| Contained::Error(e.to_string()))
}

/// `apply_changes` of untrusted changes. On `Err(Contained::Panic)` `doc` may be half-updated:
/// the caller must discard it.
pub fn apply(doc: &mut Automerge, changes: Vec<Change>) -> Result<(), Contained> {
    contain(|| doc.apply_changes(changes))?.map_err(|e| Contained::Error(e.to_string()))
}

/// `merge` of an untrusted document into `doc`. On `Err(Contained::Panic)` `doc` may be
/// half-updated: the caller must discard it.
pub fn merge(doc: &mut Automerge, other: &mut Automerge) -> Result<(), Contained> {
    contain(|| doc.merge(other).map(|_| ()))?.map_err(|e| Contained::Error(e.to_string()))
}

/// A change's operations, expanded.
pub fn expand(change: &Change) -> Result<ExpandedChange, Contained> {
    contain(|| change.decode())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `fuzz/fuzz_targets/change.rs`: `Change::from_bytes` accepts it, applying it panics
    /// inside automerge 0.12.
    const PANICS_ON_APPLY: &str = "856f4a83ff00ff01010b0000280100000100000027";

    fn unhex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
            .collect()
    }

    #[test]
    fn a_change_that_panics_automerge_is_an_error() {
        let Ok(change) = Change::from_bytes(unhex(PANICS_ON_APPLY)) else {
            // A later automerge that refuses it at parse time is fine too.
            return;
        };
        let mut doc = Automerge::new();
        assert!(apply(&mut doc, vec![change]).is_err());
    }
}
