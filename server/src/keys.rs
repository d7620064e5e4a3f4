//! The server's master key, and the subkeys derived from it.
//!
//! One 32-byte [`MasterKey`] protects everything the server keeps; each use gets its own subkey,
//! `HMAC-SHA256(master, label)` ([`MasterKey::subkey`]), so that a subkey leaking from one place
//! (say, the audit chain) says nothing about another (the database key):
//!
//! * [`SQLCIPHER_LABEL`] — the SQLCipher key of the database;
//! * [`AUDIT_LABEL`] — the HMAC key of the audit chain.
//!
//! ## Where the master key comes from ([`resolve`])
//! 1. `--key-file PATH` / `DESA_KEY_FILE`: a file holding 64 hex characters (surrounding whitespace
//!    is ignored), readable by its owner only;
//! 2. else `DESA_KEY`: 64 hex characters in the environment (never on the command line, where
//!    `ps` shows it to every user of the machine);
//! 3. else the default key file `<data-dir>.key`, beside the data directory rather than inside it
//!    (`./data` → `./data.key`): used if it exists, otherwise generated on first start.
//!
//! Losing the key loses the database: it cannot be read without it. Keep the key off the disk that
//! holds the data (a stolen data disk should not carry its own key) and back it up separately.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

/// Subkey label of the SQLCipher database key.
pub const SQLCIPHER_LABEL: &str = "desa sqlcipher v1";
/// Subkey label of the audit chain's HMAC key.
pub const AUDIT_LABEL: &str = "desa audit v1";

/// Key length in bytes (and a key file holds twice as many hex characters).
pub const KEY_BYTES: usize = 32;

/// A key file longer than this is not a key file; it is not read further.
const MAX_KEY_FILE_BYTES: u64 = 4096;

/// The 32-byte master key. Its bytes are overwritten with zeros when it is dropped; it never
/// prints (its `Debug` is redacted).
pub struct MasterKey(Zeroizing<[u8; KEY_BYTES]>);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey([redacted])")
    }
}

/// A secret string from the environment (e.g. `DESA_KEY`): zeroed on drop, redacted in `Debug`.
#[derive(Clone, Default)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Wrap a secret.
    pub fn new(text: String) -> Self {
        Secret(Zeroizing::new(text))
    }

    /// The secret text.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The value of environment variable `name`, if set.
    pub fn from_env(name: &str) -> Option<Self> {
        std::env::var(name).ok().map(Secret::new)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Why no master key could be had. Messages name the file and say what to do; they never contain
/// key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file exists but cannot be read.
    #[error("cannot read the key file {path}: {source}")]
    Read {
        /// The key file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The key is not 64 hex characters.
    #[error("{origin} does not hold a key: {detail} (expected {} hex characters)", KEY_BYTES * 2)]
    Format {
        /// Where the key came from ("the key file PATH", "DESA_KEY").
        origin: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The key file can be read by other users of the machine.
    #[error(
        "the key file {path} is accessible to group or others (mode {mode:03o}): \
         run `chmod 600 {path}` and keep it readable by the server's user only"
    )]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A new key file could not be written.
    #[error("cannot create the key file {path}: {source}")]
    Create {
        /// The key file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The operating system gave no random bytes.
    #[error("no randomness from the operating system for a new key: {0}")]
    Random(String),
    /// There is no sensible place beside the data directory for the default key file.
    #[error(
        "cannot place a key file beside the data directory {0}: give one with --key-file or DESA_KEY_FILE"
    )]
    NoDefaultPlace(PathBuf),
}

/// Where [`resolve`] found the key (for the operator's log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOrigin {
    /// `--key-file` / `DESA_KEY_FILE`.
    File(PathBuf),
    /// `DESA_KEY`.
    Env,
    /// The default key file, which already existed.
    DefaultFile(PathBuf),
    /// The default key file, generated now.
    Generated(PathBuf),
}

