//! The fast path's view of an instance's response: the head (status, how the body is
//! framed, whether the instance keeps the connection) rewritten for the client, and the
//! scanner that finds where a chunked body ends as it is relayed.

use std::io::{self, Write as _};

use super::parse::{has_token, is_hop_by_hop, listed_hop, parse_length};
use crate::pingora_path::MAX_HEADER_BYTES;

/// Header fields parsed per response before retrying with room for [`MAX_RESPONSE_FIELDS`].
const MAX_FIELDS: usize = 96;
/// Header fields accepted in a response (many Set-Cookie fields are common).
const MAX_RESPONSE_FIELDS: usize = 512;

/// How a response body ends.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// A response head read from an instance, rewritten for the client.
pub(super) struct ResponseHead {
    pub status: u16,
    pub framing: Framing,
    /// The instance keeps the connection open after this response.
    pub upstream_keep_alive: bool,
    /// Length of the head in the upstream buffer.
    pub len: usize,
}

/// Parses a response head in `buf`; writes the client's version of it into `out` (hop-by-hop
/// fields dropped, `Connection: close` added when `closing`, or when the body ends at close).
pub(super) fn parse_response(
    buf: &[u8],
    is_head: bool,
    closing: bool,
    out: &mut Vec<u8>,
) -> io::Result<Option<ResponseHead>> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    if let Err(httparse::Error::TooManyHeaders) = httparse::Response::new(&mut fields).parse(buf) {
        let mut many = vec![httparse::EMPTY_HEADER; MAX_RESPONSE_FIELDS];
        return parse_response_in(buf, is_head, closing, out, &mut many);
    }
    parse_response_in(buf, is_head, closing, out, &mut fields)
}

fn parse_response_in<'b>(
    buf: &'b [u8],
    is_head: bool,
    closing: bool,
    out: &mut Vec<u8>,
    fields: &mut [httparse::Header<'b>],
) -> io::Result<Option<ResponseHead>> {
    let mut resp = httparse::Response::new(fields);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEADER_BYTES => {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "response head too large"));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, format!("malformed response head: {e}"))),
    };
    let status = resp.code.unwrap_or(0);
    let mut chunked = false;
    let mut other_coding = false;
    let mut length: Option<u64> = None;
    let mut upstream_keep_alive = resp.version == Some(1);
    let mut connection_tokens: Vec<&[u8]> = Vec::new();
    for f in resp.headers.iter() {
        if f.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = f.value.split(|&b| b == b',').next_back().map(<[u8]>::trim_ascii).unwrap_or_default();
            chunked = last.eq_ignore_ascii_case(b"chunked");
            other_coding |= !chunked;
        } else if f.name.eq_ignore_ascii_case("content-length") {
            match (parse_length(f.value), length) {
                (Some(n), None) => length = Some(n),
                (Some(n), Some(m)) if n == m => {}
                _ => return Err(io::Error::new(io::ErrorKind::InvalidData, "invalid or conflicting Content-Length")),
            }
        } else if f.name.eq_ignore_ascii_case("connection") {
            if has_token(f.value, "close") {
                upstream_keep_alive = false;
            }
            if resp.version == Some(0) && has_token(f.value, "keep-alive") {
                upstream_keep_alive = true;
            }
            connection_tokens.extend(f.value.split(|&b| b == b',').map(<[u8]>::trim_ascii));
        }
    }
    let framing = if is_head || status == 204 || status == 304 || (100..200).contains(&status) {
        Framing::Empty
    } else if chunked && !other_coding {
        Framing::Chunked
    } else if other_coding {
        Framing::UntilClose
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    if framing == Framing::UntilClose {
        upstream_keep_alive = false;
    }
    write_client_head(&resp, framing, &connection_tokens, closing, out);
    Ok(Some(ResponseHead { status, framing, upstream_keep_alive, len }))
}

