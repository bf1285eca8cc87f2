//! `ferry-faultproxy`: the fault-injecting proxy as a process, for tests and
//! scripts that drive it from elsewhere (another process, another network
//! namespace). Flags set the faults at start; `--control ADDR` opens a
//! line-based TCP port to change them while it runs (see
//! `ferry_faultproxy::control`). Prints one line `listen=ADDR target=ADDR
//! control=ADDR|none` on stdout once it listens, so a caller that asked for
//! port 0 learns the ports. SIGINT or SIGTERM stops it, exit 0; a bad flag
//! exits 2, any other failure 1.

use anyhow::{Context, Result};
use clap::Parser;
use ferry_faultproxy::control::{self, MAX_LINE};
use ferry_faultproxy::units::{self, Kind, UnitError};
use ferry_faultproxy::{ByteSize, FaultProxy, Faults, Rate};
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const FAULTS_HELP: &str = "\
Faults (all per direction unless said otherwise; see docs/faultproxy.md):
  delay        every chunk read from one side leaves for the other no earlier
               than DELAY after it was read; reading goes on meanwhile, so it
               is a long wire: round trips take 2 x DELAY, bulk transfers are
               not slowed to a chunk per DELAY
  jitter       each chunk waits a further random time in [0, JITTER]; order
               is kept
  rate         a token bucket per direction shared by all connections (like a
               link), burst 10 ms of the rate (at least 1500 bytes)
  reset-every  once N bytes (both directions together) have crossed a
               connection, both sockets are closed with RST: both peers see a
               connection reset mid-stream
  partition    (control port only) nothing moves on live connections, data is
               held, not dropped; new connections are accepted but not
               connected onward until the partition ends

Control port (--control ADDR; one command per line, one answer line each:
ok ..., or error ...):
  partition on|off   delay DURATION   jitter DURATION   rate RATE|off
  reset-every SIZE|off   reset-now   stats   help
The control port has no authentication: give it a loopback address.

Example: ferry-faultproxy --listen 127.0.0.1:7411 --target 127.0.0.1:7412 \\
           --delay 50ms --rate 10mbit --control 127.0.0.1:7599
  then, from bash: exec 3<>/dev/tcp/127.0.0.1/7599
                   echo 'partition on' >&3; read -r answer <&3; echo \"$answer\"";

/// A TCP proxy that injects delay, a rate cap, connection resets and
/// partitions, for ferry's replication tests.
#[derive(Parser, Debug)]
#[command(version, about, after_help = FAULTS_HELP)]
struct Args {
    /// Address to accept clients on (port 0: any free port, printed at start)
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// Address to forward every connection to
    #[arg(long, value_name = "ADDR")]
    target: SocketAddr,
    /// One-way delay per direction: a number with us, ms or s (50ms, 1.5s), or 0
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "0",
        allow_hyphen_values = true,
        value_parser = parse_duration
    )]
    delay: Duration,
    /// Extra random one-way delay per chunk, uniform in [0, JITTER]; same forms as --delay
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "0",
        allow_hyphen_values = true,
        value_parser = parse_duration
    )]
    jitter: Duration,
    /// Rate cap per direction, shared by all connections: bits per second with
    /// bit, kbit, mbit or gbit (10mbit, 1.5gbit), or off
    #[arg(
        long,
        value_name = "RATE",
        default_value = "off",
        allow_hyphen_values = true,
        value_parser = parse_rate
    )]
    rate: RateSetting,
    /// Reset each connection after this many bytes (both directions): bytes,
    /// or with K, M, G (powers of 1024: 4M, 512K), or off
    #[arg(
        long,
        value_name = "SIZE",
        default_value = "off",
        allow_hyphen_values = true,
        value_parser = parse_size
    )]
    reset_every: SizeSetting,
    /// Address of the control port (a line-based TCP port; no authentication)
    #[arg(long, value_name = "ADDR")]
    control: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy)]
struct RateSetting(Option<Rate>);

#[derive(Debug, Clone, Copy)]
struct SizeSetting(Option<ByteSize>);

fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    units::parse_duration(s)
}

fn parse_rate(s: &str) -> Result<RateSetting, UnitError> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(RateSetting(None));
    }
    units::parse_rate(s)
        .map(|r| RateSetting(Some(r)))
        .map_err(or_off)
}

fn parse_size(s: &str) -> Result<SizeSetting, UnitError> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(SizeSetting(None));
    }
    units::parse_size(s)
        .map(|n| SizeSetting(Some(n)))
        .map_err(or_off)
}

/// Flags that take `off` say so in their error.
fn or_off(mut e: UnitError) -> UnitError {
    e.reason = match e.kind {
        Kind::Rate | Kind::Size if e.reason == "does not start with a number" => {
            "is neither a number nor off"
        }
        _ => e.reason,
    };
    e
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry-faultproxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    let faults = Faults {
        delay: args.delay,
        jitter: args.jitter,
        rate: args.rate.0,
        reset_every: args.reset_every.0,
    };
    let proxy = FaultProxy::start(args.listen, args.target, faults)
        .with_context(|| format!("start the proxy on {}", args.listen))?;
    let proxy = Arc::new(proxy);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the runtime")?;
    runtime.block_on(async {
        let control = match args.control {
            Some(addr) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("bind the control port {addr}"))?;
                if !addr.ip().is_loopback() {
                    tracing::warn!(
                        %addr,
                        "the control port is not on loopback; it has no authentication"
                    );
                }
                Some(listener)
            }
            None => None,
        };
        let control_addr = match &control {
            Some(l) => l
                .local_addr()
                .context("read the control port's address")?
                .to_string(),
            None => "none".to_owned(),
        };
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "listen={} target={} control={control_addr}",
            proxy.local_addr(),
            args.target
        )
        .and_then(|()| out.flush())
        .context("write the start line")?;
        drop(out);
        let serve = async {
            match control {
                Some(listener) => serve_control(listener, proxy.clone()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = stopped() => r,
            r = serve => r,
        }
    })?;
    // The runtime, and with it every control connection, is gone: this is the last handle.
    drop(runtime);
    if let Ok(proxy) = Arc::try_unwrap(proxy) {
        proxy.stop();
    }
    Ok(())
}

/// Returns on SIGINT or SIGTERM.
async fn stopped() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listen for SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("listen for SIGINT"),
        _ = term.recv() => Ok(()),
    }
}

async fn serve_control(listener: TcpListener, proxy: Arc<FaultProxy>) -> Result<()> {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "control accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let proxy = proxy.clone();
        tokio::spawn(async move {
            if let Err(e) = control_session(stream, &proxy).await {
                tracing::debug!(%peer, error = %e, "control connection ended");
            }
        });
    }
}

/// Answers each line of one control connection until it closes, or sends a
/// line too long to be a command (refused, then the connection is closed:
/// the rest of that line must not be read as commands).
async fn control_session(stream: TcpStream, proxy: &FaultProxy) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut line = Vec::with_capacity(MAX_LINE + 3);
    loop {
        line.clear();
        // A longest line with "\r\n", and one byte more to see a longer one.
        let n = (&mut read)
            .take(MAX_LINE as u64 + 3)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        let body = line.strip_suffix(b"\n").unwrap_or(&line);
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        let too_long = body.len() > MAX_LINE;
        let mut answer = if too_long {
            format!("error {}", control::ControlError::TooLong)
        } else {
            control::execute(proxy, body)
        };
        answer.push('\n');
        write.write_all(answer.as_bytes()).await?;
        if too_long {
            return Ok(());
        }
    }
}
