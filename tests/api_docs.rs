//! The D-Bus API reference in docs/dbus-api.md is generated from the interface XML's
//! `org.gtk.GDBus.DocString` annotations, so the two cannot drift: this test renders the
//! reference and compares. `WEBPUSHD_BLESS=1 cargo test --test api_docs` rewrites it.

use zbus_xml::{Annotation, ArgDirection, Node};

const XML: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dist/org.webpushd.Push1.xml");
const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/dbus-api.md");
const BEGIN: &str =
    "<!-- reference: generated from dist/org.webpushd.Push1.xml by tests/api_docs.rs -->";
const END: &str = "<!-- end of reference -->";
const DOC_STRING: &str = "org.gtk.GDBus.DocString";

fn doc(what: &str, annotations: &[Annotation]) -> String {
    annotations
        .iter()
        .find(|a| a.name() == DOC_STRING)
        .map(|a| a.value().to_string())
        .unwrap_or_else(|| panic!("{what} has no {DOC_STRING} annotation"))
}

fn reference(xml: &str) -> String {
    let node = Node::from_reader(xml.as_bytes()).expect("the interface XML parses");
    let mut out = String::new();
    for iface in node.interfaces() {
        let name = iface.name().to_string();
        out += &format!("\n## `{name}`\n\n{}\n", doc(&name, iface.annotations()));
        if !iface.methods().is_empty() {
            out += "\n### Methods\n";
        }
        for m in iface.methods() {
            let ins: Vec<String> = m
                .args()
                .iter()
                .filter(|a| a.direction() != Some(ArgDirection::Out))
                .map(|a| format!("{} {}", a.ty().inner(), a.name().unwrap_or("")))
                .collect();
            let outs: Vec<String> = m
                .args()
                .iter()
                .filter(|a| a.direction() == Some(ArgDirection::Out))
                .map(|a| format!("{} {}", a.ty().inner(), a.name().unwrap_or("")))
                .collect();
            let ret = if outs.is_empty() {
                String::new()
            } else {
                format!(" → ({})", outs.join(", "))
            };
            let what = format!("{name}.{}", m.name());
            out += &format!(
                "\n#### `{}({}){ret}`\n\n{}\n",
                m.name(),
                ins.join(", "),
                doc(&what, m.annotations())
            );
        }
        if !iface.signals().is_empty() {
            out += "\n### Signals\n";
        }
        for s in iface.signals() {
            let args: Vec<String> = s
                .args()
                .iter()
                .map(|a| format!("{} {}", a.ty().inner(), a.name().unwrap_or("")))
                .collect();
            let what = format!("{name}.{}", s.name());
            out += &format!(
                "\n#### `{}({})`\n\n{}\n",
                s.name(),
                args.join(", "),
                doc(&what, s.annotations())
            );
        }
        if !iface.properties().is_empty() {
            out += "\n### Properties\n\n| property | type | |\n| --- | --- | --- |\n";
        }
        for p in iface.properties() {
            let what = format!("{name}.{}", p.name());
            out += &format!(
                "| `{}` | `{}` | {} |\n",
                p.name(),
                p.ty().inner(),
                doc(&what, p.annotations()).replace('|', "\\|")
            );
        }
    }
    out
}

#[test]
fn the_api_reference_is_generated_from_the_interface_xml() {
    let xml = std::fs::read_to_string(XML).unwrap();
    let want = reference(&xml);
    let text = std::fs::read_to_string(DOC).unwrap();
    let (head, rest) = text
        .split_once(BEGIN)
        .unwrap_or_else(|| panic!("{DOC} lacks the line {BEGIN}"));
    let (got, tail) = rest
        .split_once(END)
        .unwrap_or_else(|| panic!("{DOC} lacks the line {END}"));
    if got.trim() == want.trim() {
        return;
    }
    if std::env::var_os("WEBPUSHD_BLESS").is_some() {
        std::fs::write(
            DOC,
            format!("{head}{BEGIN}\n\n{}\n\n{END}{tail}", want.trim()),
        )
        .unwrap();
        return;
    }
    panic!(
        "docs/dbus-api.md is out of step with dist/org.webpushd.Push1.xml; \
         run WEBPUSHD_BLESS=1 cargo test --test api_docs and review the change"
    );
}

#[test]
fn a_member_without_documentation_is_refused() {
    let xml = r#"<node><interface name="a.B"><annotation name="org.gtk.GDBus.DocString" value="x"/>
        <method name="C"/></interface></node>"#;
    let r = std::panic::catch_unwind(|| reference(xml));
    assert!(
        r.is_err(),
        "a method without a DocString must fail the test"
    );
}
