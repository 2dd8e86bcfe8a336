//! High availability for gaffer servers: membership and leader election on etcd.
//!
//! Several `gaffer server --store etcd` processes share one etcd cluster. Each one ([`Member`])
//! holds one etcd **lease** (TTL `--lease-ttl`) for its whole life and keeps it alive; under that
//! lease it registers itself at `P/servers/{id}` and campaigns for `P/leader`:
//!
//! - **Election** is one transaction: *if `P/leader` does not exist, put it with my lease*. The
//!   winner's key lives exactly as long as its lease. The losers watch the key from the revision
//!   they read and campaign again when it is deleted (lease expiry or resignation). No consensus of
//!   our own: etcd's linearizable transactions decide.
//! - **Term** is the leader key's create revision: it grows with every election.
//! - **Fencing**: the leader hands `(P/leader, create revision)` to the store, which puts that
//!   comparison into every write transaction ([`gaffer_store::etcd::FenceCond::CreateRevision`]).
//!   A deposed leader that has not noticed yet cannot change anything.
//! - **Losing the lease**: renewals are sent every TTL/4. [`Member::lease_lost`] resolves when no
//!   renewal has been acknowledged for a whole TTL counted from when the last acknowledged one was
//!   *sent*. etcd counts the TTL from when it *received* that renewal, so the member gives up its
//!   role no later than etcd deletes its keys, and before anyone else can win an election.

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};
use gaffer_api::views::{ServerView, ServersView};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Errors of membership and election.
#[derive(Debug, thiserror::Error)]
pub enum HaError {
    /// etcd refused or could not be reached.
    #[error("etcd at {endpoints}: {op} failed: {source} (check that etcd runs and is reachable from this host)")]
    Etcd {
        /// Endpoints, comma-separated.
        endpoints: String,
        /// What was being done.
        op: &'static str,
        /// Cause.
        #[source]
        source: Box<etcd_client::Error>,
    },
    /// Another live server is registered under this server's id (the same `--advertise`).
    #[error(
        "another gaffer server is registered as {id} (its etcd lease stayed live for twice the \
         {ttl:?} TTL): each server needs its own --advertise URL; if that server is this one, \
         running twice, stop the other process"
    )]
    Duplicate {
        /// The member id both servers advertise.
        id: String,
        /// The lease TTL waited for.
        ttl: Duration,
    },
    /// This member's lease expired.
    #[error("this server's etcd lease expired (no renewal acknowledged within {0:?})")]
    LeaseLost(Duration),
}

/// Settings of one member.
#[derive(Debug, Clone)]
pub struct HaConfig {
    /// etcd endpoints (`http://host:2379`).
    pub endpoints: Vec<String>,
    /// Key prefix shared by the servers of one gaffer cluster.
    pub prefix: String,
    /// This server's URL as others reach it (`--advertise`).
    pub url: String,
    /// Lease TTL: how long a dead leader keeps its role.
    pub lease_ttl: Duration,
}

/// The current leader as seen by a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// Member id.
    pub id: String,
    /// URL.
    pub url: String,
    /// Term (create revision of the leader key).
    pub term: i64,
}

/// What is stored under `P/servers/{id}` and `P/leader`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MemberRec {
    id: String,
    url: String,
    since: u64,
}

/// The member id for an advertised URL: its `host:port`.
pub fn member_id(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    rest.trim_end_matches('/').to_string()
}

/// One server's membership: its lease, its registration and its view of the leader.
pub struct Member {
    client: Client,
    cfg: HaConfig,
    rec: MemberRec,
    lease: i64,
    leader_tx: watch::Sender<Option<Leader>>,
    lost_rx: watch::Receiver<bool>,
    keeper: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(k) = self.keeper.lock().unwrap_or_else(|p| p.into_inner()).take() {
            k.abort();
        }
    }
}

