//! The operators' console (issue 21, docs/console.md): its guards against a tenant and a
//! forged form, over plain HTTP; then the pages in Debian's Chromium through chromedriver,
//! as a person uses them (log in by keyboard, read the spend, create and revoke a key, see
//! a budget alert), with a screenshot of every page.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{ClientBuilder, Locator};
use serde_json::{json, Value};

use super::*;

/// The read-only console key of these stacks.
const CONSOLE_KEY: &str = "sk-test-console-reader";

fn with_console(config: &mut sluice_ingress::Config) {
    config.console.listen = Some("127.0.0.1:0".into());
    config.console.key_sha256 = Some(sluice_ingress::auth::hex_digest(CONSOLE_KEY));
}

/// A client that shows redirects and keeps no cookies (each test carries its own).
fn plain_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Logs in with `key`: (status, the session cookie pair if one was set).
async fn login(http: &reqwest::Client, console: &str, key: &str) -> (u16, Option<String>) {
    let answer = http
        .post(format!("{console}/console/login"))
        .form(&[("key", key)])
        .send()
        .await
        .unwrap();
    let cookie = answer
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_string);
    (answer.status().as_u16(), cookie)
}

async fn page(http: &reqwest::Client, url: &str, cookie: &str) -> (u16, String) {
    let answer = http.get(url).header("cookie", cookie).send().await.unwrap();
    (answer.status().as_u16(), answer.text().await.unwrap())
}

/// The session's CSRF token, as its pages carry it.
fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    html[at..at + 64].to_string()
}

async fn post_form(
    http: &reqwest::Client,
    url: &str,
    cookie: &str,
    origin: Option<&str>,
    form: &[(&str, &str)],
) -> (u16, String) {
    let mut request = http.post(url).header("cookie", cookie).form(form);
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    let answer = request.send().await.unwrap();
    (answer.status().as_u16(), answer.text().await.unwrap())
}

