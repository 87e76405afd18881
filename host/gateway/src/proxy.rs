//! The proxy path of one request: find its route, ask the router for an endpoint, forward the
//! request (retrying a failed connect on another endpoint), stream the response back, and write
//! the access log line.

use super::*;

impl Gateway {
    /// Serve one request.
    pub(crate) async fn handle(
        &self,
        req: Request<Incoming>,
        client: Peer<'_>,
        local: &Local,
    ) -> Response<GatewayBody> {
        let started = Instant::now();
        let request_id = req
            .headers()
            .get(&X_REQUEST_ID)
            .filter(|v| !v.is_empty() && v.len() <= 128)
            .cloned()
            .unwrap_or_else(|| local.request_ids.next());
        let mut host = req
            .uri()
            .authority()
            .map(|a| a.host())
            .or_else(|| req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(host_only))
            .unwrap_or_default()
            .to_ascii_lowercase();
        let mut path = req.uri().path().to_owned();
        let method = req.method().clone();
        // The request's span for the trace exporter; disabled at its callsite (and nothing below
        // is done) unless spans are exported.
        let span = tracing::info_span!(
            target: shoal_trace::TARGET, "gateway.request",
            otel.kind = "server", http.request.method = %method, server.address = %host, url.path = %path,
            shoal.route = tracing::field::Empty, http.response.status_code = tracing::field::Empty,
        );
        let (route, upstream, mut response) = if span.is_disabled() {
            self.forward(req, client, local, &mut host, &mut path, &request_id, started).await
        } else {
            shoal_trace::adopt_headers(req.headers(), &span);
            let forwarding = self.forward(req, client, local, &mut host, &mut path, &request_id, started);
            tracing::Instrument::instrument(forwarding, span.clone()).await
        };
        response.headers_mut().insert(X_REQUEST_ID, request_id.clone());
        let status = response.status();
        if !span.is_disabled() {
            span.record("shoal.route", route.as_ref().map_or("-", |r| r.name.as_str()));
            span.record("http.response.status_code", status.as_u16());
        }
        tracing::info!(
            target: "shoal::access",
            route = route.as_ref().map_or("-", |r| r.name.as_str()), %method, %host, %path, status = status.as_u16(),
            upstream = upstream.as_ref().map_or("-", |(table, at)| table.table.endpoints[*at].address.as_str()),
            ms = started.elapsed().as_secs_f64() * 1e3,
            request_id = request_id.to_str().unwrap_or("-"), client = client.ip,
        );
        response
    }

    /// Route and forward one request: the route, the endpoint that answered (when one did) and
    /// the response.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn forward(
        &self,
        req: Request<Incoming>,
        client: Peer<'_>,
        local: &Local,
        host: &mut String,
        path: &mut String,
        request_id: &HeaderValue,
        started: Instant,
    ) -> Outcome {
        let Some(route) = self.routes.find(host, path) else {
            return (None, None, json_error(StatusCode::NOT_FOUND, "no_route", format!("no route for {host}{path}")));
        };
        let state = self.state(&route);
        let table = self.table(&state);
        if table.healthy().next().is_none() {
            finish(&state, started, StatusCode::SERVICE_UNAVAILABLE);
            let message = if table.table.endpoints.is_empty() {
                format!("service `{}` has no instances", route.service)
            } else {
                format!("none of the {} instances of `{}` is healthy", table.table.endpoints.len(), route.service)
            };
            return (Some(route), None, json_error(StatusCode::SERVICE_UNAVAILABLE, "no_healthy_endpoint", message));
        }

        let (mut parts, body) = req.into_parts();
        let mut lent = RouteRequest {
            method: parts.method.clone(),
            host: std::mem::take(host),
            path: std::mem::take(path),
            client_ip: Some(client.addr.ip()),
            headers: std::mem::take(&mut parts.headers),
            active: table.active.clone(),
        };
        let pick = self.pick(local, &route, &state, &table, &mut lent);
        parts.headers = std::mem::take(&mut lent.headers);
        *host = std::mem::take(&mut lent.host);
        *path = std::mem::take(&mut lent.path);
        let Ok((index, wants_complete)) = pick else {
            finish(&state, started, StatusCode::SERVICE_UNAVAILABLE);
            let error = json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_endpoint_chosen",
                "the route's router chose no endpoint",
            );
            return (Some(route), None, error);
        };
        let Ok(upstream_path) = upstream_path(&route, parts.uri.path_and_query()) else {
            finish(&state, started, StatusCode::BAD_REQUEST);
            let error = json_error(StatusCode::BAD_REQUEST, "bad_path", "the path cannot be forwarded");
            return (Some(route), None, error);
        };
        // Hop-by-hop headers are dropped, and the `X-Forwarded-*` and `X-Request-Id` headers
        // added, as the head is written. An HTTP/1.1 request needs a `Host`; an HTTP/2 client's
        // is its `:authority`, which goes in `X-Forwarded-Host`: a request without one gets the
        // upstream's address, as a client of it would send.
        let forwarded = Forwarded { client_ip: client.ip, host, proto: "http", request_id };
        let replayable = body.is_end_stream();
        // One request for every attempt: a connect failure hands it back unsent.
        let mut upstream = Request::new(body.map_err(BoxError::from).boxed_unsync());
        *upstream.method_mut() = parts.method;
        *upstream.uri_mut() = Uri::from(upstream_path);
        // The upstream joins the trace as a child of this request's span.
        shoal_trace::inject_headers(&mut parts.headers);
        *upstream.headers_mut() = parts.headers;
        let attempt = Attempt { local, route, state, table, wants_complete, replayable, started };
        attempt.send(self, index, upstream, &forwarded).await
    }
}

