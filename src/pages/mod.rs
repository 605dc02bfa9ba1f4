//! Responses graygate writes itself on the proxy listener: the self-service channel page and
//! the mobile address API. Both use the same facts and decision as the proxy.

mod address;
mod channel_page;

pub use address::address_api;
pub use channel_page::channel_page;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use crate::rules::decide::Decision;
use crate::rules::model::VersionId;

/// Who is asking, as the proxy's filter chain and rules saw them.
#[derive(Debug, Clone)]
pub struct Visitor {
    /// The decision for this request (with store facts looked up).
    pub decision: Decision,
    /// The uid, if any.
    pub uid: Option<String>,
    /// An internal user (may pick restricted versions).
    pub internal: bool,
    /// The version of a valid channel cookie.
    pub channel: Option<VersionId>,
    /// The request host, without port.
    pub host: String,
}

/// Largest request body a page reads.
const MAX_FORM: usize = 8 * 1024;

/// Writes a whole response: status, content type, extra headers, body.
pub async fn respond(
    session: &mut Session,
    status: u16,
    content_type: &str,
    headers: &[(&'static str, String)],
    body: impl Into<Bytes>,
) -> pingora::Result<()> {
    let body = body.into();
    let mut header = ResponseHeader::build(status, Some(4 + headers.len()))?;
    header.insert_header(CONTENT_TYPE, content_type)?;
    header.insert_header(CONTENT_LENGTH, body.len().to_string())?;
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("cache-control"))
    {
        header.insert_header(CACHE_CONTROL, "no-store")?;
    }
    for (name, value) in headers {
        header.append_header(*name, value.as_str())?;
    }
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(body), true).await
}

/// `{"error": message, "status": status}`.
pub async fn respond_error(
    session: &mut Session,
    status: u16,
    message: &str,
) -> pingora::Result<()> {
    let body = serde_json::json!({ "error": message, "status": status }).to_string();
    respond(session, status, "application/json", &[], body).await
}

/// The request body, or `None` when it is larger than [`MAX_FORM`] or unreadable.
async fn read_form(session: &mut Session) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = session.read_request_body().await.ok()? {
        if body.len() + chunk.len() > MAX_FORM {
            return None;
        }
        body.extend_from_slice(&chunk);
    }
    Some(body)
}

/// `application/x-www-form-urlencoded` (or a query string) as pairs, `+` as space.
fn form_pairs(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (decode(k), decode(v))
        })
        .collect()
}

/// Escapes text for HTML.
fn html_escape(text: &str) -> String {
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
        assert_eq!(
            form_pairs("version=beta&return_to=%2Fshop%3Fa%3D1&x=a+b&flag"),
            vec![
                ("version".into(), "beta".into()),
                ("return_to".into(), "/shop?a=1".into()),
                ("x".into(), "a b".into()),
                ("flag".into(), String::new()),
            ]
        );
        assert_eq!(
            html_escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
