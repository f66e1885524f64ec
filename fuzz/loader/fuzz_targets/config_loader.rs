//! The config loader reads files an operator (or an attacker with write access to the config
//! directory) controls, while the waypoint serves: no input may panic, and what it reports must
//! stay bounded and printable on one line per error.
#![no_main]

use gateway_api_bindings::Store;
use gateway_api_bindings::store::MAX_ERRORS_PER_FILE;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut store = Store::default();
    let errors = store.load_str(text, None);
    assert!(errors.len() <= MAX_ERRORS_PER_FILE + 1, "{} errors", errors.len());
    for e in &errors {
        let line = e.to_string();
        assert!(!line.contains(['\n', '\r', '\0']), "{line:?}");
        assert!(line.len() <= 4096, "{} bytes", line.len());
    }
    for ignored in &store.ignored {
        let line = format!("{} {} {}", ignored.api_version, ignored.kind, ignored.key);
        assert!(!line.contains(['\n', '\r', '\0']), "{line:?}");
    }
});
