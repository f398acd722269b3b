//! Incremental HTTP/1.1 response parsing for the client: heads with
//! `httparse::Response`, bodies framed by `Content-Length`, `chunked` transfer
//! encoding, or the end of the connection. Body bytes are consumed without being
//! copied or kept, so a reused read buffer only ever has to hold one head.

use std::mem::MaybeUninit;

/// A complete response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Response {
    /// The status code.
    pub status: u16,
    /// The server will close the connection after this response.
    pub close: bool,
}

/// The response was not valid HTTP/1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BadResponse;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkCrlf,
    Trailers,
    UntilEof,
}

/// Parses a stream of responses; feed it the unparsed part of the read buffer.
#[derive(Debug, Clone)]
pub(crate) struct ResponseParser {
    state: State,
    status: u16,
    close: bool,
    /// Responses to HEAD requests have no body whatever their headers say.
    head_request: bool,
}

/// The result of one [`ResponseParser::parse`] step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// `consumed` bytes were used and more input is needed.
    Partial {
        /// Bytes consumed from the front of the input.
        consumed: usize,
    },
    /// A response completed after `consumed` bytes.
    Done {
        /// Bytes consumed from the front of the input.
        consumed: usize,
        /// The response.
        response: Response,
    },
}

const MAX_HEADERS: usize = 64;

impl ResponseParser {
    /// A parser for responses to requests with the given method.
    pub(crate) fn new(head_request: bool) -> Self {
        ResponseParser {
            state: State::Head,
            status: 0,
            close: false,
            head_request,
        }
    }

    /// Forgets any partial response (after a reconnect).
    pub(crate) fn reset(&mut self) {
        self.state = State::Head;
    }

    /// True when no response is partially parsed.
    pub(crate) fn idle(&self) -> bool {
        self.state == State::Head
    }

    /// Parses as far as possible into `buf`, stopping after at most one response.
    pub(crate) fn parse(&mut self, buf: &[u8]) -> Result<Step, BadResponse> {
        let mut pos = 0;
        loop {
            let rest = &buf[pos..];
            match self.state {
                State::Head => {
                    // Uninitialised: httparse fills what it uses, so no
                    // 2 KiB memset of 64 header slots per response.
                    let mut headers =
                        [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
                    let mut resp = httparse::Response::new(&mut []);
                    let parsed = httparse::ParserConfig::default()
                        .parse_response_with_uninit_headers(&mut resp, rest, &mut headers);
                    let n = match parsed {
                        Ok(httparse::Status::Complete(n)) => n,
                        Ok(httparse::Status::Partial) => {
                            return Ok(Step::Partial { consumed: pos })
                        }
                        Err(_) => return Err(BadResponse),
                    };
                    pos += n;
                    let status = resp.code.ok_or(BadResponse)?;
                    if (100..200).contains(&status) {
                        continue; // interim response: the real one follows
                    }
                    let mut length = None;
                    let mut chunked = false;
                    let mut close = resp.version == Some(0);
                    for h in resp.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            let v = std::str::from_utf8(h.value).map_err(|_| BadResponse)?;
                            length = Some(v.trim().parse::<u64>().map_err(|_| BadResponse)?);
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            chunked = contains_token(h.value, b"chunked");
                        } else if h.name.eq_ignore_ascii_case("connection") {
                            if contains_token(h.value, b"close") {
                                close = true;
                            } else if contains_token(h.value, b"keep-alive") {
                                close = false;
                            }
                        }
                    }
                    self.status = status;
                    self.close = close;
                    self.state = if self.head_request || status == 204 || status == 304 {
                        State::Body(0)
                    } else if chunked {
                        State::ChunkSize
                    } else if let Some(len) = length {
                        State::Body(len)
                    } else {
                        self.close = true;
                        State::UntilEof
                    };
                }
                State::Body(remaining) => {
                    let take = remaining.min(rest.len() as u64);
                    pos += take as usize;
                    if take < remaining {
                        self.state = State::Body(remaining - take);
                        return Ok(Step::Partial { consumed: pos });
                    }
                    return Ok(self.finish(pos));
                }
                State::ChunkSize => match httparse::parse_chunk_size(rest) {
                    Ok(httparse::Status::Complete((n, 0))) => {
                        pos += n;
                        self.state = State::Trailers;
                    }
                    Ok(httparse::Status::Complete((n, size))) => {
                        pos += n;
                        self.state = State::ChunkData(size);
                    }
                    Ok(httparse::Status::Partial) => return Ok(Step::Partial { consumed: pos }),
                    Err(_) => return Err(BadResponse),
                },
                State::ChunkData(remaining) => {
                    let take = remaining.min(rest.len() as u64);
                    pos += take as usize;
                    if take < remaining {
                        self.state = State::ChunkData(remaining - take);
                        return Ok(Step::Partial { consumed: pos });
                    }
                    self.state = State::ChunkCrlf;
                }
                State::ChunkCrlf => {
                    if rest.len() < 2 {
                        return Ok(Step::Partial { consumed: pos });
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(BadResponse);
                    }
                    pos += 2;
                    self.state = State::ChunkSize;
                }
                State::Trailers => {
                    let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
                        return Ok(Step::Partial { consumed: pos });
                    };
                    pos += eol + 2;
                    if eol == 0 {
                        return Ok(self.finish(pos));
                    }
                }
                State::UntilEof => {
                    return Ok(Step::Partial {
                        consumed: buf.len(),
                    })
                }
            }
        }
    }

    /// The connection reached end of file: completes a response delimited by it.
    pub(crate) fn on_eof(&mut self) -> Option<Response> {
        match self.state {
            State::UntilEof => {
                self.state = State::Head;
                Some(Response {
                    status: self.status,
                    close: true,
                })
            }
            _ => None,
        }
    }

    fn finish(&mut self, consumed: usize) -> Step {
        self.state = State::Head;
        Step::Done {
            consumed,
            response: Response {
                status: self.status,
                close: self.close,
            },
        }
    }
}

