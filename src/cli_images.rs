//! The flags of `gaffer image` and `gaffer agent image` (run in [`crate::images`]).

use clap::{Args, Subcommand};
use std::path::PathBuf;

/// What to pull from a registry, and as what.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// Image reference: [REGISTRY/]REPOSITORY[:TAG|@DIGEST] (Docker Hub when no registry).
    pub reference: String,
    /// Name to store it as (default: the last component of the repository).
    #[arg(long)]
    pub name: Option<String>,
    /// Talk plain HTTP to the registry (for a local test registry).
    #[arg(long)]
    pub insecure: bool,
}

/// `gaffer image ...`: the cluster's images, through the server.
#[derive(Debug, Subcommand)]
#[command(
    after_help = "Images imported here are kept by the server and fetched by each node when a task \
needs them. For a node that cannot reach the server's catalog, import on the node itself with \
`gaffer agent image import`."
)]
pub enum ImageCommand {
    /// Upload an image to the server: a rootfs tarball (.tar, .tar.gz, .tar.zst), a `docker save`
    /// tarball, or an OCI image layout (directory or tar). Nodes fetch it when a task needs it.
    #[command(
        after_help = "Examples:\n  gaffer image import busybox busybox-rootfs.tar.gz\n  \
gaffer image import app app.docker.tar --all-nodes\n  gaffer image import tools ./oci-layout/"
    )]
    Import {
        /// Image name: 1 to 128 of a-z 0-9 . _ - (what tasks give with --image).
        name: String,
        /// The file or directory to import.
        path: PathBuf,
        /// Have every connected node fetch it now, not when a task first needs it.
        #[arg(long)]
        all_nodes: bool,
    },
    /// Ask every node of the cluster to pull an image from an OCI registry (anonymously), e.g.
    /// `gaffer image pull debian:12` or `gaffer image pull --insecure 127.0.0.1:5000/team/tool:1`.
    Pull {
        #[command(flatten)]
        what: PullArgs,
        /// Every node pulls (the default; kept for scripts written before it was).
        #[arg(long, hide = true)]
        all_nodes: bool,
    },
    /// List the cluster's images: size, digest, and the nodes that hold each.
    Ls,
    /// Remove an image from the server's catalog, and from the nodes that fetched it.
    Rm {
        /// Image name.
        name: String,
    },
}

/// `gaffer agent image ...`: the image store of one agent, on its own machine.
#[derive(Debug, Subcommand)]
pub enum AgentImageCommand {
    /// Import an image into this machine's agent, without the server (for offline nodes): a
    /// rootfs tarball (.tar, .tar.gz, .tar.zst), a `docker save` tarball or an OCI layout.
    Import {
        /// Image name: 1 to 128 of a-z 0-9 . _ -.
        name: String,
        /// The file or directory to import.
        path: PathBuf,
        /// The agent's data directory (`gaffer dev`: .gaffer/agent).
        #[arg(long, default_value = ".gaffer-agent")]
        data_dir: PathBuf,
    },
    /// Pull an image from an OCI registry into this machine's agent. Picks the linux image for
    /// this machine's architecture from a multi-platform index.
    Pull {
        #[command(flatten)]
        what: PullArgs,
        /// The agent's data directory (`gaffer dev`: .gaffer/agent).
        #[arg(long, default_value = ".gaffer-agent")]
        data_dir: PathBuf,
    },
    /// List the images of this machine's agent.
    Ls {
        /// The agent's data directory (`gaffer dev`: .gaffer/agent).
        #[arg(long, default_value = ".gaffer-agent")]
        data_dir: PathBuf,
    },
    /// Remove an image from this machine's agent.
    Rm {
        /// Image name.
        name: String,
        /// The agent's data directory (`gaffer dev`: .gaffer/agent).
        #[arg(long, default_value = ".gaffer-agent")]
        data_dir: PathBuf,
    },
}

/// `gaffer agent <COMMAND>`: tools for the agent's own machine.
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// The image store of the agent on this machine (offline nodes; the cluster's images are
    /// `gaffer image`).
    #[command(subcommand)]
    Image(AgentImageCommand),
}
