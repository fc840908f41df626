//! Mutual TLS 1.3 on the backplane: both ends present a certificate from
//! the cluster CA, and a certificate is worth something only if it names a
//! configured peer.
//!
//! - Server side: [`WebPkiClientVerifier`] requires a client certificate
//!   chaining to the cluster CA (the handshake fails otherwise). Which peer
//!   it is, is decided after the handshake ([`names_peer`]): webpki checks
//!   chains, not identities, on the client side.
//! - Client side: the server certificate must chain to the cluster CA and
//!   carry the dialed peer's name (rustls checks the server name).
//! - No resumption, no session tickets: every connection authenticates in
//!   full, and a client we refuse receives nothing after the handshake,
//!   not even a ticket.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::client::{ClientConfig, Resumption};
use rustls::server::{
    NoServerSessionStorage, ParsedCertificate, ServerConfig, WebPkiClientVerifier,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::BackplaneConfig;
use crate::error::Error;

/// Both directions' TLS configuration, built once at start.
#[derive(Clone)]
pub(crate) struct Tls {
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) connector: TlsConnector,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls { .. }")
    }
}

impl Tls {
    /// Loads the PEM files and builds the configurations; checks that our
    /// own certificate carries our name (a misnamed certificate would make
    /// every peer refuse us, later and less clearly).
    pub(crate) fn load(cfg: &BackplaneConfig) -> Result<Tls, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ca = load_certs(&cfg.ca, "cluster CA")?;
        let chain = load_certs(&cfg.cert_chain, "certificate chain")?;
        let key = PrivateKeyDer::from_pem_file(&cfg.key).map_err(|e| Error::Pem {
            what: "private key",
            path: cfg.key.clone(),
            why: e.to_string(),
        })?;
        let mut roots = RootCertStore::empty();
        for c in ca {
            roots.add(c).map_err(|e| Error::Pem {
                what: "cluster CA",
                path: cfg.ca.clone(),
                why: e.to_string(),
            })?;
        }
        let roots = Arc::new(roots);
        if !names_peer(&chain[0], &cfg.name) {
            return Err(Error::Config {
                field: "cert_chain",
                why: format!(
                    "our certificate does not carry our name {:?} as a DNS subjectAltName",
                    cfg.name
                ),
            });
        }

        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| Error::Tls(e.to_string()))?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(tls_err)?;
        server.send_tls13_tickets = 0;
        server.session_storage = Arc::new(NoServerSessionStorage {});

        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(tls_err)?;
        client.resumption = Resumption::disabled();

        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
        })
    }
}

fn tls_err(e: rustls::Error) -> Error {
    Error::Tls(e.to_string())
}

fn load_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = |why: String| Error::Pem {
        what,
        path: path.to_owned(),
        why,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem("no CERTIFICATE section".into()));
    }
    Ok(certs)
}

/// Whether `cert` (a chain-verified end-entity certificate) carries
/// `name` as a DNS subjectAltName. Webpki's own name check, so the same
/// rules apply as when we dial (no CN fallback).
pub(crate) fn names_peer(cert: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(parsed) = ParsedCertificate::try_from(cert) else {
        return false;
    };
    let Ok(server_name) = ServerName::try_from(name) else {
        return false;
    };
    rustls::client::verify_server_name(&parsed, &server_name).is_ok()
}

/// Whether a handshake failure is about the other end's certificate (an
/// unauthorised party), as opposed to the network or a protocol mismatch.
pub(crate) fn is_certificate_error(e: &std::io::Error) -> bool {
    let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return false;
    };
    matches!(
        inner,
        rustls::Error::InvalidCertificate(_)
            | rustls::Error::NoCertificatesPresented
            | rustls::Error::UnsupportedNameType
    )
}
