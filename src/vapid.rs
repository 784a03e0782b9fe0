//! VAPID (RFC 8292): ES256 JWTs that application servers attach to a push so the push
//! service can tie the endpoint to one application server key.
//!
//! Both sides live here: `pushctl send` signs with [`sign_jwt`] / [`authorization_header`],
//! and the embedded push server (`crate::server`) checks with [`parse_authorization`] and
//! [`verify_jwt`]. Pure functions over bytes and strings on top of aws-lc-rs (ECDSA P-256
//! with SHA-256) and `rustls-pki-types` (PEM): no I/O, no logging, and no error message
//! ever carries key material or a whole token.

use std::fmt;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    EcdsaKeyPair, EcdsaSigningAlgorithm, KeyPair as _, ParsedPublicKey, ECDSA_P256_SHA256_FIXED,
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING,
    ECDSA_P521_SHA512_FIXED_SIGNING,
};
use base64::alphabet;
use base64::engine::general_purpose::{
    GeneralPurpose, GeneralPurposeConfig, STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD,
};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::PrivateKeyDer;
use serde_json::Value;

/// The longest JWT we look at; real ones are a few hundred bytes.
const MAX_JWT_LEN: usize = 4096;
/// RFC 8292 §2: `exp` no more than 24 hours from now.
const MAX_EXP_AHEAD_SECS: u64 = 24 * 60 * 60;

/// Base64url that accepts input with or without `=` padding, as push services do.
const B64URL_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a VAPID operation failed. Messages name the problem, never the key or token.
#[derive(Debug, thiserror::Error)]
pub enum VapidError {
    #[error("the crypto library failed")]
    Crypto,
    #[error("not a PEM-encoded EC private key")]
    InvalidPem,
    #[error("the key is not on the P-256 curve")]
    WrongCurve,
    #[error("not an uncompressed P-256 public key (65 bytes starting with 0x04, on the curve)")]
    InvalidPublicKey,
    #[error("malformed Authorization header: {0}")]
    MalformedHeader(&'static str),
    #[error("no VAPID public key: neither `k=` nor a Crypto-Key `p256ecdsa=` parameter")]
    MissingKey,
    #[error("malformed JWT: {0}")]
    MalformedJwt(&'static str),
    #[error("unsupported JWT algorithm {0:?} (only ES256)")]
    UnsupportedAlgorithm(String),
    #[error("JWT signature does not verify with the given public key")]
    BadSignature,
    #[error("Crypto-Key header for the draft VAPID scheme: {0}")]
    DraftCryptoKey(&'static str),
    #[error("JWT has no unsigned integer `exp` claim")]
    MissingExpiry,
    #[error("JWT expired")]
    Expired,
    #[error("JWT `exp` is more than 24 hours in the future")]
    ExpiryTooFar,
    #[error("JWT has no `aud` claim")]
    MissingAudience,
    #[error("JWT audience {got:?} is not {expected:?}")]
    AudienceMismatch { expected: String, got: String },
}

/// An application server's P-256 signing key.
pub struct VapidKey {
    key: EcdsaKeyPair,
}

/// Only the public half is shown.
impl fmt::Debug for VapidKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VapidKey")
            .field("public", &URL_SAFE_NO_PAD.encode(self.public_raw()))
            .finish_non_exhaustive()
    }
}

const P256: &EcdsaSigningAlgorithm = &ECDSA_P256_SHA256_FIXED_SIGNING;

impl VapidKey {
    pub fn generate() -> Result<Self, VapidError> {
        Ok(VapidKey {
            key: EcdsaKeyPair::generate(P256).map_err(|_| VapidError::Crypto)?,
        })
    }

