//! Who is calling: the app id derived from a D-Bus caller's credentials, never from what
//! the caller says.
//!
//! Order: Flatpak (`/proc/PID/root/.flatpak-info`), Snap (cgroup `snap.NAME.*`), the XDG app
//! id of the caller's systemd scope or service, the lexicographically first reverse-DNS
//! well-known name the connection owns, the executable's name. Each rule is a pure function
//! over strings, tested on fixtures; the `/proc` reads are a thin wrapper around them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use zbus::fdo::DBusProxy;
use zbus::names::BusName;

use super::error::Error;
use crate::ids::AppId;
use crate::push::Caller;

/// How the app id was found; only sandboxed callers are restricted further.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Flatpak,
    Snap,
    Systemd,
    BusName,
    Executable,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub app_id: AppId,
    pub source: Source,
    pub pid: u32,
}

impl Identity {
    pub fn sandboxed(&self) -> bool {
        matches!(self.source, Source::Flatpak | Source::Snap)
    }

    pub fn caller(&self) -> Caller {
        Caller {
            app_id: self.app_id.clone(),
            sandbox: match self.source {
                Source::Flatpak => Some("flatpak"),
                Source::Snap => Some("snap"),
                _ => None,
            },
        }
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

/// Resolves callers, with a cache per unique name, and keeps the table of which
/// connection owns which well-known names (fed by `NameOwnerChanged`).
#[derive(Debug)]
pub struct Resolver {
    dbus: DBusProxy<'static>,
    /// unique name -> well-known names it owns.
    names: Mutex<HashMap<String, HashSet<String>>>,
    cache: Mutex<HashMap<String, Identity>>,
    /// Root for `/proc` (tests point it elsewhere).
    proc_root: String,
}

impl Resolver {
    pub async fn new(conn: &zbus::Connection) -> zbus::Result<Arc<Resolver>> {
        let dbus = DBusProxy::new(conn).await?;
        let r = Arc::new(Resolver {
            dbus,
            names: Mutex::new(HashMap::new()),
            cache: Mutex::new(HashMap::new()),
            proc_root: "/proc".into(),
        });
        Ok(r)
    }

    /// Fill the name table from `ListNames` (once, at startup).
    pub async fn load_names(&self) -> zbus::Result<()> {
        for name in self.dbus.list_names().await? {
            if name.starts_with(':') || !is_reverse_dns(&name) {
                continue;
            }
            let bus = BusName::try_from(name.as_str())?;
            if let Ok(owner) = self.dbus.get_name_owner(bus).await {
                self.name_owned(&name, owner.as_str());
            }
        }
        Ok(())
    }

    pub fn name_owned(&self, name: &str, owner: &str) {
        let mut t = self.names.lock().expect("names lock");
        t.entry(owner.to_string())
            .or_default()
            .insert(name.to_string());
        drop(t);
        // A new name can change the owner's app id.
        self.cache.lock().expect("cache lock").remove(owner);
    }

    pub fn name_released(&self, name: &str, owner: &str) {
        if let Some(set) = self.names.lock().expect("names lock").get_mut(owner) {
            set.remove(name);
        }
        self.cache.lock().expect("cache lock").remove(owner);
    }

    pub fn connection_gone(&self, unique: &str) -> Option<Identity> {
        self.names.lock().expect("names lock").remove(unique);
        self.cache.lock().expect("cache lock").remove(unique)
    }

    pub fn cached(&self, unique: &str) -> Option<Identity> {
        self.cache.lock().expect("cache lock").get(unique).cloned()
    }

    /// The identity of the connection `unique`.
    pub async fn resolve(&self, unique: &str) -> Result<Identity, Error> {
        if let Some(id) = self.cached(unique) {
            return Ok(id);
        }
        let bus = BusName::try_from(unique)
            .map_err(|e| Error::Failed(format!("bad sender name: {e}")))?;
        let creds = self
            .dbus
            .get_connection_credentials(bus)
            .await
            .map_err(|e| Error::Failed(format!("cannot read the caller's credentials: {e}")))?;
        let pid = creds.process_id().ok_or_else(|| {
            Error::AccessDenied("the bus does not tell the caller's process".into())
        })?;
        let identity = self.identify_process(unique, pid).await?;
        // The executable fallback can change when the caller takes a name a moment later
        // (pushctl --app-id): only cache what is stable.
        if identity.source != Source::Executable {
            self.cache
                .lock()
                .expect("cache lock")
                .insert(unique.to_string(), identity.clone());
        }
        Ok(identity)
    }

    async fn identify_process(&self, unique: &str, pid: u32) -> Result<Identity, Error> {
        let proc_dir = format!("{}/{pid}", self.proc_root);
        let make = |id: String, source| -> Result<Identity, Error> {
            Ok(Identity {
                app_id: AppId::parse(&id)
                    .map_err(|e| Error::AccessDenied(format!("unusable app id: {e}")))?,
                source,
                pid,
            })
        };
        // Reading /proc/PID/root needs the same user (and no ptrace restriction); a
        // permission error here must not let a sandboxed app pass as unsandboxed, so any
        // error other than "no such file" refuses the call.
        match std::fs::read_to_string(format!("{proc_dir}/root/.flatpak-info")) {
            Ok(info) => {
                return match flatpak_app_id(&info) {
                    Some(id) => make(id, Source::Flatpak),
                    None => Err(Error::AccessDenied(
                        "sandboxed caller without an application id".into(),
                    )),
                };
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::AccessDenied(format!(
                    "cannot inspect the caller's sandbox: {e}"
                )))
            }
        }
        let cgroup = std::fs::read_to_string(format!("{proc_dir}/cgroup")).unwrap_or_default();
        if let Some(name) = snap_name(&cgroup) {
            return make(name, Source::Snap);
        }
        if let Some(id) = systemd_app_id(&cgroup) {
            return make(id, Source::Systemd);
        }
        if let Some(id) = self.owned_name(unique).await {
            return make(id, Source::BusName);
        }
        let exe = std::fs::read_link(format!("{proc_dir}/exe"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .or_else(|| {
                std::fs::read_to_string(format!("{proc_dir}/comm"))
                    .ok()
                    .map(|s| s.trim().to_string())
            })
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Error::AccessDenied("cannot tell who the caller is".into()))?;
        // "(deleted)" suffix of a replaced binary is not part of the name.
        let exe = exe.trim_end_matches(" (deleted)").to_string();
        make(exe, Source::Executable)
    }

    /// The caller's reverse-DNS well-known names. The table may lag a name taken just
    /// before this call (signals and calls are handled by different tasks), so names the
    /// table does not know yet are asked for directly.
    async fn owned_name(&self, unique: &str) -> Option<String> {
        let all = self.dbus.list_names().await.unwrap_or_default();
        // One snapshot of the table, taken after ListNames: the tracker may update it at
        // any moment, and reading it twice would miss a name moving between the reads.
        let mut mine: Vec<String> = {
            let t = self.names.lock().expect("names lock");
            t.get(unique)
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default()
        };
        // The table may also still give a name to its previous owner (a release not yet
        // processed): when it shows none for this caller, ask the bus about every name.
        let check_all = mine.is_empty();
        for name in all {
            if !is_reverse_dns(&name) || !check_all {
                continue;
            }
            let Ok(bus) = BusName::try_from(name.as_str()) else {
                continue;
            };
            if let Ok(owner) = self.dbus.get_name_owner(bus).await {
                if owner.as_str() == unique {
                    mine.push(name.to_string());
                }
            }
        }
        app_id_from_names(mine.iter().map(String::as_str))
    }
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
    fn well_known_names() {
        assert_eq!(
            app_id_from_names(["org.zzz.App", ":1.4", "org.aaa.App", "org.freedesktop"]).as_deref(),
            Some("org.aaa.App")
        );
        assert_eq!(app_id_from_names([":1.4", "com.example"]), None);
    }
}
