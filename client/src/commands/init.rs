//! `desa init`: a new device store with a new random device id.

use std::io::Write;
use std::path::Path;

use sync_core::protocol::device::DeviceSync;
use sync_core::protocol::Scope;
use sync_core::{DeviceId, VillageCode};

use crate::cli::InitArgs;
use crate::clock::Now;
use crate::error::CliError;
use crate::store::{DeviceInfo, Store};

/// Longest device name: it signs notes, whose `author` the schemas cap at 64 characters.
pub const MAX_NAME_CHARS: usize = 64;

/// Create the store at `path` for the device `args` describe.
pub fn create(path: &Path, args: &InitArgs, now: &Now) -> Result<(Store, DeviceInfo), CliError> {
    let village = VillageCode::parse(&args.village)?;
    let name = args.name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(CliError::BadName(args.name.clone()));
    }
    let device = DeviceInfo {
        id: DeviceId::new_random(),
        name: name.to_owned(),
        village,
        server: server_url(&args.server)?,
    };
    let sync = DeviceSync::new(device.id, &[Scope::village(village)]);
    let store = Store::create(path, &device, &sync, now)?;
    Ok((store, device))
}

/// Create the store and say what was made.
pub fn run(path: &Path, args: &InitArgs, now: &Now, out: &mut dyn Write) -> Result<(), CliError> {
    let (store, device) = create(path, args, now)?;
    let village = device.village.village();
    writeln!(
        out,
        "device {} ({}) reports in {} ({}), {}",
        device.name, device.id, village.name, device.village, village.district_name
    )?;
    writeln!(out, "server: {}", device.server)?;
    writeln!(out, "store: {}", store.path().display())?;
    Ok(())
}

/// Check and normalise the server's base URL.
pub fn server_url(text: &str) -> Result<String, CliError> {
    let url = text.trim().trim_end_matches('/');
    if url.starts_with("https://") {
        return Err(CliError::BadServerUrl(format!(
            "{url}: this desa cannot use https yet (TLS comes in a later version); use http://"
        )));
    }
    let host = url
        .strip_prefix("http://")
        .map(|rest| rest.split('/').next().unwrap_or_default())
        .unwrap_or_default();
    if host.is_empty() || url.chars().any(char::is_whitespace) {
        return Err(CliError::BadServerUrl(format!(
            "{text:?} is not a server URL (expected e.g. http://192.168.1.10:8080)"
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
        for bad in [
            "",
            "10.0.0.2:8080",
            "http://",
            "http:///x",
            "ftp://x",
            "http://a b",
        ] {
            assert!(
                matches!(server_url(bad), Err(CliError::BadServerUrl(_))),
                "{bad}"
            );
        }
        let https = server_url("https://desa.example")
            .expect_err("https refused")
            .to_string();
        assert!(https.contains("https"), "{https}");
    }
}
