//! The self-service channel page: users pick a release channel for themselves.
//!
//! `GET` shows the version this user is on now and the choices they may make: the
//! `selectable` versions, the `restricted` ones too for internal users, and "automatic"
//! (clear the choice); a version with isolated cookies says it keeps a separate session. It works without JavaScript (a form), and answers JSON to
//! `Accept: application/json`. `POST version=NAME[&return_to=/path]` sets the signed channel
//! cookie and redirects (303) to `return_to` on the same site. A cross-site `Origin`, a
//! version this user may not choose, or a `return_to` off the site gets 403 and sets
//! nothing; an unknown version gets 400.

use http::header::{ACCEPT, LOCATION, ORIGIN, SET_COOKIE};
use pingora::protocols::http::ServerSession;
use serde_json::json;

use super::Visitor;
use crate::channels::ChannelKey;
use crate::facts::strip_port;
use crate::rules::model::{RuleSet, Version};
use crate::state::Snapshot;
use crate::web::{form_field, form_pairs, html_escape, read_body, Reply};

/// Largest form the page reads.
const MAX_FORM: usize = 8 * 1024;

/// The value of `version` that clears the choice.
const AUTOMATIC: &str = "automatic";

/// Added to the description of a version with isolated cookies (SPEC section 15).
const SEPARATE_SESSION: &str =
    " It keeps a separate session: sign in there once, and your session here stays as it is.";

/// Whether `visitor` may pick `version`.
fn may_choose(version: &Version, visitor: &Visitor) -> bool {
    version.selectable && (!version.restricted || visitor.internal)
}

/// The host of an `http(s)://host[:port]/...` URL; `None` for anything else (including
/// URLs with credentials, which browsers and servers read differently).
fn url_host(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let authority = rest.split(['/', '?', '#']).next()?;
    if authority.is_empty() || authority.contains(['@', '\\']) {
        return None;
    }
    Some(strip_port(authority))
}

/// Whether `host` is the request's host, or both lie within the cookie's domain.
fn same_site(host: &str, request_host: &str, domain: Option<&str>) -> bool {
    if host.eq_ignore_ascii_case(request_host) {
        return true;
    }
    let Some(domain) = domain else { return false };
    let domain = domain.trim_start_matches('.').to_ascii_lowercase();
    let within = |h: &str| {
        let h = h.to_ascii_lowercase();
        h == domain || h.ends_with(&format!(".{domain}"))
    };
    within(host) && within(request_host)
}

/// Where to send the user after a choice, when it is on this site.
fn safe_return_to<'a>(
    return_to: &'a str,
    request_host: &str,
    domain: Option<&str>,
) -> Option<&'a str> {
    if return_to.is_empty() {
        return Some("/");
    }
    // Only visible ASCII: the value goes into a Location header as it is.
    if !return_to.bytes().all(|b| b.is_ascii_graphic()) || return_to.contains('\\') {
        return None;
    }
    if return_to.starts_with('/') {
        return (!return_to.starts_with("//")).then_some(return_to);
    }
    url_host(return_to)
        .filter(|host| same_site(host, request_host, domain))
        .map(|_| return_to)
}

fn current_json(rules: &RuleSet, visitor: &Visitor) -> serde_json::Value {
    let choices: Vec<_> = rules
        .versions
        .iter()
        .filter(|v| may_choose(v, visitor))
        .map(|v| {
            json!({
                "version": &*v.name,
                "description": v.description,
                "restricted": v.restricted,
                "separate_session": v.cookies.is_isolated(),
                "selected": visitor.channel.is_some_and(|c| rules.version(c).name == v.name),
            })
        })
        .collect();
    json!({
        "version": &*rules.version(visitor.decision.version).name,
        "rule": visitor.decision.rule_name(rules),
        "channel": visitor.channel.map(|c| &*rules.version(c).name),
        "automatic": visitor.channel.is_none(),
        "choices": choices,
        "internal": visitor.internal,
    })
}

