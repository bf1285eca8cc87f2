//! The NBD server: accepts connections (TCP, Unix), negotiates with
//! [`Negotiation`], then serves requests against the export's [`Disk`].
//!
//! Threads, not tasks, carry the data path. A connection has one reader
//! thread and a few helpers. The reader takes requests off the socket in
//! order and runs the quick ones itself: writes of whole pages up to
//! 1 MiB land in the page cache, and reads up to 128 KiB are tried with
//! `RWF_NOWAIT`, which answers only from memory. Their replies are held
//! back and leave together when the reader has to wait for the client, so
//! one receive's requests are answered with one send, with no thread
//! handover per request (measured: about a third less CPU per 4 KiB request
//! than workers taking turns on the socket). What may wait on the device
//! (reads not in memory, flush, FUA writes, partial pages, trim and
//! zeroing) or is large goes to a helper through a bounded queue, so a slow
//! request never holds up the quick ones behind it; replies leave in
//! completion order. Large reads are sent from mappings of the layers'
//! files, copied once ([`Connection::reply_read_mapped`]).
//!
//! The tokio runtime only accepts connections and, after STARTTLS, relays
//! between the TLS stream and a Unix socket pair whose other end the
//! connection's threads use as their plain stream.
//!
//! Stopping a connection (export removed, volume deleted, daemon stopping)
//! shuts down its read side: the reader sees the end of the stream, the
//! helpers finish the requests queued, the replies go out, and it closes.

use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferry_store::{Allocation, RoaringBitmap};

use crate::command::{Command, check};
use crate::disk::{Disk, DiskError};
use crate::handshake::{
    Agreement, Catalog, ExportMeta, MAX_OPTION_DATA, MetaContext, Negotiation, Step, TlsMode,
};
use crate::proto::*;

/// Exports as the server needs them: the handshake's [`Catalog`], plus
/// opening the storage and the changed-blocks sets.
pub trait Exports: Catalog + Send + Sync + 'static {
    /// Opens the export for transmission.
    fn open(&self, name: &str) -> Result<Disk, String>;
    /// Blocks written since `snapshot`, for the export's volume.
    fn changed_since(&self, name: &str, snapshot: &str) -> Result<RoaringBitmap, String>;
    /// Whether the export `meta` describes is still the one named so (not
    /// removed, not replaced by another of the same name).
    fn still_there(&self, meta: &ExportMeta) -> bool {
        self.lookup(&meta.name).is_some_and(|now| {
            now.description == meta.description && now.read_only == meta.read_only
        })
    }
}

/// How the server runs.
#[derive(Clone)]
pub struct ServerConfig {
    pub tls_mode: TlsMode,
    /// Required unless `tls_mode` is [`TlsMode::Off`].
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Threads per connection: its reader plus `workers - 1` helpers, the
    /// requests that may wait on the device at once. With 1 the reader runs
    /// everything itself.
    pub workers: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            tls_mode: TlsMode::Off,
            tls: None,
            workers: 4,
        }
    }
}

/// A byte stream a connection's threads share: TCP, or Unix (a Unix client,
/// or the plain end of a TLS relay).
#[derive(Debug)]
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }

    fn shutdown(&self, how: Shutdown) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
        };
    }

    fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }
}

impl Read for &Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&*s).read(buf),
            Stream::Unix(s) => (&*s).read(buf),
        }
    }
}

impl Write for &Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&*s).write(buf),
            Stream::Unix(s) => (&*s).write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&*s).write_vectored(bufs),
            Stream::Unix(s) => (&*s).write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where connections come from.
enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

impl Listener {
    /// The next connection, as a blocking [`Stream`] for the connection's
    /// threads, and who it is from.
    async fn accept(&self) -> io::Result<(Stream, String)> {
        match self {
            Listener::Tcp(l) => {
                let (sock, peer) = l.accept().await?;
                let sock = sock.into_std()?;
                sock.set_nonblocking(false)?;
                let _ = sock.set_nodelay(true);
                Ok((Stream::Tcp(sock), peer.to_string()))
            }
            Listener::Unix(l) => {
                let (sock, _) = l.accept().await?;
                let sock = sock.into_std()?;
                sock.set_nonblocking(false)?;
                Ok((Stream::Unix(sock), "unix".into()))
            }
        }
    }
}

/// A [`Stream`] owned, for a `BufReader`.
#[derive(Debug)]
struct OwnedStream(Stream);

impl Read for OwnedStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.0).read(buf)
    }
}

/// How much a connection's reader takes from the socket at once: many
/// small requests per receive, while of a large write's payload only what
/// came with its header is copied through the buffer (the rest is read
/// straight into the request's own). At 256 KiB that copy was 4 % of the
/// CPU of 1 MiB writes.
const READ_BUFFER: usize = 64 << 10;

/// A live connection, as the server's registry sees it.
struct ConnEntry {
    /// A handle on the connection's stream, to shut it down.
    stream: Stream,
    /// The export it serves, once in transmission.
    export: Option<ExportMeta>,
}

struct Inner {
    exports: Arc<dyn Exports>,
    config: ServerConfig,
    runtime: tokio::runtime::Handle,
    conns: Mutex<HashMap<u64, ConnEntry>>,
    /// Signalled when a connection ends.
    ended: Condvar,
    next_conn: AtomicU64,
    stopping: AtomicBool,
    stop_accepting: tokio::sync::watch::Sender<bool>,
}

