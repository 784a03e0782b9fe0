//! The daemon as a process: startup errors are clear and final, two daemons for one user
//! cannot both run, SIGTERM stops it cleanly.

mod support;

use support::*;

fn stderr_of(d: &Daemon) -> String {
    d.log_text()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_config_is_a_usage_error_naming_the_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start();
    for (config, key) in [
        ("[connection]\nrequest_timout = \"5s\"\n", "request_timout"),
        ("[quota]\nactivation_grace = \"soon\"\n", "activation_grace"),
        ("server_url = \"http://example.org/\"\n", "server_url"),
        ("[log]\nlevel = \"loud\"\n", "level"),
    ] {
        let mut d = Daemon::spawn(&bus, dir.path(), config, &[]);
        let code = tokio::task::block_in_place(|| d.wait_exit());
        assert_eq!(code, Some(2), "{config}");
        let err = stderr_of(&d);
        assert!(err.contains(key), "{err}");
        assert!(err.contains("config.toml"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_daemon_is_refused_by_the_lock_and_by_the_bus_name() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start();
    let _first = Daemon::start(&bus, dir.path(), "server_url = \"local\"\n").await;

    // Same user, same state directory: the lock says so.
    let second_home = dir.path().join("second");
    let mut second = Daemon::spawn(
        &bus,
        &second_home,
        "server_url = \"local\"\n",
        &[
            "--state-dir",
            dir.path().join("state/webpushd").to_str().unwrap(),
        ],
    );
    assert_eq!(tokio::task::block_in_place(|| second.wait_exit()), Some(1));
    assert!(
        stderr_of(&second).contains("already running"),
        "{}",
        stderr_of(&second)
    );

    // Another state directory, same session bus: the bus name says so.
    let third_home = dir.path().join("third");
    let mut third = Daemon::spawn(&bus, &third_home, "server_url = \"local\"\n", &[]);
    assert_eq!(tokio::task::block_in_place(|| third.wait_exit()), Some(1));
    assert!(
        stderr_of(&third).contains("org.webpushd.Push1"),
        "{}",
        stderr_of(&third)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_cleanly_and_releases_the_name() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start();
    let mut d = Daemon::start(&bus, dir.path(), "server_url = \"local\"\n").await;
    assert_eq!(tokio::task::block_in_place(|| d.stop()), Some(0));
    let conn = bus.connect().await;
    let dbus = zbus::fdo::DBusProxy::new(&conn).await.unwrap();
    let name = zbus::names::BusName::try_from("org.webpushd.Push1").unwrap();
    assert!(!dbus.name_has_owner(name).await.unwrap());
    // And it starts again on the same state.
    let _again = Daemon::start(&bus, dir.path(), "server_url = \"local\"\n").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_from_a_newer_version_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start();
    let mut d = Daemon::start(&bus, dir.path(), "server_url = \"local\"\n").await;
    tokio::task::block_in_place(|| d.stop());
    let db = dir.path().join("state/webpushd/webpushd.db");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.pragma_update(None, "user_version", 999).unwrap();
    }
    let before = std::fs::read(&db).unwrap();
    let mut d = Daemon::spawn(&bus, dir.path(), "server_url = \"local\"\n", &[]);
    assert_eq!(tokio::task::block_in_place(|| d.wait_exit()), Some(1));
    let err = stderr_of(&d);
    assert!(
        err.contains("newer webpushd") && err.contains("webpushd.db"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&db).unwrap(),
        before,
        "the file must not be touched"
    );
}
