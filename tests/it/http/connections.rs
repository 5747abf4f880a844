//! What a connection may hold of the server: the header and idle timeouts, the maximum, and
//! SIGTERM with a request in flight.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{answer, post, Answer};
use crate::harness::{http_client, Forge, HttpProcess};

// The connection limits. These variables are read by the configuration (keys
// `http_header_timeout_secs`, `http_idle_timeout_secs`, `http_max_connections`).
pub(super) const HEADER_TIMEOUT: &str = "CLAWDFORGE_HTTP_HEADER_TIMEOUT_SECS";
pub(super) const IDLE_TIMEOUT: &str = "CLAWDFORGE_HTTP_IDLE_TIMEOUT_SECS";
const MAX_CONNECTIONS: &str = "CLAWDFORGE_HTTP_MAX_CONNECTIONS";

/// Whether the server has not closed `stream` (nor sent anything on it) so far.
fn still_open(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(stream.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// The address a sidecar listens on, for raw connections.
pub(super) fn socket_addr(sidecar: &HttpProcess) -> SocketAddr {
    sidecar
        .base
        .strip_prefix("http://")
        .and_then(|a| a.parse().ok())
        .expect("an http://host:port base")
}

/// Everything the server sends on `stream` until it closes the connection (end of file or
/// reset); fails the test if the connection is still open after `limit`.
async fn until_closed(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut sent = Vec::new();
    let read_all = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return,
                Ok(n) => sent.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
                Err(e) => panic!("reading from the sidecar: {e}"),
            }
        }
    };
    if tokio::time::timeout(limit, read_all).await.is_err() {
        panic!(
            "the sidecar kept the connection open for {limit:?}, having sent:\n{}",
            String::from_utf8_lossy(&sent)
        );
    }
    sent
}

/// Asserts that the server closed `stream` within `limit` without sending a byte.
pub(super) async fn assert_closed_unanswered(stream: &mut TcpStream, limit: Duration, what: &str) {
    let sent = until_closed(stream, limit).await;
    assert!(
        sent.is_empty(),
        "{what}: the sidecar answered before closing:\n{}",
        String::from_utf8_lossy(&sent)
    );
}

/// Sends `GET path` (with `headers`, each ending in CRLF) on `stream` and reads the whole
/// answer, leaving the connection open; its status. An error when the server closes instead.
pub(super) async fn get_on(
    stream: &mut TcpStream,
    path: &str,
    headers: &str,
) -> std::io::Result<u16> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: sidecar\r\n{headers}\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok());
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse::<usize>().expect("a length"));
    let mut body = vec![0; length.expect("answers have a length")];
    stream.read_exact(&mut body).await?;
    Ok(status.expect("a status line"))
}

