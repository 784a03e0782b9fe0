//! `pushctl selftest`: the real binary against the real daemon and the project's push
//! server, passing, and failing at the step that is broken (faults injected in the server).

mod support;

use std::process::{Command, Output, Stdio};

use serde_json::Value as Json;
use support::*;

const PUSHCTL: &str = env!("CARGO_BIN_EXE_pushctl");

async fn selftest(w: &World, args: &[&str]) -> Output {
    let mut cmd = Command::new(PUSHCTL);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &w.daemon.home)
        .env("NO_COLOR", "1")
        .env("DBUS_SESSION_BUS_ADDRESS", &w.bus.address)
        .stdin(Stdio::null());
    // Blocking: the push server lives in this runtime and must answer meanwhile.
    tokio::task::spawn_blocking(move || cmd.output().expect("pushctl runs"))
        .await
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `pushctl --json selftest` that fails: the report, and the error line naming the step.
async fn fails_at(w: &World, step: &str) -> Json {
    let out = selftest(w, &["--json", "selftest", "--timeout", "3"]).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let j: Json = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(j["ok"], false, "{j}");
    assert_eq!(j["failed_step"], step, "{j}");
    let last = j["steps"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["step"], step, "{j}");
    assert_eq!(last["ok"], false, "{j}");
    assert!(
        stderr.contains(&format!("self-test failed at step {step}:")),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    j
}

/// No subscription is left behind, whatever happened.
async fn nothing_left(w: &World) {
    let conn = w.bus.connect().await;
    let admin = webpushd::client::AdminProxy::new(&conn).await.unwrap();
    eventually("the temporary subscription to go", || async {
        admin.list_all().await.ok()?.is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_against_the_local_server_and_prints_each_step_with_its_time() {
    let w = World::new().await;
    w.connected().await;

    let out = selftest(&w, &["--json", "selftest"]).await;
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    let j: Json = serde_json::from_str(&stdout).unwrap();
    assert_eq!(j["ok"], true, "{j}");
    assert_eq!(j["failed_step"], Json::Null);
    let names: Vec<&str> = j["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            assert_eq!(s["ok"], true, "{s}");
            assert!(s["ms"].is_u64(), "{s}");
            s["step"].as_str().unwrap()
        })
        .collect();
    assert_eq!(names, webpushd::selftest::STEPS);
    assert!(
        j["steps"][5]["detail"].as_str().unwrap().contains("410")
            || j["steps"][5]["detail"].as_str().unwrap().contains("404"),
        "{j}"
    );
    nothing_left(&w).await;

    let out = selftest(&w, &["selftest"]).await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    for step in webpushd::selftest::STEPS {
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(step))
            .unwrap_or_else(|| panic!("no line for {step}:\n{stdout}"));
        assert!(line.starts_with("ok "), "{line}");
        assert!(line.contains(" ms "), "{line}");
    }
    assert!(stdout.contains("works end to end"), "{stdout}");
    nothing_left(&w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_at_connected_when_the_server_is_down() {
    let w = World::new().await;
    w.connected().await;
    let faults = w.server.faults().unwrap();
    faults.set_refuse_connections(true);
    faults.close_all(1001, "going away");
    let j = fails_at(&w, "connected").await;
    assert_eq!(j["steps"].as_array().unwrap().len(), 1, "{j}");
    nothing_left(&w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_at_subscribe_when_the_server_refuses_to_register() {
    let w = World::new().await;
    w.connected().await;
    w.server.faults().unwrap().set_register_status(Some(500));
    fails_at(&w, "subscribe").await;
    nothing_left(&w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_at_send_when_the_endpoint_refuses_and_cleans_up() {
    let w = World::new().await;
    w.connected().await;
    w.server.faults().unwrap().set_endpoint_status(Some(503));
    let j = fails_at(&w, "send").await;
    let detail = j["steps"][2]["detail"].as_str().unwrap();
    assert!(detail.contains("503"), "{detail}");
    nothing_left(&w).await;
}
