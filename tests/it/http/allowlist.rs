//! The allowlist: by peer, with trusted proxies, in process and over real sockets.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use clawdforge::client::ForgeClient;
use clawdforge::http::{self, Access, Settings, Sidecar};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tower::ServiceExt;

use super::connections::{assert_closed_unanswered, get_on, socket_addr};
use super::{answer, assert_error, get, Answer};
use crate::harness::{http_client, Forge};

/// The sidecar in this process, as a client at `peer` reaches it.
fn in_process(forge: &Forge, access: Access, peer: &str) -> axum::Router {
    let sidecar = Sidecar::new(
        ForgeClient::new(forge.admin.nats().clone(), None),
        Settings {
            access,
            max_request_bytes: 1 << 20,
            conn: Default::default(),
            stream_heartbeat: Duration::from_secs(10),
            console: Default::default(),
        },
    );
    let peer: SocketAddr = peer.parse().unwrap();
    http::router(sidecar).layer(MockConnectInfo(peer))
}

async fn call(router: axum::Router, path: &str, token: &str, forwarded: &[&str]) -> Answer {
    let mut request =
        axum::http::Request::get(path).header("Authorization", format!("Bearer {token}"));
    for f in forwarded {
        request = request.header("X-Forwarded-For", *f);
    }
    let response = router
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn the_allowlist_decides_by_peer_and_believes_only_trusted_proxies() {
    let forge = Forge::start().await;
    let token = forge.admin.create_token("lan", false).await.unwrap().token;
    let access = Access::parse(
        "10.0.0.0/8, 2001:db8::/32",
        "ALLOW_CIDRS",
        "192.168.0.1, fd00::/8",
        "TRUSTED_PROXIES",
    )
    .unwrap();
    let allowed = (200, json!({"sessions": []}));
    let denied = |ip: &str| {
        (
            403,
            json!({"error": {"code": "forbidden", "message": format!("client address {ip} is not allowed")}}),
        )
    };
    let cases: Vec<(&str, Vec<&str>, Answer)> = vec![
        // Direct peers, IPv4 and IPv6; loopback always.
        ("10.1.2.3:5000", vec![], allowed.clone()),
        ("192.0.2.7:5000", vec![], denied("192.0.2.7")),
        ("[2001:db8::5]:5000", vec![], allowed.clone()),
        ("[2001:db9::5]:5000", vec![], denied("2001:db9::5")),
        ("[::ffff:10.1.2.3]:5000", vec![], allowed.clone()),
        ("127.0.0.1:5000", vec![], allowed.clone()),
        ("[::1]:5000", vec![], allowed.clone()),
        // X-Forwarded-For from a peer that is no trusted proxy counts for nothing.
        ("192.0.2.7:5000", vec!["10.1.2.3"], denied("192.0.2.7")),
        ("10.1.2.3:5000", vec!["192.0.2.7"], allowed.clone()),
        // From a trusted proxy: the right-most entry that is not a trusted proxy.
        ("192.168.0.1:443", vec!["10.1.2.3"], allowed.clone()),
        ("192.168.0.1:443", vec!["192.0.2.7"], denied("192.0.2.7")),
        (
            "192.168.0.1:443",
            vec!["10.1.2.3, 192.0.2.7"],
            denied("192.0.2.7"),
        ),
        (
            "192.168.0.1:443",
            vec!["192.0.2.7", "10.1.2.3, fd00::2"],
            allowed.clone(),
        ),
        ("192.168.0.1:443", vec![], denied("192.168.0.1")),
        ("[fd00::1]:443", vec!["2001:db8::9"], allowed.clone()),
        (
            "[fd00::1]:443",
            vec!["[2001:db9::9]:1234"],
            denied("2001:db9::9"),
        ),
    ];
    for (peer, forwarded, expected) in cases {
        let router = in_process(&forge, access.clone(), peer);
        assert_eq!(
            call(router, "/sessions", &token, &forwarded).await,
            expected,
            "{peer} {forwarded:?}"
        );
    }
    let garbage = call(
        in_process(&forge, access.clone(), "192.168.0.1:443"),
        "/sessions",
        &token,
        &["not-an-address"],
    )
    .await;
    assert_error(&garbage, 403, "forbidden");
    // Every route is behind it, /healthz, the console and unknown paths too.
    let paths = [
        "/healthz",
        "/openapi.json",
        "/admin/tokens",
        "/console/login",
        "/console/assets/console.css",
        "/nowhere",
    ];
    for path in paths {
        let answer = call(
            in_process(&forge, access.clone(), "192.0.2.7:5000"),
            path,
            &token,
            &[],
        )
        .await;
        assert_eq!(answer, denied("192.0.2.7"), "{path}");
    }
    // With an empty list, loopback only.
    let loopback_only = Access::default();
    let outside = call(
        in_process(&forge, loopback_only.clone(), "10.1.2.3:5000"),
        "/sessions",
        &token,
        &[],
    )
    .await;
    assert_eq!(outside, denied("10.1.2.3"));
    let inside = call(
        in_process(&forge, loopback_only, "[::1]:5000"),
        "/sessions",
        &token,
        &[],
    )
    .await;
    assert_eq!(inside, allowed);
}

#[tokio::test]
async fn loopback_is_allowed_over_real_sockets() {
    let forge = Forge::start().await;
    let token = forge
        .admin
        .create_token("local", false)
        .await
        .unwrap()
        .token;
    let secret = token.as_str();
    let token = Some(secret);
    let listed = (200, json!({"sessions": []}));

    let v4 = forge.spawn_http("sidecar", &[]).await;
    assert_eq!(get(&v4, "/healthz", None).await.0, 200);
    assert_eq!(get(&v4, "/sessions", token).await, listed);

    let v6 = forge
        .spawn_http(
            "sidecar",
            &[("BIND_HOST", "::1"), ("ALLOW_CIDRS", "10.0.0.0/8")],
        )
        .await;
    assert!(v6.base.starts_with("http://[::1]:"));
    assert_eq!(get(&v6, "/sessions", token).await, listed);

    // Behind a proxy on loopback: X-Forwarded-For decides.
    let proxied = forge
        .spawn_http(
            "sidecar",
            &[
                ("ALLOW_CIDRS", "10.0.0.0/8"),
                ("CLAWDFORGE_TRUSTED_PROXIES", "127.0.0.1/32"),
            ],
        )
        .await;
    let via = |xff: &'static str| {
        let request = http_client()
            .get(proxied.url("/sessions"))
            .bearer_auth(secret)
            .header("X-Forwarded-For", xff);
        async move { answer(request.send().await.unwrap()).await }
    };
    assert_eq!(via("10.9.8.7").await, listed);
    assert_error(&via("192.0.2.1").await, 403, "forbidden");
    assert_error(&via("10.9.8.7, 192.0.2.1").await, 403, "forbidden");
    // No header: the proxy (loopback) is the client.
    assert_eq!(get(&proxied, "/sessions", token).await, listed);
}