async fn admin_key_count(stack: &Stack) -> usize {
    let (status, body) = stack.get("/admin/keys?team=team-a", ADMIN_KEY).await;
    assert_eq!(status, 200, "{body}");
    body["data"].as_array().map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_holds_against_a_tenant_a_reader_and_a_forged_form() {
    let stack = Stack::start(StackOptions {
        worker: false,
        ingress_config: Some(with_console),
        ..StackOptions::default()
    })
    .await;
    let console = stack.console.clone().expect("the console listens");
    let http = plain_client();

    // Not on the tenants' listener at all.
    for path in ["/console", "/console/login", "/console/keys"] {
        let answer = http
            .get(format!("{}{path}", stack.base))
            .send()
            .await
            .unwrap();
        assert_eq!(
            answer.status().as_u16(),
            404,
            "{path} on the tenant listener"
        );
    }
    // No session: every page sends to the login.
    for path in [
        "/console",
        "/console/keys",
        "/console/audit",
        "/console/backlog",
    ] {
        let answer = http.get(format!("{console}{path}")).send().await.unwrap();
        assert_eq!(answer.status().as_u16(), 303, "{path}");
        assert_eq!(answer.headers()["location"], "/console/login");
    }
    let forged = "sluice_console=".to_string() + &"ab".repeat(32);
    assert_eq!(
        page(&http, &format!("{console}/console"), &forged).await.0,
        303
    );

    // A tenant's key is no console key.
    let (status, cookie) = login(&http, &console, KEY_A).await;
    assert_eq!((status, cookie), (401, None));

    // The reader sees pages, with the security headers, and changes nothing.
    let (status, reader) = login(&http, &console, CONSOLE_KEY).await;
    assert_eq!(status, 303);
    let reader = reader.expect("a session cookie");
    let answer = http
        .get(format!("{console}/console/keys"))
        .header("cookie", &reader)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    let csp = answer.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let html = answer.text().await.unwrap();
    assert!(html.contains("Logged in: read-only"), "{html}");
    assert!(!html.contains("Create key"), "a reader gets no create form");
    let reader_csrf = csrf_of(&html);
    let before = admin_key_count(&stack).await;
    let (status, body) = post_form(
        &http,
        &format!("{console}/console/keys"),
        &reader,
        None,
        &[("csrf", &reader_csrf), ("team", "team-a")],
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("only reads"), "{body}");

    // The admin, but with a missing, a stranger's, or a cross-site token: refused.
    let (_, admin) = login(&http, &console, ADMIN_KEY).await;
    let admin = admin.expect("a session cookie");
    let (_, html) = page(&http, &format!("{console}/console/keys"), &admin).await;
    assert!(html.contains("Logged in: admin") && html.contains("Create key"));
    let csrf = csrf_of(&html);
    assert_ne!(csrf, reader_csrf);
    let url = format!("{console}/console/keys");
    for (token, origin) in [
        ("", None),
        (reader_csrf.as_str(), None),
        (csrf.as_str(), Some("http://evil.example")),
    ] {
        let (status, body) = post_form(
            &http,
            &url,
            &admin,
            origin,
            &[("csrf", token), ("team", "team-a")],
        )
        .await;
        assert_eq!(status, 403, "token {token:?} origin {origin:?}: {body}");
    }
    assert_eq!(
        admin_key_count(&stack).await,
        before,
        "no refused change made a key"
    );

    // The admin's real form: a key with a hostile label, shown escaped, that works.
    let label = "<script>alert(1)</script>";
    let (status, html) = post_form(
        &http,
        &url,
        &admin,
        Some(&console),
        &[("csrf", &csrf), ("team", "team-a"), ("label", label)],
    )
    .await;
    assert_eq!(status, 200, "{html}");
    assert!(!html.contains(label) && html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    let at = html.find("id=\"secret\">").expect("the new secret") + 12;
    let secret = html[at..].split('<').next().unwrap().to_string();
    let key_id = html[html.find("Created ").unwrap() + 8..]
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(admin_key_count(&stack).await, before + 1);
    assert_eq!(
        stack.get("/v1/models", &secret).await.0,
        200,
        "the new key works"
    );
    // A team name the API refuses is refused here too, in words.
    let (status, body) = post_form(
        &http,
        &url,
        &admin,
        None,
        &[("csrf", &csrf), ("team", "no spaces")],
    )
    .await;
    assert_eq!(status, 400, "{body}");

    // Rotated from the console: a new secret, and the old one stops working.
    let (status, html) = post_form(
        &http,
        &format!("{console}/console/keys/{key_id}/rotate"),
        &admin,
        None,
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(status, 200, "{html}");
    let at = html.find("id=\"secret\">").expect("the rotated secret") + 12;
    let rotated = html[at..].split('<').next().unwrap().to_string();
    assert_ne!(rotated, secret);
    assert_eq!(
        stack.get("/v1/models", &secret).await.0,
        401,
        "the old secret"
    );
    assert_eq!(
        stack.get("/v1/models", &rotated).await.0,
        200,
        "the new secret"
    );
    let secret = rotated;

    // Revoked from the console: the key stops working.
    let (status, html) = post_form(
        &http,
        &format!("{console}/console/keys/{key_id}/revoke"),
        &admin,
        None,
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains(&format!("Revoked {key_id}.")));
    assert_eq!(stack.get("/v1/models", &secret).await.0, 401, "revoked");

    // The backlog: three async requests wait on the standard topic (no worker here).
    stack.submit_many(3, KEY_B).await;
    let (status, html) = page(&http, &format!("{console}/console/backlog"), &admin).await;
    assert_eq!(status, 200, "{html}");
    let row = &html[html.find("data-name=\"standard\"").expect("a standard row")..];
    let cell = &row[row.find("records\">").unwrap() + 9..];
    assert_eq!(cell.split('<').next(), Some("3"), "{html}");

    // Bad parameters are a 400 page, not a query.
    for path in [
        "/console?period=1y",
        "/console?by=team%3B%20DROP%20TABLE%20usage",
        "/console?color=red",
        &format!("/console/audit?team={}", "x".repeat(129)),
        "/console/audit?action=deleted",
    ] {
        let (status, body) = page(&http, &format!("{console}{path}"), &admin).await;
        assert_eq!(status, 400, "{path}: {body}");
    }
    // A filter value is bound, never spliced: a quote finds nothing and breaks nothing.
    let (status, body) = page(
        &http,
        &format!("{console}/console/audit?team=a'%20OR%20'1'='1"),
        &admin,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("No events match."), "{body}");

    // Logging out ends the session (and needs its token too).
    let (status, _) = post_form(
        &http,
        &format!("{console}/console/logout"),
        &admin,
        None,
        &[],
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = post_form(
        &http,
        &format!("{console}/console/logout"),
        &admin,
        None,
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(status, 303);
    assert_eq!(
        page(&http, &format!("{console}/console"), &admin).await.0,
        303
    );
    stack.stop().await;
}

/// chromedriver on a free port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn chromedriver() -> Driver {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (Debian's chromium-driver; .ci/run installs it)");
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let up = eventually(Duration::from_secs(20), || {
        let request = http.get(format!("{url}/status"));
        async move {
            request
                .send()
                .await
                .ok()
                .filter(|a| a.status().is_success())
        }
    })
    .await;
    assert!(up.is_some(), "chromedriver did not start");
    Driver { child, url }
}

async fn browser(driver: &Driver) -> fantoccini::Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            // Headless and closed off: no sandbox (CI runs as root), no network of its own.
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-quic", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--window-size=1280,900"],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn text_of(b: &fantoccini::Client, css: &str) -> String {
    b.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap()
}

/// `nanos` as the console prints money.
fn usd(nanos: i64) -> String {
    let micros = (nanos + 500) / 1000;
    format!("${}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_in_a_browser_shows_spend_to_the_cent_changes_keys_and_alerts() {
    let stack = Stack::start(StackOptions {
        ingress_config: Some(with_console),
        budget_toml: "[[budgets]]\nscope = \"team\"\nsubject = \"team-a\"\nperiod = \"day\"\n\
                      limit_usd = 0.001\nalert_at = [0.01, 0.9]\n"
            .into(),
        ..StackOptions::default()
    })
    .await;
    let console = stack.console.clone().expect("the console listens");
    // Spend for two teams, team-a past its 1% alert.
    for (i, key) in [KEY_A, KEY_A, KEY_A, KEY_A, KEY_B, KEY_B]
        .iter()
        .enumerate()
    {
        let mut body = chat(&format!("console question {i}"));
        body["max_tokens"] = json!(16);
        let (status, answer) = stack.post("/v1/chat/completions", key, body).await;
        assert_eq!(status, 200, "{answer}");
    }
    // And a batch of three lines, answered.
    let lines: Vec<String> = (0..3)
        .map(|i| {
            json!({"custom_id": format!("c-{i}"), "method": "POST", "url": "/v1/chat/completions",
                   "body": {"model": MODEL, "max_tokens": 16,
                            "messages": [{"role": "user", "content": format!("batch question {i}")}]}})
            .to_string()
        })
        .collect();
    let batch = super::batch::create_batch(&stack, &lines).await;
    super::batch::batch_reaching(&stack, &batch, "completed").await;
    stack
        .wait_count("SELECT count() FROM {db}.usage FINAL", 9, WAIT)
        .await;
    stack
        .wait_count(
            "SELECT count() FROM {db}.budget_alerts FINAL WHERE subject = 'team-a'",
            1,
            WAIT,
        )
        .await;
    let want: i64 = stack
        .ch("SELECT sum(cost_nanos) FROM {db}.spend_by_team_day WHERE team = 'team-a'")
        .await
        .trim()
        .parse()
        .unwrap();
    assert!(want > 0);

    let driver = chromedriver().await;
    let b = browser(&driver).await;
    let shots = screenshots();
    let shoot = async |name: &str| {
        let png = b.screenshot().await.unwrap();
        std::fs::write(shots.join(format!("{name}.png")), png).unwrap();
    };

    // Log in by keyboard: the key field has focus, Enter submits.
    b.goto(&format!("{console}/console")).await.unwrap();
    assert_eq!(b.title().await.unwrap(), "Log in · Sluice console");
    shoot("login").await;
    let focused = b.active_element().await.unwrap();
    assert_eq!(focused.attr("name").await.unwrap().as_deref(), Some("key"));
    focused
        .send_keys(&format!("{ADMIN_KEY}\u{E007}"))
        .await
        .unwrap();
    b.wait()
        .for_element(Locator::Css("table#spend"))
        .await
        .unwrap();

    // The team's spend matches the view to the cent (to the micro-dollar, in fact).
    let shown = text_of(&b, "tr[data-name='team-a'] td.cost").await;
    assert_eq!(shown, usd(want));
    assert!(text_of(&b, "tr[data-name='team-b'] td.cost")
        .await
        .starts_with('$'));
    shoot("spend").await;

    // Every page renders for a person: its heading, no error box.
    for (path, heading, name) in [
        ("/console/budgets", "Budgets", "budgets"),
        ("/console/latency", "Latency & errors", "latency"),
        ("/console/backlog", "Backlog", "backlog"),
        ("/console/batches", "Batches", "batches"),
        ("/console/audit?team=team-a", "Audit", "audit"),
        ("/console/keys", "Keys", "keys"),
    ] {
        b.goto(&format!("{console}{path}")).await.unwrap();
        assert_eq!(text_of(&b, "main h1").await, heading, "{path}");
        let errors = b.find_all(Locator::Css("p.error")).await.unwrap();
        assert!(errors.is_empty(), "{path}: {}", b.source().await.unwrap());
        shoot(name).await;
    }

    // The batch and its progress.
    b.goto(&format!("{console}/console/batches")).await.unwrap();
    let row = format!("tr[data-name='{batch}']");
    assert_eq!(
        text_of(&b, &format!("{row} td:nth-of-type(3)")).await,
        "completed"
    );
    assert_eq!(
        text_of(&b, &format!("{row} td:nth-of-type(6)")).await,
        "3",
        "succeeded"
    );
    assert!(text_of(&b, &format!("{row} td:last-child"))
        .await
        .contains("100.0%"));

    // Every call reached the mock through its deployment: none of them an error.
    b.goto(&format!("{console}/console/latency")).await.unwrap();
    let attempts = text_of(&b, "table#attempts tbody").await;
    assert!(attempts.contains(MODEL), "{attempts}");
    assert_eq!(text_of(&b, "table#attempts tbody tr td.rate").await, "0.0%");

    // The budget alert: the ledger's state and the alert the sink stored.
    b.goto(&format!("{console}/console/budgets")).await.unwrap();
    let state = text_of(&b, "tr[data-name='team:team-a'] td.state").await;
    assert!(state.contains("alert: past 1%"), "{state}");
    let alerts = text_of(&b, "table#alerts tbody").await;
    assert!(
        alerts.contains("team:team-a") && alerts.contains("1%"),
        "{alerts}"
    );

    // The audit filter: only team-a's events.
    b.goto(&format!(
        "{console}/console/audit?team=team-a&action=completed"
    ))
    .await
    .unwrap();
    let rows = b
        .find_all(Locator::Css("table#audit tbody tr"))
        .await
        .unwrap();
    assert_eq!(
        rows.len(),
        7,
        "4 calls and 3 batch lines: {}",
        b.source().await.unwrap()
    );

    // Create a key in the form, use it, revoke it with its button.
    b.goto(&format!("{console}/console/keys")).await.unwrap();
    b.find(Locator::Css(
        "form[action='/console/keys'] input[name='team']",
    ))
    .await
    .unwrap()
    .send_keys("team-b")
    .await
    .unwrap();
    b.find(Locator::Css(
        "form[action='/console/keys'] input[name='label']",
    ))
    .await
    .unwrap()
    .send_keys("made in the browser")
    .await
    .unwrap();
    b.find(Locator::Css("form[action='/console/keys'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let Ok(secret) = b.wait().for_element(Locator::Css("#secret")).await else {
        panic!("no new secret: {}", b.source().await.unwrap());
    };
    let secret = secret.text().await.unwrap();
    shoot("key-created").await;
    let (status, models) = stack.get("/v1/models", &secret).await;
    assert_eq!(status, 200, "{models}");
    let (_, keys): (u16, Value) = stack.get("/admin/keys?team=team-b", ADMIN_KEY).await;
    let made = keys["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["label"] == "made in the browser")
        .expect("the key the browser made")["id"]
        .as_str()
        .unwrap()
        .to_string();
    b.find(Locator::Css(&format!("button[aria-label='Revoke {made}']")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // The page that answers the revoke (the key-created page before it has a status line
    // too: wait for the new URL, not for the element).
    b.wait()
        .for_url(&url::Url::parse(&format!("{console}/console/keys/{made}/revoke")).unwrap())
        .await
        .unwrap();
    let status_line = text_of(&b, "p[role='status']").await;
    assert_eq!(status_line, format!("Revoked {made}."));
    assert_eq!(
        text_of(&b, &format!("tr[data-name='{made}'] td.state")).await,
        "revoked"
    );
    assert_eq!(stack.get("/v1/models", &secret).await.0, 401);
    eprintln!("console screenshots: {}", shots.display());
    b.close().await.unwrap();
    drop(driver);
    stack.stop().await;
}
