//! A real OpenID provider: `oidc-provider` from npm (`tests/idp/`, its version pinned in
//! `package-lock.json`) run by Node, with the device authorization grant. [`OidcProvider`]
//! starts it on a free loopback port (issuer `http://127.0.0.1:PORT`) and kills it on drop;
//! [`OidcProvider::approve`] and [`OidcProvider::refuse`] are the person's browser, driven
//! over HTTP with curl and a cookie jar.
//!
//! Node (Debian packages `nodejs` and `npm`) is required: without it the tests fail, naming
//! the packages. `tests/idp/node_modules` is installed with `npm ci` when missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::ports::free_port;
use super::process::{KillOnDrop, run_with_timeout, wait_until};

/// The folder of the provider's `package.json` and `server.mjs`.
pub fn idp_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/idp")
}

/// Fails the test unless `node` runs and `oidc-provider` is installed (installing it
/// with `npm ci` when `node_modules` is missing, bounded).
pub fn need_node() {
    let out = run_with_timeout(
        Command::new("node").arg("--version"),
        Duration::from_secs(20),
    );
    assert!(
        out.success(),
        "node is missing: install the Debian packages nodejs and npm (scripts/test does): {}",
        out.text()
    );
    let dir = idp_dir();
    if !dir.join("node_modules/oidc-provider/package.json").exists() {
        let out = run_with_timeout(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&dir),
            Duration::from_secs(300),
        );
        assert!(
            out.success(),
            "npm ci in {} failed (Debian package npm needed): {}",
            dir.display(),
            out.text()
        );
    }
}

/// The running provider.
pub struct OidcProvider {
    _child: KillOnDrop,
    pub issuer: String,
    dir: tempfile::TempDir,
    log: PathBuf,
}

/// A page curl fetched.
struct Page {
    status: u16,
    body: String,
}

