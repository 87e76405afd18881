//! The HTTP/1.1 wire format of the gateway's upstream client: request heads encoded with the
//! hop-by-hop headers dropped and `X-Forwarded-*`, `X-Request-Id` and a missing `Host` written
//! in; response heads parsed with `httparse` and framed by RFC 9112 §6.3; the chunked decoder.
//! Pure functions over buffers: no sockets here.

use super::*;

/// Most headers in a response head.
pub(super) const MAX_HEADERS: usize = 100;
/// Largest response head.
pub(super) const MAX_HEAD: usize = 64 * 1024;
/// Largest trailer section of a chunked body.
pub(super) const MAX_TRAILERS: usize = 16 * 1024;
/// Longest chunk-size line (with extensions).
pub(super) const MAX_CHUNK_LINE: usize = 1024;

pub(super) struct HeadError {
    pub(super) message: String,
    /// Some answer arrived (so the request was received): never sent again.
    pub(super) answered: bool,
}

impl HeadError {
    pub(super) fn fatal(message: impl Into<String>) -> Self {
        HeadError { message: message.into(), answered: true }
    }
}

/// How a request body goes out.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Framing {
    Empty,
    Length(u64),
    Chunked,
}

/// A parsed response head (its HTTP version only decides whether the connection stays open: the
/// gateway answers its clients in its own version, as RFC 9110 §6.2 asks of intermediaries).
pub(super) struct Head {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: Decoder,
    pub(super) keep_alive: bool,
}

/// How the rest of a response body is delimited.
#[derive(Clone, Copy, Debug)]
pub(super) enum Decoder {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunk),
    /// Until the upstream closes.
    Close,
}

#[derive(Clone, Copy, Debug)]
pub(super) enum Chunk {
    /// A chunk-size line is next.
    Size,
    /// This many bytes of chunk data are left.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// The trailer section after the last chunk.
    Trailers,
}

/// What the gateway says about a request it forwards, in headers that replace any of the same
/// name the client sent (`X-Forwarded-For` is appended to instead).
pub(crate) struct Forwarded<'a> {
    /// The client's address.
    pub(crate) client_ip: &'a str,
    /// The host the client asked for.
    pub(crate) host: &'a str,
    /// `http` or `https`.
    pub(crate) proto: &'static str,
    pub(crate) request_id: &'a HeaderValue,
}

pub(super) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(super) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(super) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Hop-by-hop headers (RFC 9110 §7.6.1), never passed on; `Transfer-Encoding` too, since each
/// hop frames its own body.
pub(super) const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The hop-by-hop headers of one message: the fixed list and those its `Connection` names.
#[derive(Default)]
pub(super) struct HopByHop {
    pub(super) named: Vec<HeaderName>,
    pub(super) close: bool,
    pub(super) keep_alive: bool,
}

impl HopByHop {
    /// From the values of the message's `Connection` headers.
    pub(super) fn of<'v>(connection: impl Iterator<Item = &'v [u8]>) -> Self {
        let mut hop = HopByHop::default();
        for token in connection.flat_map(|v| v.split(|b| *b == b',')).map(<[u8]>::trim_ascii) {
            if token.eq_ignore_ascii_case(b"close") {
                hop.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                hop.keep_alive = true;
            } else if let Ok(name) = HeaderName::from_bytes(token) {
                hop.named.push(name);
            }
        }
        hop
    }

    pub(super) fn contains(&self, name: &HeaderName) -> bool {
        HOP_BY_HOP.contains(name) || (!self.named.is_empty() && self.named.contains(name))
    }
}

