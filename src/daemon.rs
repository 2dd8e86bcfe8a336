//! The long-running commands: `gaffer dev` (server + local agent in one process), `gaffer
//! server` and `gaffer agent`. They share the data-directory lock, the HTTP serving loop and
//! signal handling.

use crate::cli::{AgentArgs, DevArgs, ServerArgs, StoreKind};
use anyhow::{anyhow, Context, Result};
use gaffer_agent::{Agent, AgentConfig};
use gaffer_server::api::Auth;
use gaffer_server::core::CoreConfig;
use gaffer_server::{Server, ServerOptions};
use gaffer_store::sqlite::SqliteStore;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// This host's name, the default node name.
pub fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".into())
}

/// Takes an exclusive lock on a data directory so two processes never share it.
pub fn lock_data_dir(dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    let path = dir.join("lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        anyhow!(
            "{} is in use by another gaffer process ({e}); stop it or pass another --data-dir",
            dir.display()
        )
    })
}

pub fn prepare_dir(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    Ok(std::fs::canonicalize(dir)?)
}

/// Reads a secret from a file (trimmed); refuses an empty one.
pub fn read_token(path: &Path) -> Result<String> {
    let t = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the token file {}", path.display()))?;
    let t = t.trim().to_string();
    if t.is_empty() {
        return Err(anyhow!("the token file {} is empty", path.display()));
    }
    Ok(t)
}

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return ctrl_c.await.unwrap_or(()),
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

/// Serves `app` on `listener` (HTTPS with `tls`) until `stop` resolves.
pub async fn http(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    match tls {
        Some(cfg) => crate::tls::serve(listener, app, cfg, stop).await,
        None => axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(stop)
        .await
        .context("the HTTP server failed"),
    }
}

/// Waits for the core thread to end; its error, or that it panicked.
pub async fn core_done(
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
) -> Result<(), String> {
    match thread {
        Some(t) => tokio::task::spawn_blocking(move || t.join())
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or_else(|| Err("the core thread panicked".into())),
        None => Ok(()),
    }
}

/// Serves the API until a signal, or until the core stops on its own (a store failure).
async fn serve(
    mut server: Server,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<()> {
    let core_thread = server.take_thread();
    tokio::select! {
        r = http(listener, server.router(), tls, shutdown_signal()) => r?,
        r = core_done(core_thread) => {
            r.map_err(|e| anyhow!("the scheduler stopped: {e}"))?;
        }
    }
    eprintln!("gaffer: shutting down");
    server.core.send(gaffer_server::core::Command::Shutdown);
    Ok(())
}

pub async fn bind(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} (is another gaffer running? use --listen)")
    })
}

/// `gaffer dev`.
pub fn dev(args: DevArgs) -> Result<()> {
    let data_dir = prepare_dir(&args.data_dir)?;
    let _lock = lock_data_dir(&data_dir)?;
    let db = data_dir.join("state.db");
    let store =
        Arc::new(SqliteStore::open(&db).with_context(|| format!("cannot open {}", db.display()))?);
    let node = host_name();
    let agent_dir = data_dir.join("agent");
    let rt = runtime()?;
    rt.block_on(async move {
        let server = Server::start(ServerOptions {
            store,
            data_dir: data_dir.clone(),
            local_node: Some((node.clone(), agent_dir.clone())),
            storage_dir: None,
            core: CoreConfig::default(),
            auth: Auth::default(),
            cluster: None,
        })?;
        let listener = bind(args.listen).await?;
        let exe = std::env::current_exe()
            .context("cannot find this executable for the task supervisor")?;
        let mut cfg = AgentConfig::for_this_host(node.clone(), agent_dir, exe);
        cfg.allow_host_tasks = true;
        if let Some(c) = args.cpus {
            cfg.cpus = c;
        }
        if let Some(m) = args.memory {
            cfg.memory = m.0;
        }
        let (up, down) = server.gateway().connect_local();
        let agent = tokio::spawn(gaffer_agent::run(cfg.clone(), up, down));
        let addr = listener.local_addr()?;
        println!(
            "gaffer dev: server and agent `{node}` ({} cpus, {}) running",
            cfg.cpus,
            gaffer_api::ByteSize(cfg.memory)
        );
        println!("  API      http://{addr}/v1   (export GAFFER_ADDR=http://{addr})");
        println!("  Web UI   http://{addr}/");
        println!("  data     {}", data_dir.display());
        println!(
            "Stop with Ctrl-C. Running tasks keep running and are picked up again on restart."
        );
        let r = serve(server, listener, None).await;
        agent.abort();
        r
    })?;
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    Ok(())
}

