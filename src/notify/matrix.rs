//! Matrix: an `m.notice` sent to one room with the client-server API.
//!
//! Invariant: the transaction id is the deploy id plus the moment, fixed
//! before the first attempt, so a retry after a lost answer is recognised
//! by the homeserver and never posts twice.

use reqwest::Method;
use serde_json::json;

use super::Service;
use super::config::{Keys, NotifyConfigError, join};
use super::deliver::{Check, Request};
use super::events::Events;
use super::message::{Kind, Occasion};

pub const KEYS: &[&str] = &[
    "homeserver",
    "room_id",
    "token_env",
    "events",
    "environments",
];

pub struct Matrix {
    homeserver: reqwest::Url,
    room_id: String,
    token: String,
    events: Events,
}

impl Matrix {
    pub fn parse(keys: &Keys<'_>) -> Result<Self, NotifyConfigError> {
        let room_id =
            keys.required_string("room_id", "give the room's id, like \"!abc:example.org\"")?;
        if !room_id.starts_with('!') && !room_id.starts_with('#') {
            return Err(keys.invalid(
                "room_id",
                format!("`{room_id}` is not a room id; they look like \"!abc:example.org\""),
            ));
        }
        Ok(Self {
            homeserver: keys.required_url(
                "homeserver",
                "give the homeserver's URL, like \"https://matrix.example.org\"",
            )?,
            room_id,
            token: keys.required_secret("token_env", "MATRIX_TOKEN")?,
            events: Events::parse(keys, &Kind::CONFIGURABLE)?,
        })
    }
}

impl Service for Matrix {
    fn secrets(&self) -> Vec<String> {
        vec![self.token.clone()]
    }

    fn wants(&self, kind: Kind) -> bool {
        self.events.wants(kind)
    }

    fn request(&self, o: &Occasion) -> Option<Request> {
        let txn = txn_id(o);
        let path = format!(
            "_matrix/client/v3/rooms/{}/send/m.room.message/{}",
            encode(&self.room_id),
            encode(&txn)
        );
        let mut request = Request::post(join(&self.homeserver, &path), body(o))
            .header("Authorization", format!("Bearer {}", self.token))
            .check(Check::Status);
        request.method = Method::PUT;
        Some(request)
    }
}

/// Unique per deploy and moment; a test gets its own time-based id.
pub fn txn_id(o: &Occasion) -> String {
    match o.kind {
        Kind::Test => format!("slipway-test-{}", o.unix_millis()),
        kind => format!("slipway-{}-{}", o.info.deploy_id, kind.as_str()),
    }
}

fn body(o: &Occasion) -> serde_json::Value {
    json!({ "msgtype": "m.notice", "body": o.plain() })
}

/// Percent-encodes a path segment (room ids hold `!` and `:`).
fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn room_ids_are_encoded() {
        assert_eq!(super::encode("!abc:example.org"), "%21abc%3Aexample.org");
    }
}
