//! The self-service channel page in a real browser: headless Chromium, driven through
//! chromedriver's W3C WebDriver HTTP API (plain HTTP/JSON over loopback, no extra crates).
//!
//! A visitor opens `/.canary-deployment`, sees that they are on `stable`, picks `beta`, saves
//! (a plain HTML form post, no JavaScript on the page) and lands back on `/`, which the beta
//! group now serves because the `follow-channel` rule follows the signed channel cookie.
//!
//! A second visitor shows environment-isolated cookies (SPEC section 15): logged in on stable,
//! they switch to the isolated dev channel, log in there, switch back and forth, and each
//! backend keeps its own session while the other never sees it.
//!
//! A third visitor uses the page over HTTPS (a certificate made by a test CA, which Chromium is
//! told to accept by its public key) and gets a `Secure` channel cookie.
//!
//! `scripts/install-deps.sh test` (run by `make test`) installs Debian's `chromium` and
//! `chromium-driver`; without them the test prints why it is skipped and passes.
//! `GRAYGATE_UPDATE_SCREENSHOT=1 cargo test --test browser` rewrites `docs/channel-page.png`.

mod support;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use support::graygate::Graygate;
use support::Backend;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "chromedriver";

/// The key of a web element reference in WebDriver JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Every wait in this file is bounded by this (the whole test takes a few seconds).
const WAIT: Duration = Duration::from_secs(15);

const SCREENSHOT: &str = "docs/channel-page.png";

fn rules(stable: &Backend, beta: &Backend) -> String {
    format!(
        r#"versions:
  stable: {{}}
  beta: {{ selectable: true, description: "opt-in beta channel" }}
  dev: {{ selectable: true, restricted: true }}
default: stable
channels: {{ cookie: gg_channel, max_age: 30d }}
services:
  web:
    hosts: ["*"]
    path_prefix: /
    groups:
      stable: {{ peers: ["{}"] }}
      beta: {{ peers: ["{}"] }}
rules:
  - {{ name: follow-channel, when: {{ channel: any }}, version: $channel }}
"#,
        stable.addr(),
        beta.addr()
    )
}

/// Why the browser test cannot run here, if it cannot.
fn missing_browser() -> Option<String> {
    let driver = Command::new(CHROMEDRIVER)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !driver {
        return Some(format!("`{CHROMEDRIVER}` is not on PATH"));
    }
    if !Path::new(CHROMIUM).exists() {
        return Some(format!("{CHROMIUM} does not exist"));
    }
    None
}

// ---------------------------------------------------------------------------
// A minimal WebDriver client
// ---------------------------------------------------------------------------

/// One HTTP/1.1 exchange with chromedriver: `(status, JSON body)`.
fn driver_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> io::Result<(u16, Value)> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()?;

    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
    let mut length = None;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(bad("connection closed in the headers".into()));
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse::<usize>().ok();
            }
        }
    }
    let mut bytes = Vec::new();
    match length {
        Some(n) => {
            bytes.resize(n, 0);
            reader.read_exact(&mut bytes)?;
        }
        None => {
            reader.read_to_end(&mut bytes)?;
        }
    }
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| bad(format!("{method} {path}: body is not JSON: {e}")))?
    };
    Ok((status, json))
}

