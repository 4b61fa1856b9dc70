//! TLS settings per registry: the system's trusted roots plus the CA
//! certificates in the registry's certs.d directory
//! (`DIR/HOST[:PORT]/*.crt`, as docker and podman read them).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

use crate::error::RegistryError;

/// The certs.d directories Hafen reads, most specific first:
/// `$XDG_CONFIG_HOME/hafen/certs.d`, `/etc/containers/certs.d`,
/// `/etc/docker/certs.d`.
pub fn default_certs_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(config) = crate::credentials::config_dir() {
        dirs.push(config.join("hafen/certs.d"));
    }
    dirs.push(PathBuf::from("/etc/containers/certs.d"));
    dirs.push(PathBuf::from("/etc/docker/certs.d"));
    dirs
}

/// The system's trusted roots, loaded once per process: the platform's
/// store through rustls-native-certs (on Debian `/etc/ssl/certs`, so a CA
/// added with update-ca-certificates counts; `SSL_CERT_FILE` and
/// `SSL_CERT_DIR` are honoured), else the Mozilla roots compiled in.
fn system_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        let loaded = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(loaded.certs);
        if roots.is_empty() {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        roots
    })
}

/// The client TLS configuration for `registry` (`host[:port]`): system
/// roots plus every `*.crt` of `DIR/registry/` for each of `certs_dirs`.
pub(crate) fn client_config(
    registry: &str,
    certs_dirs: &[PathBuf],
) -> Result<Arc<ClientConfig>, RegistryError> {
    let mut roots = system_roots().clone();
    for dir in certs_dirs {
        add_dir(&mut roots, registry, &dir.join(registry))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| RegistryError::Protocol {
            what: "TLS setup".into(),
            registry: registry.into(),
            message: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Adds the certificates of `dir/*.crt` (a missing directory adds none).
fn add_dir(roots: &mut RootCertStore, registry: &str, dir: &Path) -> Result<(), RegistryError> {
    let bad = |path: &Path, source| RegistryError::Certificate {
        registry: registry.into(),
        path: path.to_owned(),
        source,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(bad(dir, err)),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "crt"))
        .collect();
    files.sort();
    for path in files {
        let invalid = |message: String| {
            bad(
                &path,
                std::io::Error::new(std::io::ErrorKind::InvalidData, message),
            )
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&path)
            .map_err(|e| invalid(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| invalid(e.to_string()))?;
        if certs.is_empty() {
            return Err(invalid("no PEM certificate in it".into()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| invalid(format!("not a usable CA certificate: {e}")))?;
        }
    }
    Ok(())
}

/// The directory an error message suggests for a registry's CA.
pub(crate) fn certs_hint(certs_dirs: &[PathBuf]) -> String {
    certs_dirs
        .first()
        .map(|d| d.display().to_string())
        .unwrap_or_else(|| "~/.config/hafen/certs.d".into())
}

/// Whether `error`'s chain holds a TLS failure (rather than a refused or
/// dropped connection).
pub(crate) fn is_tls_error(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(err) = current {
        if err.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
            {
                return true;
            }
        }
        current = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certs_dir_that_is_not_pem_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = dir.path().join("reg.example:5000");
        std::fs::create_dir(&host).expect("mkdir");
        std::fs::write(host.join("ca.crt"), "not a certificate").expect("write");
        let err =
            client_config("reg.example:5000", &[dir.path().to_owned()]).expect_err("garbage CA");
        assert!(err.to_string().contains("ca.crt"), "{err}");
        // Other registries and missing directories are unaffected.
        client_config("other:5000", &[dir.path().to_owned()]).expect("no dir");
    }
}
