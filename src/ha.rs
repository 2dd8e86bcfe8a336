//! `gaffer server --store etcd`: one member of an HA cluster.
//!
//! The process serves the API from the start. As a follower it answers store reads itself and
//! forwards the rest to the leader (`gaffer_server::forward`). Meanwhile it campaigns
//! (`gaffer_ha::Member`); when it wins, it fences the store on its leader key, loads the active
//! state, starts the core and swaps its router for the leader's.
//!
//! **Stepping down** is done by re-executing this binary with the same arguments: when the lease
//! is lost or the core stops (a fenced or failed write), nothing of the deposed leader's memory,
//! agent streams or pending replies can linger; the fresh process joins again as a follower.
//! The store's fence already guarantees that a deposed leader writes nothing, even in the moment
//! before it notices. On SIGTERM a leader stops its core and revokes its lease, so another server
//! takes over at once instead of after the TTL.

use crate::cli::ServerArgs;
use crate::toolbox::{self, ServerBase};
use anyhow::{anyhow, Context, Result};
use gaffer_ha::{HaConfig, HaError, Member};
use gaffer_server::forward::Follower;
use gaffer_server::http::ServersFn;
use gaffer_server::{Server, ServerOptions};
use gaffer_store::etcd::{EtcdStore, Fence, FenceCond};
use gaffer_store::Store;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tower::ServiceExt;

