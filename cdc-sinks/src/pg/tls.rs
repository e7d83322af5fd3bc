//! Opening a PostgreSQL connection: the one place every connection of the
//! sinks, the source catalog and `--check` is made, with TLS (rustls) as
//! libpq's `sslmode` and its certificate parameters mean it:
//!
//! | `sslmode` | encrypted | server certificate checked |
//! |---|---|---|
//! | `disable` | never | - |
//! | `allow`, `prefer` (default) | if the server offers it | no |
//! | `require` | always | no; with `sslrootcert`, as `verify-ca` (libpq does the same) |
//! | `verify-ca` | always | signed by `sslrootcert` (default: the system's roots) |
//! | `verify-full` | always | and issued to the host connected to |
//!
//! `sslcert` and `sslkey` (PEM files) present a client certificate. The
//! parameters go in the URL (`?sslmode=verify-full&sslrootcert=/etc/ca.pem`)
//! or a key=value string (`sslmode=verify-full sslrootcert=/etc/ca.pem`).

use std::fmt;
use std::sync::Arc;

use cdc_core::{Error, Result};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::Client;
use tokio_postgres::config::SslMode as WireMode;

use super::PgUrl;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// A connection string split into what tokio-postgres reads and the TLS
/// settings it does not know.
#[derive(Debug)]
pub struct ConnectionSpec {
    pub config: tokio_postgres::Config,
    pub ssl_mode: SslMode,
    pub root_cert: Option<String>,
    pub client_cert: Option<(String, String)>,
}

/// The TLS parameters tokio-postgres's parser refuses, taken out of the
/// string before it parses the rest.
const TLS_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

impl ConnectionSpec {
    pub fn parse(url: &PgUrl) -> Result<ConnectionSpec> {
        let (rest, tls) = split_tls_params(url.expose());
        let config: tokio_postgres::Config = rest.parse().map_err(|e| invalid(url, &e))?;
        let value = |key: &str| tls.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        let ssl_mode = match value("sslmode").as_deref() {
            None | Some("prefer" | "allow") => SslMode::Prefer,
            Some("disable") => SslMode::Disable,
            Some("require") => SslMode::Require,
            Some("verify-ca") => SslMode::VerifyCa,
            Some("verify-full") => SslMode::VerifyFull,
            Some(other) => {
                return Err(invalid(
                    url,
                    &format!("sslmode `{other}`: expected disable, allow, prefer, require, verify-ca or verify-full"),
                ));
            }
        };
        let client_cert = match (value("sslcert"), value("sslkey")) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => return Err(invalid(url, &"sslcert and sslkey go together")),
        };
        Ok(ConnectionSpec { config, ssl_mode, root_cert: value("sslrootcert"), client_cert })
    }

    /// Whether the server's certificate chain is checked, and its name.
    fn verification(&self) -> (bool, bool) {
        match self.ssl_mode {
            SslMode::Disable | SslMode::Prefer => (false, false),
            SslMode::Require => (self.root_cert.is_some(), false),
            SslMode::VerifyCa => (true, false),
            SslMode::VerifyFull => (true, true),
        }
    }

    /// The rustls client configuration these settings ask for.
    fn tls_config(&self) -> std::result::Result<rustls::ClientConfig, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = match self.verification() {
            (false, _) => Arc::new(Unchecked(provider.clone())),
            (true, check_name) => {
                let roots = self.roots()?;
                let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| format!("the root certificates: {e}"))?;
                if check_name { webpki as Arc<dyn ServerCertVerifier> } else { Arc::new(ChainOnly(webpki)) }
            }
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        match &self.client_cert {
            None => Ok(builder.with_no_client_auth()),
            Some((cert, key)) => {
                let chain = read_certificates(cert, "sslcert")?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("sslkey {key}: {e}"))?;
                builder.with_client_auth_cert(chain, key).map_err(|e| format!("sslcert/sslkey: {e}"))
            }
        }
    }

    fn roots(&self) -> std::result::Result<RootCertStore, String> {
        let mut roots = RootCertStore::empty();
        match &self.root_cert {
            Some(path) => {
                for cert in read_certificates(path, "sslrootcert")? {
                    roots.add(cert).map_err(|e| format!("sslrootcert {path}: {e}"))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    return Err("no sslrootcert given and no system root certificates found".into());
                }
            }
        }
        Ok(roots)
    }
}

fn read_certificates(path: &str, key: &str) -> std::result::Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<std::result::Result<_, _>>())
        .map_err(|e| format!("{key} {path}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{key} {path}: no PEM certificate in it"));
    }
    Ok(certs)
}

