//! Harness of the web UI tests: a real headless Chromium driven through chromedriver
//! (WebDriver) with fantoccini, DOM conditions polled with deadlines, screenshots saved under
//! `target/ui-screenshots/`, and a `gaffer server --token-file` + `gaffer agent` pair for the
//! token tests.

#![allow(dead_code)]

use crate::util::{free_port, kill_leftovers, wait_child, BIN, READY_TIMEOUT};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Default deadline of a DOM condition.
pub const UI_TIMEOUT: Duration = Duration::from_secs(30);

/// One UI test at a time in this binary: a Chromium per test is heavy on a 2-core machine.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs a UI test's body on its own runtime, one UI test at a time.
pub fn run<F: std::future::Future<Output = ()>>(f: F) {
    let _one_at_a_time = serial();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f);
}

/// A JSON string's text ("" for anything else).
pub fn s(v: &Value) -> String {
    v.as_str().map(str::to_string).unwrap_or_default()
}

fn which(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for n in names {
            let p = dir.join(n);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// A chromedriver process and a WebDriver session of headless Chromium with a fresh profile.
pub struct Browser {
    /// The WebDriver session.
    pub c: Client,
    driver: Child,
    _profile: tempfile::TempDir,
    /// Where screenshots go.
    pub shots: PathBuf,
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium session (window 1366×1000).
    pub async fn start() -> Browser {
        let driver_bin = which(&["chromedriver"]).expect(
            "chromedriver not found: install Debian's `chromium chromium-driver` (.ci/run does)",
        );
        let chrome = which(&["chromium", "chromium-browser", "google-chrome"])
            .expect("chromium not found: install Debian's `chromium` (.ci/run does)");
        let profile = tempfile::Builder::new()
            .prefix("gaffer-ui-chrome-")
            .tempdir()
            .expect("profile dir");
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let log = profile.path().join(format!("chromedriver-{port}.log"));
            let mut driver = Command::new(&driver_bin)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(File::create(&log).expect("driver log"))
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn chromedriver");
            let url = format!("http://127.0.0.1:{port}");
            let deadline = Instant::now() + READY_TIMEOUT;
            let quick = ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(2))
                .build();
            let mut up = false;
            while Instant::now() < deadline {
                if driver.try_wait().expect("try_wait chromedriver").is_some() {
                    break;
                }
                if quick.get(&format!("{url}/status")).call().is_ok() {
                    up = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if !up {
                let _ = driver.kill();
                let _ = driver.wait();
                last = std::fs::read_to_string(&log).unwrap_or_default();
                continue;
            }
            let caps = json!({
                "goog:chromeOptions": {
                    "binary": chrome,
                    "args": [
                        "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                        "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", "--no-first-run", "--no-default-browser-check",
                        "--window-size=1366,1000",
                        format!("--user-data-dir={}", profile.path().join("profile").display()),
                    ]
                }
            });
            let caps = match caps {
                Value::Object(m) => m,
                _ => unreachable!(),
            };
            let conn = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(conn)
                .capabilities(caps)
                .connect(&url)
                .await
            {
                Ok(c) => {
                    let shots = Path::new(env!("CARGO_TARGET_TMPDIR"))
                        .parent()
                        .expect("target dir")
                        .join("ui-screenshots");
                    std::fs::create_dir_all(&shots).expect("screenshot dir");
                    return Browser {
                        c,
                        driver,
                        _profile: profile,
                        shots,
                    };
                }
                Err(e) => {
                    let _ = driver.kill();
                    let _ = driver.wait();
                    last = format!("{e}");
                }
            }
        }
        panic!("cannot start headless Chromium through chromedriver: {last}");
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) {
        self.c
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("goto {url}: {e}"));
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) and returns its value.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.c
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Polls `script` until it returns something truthy (not null/false/""/0), at most
    /// `timeout`; returns that value. Panics with `what`, the page text and a screenshot.
    pub async fn wait_js(&self, what: &str, timeout: Duration, script: &str) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.c.execute(script, vec![]).await;
            if let Ok(v) = &v {
                let truthy = match v {
                    Value::Null => false,
                    Value::Bool(b) => *b,
                    Value::String(s) => !s.is_empty(),
                    Value::Number(n) => n.as_f64() != Some(0.0),
                    _ => true,
                };
                if truthy {
                    return v.clone();
                }
            }
            if Instant::now() >= deadline {
                let shot = self.screenshot(&format!("FAILED-{}", slug(what))).await;
                let text = self
                    .c
                    .execute("return document.body.innerText", vec![])
                    .await
                    .unwrap_or_default();
                panic!(
                    "timed out after {timeout:?} waiting for {what} (last: {v:?})\npage text:\n{}\nscreenshot: {}",
                    text.as_str().unwrap_or_default(),
                    shot.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for an element matching `css` and returns it.
    pub async fn el(&self, css: &str) -> fantoccini::elements::Element {
        match self
            .c
            .wait()
            .at_most(UI_TIMEOUT)
            .for_element(Locator::Css(css))
            .await
        {
            Ok(e) => e,
            Err(e) => {
                let shot = self.screenshot(&format!("FAILED-{}", slug(css))).await;
                panic!(
                    "no element `{css}` within {UI_TIMEOUT:?}: {e}; screenshot: {}",
                    shot.display()
                );
            }
        }
    }

    /// Clicks the element matching `css` (waiting for it; found again if the page redrew it
    /// between finding and clicking).
    pub async fn click(&self, css: &str) {
        let deadline = Instant::now() + UI_TIMEOUT;
        loop {
            match self.el(css).await.click().await {
                Ok(()) => return,
                Err(e) if e.to_string().contains("stale") && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("click {css}: {e}"),
            }
        }
    }

    /// Types `text` into the element matching `css` after clearing it.
    pub async fn type_into(&self, css: &str, text: &str) {
        let e = self.el(css).await;
        e.clear()
            .await
            .unwrap_or_else(|e| panic!("clear {css}: {e}"));
        e.send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    /// The `value` of a form control.
    pub async fn value(&self, css: &str) -> String {
        self.el(css)
            .await
            .prop("value")
            .await
            .unwrap_or_else(|e| panic!("value of {css}: {e}"))
            .unwrap_or_default()
    }

    /// Saves a PNG of the viewport as `target/ui-screenshots/NAME.png` and prints its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let path = self.shots.join(format!("{name}.png"));
        match self.c.screenshot().await {
            Ok(png) => {
                std::fs::write(&path, png).expect("write screenshot");
                println!("screenshot: {}", path.display());
            }
            Err(e) => println!("screenshot {name} failed: {e}"),
        }
        path
    }

    /// Panics, naming the widest elements, if the page scrolls sideways.
    pub async fn assert_fits(&self, what: &str) {
        let v = self
            .js(
                "const w = document.documentElement.clientWidth; \
                 if (document.documentElement.scrollWidth <= w) return null; \
                 return [...document.querySelectorAll('body *')] \
                   .filter((e) => e.getBoundingClientRect().right > w + 1) \
                   .map((e) => `${e.tagName}.${e.className}#${e.id} right=${e.getBoundingClientRect().right}`) \
                   .slice(0, 12)",
                vec![],
            )
            .await;
        if !v.is_null() {
            let shot = self
                .screenshot(&format!("FAILED-fits-{}", slug(what)))
                .await;
            panic!(
                "{what} scrolls sideways; too wide: {v}; screenshot {}",
                shot.display()
            );
        }
    }

    /// Resizes the window (e.g. to a phone's width).
    pub async fn size(&self, w: u32, h: u32) {
        self.c
            .set_window_size(w, h)
            .await
            .unwrap_or_else(|e| panic!("resize: {e}"));
    }

    /// Ends the session and the driver.
    pub async fn quit(mut self) {
        let c = self.c.clone();
        let _ = tokio::time::timeout(Duration::from_secs(10), c.close()).await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        // Chromium processes started by this driver name the profile directory in their args.
        kill_mentioning(self._profile.path());
    }
}

/// SIGKILLs every process with an argument that mentions `dir` (our Chromium, if it outlived
/// its driver).
fn kill_mentioning(dir: &Path) {
    let needle = dir.to_string_lossy().into_owned();
    let me = std::process::id() as i32;
    for pid in crate::util::all_pids() {
        if pid != me
            && crate::util::proc_entries(pid, "cmdline")
                .iter()
                .any(|a| a.contains(&needle))
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn slug(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(60)
        .collect()
}

/// A `gaffer server --token-file` and a `gaffer agent` (node `n1`) connected to it.
pub struct Cluster {
    /// Temporary directory of both.
    pub tmp: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`.
    pub addr: String,
    /// The API token.
    pub token: String,
    server: Option<Child>,
    agent: Option<Child>,
}

impl Cluster {
    /// Starts both and waits until node `n1` is ready.
    pub fn start() -> Cluster {
        let tmp = tempfile::Builder::new()
            .prefix("gaffer-ui-cluster-")
            .tempdir()
            .expect("tempdir");
        let token = crate::util::unique("tok");
        std::fs::write(tmp.path().join("api.token"), format!("{token}\n")).expect("token file");
        let mut cl = Cluster {
            addr: String::new(),
            token,
            server: None,
            agent: None,
            tmp,
        };
        let root = cl.tmp.path().to_path_buf();
        for attempt in 0..5 {
            let port = free_port();
            let err = root.join(format!("server-{attempt}.err"));
            let mut child = Command::new(BIN)
                .arg("server")
                .arg("--data-dir")
                .arg(root.join("server"))
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--token-file")
                .arg(root.join("api.token"))
                .current_dir(&root)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(File::create(&err).expect("server log"))
                .spawn()
                .expect("spawn gaffer server");
            let url = format!("http://127.0.0.1:{port}");
            let up = ready(&url, &mut child);
            if up {
                cl.addr = url;
                cl.server = Some(child);
                break;
            }
            let _ = child.kill();
            let _ = child.wait();
            let e = std::fs::read_to_string(&err).unwrap_or_default();
            assert!(e.contains("listen"), "gaffer server did not start: {e}");
        }
        assert!(!cl.addr.is_empty(), "gaffer server did not start");
        let agent = Command::new(BIN)
            .arg("agent")
            .arg("--no-bridge")
            .arg("--server")
            .arg(&cl.addr)
            .arg("--allow-host-tasks")
            .arg("--name")
            .arg("n1")
            .arg("--data-dir")
            .arg(root.join("agent"))
            .current_dir(&root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(root.join("agent.err")).expect("agent log"))
            .spawn()
            .expect("spawn gaffer agent");
        cl.agent = Some(agent);
        crate::util::wait_until("node n1 to be ready", READY_TIMEOUT, || {
            let (code, body) = cl.get("/v1/nodes");
            (code == 200 && body.contains("\"n1\"") && body.contains("\"ready\"")).then_some(())
        });
        cl
    }

    /// GET with the token.
    pub fn get(&self, path: &str) -> (u16, String) {
        crate::util::http_result(
            crate::util::agent()
                .get(&format!("{}{path}", self.addr))
                .set("Authorization", &format!("Bearer {}", self.token))
                .call(),
        )
    }

    /// GET without a token.
    pub fn get_anon(&self, path: &str) -> (u16, String) {
        crate::util::http_result(
            crate::util::agent()
                .get(&format!("{}{path}", self.addr))
                .call(),
        )
    }

    /// Submits one spec with the token; returns its id.
    pub fn submit(&self, spec: &Value) -> String {
        let (code, body) = crate::util::http_result(
            crate::util::agent()
                .post(&format!("{}/v1/jobs", self.addr))
                .set("Authorization", &format!("Bearer {}", self.token))
                .set("Content-Type", "application/json")
                .send_string(&spec.to_string()),
        );
        assert_eq!(code, 201, "submit: {body}");
        let v: Value = serde_json::from_str(&body).expect("json");
        v["ids"][0].as_str().expect("id").to_string()
    }
}

fn ready(url: &str, child: &mut Child) -> bool {
    let deadline = Instant::now() + READY_TIMEOUT;
    let quick = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(2))
        .build();
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            return false;
        }
        if let Ok(r) = quick.get(&format!("{url}/healthz")).call() {
            if r.status() == 200 {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in [self.agent.take(), self.server.take()]
            .into_iter()
            .flatten()
        {
            let mut c = c;
            let _ = c.kill();
            let _ = wait_child(&mut c, Duration::from_secs(10));
        }
        kill_leftovers(self.tmp.path());
    }
}
