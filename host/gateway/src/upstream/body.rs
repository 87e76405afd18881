//! A response body from an upstream, read from its connection as hyper's server asks for data,
//! decoded by its framing; the connection goes back to its worker's idle list once the body was
//! read to its end.

use super::*;

/// A response body from an upstream, read from its connection as the client's side asks for
/// it. The connection goes back to its worker's idle list once the body was read to its end;
/// dropped before, the connection is closed.
pub(crate) struct UpstreamBody {
    pub(super) state: State,
}

pub(super) enum State {
    /// The whole body, already read (`None` once taken, or for an empty body).
    Whole(Option<Bytes>),
    Streaming {
        conn: Conn,
        decoder: Decoder,
        keep_alive: bool,
        /// Where the connection goes back to.
        home: (Arc<Upstreams>, Authority),
    },
    Done,
}

impl UpstreamBody {
    /// The body's end was read: the connection goes back, if it may.
    pub(super) fn finish(&mut self) {
        if let State::Streaming { conn, keep_alive, home, .. } = std::mem::replace(&mut self.state, State::Done)
            && keep_alive
            && conn.buf.is_empty()
        {
            home.0.release(&home.1, conn);
        }
    }
}

pub(super) fn body_error(message: impl Into<String>) -> BoxError {
    io::Error::other(message.into()).into()
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let (conn, decoder) = match &mut this.state {
                State::Whole(data) => {
                    let data = data.take();
                    this.state = State::Done;
                    return Poll::Ready(data.map(|data| Ok(Frame::data(data))));
                }
                State::Done => return Poll::Ready(None),
                State::Streaming { conn, decoder, .. } => (conn, decoder),
            };
            // Take what the buffer holds of the current part; `None`: read more first.
            // (A streamed `Length` body never sits at 0: reaching it finishes the body at once, and
            // a body that fits in the buffer at the head is `Whole`.)
            let taken: Option<Result<Option<Frame<Bytes>>, BoxError>> = match decoder {
                Decoder::Length(left) | Decoder::Chunked(Chunk::Data(left)) if !conn.buf.is_empty() => {
                    let n = (*left).min(conn.buf.len() as u64);
                    let data = conn.buf.split_to(n as usize).freeze();
                    *left -= n;
                    if let Decoder::Chunked(chunk @ Chunk::Data(0)) = decoder {
                        *chunk = Chunk::DataEnd;
                    }
                    if matches!(decoder, Decoder::Length(0)) {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Decoder::Close if !conn.buf.is_empty() => {
                    return Poll::Ready(Some(Ok(Frame::data(conn.buf.split().freeze()))));
                }
                Decoder::Chunked(chunk) => match chunk_step(chunk, &mut conn.buf) {
                    Ok(Step::More) => None,
                    Ok(Step::Again) => continue,
                    Ok(Step::End(trailers)) => Some(Ok(trailers.map(Frame::trailers))),
                    Err(message) => Some(Err(body_error(message))),
                },
                _ => None,
            };
            match taken {
                Some(Ok(frame)) => {
                    this.finish();
                    return Poll::Ready(frame.map(Ok));
                }
                Some(Err(err)) => {
                    this.state = State::Done;
                    return Poll::Ready(Some(Err(err)));
                }
                None => {}
            }
            let failed = match ready!(conn.poll_fill(cx)) {
                Ok(0) if matches!(decoder, Decoder::Close) => None,
                Ok(0) => Some(body_error("the upstream closed the connection before the body's end")),
                Ok(_) => continue,
                Err(err) => Some(body_error(format!("reading the response body: {err}"))),
            };
            // The end of a body delimited by the close, or a failure: the connection is done.
            this.state = State::Done;
            return Poll::Ready(failed.map(Err));
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            State::Whole(data) => data.is_none(),
            State::Done => true,
            State::Streaming { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Whole(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            State::Done => SizeHint::with_exact(0),
            State::Streaming { decoder: Decoder::Length(left), .. } => SizeHint::with_exact(*left),
            State::Streaming { .. } => SizeHint::default(),
        }
    }
}
