//! Who an app is, as plain rules over strings: the app id from a Flatpak's `.flatpak-info`,
//! a Snap's or a systemd unit's cgroup, or the caller's reverse-DNS bus names, and what
//! sandbox it runs in. No D-Bus and no `/proc` here: `dbus/identity.rs` reads the caller's
//! files and asks the bus, then applies these rules; `push` asks whether a Flatpak app is
//! still installed.
//!
//! Order (applied by `dbus::identity::Resolver`): Flatpak (`/proc/PID/root/.flatpak-info`),
//! Snap (cgroup `snap.NAME.*`), the XDG app id of the caller's systemd scope or service, the
//! lexicographically first reverse-DNS well-known name the connection owns, the
//! executable's name.

use std::fmt;

/// How the app id was found; only sandboxed callers are restricted further.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Flatpak,
    Snap,
    Systemd,
    BusName,
    Executable,
}

impl Source {
    /// The sandbox the app id came from, if any.
    pub fn sandbox(self) -> Option<Sandbox> {
        match self {
            Source::Flatpak => Some(Sandbox::Flatpak),
            Source::Snap => Some(Sandbox::Snap),
            Source::Systemd | Source::BusName | Source::Executable => None,
        }
    }

    /// Whether a caller found this way is one of the user's own tools (`pushctl`, `busctl`,
    /// `gdbus` run from a shell) rather than an app: unsandboxed (so it passes Admin's
    /// test) *and* with no app identity of its own: not in a sandbox, not in an app's
    /// systemd unit, owning no reverse-DNS bus name, so that only its executable names it.
    /// Besides the owner, only these may read a subscription's endpoint and keys.
    pub fn is_user_tool(self) -> bool {
        matches!(self, Source::Executable)
    }
}

/// The sandbox an app runs in: sandboxed apps may not ask for system subscriptions or use
/// Admin. Stored as `flatpak` or `snap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sandbox {
    Flatpak,
    Snap,
}

impl Sandbox {
    pub fn as_str(self) -> &'static str {
        match self {
            Sandbox::Flatpak => "flatpak",
            Sandbox::Snap => "snap",
        }
    }

    pub fn parse(s: &str) -> Option<Sandbox> {
        match s {
            "flatpak" => Some(Sandbox::Flatpak),
            "snap" => Some(Sandbox::Snap),
            _ => None,
        }
    }
}

