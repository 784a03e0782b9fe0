//! What autoendpoint checks of a push's headers (`NotificationHeaders`), and the `headers`
//! object the client then sees. See `docs/push-server.md`.

use std::collections::BTreeMap;

use super::{PushMessage, Rejection};

/// Header rules of autoendpoint (`NotificationHeaders`), in its order: with a body, a
/// `Content-Encoding` of exactly `aesgcm` or `aes128gcm` (case-sensitive, untrimmed);
/// aesgcm needs a base64url `salt` in `Encryption` and, only if `Crypto-Key` is sent, a
/// base64url `dh` in it; aes128gcm must carry neither. Then the Topic (at most 32
/// characters of `^[0-9A-Za-z_-]+=*$`). `Urgency` is not looked at. Returns the `headers`
/// object the client will see: the raw encoding plus `encryption` and `crypto_key`
/// whenever they were sent (for aes128gcm too), quotes and base64 padding stripped.
pub(super) fn validate_push(
    msg: &PushMessage,
    negative_ttl: bool,
) -> Result<Option<BTreeMap<String, String>>, Rejection> {
    let headers = if msg.body.is_empty() {
        None
    } else {
        let crypto = |m: &str| Rejection::new(400, Some(110), m);
        let encryption = msg.encryption.as_deref().map(strip_header);
        let crypto_key = msg.crypto_key.as_deref().map(strip_header);
        let encoding = msg
            .content_encoding
            .as_deref()
            .ok_or_else(|| crypto("Missing Content-Encoding header"))?;
        match encoding {
            "aesgcm" => {
                base64_item_exists("Encryption", encryption.as_deref(), "salt")?;
                if crypto_key.is_some() {
                    base64_item_exists("Crypto-Key", crypto_key.as_deref(), "dh")?;
                }
            }
            "aes128gcm" => {
                item_absent("aes128gcm Encryption", encryption.as_deref(), "salt")?;
                item_absent("aes128gcm Crypto-Key", crypto_key.as_deref(), "dh")?;
            }
            _ => return Err(crypto("Unknown Content-Encoding header")),
        }
        let mut headers = BTreeMap::from([("encoding".to_owned(), encoding.to_owned())]);
        if let Some(v) = encryption {
            headers.insert("encryption".to_owned(), v);
        }
        if let Some(v) = crypto_key {
            headers.insert("crypto_key".to_owned(), v);
        }
        Some(headers)
    };
    if negative_ttl {
        // autopush leaves the order of 114 and 113 to a HashMap; this one is fixed.
        return Err(Rejection::new(400, Some(114), "TTL must be greater than 0"));
    }
    if let Some(topic) = &msg.topic {
        if topic.chars().count() > 32 {
            return Err(Rejection::new(
                400,
                Some(113),
                "Topic must be no greater than 32 characters",
            ));
        }
        if !is_base64url_padded(topic) {
            return Err(Rejection::new(
                400,
                Some(113),
                "Topic must be URL and Filename safe Base64 alphabet",
            ));
        }
    }
    Ok(headers)
}

/// autoendpoint's `CryptoKeyHeader::parse`: sections split on `,`, items on `;`, every
/// item must be `key=value` (else the whole header is invalid); keys are trimmed and
/// case-sensitive, values lose surrounding spaces and quotes. Returns the first value of
/// `key`, `Err(())` for an invalid header.
fn crypto_key_item(header: &str, key: &str) -> Result<Option<String>, ()> {
    let mut found = None;
    for section in header.split(',') {
        let mut in_section = None;
        for item in section.split(';') {
            let (k, v) = item.split_once('=').ok_or(())?;
            if k.trim() == key {
                in_section = Some(v.trim_matches([' ', '"']).to_owned());
            }
        }
        if found.is_none() {
            found = in_section;
        }
    }
    Ok(found)
}

fn base64_item_exists(name: &str, header: Option<&str>, key: &str) -> Result<(), Rejection> {
    let crypto = |m: String| Rejection::new(400, Some(110), m);
    let header = header.ok_or_else(|| crypto(format!("Missing {name} header")))?;
    let value = crypto_key_item(header, key)
        .map_err(|()| crypto(format!("Invalid {name} header")))?
        .ok_or_else(|| crypto(format!("Missing {key} value in {name} header")))?;
    if !is_base64url_padded(&value) {
        return Err(crypto(format!("Invalid {key} value in {name} header")));
    }
    Ok(())
}

fn item_absent(name: &str, header: Option<&str>, key: &str) -> Result<(), Rejection> {
    let crypto = |m: String| Rejection::new(400, Some(110), m);
    let Some(header) = header else {
        return Ok(());
    };
    match crypto_key_item(header, key) {
        Err(()) => Err(crypto(format!("Invalid {name} header"))),
        Ok(Some(_)) => Err(crypto(format!(
            "Do not include '{key}' header in {name} header"
        ))),
        Ok(None) => Ok(()),
    }
}