/// The NBD server; cheap to clone.
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

impl Server {
    /// A server over `exports`; its accept loops and TLS relays run on `runtime`.
    pub fn new(
        exports: Arc<dyn Exports>,
        config: ServerConfig,
        runtime: tokio::runtime::Handle,
    ) -> Server {
        assert!(
            config.tls_mode == TlsMode::Off || config.tls.is_some(),
            "TLS mode {:?} needs a TLS configuration",
            config.tls_mode
        );
        Server {
            inner: Arc::new(Inner {
                exports,
                config,
                runtime,
                conns: Mutex::new(HashMap::new()),
                ended: Condvar::new(),
                next_conn: AtomicU64::new(1),
                stopping: AtomicBool::new(false),
                stop_accepting: tokio::sync::watch::channel(false).0,
            }),
        }
    }

    /// Listens on a TCP address; returns the address bound (port 0 picks one).
    pub fn listen_tcp(&self, addr: SocketAddr) -> io::Result<SocketAddr> {
        let listener = std::net::TcpListener::bind(addr)?;
        let local = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let _guard = self.inner.runtime.enter();
        self.accept_loop(Listener::Tcp(tokio::net::TcpListener::from_std(listener)?));
        Ok(local)
    }

    /// Listens on a Unix socket at `path` (a stale socket file is replaced).
    pub fn listen_unix(&self, path: &Path) -> io::Result<()> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = std::os::unix::net::UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        let _guard = self.inner.runtime.enter();
        self.accept_loop(Listener::Unix(tokio::net::UnixListener::from_std(
            listener,
        )?));
        Ok(())
    }

    /// Accepts connections on the runtime until the server stops.
    fn accept_loop(&self, listener: Listener) {
        let server = self.clone();
        let mut stop = self.inner.stop_accepting.subscribe();
        self.inner.runtime.spawn(async move {
            loop {
                tokio::select! {
                    () = stopped(&mut stop) => break,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, peer)) => server.spawn_connection(stream, peer),
                        Err(e) => {
                            tracing::warn!("NBD accept: {e}");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                    }
                }
            }
        });
    }

    /// Number of open connections.
    pub fn connections(&self) -> usize {
        self.inner.conns.lock().len()
    }

    /// Waits until no connection is open (each ended by its client or by
    /// the server).
    pub fn wait_idle(&self) {
        let mut conns = self.inner.conns.lock();
        while !conns.is_empty() {
            self.inner.ended.wait(&mut conns);
        }
    }

    /// Ends the connections whose export was removed or replaced; call after
    /// any change of the exports.
    pub fn exports_changed(&self) {
        let conns = self.inner.conns.lock();
        for (id, c) in conns.iter() {
            if let Some(meta) = &c.export
                && !self.inner.exports.still_there(meta)
            {
                tracing::info!(conn = id, export = %meta.name, "export gone: disconnecting its client");
                c.stream.shutdown(Shutdown::Read);
            }
        }
    }

    /// Stops accepting, ends every connection once its requests in flight
    /// are answered, and waits for them.
    pub fn stop(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        self.inner.stop_accepting.send_replace(true);
        for c in self.inner.conns.lock().values() {
            c.stream.shutdown(Shutdown::Read);
        }
        self.wait_idle();
    }

    fn spawn_connection(&self, stream: Stream, peer: String) {
        if self.inner.stopping.load(Ordering::SeqCst) {
            return;
        }
        let id = self.inner.next_conn.fetch_add(1, Ordering::Relaxed);
        let handle = match stream.try_clone() {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!("NBD connection from {peer}: {e}");
                return;
            }
        };
        self.inner.conns.lock().insert(
            id,
            ConnEntry {
                stream: handle,
                export: None,
            },
        );
        let server = self.clone();
        let who = peer.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("nbd-conn-{id}"))
            .spawn(move || {
                match server.serve(id, stream) {
                    Ok(()) => tracing::debug!(conn = id, "NBD connection from {who} closed"),
                    Err(e) => tracing::debug!(conn = id, "NBD connection from {who} ended: {e}"),
                }
                let mut conns = server.inner.conns.lock();
                conns.remove(&id);
                server.inner.ended.notify_all();
            });
        if let Err(e) = spawned {
            tracing::warn!("NBD connection from {peer}: no thread: {e}");
            self.inner.conns.lock().remove(&id);
            self.inner.ended.notify_all();
        }
    }

    /// Replaces the registry's handle on a connection's stream (after STARTTLS).
    fn set_stream(&self, id: u64, stream: &Stream) -> io::Result<()> {
        let handle = stream.try_clone()?;
        if let Some(c) = self.inner.conns.lock().get_mut(&id) {
            c.stream = handle;
        }
        if self.inner.stopping.load(Ordering::SeqCst) {
            stream.shutdown(Shutdown::Read);
        }
        Ok(())
    }

    fn serve(&self, id: u64, mut stream: Stream) -> io::Result<()> {
        (&stream).write_all(&greeting())?;
        let mut flags = [0u8; 4];
        (&stream).read_exact(&mut flags)?;
        let client_flags = decode_client_flags(flags)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        // A Unix socket stays on this machine, guarded by its file's
        // permissions: no TLS there (STARTTLS is refused, not required).
        let tls_mode = match stream {
            Stream::Tcp(_) => self.inner.config.tls_mode,
            Stream::Unix(_) => TlsMode::Off,
        };
        let mut nego = Negotiation::new(tls_mode, client_flags);
        let mut data = Vec::new();
        let mut out = Vec::new();
        let agreement = loop {
            let mut header = [0u8; OPTION_HEADER_LEN];
            (&stream).read_exact(&mut header)?;
            let h = decode_option_header(&header)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            out.clear();
            let step = if h.len > MAX_OPTION_DATA {
                io::copy(&mut (&stream).take(u64::from(h.len)), &mut io::sink())?;
                nego.too_big(h.option, &mut out)
            } else {
                data.resize(h.len as usize, 0);
                (&stream).read_exact(&mut data)?;
                nego.handle(self.inner.exports.as_ref(), h.option, &data, &mut out)
            };
            (&stream).write_all(&out)?;
            match step {
                Step::Continue => {}
                Step::Close => return Ok(()),
                Step::StartTls => {
                    stream = self.start_tls(stream)?;
                    self.set_stream(id, &stream)?;
                }
                Step::Transmit(a) => break a,
            }
        };
        let disk = match self.inner.exports.open(&agreement.export.name) {
            Ok(d) => d,
            Err(e) => {
                // Gone between the answer and now: all we can do is close.
                tracing::info!(
                    conn = id,
                    "export {:?} cannot be opened: {e}",
                    agreement.export.name
                );
                return Ok(());
            }
        };
        if let Some(c) = self.inner.conns.lock().get_mut(&id) {
            c.export = Some(agreement.export.clone());
        }
        if self.inner.stopping.load(Ordering::SeqCst) {
            return Ok(());
        }
        tracing::debug!(conn = id, export = %agreement.export.name, "NBD transmission");
        let mut reader =
            io::BufReader::with_capacity(READ_BUFFER, OwnedStream(stream.try_clone()?));
        let conn = Connection {
            writer: Replies::new(stream),
            agreement,
            disk,
            exports: self.inner.exports.clone(),
            closing: AtomicBool::new(false),
            jobs: Jobs::default(),
        };
        let helpers = self.inner.config.workers.max(1) - 1;
        std::thread::scope(|s| {
            for _ in 0..helpers {
                s.spawn(|| conn.help());
            }
            conn.lead(&mut reader, helpers > 0);
        });
        conn.writer.sock.shutdown(Shutdown::Both);
        Ok(())
    }

    /// Upgrades `stream` to TLS: the runtime relays between the TLS session
    /// and one end of a Unix socket pair; the other end is returned.
    fn start_tls(&self, stream: Stream) -> io::Result<Stream> {
        let Some(config) = self.inner.config.tls.clone() else {
            return Err(io::Error::other("STARTTLS without a TLS configuration"));
        };
        let Stream::Tcp(tcp) = stream else {
            return Err(io::Error::other("STARTTLS on a Unix socket is not offered"));
        };
        let (ours, theirs) = UnixStream::pair()?;
        tcp.set_nonblocking(true)?;
        theirs.set_nonblocking(true)?;
        let _guard = self.inner.runtime.enter();
        let tcp = tokio::net::TcpStream::from_std(tcp)?;
        let plain = tokio::net::UnixStream::from_std(theirs)?;
        self.inner.runtime.spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let mut tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::info!("NBD TLS handshake failed: {e}");
                    return;
                }
            };
            let mut plain = plain;
            if let Err(e) = tokio::io::copy_bidirectional(&mut tls, &mut plain).await {
                tracing::debug!("NBD TLS relay ended: {e}");
            }
        });
        Ok(Stream::Unix(ours))
    }
}

