//! What the long-running commands share (`gaffer dev`, `gaffer server` on SQLite, and the HA
//! server in [`crate::ha`]): the data-directory lock, tokens and TLS, the runtime, the HTTP
//! serving loop and signal handling.

use crate::cli::ServerArgs;
use anyhow::{anyhow, Context, Result};
use gaffer_server::core::CoreConfig;
use gaffer_server::http::Auth;
use gaffer_server::Server;
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
        // No Nagle: an event stream writes small frames, and Nagle's wait for the client's
        // delayed ACK held them back by about 40 ms.
        None => axum::serve(
            axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            }),
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
pub async fn serve(
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
        cluster_cidr: args.cluster_cidr,
        allow_privileged_ports: args.allow_privileged_ports,
        ..CoreConfig::default()
    }
}
