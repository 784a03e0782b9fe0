//! The application-server side of Web Push: encrypt a payload to a subscription, sign
//! VAPID, and POST it to the endpoint (RFC 8030/8291/8292). Used by `pushctl send` and by
//! the tests, so both exercise the same path a real application server takes.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::crypto;
use crate::vapid::{self, VapidKey};

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("endpoint {0:?} is not an http(s) URL")]
    BadEndpoint(String),
    #[error(transparent)]
    Crypto(#[from] crypto::CryptoError),
    #[error("VAPID: {0}")]
    Vapid(#[from] vapid::VapidError),
    #[error("cannot reach {host}: {source}")]
    Connect {
        host: String,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("timed out talking to the push server")]
    Timeout,
}

#[derive(Debug, Clone)]
pub struct SendOptions {
    pub ttl: u32,
    pub urgency: Option<String>,
    pub topic: Option<String>,
    pub aesgcm: bool,
    pub subject: String,
}

impl Default for SendOptions {
    fn default() -> Self {
        SendOptions {
            ttl: 60,
            urgency: None,
            topic: None,
            aesgcm: false,
            subject: "mailto:pushctl@localhost".into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SendResponse {
    pub status: u16,
    pub location: Option<String>,
    pub body: String,
}

struct Url<'a> {
    https: bool,
    host: &'a str,
    port: u16,
    path: &'a str,
}

fn parse_url(endpoint: &str) -> Result<Url<'_>, SendError> {
    let bad = || SendError::BadEndpoint(endpoint.to_string());
    let (https, rest) = if let Some(r) = endpoint.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = endpoint.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(bad());
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            (h, p.parse().map_err(|_| bad())?)
        }
        _ => (authority, if https { 443 } else { 80 }),
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok(Url {
        https,
        host,
        port,
        path,
    })
}

/// The VAPID `aud`: the endpoint's origin.
pub fn origin(endpoint: &str) -> Result<String, SendError> {
    let u = parse_url(endpoint)?;
    let default = if u.https { 443 } else { 80 };
    let scheme = if u.https { "https" } else { "http" };
    Ok(if u.port == default {
        format!("{scheme}://{}", u.host)
    } else {
        format!("{scheme}://{}:{}", u.host, u.port)
    })
}

/// POST an already encrypted message (its body and encoding headers), signed with `key`.
pub async fn post_encrypted(
    endpoint: &str,
    enc: &crypto::Encrypted,
    key: &VapidKey,
    opts: &SendOptions,
) -> Result<SendResponse, SendError> {
    let url = parse_url(endpoint)?;
    let mut req = request(endpoint, &url, key, opts)?;
    for (k, v) in &enc.headers {
        req = req.header(*k, v);
    }
    let req = req
        .header("Content-Type", "application/octet-stream")
        .body(Full::new(Bytes::from(enc.body.clone())))
        .expect("headers built from valid strings");
    tokio::time::timeout(Duration::from_secs(30), post(&url, req))
        .await
        .map_err(|_| SendError::Timeout)?
}

/// The request line and the headers every push carries: TTL, VAPID, Urgency, Topic.
fn request(
    endpoint: &str,
    url: &Url<'_>,
    key: &VapidKey,
    opts: &SendOptions,
) -> Result<hyper::http::request::Builder, SendError> {
    let mut req = Request::post(url.path)
        .header("Host", format!("{}:{}", url.host, url.port))
        .header("TTL", opts.ttl.to_string());
    let exp = crate::clock::now_unix() + 12 * 3600;
    req = req.header(
        "Authorization",
        vapid::authorization_header(key, &origin(endpoint)?, &opts.subject, exp)?,
    );
    if let Some(u) = &opts.urgency {
        req = req.header("Urgency", u);
    }
    if let Some(t) = &opts.topic {
        req = req.header("Topic", t);
    }
    Ok(req)
}

/// Encrypt `payload` to (`p256dh`, `auth`), sign with `key` and POST to `endpoint`.
/// An empty payload is sent as an empty push (no body, no encryption).
pub async fn send(
    endpoint: &str,
    p256dh: &[u8],
    auth: &[u8],
    payload: &[u8],
    key: &VapidKey,
    opts: &SendOptions,
) -> Result<SendResponse, SendError> {
    if !payload.is_empty() {
        let enc = crypto::encrypt(p256dh, auth, payload, opts.aesgcm)?;
        return post_encrypted(endpoint, &enc, key, opts).await;
    }
    // An empty push: no body, no encryption.
    let url = parse_url(endpoint)?;
    let req = request(endpoint, &url, key, opts)?
        .body(Full::new(Bytes::new()))
        .expect("headers built from valid strings");
    tokio::time::timeout(Duration::from_secs(30), post(&url, req))
        .await
        .map_err(|_| SendError::Timeout)?
}

async fn post(url: &Url<'_>, req: Request<Full<Bytes>>) -> Result<SendResponse, SendError> {
    let tcp = TcpStream::connect((url.host, url.port))
        .await
        .map_err(|source| SendError::Connect {
            host: url.host.to_string(),
            source,
        })?;
    if url.https {
        let tls = crate::connection::system_tls().map_err(SendError::Tls)?;
        let name = rustls::pki_types::ServerName::try_from(url.host.to_string())
            .map_err(|e| SendError::Tls(e.to_string()))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::clone(&tls))
            .connect(name, tcp)
            .await
            .map_err(|e| SendError::Tls(e.to_string()))?;
        exchange(TokioIo::new(stream), req).await
    } else {
        exchange(TokioIo::new(tcp), req).await
    }
}

async fn exchange<T>(io: T, req: Request<Full<Bytes>>) -> Result<SendResponse, SendError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = Limited::new(resp.into_body(), 64 * 1024)
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    Ok(SendResponse {
        status,
        location,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        assert_eq!(
            origin("https://updates.push.services.mozilla.com/wpush/v2/abc").unwrap(),
            "https://updates.push.services.mozilla.com"
        );
        assert_eq!(
            origin("http://127.0.0.1:8080/wpush/v1/x").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert!(origin("ftp://x/").is_err());
    }
}