/// What `gaffer server` needs whatever its store: the locked data directory, tokens and TLS.
pub struct ServerBase {
    /// Canonical data directory.
    pub data_dir: PathBuf,
    /// Held for the process's life.
    pub _lock: nix::fcntl::Flock<std::fs::File>,
    /// Tokens.
    pub auth: Auth,
    /// HTTPS settings.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl ServerBase {
    /// Locks the data directory and reads the tokens and TLS files.
    pub fn new(args: &ServerArgs) -> Result<Self> {
        let data_dir = prepare_dir(&args.data_dir)?;
        let lock = lock_data_dir(&data_dir)?;
        let auth = Auth {
            api_token: args.token_file.as_deref().map(read_token).transpose()?,
            join_token: args
                .join_token_file
                .as_deref()
                .map(read_token)
                .transpose()?,
        };
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(c), Some(k)) => Some(crate::tls::server_config(c, k)?),
            (None, None) => None,
            _ => return Err(anyhow!("--tls-cert and --tls-key go together")),
        };
        Ok(ServerBase {
            data_dir,
            _lock: lock,
            auth,
            tls,
        })
    }

    /// Prints the warnings about open access.
    pub fn warn_open(&self, addr: std::net::SocketAddr) {
        if self.auth.api_token.is_none() {
            println!(
                "  warning: no --token-file: anyone who can reach {addr} can submit and kill jobs"
            );
        }
        if self.auth.join_token.is_none() {
            println!("  warning: no --join-token-file: any agent that can reach {addr} may join");
        }
    }
}

/// Core settings from the server's flags.
pub fn core_config(args: &ServerArgs) -> CoreConfig {
    CoreConfig {
        strategy: match args.strategy {
            gaffer_api::Placement::MostFreeMemory => gaffer_sched::Strategy::MostFreeMemory,
            gaffer_api::Placement::Binpack => gaffer_sched::Strategy::Binpack,
            gaffer_api::Placement::Spread => gaffer_sched::Strategy::Spread,
        },
        heartbeat_timeout: args.heartbeat_timeout.as_std(),
        max_lost: args.max_lost,
    }
}

/// `gaffer server`.
pub fn server(args: ServerArgs, ca: Option<PathBuf>) -> Result<()> {
    if args.store.kind == StoreKind::Etcd {
        return crate::ha::server(args, ca);
    }
    if args.advertise.is_some() {
        return Err(anyhow!(
            "--advertise is for HA servers: add --store etcd --etcd-endpoints URL,..."
        ));
    }
    let base = ServerBase::new(&args)?;
    let db = base.data_dir.join("state.db");
    let store =
        Arc::new(SqliteStore::open(&db).with_context(|| format!("cannot open {}", db.display()))?);
    let scheme = if base.tls.is_some() { "https" } else { "http" };
    let rt = runtime()?;
    rt.block_on(async move {
        let server = Server::start(ServerOptions {
            store,
            data_dir: base.data_dir.clone(),
            local_node: None,
            storage_dir: args.storage_dir.clone(),
            core: core_config(&args),
            auth: base.auth.clone(),
            cluster: None,
        })?;
        let listener = bind(args.listen).await?;
        let addr = listener.local_addr()?;
        println!(
            "gaffer server: listening on {scheme}://{addr} (data in {})",
            base.data_dir.display()
        );
        base.warn_open(addr);
        serve(server, listener, base.tls.clone()).await
    })?;
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    Ok(())
}

/// `gaffer agent`.
pub fn agent(args: AgentArgs) -> Result<()> {
    let data_dir = prepare_dir(&args.data_dir)?;
    let _lock = lock_data_dir(&data_dir)?;
    let name = args.name.clone().unwrap_or_else(host_name);
    if !gaffer_api::spec::valid_label(&name) {
        return Err(anyhow!(
            "node name `{name}` must be 1 to 63 letters, digits, `-`, `_`, `.` or `/`"
        ));
    }
    let exe =
        std::env::current_exe().context("cannot find this executable for the task supervisor")?;
    let attempts_root = match &args.storage_dir {
        Some(s) => s.join(&name),
        None => data_dir.clone(),
    };
    let mut cfg = AgentConfig::for_this_host(name.clone(), attempts_root, exe);
    cfg.allow_host_tasks = args.allow_host_tasks;
    cfg.labels = args.labels.iter().cloned().collect();
    if let Some(c) = args.cpus {
        cfg.cpus = c;
    }
    if let Some(m) = args.memory {
        cfg.memory = m.0;
    }
    let token = args
        .join_token_file
        .as_deref()
        .map(read_token)
        .transpose()?;
    let wants_tls = args.ca.is_some()
        || args
            .server
            .iter()
            .any(|s| s.starts_with("https://") || s.starts_with("wss://"));
    let tls = if wants_tls {
        Some(crate::tls::client_config(args.ca.as_deref())?)
    } else {
        None
    };
    let agent = Agent::open(cfg.clone())?;
    let servers = args.server.clone();
    let rt = runtime()?;
    rt.block_on(async move {
        println!(
            "gaffer agent `{name}`: {} cpus, {}, labels {:?}; server {}",
            cfg.cpus,
            gaffer_api::ByteSize(cfg.memory),
            cfg.labels,
            servers.join(", ")
        );
        tokio::select! {
            _ = gaffer_agent::remote::run_remote(agent, servers, token, tls) => {}
            _ = shutdown_signal() => {
                eprintln!("gaffer agent: stopping; running tasks keep running and are re-attached on restart");
            }
        }
    });
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    Ok(())
}
