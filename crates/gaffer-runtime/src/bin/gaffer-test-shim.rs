//! Test helper binary: `gaffer-test-shim shim <dir>` runs the shim exactly as
//! the real `gaffer shim <dir>` subcommand would. It exists only so the
//! integration tests have an executable to spawn; it does nothing else.

use std::path::Path;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 3 && args[1] == "shim" {
        std::process::exit(gaffer_runtime::shim_main(Path::new(&args[2])));
    }
    eprintln!("usage: gaffer-test-shim shim <attempt-dir>");
    std::process::exit(2);
}
