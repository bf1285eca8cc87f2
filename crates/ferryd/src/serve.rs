//! The API's accept loop: plain HTTP or HTTPS (tokio-rustls) in front of the
//! axum router, over hyper's HTTP/1.1 connection driver.
//!
//! One task per connection; a connection's failure (a refused or stalled TLS
//! handshake, plain HTTP sent to the HTTPS port, a broken request) is logged
//! and ends that connection only — the loop never stops for it. A client that
//! speaks plain HTTP to the HTTPS port gets a plain `400` naming the `https://`
//! URL instead of a silent hang-up.
//!
//! Shutdown: when `shutdown` resolves the listener closes, idle connections
//! close, in-flight requests finish (their connections then close), and
//! [`serve`] returns once every connection task has ended. Connections still
//! in their TLS handshake are dropped.
//!
//! Must not: know about routes, tokens or the store; this is transport only.
//! The accept loop is also where a mutual-TLS peer's certificate chain is
//! read: every request of a TLS connection carries it as the
//! [`PeerCertificates`] extension, for the routes to identify the caller.

use anyhow::Result;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::CertificateDer;

/// How long a client may take to send its first byte and finish the TLS
/// handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request head (hyper's timer).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// The first byte of a TLS record carrying a handshake message.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The certificate chain a TLS client presented (end entity first), or
/// `None` when it presented none; an extension of every request it sends.
#[derive(Clone, Debug)]
pub struct PeerCertificates(pub Option<Arc<Vec<CertificateDer<'static>>>>);

/// What a connection speaks.
#[derive(Clone)]
pub enum Transport {
    Plain,
    Tls(TlsAcceptor),
}

/// Serves `router` on `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    transport: Transport,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    conns.spawn(connection(
                        tcp,
                        peer,
                        router.clone(),
                        transport.clone(),
                        stop_rx.clone(),
                    ));
                }
                Err(e) => {
                    // Out of file descriptors and the like: the listener is
                    // still good; give connections a moment to end.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(done) = conns.join_next(), if !conns.is_empty() => {
                if let Err(e) = done {
                    tracing::error!(error = %e, "a connection task failed");
                }
            }
        }
    }
    drop(listener);
    // Nobody else holds a receiver that could miss this: every connection
    // task got its clone before now.
    let _ = stop_tx.send(true);
    while let Some(done) = conns.join_next().await {
        if let Err(e) = done {
            tracing::error!(error = %e, "a connection task failed");
        }
    }
    Ok(())
}

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    router: Router,
    transport: Transport,
    mut stop: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let acceptor = match transport {
        Transport::Plain => return http(TokioIo::new(tcp), peer, router, stop).await,
        Transport::Tls(acceptor) => acceptor,
    };
    let mut first = [0u8; 1];
    let peeked = tokio::select! {
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first)) => r,
        _ = stop.wait_for(|s| *s) => return,
    };
    match peeked {
        Ok(Ok(0)) => return,
        Ok(Ok(_)) if first[0] != TLS_HANDSHAKE_RECORD => {
            tracing::warn!(%peer, "plain HTTP (or other non-TLS bytes) sent to the HTTPS port; answering 400 and closing");
            return refuse_plain(tcp).await;
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "reading a new connection");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, "no TLS handshake within {HANDSHAKE_TIMEOUT:?}; dropping the connection");
            return;
        }
    }
    let accepted = tokio::select! {
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)) => r,
        _ = stop.wait_for(|s| *s) => return,
    };
    match accepted {
        Ok(Ok(tls)) => {
            let chain = tls
                .get_ref()
                .1
                .peer_certificates()
                .map(|c| Arc::new(c.iter().map(|c| c.clone().into_owned()).collect()));
            let router = router.layer(axum::Extension(PeerCertificates(chain)));
            http(TokioIo::new(tls), peer, router, stop).await
        }
        Ok(Err(e)) => {
            tracing::warn!(%peer, error = %e, "TLS handshake failed; dropping the connection");
        }
        Err(_) => {
            tracing::warn!(%peer, "TLS handshake not done within {HANDSHAKE_TIMEOUT:?}; dropping the connection");
        }
    }
}

/// Serves HTTP/1.1 on one connection until the client is done or, after a
/// stop, until its in-flight request is answered.
async fn http<I>(io: I, peer: SocketAddr, router: Router, mut stop: watch::Receiver<bool>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let conn = builder.serve_connection(io, TowerToHyperService::new(router));
    tokio::pin!(conn);
    let ended = tokio::select! {
        r = conn.as_mut() => Some(r),
        _ = stop.wait_for(|s| *s) => None,
    };
    let result = match ended {
        Some(r) => r,
        None => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
    }
}

/// Answers a plain-HTTP request on the HTTPS port with a plain 400 that names
/// the right URL, then closes.
async fn refuse_plain(mut tcp: TcpStream) {
    let url = match tcp.local_addr() {
        Ok(a) => format!("https://{a}"),
        Err(_) => "https://".to_owned(),
    };
    // Read the request head first (bounded): closing a socket with unread
    // bytes resets it, and the client would never see the answer.
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    let read_head = async {
        while head.len() < 16 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_head).await;
    let body = format!(
        "{{\"error\":{{\"code\":\"https_required\",\"message\":\"this port serves HTTPS: use {url}\"}}}}\n"
    );
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let _ = tcp.write_all(answer.as_bytes()).await;
        let _ = tcp.shutdown().await;
    })
    .await;
}
