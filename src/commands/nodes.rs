//! `gaffer nodes` and `gaffer node drain|enable`.

use super::util::{short_duration, table};
use crate::cli::NodeCommand;
use crate::client::{enc, Client};
use crate::output::Output;
use anyhow::Result;
use gaffer_api::views::NodeView;
use gaffer_api::ByteSize;

/// `gaffer nodes`.
pub fn nodes(c: &Client, out: Output) -> Result<i32> {
    let nodes: Vec<NodeView> = c.get("/v1/nodes")?;
    out.print(&nodes, || print_nodes(&nodes))?;
    Ok(0)
}

/// The human rendering of `gaffer nodes`.
fn print_nodes(nodes: &[NodeView]) {
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            vec![
                n.name.clone(),
                n.address.clone(),
                n.subnet.clone().unwrap_or_else(|| "-".into()),
                n.state.clone(),
                format!("{}/{}", n.cpus_allocated, n.cpus_total),
                format!(
                    "{}/{}",
                    ByteSize(n.memory_allocated),
                    ByteSize(n.memory_total)
                ),
                ByteSize(n.memory_available).to_string(),
                ByteSize(n.memory_free).to_string(),
                n.running_tasks.to_string(),
                format!("{} ago", short_duration(n.heartbeat_age_ms)),
                labels.join(","),
                n.images.join(","),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "ADDRESS",
            "SUBNET",
            "STATE",
            "CPUS ALLOC/TOTAL",
            "MEMORY ALLOC/TOTAL",
            "FREE MEM",
            "HOST FREE",
            "TASKS",
            "HEARTBEAT",
            "LABELS",
            "IMAGES",
        ],
        &rows,
    );
}

/// `gaffer node drain|enable`.
pub fn node(c: &Client, cmd: NodeCommand) -> Result<i32> {
    match cmd {
        NodeCommand::Drain { node, migrate } => {
            let _: serde_json::Value =
                c.post_empty(&format!("/v1/nodes/{}/drain?migrate={migrate}", enc(&node)))?;
            if migrate {
                println!("{node} drained; its running tasks are being moved elsewhere");
            } else {
                println!("{node} drained: no new tasks will be placed there");
            }
        }
        NodeCommand::Enable { node } => {
            let _: serde_json::Value = c.post_empty(&format!("/v1/nodes/{}/enable", enc(&node)))?;
            println!("{node} enabled");
        }
    }
    Ok(0)
}
