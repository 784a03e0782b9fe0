//! The HTTP side (autoendpoint, RFC 8030): application servers POST pushes here.
//!
//! Checks run in autoendpoint's order so status codes match what a real sender sees:
//! token (404), VAPID header (401; 400 for the draft scheme's Crypto-Key), JWT (401),
//! token version and VAPID key binding (404/401), user and channel (410), body size
//! (413), then TTL, encryption and Topic headers (400). See `docs/push-server.md`. The
//! body is read with a hard limit, never buffered unbounded.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, CACHE_CONTROL, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::time::{sleep, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{now_unix, short, too_large, PushMessage, Rejection, ServerError, Shared, MAX_TTL};
use crate::vapid;

const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of an oversized body is still read (and discarded) before answering 413.
const DRAIN_LIMIT: u64 = 1 << 20;
const MORE_INFO: &str = "http://autopush.readthedocs.io/en/latest/http.html#error-codes";

/// Serves HTTP/1.1 until cancelled; open connections are dropped on cancel.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let (stream, _peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP accept failed");
                    sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        let cancel = cancel.clone();
        tracker.spawn(async move {
            let service = service_fn(move |req| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(handle(&shared, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .max_buf_size(64 << 10)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = cancel.cancelled() => {}
                r = conn => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "HTTP connection ended with an error");
                    }
                }
            }
        });
    }
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let post = req.method() == Method::POST;
    if let (true, Some(code)) = (
        post && segments.first() == Some(&"wpush"),
        shared.faults.as_ref().and_then(|f| f.endpoint_status()),
    ) {
        return empty(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
    }
    let result = match segments.as_slice() {
        // As autoendpoint's routes: `/wpush/{token}` is a v1 endpoint, any other version
        // than v1 and v2 is 404 errno 102.
        ["wpush", token] if post => push(shared, Some(1), token, req).await,
        ["wpush", api, token] if post => {
            let version = match *api {
                "v1" => Some(1),
                "v2" => Some(2),
                _ => None,
            };
            push(shared, version, token, req).await
        }
        ["wpush", _] | ["wpush", _, _] => return empty(StatusCode::METHOD_NOT_ALLOWED),
        ["m", message_id] => {
            if req.method() != Method::DELETE {
                return empty(StatusCode::METHOD_NOT_ALLOWED);
            }
            delete_message(shared, message_id)
        }
        // Dockerflow health routes, as autoendpoint answers them.
        ["__lbheartbeat__"] if req.method() == Method::GET => return empty(StatusCode::OK),
        ["__heartbeat__" | "health"] if req.method() == Method::GET => {
            return json_response(serde_json::json!({
                "status": "OK",
                "version": env!("CARGO_PKG_VERSION"),
            }))
        }
        ["__version__"] if req.method() == Method::GET => {
            return json_response(serde_json::json!({
                "source": "webpushd",
                "version": env!("CARGO_PKG_VERSION"),
                "commit": "",
                "build": "",
            }))
        }
        ["__lbheartbeat__" | "__heartbeat__" | "health" | "__version__"] => {
            return empty(StatusCode::METHOD_NOT_ALLOWED)
        }
        // Unknown paths: 404 with an empty body, as autopush.
        _ => return empty(StatusCode::NOT_FOUND),
    };
    match result {
        Ok(resp) => resp,
        Err(ServerError::Rejected(r)) => error_response(&r),
        Err(ServerError::Store(e)) if e.is_busy() => {
            error_response(&Rejection::new(503, None, "Storage busy, retry later"))
        }
        Err(e) => {
            tracing::warn!(error = %e, "push failed");
            error_response(&Rejection::new(500, None, "Internal server error"))
        }
    }
}

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

