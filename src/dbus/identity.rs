//! Who is calling: the app id derived from a D-Bus caller's credentials, never from what
//! the caller says.
//!
//! The rules, and their order, are plain functions over strings in `crate::identity`,
//! tested on fixtures there; this file is the thin wrapper that reads `/proc` and asks the
//! bus.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use zbus::fdo::DBusProxy;
use zbus::names::BusName;

use super::error::Error;
pub use crate::identity::{
    app_id_from_names, flatpak_app_id, is_reverse_dns, snap_name, systemd_app_id, Source,
};
use crate::ids::AppId;
use crate::push::Caller;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub app_id: AppId,
    pub source: Source,
    pub pid: u32,
}

impl Identity {
    pub fn sandboxed(&self) -> bool {
        self.source.sandbox().is_some()
    }

    /// One of the user's own tools (see `Source::is_user_tool`), not an app.
    pub fn is_user_tool(&self) -> bool {
        self.source.is_user_tool()
    }

    pub fn caller(&self) -> Caller {
        Caller {
            app_id: self.app_id.clone(),
            sandbox: self.source.sandbox(),
        }
    }
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
