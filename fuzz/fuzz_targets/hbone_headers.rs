//! The CONNECT metadata parsers and the protocol sniffer must accept any bytes without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use waypoint::hbone::headers;
use waypoint::proxy::sniff::sniff;

fuzz_target!(|data: &[u8]| {
    let _ = sniff(data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = headers::forwarded_for(s);
        let _ = headers::forwarded_host(s);
        let _ = headers::traceparent(s);
        let _ = headers::baggage(s).count();
    }
});
