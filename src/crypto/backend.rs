//! The primitives under `ece`'s RFC 8188 / RFC 8291 framing, from aws-lc-rs.
//!
//! `ece` keeps everything that is Web Push (headers, salts, key schedule, records,
//! padding); this backend supplies the primitives, all from the one crypto library the
//! daemon links (aws-lc-rs, which is also rustls's provider):
//!
//! - ECDH is `agreement::agree` with a static `agreement::PrivateKey`. Parsing a private
//!   key computes its public point (a base-point multiplication, ~12 µs, a quarter of a
//!   3 KiB message's cost), so a subscription's key is parsed once, on its first message,
//!   and kept in its `SubscriptionKeys` ([`StaticKey`]); [`with_static_key`] hands it to
//!   `import_key_pair` past `ece`'s API, which takes key bytes only;
//! - a key pair is imported as bytes (the daemon checks every stored key at load);
//! - HKDF-SHA-256, AES-128-GCM and random bytes come from aws-lc-rs too.
//!
//! `ece::crypto::test_cryptographer` (the crate's own conformance suite) and the RFC 8291
//! example in `crypto::tests` check it.

use std::any::Any;
use std::cell::RefCell;
use std::sync::{Arc, OnceLock};

use aws_lc_rs::encoding::AsBigEndian;
use aws_lc_rs::{aead, agreement, hkdf};
use ece::crypto::{Cryptographer, EcKeyComponents, LocalKeyPair, RemotePublicKey};
use zeroize::Zeroizing;

use super::PUBLIC_KEY_LEN;

/// Install the backend for every `ece` call in this process. Idempotent.
pub(super) fn install() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        // Only this function sets it, once.
        let _ = ece::crypto::set_cryptographer(&Backend);
    });
}

struct Backend;

/// A parsed receiving key and the public point it belongs to.
pub(super) struct StaticKey {
    public: Vec<u8>,
    key: agreement::PrivateKey,
}

impl StaticKey {
    /// `None` when `d` is not a usable P-256 scalar (decryption then fails as before).
    pub(super) fn parse(d: &[u8], public: &[u8]) -> Option<Arc<StaticKey>> {
        let key = private_key(d).ok()?;
        Some(Arc::new(StaticKey {
            public: public.to_vec(),
            key,
        }))
    }
}

thread_local! {
    /// The receiving key of the message this thread is decrypting, if already parsed.
    static CURRENT: RefCell<Option<Arc<StaticKey>>> = const { RefCell::new(None) };
}

/// Run `f` (an `ece` decryption) with `key` offered to `import_key_pair`, which takes it
/// when the public point matches the components `ece` passes.
pub(super) fn with_static_key<R>(key: Option<Arc<StaticKey>>, f: impl FnOnce() -> R) -> R {
    /// Clears the slot however `f` ends, a panic included.
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            CURRENT.with(|c| c.borrow_mut().take());
        }
    }
    CURRENT.with(|c| *c.borrow_mut() = key);
    let _reset = Reset;
    f()
}

/// A local key pair: the 32-byte scalar and the uncompressed public point, and the
/// parsed private key once it has been needed.
struct LocalKey {
    d: Zeroizing<Vec<u8>>,
    public: Vec<u8>,
    key: OnceLock<Option<Arc<StaticKey>>>,
}

impl LocalKey {
    fn private(&self) -> ece::Result<&agreement::PrivateKey> {
        self.key
            .get_or_init(|| StaticKey::parse(&self.d, &self.public))
            .as_ref()
            .map(|k| &k.key)
            .ok_or(ece::Error::CryptoError)
    }
}

/// A peer's public key, checked to be on the curve when imported.
struct RemoteKey {
    parsed: agreement::ParsedPublicKey,
}

