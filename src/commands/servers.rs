//! `gaffer servers`.

use super::util::{short_duration, table};
use crate::client::Client;
use crate::output::Output;
use anyhow::Result;
use gaffer_api::now_ms;
use gaffer_api::views::ServersView;

/// `gaffer servers`.
pub fn servers(c: &Client, out: Output) -> Result<i32> {
    let v: ServersView = c.get("/v1/servers")?;
    out.print(&v, || print_servers(&v))?;
    Ok(0)
}

/// The human rendering of `gaffer servers`.
fn print_servers(v: &ServersView) {
    let now = now_ms();
    let rows: Vec<Vec<String>> = v
        .servers
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                s.url.clone(),
                if s.leader { "leader" } else { "follower" }.to_string(),
                format!("{} ago", short_duration(now.saturating_sub(s.since))),
            ]
        })
        .collect();
    table(&["ID", "URL", "ROLE", "JOINED"], &rows);
    match (&v.leader, v.term) {
        (Some(l), Some(t)) => println!("leader {l}, term {t} (answered by {})", v.answered_by),
        _ => println!(
            "no leader elected right now (answered by {}); an election takes up to the lease TTL",
            v.answered_by
        ),
    }
}
