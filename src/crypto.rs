//! Web Push message encryption (RFC 8291 over RFC 8188 `aes128gcm`, and the legacy `aesgcm`
//! draft) on top of Mozilla's `ece` crate.
//!
//! Pure functions over bytes: no I/O, no async, no logging of inputs. Key material never
//! appears in `Debug` output and is zeroed when dropped.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::sync::{Arc, OnceLock};

use base64::Engine;
use zeroize::Zeroizing;

mod backend;

/// Bytes of an uncompressed P-256 point.
pub const PUBLIC_KEY_LEN: usize = 65;
/// Bytes of the RFC 8291 authentication secret.
pub const AUTH_LEN: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("unsupported content encoding {0:?}")]
    UnknownEncoding(String),
    #[error("aesgcm message without the {0} header")]
    MissingHeader(&'static str),
    #[error("bad {0} header")]
    BadHeader(&'static str),
    #[error("payload is not valid base64url")]
    BadBase64,
    #[error("decryption failed: {0}")]
    Decrypt(String),
    #[error("encryption failed: {0}")]
    Encrypt(String),
    #[error("invalid key: {0}")]
    InvalidKey(String),
}

/// A subscription's receiving keys: a P-256 key pair and the 16-byte auth secret.
#[derive(Clone)]
pub struct SubscriptionKeys {
    private: Zeroizing<Vec<u8>>,
    public: Vec<u8>,
    auth: Zeroizing<Vec<u8>>,
    /// The private key parsed for ECDH, on the first message; shared by clones (the
    /// daemon clones the keys for each message it decrypts).
    parsed: Arc<OnceLock<Option<Arc<backend::StaticKey>>>>,
}

impl std::fmt::Debug for SubscriptionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SubscriptionKeys { .. }")
    }
}

impl SubscriptionKeys {
    pub fn generate() -> Result<SubscriptionKeys, CryptoError> {
        backend::install();
        let (pair, auth) = ece::generate_keypair_and_auth_secret()
            .map_err(|e| CryptoError::InvalidKey(e.to_string()))?;
        let comps = pair
            .raw_components()
            .map_err(|e| CryptoError::InvalidKey(e.to_string()))?;
        Ok(SubscriptionKeys {
            private: pad_scalar(comps.private_key())?,
            public: comps.public_key().to_vec(),
            auth: Zeroizing::new(auth.to_vec()),
            parsed: Arc::default(),
        })
    }

    /// Rebuild from stored bytes, checking that they form a usable key pair (a damaged row
    /// must give an error here, not a panic inside `ece` later).
    pub fn from_parts(
        private: Vec<u8>,
        public: Vec<u8>,
        auth: Vec<u8>,
    ) -> Result<SubscriptionKeys, CryptoError> {
        let private = pad_scalar(&Zeroizing::new(private))?;
        let auth = Zeroizing::new(auth);
        if public.len() != PUBLIC_KEY_LEN || public[0] != 4 {
            return Err(CryptoError::InvalidKey(
                "public key is not a P-256 point".into(),
            ));
        }
        if auth.len() != AUTH_LEN {
            return Err(CryptoError::InvalidKey(
                "auth secret is not 16 bytes".into(),
            ));
        }
        // At load only the public point is checked (on the curve); the full pair check
        // (a scalar multiplication, ~50 µs) made startup with 10,000 subscriptions take
        // half a second. A pair that does not match fails at decryption, as a 101.
        point_on_curve(&public)?;
        Ok(SubscriptionKeys {
            private,
            public,
            auth,
            parsed: Arc::default(),
        })
    }

    pub fn public_key(&self) -> &[u8] {
        &self.public
    }

    pub fn auth(&self) -> &[u8] {
        &self.auth
    }

    pub fn private_key(&self) -> &[u8] {
        &self.private
    }

    fn components(&self) -> ece::EcKeyComponents {
        ece::EcKeyComponents::new(self.private.to_vec(), self.public.clone())
    }

    fn parsed(&self) -> Option<Arc<backend::StaticKey>> {
        self.parsed
            .get_or_init(|| backend::StaticKey::parse(&self.private, &self.public))
            .clone()
    }
}

/// A P-256 private scalar as exactly 32 big-endian bytes. OpenSSL (through `ece`), which
/// earlier versions used, handed out the minimal encoding, so about one key in 256 was
/// stored as 31 bytes (a leading zero byte dropped); such rows are accepted and padded.
fn pad_scalar(d: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if d.is_empty() || d.len() > 32 {
        return Err(CryptoError::InvalidKey(format!(
            "private key is {} bytes, not 1-32",
            d.len()
        )));
    }
    let mut out = Zeroizing::new(vec![0u8; 32]);
    out[32 - d.len()..].copy_from_slice(d);
    Ok(out)
}