/// Takes libpq's TLS parameters out of a URL's query or a key=value string.
fn split_tls_params(conn: &str) -> (String, Vec<(String, String)>) {
    let mut tls = Vec::new();
    if conn.starts_with("postgres://") || conn.starts_with("postgresql://") {
        let Some((base, query)) = conn.split_once('?') else { return (conn.to_owned(), tls) };
        let mut kept = Vec::new();
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            if TLS_KEYS.contains(&key.as_ref()) {
                tls.push((key.into_owned(), value.into_owned()));
            } else {
                kept.push((key.into_owned(), value.into_owned()));
            }
        }
        if kept.is_empty() {
            return (base.to_owned(), tls);
        }
        let query = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(kept).finish();
        return (format!("{base}?{query}"), tls);
    }
    // key=value: the TLS parameters' values are file paths and modes,
    // written without spaces or quotes.
    let kept: Vec<&str> = conn
        .split_whitespace()
        .filter(|pair| match pair.split_once('=') {
            Some((key, value)) if TLS_KEYS.contains(&key) => {
                tls.push((key.to_owned(), value.to_owned()));
                false
            }
            _ => true,
        })
        .collect();
    (kept.join(" "), tls)
}

fn invalid(url: &PgUrl, error: &dyn fmt::Display) -> Error {
    Error::Sink {
        sink: "postgres".into(),
        message: format!("invalid connection string {url}: {error}"),
        retriable: false,
    }
}

/// Connects as `application_name`, the connection served by a task of its
/// own. Failing to connect is an outage (retried; never a reason to
/// dead-letter), with a message that names a TLS failure plainly.
pub async fn connect(url: &PgUrl, password: Option<&str>, application_name: &str) -> Result<Client> {
    let mut spec = ConnectionSpec::parse(url)?;
    spec.config.application_name(application_name);
    if let Some(password) = password {
        spec.config.password(password);
    }
    let unavailable = |message: String| Error::Unavailable { sink: application_name.into(), message };
    spec.config.ssl_mode(match spec.ssl_mode {
        SslMode::Disable => WireMode::Disable,
        SslMode::Prefer => WireMode::Prefer,
        _ => WireMode::Require,
    });
    let tls = spec.tls_config().map_err(|e| unavailable(format!("TLS settings of {url}: {e}")))?;
    let connector = tokio_postgres_rustls::MakeRustlsConnect::new(tls);
    let (client, connection) = spec.config.connect(connector).await.map_err(|e| {
        let error = super::connection::sink_error(application_name, &e);
        match tls_failure(&e) {
            Some(tls) => unavailable(format!("TLS with {url} failed: {tls}")),
            None => error,
        }
    })?;
    let sink = application_name.to_owned();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(sink, error = %e, "PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// What went wrong in the TLS handshake, said plainly, if that is what failed.
fn tls_failure(error: &tokio_postgres::Error) -> Option<String> {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let rustls_error = cause
            .downcast_ref::<rustls::Error>()
            .or_else(|| cause.downcast_ref::<std::io::Error>()?.get_ref()?.downcast_ref::<rustls::Error>());
        if let Some(rustls_error) = rustls_error {
            let hint = match rustls_error {
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
                    "the server's certificate is not signed by a trusted root (check sslrootcert)"
                }
                rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
                ) => "the server's certificate is not issued to this host (verify-full checks the name)",
                rustls::Error::InvalidCertificate(_) => "the server's certificate is not valid",
                rustls::Error::AlertReceived(_) => "the server refused the handshake (a client certificate it wants?)",
                _ => "handshake failed",
            };
            return Some(format!("{hint}: {rustls_error}"));
        }
        if cause.to_string().contains("server does not support TLS") {
            return Some("the server does not support TLS (sslmode asks for it)".into());
        }
        source = cause.source();
    }
    None
}

/// `prefer` and `require`: encrypted, the certificate not checked (libpq's
/// meaning), the handshake's signatures still verified.
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain before the name: a name error means the chain passed.
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_read_from_urls_and_key_value_strings() {
        let url = PgUrl::new(
            "postgres://u:secret@db:5432/app?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
        );
        let spec = ConnectionSpec::parse(&url).unwrap();
        assert_eq!(spec.ssl_mode, SslMode::VerifyFull);
        assert_eq!(spec.root_cert.as_deref(), Some("/etc/ca.pem"));
        assert_eq!(spec.config.get_dbname(), Some("app"));
        assert_eq!(spec.config.get_password(), Some(&b"secret"[..]));

        let kv = PgUrl::new("host=db user=u sslmode=verify-ca sslcert=/c.pem sslkey=/k.pem");
        let spec = ConnectionSpec::parse(&kv).unwrap();
        assert_eq!(spec.ssl_mode, SslMode::VerifyCa);
        assert_eq!(spec.client_cert, Some(("/c.pem".into(), "/k.pem".into())));
        assert_eq!(spec.verification(), (true, false));

        let plain = ConnectionSpec::parse(&PgUrl::new("postgres://u@db/app")).unwrap();
        assert_eq!(plain.ssl_mode, SslMode::Prefer);
        assert_eq!(plain.verification(), (false, false));
        // libpq: require with a root certificate checks the chain.
        let require = ConnectionSpec::parse(&PgUrl::new("postgres://u@db/app?sslmode=require&sslrootcert=/ca.pem"));
        assert_eq!(require.unwrap().verification(), (true, false));

        let wrong = ConnectionSpec::parse(&PgUrl::new("postgres://u:secret@db/app?sslmode=verify")).unwrap_err();
        assert!(wrong.to_string().contains("sslmode `verify`"), "{wrong}");
        assert!(!wrong.to_string().contains("secret"), "{wrong}");
    }
}
