//! Where a chunked body ends (RFC 9112 §7.1): only the framing is followed, nothing is decoded or
//! copied. [`super::gate`] uses it so that the HTTP/1 codec is handed exactly one request at a
//! time and never reads into the next.

/// A chunked body being scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Chunked {
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In the chunk-size hex digits; `any` once one was read.
    Size {
        size: u64,
        any: bool,
    },
    /// After the size: extensions (or whitespace) up to the line end.
    Extension {
        size: u64,
    },
    /// The size line's CR was read; its LF is due.
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    /// The CRLF that ends a chunk's data.
    DataCr,
    DataLf,
    /// At the start of a trailer field line, or of the final blank line.
    LineStart,
    /// Inside a trailer field line.
    Trailer,
    TrailerLf,
    /// The final blank line's CR was read.
    EndLf,
    Done,
}

/// The chunked framing is broken: what follows cannot be told apart from a next request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Malformed;

impl Default for Chunked {
    fn default() -> Self {
        Chunked {
            state: State::Size {
                size: 0,
                any: false,
            },
        }
    }
}

impl Chunked {
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Follows `bytes`; returns how many of them belong to the body (all of them until it
    /// ends).
    pub(crate) fn scan(&mut self, bytes: &[u8]) -> Result<usize, Malformed> {
        let mut i = 0;
        while i < bytes.len() {
            let c = bytes[i];
            self.state = match self.state {
                State::Done => return Ok(i),
                State::Data { left } => {
                    let take = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(bytes.len() - i);
                    i += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data { left }
                    };
                    continue;
                }
                State::Size { size, any } => match hex(c) {
                    Some(d) => State::Size {
                        size: size
                            .checked_mul(16)
                            .and_then(|s| s.checked_add(u64::from(d)))
                            .ok_or(Malformed)?,
                        any: true,
                    },
                    None if !any => return Err(Malformed),
                    None => line_end(c, size)?,
                },
                State::Extension { size } => match c {
                    b'\r' => State::SizeLf { size },
                    b'\n' => after_size(size),
                    c if c == b'\t' || c >= b' ' => State::Extension { size },
                    _ => return Err(Malformed),
                },
                State::SizeLf { size } if c == b'\n' => after_size(size),
                State::DataCr if c == b'\r' => State::DataLf,
                State::DataCr | State::DataLf if c == b'\n' => State::Size {
                    size: 0,
                    any: false,
                },
                State::LineStart => match c {
                    b'\r' => State::EndLf,
                    b'\n' => State::Done,
                    _ => State::Trailer,
                },
                State::Trailer => match c {
                    b'\r' => State::TrailerLf,
                    b'\n' => State::LineStart,
                    _ => State::Trailer,
                },
                State::TrailerLf if c == b'\n' => State::LineStart,
                State::EndLf if c == b'\n' => State::Done,
                State::SizeLf { .. }
                | State::DataCr
                | State::DataLf
                | State::TrailerLf
                | State::EndLf => return Err(Malformed),
            };
            i += 1;
        }
        Ok(i)
    }
}

fn hex(c: u8) -> Option<u8> {
    char::from(c)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// What ends the digits of a size line.
fn line_end(c: u8, size: u64) -> Result<State, Malformed> {
    match c {
        b'\r' => Ok(State::SizeLf { size }),
        b'\n' => Ok(after_size(size)),
        b';' | b' ' | b'\t' => Ok(State::Extension { size }),
        _ => Err(Malformed),
    }
}

fn after_size(size: u64) -> State {
    if size == 0 {
        State::LineStart
    } else {
        State::Data { left: size }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where a body ended, if it did.
    type End = Result<Option<usize>, Malformed>;

    /// Scans `body` fed in pieces of `step` bytes; the number of bytes the body took, if it
    /// ended.
    fn end(body: &[u8], step: usize) -> End {
        let mut c = Chunked::default();
        let mut at = 0;
        for piece in body.chunks(step) {
            let n = c.scan(piece)?;
            at += n;
            if c.is_done() {
                return Ok(Some(at));
            }
        }
        Ok(None)
    }

    #[test]
    fn finds_the_end_whatever_the_pieces() {
        let cases: &[(&[u8], End)] = &[
            (b"0\r\n\r\n", Ok(Some(5))),
            (b"0\r\n\r\nGET / HTTP/1.1\r\n", Ok(Some(5))),
            (b"5\r\nhello\r\n0\r\n\r\nNEXT", Ok(Some(15))),
            (b"A;name=v\r\n0123456789\r\n0\r\n\r\n", Ok(Some(27))),
            (b"5\r\nhello\r\n0\r\nx-trailer: 1\r\n\r\nNEXT", Ok(Some(29))),
            (b"5\nhello\n0\n\nNEXT", Ok(Some(11))),
            (b"5\r\nhello\r\n", Ok(None)),
            (b"5\r\nhelloX\r\n0\r\n\r\n", Err(Malformed)),
            (b"\r\n", Err(Malformed)),
            (b"g\r\n", Err(Malformed)),
            (b"-1\r\n", Err(Malformed)),
            (b"fffffffffffffffff\r\n", Err(Malformed)),
            (b"5\rX", Err(Malformed)),
        ];
        for (body, want) in cases {
            for step in [1, 2, 3, 7, 1000] {
                assert_eq!(
                    &end(body, step),
                    want,
                    "{:?} in pieces of {step}",
                    String::from_utf8_lossy(body)
                );
            }
        }
    }

    #[test]
    fn a_large_chunk_is_skipped_not_walked() {
        let mut c = Chunked::default();
        assert_eq!(c.scan(b"ffffffff\r\n"), Ok(10));
        let data = vec![0u8; 1 << 20];
        assert_eq!(c.scan(&data), Ok(data.len()));
        assert!(!c.is_done());
    }
}