/// An address of this machine that is not loopback, if it has one: the source address of a
/// route to a documentation network (a UDP `connect` sends nothing).
fn non_loopback_address() -> Option<IpAddr> {
    for (bind, target) in [
        ("0.0.0.0:0", "198.51.100.1:9"),
        ("[::]:0", "[2001:db8::1]:9"),
    ] {
        let Ok(socket) = std::net::UdpSocket::bind(bind) else {
            continue;
        };
        if socket.connect(target).is_err() {
            continue;
        }
        if let Ok(local) = socket.local_addr() {
            let ip = local.ip();
            if !ip.is_loopback() && !ip.is_unspecified() {
                return Some(ip);
            }
        }
    }
    None
}

/// A connection to `to` from the local address `from`.
async fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = match from {
        IpAddr::V4(_) => TcpSocket::new_v4(),
        IpAddr::V6(_) => TcpSocket::new_v6(),
    }
    .unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    socket.connect(to).await.unwrap()
}

#[tokio::test]
async fn a_peer_outside_the_allowlist_is_closed_unread_and_a_trusted_proxy_is_let_in() {
    // Loopback is always allowed: the refused peer is this machine at another address.
    let local = non_loopback_address().expect(
        "this test needs an address of this machine other than loopback to connect from; \
         it has none",
    );
    let (any, loopback) = match local {
        IpAddr::V4(_) => ("0.0.0.0", IpAddr::from([127, 0, 0, 1])),
        IpAddr::V6(_) => ("::", IpAddr::from(std::net::Ipv6Addr::LOCALHOST)),
    };
    let forge = Forge::start().await;
    let allow = ("ALLOW_CIDRS", "10.0.0.0/8");
    let sidecar = forge
        .spawn_http("sidecar", &[("BIND_HOST", any), allow])
        .await;
    let port = socket_addr(&sidecar).port();
    let mut inside = TcpStream::connect((loopback, port)).await.unwrap();
    assert_eq!(get_on(&mut inside, "/openapi.json", "").await.unwrap(), 200);

    // Not even a 403: the connection is closed before its request is read.
    let mut outside = connect_from(local, SocketAddr::new(local, port)).await;
    let _ = outside
        .write_all(b"GET /openapi.json HTTP/1.1\r\nHost: sidecar\r\n\r\n")
        .await;
    let what = format!("a connection from {local}");
    assert_closed_unanswered(&mut outside, Duration::from_secs(15), &what).await;

    // A trusted proxy outside the allowlist is let in; X-Forwarded-For decides each request.
    let proxy = local.to_string();
    let proxied = forge
        .spawn_http(
            "sidecar",
            &[
                ("BIND_HOST", any),
                allow,
                ("CLAWDFORGE_TRUSTED_PROXIES", &proxy),
            ],
        )
        .await;
    let to = SocketAddr::new(local, socket_addr(&proxied).port());
    let mut via = connect_from(local, to).await;
    let forwarded = |client: &str| format!("X-Forwarded-For: {client}\r\n");
    let status = get_on(&mut via, "/openapi.json", &forwarded("10.1.2.3")).await;
    assert_eq!(status.expect("the proxy is served"), 200);
    let status = get_on(&mut via, "/openapi.json", &forwarded("192.0.2.99")).await;
    assert_eq!(status.unwrap(), 403);
    assert_eq!(get_on(&mut via, "/openapi.json", "").await.unwrap(), 403);
}
