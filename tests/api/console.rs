//! The web console in a real browser: Debian's chromium, driven through chromedriver (WebDriver)
//! by fantoccini, both installed by `.ci/setup`. Each test signs in as a person would (pasting a
//! token) and does what that person does. With `EUCORA_WRITE_SCREENSHOTS=1` the tour also writes
//! every page's screenshot, at 1280 and 390 pixels wide, to `docs/console/`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::helpers::{eucora, intent_body, Backend, Crew, TestApp, TestDb};
use crate::log::{key_flags, serve};

crate::on_both_backends!(
    a_cab_approver_approves_the_oldest_change_in_the_queue_and_the_timeline_shows_it,
    a_requester_sees_why_they_may_not_approve_their_own_change,
    an_auditor_downloads_a_bundle_that_verifies_and_sees_no_write_action,
    a_revoked_tokens_session_ends_and_a_form_without_its_csrf_token_changes_nothing,
    the_queue_shows_a_new_change_within_two_seconds_without_a_reload,
    bad_sessions_ids_and_stale_actions_are_answered_in_words_and_change_nothing,
    an_admin_rotates_a_token_from_the_access_page_and_sees_it_once,
);

/// chromedriver on a port of its own, stopped with the test.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A headless chromium at 1280 × 900, downloading into `downloads`.
async fn browser(downloads: &Path) -> (Driver, Client) {
    let driver_binary = std::env::var("EUCORA_CHROMEDRIVER").unwrap_or("chromedriver".into());
    let port = free_port();
    let child = Command::new(&driver_binary)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start {driver_binary}: {e}; run .ci/setup (it installs chromium-driver)")
        });
    let driver = Driver { child, port };
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": std::env::var("EUCORA_CHROMIUM").unwrap_or("/usr/bin/chromium".into()),
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,900", "--lang=en-GB"],
            "prefs": {
                "download.default_directory": downloads.to_str().unwrap(),
                "download.prompt_for_download": false
            }
        }),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let client = loop {
        match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{}", driver.port))
            .await
        {
            Ok(client) => break client,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "chromedriver never answered: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    (driver, client)
}

/// Clicks what `locator` finds.
async fn click(c: &Client, locator: Locator<'_>) {
    c.find(locator).await.unwrap().click().await.unwrap();
}

/// Waits up to 20 s for what `locator` finds.
async fn wait_for(c: &Client, locator: Locator<'_>) -> fantoccini::elements::Element {
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(locator)
        .await
        .unwrap()
}

/// Signs in by pasting `token` into the sign-in form.
async fn sign_in(c: &Client, base: &str, token: &str) {
    c.goto(&format!("{base}/")).await.unwrap();
    wait_for(c, Locator::Id("token"))
        .await
        .send_keys(token)
        .await
        .unwrap();
    click(c, Locator::Css("form.signin button[type=submit]")).await;
    wait_for(c, Locator::Css("form.signout")).await;
}

/// The text of `#main`, once the page in flight (a form's answer, a reload) has one.
async fn main_text(c: &Client) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = match c.find(Locator::Id("main")).await {
            Ok(main) => main.text().await,
            Err(e) => Err(e),
        };
        match found {
            Ok(text) => return text,
            // Found on the page that was being replaced: look again on the new one.
            Err(e) => assert!(Instant::now() < deadline, "no #main: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A form body, as a browser sends one.
fn form(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// Waits until `#main` says `what`, reloading as a viewer would.
async fn until_main_says(c: &Client, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = main_text(c).await;
        if text.contains(what) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "the page never said {what:?}: {text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        c.refresh().await.unwrap();
    }
}

/// High-risk intents await the CAB; their ids, oldest first.
async fn awaiting_cab(app: &TestApp, crew: &Crew, names: &[&str]) -> Vec<String> {
    let mut ids = vec![];
    for name in names {
        let reply = app
            .create(&crew.requester, intent_body(name, 0.9, "GLOBAL"))
            .await;
        assert_eq!(reply.body["status"], "awaiting_cab", "{reply:?}");
        ids.push(reply.id());
    }
    ids
}

async fn a_cab_approver_approves_the_oldest_change_in_the_queue_and_the_timeline_shows_it(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let crew = Crew::new(&app);
    let ids = awaiting_cab(&app, &crew, &["<b>Zoom</b>", "Slack"]).await;
    let downloads = app.db.dir().join("downloads");
    let (_driver, c) = browser(&downloads).await;
    sign_in(&c, &app.base, &crew.approver).await;
    c.goto(&format!("{}/ui/cab", app.base)).await.unwrap();
    until_main_says(&c, "Slack").await;
    // The oldest first; the app name typed with markup is shown as text.
    let rows = c.find_all(Locator::Css("main tbody tr")).await.unwrap();
    let first = rows[0].text().await.unwrap();
    assert!(first.contains("<b>Zoom</b>"), "{first}");
    assert!(c
        .find_all(Locator::Css("main td b"))
        .await
        .unwrap()
        .is_empty());
    let approve = rows[0]
        .find(Locator::Css("form[action$='/approve']"))
        .await
        .unwrap();
    approve
        .find(Locator::Css("input[name=comment]"))
        .await
        .unwrap()
        .send_keys("fine <i>by</i> the board")
        .await
        .unwrap();
    approve
        .find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let text = until_main_says(&c, "Approved.").await;
    assert!(c.current_url().await.unwrap().path().ends_with(&ids[0]));
    let timeline = c
        .find(Locator::Css("ol.timeline"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        timeline.contains("DeploymentApproved") && timeline.contains("fine <i>by</i> the board"),
        "{timeline}\n{text}"
    );
    // The API agrees: one approval, by the CAB approver.
    let state = app.intent(&crew.approver, &ids[0]).await;
    assert_eq!(state.body["status"], "approved", "{state:?}");
    assert_eq!(state.body["approved_by"], "carol", "{state:?}");
    // Once reported on, the change's page says when it is expected to be compliant, and its cost.
    assert_eq!(
        app.deploy(&crew.deployer, &ids[0], "LAB", 10, 2)
            .await
            .status,
        200
    );
    c.goto(&format!("{}/ui/changes/{}", app.base, ids[0]))
        .await
        .unwrap();
    let text = until_main_says(&c, "Forecast: expected compliant at").await;
    assert!(text.contains("Cost so far\nEUR "), "{text}");
    screenshots(&c, &app, &ids[1]).await;
    c.close().await.unwrap();
}

async fn a_requester_sees_why_they_may_not_approve_their_own_change(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let crew = Crew::new(&app);
    let ids = awaiting_cab(&app, &crew, &["Teams"]).await;
    let (_driver, c) = browser(&app.db.dir().join("downloads")).await;
    sign_in(&c, &app.base, &crew.requester).await;
    c.goto(&format!("{}/ui/changes/{}", app.base, ids[0]))
        .await
        .unwrap();
    let text = until_main_says(&c, "Teams").await;
    assert!(
        text.contains("You requested this change: segregation of duties"),
        "{text}"
    );
    assert!(c
        .find_all(Locator::Css(
            "form[action$='/approve'], form[action$='/reject']"
        ))
        .await
        .unwrap()
        .is_empty());
    // The server refuses it anyway: a forged approval is refused and recorded as refused.
    let before = app.intent_event_count().await;
    let csrf = c
        .find(Locator::Css("form.signout input[name=csrf]"))
        .await
        .unwrap()
        .attr("value")
        .await
        .unwrap()
        .unwrap();
    c.execute(
        "const f = document.createElement('form'); f.method = 'post'; f.action = arguments[0];
         for (const [n, v] of [['csrf', arguments[1]], ['version', '1']]) {
           const i = document.createElement('input'); i.name = n; i.value = v; f.appendChild(i); }
         document.body.appendChild(f); f.submit();",
        vec![
            json!(format!("/ui/changes/{}/approve", ids[0])),
            json!(csrf),
        ],
    )
    .await
    .unwrap();
    let refused = until_main_says(&c, "Refused").await;
    assert!(refused.contains("may not"), "{refused}");
    assert_eq!(app.intent_event_count().await, before);
    c.close().await.unwrap();
}

async fn an_auditor_downloads_a_bundle_that_verifies_and_sees_no_write_action(backend: Backend) {
    let db = Arc::new(TestDb::new(backend).await);
    let (flags, _verifier) = key_flags(&db, "checkpoints");
    let app = serve(&db, &flags).await;
    let crew = Crew::new(&app);
    let ids = awaiting_cab(&app, &crew, &["Figma"]).await;
    app.approve(&crew.approver, &ids[0]).await;
    let downloads = db.dir().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let (_driver, c) = browser(&downloads).await;
    sign_in(&c, &app.base, &crew.auditor).await;
    for page in [
        "/ui/overview",
        "/ui/changes",
        "/ui/cab",
        "/ui/emergency",
        "/ui/audit",
    ] {
        c.goto(&format!("{}{page}", app.base)).await.unwrap();
        no_write_action(&c, page).await;
    }
    let change = format!("{}/ui/changes/{}", app.base, ids[0]);
    c.goto(&change).await.unwrap();
    until_main_says(&c, "Figma").await;
    no_write_action(&c, "a change").await;
    // Within a checkpoint interval of the approval the bundle is not ready: wait, as a person would.
    let bundle = downloads.join(format!("eucora-evidence-{}.tar.gz", ids[0]));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !bundle.exists() {
        assert!(
            Instant::now() < deadline,
            "no bundle downloaded to {}",
            downloads.display()
        );
        c.goto(&change).await.unwrap();
        click(
            &c,
            Locator::LinkText("Download this change's evidence bundle"),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    wait_complete(&bundle).await;
    let (ok, out, err) = eucora(&[
        "evidence",
        "verify",
        bundle.to_str().unwrap(),
        "--key",
        db.dir().join("verifier").to_str().unwrap(),
    ]);
    assert!(ok, "the downloaded bundle does not verify: {out}\n{err}");
    c.close().await.unwrap();
}

/// Waits until a download is whole (chromium writes `.crdownload` first, then renames).
async fn wait_complete(file: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = 0;
    loop {
        let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        if size > 0 && size == last {
            return;
        }
        last = size;
        assert!(
            Instant::now() < deadline,
            "{} never settled",
            file.display()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The only form that posts anything is the sign-out.
async fn no_write_action(c: &Client, page: &str) {
    let forms = c.find_all(Locator::Css("form[method=post]")).await.unwrap();
    for form in forms {
        let action = form.attr("action").await.unwrap().unwrap_or_default();
        assert_eq!(
            action, "/ui/sign-out",
            "an auditor sees a write action on {page}"
        );
    }
}

async fn a_revoked_tokens_session_ends_and_a_form_without_its_csrf_token_changes_nothing(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let crew = Crew::new(&app);
    let ids = awaiting_cab(&app, &crew, &["Miro"]).await;
    let (_driver, c) = browser(&app.db.dir().join("downloads")).await;
    sign_in(&c, &app.base, &crew.approver).await;
    let change = format!("{}/ui/changes/{}", app.base, ids[0]);
    c.goto(&change).await.unwrap();
    until_main_says(&c, "Miro").await;
    // The approve form without its CSRF token: refused, nothing appended.
    let before = app.intent_event_count().await;
    c.execute(
        "document.querySelector(\"form[action$='/approve'] input[name=csrf]\").remove();",
        vec![],
    )
    .await
    .unwrap();
    click(&c, Locator::Css("form[action$='/approve'] button")).await;
    let refused = until_main_says(&c, "nothing was changed").await;
    assert!(
        refused.contains("did not come from this console"),
        "{refused}"
    );
    assert_eq!(app.intent_event_count().await, before);
    // Revoked by an admin elsewhere: the next click finds the session gone.
    c.goto(&change).await.unwrap();
    until_main_says(&c, "Miro").await;
    let admin = app.token("root", "admin");
    let carol = principal_id(&app, &admin, "carol").await;
    let revoked = app
        .send(
            reqwest::Method::DELETE,
            &format!("/api/v1/principals/{carol}"),
            Some(&admin),
            &[],
            None,
        )
        .await;
    assert_eq!(revoked.status, 200, "{revoked:?}");
    click(&c, Locator::LinkText("CAB queue")).await;
    wait_for(&c, Locator::Id("token")).await;
    let text = main_text(&c).await;
    assert!(text.contains("no longer works"), "{text}");
    assert!(c
        .current_url()
        .await
        .unwrap()
        .path()
        .ends_with("/ui/sign-in"));
    c.close().await.unwrap();
}

async fn the_queue_shows_a_new_change_within_two_seconds_without_a_reload(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let crew = Crew::new(&app);
    awaiting_cab(&app, &crew, &["Notion"]).await;
    let (_driver, c) = browser(&app.db.dir().join("downloads")).await;
    sign_in(&c, &app.base, &crew.approver).await;
    c.goto(&format!("{}/ui/cab", app.base)).await.unwrap();
    until_main_says(&c, "Notion").await;
    // Let the page's script take its first look at the stream.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    awaiting_cab(&app, &crew, &["Linear"]).await;
    let created = Instant::now();
    loop {
        if main_text(&c).await.contains("Linear") {
            break;
        }
        assert!(
            created.elapsed() < Duration::from_secs(2),
            "the queue did not show the new change within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.close().await.unwrap();
}

/// The CSRF token a page's forms carry.
fn csrf_in(page: &str) -> String {
    page.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no CSRF token on the page: {page}"))
        .to_string()
}

/// The id of the principal named `subject`, as an admin lists it.
async fn principal_id(app: &TestApp, admin: &str, subject: &str) -> String {
    let principals = app.get("/api/v1/principals", admin).await;
    principals
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["subject"] == subject)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The session cookie of `token`, signed in over plain HTTP as a browser would.
/// A console page's HTML, as the browser with session `cookie` gets it.
pub async fn page_text(app: &TestApp, cookie: &str, path: &str) -> String {
    reqwest::Client::new()
        .get(format!("{}{path}", app.base))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

pub async fn session_of(app: &TestApp, token: &str) -> String {
    let reply = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{}/ui/sign-in", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("token", token)]))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 303);
    let cookie = reply.headers()["set-cookie"].to_str().unwrap().to_string();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    cookie.split(';').next().unwrap().to_string()
}

async fn bad_sessions_ids_and_stale_actions_are_answered_in_words_and_change_nothing(
    backend: Backend,
) {
    let app = TestApp::spawn_with(backend, &["--session-idle", "2s"]).await;
    let crew = Crew::new(&app);
    let ids = awaiting_cab(&app, &crew, &["Jira"]).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get = |path: String, cookie: String| {
        let http = http.clone();
        let base = app.base.clone();
        async move {
            let reply = http
                .get(format!("{base}{path}"))
                .header("cookie", cookie)
                .send()
                .await
                .unwrap();
            let status = reply.status().as_u16();
            let location = reply
                .headers()
                .get("location")
                .map(|l| l.to_str().unwrap().to_string());
            (status, location, reply.text().await.unwrap())
        }
    };
    // No cookie, a forged one: to the sign-in page.
    for cookie in ["", "eucora_session=forged"] {
        let (status, location, _) = get("/ui/cab".into(), cookie.into()).await;
        assert_eq!(status, 303);
        assert!(location.unwrap().starts_with("/ui/sign-in"));
    }
    // A wrong token at sign-in: 401, said in words.
    let refused = http
        .post(format!("{}/ui/sign-in", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("token", "eucora_guess")]))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert!(refused
        .text()
        .await
        .unwrap()
        .contains("not a token this server knows"));
    let cookie = session_of(&app, &crew.approver).await;
    // An unknown id and a malformed one.
    let (status, _, body) = get(
        format!("/ui/changes/{}", uuid::Uuid::new_v4()),
        cookie.clone(),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    let (status, _, body) = get("/ui/changes/not-an-id".into(), cookie.clone()).await;
    assert_eq!(status, 404);
    assert!(body.contains("is not a change id"), "{body}");
    // A page drawn at version 1; the change moves on; the stale approval is answered with what
    // happened and appends nothing.
    let (_, _, page) = get(format!("/ui/changes/{}", ids[0]), cookie.clone()).await;
    let csrf = csrf_in(&page);
    app.reject(&crew.approver, &ids[0], "not this quarter")
        .await;
    let before = app.intent_event_count().await;
    let stale = http
        .post(format!("{}/ui/changes/{}/approve", app.base, ids[0]))
        .header("cookie", cookie.clone())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[
            ("csrf", &csrf),
            ("version", "1"),
            ("comment", "late"),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 409);
    let text = stale.text().await.unwrap();
    assert!(text.contains("moved on since you opened it"), "{text}");
    assert!(
        text.contains("not this quarter"),
        "the page shows what happened: {text}"
    );
    assert_eq!(app.intent_event_count().await, before);
    // Idle past --session-idle: the session is over.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, location, _) = get("/ui/cab".into(), cookie).await;
    assert_eq!(status, 303);
    assert_eq!(location.as_deref(), Some("/ui/sign-in?why=idle"));
}

async fn an_admin_rotates_a_token_from_the_access_page_and_sees_it_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let crew = Crew::new(&app);
    let admin = app.token("root", "admin");
    let cookie = session_of(&app, &admin).await;
    let http = reqwest::Client::new();
    let access = page_text(&app, &cookie, "/ui/access").await;
    let csrf = csrf_in(&access);
    let id = principal_id(&app, &admin, "carol").await;
    assert!(
        access.contains(&format!("/ui/access/{id}/rotate")),
        "{access}"
    );
    let rotated = http
        .post(format!("{}/ui/access/{id}/rotate", app.base))
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("csrf", &csrf)]))
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), 200);
    let page = rotated.text().await.unwrap();
    let token = page
        .split("<code class=\"secret\">")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .unwrap()
        .to_string();
    assert!(token.starts_with("eucora_"), "{page}");
    // The old token stopped; the new one works.
    assert_eq!(
        app.get("/api/v1/deployments", &crew.approver).await.status,
        401
    );
    assert_eq!(app.get("/api/v1/deployments", &token).await.status, 200);
    // A requester's session may not rotate: refused, and nothing changes.
    let requester = session_of(&app, &crew.requester).await;
    let refused = http
        .post(format!("{}/ui/access/{id}/rotate", app.base))
        .header("cookie", &requester)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("csrf", "whatever")]))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    assert_eq!(app.get("/api/v1/deployments", &token).await.status, 200);
}

/// With `EUCORA_WRITE_SCREENSHOTS=1`: every page at 1280 and 390 pixels wide, into
/// `docs/console/` (the README shows one), seen by an admin (who sees every page).
async fn screenshots(c: &Client, app: &TestApp, change: &str) {
    if std::env::var("EUCORA_WRITE_SCREENSHOTS").is_err() {
        return;
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/console");
    std::fs::create_dir_all(&dir).unwrap();
    let admin = app.token("dana", "admin");
    let pages = [
        ("overview", "/ui/overview".to_string()),
        ("changes", "/ui/changes".to_string()),
        ("change", format!("/ui/changes/{change}")),
        ("cab", "/ui/cab".to_string()),
        ("emergency", "/ui/emergency".to_string()),
        ("audit", "/ui/audit".to_string()),
        ("access", "/ui/access".to_string()),
    ];
    for (width, height) in [(1280, 900), (390, 844)] {
        c.set_window_size(width, height).await.unwrap();
        // The sign-in page, then every page signed in.
        c.delete_all_cookies().await.unwrap();
        c.goto(&format!("{}/ui/sign-in", app.base)).await.unwrap();
        std::fs::write(
            dir.join(format!("sign-in-{width}.png")),
            c.screenshot().await.unwrap(),
        )
        .unwrap();
        sign_in(c, &app.base, &admin).await;
        for (name, path) in &pages {
            c.goto(&format!("{}{path}", app.base)).await.unwrap();
            main_text(c).await;
            let png = c.screenshot().await.unwrap();
            std::fs::write(dir.join(format!("{name}-{width}.png")), png).unwrap();
        }
    }
}
