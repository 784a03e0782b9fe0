//! The Mozilla Push Service WebSocket messages, client and server side (docs/push-client.md,
//! docs/push-server.md).
//!
//! Parsing is total: any text gives a `ServerMessage` or a `ProtocolError`, never a panic.
//! `messageType` is matched case-insensitively, as Firefox does.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::ids::{ChannelId, IdError, Uaid};

/// Ack codes as Firefox sends them.
pub const ACK_STORED: u16 = 100;
pub const ACK_DECRYPT_FAILED: u16 = 101;
pub const ACK_NOT_DELIVERED: u16 = 102;

/// Unregister codes.
pub const UNREGISTER_BY_APP: u16 = 200;
pub const UNREGISTER_QUOTA: u16 = 201;
pub const UNREGISTER_REVOKED: u16 = 202;

/// What became of a notification, as the daemon tells the server (the code it sends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// Stored for its app (100).
    Delivered,
    /// Its payload could not be decrypted, or (UnifiedPush) is `aesgcm`, which its app
    /// could not decrypt from the body alone (101).
    Undecryptable,
    /// Not kept: an unknown or expired channel, a copy, a UnifiedPush body that is empty,
    /// over 4,096 bytes or not base64url (102).
    NotDelivered,
}

impl Ack {
    pub fn code(self) -> u16 {
        match self {
            Ack::Delivered => ACK_STORED,
            Ack::Undecryptable => ACK_DECRYPT_FAILED,
            Ack::NotDelivered => ACK_NOT_DELIVERED,
        }
    }
}

/// Why a channel is unregistered (the code sent with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unregister {
    /// The app unsubscribed, or a registration it asked for is given back (200).
    ByApp,
    /// The quota is used up (201).
    Quota,
    /// Revoked by the user or the daemon: an unknown channel, an uninstalled app, a
    /// channel the server refuses (202).
    Revoked,
}

impl Unregister {
    pub fn code(self) -> u16 {
        match self {
            Unregister::ByApp => UNREGISTER_BY_APP,
            Unregister::Quota => UNREGISTER_QUOTA,
            Unregister::Revoked => UNREGISTER_REVOKED,
        }
    }
}

/// The server's "do not reconnect" close code.
pub const CLOSE_NO_RECONNECT: u16 = 4774;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AckUpdate {
    #[serde(rename = "channelID")]
    pub channel_id: String,
    pub version: String,
    pub code: u16,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "messageType", rename_all = "snake_case")]
pub enum ClientMessage {
    Hello {
        #[serde(skip_serializing_if = "Option::is_none")]
        uaid: Option<String>,
        use_webpush: bool,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        broadcasts: BTreeMap<String, String>,
    },
    Register {
        #[serde(rename = "channelID")]
        channel_id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
    Unregister {
        #[serde(rename = "channelID")]
        channel_id: String,
        code: u16,
    },
    Ack {
        updates: Vec<AckUpdate>,
    },
    Nack {
        version: String,
        code: u16,
    },
    BroadcastSubscribe {
        broadcasts: BTreeMap<String, String>,
    },
}

impl ClientMessage {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("client messages always serialise")
    }
}

