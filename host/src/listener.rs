//! The accept loop of a listener and the life of each connection: the cap
//! on connections held at once, the TLS handshake, the idle deadline, and
//! the graceful end on shutdown.
//!
//! Every connection must make progress: one with no request in flight for
//! the idle timeout is closed, whether it never finished its handshake,
//! never sent its first request (HTTP/1 or an HTTP/2 preface, or half of
//! one), or went quiet between requests. HTTP/1 is closed outright when
//! idle; HTTP/2 gets a GOAWAY first, so a client never loses a request it
//! sent as the connection closes. And when the cap is reached, a new
//! connection takes the place of the one idle longest (none in flight)
//! instead of being refused: idle peers cannot hold the cap, and the file
//! descriptors behind it, even by reconnecting as fast as they are closed.
//!
//! Shutdown goes through [`Phase`]s, driven by the one who owns start-up
//! and shutdown (`app`): while `Draining` the listener still accepts and
//! answers, but HTTP/1 responses carry `Connection: close`, so clients
//! move to other endpoints without a keep-alive connection to race; at
//! `Stopping` it stops accepting and every connection finishes the
//! requests it has (HTTP/2: GOAWAY); at `Stopped` what is left is dropped.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderValue, Request, Version, header};
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tower::Service as _;

use crate::throttle::Throttled;
use crate::tls::ServingConfig;

/// Where the process is in its life, as the listeners see it. Ordered:
/// each phase includes what the ones before it stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Serving,
    /// Asked to stop: still accepting and answering (the endpoints may not
    /// have dropped this pod yet), not ready, HTTP/1 connections closed
    /// after their response.
    Draining,
    /// No new connections; those open finish the requests they have.
    Stopping,
    /// The grace period is over: connections still open are dropped.
    Stopped,
}

/// How many connections a listener holds and how long they may idle.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections held at once; new ones beyond it are closed at once.
    pub max_connections: usize,
    /// How long a connection may go without a request in flight (before
    /// its first request too, the TLS handshake included).
    pub idle_timeout: Duration,
    /// How long a client may take to send the headers of an HTTP/1
    /// request once it started one.
    pub header_read_timeout: Duration,
}

/// HTTP/2 streams a connection may have open at once.
const MAX_CONCURRENT_STREAMS: u32 = 256;

/// A bound socket and what to serve on it.
pub struct Listener {
    name: &'static str,
    socket: TcpListener,
    tls: Option<ServingConfig>,
    router: Router,
    limits: ConnectionLimits,
}

impl Listener {
    /// A listener named `name` (for logs) serving `router` on `socket`,
    /// over TLS when `tls` is given.
    ///
    /// # Errors
    /// When the socket cannot be handed to the runtime.
    pub fn new(
        name: &'static str,
        socket: std::net::TcpListener,
        tls: Option<ServingConfig>,
        router: Router,
        limits: ConnectionLimits,
    ) -> std::io::Result<Self> {
        socket.set_nonblocking(true)?;
        Ok(Self {
            name,
            socket: TcpListener::from_std(socket)?,
            tls,
            router,
            limits,
        })
    }

