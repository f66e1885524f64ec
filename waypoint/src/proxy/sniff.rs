//! Telling HTTP from opaque bytes by the first bytes a client sends, as Istio does for ports
//! whose protocol is not declared.

/// The HTTP/2 client connection preface.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the first bytes look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    Http1,
    H2c,
    Opaque,
    /// Too few bytes to tell yet.
    NeedMore,
}

const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"TRACE ",
    b"CONNECT ",
];

pub fn sniff(buf: &[u8]) -> Sniffed {
    if buf.is_empty() {
        return Sniffed::NeedMore;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Sniffed::H2c
        } else {
            Sniffed::NeedMore
        };
    }
    for m in METHODS {
        let n = buf.len().min(m.len());
        if buf[..n] == m[..n] {
            return if n == m.len() {
                Sniffed::Http1
            } else {
                Sniffed::NeedMore
            };
        }
    }
    Sniffed::Opaque
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection() {
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n\r\n"), Sniffed::Http1);
        assert_eq!(sniff(b"GE"), Sniffed::NeedMore);
        assert_eq!(sniff(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0"), Sniffed::H2c);
        assert_eq!(sniff(b"PRI * HT"), Sniffed::NeedMore);
        assert_eq!(sniff(b"\x16\x03\x01\x02\x00"), Sniffed::Opaque);
        assert_eq!(sniff(b"get / HTTP/1.1"), Sniffed::Opaque);
    }
}
