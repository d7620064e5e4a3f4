//! The audit trail, server side: what is recorded and how the chain is sealed live in
//! `sync_core::audit` (re-exported here); this module keeps the chain's **anchor** — the newest
//! entry's position and seal, in a file outside the data directory — so that removing the newest
//! entries (which leaves a valid, shorter chain) is found by `desa-server audit verify`.

use std::path::Path;

pub use sync_core::audit::*;

/// The anchor file's IO.
pub mod anchor {
    use super::{Head, Path};

    /// Write the anchor into `file` at offset 0. The text has a fixed length far below a disk
    /// sector, so each write replaces the previous head whole; one write per commit (no new file,
    /// no rename) keeps the anchor cheap enough to follow every commit.
    pub fn store(head: &Head, file: &std::fs::File) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        file.write_all_at(head.to_text().as_bytes(), 0)
    }

    /// Open (creating, readable by its owner only) an anchor file for [`store`].
    pub fn open_file(path: &Path) -> std::io::Result<std::fs::File> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
    }

    /// Read the anchor, if there is one.
    pub fn load(path: &Path) -> std::io::Result<Option<Head>> {
        match std::fs::read_to_string(path) {
            Ok(text) => Head::parse(&text).map(Some).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} is not an audit anchor", path.display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// An event happening now (the server's clock): for the operator's commands, which have no
/// engine clock to pass.
pub fn now(who: Who, action: Action) -> AuditEvent {
    AuditEvent::at(crate::clock::now_ms(), who, action)
}
