//! Minimal `/proc` readers used by the shim and by `probe`: the state,
//! parent and start time of a process, and the set of descendants of the
//! current process.
//!
//! Only the few fields we need are parsed. Nothing here sends signals or
//! waits for processes; races with processes exiting mid-read are tolerated by
//! skipping whatever vanished.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::sync::OnceLock;

/// The fields of `/proc/<pid>/stat` this crate cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StatInfo {
    /// Field 3, e.g. `R`, `S`, `Z`.
    pub state: u8,
    /// Field 4.
    pub ppid: i32,
    /// Field 22: start time in clock ticks since boot.
    pub starttime: u64,
}

/// Parse the content of a `/proc/<pid>/stat` file. The command name (field 2)
/// may contain spaces and parentheses, so parsing starts after the last `)`.
pub(crate) fn parse_stat(content: &str) -> Option<StatInfo> {
    let rest = &content[content.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // Fields are numbered from 1; `rest` starts at field 3.
    let state = *fields.next()?.as_bytes().first()?;
    let ppid = fields.next()?.parse().ok()?;
    // Skip fields 5..=21 (17 fields) to reach field 22.
    let starttime = fields.nth(17)?.parse().ok()?;
    Some(StatInfo {
        state,
        ppid,
        starttime,
    })
}

/// Read `/proc/<pid>/stat`; `pid` may also be `"self"`.
pub(crate) fn stat(pid: &str) -> io::Result<StatInfo> {
    let content = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&content).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unparsable /proc/{pid}/stat"),
        )
    })
}

/// Whether `pid` is a live (non-zombie) process that started at `starttime`
/// (which defeats pid reuse).
pub(crate) fn is_alive(pid: i32, starttime: u64) -> bool {
    if pid <= 0 {
        return false;
    }
    match stat(&pid.to_string()) {
        Ok(info) => info.state != b'Z' && info.starttime == starttime,
        Err(_) => false,
    }
}

/// Whether the kernel exposes `/proc/<pid>/task/<tid>/children`
/// (CONFIG_PROC_CHILDREN). Checked once per process.
fn children_files_supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        let me = std::process::id();
        fs::metadata(format!("/proc/{me}/task/{me}/children")).is_ok()
    })
}

/// Direct children of `pid`, from the per-thread `children` files.
fn children_via_task_files(pid: i32, out: &mut Vec<i32>) {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for task in tasks.flatten() {
        let mut path = task.path();
        path.push("children");
        if let Ok(list) = fs::read_to_string(&path) {
            out.extend(
                list.split_ascii_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
}

/// All live descendants of `root` (children, grandchildren, ...), parents
/// before their children. Zombies are included; signalling them is harmless.
pub(crate) fn descendants(root: i32) -> Vec<i32> {
    let mut found = Vec::new();
    if children_files_supported() {
        let mut next = 0;
        children_via_task_files(root, &mut found);
        while next < found.len() {
            let pid = found[next];
            next += 1;
            children_via_task_files(pid, &mut found);
        }
        return found;
    }
    // Fallback: one scan of /proc building a parent -> children map.
    let Ok(entries) = fs::read_dir("/proc") else {
        return found;
    };
    let mut kids: HashMap<i32, Vec<i32>> = HashMap::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Ok(info) = stat(&pid.to_string()) {
            kids.entry(info.ppid).or_default().push(pid);
        }
    }
    let mut next = 0;
    if let Some(direct) = kids.remove(&root) {
        found.extend(direct);
    }
    while next < found.len() {
        let pid = found[next];
        next += 1;
        if let Some(more) = kids.remove(&pid) {
            found.extend(more);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_tricky_comm() {
        let line = "4242 (a) b) (c) S 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let info = parse_stat(line).unwrap();
        assert_eq!(info.state, b'S');
        assert_eq!(info.ppid, 17);
        assert_eq!(info.starttime, 987654);
    }

    #[test]
    fn reads_own_stat() {
        let me = stat("self").unwrap();
        assert!(is_alive(std::process::id() as i32, me.starttime));
        assert!(!is_alive(std::process::id() as i32, me.starttime + 1));
    }
}