/// The response head sent to the client: HTTP/1.1, hop-by-hop fields and fields listed in
/// `Connection` dropped (a chunked body's Transfer-Encoding kept, its contradicting
/// Content-Length dropped), `Connection: close` added when the connection will close.
fn write_client_head(
    resp: &httparse::Response<'_, '_>,
    framing: Framing,
    connection_tokens: &[&[u8]],
    closing: bool,
    out: &mut Vec<u8>,
) {
    let status = resp.code.unwrap_or(0);
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    let _ = write!(out, "{status}");
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for f in resp.headers.iter() {
        let keep_te = f.name.eq_ignore_ascii_case("transfer-encoding") && framing == Framing::Chunked;
        // A chunked body is relayed as it came: its Content-Length, if any, would contradict it.
        let contradicting = framing == Framing::Chunked && f.name.eq_ignore_ascii_case("content-length");
        if (is_hop_by_hop(f.name) && !keep_te && !f.name.eq_ignore_ascii_case("trailer"))
            || listed_hop(connection_tokens, f.name)
            || contradicting
        {
            continue;
        }
        out.extend_from_slice(f.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(f.value);
        out.extend_from_slice(b"\r\n");
    }
    if (closing || framing == Framing::UntilClose) && !(100..200).contains(&status) {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Finds the end of a chunked body in the bytes relayed through it.
#[derive(Debug, Default)]
pub(super) struct ChunkScanner {
    state: ChunkState,
    size: u64,
    digits: u8,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum ChunkState {
    #[default]
    Size,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    LineStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

impl ChunkScanner {
    /// Feeds relayed bytes; `Ok(Some(n))` when the body ended after `n` of them.
    pub fn feed(&mut self, bytes: &[u8]) -> io::Result<Option<usize>> {
        use ChunkState::*;
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed chunked body");
        let lf = |b: u8| if b == b'\n' { Ok(()) } else { Err(bad()) };
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            match self.state {
                Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        self.digits += 1;
                        if self.digits > 15 {
                            return Err(bad());
                        }
                        self.size = self.size * 16 + u64::from((b as char).to_digit(16).unwrap_or(0));
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => self.state = Ext,
                    b'\r' if self.digits > 0 => self.state = SizeLf,
                    _ => return Err(bad()),
                },
                Ext => match b {
                    b'\r' => self.state = SizeLf,
                    b'\n' => return Err(bad()),
                    _ => {}
                },
                SizeLf => {
                    lf(b)?;
                    self.end_size_line();
                }
                Data => {
                    let take = self.size.min((bytes.len() - i) as u64) as usize;
                    self.size -= take as u64;
                    i += take;
                    if self.size == 0 {
                        self.state = DataCr;
                    }
                    continue;
                }
                DataCr => match b {
                    b'\r' => self.state = DataLf,
                    _ => return Err(bad()),
                },
                DataLf => {
                    lf(b)?;
                    self.state = Size;
                }
                LineStart => match b {
                    b'\r' => self.state = EndLf,
                    b'\n' => return Err(bad()),
                    _ => self.state = TrailerLine,
                },
                TrailerLine => match b {
                    b'\r' => self.state = TrailerLf,
                    b'\n' => return Err(bad()),
                    _ => {}
                },
                TrailerLf => {
                    lf(b)?;
                    self.state = LineStart;
                }
                EndLf => {
                    lf(b)?;
                    self.state = Done;
                    return Ok(Some(i + 1));
                }
                Done => return Ok(Some(i)),
            }
            i += 1;
        }
        Ok(None)
    }

    fn end_size_line(&mut self) {
        self.state = if self.size == 0 { ChunkState::LineStart } else { ChunkState::Data };
        self.digits = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(body: &[u8]) -> io::Result<Option<usize>> {
        ChunkScanner::default().feed(body)
    }

    #[test]
    fn chunked_end_is_found_whole_and_byte_by_byte() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        assert_eq!(scan_all(body).expect("valid"), Some(body.len() - 4));
        let mut s = ChunkScanner::default();
        let mut end = None;
        for (i, b) in body.iter().enumerate() {
            if let Some(n) = s.feed(std::slice::from_ref(b)).expect("valid") {
                end = Some(i + n);
                break;
            }
        }
        assert_eq!(end, Some(body.len() - 4));
        assert_eq!(scan_all(b"0\r\n\r\n").expect("valid"), Some(5));
        assert_eq!(scan_all(b"a\r\n0123456789\r\n").expect("valid"), None);
    }

    #[test]
    fn malformed_chunks_are_errors() {
        assert!(scan_all(b"zz\r\n").is_err());
        assert!(scan_all(b"5\r\nhelloXX").is_err());
        assert!(scan_all(b"ffffffffffffffffff\r\n").is_err());
        assert!(scan_all(b"\r\n").is_err());
        // Line ends are CRLF only, so wharf and the client agree on where the body ends.
        assert!(scan_all(b"5\nhello\r\n").is_err());
        assert!(scan_all(b"5\r\nhello\n").is_err());
        assert!(scan_all(b"0\r\nX: y\n\r\n").is_err());
        assert!(scan_all(b"0\r\n\n").is_err());
    }

    #[test]
    fn response_heads_are_framed_and_cleaned() {
        let mut out = Vec::new();
        let h = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\n\r\nhello",
            false,
            false,
            &mut out,
        )
        .expect("valid")
        .expect("complete");
        assert_eq!((h.status, h.framing, h.upstream_keep_alive), (200, Framing::Length(5), true));
        assert_eq!(out, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");

        let h = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false, true, &mut out)
            .expect("valid")
            .expect("complete");
        assert_eq!(h.framing, Framing::Chunked);
        assert_eq!(out, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");

        let h = parse_response(b"HTTP/1.0 200 OK\r\n\r\n", false, false, &mut out).expect("valid").expect("complete");
        assert_eq!((h.framing, h.upstream_keep_alive), (Framing::UntilClose, false));
        let h = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true, false, &mut out)
            .expect("valid")
            .expect("complete");
        assert_eq!(h.framing, Framing::Empty);
        let h = parse_response(b"HTTP/1.1 304 Not Modified\r\n\r\n", false, false, &mut out)
            .expect("valid")
            .expect("complete");
        assert_eq!(h.framing, Framing::Empty);
        assert!(
            parse_response(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                false,
                false,
                &mut out
            )
            .is_err()
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Le", false, false, &mut out).expect("valid").is_none());

        // Framing fields survive a Connection header naming them; a chunked answer's
        // Content-Length is dropped.
        let h = parse_response(
            b"HTTP/1.1 200 OK\r\nConnection: content-length, transfer-encoding\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            false,
            false,
            &mut out,
        )
        .expect("valid")
        .expect("complete");
        assert_eq!(h.framing, Framing::Chunked);
        assert_eq!(out, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");

        // Hundreds of Set-Cookie fields are fine.
        let mut many = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n".to_vec();
        for i in 0..300 {
            many.extend_from_slice(format!("Set-Cookie: c{i}=v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let h = parse_response(&many, false, false, &mut out).expect("valid").expect("complete");
        assert_eq!(h.framing, Framing::Length(0));
        assert_eq!(out.windows(10).filter(|w| w == b"Set-Cookie").count(), 300);
    }
}
