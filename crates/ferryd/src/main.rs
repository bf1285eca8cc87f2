//! `ferryd`: opens the store, serves the HTTP API, and shuts down cleanly on
//! SIGTERM (in-flight requests finish, every volume is flushed, exit 0).
//!
//! Starts with embedded defaults; every flag also has a key in the optional
//! TOML config file. The first start creates an admin user and writes its
//! token to `DATA/admin.token` (mode 0600).

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The ferry daemon.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// Directory of the store (default ./ferry-data)
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Address of the HTTP API (default 127.0.0.1:7410)
    #[arg(long, value_name = "ADDR")]
    api: Option<SocketAddr>,
    /// Address for NBD clients (default 127.0.0.1:10809; served once NBD lands)
    #[arg(long, value_name = "ADDR")]
    nbd: Option<SocketAddr>,
    /// TOML file with any of the keys data, api, nbd
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    data: Option<PathBuf>,
    api: Option<SocketAddr>,
    nbd: Option<SocketAddr>,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config: Config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))?
        }
        None => Config::default(),
    };
    let data = args
        .data
        .or(config.data)
        .unwrap_or_else(|| PathBuf::from("ferry-data"));
    let api = args
        .api
        .or(config.api)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7410)));
    let _nbd = args
        .nbd
        .or(config.nbd)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 10809)));
    if !api.ip().is_loopback() {
        bail!(
            "the API address {api} is not a loopback address; plain HTTP is only served on loopback and HTTPS is not built yet"
        );
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(run(data, api))
}

async fn run(data: PathBuf, api: SocketAddr) -> Result<()> {
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let store = ferry_store::Store::open(&data)
        .with_context(|| format!("opening the store in {}", data.display()))?;
    let auth = ferry_api::Auth::open(data.join("auth.json")).context("opening the user file")?;
    if auth.is_empty() {
        auth.create_user(ferry_api::auth::User {
            name: "admin".into(),
            role: ferry_api::Role::Admin,
            grants: vec![],
        })
        .context("creating the admin user")?;
        let (_, token) = auth
            .create_token("admin")
            .context("creating the admin token")?;
        let path = data.join("admin.token");
        ferry_api::auth::write_private(&path, format!("{token}\n").as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        println!("ferryd: created the admin token in {}", path.display());
    }
    let audit =
        ferry_api::AuditLog::open(data.join("audit.log")).context("opening the audit log")?;
    let state = ferry_api::AppState::new(store.clone(), auth, audit);
    let listener = tokio::net::TcpListener::bind(api)
        .await
        .with_context(|| format!("listening on {api}"))?;
    println!("ferryd: store in {}", data.display());
    println!("ferryd: API listening on http://{}", listener.local_addr()?);
    axum::serve(listener, ferry_api::router(state))
        .with_graceful_shutdown(shutdown())
        .await
        .context("serving the API")?;
    tokio::task::spawn_blocking(move || store.flush_all())
        .await
        .context("flushing")?
        .context("flushing the volumes")?;
    println!("ferryd: stopped cleanly");
    Ok(())
}

async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    println!("ferryd: stopping: finishing in-flight requests");
}
