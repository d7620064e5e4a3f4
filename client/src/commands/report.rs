//! `desa new` and `desa edit`: local changes, checked by the same rules the server runs before
//! anything is stored, then stored together with their place in the outbox.

use std::io::Write;

use serde_json::json;
use sync_core::kind::ReportKind;
use sync_core::{Edit, FieldPath, NewReport, Report, ReportId, VillageCode};

use crate::cli::{EditArgs, FieldEdits, NewArgs};
use crate::clock::Now;
use crate::error::CliError;
use crate::store::Store;

/// The list every kind keeps its notes in.
const NOTES: &str = "notes";

/// A report just created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// Its id.
    pub id: ReportId,
    /// Its kind.
    pub kind: ReportKind,
    /// Its village (the device's).
    pub village: VillageCode,
}

/// What an edit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edited {
    /// One new change, now waiting to be sent with `waiting - 1` others of the report.
    Changed {
        /// The report's changes waiting to be sent, this one included.
        waiting: usize,
    },
    /// The edits changed nothing (the values were already there); nothing was stored.
    Unchanged,
}

/// The `--set`, `--add` and `--note` edits, in that order.
pub fn field_edits(fields: &FieldEdits, author: &str, now: &Now) -> Vec<Edit> {
    let mut edits: Vec<Edit> = fields
        .set
        .iter()
        .map(|a| Edit::Set {
            path: a.path.clone(),
            value: a.value.clone(),
        })
        .collect();
    edits.extend(fields.add.iter().map(|a| Edit::Append {
        list: a.path.clone(),
        item: a.value.clone(),
    }));
    if let Some(text) = &fields.note {
        edits.push(note(text, author, now));
    }
    edits
}

/// A note, signed: a random id (so that concurrent notes never collide), the author, the time.
pub fn note(text: &str, author: &str, now: &Now) -> Edit {
    Edit::Append {
        list: FieldPath::root(NOTES),
        item: json!({
            "id": uuid::Uuid::new_v4().simple().to_string(),
            "author": author,
            "at": now.rfc3339,
            "text": text,
        }),
    }
}

fn narrative(kind: ReportKind, text: &str) -> Result<Edit, CliError> {
    let field = kind.narrative_field().ok_or(CliError::NoNarrative(kind))?;
    Ok(Edit::AppendText {
        field: FieldPath::root(field),
        text: text.to_owned(),
    })
}

/// Create a report in the device's village. Refused exactly as the server would refuse it; then
/// nothing is stored.
pub fn create(store: &mut Store, args: &NewArgs, now: &Now) -> Result<Created, CliError> {
    let device = store.device()?;
    let mut edits = field_edits(&args.fields, &device.name, now);
    if let Some(text) = &args.narrative {
        edits.push(narrative(args.kind, text)?);
    }
    let id = ReportId::new_random();
    let new = NewReport {
        kind: args.kind,
        village: device.village,
        created_at: now.rfc3339.clone(),
        // The device the server knows (the token's), so the office can look it up; the
        // change's actor is still the store's own id.
        created_by: store.sync_device()?.to_string(),
    };
    let tx = store.begin(now)?;
    let writer = tx.writer(id)?;
    let (report, change) =
        Report::create(id, &new, &edits, &writer).map_err(|source| CliError::Create {
            kind: args.kind,
            source,
        })?;
    tx.save_local_change(&report, &change)?;
    tx.commit()?;
    Ok(Created {
        id,
        kind: args.kind,
        village: device.village,
    })
}

/// Apply every edit of `args` to a report as one change. The report is read and written in one
/// transaction, so a sync absorbed by another `desa` meanwhile is never overwritten.
pub fn edit(store: &mut Store, args: &EditArgs, now: &Now) -> Result<Edited, CliError> {
    let device = store.device()?;
    let mut edits = field_edits(&args.fields, &device.name, now);
    // After the --set edits, before --add: the order `desa edit --help` states.
    let sets = args.fields.set.len();
    edits.splice(
        sets..sets,
        args.remove
            .iter()
            .map(|path| Edit::Remove { path: path.clone() }),
    );
    if edits.is_empty() && args.append_narrative.is_none() {
        return Err(CliError::NothingToChange);
    }
    let tx = store.begin(now)?;
    let mut report = tx.report(args.id)?.ok_or(CliError::NoSuchReport(args.id))?;
    if let Some(text) = &args.append_narrative {
        edits.push(narrative(report.kind(), text)?);
    }
    let writer = tx.writer(args.id)?;
    let change = report
        .edit(&edits, &writer)
        .map_err(|source| CliError::Edit {
            id: args.id,
            source,
        })?;
    let Some(change) = change else {
        return Ok(Edited::Unchanged);
    };
    tx.save_local_change(&report, &change)?;
    tx.commit()?;
    Ok(Edited::Changed {
        waiting: store.waiting_for(args.id)?,
    })
}

/// `desa new`: the id goes on the last line, for scripts.
pub fn run_new(
    store: &mut Store,
    args: &NewArgs,
    now: &Now,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let created = create(store, args, now)?;
    writeln!(
        out,
        "created {} in {} ({})",
        created.kind,
        created.village.village().name,
        created.village
    )?;
    writeln!(out, "{}", created.id)?;
    Ok(())
}

/// `desa edit`.
pub fn run_edit(
    store: &mut Store,
    args: &EditArgs,
    now: &Now,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match edit(store, args, now)? {
        Edited::Changed { waiting } => writeln!(
            out,
            "edited {}: {waiting} change{} of this report waiting to be sent",
            args.id,
            plural(waiting)
        )?,
        Edited::Unchanged => writeln!(
            out,
            "nothing changed in {}: the values were already set",
            args.id
        )?,
    }
    Ok(())
}

/// "s" unless one.
pub fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
