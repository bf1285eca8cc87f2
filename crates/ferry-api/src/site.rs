//! What the API needs of the daemon for sites and partners: this site's TLS
//! identity, its partner listener's address, and a way to ask another site
//! to pair. The daemon (`ferryd`) owns the certificates and the HTTPS client
//! and implements [`SiteLink`]; the API keeps the records through the store.
//!
//! Must not: hold secrets beyond one call; a pairing token's secret is
//! passed through and never logged.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use ferry_store::partner_token::PartnerToken;

use crate::error::ApiResult;

/// What a site answered when it accepted a pairing.
#[derive(Clone, Debug)]
pub struct PairAnswer {
    /// The site's own name.
    pub name: String,
    /// Its CA certificate, PEM.
    pub ca_pem: String,
    /// SHA-256 of that certificate, colon-separated hex (checked against
    /// the token's).
    pub ca_fingerprint: String,
}

/// What a partner's listener answered to `GET /partner/v1/hello`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct PartnerHello {
    /// This site, as the partner knows it (by the CA that verified this
    /// site's client certificate).
    pub partner: String,
    /// The partner's own name.
    pub site: String,
}

/// A boxed future, for a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The daemon's side of sites and partners.
pub trait SiteLink: Send + Sync + fmt::Debug {
    /// SHA-256 of this site's CA certificate, colon-separated hex.
    fn ca_fingerprint(&self) -> String;
    /// This site's CA certificate, PEM.
    fn ca_pem(&self) -> String;
    /// Where partners reach this site's partner listener, `HOST:PORT`.
    fn partner_address(&self) -> String;
    /// Asks the site that issued `token` to pair with this one, which it
    /// knows by `site_name`; returns what it answered. Records nothing here.
    fn pair<'a>(
        &'a self,
        token: &'a PartnerToken,
        site_name: &'a str,
    ) -> BoxFuture<'a, ApiResult<PairAnswer>>;
    /// Calls a partner's `GET /partner/v1/hello` over mutual TLS (this
    /// site's client certificate, the partner's CA as the only trust).
    fn hello<'a>(
        &'a self,
        partner: &'a ferry_store::PartnerInfo,
    ) -> BoxFuture<'a, ApiResult<PartnerHello>>;
    /// Asks `partner` (over mutual TLS, `POST /partner/v1/unpair`) to
    /// forget this site: after this site unpaired it, or could not record
    /// it at the end of a pairing it had already accepted.
    fn ask_to_forget<'a>(
        &'a self,
        partner: &'a ferry_store::PartnerInfo,
    ) -> BoxFuture<'a, ApiResult<()>>;
    /// What the replication sender measured for `group`, if it ran.
    fn replication_stats(&self, _group: &str) -> Option<ReplicationStats> {
        None
    }
    /// Asks the replication sender to start a cycle of `group` now.
    fn replicate_now(&self, _group: &str) {}
    /// Planned failover of `group`, at its source.
    fn failover_planned<'a>(&'a self, group: &'a str) -> BoxFuture<'a, ApiResult<PlannedFailover>>;
    /// Reverse replication of a promoted `group`.
    fn reverse<'a>(&'a self, group: &'a str) -> BoxFuture<'a, ApiResult<ferry_store::Demotion>>;
    /// Writes the initial copy of `group` as a stream into a new file
    /// `path` on this machine.
    fn seed_export<'a>(
        &'a self,
        group: &'a str,
        path: &'a std::path::Path,
    ) -> BoxFuture<'a, ApiResult<SeedExport>>;
    /// Applies a seed file `path` (made by `partner`) to replica `group`.
    fn seed_import<'a>(
        &'a self,
        group: &'a str,
        partner: &'a str,
        path: &'a std::path::Path,
    ) -> BoxFuture<'a, ApiResult<ferry_store::RecoveryPoint>>;
}

/// What a seed export wrote.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct SeedExport {
    pub group: String,
    /// The file written (on the daemon's machine).
    pub file: String,
    /// The point the seed makes at the replica.
    pub point: String,
    /// Bytes written.
    pub bytes: u64,
    /// Changed (allocated) bytes it carries.
    pub changed_bytes: u64,
}

/// What a planned failover did.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct PlannedFailover {
    pub group: String,
    pub partner: String,
    /// The last point, taken after writes stopped: the partner runs from it.
    pub point: String,
    /// What this site kept (nothing when no write came after the point).
    pub demotion: ferry_store::Demotion,
}

/// What the replication sender measured for one group (kept in memory by
/// the daemon; gone at restart).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ReplicationStats {
    /// A cycle is due but waits for one of the site's cycle slots
    /// (`ferryd --replication-cycles`, `--replication-initial-copies`).
    #[serde(default)]
    pub queued: bool,
    /// A cycle is being sent now.
    pub running: bool,
    /// The cycle being sent is the initial copy.
    pub initial_copy: bool,
    /// The cycle being sent is a resync (only regions whose digests differ).
    #[serde(default)]
    pub resyncing: bool,
    /// The last cycle's error, until a cycle succeeds.
    pub last_error: Option<String>,
    /// When the last cycle started and ended, nanoseconds since the Unix epoch.
    pub last_started: Option<u64>,
    pub last_finished: Option<u64>,
    pub cycles_ok: u64,
    pub cycles_failed: u64,
    /// Cycles due in the last hour, and how many of them did not succeed.
    pub cycles_due_last_hour: u64,
    pub cycles_missed_last_hour: u64,
    /// Bytes on the wire, and the changed bytes they carried, since start.
    pub bytes_sent: u64,
    pub bytes_changed: u64,
    /// Changed bytes still to send in the running cycle.
    pub pending_bytes: u64,
    /// How the last new point was taken: `app`, or `crash` with the reason
    /// when an application-consistent one was due.
    #[serde(default)]
    pub last_consistency: Option<String>,
    /// The last successful cycle: bytes on the wire per second, and seconds.
    pub last_throughput: f64,
    pub last_cycle_seconds: f64,
}

impl ReplicationStats {
    /// Changed bytes per byte on the wire (1.0 when nothing was sent).
    pub fn compression_ratio(&self) -> f64 {
        if self.bytes_sent == 0 {
            1.0
        } else {
            self.bytes_changed as f64 / self.bytes_sent as f64
        }
    }
}
