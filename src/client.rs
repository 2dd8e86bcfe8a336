//! A small blocking HTTP client for the gaffer API, with errors a user can act on in one line.

use anyhow::{anyhow, Result};
use gaffer_api::views::ErrorBody;
use serde::de::DeserializeOwned;
use std::io::Read;
use std::time::Duration;

/// The API at one address.
pub struct Client {
    base: String,
    agent: ureq::Agent,
    token: Option<String>,
}

impl Client {
    /// A client for `addr` (`http://host:port`; the scheme may be omitted).
    pub fn new(addr: &str, token: Option<String>, ca: Option<&std::path::Path>) -> Result<Self> {
        let addr = addr.trim_end_matches('/');
        let base = if addr.contains("://") {
            addr.to_string()
        } else {
            format!("http://{addr}")
        };
        let mut builder = ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(5));
        if ca.is_some() || base.starts_with("https://") {
            builder = builder.tls_config(crate::tls::client_config(ca)?);
        }
        Ok(Client {
            base,
            agent: builder.build(),
            token,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn req(&self, method: &str, path: &str) -> ureq::Request {
        let r = self.agent.request(method, &self.url(path));
        match &self.token {
            Some(t) => r.set("Authorization", &format!("Bearer {t}")),
            None => r,
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
                self.base,
                t.message().map(str::to_string).unwrap_or_else(|| t.kind().to_string())
            ),
        }
    }

    /// GET and decode JSON.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let resp = self.req("GET", path).call().map_err(|e| self.fail(e))?;
        resp.into_json()
            .map_err(|e| anyhow!("the server sent a reply this CLI cannot read: {e}"))
    }

    /// GET a streaming body.
    pub fn get_reader(&self, path: &str) -> Result<Box<dyn Read + Send + Sync>> {
        let resp = self.req("GET", path).call().map_err(|e| self.fail(e))?;
        Ok(resp.into_reader())
    }

    /// POST JSON and decode JSON.
    pub fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
        headers: &[(&str, &str)],
    ) -> Result<T> {
        let mut req = self.req("POST", path);
        for (k, v) in headers {
            req = req.set(k, v);
        }
        let resp = req.send_json(body).map_err(|e| self.fail(e))?;
        resp.into_json()
            .map_err(|e| anyhow!("the server sent a reply this CLI cannot read: {e}"))
    }

    /// POST without a body; a 204 decodes as `null`.
    pub fn post_empty<T: DeserializeOwned + Default>(&self, path: &str) -> Result<T> {
        let resp = self.req("POST", path).call().map_err(|e| self.fail(e))?;
        if resp.status() == 204 {
            return Ok(T::default());
        }
        resp.into_json()
            .map_err(|e| anyhow!("the server sent a reply this CLI cannot read: {e}"))
    }

    /// DELETE.
    pub fn delete(&self, path: &str) -> Result<()> {
        self.req("DELETE", path).call().map_err(|e| self.fail(e))?;
        Ok(())
    }
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