/// Resolves once the server stops accepting.
async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

/// One connection in transmission: its reader thread ([`lead`]) and the
/// helpers that run what the reader does not run itself.
///
/// [`lead`]: Connection::lead
struct Connection {
    /// Also the handle that shuts the connection down.
    writer: Replies,
    agreement: Agreement,
    disk: Disk,
    exports: Arc<dyn Exports>,
    closing: AtomicBool,
    jobs: Jobs,
}

/// Reads the reader answers itself when the engine has them in memory.
const INLINE_MAX: u32 = 128 << 10;
/// Writes the reader runs itself (non-FUA, whole pages): they land in the
/// page cache. Up to 1 MiB the payload is still in this core's cache when
/// it is copied on; handing a 1 MiB write to a helper cost 25 % more CPU
/// per write and 10-15 % of the throughput (bench/README.md).
const INLINE_WRITE_MAX: u32 = 1 << 20;

/// Writes of whole pages only are run by the reader.
const PAGE: u64 = 4096;

/// Where the reader sends a request.
enum Route {
    /// Run here, now.
    Inline,
    /// A read run here if the engine can answer it from memory, else by a
    /// helper.
    Cached { offset: u64, len: u32 },
    /// Handed to a helper: it may wait on the device (flush, FUA, trim and
    /// zeroing, reads not in memory) or is large enough to overlap with the
    /// next request's transfer.
    Helper,
}

