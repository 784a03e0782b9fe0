//! The local push service: the README's sequence on a private bus with
//! `server_url = "local"`, endpoints that survive a daemon restart, and the standalone
//! `webpushd-devserver` keeping messages while the daemon, or the server itself, restarts.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use support::*;

async fn pushctl(d: &Daemon, args: &[&str]) -> (i32, String, String) {
    let mut cmd = d.pushctl_command();
    cmd.args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_sequence_works_with_the_local_push_service() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start();
    let mut d = Daemon::start(&bus, dir.path(), "server_url = \"local\"\n").await;

    let (code, out, err) = pushctl(&d, &["subscribe", "demo"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("http://127.0.0.1:"), "{out}");
    let (code, out, err) = pushctl(&d, &["send", "demo", "hello"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("201"), "{out}");
    let msgs = eventually("the message", || async {
        let (_, out, _) = pushctl(&d, &["--json", "messages", "demo"]).await;
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        (v.as_array()?.len() == 1).then_some(v)
    })
    .await;
    assert_eq!(msgs[0]["payload"], "hello");

    // The endpoint survives a restart of the daemon (and of its embedded service).
    let (_, before, _) = pushctl(&d, &["--json", "show", "demo"]).await;
    d.restart(&bus).await;
    let (_, after, _) = pushctl(&d, &["--json", "show", "demo"]).await;
    let endpoint =
        |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap()["endpoint"].clone();
    assert_eq!(endpoint(&before), endpoint(&after));
    let (code, _, err) = pushctl(&d, &["send", "demo", "after restart"]).await;
    assert_eq!(code, 0, "{err}");
}

struct DevServer(Child);

impl DevServer {
    fn start(db: &std::path::Path, ws: &str, http: &str) -> (DevServer, String) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_webpushd-devserver"))
            .args([
                "--db",
                db.to_str().unwrap(),
                "--ws-listen",
                ws,
                "--http-listen",
                http,
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("server_url = \"")
            .and_then(|s| s.strip_suffix('"'))
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        (DevServer(child), url)
    }

    fn stop(mut self) {
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let _ = self.0.wait();
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_wait_in_the_devserver_while_the_daemon_or_the_server_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("devserver.db");
    let (server, url) = DevServer::start(&db, "127.0.0.1:0", "127.0.0.1:0");
    let bus = Bus::start();
    let config = Daemon::config_for(&url, "");
    let mut d = Daemon::start(&bus, dir.path(), &config).await;
    let sub = {
        let app = bus.app("org.example.Dev").await;
        app.subscribe("s").await
    };
    // Ports the server picked, to restart it on the same ones.
    let ws_port = url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let http_port = sub
        .endpoint
        .split('/')
        .nth(2)
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();

    // 1. The daemon is stopped; the message waits in the server.
    d.stop();
    assert_eq!(
        post(&sub, b"sent while the daemon was down").await.status,
        201
    );
    let mut d = Daemon::start(&bus, dir.path(), &config).await;
    let app = bus.app("org.example.Dev").await;
    let got = eventually("the first message", || async {
        let m = app.manager.fetch_messages("s").await.ok()?;
        (!m.is_empty()).then_some(m)
    })
    .await;
    assert_eq!(got[0].1.as_ref(), b"sent while the daemon was down");

    // 2. Daemon down, message sent, then the server itself restarts before delivery.
    d.stop();
    assert_eq!(post(&sub, b"survives a server restart").await.status, 201);
    server.stop();
    let (_server, _) = DevServer::start(
        &db,
        &format!("127.0.0.1:{ws_port}"),
        &format!("127.0.0.1:{http_port}"),
    );
    let _d = Daemon::start(&bus, dir.path(), &config).await;
    let got = eventually("the second message", || async {
        let m = app.manager.fetch_messages("s").await.ok()?;
        (m.len() == 2).then_some(m)
    })
    .await;
    assert_eq!(got[1].1.as_ref(), b"survives a server restart");
}
