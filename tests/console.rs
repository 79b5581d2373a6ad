//! The console in a real browser: `tierwise serve` as a process, Debian's Chromium driven by
//! its chromedriver (fantoccini, over loopback HTTP). Every page is loaded, the 2,000-account
//! sample uploaded, an account opened from the book table, the key threshold changed by
//! keyboard and the diff seen to change; hostile account names and policy text must show as
//! text; every control must be labelled and reachable with Tab; any browser console error
//! fails the test. Screenshots at 1280x800 go to `target/console-screenshots/`.
//!
//! `./scripts/test` installs `chromium` and `chromium-driver` when they are missing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// The browser's console, through chromedriver's log endpoint (CSP violations, script
/// errors and failed loads all arrive here as `SEVERE`).
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or("")))
    }
    fn method_and_body(&self, _: &url::Url) -> (axum::http::Method, Option<String>) {
        (axum::http::Method::POST, Some(r#"{"type":"browser"}"#.to_string()))
    }
}

/// Kills the process on drop.
struct Driver(std::process::Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start_chromedriver() -> (Driver, String) {
    let port = free_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver did not start");
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(20), "chromedriver never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    (Driver(child), format!("http://127.0.0.1:{port}"))
}

/// The shipped policies plus one whose texts are hostile markup.
fn policies_with_hostile(tmp: &Path) -> PathBuf {
    let dir = tmp.join("policies");
    copy_dir(&root().join("policies"), &dir);
    let hostile = dir.join("hostile");
    copy_dir(&root().join("policies/mid-market"), &hostile);
    let p = hostile.join("policy.toml");
    let text = std::fs::read_to_string(&p).unwrap();
    let text = text.replacen(
        "description = \"",
        "description = \"<script>window.__xss = 'policy'</script>\\\"><img src=x onerror=\\\"window.__xss = 'img'\\\"> ",
        1,
    );
    std::fs::write(&p, text).unwrap();
    dir
}

fn serve(policies: &Path) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tierwise"))
        .args(["serve", "--listen", "127.0.0.1:0", "--decision-log", "off", "--no-watch"])
        .arg("--policies")
        .arg(policies)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (addr, stderr) = listening(&mut child);
    Running { child, addr, stderr }
}

fn screenshots() -> PathBuf {
    // target/debug/tierwise → target/console-screenshots
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_tierwise"));
    let dir = exe.parent().and_then(Path::parent).unwrap().join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.unwrap()
}

/// Polls `cond` (a JS expression) until it is true.
async fn until(c: &Client, cond: &str, what: &str) {
    let t = Instant::now();
    loop {
        if js(c, &format!("return !!({cond});")).await == json!(true) {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn result_seq(c: &Client) -> i64 {
    js(c, "return Number(document.getElementById('result').getAttribute('data-seq') || 0);")
        .await
        .as_i64()
        .unwrap_or(0)
}

/// Fails on any console message of level SEVERE since the last call.
async fn no_console_errors(c: &Client, page: &str) {
    let log = c.issue_cmd(BrowserLog).await.unwrap();
    let bad: Vec<&Value> = log
        .as_array()
        .map(|a| a.iter().filter(|e| e["level"] == "SEVERE").collect())
        .unwrap_or_default();
    assert!(bad.is_empty(), "console errors on the {page} page: {bad:#?}");
}

/// Every control has a name a screen reader reads (a label, aria-label or text) and is in
/// the tab order; then Tab is pressed until focus comes back, and every visible control
/// must have been reached by keyboard alone.
async fn keyboard_and_labels(c: &Client, page: &str) {
    let unlabelled = js(
        c,
        r#"
        const out = [];
        for (const el of document.querySelectorAll('input:not([type=hidden]), select, textarea, button, a[href]')) {
          const named = (el.labels && [...el.labels].some(l => l.textContent.trim() !== ''))
            || (el.getAttribute('aria-label') || '').trim() !== ''
            || el.hasAttribute('aria-labelledby')
            || ((el.tagName === 'BUTTON' || el.tagName === 'A') && el.textContent.trim() !== '');
          if (!named) out.push(el.outerHTML.slice(0, 120));
          if (el.tabIndex < 0) out.push('not tabbable: ' + el.outerHTML.slice(0, 120));
        }
        return out;"#,
    )
    .await;
    assert_eq!(unlabelled, json!([]), "unlabelled or untabbable controls on the {page} page");
    // Visible controls (closed <details> and hidden rows excluded), in document order.
    js(
        c,
        r#"
        window.__controls = [...document.querySelectorAll('input:not([type=hidden]), select, textarea, button, a[href], summary')]
          .filter(el => el.getClientRects().length > 0 && !el.closest('tr[hidden]'))
          // Inside a closed <details> only its summary is reachable until it is opened.
          .filter(el => { const d = el.closest('details'); return !d || d.open || (el.tagName === 'SUMMARY' && el.parentElement === d); });
        window.__reached = new Set();
        document.addEventListener('focusin', e => window.__reached.add(e.target), true);
        document.activeElement && document.activeElement.blur();
        return true;"#,
    )
    .await;
    let total = js(c, "return window.__controls.length;").await.as_u64().unwrap();
    // The book table has two thousand links: Tab through the first stretch of the page.
    let presses = total.min(80) + 2;
    // Tab, pressed on the keyboard (not typed into an element: a file input takes text as a path).
    let mut keys = KeyActions::new("keyboard".into());
    for _ in 0..presses {
        keys = keys
            .then(KeyAction::Down { value: '\u{E004}' })
            .then(KeyAction::Up { value: '\u{E004}' });
    }
    c.perform_actions(keys).await.unwrap();
    let missed = js(
        c,
        &format!(
            "return window.__controls.slice(0, {}).filter(el => !window.__reached.has(el)).map(el => el.outerHTML.slice(0, 100));",
            total.min(80)
        ),
    )
    .await;
    assert_eq!(missed, json!([]), "controls Tab never reached on the {page} page");
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Uploads `file` through the Book page's file input and waits for the book to show.
/// Returns (wall ms from choosing the file to the book on screen, the script's own ms).
async fn upload(c: &Client, file: &Path) -> (f64, f64) {
    let before = result_seq(c).await;
    js(c, "document.getElementById('book-file').value = ''; return true;").await;
    let input = c.find(Locator::Id("book-file")).await.unwrap();
    let t = Instant::now();
    input.send_keys(file.to_str().unwrap()).await.unwrap();
    until(
        c,
        &format!(
            "Number(document.getElementById('result').getAttribute('data-seq') || 0) > {before} && document.querySelector('#result .result[data-kind=book]')"
        ),
        "the book",
    )
    .await;
    let wall = t.elapsed().as_secs_f64() * 1e3;
    let ms = js(c, "return Number(document.getElementById('result').getAttribute('data-ms'));")
        .await
        .as_f64()
        .unwrap_or(f64::NAN);
    (wall, ms)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_real_browser() {
    if !Path::new(CHROMEDRIVER).exists() || !Path::new(CHROMIUM).exists() {
        panic!(
            "the console's browser test needs Debian's chromium and chromium-driver \
             (./scripts/test installs them: apt-get install -y chromium chromium-driver)"
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let server = serve(&policies_with_hostile(tmp.path()));
    let base = format!("http://{}/ui", server.addr);
    let (_driver, driver_url) = start_chromedriver();
    let profile = tmp.path().join("chromium-profile");
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,800",
                format!("--user-data-dir={}", profile.display()),
            ]
        }),
    );
    caps.insert("goog:loggingPrefs".into(), json!({ "browser": "ALL" }));
    let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver_url)
        .await
        .expect("no browser session");
    // A 1280x800 viewport: the window is that plus the browser's own frame.
    c.set_window_size(1280, 800).await.unwrap();
    let frame = js(
        &c,
        "return [window.outerWidth - window.innerWidth, window.outerHeight - window.innerHeight];",
    )
    .await;
    let (fw, fh) = (frame[0].as_u64().unwrap() as u32, frame[1].as_u64().unwrap() as u32);
    c.set_window_size(1280 + fw, 800 + fh).await.unwrap();
    assert_eq!(js(&c, "return [window.innerWidth, window.innerHeight];").await, json!([1280, 800]));

    // Policies: what is loaded, in words; hostile policy text shows as text.
    c.goto(&format!("{base}/policies")).await.unwrap();
    until(&c, "document.querySelector('h1')", "the Policies page").await;
    let text = js(&c, "return document.body.innerText;").await;
    let text = text.as_str().unwrap();
    assert!(text.contains("enterprise") && text.contains("Criteria and weights"), "{text}");
    assert!(
        text.contains("<script>window.__xss = 'policy'</script>\"><img src=x"),
        "hostile text not shown as text"
    );
    assert_eq!(
        js(
            &c,
            "return [document.scripts.length, document.images.length, window.__xss === undefined];"
        )
        .await,
        json!([1, 0, true])
    );
    no_console_errors(&c, "Policies").await;
    keyboard_and_labels(&c, "Policies").await;
    c.goto(&format!("{base}/policies")).await.unwrap();
    shot(&c, "policies").await;

    // Book: a hostile book first; its names show as text on the Book and Account pages.
    c.goto(&format!("{base}/book")).await.unwrap();
    until(&c, "document.getElementById('book-file')", "the Book page").await;
    no_console_errors(&c, "Book").await;
    keyboard_and_labels(&c, "Book").await;
    let sample = root().join("samples/portfolio.csv");
    let csv = std::fs::read_to_string(&sample).unwrap();
    let mut lines = csv.lines();
    let header = lines.next().unwrap();
    let row = lines.next().unwrap();
    let hostile_name =
        "<script>window.__xss='name'</script>\"><img src=x onerror=\"window.__xss='img'\">";
    let cells: Vec<&str> = row.split(',').collect();
    let quoted = format!("\"{}\"", hostile_name.replace('"', "\"\""));
    let hostile_row = format!("{},{quoted},{}", cells[0], cells[2..].join(","));
    let hostile_id_row = format!("<b>x</b>&amp;,{quoted},{}", cells[2..].join(","));
    let hostile_file = tmp.path().join("hostile.csv");
    std::fs::write(&hostile_file, format!("{header}\n{hostile_row}\n{hostile_id_row}\n")).unwrap();
    upload(&c, &hostile_file).await;
    let shown = js(&c, "return [...document.querySelectorAll('#accounts tbody tr')].map(tr => tr.cells[0].innerText + '|' + tr.cells[1].innerText);").await;
    assert_eq!(
        shown,
        json!([format!("{}|{hostile_name}", cells[0]), format!("<b>x</b>&amp;|{hostile_name}")])
    );
    assert_eq!(
        js(
            &c,
            "return [document.scripts.length, document.images.length, window.__xss === undefined];"
        )
        .await,
        json!([1, 0, true])
    );
    // The hostile id opens its own account (the link's query is percent-encoded).
    c.find(Locator::Css("#accounts tbody tr:nth-child(2) a")).await.unwrap().click().await.unwrap();
    until(
        &c,
        "document.querySelector('#result .result[data-kind=account]')",
        "the hostile account",
    )
    .await;
    let h2 = js(&c, "return document.querySelector('#result h2').innerText;").await;
    assert_eq!(h2, json!(format!("{hostile_name} (<b>x</b>&amp;)")));
    assert_eq!(
        js(
            &c,
            "return [document.scripts.length, document.images.length, window.__xss === undefined];"
        )
        .await,
        json!([1, 0, true])
    );
    no_console_errors(&c, "Account (hostile)").await;

    // The 2,000-account sample, uploaded five times: the median time to the book on screen.
    c.goto(&format!("{base}/book")).await.unwrap();
    until(&c, "document.getElementById('book-file')", "the Book page").await;
    let mut walls = Vec::new();
    let mut own = Vec::new();
    for _ in 0..5 {
        let (wall, ms) = upload(&c, &sample).await;
        walls.push(wall);
        own.push(ms);
    }
    let rows = js(&c, "return document.querySelectorAll('#accounts tbody tr').length;").await;
    assert_eq!(rows, json!(1989), "decided accounts in the table");
    // Filters: key accounts only (as many as the table holds rows of that tier).
    let keys =
        js(&c, "return document.querySelectorAll('#accounts tbody tr[data-tier=key]').length;")
            .await;
    let keys = keys.as_u64().unwrap();
    assert!(keys > 0, "no key account in the sample book");
    c.find(Locator::Id("filter-tier")).await.unwrap().select_by_value("key").await.unwrap();
    until(
        &c,
        &format!(
            "document.getElementById('accounts-count').innerText.startsWith('{keys} of 1989')"
        ),
        "the key filter",
    )
    .await;
    c.find(Locator::Id("filter-tier")).await.unwrap().select_by_value("").await.unwrap();
    no_console_errors(&c, "Book").await;
    js(&c, "document.getElementById('result').scrollIntoView(); return true;").await;
    shot(&c, "book").await;
    let (upload_ms, upload_own) = (median(walls.clone()), median(own.clone()));
    eprintln!(
        "console: upload → book median {upload_ms:.0} ms wall ({upload_own:.0} ms in the page's script); runs {walls:?}"
    );

    // Account: opened from the book table; its explanation names the one change that reaches key.
    let id = "acc-0000011";
    c.find(Locator::Css(&format!("#accounts a[href$='id={id}']")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        &c,
        &format!("document.querySelector('#result .result[data-account=\"{id}\"]')"),
        "the account",
    )
    .await;
    let explain = js(&c, "return document.querySelector('.explain').innerText;").await;
    assert!(
        explain
            .as_str()
            .unwrap()
            .contains("revenue_12m ≥ 3,500,000, +3,138,015 from today, adds 1.5 and reaches key"),
        "{explain}"
    );
    assert_eq!(
        js(&c, "return document.querySelectorAll('#result svg[role=img] title').length >= 2;")
            .await,
        json!(true)
    );
    no_console_errors(&c, "Account").await;
    js(&c, "document.getElementById('result').scrollIntoView(); return true;").await;
    shot(&c, "account").await;
    keyboard_and_labels(&c, "Account").await;

    // What-if: the key threshold changed by keyboard, the diff re-rendered each time.
    c.goto(&format!("{base}/whatif")).await.unwrap();
    until(&c, "document.querySelector('#result .result[data-kind=diff]')", "the first diff").await;
    assert_eq!(
        js(&c, "return document.querySelector('#result .result').getAttribute('data-changed');")
            .await,
        json!("0")
    );
    no_console_errors(&c, "What-if").await;
    keyboard_and_labels(&c, "What-if").await;
    let field = c.find(Locator::Css("input[name='o:tiers.key.min_score']")).await.unwrap();
    let mut times = Vec::new();
    let mut changed = Vec::new();
    for value in ["7", "6.5", "7.5", "6.8", "7.2"] {
        field.click().await.unwrap();
        let before = result_seq(&c).await;
        // Ctrl+A, then the value: typed like a person, each key an input event.
        field.send_keys("\u{E009}a\u{E000}").await.unwrap();
        let t = Instant::now();
        field.send_keys(value).await.unwrap();
        until(
            &c,
            &format!(
                "Number(document.getElementById('result').getAttribute('data-seq') || 0) > {before} && !document.getElementById('result').hasAttribute('aria-busy') && document.querySelector('#result .result[data-kind=diff]')"
            ),
            "the diff",
        )
        .await;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        changed.push(
            js(
                &c,
                "return document.querySelector('#result .result').getAttribute('data-changed');",
            )
            .await,
        );
    }
    assert!(changed.iter().all(|c| c != "0"), "a key threshold change moved nobody: {changed:?}");
    assert_ne!(changed[0], changed[1], "the diff did not change with the threshold: {changed:?}");
    let headline = js(&c, "return document.querySelector('.headline').innerText;").await;
    assert!(headline.as_str().unwrap().starts_with("this change promotes"), "{headline}");
    // Copy as markdown.
    c.find(Locator::Css("button[data-copy]")).await.unwrap().click().await.unwrap();
    until(&c, "['Copied.', 'Selected: press Ctrl+C to copy.'].includes(document.querySelector('.copied').innerText)", "the copy").await;
    no_console_errors(&c, "What-if").await;
    js(&c, "document.activeElement.blur(); window.scrollTo(0, 0); return true;").await;
    shot(&c, "whatif").await;
    let override_ms = median(times.clone());
    eprintln!(
        "console: override → diff median {override_ms:.0} ms (typing to diff on screen); runs {times:?}"
    );

    // The file edited in place: a typo shows at its line.
    c.find(Locator::Css("details summary")).await.unwrap().click().await.unwrap();
    let area = c.find(Locator::Id("policy-toml")).await.unwrap();
    area.click().await.unwrap();
    let before = result_seq(&c).await;
    area.send_keys("\u{E009}\u{E010}\u{E000}\nbogus_key = 1\n").await.unwrap();
    until(
        &c,
        &format!("Number(document.getElementById('result').getAttribute('data-seq') || 0) > {before} && document.querySelector('#result [data-code=candidate_invalid] ol.source li.bad')"),
        "the diagnostics",
    )
    .await;
    no_console_errors(&c, "What-if (diagnostics)").await;

    // Backtest.
    c.goto(&format!("{base}/backtest")).await.unwrap();
    until(&c, "document.querySelector('h1')", "the Backtest page").await;
    no_console_errors(&c, "Backtest").await;
    keyboard_and_labels(&c, "Backtest").await;
    shot(&c, "backtest").await;

    c.close().await.unwrap();
    // Generous bounds for a debug build on a shared machine; the figures are printed above.
    assert!(upload_ms < 5000.0, "upload → book median {upload_ms} ms");
    assert!(override_ms < 5000.0, "override → diff median {override_ms} ms");
}

// ---------------------------------------------------------------------------------------------
// The same pages through the router (no socket, no browser): structure snapshots, escaping,
// headers, downloads, `--console off`, `?explain=full`.

mod pages {
    use super::common::*;
    use axum::Router;
    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use http_body_util::BodyExt;
    use std::sync::Arc;
    use tierwise::decision_log::DecisionLog;
    use tierwise::http::{self, App, Config};
    use tierwise::script::Limits;
    use tierwise::service::Service;
    use tower::ServiceExt;

    pub struct Answer {
        pub status: StatusCode,
        pub headers: axum::http::HeaderMap,
        pub body: String,
    }

    pub fn router_with(config: Config) -> (tempfile::TempDir, Router) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = super::policies_with_hostile(tmp.path());
        let service = Arc::new(Service::new(&dir, Limits::default(), None));
        service.reload();
        let app = App::new(service, config, DecisionLog::to_writer(Box::new(Captured::default())));
        (tmp, http::app(app))
    }

    pub fn router() -> (tempfile::TempDir, Router) {
        router_with(Config::default())
    }

    pub async fn send(r: &Router, req: Request<Body>) -> Answer {
        let res = r.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await.unwrap().to_bytes().to_vec();
        Answer { status, headers, body: String::from_utf8(body).unwrap() }
    }

    pub async fn get(r: &Router, path: &str) -> Answer {
        send(r, Request::get(path).body(Body::empty()).unwrap()).await
    }

    /// A form post as the page's script sends it (`x-console: fragment`: the result only).
    pub async fn post(r: &Router, path: &str, pairs: &[(&str, &str)]) -> Answer {
        let body =
            url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish();
        let req = Request::post(path)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header("x-console", "fragment")
            .body(Body::from(body))
            .unwrap();
        send(r, req).await
    }

    pub fn sample() -> String {
        std::fs::read_to_string(root().join("samples/portfolio.csv")).unwrap()
    }

    /// The text of an HTML fragment: tags dropped, entities of maud's escaping undone,
    /// whitespace collapsed.
    pub fn text(html: &str) -> String {
        let mut out = String::new();
        let mut in_tag = false;
        for ch in html.chars() {
            match ch {
                '<' => {
                    in_tag = true;
                    out.push(' ');
                }
                '>' if in_tag => in_tag = false,
                c if !in_tag => out.push(c),
                _ => {}
            }
        }
        let out = out
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&amp;", "&");
        out.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// The part of `html` from the element that opens with `start` to its end (same tag).
    pub fn fragment<'a>(html: &'a str, start: &str) -> &'a str {
        let i = html.find(start).unwrap_or_else(|| panic!("no `{start}` in the page"));
        let tag: String = start[1..].chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
        let (open, close) = (format!("<{tag}"), format!("</{tag}>"));
        let mut depth = 0;
        let mut k = i;
        while k < html.len() {
            if html[k..].starts_with(&close) {
                depth -= 1;
                if depth == 0 {
                    return &html[i..k + close.len()];
                }
                k += close.len();
            } else if html[k..].starts_with(&open) {
                depth += 1;
                k += open.len();
            } else {
                k += html[k..].chars().next().map_or(1, char::len_utf8);
            }
        }
        &html[i..]
    }

    /// A page's structure, one line per element a person or a screen reader navigates by:
    /// headings, landmarks, forms and their labelled controls, charts with their text
    /// alternatives, tables by caption. Hashes and times redacted.
    pub fn outline(html: &str) -> String {
        let mut lines = Vec::new();
        let mut rest = html;
        while let Some(i) = rest.find('<') {
            rest = &rest[i + 1..];
            let end = rest.find('>').unwrap_or(rest.len());
            let tag_text = &rest[..end];
            let name: String = tag_text.chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
            let attr = |a: &str| {
                tag_text.find(&format!(" {a}=\"")).map(|p| {
                    let v = &tag_text[p + a.len() + 3..];
                    v[..v.find('"').unwrap_or(v.len())].to_string()
                })
            };
            let inner = || {
                let close = format!("</{name}>");
                let body = &rest[end + 1..];
                text(&body[..body.find(&close).unwrap_or(0)])
            };
            let line = match name.as_str() {
                "h1" | "h2" | "h3" | "caption" | "legend" | "summary" | "figcaption" => {
                    Some(format!("{name}: {}", inner()))
                }
                "nav" | "main" | "section" | "form" | "fieldset" | "table" | "figure" => {
                    let mut l = name.clone();
                    for a in
                        ["id", "action", "aria-label", "aria-labelledby", "aria-live", "data-fetch"]
                    {
                        if let Some(v) = attr(a) {
                            l.push_str(&format!(" {a}={v}"));
                        }
                    }
                    Some(l)
                }
                "label" => {
                    Some(format!("label for={}: {}", attr("for").unwrap_or_default(), inner()))
                }
                "input" | "select" | "textarea" => Some(format!(
                    "{name} id={} name={} type={}",
                    attr("id").unwrap_or_default(),
                    attr("name").unwrap_or_default(),
                    attr("type").unwrap_or_default()
                )),
                "button" => Some(format!("button: {}", inner())),
                "svg" => Some(format!(
                    "svg id={} role={}",
                    attr("id").unwrap_or_default(),
                    attr("role").unwrap_or_default()
                )),
                "title" | "desc"
                    if lines.last().is_some_and(|l: &String| {
                        l.starts_with("svg") || l.starts_with("  title")
                    }) =>
                {
                    Some(format!("  {name}: {}", inner()))
                }
                _ => None,
            };
            if let Some(l) = line {
                lines.push(l);
            }
        }
        redact(&lines.join("\n"))
    }

    /// Hashes (12 or 64 hex digits) and RFC 3339 times out of a snapshot.
    pub fn redact(s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            let hex = b[i..]
                .iter()
                .take_while(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
                .count();
            let boundary = i == 0 || !b[i - 1].is_ascii_alphanumeric();
            if boundary && (hex == 64 || hex == 12) && b[i..i + hex].iter().any(u8::is_ascii_digit)
            {
                out.push_str("[hash]");
                i += hex;
                continue;
            }
            if boundary
                && s[i..].len() >= 24
                && b[i..i + 4].iter().all(u8::is_ascii_digit)
                && s[i..].get(4..5) == Some("-")
                && s[i..].get(10..11) == Some("T")
            {
                out.push_str("[time]");
                i += 24;
                continue;
            }
            let ch = s[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
        out
    }
}

#[tokio::test]
async fn every_page_has_its_structure() {
    let (_tmp, r) = pages::router();
    for page in ["policies", "book", "account?id=acc-0000011", "whatif", "backtest"] {
        let a = pages::get(&r, &format!("/ui/{page}")).await;
        assert_eq!(a.status, 200, "{page}");
        let name = page.split('?').next().unwrap();
        let outline = pages::outline(&a.body);
        // The policy text itself (long, and covered by its own snapshot) is not the structure.
        insta::assert_snapshot!(format!("console_page_{name}"), outline);
    }
}

#[tokio::test]
async fn console_answers_carry_a_strict_policy_and_no_inline_script() {
    let (_tmp, r) = pages::router();
    for path in ["/ui/", "/ui/policies", "/ui/book", "/ui/whatif", "/ui/assets/console.js"] {
        let a = pages::get(&r, path).await;
        assert_eq!(a.status, 200, "{path}");
        let csp = a.headers.get(header_name("content-security-policy")).unwrap().to_str().unwrap();
        assert_eq!(csp, tierwise::http::CONSOLE_CSP);
        assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(a.headers.get(header_name("x-content-type-options")).unwrap(), "nosniff");
        assert_eq!(a.headers.get(header_name("x-frame-options")).unwrap(), "DENY");
        if path != "/ui/assets/console.js" {
            assert_eq!(a.headers.get(header_name("cache-control")).unwrap(), "no-store");
            // One script, from a file; no inline script, no inline style, no event handler.
            assert_eq!(a.body.matches("<script").count(), 1, "{path}");
            assert!(a.body.contains("<script src=\"assets/console.js\" defer></script>"));
            assert!(
                !a.body.contains(" style=")
                    && !a.body.contains("<style")
                    && !a.body.contains(" onclick="),
                "{path}"
            );
        }
    }
    assert_eq!(pages::get(&r, "/ui").await.status, 308);
}

fn header_name(n: &'static str) -> axum::http::HeaderName {
    axum::http::HeaderName::from_static(n)
}

#[tokio::test]
async fn console_off_leaves_the_api() {
    let (_tmp, r) =
        pages::router_with(tierwise::http::Config { console: false, ..Default::default() });
    assert_eq!(pages::get(&r, "/ui/").await.status, 404);
    assert_eq!(pages::get(&r, "/ui/book").await.status, 404);
    assert_eq!(pages::get(&r, "/v1/policies").await.status, 200);
}

#[tokio::test]
async fn the_book_is_decided_and_charted_with_text_alternatives() {
    let (_tmp, r) = pages::router();
    let book = pages::sample();
    let a = pages::post(&r, "/ui/book", &[("policy", "enterprise"), ("book", &book)]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        a.body.starts_with("<div class=\"result\" data-kind=\"book\""),
        "a fragment, not a page"
    );
    let summary: Vec<String> = a
        .body
        .match_indices("<p class=\"summary\">")
        .map(|(i, _)| pages::text(pages::fragment(&a.body[i..], "<p")))
        .collect();
    let charts: Vec<String> = ["chart-tiers-desc", "chart-managers-desc"]
        .iter()
        .map(|id| pages::text(pages::fragment(&a.body, &format!("<desc id=\"{id}\""))))
        .collect();
    let alerts = pages::text(pages::fragment(&a.body, "<ul class=\"alerts\""));
    insta::assert_snapshot!(pages::redact(&format!(
        "{}\n\n{}\n\n{alerts}",
        summary.join("\n"),
        charts.join("\n")
    )));
    assert_eq!(a.body.matches("<tr data-tier=").count(), 1989);
    // JSON lines give the same book.
    let jsonl = std::fs::read_to_string(root().join("samples/portfolio.jsonl")).unwrap();
    let b = pages::post(&r, "/ui/book", &[("book", &jsonl)]).await;
    assert_eq!(pages::text(pages::fragment(&b.body, "<p class=\"summary\"")), summary[0]);
}

#[tokio::test]
async fn an_account_is_explained_in_business_terms() {
    let (_tmp, r) = pages::router();
    let book = pages::sample();
    let a = pages::post(
        &r,
        "/ui/account",
        &[("policy", "enterprise"), ("id", "acc-0000011"), ("book", &book)],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let explain = pages::text(pages::fragment(&a.body, "<section class=\"explain\""));
    let facts = pages::text(pages::fragment(&a.body, "<dl class=\"facts\""));
    let criteria = pages::text(pages::fragment(&a.body, "<desc id=\"chart-criteria-desc\""));
    insta::assert_snapshot!(pages::redact(&format!("{facts}\n\n{explain}\n\n{criteria}")));
    // A held account names what holds it.
    let held = pages::post(&r, "/ui/account", &[("id", "acc-0000035"), ("book", &book)]).await;
    let explain = pages::text(pages::fragment(&held.body, "<section class=\"explain\""));
    assert!(explain.contains("the demote margin keeps it in key"), "{explain}");
    // An id the book does not hold.
    let none = pages::post(&r, "/ui/account", &[("id", "nobody"), ("book", &book)]).await;
    assert_eq!(none.status, 404);
    assert!(none.body.contains("no account `nobody` in this book"), "{}", none.body);
}

#[tokio::test]
async fn hostile_names_are_text() {
    let (_tmp, r) = pages::router();
    let name = "<script>alert(1)</script>\"><img src=x onerror=alert(2)>";
    let book = format!(
        "id,name,as_of,revenue_12m,potential,gross_margin,relationship,strategic_fit\n\"{}\",\"{}\",2026-11-01,100,100,0.1,tactical,1\n",
        name.replace('"', "\"\""),
        name.replace('"', "\"\"")
    );
    let a = pages::post(&r, "/ui/book", &[("book", &book)]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(!a.body.contains("<script") && !a.body.contains("<img"), "{}", a.body);
    assert!(a.body.contains(
        "&lt;script&gt;alert(1)&lt;/script&gt;&quot;&gt;&lt;img src=x onerror=alert(2)&gt;"
    ));
    // The link to the account percent-encodes the id.
    assert!(
        a.body.contains("id=%3Cscript%3Ealert%281%29%3C%2Fscript%3E%22%3E%3Cimg"),
        "{}",
        a.body
    );
    let acc = pages::post(&r, "/ui/account", &[("id", name), ("book", &book)]).await;
    assert_eq!(acc.status, 200, "{}", acc.body);
    assert!(!acc.body.contains("<script") && !acc.body.contains("<img"), "{}", acc.body);
    // Hostile policy text on the Policies page.
    let p = pages::get(&r, "/ui/policies").await;
    assert_eq!(p.body.matches("<script").count(), 1);
    assert!(!p.body.contains("<img"));
    assert!(p.body.contains("&lt;script&gt;window.__xss = 'policy'&lt;/script&gt;"));
}

#[tokio::test]
async fn what_if_shows_the_diff_of_a_threshold() {
    let (_tmp, r) = pages::router();
    let book = pages::sample();
    let none = pages::post(&r, "/ui/whatif", &[("policy", "enterprise"), ("book", &book)]).await;
    assert!(none.body.contains("data-changed=\"0\""), "{}", none.body);
    let a = pages::post(
        &r,
        "/ui/whatif",
        &[("policy", "enterprise"), ("o:tiers.key.min_score", "7.0"), ("book", &book)],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let headline = pages::text(pages::fragment(&a.body, "<p class=\"headline\""));
    let facts = pages::text(pages::fragment(&a.body, "<dl class=\"facts\""));
    let matrix = pages::text(pages::fragment(&a.body, "<desc id=\"chart-transitions-desc\""));
    let tiers = pages::text(pages::fragment(&a.body, "<desc id=\"chart-before-after-desc\""));
    insta::assert_snapshot!(pages::redact(&format!(
        "{headline}\n\n{facts}\n\n{matrix}\n\n{tiers}"
    )));
    let md = pages::fragment(&a.body, "<textarea id=\"markdown\"");
    assert!(md.contains("tiers.key.min_score=7.0"), "{md}");
    // A threshold inside a condition: the nps_drop alert's 20-point fall, made 10.
    let fields = pages::get(&r, "/ui/whatif").await;
    assert!(pages::text(&fields.body).contains("alert nps_drop: nps_prev - nps >= 20"));
    let b = pages::post(&r, "/ui/whatif", &[("w:0:0", "10"), ("book", &book)]).await;
    assert!(b.body.contains("alerts.nps_drop.when=&quot;nps != () &amp;&amp; nps_prev != () &amp;&amp; nps_prev - nps &gt;= 10&quot;"), "{}", b.body);
    assert!(
        pages::text(&b.body).contains("nps_drop : +213 account(s)"),
        "{}",
        pages::text(&b.body)
    );
    // Code is not a threshold: a value that is not a number changes nothing.
    let c = pages::post(&r, "/ui/whatif", &[("w:0:0", "1 || true"), ("book", &book)]).await;
    assert!(c.body.contains("data-changed=\"0\""), "{}", c.body);
}

#[tokio::test]
async fn an_edited_file_shows_its_problems_at_their_lines() {
    let (_tmp, r) = pages::router();
    let text = std::fs::read_to_string(root().join("policies/enterprise/policy.toml")).unwrap();
    let broken = text.replacen("min_score = 6.0", "min_score = \"six\"", 1).replace('\n', "\r\n");
    let a = pages::post(&r, "/ui/whatif", &[("policy_toml", &broken), ("book", &pages::sample())])
        .await;
    assert_eq!(a.status, 200);
    insta::assert_snapshot!(pages::text(&a.body));
    assert!(a.body.contains("<li value=\"112\" class=\"bad\">"), "{}", a.body);
}

#[tokio::test]
async fn the_downloaded_policy_keeps_its_comments() {
    let (_tmp, r) = pages::router();
    let a = pages::post(
        &r,
        "/ui/whatif/policy.toml",
        &[("o:tiers.key.min_score", "7.0"), ("o:capacity.per_manager.max", "20"), ("w:1:0", "60")],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.headers.get(header_name("content-disposition")).unwrap(),
        "attachment; filename=\"policy.toml\""
    );
    let before = std::fs::read_to_string(root().join("policies/enterprise/policy.toml")).unwrap();
    let changed: Vec<(&str, &str)> =
        before.lines().zip(a.body.lines()).filter(|(x, y)| x != y).collect();
    insta::assert_debug_snapshot!(changed);
    assert_eq!(before.lines().count(), a.body.lines().count());
    // A path the policy does not have is refused with a "did you mean" (the --set path's).
    let bad = pages::post(
        &r,
        "/ui/whatif",
        &[("policy_toml", &before.replacen("[capacity]", "[capacity_]", 1))],
    )
    .await;
    assert!(bad.body.contains("candidate_invalid"), "{}", bad.body);
}

#[tokio::test]
async fn books_over_the_body_limit_are_refused() {
    let (_tmp, r) =
        pages::router_with(tierwise::http::Config { body_limit: 64 * 1024, ..Default::default() });
    let a = pages::post(&r, "/ui/book", &[("book", &pages::sample())]).await;
    assert_eq!(a.status, 413);
}

#[tokio::test]
async fn evaluate_explains_on_request() {
    let (_tmp, r) = pages::router();
    let jsonl = std::fs::read_to_string(root().join("samples/portfolio.jsonl")).unwrap();
    let accounts: Vec<serde_json::Value> = jsonl
        .lines()
        .filter(|l| l.contains("\"acc-0000011\"") || l.contains("\"acc-0000035\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let body = json!({ "accounts": accounts }).to_string();
    let req = |q: &str| {
        axum::http::Request::post(format!("/v1/evaluate{q}"))
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body.clone()))
            .unwrap()
    };
    let plain = pages::send(&r, req("")).await;
    let full = pages::send(&r, req("?explain=full")).await;
    assert_eq!(full.status, 200, "{}", full.body);
    let p: Value = serde_json::from_str(&plain.body).unwrap();
    let mut f: Value = serde_json::from_str(&full.body).unwrap();
    let explanations: Vec<Value> = f["accounts"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .map(|a| a.as_object_mut().unwrap().remove("explanation").unwrap())
        .collect();
    // Without the explanations, the same decisions.
    assert_eq!(p["accounts"], f["accounts"]);
    insta::assert_json_snapshot!(explanations);
    let bad = pages::send(&r, req("?explain=yes")).await;
    assert_eq!(bad.status, 422);
}
