//! Wrong argument types are answered with `org.freedesktop.DBus.Error.InvalidArgs`, as
//! dbus-daemon, GDBus and sd-bus answer them, on every interface the daemon serves; calls
//! of the right types still work.

mod support;

use support::*;
use zbus::zvariant::{DynamicType, OwnedObjectPath};

const INVALID_ARGS: &str = "org.freedesktop.DBus.Error.InvalidArgs";

/// The error name (and message) a raw call with `body` gets back.
async fn error_of<B>(
    conn: &zbus::Connection,
    dest: &str,
    path: &str,
    iface: &str,
    method: &str,
    body: &B,
) -> (String, String)
where
    B: serde::Serialize + DynamicType,
{
    match conn
        .call_method(Some(dest), path, Some(iface), method, body)
        .await
    {
        Err(zbus::Error::MethodError(name, text, _)) => {
            (name.to_string(), text.unwrap_or_default())
        }
        other => panic!("{iface}.{method}: expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn wrong_argument_types_are_invalid_args() {
    let w = World::new().await;
    w.connected().await;
    let app = w.bus.app("org.example.Args").await;
    // A call of the right types still works.
    let sub = app.subscribe("https://example.org/").await;
    let path: &str = sub.path.as_str();

    let wrong = [
        (
            "org.webpushd.Push1",
            "/org/webpushd/Push1",
            "org.webpushd.Push1.Manager",
            "Subscribe",
            "i",
        ),
        (
            "org.webpushd.Push1",
            path,
            "org.webpushd.Push1.Subscription",
            "GetKey",
            "i",
        ),
        (
            "org.webpushd.Push1",
            "/org/webpushd/Push1",
            "org.webpushd.Push1.Admin",
            "ResetQuota",
            "s",
        ),
        (
            "org.unifiedpush.Distributor.webpushd",
            "/org/unifiedpush/Distributor",
            "org.unifiedpush.Distributor2",
            "Register",
            "s",
        ),
        (
            "org.unifiedpush.Distributor.webpushd",
            "/org/unifiedpush/Distributor",
            "org.unifiedpush.Distributor1",
            "Unregister",
            "i",
        ),
    ];
    for (dest, obj, iface, method, sig) in wrong {
        let (name, text) = match sig {
            "i" => error_of(&app.conn, dest, obj, iface, method, &(42i32,)).await,
            _ => error_of(&app.conn, dest, obj, iface, method, &("wrong",)).await,
        };
        assert_eq!(name, INVALID_ARGS, "{iface}.{method}({sig}): {text}");
        assert!(
            text.contains(&format!("got \"{sig}\"")),
            "{iface}.{method}: {text}"
        );
    }
    // No arguments where some are expected is a wrong type too.
    let (name, _) = error_of(
        &app.conn,
        "org.webpushd.Push1",
        "/org/webpushd/Push1",
        "org.webpushd.Push1.Manager",
        "Subscribe",
        &(),
    )
    .await;
    assert_eq!(name, INVALID_ARGS);

    // Unknown methods are still UnknownMethod; properties and right calls still answer.
    let (name, _) = error_of(
        &app.conn,
        "org.webpushd.Push1",
        "/org/webpushd/Push1",
        "org.webpushd.Push1.Manager",
        "NoSuchMethod",
        &(),
    )
    .await;
    assert_eq!(name, "org.freedesktop.DBus.Error.UnknownMethod");
    let p = app.subscription(&sub.path).await;
    assert_eq!(p.get_key("auth").await.unwrap().into_vec(), sub.auth);
    assert_eq!(p.endpoint().await.unwrap(), sub.endpoint);
    assert_eq!(app.admin.state().await.unwrap(), "connected");
    let listed: Vec<OwnedObjectPath> = app.manager.list_subscriptions().await.unwrap();
    assert!(listed.contains(&sub.path), "{listed:?}");
}
