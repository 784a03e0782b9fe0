//! Every text frame the push server sends goes through `parse_server_message` first.
//! It must be total: any string gives a message or an error, never a panic, and a
//! notification it accepts must carry only lower-cased header names.
#![no_main]

use libfuzzer_sys::fuzz_target;
use webpushd::connection::protocol::{parse_server_message, ServerMessage};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(ServerMessage::Notification(n)) = parse_server_message(text) {
        assert!(n.headers.keys().all(|k| *k == k.to_ascii_lowercase()));
    }
});
