//! The two secrets a volunteer gives `desa`: the device token (at `desa init`, and again with
//! `desa token set` when the office issues a new one) and the store passphrase (every command).
//!
//! Neither is ever taken from a command-line value, which the shell keeps in its history and `ps`
//! shows to every user of the phone. The token comes from `--token-file PATH`, else
//! [`TOKEN_ENV`], else a prompt on the terminal that does not echo; the passphrase from
//! [`PASSPHRASE_ENV`], else such a prompt (asked twice when it is new). Neither is printed, logged
//! or put in an error message, and both are zeroed when dropped.
//!
//! Where secrets come from is the [`Secrets`] trait, so that the choice between the environment,
//! a file and the terminal is tested without a terminal:
//!
//! ```
//! use desa_client::secrets::{self, Secrets};
//! use zeroize::Zeroizing;
//!
//! struct Typed(Vec<&'static str>);
//! impl Secrets for Typed {
//!     fn env(&self, _name: &str) -> Option<Zeroizing<String>> {
//!         None
//!     }
//!     fn prompt(&mut self, _prompt: &str) -> std::io::Result<Zeroizing<String>> {
//!         Ok(Zeroizing::new(self.0.remove(0).to_owned()))
//!     }
//! }
//!
//! // A new passphrase is asked twice and must match.
//! assert!(secrets::new_passphrase(&mut Typed(vec!["correct horse", "correct horse"])).is_ok());
//! assert!(secrets::new_passphrase(&mut Typed(vec!["correct horse", "correct house"])).is_err());
//! ```

use std::fmt;
use std::io::{self, IsTerminal, Read};
use std::path::Path;

use sync_core::DeviceToken;
use zeroize::Zeroizing;

/// The environment variable holding the device token (read by `desa init` and `desa token set`
/// only).
pub const TOKEN_ENV: &str = "DESA_TOKEN";

/// The environment variable holding the store passphrase.
pub const PASSPHRASE_ENV: &str = "DESA_PASSPHRASE";

/// Shortest passphrase accepted for a new store. The key is stretched with argon2id, but a phone
/// that is lost can be attacked offline for as long as the finder likes: a short passphrase would
/// fall to guessing whatever the stretching.
pub const MIN_PASSPHRASE_CHARS: usize = 8;

/// Largest token file read: a token is about 70 characters; anything much bigger is the wrong file.
const MAX_TOKEN_FILE_BYTES: u64 = 4096;

/// Why a secret could not be had. No variant carries the secret itself.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The token file could not be read.
    #[error("cannot read the token file {path}: {source}")]
    TokenFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The token does not parse (its text is not repeated).
    #[error("the device token from {from} is not a desa device token (expected desa_ followed by about 66 letters and digits, as `desa-server device add` showed it); nothing was stored")]
    BadToken {
        /// Where it came from (a file, the environment, the terminal).
        from: String,
    },
    /// Nowhere to get the secret from.
    #[error("{what}: set {env} or run desa in a terminal to be asked")]
    NoTerminal {
        /// What was needed.
        what: &'static str,
        /// The variable that would have given it.
        env: &'static str,
    },
    /// The terminal failed while asking.
    #[error("reading the {what} from the terminal: {source}")]
    Prompt {
        /// What was asked.
        what: &'static str,
        /// Why it failed.
        source: io::Error,
    },
    /// The two entries of a new passphrase differ.
    #[error("the two passphrases differ; nothing was changed")]
    Mismatch,
    /// A new passphrase that is too short.
    #[error("the store passphrase must be at least {MIN_PASSPHRASE_CHARS} characters")]
    TooShort,
}

/// The store passphrase. Its `Debug` never shows it; it is zeroed when dropped.
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    /// A passphrase from its text.
    pub fn new(text: impl Into<String>) -> Self {
        Passphrase(Zeroizing::new(text.into()))
    }

    /// The bytes the store key is derived from.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(..)")
    }
}

/// Where secrets come from.
pub trait Secrets {
    /// An environment variable, `None` when unset or empty.
    fn env(&self, name: &str) -> Option<Zeroizing<String>>;
    /// Ask on the terminal without echo. Fails when there is no terminal to ask on.
    fn prompt(&mut self, prompt: &str) -> io::Result<Zeroizing<String>>;
}