    /// Reads a traditional (SEC1) `EC PRIVATE KEY` or a PKCS#8 `PRIVATE KEY` PEM block;
    /// other blocks before it (OpenSSL's `EC PARAMETERS`) are skipped.
    pub fn from_pem(pem: &[u8]) -> Result<Self, VapidError> {
        let der = PrivateKeyDer::from_pem_slice(pem).map_err(|_| VapidError::InvalidPem)?;
        let der = match &der {
            PrivateKeyDer::Sec1(k) => k.secret_sec1_der(),
            PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der(),
            _ => return Err(VapidError::InvalidPem),
        };
        // aws-lc checks the key (scalar in range, public point if present matches).
        match EcdsaKeyPair::from_private_key_der(P256, der) {
            Ok(key) => Ok(VapidKey { key }),
            Err(_) => {
                let other = [
                    &ECDSA_P384_SHA384_FIXED_SIGNING,
                    &ECDSA_P521_SHA512_FIXED_SIGNING,
                ];
                if other
                    .into_iter()
                    .any(|alg| EcdsaKeyPair::from_private_key_der(alg, der).is_ok())
                {
                    Err(VapidError::WrongCurve)
                } else {
                    Err(VapidError::InvalidPem)
                }
            }
        }
    }

    /// PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub fn to_pem(&self) -> Result<Vec<u8>, VapidError> {
        let der = self.key.to_pkcs8v1().map_err(|_| VapidError::Crypto)?;
        Ok(pem_encode("PRIVATE KEY", der.as_ref()))
    }

    /// The uncompressed public point, as it goes into `k=` and a register's `key`.
    pub fn public_raw(&self) -> [u8; 65] {
        let mut out = [0u8; 65];
        let bytes = self.key.public_key().as_ref();
        // A P-256 key always encodes to 65 bytes.
        if bytes.len() == out.len() {
            out.copy_from_slice(bytes);
        }
        out
    }
}

