//! `--help` of the subcommands that ignore the client flags (`--addr`, `--ca`, `--token`,
//! `-o`): `gaffer dev|server|agent|completions --help` shows their own flags only. The client
//! flags stay global for parsing, so `gaffer --addr X jobs` and `gaffer jobs --addr X` both
//! work; only the help text is built apart, from the subcommand's own arguments.

use crate::cli::Cli;
use clap::CommandFactory;
use std::ffi::OsString;

/// Prints the help `args` ask for and exits, when they ask for the help of a subcommand that
/// ignores the client flags; returns otherwise.
pub fn trimmed_help(args: &[OsString]) {
    let words: Vec<&str> = args.iter().skip(1).filter_map(|a| a.to_str()).collect();
    let asks = words.iter().any(|w| *w == "--help" || *w == "-h");
    let Some(sub) = words.first().copied().filter(|_| asks) else {
        return;
    };
    // `gaffer agent image ... --help` is a client of the agent's store: clap's help is right.
    if sub == "agent" && words.get(1).is_some_and(|w| !w.starts_with('-')) {
        return;
    }
    let root = Cli::command();
    let Some(full) = root.find_subcommand(sub) else {
        return;
    };
    // Before it is built, a subcommand holds only its own arguments (the global ones are
    // copied into it when the whole command is built).
    let mut cmd = full.clone().bin_name(format!("gaffer {sub}"));
    match sub {
        "dev" | "agent" | "completions" => {}
        // The server's --ca is the CA it trusts when it forwards to the HA leader.
        "server" => {
            if let Some(ca) = root.get_arguments().find(|a| a.get_id() == "ca") {
                cmd = cmd.arg(ca.clone().global(false));
            }
        }
        _ => return,
    }
    let printed = cmd.print_long_help();
    std::process::exit(if printed.is_ok() { 0 } else { 1 });
}