/// The uncompressed public point of a P-256 private scalar (1-32 big-endian bytes).
pub fn public_key_of(private: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let d = pad_scalar(private)?;
    let key = backend::private_key(&d)
        .map_err(|_| CryptoError::InvalidKey("not a P-256 private scalar".into()))?;
    let public = key
        .compute_public_key()
        .map_err(|_| CryptoError::InvalidKey("not a P-256 private scalar".into()))?;
    Ok(public.as_ref().to_vec())
}

/// The full check that `private` and `public` are one P-256 key pair.
pub fn validate_pair(private: &[u8], public: &[u8]) -> Result<(), CryptoError> {
    point_on_curve(public)?;
    if public_key_of(private)? != public {
        return Err(CryptoError::InvalidKey(
            "public key does not match the private key".into(),
        ));
    }
    Ok(())
}

/// Decode a P-256 point and check that it is on the curve. Cheap (no scalar
/// multiplication): startup loads every subscription's key.
fn point_on_curve(raw: &[u8]) -> Result<(), CryptoError> {
    backend::public_key(raw)
        .map(drop)
        .map_err(|_| CryptoError::InvalidKey("public key is not a point on P-256".into()))
}

/// Check an application server (VAPID) key: a 65-byte uncompressed point on P-256.
pub fn validate_public_key(raw: &[u8]) -> Result<(), CryptoError> {
    if raw.len() != PUBLIC_KEY_LEN || raw[0] != 4 {
        return Err(CryptoError::InvalidKey(format!(
            "expected a {PUBLIC_KEY_LEN}-byte uncompressed P-256 point, got {} bytes",
            raw.len()
        )));
    }
    backend::public_key(raw)
        .map(drop)
        .map_err(|_| CryptoError::InvalidKey("not a point on P-256".into()))
}

/// How a message body is encrypted, from the notification's `headers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encoding {
    /// RFC 8188: salt, record size and sender key are in the body.
    Aes128gcm,
    /// The legacy draft: salt and record size in `Encryption`, sender key in `Crypto-Key`.
    Aesgcm { salt: Vec<u8>, dh: Vec<u8>, rs: u32 },
}

/// The encoding-related headers as the push server forwards them.
#[derive(Debug, Default, Clone)]
pub struct EncodingHeaders<'a> {
    pub encoding: Option<&'a str>,
    pub encryption: Option<&'a str>,
    pub crypto_key: Option<&'a str>,
}

impl Encoding {
    pub fn from_headers(h: &EncodingHeaders<'_>) -> Result<Encoding, CryptoError> {
        let encoding = h.encoding.unwrap_or("").trim();
        match encoding.to_ascii_lowercase().as_str() {
            "aes128gcm" => Ok(Encoding::Aes128gcm),
            "aesgcm" => {
                let enc = h
                    .encryption
                    .ok_or(CryptoError::MissingHeader("Encryption"))?;
                let ck = h
                    .crypto_key
                    .ok_or(CryptoError::MissingHeader("Crypto-Key"))?;
                let salt = header_param(enc, "salt").ok_or(CryptoError::BadHeader("Encryption"))?;
                let salt = b64(salt).map_err(|_| CryptoError::BadHeader("Encryption"))?;
                let rs = match header_param(enc, "rs") {
                    Some(v) => v
                        .parse()
                        .map_err(|_| CryptoError::BadHeader("Encryption"))?,
                    None => 4096,
                };
                let dh = header_param(ck, "dh").ok_or(CryptoError::BadHeader("Crypto-Key"))?;
                let dh = b64(dh).map_err(|_| CryptoError::BadHeader("Crypto-Key"))?;
                if salt.len() != 16 {
                    return Err(CryptoError::BadHeader("Encryption"));
                }
                Ok(Encoding::Aesgcm { salt, dh, rs })
            }
            other => Err(CryptoError::UnknownEncoding(other.to_string())),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Encoding::Aes128gcm => "aes128gcm",
            Encoding::Aesgcm { .. } => "aesgcm",
        }
    }
}

/// Find `name=value` in a header like `keyid=p256dh;dh=BASE64, p256ecdsa=…`.
fn header_param<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header
        .split([';', ','])
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().trim_matches('"'))
}

/// base64url with or without padding (servers and libraries differ).
pub fn b64(s: &str) -> Result<Vec<u8>, CryptoError> {
    URL_SAFE_NO_PAD
        .decode(s.trim().trim_end_matches('='))
        .map_err(|_| CryptoError::BadBase64)
}

