//! Incremental HTTP/1.1 response parsing for the client (`hold`'s replies):
//! heads in their plain form by `parse_fast.rs`, any other with
//! `httparse::Response` (both read through [`Head::header`], so they judge a
//! head alike), bodies framed by `Content-Length`, `chunked` transfer
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
    /// Tests turn the fast path off, to compare the two paths.
    #[cfg(test)]
    fast: bool,
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

/// Header slots `httparse` gets: a head with more is refused.
const MAX_HEADERS: usize = 64;

impl ResponseParser {
    /// A parser for responses to requests with the given method.
    pub(crate) fn new(head_request: bool) -> Self {
        ResponseParser {
            state: State::Head,
            status: 0,
            close: false,
            head_request,
            #[cfg(test)]
            fast: true,
        }
    }

    /// The head at the start of `buf` by the fast path (`parse_fast.rs`),
    /// unless a test turned it off.
    fn fast_head(&self, buf: &[u8]) -> Option<Head> {
        #[cfg(test)]
        if !self.fast {
            return None;
        }
        crate::parse_fast::head(buf)
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
                    // The plain heads of nearly every reply without
                    // `httparse`, anything else with it (`parse_fast.rs`).
                    let head = match self.fast_head(rest) {
                        Some(head) => head,
                        None => match slow_head(rest)? {
                            Some(head) => head,
                            None => return Ok(Step::Partial { consumed: pos }),
                        },
                    };
                    pos += head.len;
                    let status = head.status;
                    if (100..200).contains(&status) {
                        continue; // interim response: the real one follows
                    }
                    self.status = status;
                    self.close = head.close;
                    self.state = if self.head_request || status == 204 || status == 304 {
                        State::Body(0)
                    } else if head.chunked {
                        State::ChunkSize
                    } else if let Some(len) = head.length {
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

/// A whole response head: its length and what it says about the body and
/// the connection. Built by `httparse` ([`slow_head`]) or by the fast path
/// (`parse_fast.rs`), both through [`Head::header`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    /// Bytes of the head, its final empty line included.
    pub len: usize,
    /// The status code.
    pub status: u16,
    /// The server will close the connection: HTTP/1.0 or `Connection:
    /// close`, unless a later `Connection` header says `keep-alive` (the
    /// last header naming either decides; `close` wins within one).
    pub close: bool,
    /// The last `Content-Length`.
    pub length: Option<u64>,
    /// `Transfer-Encoding` names `chunked`.
    pub chunked: bool,
}

impl Head {
    /// A head with this status line and no headers yet (`len` set when it
    /// is whole).
    pub(crate) fn new(status: u16, close: bool) -> Head {
        Head {
            len: 0,
            status,
            close,
            length: None,
            chunked: false,
        }
    }

    /// Takes one header (its value without surrounding whitespace): the one
    /// interpretation of both paths, so that they can only differ in how
    /// they split a head into lines.
    pub(crate) fn header(&mut self, name: &[u8], value: &[u8]) -> Result<(), BadResponse> {
        if name.eq_ignore_ascii_case(b"content-length") {
            let v = std::str::from_utf8(value).map_err(|_| BadResponse)?;
            self.length = Some(v.trim().parse::<u64>().map_err(|_| BadResponse)?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.chunked = contains_token(value, b"chunked");
        } else if name.eq_ignore_ascii_case(b"connection") {
            if contains_token(value, b"close") {
                self.close = true;
            } else if contains_token(value, b"keep-alive") {
                self.close = false;
            }
        }
        Ok(())
    }
}

/// The head at the start of `buf` by `httparse`: `Ok(None)` while it is
/// incomplete.
pub(crate) fn slow_head(buf: &[u8]) -> Result<Option<Head>, BadResponse> {
    // Uninitialised: httparse fills what it uses, so no 2 KiB memset of 64
    // header slots per response.
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut headers,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(BadResponse),
    };
    let status = resp.code.ok_or(BadResponse)?;
    let mut head = Head::new(status, resp.version == Some(0));
    for h in resp.headers.iter() {
        head.header(h.name.as_bytes(), h.value)?;
    }
    head.len = len;
    Ok(Some(head))
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
        feed_with(ResponseParser::new(head_request), input, piece)
    }

    /// [`feed`] with this parser.
    fn feed_with(
        mut p: ResponseParser,
        input: &[u8],
        piece: usize,
    ) -> Result<Vec<Response>, BadResponse> {
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

    /// Streams of replies in every framing, whole and malformed: the parser
    /// with its fast path reads each as the parser without it (`httparse`
    /// for every head), fed in pieces of every size; and the plain replies
    /// do take the fast path.
    #[test]
    fn the_fast_path_reads_every_stream_as_httparse_does() {
        let served = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\n\
date: Sun, 06 Dec 2026 21:00:00 GMT\r\ncontent-length: 13\r\n\r\nHello, world!";
        let pipelined = [&served[..], served, b"HTTP/1.1 200 OK\r\nconte"].concat();
        let streams: [&[u8]; 10] = [
            served,
            &pipelined,
            MIXED,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 201 x\r\n\r\nrest",
            b"HTTP/1.1 200 OK\nContent-Length: 1\n\nx",
            b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\nx",
            b"HTTP/1.1 200 OK\r\nX: \x01\r\nContent-Length: 1\r\n\r\nx",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\rx\r\n",
        ];
        for stream in streams {
            for piece in 1..=stream.len() {
                let mut slow = ResponseParser::new(false);
                slow.fast = false;
                assert_eq!(
                    feed(stream, piece, false),
                    feed_with(slow, stream, piece),
                    "pieces of {piece}: {:?}",
                    String::from_utf8_lossy(stream)
                );
            }
        }
        assert_eq!(feed(&pipelined, 7, false).unwrap().len(), 2);
        let p = ResponseParser::new(false);
        assert!(
            p.fast_head(served).is_some(),
            "serve's reply misses the fast path"
        );
        assert!(p.fast_head(&pipelined).is_some());
        // Others go to httparse: read the same, or failed the same.
        assert!(streams[5..].iter().all(|s| p.fast_head(s).is_none()));
        assert!(feed(streams[5], 64, false).is_ok());
        assert!(streams[7..]
            .iter()
            .all(|s| feed(s, 64, false) == Err(BadResponse)));
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
