//! Sandboxed callers for real: pushctl runs in its own mount namespace, chrooted into a
//! root that holds a `.flatpak-info`, so the daemon reads it through `/proc/PID/root`
//! exactly as it does for a Flatpak app. Needs root (or user namespaces) for `unshare -m`;
//! where that is impossible the test says so and stops.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::*;

/// Run pushctl inside a fake Flatpak sandbox whose app id is `app_id`.
fn sandboxed_pushctl(bus_address: &str, root: &Path, app_id: &str, args: &[&str]) -> Output {
    std::fs::create_dir_all(root).unwrap();
    std::fs::write(
        root.join(".flatpak-info"),
        format!("[Application]\nname={app_id}\nruntime=runtime/org.freedesktop.Platform/x86_64/24.08\n\n[Instance]\ninstance-id=1\n"),
    )
    .unwrap();
    let pushctl = env!("CARGO_BIN_EXE_pushctl");
    let bin_dir = Path::new(pushctl).parent().unwrap();
    let script = r#"
set -e
R="$1"; BIN="$2"; shift 2
for d in usr etc tmp proc dev; do mkdir -p "$R/$d"; mount --rbind "/$d" "$R/$d"; done
for l in bin lib lib64 sbin; do
  if [ -L "/$l" ]; then ln -sfn "$(readlink "/$l")" "$R/$l";
  elif [ -d "/$l" ]; then mkdir -p "$R/$l"; mount --rbind "/$l" "$R/$l"; fi
done
mkdir -p "$R$BIN"; mount --bind "$BIN" "$R$BIN"
exec chroot "$R" "$BIN/pushctl" "$@"
"#;
    Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
        .arg(root)
        .arg(bin_dir)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("DBUS_SESSION_BUS_ADDRESS", bus_address)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn can_unshare() -> bool {
    Command::new("unshare")
        .args(["-m", "true"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flatpak_caller_is_its_app_and_is_kept_in_its_lane() {
    if !can_unshare() {
        eprintln!("SKIPPED: `unshare -m` is not permitted here (needs root or user namespaces)");
        return;
    }
    let w = World::new().await;
    let root = w.dir.path().join("sandbox-root");
    let run = |args: &[&str]| {
        let out = sandboxed_pushctl(&w.bus.address, &root, "org.example.Sandboxed", args);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) =
        tokio::task::block_in_place(|| run(&["--json", "subscribe", "inbox"]));
    assert_eq!(code, Some(0), "{stderr}");
    let sub: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(sub["app_id"], "org.example.Sandboxed");

    // Sandboxed: no system subscriptions, no Admin.
    let (code, _, stderr) = tokio::task::block_in_place(|| run(&["subscribe", "vip", "--system"]));
    assert_eq!(code, Some(1));
    assert!(stderr.contains("AccessDenied"), "{stderr}");
    let (code, _, stderr) = tokio::task::block_in_place(|| run(&["status"]));
    assert_eq!(code, Some(1));
    assert!(stderr.contains("AccessDenied"), "{stderr}");

    // Another app's subscription is invisible and untouchable from inside.
    let other = w.bus.app("org.example.Other").await;
    let theirs = other.subscribe("inbox").await;
    let (code, _, stderr) = tokio::task::block_in_place(|| run(&["show", theirs.path.as_str()]));
    assert_eq!(code, Some(1));
    assert!(stderr.contains("AccessDenied"), "{stderr}");
    let (code, stdout, _) = tokio::task::block_in_place(|| run(&["--json", "list"]));
    assert_eq!(code, Some(0));
    let list: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["scope"], "inbox");
    assert_eq!(list[0]["app_id"], "org.example.Sandboxed");
    // Claiming the app id by bus name from outside does not make another process the app…
    // but the same app id outside a sandbox is the same app (as for Flatpak's host side).
    let host = w.bus.app("org.example.Sandboxed").await;
    assert_eq!(host.manager.list_subscriptions().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn subscriptions_of_an_uninstalled_flatpak_expire_at_startup() {
    if !can_unshare() {
        eprintln!("SKIPPED: `unshare -m` is not permitted here (needs root or user namespaces)");
        return;
    }
    let mut w = World::new().await;
    let root = w.dir.path().join("sandbox-root");
    let run = |app: &str, args: &[&str]| {
        let out = sandboxed_pushctl(&w.bus.address, &root, app, args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let gone =
        tokio::task::block_in_place(|| run("org.example.Gone", &["--json", "subscribe", "s"]));
    let kept =
        tokio::task::block_in_place(|| run("org.example.Kept", &["--json", "subscribe", "s"]));
    // Only org.example.Kept is installed (for the user, as `flatpak --user install` does).
    std::fs::create_dir_all(
        w.dir
            .path()
            .join(".local/share/flatpak/app/org.example.Kept"),
    )
    .unwrap();
    w.daemon.restart(&w.bus).await;

    let observer = App::new(w.bus.connect().await).await;
    let path = |v: &serde_json::Value| {
        zbus::zvariant::OwnedObjectPath::try_from(v["path"].as_str().unwrap().to_string()).unwrap()
    };
    let gone_p = observer.subscription(&path(&gone)).await;
    let kept_p = observer.subscription(&path(&kept)).await;
    assert!(
        gone_p.expired().await.unwrap(),
        "an uninstalled app's subscription expires"
    );
    assert!(!kept_p.expired().await.unwrap());
    // Unregistered from the server: its endpoint is gone.
    let sub = Sub {
        path: path(&gone),
        endpoint: gone["endpoint"].as_str().unwrap().into(),
        p256dh: webpushd::crypto::b64(gone["p256dh"].as_str().unwrap()).unwrap(),
        auth: webpushd::crypto::b64(gone["auth"].as_str().unwrap()).unwrap(),
    };
    eventually("410 for the removed app", || async {
        (post(&sub, b"x").await.status == 410).then_some(())
    })
    .await;
}

/// Where the cgroup2 hierarchy is mounted, if this process may create cgroups in it.
fn writable_cgroup2() -> Option<std::path::PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split(' ').next()? == "cgroup2").then(|| left.split(' ').nth(4).map(Into::into))?
    })?;
    let probe = Path::new(&mount).join(format!("webpushd-probe-{}", std::process::id()));
    std::fs::create_dir(&probe).ok()?;
    std::fs::remove_dir(&probe).ok()?;
    Some(mount)
}

/// Snap confinement for real, as far as the kernel goes: pushctl runs in a cgroup2 scope
/// named as snapd names an app's (`snap.NAME.APP-UUID.scope` under the user's
/// `app.slice`), so the daemon finds it through `/proc/PID/cgroup`. (No AppArmor profile:
/// the daemon does not look at it.)
#[tokio::test(flavor = "multi_thread")]
async fn a_snap_caller_is_its_snap_and_is_kept_in_its_lane() {
    let Some(cgroot) = writable_cgroup2() else {
        eprintln!("SKIPPED: no writable cgroup2 hierarchy (needs root or a delegated subtree)");
        return;
    };
    let w = World::new().await;
    let slice = cgroot.join(format!(
        "webpushd-test-{}.slice/user@1000.service/app.slice",
        std::process::id()
    ));
    let scope =
        slice.join("snap.example-chat.example-chat-1f2e3d4c-5b6a-4789-9abc-def012345678.scope");
    std::fs::create_dir_all(&scope).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new("sh")
            .args([
                "-c",
                r#"echo $$ > "$1/cgroup.procs" && shift && exec "$@""#,
                "sh",
            ])
            .arg(&scope)
            .arg(env!("CARGO_BIN_EXE_pushctl"))
            .args(args)
            .env("DBUS_SESSION_BUS_ADDRESS", &w.bus.address)
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) =
        tokio::task::block_in_place(|| run(&["--json", "subscribe", "inbox"]));
    assert_eq!(code, Some(0), "{stderr}");
    let sub: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(sub["app_id"], "example-chat");

    // Sandboxed: no system subscriptions, no Admin, no other app's subscriptions.
    let (code, _, stderr) = tokio::task::block_in_place(|| run(&["subscribe", "vip", "--system"]));
    assert_eq!(code, Some(1));
    assert!(stderr.contains("AccessDenied"), "{stderr}");
    let (code, _, stderr) = tokio::task::block_in_place(|| run(&["status"]));
    assert_eq!(code, Some(1));
    assert!(stderr.contains("AccessDenied"), "{stderr}");
    let other = w.bus.app("org.example.Other").await;
    let theirs = other.subscribe("inbox").await;
    let (code, _, stderr) = tokio::task::block_in_place(|| run(&["show", theirs.path.as_str()]));
    assert_eq!(code, Some(1));
    assert!(stderr.contains("AccessDenied"), "{stderr}");
    let (code, stdout, _) = tokio::task::block_in_place(|| run(&["--json", "list"]));
    assert_eq!(code, Some(0));
    let list: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["app_id"], "example-chat");

    // The processes have exited: the empty cgroups can go.
    let mut dir = scope.as_path();
    while dir != cgroot {
        let _ = std::fs::remove_dir(dir);
        dir = dir.parent().unwrap();
    }
}