/// A connection to `addr` that has been answered once and is now idle, kept alive. Connections
/// are opened until one is served: one that just closed may still be counted for a moment.
async fn served_connection(addr: SocketAddr) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut stream = TcpStream::connect(addr).await.expect("connecting");
        if let Ok(status) = get_on(&mut stream, "/openapi.json", "").await {
            assert_eq!(status, 200);
            return stream;
        }
        assert!(Instant::now() < deadline, "no connection to {addr} served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A turn over HTTP that the test agent holds until `release` exists, started and running; it
/// resolves to the status and body of its answer.
async fn held_turn(
    forge: &Forge,
    sidecar: &HttpProcess,
    release: &std::path::Path,
) -> tokio::task::JoinHandle<Answer> {
    let token = forge.admin.create_token("held", false).await.unwrap().token;
    let (status, session) = post(sidecar, "/sessions", Some(&token), "{}").await;
    assert_eq!(status, 200, "{session}");
    let id = session["session_id"].as_str().unwrap().to_string();
    let prompt = format!("held #wait-file={}", release.display());
    let request = http_client()
        .post(sidecar.url(&format!("/sessions/{id}/turn")))
        .bearer_auth(&token)
        .json(&json!({ "prompt": prompt }));
    let turn = tokio::spawn(async move {
        let response = request
            .send()
            .await
            .expect("the turn's connection stays open");
        answer(response).await
    });
    crate::ledger::wait_for_running_turn(&forge.ledger_path(), &id).await;
    turn
}

#[tokio::test]
async fn headers_that_never_end_and_silent_connections_are_closed_by_the_header_timeout() {
    let forge = Forge::start().await;
    let sidecar = forge
        .spawn_http("sidecar", &[(HEADER_TIMEOUT, "1"), (IDLE_TIMEOUT, "600")])
        .await;
    let addr = socket_addr(&sidecar);
    // The same kind of connection, opened first, to a sidecar with the default timeouts.
    let control = forge.spawn_http("sidecar", &[]).await;
    let by_default = TcpStream::connect(socket_addr(&control)).await.unwrap();
    let mut half_open = TcpStream::connect(addr).await.unwrap();
    half_open
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut answered = TcpStream::connect(addr).await.unwrap();
    assert_eq!(
        get_on(&mut answered, "/openapi.json", "").await.unwrap(),
        200
    );

    // Each is closed as the server gives up waiting for headers: never finished, never
    // started, or not started again after an answer.
    let limit = Duration::from_secs(15);
    tokio::join!(
        assert_closed_unanswered(&mut half_open, limit, "unfinished headers"),
        assert_closed_unanswered(&mut silent, limit, "a silent connection"),
        assert_closed_unanswered(&mut answered, limit, "a kept-alive connection"),
    );
    assert!(
        still_open(&by_default),
        "the default closed a connection as soon: {HEADER_TIMEOUT}=1 did not apply"
    );
}

#[tokio::test]
async fn an_idle_connection_is_closed_but_a_request_in_flight_is_not_cut() {
    let forge = Forge::start().await;
    let sidecar = forge
        .spawn_http("sidecar", &[(HEADER_TIMEOUT, "30"), (IDLE_TIMEOUT, "1")])
        .await;
    let release = forge.dir.path().join("release-idle");
    let turn = held_turn(&forge, &sidecar, &release).await;

    // Opened once the turn runs, this one is closed only when the turn has been in flight for
    // longer than the idle timeout too; the header timeout is far. The same kind of connection,
    // opened first to a sidecar with the default timeouts, is still open then.
    let control = forge.spawn_http("sidecar", &[]).await;
    let by_default = served_connection(socket_addr(&control)).await;
    let mut idle = served_connection(socket_addr(&sidecar)).await;
    assert_closed_unanswered(&mut idle, Duration::from_secs(15), "an idle connection").await;
    assert!(
        still_open(&by_default),
        "the default closed an idle connection as soon: {IDLE_TIMEOUT}=1 did not apply"
    );

    std::fs::write(&release, "").unwrap();
    let (status, body) = turn.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body["output"]
            .as_str()
            .unwrap_or("")
            .starts_with("echo: held"),
        "{body}"
    );
}

#[tokio::test]
async fn connections_beyond_the_maximum_are_closed_at_once() {
    let forge = Forge::start().await;
    let sidecar = forge
        .spawn_http(
            "sidecar",
            &[
                (MAX_CONNECTIONS, "2"),
                (HEADER_TIMEOUT, "60"),
                (IDLE_TIMEOUT, "600"),
            ],
        )
        .await;
    let addr = socket_addr(&sidecar);
    let first = served_connection(addr).await;
    let _second = served_connection(addr).await;

    // Both open and idle: a third is closed unanswered, long before any timeout.
    let mut third = TcpStream::connect(addr).await.unwrap();
    // The server may have closed it before the request is written, or while.
    let _ = third
        .write_all(b"GET /openapi.json HTTP/1.1\r\nHost: sidecar\r\n\r\n")
        .await;
    assert_closed_unanswered(&mut third, Duration::from_secs(15), "a third connection").await;
    assert!(
        sidecar.log_text().contains("maximum of connections"),
        "{}",
        sidecar.log_text()
    );

    // One closed, there is room for another.
    drop(first);
    let _fourth = served_connection(addr).await;
}

#[tokio::test]
async fn sigterm_closes_idle_connections_and_answers_the_request_in_flight() {
    let forge = Forge::start().await;
    let mut sidecar = forge
        .spawn_http("sidecar", &[(HEADER_TIMEOUT, "60"), (IDLE_TIMEOUT, "600")])
        .await;
    let addr = socket_addr(&sidecar);
    let release = forge.dir.path().join("release-shutdown");
    let turn = held_turn(&forge, &sidecar, &release).await;
    let mut idle = served_connection(addr).await;

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sidecar.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_closed_unanswered(&mut idle, Duration::from_secs(15), "an idle connection").await;
    // No new connections: the listener is closed.
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(sidecar.child.try_wait().unwrap().is_none(), "exited early");

    std::fs::write(&release, "").unwrap();
    let (status, body) = turn.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let exited = loop {
        if let Some(status) = sidecar.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the sidecar did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = sidecar.log_text();
    assert!(exited.success(), "{exited}:\n{log}");
    assert!(
        log.contains("sidecar stopped") && !log.contains("grace period over"),
        "{log}"
    );
}