fn is_b64url_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// `^[0-9A-Za-z\-_]+=*$`: base64url, padding only at the end.
fn is_base64url_padded(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    !body.is_empty() && body.bytes().all(is_b64url_byte)
}

/// As autoendpoint forwards `Encryption` and `Crypto-Key`: every `"` removed, and a run of
/// `=` dropped where it follows a base64url character and ends an item (before `,`, `;`
/// or the end). Everything else, spaces included, is kept.
fn strip_header(header: &str) -> String {
    let s: Vec<u8> = header.bytes().filter(|&b| b != b'"').collect();
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'=' {
            let run_end = s[i..]
                .iter()
                .position(|&b| b != b'=')
                .map_or(s.len(), |p| i + p);
            let after_ok = run_end == s.len() || matches!(s[run_end], b',' | b';');
            let before_ok = i > 0 && is_b64url_byte(s[i - 1]);
            if !(after_ok && before_ok) {
                out.extend_from_slice(&s[i..run_end]);
            }
            i = run_end;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(body: &[u8], encoding: Option<&str>) -> PushMessage {
        PushMessage {
            body: body.to_vec(),
            content_encoding: encoding.map(Into::into),
            ttl: 60,
            ..PushMessage::default()
        }
    }

    #[test]
    fn push_header_rules() {
        let v = |m: &PushMessage| validate_push(m, false);
        assert_eq!(v(&push(b"", None)).unwrap(), None);
        assert_eq!(
            v(&push(b"x", Some("aes128gcm"))).unwrap().unwrap()["encoding"],
            "aes128gcm"
        );
        for bad in [None, Some("gzip"), Some("AES128GCM"), Some(" aes128gcm")] {
            let err = v(&push(b"x", bad)).unwrap_err();
            assert_eq!((err.status, err.errno), (400, Some(110)), "{bad:?}");
        }
        let err = v(&push(b"x", Some("aesgcm"))).unwrap_err();
        assert_eq!(err.errno, Some(110));

        let mut aesgcm = push(b"x", Some("aesgcm"));
        aesgcm.encryption = Some("salt=\"c2FsdA==\"".into());
        // Crypto-Key is optional for aesgcm.
        let headers = v(&aesgcm).unwrap().unwrap();
        assert_eq!(headers["encryption"], "salt=c2FsdA");
        assert!(!headers.contains_key("crypto_key"));
        aesgcm.crypto_key = Some("dh=BBBB==; p256ecdsa=CCCC".into());
        let headers = v(&aesgcm).unwrap().unwrap();
        assert_eq!(headers["crypto_key"], "dh=BBBB; p256ecdsa=CCCC");
        aesgcm.crypto_key = Some("p256ecdsa=CCCC".into());
        assert_eq!(v(&aesgcm).unwrap_err().errno, Some(110));
        aesgcm.crypto_key = Some("dh=BBBB;".into());
        assert_eq!(v(&aesgcm).unwrap_err().message, "Invalid Crypto-Key header");
        aesgcm.crypto_key = Some("DH=BBBB".into());
        assert_eq!(v(&aesgcm).unwrap_err().errno, Some(110));

        let mut topic = push(b"", None);
        topic.topic = Some("a".repeat(33));
        assert_eq!(v(&topic).unwrap_err().errno, Some(113));
        for bad in ["no spaces", "a=b", ""] {
            topic.topic = Some(bad.into());
            assert!(v(&topic).is_err(), "{bad:?}");
        }
        for good in ["ok_topic-1", "abc=="] {
            topic.topic = Some(good.into());
            assert!(v(&topic).is_ok(), "{good:?}");
        }

        let mut urgency = push(b"", None);
        urgency.urgency = Some("urgent".into());
        assert!(v(&urgency).is_ok(), "Urgency is not looked at");

        // A negative TTL is reported after the encryption headers, before the topic.
        let err = validate_push(&push(b"x", Some("gzip")), true).unwrap_err();
        assert_eq!(err.errno, Some(110));
        let err = validate_push(&push(b"x", Some("aes128gcm")), true).unwrap_err();
        assert_eq!(err.errno, Some(114));
    }

    #[test]
    fn strip_header_as_autoendpoint() {
        assert_eq!(
            strip_header("dh=BCdh; p256ecdsa=BKey"),
            "dh=BCdh; p256ecdsa=BKey"
        );
        assert_eq!(strip_header("salt=\"abc==\", x=y="), "salt=abc, x=y");
        assert_eq!(strip_header("a=b==;c=d"), "a=b;c=d");
        assert_eq!(strip_header("a=b==c"), "a=b==c");
        assert_eq!(strip_header("=="), "==");
    }
}