/// What a request came to: its route, the endpoint that answered, and the response.
pub(crate) type Outcome = (Option<Arc<Route>>, Option<(Arc<Table>, usize)>, Response<GatewayBody>);

/// Count a response of a route and its latency.
fn finish(state: &RouteState, started: Instant, status: StatusCode) {
    state.requests[(status.as_u16() / 100).clamp(1, 5) as usize - 1].increment(1);
    state.latency.record(started.elapsed().as_secs_f64());
}

/// The path the upstream gets: the client's, without the route's prefix when the route strips it.
fn upstream_path(
    route: &Route,
    path_and_query: Option<&http::uri::PathAndQuery>,
) -> Result<http::uri::PathAndQuery, http::uri::InvalidUri> {
    match (route.strip_prefix, path_and_query) {
        (false, Some(pq)) => Ok(pq.clone()),
        (false, None) => Ok(http::uri::PathAndQuery::from_static("/")),
        (true, pq) => {
            let pq = pq.map_or("/", |pq| pq.as_str());
            let prefix = route.path_prefix.trim_end_matches('/');
            let rest = pq.strip_prefix(prefix).unwrap_or(pq);
            if rest.starts_with('/') { rest.parse() } else { format!("/{rest}").parse() }
        }
    }
}

/// A routed request on its way to the upstream: what every attempt shares.
struct Attempt<'a> {
    local: &'a Local,
    route: Arc<Route>,
    state: Arc<RouteState>,
    table: Arc<Table>,
    /// The router wants its `on-complete` call.
    wants_complete: bool,
    /// The request has no body, so a failed connect may go to another endpoint.
    replayable: bool,
    started: Instant,
}