/// The client ping: an empty object.
pub const PING: &str = "{}";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub channel_id: ChannelId,
    pub version: String,
    /// base64url body; `None` for an empty push.
    pub data: Option<String>,
    /// String-valued headers (`encoding`, `encryption`, `crypto_key`, …), keys lower-cased.
    pub headers: BTreeMap<String, String>,
    /// Seconds the server keeps it, if it says (autopush does not).
    pub ttl: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage {
    Hello {
        uaid: Uaid,
        status: u16,
        broadcasts: BTreeMap<String, String>,
    },
    Register {
        channel_id: ChannelId,
        status: u16,
        endpoint: Option<String>,
    },
    Unregister {
        channel_id: ChannelId,
        status: u16,
    },
    Notification(Notification),
    Broadcast {
        broadcasts: BTreeMap<String, String>,
    },
    /// `{}` or `{"messageType":"ping"}`: the answer to our ping.
    Pong,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("not JSON: {0}")]
    Json(String),
    #[error("not a JSON object")]
    NotObject,
    #[error("unknown messageType {0:?}")]
    UnknownType(String),
    #[error("field {0} is missing or has the wrong type")]
    Field(&'static str),
    #[error(transparent)]
    Id(#[from] IdError),
    #[error("endpoint is not an http(s) URL of at most 1000 bytes")]
    Endpoint,
}

fn str_field<'a>(o: &'a Map<String, Value>, k: &'static str) -> Result<&'a str, ProtocolError> {
    o.get(k)
        .and_then(Value::as_str)
        .ok_or(ProtocolError::Field(k))
}

fn status(o: &Map<String, Value>) -> Result<u16, ProtocolError> {
    o.get("status")
        .and_then(Value::as_u64)
        .and_then(|s| u16::try_from(s).ok())
        .ok_or(ProtocolError::Field("status"))
}

fn string_map(
    v: Option<&Value>,
    k: &'static str,
) -> Result<BTreeMap<String, String>, ProtocolError> {
    match v {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(key, val)| match val {
                Value::String(s) => Ok((key.clone(), s.clone())),
                _ => Err(ProtocolError::Field(k)),
            })
            .collect(),
        Some(_) => Err(ProtocolError::Field(k)),
    }
}

/// Longest endpoint we accept from a server (UnifiedPush's limit too).
pub const MAX_ENDPOINT_LEN: usize = 1000;

