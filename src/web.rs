//! Responses graygate writes itself, and the request bodies and forms it reads.
//!
//! A page (the channel page, the address API), a refusal of the proxy (404, 400, 503) and every
//! admin answer is a [`Reply`] value: status, content type, extra headers, body. The proxy
//! listener writes it with [`Reply::write`] and the admin listener hands it to Pingora with
//! [`Reply::into_http`]; nothing else builds a response by hand. [`read_body`] reads a bounded
//! request body on either listener; [`form_pairs`] decodes forms and query strings.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use http::StatusCode;
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;

/// A whole response: status, content type, extra headers and body.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status code.
    pub status: StatusCode,
    /// The `Content-Type`.
    pub content_type: &'static str,
    /// Extra headers, in order (`Cache-Control: no-store` is added unless one is here).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The body.
    pub body: Bytes,
}

/// Why an operator's request was refused (a rollout action, an override): the HTTP status and
/// the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// 400 (a bad request), 404 (no such rollout) or 409 (the state does not allow it).
    pub status: u16,
    /// In words.
    pub message: String,
}

impl Refused {
    /// An operator endpoint's answer: `value` with 200, or the refusal as a JSON error.
    pub fn reply(result: Result<serde_json::Value, Refused>) -> Reply {
        match result {
            Ok(value) => Reply::json(200, &value),
            Err(refused) => Reply::error(refused.status, &refused.message),
        }
    }
}

impl Reply {
    /// A reply with `body` of type `content_type`.
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
        Reply {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            content_type,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// A JSON reply (pretty-printed, newline-terminated: it is read by people with curl).
    pub fn json(status: u16, value: &serde_json::Value) -> Reply {
        let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
        body.push(b'\n');
        Reply::new(status, "application/json", body)
    }

    /// `{"error": message, "status": status}`.
    pub fn error(status: u16, message: &str) -> Reply {
        Reply::json(
            status,
            &serde_json::json!({ "error": message, "status": status }),
        )
    }

    /// Adds a header; a value that is not a valid header value is left out (callers pass
    /// values they built: cookies they signed, paths they checked).
    pub fn with_header(mut self, name: HeaderName, value: &str) -> Reply {
        if let Ok(value) = HeaderValue::from_str(value) {
            self.headers.push((name, value));
        }
        self
    }

    fn has_cache_control(&self) -> bool {
        self.headers.iter().any(|(name, _)| name == CACHE_CONTROL)
    }

    /// Writes the reply on the proxy listener.
    pub async fn write(self, session: &mut ServerSession) -> pingora::Result<()> {
        let mut header = ResponseHeader::build(self.status, Some(3 + self.headers.len()))?;
        header.insert_header(CONTENT_TYPE, self.content_type)?;
        header.insert_header(CONTENT_LENGTH, self.body.len())?;
        if !self.has_cache_control() {
            header.insert_header(CACHE_CONTROL, "no-store")?;
        }
        for (name, value) in self.headers {
            header.append_header(name, value)?;
        }
        session.write_response_header(Box::new(header)).await?;
        session.write_response_body(self.body, true).await
    }

    /// The reply as an `http::Response`, for Pingora's `ServeHttp` apps (the admin listener).
    pub fn into_http(self) -> http::Response<Vec<u8>> {
        let mut builder = http::Response::builder()
            .status(self.status)
            .header(CONTENT_TYPE, self.content_type)
            .header(CONTENT_LENGTH, self.body.len());
        if !self.has_cache_control() {
            builder = builder.header(CACHE_CONTROL, "no-store");
        }
        for (name, value) in self.headers {
            builder = builder.header(name, value);
        }
        builder
            .body(self.body.to_vec())
            .unwrap_or_else(|_| http::Response::new(Vec::new()))
    }
}

/// Why a request body was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Longer than the listener accepts.
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    /// The client stopped sending or sent a malformed body (bad chunking, early close).
    #[error("the request body could not be read")]
    Unreadable,
}

impl BodyError {
    /// The reply to the client: 413 for a body too large, 400 for one that cannot be read.
    pub fn reply(self) -> Reply {
        match self {
            BodyError::TooLarge(_) => Reply::error(413, &self.to_string()),
            BodyError::Unreadable => Reply::error(400, &self.to_string()),
        }
    }
}

/// Reads the whole request body, refusing one over `limit` bytes.
pub async fn read_body(session: &mut ServerSession, limit: usize) -> Result<Vec<u8>, BodyError> {
    let mut body = Vec::new();
    while let Some(chunk) = session
        .read_request_body()
        .await
        .map_err(|_| BodyError::Unreadable)?
    {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `application/x-www-form-urlencoded` text (or a query string) as pairs, `+` as a space.
pub fn form_pairs(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (form_decode(k), form_decode(v))
        })
        .collect()
}

/// The value of the first pair named `name`.
pub fn form_field<'f>(pairs: &'f [(String, String)], name: &str) -> Option<&'f str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn form_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(&text.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

/// Escapes text for HTML.
pub fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_and_escaping() {
        let pairs = form_pairs("version=beta&return_to=%2Fshop%3Fa%3D1&x=a+b&flag");
        assert_eq!(
            pairs,
            vec![
                ("version".into(), "beta".into()),
                ("return_to".into(), "/shop?a=1".into()),
                ("x".into(), "a b".into()),
                ("flag".into(), String::new()),
            ]
        );
        assert_eq!(form_field(&pairs, "x"), Some("a b"));
        assert_eq!(form_field(&pairs, "nope"), None);
        assert_eq!(
            html_escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn replies_carry_status_type_and_headers() {
        let reply = Reply::error(404, "no service").into_http();
        assert_eq!(reply.status(), 404);
        assert_eq!(reply.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(reply.headers()[CACHE_CONTROL], "no-store");
        let body: serde_json::Value = serde_json::from_slice(reply.body()).unwrap();
        assert_eq!(body["error"], "no service");
        assert_eq!(body["status"], 404);
        assert_eq!(
            reply.headers()[CONTENT_LENGTH],
            reply.body().len().to_string().as_str()
        );

        let cached = Reply::new(200, "text/plain", "x")
            .with_header(CACHE_CONTROL, "max-age=60")
            .with_header(http::header::LOCATION, "bad\nvalue")
            .into_http();
        assert_eq!(cached.headers().get_all(CACHE_CONTROL).iter().count(), 1);
        assert_eq!(cached.headers()[CACHE_CONTROL], "max-age=60");
        assert!(cached.headers().get(http::header::LOCATION).is_none());
    }

    #[test]
    fn body_errors_say_what_they_are() {
        assert_eq!(BodyError::TooLarge(8192).reply().status, 413);
        let unreadable = BodyError::Unreadable.reply();
        assert_eq!(unreadable.status, 400);
        assert!(String::from_utf8_lossy(&unreadable.body).contains("could not be read"));
    }
}