impl Connection {
    fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.writer.sock.shutdown(Shutdown::Read);
    }

    /// The reader: takes requests off the socket in order and runs the
    /// quick ones itself, replying in batches (one send for all the
    /// requests one receive brought); the rest go to the helpers. Without
    /// helpers it runs everything. Until the stream ends or a disconnect.
    fn lead(&self, reader: &mut io::BufReader<OwnedStream>, helped: bool) {
        let mut buf: Vec<u8> = Vec::new();
        if let Err(e) = self.read_loop(reader, &mut buf, helped) {
            if e.kind() != io::ErrorKind::UnexpectedEof {
                tracing::debug!("NBD connection: {e}");
            }
            self.close();
        }
        // Our replies still held back go out before the helpers' last ones.
        if let Err(e) = self.writer.flush() {
            tracing::debug!("NBD reply: {e}");
        }
        self.jobs.close();
    }

    fn read_loop(
        &self,
        reader: &mut io::BufReader<OwnedStream>,
        buf: &mut Vec<u8>,
        helped: bool,
    ) -> io::Result<()> {
        loop {
            if self.closing.load(Ordering::SeqCst) {
                return Ok(());
            }
            let mut header = [0u8; REQUEST_LEN];
            self.read_exact(reader, &mut header)?;
            let req = decode_request(&header)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            let checked = check(&req, &self.agreement);
            let cmd = match checked {
                Ok(Command::Disconnect) => {
                    self.closing.store(true, Ordering::SeqCst);
                    return Ok(());
                }
                Ok(cmd) => cmd,
                Err(r) => {
                    if req.command == CMD_WRITE {
                        // Refused, but its payload is on the wire: skip it.
                        self.writer.flush()?;
                        let skipped = io::copy(
                            &mut (&mut *reader).take(u64::from(req.len)),
                            &mut io::sink(),
                        )?;
                        if skipped < u64::from(req.len) {
                            return Err(io::ErrorKind::UnexpectedEof.into());
                        }
                    }
                    self.reply_error(req.cookie, r.error, &r.message, When::Later)?;
                    continue;
                }
            };
            let route = match cmd {
                _ if !helped => Route::Inline,
                Command::Read { offset, len } if len <= INLINE_MAX => Route::Cached { offset, len },
                // A write of part of a page may first read the page in.
                Command::Write {
                    offset,
                    len,
                    fua: false,
                } if len <= INLINE_WRITE_MAX && (offset | u64::from(len)).is_multiple_of(PAGE) => {
                    Route::Inline
                }
                Command::BlockStatus { .. } | Command::Cache { .. } => Route::Inline,
                _ => Route::Helper,
            };
            match route {
                Route::Inline => {
                    if let Command::Write { len, .. } = cmd {
                        buf.resize(len as usize, 0);
                        self.read_exact(reader, buf)?;
                    }
                    self.run(req.cookie, cmd, buf, When::Later)?;
                }
                Route::Cached { offset, len } => {
                    buf.resize(len as usize, 0);
                    match self.disk.try_read(buf, offset) {
                        Ok(true) => self.reply_read(req.cookie, offset, buf, When::Later)?,
                        // Not in memory: a helper waits for the device.
                        Ok(false) => self.jobs.push(&self.writer, self.jobs.job(req.cookie, cmd)),
                        Err(e) => self.reply_disk_error(req.cookie, e, When::Later)?,
                    }
                }
                Route::Helper => {
                    let mut job = self.jobs.job(req.cookie, cmd);
                    if let Command::Write { len, .. } = cmd {
                        job.buf.resize(len as usize, 0);
                        self.read_exact(reader, &mut job.buf)?;
                    }
                    self.jobs.push(&self.writer, job);
                }
            }
        }
    }

    /// Fills `out` from the socket; when that has to wait for the client,
    /// the replies held back go out first.
    fn read_exact(
        &self,
        reader: &mut io::BufReader<OwnedStream>,
        out: &mut [u8],
    ) -> io::Result<()> {
        if reader.buffer().len() < out.len() {
            self.writer.flush()?;
        }
        reader.read_exact(out)
    }

    /// A helper: runs what the reader hands over, until it stops.
    fn help(&self) {
        while let Some(mut job) = self.jobs.pop() {
            let sent = self.run(job.cookie, job.cmd, &mut job.buf, When::Now);
            self.jobs.recycle(job.buf);
            if let Err(e) = sent {
                tracing::debug!("NBD reply: {e}");
                self.close();
            }
        }
    }

    /// Runs one accepted request and replies.
    fn run(&self, cookie: u64, cmd: Command, buf: &mut Vec<u8>, when: When) -> io::Result<()> {
        let d = &self.disk;
        let done = match cmd {
            Command::Read { offset, len } => {
                if len >= MAPPED_READ_MIN {
                    match self.reply_read_mapped(cookie, offset, len, buf) {
                        Mapped::Sent(sent) => return sent,
                        Mapped::Failed(e) => return self.reply_disk_error(cookie, e, when),
                        Mapped::Unmapped => {}
                    }
                }
                buf.resize(len as usize, 0);
                match d.read(buf, offset) {
                    Ok(()) => return self.reply_read(cookie, offset, buf, when),
                    Err(e) => Err(e),
                }
            }
            Command::Write { offset, fua, .. } => d.write(buf, offset, fua),
            Command::WriteZeroes {
                offset,
                len,
                fua,
                no_hole,
                ..
            } => d.write_zeroes(offset, u64::from(len), fua, no_hole),
            Command::Trim { offset, len, fua } => d.trim(offset, u64::from(len), fua),
            Command::Flush => d.flush(),
            // A hint; the page cache is already the cache.
            Command::Cache { .. } => Ok(()),
            Command::BlockStatus {
                offset,
                len,
                req_one,
            } => return self.reply_block_status(cookie, offset, len, req_one, buf, when),
            Command::Disconnect => Ok(()),
        };
        match done {
            Ok(()) => self.reply_ok(cookie, when),
            Err(e) => self.reply_disk_error(cookie, e, when),
        }
    }

    fn reply_ok(&self, cookie: u64, when: When) -> io::Result<()> {
        if self.agreement.structured {
            let header = chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie, 0);
            self.writer.send(&[&header], when)
        } else {
            self.writer.send(&[&simple_reply(0, cookie)], when)
        }
    }

    fn reply_error(&self, cookie: u64, error: u32, message: &str, when: When) -> io::Result<()> {
        if self.agreement.structured {
            let mut out = Vec::with_capacity(CHUNK_HEADER_LEN + 6 + message.len());
            put_error_chunk(&mut out, cookie, error, message);
            self.writer.send(&[&out], when)
        } else {
            self.writer.send(&[&simple_reply(error, cookie)], when)
        }
    }

    fn reply_disk_error(&self, cookie: u64, e: DiskError, when: When) -> io::Result<()> {
        let sent = self.reply_error(cookie, e.error, &e.message, when);
        if e.gone {
            self.close();
        }
        sent
    }

    fn reply_read(&self, cookie: u64, offset: u64, data: &[u8], when: When) -> io::Result<()> {
        if self.agreement.structured && data.is_empty() {
            return self.reply_ok(cookie, when);
        }
        let (header, n) = self.read_header(cookie, offset, data.len() as u32);
        self.writer.send(&[&header[..n], data], when)
    }

    /// What goes before a successful read's `len` bytes: a simple reply, or
    /// the header of one `OFFSET_DATA` chunk and its offset; and its length.
    fn read_header(&self, cookie: u64, offset: u64, len: u32) -> ([u8; 28], usize) {
        let mut header = [0u8; 28];
        if self.agreement.structured {
            header[..20].copy_from_slice(&chunk_header(
                REPLY_FLAG_DONE,
                REPLY_TYPE_OFFSET_DATA,
                cookie,
                8 + len,
            ));
            header[20..].copy_from_slice(&offset.to_be_bytes());
            (header, 28)
        } else {
            header[..16].copy_from_slice(&simple_reply(0, cookie));
            (header, 16)
        }
    }

    /// Replies to a read with its bytes sent from the page cache, through
    /// mappings of the layers' files, so that they are copied once (into
    /// the socket) instead of twice. The send may not wait while the volume
    /// is held: what the socket does not take at once is read into `buf`
    /// and sent after.
    fn reply_read_mapped(&self, cookie: u64, offset: u64, len: u32, buf: &mut Vec<u8>) -> Mapped {
        // Planned before taking the socket, while another reply is sent:
        // under the socket only the send is left (and a check that the
        // plan still holds).
        let plan = match self.disk.plan_mapped(offset, u64::from(len)) {
            Ok(Some(plan)) => plan,
            // Not mapped, or not all in memory: read the usual way (by a
            // helper, in parallel, not while holding the socket).
            Ok(None) => return Mapped::Unmapped,
            Err(e) => return Mapped::Failed(e),
        };
        let planned = Instant::now();
        let (header, n) = self.read_header(cookie, offset, len);
        let header = &header[..n];
        let mut outcome = Mapped::Unmapped;
        let sent = self.writer.send_with(|sock| {
            if planned.elapsed() > PLAN_FRESH && !plan.in_memory() {
                // A long wait for the socket (a full one, a slow client),
                // and pages have left memory since: read the usual way.
                return Ok(());
            }
            let fd = sock.raw_fd();
            let sent = match plan.send(|data| send_now(fd, header, data)) {
                Ok(Some(Ok(sent))) => sent,
                Ok(Some(Err(e))) => {
                    if e.raw_os_error() == Some(libc::EFAULT) {
                        // Only a page the kernel could not read does this.
                        tracing::warn!(
                            export = %self.agreement.export.name,
                            offset,
                            len,
                            "a read failed in the send (device error?); ending the connection"
                        );
                    }
                    return Err(e);
                }
                // The volume passed a barrier since the plan (a snapshot,
                // slots given to new blocks): nothing sent, the caller
                // replies the usual way.
                Ok(None) => return Ok(()),
                Err(e) => {
                    outcome = Mapped::Failed(e.into());
                    return Ok(());
                }
            };
            outcome = Mapped::Sent(Ok(()));
            let total = header.len() + len as usize;
            if sent == total {
                return Ok(());
            }
            // The socket is full: the rest is read (no longer holding the
            // volume) and sent the usual way. Failing now leaves a reply
            // cut short, which only the end of the connection can answer.
            let data_sent = sent.saturating_sub(header.len());
            buf.resize(len as usize - data_sent, 0);
            self.disk
                .read(buf, offset + data_sent as u64)
                .map_err(|e| io::Error::other(e.message))?;
            write_all_parts(&mut &*sock, &[&header[sent.min(header.len())..], buf])
        });
        match (sent, outcome) {
            (Err(e), _) => Mapped::Sent(Err(e)),
            (Ok(()), outcome) => outcome,
        }
    }

    fn reply_block_status(
        &self,
        cookie: u64,
        offset: u64,
        len: u32,
        req_one: bool,
        buf: &mut Vec<u8>,
        when: When,
    ) -> io::Result<()> {
        buf.clear();
        let count = self.agreement.contexts.len();
        for (i, (id, ctx)) in self.agreement.contexts.iter().enumerate() {
            let runs = match ctx {
                MetaContext::Allocation => {
                    self.disk.allocation(offset, u64::from(len)).map(|runs| {
                        runs.into_iter()
                            .map(|(l, kind)| {
                                let flags = match kind {
                                    Allocation::Data => 0,
                                    Allocation::Zero => STATE_HOLE | STATE_ZERO,
                                };
                                (l, flags)
                            })
                            .collect::<Vec<_>>()
                    })
                }
                MetaContext::ChangedSince(snap) => self
                    .exports
                    .changed_since(&self.agreement.export.name, snap)
                    .map(|set| changed_runs(&set, offset, u64::from(len)))
                    .map_err(|message| DiskError {
                        error: EIO,
                        message,
                        gone: false,
                    }),
            };
            let mut runs = match runs {
                Ok(r) => r,
                Err(e) => return self.reply_disk_error(cookie, e, when),
            };
            if req_one {
                runs.truncate(1);
            }
            if runs.is_empty() {
                runs.push((u64::from(len), 0));
            }
            let flags = if i + 1 == count { REPLY_FLAG_DONE } else { 0 };
            let payload = 4 + 8 * runs.len() as u32;
            buf.extend_from_slice(&chunk_header(
                flags,
                REPLY_TYPE_BLOCK_STATUS,
                cookie,
                payload,
            ));
            buf.extend_from_slice(&id.to_be_bytes());
            for (l, f) in runs {
                // A run never exceeds the request, whose length fits 32 bits.
                buf.extend_from_slice(&(l.min(u64::from(u32::MAX)) as u32).to_be_bytes());
                buf.extend_from_slice(&f.to_be_bytes());
            }
        }
        self.writer.send(&[buf], when)
    }
}