impl fmt::Display for Sandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[Application] name=` of a `.flatpak-info` file (`[Runtime]` for runtimes is not an app).
pub fn flatpak_app_id(info: &str) -> Option<String> {
    let mut in_app = false;
    for line in info.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_app = line == "[Application]";
            continue;
        }
        if in_app {
            if let Some(v) = line.strip_prefix("name=") {
                let v = v.trim();
                if !v.is_empty() {
                    return Some(v.to_string());
                }
            }
        }
    }
    None
}

/// Whether the Flatpak app `app_id` is still installed, for the user (under
/// `data_home`, normally `~/.local/share`) or system-wide.
pub fn flatpak_installed(app_id: &str, data_home: &std::path::Path) -> bool {
    [
        data_home.join("flatpak/app").join(app_id),
        std::path::PathBuf::from("/var/lib/flatpak/app").join(app_id),
    ]
    .iter()
    .any(|p| p.exists())
}

/// The snap name from `/proc/PID/cgroup` (`…/snap.NAME.APP-….scope` or `snap.NAME.APP.service`).
pub fn snap_name(cgroup: &str) -> Option<String> {
    cgroup.lines().find_map(|line| {
        let path = line.rsplit(':').next()?;
        path.split('/').find_map(|seg| {
            let rest = seg.strip_prefix("snap.")?;
            let name = rest.split('.').next()?;
            (!name.is_empty()).then(|| name.to_string())
        })
    })
}

/// The XDG app id from the systemd unit in `/proc/PID/cgroup`:
/// `app[-<launcher>]-<ApplicationID>-<RANDOM>.scope` or
/// `app[-<launcher>]-<ApplicationID>[@<RANDOM>].service` (systemd's desktop-environment
/// naming; dashes inside the id are escaped as `\x2d`).
pub fn systemd_app_id(cgroup: &str) -> Option<String> {
    let line = cgroup.lines().find(|l| l.starts_with("0::"))?;
    let unit = line.rsplit('/').next()?;
    let (body, is_scope) = if let Some(b) = unit.strip_suffix(".scope") {
        (b, true)
    } else if let Some(b) = unit.strip_suffix(".service") {
        (b, false)
    } else {
        return None;
    };
    let body = body.strip_prefix("app-")?;
    let body = if is_scope {
        body.rsplit_once('-')?.0
    } else {
        body.split('@').next()?
    };
    // An optional launcher prefix has no dots; the app id does.
    let id = match body.split_once('-') {
        Some((launcher, id)) if !launcher.contains('.') && !id.is_empty() => id,
        _ => body,
    };
    let id = id.replace("\\x2d", "-");
    (!id.is_empty()).then_some(id)
}

/// A reverse-DNS well-known name: at least two dots, no leading colon.
pub fn is_reverse_dns(name: &str) -> bool {
    !name.starts_with(':') && name.matches('.').count() >= 2
}

/// The lexicographically first reverse-DNS name of those owned.
pub fn app_id_from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<String> {
    names
        .into_iter()
        .filter(|n| is_reverse_dns(n))
        .min()
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flatpak_info() {
        let info = "[Application]\nname=org.example.Chat\nruntime=runtime/org.gnome.Platform/x86_64/46\n\n[Instance]\ninstance-id=123\n";
        assert_eq!(flatpak_app_id(info).as_deref(), Some("org.example.Chat"));
        assert_eq!(flatpak_app_id("[Runtime]\nname=org.gnome.Sdk\n"), None);
    }

    #[test]
    fn snap_cgroup() {
        let cg = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/snap.telegram-desktop.telegram-desktop-1234.scope\n";
        assert_eq!(snap_name(cg).as_deref(), Some("telegram-desktop"));
        assert_eq!(snap_name("0::/user.slice/session-2.scope\n"), None);
    }

    #[test]
    fn systemd_units() {
        let cases = [
            ("0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-org.gnome.Calendar-4242.scope", Some("org.gnome.Calendar")),
            ("0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-org.kde.neochat-1234.scope", Some("org.kde.neochat")),
            ("0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-org.gnome.Nautilus@abcdef.service", Some("org.gnome.Nautilus")),
            ("0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-flatpak-org.my\\x2dapp.Foo-99.scope", Some("org.my-app.Foo")),
            ("0::/user.slice/user-1000.slice/session-3.scope", None),
            ("0::/user.slice/user-1000.slice/user@1000.service/app.slice/dbus.service", None),
            ("0::/", None),
        ];
        for (cg, want) in cases {
            assert_eq!(systemd_app_id(cg).as_deref(), want, "{cg}");
        }
    }

    #[test]
    fn sandbox_names_round_trip() {
        for s in [Sandbox::Flatpak, Sandbox::Snap] {
            assert_eq!(Sandbox::parse(s.as_str()), Some(s));
        }
        assert_eq!(Sandbox::parse(""), None);
        assert_eq!(Source::Systemd.sandbox(), None);
    }

    #[test]
    fn only_callers_without_an_app_identity_are_the_users_tools() {
        assert!(Source::Executable.is_user_tool());
        for s in [
            Source::Flatpak,
            Source::Snap,
            Source::Systemd,
            Source::BusName,
        ] {
            assert!(!s.is_user_tool(), "{s:?}");
        }
        // Every tool also passes Admin's test (unsandboxed).
        assert_eq!(Source::Executable.sandbox(), None);
    }

    #[test]
    fn well_known_names() {
        assert_eq!(
            app_id_from_names(["org.zzz.App", ":1.4", "org.aaa.App", "org.freedesktop"]).as_deref(),
            Some("org.aaa.App")
        );
        assert_eq!(app_id_from_names([":1.4", "com.example"]), None);
    }
}
