//! pushctl: manage webpushd and play an application server, for people and scripts.
//!
//! Talks to the daemon only through its public D-Bus interfaces. Exit codes: 0 ok,
//! 1 failure, 2 usage. Every failure is one line on standard error that says what went
//! wrong and, where it can, what to do.
//!
//! The modules, by concern: `args` (the command line), `commands` (one function per
//! command, talking to the daemon), `monitor` (the `monitor` command's event loop),
//! `send` (the application-server side of `send`), `output` (human and `--json`
//! printing) and `errors` (one-line error messages).

mod args;
mod commands;
mod errors;
mod monitor;
mod output;
mod send;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};

use crate::args::{is_url, Cli, Cmd};
use crate::errors::one_line;
use crate::output::{line, Out};

fn main() -> ExitCode {
    let cli = Cli::parse();
    check_usage(&cli);
    if let Cmd::Completions { shell } = cli.command {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "pushctl", &mut script);
        line(String::from_utf8_lossy(&script).trim_end());
        return ExitCode::SUCCESS;
    }
    let out = Out {
        json: cli.json,
        color: std::io::stdout().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime starts");
    match rt.block_on(commands::run(cli, &out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = std::io::stdout().flush();
            eprintln!("pushctl: {}", one_line(&e));
            ExitCode::from(1)
        }
    }
}

/// Usage mistakes clap cannot see: exit 2 with clap's usage message.
fn check_usage(cli: &Cli) {
    if let Cmd::Send(a) = &cli.command {
        if a.p256dh.is_some() && !is_url(&a.target) {
            let mut cmd = Cli::command();
            cmd.build();
            let send = cmd
                .find_subcommand_mut("send")
                .expect("send is a subcommand");
            send.error(
                ErrorKind::ArgumentConflict,
                "--p256dh and --auth go with an endpoint URL; for a SCOPE the daemon gives the keys",
            )
            .exit();
        }
    }
}
