//! Errors as pushctl says them: one line, the D-Bus error by its short name, and what to
//! do where pushctl can tell.

use anyhow::anyhow;
use zbus::DBusError;

const NOT_RUNNING: &str = "webpushd is not running: systemctl --user start webpushd";

/// The last part of a D-Bus error name: `NotFound`, `UnknownObject`, `ServiceUnknown`, ….
fn short_name(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name)
}

/// The D-Bus error (full name, message) of a zbus error, if it is one.
fn zbus_parts(z: &zbus::Error) -> Option<(String, String)> {
    match z {
        zbus::Error::MethodError(name, msg, _) => {
            Some((name.to_string(), msg.clone().unwrap_or_default()))
        }
        zbus::Error::FDO(f) => Some(fdo_parts(f)),
        _ => None,
    }
}

pub fn zbus_error_is(z: &zbus::Error, names: &[&str]) -> bool {
    zbus_parts(z).is_some_and(|(n, _)| names.contains(&short_name(&n)))
}

/// The D-Bus error (full name, message) anywhere in an error chain.
fn dbus_error(e: &anyhow::Error) -> Option<(String, String)> {
    for cause in e.chain() {
        if let Some(parts) = cause.downcast_ref::<zbus::Error>().and_then(zbus_parts) {
            return Some(parts);
        }
        if let Some(f) = cause.downcast_ref::<zbus::fdo::Error>() {
            return Some(fdo_parts(f));
        }
    }
    None
}

fn fdo_parts(f: &zbus::fdo::Error) -> (String, String) {
    (
        f.name().to_string(),
        f.description().unwrap_or_default().to_string(),
    )
}

/// Whether the chain holds a D-Bus error whose short name is one of `names`.
pub fn is_dbus_error(e: &anyhow::Error, names: &[&str]) -> bool {
    dbus_error(e).is_some_and(|(n, _)| names.contains(&short_name(&n)))
}

/// The error chain on one line, with the daemon-not-running case said plainly and
/// repeated causes (a wrapper that prints its source) said once.
pub fn one_line(e: &anyhow::Error) -> String {
    if is_dbus_error(e, &["ServiceUnknown", "NameHasNoOwner"]) {
        return NOT_RUNNING.into();
    }
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let dbus = match cause.downcast_ref::<zbus::Error>() {
            Some(z) => zbus_parts(z),
            None => cause.downcast_ref::<zbus::fdo::Error>().map(fdo_parts),
        };
        let text = match dbus {
            Some((name, msg)) if !msg.is_empty() => format!("{}: {msg}", short_name(&name)),
            Some((name, _)) => short_name(&name).to_string(),
            None => cause.to_string(),
        };
        let text = text.replace('\n', " ");
        if parts.last().is_some_and(|p| p.contains(text.as_str())) {
            continue;
        }
        parts.push(text);
    }
    parts.join(": ")
}

/// `s` as one shell word, for the commands suggested in error messages.
pub fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:@=+,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Who pushctl acts as, for error messages.
pub struct Acting<'a>(pub Option<&'a str>);

impl Acting<'_> {
    pub fn no_subscription(&self, scope: &str) -> anyhow::Error {
        match self.0 {
            Some(id) => anyhow!(
                "NotFound: no subscription {scope:?} for app {id}; see pushctl --app-id {} list",
                shell_word(id)
            ),
            None => anyhow!(
                "NotFound: no subscription {scope:?} for pushctl's own app id; act as an app with --app-id ID (pushctl list --all shows every app's)"
            ),
        }
    }

    /// A failed call about `scope`: NotFound means there is no such subscription.
    pub fn scope_error(&self, e: zbus::Error, scope: &str, doing: String) -> anyhow::Error {
        let e = anyhow!(e);
        if is_dbus_error(&e, &["NotFound"]) {
            self.no_subscription(scope)
        } else {
            e.context(doing)
        }
    }
}

/// A failed call about the object at `path`.
pub fn path_error(e: anyhow::Error, path: &str) -> anyhow::Error {
    if is_dbus_error(&e, &["UnknownObject", "UnknownInterface", "NotFound"]) {
        anyhow!("NotFound: no subscription at {path}; pushctl list --all shows every subscription")
    } else {
        e
    }
}
