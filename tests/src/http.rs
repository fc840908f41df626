//! Just enough HTTP/1.1 (RFC 9112) for the lab's peers: message heads with a
//! size limit, `Content-Length` bodies only, and the keep-alive rule. The
//! lab's backend, its load client and the tests share it, so a bug cannot
//! hide by being written twice.

use std::io::{self, BufRead, Read};

/// The longest message head (start line and headers) either side accepts.
pub const MAX_HEAD: usize = 16 * 1024;

/// What went wrong while reading a message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The socket failed (peer reset, timeout).
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The peer closed the connection in the middle of a message head.
    #[error("peer closed the connection inside a message head")]
    Truncated,
    /// The peer sent something that is not HTTP/1.1 (RFC 9112 section 2.2:
    /// respond 400 and close).
    #[error("malformed message from the peer: {0}")]
    Malformed(String),
    /// The peer's message head is longer than [`MAX_HEAD`].
    #[error("message head longer than {MAX_HEAD} bytes")]
    HeadTooLong,
    /// The peer used a feature the lab does not implement (chunked bodies).
    #[error("not implemented: {0}")]
    Unsupported(String),
}

/// The header fields of a message, in order, names as sent.
#[derive(Clone, Debug, Default)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    /// The first value of header `name` (case-insensitive, RFC 9110 5.1).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the comma-separated header `name` lists `token` (case-insensitive).
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.0
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// The body length: `Content-Length`, absent = `None`. Rejects a
    /// `Transfer-Encoding` (unsupported) and differing lengths (RFC 9112 6.3).
    pub fn content_length(&self) -> Result<Option<u64>, HttpError> {
        if self.get("transfer-encoding").is_some() {
            return Err(HttpError::Unsupported("Transfer-Encoding".into()));
        }
        let mut length = None;
        for (_, value) in self
            .0
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        {
            let value = value.trim();
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HttpError::Malformed(format!("Content-Length {value:?}")));
            }
            let n: u64 = value
                .parse()
                .map_err(|_| HttpError::Malformed(format!("Content-Length {value:?}")))?;
            if length.is_some_and(|l| l != n) {
                return Err(HttpError::Malformed("differing Content-Length".into()));
            }
            length = Some(n);
        }
        Ok(length)
    }
}

/// A request head.
#[derive(Clone, Debug)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The request target (origin form, e.g. `/bytes/10`).
    pub target: String,
    /// The minor version: 0 or 1 (HTTP/1.x).
    pub minor: u8,
    /// The header fields.
    pub headers: Headers,
}

impl Request {
    /// RFC 9112 9.3: HTTP/1.1 persists unless `Connection: close`, HTTP/1.0
    /// only with `Connection: keep-alive`.
    pub fn keep_alive(&self) -> bool {
        if self.minor == 0 {
            self.headers.has_token("connection", "keep-alive")
        } else {
            !self.headers.has_token("connection", "close")
        }
    }
}

/// A response head.
#[derive(Clone, Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The reason phrase.
    pub reason: String,
    /// The header fields.
    pub headers: Headers,
}

/// Reads one line (up to `\n`) without going past `budget` bytes in total.
/// Returns the line without its `\r\n` / `\n`; `None` on EOF before any byte.
fn read_line(reader: &mut impl BufRead, budget: &mut usize) -> Result<Option<String>, HttpError> {
    let mut line = Vec::new();
    let n = reader
        .by_ref()
        .take(*budget as u64 + 1)
        .read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if n > *budget {
        return Err(HttpError::HeadTooLong);
    }
    *budget -= n;
    if line.pop() != Some(b'\n') {
        return Err(HttpError::Truncated);
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| HttpError::Malformed("head is not UTF-8".into()))
}

fn read_headers(reader: &mut impl BufRead, budget: &mut usize) -> Result<Headers, HttpError> {
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader, budget)?.ok_or(HttpError::Truncated)?;
        if line.is_empty() {
            return Ok(Headers(headers));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| HttpError::Malformed(format!("header line {line:?}")))?;
        // RFC 9112 5.1: no whitespace between name and colon; obs-fold is
        // rejected (5.2) by the same check on a leading space.
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.bytes().all(token) {
            return Err(HttpError::Malformed(format!("header name {name:?}")));
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }
}

fn parse_version(text: &str) -> Result<u8, HttpError> {
    match text {
        "HTTP/1.1" => Ok(1),
        "HTTP/1.0" => Ok(0),
        other => Err(HttpError::Malformed(format!("version {other:?}"))),
    }
}