    /// Accepts connections until `phase` reaches [`Phase::Stopping`], then
    /// returns once every connection has ended.
    pub async fn serve(self, mut phase: watch::Receiver<Phase>) {
        let max = self.limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
        let slots = Arc::new(Semaphore::new(max));
        let open = Arc::new(OpenConnections::default());
        let http = Arc::new(http_builder(&self.limits));
        let mut refused = Throttled::default();
        let mut evicted = Throttled::default();
        let mut accept_failures = Throttled::default();
        loop {
            let accepted = tokio::select! {
                biased;
                _ = phase.wait_for(|phase| *phase >= Phase::Stopping) => break,
                accepted = self.socket.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, most likely: keep serving
                    // the connections there are, and try again shortly.
                    accept_failures.warn(|also| {
                        tracing::warn!(listener = self.name, %error, also_failed = also, "cannot accept a connection; retrying");
                    });
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let slot = match slots.clone().try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => match open.evict_idlest() {
                    Some(slot) => {
                        evicted.warn(|also| {
                            tracing::warn!(
                                listener = self.name,
                                limit = max,
                                also_evicted = also,
                                "connection limit reached; closing the connection idle longest for a new one"
                            );
                        });
                        slot
                    }
                    None => {
                        refused.warn(|also| {
                            tracing::warn!(
                                listener = self.name,
                                limit = max,
                                also_refused = also,
                                "connection limit reached; closing a new connection (every one open has a request in flight)"
                            );
                        });
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let connection = Connection {
                peer,
                http: http.clone(),
                router: self.router.clone(),
                limits: self.limits,
                phase: phase.clone(),
                open: OpenConnections::register(&open, slot),
            };
            tokio::spawn(connection.run(stream, self.tls.clone()));
        }
        // Refuse what the kernel queued instead of leaving it to hang.
        drop(self.socket);
        // Every connection holds a slot until it ends: all of them free
        // means all ended. Each ends by `Phase::Stopped` at the latest.
        let _ = slots.acquire_many(max as u32).await;
    }
}

/// HTTP/1 and HTTP/2 (by ALPN or the preface), with their own timeouts.
fn http_builder(limits: &ConnectionLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS);
    builder
}

/// One accepted connection, holding its slot under the cap.
struct Connection {
    peer: SocketAddr,
    http: Arc<auto::Builder<TokioExecutor>>,
    router: Router,
    limits: ConnectionLimits,
    phase: watch::Receiver<Phase>,
    /// Its entry among the open connections, holding its slot.
    open: Registered,
}

impl Connection {
    async fn run(mut self, stream: TcpStream, tls: Option<ServingConfig>) {
        let Some(tls) = tls else {
            return self.serve(stream).await;
        };
        // No request can be in flight yet: the handshake has the idle
        // timeout, and ends early if the process stops.
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
        let handshake = tokio::time::timeout(self.limits.idle_timeout, acceptor.accept(stream));
        let stream = tokio::select! {
            done = handshake => match done {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(peer = %self.peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = %self.peer, "TLS handshake timed out");
                    return;
                }
            },
            _ = self.phase.wait_for(|phase| *phase >= Phase::Stopping) => return,
            () = self.open.state.evicted.notified() => return,
        };
        self.serve(stream).await;
    }

    async fn serve<I>(mut self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let state = self.open.state.clone();
        let mut activity = state.in_flight.subscribe();
        let service = ConnectionService {
            router: self.router.clone(),
            state: state.clone(),
            phase: self.phase.clone(),
        };
        let http = self.http.clone();
        let connection = http.serve_connection(TokioIo::new(io), service);
        tokio::pin!(connection);
        let ending = tokio::select! {
            served = connection.as_mut() => {
                if let Err(error) = served {
                    tracing::debug!(peer = %self.peer, %error, "connection ended with an error");
                }
                return;
            }
            () = idle_for(&mut activity, self.limits.idle_timeout) => Ending::Idle,
            _ = self.phase.wait_for(|phase| *phase >= Phase::Stopping) => Ending::Stopping,
            // Its slot went to a new connection already: close it now.
            () = state.evicted.notified() => return,
        };
        // HTTP/1: closed now if idle, else after the response being
        // written; HTTP/2: GOAWAY, then closed once its streams are done.
        connection.as_mut().graceful_shutdown();
        match ending {
            // A peer that never answers the GOAWAY's ping must not keep
            // the connection either.
            Ending::Idle => {
                tokio::select! {
                    _ = tokio::time::timeout(self.limits.idle_timeout, connection) => {}
                    _ = self.phase.wait_for(|phase| *phase >= Phase::Stopped) => {}
                }
            }
            Ending::Stopping => {
                tokio::select! {
                    _ = connection => {}
                    _ = self.phase.wait_for(|phase| *phase >= Phase::Stopped) => {}
                }
            }
        }
    }
}

enum Ending {
    Idle,
    Stopping,
}

/// Resolves once nothing has been in flight for `timeout`.
async fn idle_for(activity: &mut watch::Receiver<usize>, timeout: Duration) {
    loop {
        if activity
            .wait_for(|in_flight| *in_flight == 0)
            .await
            .is_err()
        {
            return std::future::pending().await;
        }
        match tokio::time::timeout(timeout, activity.changed()).await {
            Err(_elapsed) => return,
            Ok(Ok(())) => {}
            Ok(Err(_closed)) => return std::future::pending().await,
        }
    }
}

/// The router as one connection's service: counts the requests in flight
/// (for the idle deadline) and asks HTTP/1 clients to close while
/// draining.
#[derive(Clone)]
struct ConnectionService {
    router: Router,
    state: Arc<ConnectionState>,
    phase: watch::Receiver<Phase>,
}

type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for ConnectionService {
    type Response = Response;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let in_flight = InFlight::begin(self.state.clone());
        let http1 = request.version() < Version::HTTP_2;
        let phase = self.phase.clone();
        let mut router = self.router.clone();
        Box::pin(async move {
            std::future::poll_fn(|cx| {
                <Router as tower::Service<Request<Incoming>>>::poll_ready(&mut router, cx)
            })
            .await?;
            let mut response = router.call(request).await?;
            if http1 && *phase.borrow() >= Phase::Draining {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            drop(in_flight);
            Ok(response)
        })
    }
}

/// One request in flight on a connection, until dropped.
struct InFlight(Arc<ConnectionState>);

impl InFlight {
    fn begin(state: Arc<ConnectionState>) -> Self {
        state.in_flight.send_modify(|n| *n += 1);
        Self(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let state = &self.0;
        state.in_flight.send_modify(|n| *n = n.saturating_sub(1));
        state.touch();
    }
}

/// What the listener knows of one open connection.
struct ConnectionState {
    /// Requests in flight.
    in_flight: watch::Sender<usize>,
    /// When it last had a request end (or was accepted), as nanoseconds
    /// since `epoch`.
    last_active: AtomicU64,
    epoch: Instant,
    /// Its place under the cap; taken by whoever evicts it.
    slot: Mutex<Option<OwnedSemaphorePermit>>,
    /// Told when its slot was taken.
    evicted: Notify,
}

impl ConnectionState {
    fn touch(&self) {
        let nanos = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_active.store(nanos, Ordering::Relaxed);
    }

