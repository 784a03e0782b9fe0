//! Writes the seed corpus (`cargo run --example seed_corpus` in `fuzz/`): a few valid
//! inputs per target, so the fuzzer starts past the outer checks. Deterministic apart from
//! the encryption's random salt and sender key.

use std::path::Path;

use webpushd::crypto::encrypt;
use webpushd_fuzz::{join, keys};

fn put(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");

    let ch = "9d4a2c3e-1b6f-4f0a-8c2d-5e6f7a8b9c0d";
    let uaid = "0123456789abcdef0123456789abcdef";
    let server = root.join("server_message");
    for (name, text) in [
        ("ping", "{}".to_string()),
        ("ping2", r#"{"messageType":"ping"}"#.to_string()),
        (
            "hello",
            format!(
                r#"{{"messageType":"hello","uaid":"{uaid}","status":200,"use_webpush":true,"broadcasts":{{"remote-settings/monitor_changes":"v1"}}}}"#
            ),
        ),
        (
            "register",
            format!(
                r#"{{"messageType":"register","channelID":"{ch}","status":200,"pushEndpoint":"https://push.example/wpush/v2/abc"}}"#
            ),
        ),
        (
            "register409",
            format!(r#"{{"messageType":"register","channelID":"{ch}","status":409}}"#),
        ),
        (
            "unregister",
            format!(r#"{{"messageType":"unregister","channelID":"{ch}","status":200}}"#),
        ),
        (
            "notification",
            format!(
                r#"{{"messageType":"notification","channelID":"{ch}","version":"v1","data":"AAECAw","headers":{{"encoding":"aes128gcm"}}}}"#
            ),
        ),
        (
            "notification_aesgcm",
            format!(
                r#"{{"messageType":"notification","channelID":"{ch}","version":"v2","data":"AAECAw","headers":{{"Encoding":"aesgcm","Encryption":"salt=c2FsdA","Crypto_Key":"dh=BBBB"}}}}"#
            ),
        ),
        (
            "notification_empty",
            format!(r#"{{"messageType":"NOTIFICATION","channelID":"{ch}","version":"v3"}}"#),
        ),
        (
            "broadcast",
            r#"{"messageType":"broadcast","broadcasts":{"a":"b"}}"#.to_string(),
        ),
    ] {
        put(&server, name, text.as_bytes());
    }

    let dec = root.join("webpush_decrypt");
    let k = keys();
    for (i, plain) in [&b"x"[..], b"hello", &[7u8; 3000][..]].iter().enumerate() {
        let e = encrypt(k.public_key(), k.auth(), plain, false).unwrap();
        put(
            &dec,
            &format!("aes128gcm_{i}"),
            &join("aes128gcm", "", "", &e.body),
        );
        let e = encrypt(k.public_key(), k.auth(), plain, true).unwrap();
        let h = |n: &str| {
            e.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        put(
            &dec,
            &format!("aesgcm_{i}"),
            &join("aesgcm", &h("Encryption"), &h("Crypto-Key"), &e.body),
        );
    }
    put(&dec, "unknown", &join("rot13", "", "", b"x"));

    let cfg = root.join("config");
    let example =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/config.toml.example"))
            .unwrap();
    put(&cfg, "example", &example);
    put(&cfg, "empty", b"");
    put(
        &cfg,
        "local",
        b"server_url = \"local\"\n[log]\nlevel = \"debug\"\n",
    );
    put(
        &cfg,
        "full",
        b"server_url = \"ws://127.0.0.1:1/\"\nallow_insecure = true\n[connection]\nrequest_timeout = \"10s\"\nping_interval = \"30m\"\nretry_base = \"5s\"\nretry_max = \"30m\"\n[quota]\nmax_per_subscription = 16\nactivation_grace = \"60s\"\nexempt_apps = [\"org.example.A\"]\n[delivery]\nmax_pending_per_subscription = 100\nmax_age = \"30d\"\n",
    );
    put(&cfg, "bad_key", b"[connection]\nping_intervall = \"1s\"\n");
    println!("seed corpus written to {}", root.display());
}
