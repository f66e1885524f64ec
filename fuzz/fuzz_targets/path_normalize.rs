//! Path normalization sees every request path: no input may panic, and a normalized path must
//! normalize to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use policy_engine::path::{PathNormalization, normalize};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    for mode in [
        PathNormalization::None,
        PathNormalization::Base,
        PathNormalization::MergeSlashes,
        PathNormalization::DecodeAndMergeSlashes,
    ] {
        if let Ok(once) = normalize(s, mode) {
            let twice = normalize(&once, mode).expect("a normalized path stays valid");
            assert_eq!(once, twice);
        }
    }
});
