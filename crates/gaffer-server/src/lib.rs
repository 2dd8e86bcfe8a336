//! The gaffer server: accepts jobs over REST, keeps them durable in a [`Store`], decides where
//! their tasks run and tells agents to run them.
//!
//! Pieces: [`core`] is the single-threaded state machine and scheduling loop (the only writer);
//! [`routes`] is the axum router of [`api`], [`image_api`], [`agent_link`] and [`ui`] (reads go to
//! the store directly; [`http`] is what their handlers share); [`shared`] is what the core
//! publishes for readers; [`gateway`] turns an agent's message stream into core commands. Only
//! the binary wires a server to a listener and to agents.

pub mod agent_link;
pub mod api;
pub mod core;
mod exec_api;
pub mod files;
pub mod forward;
pub mod gateway;
pub mod http;
pub mod image_api;
pub mod images;
pub mod routes;
pub mod shared;
pub mod ui;

use crate::core::{Command, Core, CoreConfig, CoreHandle, LiveEffects};
use crate::files::Files;
use crate::http::AppState;
use crate::shared::Shared;
use gaffer_store::Store;
use std::sync::Arc;
use std::thread::JoinHandle;

/// Errors starting a server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The store could not be opened or loaded.
    #[error("cannot load state: {0}")]
    Store(#[from] gaffer_store::StoreError),
    /// The core thread could not start.
    #[error("cannot start the scheduler thread: {0}")]
    Thread(#[source] std::io::Error),
    /// The image catalog could not be opened.
    #[error("cannot open the image catalog: {0}")]
    Images(#[from] images::ImageError),
}

/// What a server is made of.
pub struct ServerOptions {
    /// Durable state.
    pub store: Arc<dyn Store>,
    /// The server's data directory (outputs copied from agents live under it, and the image
    /// catalog unless `storage_dir` is set).
    pub data_dir: std::path::PathBuf,
    /// A node whose data directory is on this machine, and that directory (`gaffer dev`).
    pub local_node: Option<(String, std::path::PathBuf)>,
    /// A directory shared by all agents (`--storage-dir`), holding `<node>/attempts/...`.
    pub storage_dir: Option<std::path::PathBuf>,
    /// Core settings.
    pub core: CoreConfig,
    /// Tokens.
    pub auth: http::Auth,
    /// HA membership (`GET /v1/servers`); `None` for a single server.
    pub cluster: Option<http::ServersFn>,
}

/// A running server core with its API state.
pub struct Server {
    /// Send commands to the core.
    pub core: CoreHandle,
    /// Published state.
    pub shared: Arc<Shared>,
    store: Arc<dyn Store>,
    files: Files,
    auth: http::Auth,
    cluster: Option<http::ServersFn>,
    thread: Option<JoinHandle<Result<(), String>>>,
    gateway: gateway::Gateway,
    catalog: Option<images::Catalog>,
}

impl Server {
    /// Loads state from `opts.store` and starts the core thread. Must be called inside a
    /// tokio runtime (it starts the task that copies outputs from remote nodes).
    pub fn start(opts: ServerOptions) -> Result<Server, ServerError> {
        let shared = Arc::new(Shared::new());
        let (pull_tx, mut pull_rx) = tokio::sync::mpsc::unbounded_channel::<core::OutputPull>();
        let effects = LiveEffects::new(shared.clone(), pull_tx);
        let core = Core::load(opts.store.clone(), effects, opts.core, gaffer_api::now_ms())?;
        let (tx, rx) = std::sync::mpsc::channel::<Command>();
        let thread = std::thread::Builder::new()
            .name("gaffer-core".into())
            .spawn(move || core::run(core, rx))
            .map_err(ServerError::Thread)?;
        let handle = CoreHandle::new(tx);
        let images_root = opts
            .storage_dir
            .as_deref()
            .unwrap_or(&opts.data_dir)
            .join("images");
        let catalog = images::Catalog::open(images_root)?;
        handle.send(Command::Images(catalog.snapshot()));
        let gateway = gateway::Gateway::new(handle.clone(), Some(catalog.clone()));
        let files = Files::new(
            opts.data_dir.join("outputs"),
            opts.local_node,
            opts.storage_dir,
            gateway.clone(),
        );
        let puller = files.clone();
        tokio::spawn(async move {
            while let Some((node, key, outputs)) = pull_rx.recv().await {
                puller.pull_outputs(&node, key, &outputs).await;
            }
        });
        Ok(Server {
            gateway,
            catalog: Some(catalog),
            core: handle,
            shared,
            store: opts.store,
            files,
            auth: opts.auth,
            cluster: opts.cluster,
            thread: Some(thread),
        })
    }

    /// The HTTP router.
    pub fn router(&self) -> axum::Router {
        routes::router(AppState {
            core: self.core.clone(),
            store: self.store.clone(),
            shared: self.shared.clone(),
            files: self.files.clone(),
            gateway: self.gateway.clone(),
            catalog: self.catalog.clone(),
            auth: self.auth.clone(),
            cluster: self.cluster.clone(),
        })
    }

    /// The API of an HA follower: no core runs; reads the store can answer are answered from
    /// `store`, everything else goes to the leader (see [`forward`]).
    pub fn follower_router(
        store: Arc<dyn Store>,
        data_dir: std::path::PathBuf,
        auth: http::Auth,
        cluster: Option<http::ServersFn>,
        follower: forward::Follower,
    ) -> axum::Router {
        // A core handle whose receiver is gone: nothing a follower answers itself uses it.
        let (tx, _) = std::sync::mpsc::channel::<Command>();
        let core = CoreHandle::new(tx);
        let gateway = gateway::Gateway::new(core.clone(), None);
        let files = Files::new(data_dir.join("outputs"), None, None, gateway.clone());
        forward::router(
            AppState {
                core,
                store,
                shared: Arc::new(Shared::new()),
                files,
                gateway,
                catalog: None,
                auth,
                cluster,
            },
            follower,
        )
    }

    /// Where agents connect.
    pub fn gateway(&self) -> &gateway::Gateway {
        &self.gateway
    }

    /// True while the core runs.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops the core after its current round and waits for it.
    pub fn shutdown(mut self) -> Result<(), String> {
        self.core.send(Command::Shutdown);
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err("the core thread panicked".into())),
            None => Ok(()),
        }
    }

    /// Waits until the core stops on its own (a store failure); returns its error.
    pub fn take_thread(&mut self) -> Option<JoinHandle<Result<(), String>>> {
        self.thread.take()
    }
}
