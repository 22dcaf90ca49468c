//! `egressd-bench upstream`: the TLS server every target ends at (tokio + rustls, HTTP/1.1
//! with keep-alive), run by the orchestrator inside the upstream network namespace.
//!
//! Routes: `GET /small` answers [`SMALL_BODY`] bytes; `GET /bulk/<n>` answers `n` bytes,
//! written in 64 KiB pieces. Every answer carries [`TOKEN_SEEN_HEADER`], `1` when the request
//! had [`TOKEN_HEADER`] with [`TOKEN_VALUE`] (the intercepting proxies inject it), so the
//! orchestrator can check that injection really happened. `connection: close` is honoured
//! by closing first (close_notify, then FIN), so TIME_WAIT sockets pile up here and not in
//! the clients' port range.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use tokio::{
    io::{AsyncWriteExt, BufReader},
    net::{TcpSocket, TcpStream},
};
use tokio_rustls::TlsAcceptor;

use crate::{
    http1,
    proto::{SMALL_BODY, TOKEN_HEADER, TOKEN_SEEN_HEADER, TOKEN_VALUE},
};

/// How long a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest `/bulk/<n>` served.
const MAX_BULK: u64 = 4 << 30;
/// Size of one write of a bulk body.
const CHUNK: usize = 64 * 1024;

/// Serves on `listen` until killed; prints `ready` on stdout once listening.
///
/// # Errors
///
/// The certificate or key could not be read, or the address could not be bound.
pub fn main(listen: SocketAddr, cert: &Path, key: &Path) -> Result<()> {
    let _ = crate::raise_nofile_limit();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let socket = if listen.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(listen)?;
        let listener = socket.listen(8192)?;
        println!("ready");
        loop {
            match listener.accept().await {
                Ok((tcp, _)) => {
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        // A failed connection only matters to the client, which counts it.
                        let _ = serve(tcp, acceptor).await;
                    });
                }
                // Out of descriptors or similar: wait a little, never stop accepting.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
}

async fn serve(tcp: TcpStream, acceptor: TlsAcceptor) -> Result<()> {
    tcp.set_nodelay(true)?;
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await??;
    let mut io = BufReader::with_capacity(4096, tls);
    let filler = vec![b'x'; CHUNK];
    while let Some(head) = http1::read_head(&mut io).await? {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        req.parse(&head)?;
        let close = http1::wants_close(req.headers);
        let token_seen = http1::header(req.headers, TOKEN_HEADER) == Some(TOKEN_VALUE.as_bytes());
        let (status, length) = match req.path.unwrap_or("") {
            "/small" => ("200 OK", SMALL_BODY as u64),
            path => match path
                .strip_prefix("/bulk/")
                .and_then(|n| n.parse::<u64>().ok())
            {
                Some(n) if n <= MAX_BULK => ("200 OK", n),
                _ => ("404 Not Found", 0),
            },
        };
        let head = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/octet-stream\r\ncontent-length: {length}\r\n{TOKEN_SEEN_HEADER}: {}\r\n{}\r\n",
            u8::from(token_seen),
            if close { "connection: close\r\n" } else { "" },
        );
        if length as usize <= CHUNK {
            // Head and a small body in one write, one TLS record.
            let mut msg = head.into_bytes();
            msg.extend_from_slice(&filler[..usize::try_from(length)?]);
            io.get_mut().write_all(&msg).await?;
        } else {
            io.get_mut().write_all(head.as_bytes()).await?;
            let mut left = length;
            while left > 0 {
                let n = usize::try_from(left.min(CHUNK as u64))?;
                io.get_mut().write_all(&filler[..n]).await?;
                left -= n as u64;
            }
        }
        io.get_mut().flush().await?;
        if close {
            io.get_mut().shutdown().await?;
            return Ok(());
        }
    }
    Ok(())
}