/// The real sources: the process environment and the controlling terminal.
#[derive(Debug, Default)]
pub struct Terminal;

impl Secrets for Terminal {
    fn env(&self, name: &str) -> Option<Zeroizing<String>> {
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .map(Zeroizing::new)
    }

    fn prompt(&mut self, prompt: &str) -> io::Result<Zeroizing<String>> {
        // Only a person at a terminal is asked: a script (or a test) without the variable gets a
        // clear error instead of a process that hangs waiting for /dev/tty.
        if !io::stdin().is_terminal() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "standard input is not a terminal",
            ));
        }
        rpassword::prompt_password(prompt).map(Zeroizing::new)
    }
}

fn ask(
    secrets: &mut dyn Secrets,
    prompt: &str,
    what: &'static str,
    env: &'static str,
) -> Result<Zeroizing<String>, SecretError> {
    secrets
        .prompt(prompt)
        .map_err(|source| match source.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::Unsupported => {
                SecretError::NoTerminal { what, env }
            }
            // No controlling terminal (ENXIO) shows up as an uncategorised error.
            _ if source.raw_os_error() == Some(6) => SecretError::NoTerminal { what, env },
            _ => SecretError::Prompt { what, source },
        })
}

/// The device token for `desa init` and `desa token set`: from `file` if given, else
/// [`TOKEN_ENV`], else the terminal.
pub fn token(file: Option<&Path>, secrets: &mut dyn Secrets) -> Result<DeviceToken, SecretError> {
    let (text, from) = match file {
        Some(path) => (read_token_file(path)?, path.display().to_string()),
        None => match secrets.env(TOKEN_ENV) {
            Some(text) => (text, TOKEN_ENV.to_owned()),
            None => (
                ask(
                    secrets,
                    "device token (from the office): ",
                    "no device token (pass --token-file PATH)",
                    TOKEN_ENV,
                )?,
                "the terminal".to_owned(),
            ),
        },
    };
    text.trim()
        .parse()
        .map_err(|_| SecretError::BadToken { from })
}

