//! Loading the policy file.

use devns_core::config::{Config, ConfigError, MAX_CONFIG_BYTES};
use std::io::Read;
use std::path::Path;

/// The config at `path`; defaults when the file does not exist.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let shown = path.display().to_string();
    let err = |message: String| ConfigError { path: shown.clone(), line: None, message };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
        Err(e) => return Err(err(format!("cannot open: {e}"))),
    };
    let mut buf = Vec::new();
    file.take(MAX_CONFIG_BYTES as u64 + 1).read_to_end(&mut buf).map_err(|e| err(format!("cannot read: {e}")))?;
    let text = String::from_utf8(buf).map_err(|_| err("not UTF-8 text".into()))?;
    Config::parse(&text, &shown)
}
