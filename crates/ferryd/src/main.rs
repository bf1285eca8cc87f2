//! `ferryd`: opens the store, serves the HTTP API, and shuts down cleanly on
//! SIGTERM (running jobs stop at a safe point and stay recorded for the next
//! start to settle, in-flight requests finish, every volume is flushed,
//! exit 0).
//!
//! Starts with embedded defaults; every flag also has a key in the optional
//! TOML config file. The first start creates an admin user and writes its
//! token to `DATA/admin.token` (mode 0600), and a site CA with the API's
//! certificate in `DATA/tls/` (see `tls.rs`), and names the site after the
//! hostname unless it has a name.
//!
//! Partners (other sites paired with this one) reach it on a separate
//! listener, `--partner-listen` (default 127.0.0.1:7411), always HTTPS,
//! where a client certificate must come from a paired partner's CA (see
//! `partner.rs`). Pairing tells partners the bound address, or the one
//! `--partner-advertise` gives (a proxy or NAT in front of the listener).
//!
//! The API speaks HTTPS on any address that is not loopback; on loopback it
//! speaks plain HTTP unless `--tls` (`tls = true`) asks for HTTPS. There is no
//! way to serve plain HTTP beyond the machine.
//!
//! Test-only: `FERRY_TEST_JOB_PAUSE=FILE` makes jobs wait at their safe
//! points while FILE exists and they have done at least the number of units
//! it holds (see `ferry_api::jobs`). End-to-end tests use it to catch a job
//! in the middle; it is not meant for anything else.

mod nbd;
mod partner;
mod replication;
mod serve;
mod tls;

use anyhow::{Context, Result};
use clap::Parser;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a stop waits for running jobs to reach a safe point.
const JOB_STOP_PATIENCE: Duration = Duration::from_secs(10);
/// Replication cycles sent at once, by default.
const REPLICATION_CYCLES: u16 = 4;
/// Of which initial copies, by default (never more than the cycles).
const REPLICATION_INITIAL_COPIES: u16 = 2;

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
    /// Address for NBD clients (default 127.0.0.1:10809)
    #[arg(long, value_name = "ADDR")]
    nbd: Option<SocketAddr>,
    /// Also serve NBD on this Unix socket
    #[arg(long, value_name = "PATH")]
    nbd_unix: Option<PathBuf>,
    /// NBD over TLS with the site certificate: off, allow (clients that ask
    /// upgrade with STARTTLS; the default) or require (clients that do not
    /// upgrade are refused)
    #[arg(long, value_name = "MODE", value_parser = parse_nbd_tls)]
    nbd_tls: Option<ferry_nbd::TlsMode>,
    /// Threads per NBD connection: a reader and N-1 helpers for requests that wait on the disk (default 4)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    nbd_workers: Option<u16>,
    /// Address of the partner listener (HTTPS with partners' client
    /// certificates; default 127.0.0.1:7411)
    #[arg(long, value_name = "ADDR")]
    partner_listen: Option<SocketAddr>,
    /// The address partners are told to reach the partner listener at, in
    /// pairing tokens and pairing requests (HOST:PORT, e.g. a proxy or NAT in
    /// front of this site; default: the bound address, or the hostname for
    /// an unspecified IP)
    #[arg(long, value_name = "HOST:PORT", value_parser = partner::parse_advertised)]
    partner_advertise: Option<String>,
    /// Replication cycles this site sends at once; further due cycles wait
    /// for one to end, shown as "queued" (default 4)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    replication_cycles: Option<u16>,
    /// Of those, initial copies (and resyncs of a group with no recovery
    /// point yet), which read whole disks (default 2, at most
    /// --replication-cycles)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    replication_initial_copies: Option<u16>,
    /// Serve HTTPS on a loopback API address too (any other address always serves HTTPS)
    #[arg(long)]
    tls: bool,
    /// A further name or IP address for the API's certificate (repeatable);
    /// localhost, 127.0.0.1, ::1 and the hostname are always in it
    #[arg(long = "tls-name", value_name = "NAME")]
    tls_names: Vec<String>,
    /// TOML file with any of the keys data, api, nbd, nbd_unix, nbd_tls, nbd_workers,
    /// partner_listen, partner_advertise, replication_cycles,
    /// replication_initial_copies, tls, tls_names
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    data: Option<PathBuf>,
    api: Option<SocketAddr>,
    nbd: Option<SocketAddr>,
    nbd_unix: Option<PathBuf>,
    nbd_tls: Option<String>,
    nbd_workers: Option<u16>,
    partner_listen: Option<SocketAddr>,
    partner_advertise: Option<String>,
    replication_cycles: Option<u16>,
    replication_initial_copies: Option<u16>,
    tls: Option<bool>,
    tls_names: Option<Vec<String>>,
}