/// Replies up to this size are copied into the shared batch; larger ones
/// (big reads) wait for their turn and go out from the thread's buffer.
const BATCH_REPLY: usize = 64 << 10;

/// Replies held back ([`When::Later`]) go out anyway once this many bytes
/// wait.
const HOLD_MAX: usize = 256 << 10;

/// When a reply leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum When {
    /// Now, or with the batch a thread sending right now takes along.
    Now,
    /// With the next send or [`Replies::flush`]: the reader's replies, held
    /// while more requests it already received are run, so that the
    /// replies to one receive's requests leave in one send.
    Later,
}

/// The socket's write side, shared by a connection's threads, combining
/// replies: a thread appends its reply to the pending batch and, unless
/// another is already writing, becomes the writer and sends batches until
/// none is pending. Under load many replies leave in one system call.
struct Replies {
    state: Mutex<Batch>,
    /// Signalled when the writer role is given up.
    idle: Condvar,
    sock: Stream,
}

#[derive(Default)]
struct Batch {
    pending: Vec<u8>,
    /// The other buffer, swapped in while `pending` is being written.
    spare: Vec<u8>,
    writing: bool,
    /// A write failed: the connection is finished.
    broken: bool,
}

impl Replies {
    fn new(sock: Stream) -> Replies {
        Replies {
            state: Mutex::new(Batch::default()),
            idle: Condvar::new(),
            sock,
        }
    }

