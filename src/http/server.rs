//! The sidecar's HTTP/1.1 server: connections admitted by the allowlist and counted, closed
//! when idle, drained at shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::extract::ConnectInfo;
use axum::response::Response;
use axum::Router;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use super::Access;

/// What one client may hold of the server without a request in flight. The allowlist middleware
/// only runs once a request's headers are in, so without these bounds any host that can reach
/// the port could keep connections, and file descriptors, open for ever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// How long the server waits for a request's headers to be complete. hyper starts this clock
    /// whenever it waits for a request: at accept and after each response, so it also closes a
    /// connection that sends nothing, or nothing more after an answer, for this long.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed, even when hyper is not
    /// waiting for headers (a client that does not read its answer). A request in flight, such
    /// as a 30-minute turn, is never cut by it; nor is a streamed answer while its parts go out
    /// (a turn's server-sent events: a heartbeat every `stream_heartbeat_secs` at least).
    pub idle_timeout: Duration,
    /// Connections accepted beyond this many open ones are closed at once, unread (so 0 refuses
    /// them all; zero timeouts likewise close every connection at once).
    pub max_connections: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 512,
        }
    }
}

/// Serves `router` on `listener` over HTTP/1.1 until `shutdown` completes; then closes the
/// listener, lets each connection finish the request it has in flight (idle ones close at once),
/// and returns once every connection is closed.
///
/// A connection is refused before any byte of it is read, by dropping it as accepted, when its
/// peer is not admitted by `access` (see [`Access::admits`]: allowed, or a trusted proxy whose
/// requests the allowlist middleware still decides one by one), or when `limits.max_connections`
/// are already open. Handlers see the peer as `ConnectInfo<SocketAddr>`.
pub async fn serve<F>(
    listener: TcpListener,
    router: Router,
    access: Arc<Access>,
    limits: ConnLimits,
    shutdown: F,
) -> io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let mut http = http1::Builder::new();
    // hyper adds the timeout to the current instant, which panics on overflow.
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout.min(LONGEST_TIMEOUT));
    let graceful = GracefulShutdown::new();
    let mut refusals = Refusals::default();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
        };
        let open = graceful.count();
        if let Err(refusal) = admit(&access, peer.ip(), open, limits.max_connections) {
            refusals.note(refusal, peer, limits.max_connections);
            continue; // `stream` is dropped, hence closed, unread.
        }
        let connection = Connection {
            http: http.clone(),
            router: router.clone(),
            peer,
            idle_timeout: limits.idle_timeout,
        };
        // The watcher is counted from here, so the next accept already sees this connection.
        tokio::spawn(connection.serve(stream, graceful.watcher()));
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// A timeout longer than any connection needs, and short enough to add to an instant.
const LONGEST_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// Why a connection was closed as it was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// The peer is neither allowed nor a trusted proxy.
    Peer,
    /// The server already has its maximum of connections open.
    Full,
}

/// The accept-time decision for a connection from `peer` while `open` connections are served.
/// The allowlist comes first, so a refused host is never counted as a full server.
fn admit(access: &Access, peer: IpAddr, open: usize, max: usize) -> Result<(), Refusal> {
    if !access.admits(peer) {
        Err(Refusal::Peer)
    } else if open >= max {
        Err(Refusal::Full)
    } else {
        Ok(())
    }
}

/// How often at most a full server says so at warn: a flood of connections must not flood the
/// log too.
const FULL_WARNING_EVERY: Duration = Duration::from_secs(10);

/// Logs refused connections: each refusal by the allowlist at debug (anyone can knock), a full
/// server at warn at most once per [`FULL_WARNING_EVERY`], with how many were refused since.
#[derive(Debug, Default)]
struct Refusals {
    last_warning: Option<Instant>,
    unreported: u64,
}

impl Refusals {
    fn note(&mut self, refusal: Refusal, peer: SocketAddr, max_connections: usize) {
        match refusal {
            Refusal::Peer => tracing::debug!(
                %peer,
                "connection closed unread: the address is outside the allowlist"
            ),
            Refusal::Full => {
                self.unreported += 1;
                let now = Instant::now();
                if self
                    .last_warning
                    .is_none_or(|last| now - last >= FULL_WARNING_EVERY)
                {
                    tracing::warn!(
                        %peer,
                        max_connections,
                        refused = self.unreported,
                        "connections closed unread: the sidecar has its maximum of connections open"
                    );
                    self.last_warning = Some(now);
                    self.unreported = 0;
                }
            }
        }
    }
}

