//! Opening the store a snapshot is taken from or restored into.

use crate::cli::{AdminStoreArgs, StoreKind};
use anyhow::{anyhow, bail, Context, Result};
use gaffer_store::etcd::{EtcdStore, FenceCond};
use gaffer_store::sqlite::SqliteStore;
use gaffer_store::{Store, StoreError};
use std::fs::File;

/// An open store, with the data-directory lock held as long as it lives.
pub(super) struct Opened {
    pub(super) store: Box<dyn Store>,
    /// For messages: "SQLite /x/state.db" or "etcd http://... (prefix gaffer)".
    pub(super) desc: String,
    /// How to empty it, for messages.
    pub(super) empty_hint: String,
    /// etcd prefix (for the fence message).
    pub(super) etcd_prefix: Option<String>,
    /// A server leads the cluster whose state this is (etcd only: SQLite is locked instead).
    pub(super) led: bool,
    _lock: Option<nix::fcntl::Flock<File>>,
}

#[derive(Clone, Copy, PartialEq)]
pub(super) enum Use {
    Snapshot,
    Restore,
}

pub(super) fn open_store(a: &AdminStoreArgs, what: Use) -> Result<Opened> {
    let verb = match what {
        Use::Snapshot => "snapshot",
        Use::Restore => "restore",
    };
    match a.store.kind {
        StoreKind::Sqlite => {
            let dir = &a.data_dir;
            let dir = match what {
                Use::Snapshot => {
                    let db = dir.join("state.db");
                    if !db.is_file() {
                        bail!(
                            "there is no state database {}: pass the data directory of the \
                             server with --data-dir (gaffer server uses .gaffer-server, gaffer dev \
                             uses .gaffer), or --store etcd",
                            db.display()
                        );
                    }
                    std::fs::canonicalize(dir)
                        .with_context(|| format!("cannot resolve {}", dir.display()))?
                }
                Use::Restore => crate::toolbox::prepare_dir(dir)?,
            };
            let lock = crate::toolbox::lock_data_dir(&dir).with_context(|| {
                format!(
                    "cannot {verb} while another process uses the data directory (stop the \
                     gaffer server or gaffer dev running on it first)"
                )
            })?;
            let db = dir.join("state.db");
            let store = SqliteStore::open(&db)
                .with_context(|| format!("cannot open the state database {}", db.display()))?;
            Ok(Opened {
                store: Box::new(store),
                desc: format!("SQLite {}", db.display()),
                empty_hint: format!(
                    "move {} (and its -wal and -shm files) away, or pass another --data-dir",
                    db.display()
                ),
                etcd_prefix: None,
                led: false,
                _lock: Some(lock),
            })
        }
        StoreKind::Etcd => {
            let endpoints = &a.store.etcd_endpoints;
            if endpoints.is_empty() {
                bail!(
                    "--store etcd needs --etcd-endpoints http://HOST:2379[,...] (or \
                     GAFFER_ETCD_ENDPOINTS)"
                );
            }
            let prefix = a.store.etcd_prefix.trim_end_matches('/').to_string();
            if prefix.is_empty() {
                bail!("--etcd-prefix must not be empty");
            }
            let desc = format!("etcd {} (prefix {prefix})", endpoints.join(","));
            let mut store = EtcdStore::connect(endpoints, &prefix)
                .with_context(|| format!("cannot open the store in {desc}"))?;
            let led = store
                .exists("leader")
                .with_context(|| format!("cannot read the leader key in {desc}"))?;
            if what == Use::Restore {
                // Every write requires that no server leads this cluster: a leader's core
                // would not see the restored rows, and would overwrite them.
                store = store.with_fence(format!("{prefix}/leader"), FenceCond::CreateRevision(0));
            }
            Ok(Opened {
                store: Box::new(store),
                desc,
                empty_hint: format!(
                    "pick another --etcd-prefix, or delete the old keys (etcdctl del --prefix \
                     '{prefix}/') with every server of that cluster stopped"
                ),
                etcd_prefix: Some(prefix),
                led,
                _lock: None,
            })
        }
    }
}

impl Opened {
    /// A store error with what to do about it.
    pub(super) fn explain(&self, e: StoreError) -> anyhow::Error {
        match (&e, &self.etcd_prefix) {
            (StoreError::Fenced { .. }, Some(p)) => anyhow!(
                "a gaffer server is leader of the cluster on etcd prefix {p} (the key {p}/leader \
                 exists): stop every server of that cluster before restoring"
            ),
            _ => anyhow::Error::new(e),
        }
    }
}
