//! `desa sync`: one or more round trips with the server.
//!
//! Each round: build the request from the outbox and the stored positions, send it, take the
//! answer in with sync-core's [`absorb`] and store the new positions — the absorb and the
//! positions in one transaction, so that a crash or a failure leaves the previous state and the
//! round is simply repeated (the server acknowledges a resent change it already has). Rounds
//! continue while changes remain to be sent (at most 1 MiB of them per request), while the server
//! has more pages, and once more when a refusal made the device re-apply edits, so that they are
//! sent while there is a connection.

use std::io::Write;

use sync_core::automerge::ChangeHash;
use sync_core::protocol::absorb::{absorb, AbsorbError};
use sync_core::protocol::device::{DeviceSync, Outcome, UPLOAD_BYTES};
use sync_core::protocol::SyncResponse;
use sync_core::{RefusalCode, ReportId};

use crate::clock::Now;
use crate::commands::report::plural;
use crate::commands::Io;
use crate::error::CliError;
use crate::store::{Store, StoreTx};
use crate::transport::{Transport, TransportError};

/// What a whole sync did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SyncSummary {
    /// Round trips made.
    pub rounds: usize,
    /// Changes sent, over all rounds (a held change is sent again each round).
    pub sent: usize,
    /// Changes the server stored.
    pub accepted: usize,
    /// Changes refused (including those refused only because they built on a refused one).
    pub refused: usize,
    /// Changes the server keeps until their dependencies arrive.
    pub held: usize,
    /// Reports new on this device or changed by what the server sent.
    pub received: usize,
    /// Local edits re-applied after a refusal.
    pub reapplied: usize,
    /// Refusals for the volunteer (`report: code: detail`), also kept for `desa status`.
    pub refusals: Vec<String>,
}

/// Sync until the server has nothing more. Progress lines go to `progress`.
///
/// On [`CliError::Offline`] and every other error the current round changed nothing; rounds
/// committed before it stay committed.
pub fn sync(
    store: &mut Store,
    transport: &dyn Transport,
    now: &Now,
    progress: &mut dyn Write,
) -> Result<SyncSummary, CliError> {
    let mut summary = SyncSummary::default();
    let mut resent_reapplied = false;
    let device = store.sync_device()?;
    loop {
        let state = store.sync_state()?;
        let waiting = store.outbox()?;
        let outbox = DeviceSync::select_upload(&waiting, UPLOAD_BYTES);
        let sending: usize = outbox.iter().map(|(_, changes)| changes.len()).sum();
        let partial = sending
            < waiting
                .iter()
                .map(|(_, changes)| changes.len())
                .sum::<usize>();
        let mut request = state.request(&outbox);
        // The request names the device whose token authenticates it. The stored positions were
        // started under the store's own id, which differs once `desa token set` installed a token
        // for another device; the server attributes the sync to the token's device either way.
        request.device = device;
        let body = request.encode();
        let in_outbox: usize = waiting.iter().map(|(_, changes)| changes.len()).sum();
        let answer = transport
            .post_sync(body)
            .map_err(|e| transport_error(e, in_outbox))?;
        let response =
            SyncResponse::decode(&answer).map_err(|e| CliError::BadAnswer(e.to_string()))?;
        let mut next = state.clone();
        let outcome = next
            .handle(&outbox, response)
            .map_err(|e| CliError::BadAnswer(e.to_string()))?;
        let more = outcome.more;
        let refused = outcome.refused.len();
        let refusals: Vec<String> = outcome
            .refused
            .iter()
            .filter(|(_, _, r)| r.code != RefusalCode::DependsOnRefused)
            .map(|(report, _, r)| format!("{report}: {r}"))
            .collect();

        let mut tx = store.begin(now)?;
        if tx.sync_state()? != state {
            return Err(CliError::ConcurrentSync);
        }
        let before = heads_of(&tx, &outcome)?;
        let absorbed = absorb(&mut tx, outcome).map_err(|e| match e {
            AbsorbError::Store(e) => CliError::Store(e),
            other => CliError::BadAnswer(other.to_string()),
        })?;
        let received = changed(&tx, before)?;
        tx.finish_sync_round(&next)?;
        tx.commit()?;

        summary.rounds += 1;
        summary.sent += sending;
        summary.accepted += absorbed.acknowledged;
        summary.refused += refused;
        summary.held += absorbed.held;
        summary.received += received;
        summary.reapplied += absorbed.reapplied;
        summary.refusals.extend(refusals);
        writeln!(
            progress,
            "sync: page {} — {received} report{} received, {sending} change{} sent",
            summary.rounds,
            plural(received),
            plural(sending),
        )?;

        if partial && absorbed.acknowledged > 0 {
            continue;
        }
        if more {
            if next.positions() == state.positions() {
                return Err(CliError::BadAnswer(
                    "the server said more pages follow but the position did not move".into(),
                ));
            }
            continue;
        }
        if absorbed.reapplied > 0 && !resent_reapplied {
            resent_reapplied = true;
            continue;
        }
        return Ok(summary);
    }
}

