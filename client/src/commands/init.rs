//! `desa init`: a new encrypted device store for the device the office's token names.
//!
//! The arguments are checked before the volunteer is asked for anything, and nothing is created
//! unless every check passes: a typo in the village, an unreadable CA file or a malformed token
//! leaves no file behind.

use std::path::Path;

use sync_core::protocol::device::DeviceSync;
use sync_core::protocol::Scope;
use sync_core::{DeviceToken, VillageCode};

use crate::cli::InitArgs;
use crate::clock::Now;
use crate::commands::Io;
use crate::error::CliError;
use crate::secrets::{self, Passphrase, Secrets};
use crate::store::{DeviceInfo, NewStore, Store, StoreError};
use crate::transport::ca_certificates;

/// Longest device name: it signs notes, whose `author` the schemas cap at 64 characters.
pub const MAX_NAME_CHARS: usize = 64;

/// Largest CA file read: a few certificates are a few KiB.
const MAX_CA_FILE_BYTES: u64 = 256 * 1024;

/// The secrets a new store is made with.
#[derive(Debug)]
pub struct InitSecrets {
    /// The device token from the office; its device becomes this device's id.
    pub token: DeviceToken,
    /// The passphrase the store is encrypted with.
    pub passphrase: Passphrase,
}

/// The arguments of `init`, checked.
struct Checked {
    village: VillageCode,
    name: String,
    server: String,
    ca_pem: Option<String>,
}

fn check(args: &InitArgs) -> Result<Checked, CliError> {
    let village = VillageCode::parse(&args.village)?;
    let name = args.name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(CliError::BadName(args.name.clone()));
    }
    let server = server_url(&args.server)?;
    let ca_pem = match &args.ca_file {
        None => None,
        Some(_) if !server.starts_with("https://") => {
            return Err(CliError::CaWithoutTls(server));
        }
        Some(path) => Some(read_ca(path)?),
    };
    Ok(Checked {
        village,
        name: name.to_owned(),
        server,
        ca_pem,
    })
}

/// The CA file's text, refused unless every certificate in it is usable as a trust anchor.
fn read_ca(path: &Path) -> Result<String, CliError> {
    use std::io::Read;
    let bad = |reason: String| CliError::BadCaFile {
        path: path.to_owned(),
        reason,
    };
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CA_FILE_BYTES).read_to_string(&mut text))
        .map_err(|e| bad(e.to_string()))?;
    ca_certificates(text.as_bytes()).map_err(bad)?;
    Ok(text)
}

/// Create the store at `path` for the device `args` describe, encrypted with the given secrets.
pub fn create(
    path: &Path,
    args: &InitArgs,
    secrets: &InitSecrets,
    now: &Now,
) -> Result<(Store, DeviceInfo), CliError> {
    let checked = check(args)?;
    let device = DeviceInfo {
        id: secrets.token.device(),
        name: checked.name,
        village: checked.village,
        server: checked.server,
    };
    let sync = DeviceSync::new(device.id, &[Scope::village(checked.village)]);
    let new = NewStore {
        device: &device,
        token: &secrets.token,
        ca_pem: checked.ca_pem.as_deref(),
        sync: &sync,
    };
    let store = Store::create(path, &new, &secrets.passphrase, now)?;
    Ok((store, device))
}

/// Check the arguments, get the token and a new passphrase, create the store and say what was
/// made.
pub fn run(
    path: &Path,
    args: &InitArgs,
    now: &Now,
    sources: &mut dyn Secrets,
    io: &mut Io<'_>,
) -> Result<(), CliError> {
    // Before asking for anything: a volunteer who typed a passphrase twice should not then learn
    // that the village code was wrong.
    check(args)?;
    if path.exists() {
        return Err(StoreError::Exists(path.to_owned()).into());
    }
    let secrets = InitSecrets {
        token: args.token.read(sources)?,
        passphrase: secrets::new_passphrase(sources)?,
    };
    let (store, device) = create(path, args, &secrets, now)?;
    let village = device.village.village();
    writeln!(
        io.out,
        "device {} ({}) reports in {} ({}), {}",
        device.name, device.id, village.name, device.village, village.district_name
    )?;
    writeln!(io.out, "server: {}", device.server)?;
    writeln!(
        io.out,
        "store: {} (encrypted with your passphrase; without it nobody can read it, and \
         nobody can recover it either)",
        store.path().display()
    )?;
    if device.server.starts_with("http://") {
        writeln!(
            io.err,
            "warning: {} is plain http: reports and the device token cross the network \
             unencrypted. Use it only on the office's own network.",
            device.server
        )?;
    }
    args.token.remind_to_delete(io.err)?;
    Ok(())
}

/// Check and normalise the server's base URL (`http://` or `https://`, a host, an optional path).
pub fn server_url(text: &str) -> Result<String, CliError> {
    let url = text.trim().trim_end_matches('/');
    let host = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .map(|rest| rest.split('/').next().unwrap_or_default())
        .unwrap_or_default();
    if host.is_empty() || url.chars().any(char::is_whitespace) {
        return Err(CliError::BadServerUrl(format!(
            "{text:?} is not a server URL (expected e.g. https://desa.example.org or \
             http://192.168.1.10:8080)"
        )));
    }
    Ok(url.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls() {
        assert_eq!(
            server_url(" http://10.0.0.2:8080/ ").ok().as_deref(),
            Some("http://10.0.0.2:8080")
        );
        assert_eq!(
            server_url("http://desa.example/base").ok().as_deref(),
            Some("http://desa.example/base")
        );
        assert_eq!(
            server_url("https://desa.example/").ok().as_deref(),
            Some("https://desa.example")
        );
        for bad in [
            "",
            "10.0.0.2:8080",
            "http://",
            "https://",
            "http:///x",
            "ftp://x",
            "http://a b",
        ] {
            assert!(
                matches!(server_url(bad), Err(CliError::BadServerUrl(_))),
                "{bad}"
            );
        }
    }
}
