//! pushctl end to end: the real binary against the real daemon on a private bus, with the
//! project's push server in this process. What is checked is what a user or a script sees:
//! exit codes, one-line errors, aligned tables, and `--json` parsed back.
//!
//! pushctl runs as a child process on a blocking thread: `send` needs the push server, which
//! lives in this test's runtime, to answer while pushctl waits.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Instant;

use serde_json::Value as Json;
use support::*;
use webpushd::crypto;
use webpushd::vapid::VapidKey;

const PUSHCTL: &str = env!("CARGO_BIN_EXE_pushctl");
const NOT_RUNNING: &str = "webpushd is not running: systemctl --user start webpushd";

/// How to run pushctl against one world's bus (the environment of `Daemon::pushctl`, plus
/// a time limit and standard input).
#[derive(Clone)]
struct Ctl {
    bus: Option<String>,
    home: PathBuf,
    app_id: Option<String>,
}

impl Ctl {
    fn of(w: &World) -> Ctl {
        Ctl {
            bus: Some(w.bus.address.clone()),
            home: w.daemon.home.clone(),
            app_id: None,
        }
    }

    /// No session bus at all.
    fn busless() -> Ctl {
        Ctl {
            bus: None,
            home: std::env::temp_dir(),
            app_id: None,
        }
    }

    /// The same, with `--app-id ID` on every command line.
    fn app(&self, id: &str) -> Ctl {
        Ctl {
            app_id: Some(id.to_string()),
            ..self.clone()
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(PUSHCTL);
        if let Some(id) = &self.app_id {
            cmd.args(["--app-id", id]);
        }
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("NO_COLOR", "1");
        if let Some(bus) = &self.bus {
            cmd.env("DBUS_SESSION_BUS_ADDRESS", bus);
        }
        cmd
    }

    async fn run(&self, args: &[&str]) -> Output {
        self.run_with_input(args, None).await
    }

    async fn run_with_input(&self, args: &[&str], input: Option<Vec<u8>>) -> Output {
        let mut cmd = self.command(args);
        let what = args.join(" ");
        tokio::task::spawn_blocking(move || {
            cmd.stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
            let mut child = cmd.spawn().expect("pushctl starts");
            if let Some(data) = input {
                let mut stdin = child.stdin.take().unwrap();
                std::thread::spawn(move || {
                    let _ = stdin.write_all(&data);
                });
            }
            finish(child, &what)
        })
        .await
        .unwrap()
    }

    /// Run, expect exit 0, return standard output.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        ok_text(&out, args)
    }

    /// Run with `--json`, expect exit 0, parse standard output.
    async fn json(&self, args: &[&str]) -> Json {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let text = self.ok(&all).await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("pushctl {all:?}: {e}:\n{text}"))
    }

    /// Run, expect exit `code` and exactly one line on standard error; return that line.
    async fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args).await;
        fail_line(&out, args, code)
    }

    /// Wait until the daemon says it is connected. (Through Status, not a cached
    /// property: a zbus cache filled while the state changes can stay stale.)
    async fn connected(&self) {
        eventually("the daemon to connect", || async {
            (self.json(&["status"]).await["state"] == "connected").then_some(())
        })
        .await;
    }

    /// The pending messages of `scope`, once there are `n` (delivery is asynchronous: the
    /// push server's 201 comes before the daemon has the message).
    async fn messages(&self, scope: &str, n: usize) -> Vec<Json> {
        let what = format!("{n} pending messages for {scope}");
        eventually(&what, || async move {
            let j = self.json(&["messages", scope]).await;
            let v = j.as_array().unwrap().clone();
            (v.len() >= n).then_some(v)
        })
        .await
    }
}

fn ok_text(out: &Output, args: &[&str]) -> String {
    assert!(
        out.status.success(),
        "pushctl {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("pushctl prints UTF-8")
}

fn fail_line(out: &Output, args: &[&str], code: i32) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(code),
        "pushctl {args:?}: wanted exit {code}:\nstdout: {}\nstderr: {stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        stderr.lines().count(),
        1,
        "pushctl {args:?}: an error is one line:\n{stderr}"
    );
    stderr.trim_end().to_string()
}

/// Wait for a child with a time limit, collecting its output.
fn finish(mut child: Child, what: &str) -> Output {
    let stdout = child.stdout.take();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(mut stdout) = stdout {
            let _ = stdout.read_to_end(&mut v);
        }
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("pushctl {what} did not finish within {WAIT:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn b64(j: &Json) -> Vec<u8> {
    crypto::b64(j.as_str().expect("a base64url string")).expect("valid base64url")
}

/// The subscription a `--json subscribe`/`show` printed, as the harness's `Sub`.
fn sub_of(j: &Json) -> Sub {
    Sub {
        path: zbus::zvariant::OwnedObjectPath::try_from(j["path"].as_str().unwrap().to_string())
            .unwrap(),
        endpoint: j["endpoint"].as_str().unwrap().to_string(),
        p256dh: b64(&j["p256dh"]),
        auth: b64(&j["auth"]),
    }
}

/// Every line `Label:   value` has its value in the same column.
fn assert_aligned(text: &str) {
    let columns: Vec<usize> = text
        .lines()
        .map(|l| {
            let colon = l.find(':').unwrap_or_else(|| panic!("no label in {l:?}"));
            colon + 1 + l[colon + 1..].len() - l[colon + 1..].trim_start().len()
        })
        .collect();
    assert!(
        columns.windows(2).all(|w| w[0] == w[1]),
        "values not aligned ({columns:?}):\n{text}"
    );
}

/// The value of `Label:` in a `show`/`status` listing.
fn field<'a>(text: &'a str, label: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{label}:")))
        .unwrap_or_else(|| panic!("no {label}: in\n{text}"))
        .trim()
}

