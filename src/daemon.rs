//! The long-running commands: `gaffer dev` (server + local agent in one process), `gaffer
//! server` (on SQLite here, on etcd in [`crate::ha`]) and `gaffer agent`. What they share is in
//! [`crate::toolbox`].

use crate::cli::{AgentArgs, DevArgs, ServerArgs, StoreKind};
use anyhow::{anyhow, Context, Result};
use gaffer_agent::{Agent, AgentConfig};
use gaffer_server::core::CoreConfig;
use gaffer_server::http::Auth;
use gaffer_server::{Server, ServerOptions};
use gaffer_store::sqlite::SqliteStore;
use std::path::PathBuf;
use std::sync::Arc;

use crate::toolbox::{
    bind, core_config, host_name, lock_data_dir, prepare_dir, read_token, runtime, serve,
    shutdown_signal, ServerBase,
};

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
            core: CoreConfig {
                cluster_cidr: args.cluster_cidr,
                ..CoreConfig::default()
            },
            auth: Auth::default(),
            cluster: None,
        })?;
        let listener = bind(args.listen).await?;
        let exe = std::env::current_exe()
            .context("cannot find this executable for the task supervisor")?;
        let mut cfg = AgentConfig::for_this_host(node.clone(), agent_dir, exe);
        cfg.allow_host_tasks = true;
        cfg.allow_mounts = absolute(&args.allow_mounts)?;
        cfg.bridge = bridge_of(&args.bridge, cfg.containers);
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
    if let Some(s) = &args.storage_dir {
        cfg.shared_root = s.join("shared");
        cfg.shared_storage = true;
    }
    cfg.allow_host_tasks = args.allow_host_tasks;
    cfg.allow_mounts = absolute(&args.allow_mounts)?;
    if args.cleanup_network {
        return cleanup_network(&cfg, &args.bridge.bridge);
    }
    cfg.bridge = bridge_of(&args.bridge, cfg.containers);
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

/// The bridge an agent offers: none with `--no-bridge`, where it runs no containers, or where
/// nftables cannot be used (the bridge needs it for masquerade and ports; said in a warning).
fn bridge_of(args: &crate::cli::BridgeArgs, containers: bool) -> Option<String> {
    if !containers || args.no_bridge {
        return None;
    }
    if let Err(e) = gaffer_net::nft::table_exists(gaffer_net::nft::DEFAULT_TABLE) {
        tracing::warn!(error = %e, "this node offers no bridge network (container tasks get the host's network unless they ask for bridge); pass --no-bridge to silence this");
        return None;
    }
    Some(args.bridge.clone())
}

/// The `--allow-mount` directories, made absolute; each must exist.
fn absolute(dirs: &[std::path::PathBuf]) -> Result<Vec<std::path::PathBuf>> {
    dirs.iter()
        .map(|d| {
            std::fs::canonicalize(d)
                .with_context(|| format!("--allow-mount {}: no such directory", d.display()))
        })
        .collect()
}

/// `gaffer agent --cleanup-network`: removes every trace of the bridge network on this machine.
fn cleanup_network(cfg: &AgentConfig, bridge: &str) -> Result<()> {
    let net = gaffer_agent::net::BridgeNet::new(&cfg.name, &cfg.data_dir, bridge);
    net.remove_all()
        .context("cannot remove the bridge network")?;
    gaffer_net::nft::delete_table(gaffer_net::nft::DEFAULT_TABLE)
        .context("cannot remove the nftables table")?;
    println!("removed the bridge network ({bridge}, its routes, namespaces and veths of {}, nftables table inet {})", cfg.data_dir.display(), gaffer_net::nft::DEFAULT_TABLE);
    Ok(())
}