    fn is_idle(&self) -> bool {
        *self.in_flight.borrow() == 0
    }
}

/// The open connections of a listener, so that a new one can take the
/// place of the one idle longest when the cap is reached.
#[derive(Default)]
struct OpenConnections {
    next: AtomicU64,
    by_id: Mutex<HashMap<u64, Arc<ConnectionState>>>,
}

impl OpenConnections {
    fn register(open: &Arc<Self>, slot: OwnedSemaphorePermit) -> Registered {
        let id = open.next.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnectionState {
            in_flight: watch::Sender::new(0),
            last_active: AtomicU64::new(0),
            epoch: Instant::now(),
            slot: Mutex::new(Some(slot)),
            evicted: Notify::new(),
        });
        lock(&open.by_id).insert(id, state.clone());
        Registered {
            id,
            state,
            open: open.clone(),
        }
    }

    /// Takes the slot of the connection idle longest (nothing in flight),
    /// and tells it to close; `None` when every connection is busy.
    fn evict_idlest(&self) -> Option<OwnedSemaphorePermit> {
        let mut by_id = lock(&self.by_id);
        let now = Instant::now();
        let (&id, _) = by_id
            .iter()
            .filter(|(_, state)| state.is_idle())
            .max_by_key(|(_, state)| {
                // Idle for: since its last request ended (or it was
                // accepted, for one that never had a request).
                let since = Duration::from_nanos(state.last_active.load(Ordering::Relaxed));
                now.saturating_duration_since(state.epoch + since)
            })?;
        let state = by_id.remove(&id)?;
        let slot = lock(&state.slot).take();
        // `notify_one` keeps the notice for a task not waiting yet.
        state.evicted.notify_one();
        slot
    }
}

/// A connection's entry among the open ones; removed (and its slot
/// freed) when the connection ends.
struct Registered {
    id: u64,
    state: Arc<ConnectionState>,
    open: Arc<OpenConnections>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.open.by_id).remove(&self.id);
        drop(lock(&self.state.slot).take());
    }
}

/// A lock whose holder cannot leave its data half-changed (every critical
/// section here is one insert, remove or take), so poisoning is ignored.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_new_connection_takes_the_slot_of_the_one_idle_longest() {
        let slots = Arc::new(Semaphore::new(3));
        let open = Arc::new(OpenConnections::default());
        let slot = || slots.clone().try_acquire_owned().expect("a free slot");
        let idle_longest = OpenConnections::register(&open, slot());
        let busy = OpenConnections::register(&open, slot());
        let in_flight = InFlight::begin(busy.state.clone());
        let idle = OpenConnections::register(&open, slot());
        idle.state.touch();
        assert_eq!(slots.available_permits(), 0);

        let taken = open.evict_idlest().expect("an idle connection's slot");
        // The one idle longest was told, and is out of the running.
        idle_longest.state.evicted.notified().await;
        assert!(lock(&idle_longest.state.slot).is_none());
        let next = open.evict_idlest().expect("the other idle one's slot");
        assert!(lock(&idle.state.slot).is_none());
        // A connection with a request in flight is never evicted.
        assert!(open.evict_idlest().is_none());
        drop(in_flight);

        // Ending frees a slot only once: the evicted ones' went on.
        drop((idle_longest, idle, busy));
        assert_eq!(slots.available_permits(), 1);
        drop((taken, next));
        assert_eq!(slots.available_permits(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_waits_for_the_last_request_to_end() {
        let (in_flight, mut activity) = watch::channel(0usize);
        let timeout = Duration::from_secs(10);
        let started = tokio::time::Instant::now();
        in_flight.send_modify(|n| *n += 1);
        let ends = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            in_flight.send_modify(|n| *n -= 1);
            // Kept alive, so that `idle_for` sees a live counter.
            std::future::pending::<()>().await;
        });
        idle_for(&mut activity, timeout).await;
        assert_eq!(started.elapsed(), Duration::from_secs(40));
        ends.abort();
    }
}