fn read_token_file(path: &Path) -> Result<Zeroizing<String>, SecretError> {
    let error = |source| SecretError::TokenFile {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(error)?;
    let mut text = Zeroizing::new(String::new());
    file.take(MAX_TOKEN_FILE_BYTES)
        .read_to_string(&mut text)
        .map_err(error)?;
    Ok(text)
}

/// The passphrase of an existing store: [`PASSPHRASE_ENV`], else asked once.
pub fn passphrase(secrets: &mut dyn Secrets, path: &Path) -> Result<Passphrase, SecretError> {
    if let Some(text) = secrets.env(PASSPHRASE_ENV) {
        return Ok(Passphrase(text));
    }
    let prompt = format!("passphrase for the desa store at {}: ", path.display());
    Ok(Passphrase(ask(
        secrets,
        &prompt,
        "no store passphrase",
        PASSPHRASE_ENV,
    )?))
}

/// A new passphrase (a new store, or one being encrypted): [`PASSPHRASE_ENV`], else asked twice,
/// and the two must match. At least [`MIN_PASSPHRASE_CHARS`] characters.
pub fn new_passphrase(secrets: &mut dyn Secrets) -> Result<Passphrase, SecretError> {
    let text = match secrets.env(PASSPHRASE_ENV) {
        Some(text) => text,
        None => {
            let what = "no store passphrase";
            let first = ask(
                secrets,
                "choose a passphrase for this device's store: ",
                what,
                PASSPHRASE_ENV,
            )?;
            let second = ask(secrets, "type it again: ", what, PASSPHRASE_ENV)?;
            if first != second {
                return Err(SecretError::Mismatch);
            }
            first
        }
    };
    if text.chars().count() < MIN_PASSPHRASE_CHARS {
        return Err(SecretError::TooShort);
    }
    Ok(Passphrase(text))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::collections::HashMap;
    use sync_core::DeviceId;

    /// An environment and what the volunteer types, in order.
    #[derive(Default)]
    struct Fake {
        env: HashMap<&'static str, String>,
        typed: Vec<String>,
        asked: Vec<String>,
        no_terminal: bool,
    }

    impl Secrets for Fake {
        fn env(&self, name: &str) -> Option<Zeroizing<String>> {
            self.env.get(name).cloned().map(Zeroizing::new)
        }
        fn prompt(&mut self, prompt: &str) -> io::Result<Zeroizing<String>> {
            self.asked.push(prompt.to_owned());
            if self.no_terminal || self.typed.is_empty() {
                return Err(io::Error::new(io::ErrorKind::NotFound, "no terminal"));
            }
            Ok(Zeroizing::new(self.typed.remove(0)))
        }
    }

    fn a_token() -> DeviceToken {
        DeviceToken::new(DeviceId::new_random(), [9; 32])
    }

    #[test]
    fn token_from_file_then_env_then_terminal() {
        let (file_token, env_token, typed_token) = (a_token(), a_token(), a_token());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, format!("{}\n", file_token.reveal())).unwrap();
        let mut fake = Fake {
            env: HashMap::from([(TOKEN_ENV, env_token.reveal())]),
            typed: vec![typed_token.reveal()],
            ..Fake::default()
        };
        assert_eq!(token(Some(&path), &mut fake).unwrap(), file_token);
        assert_eq!(token(None, &mut fake).unwrap(), env_token);
        fake.env.clear();
        assert_eq!(token(None, &mut fake).unwrap(), typed_token);
        assert_eq!(fake.asked.len(), 1);
    }

    #[test]
    fn a_bad_token_is_named_by_its_source_never_shown() {
        let secret_looking = "desa_notreallyatoken0OIl";
        let mut fake = Fake {
            env: HashMap::from([(TOKEN_ENV, secret_looking.to_owned())]),
            ..Fake::default()
        };
        let err = token(None, &mut fake).unwrap_err().to_string();
        assert!(err.contains("DESA_TOKEN") && err.contains("not a desa device token"));
        assert!(!err.contains(secret_looking), "{err}");

        let missing = token(Some(Path::new("/nonexistent/token")), &mut fake).unwrap_err();
        assert!(
            missing.to_string().contains("/nonexistent/token"),
            "{missing}"
        );

        fake.env.clear();
        fake.no_terminal = true;
        let err = token(None, &mut fake).unwrap_err().to_string();
        assert!(
            err.contains("--token-file") && err.contains("DESA_TOKEN"),
            "{err}"
        );
    }

    #[test]
    fn passphrases() {
        let mut fake = Fake {
            env: HashMap::from([(PASSPHRASE_ENV, "from the environment".to_owned())]),
            ..Fake::default()
        };
        assert_eq!(
            passphrase(&mut fake, Path::new("s.db")).unwrap().as_bytes(),
            b"from the environment"
        );
        assert_eq!(
            new_passphrase(&mut fake).unwrap().as_bytes(),
            b"from the environment"
        );
        assert!(fake.asked.is_empty());

        fake.env.clear();
        fake.typed = vec!["typed once".into()];
        assert_eq!(
            passphrase(&mut fake, Path::new("s.db")).unwrap().as_bytes(),
            b"typed once"
        );
        assert!(fake.asked[0].contains("s.db"), "{:?}", fake.asked);

        fake.typed = vec!["new and long".into(), "new and long".into()];
        assert_eq!(
            new_passphrase(&mut fake).unwrap().as_bytes(),
            b"new and long"
        );
        fake.typed = vec!["new and long".into(), "new and lung".into()];
        assert!(matches!(
            new_passphrase(&mut fake),
            Err(SecretError::Mismatch)
        ));
        fake.typed = vec!["short".into(), "short".into()];
        assert!(matches!(
            new_passphrase(&mut fake),
            Err(SecretError::TooShort)
        ));

        fake.no_terminal = true;
        let err = passphrase(&mut fake, Path::new("s.db")).unwrap_err();
        assert!(err.to_string().contains("DESA_PASSPHRASE"), "{err}");
        assert_eq!(format!("{:?}", Passphrase::new("hidden")), "Passphrase(..)");
    }
}
