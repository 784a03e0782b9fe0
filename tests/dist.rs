//! Operating-system integration: the systemd user unit is accepted line by line, the D-Bus
//! activation file starts the daemon when `pushctl status` calls, and the daemon tells
//! systemd when it is ready and that it is alive.

mod support;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn systemd_accepts_every_line_of_the_user_unit() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("SKIPPED: systemd-analyze is not installed");
        return;
    };
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(format!("{ROOT}/dist/webpushd.service")).unwrap();
    assert!(unit.contains("\nType=notify\n") && unit.contains("\nBusName=org.webpushd.Push1\n"));
    assert!(unit.contains("\nWatchdogSec=") && unit.contains("\nRestart=on-failure\n"));
    // Verify needs the program to exist: point ExecStart at the built daemon.
    let unit = unit.replace(
        "ExecStart=/usr/bin/webpushd",
        &format!("ExecStart={}", env!("CARGO_BIN_EXE_webpushd")),
    );
    let path = dir.path().join("webpushd.service");
    std::fs::write(&path, unit).unwrap();
    let runtime = dir.path().join("runtime");
    std::fs::create_dir(&runtime).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["--user", "verify", "--man=no"])
        .arg(&path)
        .env("XDG_RUNTIME_DIR", &runtime)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Unknown or rejected settings are warnings with exit status 0: there must be none.
    assert!(
        stderr.trim().is_empty(),
        "systemd complains about the unit:\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pushctl_status_starts_the_daemon_by_dbus_activation() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start();
    // The shipped activation file, with Exec pointing at the built daemon and a private
    // state directory (an activated process inherits the bus's environment).
    let file = std::fs::read_to_string(format!("{ROOT}/dist/org.webpushd.Push1.service")).unwrap();
    assert!(file.contains("SystemdService=webpushd.service"));
    let exec = format!(
        "Exec={} --server-url local --state-dir {} --config {}",
        env!("CARGO_BIN_EXE_webpushd"),
        dir.path().join("state").display(),
        dir.path().join("config.toml").display()
    );
    std::fs::write(dir.path().join("config.toml"), "").unwrap();
    let file = file.replace("Exec=/usr/bin/webpushd", &exec);
    std::fs::write(bus.services.join("org.webpushd.Push1.service"), file).unwrap();

    let out = tokio::task::spawn_blocking({
        let address = bus.address.clone();
        move || {
            Command::new(env!("CARGO_BIN_EXE_pushctl"))
                .args(["--json", "status"])
                .env("DBUS_SESSION_BUS_ADDRESS", address)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["server"], "local");
    assert!(Path::new(&dir.path().join("state/webpushd.db")).exists());
    // Stop the activated daemon.
    let conn = bus.connect().await;
    let dbus = zbus::fdo::DBusProxy::new(&conn).await.unwrap();
    let pid = dbus
        .get_connection_unix_process_id(
            zbus::names::BusName::try_from("org.webpushd.Push1").unwrap(),
        )
        .await
        .unwrap();
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_reports_ready_and_feeds_the_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start();
    let sock_path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let sock_str = sock_path.to_str().unwrap().to_string();
    let _daemon = Daemon::spawn_env(
        &bus,
        dir.path(),
        "server_url = \"local\"\n",
        &[],
        &[("NOTIFY_SOCKET", &sock_str), ("WATCHDOG_USEC", "400000")],
    );
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        let ready = seen.iter().any(|m| m.lines().any(|l| l == "READY=1"));
        let pats = seen
            .iter()
            .filter(|m| m.lines().any(|l| l == "WATCHDOG=1"))
            .count();
        if ready && pats >= 2 {
            // READY=1 comes once the bus name is held.
            let conn = bus.connect().await;
            let dbus = zbus::fdo::DBusProxy::new(&conn).await.unwrap();
            let name = zbus::names::BusName::try_from("org.webpushd.Push1").unwrap();
            assert!(dbus.name_has_owner(name).await.unwrap());
            return;
        }
    }
    panic!("expected READY=1 and two WATCHDOG=1, got {seen:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_stops_when_its_session_bus_goes_away() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start();
    let mut daemon = Daemon::start(&bus, dir.path(), "server_url = \"local\"\n").await;
    drop(bus);
    assert_eq!(tokio::task::block_in_place(|| daemon.wait_exit()), Some(0));
}