fn json_response(body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

async fn push(
    shared: &Shared,
    version: Option<u8>,
    token: &str,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ServerError> {
    let Some(version) = version else {
        return Err(Rejection::new(404, Some(102), "Invalid API version").into());
    };
    let invalid_token = || Rejection::new(404, Some(102), "Invalid token");
    // autoendpoint first decrypts the token (any version) and checks its length for the
    // path's version only after VAPID.
    let info = shared.parse_token_any(token).ok_or_else(invalid_token)?;
    let headers = req.headers().clone();
    let unauthorized = |m: &str| Rejection::new(401, Some(109), m);

    // VAPID: parsed and its JWT checked whenever present (v1 endpoints too).
    let vapid = match header(&headers, "authorization") {
        None => None,
        Some(auth) => Some(
            vapid::parse_authorization(auth, header(&headers, "crypto-key")).map_err(
                |e| match e {
                    vapid::VapidError::DraftCryptoKey(m) => Rejection::new(400, Some(110), m),
                    e => unauthorized(&e.to_string()),
                },
            )?,
        ),
    };
    if let Some((jwt, key)) = &vapid {
        vapid::verify_jwt(jwt, key, &shared.http_base, now_unix())
            .map_err(|e| unauthorized(&format!("Invalid VAPID token: {e}")))?;
    }
    let expected_len_ok = match version {
        1 => info.key_hash.is_none(),
        _ => info.key_hash.is_some(),
    };
    if !expected_len_ok {
        return Err(invalid_token().into());
    }
    if let Some(expected) = info.key_hash {
        let (_, key) = vapid
            .as_ref()
            .ok_or_else(|| unauthorized("Missing VAPID public key"))?;
        if aws_lc_rs::constant_time::verify_slices_are_equal(&super::sha256(key), &expected)
            .is_err()
        {
            return Err(unauthorized("VAPID public key mismatch").into());
        }
    }
    shared.check_channel(&info.uaid, &info.channel_id)?;

    let body = read_body(shared.opts.max_body, req).await?;

    // Untrimmed, as autoendpoint parses it; the sign is judged after the crypto headers.
    let ttl = header(&headers, "ttl")
        .and_then(|t| t.parse::<i64>().ok())
        .ok_or_else(|| Rejection::new(400, Some(111), "Missing TTL value"))?;
    let clamped = u32::try_from(ttl.clamp(0, i64::from(MAX_TTL))).unwrap_or(MAX_TTL);
    let msg = PushMessage {
        body: body.to_vec(),
        content_encoding: header(&headers, "content-encoding").map(str::to_owned),
        encryption: header(&headers, "encryption").map(str::to_owned),
        crypto_key: header(&headers, "crypto-key").map(str::to_owned),
        ttl: clamped,
        topic: header(&headers, "topic").map(str::to_owned),
        urgency: header(&headers, "urgency").map(str::to_owned),
    };
    let outcome = shared.accept_with(&info.uaid, &info.channel_id, msg, ttl < 0)?;
    tracing::debug!(
        uaid = short(&info.uaid),
        channel = %info.channel_id,
        ttl = clamped,
        outcome = outcome.kind(),
        "push accepted"
    );
    let location = format!("{}/m/{}", shared.http_base, outcome.message_id());
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::CREATED;
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(LOCATION, v);
    }
    resp.headers_mut().insert("ttl", HeaderValue::from(clamped));
    Ok(resp)
}

/// Reads at most `max` bytes of body. A somewhat larger body is read to the end (up to
/// [`DRAIN_LIMIT`]) before the 413 goes out, so the client is not reset mid-upload and
/// loses the answer; anything beyond that is cut off.
async fn read_body(max: usize, req: Request<Incoming>) -> Result<Bytes, ServerError> {
    let declared = header(req.headers(), "content-length").and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > DRAIN_LIMIT) {
        return Err(too_large().into());
    }
    let mut body = req.into_body();
    let mut buf = Vec::new();
    let mut total = 0u64;
    let read = async {
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else {
                continue; // trailers
            };
            total += data.len() as u64;
            if total <= max as u64 {
                buf.extend_from_slice(&data);
            } else if total > DRAIN_LIMIT {
                break;
            }
        }
        Ok::<_, hyper::Error>(())
    };
    match timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(())) if total > max as u64 => Err(too_large().into()),
        Ok(Ok(())) => Ok(Bytes::from(buf)),
        Ok(Err(_)) => Err(Rejection::new(400, None, "Could not read the request body").into()),
        Err(_) => Err(Rejection::new(408, None, "Request body timed out").into()),
    }
}

fn delete_message(shared: &Shared, message_id: &str) -> Result<Response<Full<Bytes>>, ServerError> {
    let valid = !message_id.is_empty()
        && message_id.len() <= 64
        && message_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        return Err(Rejection::new(400, None, "Invalid message ID").into());
    }
    shared.store().delete_message_by_version(message_id)?;
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    Ok(resp)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// autoendpoint's error body: `{"code","errno","error","message","more_info"}`.
fn error_response(r: &Rejection) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::json!({
        "code": status.as_u16(),
        "errno": r.errno,
        "error": status.canonical_reason().unwrap_or("Error"),
        "message": r.message,
        "more_info": MORE_INFO,
    });
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    match status {
        StatusCode::GONE => {
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=86400"));
        }
        StatusCode::SERVICE_UNAVAILABLE => {
            headers.insert(RETRY_AFTER, HeaderValue::from_static("120"));
        }
        _ => {}
    }
    resp
}