pub fn b64_encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decrypt a Web Push body addressed to `keys`.
pub fn decrypt(
    keys: &SubscriptionKeys,
    encoding: &Encoding,
    body: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    backend::install();
    let comps = keys.components();
    let parsed = keys.parsed();
    // `ece` has internal `unwrap`s; a hostile body must never take the daemon down.
    let result = std::panic::catch_unwind(|| {
        backend::with_static_key(parsed, || match encoding {
            Encoding::Aes128gcm => ece::decrypt(&comps, keys.auth(), body),
            Encoding::Aesgcm { salt, dh, rs } => {
                let block = ece::legacy::AesGcmEncryptedBlock::new(dh, salt, *rs, body.to_vec())?;
                ece::legacy::decrypt_aesgcm(&comps, keys.auth(), &block)
            }
        })
    });
    match result {
        Ok(Ok(plain)) => Ok(plain),
        Ok(Err(e)) => Err(CryptoError::Decrypt(e.to_string())),
        Err(_) => Err(CryptoError::Decrypt("malformed message".into())),
    }
}

/// An encrypted message ready to POST, as an application server would send it.
#[derive(Debug, Clone)]
pub struct Encrypted {
    pub body: Vec<u8>,
    /// HTTP headers to send along (`Content-Encoding`, and for aesgcm `Encryption`,
    /// `Crypto-Key`).
    pub headers: Vec<(&'static str, String)>,
}

/// Encrypt `plaintext` to a subscription's public key and auth secret (`pushctl send`, tests).
pub fn encrypt(
    p256dh: &[u8],
    auth: &[u8],
    plaintext: &[u8],
    aesgcm: bool,
) -> Result<Encrypted, CryptoError> {
    if auth.len() != AUTH_LEN {
        return Err(CryptoError::InvalidKey(
            "auth secret is not 16 bytes".into(),
        ));
    }
    validate_public_key(p256dh)?;
    backend::install();
    if aesgcm {
        let block = ece::legacy::encrypt_aesgcm(p256dh, auth, plaintext)
            .map_err(|e| CryptoError::Encrypt(e.to_string()))?;
        let mut headers = vec![("Content-Encoding", "aesgcm".to_string())];
        headers.extend(block.headers(None));
        let body = b64(&block.body())?;
        Ok(Encrypted { body, headers })
    } else {
        let body = ece::encrypt(p256dh, auth, plaintext)
            .map_err(|e| CryptoError::Encrypt(e.to_string()))?;
        Ok(Encrypted {
            body,
            headers: vec![("Content-Encoding", "aes128gcm".to_string())],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8291 Appendix A.
    #[test]
    fn rfc8291_example_decrypts() {
        let private = b64("q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94").unwrap();
        let public = b64(
            "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
        )
        .unwrap();
        let auth = b64("BTBZMqHH6r4Tts7J_aSIgg").unwrap();
        let body = b64("DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN").unwrap();
        let keys = SubscriptionKeys::from_parts(private, public, auth).unwrap();
        let plain = decrypt(&keys, &Encoding::Aes128gcm, &body).unwrap();
        assert_eq!(plain, b"When I grow up, I want to be a watermelon");
    }

    #[test]
    fn round_trip_both_encodings() {
        let keys = SubscriptionKeys::generate().unwrap();
        for aesgcm in [false, true] {
            let enc = encrypt(keys.public_key(), keys.auth(), b"hello there", aesgcm).unwrap();
            let get = |n: &str| {
                enc.headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(n))
                    .map(|(_, v)| v.as_str())
            };
            let encoding = Encoding::from_headers(&EncodingHeaders {
                encoding: get("Content-Encoding"),
                encryption: get("Encryption"),
                crypto_key: get("Crypto-Key"),
            })
            .unwrap();
            assert_eq!(
                decrypt(&keys, &encoding, &enc.body).unwrap(),
                b"hello there"
            );
        }
    }

    #[test]
    fn tampered_or_truncated_bodies_are_errors() {
        let keys = SubscriptionKeys::generate().unwrap();
        let enc = encrypt(keys.public_key(), keys.auth(), b"payload", false).unwrap();
        let mut bad = enc.body.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(decrypt(&keys, &Encoding::Aes128gcm, &bad).is_err());
        for n in [0, 1, 20, 86, enc.body.len() - 1] {
            assert!(decrypt(&keys, &Encoding::Aes128gcm, &enc.body[..n]).is_err());
        }
        let other = SubscriptionKeys::generate().unwrap();
        assert!(decrypt(&other, &Encoding::Aes128gcm, &enc.body).is_err());
    }

    #[test]
    fn aesgcm_header_errors_are_named() {
        let h = EncodingHeaders {
            encoding: Some("aesgcm"),
            encryption: None,
            crypto_key: Some("dh=abc"),
        };
        assert_eq!(
            Encoding::from_headers(&h),
            Err(CryptoError::MissingHeader("Encryption"))
        );
        let h = EncodingHeaders {
            encoding: Some("rot13"),
            ..Default::default()
        };
        assert!(matches!(
            Encoding::from_headers(&h),
            Err(CryptoError::UnknownEncoding(_))
        ));
    }

    #[test]
    fn stored_keys_are_checked() {
        let k = SubscriptionKeys::generate().unwrap();
        let mut public = k.public_key().to_vec();
        public[10] ^= 0xff;
        assert!(
            SubscriptionKeys::from_parts(k.private_key().to_vec(), public, k.auth().to_vec())
                .is_err()
        );
        assert!(!format!("{k:?}").contains(&format!("{:?}", k.auth())));
    }

    #[test]
    fn pairs_are_checked_in_full() {
        let k = SubscriptionKeys::generate().unwrap();
        validate_pair(k.private_key(), k.public_key()).unwrap();
        assert_eq!(public_key_of(k.private_key()).unwrap(), k.public_key());
        let other = SubscriptionKeys::generate().unwrap();
        assert!(validate_pair(k.private_key(), other.public_key()).is_err());
        // Zero and the group order are not private keys.
        assert!(public_key_of(&[0u8; 32]).is_err());
        let n = b64("_____wAAAAD__________7zm-q2nF56E87nKwvxjJVE").unwrap();
        assert!(public_key_of(&n).is_err());
    }

    #[test]
    fn clones_share_the_parsed_key() {
        // The daemon decrypts with a clone of the keys it holds: the parse must stick.
        let keys = SubscriptionKeys::generate().unwrap();
        let enc = encrypt(keys.public_key(), keys.auth(), b"once", false).unwrap();
        assert!(keys.parsed.get().is_none());
        let copy = keys.clone();
        assert_eq!(
            decrypt(&copy, &Encoding::Aes128gcm, &enc.body).unwrap(),
            b"once"
        );
        assert!(matches!(keys.parsed.get(), Some(Some(_))));
        // A damaged scalar is not cached as a key and still fails as a decryption error.
        let bad =
            SubscriptionKeys::from_parts(vec![0; 32], keys.public.clone(), keys.auth.to_vec())
                .unwrap();
        assert!(decrypt(&bad, &Encoding::Aes128gcm, &enc.body).is_err());
    }

    #[test]
    fn short_private_scalars_are_padded_and_still_decrypt() {
        // Find a key whose scalar has a leading zero byte (about one in 256).
        let keys = loop {
            let k = SubscriptionKeys::generate().unwrap();
            if k.private_key()[0] == 0 {
                break k;
            }
        };
        assert_eq!(keys.private_key().len(), 32);
        // Stored minimal (31 bytes), as an earlier version may have: still usable.
        let again = SubscriptionKeys::from_parts(
            keys.private_key()[1..].to_vec(),
            keys.public_key().to_vec(),
            keys.auth().to_vec(),
        )
        .unwrap();
        let enc = encrypt(keys.public_key(), keys.auth(), b"zero", false).unwrap();
        assert_eq!(
            decrypt(&again, &Encoding::Aes128gcm, &enc.body).unwrap(),
            b"zero"
        );
    }

    /// Per-call cost of the hot path, for comparing crypto backends on one machine:
    /// `cargo test --release --lib -- --ignored --nocapture timing_`. The best of five
    /// rounds, so other work on the machine inflates it less.
    #[test]
    #[ignore]
    fn timing_decrypt_aes128gcm_3k() {
        let keys = SubscriptionKeys::generate().unwrap();
        let plain = vec![b'x'; 3 * 1024];
        let bodies: Vec<Vec<u8>> = (0..200)
            .map(|_| {
                encrypt(keys.public_key(), keys.auth(), &plain, false)
                    .unwrap()
                    .body
            })
            .collect();
        let best = (0..5)
            .map(|_| {
                let t = std::time::Instant::now();
                for body in &bodies {
                    std::hint::black_box(decrypt(&keys, &Encoding::Aes128gcm, body).unwrap());
                }
                t.elapsed().as_secs_f64() * 1e6 / bodies.len() as f64
            })
            .fold(f64::INFINITY, f64::min);
        println!("timing crypto::decrypt aes128gcm 3 KiB: {best:.1} µs");
    }

    #[test]
    fn vapid_key_validation() {
        let k = SubscriptionKeys::generate().unwrap();
        assert!(validate_public_key(k.public_key()).is_ok());
        assert!(validate_public_key(&[4u8; 65]).is_err());
        assert!(validate_public_key(&k.public_key()[..64]).is_err());
    }
}
