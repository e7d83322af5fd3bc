//! TLS to PostgreSQL against a server of its own that this test configures
//! with certificates it generates: each `sslmode`, a wrong root certificate,
//! a host name the certificate does not name, a client certificate, and a
//! password read from a file.
use std::path::{Path, PathBuf};
use std::process::Command;

use cdc_sinks::PgConnectionConfig;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// A certificate authority that signs the server's and the client's certificates.
struct Authority {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Authority {
    fn new(name: &str) -> Authority {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let pem = params.self_signed(&key).unwrap().pem();
        Authority { pem, issuer: Issuer::new(params, key) }
    }

    /// (certificate, key) in PEM, for `names` (the server's) or the common name `user` (a client's).
    fn sign(&self, names: &[&str], user: Option<&str>) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        if let Some(user) = user {
            params.distinguished_name.push(DnType::CommonName, user);
        }
        (params.signed_by(&key, &self.issuer).unwrap().pem(), key.serialize_pem())
    }
}

/// A throwaway cluster speaking TLS, stopped when dropped.
struct TlsServer {
    dir: PathBuf,
    port: String,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = Command::new(script()).args(["stop", self.dir.to_str().unwrap()]).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/pg-cluster.sh")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

async fn connects(url: &str, password_file: Option<&str>) -> Result<bool, String> {
    let mut config = PgConnectionConfig::new(url);
    config.password_file = password_file.map(PathBuf::from);
    let client = config.connect("tls-test").await.map_err(|e| e.to_string())?;
    let row = client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.unwrap();
    Ok(row.get(0))
}

#[tokio::test]
async fn every_sslmode_with_certificates_the_test_generates() {
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path();
    let authority = Authority::new("cdc test CA");
    // The server's certificate names localhost only: 127.0.0.1 is the same
    // server under a name it does not carry.
    let (server_cert, server_key) = authority.sign(&["localhost"], None);
    write(dir, "server.crt", &server_cert);
    write(dir, "server.key", &server_key);
    let root = write(dir, "root.crt", &authority.pem);
    let (client_cert, client_key) = authority.sign(&[], Some("certuser"));
    let client_cert = write(dir, "client.crt", &client_cert);
    let client_key = write(dir, "client.key", &client_key);
    let stranger = write(dir, "stranger.crt", &Authority::new("someone else's CA").pem);
    let password = write(dir, "password", "s3cret pass\n");
    let wrong_password = write(dir, "wrong-password", "guess\n");

    // Its own cluster (the shared one must not change under other tests):
    // directly under /tmp, where the server's OS user can reach it.
    let cluster = tempfile::Builder::new().prefix("cdc-tls-pg.").tempdir_in("/tmp").unwrap().keep();
    let output = Command::new(script())
        .args(["start", cluster.to_str().unwrap()])
        .env("PG_SSL_DIR", dir)
        .env(
            "PG_HBA_FIRST",
            "hostssl all certuser 127.0.0.1/32 cert\nhostssl all pwuser 127.0.0.1/32 scram-sha-256\n\
             hostssl all pwuser ::1/128 scram-sha-256",
        )
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let url = String::from_utf8(output.stdout).unwrap();
    let port = url.trim().rsplit_once(':').unwrap().1.split('/').next().unwrap().to_owned();
    let server = TlsServer { dir: cluster, port };
    let at =
        |host: &str, user: &str, params: &str| format!("postgres://{user}@{host}:{}/postgres?{params}", server.port);

    let admin =
        PgConnectionConfig::new(at("127.0.0.1", "postgres", "sslmode=disable")).connect("tls-test").await.unwrap();
    admin.batch_execute("CREATE ROLE certuser LOGIN; CREATE ROLE pwuser LOGIN PASSWORD 's3cret pass'").await.unwrap();

    // Encrypted or not, as the mode says; the certificate checked as it says.
    assert_eq!(connects(&at("127.0.0.1", "postgres", "sslmode=disable"), None).await, Ok(false));
    assert_eq!(connects(&at("127.0.0.1", "postgres", "sslmode=prefer"), None).await, Ok(true));
    assert_eq!(connects(&at("127.0.0.1", "postgres", "sslmode=require"), None).await, Ok(true));
    let verify_ca = format!("sslmode=verify-ca&sslrootcert={root}");
    let verify_full = format!("sslmode=verify-full&sslrootcert={root}");
    assert_eq!(connects(&at("127.0.0.1", "postgres", &verify_ca), None).await, Ok(true));
    assert_eq!(connects(&at("localhost", "postgres", &verify_full), None).await, Ok(true));
    let key_value = format!("host=localhost port={} user=postgres sslmode=verify-full sslrootcert={root}", server.port);
    assert_eq!(connects(&key_value, None).await, Ok(true));

    // A name the certificate does not carry fails verify-full, plainly.
    let error = connects(&at("127.0.0.1", "postgres", &verify_full), None).await.unwrap_err();
    assert!(error.contains("not issued to this host"), "{error}");
    // Another CA's root fails verify-ca and require-with-a-root, plainly.
    for mode in ["verify-ca", "verify-full", "require"] {
        let url = at("localhost", "postgres", &format!("sslmode={mode}&sslrootcert={stranger}"));
        let error = connects(&url, None).await.unwrap_err();
        assert!(error.contains("not signed by a trusted root (check sslrootcert)"), "{mode}: {error}");
    }
    // A root certificate file that is not there.
    let error = connects(&at("localhost", "postgres", "sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem"), None)
        .await
        .unwrap_err();
    assert!(error.contains("sslrootcert /nonexistent/ca.pem"), "{error}");

    // The `cert` user gets in with its client certificate only.
    let with_cert = format!("sslmode=verify-full&sslrootcert={root}&sslcert={client_cert}&sslkey={client_key}");
    assert_eq!(connects(&at("localhost", "certuser", &with_cert), None).await, Ok(true));
    assert!(connects(&at("localhost", "certuser", &verify_full), None).await.is_err());

    // A password from a file (its trailing newline is not part of it), never shown.
    assert_eq!(connects(&at("localhost", "pwuser", &verify_full), Some(&password)).await, Ok(true));
    let error = connects(&at("localhost", "pwuser", &verify_full), Some(&wrong_password)).await.unwrap_err();
    assert!(!error.contains("guess"), "{error}");
    let error = connects(&at("localhost", "pwuser", &verify_full), Some("/nonexistent/password")).await.unwrap_err();
    assert!(error.contains("/nonexistent/password"), "{error}");
}