fn parse_nbd_tls(s: &str) -> Result<ferry_nbd::TlsMode, String> {
    match s {
        "off" => Ok(ferry_nbd::TlsMode::Off),
        "allow" => Ok(ferry_nbd::TlsMode::Allow),
        "require" => Ok(ferry_nbd::TlsMode::Require),
        _ => Err(format!(
            "{s:?} is not an NBD TLS mode: use off, allow or require"
        )),
    }
}

/// Where and how NBD is served.
struct NbdOptions {
    addr: SocketAddr,
    unix: Option<PathBuf>,
    tls: ferry_nbd::TlsMode,
    workers: usize,
}

/// Where partners connect, the address they are told, and how many
/// replication cycles run at once.
struct PartnerOptions {
    listen: SocketAddr,
    advertise: Option<String>,
    cycles: usize,
    initial_copies: usize,
}

/// The scheduler's limits from the flags or the config file: `(cycles,
/// initial copies)`. Initial copies default to at most the cycles, and
/// asking for more of them than cycles is an error.
fn replication_limits(cycles: Option<u16>, initial: Option<u16>) -> Result<(usize, usize)> {
    let cycles = cycles.unwrap_or(REPLICATION_CYCLES);
    if !(1..=256).contains(&cycles) {
        anyhow::bail!("replication_cycles must be between 1 and 256, not {cycles}");
    }
    let initial = match initial {
        Some(n) if !(1..=256).contains(&n) => {
            anyhow::bail!("replication_initial_copies must be between 1 and 256, not {n}")
        }
        Some(n) if n > cycles => anyhow::bail!(
            "replication_initial_copies ({n}) cannot be more than replication_cycles ({cycles}): initial copies are cycles too"
        ),
        Some(n) => n,
        None => REPLICATION_INITIAL_COPIES.min(cycles),
    };
    Ok((usize::from(cycles), usize::from(initial)))
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
    let nbd = NbdOptions {
        addr: args
            .nbd
            .or(config.nbd)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 10809))),
        unix: args.nbd_unix.or(config.nbd_unix),
        tls: match (args.nbd_tls, config.nbd_tls) {
            (Some(m), _) => m,
            (None, Some(s)) => parse_nbd_tls(&s)
                .map_err(|e| anyhow::anyhow!(e))
                .context("config key nbd_tls")?,
            (None, None) => ferry_nbd::TlsMode::Allow,
        },
        workers: match args.nbd_workers.or(config.nbd_workers) {
            Some(0) => anyhow::bail!("nbd_workers must be at least 1"),
            Some(n) => usize::from(n),
            None => ferry_nbd::ServerConfig::default().workers,
        },
    };
    let partner_listen = args
        .partner_listen
        .or(config.partner_listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7411)));
    let partner_advertise = match (args.partner_advertise, config.partner_advertise) {
        (Some(a), _) => Some(a),
        (None, Some(s)) => Some(
            partner::parse_advertised(&s)
                .map_err(|e| anyhow::anyhow!(e))
                .context("config key partner_advertise")?,
        ),
        (None, None) => None,
    };
    let (cycles, initial_copies) = replication_limits(
        args.replication_cycles.or(config.replication_cycles),
        args.replication_initial_copies
            .or(config.replication_initial_copies),
    )?;
    let peers = PartnerOptions {
        listen: partner_listen,
        advertise: partner_advertise,
        cycles,
        initial_copies,
    };
    // Plain HTTP never leaves the machine: only a loopback address may skip TLS.
    let https = args.tls || config.tls.unwrap_or(false) || !api.ip().is_loopback();
    // The flag's names replace the config file's, like every other flag.
    let tls_names = if args.tls_names.is_empty() {
        config.tls_names.unwrap_or_default()
    } else {
        args.tls_names
    };
    let tls_names = tls::wanted_names(&tls_names)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(run(data, api, https, tls_names, nbd, peers))
}