    fn send(&self, parts: &[&[u8]], when: When) -> io::Result<()> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut st = self.state.lock();
        if total <= BATCH_REPLY {
            for p in parts {
                st.pending.extend_from_slice(p);
            }
            if st.writing || (when == When::Later && st.pending.len() < HOLD_MAX) {
                return if st.broken { Err(broken()) } else { Ok(()) };
            }
            st.writing = true;
            return self.write_batches(st, None::<fn(&Stream) -> io::Result<()>>);
        }
        drop(st);
        self.send_with(|sock| write_all_parts(&mut &*sock, parts))
    }

    /// Sends a large reply: as the writer, after what is pending, `send`
    /// writes it to the socket itself. An error from `send` finishes the
    /// connection.
    fn send_with(&self, send: impl FnOnce(&Stream) -> io::Result<()>) -> io::Result<()> {
        let mut st = self.state.lock();
        while st.writing {
            self.idle.wait(&mut st);
        }
        st.writing = true;
        self.write_batches(st, Some(send))
    }

    /// Sends the replies held back, unless a writer is at it already.
    fn flush(&self) -> io::Result<()> {
        let mut st = self.state.lock();
        if st.broken {
            return Err(broken());
        }
        if st.writing || st.pending.is_empty() {
            return Ok(());
        }
        st.writing = true;
        self.write_batches(st, None::<fn(&Stream) -> io::Result<()>>)
    }

    /// As the writer: sends what is pending (then `own`, a large reply),
    /// until nothing is; then gives up the role.
    fn write_batches<'a>(
        &'a self,
        mut st: parking_lot::MutexGuard<'a, Batch>,
        mut own: Option<impl FnOnce(&Stream) -> io::Result<()>>,
    ) -> io::Result<()> {
        let mut result = Ok(());
        loop {
            if st.broken {
                result = Err(broken());
                break;
            }
            if st.pending.is_empty() && own.is_none() {
                break;
            }
            let spare = std::mem::take(&mut st.spare);
            let mut batch = std::mem::replace(&mut st.pending, spare);
            drop(st);
            let mut sent = write_all_parts(&mut &self.sock, &[&batch]);
            if sent.is_ok()
                && let Some(send) = own.take()
            {
                sent = send(&self.sock);
            }
            batch.clear();
            st = self.state.lock();
            st.spare = batch;
            if let Err(e) = sent {
                st.broken = true;
                result = Err(e);
                break;
            }
        }
        st.writing = false;
        // One waiter takes the role; waking them all would send the rest
        // back to sleep (two context switches each, per large reply). A
        // waiter that finds the role taken again waits for that writer,
        // which wakes one in turn.
        self.idle.notify_one();
        result
    }
}