impl Member {
    /// Connects, takes a lease and registers this server. Must run inside a tokio runtime.
    pub async fn join(cfg: HaConfig) -> Result<Arc<Member>, HaError> {
        let err = |op, e| HaError::Etcd {
            endpoints: cfg.endpoints.join(","),
            op,
            source: Box::new(e),
        };
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5))
            // HTTP/2 pings find a dead connection. etcd's server turns away clients that ping
            // more often than every 5 s (`--grpc-keepalive-min-time`: GOAWAY "too many pings",
            // which broke the leader watch every few seconds); a lost lease is found by the
            // keep-alive loop's own deadlines, not by these pings.
            .with_keep_alive(Duration::from_secs(6), Duration::from_secs(3));
        let mut client = Client::connect(cfg.endpoints.clone(), Some(opts))
            .await
            .map_err(|e| err("connect", e))?;
        let ttl = cfg.lease_ttl.as_secs().max(1) as i64;
        let lease = client
            .lease_grant(ttl, None)
            .await
            .map_err(|e| err("grant a lease", e))?
            .id();
        let rec = MemberRec {
            id: member_id(&cfg.url),
            url: cfg.url.clone(),
            since: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        };
        // Register only where no live lease holds the key: a second server with the same
        // --advertise would take the first one's identity (and its leadership, in the eyes of
        // the followers). A previous run of this server killed moments ago still holds it
        // until its lease expires (at most one TTL after its last renewal, a little more when
        // etcd changes leader meanwhile), so wait two TTLs and a second before giving up.
        let key = format!("{}/servers/{}", cfg.prefix, rec.id);
        let register = Txn::new()
            .when(vec![Compare::create_revision(
                key.as_str(),
                CompareOp::Equal,
                0,
            )])
            .and_then(vec![TxnOp::put(
                key.as_str(),
                serde_json::to_vec(&rec).expect("member record serializes"),
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let give_up = tokio::time::Instant::now() + Duration::from_secs(2 * ttl as u64 + 1);
        loop {
            let r = client
                .txn(register.clone())
                .await
                .map_err(|e| err("register this server", e))?;
            if r.succeeded() {
                break;
            }
            if tokio::time::Instant::now() >= give_up {
                let _ = client.lease_revoke(lease).await;
                return Err(HaError::Duplicate {
                    id: rec.id,
                    ttl: Duration::from_secs(ttl as u64),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (leader_tx, _) = watch::channel(None);
        let (lost_tx, lost_rx) = watch::channel(false);
        let keeper = tokio::spawn(keep_alive(
            client.clone(),
            lease,
            Duration::from_secs(ttl as u64),
            lost_tx,
        ));
        Ok(Arc::new(Member {
            client,
            cfg,
            rec,
            lease,
            leader_tx,
            lost_rx,
            keeper: Mutex::new(Some(keeper)),
        }))
    }

    /// This member's id.
    pub fn id(&self) -> &str {
        &self.rec.id
    }

    /// The etcd key every leader write is fenced on.
    pub fn leader_key(&self) -> String {
        format!("{}/leader", self.cfg.prefix)
    }

    /// The leader as last seen (updated while [`Member::campaign`] runs).
    pub fn leader(&self) -> watch::Receiver<Option<Leader>> {
        self.leader_tx.subscribe()
    }

    /// Resolves when this member's lease is gone: it must stop acting as leader at once.
    pub async fn lease_lost(&self) {
        let mut rx = self.lost_rx.clone();
        let _ = rx.wait_for(|lost| *lost).await;
    }

    fn err(&self, op: &'static str, e: etcd_client::Error) -> HaError {
        HaError::Etcd {
            endpoints: self.cfg.endpoints.join(","),
            op,
            source: Box::new(e),
        }
    }

    /// Campaigns until this member is leader and returns its term. Meanwhile the leader seen
    /// by [`Member::leader`] follows every change. Fails only when the lease is lost.
    pub async fn campaign(&self) -> Result<i64, HaError> {
        let key = self.leader_key();
        let me = serde_json::to_vec(&self.rec).expect("member record serializes");
        loop {
            if *self.lost_rx.borrow() {
                return Err(HaError::LeaseLost(self.cfg.lease_ttl));
            }
            match self.try_lead(&key, &me).await {
                Ok(Ok(term)) => {
                    self.leader_tx.send_replace(Some(Leader {
                        id: self.rec.id.clone(),
                        url: self.rec.url.clone(),
                        term,
                    }));
                    return Ok(term);
                }
                Ok(Err((None, _))) => {
                    // The key vanished between the comparison and the read: campaign again.
                    self.leader_tx.send_replace(None);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(Err((leader, mod_rev))) => {
                    self.leader_tx.send_replace(leader);
                    if let Err(e) = self.wait_deleted(&key, mod_rev).await {
                        tracing::warn!(error = %e, "watching the leader key failed; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "campaign failed; retrying");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
    }

    /// One election transaction: `Ok(term)` when won, else the current leader and the
    /// revision of the key to watch from.
    #[allow(clippy::type_complexity)]
    async fn try_lead(
        &self,
        key: &str,
        me: &[u8],
    ) -> Result<Result<i64, (Option<Leader>, i64)>, HaError> {
        let txn = Txn::new()
            .when(vec![Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then(vec![TxnOp::put(
                key,
                me.to_vec(),
                Some(PutOptions::new().with_lease(self.lease)),
            )])
            .or_else(vec![TxnOp::get(key, None)]);
        let mut client = self.client.clone();
        let r = client.txn(txn).await.map_err(|e| self.err("campaign", e))?;
        let rev = r.header().map(|h| h.revision()).unwrap_or(0);
        if r.succeeded() {
            return Ok(Ok(rev));
        }
        for op in r.op_responses() {
            if let TxnOpResponse::Get(g) = op {
                if let Some(kv) = g.kvs().first() {
                    let leader = serde_json::from_slice::<MemberRec>(kv.value())
                        .ok()
                        .map(|m| Leader {
                            id: m.id,
                            url: m.url,
                            term: kv.create_revision(),
                        });
                    return Ok(Err((leader, kv.mod_revision())));
                }
            }
        }
        // Deleted between the comparison and the read: campaign again at once.
        Ok(Err((None, rev)))
    }

    /// Waits until `key` is deleted after revision `rev` (or this member's lease is lost).
    async fn wait_deleted(&self, key: &str, rev: i64) -> Result<(), HaError> {
        let mut client = self.client.clone();
        let (_watcher, mut stream) = client
            .watch(key, Some(WatchOptions::new().with_start_revision(rev + 1)))
            .await
            .map_err(|e| self.err("watch the leader key", e))?;
        let mut lost = self.lost_rx.clone();
        loop {
            tokio::select! {
                _ = lost.wait_for(|l| *l) => return Ok(()),
                m = stream.message() => {
                    let Some(resp) = m.map_err(|e| self.err("watch the leader key", e))? else {
                        return Ok(());
                    };
                    if resp.canceled() {
                        return Ok(());
                    }
                    if resp.events().iter().any(|e| e.event_type() == EventType::Delete) {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Gives the role and the registration up at once (revokes the lease), so that another
    /// server is elected without waiting for the TTL.
    pub async fn resign(&self) {
        let mut client = self.client.clone();
        if let Err(e) = client.lease_revoke(self.lease).await {
            tracing::warn!(error = %e, "cannot revoke the lease; the others wait for its TTL");
        }
    }

    /// Live members and the leader, read from etcd.
    pub async fn servers(&self) -> Result<ServersView, HaError> {
        let mut client = self.client.clone();
        let members = client
            .get(
                format!("{}/servers/", self.cfg.prefix),
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .map_err(|e| self.err("list servers", e))?;
        let leader = client
            .get(self.leader_key(), None)
            .await
            .map_err(|e| self.err("read the leader key", e))?;
        let leader = leader.kvs().first().and_then(|kv| {
            let m = serde_json::from_slice::<MemberRec>(kv.value()).ok()?;
            Some((m.id, kv.create_revision()))
        });
        let mut servers: Vec<ServerView> = members
            .kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice::<MemberRec>(kv.value()).ok())
            .map(|m| ServerView {
                leader: leader.as_ref().is_some_and(|(id, _)| *id == m.id),
                id: m.id,
                url: m.url,
                since: m.since,
            })
            .collect();
        servers.sort_by(|a, b| b.leader.cmp(&a.leader).then(a.id.cmp(&b.id)));
        Ok(ServersView {
            servers,
            term: leader.as_ref().map(|l| l.1),
            leader: leader.map(|l| l.0),
            answered_by: self.rec.id.clone(),
        })
    }
}

/// Renews `lease` every TTL/4; sets `lost` once no renewal has been acknowledged for a TTL
/// counted from the sending of the last acknowledged one.
async fn keep_alive(client: Client, lease: i64, ttl: Duration, lost: watch::Sender<bool>) {
    let every = ttl / 4;
    let mut acked_sent = Instant::now();
    'reopen: loop {
        if acked_sent.elapsed() >= ttl {
            break;
        }
        let left = ttl.saturating_sub(acked_sent.elapsed());
        let mut c = client.clone();
        let opened = tokio::time::timeout(left, c.lease_keep_alive(lease)).await;
        let (mut keeper, mut stream) = match opened {
            Ok(Ok(ks)) => ks,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot open the lease keep-alive stream");
                tokio::time::sleep(every.min(left)).await;
                continue;
            }
            Err(_) => break,
        };
        loop {
            let sent = Instant::now();
            let left = ttl.saturating_sub(acked_sent.elapsed());
            if left.is_zero() {
                break 'reopen;
            }
            let answer = tokio::time::timeout(left, async {
                keeper.keep_alive().await?;
                stream.message().await
            })
            .await;
            match answer {
                Ok(Ok(Some(r))) if r.ttl() > 0 => acked_sent = sent,
                Ok(Ok(Some(_))) => {
                    tracing::error!("etcd says this server's lease has expired");
                    break 'reopen;
                }
                Ok(Ok(None)) | Ok(Err(_)) => {
                    tracing::warn!("lease keep-alive stream broke; reopening it");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue 'reopen;
                }
                Err(_) => break 'reopen,
            }
            tokio::time::sleep(every.saturating_sub(sent.elapsed())).await;
        }
    }
    tracing::error!(
        ?ttl,
        "lost this server's etcd lease: no renewal acknowledged within its TTL"
    );
    lost.send_replace(true);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ids_are_host_and_port() {
        assert_eq!(member_id("http://10.0.0.1:6464/"), "10.0.0.1:6464");
        assert_eq!(member_id("https://a.example:7000"), "a.example:7000");
        assert_eq!(member_id("h:1"), "h:1");
    }
}
