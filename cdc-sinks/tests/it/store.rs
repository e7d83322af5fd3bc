//! Where a Delta test's tables live: a temporary folder, or, with
//! `CDC_TEST_DELTA_STORE=s3`, a prefix of its own in the bucket of the test
//! command's S3-protocol server (`CDC_TEST_S3_ENDPOINT`,
//! `scripts/s3-server.sh`). The test command runs the Delta suite both ways.
use std::collections::HashMap;

use cdc_sinks::DeltaConfig;
use cdc_sinks::delta::deltalake::logstore::object_store::ObjectStoreExt;
use cdc_sinks::delta::deltalake::logstore::{ObjectStoreRef, StorageConfig, logstore_for};
use cdc_sinks::delta::deltalake::{ObjectStore, Path};
use futures::TryStreamExt;

/// The storage options of the test S3 server: path-style requests over
/// plain HTTP on loopback, any key.
pub fn s3_options() -> HashMap<String, String> {
    let endpoint = std::env::var("CDC_TEST_S3_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "CDC_TEST_S3_ENDPOINT is not set: run the tests with scripts/test.sh, which starts a local S3 server, \
             or start one with scripts/s3-server.sh start DIR"
        )
    });
    [
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// A fresh root under the test bucket, unique to this process and call.
pub fn s3_root() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("s3://cdc-test/{}-{}-{nanos}-{n}", module_path!().replace("::", "-"), std::process::id())
}

/// A test's Delta root, on the store `CDC_TEST_DELTA_STORE` names.
pub struct TestRoot {
    config: DeltaConfig,
    store: ObjectStoreRef,
    /// Kept for a local root: removed when the test ends.
    _dir: Option<tempfile::TempDir>,
}

impl TestRoot {
    pub fn new() -> TestRoot {
        match std::env::var("CDC_TEST_DELTA_STORE").as_deref() {
            Ok("s3") => {
                let mut config = DeltaConfig::new(s3_root());
                config.storage_options = s3_options();
                TestRoot::at(config, None)
            }
            Ok("local") | Err(_) => {
                let dir = tempfile::tempdir().unwrap();
                TestRoot::at(DeltaConfig::new(dir.path().to_str().unwrap()), Some(dir))
            }
            Ok(other) => panic!("CDC_TEST_DELTA_STORE={other}: expected local or s3"),
        }
    }

    fn at(config: DeltaConfig, dir: Option<tempfile::TempDir>) -> TestRoot {
        let url = cdc_sinks::delta::deltalake::ensure_table_uri(&config.root).unwrap();
        let storage = StorageConfig::parse_options(config.storage_options.clone()).unwrap();
        let store = logstore_for(&url, storage).unwrap().object_store(None);
        TestRoot { config, store, _dir: dir }
    }

    /// A sink configuration writing here.
    pub fn config(&self) -> DeltaConfig {
        self.config.clone()
    }

    /// A table's URL, for other readers.
    pub fn table_url(&self, table: &str) -> String {
        self.config.table_url(table).unwrap().to_string()
    }

    /// The paths of every file under `prefix` (relative to the root).
    pub async fn files(&self, prefix: &str) -> Vec<String> {
        let listed: Vec<_> = self.store.list(Some(&Path::from(prefix))).try_collect().await.unwrap();
        listed.into_iter().map(|meta| meta.location.to_string()).collect()
    }

    pub async fn exists(&self, path: &str) -> bool {
        self.store.head(&Path::from(path)).await.is_ok()
    }

    pub async fn read(&self, path: &str) -> bytes::Bytes {
        self.store.get(&Path::from(path)).await.unwrap().bytes().await.unwrap()
    }

    /// Deletes a file, or everything under a folder.
    pub async fn delete(&self, path: &str) {
        let mut paths = self.files(path).await;
        if paths.is_empty() {
            paths.push(path.to_owned());
        }
        for path in paths {
            self.store.delete(&Path::from(path.as_str())).await.unwrap_or_else(|e| panic!("{path}: {e}"));
        }
    }
}