/// What a failed round trip means for the volunteer, with the changes still waiting.
pub fn transport_error(error: TransportError, waiting: usize) -> CliError {
    match error {
        TransportError::Offline => CliError::Offline { waiting },
        TransportError::Unauthorized { detail } => CliError::Unauthorized { detail, waiting },
        TransportError::Forbidden { detail } => CliError::Forbidden { detail, waiting },
        TransportError::TooLarge { detail } => CliError::TooLarge { detail, waiting },
        TransportError::RateLimited { retry_after } => CliError::RateLimited {
            retry_after,
            waiting,
        },
        TransportError::Tls(reason) => CliError::Tls { reason, waiting },
        TransportError::Http {
            status,
            error,
            detail,
        } => CliError::ServerRefused {
            status,
            error,
            detail,
            waiting,
        },
        TransportError::Protocol(message) => CliError::BadAnswer(message),
    }
}

/// The heads of every report the server sent, as the device holds them before taking them in.
fn heads_of(
    tx: &StoreTx<'_>,
    outcome: &Outcome,
) -> Result<Vec<(ReportId, Vec<ChangeHash>)>, CliError> {
    outcome
        .incoming
        .iter()
        .map(|item| {
            let heads = tx
                .report(item.report)?
                .map(|r| r.heads())
                .unwrap_or_default();
            Ok((item.report, heads))
        })
        .collect()
}

/// How many of those reports are new or changed on the device (what the volunteer calls
/// "received").
fn changed(tx: &StoreTx<'_>, before: Vec<(ReportId, Vec<ChangeHash>)>) -> Result<usize, CliError> {
    let mut n = 0;
    for (id, heads) in before {
        let now = tx.report(id)?.map(|r| r.heads()).unwrap_or_default();
        if now != heads {
            n += 1;
        }
    }
    Ok(n)
}

/// `desa sync`.
pub fn run(
    store: &mut Store,
    transport: &dyn Transport,
    now: &Now,
    io: &mut Io<'_>,
) -> Result<(), CliError> {
    let s = sync(store, transport, now, io.err)?;
    writeln!(
        io.out,
        "synced: {} change{} sent ({} accepted, {} refused, {} held), {} report{} received",
        s.sent,
        plural(s.sent),
        s.accepted,
        s.refused,
        s.held,
        s.received,
        plural(s.received),
    )?;
    for refusal in &s.refusals {
        writeln!(io.out, "refused: {refusal}")?;
    }
    if s.reapplied > 0 {
        writeln!(
            io.out,
            "{} edit{} re-applied after a refusal (see desa status)",
            s.reapplied,
            plural(s.reapplied)
        )?;
    }
    let waiting: usize = store.waiting()?.iter().map(|(_, n)| n).sum();
    if waiting > 0 {
        writeln!(io.out, "{waiting} change{} still waiting", plural(waiting))?;
    }
    Ok(())
}