/// A failed accept. A connection that died before it was accepted is skipped; anything else
/// (out of file descriptors, mostly) is logged and retried after a pause, so that the loop does
/// not spin while it lasts.
async fn accept_failed(e: io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// One accepted connection and what serving it needs.
struct Connection {
    http: http1::Builder,
    router: Router,
    peer: SocketAddr,
    idle_timeout: Duration,
}

impl Connection {
    /// Serves the connection until the client or hyper closes it (header timeout, shutdown), or
    /// until it has had no request in flight for the idle timeout; then drops it.
    async fn serve(self, stream: TcpStream, watcher: Watcher) {
        let Connection {
            http,
            router,
            peer,
            idle_timeout,
        } = self;
        let (activity, idle) = watch::channel(Activity {
            in_flight: 0,
            idle_since: Instant::now(),
        });
        let service = counted_service(router, peer, activity);
        let connection = watcher.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::select! {
            served = connection => {
                if let Err(e) = served {
                    tracing::debug!(%peer, error = %e, "connection closed on an error");
                }
            }
            () = idle_for(idle, idle_timeout) => tracing::debug!(
                %peer,
                ?idle_timeout,
                "closing a connection idle for its timeout"
            ),
        }
    }
}

/// `router` as hyper calls it: each request carries the peer's address, as
/// `into_make_service_with_connect_info` would add it, and counts as in flight in `activity`
/// until its handler is done (or dropped, the client gone); then each part of its answer's body
/// that goes out counts as activity too (see [`Progress`]).
fn counted_service(
    router: Router,
    peer: SocketAddr,
    activity: watch::Sender<Activity>,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = Response,
    Error = Infallible,
    Future = impl Future<Output = Result<Response, Infallible>> + Send,
> {
    let router = TowerToHyperService::new(router);
    hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let in_flight = InFlight::start(activity.clone());
        let progress = activity.clone();
        let answer = router.call(request);
        async move {
            let answer = answer.await;
            drop(in_flight);
            answer.map(|response| response.map(|body| Body::new(Progress { body, progress })))
        }
    })
}

/// An answer's body that marks the connection active each time a part of it goes out, so that a
/// long streamed answer (a turn's server-sent events, a heartbeat at least every
/// `stream_heartbeat_secs`) is not closed as idle while it flows. A client that stops reading
/// stops the parts too, and its connection is idle again. Length and end are the body's own, so
/// other answers go out as before.
struct Progress {
    body: Body,
    progress: watch::Sender<Activity>,
}

impl HttpBody for Progress {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &polled {
            self.progress.send_if_modified(|a| {
                let idle = a.in_flight == 0;
                if idle {
                    a.idle_since = Instant::now();
                }
                idle
            });
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// What a connection is doing, as the idle timeout sees it.
#[derive(Debug, Clone, Copy)]
struct Activity {
    in_flight: usize,
    /// When `in_flight` last became 0 (or the connection was accepted).
    idle_since: Instant,
}

/// A request in flight, from the call of its handler until the end or drop of its future.
struct InFlight(watch::Sender<Activity>);

impl InFlight {
    fn start(activity: watch::Sender<Activity>) -> InFlight {
        activity.send_modify(|a| a.in_flight += 1);
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|a| {
            a.in_flight -= 1;
            if a.in_flight == 0 {
                a.idle_since = Instant::now();
            }
        });
    }
}

/// Completes once the connection has had no request in flight for `limit`. A change is looked
/// at before the clock (`biased`), so a request that starts as the time runs out is not cut.
async fn idle_for(mut activity: watch::Receiver<Activity>, limit: Duration) {
    loop {
        let now = *activity.borrow_and_update();
        // No deadline while a request is in flight (or for a limit too long to add).
        let deadline = match now.in_flight {
            0 => now.idle_since.checked_add(limit),
            _ => None,
        };
        tokio::select! {
            biased;
            changed = activity.changed() => {
                if changed.is_err() {
                    // The service is gone, so is the connection: nothing to time.
                    return std::future::pending().await;
                }
            }
            () = sleep_until(deadline) => return,
        }
    }
}

/// Sleeps until `deadline`, or for ever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_refused_for_its_peer_first_then_for_a_full_server() {
        let access =
            Access::parse("10.0.0.0/8", "ALLOW_CIDRS", "192.168.0.1", "P").expect("valid lists");
        let ip = |s: &str| s.parse::<IpAddr>().expect("an address");
        // Allowed, loopback, trusted proxy: served while there is room.
        for peer in ["10.1.2.3", "127.0.0.1", "::1", "192.168.0.1"] {
            assert_eq!(admit(&access, ip(peer), 0, 2), Ok(()), "{peer}");
            assert_eq!(admit(&access, ip(peer), 1, 2), Ok(()), "{peer}");
            assert_eq!(admit(&access, ip(peer), 2, 2), Err(Refusal::Full), "{peer}");
            assert_eq!(admit(&access, ip(peer), 3, 2), Err(Refusal::Full), "{peer}");
        }
        // Outside the allowlist: refused whether or not there is room.
        for peer in ["192.0.2.7", "192.168.0.2", "fd00::1"] {
            assert_eq!(admit(&access, ip(peer), 0, 2), Err(Refusal::Peer), "{peer}");
            assert_eq!(admit(&access, ip(peer), 5, 2), Err(Refusal::Peer), "{peer}");
        }
    }

    #[tokio::test]
    async fn a_body_keeps_its_length_and_each_part_out_is_activity() {
        let (activity, mut watched) = watch::channel(Activity {
            in_flight: 0,
            idle_since: Instant::now(),
        });
        let before = watched.borrow_and_update().idle_since;
        let mut body = Progress {
            body: Body::from("{\"ok\":true}"),
            progress: activity,
        };
        // What hyper writes Content-Length from, and when it knows the end.
        assert_eq!(body.size_hint().exact(), Some(11));
        assert!(!body.is_end_stream());
        tokio::time::sleep(Duration::from_millis(5)).await;
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        assert_eq!(
            frame.unwrap().unwrap().into_data().unwrap(),
            "{\"ok\":true}"
        );
        assert!(watched.has_changed().unwrap());
        assert!(watched.borrow().idle_since > before);
    }

    #[test]
    fn default_limits() {
        let limits = ConnLimits::default();
        assert_eq!(limits.header_read_timeout, Duration::from_secs(10));
        assert_eq!(limits.idle_timeout, Duration::from_secs(60));
        assert_eq!(limits.max_connections, 512);
    }
}