fn render_html(rules: &RuleSet, visitor: &Visitor, path: &str, cookie_note: &str) -> String {
    let current = html_escape(&rules.version(visitor.decision.version).name);
    let mut options = String::new();
    let option = |value: &str, title: &str, description: &str, badge: &str, checked: bool| {
        format!(
            r#"<label class="choice"><input type="radio" name="version" value="{value}"{checked}><span class="name">{title}{badge}</span><span class="desc">{description}</span></label>"#,
            checked = if checked { " checked" } else { "" },
        )
    };
    options.push_str(&option(
        AUTOMATIC,
        "Automatic",
        "Recommended. You get the release chosen for you by the rollout.",
        "",
        visitor.channel.is_none(),
    ));
    for version in rules.versions.iter().filter(|v| may_choose(v, visitor)) {
        let mut badge = String::new();
        if version.restricted {
            badge.push_str(r#" <span class="badge">internal</span>"#);
        }
        if version.cookies.is_isolated() {
            badge.push_str(r#" <span class="badge session">separate session</span>"#);
        }
        let mut description = if version.description.is_empty() {
            format!("The {} channel.", version.name)
        } else {
            version.description.clone()
        };
        if version.cookies.is_isolated() {
            description.push_str(SEPARATE_SESSION);
        }
        let checked = visitor
            .channel
            .is_some_and(|c| rules.version(c).name == version.name);
        options.push_str(&option(
            &html_escape(&version.name),
            &html_escape(&version.name),
            &html_escape(&description),
            &badge,
            checked,
        ));
    }
    let chosen = match visitor.channel {
        Some(_) => "(your choice)",
        None => "(chosen by the rollout)",
    };
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Release channel</title>
<style>
  :root {{ --ink: #1d2433; --muted: #5b6478; --line: #e3e7ef; --accent: #3b5bdb; --bg: #f5f7fb; }}
  * {{ box-sizing: border-box; }}
  body {{ margin: 0; font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); background: var(--bg); }}
  main {{ max-width: 560px; margin: 48px auto; padding: 0 20px; }}
  .card {{ background: #fff; border: 1px solid var(--line); border-radius: 14px; padding: 32px; box-shadow: 0 8px 24px rgba(29,36,51,.06); }}
  h1 {{ font-size: 24px; margin: 0 0 6px; }}
  p.lead {{ color: var(--muted); margin: 0 0 24px; }}
  .now {{ display: flex; align-items: center; gap: 12px; padding: 14px 16px; border-radius: 10px; background: #eef2ff; margin-bottom: 24px; }}
  .now .pill {{ font-weight: 700; color: #fff; background: var(--accent); border-radius: 999px; padding: 2px 12px; }}
  .choice {{ display: grid; grid-template-columns: 24px 1fr; gap: 2px 10px; padding: 14px 16px; border: 1px solid var(--line); border-radius: 10px; margin-bottom: 10px; cursor: pointer; }}
  .choice:has(input:checked) {{ border-color: var(--accent); background: #f8f9ff; }}
  .choice:focus-within {{ outline: 2px solid var(--accent); outline-offset: 2px; }}
  .choice input {{ grid-row: span 2; margin-top: 5px; accent-color: var(--accent); }}
  .choice .name {{ font-weight: 600; }}
  .choice .desc {{ color: var(--muted); font-size: 14px; }}
  .badge {{ font-size: 11px; font-weight: 600; text-transform: uppercase; letter-spacing: .04em; color: #8a5300; background: #fff3d6; border-radius: 6px; padding: 1px 6px; margin-left: 6px; }}
  .badge.session {{ color: #1d5c3a; background: #dcf5e6; }}
  button {{ margin-top: 12px; width: 100%; font: inherit; font-weight: 600; color: #fff; background: var(--accent); border: 0; border-radius: 10px; padding: 12px; cursor: pointer; }}
  footer {{ color: var(--muted); font-size: 13px; margin-top: 16px; text-align: center; }}
</style>
</head>
<body>
<main>
  <div class="card">
    <h1>Release channel</h1>
    <p class="lead">Try new releases before everyone else, or stay on the stable one.</p>
    <div class="now">You are on <span class="pill" id="current">{current}</span> <span>{chosen}</span></div>
    <form method="post" action="{action}">
      {options}
      <input type="hidden" name="return_to" value="/">
      <button type="submit">Save my choice</button>
    </form>
  </div>
  <footer>{cookie_note}</footer>
</main>
</body>
</html>
"#,
        action = html_escape(path),
    )
}

/// Serves the channel page (GET and POST); `session` is read for the POSTed form only.
pub async fn channel_page(
    session: &mut ServerSession,
    snapshot: &Snapshot,
    key: &ChannelKey,
    visitor: &Visitor,
) -> Reply {
    let rules = &snapshot.rules;
    let settings = &rules.channels;
    let req = session.req_header();
    match req.method.as_str() {
        "GET" | "HEAD" => {
            let wants_json = req
                .headers
                .get(ACCEPT)
                .and_then(|a| a.to_str().ok())
                .is_some_and(|a| a.contains("application/json"));
            if wants_json {
                return Reply::json(200, &current_json(rules, visitor));
            }
            let days = settings.max_age.as_secs() / 86_400;
            let note = match &settings.domain {
                Some(domain) => format!(
                    "Your choice is kept for {days} days on every site under {}.",
                    html_escape(domain)
                ),
                None => format!("Your choice is kept for {days} days on this site."),
            };
            let html = render_html(rules, visitor, &settings.path, &note);
            Reply::new(200, "text/html; charset=utf-8", html)
        }
        "POST" => {
            let domain = settings.domain.as_deref();
            let origin = req
                .headers
                .get(ORIGIN)
                .map(|o| o.to_str().unwrap_or("null").to_string());
            if let Some(origin) = origin {
                if !url_host(&origin).is_some_and(|h| same_site(h, &visitor.host, domain)) {
                    return Reply::error(403, "cross-site requests may not change the channel");
                }
            }
            let body = match read_body(session, MAX_FORM).await {
                Ok(body) => body,
                Err(e) => return e.reply(),
            };
            let form = form_pairs(&String::from_utf8_lossy(&body));
            let version = form_field(&form, "version").unwrap_or("");
            let return_to = form_field(&form, "return_to").unwrap_or("/");
            let Some(location) = safe_return_to(return_to, &visitor.host, domain) else {
                return Reply::error(403, "return_to must be a page on this site");
            };
            let choice = if version == AUTOMATIC {
                None
            } else {
                let Some(id) = rules.version_id(version) else {
                    return Reply::error(400, "unknown version");
                };
                if !may_choose(rules.version(id), visitor) {
                    return Reply::error(403, "this version cannot be chosen");
                }
                Some(&*rules.version(id).name)
            };
            let cookie = key.set_cookie(settings, choice, visitor.uid.as_deref(), visitor.scheme);
            let body = format!(
                "<!doctype html><title>Channel saved</title><p>Saved. <a href=\"{}\">Continue</a></p>",
                html_escape(location)
            );
            Reply::new(303, "text/html; charset=utf-8", body)
                .with_header(LOCATION, location)
                .with_header(SET_COOKIE, &cookie)
        }
        _ => Reply::error(405, "use GET or POST"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::decide::{Decision, Reason};

    #[test]
    fn versions_with_isolated_cookies_say_they_keep_a_separate_session() {
        let rules = crate::rules::testing::model(
            "versions:\n  stable: {}\n  beta: { selectable: true }\n  dev: { selectable: true, restricted: true, cookies: isolated }\n\
             default: stable\nservices:\n  web:\n    hosts: [\"*\"]\n    groups: { stable: { peers: [\"127.0.0.1:1\"] } }\n",
        )
        .rules;
        let visitor = Visitor {
            decision: Decision {
                version: rules.default,
                rule: None,
                reason: Reason::Default,
            },
            uid: None,
            internal: true,
            channel: None,
            host: "www.example.com".into(),
            balance_key: [0; 8],
            scheme: crate::facts::Scheme::Http,
        };
        let json = current_json(&rules, &visitor);
        let sessions: Vec<(&str, bool)> = json["choices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let separate = c["separate_session"].as_bool().unwrap();
                (c["version"].as_str().unwrap(), separate)
            })
            .collect();
        assert_eq!(sessions, [("beta", false), ("dev", true)]);
        let html = render_html(&rules, &visitor, "/.canary-deployment", "");
        assert_eq!(
            html.matches("keeps a separate session").count(),
            1,
            "{html}"
        );
        assert_eq!(
            html.matches(">separate session</span>").count(),
            1,
            "{html}"
        );
        let dev = html.find(r#"value="dev""#).unwrap();
        assert!(html[dev..].contains("keeps a separate session"), "{html}");
    }

    #[test]
    fn return_to_stays_on_the_site() {
        fn ok(r: &str) -> Option<&str> {
            safe_return_to(r, "www.example.com", Some(".example.com"))
        }
        assert_eq!(ok(""), Some("/"));
        assert_eq!(ok("/shop?x=1"), Some("/shop?x=1"));
        assert_eq!(
            ok("https://www.example.com/a"),
            Some("https://www.example.com/a")
        );
        assert_eq!(
            ok("https://m.example.com/a"),
            Some("https://m.example.com/a")
        );
        for evil in [
            "//evil.com/",
            "https://evil.com/",
            "https://www.example.com.evil.com/",
            "https://evil.com\\@www.example.com/",
            "https://user@evil.com/",
            "javascript:alert(1)",
            "/\\evil.com",
            "/ok\r\nSet-Cookie: x=1",
            "/caf\u{e9}",
            "/a b",
            "evil.com",
        ] {
            assert_eq!(ok(evil), None, "{evil}");
        }
        assert_eq!(
            safe_return_to("https://m.example.com/", "www.example.com", None),
            None
        );
    }

    #[test]
    fn origins() {
        assert!(same_site(
            url_host("https://www.example.com").unwrap(),
            "www.example.com",
            None
        ));
        assert!(same_site(
            url_host("http://www.example.com:8080").unwrap(),
            "www.example.com",
            None
        ));
        assert!(same_site(
            url_host("https://m.example.com").unwrap(),
            "www.example.com",
            Some(".example.com")
        ));
        assert!(!same_site(
            url_host("https://evil.com").unwrap(),
            "www.example.com",
            Some(".example.com")
        ));
        assert!(url_host("null").is_none());
    }
}
