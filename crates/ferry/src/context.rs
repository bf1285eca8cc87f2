//! Named contexts: a server, a token file and the CA to trust per site, kept in the user's
//! config file (`$FERRY_CONFIG`, else `$XDG_CONFIG_HOME/ferry/config.toml`,
//! else `~/.config/ferry/config.toml`), so `ferry context use dr` switches
//! every later command to the DR site.

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Config {
    /// The context used when no flag or environment variable says otherwise.
    pub current: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Site>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Site {
    pub server: String,
    pub token_file: Option<String>,
    /// The site CA certificate to trust for an `https://` server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
}

pub fn path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("FERRY_CONFIG") {
        return Ok(PathBuf::from(p));
    }
    let base = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(x) => PathBuf::from(x),
        None => {
            PathBuf::from(std::env::var_os("HOME").context("neither FERRY_CONFIG nor HOME is set")?)
                .join(".config")
        }
    };
    Ok(base.join("ferry").join("config.toml"))
}

pub fn load() -> Result<Config> {
    let p = path()?;
    match std::fs::read_to_string(&p) {
        Ok(text) => toml::from_str(&text).with_context(|| format!("parsing {}", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

pub fn save(config: &Config) -> Result<()> {
    let p = path()?;
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = toml::to_string_pretty(config).context("encoding the config")?;
    let tmp = p.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &p).with_context(|| format!("writing {}", p.display()))?;
    Ok(())
}

/// The current context's site, if one is chosen.
pub fn current() -> Result<Option<Site>> {
    let config = load()?;
    match config.current {
        None => Ok(None),
        Some(name) => match config.contexts.get(&name) {
            Some(site) => Ok(Some(site.clone())),
            None => {
                bail!("the current context {name:?} is not defined; run `ferry context use NAME`")
            }
        },
    }
}