/// A PEM block: base64 in lines of 64 characters, as OpenSSL writes it. The DER is a
/// secret here, so the intermediate text is zeroed when dropped.
fn pem_encode(label: &str, der: &[u8]) -> Vec<u8> {
    let b64 = zeroize::Zeroizing::new(STANDARD.encode(der));
    let mut out = format!("-----BEGIN {label}-----\n").into_bytes();
    for line in b64.as_bytes().chunks(64) {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.extend_from_slice(format!("-----END {label}-----\n").as_bytes());
    out
}

/// Signs a VAPID JWT: header `{"typ":"JWT","alg":"ES256"}`, claims `aud`, `exp`, `sub`,
/// signature as raw `r‖s` (JWS, not DER), all base64url without padding.
pub fn sign_jwt(key: &VapidKey, aud: &str, sub: &str, exp_unix: u64) -> Result<String, VapidError> {
    let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ES256"}"#);
    let claims = serde_json::json!({ "aud": aud, "exp": exp_unix, "sub": sub });
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{claims}");
    // The FIXED algorithm gives the JWS form directly.
    let sig = key
        .key
        .sign(&SystemRandom::new(), signing_input.as_bytes())
        .map_err(|_| VapidError::Crypto)?;
    Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

/// The RFC 8292 header value: `vapid t=<jwt>, k=<base64url public key>`.
pub fn authorization_header(
    key: &VapidKey,
    aud: &str,
    sub: &str,
    exp_unix: u64,
) -> Result<String, VapidError> {
    let jwt = sign_jwt(key, aud, sub, exp_unix)?;
    Ok(format!(
        "vapid t={jwt}, k={}",
        URL_SAFE_NO_PAD.encode(key.public_raw())
    ))
}

/// Splits an `Authorization` value into the JWT and the raw 65-byte public key, with
/// autopush-rs's rules (`VapidHeader::parse`, `extract_public_key`, `decode_public_key`):
///
/// * the scheme is everything before the first space, compared case-insensitively with
///   `vapid`, `webpush` and `bearer`; every space in the rest is removed;
/// * `vapid`: `name=value` items split on `,`, names `t` and `k` case-sensitive, values
///   taken as they are (quotes included);
/// * `webpush` / `bearer` (the draft): the rest is the JWT and the key is the
///   `p256ecdsa` item of the `Crypto-Key` header; problems with that header are
///   [`VapidError::DraftCryptoKey`] (autopush answers 400 errno 110, not 401);
/// * the key is standard base64 if it contains `+` or `/`, base64url otherwise, padding
///   optional.
pub fn parse_authorization(
    authorization: &str,
    crypto_key: Option<&str>,
) -> Result<(String, Vec<u8>), VapidError> {
    let (scheme, rest) = authorization
        .split_once(' ')
        .ok_or(VapidError::MalformedHeader(
            "expected a scheme and credentials",
        ))?;
    let scheme = scheme.to_lowercase();
    let rest = rest.replace(' ', "");
    let (jwt, key_b64) = match scheme.as_str() {
        "vapid" => {
            let mut token = None;
            let mut key = None;
            for item in rest.split(',') {
                match item.split_once('=') {
                    Some(("t", value)) => token = Some(value.to_owned()),
                    Some(("k", value)) => key = Some(value.to_owned()),
                    _ => {}
                }
            }
            let key = key.ok_or(VapidError::MissingKey)?;
            let token = token.ok_or(VapidError::MalformedHeader("no `t=` parameter"))?;
            (token, key)
        }
        "webpush" | "bearer" => {
            let header =
                crypto_key.ok_or(VapidError::DraftCryptoKey("Missing Crypto-Key header"))?;
            let key = draft_p256ecdsa(header)?;
            (rest, key)
        }
        _ => {
            return Err(VapidError::MalformedHeader(
                "scheme is none of `vapid`, `WebPush`, `Bearer`",
            ))
        }
    };
    if jwt.is_empty() || jwt.len() > MAX_JWT_LEN {
        return Err(VapidError::MalformedJwt("empty or too long"));
    }
    let key_b64 = key_b64.trim_end_matches('=');
    let key = if key_b64.contains(['+', '/']) {
        STANDARD_NO_PAD.decode(key_b64)
    } else {
        URL_SAFE_NO_PAD.decode(key_b64)
    }
    .map_err(|_| VapidError::InvalidPublicKey)?;
    validate_public_key(&key)?;
    Ok((jwt, key))
}

/// The `p256ecdsa` value of a `Crypto-Key` header, parsed as autopush's
/// `CryptoKeyHeader`: `,`-separated sections of `;`-separated `key=value` items (an item
/// without `=` makes the header invalid), keys trimmed and case-sensitive, values trimmed
/// of spaces and quotes.
fn draft_p256ecdsa(header: &str) -> Result<String, VapidError> {
    let mut found = None;
    for section in header.split(',') {
        let mut in_section = None;
        for item in section.split(';') {
            let (name, value) = item
                .split_once('=')
                .ok_or(VapidError::DraftCryptoKey("Invalid Crypto-Key header"))?;
            if name.trim() == "p256ecdsa" {
                in_section = Some(value.trim_matches([' ', '"']).to_owned());
            }
        }
        if found.is_none() {
            found = in_section;
        }
    }
    found.ok_or(VapidError::DraftCryptoKey(
        "Missing p256ecdsa in Crypto-Key header",
    ))
}

/// How late an `exp` may be: jsonwebtoken's default leeway, which autopush-rs keeps.
pub const EXP_LEEWAY_SECS: u64 = 60;

/// Checks an ES256 VAPID JWT as autopush-rs does: signature by `public_key`; `exp` an
/// unsigned integer, not more than [`EXP_LEEWAY_SECS`] in the past and at most 24 h
/// ahead; `aud` a string exactly equal to `expected_aud` (the push service's origin, so
/// a trailing `/` or other case fails); `sub` optional but a string if present.
pub fn verify_jwt(
    jwt: &str,
    public_key: &[u8],
    expected_aud: &str,
    now_unix: u64,
) -> Result<(), VapidError> {
    if jwt.len() > MAX_JWT_LEN {
        return Err(VapidError::MalformedJwt("too long"));
    }
    let mut parts = jwt.split('.');
    let (Some(header_b64), Some(claims_b64), Some(sig_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VapidError::MalformedJwt(
            "expected three dot-separated parts",
        ));
    };

    let header = decode_json_part(header_b64, "header")?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if alg != "ES256" {
        return Err(VapidError::UnsupportedAlgorithm(truncate(alg, 16)));
    }

    let sig = B64URL_LENIENT
        .decode(sig_b64.as_bytes())
        .map_err(|_| VapidError::MalformedJwt("signature is not base64url"))?;
    if sig.len() != 64 {
        return Err(VapidError::BadSignature);
    }
    let key = public_ec_key(public_key)?;
    let signing_input = &jwt[..header_b64.len() + 1 + claims_b64.len()];
    if key.verify_sig(signing_input.as_bytes(), &sig).is_err() {
        return Err(VapidError::BadSignature);
    }

    let claims = decode_json_part(claims_b64, "claims")?;
    let exp = claims
        .get("exp")
        .and_then(Value::as_u64)
        .ok_or(VapidError::MissingExpiry)?;
    if exp < now_unix.saturating_sub(EXP_LEEWAY_SECS) {
        return Err(VapidError::Expired);
    }
    if exp > now_unix.saturating_add(MAX_EXP_AHEAD_SECS) {
        return Err(VapidError::ExpiryTooFar);
    }
    let aud = claims
        .get("aud")
        .and_then(Value::as_str)
        .ok_or(VapidError::MissingAudience)?;
    if aud != expected_aud {
        return Err(VapidError::AudienceMismatch {
            expected: expected_aud.to_owned(),
            got: truncate(aud, 200),
        });
    }
    if !matches!(
        claims.get("sub"),
        None | Some(Value::Null | Value::String(_))
    ) {
        return Err(VapidError::MalformedJwt("`sub` is not a string"));
    }
    Ok(())
}

/// Validates a P-256 public key as sent in a register `key` or a VAPID `k=`.
pub fn validate_public_key(raw: &[u8]) -> Result<(), VapidError> {
    public_ec_key(raw).map(drop)
}

/// Only the uncompressed form (aws-lc would also take compressed points and X.509);
/// decoding checks that the point is on P-256.
fn public_ec_key(raw: &[u8]) -> Result<ParsedPublicKey, VapidError> {
    if raw.len() != 65 || raw[0] != 0x04 {
        return Err(VapidError::InvalidPublicKey);
    }
    ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, raw).map_err(|_| VapidError::InvalidPublicKey)
}

fn decode_json_part(part: &str, what: &'static str) -> Result<Value, VapidError> {
    let bytes = B64URL_LENIENT.decode(part.as_bytes()).map_err(|_| {
        VapidError::MalformedJwt(if what == "header" {
            "header is not base64url"
        } else {
            "claims are not base64url"
        })
    })?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(VapidError::MalformedJwt(if what == "header" {
            "header is not a JSON object"
        } else {
            "claims are not a JSON object"
        })),
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUD: &str = "http://127.0.0.1:8080";
    const NOW: u64 = 1_700_000_000;

    fn signed(key: &VapidKey) -> String {
        sign_jwt(key, AUD, "mailto:ops@example.com", NOW + 3600).expect("sign")
    }

    #[test]
    fn sign_then_verify_round_trips() {
        let key = VapidKey::generate().unwrap();
        let jwt = signed(&key);
        verify_jwt(&jwt, &key.public_raw(), AUD, NOW).unwrap();
        // As autopush: the audience must be the origin exactly.
        for other in ["http://127.0.0.1:8080/", "HTTP://127.0.0.1:8080"] {
            assert!(verify_jwt(&jwt, &key.public_raw(), other, NOW).is_err());
        }
    }

    #[test]
    fn another_key_does_not_verify() {
        let key = VapidKey::generate().unwrap();
        let other = VapidKey::generate().unwrap();
        let err = verify_jwt(&signed(&key), &other.public_raw(), AUD, NOW).unwrap_err();
        assert!(matches!(err, VapidError::BadSignature), "{err}");
    }

    #[test]
    fn expired_and_far_future_tokens_fail() {
        let key = VapidKey::generate().unwrap();
        let jwt = signed(&key);
        // 60 s of leeway, as jsonwebtoken gives autopush.
        verify_jwt(&jwt, &key.public_raw(), AUD, NOW + 3600 + 60).unwrap();
        let err = verify_jwt(&jwt, &key.public_raw(), AUD, NOW + 3600 + 61).unwrap_err();
        assert!(matches!(err, VapidError::Expired), "{err}");
        let far = sign_jwt(&key, AUD, "mailto:a@b", NOW + 25 * 3600).unwrap();
        let err = verify_jwt(&far, &key.public_raw(), AUD, NOW).unwrap_err();
        assert!(matches!(err, VapidError::ExpiryTooFar), "{err}");
    }

    #[test]
    fn wrong_audience_fails() {
        let key = VapidKey::generate().unwrap();
        let err =
            verify_jwt(&signed(&key), &key.public_raw(), "http://127.0.0.1:9", NOW).unwrap_err();
        assert!(matches!(err, VapidError::AudienceMismatch { .. }), "{err}");
    }

    #[test]
    fn tampered_claims_fail() {
        let key = VapidKey::generate().unwrap();
        let jwt = signed(&key);
        let parts: Vec<&str> = jwt.split('.').collect();
        let forged = serde_json::json!({"aud": AUD, "exp": NOW + 7200, "sub": "mailto:x@y"});
        let forged = URL_SAFE_NO_PAD.encode(forged.to_string());
        let tampered = format!("{}.{}.{}", parts[0], forged, parts[2]);
        let err = verify_jwt(&tampered, &key.public_raw(), AUD, NOW).unwrap_err();
        assert!(matches!(err, VapidError::BadSignature), "{err}");
    }

    #[test]
    fn other_algorithms_are_refused() {
        let key = VapidKey::generate().unwrap();
        let jwt = signed(&key);
        let (_, rest) = jwt.split_once('.').unwrap();
        let none = format!("{}.{rest}", URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#));
        let err = verify_jwt(&none, &key.public_raw(), AUD, NOW).unwrap_err();
        assert!(matches!(err, VapidError::UnsupportedAlgorithm(_)), "{err}");
    }

    #[test]
    fn both_header_forms_parse() {
        let key = VapidKey::generate().unwrap();
        let header = authorization_header(&key, AUD, "mailto:a@b", NOW + 60).unwrap();
        let (jwt, raw) = parse_authorization(&header, None).unwrap();
        assert_eq!(raw, key.public_raw());
        verify_jwt(&jwt, &raw, AUD, NOW).unwrap();

        let k = URL_SAFE_NO_PAD.encode(key.public_raw());
        let crypto_key = format!("dh=BOGUS; p256ecdsa=\"{k}\"");
        let (jwt2, raw2) =
            parse_authorization(&format!("WebPush {jwt}"), Some(&crypto_key)).unwrap();
        assert_eq!((jwt2, raw2), (jwt.clone(), key.public_raw().to_vec()));

        // Parameter order and scheme case do not matter; parameter names do.
        let swapped = format!("Vapid k={k},t={jwt}");
        assert!(parse_authorization(&swapped, None).is_ok());
        assert!(parse_authorization(&format!("vapid T={jwt}, K={k}"), None).is_err());
        // Bearer is the draft scheme too; standard base64 and padding are fine.
        let std_key = base64::engine::general_purpose::STANDARD.encode(key.public_raw());
        let (_, raw3) = parse_authorization(
            &format!("Bearer {jwt}"),
            Some(&format!("p256ecdsa={std_key}")),
        )
        .unwrap();
        assert_eq!(raw3, key.public_raw().to_vec());
        // The draft form needs the Crypto-Key header.
        assert!(matches!(
            parse_authorization(&format!("WebPush {jwt}"), None),
            Err(VapidError::DraftCryptoKey(_))
        ));
        assert!(matches!(
            parse_authorization(&format!("WebPush {jwt}"), Some("dh=x;")),
            Err(VapidError::DraftCryptoKey(_))
        ));
    }

    #[test]
    fn pem_round_trip_and_both_pem_kinds() {
        let key = VapidKey::generate().unwrap();
        let pem = key.to_pem().unwrap();
        assert!(String::from_utf8_lossy(&pem).contains("BEGIN PRIVATE KEY"));
        let again = VapidKey::from_pem(&pem).unwrap();
        assert_eq!(again.public_raw(), key.public_raw());

        let traditional = pem_encode("EC PRIVATE KEY", sec1(&key.key).as_ref());
        assert_eq!(
            VapidKey::from_pem(&traditional).unwrap().public_raw(),
            key.public_raw()
        );

        let p384 = EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).unwrap();
        let err =
            VapidKey::from_pem(&pem_encode("EC PRIVATE KEY", sec1(&p384).as_ref())).unwrap_err();
        assert!(matches!(err, VapidError::WrongCurve), "{err}");
        let p384 = pem_encode("PRIVATE KEY", p384.to_pkcs8v1().unwrap().as_ref());
        let err = VapidKey::from_pem(&p384).unwrap_err();
        assert!(matches!(err, VapidError::WrongCurve), "{err}");
    }

    fn sec1(key: &EcdsaKeyPair) -> aws_lc_rs::encoding::EcPrivateKeyRfc5915Der<'static> {
        use aws_lc_rs::encoding::AsDer as _;
        key.private_key().as_der().unwrap()
    }

    /// Key files written by OpenSSL (`openssl ecparam -name prime256v1 -genkey`, and its
    /// `openssl pkcs8 -topk8 -nocrypt` form), as users and earlier versions have them.
    #[test]
    fn openssl_written_pem_files_load() {
        const SEC1: &str = "-----BEGIN EC PARAMETERS-----
BggqhkjOPQMBBw==
-----END EC PARAMETERS-----
-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIHKU6YUCrps9vjL+RmcHrsQhUBaYDEXPGvD1C1fyH1ZWoAoGCCqGSM49
AwEHoUQDQgAEfXxJsJ5AqBYh/s2Ook5Eb5cRKLjfCTZNUA6642mWTQQIXwsspkC6
YXAHfi2QF5ypdFQx71efU22xwCIxKllZfA==
-----END EC PRIVATE KEY-----
";
        const PKCS8: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgcpTphQKumz2+Mv5G
ZweuxCFQFpgMRc8a8PULV/IfVlahRANCAAR9fEmwnkCoFiH+zY6iTkRvlxEouN8J
Nk1QDrrjaZZNBAhfCyymQLphcAd+LZAXnKl0VDHvV59TbbHAIjEqWVl8
-----END PRIVATE KEY-----
";
        // `openssl ec -pubout`, the point's 65 bytes.
        const PUBLIC: &str =
            "BH18SbCeQKgWIf7NjqJORG-XESi43wk2TVAOuuNplk0ECF8LLKZAumFwB34tkBecqXRUMe9Xn1NtscAiMSpZWXw";
        let public = URL_SAFE_NO_PAD.decode(PUBLIC).unwrap();
        for pem in [SEC1, PKCS8] {
            let key = VapidKey::from_pem(pem.as_bytes()).unwrap();
            assert_eq!(key.public_raw().to_vec(), public);
            verify_jwt(&signed(&key), &public, AUD, NOW).unwrap();
        }
    }

    /// RFC 7515 Appendix A.3: an ES256 JWS from another implementation verifies (its
    /// claims have no `aud`, so the signature passed when that is what fails).
    #[test]
    fn rfc7515_es256_example_verifies() {
        let x = URL_SAFE_NO_PAD
            .decode("f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU")
            .unwrap();
        let y = URL_SAFE_NO_PAD
            .decode("x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0")
            .unwrap();
        let public = [&[4u8][..], &x, &y].concat();
        let jws = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";
        let err = verify_jwt(jws, &public, AUD, 1_300_819_380).unwrap_err();
        assert!(matches!(err, VapidError::MissingAudience), "{err}");
        let mut forged = jws.to_string();
        forged.pop();
        forged.push('A');
        let err = verify_jwt(&forged, &public, AUD, 1_300_819_380).unwrap_err();
        assert!(matches!(err, VapidError::BadSignature), "{err}");
    }

    #[test]
    fn debug_shows_no_private_key() {
        let key = VapidKey::generate().unwrap();
        let shown = format!("{key:?}");
        let private = {
            use aws_lc_rs::encoding::AsBigEndian as _;
            let d: aws_lc_rs::encoding::EcPrivateKeyBin<'_> =
                key.key.private_key().as_be_bytes().unwrap();
            URL_SAFE_NO_PAD.encode(d.as_ref())
        };
        assert!(!shown.contains(&private));
        assert!(shown.contains(&URL_SAFE_NO_PAD.encode(key.public_raw())));
    }

    #[test]
    fn public_key_validation() {
        let key = VapidKey::generate().unwrap();
        validate_public_key(&key.public_raw()).unwrap();
        let mut off_curve = key.public_raw();
        off_curve[64] ^= 1;
        assert!(validate_public_key(&off_curve).is_err());
        let mut compressed_tag = key.public_raw();
        compressed_tag[0] = 0x02;
        assert!(validate_public_key(&compressed_tag).is_err());
        assert!(validate_public_key(&[4u8; 64]).is_err());
        assert!(validate_public_key(&[]).is_err());
    }

    /// Per-call cost of signing and verifying, for comparing crypto backends on one
    /// machine: `cargo test --release --lib -- --ignored --nocapture timing_`.
    #[test]
    #[ignore]
    fn timing_sign_and_verify() {
        let key = VapidKey::generate().unwrap();
        let n = 200;
        let best = |f: &mut dyn FnMut()| {
            (0..5)
                .map(|_| {
                    let t = std::time::Instant::now();
                    for _ in 0..n {
                        f();
                    }
                    t.elapsed().as_secs_f64() * 1e6 / n as f64
                })
                .fold(f64::INFINITY, f64::min)
        };
        let sign = best(&mut || {
            std::hint::black_box(signed(&key));
        });
        let jwt = signed(&key);
        let public = key.public_raw();
        let verify = best(&mut || {
            verify_jwt(&jwt, &public, AUD, NOW).unwrap();
        });
        println!("timing vapid::sign_jwt: {sign:.1} µs, vapid::verify_jwt: {verify:.1} µs");
    }

    #[test]
    fn garbage_does_not_panic() {
        let key = VapidKey::generate().unwrap();
        let raw = key.public_raw();
        for jwt in [
            "",
            ".",
            "..",
            "a.b.c",
            "a.b.c.d",
            "!!!.???.***",
            "eyJhbGciOiJFUzI1NiJ9..",
            "eyJhbGciOiJFUzI1NiJ9.bnVsbA.AAAA",
            "é.é.é",
        ] {
            assert!(verify_jwt(jwt, &raw, AUD, NOW).is_err(), "{jwt:?}");
        }
        let long = "a".repeat(MAX_JWT_LEN + 1);
        assert!(verify_jwt(&long, &raw, AUD, NOW).is_err());
        for header in [
            "",
            "vapid",
            "vapid ",
            "vapid t=",
            "vapid k=AAAA",
            "vapid t=x, k=!!!",
            "Bearer abc",
            "WebPush",
            "webpush x",
            "vapid t=a,k=b,=,,;;",
        ] {
            assert!(
                parse_authorization(header, Some("p256ecdsa=@@")).is_err(),
                "{header:?}"
            );
        }
        assert!(VapidKey::from_pem(b"not a pem").is_err());
        assert!(VapidKey::from_pem(&[0xff; 300]).is_err());
    }
}