impl OidcProvider {
    /// Starts the provider: device codes live `device_ttl_secs`, the polling interval it
    /// gives is `interval_secs`.
    pub fn start(device_ttl_secs: u64, interval_secs: u64) -> OidcProvider {
        need_node();
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("idp.log");
        for _ in 0..3 {
            let port = free_port();
            let file = std::fs::File::create(&log).expect("idp log");
            let child = Command::new("node")
                .arg(idp_dir().join("server.mjs"))
                .arg(port.to_string())
                .arg(device_ttl_secs.to_string())
                .arg(interval_secs.to_string())
                .stdin(Stdio::null())
                .stdout(file.try_clone().expect("idp log"))
                .stderr(file)
                .spawn()
                .expect("cannot start node");
            let mut child = KillOnDrop(child);
            let mut exited = false;
            let ready = || std::fs::read_to_string(&log).unwrap_or_default();
            wait_until(
                Duration::from_secs(30),
                || {
                    exited = matches!(child.0.try_wait(), Ok(Some(_)));
                    exited || ready().contains("idp: listening")
                },
                || format!("the test identity provider did not start: {}", ready()),
            );
            if exited {
                // Most likely the port was taken meanwhile: another one.
                continue;
            }
            return OidcProvider {
                _child: child,
                issuer: format!("http://127.0.0.1:{port}"),
                dir,
                log,
            };
        }
        panic!(
            "the test identity provider exited at start three times: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Its output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// An `[[oidc]]` block for drawbridge.toml trusting this provider for bearer ID tokens
    /// and the device login (user claim `sub`, groups claim `groups`).
    pub fn config(&self) -> String {
        format!(
            "[[oidc]]\nissuer = \"{i}\"\naudience = \"drawbridge\"\njwks = \"{i}/jwks\"\n\
             user_claim = \"sub\"\ngroups_claim = \"groups\"\nclient_id = \"drawbridge\"\n\
             device_scope = \"openid email groups\"\n",
            i = self.issuer
        )
    }

    fn curl(&self, jar: &Path, url: &str, form: &[(String, String)]) -> Page {
        let body = self.dir.path().join(super::unique("page"));
        let mut cmd = Command::new("curl");
        cmd.args(["--silent", "--show-error", "--max-time", "20", "-L"])
            .arg("-c")
            .arg(jar)
            .arg("-b")
            .arg(jar)
            .arg("-o")
            .arg(&body)
            .args(["-w", "%{http_code}"]);
        for (k, v) in form {
            cmd.arg("--data-urlencode").arg(format!("{k}={v}"));
        }
        cmd.arg(url);
        let out = run_with_timeout(&mut cmd, Duration::from_secs(30));
        let status = out
            .stdout
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("curl {url} failed: {out:?}"));
        let text = std::fs::read_to_string(&body).unwrap_or_default();
        let _ = std::fs::remove_file(body);
        Page { status, body: text }
    }

    fn absolute(&self, action: &str) -> String {
        if action.starts_with("http") {
            action.to_string()
        } else {
            format!("{}{action}", self.issuer)
        }
    }

    /// Opens the verification URL and confirms the code; returns the jar and the page
    /// that asks for the person's decision (the confirm form).
    fn open(&self, verification_uri_complete: &str) -> (PathBuf, Page) {
        let jar = self.dir.path().join(super::unique("jar"));
        // The provider answers with a form that posts the code back (with its xsrf).
        let page = self.curl(&jar, verification_uri_complete, &[]);
        assert_eq!(page.status, 200, "verification page: {}", page.body);
        let (action, fields) = form(&page.body, 0);
        let confirm = self.curl(&jar, &self.absolute(&action), &fields);
        assert!(
            confirm.body.contains("op.deviceConfirmForm"),
            "no confirm form: {} {}",
            confirm.status,
            confirm.body
        );
        (jar, confirm)
    }

    /// The person logs in as `login` (in `groups`) and approves the device.
    pub fn approve(&self, verification_uri_complete: &str, login: &str, groups: &[&str]) {
        let (jar, confirm) = self.open(verification_uri_complete);
        let (action, fields) = form(&confirm.body, 0);
        // Confirming leads to the login page (redirects followed).
        let login_page = self.curl(&jar, &self.absolute(&action), &fields);
        assert!(
            login_page.body.contains("/login\""),
            "no login form: {} {}",
            login_page.status,
            login_page.body
        );
        let (action, _) = form(&login_page.body, 0);
        let done = self.curl(
            &jar,
            &self.absolute(&action),
            &[
                ("login".into(), login.into()),
                ("groups".into(), groups.join(",")),
            ],
        );
        assert!(
            done.body.contains("device login success"),
            "login at the provider did not succeed: {} {}\n{}",
            done.status,
            done.body,
            self.log()
        );
    }

    /// The person refuses the device at the provider.
    pub fn refuse(&self, verification_uri_complete: &str) {
        let (jar, confirm) = self.open(verification_uri_complete);
        let (action, fields) = form(&confirm.body, 0);
        let mut fields: Vec<(String, String)> =
            fields.into_iter().filter(|(k, _)| k != "confirm").collect();
        fields.push(("abort".into(), "yes".into()));
        let page = self.curl(&jar, &self.absolute(&action), &fields);
        assert!(
            page.body.contains("AbortedError"),
            "refusing at the provider: {} {}",
            page.status,
            page.body
        );
    }
}

/// The `action` and hidden inputs of the `n`th form of an HTML page.
fn form(html: &str, n: usize) -> (String, Vec<(String, String)>) {
    let start = html
        .match_indices("<form")
        .nth(n)
        .map(|(i, _)| i)
        .unwrap_or_else(|| panic!("no form {n} in {html}"));
    let rest = &html[start..];
    let end = rest.find("</form>").unwrap_or(rest.len());
    let form = &rest[..end];
    let attr = |tag: &str, name: &str| -> Option<String> {
        let key = format!("{name}=\"");
        let at = tag.find(&key)? + key.len();
        let len = tag[at..].find('"')?;
        Some(tag[at..at + len].replace("&amp;", "&"))
    };
    let action = attr(form, "action").unwrap_or_else(|| panic!("form without action: {form}"));
    let mut fields = Vec::new();
    for (i, _) in form.match_indices("<input") {
        let tag = &form[i..i + form[i..].find('>').unwrap_or(form.len() - i)];
        if tag.contains("type=\"hidden\"")
            && let (Some(k), Some(v)) = (attr(tag, "name"), attr(tag, "value"))
        {
            fields.push((k, v));
        }
    }
    (action, fields)
}