/// Reads a request head. `Ok(None)`: the peer closed cleanly between requests.
pub fn read_request(reader: &mut impl BufRead) -> Result<Option<Request>, HttpError> {
    let mut budget = MAX_HEAD;
    let Some(line) = read_line(reader, &mut budget)? else {
        return Ok(None);
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::Malformed(format!("request line {line:?}")));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(HttpError::Malformed(format!("method {method:?}")));
    }
    if !target.starts_with('/') {
        return Err(HttpError::Malformed(format!("target {target:?}")));
    }
    let minor = parse_version(version)?;
    let headers = read_headers(reader, &mut budget)?;
    Ok(Some(Request {
        method: method.to_string(),
        target: target.to_string(),
        minor,
        headers,
    }))
}

/// Reads a response head.
pub fn read_response(reader: &mut impl BufRead) -> Result<Response, HttpError> {
    let mut budget = MAX_HEAD;
    let line = read_line(reader, &mut budget)?.ok_or(HttpError::Truncated)?;
    let mut parts = line.splitn(3, ' ');
    let (Some(version), Some(status)) = (parts.next(), parts.next()) else {
        return Err(HttpError::Malformed(format!("status line {line:?}")));
    };
    parse_version(version)?;
    let status = status
        .parse()
        .ok()
        .filter(|s| (100..1000).contains(s))
        .ok_or_else(|| HttpError::Malformed(format!("status line {line:?}")))?;
    let reason = parts.next().unwrap_or("").to_string();
    let headers = read_headers(reader, &mut budget)?;
    Ok(Response {
        status,
        reason,
        headers,
    })
}

/// Reads exactly `len` body bytes in chunks of up to `buf.len()`, passing each
/// to `sink`. Fails with `UnexpectedEof` if the peer closes early.
pub fn read_body(
    reader: &mut impl Read,
    len: u64,
    buf: &mut [u8],
    mut sink: impl FnMut(&[u8]),
) -> io::Result<()> {
    let mut left = len;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = match reader.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("peer closed with {left} of {len} body bytes missing"),
                ));
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        sink(&buf[..n]);
        left -= n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_head_and_keep_alive() {
        let mut input: &[u8] =
            b"GET /bytes/5 HTTP/1.1\r\nHost: x\r\nConnection: Close\r\n\r\nGET / HTTP/1.0\r\n\r\n";
        let req = read_request(&mut input).unwrap().unwrap();
        assert_eq!(
            (req.method.as_str(), req.target.as_str()),
            ("GET", "/bytes/5")
        );
        assert!(!req.keep_alive());
        let req = read_request(&mut input).unwrap().unwrap();
        assert!(!req.keep_alive());
        assert!(read_request(&mut input).unwrap().is_none());
    }

    #[test]
    fn malformed_heads() {
        for bad in [
            &b"GET /x\r\n\r\n"[..],
            b"GET /x HTTP/2\r\n\r\n",
            b"get /x HTTP/1.1\r\n\r\n",
            b"GET /x HTTP/1.1\r\n folded\r\n\r\n",
            b"GET /x HTTP/1.1\r\nNo colon\r\n\r\n",
        ] {
            let mut input = bad;
            assert!(
                matches!(read_request(&mut input), Err(HttpError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut cut: &[u8] = b"GET /x HTTP/1.1\r\nHost";
        assert!(matches!(read_request(&mut cut), Err(HttpError::Truncated)));
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_HEAD));
        assert!(matches!(
            read_request(&mut long.as_bytes()),
            Err(HttpError::HeadTooLong)
        ));
    }

    #[test]
    fn content_length_rules() {
        let h = |v: &[(&str, &str)]| {
            Headers(
                v.iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect(),
            )
        };
        assert_eq!(
            h(&[("Content-Length", "12")]).content_length().unwrap(),
            Some(12)
        );
        assert_eq!(h(&[]).content_length().unwrap(), None);
        assert!(h(&[("content-length", "-1")]).content_length().is_err());
        assert!(
            h(&[("content-length", "1"), ("Content-Length", "2")])
                .content_length()
                .is_err()
        );
        assert!(matches!(
            h(&[("Transfer-Encoding", "chunked")]).content_length(),
            Err(HttpError::Unsupported(_))
        ));
    }
}
