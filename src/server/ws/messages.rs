//! The client's messages as autopush-rs reads them: typed at the edge, `messageType`
//! matched case-sensitively, UUIDs in any spelling `Uuid::parse_str` takes.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{json_error, End};

/// A UUID in any spelling `Uuid::parse_str` accepts, as autopush's serde `Uuid` fields;
/// kept as its lower-case dashed form.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct AnyUuid(pub(super) String);

impl<'de> Deserialize<'de> for AnyUuid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        uuid::Uuid::try_parse(&s)
            .map(|u| AnyUuid(u.hyphenated().to_string()))
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Deserialize)]
pub(super) struct Hello {
    pub(super) uaid: Option<String>,
    /// Not used, but a non-UUID entry fails the message, as in autopush.
    #[serde(rename = "channelIDs")]
    pub(super) _channel_ids: Option<Vec<AnyUuid>>,
    pub(super) broadcasts: Option<HashMap<String, String>>,
}

#[derive(Deserialize)]
pub(super) struct Register {
    #[serde(rename = "channelID")]
    pub(super) channel_id: String,
    pub(super) key: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct Unregister {
    #[serde(rename = "channelID")]
    pub(super) channel_id: AnyUuid,
    pub(super) code: Option<u32>,
}

#[derive(Deserialize)]
pub(super) struct Ack {
    pub(super) updates: Vec<AckUpdate>,
}

#[derive(Deserialize)]
pub(super) struct AckUpdate {
    #[serde(rename = "channelID")]
    pub(super) channel_id: AnyUuid,
    pub(super) version: String,
    pub(super) code: Option<u16>,
}

#[derive(Deserialize)]
pub(super) struct Nack {
    pub(super) version: String,
    pub(super) code: Option<i32>,
}

#[derive(Deserialize)]
pub(super) struct BroadcastSubscribe {
    pub(super) broadcasts: HashMap<String, String>,
}

/// A code as recorded in stats: absent or out of range is `default`.
pub(super) fn code<T: TryInto<u16>>(code: Option<T>, default: u16) -> u16 {
    code.and_then(|c| c.try_into().ok()).unwrap_or(default)
}

/// The message types autopush's `ClientMessage` knows, matched case-sensitively.
const MESSAGE_TYPES: [&str; 7] = [
    "hello",
    "register",
    "unregister",
    "broadcast_subscribe",
    "ack",
    "nack",
    "ping",
];

/// A JSON object and its `messageType`; an empty object `{}` is a ping. Anything else
/// that is not an object with a known `messageType` closes 1011 "Json".
pub(super) fn parse_client_message(text: &str) -> Result<(String, Map<String, Value>), End> {
    let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(text) else {
        return Err(json_error("not a JSON object"));
    };
    let kind = match obj.get("messageType") {
        None if obj.is_empty() => "ping".to_owned(),
        Some(Value::String(s)) if MESSAGE_TYPES.contains(&s.as_str()) => s.clone(),
        _ => return Err(json_error("missing or unknown messageType")),
    };
    Ok((kind, obj))
}

pub(super) fn from_obj<T: serde::de::DeserializeOwned>(obj: Map<String, Value>) -> Result<T, End> {
    serde_json::from_value(Value::Object(obj)).map_err(|_| json_error("malformed message"))
}
