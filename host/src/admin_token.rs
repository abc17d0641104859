//! The operator's admin token: what lets `spool deploy` and friends work on a
//! fresh machine with zero set-up, without leaving the admin routes open.
//! `spool serve` reads it from a file only its user can read (creating it on
//! first start) and the CLI picks the same file up by itself; `SPOOL_ADMIN_KEY`
//! replaces it, e.g. for an instance whose operator sits elsewhere.
//!
//! Owns the file's location, creation and permissions; what the token allows
//! is `http::auth`'s business.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The environment variable that replaces the token file.
pub const ENV: &str = "SPOOL_ADMIN_KEY";

/// `~/.spool/admin-token` (or under the temp dir when there is no home).
pub fn default_path() -> PathBuf {
    std::env::home_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join(".spool")
        .join("admin-token")
}

/// The token the server accepts: `SPOOL_ADMIN_KEY`, else the file's,
/// created with a fresh secret if there is none yet.
pub fn load_or_create(path: Option<&Path>) -> Result<String> {
    if let Some(token) = from_env() {
        return Ok(token);
    }
    let path = path.map(Path::to_path_buf).unwrap_or_else(default_path);
    if let Some(token) = read(&path)? {
        return Ok(token);
    }
    create(&path)
}

/// The token the CLI presents: `SPOOL_ADMIN_KEY`, else the file's, if any.
pub fn for_cli() -> Option<String> {
    from_env().or_else(|| read(&default_path()).ok().flatten())
}

fn from_env() -> Option<String> {
    std::env::var(ENV)
        .ok()
        .filter(|token| !token.trim().is_empty())
}

fn read(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => Ok(Some(text.trim().to_owned())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read the admin token {}", path.display())),
    }
}

/// Writes a fresh token to a private temp file, then links it into place:
/// instances starting together all end up with the one token that won.
fn create(path: &Path) -> Result<String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "cannot create {} for the admin token: set [auth] admin_token_file to a writable path, or {ENV}",
            dir.display()
        )
    })?;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    let token = spool_core::access::new_secret().context("no randomness for the admin token")?;
    let temp = dir.join(format!(".admin-token-{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .with_context(|| format!("cannot write {}", temp.display()))?;
    writeln!(file, "{token}")?;
    drop(file);
    let linked = std::fs::hard_link(&temp, path);
    let _ = std::fs::remove_file(&temp);
    match linked {
        Ok(()) => {
            tracing::info!(path = %path.display(), "created the admin token (the CLI reads it from there)");
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read(path)?.with_context(|| format!("the admin token {} is empty", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("cannot create {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_created_once_private_and_then_reused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("nested").join("admin-token");
        let first = create(&path).expect("created");
        let mode = std::fs::metadata(&path)
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "only its owner may read it");
        assert_eq!(read(&path).expect("read"), Some(first.clone()));
        assert_eq!(
            create(&path).expect("second"),
            first,
            "the first token stays"
        );
    }
}