/// Makes or checks the TLS material and says what clients need to trust.
/// Serving plain HTTP, a problem with it is only a warning.
fn tls_identity(data: &Path, names: &[String], https: bool) -> Result<Option<tls::Identity>> {
    let dir = data.join("tls");
    let id = match tls::load_or_create(&dir, names) {
        Ok(id) => id,
        Err(e) if !https => {
            tracing::warn!(
                "the TLS certificate in {} is not usable (serving plain HTTP on loopback, so going on): {e:#}",
                dir.display()
            );
            return Ok(None);
        }
        Err(e) => return Err(e).context("preparing the API's TLS certificate"),
    };
    if id.ca_created {
        println!("ferryd: created the site CA in {}", id.ca_path.display());
    }
    if let Some(why) = &id.issued {
        tracing::info!(certificate = %id.cert_path.display(), "issued the API certificate: {why}");
    }
    if https {
        println!(
            "ferryd: site CA {} SHA-256 {} (clients trust it: ferry --ca {})",
            id.ca_path.display(),
            id.ca_fingerprint,
            id.ca_path.display()
        );
        println!(
            "ferryd: TLS certificate {} SHA-256 {} for {}",
            id.cert_path.display(),
            id.cert_fingerprint,
            id.names.join(", ")
        );
    }
    Ok(Some(id))
}

