//! Shared by the fuzz targets and `examples/seed_corpus.rs`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use webpushd::crypto::SubscriptionKeys;

/// A fixed P-256 private scalar, so crashes reproduce and the seed corpus stays valid.
const PRIVATE: [u8; 32] = [
    0x2b, 0x7e, 0x15, 0x16, 0x28, 0xae, 0xd2, 0xa6, 0xab, 0xf7, 0x15, 0x88, 0x09, 0xcf, 0x4f, 0x3c,
    0x76, 0x2e, 0x71, 0x60, 0xf3, 0x8b, 0x4d, 0xa5, 0x6a, 0x78, 0x4d, 0x90, 0x45, 0x19, 0x0c, 0xfe,
];
const AUTH: [u8; 16] = *b"fuzz-auth-secret";

/// The subscription keys every decryption input is addressed to.
pub fn keys() -> &'static SubscriptionKeys {
    static KEYS: OnceLock<SubscriptionKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let public = webpushd::crypto::public_key_of(&PRIVATE).unwrap();
        SubscriptionKeys::from_parts(PRIVATE.to_vec(), public, AUTH.to_vec()).unwrap()
    })
}

/// `encoding \n encryption \n crypto_key \n body`; an empty or non-UTF-8 header line is
/// an absent header.
pub fn split(data: &[u8]) -> (Option<&str>, Option<&str>, Option<&str>, &[u8]) {
    let mut rest = data;
    let mut line = || -> Option<&str> {
        let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let (l, r) = rest.split_at(end);
        rest = r.get(1..).unwrap_or(&[]);
        std::str::from_utf8(l).ok().filter(|s| !s.is_empty())
    };
    let (a, b, c) = (line(), line(), line());
    (a, b, c, rest)
}

/// The inverse of [`split`], for the seed corpus.
pub fn join(encoding: &str, encryption: &str, crypto_key: &str, body: &[u8]) -> Vec<u8> {
    let mut v = format!("{encoding}\n{encryption}\n{crypto_key}\n").into_bytes();
    v.extend_from_slice(body);
    v
}

/// One temporary directory and config file path per fuzzing process.
pub fn config_paths() -> (&'static Path, &'static Path) {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (dir, file) = DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        (dir, file)
    });
    (dir.path(), file.as_path())
}
