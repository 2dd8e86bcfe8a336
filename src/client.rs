//! A small blocking HTTP client for the gaffer API, with errors a user can act on in one line.

use anyhow::{anyhow, Result};
use gaffer_api::views::ErrorBody;
use serde::de::DeserializeOwned;
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a call keeps retrying while no server can take it (an HA election, a restart).
const RETRY_FOR: Duration = Duration::from_secs(30);
/// Longest wait for the answer to one call that does not stream.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// The API at one or several addresses (the servers of an HA cluster: any of them takes every
/// call). A call goes to the server that answered last; when it cannot be reached the next one
/// is tried. A `503` (no leader yet) is retried for up to [`RETRY_FOR`], and so is a `502` or a
/// lost connection when repeating the call is safe: reads, kills and drains (idempotent), and
/// submits, which always carry an `Idempotency-Key`.
pub struct Client {
    bases: Vec<String>,
    cur: AtomicUsize,
    agent: ureq::Agent,
    token: Option<String>,
}

fn base_url(addr: &str) -> String {
    let addr = addr.trim().trim_end_matches('/');
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

impl Client {
    /// A client for `addr`: `http://host:port` (the scheme may be omitted), or several of them
    /// separated by commas.
    pub fn new(addr: &str, token: Option<String>, ca: Option<&std::path::Path>) -> Result<Self> {
        let bases: Vec<String> = addr
            .split(',')
            .filter(|a| !a.trim().is_empty())
            .map(base_url)
            .collect();
        if bases.is_empty() {
            return Err(anyhow!("--addr / GAFFER_ADDR is empty"));
        }
        let mut builder = ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(3));
        if ca.is_some() || bases.iter().any(|b| b.starts_with("https://")) {
            builder = builder.tls_config(crate::tls::client_config(ca)?);
        }
        Ok(Client {
            bases,
            cur: AtomicUsize::new(0),
            agent: builder.build(),
            token,
        })
    }

    fn base(&self) -> &str {
        &self.bases[self.cur.load(Ordering::Relaxed) % self.bases.len()]
    }

    fn req(&self, method: &str, path: &str, streams: bool) -> ureq::Request {
        let mut r = self
            .agent
            .request(method, &format!("{}{path}", self.base()));
        if !streams {
            // A server cut off mid-call never answers: give up on it and try the next one.
            r = r.timeout(CALL_TIMEOUT);
        }
        match &self.token {
            Some(t) => r.set("Authorization", &format!("Bearer {t}")),
            None => r,
        }
    }

    /// Sends a request built by `build` until it is answered, following the rules above.
    /// `safe`: repeating the call cannot do it twice. `streams`: the body is read for as long
    /// as the user wants (logs, events, downloads), so the call has no overall deadline.
    fn call(
        &self,
        method: &str,
        path: &str,
        safe: bool,
        streams: bool,
        send: impl Fn(ureq::Request) -> std::result::Result<ureq::Response, Box<ureq::Error>>,
    ) -> Result<ureq::Response> {
        let deadline = Instant::now() + RETRY_FOR;
        let mut tried = 0usize;
        let mut told = false;
        loop {
            let e = match send(self.req(method, path, streams)) {
                Ok(r) => return Ok(r),
                Err(e) => *e,
            };
            let transport = matches!(e, ureq::Error::Transport(_));
            let retry = match &e {
                ureq::Error::Status(503, _) => true,
                ureq::Error::Status(502, _) => safe,
                ureq::Error::Transport(_) => safe && self.bases.len() > 1,
                _ => false,
            };
            if !retry || Instant::now() >= deadline {
                return Err(self.fail(e));
            }
            if transport {
                self.cur.fetch_add(1, Ordering::Relaxed);
            }
            tried += 1;
            if !transport || tried.is_multiple_of(self.bases.len()) {
                if !told {
                    eprintln!(
                        "gaffer: {}; retrying for up to {}s",
                        self.fail(e),
                        RETRY_FOR.as_secs()
                    );
                    told = true;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    }

    fn fail(&self, e: ureq::Error) -> anyhow::Error {
        match e {
            ureq::Error::Status(code, resp) => {
                let text = resp.into_string().unwrap_or_default();
                match serde_json::from_str::<ErrorBody>(&text) {
                    Ok(b) if b.fields.len() > 1 => {
                        let mut msg = b.error;
                        for f in b.fields {
                            msg.push_str(&format!("\n  - {f}"));
                        }
                        anyhow!(msg)
                    }
                    Ok(b) => anyhow!(b.error),
                    Err(_) => anyhow!("the server answered {code}: {}", text.trim()),
                }
            }
            ureq::Error::Transport(t) => anyhow!(
                "cannot reach the gaffer server at {}: {} (is `gaffer dev` running? set --addr or GAFFER_ADDR)",
                self.bases.join(","),
                t.message().map(str::to_string).unwrap_or_else(|| t.kind().to_string())
            ),
        }
    }

    /// GET and decode JSON.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let resp = self.call("GET", path, true, false, |r| r.call().map_err(Box::new))?;
        resp.into_json()
            .map_err(|e| anyhow!("the server sent a reply this CLI cannot read: {e}"))
    }

    /// GET a streaming body.
    pub fn get_reader(&self, path: &str) -> Result<Box<dyn Read + Send + Sync>> {
        Ok(self.get_stream(path)?.into_reader())
    }

    /// GET a streaming response (its headers, then its body).
    pub fn get_stream(&self, path: &str) -> Result<ureq::Response> {
        self.call("GET", path, true, true, |r| r.call().map_err(Box::new))
    }

    /// POST JSON for a call that is idempotent by nature (kill): retried like a read.
    pub fn post_idempotent<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T> {
        self.post_json(path, body, &[], true)
    }

    /// POST JSON and decode JSON. A call with an `Idempotency-Key` header is safe to repeat.
    pub fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
        headers: &[(&str, &str)],
    ) -> Result<T> {
        let safe = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("idempotency-key"));
        self.post_json(path, body, headers, safe)
    }

    fn post_json<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
        headers: &[(&str, &str)],
        safe: bool,
    ) -> Result<T> {
        let resp = self.call("POST", path, safe, false, |mut r| {
            for (k, v) in headers {
                r = r.set(k, v);
            }
            r.send_json(body).map_err(Box::new)
        })?;
        resp.into_json()
            .map_err(|e| anyhow!("the server sent a reply this CLI cannot read: {e}"))
    }

    /// POST without a body, for an idempotent call (node drain and enable), so retried like a
    /// read; a 204 decodes as `null`.
    pub fn post_empty<T: DeserializeOwned + Default>(&self, path: &str) -> Result<T> {
        let resp = self.call("POST", path, true, false, |r| r.call().map_err(Box::new))?;
        if resp.status() == 204 {
            return Ok(T::default());
        }
        resp.into_json()
            .map_err(|e| anyhow!("the server sent a reply this CLI cannot read: {e}"))
    }

    /// Whether GET `path` answers 200 (false on 404; other errors are errors).
    pub fn exists(&self, path: &str) -> Result<bool> {
        let resp = self.call("GET", path, true, false, |r| match r.call() {
            Err(ureq::Error::Status(404, resp)) => Ok(resp),
            other => other.map_err(Box::new),
        })?;
        Ok(resp.status() != 404)
    }

    /// PUT a streamed body of `len` bytes (`None`: empty) and decode JSON. `open` makes a fresh
    /// reader for every try: the call is retried like a read, so it must be idempotent (an
    /// image upload named by its digest is). It has no overall deadline, as a download.
    pub fn put_file<T: DeserializeOwned>(
        &self,
        path: &str,
        len: Option<u64>,
        open: impl Fn() -> std::io::Result<Box<dyn Read>>,
    ) -> Result<T> {
        let resp = self.call("PUT", path, true, true, |r| {
            let body = open().map_err(|e| Box::new(ureq::Error::from(e)))?;
            let r = r
                .set("Content-Type", "application/octet-stream")
                .set("Content-Length", &len.unwrap_or(0).to_string());
            r.send(body).map_err(Box::new)
        })?;
        resp.into_json()
            .map_err(|e| anyhow!("the server sent a reply this CLI cannot read: {e}"))
    }

    /// DELETE and decode the JSON answer.
    pub fn delete_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let resp = self.call("DELETE", path, false, false, |r| r.call().map_err(Box::new))?;
        resp.into_json()
            .map_err(|e| anyhow!("the server sent a reply this CLI cannot read: {e}"))
    }

    /// DELETE.
    pub fn delete(&self, path: &str) -> Result<()> {
        self.call("DELETE", path, false, false, |r| r.call().map_err(Box::new))?;
        Ok(())
    }
}

/// A fresh idempotency key: unique per submit of this host.
pub fn idempotency_key() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let host = crate::toolbox::host_name();
    format!("cli-{host}-{}-{t:x}", std::process::id())
}

/// Percent-encodes a query value.
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
