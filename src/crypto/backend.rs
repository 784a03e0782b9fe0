//! The primitives under `ece`'s RFC 8188 / RFC 8291 framing.
//!
//! `ece`'s own OpenSSL backend imports the receiving key pair anew for every message
//! (`EC_KEY_set_public_key_affine_coordinates`, which runs `EC_KEY_check_key`: a scalar
//! multiplication, ~40 µs) and then derives through `EVP_PKEY_derive`, which exports both
//! keys to the OpenSSL 3 provider (~85 µs for what is one ~33 µs point multiplication).
//! Together that was ~150 µs of a 3 KiB message's ~160 µs. This backend keeps `ece` for
//! everything that is Web Push (headers, salts, key schedule, records, padding) and supplies
//! the primitives more directly:
//!
//! - ECDH is `EC_POINT_mul(peer, d)` and the x coordinate, which is what OpenSSL's own
//!   `ECDH_compute_key` does for P-256 (cofactor 1) under `EVP_PKEY_derive`;
//! - a key pair is imported as bytes (the daemon checks every stored key at load);
//! - HKDF-SHA-256 and AES-128-GCM come from `ring` (already linked for TLS).
//!
//! `ece::crypto::test_cryptographer` (the crate's own conformance suite) and the RFC 8291
//! example in `crypto::tests` check it.

use std::any::Any;
use std::sync::OnceLock;

use ece::crypto::{Cryptographer, EcKeyComponents, LocalKeyPair, RemotePublicKey};
use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcKey, EcPoint, PointConversionForm};
use openssl::nid::Nid;
use ring::{aead, hkdf};
use zeroize::Zeroizing;

use super::PUBLIC_KEY_LEN;

/// P-256, built once: building the group costs ~8 µs.
pub(super) fn p256() -> Option<&'static EcGroup> {
    static GROUP: OnceLock<Option<EcGroup>> = OnceLock::new();
    GROUP
        .get_or_init(|| EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).ok())
        .as_ref()
}

/// Install the backend for every `ece` call in this process. Idempotent.
pub(super) fn install() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        // Only this function sets it, once.
        let _ = ece::crypto::set_cryptographer(&Backend);
    });
}

struct Backend;

/// A local key pair as bytes: the 32-byte scalar and the uncompressed public point.
struct LocalKey {
    d: Zeroizing<Vec<u8>>,
    public: Vec<u8>,
}

/// A peer's public key, checked to be on the curve when imported.
struct RemoteKey {
    raw: Vec<u8>,
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
        Ok(self.raw.clone())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

fn fail<E>(_: E) -> ece::Error {
    ece::Error::CryptoError
}

/// Decode an uncompressed point, refusing anything not on P-256.
fn point(raw: &[u8], ctx: &mut BigNumContext) -> ece::Result<EcPoint> {
    let group = p256().ok_or(ece::Error::CryptoError)?;
    if raw.len() != PUBLIC_KEY_LEN || raw[0] != 4 {
        return Err(ece::Error::InvalidKeyLength);
    }
    EcPoint::from_bytes(group, raw, ctx).map_err(fail)
}

impl Cryptographer for Backend {
    fn generate_ephemeral_keypair(&self) -> ece::Result<Box<dyn LocalKeyPair>> {
        let group = p256().ok_or(ece::Error::CryptoError)?;
        let key = EcKey::generate(group).map_err(fail)?;
        let mut ctx = BigNumContext::new().map_err(fail)?;
        let public = key
            .public_key()
            .to_bytes(group, PointConversionForm::UNCOMPRESSED, &mut ctx)
            .map_err(fail)?;
        // Always 32 bytes: the minimal encoding drops leading zeros (one key in 256).
        let d = Zeroizing::new(key.private_key().to_vec_padded(32).map_err(fail)?);
        Ok(Box::new(LocalKey { d, public }))
    }

    fn import_key_pair(&self, c: &EcKeyComponents) -> ece::Result<Box<dyn LocalKeyPair>> {
        // `ece::decrypt` unwraps this result: refuse nothing here, fail in the ECDH.
        Ok(Box::new(LocalKey {
            d: Zeroizing::new(c.private_key().to_vec()),
            public: c.public_key().to_vec(),
        }))
    }

    fn import_public_key(&self, raw: &[u8]) -> ece::Result<Box<dyn RemotePublicKey>> {
        let mut ctx = BigNumContext::new().map_err(fail)?;
        point(raw, &mut ctx)?;
        Ok(Box::new(RemoteKey { raw: raw.to_vec() }))
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
        let group = p256().ok_or(ece::Error::CryptoError)?;
        if local.d.is_empty() || local.d.len() > 32 {
            return Err(ece::Error::InvalidKeyLength);
        }
        let mut ctx = BigNumContext::new().map_err(fail)?;
        let peer = point(&remote.raw, &mut ctx)?;
        let d = BigNum::from_slice(&local.d).map_err(fail)?;
        let mut order = BigNum::new().map_err(fail)?;
        group.order(&mut order, &mut ctx).map_err(fail)?;
        if d.num_bits() == 0 || d >= order {
            return Err(ece::Error::CryptoError);
        }
        let mut shared = EcPoint::new(group).map_err(fail)?;
        shared.mul2(group, &peer, &d, &mut ctx).map_err(fail)?;
        if shared.is_infinity(group) {
            return Err(ece::Error::CryptoError);
        }
        let mut x = BigNum::new().map_err(fail)?;
        let mut y = BigNum::new().map_err(fail)?;
        shared
            .affine_coordinates(group, &mut x, &mut y, &mut ctx)
            .map_err(fail)?;
        x.to_vec_padded(32).map_err(fail)
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
        openssl::rand::rand_bytes(dest).map_err(fail)
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
