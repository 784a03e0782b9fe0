//! The primitives under `ece`'s RFC 8188 / RFC 8291 framing, from aws-lc-rs.
//!
//! `ece` keeps everything that is Web Push (headers, salts, key schedule, records,
//! padding); this backend supplies the primitives, all from the one crypto library the
//! daemon links (aws-lc-rs, which is also rustls's provider):
//!
//! - ECDH is `agreement::agree` with a static `agreement::PrivateKey`: the receiving key of
//!   a subscription is parsed once per message batch, not per record;
//! - a key pair is imported as bytes (the daemon checks every stored key at load);
//! - HKDF-SHA-256, AES-128-GCM and random bytes come from aws-lc-rs too.
//!
//! `ece::crypto::test_cryptographer` (the crate's own conformance suite) and the RFC 8291
//! example in `crypto::tests` check it.

use std::any::Any;
use std::sync::OnceLock;

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

/// A local key pair: the 32-byte scalar and the uncompressed public point, and the
/// parsed private key once it has been needed.
struct LocalKey {
    d: Zeroizing<Vec<u8>>,
    public: Vec<u8>,
    key: OnceLock<Option<agreement::PrivateKey>>,
}

impl LocalKey {
    fn private(&self) -> ece::Result<&agreement::PrivateKey> {
        self.key
            .get_or_init(|| private_key(&self.d).ok())
            .as_ref()
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
        Ok(Box::new(LocalKey {
            d,
            public,
            key: OnceLock::from(Some(key)),
        }))
    }

    fn import_key_pair(&self, c: &EcKeyComponents) -> ece::Result<Box<dyn LocalKeyPair>> {
        // `ece::decrypt` unwraps this result: refuse nothing here, fail in the ECDH.
        Ok(Box::new(LocalKey {
            d: Zeroizing::new(c.private_key().to_vec()),
            public: c.public_key().to_vec(),
            key: OnceLock::new(),
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