/// A table's cells, split at the header's column starts (a column starts after two
/// spaces); every cell must start exactly under its header.
fn table(text: &str) -> Vec<Vec<String>> {
    let lines: Vec<&str> = text.lines().collect();
    let header = lines[0];
    let starts: Vec<usize> = (0..header.len())
        .filter(|&i| header.as_bytes()[i] != b' ' && (i == 0 || header[..i].ends_with("  ")))
        .collect();
    lines
        .iter()
        .map(|l| {
            starts
                .iter()
                .enumerate()
                .map(|(n, &s)| {
                    assert!(
                        l.len() > s
                            && l.as_bytes()[s] != b' '
                            && (s == 0 || l[..s].ends_with("  ")),
                        "column {n} of {l:?} is not under its header:\n{text}"
                    );
                    let end = starts.get(n + 1).copied().unwrap_or(l.len());
                    l[s..end].trim().to_string()
                })
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn status_human_and_json() {
    let w = World::new().await;
    let ctl = Ctl::of(&w);
    ctl.connected().await;

    let text = ctl.ok(&["status"]).await;
    assert_aligned(&text);
    assert!(
        field(&text, "State").starts_with("connected (since "),
        "{text}"
    );
    assert_eq!(field(&text, "Version"), env!("CARGO_PKG_VERSION"));
    assert_eq!(field(&text, "Server"), w.server.ws_url());
    assert_eq!(field(&text, "Subscriptions"), "0 (0 expired)");
    assert_eq!(field(&text, "Pending"), "0 messages");

    let s = ctl.json(&["status"]).await;
    assert_eq!(s["state"], "connected");
    assert_eq!(s["server"], w.server.ws_url().as_str());
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["subscriptions"], 0);
    assert_eq!(s["expired"], 0);
    assert_eq!(s["pending_messages"], 0);
    assert_eq!(s["messages_received"], 0);
    assert!(s["connected_since"].as_i64().unwrap() > 0, "{s}");
    assert_eq!(s["uaid"].as_str().unwrap().len(), 32, "{s}");
    for key in ["next_retry", "failures", "last_error"] {
        assert!(s.get(key).is_some(), "status --json lacks {key}: {s}");
    }

    // The counts follow what happens.
    let app = ctl.app("org.example.Cli");
    app.ok(&["subscribe", "one"]).await;
    app.ok(&["subscribe", "two"]).await;
    app.ok(&["send", "one", "hi"]).await;
    app.messages("one", 1).await;
    let s = ctl.json(&["status"]).await;
    assert_eq!(s["subscriptions"], 2, "{s}");
    assert_eq!(s["pending_messages"], 1, "{s}");
    assert_eq!(s["messages_received"], 1, "{s}");
    let text = ctl.ok(&["status"]).await;
    assert_eq!(field(&text, "Subscriptions"), "2 (0 expired)");
    assert_eq!(field(&text, "Pending"), "1 messages");
}

#[tokio::test(flavor = "multi_thread")]
async fn on_a_terminal_labels_are_bold_and_values_still_line_up() {
    let w = World::new().await;
    let ctl = Ctl::of(&w);
    ctl.connected().await;
    ctl.app("org.example.Tty").ok(&["subscribe", "tty"]).await;
    for args in ["status", "--app-id org.example.Tty show tty"] {
        // script(1) gives pushctl a terminal; colour is on without NO_COLOR.
        let mut cmd = ctl.command(&[]);
        cmd.env_remove("NO_COLOR");
        let mut script = Command::new("script");
        script
            .args(["-qec", &format!("{PUSHCTL} {args}"), "/dev/null"])
            .env_clear()
            .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))))
            .env("TERM", "xterm")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = tokio::task::spawn_blocking(move || {
            finish(script.spawn().expect("script(1) from util-linux"), "script")
        })
        .await
        .unwrap();
        let raw = ok_text(&out, &[args]);
        assert!(raw.contains("\x1b[1m"), "not bold on a terminal: {raw:?}");
        let plain = raw
            .replace("\x1b[1m", "")
            .replace("\x1b[0m", "")
            .replace('\r', "");
        assert_aligned(plain.trim_end());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn subscribe_prints_the_endpoint_and_keys() {
    let w = World::new().await;
    let app = Ctl::of(&w).app("org.example.Cli");

    let text = app.ok(&["subscribe", "demo"]).await;
    assert_aligned(&text);
    let endpoint = field(&text, "Endpoint");
    assert!(
        endpoint.starts_with(&format!("{}/wpush/v1/", w.server.http_base())),
        "{text}"
    );
    assert_eq!(field(&text, "App"), "org.example.Cli");
    assert_eq!(field(&text, "Scope"), "demo");
    assert_eq!(field(&text, "Quota"), "16");
    assert_eq!(field(&text, "Server key"), "none");
    assert_eq!(field(&text, "State"), "active");
    assert_eq!(field(&text, "Last push"), "never");

    // Subscribing again returns the same subscription.
    let j = app.json(&["subscribe", "demo"]).await;
    assert_eq!(j["endpoint"], endpoint);
    assert_eq!(j["path"], field(&text, "Path"));
    assert!(
        j["path"]
            .as_str()
            .unwrap()
            .starts_with("/org/webpushd/Push1/subscription/"),
        "{j}"
    );
    assert_eq!(b64(&j["p256dh"]).len(), 65);
    assert_eq!(b64(&j["auth"]).len(), 16);
    assert_eq!(j["app_id"], "org.example.Cli");
    assert_eq!(j["scope"], "demo");
    assert_eq!(j["quota"], 16);
    assert_eq!(j["quota_applies"], true);
    assert_eq!(j["expired"], false);
    assert_eq!(j["push_count"], 0);
    assert_eq!(j["last_push"], 0);
    assert_eq!(j["application_server_key"], "");
    assert!(j["created"].as_i64().unwrap() > 0);

    // New scopes one after another: each answer describes its own, new subscription.
    for n in 0..5 {
        let scope = format!("quick-{n}");
        let j = app.json(&["subscribe", &scope]).await;
        assert_eq!(j["scope"], scope.as_str());
    }

    // The daemon's refusal, on one line.
    let err = app
        .fails(&["subscribe", "bad", "--key", "not a key"], 1)
        .await;
    assert!(err.contains("InvalidArgument"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_keyed_subscription_takes_only_pushes_signed_with_its_key() {
    let w = World::new().await;
    let app = Ctl::of(&w).app("org.example.Keyed");
    let key = VapidKey::generate().unwrap();
    let public = crypto::b64_encode(&key.public_raw());
    let pem = w.dir.path().join("vapid.pem");
    std::fs::write(&pem, key.to_pem().unwrap()).unwrap();
    let other = w.dir.path().join("other.pem");
    std::fs::write(&other, VapidKey::generate().unwrap().to_pem().unwrap()).unwrap();

    let j = app.json(&["subscribe", "keyed", "--key", &public]).await;
    let endpoint = j["endpoint"].as_str().unwrap();
    assert!(
        endpoint.starts_with(&format!("{}/wpush/v2/", w.server.http_base())),
        "{j}"
    );
    assert_eq!(j["application_server_key"], public.as_str());
    let shown = app.ok(&["show", "keyed"]).await;
    assert_eq!(field(&shown, "Server key"), public);

    // Signed with a throwaway key: refused, and the error says what to do.
    let err = app.fails(&["send", "keyed", "unsigned"], 1).await;
    assert!(err.contains("401"), "{err}");
    assert!(err.contains("--vapid-key"), "{err}");
    // Signed with the wrong key: refused, and the error blames the key file.
    let wrong = other.to_str().unwrap();
    let err = app
        .fails(&["send", "keyed", "--vapid-key", wrong, "wrong"], 1)
        .await;
    assert!(err.contains("401"), "{err}");
    assert!(err.contains("--vapid-key FILE is not the one"), "{err}");
    // Signed with its key: accepted and delivered.
    let good = pem.to_str().unwrap();
    let out = app
        .ok(&["send", "keyed", "--vapid-key", good, "signed"])
        .await;
    assert!(out.starts_with("201 "), "{out}");
    let msgs = app.messages("keyed", 1).await;
    let payloads: Vec<&str> = msgs
        .iter()
        .map(|m| m["payload"].as_str().unwrap())
        .collect();
    assert_eq!(payloads, ["signed"]);

    // A different key for the same scope is a mismatch.
    let third = crypto::b64_encode(&VapidKey::generate().unwrap().public_raw());
    let err = app.fails(&["subscribe", "keyed", "--key", &third], 1).await;
    assert!(err.contains("KeyMismatch"), "{err}");

    // A key file that is not a key.
    let junk = w.dir.path().join("junk.pem");
    std::fs::write(&junk, "not a key").unwrap();
    let err = app
        .fails(
            &["send", "keyed", "--vapid-key", junk.to_str().unwrap(), "x"],
            1,
        )
        .await;
    assert!(err.contains("junk.pem"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_system_subscription_has_no_quota() {
    let w = World::new().await;
    let app = Ctl::of(&w).app("org.example.Sys");
    let j = app.json(&["subscribe", "sys", "--system"]).await;
    assert_eq!(j["quota"], -1);
    assert_eq!(j["quota_applies"], false);
    let shown = app.ok(&["show", "sys"]).await;
    assert_eq!(field(&shown, "Quota"), "exempt (system)");
    let rows = table(&app.ok(&["list"]).await);
    assert_eq!(rows[0][3], "QUOTA");
    assert_eq!(rows[1][3], "-");
}

#[tokio::test(flavor = "multi_thread")]
async fn list_shows_the_acting_apps_subscriptions_and_all_shows_every_app() {
    let w = World::new().await;
    let ctl = Ctl::of(&w);
    let a = ctl.app("org.example.A");
    let b = ctl.app("org.example.Bee");

    assert_eq!(a.ok(&["list"]).await.trim(), "No subscriptions.");
    assert_eq!(a.json(&["list"]).await, Json::Array(vec![]));

    let a1 = a.json(&["subscribe", "inbox"]).await;
    let a2 = a.json(&["subscribe", "a much longer scope name"]).await;
    let b1 = b.json(&["subscribe", "b-only"]).await;

    // JSON: A sees its two, B its one.
    let la = a.json(&["list"]).await;
    assert_eq!(la, Json::Array(vec![a1.clone(), a2.clone()]));
    let lb = b.json(&["list"]).await;
    assert_eq!(lb, Json::Array(vec![b1.clone()]));

    // Table: aligned, A's rows only.
    let text = a.ok(&["list"]).await;
    assert!(!text.contains("b-only"), "{text}");
    let rows = table(&text);
    assert_eq!(
        rows[0],
        ["ID", "APP", "SCOPE", "QUOTA", "PUSHES", "LAST PUSH"]
    );
    assert_eq!(rows.len(), 3, "{text}");
    assert_eq!(rows[1][1], "org.example.A");
    assert_eq!(rows[1][2], "inbox");
    assert_eq!(rows[2][2], "a much longer scope name");
    assert_eq!(rows[1][3], "16");
    assert_eq!(rows[1][4], "0");
    assert_eq!(rows[1][5], "never");
    assert_eq!(
        Some(rows[1][0].as_str()),
        a1["path"].as_str().unwrap().rsplit('/').next()
    );

    // --all: both apps, as the user (no --app-id).
    let all = ctl.json(&["list", "--all"]).await;
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 3, "{all:?}");
    assert!(all.contains(&a1) && all.contains(&a2) && all.contains(&b1));
    let rows = table(&ctl.ok(&["list", "--all"]).await);
    let mut apps: Vec<&str> = rows[1..].iter().map(|r| r[1].as_str()).collect();
    apps.sort();
    assert_eq!(apps, ["org.example.A", "org.example.A", "org.example.Bee"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn show_by_scope_or_path_and_clear_errors_for_neither() {
    let w = World::new().await;
    let ctl = Ctl::of(&w);
    let app = ctl.app("org.example.Show");
    let j = app.json(&["subscribe", "demo"]).await;
    let path = j["path"].as_str().unwrap();

    assert_eq!(app.json(&["show", "demo"]).await, j);
    // A path works for the user too (it is what list --all prints).
    assert_eq!(ctl.json(&["show", path]).await, j);
    let text = ctl.ok(&["show", path]).await;
    assert_aligned(&text);
    assert_eq!(field(&text, "Path"), path);

    let err = app.fails(&["show", "nope"], 1).await;
    assert!(err.contains("no subscription \"nope\""), "{err}");
    assert!(err.contains("--app-id org.example.Show list"), "{err}");
    let err = ctl
        .fails(&["show", "/org/webpushd/Push1/subscription/987"], 1)
        .await;
    assert!(
        err.contains("no subscription at /org/webpushd/Push1/subscription/987"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn send_round_trips_in_both_encodings() {
    let w = World::new().await;
    let app = Ctl::of(&w).app("org.example.Send");
    app.ok(&["subscribe", "demo"]).await;

    let first = "hello via aes128gcm";
    let second = "héllo via aesgcm ✓ \"quoted\"";
    let out = app.ok(&["send", "demo", first]).await;
    assert!(out.starts_with("201 "), "{out}");
    app.messages("demo", 1).await;
    let sent = app
        .json(&[
            "send",
            "demo",
            "--encoding",
            "aesgcm",
            "--urgency",
            "high",
            "--topic",
            "t1",
            second,
        ])
        .await;
    assert_eq!(sent["status"], 201, "{sent}");
    assert!(sent["location"].as_str().is_some(), "{sent}");

    let msgs = app.messages("demo", 2).await;
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert_eq!(msgs[0]["payload"], first);
    assert_eq!(b64(&msgs[0]["payload_base64"]), first.as_bytes());
    assert_eq!(msgs[1]["payload"], second);
    assert!(msgs[1]["meta"]["received_at"].as_i64().unwrap() > 0);
    assert!(!msgs[0]["id"].as_str().unwrap().is_empty());

    let text = app.ok(&["messages", "demo"]).await;
    let id = msgs[1]["id"].as_str().unwrap();
    assert!(text.contains(&format!("Message {id}  (")), "{text}");
    assert!(text.contains(&format!("\n  {second}\n")), "{text}");

    // The push server's refusal comes through, on one line.
    let err = app
        .fails(&["send", "demo", "--topic", "not a topic", "x"], 1)
        .await;
    assert!(err.contains("400 Bad Request: Topic must be"), "{err}");

    // No DATA: an empty push, a message with an empty payload.
    app.ok(&["send", "demo"]).await;
    let msgs = app.messages("demo", 3).await;
    assert_eq!(msgs[2]["payload"], "");
}

/// The payload of a pending message, parsed as JSON.
fn payload_of(m: &Json) -> Json {
    let text = m["payload"]
        .as_str()
        .unwrap_or_else(|| panic!("not text: {m}"));
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn send_with_a_title_composes_a_declarative_push_message() {
    // No notification server on this bus and the app is not running: whatever the daemon
    // makes of a declarative message, it waits for the app with its exact bytes.
    let w = World::new().await;
    let ctl = Ctl::of(&w);
    let app = ctl.app("org.example.Decl");
    let j = app.json(&["subscribe", "d"]).await;

    // The least: a title and a URL.
    app.ok(&[
        "send",
        "d",
        "--title",
        "Hi",
        "--navigate",
        "https://x.example/",
    ])
    .await;
    // Everything, with URLs that have colons of their own (a port, a query).
    let out = app
        .ok(&[
            "send",
            "d",
            "--title",
            "Lunch? ✓ \"quoted\"",
            "--body",
            "Ada: at noon",
            "--navigate",
            "http://chat.example:8080/c/1?at=12:00#end",
            "--tag",
            "c1",
            "--action",
            "reply:Reply now:https://chat.example/c/1#reply",
            "--action",
            "mute:Mute:http://[::1]:9/mute",
            "--app-badge",
            "3",
            "--mutable",
            "--require-interaction",
            "--silent",
        ])
        .await;
    assert!(out.starts_with("201 "), "{out}");
    // To an endpoint with its keys, without the bus: the same composition.
    let out = Ctl::busless()
        .run(&[
            "send",
            j["endpoint"].as_str().unwrap(),
            "--p256dh",
            j["p256dh"].as_str().unwrap(),
            "--auth",
            j["auth"].as_str().unwrap(),
            "--title",
            "By endpoint",
            "--navigate",
            "https://x.example/e",
            "--app-badge",
            "0",
        ])
        .await;
    ok_text(&out, &["send", "ENDPOINT", "--title"]);

    let msgs = app.messages("d", 3).await;
    assert_eq!(msgs.len(), 3, "{msgs:?}");
    assert_eq!(
        payload_of(&msgs[0]),
        serde_json::json!({
            "web_push": 8030,
            "notification": { "title": "Hi", "navigate": "https://x.example/" }
        })
    );
    assert_eq!(
        payload_of(&msgs[1]),
        serde_json::json!({
            "web_push": 8030,
            "notification": {
                "title": "Lunch? ✓ \"quoted\"",
                "body": "Ada: at noon",
                "navigate": "http://chat.example:8080/c/1?at=12:00#end",
                "tag": "c1",
                "actions": [
                    { "action": "reply", "title": "Reply now", "navigate": "https://chat.example/c/1#reply" },
                    { "action": "mute", "title": "Mute", "navigate": "http://[::1]:9/mute" }
                ],
                "requireInteraction": true,
                "silent": true
            },
            "app_badge": 3,
            "mutable": true
        })
    );
    assert_eq!(
        payload_of(&msgs[2]),
        serde_json::json!({
            "web_push": 8030,
            "notification": { "title": "By endpoint", "navigate": "https://x.example/e" },
            "app_badge": 0
        })
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn send_to_an_endpoint_needs_no_bus_and_reads_stdin() {
    let w = World::new().await;
    let ctl = Ctl::of(&w);
    let app = ctl.app("org.example.Ep");
    let j = app.json(&["subscribe", "ep"]).await;
    let (endpoint, p256dh, auth) = (
        j["endpoint"].as_str().unwrap(),
        j["p256dh"].as_str().unwrap(),
        j["auth"].as_str().unwrap(),
    );

    // An application server has the endpoint and keys, not the user's session bus.
    let out = Ctl::busless()
        .run(&[
            "send",
            endpoint,
            "--p256dh",
            p256dh,
            "--auth",
            auth,
            "by endpoint",
        ])
        .await;
    let text = ok_text(&out, &["send", "ENDPOINT"]);
    assert!(text.starts_with("201 "), "{text}");
    app.messages("ep", 1).await;

    // "-" reads standard input: bytes, not only text.
    let mut binary = b"from stdin\n".to_vec();
    binary.extend([0, 0xff, 0xfe]);
    let out = ctl
        .run_with_input(
            &["send", endpoint, "--p256dh", p256dh, "--auth", auth, "-"],
            Some(binary.clone()),
        )
        .await;
    ok_text(&out, &["send", "-"]);
    app.messages("ep", 2).await;
    let out = app
        .run_with_input(&["send", "ep", "-"], Some(b"scope from stdin".to_vec()))
        .await;
    ok_text(&out, &["send", "ep", "-"]);

    let msgs = app.messages("ep", 3).await;
    assert_eq!(msgs.len(), 3, "{msgs:?}");
    assert_eq!(msgs[0]["payload"], "by endpoint");
    assert_eq!(msgs[1]["payload"], Json::Null, "not UTF-8: {}", msgs[1]);
    assert_eq!(b64(&msgs[1]["payload_base64"]), binary);
    assert_eq!(msgs[2]["payload"], "scope from stdin");

    // Keys that are not a subscription's: said before anything is sent.
    let err = Ctl::busless()
        .fails(
            &["send", endpoint, "--p256dh", "AAAA", "--auth", auth, "x"],
            1,
        )
        .await;
    assert!(err.contains("--p256dh"), "{err}");
    let err = Ctl::busless()
        .fails(
            &["send", endpoint, "--p256dh", p256dh, "--auth", "AAAA", "x"],
            1,
        )
        .await;
    assert!(err.contains("--auth"), "{err}");
    // An endpoint URL without keys is taken as a scope, and the error says both.
    let err = app.fails(&["send", endpoint, "x"], 1).await;
    assert!(err.contains("no subscription"), "{err}");
    assert!(err.contains("--p256dh K and --auth A"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ack_forgets_a_message_and_a_second_ack_is_not_found() {
    let w = World::new().await;
    let app = Ctl::of(&w).app("org.example.Ack");
    app.ok(&["subscribe", "demo"]).await;
    app.ok(&["send", "demo", "one"]).await;
    app.messages("demo", 1).await;
    app.ok(&["send", "demo", "two"]).await;
    let msgs = app.messages("demo", 2).await;
    let ids: Vec<String> = msgs
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2);

    let out = app.ok(&["ack", "demo", &ids[0]]).await;
    assert_eq!(out.trim(), format!("Acknowledged {}", ids[0]));
    let left = app.json(&["messages", "demo"]).await;
    assert_eq!(left.as_array().unwrap().len(), 1, "{left}");
    assert_eq!(left[0]["id"], ids[1].as_str());
    let j = app.json(&["ack", "demo", &ids[1]]).await;
    assert_eq!(j["acknowledged"], ids[1].as_str());
    assert_eq!(app.json(&["messages", "demo"]).await, Json::Array(vec![]));
    assert_eq!(
        app.ok(&["messages", "demo"]).await.trim(),
        "No pending messages."
    );

    let err = app.fails(&["ack", "demo", &ids[0]], 1).await;
    assert!(err.contains("NotFound"), "{err}");
    assert!(err.contains("no pending message"), "{err}");
    assert!(err.contains("pushctl messages demo"), "{err}");
    let err = app.fails(&["ack", "nope", &ids[0]], 1).await;
    assert!(err.contains("no subscription \"nope\""), "{err}");
    let err = app.fails(&["messages", "nope"], 1).await;
    assert!(err.contains("no subscription \"nope\""), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unsubscribe_by_scope_or_path_and_the_old_endpoint_is_gone() {
    let w = World::new().await;
    let ctl = Ctl::of(&w);
    let app = ctl.app("org.example.Gone");
    let by_scope = app.json(&["subscribe", "one"]).await;
    let by_path = app.json(&["subscribe", "two"]).await;
    let other = ctl
        .app("org.example.Else")
        .json(&["subscribe", "theirs"])
        .await;

    let out = app.ok(&["unsubscribe", "one"]).await;
    assert_eq!(out.trim(), "Unsubscribed one");
    let path = by_path["path"].as_str().unwrap();
    let j = app.json(&["unsubscribe", path]).await;
    assert_eq!(j["removed"], true);
    // Another app's subscription, by the path list --all shows: the user may remove it.
    ctl.ok(&["unsubscribe", other["path"].as_str().unwrap()])
        .await;
    assert_eq!(ctl.json(&["list", "--all"]).await, Json::Array(vec![]));

    // Gone from the push server too (the daemon unregisters in the background).
    eventually("three unregisters at the server", || async {
        (w.server.stats().unregisters.len() >= 3).then_some(())
    })
    .await;
    for j in [&by_scope, &by_path] {
        let args = [
            "send",
            j["endpoint"].as_str().unwrap(),
            "--p256dh",
            j["p256dh"].as_str().unwrap(),
            "--auth",
            j["auth"].as_str().unwrap(),
            "late",
        ];
        let err = ctl.fails(&args, 1).await;
        assert!(err.contains("410"), "{err}");
        assert!(err.contains("subscribe again"), "{err}");
        // --json still prints the answer, for scripts, and still fails.
        let out = ctl.run(&[&["--json"][..], &args[..]].concat()).await;
        assert_eq!(out.status.code(), Some(1));
        let j: Json = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(j["status"], 410);
    }

    // Once more: nothing to remove, said the same way with or without --json.
    for args in [
        &["unsubscribe", "one"][..],
        &["--json", "unsubscribe", "one"],
    ] {
        let err = app.fails(args, 1).await;
        assert!(err.contains("no subscription \"one\""), "{err}");
    }
    let err = app.fails(&["unsubscribe", path], 1).await;
    assert!(err.contains("no subscription at"), "{err}");
}

/// A `pushctl --json monitor` child and its standard output, line by line.
struct Monitor {
    child: Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Monitor {
    fn start(ctl: &Ctl) -> Monitor {
        let mut child = ctl
            .command(&["--json", "monitor"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Monitor { child, lines }
    }

    async fn next(&mut self, what: &str) -> Json {
        let l = tokio::time::timeout(WAIT, self.lines.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what} from monitor"))
            .unwrap_or_else(|| panic!("monitor ended waiting for {what}"));
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("monitor printed {l:?}: {e}"))
    }

    /// The next event of `kind`, skipping others (state changes).
    async fn next_event(&mut self, kind: &str) -> Json {
        loop {
            let e = self.next(kind).await;
            if e["event"] == kind {
                return e;
            }
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn monitor_prints_each_message_as_a_json_line() {
    let w = World::new().await;
    let ctl = Ctl::of(&w);
    ctl.connected().await;
    let app = ctl.app("org.example.Mon");
    let sub = sub_of(&app.json(&["subscribe", "live"]).await);

    let mut mon = Monitor::start(&app);
    // First the current state: from here on every event is printed.
    let first = mon.next("the current state").await;
    assert_eq!(first["event"], "State", "{first}");
    assert_eq!(first["state"], "connected", "{first}");
    assert!(first["time"].as_i64().unwrap() > 0);

    let resp = post(&sub, "live payload ✓".as_bytes()).await;
    assert_eq!(resp.status, 201, "{}", resp.body);
    let m = mon.next_event("Message").await;
    assert_eq!(m["payload"], "live payload ✓");
    assert_eq!(m["scope"], "live");
    assert_eq!(m["subscription"], sub.path.as_str());
    assert!(!m["id"].as_str().unwrap().is_empty());
    assert!(m["meta"]["received_at"].as_i64().unwrap() > 0);

    // While the monitor holds the app's name, another pushctl cannot act as that app,
    // and does not take the name away from it.
    let err = app.fails(&["list"], 1).await;
    assert!(err.contains("cannot act as org.example.Mon"), "{err}");
    let resp = post(&sub, b"still mine").await;
    assert_eq!(resp.status, 201, "{}", resp.body);
    let m = mon.next_event("Message").await;
    assert_eq!(m["payload"], "still mine");

    // Connection state changes are events too: lose the server, then get it back.
    let faults = w.server.faults().expect("fault injection is on");
    faults.set_refuse_connections(true);
    faults.close_all(1001, "going away");
    let s = mon.next_event("State").await;
    assert_ne!(s["state"], "connected", "{s}");
    faults.set_refuse_connections(false);
    ctl.ok(&["reconnect"]).await;
    loop {
        if mon.next_event("State").await["state"] == "connected" {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn monitor_ends_quietly_when_its_reader_goes_away() {
    let w = World::new().await;
    let app = Ctl::of(&w).app("org.example.Pipe");
    let sub = sub_of(&app.json(&["subscribe", "p"]).await);
    let mut child = app
        .command(&["--json", "monitor"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // Read the first line, then close the pipe.
    let first = tokio::time::timeout(
        WAIT,
        tokio::task::spawn_blocking(move || {
            let mut l = String::new();
            BufReader::new(stdout).read_line(&mut l).unwrap();
            l
        }),
    )
    .await
    .expect("monitor prints the state first")
    .unwrap();
    assert!(first.contains("\"State\""), "{first}");
    let resp = post(&sub, b"nobody reads this").await;
    assert_eq!(resp.status, 201, "{}", resp.body);
    let out = tokio::task::spawn_blocking(move || finish(child, "monitor"))
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {stderr}", out.status);
    assert!(stderr.is_empty(), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn quota_reset_restores_a_background_apps_quota() {
    let w = World::new().await;
    let ctl = Ctl::of(&w);
    let sub = sub_of(&ctl.app("org.example.Quiet").json(&["subscribe", "q"]).await);
    let path = sub.path.as_str();
    // The app is not running, so messages cost quota (once the daemon has seen the
    // subscribing pushctl leave). Read as the user, by path: acting as the app would
    // count as using it and restore the quota.
    let mut spent = None;
    for n in 1..=5 {
        let resp = post(&sub, format!("bg {n}").as_bytes()).await;
        assert_eq!(resp.status, 201, "{}", resp.body);
        let j = eventually("the background message", || async {
            let j = ctl.json(&["show", path]).await;
            (j["push_count"] == n).then_some(j)
        })
        .await;
        if j["quota"].as_i64().unwrap() < 16 {
            spent = Some(j);
            break;
        }
    }
    let spent = spent.expect("background messages cost quota");
    assert_eq!(spent["quota_applies"], true, "{spent}");

    let out = ctl.ok(&["quota", "reset", path]).await;
    assert_eq!(out.trim(), format!("Quota reset for {path}"));
    assert_eq!(ctl.json(&["show", path]).await["quota"], 16);
    let j = ctl.json(&["quota", "reset", path]).await;
    assert_eq!(j["reset"], path);

    let err = ctl
        .fails(
            &["quota", "reset", "/org/webpushd/Push1/subscription/999"],
            1,
        )
        .await;
    assert!(err.contains("no subscription at"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reconnect_makes_a_new_connection() {
    let w = World::new().await;
    let ctl = Ctl::of(&w);
    ctl.connected().await;
    let hellos = w.server.stats().hellos;
    let out = ctl.ok(&["reconnect"]).await;
    assert_eq!(out.trim(), "Reconnecting");
    eventually("a new hello", || async {
        (w.server.stats().hellos > hellos).then_some(())
    })
    .await;
    ctl.connected().await;
    let j = ctl.json(&["reconnect"]).await;
    assert_eq!(j["reconnecting"], true);
    eventually("another hello", || async {
        (w.server.stats().hellos > hellos + 1).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn completions_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Ctl::busless().run(&["completions", shell]).await;
        let text = ok_text(&out, &["completions", shell]);
        for word in ["subscribe", "unsubscribe", "monitor", "send", "app-id"] {
            assert!(text.contains(word), "{shell} completions lack {word}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_errors_exit_2() {
    let ctl = Ctl::busless();
    for args in [
        &["frobnicate"][..],
        &["subscribe"],
        &["ack", "scope-only"],
        &["quota"],
        &["send", "demo", "--encoding", "rot13", "x"],
        &["send", "demo", "--p256dh", "AAAA", "x"],
        &["send", "demo", "--p256dh", "AAAA", "--auth", "BBBB", "x"],
        &["completions", "tcsh"],
        &["notifications", "org.example.App"],
        &["notifications", "org.example.App", "maybe"],
        // A declarative message needs both a title and a URL, and excludes DATA.
        &["send", "demo", "--title", "Hi"],
        &["send", "demo", "--navigate", "https://x.example/"],
        &["send", "demo", "--body", "no title"],
        &["send", "demo", "--mutable"],
        &[
            "send",
            "demo",
            "--title",
            "Hi",
            "--navigate",
            "https://x.example/",
            "data",
        ],
        // URLs the daemon would not take as a declarative message's.
        &["send", "demo", "--title", "Hi", "--navigate", "not a url"],
        &[
            "send",
            "demo",
            "--title",
            "Hi",
            "--navigate",
            "ftp://x.example/",
        ],
        &[
            "send",
            "demo",
            "--title",
            "Hi",
            "--navigate",
            "https:///no-host",
        ],
        &["send", "demo", "--title", "Hi", "--navigate", "/relative"],
        // --action is ID:TITLE:URL.
        &[
            "send",
            "demo",
            "--title",
            "Hi",
            "--navigate",
            "https://x.example/",
            "--action",
            "a:b",
        ],
        &[
            "send",
            "demo",
            "--title",
            "Hi",
            "--navigate",
            "https://x.example/",
            "--action",
            "a:b:c",
        ],
        &[
            "send",
            "demo",
            "--title",
            "Hi",
            "--navigate",
            "https://x.example/",
            "--action",
            ":b:https://x.example/",
        ],
        &[
            "send",
            "demo",
            "--title",
            "Hi",
            "--navigate",
            "https://x.example/",
            "--action",
            "default:b:https://x.example/",
        ],
        &[
            "send",
            "demo",
            "--title",
            "Hi",
            "--navigate",
            "https://x.example/",
            "--app-badge",
            "-1",
        ],
        &["status", "--bogus"],
        &[],
    ] {
        let out = ctl.run(args).await;
        assert_eq!(
            out.status.code(),
            Some(2),
            "pushctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.stderr.is_empty(), "pushctl {args:?} says nothing");
        assert!(out.stdout.is_empty(), "pushctl {args:?} printed to stdout");
    }
    let out = ctl.run(&["--help"]).await;
    assert!(out.status.success());
    let out = ctl.run(&["--version"]).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("pushctl {}", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_daemon_every_command_says_how_to_start_it() {
    let bus = Bus::start();
    let ctl = Ctl {
        bus: Some(bus.address.clone()),
        home: std::env::temp_dir(),
        app_id: None,
    };
    let want = format!("pushctl: {NOT_RUNNING}");
    assert_eq!(ctl.fails(&["status"], 1).await, want);
    assert_eq!(ctl.fails(&["--json", "status"], 1).await, want);
    for args in [
        &["list"][..],
        &["list", "--all"],
        &["--app-id", "org.example.X", "subscribe", "x"],
        &["show", "x"],
        &["messages", "x"],
        &["ack", "x", "y"],
        &["unsubscribe", "x"],
        &["send", "x", "hi"],
        &["quota", "reset", "/org/webpushd/Push1/subscription/1"],
        &["reconnect"],
        &["monitor"],
        &["notifications", "org.example.X", "off"],
        &[
            "send",
            "x",
            "--title",
            "T",
            "--navigate",
            "https://x.example/",
        ],
    ] {
        assert_eq!(ctl.fails(args, 1).await, want, "pushctl {args:?}");
    }
}

/// Subcommands and their long options, from the binary's own help.
async fn help_commands() -> Vec<(String, Vec<String>)> {
    let ctl = Ctl::busless();
    let help = ok_text(&ctl.run(&["--help"]).await, &["--help"]);
    let names: Vec<String> = help
        .split("Commands:")
        .nth(1)
        .expect("a Commands: section")
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n != "help")
        .map(str::to_string)
        .collect();
    assert!(names.len() >= 12, "{help}");
    let mut out = vec![];
    for n in names {
        let help = ok_text(&ctl.run(&[&n, "--help"]).await, &[&n]);
        let opts = help
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .filter(|w| w.starts_with("--") && w.len() > 2)
            .filter(|w| !["--help", "--version"].contains(w))
            .map(str::to_string)
            .collect();
        out.push((n, opts));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn the_man_page_describes_the_binary() {
    let man = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/man/pushctl.1"))
        .expect("man/pushctl.1");
    // Everything before NOTES is a promise about the binary.
    let promised = man.split("\n.SH NOTES").next().unwrap();
    let commands = help_commands().await;
    let names: Vec<&str> = commands.iter().map(|(n, _)| n.as_str()).collect();
    // The words that start command entries in COMMANDS: ".TP" then ".B name",
    // ".BR name …" or ".BR \"quota reset\" …"; or ".SS send".
    let section = promised
        .split("\n.SH COMMANDS")
        .nth(1)
        .expect("a COMMANDS section")
        .split("\n.SH ")
        .next()
        .unwrap();
    let lines: Vec<&str> = section.lines().collect();
    let mut documented = vec![];
    for (i, l) in lines.iter().enumerate() {
        let entry =
            l.starts_with(".SS ") || (i > 0 && lines[i - 1] == ".TP" && l.starts_with(".B"));
        let word = l.split_whitespace().nth(1).unwrap_or("").trim_matches('"');
        if entry && !word.starts_with('\\') {
            documented.push(word.to_string());
        }
    }
    for n in &names {
        assert!(
            documented.iter().any(|d| d == n),
            "man/pushctl.1 does not document `{n}` (documents {documented:?})"
        );
    }
    for d in &documented {
        assert!(
            names.contains(&d.as_str()),
            "man/pushctl.1 documents `{d}`, which pushctl does not have"
        );
    }
    // Every long option of every command.
    for (n, opts) in &commands {
        for o in opts {
            let roff = o.replace('-', "\\-");
            assert!(
                promised.contains(&roff),
                "man/pushctl.1 does not mention {o} (of {n})"
            );
        }
    }
    // Nothing implemented is left in NOTES as planned.
    assert!(
        !man.contains("Planned"),
        "man/pushctl.1 still plans something"
    );
}