pub fn parse_server_message(text: &str) -> Result<ServerMessage, ProtocolError> {
    let v: Value = serde_json::from_str(text).map_err(|e| ProtocolError::Json(e.to_string()))?;
    let Value::Object(o) = v else {
        return Err(ProtocolError::NotObject);
    };
    let Some(kind) = o.get("messageType") else {
        return if o.is_empty() {
            Ok(ServerMessage::Pong)
        } else {
            Err(ProtocolError::Field("messageType"))
        };
    };
    let kind = kind.as_str().ok_or(ProtocolError::Field("messageType"))?;
    match kind.to_ascii_lowercase().as_str() {
        "hello" => Ok(ServerMessage::Hello {
            uaid: Uaid::parse(str_field(&o, "uaid")?)?,
            status: status(&o)?,
            broadcasts: string_map(o.get("broadcasts"), "broadcasts").unwrap_or_default(),
        }),
        "register" => {
            let status = status(&o)?;
            let endpoint = match o.get("pushEndpoint") {
                // A refusal carries a note here, not a URL (autopush-rs: "" with 500,
                // "Failed to generate endpoint" with 400): the status is the answer.
                Some(_) if status != 200 => None,
                Some(Value::String(s)) => {
                    let ok = (s.starts_with("https://") || s.starts_with("http://"))
                        && s.len() <= MAX_ENDPOINT_LEN;
                    if !ok {
                        return Err(ProtocolError::Endpoint);
                    }
                    Some(s.clone())
                }
                None | Some(Value::Null) => None,
                Some(_) => return Err(ProtocolError::Field("pushEndpoint")),
            };
            if status == 200 && endpoint.is_none() {
                return Err(ProtocolError::Field("pushEndpoint"));
            }
            Ok(ServerMessage::Register {
                channel_id: ChannelId::parse(str_field(&o, "channelID")?)?,
                status,
                endpoint,
            })
        }
        "unregister" => Ok(ServerMessage::Unregister {
            channel_id: ChannelId::parse(str_field(&o, "channelID")?)?,
            status: status(&o)?,
        }),
        "notification" => {
            let data = match o.get("data") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if s.is_empty() => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => return Err(ProtocolError::Field("data")),
            };
            let headers = string_map(o.get("headers"), "headers")?
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect();
            Ok(ServerMessage::Notification(Notification {
                channel_id: ChannelId::parse(str_field(&o, "channelID")?)?,
                version: str_field(&o, "version")?.to_string(),
                data,
                headers,
                // Optional, and only ever used to bound how long a copy can come: ignored
                // when it is not a number.
                ttl: o
                    .get("ttl")
                    .and_then(Value::as_u64)
                    .map(|t| t.min(u64::from(u32::MAX)) as u32),
            }))
        }
        "broadcast" => Ok(ServerMessage::Broadcast {
            broadcasts: string_map(o.get("broadcasts"), "broadcasts")?,
        }),
        "ping" => Ok(ServerMessage::Pong),
        other => Err(ProtocolError::UnknownType(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CH: &str = "9d4a2c3e-1b6f-4f0a-8c2d-5e6f7a8b9c0d";

    #[test]
    fn hello_round_trip_shape() {
        let m = ClientMessage::Hello {
            uaid: None,
            use_webpush: true,
            broadcasts: BTreeMap::new(),
        };
        assert_eq!(m.to_json(), r#"{"messageType":"hello","use_webpush":true}"#);
        let r = parse_server_message(
            r#"{"messageType":"HELLO","uaid":"0123456789abcdef0123456789abcdef","status":200,"use_webpush":true,"broadcasts":{}}"#,
        )
        .unwrap();
        assert!(matches!(r, ServerMessage::Hello { status: 200, .. }));
    }

    #[test]
    fn a_refused_register_may_carry_any_text_as_its_endpoint() {
        for (status, text) in [(400, "Failed to generate endpoint"), (500, "")] {
            let r = parse_server_message(&format!(
                r#"{{"messageType":"register","channelID":"{CH}","status":{status},"pushEndpoint":"{text}"}}"#
            ))
            .unwrap();
            assert_eq!(
                r,
                ServerMessage::Register {
                    channel_id: ChannelId::parse(CH).unwrap(),
                    status,
                    endpoint: None
                }
            );
        }
    }

    #[test]
    fn register_and_notification() {
        let r = parse_server_message(&format!(
            r#"{{"messageType":"register","channelID":"{CH}","status":200,"pushEndpoint":"https://e/wpush/v1/x"}}"#
        ))
        .unwrap();
        assert!(matches!(
            r,
            ServerMessage::Register {
                status: 200,
                endpoint: Some(_),
                ..
            }
        ));
        let n = parse_server_message(&format!(
            r#"{{"messageType":"notification","channelID":"{CH}","version":"v","data":"AAA","headers":{{"Encoding":"aes128gcm"}}}}"#
        ))
        .unwrap();
        let ServerMessage::Notification(n) = n else {
            panic!()
        };
        assert_eq!(n.headers.get("encoding").unwrap(), "aes128gcm");
        assert_eq!(n.data.as_deref(), Some("AAA"));
        assert_eq!(n.ttl, None);
        // A TTL, when a server says it; ignored when it is not a number.
        for (ttl, want) in [("60", Some(60)), ("\"x\"", None), ("-1", None)] {
            let ServerMessage::Notification(n) = parse_server_message(&format!(
                r#"{{"messageType":"notification","channelID":"{CH}","version":"v","ttl":{ttl}}}"#
            ))
            .unwrap() else {
                panic!()
            };
            assert_eq!(n.ttl, want, "{ttl}");
        }
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        for bad in [
            "",
            "nope",
            "[]",
            "42",
            r#"{"messageType":1}"#,
            r#"{"messageType":"hello","uaid":"","status":200}"#,
            r#"{"messageType":"hello","uaid":7,"status":200}"#,
            r#"{"messageType":"register","channelID":"x","status":200,"pushEndpoint":"https://e"}"#,
            r#"{"messageType":"register","channelID":"9d4a2c3e-1b6f-4f0a-8c2d-5e6f7a8b9c0d","status":200}"#,
            r#"{"messageType":"notification","channelID":"9d4a2c3e-1b6f-4f0a-8c2d-5e6f7a8b9c0d"}"#,
            r#"{"messageType":"notification","channelID":"9d4a2c3e-1b6f-4f0a-8c2d-5e6f7a8b9c0d","version":"v","headers":{"a":1}}"#,
            r#"{"messageType":"surprise"}"#,
            r#"{"foo":"bar"}"#,
        ] {
            assert!(parse_server_message(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_server_message("{}"), Ok(ServerMessage::Pong));
    }
}