impl LocalKeyPair for LocalKey {
    fn pub_as_raw(&self) -> ece::Result<Vec<u8>> {
        Ok(self.public.clone())
    }
    fn raw_components(&self) -> ece::Result<EcKeyComponents> {
        Ok(EcKeyComponents::new(self.d.to_vec(), self.public.clone()))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl RemotePublicKey for RemoteKey {
    fn as_raw(&self) -> ece::Result<Vec<u8>> {
        Ok(self.parsed.as_ref().to_vec())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

fn fail<E>(_: E) -> ece::Error {
    ece::Error::CryptoError
}

/// A P-256 private scalar (exactly 32 big-endian bytes) as an ECDH key. aws-lc refuses
/// zero and scalars not below the group order.
pub(super) fn private_key(
    d: &[u8],
) -> Result<agreement::PrivateKey, aws_lc_rs::error::KeyRejected> {
    agreement::PrivateKey::from_private_key(&agreement::ECDH_P256, d)
}

/// Decode an uncompressed point, refusing anything not on P-256 (aws-lc also takes the
/// compressed and X.509 forms; Web Push has only this one).
pub(super) fn public_key(raw: &[u8]) -> ece::Result<agreement::ParsedPublicKey> {
    if raw.len() != PUBLIC_KEY_LEN || raw[0] != 4 {
        return Err(ece::Error::InvalidKeyLength);
    }
    agreement::ParsedPublicKey::try_from(&agreement::UnparsedPublicKey::new(
        &agreement::ECDH_P256,
        raw,
    ))
    .map_err(fail)
}

/// A new P-256 key pair as (32-byte scalar, 65-byte uncompressed point).
pub(super) fn generate() -> ece::Result<(agreement::PrivateKey, Zeroizing<Vec<u8>>, Vec<u8>)> {
    let key = agreement::PrivateKey::generate(&agreement::ECDH_P256).map_err(fail)?;
    let public = key.compute_public_key().map_err(fail)?.as_ref().to_vec();
    let d =
        AsBigEndian::<aws_lc_rs::encoding::EcPrivateKeyBin<'_>>::as_be_bytes(&key).map_err(fail)?;
    // Always 32 bytes, leading zeros kept.
    let d = Zeroizing::new(d.as_ref().to_vec());
    Ok((key, d, public))
}

impl Cryptographer for Backend {
    fn generate_ephemeral_keypair(&self) -> ece::Result<Box<dyn LocalKeyPair>> {
        let (key, d, public) = generate()?;
        let key = Arc::new(StaticKey {
            public: public.clone(),
            key,
        });
        Ok(Box::new(LocalKey {
            d,
            public,
            key: OnceLock::from(Some(key)),
        }))
    }

    fn import_key_pair(&self, c: &EcKeyComponents) -> ece::Result<Box<dyn LocalKeyPair>> {
        // `ece::decrypt` unwraps this result: refuse nothing here, fail in the ECDH.
        let key = OnceLock::new();
        if let Some(k) = CURRENT.with(|c| c.borrow().clone()) {
            if k.public == c.public_key() {
                let _ = key.set(Some(k));
            }
        }
        Ok(Box::new(LocalKey {
            d: Zeroizing::new(c.private_key().to_vec()),
            public: c.public_key().to_vec(),
            key,
        }))
    }

    fn import_public_key(&self, raw: &[u8]) -> ece::Result<Box<dyn RemotePublicKey>> {
        Ok(Box::new(RemoteKey {
            parsed: public_key(raw)?,
        }))
    }

    fn compute_ecdh_secret(
        &self,
        remote: &dyn RemotePublicKey,
        local: &dyn LocalKeyPair,
    ) -> ece::Result<Vec<u8>> {
        let remote = remote
            .as_any()
            .downcast_ref::<RemoteKey>()
            .ok_or(ece::Error::CryptoError)?;
        let local = local
            .as_any()
            .downcast_ref::<LocalKey>()
            .ok_or(ece::Error::CryptoError)?;
        if local.d.len() != 32 {
            return Err(ece::Error::InvalidKeyLength);
        }
        agreement::agree(
            local.private()?,
            remote.parsed.clone(),
            ece::Error::CryptoError,
            |x| Ok(x.to_vec()),
        )
    }

    fn hkdf_sha256(
        &self,
        salt: &[u8],
        secret: &[u8],
        info: &[u8],
        len: usize,
    ) -> ece::Result<Vec<u8>> {
        struct Len(usize);
        impl hkdf::KeyType for Len {
            fn len(&self) -> usize {
                self.0
            }
        }
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(secret);
        let info = [info];
        let okm = prk.expand(&info, Len(len)).map_err(fail)?;
        let mut out = vec![0u8; len];
        okm.fill(&mut out).map_err(fail)?;
        Ok(out)
    }

    fn aes_gcm_128_encrypt(&self, key: &[u8], iv: &[u8], data: &[u8]) -> ece::Result<Vec<u8>> {
        let key = aes_key(key)?;
        let nonce = aead::Nonce::try_assume_unique_for_key(iv).map_err(fail)?;
        let mut out = data.to_vec();
        key.seal_in_place_append_tag(nonce, aead::Aad::empty(), &mut out)
            .map_err(fail)?;
        Ok(out)
    }

    fn aes_gcm_128_decrypt(
        &self,
        key: &[u8],
        iv: &[u8],
        ciphertext_and_tag: &[u8],
    ) -> ece::Result<Vec<u8>> {
        let key = aes_key(key)?;
        let nonce = aead::Nonce::try_assume_unique_for_key(iv).map_err(fail)?;
        let mut buf = ciphertext_and_tag.to_vec();
        let len = key
            .open_in_place(nonce, aead::Aad::empty(), &mut buf)
            .map_err(fail)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }

    fn random_bytes(&self, dest: &mut [u8]) -> ece::Result<()> {
        aws_lc_rs::rand::fill(dest).map_err(fail)
    }
}

fn aes_key(key: &[u8]) -> ece::Result<aead::LessSafeKey> {
    aead::UnboundKey::new(&aead::AES_128_GCM, key)
        .map(aead::LessSafeKey::new)
        .map_err(|_| ece::Error::InvalidKeyLength)
}

#[cfg(test)]
mod tests {
    #[test]
    fn passes_eces_conformance_suite() {
        // The suite calls back into `ece`, which uses the installed backend: this one.
        super::install();
        ece::crypto::test_cryptographer(super::Backend);
    }
}