impl fmt::Display for KeyOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyOrigin::File(p) | KeyOrigin::DefaultFile(p) => write!(f, "key file {}", p.display()),
            KeyOrigin::Env => f.write_str("DESA_KEY"),
            KeyOrigin::Generated(p) => write!(f, "new key file {}", p.display()),
        }
    }
}

impl MasterKey {
    /// A key from its bytes.
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> Self {
        MasterKey(Zeroizing::new(bytes))
    }

    /// A key from 64 hex characters (surrounding whitespace ignored). `origin` names where the
    /// text came from, for the error message.
    pub fn from_hex(text: &str, origin: &str) -> Result<Self, KeyError> {
        let format = |detail: String| KeyError::Format {
            origin: origin.to_owned(),
            detail,
        };
        let text = text.trim();
        if text.len() != KEY_BYTES * 2 {
            return Err(format(format!("{} characters", text.len())));
        }
        let mut key = Zeroizing::new([0u8; KEY_BYTES]);
        for (i, pair) in text.as_bytes().chunks_exact(2).enumerate() {
            let (Some(hi), Some(lo)) = (hex_value(pair[0]), hex_value(pair[1])) else {
                return Err(format(format!(
                    "a character that is not hex near position {}",
                    i * 2 + 1
                )));
            };
            key[i] = hi << 4 | lo;
        }
        Ok(MasterKey(key))
    }

    /// 32 random bytes from the operating system.
    pub fn generate() -> Result<Self, KeyError> {
        let mut key = Zeroizing::new([0u8; KEY_BYTES]);
        getrandom::fill(&mut key[..]).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(MasterKey(key))
    }

    /// Read a key file: 64 hex characters, accessible to its owner only (on unix; a file that
    /// group or others can access is refused, with the `chmod` that fixes it).
    pub fn read_file(path: &Path) -> Result<Self, KeyError> {
        let read = |source| KeyError::Read {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(read)?;
        check_private(&file, path)?;
        let mut text = Zeroizing::new(String::new());
        file.take(MAX_KEY_FILE_BYTES)
            .read_to_string(&mut text)
            .map_err(read)?;
        MasterKey::from_hex(&text, &format!("the key file {}", path.display()))
    }

    /// Generate a key and write it to a new file at `path`: created exclusively (an existing file
    /// is never overwritten), mode 0600, fsynced together with its directory before returning, so
    /// the key exists on disk before anything is encrypted with it.
    pub fn create_file(path: &Path) -> Result<Self, KeyError> {
        let key = MasterKey::generate()?;
        let create = |source| KeyError::Create {
            path: path.to_owned(),
            source,
        };
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(create)?;
        let mut text = key.to_hex();
        text.push('\n');
        let written = file
            .write_all(text.as_bytes())
            .and_then(|()| file.sync_all());
        if let Err(source) = written {
            // A half-written key file would be refused at the next start; better none at all.
            let _ = std::fs::remove_file(path);
            return Err(create(source));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir).and_then(|d| d.sync_all()).map_err(create)?;
        }
        Ok(key)
    }

    /// `HMAC-SHA256(master, label)`: the subkey for one purpose ([`SQLCIPHER_LABEL`],
    /// [`AUDIT_LABEL`]).
    pub fn subkey(&self, label: &str) -> [u8; 32] {
        // HMAC zero-pads a key shorter than the hash's 64-byte block (RFC 2104), so the padded
        // block *is* the 32-byte key; passing the block avoids a length error that cannot happen.
        let mut block = Zeroizing::new([0u8; 64]);
        block[..KEY_BYTES].copy_from_slice(&self.0[..]);
        let mut mac = <Hmac<Sha256> as Mac>::new(&(*block).into());
        mac.update(label.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The key as 64 lowercase hex characters (zeroed when dropped).
    fn to_hex(&self) -> Zeroizing<String> {
        hex(&self.0[..])
    }
}

/// Lowercase hex of `bytes`, zeroed when dropped (for key material).
pub fn hex(bytes: &[u8]) -> Zeroizing<String> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = Zeroizing::new(String::with_capacity(bytes.len() * 2));
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(unix)]
fn check_private(file: &File, path: &Path) -> Result<(), KeyError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = file
        .metadata()
        .map_err(|source| KeyError::Read {
            path: path.to_owned(),
            source,
        })?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_file: &File, _path: &Path) -> Result<(), KeyError> {
    Ok(())
}

