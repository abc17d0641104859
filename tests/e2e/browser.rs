//! Headless Chromium for the console's tests: a chromedriver of the test's
//! own on a free loopback port (Debian's `chromium` and `chromium-driver`),
//! one WebDriver session driven with fantoccini, and waits on DOM conditions
//! with a bound. Everything it starts runs in one process group, killed when
//! the [`Browser`] drops, so a failed test leaves no Chromium behind.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::support::free_port;

/// How long any one DOM condition may take to hold.
pub const DOM_WAIT: Duration = Duration::from_secs(20);

pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// A fresh headless Chromium (its own profile, so no cookie or storage is shared).
    pub async fn start() -> Self {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromedriver runs (apt-get install chromium chromium-driver)");
        let profile = tempfile::Builder::new()
            .prefix("spool-chromium-")
            .tempdir()
            .expect("profile dir");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({ "args": [
                "--headless=new",
                // CI runs as root, where Chromium's sandbox cannot start.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--window-size=1280,900",
                format!("--user-data-dir={}", profile.path().display()),
            ]}),
        );
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        let client = loop {
            let attempt =
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(capabilities.clone())
                    .connect(&url)
                    .await;
            match attempt {
                Ok(client) => break client,
                // chromedriver is still starting to listen.
                Err(_) if started.elapsed() < Duration::from_secs(20) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => panic!("no WebDriver session: {error}"),
            }
        };
        Self {
            client,
            driver,
            _profile: profile,
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("navigate");
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    pub async fn run(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|error| panic!("script failed: {error}\n{script}"))
    }

    /// Runs `script`, which calls its last argument with the result.
    pub async fn run_async(&self, script: &str) -> Value {
        self.client
            .execute_async(script, vec![])
            .await
            .unwrap_or_else(|error| panic!("script failed: {error}\n{script}"))
    }

    /// Waits until the expression `condition` is truthy in the page; returns its value.
    pub async fn wait_for(&self, what: &str, condition: &str) -> Value {
        // Elements come back as booleans: only whether one is there matters.
        let script = format!(
            "const found = ({condition}); return found instanceof Element ? true : (found || null);"
        );
        let started = Instant::now();
        loop {
            let value = self
                .client
                .execute(&script, vec![])
                .await
                .unwrap_or(Value::Null);
            if !value.is_null() && value != Value::Bool(false) {
                return value;
            }
            if started.elapsed() > DOM_WAIT {
                let body = self.run("return document.body.innerText;", vec![]).await;
                panic!("timed out waiting for {what} ({condition}); the page says:\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Clicks the element `css` selects, finding it again if a live update
    /// replaced it between finding and clicking.
    pub async fn click(&self, css: &str) {
        let started = Instant::now();
        loop {
            let clicked = self
                .client
                .wait()
                .at_most(DOM_WAIT)
                .for_element(Locator::Css(css))
                .await
                .unwrap_or_else(|error| panic!("no `{css}`: {error}"))
                .click()
                .await;
            match clicked {
                Ok(()) => return,
                Err(error)
                    if error.to_string().contains("stale element")
                        && started.elapsed() < DOM_WAIT =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(error) => panic!("click `{css}`: {error}"),
            }
        }
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        self.client
            .wait()
            .at_most(DOM_WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|error| panic!("no `{css}`: {error}"))
            .send_keys(text)
            .await
            .unwrap_or_else(|error| panic!("type into `{css}`: {error}"));
    }

    /// Opens the console at `base` and enters `key` at its prompt.
    pub async fn log_in(&self, base: &str, key: &str) {
        self.goto(&format!("{base}/")).await;
        self.wait_for("the key prompt", "!document.getElementById('login').hidden")
            .await;
        self.type_into("#key", key).await;
        self.click("#login-submit").await;
        self.wait_for("the console", "!document.getElementById('shell').hidden")
            .await;
    }

    /// Shows the page at `hash` (e.g. `#/queues`) and waits for `ready`.
    pub async fn show(&self, hash: &str, ready: &str) {
        self.run("location.hash = arguments[0];", vec![json!(hash)])
            .await;
        self.wait_for(hash, ready).await;
    }

    pub async fn screenshot(&self) -> Vec<u8> {
        self.client.screenshot().await.expect("screenshot")
    }

    /// Ends the session (Chromium quits) before the driver is killed.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group this Browser started.
        unsafe {
            libc::kill(-(self.driver.id() as i32), libc::SIGKILL);
        }
        let _ = self.driver.wait();
    }
}