/// Retries `f` until it succeeds, printing why it waits.
async fn until_ok<T, F, Fut>(what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut tries = 0u32;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            // Waiting does not help a configuration mistake.
            Err(e) if matches!(e.downcast_ref(), Some(HaError::Duplicate { .. })) => return Err(e),
            Err(e) => {
                tries += 1;
                eprintln!("gaffer server: waiting for etcd ({what}, try {tries}): {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// A router that forwards every request to whichever router `current` holds now.
fn switchable(current: Arc<RwLock<axum::Router>>) -> axum::Router {
    axum::Router::new().fallback(move |req: axum::extract::Request| {
        let r = current.read().unwrap_or_else(|p| p.into_inner()).clone();
        async move {
            match r.oneshot(req).await {
                Ok(resp) => resp,
                Err(never) => match never {},
            }
        }
    })
}

/// The router while etcd cannot be reached yet.
fn waiting_router() -> axum::Router {
    use axum::http::{header, StatusCode};
    axum::Router::new().fallback(|| async {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            axum::Json(gaffer_api::views::ErrorBody {
                error: "this gaffer server is waiting for etcd; retry in a moment".into(),
                fields: Vec::new(),
            }),
        )
    })
}

/// Replaces this process with a fresh copy of itself (same arguments), which joins as a follower.
fn step_down(why: &str) -> ! {
    eprintln!("gaffer server: stepping down ({why}); restarting as a follower");
    let exe = c"/proc/self/exe";
    let args: Vec<std::ffi::CString> = std::env::args_os()
        .filter_map(|a| std::ffi::CString::new(a.into_encoded_bytes()).ok())
        .collect();
    let err = nix::unistd::execv(exe, &args).unwrap_err();
    eprintln!("gaffer server: cannot restart itself ({err}); exiting");
    std::process::exit(3);
}

/// `gaffer server --store etcd`.
pub fn server(args: ServerArgs, ca: Option<PathBuf>) -> Result<()> {
    let endpoints = args.store.etcd_endpoints.clone();
    if endpoints.is_empty() {
        return Err(anyhow!(
            "--store etcd needs --etcd-endpoints http://HOST:2379[,...] (or GAFFER_ETCD_ENDPOINTS)"
        ));
    }
    let Some(advertise) = args.advertise.clone() else {
        return Err(anyhow!(
            "--store etcd needs --advertise http://HOST:PORT: the URL other servers, agents and \
             clients reach this server at (followers send agents and API calls there)"
        ));
    };
    if !advertise.starts_with("http://") && !advertise.starts_with("https://") {
        return Err(anyhow!(
            "--advertise must be a URL like http://10.0.0.1:6464, not `{advertise}`"
        ));
    }
    let prefix = args.store.etcd_prefix.trim_end_matches('/').to_string();
    if prefix.is_empty() {
        return Err(anyhow!("--etcd-prefix must not be empty"));
    }
    let base = ServerBase::new(&args)?;
    let http_client = reqwest::Client::builder()
        .tls_backend_preconfigured((*crate::tls::client_config(ca.as_deref())?).clone())
        .connect_timeout(Duration::from_secs(2))
        .build()
        .context("cannot build the HTTP client that forwards calls to the leader")?;
    let ttl = args.lease_ttl.as_std();
    if ttl < Duration::from_secs(1) || ttl.subsec_nanos() != 0 {
        return Err(anyhow!(
            "--lease-ttl must be a whole number of seconds, at least 1s (etcd leases count in \
             seconds), not {ttl:?}; 2s to 5s suits most clusters: a dead leader is replaced \
             after about one TTL"
        ));
    }
    let rt = toolbox::runtime()?;
    let r = rt.block_on(async move {
        let listener = toolbox::bind(args.listen).await?;
        let addr = listener.local_addr()?;
        println!(
            "gaffer server: listening on {addr}, advertised as {advertise}; HA with etcd {} (prefix {prefix}, lease {ttl:?})",
            endpoints.join(",")
        );
        base.warn_open(addr);
        // Serve at once: until etcd answers, every call gets a 503 that says why.
        let current = Arc::new(RwLock::new(waiting_router()));
        let app = switchable(current.clone());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let mut http = tokio::spawn(toolbox::http(listener, app, base.tls.clone(), async move {
            let _ = stop_rx.await;
        }));

        let store_endpoints = endpoints.clone();
        let store_prefix = prefix.clone();
        let store = until_ok("open the store", || {
            let (e, p) = (store_endpoints.clone(), store_prefix.clone());
            async move {
                tokio::task::spawn_blocking(move || EtcdStore::connect(&e, &p))
                    .await?
                    .map_err(anyhow::Error::from)
            }
        })
        .await?;
        let store = Arc::new(store);
        let cfg = HaConfig {
            endpoints: endpoints.clone(),
            prefix: prefix.clone(),
            url: advertise.clone(),
            lease_ttl: ttl,
        };
        let member = until_ok("join", || {
            let cfg = cfg.clone();
            async move { Member::join(cfg).await.map_err(anyhow::Error::from) }
        })
        .await?;
        println!("gaffer server: joined as {}; campaigning for leader", member.id());

        let m = member.clone();
        let cluster: ServersFn = Arc::new(move || {
            let m = m.clone();
            Box::pin(async move { m.servers().await.map_err(|e| e.to_string()) })
        });
        let (url_tx, url_rx) = tokio::sync::watch::channel(None);
        let mut leader_rx = member.leader();
        tokio::spawn(async move {
            loop {
                let l = leader_rx.borrow_and_update().clone();
                if let Some(l) = &l {
                    tracing::info!(leader = %l.id, term = l.term, "leader");
                }
                url_tx.send_replace(l.map(|l| l.url));
                if leader_rx.changed().await.is_err() {
                    return;
                }
            }
        });
        let follower = Server::follower_router(
            store.clone() as Arc<dyn Store>,
            base.data_dir.clone(),
            base.auth.clone(),
            Some(cluster.clone()),
            Follower {
                leader: url_rx,
                own_url: advertise.clone(),
                http: http_client,
            },
        );
        *current.write().unwrap_or_else(|p| p.into_inner()) = follower;
        let core_slot: Arc<std::sync::Mutex<Option<gaffer_server::core::CoreHandle>>> =
            Arc::default();

        let role = {
            let member = member.clone();
            let core_slot = core_slot.clone();
            let data_dir = base.data_dir.clone();
            let auth = base.auth.clone();
            async move {
                let term = tokio::select! {
                    t = member.campaign() => t.map_err(|e| e.to_string())?,
                    _ = member.lease_lost() => return Err("lost the etcd lease".to_string()),
                };
                let t0 = Instant::now();
                store.set_fence(Some(Fence {
                    key: member.leader_key(),
                    cond: FenceCond::CreateRevision(term),
                }));
                println!("gaffer server: elected leader (term {term}); loading the state from etcd");
                let opts = ServerOptions {
                    store: store.clone() as Arc<dyn Store>,
                    data_dir,
                    local_node: None,
                    storage_dir: args.storage_dir.clone(),
                    core: toolbox::core_config(&args),
                    auth,
                    cluster: Some(cluster),
                };
                let mut server = tokio::task::block_in_place(|| Server::start(opts))
                    .map_err(|e| format!("cannot start as leader: {e}"))?;
                *core_slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(server.core.clone());
                *current.write().unwrap_or_else(|p| p.into_inner()) = server.router();
                println!(
                    "gaffer server: leader of term {term}, serving writes ({} ms after winning the election)",
                    t0.elapsed().as_millis()
                );
                let thread = server.take_thread();
                tokio::select! {
                    _ = member.lease_lost() => Err("lost the etcd lease".to_string()),
                    r = toolbox::core_done(thread) => Err(match r {
                        Ok(()) => "the scheduler stopped".to_string(),
                        Err(e) => format!("the scheduler stopped: {e}"),
                    }),
                }
            }
        };
        let outcome: Result<(), String> = tokio::select! {
            r = role => r,
            r = &mut http => Err(match r {
                Ok(Ok(())) => "the HTTP server stopped".to_string(),
                Ok(Err(e)) => format!("the HTTP server failed: {e:#}"),
                Err(e) => format!("the HTTP server panicked: {e}"),
            }),
            _ = toolbox::shutdown_signal() => Ok(()),
        };
        match outcome {
            Ok(()) => {
                eprintln!("gaffer server: shutting down");
                let core = core_slot.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some(core) = core {
                    core.send(gaffer_server::core::Command::Shutdown);
                }
                // Revoking the lease ends the leadership at once; anything the core still
                // tries to write after this is refused by the fence.
                member.resign().await;
                let _ = stop_tx.send(());
                let _ = tokio::time::timeout(Duration::from_secs(2), http).await;
                Ok(())
            }
            Err(why) => {
                if why.contains("scheduler") || why.contains("cannot start") {
                    // Give a persistent failure a pause before campaigning again.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                if !why.contains("lease") {
                    let _ = tokio::time::timeout(Duration::from_secs(2), member.resign()).await;
                }
                step_down(&why)
            }
        }
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    r
}
