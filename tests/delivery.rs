//! Delivery paths and the published contract: the interface XML matches what the daemon
//! introspects; an app that is not running is started by D-Bus activation to take its
//! message; a failed delivery keeps the message pending.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use support::*;
use zbus::zvariant::Value;
use zbus_xml::{ArgDirection, Interface, Node};

fn example_bin(name: &str) -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_webpushd"));
    bin.parent().unwrap().join("examples").join(name)
}

/// (kind, member, signature-ish description) of everything an interface declares;
/// out-argument names are documentation only and not compared.
fn members(iface: &Interface<'_>) -> Vec<String> {
    let mut v = Vec::new();
    for m in iface.methods() {
        let args: Vec<String> = m
            .args()
            .iter()
            .map(|a| match a.direction() {
                Some(ArgDirection::Out) => format!("out {}", a.ty().inner()),
                _ => format!("in {} {}", a.name().unwrap_or_default(), a.ty().inner()),
            })
            .collect();
        v.push(format!("method {}({})", m.name(), args.join(", ")));
    }
    for s in iface.signals() {
        let args: Vec<String> = s
            .args()
            .iter()
            .map(|a| format!("{} {}", a.name().unwrap_or_default(), a.ty().inner()))
            .collect();
        v.push(format!("signal {}({})", s.name(), args.join(", ")));
    }
    for p in iface.properties() {
        // Documentation is the XML's alone; the daemon does not introspect it.
        let emits: Vec<String> = p
            .annotations()
            .iter()
            .filter(|a| a.name() != "org.gtk.GDBus.DocString")
            .map(|a| format!("{}={}", a.name(), a.value()))
            .collect();
        v.push(format!(
            "property {} {} {:?} {}",
            p.name(),
            p.ty().inner(),
            p.access(),
            emits.join(",")
        ));
    }
    v.sort();
    v
}

fn interface<'a>(node: &'a Node<'a>, name: &str) -> &'a Interface<'a> {
    node.interfaces()
        .iter()
        .find(|i| i.name() == name)
        .unwrap_or_else(|| panic!("{name} missing"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_interface_xml_matches_what_the_daemon_introspects() {
    let w = World::new().await;
    let app = w.bus.app("org.example.Xml").await;
    let sub = app.subscribe("x").await;
    let published = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/dist/org.webpushd.Push1.xml"
    ))
    .unwrap();
    let published = Node::from_reader(published.as_bytes()).unwrap();

    let introspect = |path: String| {
        let conn = app.conn.clone();
        async move {
            let p = zbus::fdo::IntrospectableProxy::builder(&conn)
                .destination("org.webpushd.Push1")
                .unwrap()
                .path(path)
                .unwrap()
                .build()
                .await
                .unwrap();
            p.introspect().await.unwrap()
        }
    };
    let root_xml = introspect("/org/webpushd/Push1".into()).await;
    let root = Node::from_reader(root_xml.as_bytes()).unwrap();
    let sub_xml = introspect(sub.path.to_string()).await;
    let subn = Node::from_reader(sub_xml.as_bytes()).unwrap();

    for (node, name) in [
        (&root, "org.webpushd.Push1.Manager"),
        (&root, "org.webpushd.Push1.Admin"),
        (&subn, "org.webpushd.Push1.Subscription"),
    ] {
        assert_eq!(
            members(interface(node, name)),
            members(interface(&published, name)),
            "{name} differs between the daemon and dist/org.webpushd.Push1.xml"
        );
    }
    // The published file declares the app-side interface the daemon calls.
    let client = members(interface(&published, "org.webpushd.Push1.Client"));
    assert_eq!(
        client,
        vec!["method Message(in scope s, in message_id s, in payload ay, in meta a{sv})"]
    );
    // busctl tree shows the subscriptions under the manager.
    assert!(
        root_xml.contains("<node name=\"subscription\""),
        "{root_xml}"
    );
}

/// Install a `.service` file so the bus can start the example client as `name`.
fn install_client(bus: &Bus, name: &str, record: &Path, extra: &str) {
    std::fs::write(
        bus.services.join(format!("{name}.service")),
        format!(
            "[D-BUS Service]\nName={name}\nExec={} --name {name} --record {} --idle 3{extra}\n",
            example_bin("push-client").display(),
            record.display()
        ),
    )
    .unwrap();
}

/// Subscribe as `name` with `bus_name = name`, then leave the bus.
async fn subscribe_activatable(bus: &Bus, name: &str) -> Sub {
    let app = bus.app(name).await;
    let opts = HashMap::from([("bus_name", Value::from(name))]);
    let sub = app.subscribe_with("background", opts).await.unwrap();
    app.conn.close().await.unwrap();
    // Until the daemon has seen the app go, a message would be signalled to nobody
    // instead of starting the app.
    let observer = App::new(bus.connect().await).await;
    eventually("the daemon to see the app leave", || async {
        let s = observer.admin.status().await.ok()?;
        let n: u64 = s.get("apps_connected")?.try_into().ok()?;
        (n == 0).then_some(())
    })
    .await;
    sub
}

fn recorded(record: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(record)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_for_a_stopped_app_starts_it_by_activation() {
    let w = World::new().await;
    let name = "org.example.Activated";
    let record = w.dir.path().join("activated.jsonl");
    install_client(&w.bus, name, &record, "");
    let sub = subscribe_activatable(&w.bus, name).await;

    assert_eq!(post(&sub, b"wake up").await.status, 201);
    let got = eventually("the activated app to record the message", || async {
        let r = recorded(&record);
        (!r.is_empty()).then_some(r)
    })
    .await;
    assert_eq!(got[0]["payload"], "wake up");
    assert_eq!(got[0]["scope"], "background");

    // The successful reply acknowledged it: nothing pending. Activation cost one unit.
    let app = w.bus.app(name).await;
    eventually("the message to be forgotten", || async {
        app.manager
            .fetch_messages("background")
            .await
            .unwrap()
            .is_empty()
            .then_some(())
    })
    .await;
    let p = app.subscription(&sub.path).await;
    assert_eq!(p.push_count().await.unwrap(), 1);
    // A background delivery costs one unit, and the app's appearance that the delivery
    // itself caused (within quota.activation_grace) does not give it back.
    assert_eq!(p.quota().await.unwrap(), 15);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_background_delivery_keeps_the_message() {
    let w = World::new().await;
    let name = "org.example.Refuses";
    let record = w.dir.path().join("refuses.jsonl");
    install_client(&w.bus, name, &record, " --fail-first 100");
    let sub = subscribe_activatable(&w.bus, name).await;
    assert_eq!(post(&sub, b"keep me").await.status, 201);
    // The client was started and refused; the message waits for the app.
    let observer = w.bus.app("org.example.Observer").await;
    eventually("the client to be activated", || async {
        let dbus = zbus::fdo::DBusProxy::new(&observer.conn).await.ok()?;
        let n = zbus::names::BusName::try_from(name).ok()?;
        dbus.name_has_owner(n).await.ok()?.then_some(())
    })
    .await;
    drop(observer);
    // Remove the service so the app can be "opened" by the test instead.
    std::fs::remove_file(w.bus.services.join(format!("{name}.service"))).unwrap();
    let app = eventually("the name to be free again", || async {
        let conn = zbus::connection::Builder::address(w.bus.address.as_str())
            .ok()?
            .name(name)
            .ok()?
            .build()
            .await
            .ok()?;
        Some(App::new(conn).await)
    })
    .await;
    let pending = app.manager.fetch_messages("background").await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].1.as_ref(), b"keep me");
    assert!(recorded(&record).is_empty());
}