/// chromedriver with one Chromium session. Dropping it ends the session, then kills
/// chromedriver's whole process group (chromedriver and any Chromium it started).
struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: Option<String>,
    /// Chromium's profile directory; removed after the processes are gone.
    profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Browser {
        Self::start_with(&[])
    }

    /// A browser with `extra_args` on Chromium's command line.
    fn start_with(extra_args: &[String]) -> Browser {
        use std::os::unix::process::CommandExt as _;

        // chromedriver binds its port itself and cannot be handed a listener (no option takes
        // an inherited socket), but with `--port=0` the kernel chooses the port at its bind and
        // chromedriver reports it on stdout (see `reported_port`).
        let mut driver = Command::new(CHROMEDRIVER)
            .arg("--port=0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // Its own process group, so Drop can end Chromium's processes with it.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {CHROMEDRIVER}: {e}"));
        let stdout = driver.stdout.take().expect("chromedriver's stdout");
        let (port_tx, port_rx) = mpsc::channel();
        thread::spawn(move || {
            // Read to the end, so chromedriver never blocks on a full pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = reported_port(&line) {
                    let _ = port_tx.send(port);
                }
            }
        });
        let profile = tempfile::Builder::new()
            .prefix("graygate-chromium-")
            .tempdir()
            .expect("chromium profile dir");
        let mut browser = Browser {
            driver,
            // Known once chromedriver reports it; nothing is sent before.
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            session: None,
            profile,
        };

        let deadline = Instant::now() + WAIT;
        let port = loop {
            match port_rx.recv_timeout(Duration::from_millis(50)) {
                Ok(port) => break port,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "{CHROMEDRIVER} closed its stdout without reporting its port (exit: {:?})",
                    browser.driver.try_wait()
                ),
            }
            if let Ok(Some(status)) = browser.driver.try_wait() {
                panic!("{CHROMEDRIVER} exited before it reported its port: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "{CHROMEDRIVER} did not report its port within {WAIT:?} (expected a line \
                 \"ChromeDriver was started successfully on port N.\" on stdout)"
            );
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        browser.addr = addr;

        loop {
            let ready = driver_http(addr, "GET", "/status", None, Duration::from_secs(2))
                .is_ok_and(|(_, v)| v["value"]["ready"] == true);
            if ready {
                break;
            }
            if let Ok(Some(status)) = browser.driver.try_wait() {
                panic!("{CHROMEDRIVER} exited before it was ready: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "{CHROMEDRIVER} on {addr} was not ready within {WAIT:?}"
            );
            thread::sleep(Duration::from_millis(50));
        }

        let user_data_dir = format!("--user-data-dir={}", browser.profile.path().display());
        let mut args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            user_data_dir,
            "--window-size=900,1000".into(),
        ];
        args.extend_from_slice(extra_args);
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "pageLoadStrategy": "normal",
                    "goog:chromeOptions": {
                        "binary": CHROMIUM,
                        "args": args,
                    },
                },
            },
        });
        let created = browser.call("POST", "/session", Some(&capabilities));
        let id = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("new session answered without a sessionId: {created}"))
            .to_string();
        browser.session = Some(id);
        browser.session_call(
            "POST",
            "/timeouts",
            Some(&json!({ "pageLoad": 10_000, "script": 5_000, "implicit": 0 })),
        );
        browser
    }

    /// A WebDriver command; `Err` carries the WebDriver error (or the I/O error).
    fn try_call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
        // Starting Chromium and loading a page are the slowest commands: allow for a busy
        // machine (`cargo test` runs the other test binaries meanwhile).
        match driver_http(self.addr, method, path, body, Duration::from_secs(20)) {
            Ok((200, v)) => Ok(v["value"].clone()),
            Ok((status, v)) => Err(format!("{method} {path}: HTTP {status}: {v}")),
            Err(e) => Err(format!("{method} {path}: {e}")),
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        self.try_call(method, path, body)
            .unwrap_or_else(|e| panic!("WebDriver command failed: {e}"))
    }

    fn session_path(&self, path: &str) -> String {
        let id = self.session.as_deref().expect("no WebDriver session");
        format!("/session/{id}{path}")
    }

    fn session_call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        self.call(method, &self.session_path(path), body)
    }

    fn try_session_call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, String> {
        self.try_call(method, &self.session_path(path), body)
    }

    /// Navigate and wait for the page load.
    fn goto(&self, url: &str) {
        self.session_call("POST", "/url", Some(&json!({ "url": url })));
    }

    fn current_url(&self) -> Result<String, String> {
        self.try_session_call("GET", "/url", None)
            .map(|v| v.as_str().unwrap_or_default().to_string())
    }

    /// The element references matching a CSS selector (possibly none).
    fn try_find_all(&self, css: &str) -> Result<Vec<String>, String> {
        let found = self.try_session_call(
            "POST",
            "/elements",
            Some(&json!({ "using": "css selector", "value": css })),
        )?;
        Ok(found
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e[ELEMENT_KEY].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    fn find_all(&self, css: &str) -> Vec<String> {
        self.try_find_all(css)
            .unwrap_or_else(|e| panic!("WebDriver command failed: {e}"))
    }

    /// The single element matching `css`; panics if there is none or more than one.
    fn find(&self, css: &str) -> String {
        let mut all = self.find_all(css);
        assert_eq!(all.len(), 1, "expected exactly one element for {css:?}");
        all.pop().unwrap()
    }

    /// The rendered text of an element.
    fn try_text(&self, element: &str) -> Result<String, String> {
        self.try_session_call("GET", &format!("/element/{element}/text"), None)
            .map(|v| v.as_str().unwrap_or_default().to_string())
    }

    fn text(&self, css: &str) -> String {
        let element = self.find(css);
        self.try_text(&element)
            .unwrap_or_else(|e| panic!("WebDriver command failed: {e}"))
    }

    /// The text of the page body, `Err` while there is none (for example mid-navigation).
    fn try_body_text(&self) -> Result<String, String> {
        let body = self.try_find_all("body")?;
        let element = body.first().ok_or("no <body> yet")?;
        self.try_text(element)
    }

    fn property(&self, element: &str, name: &str) -> Value {
        self.session_call("GET", &format!("/element/{element}/property/{name}"), None)
    }

    fn is_selected(&self, element: &str) -> bool {
        self.session_call("GET", &format!("/element/{element}/selected"), None)
            .as_bool()
            .expect("element selected: not a boolean")
    }

    fn click(&self, element: &str) {
        self.session_call(
            "POST",
            &format!("/element/{element}/click"),
            Some(&json!({})),
        );
    }

    /// A screenshot of the viewport as PNG bytes.
    fn screenshot(&self) -> Vec<u8> {
        let b64 = self.session_call("GET", "/screenshot", None);
        base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().expect("screenshot: not a string"))
            .expect("screenshot: not base64")
    }

    fn cookie(&self, name: &str) -> Option<Value> {
        self.try_session_call("GET", &format!("/cookie/{name}"), None)
            .ok()
    }

    /// Runs `script` in the page and returns its value.
    fn script(&self, script: &str) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(&json!({ "script": script, "args": [] })),
        )
    }

    /// The cookies the page's scripts see (`document.cookie`: no `HttpOnly` ones), sorted.
    fn document_cookies(&self) -> Vec<String> {
        let all = self.script("return document.cookie;");
        let mut cookies: Vec<String> = all
            .as_str()
            .unwrap_or_default()
            .split("; ")
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect();
        cookies.sort();
        cookies
    }

    /// Picks `version` on the channel page at `page`, saves, and waits until the browser is
    /// back on `home`, served by `served_by`.
    fn choose(&self, page: &str, version: &str, home: &str, served_by: &str) {
        self.goto(page);
        let radio = self.find(&format!("input[type=radio][value={version}]"));
        self.click(&radio);
        self.click(&self.find("button[type=submit]"));
        wait_for(
            &format!("the browser on {home} served by {served_by}"),
            || {
                let url = self.current_url()?;
                if url != home {
                    return Err(format!("the browser is on {url}"));
                }
                let text = self.try_body_text()?;
                if text.trim() != served_by {
                    return Err(format!("the page says {text:?}"));
                }
                Ok(())
            },
        );
    }
}

