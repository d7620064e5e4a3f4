//! HTTPS and WSS: the server's TLS configuration (rustls 0.23 with the *ring* provider).
//!
//! `serve --tls-cert CERT.pem --tls-key KEY.pem` serves every route — the sync API, the
//! coordinators' API and `/ws` — over TLS only. Without TLS the server listens on loopback
//! addresses only, unless `--insecure-allow-plaintext` says the network is trusted: reports and,
//! soon, device tokens would otherwise cross the network readable by anyone on the path.
//!
//! The provider is *ring*, chosen explicitly rather than through rustls' process-wide default: the
//! default provider (aws-lc-rs) needs cmake to build, and nothing here should pick a provider by
//! which features happen to be enabled elsewhere in the dependency graph.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

/// Why the TLS configuration could not be built. Each message names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file is unreadable or holds no PEM certificate.
    #[error("TLS certificate {path}: {detail}")]
    Certificate {
        /// The certificate file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// The key file is unreadable or holds no PEM private key.
    #[error("TLS private key {path}: {detail}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("TLS certificate {cert} with key {key}: {detail}")]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Why.
        detail: String,
    },
}

/// A rustls server configuration from a PEM certificate chain (leaf first) and a PEM private key
/// (PKCS#8, PKCS#1 or SEC1), with rustls' safe default protocol versions (TLS 1.2 and 1.3) and no
/// client certificates. ALPN is left to actix-web, which offers `http/1.1`.
pub fn server_config(cert: &Path, key: &Path) -> Result<ServerConfig, TlsError> {
    let cert_error = |detail: String| TlsError::Certificate {
        path: cert.to_owned(),
        detail,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_error("no PEM certificate in the file".into()));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_owned(),
        detail: e.to_string(),
    })?;
    let pair = |e: rustls::Error| TlsError::Pair {
        cert: cert.to_owned(),
        key: key.to_owned(),
        detail: e.to_string(),
    };
    ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(pair)?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(pair)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        (cert, key)
    }

    #[test]
    fn a_certificate_and_its_key_make_a_configuration_and_mismatched_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "a");
        let (_, other_key) = write_pair(dir.path(), "b");
        assert!(server_config(&cert, &key).is_ok());
        let err = server_config(&cert, &other_key).unwrap_err();
        assert!(matches!(err, TlsError::Pair { .. }), "{err}");
        let err = server_config(&cert, &cert).unwrap_err().to_string();
        assert!(err.starts_with("TLS private key"), "{err}");
    }

    #[test]
    fn missing_and_empty_files_are_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        let err = server_config(&cert, &key).unwrap_err().to_string();
        assert!(err.starts_with("TLS certificate"), "{err}");
        assert!(err.contains("cert.pem"), "{err}");

        std::fs::write(&cert, "not a certificate\n").unwrap();
        let err = server_config(&cert, &key).unwrap_err().to_string();
        assert!(err.contains("no PEM certificate"), "{err}");
    }
}
