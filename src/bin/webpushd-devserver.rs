//! webpushd-devserver: the local push service on its own, for development, demos, tests and
//! air-gapped use. The same server `server_url = "local"` embeds in the daemon; running it
//! apart lets it outlive the daemon (messages POSTed while the daemon is stopped wait here).
//! Not a production push service.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use webpushd::server::{PushServer, ServerOptions};

#[derive(Parser, Debug)]
#[command(
    name = "webpushd-devserver",
    version,
    about = "Local Web Push service (autopush protocol + RFC 8030 endpoint) for development"
)]
struct Args {
    /// Its SQLite database [default: $XDG_STATE_HOME/webpushd/devserver.db]
    #[arg(long, value_name = "FILE")]
    db: Option<PathBuf>,
    /// WebSocket listen address (the daemon's server_url = "ws://ADDR/")
    #[arg(long, default_value = "127.0.0.1:8180", value_name = "ADDR")]
    ws_listen: SocketAddr,
    /// HTTP listen address for push endpoints
    #[arg(long, default_value = "127.0.0.1:8181", value_name = "ADDR")]
    http_listen: SocketAddr,
    /// Allow listening on non-loopback addresses (anyone who can reach them can push)
    #[arg(long)]
    allow_remote: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .finish()
        .with(webpushd::log_filter(
            std::env::var("RUST_LOG").ok().as_deref(),
            "info",
        ))
        .init();
    for addr in [args.ws_listen, args.http_listen] {
        if !addr.ip().is_loopback() {
            if !args.allow_remote {
                eprintln!("webpushd-devserver: {addr} is not a loopback address; pass --allow-remote to listen there");
                return ExitCode::from(2);
            }
            eprintln!("webpushd-devserver: WARNING: listening on {addr}: anyone who can reach it can register and push");
        }
    }
    let db = match args.db {
        Some(p) => p,
        None => match webpushd::config::default_state_dir() {
            Ok(d) => d.join("devserver.db"),
            Err(e) => {
                eprintln!("webpushd-devserver: {e}");
                return ExitCode::from(2);
            }
        },
    };
    if let Some(dir) = db.parent() {
        if let Err(e) = webpushd::store::prepare_dir(dir) {
            eprintln!("webpushd-devserver: {e}");
            return ExitCode::from(1);
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime starts");
    rt.block_on(async move {
        let mut opts = ServerOptions::new(db);
        opts.ws_addr = args.ws_listen;
        opts.http_addr = args.http_listen;
        let server = match PushServer::start(opts).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("webpushd-devserver: {e}");
                return ExitCode::from(1);
            }
        };
        // Whoever started us may stop reading after the first line: never die of EPIPE.
        use std::io::Write;
        let mut out = std::io::stdout();
        let _ = writeln!(out, "server_url = \"{}\"", server.ws_url());
        let _ = writeln!(out, "endpoints at {}", server.http_base());
        let _ = out.flush();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        server.shutdown().await;
        ExitCode::SUCCESS
    })
}