/// The port in chromedriver's start-up line "ChromeDriver was started successfully on port
/// 43095.", which names the port it bound, also the one the kernel chose for `--port=0`
/// (checked with ChromeDriver 156; a version that printed `0` or no port would fail the wait
/// for it, with a message saying so).
fn reported_port(line: &str) -> Option<u16> {
    line.trim()
        .strip_prefix("ChromeDriver was started successfully on port ")?
        .trim_end_matches('.')
        .parse()
        .ok()
        .filter(|&port| port != 0)
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(id) = self.session.take() {
            // Ends Chromium cleanly; bounded, and the kill below covers a failure.
            let _ = driver_http(
                self.addr,
                "DELETE",
                &format!("/session/{id}"),
                None,
                Duration::from_secs(5),
            );
        }
        // The negative id is chromedriver's process group: chromedriver and its Chromium.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Poll `f` every 50 ms until it returns `Ok`; panic with the last error after [`WAIT`].
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => {
                panic!("timed out after {WAIT:?} waiting for {what}; last: {e}")
            }
            Err(_) => thread::sleep(Duration::from_millis(50)),
        }
    }
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

#[test]
fn choosing_beta_on_the_channel_page_routes_the_browser_to_beta() {
    if let Some(why) = missing_browser() {
        eprintln!(
            "SKIPPED browser test: {why}; `make test` (scripts/install-deps.sh test) installs Debian's chromium and chromium-driver"
        );
        return;
    }
    let started = Instant::now();
    let stable = Backend::start("stable");
    let beta = Backend::start("beta");
    let gg = Graygate::start(&rules(&stable, &beta));
    let origin = format!("http://127.0.0.1:{}", gg.proxy.port());
    let page = format!("{origin}/.canary-deployment");

    let browser = Browser::start();
    browser.goto(&page);
    assert_eq!(
        browser.session_call("GET", "/title", None),
        "Release channel"
    );
    assert_eq!(browser.text("h1"), "Release channel");
    assert_eq!(browser.text("#current"), "stable");

    // Offered: automatic and the selectable beta; dev is restricted and this visitor is not
    // internal; stable is not selectable (automatic is how one gets it).
    let offered: Vec<String> = browser
        .find_all("input[type=radio][name=version]")
        .iter()
        .map(|e| {
            browser
                .property(e, "value")
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(offered, ["automatic", "beta"], "the versions offered");
    assert!(
        browser.find_all("input[value=dev]").is_empty(),
        "the restricted dev version is offered to a visitor who is not internal"
    );
    let automatic = browser.find("input[type=radio][value=automatic]");
    assert!(
        browser.is_selected(&automatic),
        "automatic is checked before any choice"
    );
    let return_to = browser.find("input[type=hidden][name=return_to]");
    assert_eq!(browser.property(&return_to, "value"), "/");
    assert!(
        browser.cookie("gg_channel").is_none(),
        "no channel cookie yet"
    );

    let png = browser.screenshot();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "the screenshot is not a PNG"
    );
    if std::env::var_os("GRAYGATE_UPDATE_SCREENSHOT").is_some_and(|v| v == "1") {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(SCREENSHOT);
        std::fs::create_dir_all(path.parent().unwrap()).expect("create docs/");
        std::fs::write(&path, &png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        eprintln!("wrote {} ({} bytes)", path.display(), png.len());
    }

    // Choose beta and save: a plain form POST, answered 303 to `/`.
    let beta_radio = browser.find("input[type=radio][value=beta]");
    browser.click(&beta_radio);
    assert!(
        browser.is_selected(&beta_radio),
        "beta is checked after the click"
    );
    browser.click(&browser.find("button[type=submit]"));

    let home = format!("{origin}/");
    wait_for("the browser on / served by the beta group", || {
        let url = browser.current_url()?;
        if url != home {
            return Err(format!("the browser is on {url}"));
        }
        let text = browser.try_body_text()?;
        if text.trim() != "beta" {
            return Err(format!("the page says {text:?}"));
        }
        Ok(())
    });
    let cookie = browser
        .cookie("gg_channel")
        .expect("the channel cookie is set after saving");
    assert_eq!(cookie["httpOnly"], true, "gg_channel cookie: {cookie}");
    assert_eq!(cookie["sameSite"], "Lax", "gg_channel cookie: {cookie}");
    assert!(
        beta.requests() >= 1,
        "the beta backend served the page after the choice"
    );

    // The page now shows the choice.
    browser.goto(&page);
    assert_eq!(browser.text("#current"), "beta");
    let beta_radio = browser.find("input[type=radio][value=beta]");
    assert!(
        browser.is_selected(&beta_radio),
        "beta is checked on return"
    );
    let automatic = browser.find("input[type=radio][value=automatic]");
    assert!(
        !browser.is_selected(&automatic),
        "automatic is no longer checked"
    );

    drop(browser);
    eprintln!("browser test took {:?}", started.elapsed());
}

fn isolated_rules(stable: &Backend, dev: &Backend) -> String {
    format!(
        r#"versions:
  stable: {{}}
  dev: {{ selectable: true, restricted: true, cookies: isolated, description: "today's dev build" }}
default: stable
identity: {{ internal: {{ cidrs: [127.0.0.1/32] }} }}
channels: {{ cookie: gg_channel, max_age: 30d }}
services:
  web:
    hosts: ["*"]
    groups:
      stable: {{ peers: ["{}"] }}
      dev: {{ peers: ["{}"] }}
rules:
  - {{ name: follow-channel, when: {{ channel: any }}, version: $channel }}
"#,
        stable.addr(),
        dev.addr()
    )
}

/// The `Cookie` header of the last request for `path` that `backend` got, split into pairs
/// and sorted (a browser orders cookies by path, then age).
fn seen_pairs(backend: &Backend, path: &str) -> Vec<String> {
    let seen = backend.seen_cookies(path);
    let last = seen
        .last()
        .unwrap_or_else(|| panic!("{} got no request for {path}", backend.name()));
    assert!(last.len() <= 1, "several Cookie headers: {last:?}");
    let mut pairs: Vec<String> = last
        .iter()
        .flat_map(|c| c.split("; "))
        .map(str::to_string)
        .collect();
    pairs.sort();
    pairs
}

#[test]
fn isolated_dev_cookies_survive_channel_switches_in_the_browser() {
    if let Some(why) = missing_browser() {
        eprintln!(
            "SKIPPED browser test: {why}; `make test` (scripts/install-deps.sh test) installs Debian's chromium and chromium-driver"
        );
        return;
    }
    let stable = Backend::start("stable");
    let dev = Backend::start("dev");
    for (backend, session, theme) in [(&stable, "stable-1", "light"), (&dev, "dev-1", "dark")] {
        backend.set_cookies_on(
            "/login",
            &[
                &format!("SESSION={session}; Path=/; HttpOnly; SameSite=Lax"),
                &format!("theme={theme}; Path=/"),
            ],
        );
    }
    let gg = Graygate::start(&isolated_rules(&stable, &dev));
    let origin = format!("http://127.0.0.1:{}", gg.proxy.port());
    let (page, home) = (format!("{origin}/.canary-deployment"), format!("{origin}/"));
    let browser = Browser::start();

    // Logged in on stable.
    browser.goto(&format!("{origin}/login"));
    assert_eq!(browser.try_body_text().unwrap_or_default().trim(), "stable");
    assert_eq!(browser.document_cookies(), ["theme=light"]);

    // The page says that dev keeps a separate session; switch to it.
    browser.goto(&page);
    let dev_choice = browser.text("label.choice:has(input[value=dev])");
    assert!(
        dev_choice.contains("keeps a separate session"),
        "the dev choice reads {dev_choice:?}"
    );
    browser.choose(&page, "dev", &home, "dev");
    let channel = browser.cookie("gg_channel").expect("the channel cookie");
    let channel = format!(
        "gg_channel={}",
        channel["value"].as_str().unwrap_or_default()
    );
    assert_eq!(
        seen_pairs(&dev, "/"),
        std::slice::from_ref(&channel),
        "dev sees the channel cookie only, not stable's session"
    );

    // Logged in on dev: the browser keeps dev's cookies apart, HttpOnly included.
    browser.goto(&format!("{origin}/login"));
    assert_eq!(browser.try_body_text().unwrap_or_default().trim(), "dev");
    assert_eq!(
        browser.document_cookies(),
        ["gg.dev.theme=dark", "theme=light"]
    );
    let dev_session = browser
        .cookie("gg.dev.SESSION")
        .expect("dev's session in the browser");
    assert_eq!(dev_session["value"], "dev-1", "{dev_session}");
    assert_eq!(dev_session["httpOnly"], true, "{dev_session}");
    assert_eq!(dev_session["sameSite"], "Lax", "{dev_session}");
    let stable_session = browser.cookie("SESSION").expect("stable's session");
    assert_eq!(stable_session["value"], "stable-1", "{stable_session}");
    browser.goto(&home);
    assert_eq!(
        seen_pairs(&dev, "/"),
        [
            "SESSION=dev-1".to_string(),
            channel.clone(),
            "theme=dark".into()
        ]
    );

    // Back to stable: its session is intact and it sees none of dev's cookies.
    browser.choose(&page, "automatic", &home, "stable");
    assert_eq!(
        seen_pairs(&stable, "/"),
        ["SESSION=stable-1", "theme=light"]
    );
    assert_eq!(
        browser.document_cookies(),
        ["gg.dev.theme=dark", "theme=light"]
    );

    // And dev again: its session is where it was.
    browser.choose(&page, "dev", &home, "dev");
    let channel = browser.cookie("gg_channel").expect("the channel cookie");
    let channel = format!(
        "gg_channel={}",
        channel["value"].as_str().unwrap_or_default()
    );
    assert_eq!(
        seen_pairs(&dev, "/"),
        ["SESSION=dev-1".to_string(), channel, "theme=dark".into()]
    );

    // Neither backend ever saw the other's session, on any request (favicons included).
    let everything = |backend: &Backend| {
        backend
            .seen_requests()
            .iter()
            .flat_map(|r| r.header_all("cookie"))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    assert!(
        !everything(&dev).contains("stable-1"),
        "{}",
        everything(&dev)
    );
    assert!(
        !everything(&stable).contains("dev-1"),
        "{}",
        everything(&stable)
    );
    assert!(
        !everything(&stable).contains("gg."),
        "{}",
        everything(&stable)
    );
    drop(browser);
}

/// Chromium's `--ignore-certificate-errors-spki-list` value for a PEM certificate: the
/// base64 SHA-256 of its SubjectPublicKeyInfo (only that key is accepted, not any).
fn spki_pin(cert_pem: &[u8]) -> String {
    let cert = openssl::x509::X509::from_pem(cert_pem).expect("PEM certificate");
    let spki = cert
        .public_key()
        .and_then(|k| k.public_key_to_der())
        .expect("SubjectPublicKeyInfo");
    base64::engine::general_purpose::STANDARD.encode(openssl::sha::sha256(&spki))
}

#[test]
fn the_channel_page_over_https_sets_a_secure_cookie() {
    if let Some(why) = missing_browser() {
        eprintln!(
            "SKIPPED browser test: {why}; `make test` (scripts/install-deps.sh test) installs Debian's chromium and chromium-driver"
        );
        return;
    }
    let stable = Backend::start("stable");
    let beta = Backend::start("beta");
    let ca = support::certs::TestCa::new();
    let certs = tempfile::tempdir().expect("certs dir");
    let issued = ca.issue(&["localhost"], 11, 30);
    let (cert, key) = issued.write(certs.path(), "localhost");
    let (_gg, https) = Graygate::start_https(&rules(&stable, &beta), &cert, &key);
    let pin = format!(
        "--ignore-certificate-errors-spki-list={}",
        spki_pin(&issued.cert_pem)
    );
    let browser = Browser::start_with(&[pin]);
    let origin = format!("https://localhost:{}", https.port());
    browser.choose(
        &format!("{origin}/.canary-deployment"),
        "beta",
        &format!("{origin}/"),
        "beta",
    );
    let cookie = browser
        .cookie("gg_channel")
        .expect("the channel cookie is set after saving");
    assert_eq!(
        cookie["secure"], true,
        "gg_channel cookie over HTTPS: {cookie}"
    );
    assert_eq!(cookie["httpOnly"], true, "gg_channel cookie: {cookie}");
    let seen = beta.last_request().expect("beta served the browser");
    assert_eq!(seen.header("x-forwarded-proto").as_deref(), Some("https"));
}
