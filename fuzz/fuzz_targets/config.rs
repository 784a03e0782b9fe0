//! `Config::load` on arbitrary file contents (TOML with `deny_unknown_fields`, humantime
//! durations, URL checks): an error that names the file, or a config that validates —
//! never a panic. The bytes are written to one temporary file that is reused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use webpushd::config::{Config, ConfigError, Overrides};

fuzz_target!(|data: &[u8]| {
    let (dir, file) = webpushd_fuzz::config_paths();
    std::fs::write(file, data).expect("temp file");
    let overrides = Overrides {
        config_file: Some(file.to_path_buf()),
        state_dir: Some(dir.join("state")),
        server_url: None,
        verbose: 0,
    };
    match Config::load(&overrides) {
        Ok(c) => {
            assert!(!c.connection.request_timeout.is_zero());
            assert!(c.connection.retry_max >= c.connection.retry_base);
        }
        Err(ConfigError::Invalid { file: f, message }) => {
            assert_eq!(f, file);
            assert!(!message.is_empty());
        }
        // Not UTF-8: a read error naming the file.
        Err(ConfigError::Read { file: f, .. }) => assert_eq!(f, file),
        Err(e) => panic!("unexpected error kind: {e}"),
    }
});
