//! `Checked<I>`: an interface served with its arguments' signature checked first.
//!
//! zbus's `#[interface]` answers a body that does not deserialize with
//! `org.freedesktop.zbus.Error`; D-Bus services answer `org.freedesktop.DBus.Error.InvalidArgs`
//! (dbus-daemon, GDBus and sd-bus do, and clients match on it). The wrapper compares the
//! call's body signature with the method's declared input signature — taken once per interface
//! from the interface's own introspection — and answers `InvalidArgs` on a mismatch. Everything
//! else (properties, introspection, methods it does not know) goes straight to the interface.

use std::collections::HashMap;
use std::fmt::Write;
use std::ops::{Deref, DerefMut};
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use zbus::message::{Header, Message};
use zbus::names::{InterfaceName, MemberName};
use zbus::object_server::{DispatchResult2, Interface, SignalEmitter};
use zbus::zvariant::{OwnedValue, Signature, Value};
use zbus::{fdo, Connection, ObjectServer};

/// Method name → declared input signature (normalised: no outer parentheses).
type Inputs = HashMap<String, String>;

/// `I`, served with the input signature of every method call checked first.
pub struct Checked<I> {
    inner: I,
    inputs: Arc<Inputs>,
}

impl<I: Interface> Checked<I> {
    pub fn new(inner: I) -> Checked<I> {
        let inputs = inputs_of(&inner);
        Checked { inner, inputs }
    }

    /// `InvalidArgs` if `member` is one of the interface's methods and `msg`'s body does
    /// not have its signature.
    fn mismatch(&self, msg: &Message, member: &MemberName<'_>) -> Option<fdo::Error> {
        let expected = self.inputs.get(member.as_str())?;
        let got = msg.body().signature().to_string_no_parens();
        (got != *expected).then(|| {
            fdo::Error::InvalidArgs(format!(
                "{}.{member}: expected signature \"{expected}\", got \"{got}\"",
                I::name()
            ))
        })
    }
}

impl<I> Deref for Checked<I> {
    type Target = I;
    fn deref(&self) -> &I {
        &self.inner
    }
}

impl<I> DerefMut for Checked<I> {
    fn deref_mut(&mut self) -> &mut I {
        &mut self.inner
    }
}

/// The input signatures of `iface`'s methods, from its introspection; once per interface name.
fn inputs_of<I: Interface>(iface: &I) -> Arc<Inputs> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<Inputs>>>> = OnceLock::new();
    let name = I::name().to_string();
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .expect("signature cache lock");
    cache
        .entry(name)
        .or_insert_with(|| Arc::new(parse_inputs(iface)))
        .clone()
}

fn parse_inputs<I: Interface>(iface: &I) -> Inputs {
    let mut xml = String::from("<node>\n");
    iface.introspect_to_writer(&mut xml, 0);
    xml.push_str("</node>\n");
    // The macro's own output: it parses, or the interface is broken at build time.
    let node = zbus_xml::Node::try_from(xml.as_str()).expect("interface introspects as XML");
    let mut inputs = Inputs::new();
    for interface in node.interfaces() {
        for method in interface.methods() {
            let declared: String = method
                .args()
                .iter()
                .filter(|a| !matches!(a.direction(), Some(zbus_xml::ArgDirection::Out)))
                .map(|a| a.ty().inner().to_string())
                .collect();
            let normalised = Signature::from_str(&declared)
                .map(|s| s.to_string_no_parens())
                .unwrap_or(declared);
            inputs.insert(method.name().to_string(), normalised);
        }
    }
    inputs
}

fn refuse<'call>(err: fdo::Error) -> DispatchResult2<'call> {
    // An `Err` is what the object server replies with (unless no reply is expected).
    DispatchResult2::Async(Box::pin(async move { Err(err) }))
}

#[async_trait]
impl<I: Interface> Interface for Checked<I> {
    fn name() -> InterfaceName<'static> {
        I::name()
    }

    fn spawn_tasks_for_methods(&self) -> bool {
        self.inner.spawn_tasks_for_methods()
    }

    async fn get(
        &self,
        property_name: &str,
        server: &ObjectServer,
        connection: &Connection,
        header: Option<&Header<'_>>,
        emitter: &SignalEmitter<'_>,
    ) -> Option<fdo::Result<OwnedValue>> {
        self.inner
            .get(property_name, server, connection, header, emitter)
            .await
    }

    async fn get_all(
        &self,
        object_server: &ObjectServer,
        connection: &Connection,
        header: Option<&Header<'_>>,
        emitter: &SignalEmitter<'_>,
    ) -> fdo::Result<HashMap<String, OwnedValue>> {
        self.inner
            .get_all(object_server, connection, header, emitter)
            .await
    }

    fn set<'call>(
        &'call self,
        property_name: &'call str,
        value: &'call Value<'_>,
        object_server: &'call ObjectServer,
        connection: &'call Connection,
        header: Option<&'call Header<'_>>,
        emitter: &'call SignalEmitter<'_>,
    ) -> DispatchResult2<'call> {
        self.inner.set(
            property_name,
            value,
            object_server,
            connection,
            header,
            emitter,
        )
    }

    async fn set_mut(
        &mut self,
        property_name: &str,
        value: &Value<'_>,
        object_server: &ObjectServer,
        connection: &Connection,
        header: Option<&Header<'_>>,
        emitter: &SignalEmitter<'_>,
    ) -> Option<fdo::Result<()>> {
        self.inner
            .set_mut(
                property_name,
                value,
                object_server,
                connection,
                header,
                emitter,
            )
            .await
    }

    fn call<'call>(
        &'call self,
        server: &'call ObjectServer,
        connection: &'call Connection,
        msg: &'call Message,
        name: MemberName<'call>,
    ) -> DispatchResult2<'call> {
        match self.mismatch(msg, &name) {
            Some(err) => refuse(err),
            None => self.inner.call(server, connection, msg, name),
        }
    }

    fn call_mut<'call>(
        &'call mut self,
        server: &'call ObjectServer,
        connection: &'call Connection,
        msg: &'call Message,
        name: MemberName<'call>,
    ) -> DispatchResult2<'call> {
        match self.mismatch(msg, &name) {
            Some(err) => refuse(err),
            None => self.inner.call_mut(server, connection, msg, name),
        }
    }

    fn introspect_to_writer(&self, writer: &mut dyn Write, level: usize) {
        self.inner.introspect_to_writer(writer, level)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sample;

    #[zbus::interface(name = "org.example.Sample")]
    impl Sample {
        fn none(&self) {}
        fn one(&self, _a: i32) {}
        fn two(&self, _a: &str, _b: HashMap<String, OwnedValue>) -> String {
            String::new()
        }
        fn tuple(&self, _a: (String, u32)) {}
        #[zbus(property)]
        fn prop(&self) -> u32 {
            0
        }
    }

    #[test]
    fn input_signatures_come_from_introspection() {
        let inputs = parse_inputs(&Sample);
        assert_eq!(inputs["None"], "");
        assert_eq!(inputs["One"], "i");
        assert_eq!(inputs["Two"], "sa{sv}");
        assert_eq!(inputs["Tuple"], "su");
        assert!(!inputs.contains_key("Prop"));
    }
}
