//! A burst's payloads: decrypted with each subscription's keys (Web Push) or just decoded
//! (UnifiedPush, whose app decrypts), one after the other on the owner loop's thread.

use super::Kind;
use crate::connection::{Ack, Notification};
use crate::crypto::{self, Encoding, EncodingHeaders, SubscriptionKeys};

/// What decrypting one notification needs: its subscription's keys and kind.
pub(super) type Job = (SubscriptionKeys, Kind);

/// One notification's payload, or why there is none.
pub(super) type Decrypted = Result<Vec<u8>, crypto::CryptoError>;

/// Decrypt (or, for UnifiedPush, just decode) each notification that has a job, in turn.
/// `None` where there is no job. (Spreading a burst over threads made each burst start
/// and join threads: more CPU per message for a few milliseconds less latency in a
/// backlog, and more malloc arenas.)
pub(super) fn decrypt_burst(
    batch: &[Notification],
    jobs: &[Option<Job>],
) -> Vec<Option<Decrypted>> {
    // A panic while decrypting (a bug, met by one hostile payload) fails that message
    // alone, like any undecryptable one (acknowledged 101, logged): left unacknowledged
    // it would come back at every connection, and it must not take the owner loop down.
    let one = |(n, job): (&Notification, &Option<Job>)| {
        job.as_ref().map(|(keys, kind)| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match kind {
                Kind::WebPush => decrypt_notification(keys, n),
                Kind::UnifiedPush(_) => raw_body(n),
            }))
            .unwrap_or_else(|_| {
                Err(crypto::CryptoError::Decrypt(
                    "the decryption failed with a panic (a bug: please report it)".into(),
                ))
            })
        })
    };
    batch.iter().zip(jobs).map(one).collect()
}

/// The largest body the UnifiedPush specification lets a distributor hand on.
const UNIFIED_PUSH_MAX: usize = 4096;

/// The raw RFC 8291 body for a UnifiedPush app, which decrypts it itself: the app gets
/// the body alone, so only what the body carries whole can go. The UnifiedPush
/// specification allows 1-4096 bytes; an `aesgcm` message keeps its salt and key in
/// headers the app never sees (`UnknownEncoding`: acknowledged as undecryptable).
fn raw_body(n: &Notification) -> Result<Vec<u8>, crypto::CryptoError> {
    let encoding = n.headers.get("encoding").map(String::as_str);
    if let Some(e) = encoding.filter(|e| !e.eq_ignore_ascii_case("aes128gcm")) {
        return Err(crypto::CryptoError::UnknownEncoding(e.to_string()));
    }
    let body = match &n.data {
        Some(d) => crypto::b64(d)?,
        None => Vec::new(),
    };
    if body.is_empty() || body.len() > UNIFIED_PUSH_MAX {
        return Err(crypto::CryptoError::Decrypt(format!(
            "a UnifiedPush message must be 1-{UNIFIED_PUSH_MAX} bytes, not {}",
            body.len()
        )));
    }
    Ok(body)
}

/// How a message that cannot go to its app is acknowledged: 101 when it is encrypted in
/// a way its recipient cannot decrypt, 102 when there is nothing to hand on.
pub(super) fn failed_ack(kind: Kind, e: &crypto::CryptoError) -> Ack {
    match (kind, e) {
        (Kind::WebPush, _) | (Kind::UnifiedPush(_), crypto::CryptoError::UnknownEncoding(_)) => {
            Ack::Undecryptable
        }
        (Kind::UnifiedPush(_), _) => Ack::NotDelivered,
    }
}

/// Decode and decrypt one notification's body. An empty push gives an empty payload.
fn decrypt_notification(
    keys: &SubscriptionKeys,
    n: &Notification,
) -> Result<Vec<u8>, crypto::CryptoError> {
    let Some(data) = &n.data else {
        return Ok(Vec::new());
    };
    let body = crypto::b64(data)?;
    let headers = EncodingHeaders {
        encoding: n.headers.get("encoding").map(String::as_str),
        encryption: n.headers.get("encryption").map(String::as_str),
        crypto_key: n
            .headers
            .get("crypto_key")
            .or_else(|| n.headers.get("crypto-key"))
            .map(String::as_str),
    };
    let encoding = Encoding::from_headers(&headers)?;
    crypto::decrypt(keys, &encoding, &body)
}
