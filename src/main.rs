//! The `gaffer` binary: the CLI, `gaffer dev`, and the hidden `gaffer shim` task supervisor.
//! It is the only place that wires the crates together.

mod admin;
mod cli;
mod cli_accounting;
mod cli_help;
mod cli_images;
mod cli_submit;
mod client;
mod commands;
mod daemon;
mod directives;
mod ha;
mod images;
mod output;
mod tls;
mod toolbox;

use cli::{Cli, Command};

fn main() {
    // The shim must start before any thread exists (it blocks signals and forks): handle it
    // before clap, logging or the async runtime.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.len() == 3 && args[1] == "shim" {
        std::process::exit(gaffer_runtime::shim_main(std::path::Path::new(&args[2])));
    }
    cli_help::trimmed_help(&args);
    let cli = <Cli as clap::Parser>::parse();
    if let Err(e) = cli.format.check(&cli.command) {
        e.exit();
    }
    let daemon = matches!(
        &cli.command,
        Command::Dev(_) | Command::Server(_) | Command::Agent(cli::AgentArgs { command: None, .. })
    );
    if !daemon {
        // A CLI piped into `head` should end quietly, as Unix tools do.
        // SAFETY: restoring the default disposition of SIGPIPE before any thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    if daemon {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("GAFFER_LOG")
                    .unwrap_or_else(|_| "info".into()),
            )
            .with_writer(std::io::stderr)
            // Colours for a terminal only: not in log files and journals.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    // `gaffer wait` tells a failed job (1) from no answer at all (3) by its exit status.
    let waits = matches!(&cli.command, Command::Wait(_));
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let mut msg = format!("{e}");
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(&format!(": {c}"));
                }
            }
            eprintln!("gaffer: {msg}");
            if waits {
                3
            } else {
                1
            }
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    let c = client::Client::new(&cli.addr, cli.token.clone(), cli.ca.as_deref())?;
    // `-o`, read once: commands print through it and never look at the format.
    let out = output::Output::from(cli.format);
    match cli.command {
        Command::Dev(a) => daemon::dev(a).map(|_| 0),
        Command::Server(a) => daemon::server(a, cli.ca.clone()).map(|_| 0),
        Command::Agent(a) => match a.command {
            Some(cli_images::AgentCommand::Image(i)) => images::agent_image(out, i),
            None => daemon::agent(a).map(|_| 0),
        },
        Command::Node(n) => commands::node(&c, n),
        Command::Image(i) => images::image(&c, out, i),
        Command::Submit(a) => commands::submit(&c, out, *a),
        Command::Jobs(a) => commands::jobs(&c, out, a),
        Command::Status(a) => commands::status(&c, out, a),
        Command::Logs(a) => commands::logs(&c, a),
        Command::Kill(a) => commands::kill(&c, out, a),
        Command::Wait(a) => commands::wait(&c, out, a),
        Command::History(a) => commands::history(&c, out, a, cli.format == cli::Format::Csv),
        Command::Retry(a) => commands::retry(&c, out, a),
        Command::Hold(a) => commands::hold(&c, out, a, true),
        Command::Release(a) => commands::hold(&c, out, a, false),
        Command::Rm(a) => commands::rm(&c, a),
        Command::Output(a) => commands::output(&c, out, a),
        Command::Nodes => commands::nodes(&c, out),
        Command::Servers => commands::servers(&c, out),
        Command::Events(a) => commands::events(&c, out, a),
        Command::Exec(a) => commands::exec(&cli.addr, cli.token.as_deref(), cli.ca.as_deref(), a),
        Command::Admin(a) => admin::run(out, a),
        Command::Shim { dir } => Ok(gaffer_runtime::shim_main(&dir)),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "gaffer", &mut std::io::stdout());
            Ok(0)
        }
    }
}