/// The default key file of a data directory: `<data-dir>.key`, its sibling (`./data` →
/// `./data.key`, `/var/lib/desa/` → `/var/lib/desa.key`).
pub fn default_key_file(data_dir: &Path) -> Result<PathBuf, KeyError> {
    let absolute =
        std::path::absolute(data_dir).map_err(|_| KeyError::NoDefaultPlace(data_dir.to_owned()))?;
    let clean: PathBuf = absolute
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect();
    match (clean.parent(), clean.file_name()) {
        (Some(parent), Some(name)) if !clean.ends_with("..") => {
            let mut file = name.to_owned();
            file.push(".key");
            Ok(parent.join(file))
        }
        _ => Err(KeyError::NoDefaultPlace(data_dir.to_owned())),
    }
}

/// Find the master key (see the module documentation for the order): `key_file` is
/// `--key-file`/`DESA_KEY_FILE`, `env_key` is `DESA_KEY`. Generating a new default key file is
/// logged as a warning saying where it is and that it must be backed up.
pub fn resolve(
    key_file: Option<&Path>,
    env_key: Option<&Secret>,
    data_dir: &Path,
) -> Result<(MasterKey, KeyOrigin), KeyError> {
    if let Some(path) = key_file {
        if env_key.is_some() {
            tracing::warn!(key_file = %path.display(), "both a key file and DESA_KEY are set; using the key file");
        }
        return Ok((
            MasterKey::read_file(path)?,
            KeyOrigin::File(path.to_owned()),
        ));
    }
    if let Some(text) = env_key {
        return Ok((
            MasterKey::from_hex(text.expose(), "DESA_KEY")?,
            KeyOrigin::Env,
        ));
    }
    let path = default_key_file(data_dir)?;
    match MasterKey::read_file(&path) {
        Ok(key) => return Ok((key, KeyOrigin::DefaultFile(path))),
        Err(KeyError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let key = match MasterKey::create_file(&path) {
        Ok(key) => key,
        // Another process created it between our read and our create: use theirs.
        Err(KeyError::Create { source, .. }) if source.kind() == io::ErrorKind::AlreadyExists => {
            return Ok((MasterKey::read_file(&path)?, KeyOrigin::DefaultFile(path)));
        }
        Err(e) => return Err(e),
    };
    tracing::warn!(
        key_file = %path.display(),
        "generated a new database key at {}. Without this file the database cannot be read: \
         back it up now, and keep it off the disk that holds the data (move it and pass \
         --key-file or DESA_KEY_FILE)",
        path.display()
    );
    Ok((key, KeyOrigin::Generated(path)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn write(path: &Path, text: &str, mode: u32) {
        std::fs::write(path, text).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        #[cfg(not(unix))]
        let _ = mode;
    }

    #[test]
    fn hex_keys_parse_with_surrounding_whitespace_in_either_case() {
        let key = MasterKey::from_hex(&format!("  {}\n", HEX.to_uppercase()), "test").unwrap();
        assert_eq!(key.0[..], (0u8..32).collect::<Vec<_>>()[..]);
        assert_eq!(*key.to_hex(), HEX);
    }

    #[test]
    fn malformed_keys_are_refused_without_echoing_them() {
        let short = MasterKey::from_hex(&HEX[..62], "DESA_KEY").unwrap_err();
        assert_eq!(
            short.to_string(),
            "DESA_KEY does not hold a key: 62 characters (expected 64 hex characters)"
        );
        let not_hex = MasterKey::from_hex(&format!("{}zz", &HEX[..62]), "DESA_KEY").unwrap_err();
        let message = not_hex.to_string();
        assert!(message.contains("not hex near position 63"), "{message}");
        assert!(!message.contains(&HEX[..10]), "{message}");
    }

    #[test]
    fn key_files_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.key");
        write(&good, &format!("{HEX}\n"), 0o600);
        assert_eq!(*MasterKey::read_file(&good).unwrap().to_hex(), HEX);

        let missing = MasterKey::read_file(&dir.path().join("nope.key")).unwrap_err();
        assert!(
            missing.to_string().starts_with("cannot read the key file"),
            "{missing}"
        );

        let long = dir.path().join("long.key");
        write(&long, &format!("{HEX}{HEX}"), 0o600);
        let err = MasterKey::read_file(&long).unwrap_err().to_string();
        assert!(
            err.contains("long.key does not hold a key: 128 characters"),
            "{err}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_key_file_others_can_read_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("open.key");
        write(&path, HEX, 0o644);
        let err = MasterKey::read_file(&path).unwrap_err();
        assert!(matches!(err, KeyError::Permissions { mode: 0o644, .. }));
        assert!(
            err.to_string()
                .contains(&format!("chmod 600 {}", path.display())),
            "{err}"
        );
        write(&path, HEX, 0o640);
        assert!(MasterKey::read_file(&path).is_err());
    }

    #[test]
    fn subkeys_are_hmac_sha256_of_the_label_and_differ_per_label() {
        let key = MasterKey::from_hex(HEX, "test").unwrap();
        let mut reference = <Hmac<Sha256> as Mac>::new_from_slice(&key.0[..]).unwrap();
        reference.update(SQLCIPHER_LABEL.as_bytes());
        let expected: [u8; 32] = reference.finalize().into_bytes().into();
        assert_eq!(key.subkey(SQLCIPHER_LABEL), expected);
        assert_ne!(key.subkey(SQLCIPHER_LABEL), key.subkey(AUDIT_LABEL));
        assert_ne!(key.subkey(SQLCIPHER_LABEL)[..], key.0[..]);
    }

    #[test]
    fn the_default_key_file_sits_beside_the_data_directory() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            default_key_file(Path::new("./data")).unwrap(),
            cwd.join("data.key")
        );
        assert_eq!(
            default_key_file(Path::new("/var/lib/desa/")).unwrap(),
            Path::new("/var/lib/desa.key")
        );
        assert!(default_key_file(Path::new("/")).is_err());
        assert!(default_key_file(Path::new("a/..")).is_err());
    }

    #[test]
    fn resolve_prefers_the_key_file_then_the_environment_then_the_default_file() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let file = dir.path().join("given.key");
        write(&file, HEX, 0o600);
        let env = Secret::new("ff".repeat(32));

        let (key, origin) = resolve(Some(&file), Some(&env), &data).unwrap();
        assert_eq!((key.0[1], origin), (1, KeyOrigin::File(file.clone())));
        let (key, origin) = resolve(None, Some(&env), &data).unwrap();
        assert_eq!((key.0[1], origin), (0xff, KeyOrigin::Env));
        assert!(
            !dir.path().join("data.key").exists(),
            "nothing generated while a key was given"
        );

        let (first, origin) = resolve(None, None, &data).unwrap();
        let generated = dir.path().join("data.key");
        assert_eq!(origin, KeyOrigin::Generated(generated.clone()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&generated).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (second, origin) = resolve(None, None, &data).unwrap();
        assert_eq!(origin, KeyOrigin::DefaultFile(generated));
        assert_eq!(first.0[..], second.0[..], "the generated key is kept");
        assert_ne!(first.0[..], [0u8; 32][..]);
    }

    #[test]
    fn create_file_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        write(&path, HEX, 0o600);
        let err = MasterKey::create_file(&path).unwrap_err();
        assert!(matches!(err, KeyError::Create { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), HEX);
    }

    #[test]
    fn keys_do_not_print() {
        let key = MasterKey::from_hex(HEX, "test").unwrap();
        assert_eq!(format!("{key:?}"), "MasterKey([redacted])");
        assert_eq!(format!("{:?}", Secret::new(HEX.into())), "[redacted]");
    }
}
