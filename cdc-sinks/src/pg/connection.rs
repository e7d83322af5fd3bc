//! Connections to PostgreSQL: the URL that never shows its password, the
//! connection settings (secrets from files), reconnecting, and the one
//! classification of errors (outage, lost race, bad data). Connections are
//! opened in `tls.rs`.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use cdc_core::{Error, Result};
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

/// A connection string that never shows its password (`Debug`, `Display`).
/// It serializes whole, password included, as the configuration file holds
/// it: serialize a configuration to merge or store it, never to show it.
#[derive(Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct PgUrl(String);

impl PgUrl {
    pub fn new(url: impl Into<String>) -> PgUrl {
        PgUrl(url.into())
    }

    /// The real connection string; only for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // postgres://user:secret@host/db -> postgres://user:***@host/db
        match (self.0.find("://"), self.0.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                let userinfo = &self.0[scheme + 3..at];
                let user = userinfo.split(':').next().unwrap_or_default();
                let hidden = if userinfo.contains(':') { ":***" } else { "" };
                write!(f, "{}{user}{hidden}{}", &self.0[..scheme + 3], &self.0[at..])
            }
            _ if self.0.contains("password") => f.write_str("<connection string with password>"),
            _ => f.write_str(&self.0),
        }
    }
}

impl fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgUrl({self})")
    }
}

/// Connection and retry settings shared by the PostgreSQL sinks.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PgConnectionConfig {
    /// `postgres://user:password@host:port/db` (the password is never
    /// logged), with libpq's `sslmode`, `sslrootcert`, `sslcert`, `sslkey`.
    pub url: PgUrl,
    /// A file holding the connection string instead (a mounted secret),
    /// read at each connection, so a rotated secret is picked up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_file: Option<std::path::PathBuf>,
    /// A file holding the password, so the URL needs none; read at each
    /// connection. A trailing newline is not part of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<std::path::PathBuf>,
    /// Names this consumer's rows in the offsets table, so several pipelines
    /// can share one database.
    #[serde(default = "default_consumer")]
    pub consumer: String,
    /// Attempts for a batch that fails with a retriable error (connection
    /// lost, server restart, serialization failure) before giving up.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// First backoff between attempts; doubles up to 30 s.
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
}

pub(super) fn default_consumer() -> String {
    "cdc-lakehouse".into()
}
pub(super) fn default_attempts() -> u32 {
    8
}
pub(super) fn default_backoff_ms() -> u64 {
    200
}

impl PgConnectionConfig {
    pub fn new(url: impl Into<String>) -> PgConnectionConfig {
        PgConnectionConfig {
            url: PgUrl::new(url),
            url_file: None,
            password_file: None,
            consumer: default_consumer(),
            max_attempts: default_attempts(),
            backoff_ms: default_backoff_ms(),
        }
    }
}

impl PgConnectionConfig {
    /// Opens a connection as `application_name` (see `tls.rs`), reading the
    /// secrets' files now. A file that cannot be read is an outage: it may
    /// be a secret being mounted or rotated.
    pub async fn connect(&self, application_name: &str) -> Result<Client> {
        let read = |path: &std::path::Path| {
            std::fs::read_to_string(path).map(|text| text.trim_end_matches(['\n', '\r']).to_owned()).map_err(|e| {
                Error::Unavailable {
                    sink: application_name.into(),
                    message: format!("reading {}: {e}", path.display()),
                }
            })
        };
        let url = match &self.url_file {
            Some(path) => PgUrl::new(read(path)?),
            None => self.url.clone(),
        };
        let password = self.password_file.as_deref().map(read).transpose()?;
        super::tls::connect(&url, password.as_deref(), application_name).await
    }

    /// Where this connects, for messages: the URL without its password, or
    /// the file holding it.
    pub fn describe(&self) -> String {
        match &self.url_file {
            Some(path) => format!("the URL in {}", path.display()),
            None => self.url.to_string(),
        }
    }
}

/// A lazily (re)connected client.
pub(crate) struct Connection {
    config: PgConnectionConfig,
    pub(super) sink: &'static str,
    client: Option<Client>,
}

impl Connection {
    pub fn new(config: PgConnectionConfig, sink: &'static str) -> Connection {
        Connection { config, sink, client: None }
    }

    pub fn config(&self) -> &PgConnectionConfig {
        &self.config
    }

    pub async fn client(&mut self) -> Result<&mut Client> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            let client = self.config.connect(self.sink).await?;
            tracing::debug!(sink = self.sink, url = %self.config.describe(), "connected");
            return Ok(self.client.insert(client));
        }
        self.client
            .as_mut()
            .ok_or_else(|| Error::Unavailable { sink: self.sink.into(), message: "not connected".into() })
    }

    /// Forgets the client so the next call reconnects.
    pub fn reset(&mut self) {
        self.client = None;
    }

    /// After failed attempt number `attempt` (1-based) with `error`: how long
    /// to wait before trying again, or `None` to give up. Resets the
    /// connection when trying again.
    pub fn retry_after(&mut self, attempt: u32, error: &Error) -> Option<Duration> {
        if !error.is_retriable() || attempt >= self.config.max_attempts.max(1) {
            return None;
        }
        self.reset();
        let ms = self.config.backoff_ms.saturating_mul(1 << attempt.min(16).saturating_sub(1));
        let wait = Duration::from_millis(ms.min(30_000));
        tracing::warn!(sink = self.sink, %error, attempt, ?wait, "retrying the batch after a retriable error");
        Some(wait)
    }
}

/// A sink error from a PostgreSQL error, classified once for every caller:
/// an outage when the connection or the server went away (I/O, closed
/// connection, classes 08, 53, 57, 58); retriable when the transaction lost
/// a race (serialization failure, deadlock); otherwise not retriable: the
/// data or the SQL is wrong, including a value the client cannot serialise
/// (no SQLSTATE, but nothing a retry changes). The message never contains
/// credentials.
pub(crate) fn sink_error(sink: &str, error: &tokio_postgres::Error) -> Error {
    enum Class {
        Outage,
        Race,
        Data,
    }
    let io = || {
        let mut source = error.source();
        while let Some(cause) = source {
            if cause.is::<std::io::Error>() {
                return true;
            }
            source = cause.source();
        }
        false
    };
    let class = match error.code() {
        None if error.is_closed() || io() => Class::Outage,
        None => Class::Data,
        Some(code) if matches!(&code.code()[..2], "08" | "53" | "57" | "58") => Class::Outage,
        Some(code) if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED => {
            Class::Race
        }
        Some(_) => Class::Data,
    };
    let mut message = error.to_string();
    if let Some(db) = error.as_db_error() {
        message = format!("{} ({})", db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            message.push_str(&format!(": {detail}"));
        }
    } else if let Some(source) = error.source() {
        message.push_str(&format!(": {source}"));
    }
    let sink = sink.to_owned();
    match class {
        Class::Outage => Error::Unavailable { sink, message },
        Class::Race => Error::Sink { sink, message, retriable: true },
        Class::Data => Error::Sink { sink, message, retriable: false },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_never_show_passwords() {
        let url = PgUrl::new("postgres://target_user:target_password@localhost:5435/target_db");
        assert_eq!(url.to_string(), "postgres://target_user:***@localhost:5435/target_db");
        assert!(!format!("{url:?}").contains("target_password"));
        let kv = PgUrl::new("host=localhost user=u password=secret");
        assert!(!kv.to_string().contains("secret"));
    }
}
