//! `spool keys create|list|revoke`: API keys, through the admin API of any
//! running instance (with the operator's admin token, found by itself).
//!
//! Owns the arguments and output; keys are `spool_core::access`'s.

use anyhow::{Result, bail};
use serde_json::{Value, json};

#[derive(clap::Args, Debug)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub action: KeysAction,
    /// Base URL of any spool instance's API.
    #[arg(
        long,
        env = "SPOOL_SERVER",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub server: String,
}

#[derive(clap::Subcommand, Debug)]
pub enum KeysAction {
    /// Create a key; its secret is printed once.
    Create {
        /// admin, submitter or reader.
        #[arg(long, default_value = "submitter")]
        role: String,
        /// Bind the key to a user: its requests act as this user, whatever their body
        /// says, and see only this user's jobs and sessions.
        #[arg(long)]
        user: Option<String>,
        /// The tier of the bound user (e.g. vip); needs --user.
        #[arg(long, requires = "user")]
        tier: Option<String>,
        /// What the key is for.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List keys (never their secrets).
    List,
    /// Revoke a key by id.
    Revoke { id: String },
}

pub async fn run(args: KeysArgs) -> Result<()> {
    let base = args.server.trim_end_matches('/');
    let client = super::client(std::time::Duration::from_secs(30))?;
    let request = match &args.action {
        KeysAction::Create {
            role,
            user,
            tier,
            name,
        } => client
            .post(format!("{base}/admin/keys"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(
                json!({ "role": role, "userId": user, "userTier": tier, "name": name }).to_string(),
            ),
        KeysAction::List => client.get(format!("{base}/admin/keys")),
        KeysAction::Revoke { id } => client.delete(format!("{base}/admin/keys/{id}")),
    };
    let response = request.send().await?;
    let status = response.status();
    let body: Value = serde_json::from_str(&response.text().await?).unwrap_or(Value::Null);
    if !status.is_success() {
        let message = body["error"]["message"].as_str().unwrap_or("no details");
        bail!("the server refused ({status}): {message}");
    }
    match args.action {
        KeysAction::Create { .. } => {
            println!("{}", body["key"].as_str().unwrap_or_default());
            eprintln!(
                "key {} ({}) created; the secret above is shown only once",
                body["id"].as_str().unwrap_or("?"),
                body["role"].as_str().unwrap_or("?")
            );
        }
        KeysAction::List => println!("{}", serde_json::to_string_pretty(&body)?),
        KeysAction::Revoke { id } => println!("revoked {id}"),
    }
    Ok(())
}
