//! Matrix: an `m.notice` sent to one room with the client-server API.
//!
//! The room is a room id (`!abc:example.org`) or an alias
//! (`#deploys:example.org`); an alias is resolved once per run through the
//! room directory (`GET /_matrix/client/v3/directory/room/{alias}`), since
//! the send endpoint only takes ids. Messages carry the plain text in
//! `body` and the same facts as HTML (`org.matrix.custom.html`) in
//! `formatted_body`, with every value escaped.
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
        let room_id = keys.required_string(
            "room_id",
            "give the room's id or alias, like \"!abc:example.org\" or \"#deploys:example.org\"",
        )?;
        if !room_id.starts_with('!') && !room_id.starts_with('#') {
            return Err(keys.invalid(
                "room_id",
                format!("`{room_id}` is not a room id or alias; they look like \"!abc:example.org\" or \"#deploys:example.org\""),
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
        // Aliases go through `lookup` first; only ids reach here.
        self.send(&self.room_id, o)
    }

    fn lookup(&self) -> Option<Request> {
        if !self.room_id.starts_with('#') {
            return None;
        }
        let path = format!("_matrix/client/v3/directory/room/{}", encode(&self.room_id));
        Some(
            Request::get(join(&self.homeserver, &path))
                .header("Authorization", format!("Bearer {}", self.token)),
        )
    }

    fn request_after(&self, o: &Occasion, looked_up: &serde_json::Value) -> Option<Request> {
        // A directory answer without a room id is sent as the alias, so the
        // homeserver's refusal names what went wrong.
        let room = looked_up
            .get("room_id")
            .and_then(serde_json::Value::as_str)
            .unwrap_or(&self.room_id);
        self.send(room, o)
    }
}

impl Matrix {
    fn send(&self, room: &str, o: &Occasion) -> Option<Request> {
        let txn = txn_id(o);
        let path = format!(
            "_matrix/client/v3/rooms/{}/send/m.room.message/{}",
            encode(room),
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
    json!({
        "msgtype": "m.notice",
        "body": o.plain(),
        "format": "org.matrix.custom.html",
        "formatted_body": html(o),
    })
}

/// The message as the HTML subset Matrix clients render: the headline in
/// bold, the facts as a list, the link as a link. Every value is escaped.
fn html(o: &Occasion) -> String {
    use html_escape::{encode_double_quoted_attribute as attr, encode_text as text};
    let mut out = format!("<p><strong>{}</strong></p><ul>", text(&o.headline()));
    for (key, value) in o.facts() {
        out.push_str(&format!(
            "<li><strong>{key}</strong>: {}</li>",
            text(&value)
        ));
    }
    out.push_str("</ul>");
    if let Some(link) = &o.info.link {
        out.push_str(&format!(
            r#"<p><a href="{}">{}</a></p>"#,
            attr(link),
            text(link)
        ));
    }
    out
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
    use crate::notify::message::{DeployInfo, Kind, Occasion};

    /// A commit subject is the committer's text: in `formatted_body` it is
    /// escaped, never markup a client would render.
    #[test]
    fn the_html_body_escapes_every_value() {
        let info = DeployInfo {
            app: "shop".into(),
            environment: "production".into(),
            release: "20260101T000000Z-1a2b3c4".into(),
            commit: "1a2b3c4d5e6f".into(),
            commit_subject: "<img src=x onerror=alert(1)> & more".into(),
            deployer: "alice".into(),
            link: Some("https://ci.example.com/run?a=1&b=\"2\"".into()),
            ..DeployInfo::default()
        };
        let body = super::body(&Occasion::new(Kind::Succeeded, &info));
        let html = body["formatted_body"].as_str().unwrap();
        assert_eq!(body["format"], "org.matrix.custom.html");
        assert!(!html.contains("<img"), "{html}");
        assert!(
            html.contains("&lt;img src=x onerror=alert(1)&gt; &amp; more"),
            "{html}"
        );
        assert!(
            html.contains(r#"<a href="https://ci.example.com/run?a=1&amp;b=&quot;2&quot;">"#),
            "{html}"
        );
        assert!(
            body["body"].as_str().unwrap().contains("<img src=x"),
            "plain stays plain"
        );
    }

    #[test]
    fn room_ids_are_encoded() {
        assert_eq!(super::encode("!abc:example.org"), "%21abc%3Aexample.org");
        assert_eq!(
            super::encode("#deploys:example.org"),
            "%23deploys%3Aexample.org"
        );
    }
}
