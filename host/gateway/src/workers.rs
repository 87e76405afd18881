//! The gateway's worker threads (nginx's model): each a single-threaded Tokio runtime accepting
//! from the one listener, serving each connection on its own thread with its own upstream
//! connections and router instances ([`Local`]); a worker that accepts while another has fewer
//! open connections hands the connection over ([`Balance`]), so keep-alive load stays even. On
//! shutdown the workers stop accepting, close keep-alive connections after their current request
//! and wait up to the drain time for the rest.

use super::*;

/// What one worker thread keeps for itself: its upstream connections and its own instance of
/// each router it calls (so a routing decision takes no lock another thread takes and runs on
/// an instance that stays warm in this core's caches).
pub(crate) struct Local {
    pub(crate) upstreams: Arc<Upstreams>,
    pub(crate) routers: Mutex<Vec<KeptRouter>>,
    /// Each worker draws its own key, so its ids need no counter shared with the others.
    pub(crate) request_ids: RequestIds,
}

/// How the workers share connections: open connections per worker, and each worker's inbox of
/// connections handed over by another.
pub(crate) struct Balance {
    pub(crate) open: Vec<AtomicUsize>,
    pub(crate) inboxes: Vec<mpsc::UnboundedSender<(std::net::TcpStream, SocketAddr)>>,
}

impl Balance {
    /// The worker with the fewest open connections; `me` when none has fewer than it.
    pub(crate) fn least_loaded(&self, me: usize) -> usize {
        let mut best = (self.open[me].load(Ordering::Relaxed), me);
        for (n, open) in self.open.iter().enumerate() {
            let open = open.load(Ordering::Relaxed);
            if open < best.0 {
                best = (open, n);
            }
        }
        best.1
    }

    /// Give a connection to worker `to`; hands it back when that worker is gone.
    pub(crate) fn hand_over(
        &self,
        to: usize,
        stream: std::net::TcpStream,
        peer: SocketAddr,
    ) -> Option<tokio::net::TcpStream> {
        self.open[to].fetch_add(1, Ordering::Relaxed);
        match self.inboxes[to].send((stream, peer)) {
            Ok(()) => None,
            Err(mpsc::error::SendError((stream, _))) => tokio::net::TcpStream::from_std(stream).ok(),
        }
    }
}

/// The client of a request: its address, and its IP as text (made once per connection).
#[derive(Clone, Copy)]
pub(crate) struct Peer<'a> {
    pub(crate) addr: SocketAddr,
    pub(crate) ip: &'a str,
}

impl Gateway {
    /// One worker: accept, serve each connection on this thread (or hand it to a worker with
    /// fewer open connections), drain on stop.
    pub(crate) async fn worker(
        self: Arc<Self>,
        n: usize,
        listener: std::net::TcpListener,
        balance: Arc<Balance>,
        mut inbox: mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>,
        mut stopped: tokio::sync::watch::Receiver<bool>,
    ) {
        let listener = match TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(err) => {
                tracing::error!(%err, "gateway worker: listener");
                return;
            }
        };
        // Upstream connections are made, pooled and driven on this thread.
        let local = Arc::new(Local {
            upstreams: Arc::new(Upstreams::new(self.config.connect_timeout, 1024)),
            routers: Mutex::new(Vec::new()),
            request_ids: RequestIds::new(),
        });
        let mut sweep = tokio::time::interval(UPSTREAM_IDLE_SWEEP);
        let mut connections = tokio::task::JoinSet::new();
        let for_connections = stopped.clone();
        // A connection is accepted only with a slot of the cap in hand; its server returns it.
        let mut slot = None;
        loop {
            let arrived = tokio::select! {
                _ = sweep.tick() => {
                    local.upstreams.sweep();
                    None
                }
                permit = edge::slot(&self.permits), if slot.is_none() => {
                    slot = Some(permit);
                    None
                }
                accepted = listener.accept(), if slot.is_some() => match accepted {
                    // Whoever wakes first accepts; keep-alive connections then stay where they
                    // landed, so even them out at accept time.
                    Ok((stream, peer)) => {
                        // The slot goes with the connection: whoever serves it gives it back.
                        if let Some(permit) = slot.take() {
                            permit.forget();
                        }
                        match balance.least_loaded(n) {
                            target if target == n => Some((stream, peer)),
                            target => match stream.into_std() {
                                Ok(stream) => balance.hand_over(target, stream, peer).map(|stream| (stream, peer)),
                                Err(err) => {
                                    tracing::warn!(%err, "gateway: could not hand a connection over");
                                    self.permits.add_permits(1);
                                    None
                                }
                            },
                        }
                    }
                    Err(err) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(%err, "gateway accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        None
                    }
                },
                Some((stream, peer)) = inbox.recv() => match tokio::net::TcpStream::from_std(stream) {
                    Ok(stream) => Some((stream, peer)),
                    Err(err) => {
                        tracing::warn!(%err, "gateway: could not take a connection over");
                        self.permits.add_permits(1);
                        None
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => None,
                stop = stopped.wait_for(|stop| *stop) => match stop {
                    Ok(_) => break,
                    // The serving future was dropped: stop now, connections and all.
                    Err(_) => return,
                },
            };
            if let Some((stream, peer)) = arrived {
                connections.spawn(self.clone().connection(stream, peer, local.clone(), for_connections.clone()));
            }
            balance.open[n].store(connections.len(), Ordering::Relaxed);
        }
        drop(listener);
        let drained =
            tokio::time::timeout(self.config.drain, async { while connections.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(
                open = connections.len(),
                "gateway connections still open after the drain period; closing them"
            );
        }
    }

    /// Serve one client connection (HTTP/1.1 or h2c) until it closes or the gateway stops.
    pub(crate) async fn connection(
        self: Arc<Self>,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
        local: Arc<Local>,
        mut stopped: tokio::sync::watch::Receiver<bool>,
    ) {
        let _slot = edge::Slot::adopt(&self.permits);
        let limits = self.config.limits;
        if !edge::first_bytes(&stream, limits.header_timeout).await {
            return;
        }
        let _ = stream.set_nodelay(true);
        // Formatted once per connection, not per request.
        let peer_ip: Arc<str> = peer.ip().to_string().into();
        let gateway = self.clone();
        let service = hyper::service::service_fn(move |req| {
            let gateway = gateway.clone();
            let local = local.clone();
            let peer_ip = peer_ip.clone();
            async move {
                let client = Peer { addr: peer, ip: &peer_ip };
                Ok::<_, Infallible>(gateway.handle(req, client, &local).await)
            }
        });
        let builder = limits.builder();
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(connection);
        tokio::select! {
            _ = connection.as_mut() => return,
            stop = stopped.wait_for(|stop| *stop) => if stop.is_err() {
                return;
            },
        }
        connection.as_mut().graceful_shutdown();
        let _ = connection.await;
    }
}