/// The request line and headers of `request` as it goes to `authority` (hop-by-hop headers
/// dropped, `forwarded` added, `Host` set to `authority` when the client sent none), with the
/// framing its body goes out in.
pub(super) fn encode_head(
    request: &Request<GatewayBody>,
    authority: &Authority,
    forwarded: &Forwarded<'_>,
) -> Result<(Vec<u8>, Framing), String> {
    let headers = request.headers();
    let body = request.body();
    // Every `Content-Length` the client sent must say the same: an HTTP/2 client may send
    // several, and h2 checks only the first. The upstream gets one, written here, so that it
    // cannot frame the body by another.
    let mut client_length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        match parse_length(value.as_bytes()) {
            Some(length) if client_length.is_none_or(|l| l == length) => client_length = Some(length),
            _ => return Err(format!("invalid request content-length {value:?}")),
        }
    }
    let framing = match client_length {
        Some(0) => Framing::Empty,
        Some(length) => Framing::Length(length),
        None if body.is_end_stream() => Framing::Empty,
        None => match body.size_hint().exact() {
            Some(0) => Framing::Empty,
            Some(length) => Framing::Length(length),
            None => Framing::Chunked,
        },
    };
    let target = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let method = request.method().as_str();
    let size = headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum::<usize>();
    let mut head = Vec::with_capacity(method.len() + target.len() + size + 256);
    head.extend_from_slice(method.as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    let hop = HopByHop::of(headers.get_all(header::CONNECTION).iter().map(HeaderValue::as_bytes));
    let mut has_host = false;
    let mut forwarded_for: Vec<u8> = Vec::new();
    for (name, value) in headers {
        if hop.contains(name)
            || *name == header::CONTENT_LENGTH
            || *name == X_FORWARDED_HOST
            || *name == X_FORWARDED_PROTO
            || *name == X_REQUEST_ID
        {
            continue;
        }
        if *name == X_FORWARDED_FOR {
            forwarded_for.extend_from_slice(value.as_bytes());
            forwarded_for.extend_from_slice(b", ");
            continue;
        }
        has_host |= *name == header::HOST;
        push_field(&mut head, name.as_str().as_bytes(), value.as_bytes());
    }
    if !has_host {
        push_field(&mut head, b"host", authority.as_str().as_bytes());
    }
    if forwarded_for.is_empty() {
        // The usual case, without allocating.
        push_field(&mut head, X_FORWARDED_FOR.as_str().as_bytes(), forwarded.client_ip.as_bytes());
    } else {
        forwarded_for.extend_from_slice(forwarded.client_ip.as_bytes());
        push_field(&mut head, X_FORWARDED_FOR.as_str().as_bytes(), &forwarded_for);
    }
    if !forwarded.host.is_empty() && forwarded.host.bytes().all(|b| b.is_ascii_graphic()) {
        push_field(&mut head, X_FORWARDED_HOST.as_str().as_bytes(), forwarded.host.as_bytes());
    }
    push_field(&mut head, X_FORWARDED_PROTO.as_str().as_bytes(), forwarded.proto.as_bytes());
    push_field(&mut head, X_REQUEST_ID.as_str().as_bytes(), forwarded.request_id.as_bytes());
    // The body's framing.
    match framing {
        Framing::Empty if client_length.is_some() => push_field(&mut head, b"content-length", b"0"),
        Framing::Chunked => push_field(&mut head, b"transfer-encoding", b"chunked"),
        Framing::Length(length) => push_field(&mut head, b"content-length", length.to_string().as_bytes()),
        // Methods whose requests carry content say there is none, as hyper's client does.
        Framing::Empty if matches!(*request.method(), Method::POST | Method::PUT | Method::PATCH) => {
            push_field(&mut head, b"content-length", b"0");
        }
        Framing::Empty => {}
    }
    head.extend_from_slice(b"\r\n");
    Ok((head, framing))
}

/// One header line.
pub(super) fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A `Content-Length` value: digits, or a list of the same digits repeated.
pub(super) fn parse_length(value: &[u8]) -> Option<u64> {
    let mut length = None;
    for part in value.split(|b| *b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if length.is_some_and(|l| l != n) {
            return None;
        }
        length = Some(n);
    }
    length
}

/// Parse a response head at the start of `buf` and take it out; `None` while incomplete. The
/// head's headers leave out the hop-by-hop ones.
pub(super) fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Option<Head>, String> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    // Where each name and value lies in `buf`, so the values can share the head's memory.
    let mut spans = [[0u32; 4]; MAX_HEADERS];
    let (length, code, version, count, hop) = {
        let parsed =
            httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut response, buf, &mut slots);
        let length = match parsed {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(format!("more than {MAX_HEADERS} response headers")),
            Err(err) => return Err(format!("malformed response head: {err}")),
        };
        let base = buf.as_ptr() as usize;
        for (span, h) in spans.iter_mut().zip(response.headers.iter()) {
            let name = h.name.as_ptr() as usize - base;
            let value = h.value.as_ptr() as usize - base;
            *span = [name as u32, (name + h.name.len()) as u32, value as u32, (value + h.value.len()) as u32];
        }
        let connection = response.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("connection"));
        let hop = HopByHop::of(connection.map(|h| h.value));
        (length, response.code.unwrap_or(0), response.version.unwrap_or(1), response.headers.len(), hop)
    };
    let bytes = buf.split_to(length).freeze();
    let status = StatusCode::from_u16(code).map_err(|_| format!("invalid response status {code}"))?;
    let mut headers = HeaderMap::with_capacity(count);
    // Whether the last transfer coding is chunked, when there is one; the content length.
    let (mut chunked, mut content_length) = (None::<bool>, None::<u64>);
    for [ns, ne, vs, ve] in spans[..count].iter().map(|s| s.map(|at| at as usize)) {
        let name = HeaderName::from_bytes(&bytes[ns..ne]).map_err(|_| "invalid response header name".to_owned())?;
        if name == header::TRANSFER_ENCODING {
            // As hyper's client: HTTP/1.0 has no transfer codings (RFC 9112 §6.1 says to treat
            // the framing as faulty), and a value that is not visible ASCII is not read as
            // chunked by hyper; a proxy that read it differently from its peers could be
            // desynchronised, so both are refused.
            if version == 0 {
                return Err("transfer-encoding in an HTTP/1.0 response".into());
            }
            if !bytes[vs..ve].iter().all(|b| *b == b'\t' || (b' '..=b'~').contains(b)) {
                return Err("invalid response transfer-encoding".into());
            }
            let last = bytes[vs..ve].rsplit(|b| *b == b',').next().unwrap_or_default();
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            continue;
        }
        if hop.contains(&name) {
            continue;
        }
        if name == header::CONTENT_LENGTH {
            match (parse_length(&bytes[vs..ve]), content_length) {
                (Some(n), None) => content_length = Some(n),
                (Some(n), Some(l)) if n == l => {}
                _ => return Err("invalid response content-length".into()),
            }
        }
        let value = HeaderValue::from_maybe_shared(bytes.slice(vs..ve))
            .map_err(|_| format!("invalid value of response header `{name}`"))?;
        headers.append(name, value);
    }

    let mut keep_alive = !hop.close && (version == 1 || hop.keep_alive);
    let body = if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Decoder::Length(0)
    } else if let Some(chunked) = chunked {
        if content_length.is_some() {
            // Both framings: the transfer coding wins and the connection cannot be trusted after.
            headers.remove(header::CONTENT_LENGTH);
            keep_alive = false;
        }
        if chunked {
            Decoder::Chunked(Chunk::Size)
        } else {
            keep_alive = false;
            Decoder::Close
        }
    } else if let Some(length) = content_length {
        Decoder::Length(length)
    } else {
        keep_alive = false;
        Decoder::Close
    };
    Ok(Some(Head { status, headers, body, keep_alive }))
}

