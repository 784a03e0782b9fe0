//! The webpushd daemon: flags, logging, signals — then `webpushd::daemon::run`.

use std::io::IsTerminal;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::prelude::*;
use webpushd::config::{Config, Overrides};

/// Per-user Web Push daemon: one push-server connection for every desktop app, over D-Bus.
#[derive(Parser, Debug)]
#[command(name = "webpushd", version, about)]
struct Args {
    /// Configuration file [default: $XDG_CONFIG_HOME/webpushd/config.toml]
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// State directory [default: $XDG_STATE_HOME/webpushd]
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Push server: a wss:// URL, or "local" for the embedded local push service
    #[arg(long, value_name = "URL")]
    server_url: Option<String>,
    /// More logging (-v debug, -vv trace)
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

/// Whether stderr is connected to the journal (systemd sets JOURNAL_STREAM=dev:ino).
fn stderr_is_journal() -> bool {
    let Ok(v) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

fn init_logging(config: &Config) {
    let default = format!("warn,webpushd={}", config.log.level.as_str());
    let filter = webpushd::log_filter(std::env::var("RUST_LOG").ok().as_deref(), &default);
    if stderr_is_journal() {
        if let Ok(journald) = tracing_journald::layer() {
            tracing_subscriber::registry()
                .with(filter)
                .with(journald)
                .init();
            return;
        }
    }
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .finish()
        .with(filter)
        .init();
}

fn main() -> ExitCode {
    let args = Args::parse();
    let overrides = Overrides {
        config_file: args.config,
        state_dir: args.state_dir,
        server_url: args.server_url,
        verbose: args.verbose,
    }
    .with_env();
    let config = match Config::load(&overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("webpushd: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);

    // One thread runs everything: the connection, the owner loop and the buses. A message
    // crosses those tasks in turn, never in parallel, and at a desktop's rates a second
    // worker only adds wake-ups (twice the context switches per message); SQLite's WAL
    // checkpoint has a thread of its own.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("webpushd: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let signals = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let (Ok(mut term), Ok(mut int)) = (
                    signal(SignalKind::terminate()),
                    signal(SignalKind::interrupt()),
                ) else {
                    return;
                };
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                shutdown.cancel();
            })
        };
        let result = webpushd::daemon::run(config, shutdown).await;
        signals.abort();
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("webpushd: {e}");
                ExitCode::from(1)
            }
        }
    })
}