impl Attempt<'_> {
    /// Send to endpoint `index`; when the connect fails, to the next healthy endpoint not tried
    /// yet (a failed connect hands the request back unsent), up to the gateway's attempts. The
    /// route's timeout counts from the request's start, over all attempts.
    async fn send(
        self,
        gateway: &Gateway,
        mut index: usize,
        mut upstream: Request<GatewayBody>,
        forwarded: &Forwarded<'_>,
    ) -> Outcome {
        let Attempt { local, route, state, table, wants_complete, replayable, started } = self;
        let deadline = tokio::time::Instant::from_std(started) + Duration::from_millis(route.timeout_ms);
        // Endpoints that refused a connection (filled only on a retry).
        let mut tried = Vec::new();
        let mut last_error = String::new();
        for attempt in 0..gateway.config.attempts {
            let endpoint = &table.table.endpoints[index];
            let authority = match &table.authorities[index] {
                Ok(authority) => authority,
                Err(err) => {
                    finish(&state, started, StatusCode::BAD_GATEWAY);
                    let error = json_error(StatusCode::BAD_GATEWAY, "bad_upstream", format!("upstream address: {err}"));
                    return (Some(route), Some((table, index)), error);
                }
            };
            let guard = ActiveGuard::new(table.active.clone(), index);
            let sent = wants_complete.then(Instant::now);
            match tokio::time::timeout_at(deadline, local.upstreams.send(authority, upstream, forwarded)).await {
                Ok(Ok(response)) => {
                    gateway.succeeded(&state, endpoint);
                    let status = response.status();
                    if let Some(sent) = sent {
                        let latency = sent.elapsed().as_micros() as u64;
                        let _ = gateway.call_router(local, &route.router, |router, kept| {
                            shoal_abi::route_complete_kept(
                                router,
                                kept,
                                &table.table,
                                index as u32,
                                status.as_u16(),
                                latency,
                            )
                        });
                    }
                    let (head, body) = response.into_parts();
                    let body = Tracked { inner: body, _guard: guard }.boxed_unsync();
                    finish(&state, started, status);
                    return (Some(route), Some((table, index)), Response::from_parts(head, body));
                }
                Ok(Err(UpstreamError::Connect { message, unsent })) => {
                    last_error = format!("connect failed: {message}");
                    upstream = *unsent;
                    gateway.failed(&route, &state, endpoint, "connect failed");
                    let next = (1..table.table.endpoints.len())
                        .map(|k| (index + k) % table.table.endpoints.len())
                        .find(|i| table.table.endpoints[*i].healthy && !tried.contains(i));
                    tried.push(index);
                    match next {
                        Some(next) if replayable && attempt + 1 < gateway.config.attempts => index = next,
                        _ => break,
                    }
                }
                Ok(Err(err)) => {
                    finish(&state, started, StatusCode::BAD_GATEWAY);
                    let message = format!("{}: {err}", endpoint.address);
                    return (
                        Some(route),
                        Some((table, index)),
                        json_error(StatusCode::BAD_GATEWAY, "upstream_error", message),
                    );
                }
                Err(_) => {
                    gateway.failed(&route, &state, endpoint, "timeout");
                    finish(&state, started, StatusCode::GATEWAY_TIMEOUT);
                    let message = format!("{} did not answer within {} ms", endpoint.address, route.timeout_ms);
                    let error = json_error(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", message);
                    return (Some(route), Some((table, index)), error);
                }
            }
        }
        finish(&state, started, StatusCode::BAD_GATEWAY);
        let message = format!("no endpoint could be reached ({last_error})");
        (Some(route), None, json_error(StatusCode::BAD_GATEWAY, "upstream_unreachable", message))
    }
}

pub(crate) fn host_only(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':').filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h)
}

/// Request ids for requests that come without one: 32 hex digits, unique within the process and,
/// through a random key drawn at start, across processes and restarts. Made without a system
/// call (a v4 UUID per request cost a `getrandom` each): a counter run through SplitMix64's
/// finaliser, a bijection, so ids never repeat yet do not reveal how many requests were served.
pub(crate) struct RequestIds {
    pub(crate) key: u64,
    pub(crate) next: AtomicU64,
}

impl RequestIds {
    pub(crate) fn new() -> Self {
        let key = uuid::Uuid::new_v4().as_u64_pair();
        RequestIds { key: key.0, next: AtomicU64::new(key.1) }
    }

    pub(crate) fn next(&self) -> HeaderValue {
        let mut z = self.next.fetch_add(1, Ordering::Relaxed).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let mut id = [0u8; 32];
        hex_into(&mut id[..16], self.key);
        hex_into(&mut id[16..], z);
        HeaderValue::from_bytes(&id).expect("hex digits are a valid header value")
    }
}

pub(crate) fn hex_into(out: &mut [u8], mut value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in out.iter_mut().rev() {
        *byte = DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
}

/// Counts a request as in flight to an endpoint until its response body is done (or dropped).
pub(crate) struct ActiveGuard {
    pub(crate) active: Arc<[AtomicU32]>,
    pub(crate) index: usize,
}

impl ActiveGuard {
    pub(crate) fn new(active: Arc<[AtomicU32]>, index: usize) -> Self {
        if let Some(a) = active.get(index) {
            a.fetch_add(1, Ordering::Relaxed);
        }
        ActiveGuard { active, index }
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if let Some(a) = self.active.get(self.index) {
            a.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The upstream's response body, streamed through, holding the in-flight count until it ends
/// or is dropped.
pub(crate) struct Tracked {
    pub(crate) inner: UpstreamBody,
    pub(crate) _guard: ActiveGuard,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