/// Reads from this size on are sent from the page cache through mappings
/// ([`Connection::reply_read_mapped`]); below it the copy into a buffer costs
/// less than building the pieces.
const MAPPED_READ_MIN: u32 = 64 << 10;

/// How long after a read was planned (its pages found in memory) the send
/// goes from the plan without looking again. A full socket can hold the
/// sender several milliseconds; past this the pages are looked for again
/// (they may have left memory), under the socket, where waiting that long
/// means the client, not the sender, sets the pace.
const PLAN_FRESH: Duration = Duration::from_millis(20);

/// How [`Connection::reply_read_mapped`] ended.
enum Mapped {
    /// Replied (or the connection failed).
    Sent(io::Result<()>),
    /// The disk refused the read (out of range, gone): nothing was sent.
    Failed(DiskError),
    /// The storage has no mappings, or the bytes are not all in memory:
    /// nothing was sent.
    Unmapped,
}

/// Sends `header` then `data` (iovecs only system calls may read) on the
/// socket `fd` as far as it takes them without waiting; how many bytes
/// went. A failure after some bytes went is an error too: the reply is cut.
fn send_now(fd: std::os::fd::RawFd, header: &[u8], data: &[libc::iovec]) -> io::Result<usize> {
    const IOV_MAX: usize = 1024;
    let mut iov = Vec::with_capacity(data.len() + 1);
    iov.push(libc::iovec {
        iov_base: header.as_ptr().cast_mut().cast(),
        iov_len: header.len(),
    });
    iov.extend_from_slice(data);
    let mut sent = 0usize;
    let mut first = 0;
    while first < iov.len() {
        let batch = &iov[first..iov.len().min(first + IOV_MAX)];
        // SAFETY: an all-zero msghdr is valid; the one filled below points
        // at `batch`, alive for the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = batch.as_ptr().cast_mut();
        msg.msg_iovlen = batch.len() as _;
        // SAFETY: `msg` names iovecs valid for reading during the call (the
        // header, and data the caller keeps mapped and held).
        let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(sent),
                _ => return Err(e),
            }
        }
        let mut n = n as usize;
        sent += n;
        while first < iov.len() && n >= iov[first].iov_len {
            n -= iov[first].iov_len;
            first += 1;
        }
        if n > 0 {
            // SAFETY: `n` is less than the iovec's length: it stays inside.
            iov[first].iov_base = unsafe { iov[first].iov_base.cast::<u8>().add(n) }.cast();
            iov[first].iov_len -= n;
        }
    }
    Ok(sent)
}

/// Requests handed to helpers at most, per connection, and their buffers'
/// bytes at most (requests go up to 32 MiB): the reader waits for room
/// beyond either, though always queues one.
const MAX_QUEUED: usize = 8;
const MAX_QUEUED_BYTES: usize = 64 << 20;
/// Buffers kept for reuse by a connection's jobs, and the largest kept.
const MAX_SPARE: usize = 8;
const MAX_SPARE_BYTES: usize = 1 << 20;

/// A request the reader hands to a helper, with its buffer (a write's
/// payload, or room for a read).
struct Job {
    cookie: u64,
    cmd: Command,
    buf: Vec<u8>,
}

/// The queue between a connection's reader and its helpers.
#[derive(Default)]
struct Jobs {
    state: Mutex<JobState>,
    /// Signalled when a job is queued or the queue closes.
    ready: Condvar,
    /// Signalled when a job is taken.
    room: Condvar,
}

#[derive(Default)]
struct JobState {
    queue: std::collections::VecDeque<Job>,
    /// Bytes the queued jobs' requests carry or ask for.
    queued_bytes: usize,
    closed: bool,
    spare: Vec<Vec<u8>>,
}

impl JobState {
    fn full(&self) -> bool {
        self.queue.len() >= MAX_QUEUED
            || (!self.queue.is_empty() && self.queued_bytes >= MAX_QUEUED_BYTES)
    }
}

