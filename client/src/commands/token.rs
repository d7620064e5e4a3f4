//! `desa token set`: install a new device token from the office in an existing store.
//!
//! Two volunteers need it. One has a store an older `desa` made, which has no token, so `desa sync`
//! asks for one. The other had a phone the office thought lost: it revoked the phone's token, and
//! once the phone was found it issued a new one. Either way the store keeps every report, waiting
//! change, refusal and sync position; the next `desa sync` sends the waiting changes with the new
//! token.
//!
//! The token is read exactly as `desa init` reads it ([`TokenSource`]). It is read and parsed
//! *before* the store is opened, so a malformed token leaves every byte of the store as it was
//! (and the volunteer is not asked for the passphrase only to learn that the token was wrong).
//! Nothing is asked of the server: `desa` works offline, and the next sync tells whether the
//! office accepts the token.
//!
//! **Which device id.** The office issues every token with a new device id, so the new token
//! almost always names another device than the store's own id. The store keeps its own id as the
//! automerge actor of its edits: the server does not bind a change's actor to the token's device,
//! and keeping the actor keeps the outbox's changes, the actor generations and the "this device"
//! marks of `desa show` consistent. What the store is *called* follows the token
//! ([`Store::sync_device`]): `desa status` shows the token's device, sync requests name it, and new
//! reports record it as `created_by`, because that is the device the server authenticates,
//! attributes the sync to in its audit trail, and lists in `desa-server device list`.

use std::path::Path;

use sync_core::{DeviceId, DeviceToken};

use crate::cli::TokenSource;
use crate::commands::report::plural;
use crate::commands::{open, Io};
use crate::error::CliError;
use crate::secrets::Secrets;
use crate::store::{crypt, Store};

/// What installing a token did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installed {
    /// The store had no token (an older `desa` made it).
    First,
    /// The store's token was replaced by one for this device.
    Replaced {
        /// The device of the token that was replaced.
        previous: DeviceId,
    },
    /// The store already held this very token; nothing changed.
    Unchanged,
}

/// Install `token` in `store`, keeping everything else it holds.
pub fn install(store: &mut Store, token: &DeviceToken) -> Result<Installed, CliError> {
    if store.token().ok().flatten().as_ref() == Some(token) {
        return Ok(Installed::Unchanged);
    }
    Ok(match store.set_token(token)? {
        None => Installed::First,
        Some(previous) => Installed::Replaced {
            previous: previous.device(),
        },
    })
}

/// The one line that confirms what was done. It names devices, never the token.
pub fn confirmation(installed: Installed, device: DeviceId, waiting: usize) -> String {
    let kept = match waiting {
        0 => "nothing is waiting to be sent".to_owned(),
        n => format!(
            "{n} change{} waiting, sent at the next desa sync",
            plural(n)
        ),
    };
    match installed {
        Installed::First => format!("device token installed: this store syncs as {device}; {kept}"),
        Installed::Replaced { previous } if previous == device => {
            format!("device token replaced: this store syncs as {device}; {kept}")
        }
        Installed::Replaced { previous } => {
            format!("device token replaced: this store syncs as {device} (was {previous}); {kept}")
        }
        Installed::Unchanged => {
            format!("this device token was already installed (device {device}); nothing changed")
        }
    }
}

/// `desa token set`: check the store is there, read the token, open the store, install it, say so.
pub fn run_set(
    path: &Path,
    source: &TokenSource,
    sources: &mut dyn Secrets,
    io: &mut Io<'_>,
) -> Result<(), CliError> {
    // Before asking for anything: no store, nothing to give a token to.
    crypt::format(path)?;
    let token = source.read(sources)?;
    let mut store = open(path, sources, io)?;
    let installed = install(&mut store, &token)?;
    let waiting: usize = store.waiting()?.iter().map(|(_, n)| n).sum();
    writeln!(
        io.out,
        "{}",
        confirmation(installed, token.device(), waiting)
    )?;
    source.remind_to_delete(io.err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_confirmation_names_devices_and_what_waits() {
        let (old, new) = (DeviceId::from_bytes([1; 16]), DeviceId::from_bytes([2; 16]));
        let first = confirmation(Installed::First, new, 0);
        assert!(first.starts_with("device token installed"), "{first}");
        assert!(first.contains(&new.to_string()), "{first}");
        assert!(first.contains("nothing is waiting"), "{first}");

        let replaced = confirmation(Installed::Replaced { previous: old }, new, 2);
        assert!(
            replaced.contains(&format!("{new} (was {old})"))
                && replaced.contains("2 changes waiting"),
            "{replaced}"
        );
        let same_device = confirmation(Installed::Replaced { previous: new }, new, 1);
        assert!(
            !same_device.contains("(was") && same_device.contains("1 change waiting"),
            "{same_device}"
        );
        let unchanged = confirmation(Installed::Unchanged, new, 3);
        assert!(unchanged.contains("nothing changed"), "{unchanged}");
        for line in [first, replaced, same_device, unchanged] {
            assert_eq!(line.lines().count(), 1, "{line}");
        }
    }
}
