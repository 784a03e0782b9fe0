//! Who is calling: the app id derived from a D-Bus caller's credentials, never from what
//! the caller says.
//!
//! The rules, and their order, are plain functions over strings in `crate::identity`,
//! tested on fixtures there; this file is the thin wrapper that reads `/proc` and asks the
//! bus.
//!
//! The bus gives the caller's PID, which the process may have given up (and the kernel
//! handed to another process) by the time `/proc/PID` is read. `read_stable` makes sure
//! the files read were the caller's: through the pidfd when the bus sends `ProcessFD`
//! (the process must still be alive after the reads), otherwise by its start time, the
//! same before and after.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
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
    proc_root: PathBuf,
}

impl Resolver {
    pub async fn new(conn: &zbus::Connection) -> zbus::Result<Arc<Resolver>> {
        let dbus = DBusProxy::new(conn).await?;
        let r = Arc::new(Resolver {
            dbus,
            names: Mutex::new(HashMap::new()),
            cache: Mutex::new(HashMap::new()),
            proc_root: PathBuf::from("/proc"),
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
        let process = match (creds.process_fd(), creds.process_id()) {
            (Some(fd), _) => Process::PidFd(fd.as_fd()),
            (None, Some(pid)) => Process::Pid(pid),
            (None, None) => {
                return Err(Error::AccessDenied(
                    "the bus does not tell the caller's process".into(),
                ))
            }
        };
        let root = self.proc_root.clone();
        let (pid, facts) = read_stable(&self.proc_root, process, |pid| {
            ProcFacts::read(&root.join(pid.to_string()))
        })
        .map_err(|e| {
            Error::AccessDenied(
                match e {
                    Unstable::Gone => "the caller's process ended before it could be identified",
                    Unstable::Reused => {
                        "the caller's process ID was reused while it was identified"
                    }
                }
                .into(),
            )
        })?;
        let identity = self.identify_process(unique, pid, facts).await?;
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

    async fn identify_process(
        &self,
        unique: &str,
        pid: u32,
        facts: ProcFacts,
    ) -> Result<Identity, Error> {
        let make = |id: String, source| -> Result<Identity, Error> {
            Ok(Identity {
                app_id: AppId::parse(&id)
                    .map_err(|e| Error::AccessDenied(format!("unusable app id: {e}")))?,
                source,
                pid,
            })
        };
        match facts.flatpak_info {
            Ok(Some(info)) => {
                return match flatpak_app_id(&info) {
                    Some(id) => make(id, Source::Flatpak),
                    None => Err(Error::AccessDenied(
                        "sandboxed caller without an application id".into(),
                    )),
                };
            }
            Ok(None) => {}
            Err(e) => {
                return Err(Error::AccessDenied(format!(
                    "cannot inspect the caller's sandbox: {e}"
                )))
            }
        }
        if let Some(name) = snap_name(&facts.cgroup) {
            return make(name, Source::Snap);
        }
        if let Some(id) = systemd_app_id(&facts.cgroup) {
            return make(id, Source::Systemd);
        }
        if let Some(id) = self.owned_name(unique).await {
            return make(id, Source::BusName);
        }
        let exe = facts
            .exe
            .ok_or_else(|| Error::AccessDenied("cannot tell who the caller is".into()))?;
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

/// What `/proc/PID` tells of a process, read in one go so that `read_stable` can vouch
/// for all of it.
#[derive(Debug)]
struct ProcFacts {
    /// `root/.flatpak-info`: `Ok(None)` if there is none; `Err` if it could not be read.
    /// Reading `/proc/PID/root` needs the same user (and no ptrace restriction); a
    /// permission error must not let a sandboxed app pass as unsandboxed, so any error
    /// other than "no such file" refuses the call.
    flatpak_info: Result<Option<String>, String>,
    cgroup: String,
    /// The executable's file name (without the " (deleted)" of a replaced binary), or
    /// `comm`.
    exe: Option<String>,
}

impl ProcFacts {
    fn read(dir: &Path) -> ProcFacts {
        let flatpak_info = match std::fs::read_to_string(dir.join("root/.flatpak-info")) {
            Ok(info) => Ok(Some(info)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.to_string()),
        };
        let cgroup = std::fs::read_to_string(dir.join("cgroup")).unwrap_or_default();
        let exe = std::fs::read_link(dir.join("exe"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .or_else(|| {
                std::fs::read_to_string(dir.join("comm"))
                    .ok()
                    .map(|s| s.trim().to_string())
            })
            .map(|s| s.trim_end_matches(" (deleted)").to_string())
            .filter(|s| !s.is_empty());
        ProcFacts {
            flatpak_info,
            cgroup,
            exe,
        }
    }
}

/// The caller's process as the bus names it: a PID, and a pidfd when the bus sends
/// `ProcessFD` (dbus-broker, dbus-daemon ≥ 1.15.7).
pub(crate) enum Process<'a> {
    PidFd(BorrowedFd<'a>),
    Pid(u32),
}

/// Why a caller's process could not be pinned down.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unstable {
    /// The process ended while it was being identified: its PID may now be another's.
    Gone,
    /// The PID named another process after the reads than before them (start times differ).
    Reused,
}

/// Run `read` on the files of the caller's process (`proc_root`/PID) and make sure they
/// were that process's, not those of a later process that got the same PID:
///
/// - with a pidfd: the PID is the pidfd's own (`Pid:` in `/proc/self/fdinfo`), and the
///   process must still be alive after the reads (`pidfd_send_signal(fd, 0)`), so its PID
///   cannot have been reused in between, as xdg-desktop-portal does;
/// - with a PID only: the process's start time (field 22 of `stat`) is read before and
///   after, and must be the same.
pub(crate) fn read_stable<T>(
    proc_root: &Path,
    process: Process<'_>,
    read: impl FnOnce(u32) -> T,
) -> Result<(u32, T), Unstable> {
    match process {
        Process::PidFd(fd) => {
            let pid = pidfd_pid(fd).ok_or(Unstable::Gone)?;
            let value = read(pid);
            if pidfd_alive(fd) {
                Ok((pid, value))
            } else {
                Err(Unstable::Gone)
            }
        }
        Process::Pid(pid) => {
            let before = start_time(proc_root, pid).ok_or(Unstable::Gone)?;
            let value = read(pid);
            match start_time(proc_root, pid) {
                Some(after) if after == before => Ok((pid, value)),
                Some(_) => Err(Unstable::Reused),
                None => Err(Unstable::Gone),
            }
        }
    }
}

/// Field 22 of `/proc/PID/stat`: when the process started, in clock ticks since boot.
/// Parsed after the last `)`, as `comm` may hold spaces and parentheses.
pub(crate) fn start_time(proc_root: &Path, pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    parse_start_time(&stat)
}

fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // Fields after comm start at 3 (state); the start time is field 22.
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// The PID a pidfd refers to, from `/proc/self/fdinfo/FD` (`Pid: -1` once it is reaped).
fn pidfd_pid(fd: BorrowedFd<'_>) -> Option<u32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    let pid: i64 = info
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))?
        .trim()
        .parse()
        .ok()?;
    u32::try_from(pid).ok().filter(|p| *p > 0)
}

/// Whether the pidfd's process has not exited (signal 0 checks without sending).
fn pidfd_alive(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: pidfd_send_signal with signal 0 and no siginfo only checks the process.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{FromRawFd, OwnedFd};

    /// A `stat` line as the kernel writes it, with a `comm` that looks like more fields.
    fn stat(pid: u32, start: u64) -> String {
        format!(
            "{pid} (a) b (c) S 1 {pid} {pid} 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 {start} 12345 67 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n"
        )
    }

    fn fake_process(root: &Path, pid: u32, start: u64, cgroup: &str) {
        let dir = root.join(pid.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("stat"), stat(pid, start)).unwrap();
        std::fs::write(dir.join("cgroup"), cgroup).unwrap();
        std::fs::write(dir.join("comm"), "chat\n").unwrap();
    }

    const PLAIN: &str = "0::/user.slice/user-1000.slice/session-2.scope\n";
    const SNAP: &str = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/snap.banking.banking-0f1e.scope\n";

    #[test]
    fn start_time_is_field_22_whatever_comm_holds() {
        assert_eq!(parse_start_time(&stat(7, 987654)), Some(987654));
        assert_eq!(parse_start_time("7 (x) S 1"), None);
    }

    #[test]
    fn a_pid_that_names_the_same_process_throughout_is_read() {
        let dir = tempfile::tempdir().unwrap();
        fake_process(dir.path(), 42, 1000, PLAIN);
        let (pid, facts) = read_stable(dir.path(), Process::Pid(42), |pid| {
            ProcFacts::read(&dir.path().join(pid.to_string()))
        })
        .unwrap();
        assert_eq!(pid, 42);
        assert_eq!(facts.cgroup, PLAIN);
        assert_eq!(facts.exe.as_deref(), Some("chat"));
        assert_eq!(facts.flatpak_info, Ok(None));
    }

    /// The caller exits and its PID goes to another app's process (a snap) while the
    /// daemon reads /proc: what was read describes the other app and must not be used.
    #[test]
    fn a_caller_whose_pid_was_reused_is_not_taken_for_another_app() {
        let dir = tempfile::tempdir().unwrap();
        fake_process(dir.path(), 42, 1000, PLAIN);
        let r = read_stable(dir.path(), Process::Pid(42), |pid| {
            fake_process(dir.path(), 42, 5000, SNAP);
            ProcFacts::read(&dir.path().join(pid.to_string()))
        });
        assert_eq!(r.map(|(_, f)| f.cgroup).unwrap_err(), Unstable::Reused);
        // Gone without a successor: refused too.
        let r = read_stable(dir.path(), Process::Pid(42), |pid| {
            std::fs::remove_dir_all(dir.path().join("42")).unwrap();
            pid
        });
        assert_eq!(r.unwrap_err(), Unstable::Gone);
        assert_eq!(
            read_stable(dir.path(), Process::Pid(42), |p| p).unwrap_err(),
            Unstable::Gone
        );
    }

    fn pidfd_open(pid: u32) -> OwnedFd {
        // SAFETY: pidfd_open returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        assert!(fd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
        // SAFETY: fd is a fresh descriptor that nothing else owns.
        unsafe { OwnedFd::from_raw_fd(fd as i32) }
    }

    /// With a pidfd (what `ProcessFD` carries), the PID comes from the pidfd and a
    /// process that ended during the reads is refused: by then its PID may be another's.
    #[test]
    fn through_a_pidfd_a_process_that_ended_during_the_reads_is_refused() {
        let proc_root = Path::new("/proc");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let fd = pidfd_open(child.id());
        let (pid, facts) = read_stable(proc_root, Process::PidFd(fd.as_fd()), |pid| {
            ProcFacts::read(&proc_root.join(pid.to_string()))
        })
        .unwrap();
        assert_eq!(pid, child.id());
        assert_eq!(facts.exe.as_deref(), Some("sleep"));

        let r = read_stable(proc_root, Process::PidFd(fd.as_fd()), |pid| {
            child.kill().unwrap();
            child.wait().unwrap();
            pid
        });
        assert_eq!(r.unwrap_err(), Unstable::Gone);
        // Reaped: the pidfd no longer names any PID.
        assert_eq!(
            read_stable(proc_root, Process::PidFd(fd.as_fd()), |p| p).unwrap_err(),
            Unstable::Gone
        );
    }
}