async fn run(
    data: PathBuf,
    api: SocketAddr,
    https: bool,
    tls_names: Vec<String>,
    nbd: NbdOptions,
    peers: PartnerOptions,
) -> Result<()> {
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
    // Opened after the store, whose garbage collection finished any
    // interrupted reclaim: jobs a stop left running are settled against it.
    let jobs =
        ferry_api::Jobs::open(data.join("jobs.json"), &store).context("opening the jobs file")?;
    if let Some(file) = std::env::var_os("FERRY_TEST_JOB_PAUSE") {
        tracing::warn!(file = ?file, "FERRY_TEST_JOB_PAUSE is set: jobs pause while that file exists (a test-only knob)");
        jobs.set_test_pause(Some(PathBuf::from(file)));
    }
    let state = ferry_api::AppState::with_jobs(store.clone(), auth, audit, jobs.clone());
    let identity = tls_identity(&data, &tls_names, https)?;
    let nbd_tls = match (&identity, nbd.tls) {
        (_, ferry_nbd::TlsMode::Off) => None,
        (Some(id), _) => {
            // the API's certificate, without its HTTP protocol negotiation
            let mut config = (*id.config).clone();
            config.alpn_protocols.clear();
            Some(std::sync::Arc::new(config))
        }
        (None, ferry_nbd::TlsMode::Require) => {
            anyhow::bail!(
                "NBD TLS is required (--nbd-tls require) but the site certificate is not usable"
            )
        }
        (None, _) => None,
    };
    let nbd_config = ferry_nbd::ServerConfig {
        tls_mode: if nbd_tls.is_some() {
            nbd.tls
        } else {
            ferry_nbd::TlsMode::Off
        },
        tls: nbd_tls,
        workers: nbd.workers,
    };
    let nbd_mode = nbd_config.tls_mode;
    let (nbd_server, nbd_addr) = nbd::start(&store, nbd.addr, nbd.unix.as_deref(), nbd_config)?;
    let transport = match &identity {
        Some(id) if https => {
            serve::Transport::Tls(tokio_rustls::TlsAcceptor::from(id.config.clone()))
        }
        _ => serve::Transport::Plain,
    };
    let site = store
        .ensure_site_name(&partner::default_site_name())
        .context("naming the site")?;
    let partners = match &identity {
        Some(_) => {
            let material = tls::partner_material(&data.join("tls"))
                .context("preparing the partner certificates")?;
            if let Some(why) = &material.issued {
                tracing::info!("issued the site's client certificate: {why}");
            }
            let listener = tokio::net::TcpListener::bind(peers.listen)
                .await
                .with_context(|| format!("listening for partners on {}", peers.listen))?;
            let bound = listener.local_addr()?;
            let advertised = partner::advertised(bound, peers.advertise.as_deref());
            let link = std::sync::Arc::new(partner::Link::new(&material, advertised));
            state.set_site_link(link.clone());
            let fences = replication::Fences::default();
            let collector = replication::Collector::start(store.clone());
            let replicator = replication::Replicator::new(
                store.clone(),
                link.clone(),
                fences.clone(),
                collector.clone(),
            );
            link.set_replicator(&replicator);
            let announcer = link.clone();
            tokio::spawn(replicator.run(peers.cycles, peers.initial_copies));
            let acceptor =
                tokio_rustls::TlsAcceptor::from(partner::server_config(&material, &store)?);
            Some((
                listener,
                partner::router(state.clone(), &material, fences, collector),
                serve::Transport::Tls(acceptor),
                announcer,
            ))
        }
        None => {
            tracing::warn!("no usable TLS material: not listening for partners");
            None
        }
    };
    let listener = tokio::net::TcpListener::bind(api)
        .await
        .with_context(|| format!("listening on {api}"))?;
    // before saying where we listen: a SIGTERM right after that must stop
    // ferryd cleanly, not kill it
    let stop = shutdown(jobs.clone())?;
    println!(
        "ferryd: NBD listening on nbd://{nbd_addr}{} (TLS {})",
        nbd.unix
            .as_ref()
            .map(|p| format!(" and nbd+unix:///?socket={}", p.display()))
            .unwrap_or_default(),
        match nbd_mode {
            ferry_nbd::TlsMode::Off => "off",
            ferry_nbd::TlsMode::Allow => "allowed",
            ferry_nbd::TlsMode::Require => "required",
        }
    );
    if !nbd_addr.ip().is_loopback() && nbd_mode != ferry_nbd::TlsMode::Require {
        tracing::warn!(
            "NBD on {nbd_addr} accepts clients without TLS; --nbd-tls require refuses them"
        );
    }
    println!("ferryd: store in {}", data.display());
    // one stop for both listeners
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let partner_task = match partners {
        Some((listener, router, transport, announcer)) => {
            println!(
                "ferryd: partner listener on https://{} (site {site}{})",
                listener.local_addr()?,
                peers
                    .advertise
                    .as_ref()
                    .map(|a| format!(", advertised as {a}"))
                    .unwrap_or_default()
            );
            let mut rx = stop_rx.clone();
            let task = tokio::spawn(async move {
                let stopped = async move {
                    let _ = rx.wait_for(|s| *s).await;
                };
                serve::serve(listener, router, transport, stopped).await
            });
            // once the listener serves: partners call back to check it
            tokio::spawn(announcer.announce(store.clone()));
            Some(task)
        }
        None => None,
    };
    println!(
        "ferryd: API listening on {}://{}",
        if https { "https" } else { "http" },
        listener.local_addr()?
    );
    let stop = async move {
        stop.await;
        let _ = stop_tx.send(true);
    };
    serve::serve(listener, ferry_api::router(state), transport, stop)
        .await
        .context("serving the API")?;
    if let Some(task) = partner_task {
        task.await
            .context("the partner listener failed")?
            .context("serving partners")?;
    }
    // NBD clients get their requests in flight answered, then are disconnected.
    tokio::task::spawn_blocking(move || nbd_server.stop())
        .await
        .context("stopping NBD")?;
    let left = tokio::task::spawn_blocking(move || jobs.wait_idle(JOB_STOP_PATIENCE))
        .await
        .context("waiting for jobs")?;
    if left > 0 {
        // Recorded as running; the next start settles them.
        println!(
            "ferryd: {left} job(s) did not reach a safe point in time; leaving them to the next start"
        );
    }
    tokio::task::spawn_blocking(move || store.flush_all())
        .await
        .context("flushing")?
        .context("flushing the volumes")?;
    println!("ferryd: stopped cleanly");
    Ok(())
}

/// Installs the SIGTERM and SIGINT handlers now; the future ends on either,
/// after asking running jobs to stop at a safe point.
fn shutdown(jobs: ferry_api::Jobs) -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        println!("ferryd: stopping: jobs stop at a safe point, in-flight requests finish");
        jobs.stop();
    })
}
