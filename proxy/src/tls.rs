//! TLS termination: certificates and keys from PEM files, picked per connection by SNI
//! (the first certificate whose names match the requested host; the first one when none
//! does or the client sent no SNI), hot-swapped on reload without dropping connections.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::tls::{ClientHello, ResolvesServerCert, ServerName, sign::CertifiedKey};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot load certificate {cert} with key {key}: {reason}")]
    Load { cert: String, key: String, reason: String },
    #[error("no certificate given: pass --proxy-cert CERT.pem:KEY.pem with --proxy-tls-addr")]
    NoCertificates,
}

/// One certificate/key pair as configured.
#[derive(Clone, Debug)]
pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl std::str::FromStr for CertPaths {
    type Err = String;

    /// `CERT.pem:KEY.pem`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (cert, key) = s.split_once(':').ok_or_else(|| format!("{s:?}: expected CERT.pem:KEY.pem"))?;
        if cert.is_empty() || key.is_empty() {
            return Err(format!("{s:?}: expected CERT.pem:KEY.pem"));
        }
        Ok(CertPaths { cert: cert.into(), key: key.into() })
    }
}

fn load_one(p: &CertPaths) -> Result<Arc<CertifiedKey>, TlsError> {
    let err = |reason: String| TlsError::Load {
        cert: p.cert.display().to_string(),
        key: p.key.display().to_string(),
        reason,
    };
    let cert = p.cert.to_str().ok_or_else(|| err("path is not UTF-8".into()))?;
    let key = p.key.to_str().ok_or_else(|| err("path is not UTF-8".into()))?;
    let (chain, key) = pingora::tls::load_certs_and_key_files(cert, key)
        .map_err(|e| err(e.to_string()))?
        .ok_or_else(|| err("no PEM certificate or no PEM private key found".into()))?;
    let provider = rustls::crypto::ring::default_provider();
    let ck = CertifiedKey::from_der(chain, key, &provider).map_err(|e| err(e.to_string()))?;
    Ok(Arc::new(ck))
}

/// The loaded certificates, swappable as a whole.
#[derive(Debug)]
pub struct CertStore {
    paths: Vec<CertPaths>,
    certs: ArcSwap<Vec<Arc<CertifiedKey>>>,
}

impl CertStore {
    pub fn load(paths: Vec<CertPaths>) -> Result<CertStore, TlsError> {
        if paths.is_empty() {
            return Err(TlsError::NoCertificates);
        }
        let certs = paths.iter().map(load_one).collect::<Result<Vec<_>, _>>()?;
        Ok(CertStore { paths, certs: ArcSwap::from_pointee(certs) })
    }

    /// Re-reads every file; on any error the certificates in use stay as they were.
    pub fn reload(&self) -> Result<usize, TlsError> {
        let certs = self.paths.iter().map(load_one).collect::<Result<Vec<_>, _>>()?;
        let n = certs.len();
        self.certs.store(Arc::new(certs));
        Ok(n)
    }

    fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let certs = self.certs.load();
        if let Some(name) = sni.and_then(|n| ServerName::try_from(n.to_string()).ok()) {
            for ck in certs.iter() {
                let Some(leaf) = ck.cert.first() else { continue };
                if let Ok(parsed) = rustls::server::ParsedCertificate::try_from(leaf)
                    && rustls::client::verify_server_name(&parsed, &name).is_ok()
                {
                    return Some(ck.clone());
                }
            }
        }
        certs.first().cloned()
    }
}

/// rustls's per-handshake certificate choice, backed by a [`CertStore`].
#[derive(Debug)]
pub struct SniResolver(pub Arc<CertStore>);

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.pick(hello.server_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cert_paths_parse() {
        let p: CertPaths = "a.pem:a.key".parse().expect("valid");
        assert_eq!(p.cert, PathBuf::from("a.pem"));
        assert!("a.pem".parse::<CertPaths>().is_err());
        assert!(":k".parse::<CertPaths>().is_err());
    }

    #[test]
    fn missing_files_say_which() {
        let err =
            CertStore::load(vec!["/nonexistent/c.pem:/nonexistent/k.pem".parse().expect("p")]).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/c.pem"), "{err}");
        assert!(matches!(CertStore::load(vec![]), Err(TlsError::NoCertificates)));
    }
}
