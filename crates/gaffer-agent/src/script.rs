//! A job's batch script and log files on the node: the script is written into the attempt
//! directory (bound read-only at [`CONTAINER_SCRIPT`] in a container) and put in front of the
//! task's arguments; the user's log paths go to the supervisor.

use gaffer_api::batch::{Script, CONTAINER_SCRIPT};
use gaffer_api::proto::TaskLaunch;
use gaffer_runtime::LaunchSpec;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Where a host task's script is kept in its attempt directory.
const SCRIPT_FILE: &str = "script";

/// Sets up `spec` for `l`'s script and log files; the error says what could not be written.
pub(crate) fn apply(dir: &Path, l: &TaskLaunch, spec: &mut LaunchSpec) -> Result<(), String> {
    if let Some(script) = &l.script {
        let path = write(dir, script)?;
        let run_as = match &mut spec.container {
            Some(c) => {
                c.files.push((path, PathBuf::from(CONTAINER_SCRIPT)));
                CONTAINER_SCRIPT.to_string()
            }
            None => path.display().to_string(),
        };
        let mut argv = Vec::with_capacity(l.argv.len() + 2);
        if script.needs_shell() {
            argv.push("/bin/sh".to_string());
        }
        argv.push(run_as);
        argv.extend(l.argv.iter().cloned());
        spec.argv = argv;
    }
    // The agent (root) writes them on the host: only for a host task, as the server checks.
    if spec.container.is_some() && (l.stdout_file.is_some() || l.stderr_file.is_some()) {
        return Err(format!(
            "attempt {}: stdout_file and stderr_file apply to host processes only",
            l.key
        ));
    }
    spec.log_files = gaffer_runtime::LogFiles {
        stdout: l.stdout_file.as_ref().map(PathBuf::from),
        stderr: l.stderr_file.as_ref().map(PathBuf::from),
    };
    Ok(())
}

/// Writes `script` into `dir`, executable, readable by a container's user.
fn write(dir: &Path, script: &Script) -> Result<PathBuf, String> {
    let path = dir.join(SCRIPT_FILE);
    let cannot = |e: std::io::Error| format!("cannot write the script to {}: {e}", path.display());
    std::fs::create_dir_all(dir).map_err(cannot)?;
    std::fs::write(&path, &script.body).map_err(cannot)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).map_err(cannot)?;
    Ok(path)
}
