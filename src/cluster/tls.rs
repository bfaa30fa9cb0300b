//! TLS to Redis (`rediss://`, `rediss-cluster://`, `rediss-sentinel://`):
//! rustls, trusting the system's CA certificates plus, when set, the PEM
//! certificates of `MESHGATE_REDIS_TLS_CA_FILE` (a private CA, as managed
//! Redis services and test set-ups use). Server names are verified; on a
//! cluster each node's name or IP is the one `CLUSTER SLOTS` reports.

use std::path::Path;

use fred::types::config::TlsConnector;
use rustls::{
    pki_types::{pem::PemObject, CertificateDer},
    ClientConfig, RootCertStore,
};

use crate::{Error, Result};

/// Splits `rediss…://` into the same URL without TLS (for fred's parser,
/// which would otherwise build its own TLS settings) and whether TLS was
/// asked for.
pub fn split_url(url: &str) -> (String, bool) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_owned(), false);
    };
    for (tls, plain) in [("rediss", "redis"), ("valkeys", "valkey")] {
        if let Some(kind) = scheme.strip_prefix(tls) {
            return (format!("{plain}{kind}://{rest}"), true);
        }
    }
    (url.to_owned(), false)
}

/// The connector for every Redis connection of the pod.
pub fn connector(ca_file: Option<&Path>) -> Result<TlsConnector> {
    let mut roots = RootCertStore::empty();
    let system = rustls_native_certs::load_native_certs();
    for error in &system.errors {
        tracing::warn!(%error, "some system CA certificates could not be read");
    }
    let (_, unusable) = roots.add_parsable_certificates(system.certs);
    if unusable > 0 {
        tracing::warn!(unusable, "system CA certificates skipped");
    }
    if let Some(path) = ca_file {
        let bad = |e: &dyn std::fmt::Display| {
            Error::Internal(format!(
                "MESHGATE_REDIS_TLS_CA_FILE {}: {e}",
                path.display()
            ))
        };
        let mut added = 0;
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
            roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
            added += 1;
        }
        if added == 0 {
            return Err(bad(&"no PEM certificate in it"));
        }
    }
    if roots.is_empty() {
        return Err(Error::Internal(
            "TLS to Redis: no trusted CA certificate (install the system's, or set MESHGATE_REDIS_TLS_CA_FILE)".into(),
        ));
    }
    let config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_schemes_are_split_off() {
        assert_eq!(
            split_url("rediss://h:6380/0"),
            ("redis://h:6380/0".into(), true)
        );
        assert_eq!(
            split_url("rediss-cluster://h:7000?node=h:7001"),
            ("redis-cluster://h:7000?node=h:7001".into(), true)
        );
        assert_eq!(
            split_url("rediss-sentinel://s:26379"),
            ("redis-sentinel://s:26379".into(), true)
        );
        assert_eq!(split_url("valkeys://h"), ("valkey://h".into(), true));
        assert_eq!(
            split_url("redis://h:6379"),
            ("redis://h:6379".into(), false)
        );
        assert_eq!(
            split_url("redis-cluster://h"),
            ("redis-cluster://h".into(), false)
        );
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_a_clear_error() {
        let err = connector(Some(Path::new("/nonexistent/ca.pem")))
            .expect_err("refused")
            .to_string();
        assert!(err.contains("MESHGATE_REDIS_TLS_CA_FILE"), "{err}");
        let empty = std::env::temp_dir().join(format!("mg-empty-{}.pem", uuid::Uuid::new_v4()));
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = connector(Some(&empty)).expect_err("refused").to_string();
        let _ = std::fs::remove_file(&empty);
        assert!(err.contains("no PEM certificate"), "{err}");
    }
}
