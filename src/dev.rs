//! `gaffer dev`: a server and one local agent in one process, state in an SQLite file.

use crate::cli::DevArgs;
use anyhow::{anyhow, Context, Result};
use gaffer_agent::AgentConfig;
use gaffer_server::core::CoreConfig;
use gaffer_server::{Server, ServerOptions};
use gaffer_store::sqlite::SqliteStore;
use std::sync::Arc;

fn node_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".into())
}

/// Takes an exclusive lock on the data directory so two servers never share it.
fn lock_data_dir(dir: &std::path::Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
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

/// Runs until Ctrl-C / SIGTERM.
pub fn run(args: DevArgs) -> Result<()> {
    std::fs::create_dir_all(&args.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            args.data_dir.display()
        )
    })?;
    let data_dir = std::fs::canonicalize(&args.data_dir)?;
    let _lock = lock_data_dir(&data_dir)?;
    let db = data_dir.join("state.db");
    let store =
        Arc::new(SqliteStore::open(&db).with_context(|| format!("cannot open {}", db.display()))?);
    let node = node_name();
    let agent_dir = data_dir.join("agent");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let mut server = Server::start(ServerOptions {
            store,
            data_dir: data_dir.clone(),
            local_node: Some((node.clone(), agent_dir.clone())),
            storage_dir: None,
            core: CoreConfig::default(),
        })?;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} (is another gaffer running? use --listen)",
                    args.listen
                )
            })?;
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
        let core_thread = server.take_thread();
        let core_done = async move {
            match core_thread {
                Some(t) => tokio::task::spawn_blocking(move || t.join())
                    .await
                    .ok()
                    .and_then(|r| r.ok())
                    .unwrap_or_else(|| Err("the core thread panicked".into())),
                None => Ok(()),
            }
        };
        let app = server.router();
        let serve = axum::serve(listener, app).with_graceful_shutdown(shutdown_signal());
        tokio::select! {
            r = serve => r.context("the HTTP server failed")?,
            r = core_done => {
                r.map_err(|e| anyhow!("the scheduler stopped: {e}"))?;
            }
        }
        eprintln!("gaffer dev: shutting down");
        agent.abort();
        server.core.send(gaffer_server::core::Command::Shutdown);
        Ok::<(), anyhow::Error>(())
    })?;
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    Ok(())
}

async fn shutdown_signal() {
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
