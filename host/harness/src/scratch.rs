//! A private temporary directory, removed when dropped: where a component
//! given as bytes is written for `spool` to read. Touches nothing outside it.

use std::fs::DirBuilder;
use std::io::ErrorKind;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};

pub(crate) struct Scratch(PathBuf);

impl Scratch {
    pub(crate) fn new() -> Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let mut builder = DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        for _ in 0..1000 {
            let name = format!(
                "spool-harness-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            let path = std::env::temp_dir().join(name);
            // A directory that exists already, a stale one or another's, is
            // never reused: only one this call created is private.
            match builder.create(&path) {
                Ok(()) => return Ok(Self(path)),
                Err(error) if error.kind() == ErrorKind::AlreadyExists => continue,
                Err(error) => {
                    return Err(error).with_context(|| format!("creating {}", path.display()));
                }
            }
        }
        bail!(
            "no free name for a temporary directory in {}",
            std::env::temp_dir().display()
        )
    }

    /// Writes `bytes` to the file `name` in the directory and returns its path.
    pub(crate) fn write(&self, name: &str, bytes: &[u8]) -> Result<PathBuf> {
        let path = self.0.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_scratch_is_its_own_and_is_removed_on_drop() {
        let (a, b) = (Scratch::new().unwrap(), Scratch::new().unwrap());
        assert_ne!(a.0, b.0);
        let file = a.write("x.wasm", b"\0asm").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"\0asm");
        let dir = a.0.clone();
        drop(a);
        assert!(!dir.exists());
    }
}