/// What a step of the chunked decoder came to.
pub(super) enum Step {
    /// The buffer holds too little: read more.
    More,
    /// The state moved on: look again.
    Again,
    /// The body ended, with these trailers if any.
    End(Option<HeaderMap>),
}

/// Move the chunked decoder on over what `buf` holds (chunk data itself is taken by the caller).
pub(super) fn chunk_step(chunk: &mut Chunk, buf: &mut BytesMut) -> Result<Step, String> {
    match *chunk {
        Chunk::Size => match chunk_size(buf) {
            Ok(httparse::Status::Complete((used, size))) => {
                buf.advance(used);
                *chunk = if size == 0 { Chunk::Trailers } else { Chunk::Data(size) };
                Ok(Step::Again)
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => Err("chunk-size line too long".into()),
            Ok(httparse::Status::Partial) => Ok(Step::More),
            Err(message) => Err(message.into()),
        },
        Chunk::Data(_) => Ok(Step::More),
        Chunk::DataEnd => match buf.get(..2) {
            None => Ok(Step::More),
            Some(b"\r\n") => {
                buf.advance(2);
                *chunk = Chunk::Size;
                Ok(Step::Again)
            }
            Some(_) => Err("chunk data not followed by CRLF".into()),
        },
        Chunk::Trailers => {
            if buf.starts_with(b"\r\n") {
                buf.advance(2);
                return Ok(Step::End(None));
            }
            let mut slots = [httparse::EMPTY_HEADER; 32];
            match httparse::parse_headers(buf, &mut slots) {
                Ok(httparse::Status::Complete((used, fields))) => {
                    // httparse takes a bare LF as a line's end; hyper does not (and neither
                    // must we, or the two would end the body at different places).
                    if bare_lf(&buf[..used]) {
                        return Err("malformed trailers: a line ends without CR".into());
                    }
                    let mut trailers = HeaderMap::with_capacity(fields.len());
                    for field in fields {
                        let name = HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| "invalid trailer name")?;
                        let value = HeaderValue::from_bytes(field.value).map_err(|_| "invalid trailer value")?;
                        trailers.append(name, value);
                    }
                    buf.advance(used);
                    Ok(Step::End(Some(trailers)))
                }
                Ok(httparse::Status::Partial) if buf.len() > MAX_TRAILERS => Err("trailer section too large".into()),
                Ok(httparse::Status::Partial) => Ok(Step::More),
                Err(err) => Err(format!("malformed trailers: {err}")),
            }
        }
    }
}

/// Parse a chunk-size line as hyper does: httparse's parser, but with at least one hex digit
/// first (httparse reads an empty size as 0, the last chunk) and no bare LF (httparse lets one
/// through in an extension). Either would let a peer end the body where hyper does not.
fn chunk_size(buf: &[u8]) -> Result<httparse::Status<(usize, u64)>, &'static str> {
    match buf.first() {
        None => return Ok(httparse::Status::Partial),
        Some(b) if !b.is_ascii_hexdigit() => return Err("invalid chunk size"),
        Some(_) => {}
    }
    let line = &buf[..buf.len().min(MAX_CHUNK_LINE + 2)];
    if let Some(lf) = line.iter().position(|b| *b == b'\n')
        && (lf == 0 || line[lf - 1] != b'\r')
    {
        return Err("invalid chunk size: a bare LF in the chunk-size line");
    }
    httparse::parse_chunk_size(buf).map_err(|_| "invalid chunk size")
}

/// Whether some line of `text` ends in LF without CR before it.
fn bare_lf(text: &[u8]) -> bool {
    text.iter().enumerate().any(|(i, b)| *b == b'\n' && (i == 0 || text[i - 1] != b'\r'))
}