/// Case-insensitive search for `token` in a comma-separated header value.
fn contains_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `piece` bytes, like a socket would, keeping unparsed
    /// bytes (as the connection's buffer does), and returns the responses.
    fn feed(input: &[u8], piece: usize, head_request: bool) -> Result<Vec<Response>, BadResponse> {
        let mut p = ResponseParser::new(head_request);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for chunk in input.chunks(piece) {
            buf.extend_from_slice(chunk);
            let mut pos = 0;
            loop {
                match p.parse(&buf[pos..])? {
                    Step::Partial { consumed } => {
                        pos += consumed;
                        break;
                    }
                    Step::Done { consumed, response } => {
                        pos += consumed;
                        out.push(response);
                    }
                }
            }
            buf.drain(..pos);
        }
        out.extend(p.on_eof());
        Ok(out)
    }

    const MIXED: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello\
HTTP/1.1 100 Continue\r\n\r\n\
HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\n\
HTTP/1.1 204 No Content\r\n\r\n\
HTTP/1.1 500 Oops\r\nConnection: close\r\ncontent-length: 0\r\n\r\n";

    #[test]
    fn parses_every_framing_at_every_split() {
        for piece in 1..=MIXED.len() {
            let got = feed(MIXED, piece, false).unwrap();
            let statuses: Vec<u16> = got.iter().map(|r| r.status).collect();
            assert_eq!(statuses, [200, 404, 204, 500], "piece {piece}");
            assert!(!got[0].close && got[3].close);
        }
    }

    #[test]
    fn body_until_eof_and_head_requests() {
        let got = feed(b"HTTP/1.0 200 OK\r\n\r\nstreaming body", 4, false).unwrap();
        assert_eq!(
            got,
            [Response {
                status: 200,
                close: true
            }]
        );
        let got = feed(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\nHTTP/1.1 201 OK\r\nContent-Length: 99\r\n\r\n", 7, true)
            .unwrap();
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(
            feed(b"SSH-2.0-OpenSSH\r\n\r\n", 64, false),
            Err(BadResponse)
        );
        assert_eq!(
            feed(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", 64, false),
            Err(BadResponse)
        );
        assert_eq!(
            feed(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                64,
                false
            ),
            Err(BadResponse)
        );
    }
}