impl Job {
    /// The bytes it moves, for the queue's bound.
    fn bytes(&self) -> usize {
        match self.cmd {
            Command::Read { len, .. } | Command::Write { len, .. } => len as usize,
            _ => 0,
        }
    }
}

impl Jobs {
    /// A job for `cmd`, with a buffer kept from an earlier one if any.
    fn job(&self, cookie: u64, cmd: Command) -> Job {
        Job {
            cookie,
            cmd,
            buf: self.state.lock().spare.pop().unwrap_or_default(),
        }
    }

    /// Queues `job`, first waiting for room; the replies `writer` holds
    /// back leave before any wait.
    fn push(&self, writer: &Replies, job: Job) {
        let mut st = self.state.lock();
        if st.full() {
            drop(st);
            // A failed send shows on the next read; the job is still run.
            let _ = writer.flush();
            st = self.state.lock();
            while st.full() {
                self.room.wait(&mut st);
            }
        }
        st.queued_bytes += job.bytes();
        st.queue.push_back(job);
        self.ready.notify_one();
    }

    /// The next job; `None` once the queue is closed and empty.
    fn pop(&self) -> Option<Job> {
        let mut st = self.state.lock();
        loop {
            if let Some(job) = st.queue.pop_front() {
                st.queued_bytes -= job.bytes();
                self.room.notify_one();
                return Some(job);
            }
            if st.closed {
                return None;
            }
            self.ready.wait(&mut st);
        }
    }

    fn recycle(&self, buf: Vec<u8>) {
        if buf.capacity() > MAX_SPARE_BYTES {
            return;
        }
        let mut st = self.state.lock();
        if st.spare.len() < MAX_SPARE {
            st.spare.push(buf);
        }
    }

    /// No more jobs: helpers finish the queue and stop.
    fn close(&self) {
        self.state.lock().closed = true;
        self.ready.notify_all();
    }
}

fn broken() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "an earlier reply could not be sent",
    )
}

/// Runs of changed (`STATE_CHANGED`) and unchanged blocks over a byte range.
fn changed_runs(set: &RoaringBitmap, offset: u64, len: u64) -> Vec<(u64, u32)> {
    let bs = ferry_store::BLOCK_SIZE;
    let end = offset + len;
    let mut out: Vec<(u64, u32)> = Vec::new();
    let mut push = |n: u64, f: u32| match out.last_mut() {
        Some((l, lf)) if *lf == f => *l += n,
        _ => out.push((n, f)),
    };
    let mut pos = offset;
    while pos < end {
        let block = (pos / bs) as u32;
        let changed = set.contains(block);
        // The run of equal state: up to the next member (or non-member).
        let last = ((end - 1) / bs) as u32;
        let run_end_block = if changed {
            // next block not in the set
            let mut b = block;
            while b < last && set.contains(b + 1) {
                b += 1;
            }
            u64::from(b) + 1
        } else {
            set.range(block..=last)
                .next()
                .map_or(u64::from(last) + 1, u64::from)
        };
        let to = end.min(run_end_block * bs);
        push(to - pos, if changed { STATE_CHANGED } else { 0 });
        pos = to;
    }
    out
}

/// Writes every part, in order, with as few system calls as it takes.
fn write_all_parts(w: &mut impl Write, parts: &[&[u8]]) -> io::Result<()> {
    let mut idx = 0;
    let mut skip = 0;
    loop {
        // past whatever is fully written (empty parts included)
        while idx < parts.len() && parts[idx].len() == skip {
            idx += 1;
            skip = 0;
        }
        if idx == parts.len() {
            return Ok(());
        }
        let mut slices = [IoSlice::new(&[]); 4];
        let mut n = 0;
        for (k, p) in parts[idx..].iter().take(4).enumerate() {
            slices[k] = IoSlice::new(if k == 0 { &p[skip..] } else { p });
            n = k + 1;
        }
        let mut wrote = match w.write_vectored(&slices[..n]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(w) => w,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        while idx < parts.len() {
            let left = parts[idx].len() - skip;
            if wrote < left {
                skip += wrote;
                break;
            }
            wrote -= left;
            idx += 1;
            skip = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_runs_cover_the_range() {
        let bs = ferry_store::BLOCK_SIZE;
        let set: RoaringBitmap = [2u32, 3, 7].into_iter().collect();
        let runs = changed_runs(&set, 100, 10 * bs - 100);
        assert_eq!(
            runs,
            vec![
                (2 * bs - 100, 0),
                (2 * bs, STATE_CHANGED),
                (3 * bs, 0),
                (bs, STATE_CHANGED),
                (2 * bs, 0)
            ]
        );
        assert_eq!(runs.iter().map(|r| r.0).sum::<u64>(), 10 * bs - 100);
    }

    #[test]
    fn parts_survive_short_writes() {
        struct Dribble(Vec<u8>);
        impl Write for Dribble {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                let n = b.len().min(3);
                self.0.extend_from_slice(&b[..n]);
                Ok(n)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut d = Dribble(Vec::new());
        write_all_parts(&mut d, &[b"hello", b"", b" wide", b" world"]).unwrap();
        assert_eq!(d.0, b"hello wide world");
        // nothing to write is no error
        write_all_parts(&mut d, &[b"", b""]).unwrap();
        write_all_parts(&mut d, &[]).unwrap();
    }
}
