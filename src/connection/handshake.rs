//! The WebSocket opening handshake, judged as a browser judges it.
//!
//! We ask for the `push-notification` subprotocol, as Firefox does, but autopush-rs (the
//! server behind Mozilla's push service) upgrades without naming any subprotocol. RFC 6455
//! lets a client fail such an answer, and tungstenite's client handshake does; browsers
//! accept it. So the HTTP upgrade is done here with hyper, and tungstenite takes over the
//! upgraded stream for the frames. An answer that names a *different* subprotocol is still
//! refused: that server speaks something else.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::header::{self, HeaderValue};
use hyper::upgrade::Upgraded;
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

/// The subprotocol Firefox asks for; servers may name it back or name none.
pub const SUBPROTOCOL: &str = "push-notification";

/// An open WebSocket to the push server.
pub type Ws = WebSocketStream<TokioIo<Upgraded>>;

/// Where to connect, read from a `ws://` or `wss://` URL.
struct Target {
    tls: bool,
    host: String,
    port: u16,
    /// The `Host` header: the port only when it is not the scheme's default.
    authority: String,
    path: String,
}

fn target(url: &str) -> Result<Target, String> {
    let uri: Uri = url.parse().map_err(|e| format!("bad server URL: {e}"))?;
    let tls = match uri.scheme_str() {
        Some("wss") => true,
        Some("ws") => false,
        _ => return Err("bad server URL: the scheme must be ws:// or wss://".into()),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| "bad server URL: no host".to_string())?;
    if authority.as_str().contains('@') {
        return Err("bad server URL: user information is not allowed".into());
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let default_port = if tls { 443 } else { 80 };
    let port = authority.port_u16().unwrap_or(default_port);
    let authority = if port == default_port {
        authority.host().to_string()
    } else {
        format!("{}:{port}", authority.host())
    };
    let path = uri
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| !p.is_empty())
        .unwrap_or("/")
        .to_string();
    Ok(Target {
        tls,
        host: host.to_string(),
        port,
        authority,
        path,
    })
}

/// Connect, upgrade and hand the stream to tungstenite. The caller bounds the time.
pub async fn open(
    url: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
    config: WebSocketConfig,
) -> Result<Ws, String> {
    let t = target(url)?;
    let tcp = TcpStream::connect((t.host.as_str(), t.port))
        .await
        .map_err(|e| format!("cannot connect to {}:{}: {e}", t.host, t.port))?;
    let _ = tcp.set_nodelay(true);
    if t.tls {
        let tls = tls.ok_or_else(|| "wss:// needs TLS, which is not set up".to_string())?;
        let name = rustls::pki_types::ServerName::try_from(t.host.clone())
            .map_err(|e| format!("bad server name {}: {e}", t.host))?;
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {} failed: {e}", t.host))?;
        upgrade(stream, &t, config).await
    } else {
        upgrade(tcp, &t, config).await
    }
}

async fn upgrade<S>(stream: S, t: &Target, config: WebSocketConfig) -> Result<Ws, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    // Drives the HTTP exchange; it ends once the connection is upgraded (or fails).
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let key = generate_key();
    let request = Request::get(t.path.as_str())
        .header(header::HOST, t.authority.as_str())
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_VERSION, "13")
        .header(header::SEC_WEBSOCKET_KEY, key.as_str())
        .header(header::SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL)
        .header(
            header::USER_AGENT,
            concat!("webpushd/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("bad server URL: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("upgrade request failed: {e}"))?;
    check_answer(&response, &key)?;
    let upgraded = hyper::upgrade::on(response)
        .await
        .map_err(|e| format!("upgrade failed: {e}"))?;
    Ok(WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, Some(config)).await)
}

/// RFC 6455 section 4.1, as browsers apply it: a missing subprotocol is accepted.
fn check_answer<B>(response: &hyper::Response<B>, key: &str) -> Result<(), String> {
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(format!(
            "the server refused the WebSocket upgrade (HTTP {})",
            response.status()
        ));
    }
    let headers = response.headers();
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has(header::UPGRADE, "websocket") || !has(header::CONNECTION, "upgrade") {
        return Err("the server's upgrade answer lacks Upgrade: websocket".into());
    }
    let accept = derive_accept_key(key.as_bytes());
    if headers.get(header::SEC_WEBSOCKET_ACCEPT)
        != Some(&HeaderValue::from_str(&accept).expect("base64"))
    {
        return Err("the server's Sec-WebSocket-Accept does not match our key".into());
    }
    match headers.get(header::SEC_WEBSOCKET_PROTOCOL) {
        None => Ok(()),
        Some(p) if p.as_bytes().eq_ignore_ascii_case(SUBPROTOCOL.as_bytes()) => Ok(()),
        Some(p) => Err(format!(
            "the server chose subprotocol {:?}, not {SUBPROTOCOL}",
            String::from_utf8_lossy(p.as_bytes())
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = target("wss://push.services.mozilla.com/").unwrap();
        assert!(t.tls);
        assert_eq!(
            (t.host.as_str(), t.port),
            ("push.services.mozilla.com", 443)
        );
        assert_eq!(t.authority, "push.services.mozilla.com");
        assert_eq!(t.path, "/");
        let t = target("ws://127.0.0.1:8180").unwrap();
        assert!(!t.tls);
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 8180));
        assert_eq!(t.authority, "127.0.0.1:8180");
        assert_eq!(t.path, "/");
        let t = target("ws://[::1]:9/push?x=1").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 9));
        assert_eq!(t.authority, "[::1]:9");
        assert_eq!(t.path, "/push?x=1");
        assert!(target("https://example.org/").is_err());
        assert!(target("ws://user:pw@example.org/").is_err());
        assert!(target("not a url").is_err());
    }

    fn answer(protocol: Option<&str>, key: &str) -> hyper::Response<()> {
        let mut b = hyper::Response::builder()
            .status(101)
            .header("upgrade", "WebSocket")
            .header("connection", "upgrade")
            .header("sec-websocket-accept", derive_accept_key(key.as_bytes()));
        if let Some(p) = protocol {
            b = b.header("sec-websocket-protocol", p);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn a_missing_subprotocol_is_accepted_a_different_one_is_not() {
        let key = generate_key();
        assert!(check_answer(&answer(None, &key), &key).is_ok());
        assert!(check_answer(&answer(Some("push-notification"), &key), &key).is_ok());
        assert!(check_answer(&answer(Some("chat"), &key), &key).is_err());
        assert!(check_answer(&answer(None, &key), &generate_key()).is_err());
        let refused = hyper::Response::builder().status(400).body(()).unwrap();
        assert!(check_answer(&refused, &key).is_err());
    }
}
