//! What the daemon does with a notification's headers and body: pick the encoding from the
//! `encoding`/`encryption`/`crypto_key` headers, then decrypt the body with the
//! subscription's keys (here one fixed key pair). Hostile input must give an error, never a
//! panic or an abort (`crypto::decrypt` catches `ece`'s internal panics; the fuzzer checks
//! that nothing escapes, and that a success really authenticated).
//!
//! Input layout (see `webpushd_fuzz::split`): `encoding \n encryption \n crypto_key \n body`,
//! an empty line meaning "header absent"; the body is raw bytes after the third newline.
#![no_main]

use libfuzzer_sys::fuzz_target;
use webpushd::crypto::{decrypt, Encoding, EncodingHeaders};

fuzz_target!(|data: &[u8]| {
    let (encoding, encryption, crypto_key, body) = webpushd_fuzz::split(data);
    let headers = EncodingHeaders {
        encoding,
        encryption,
        crypto_key,
    };
    let Ok(enc) = Encoding::from_headers(&headers) else {
        return;
    };
    if let Ok(plain) = decrypt(webpushd_fuzz::keys(), &enc, body) {
        // AES-GCM adds a 16-byte tag per record; a "plaintext" longer than the body
        // would mean something other than the ciphertext was returned.
        assert!(plain.len() <= body.len());
    }
});
