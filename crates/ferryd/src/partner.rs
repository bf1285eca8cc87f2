//! The partner listener and the calls this site makes to partners: HTTPS
//! where the client certificate must chain to the CA of a paired partner.
//!
//! ```text
//! GET  /partner/v1/hello   mutual TLS: who the caller is (the partner whose
//!                          CA verified its certificate) and this site's name
//! POST /partner/v1/pair    no client certificate needed: presents a pairing
//!                          token's secret, the caller's name, CA and address;
//!                          answers this site's name and CA
//! GET  /partner/v1/replication/{group}
//!                          mutual TLS: the replica's state of a group (its
//!                          latest point, the cycle it is receiving)
//! POST /partner/v1/replication/{group}/stream
//!                          mutual TLS: one cycle's replication stream;
//!                          answers the recovery point it made
//! POST /partner/v1/replication/{group}/promote
//!                          mutual TLS: the source hands over (planned
//!                          failover): the replica takes over from a point
//! POST /partner/v1/replication/{group}/demote
//!                          mutual TLS: the new primary asks the old one
//!                          to become its replica (a reverse)
//! POST /partner/v1/replication/{group}/digests
//!                          mutual TLS: blake3 per region of the replica's
//!                          latest point (a resync)
//! ```
//!
//! Invariants: the set of trusted CAs is read from the store's partner
//! records at every handshake (and again for every request), so a pairing
//! lets the new partner in from its next handshake and an unpairing shuts it
//! out from its next one; there is no copy to rebuild or forget. A client
//! that offers a certificate no partner's CA verifies is refused during the
//! handshake. Only `/partner/v1/pair` serves a connection without one.
//!
//! Calls to a site not yet paired (the pairing itself) pin its CA by the
//! SHA-256 fingerprint the token carries: its server certificate must be
//! issued by a CA of that fingerprint, whatever names it holds.
//!
//! Must not: log a token's secret, or record anything for a refused pairing.

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use ferry_api::site::{BoxFuture, PairAnswer, PartnerHello, SiteLink};
use ferry_api::{ApiError, ApiResult, AppState};
use ferry_store::partner_token::{PartnerToken, address_ok, fingerprint_text};
use ferry_store::{NewPartner, StoreError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

use crate::replication::blocking;
use crate::serve::PeerCertificates;
use crate::tls::{self, PartnerMaterial};

/// How long a pairing call to another site may take.
const PAIR_TIMEOUT: Duration = Duration::from_secs(20);

/// The body of `POST /partner/v1/pair`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairBody {
    /// The token's secret, hex.
    pub secret: String,
    /// The caller's site name.
    pub name: String,
    /// The caller's CA certificate, PEM.
    pub ca_pem: String,
    /// The caller's partner listener, `HOST:PORT`.
    pub address: String,
}

/// The answer of `POST /partner/v1/pair`.
#[derive(Serialize, Deserialize)]
pub struct PairReply {
    pub name: String,
    pub ca_pem: String,
}

/// The name of the partner whose CA verifies `end_entity` as a client
/// certificate, if any.
fn identify(
    store: &ferry_store::Store,
    provider: &Arc<CryptoProvider>,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
) -> Option<String> {
    store.list_partners().into_iter().find_map(|p| {
        let ca = CertificateDer::from_pem_slice(p.ca_pem.as_bytes()).ok()?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).ok()?;
        let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .ok()?;
        v.verify_client_cert(end_entity, intermediates, now)
            .ok()
            .map(|_| p.name)
    })
}

/// Accepts a client certificate when a paired partner's CA verifies it;
/// accepts a connection without one (only the pairing route serves it).
#[derive(Debug)]
struct PartnerVerifier {
    store: ferry_store::Store,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for PartnerVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match identify(&self.store, &self.provider, end_entity, intermediates, now) {
            Some(_) => Ok(ClientCertVerified::assertion()),
            None => Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Accepts a server certificate issued by the CA of a given fingerprint
/// (found in the chain the server sends), for any server name.
#[derive(Debug)]
struct PinnedCa {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| tls::fingerprint(c) == self.fingerprint)
            .ok_or(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            ))?;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let v = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        match v.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Ok(ok) => Ok(ok),
            // the pinned CA is the identity; the names are whatever the site serves
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The partner listener's TLS configuration: the API's server certificate,
/// client certificates checked against the partners' CAs.
pub fn server_config(
    material: &PartnerMaterial,
    store: &ferry_store::Store,
) -> Result<Arc<rustls::ServerConfig>> {
    let provider = tls::provider();
    let verifier = Arc::new(PartnerVerifier {
        store: store.clone(),
        provider: provider.clone(),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("choosing TLS versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            material.server_chain.clone(),
            material.server_key.clone_key(),
        )
        .context("using the server certificate for the partner listener")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The daemon's side of sites and partners, for the API.
pub struct Link {
    client_chain: Vec<CertificateDer<'static>>,
    client_key: rustls::pki_types::PrivateKeyDer<'static>,
    ca_pem: String,
    ca_fingerprint: String,
    address: String,
    provider: Arc<CryptoProvider>,
    /// The replication sender, once started.
    replicator: std::sync::OnceLock<std::sync::Weak<crate::replication::Replicator>>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("ca_fingerprint", &self.ca_fingerprint)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Link {
    pub fn new(material: &PartnerMaterial, address: String) -> Link {
        Link {
            client_chain: material.client_chain.clone(),
            client_key: material.client_key.clone_key(),
            ca_pem: material.ca_pem.clone(),
            ca_fingerprint: material.ca_fingerprint.clone(),
            address,
            provider: tls::provider(),
            replicator: std::sync::OnceLock::new(),
        }
    }

    /// Connects the replication sender (for its figures and triggers).
    pub fn set_replicator(&self, r: &Arc<crate::replication::Replicator>) {
        let _ = self.replicator.set(Arc::downgrade(r));
    }

    fn replicator(&self) -> Option<Arc<crate::replication::Replicator>> {
        self.replicator.get().and_then(std::sync::Weak::upgrade)
    }

    async fn call_pair(&self, token: &PartnerToken, site_name: &str) -> ApiResult<PairAnswer> {
        let pin = fingerprint_text(&token.ca_fingerprint);
        let config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ApiError::internal(format!("choosing TLS versions: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCa {
                fingerprint: pin.clone(),
                provider: self.provider.clone(),
            }))
            .with_no_client_auth();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(config)
            .timeout(PAIR_TIMEOUT)
            .build()
            .map_err(|e| ApiError::internal(format!("making the HTTPS client: {e}")))?;
        let body = PairBody {
            secret: token.secret.iter().map(|b| format!("{b:02x}")).collect(),
            name: site_name.to_owned(),
            ca_pem: self.ca_pem.clone(),
            address: self.address.clone(),
        };
        let url = format!("https://{}/partner/v1/pair", token.address);
        let unreachable = |e: reqwest::Error| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "partner_unreachable",
                format!(
                    "asking the site at {} to pair: {} (is its partner listener there, and does its CA have the fingerprint the token names?)",
                    token.address,
                    error_chain(&e)
                ),
            )
        };
        let resp = http
            .post(&url)
            .json(&body)
            .send()
            .await
            .map_err(unreachable)?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or(text);
            return Err(ApiError::new(
                if status == StatusCode::FORBIDDEN {
                    StatusCode::FORBIDDEN
                } else {
                    StatusCode::BAD_GATEWAY
                },
                "pairing_refused",
                format!("the site at {} refused to pair: {message}", token.address),
            )
            .field("token"));
        }
        let reply: PairReply = resp.json().await.map_err(unreachable)?;
        let der = CertificateDer::from_pem_slice(reply.ca_pem.as_bytes()).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "partner_mismatch",
                format!("the site answered a CA certificate that does not parse: {e}"),
            )
        })?;
        Ok(PairAnswer {
            name: reply.name,
            ca_fingerprint: tls::fingerprint(&der),
            ca_pem: reply.ca_pem,
        })
    }
}

impl Link {
    /// An HTTPS client for calls to partner `p`: this site's client
    /// certificate, `p`'s CA (by fingerprint) as the only trust.
    pub fn partner_client(
        &self,
        p: &ferry_store::PartnerInfo,
        timeout: Option<Duration>,
    ) -> ApiResult<reqwest::Client> {
        let config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ApiError::internal(format!("choosing TLS versions: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCa {
                fingerprint: p.ca_fingerprint.clone(),
                provider: self.provider.clone(),
            }))
            .with_client_auth_cert(self.client_chain.clone(), self.client_key.clone_key())
            .map_err(|e| ApiError::internal(format!("using the client certificate: {e}")))?;
        let mut b = reqwest::Client::builder()
            .tls_backend_preconfigured(config)
            .connect_timeout(PAIR_TIMEOUT);
        if let Some(t) = timeout {
            b = b.timeout(t);
        }
        b.build()
            .map_err(|e| ApiError::internal(format!("making the HTTPS client: {e}")))
    }

    async fn call_unpair(&self, p: &ferry_store::PartnerInfo) -> ApiResult<()> {
        let http = self.partner_client(p, Some(PAIR_TIMEOUT))?;
        let sent = http
            .post(format!("https://{}/partner/v1/unpair", p.address))
            .send()
            .await;
        let _: Forgotten = partner_json(
            sent,
            &format!(
                "asking partner {} at {} to forget this site",
                p.name, p.address
            ),
        )
        .await?;
        Ok(())
    }

    /// Tells partner `p` where this site's listener is (`POST
    /// /partner/v1/address`); it records the address once it reached this
    /// site there. `Err((again, why))`: `again` when the partner was not
    /// reached (worth another try), not when it answered no.
    async fn call_moved(&self, p: &ferry_store::PartnerInfo) -> Result<(), (bool, String)> {
        let http = self
            .partner_client(p, Some(PAIR_TIMEOUT * 2))
            .map_err(|e| (false, e.message))?;
        let resp = http
            .post(format!("https://{}/partner/v1/address", p.address))
            .json(&Moved {
                address: self.address.clone(),
            })
            .send()
            .await
            .map_err(|e| (true, error_chain(&e)))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err((false, refusal(resp).await))
        }
    }

    /// Tells every partner this site's address, as each start does: a
    /// site that moved (another `--partner-advertise`, another port) is
    /// found again without its partners' admins. A partner that cannot be
    /// reached is tried again, backing off from 5 s to 5 min, until it has
    /// been told or the daemon stops; one that answered no (it could not
    /// reach this site at that address) is not asked again.
    pub async fn announce(self: Arc<Self>, store: ferry_store::Store) {
        let mut wait = Duration::from_secs(5);
        let mut told = std::collections::HashSet::new();
        loop {
            let st = store.clone();
            let Ok(partners) = tokio::task::spawn_blocking(move || st.list_partners()).await else {
                return;
            };
            let mut left = 0;
            for p in &partners {
                if told.contains(&p.name) {
                    continue;
                }
                match self.call_moved(p).await {
                    Ok(()) => {
                        told.insert(p.name.clone());
                    }
                    Err((true, why)) => {
                        left += 1;
                        tracing::warn!(partner = %p.name, "could not tell the partner this site's address (trying again in {} s): {why}", wait.as_secs());
                    }
                    Err((false, why)) => {
                        told.insert(p.name.clone());
                        tracing::warn!(partner = %p.name, address = %self.address, "the partner did not take this site's address: {why}");
                    }
                }
            }
            if left == 0 {
                return;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(300));
        }
    }

    async fn call_hello(&self, p: &ferry_store::PartnerInfo) -> ApiResult<PartnerHello> {
        let http = self.partner_client(p, Some(PAIR_TIMEOUT))?;
        let sent = http
            .get(format!("https://{}/partner/v1/hello", p.address))
            .send()
            .await;
        partner_json(
            sent,
            &format!("calling partner {} at {}", p.name, p.address),
        )
        .await
    }
}

/// A partner's JSON answer: failing to send, an answer other than success
/// and a body that is not the JSON expected are all `partner_unreachable`
/// (502), said after `context`.
pub(crate) async fn partner_json<T: serde::de::DeserializeOwned>(
    sent: Result<reqwest::Response, reqwest::Error>,
    context: &str,
) -> ApiResult<T> {
    let failed = |what: String| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "partner_unreachable",
            format!("{context}: {what}"),
        )
    };
    let resp = sent.map_err(|e| failed(error_chain(&e)))?;
    if !resp.status().is_success() {
        return Err(failed(refusal(resp).await));
    }
    resp.json().await.map_err(|e| failed(error_chain(&e)))
}

/// What a partner's answer other than success says: its status and its
/// error's message (the body as it came when it is not ferry's JSON).
async fn refusal(resp: reqwest::Response) -> String {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or(text);
    format!("it answered {status}: {message}")
}

pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

impl SiteLink for Link {
    fn ca_fingerprint(&self) -> String {
        self.ca_fingerprint.clone()
    }

    fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    fn partner_address(&self) -> String {
        self.address.clone()
    }

    fn pair<'a>(
        &'a self,
        token: &'a PartnerToken,
        site_name: &'a str,
    ) -> BoxFuture<'a, ApiResult<PairAnswer>> {
        Box::pin(self.call_pair(token, site_name))
    }

    fn hello<'a>(
        &'a self,
        partner: &'a ferry_store::PartnerInfo,
    ) -> BoxFuture<'a, ApiResult<PartnerHello>> {
        Box::pin(self.call_hello(partner))
    }

    fn ask_to_forget<'a>(
        &'a self,
        partner: &'a ferry_store::PartnerInfo,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(self.call_unpair(partner))
    }

    fn replication_stats(&self, group: &str) -> Option<ferry_api::site::ReplicationStats> {
        self.replicator()?.stats(group)
    }

    fn replicate_now(&self, group: &str) {
        if let Some(r) = self.replicator() {
            r.trigger(group);
        }
    }

    fn failover_planned<'a>(
        &'a self,
        group: &'a str,
    ) -> BoxFuture<'a, ApiResult<ferry_api::site::PlannedFailover>> {
        Box::pin(async move {
            match self.replicator() {
                Some(r) => r.planned(group).await,
                None => Err(ApiError::internal("the replication sender is not running")),
            }
        })
    }

    fn seed_export<'a>(
        &'a self,
        group: &'a str,
        path: &'a std::path::Path,
    ) -> BoxFuture<'a, ApiResult<ferry_api::site::SeedExport>> {
        Box::pin(async move {
            match self.replicator() {
                Some(r) => r.seed_export(group, path).await,
                None => Err(ApiError::internal("the replication sender is not running")),
            }
        })
    }

    fn seed_import<'a>(
        &'a self,
        group: &'a str,
        partner: &'a str,
        path: &'a std::path::Path,
    ) -> BoxFuture<'a, ApiResult<ferry_store::RecoveryPoint>> {
        Box::pin(async move {
            match self.replicator() {
                Some(r) => r.seed_import(group, partner, path).await,
                None => Err(ApiError::internal("the replication sender is not running")),
            }
        })
    }

    fn reverse<'a>(&'a self, group: &'a str) -> BoxFuture<'a, ApiResult<ferry_store::Demotion>> {
        Box::pin(async move {
            match self.replicator() {
                Some(r) => r.reverse(group).await,
                None => Err(ApiError::internal("the replication sender is not running")),
            }
        })
    }
}

/// What the partner listener's handlers share.
#[derive(Clone)]
pub(crate) struct PartnerState {
    pub(crate) app: AppState,
    ca_pem: String,
    ca_fingerprint: String,
    provider: Arc<CryptoProvider>,
    /// Per replica group, which receiving connection may act.
    pub(crate) fences: crate::replication::Fences,
    pub(crate) collector: crate::replication::Collector,
}

/// The partner listener's routes.
pub fn router(
    app: AppState,
    material: &PartnerMaterial,
    fences: crate::replication::Fences,
    collector: crate::replication::Collector,
) -> Router {
    let state = PartnerState {
        app,
        ca_pem: material.ca_pem.clone(),
        ca_fingerprint: material.ca_fingerprint.clone(),
        provider: tls::provider(),
        fences,
        collector,
    };
    Router::new()
        .route("/partner/v1/hello", axum::routing::get(hello))
        .route("/partner/v1/pair", axum::routing::post(pair))
        .route("/partner/v1/unpair", axum::routing::post(unpaired))
        .route("/partner/v1/address", axum::routing::post(moved))
        .route(
            "/partner/v1/replication/{group}",
            axum::routing::get(crate::replication::replica_state),
        )
        .route(
            "/partner/v1/replication/{group}/promote",
            axum::routing::post(crate::replication::replica_promote),
        )
        .route(
            "/partner/v1/replication/{group}/demote",
            axum::routing::post(crate::replication::replica_demote),
        )
        .route(
            "/partner/v1/replication/{group}/digests",
            axum::routing::post(crate::replication::replica_digests),
        )
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        // A cycle's stream is as long as the change it carries.
        .route(
            "/partner/v1/replication/{group}/stream",
            axum::routing::post(crate::replication::replica_stream),
        )
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .with_state(state)
}

/// The paired partner a request comes from, by the CA that verifies its
/// client certificate.
pub(crate) fn caller(
    st: &PartnerState,
    peer: Option<Extension<PeerCertificates>>,
) -> Result<String, ApiError> {
    let Some(Extension(PeerCertificates(Some(chain)))) = peer else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "client_certificate_required",
            "this endpoint needs a client certificate from a paired partner",
        ));
    };
    identify(
        st.app.store(),
        &st.provider,
        &chain[0],
        &chain[1..],
        UnixTime::now(),
    )
    .ok_or_else(|| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "not_a_partner",
            "the client certificate is not from a paired partner",
        )
    })
}

async fn hello(
    State(st): State<PartnerState>,
    peer: Option<Extension<PeerCertificates>>,
) -> Response {
    let partner = match caller(&st, peer) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let site = st.app.store().site_name().unwrap_or_default();
    Json(PartnerHello { partner, site }).into_response()
}

/// Where a site's partner listener is.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Moved {
    address: String,
}

/// A partner says where its listener is now: recorded once this site
/// reached it there (its CA pinned), so a wrong address is never kept.
async fn moved(
    State(st): State<PartnerState>,
    peer: Option<Extension<PeerCertificates>>,
    body: Result<Json<Moved>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let partner = match caller(&st, peer) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let Ok(Json(req)) = body else {
        return bad("the body must be {\"address\": \"HOST:PORT\"}", "body").into_response();
    };
    let address = req.address.clone();
    let outcome = record_move(&st, &partner, req).await;
    match &outcome {
        Ok(Some(was)) => {
            audit(&st, &partner, "partner.moved", "address", StatusCode::OK);
            tracing::info!(partner = %partner, was = %was, "the partner moved: recorded its new address");
        }
        Ok(None) => {}
        Err(e) => {
            audit(&st, &partner, "partner.moved", "address", e.status);
            tracing::warn!(partner = %partner, error = %e.message, "the partner said it moved; its address is kept");
        }
    }
    match outcome {
        Ok(_) => Json(Moved { address }).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Records partner `name`'s new address; the old one when it changed.
async fn record_move(st: &PartnerState, name: &str, req: Moved) -> ApiResult<Option<String>> {
    ferry_store::partner_token::check_address(&req.address).map_err(|e| bad(e, "address"))?;
    let store = st.app.store().clone();
    let n = name.to_owned();
    let mut p = blocking(move || Ok(store.partner(&n)?)).await?;
    if p.address == req.address {
        return Ok(None);
    }
    let was = std::mem::replace(&mut p.address, req.address.clone());
    let link = st
        .app
        .site_link()
        .ok_or_else(|| ApiError::internal("no partner link"))?;
    if let Err(e) = link.hello(&p).await {
        // the details stay here: a partner may not probe this site's
        // network through its answers
        tracing::warn!(partner = %name, address = %req.address, "could not reach the partner where it says it is: {}", e.message);
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "address_unverified",
            format!(
                "this site could not reach you at {} with your CA; your address stays {was}",
                req.address
            ),
        ));
    }
    let store = st.app.store().clone();
    let n = name.to_owned();
    blocking(move || Ok(store.set_partner_address(&n, &req.address, Some(&p.ca_fingerprint))?))
        .await?;
    Ok(Some(was))
}

/// What a partner answers when it forgot the calling site.
#[derive(serde::Serialize, serde::Deserialize)]
struct Forgotten {
    /// The caller's name there.
    forgot: String,
}

/// A partner unpaired this site (or could not record it after pairing):
/// forget it too, unless a group still replicates with it.
async fn unpaired(
    State(st): State<PartnerState>,
    peer: Option<Extension<PeerCertificates>>,
) -> Response {
    let partner = match caller(&st, peer) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let app = st.app.clone();
    let name = partner.clone();
    let outcome = blocking(move || Ok(app.store().remove_partner(&name)?)).await;
    let status = outcome
        .as_ref()
        .map_or_else(|e| e.status, |_| StatusCode::OK);
    audit(
        &st,
        &partner,
        "partner.unpaired_by_partner",
        "unpair",
        status,
    );
    match outcome {
        Ok(_) => {
            tracing::info!(partner = %partner, "the partner unpaired this site: forgot it");
            Json(Forgotten { forgot: partner }).into_response()
        }
        Err(e) => {
            tracing::warn!(partner = %partner, error = %e.message, "the partner unpaired this site, but it is kept here");
            e.into_response()
        }
    }
}

/// Records what site `name` (empty: unknown) asked the partner listener
/// to do, as `site:NAME` on `/partner/v1/WHAT/NAME`.
fn audit(st: &PartnerState, name: &str, action: &str, what: &str, status: StatusCode) {
    let actor = format!("site:{}", if name.is_empty() { "?" } else { name });
    if let Err(e) = st.app.audit().append(
        &actor,
        action,
        &format!("/partner/v1/{what}/{name}"),
        if status.is_success() { "ok" } else { "failed" },
        status.as_u16(),
    ) {
        tracing::error!(error = %e, "appending to the audit log failed");
    }
}

fn bad(message: impl Into<String>, field: &str) -> ApiError {
    ApiError::bad_request(message).field(field)
}

async fn pair(
    State(st): State<PartnerState>,
    body: Result<Json<PairBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let outcome = accept(&st, body).await;
    let (status, name) = match &outcome {
        Ok((_, name)) => (StatusCode::OK, name.clone()),
        Err((e, name)) => (e.status, name.clone()),
    };
    audit(&st, &name, "partner.accept", "pair", status);
    match outcome {
        Ok((reply, name)) => {
            tracing::info!(partner = %name, "paired with a new partner");
            Json(reply).into_response()
        }
        Err((e, name)) => {
            tracing::warn!(partner = %name, error = %e.message, "refused a pairing request");
            e.into_response()
        }
    }
}

type Accepted = std::result::Result<(PairReply, String), (ApiError, String)>;

async fn accept(
    st: &PartnerState,
    body: Result<Json<PairBody>, axum::extract::rejection::JsonRejection>,
) -> Accepted {
    let Json(req) = body.map_err(|e| (bad(e.body_text(), "body"), String::new()))?;
    let name = req.name.clone();
    let fail = |e: ApiError| (e, name.clone());
    if req.secret.len() != 64 || !req.secret.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(fail(bad("secret must be 64 hex digits", "secret")));
    }
    let secret: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&req.secret[2 * i..2 * i + 2], 16).unwrap_or(0))
        .collect();
    if !address_ok(&req.address) {
        return Err(fail(bad("address must be HOST:PORT", "address")));
    }
    let der = CertificateDer::from_pem_slice(req.ca_pem.as_bytes()).map_err(|e| {
        fail(bad(
            format!("ca_pem is not a PEM certificate: {e}"),
            "ca_pem",
        ))
    })?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.clone()).map_err(|e| {
        fail(bad(
            format!("ca_pem cannot serve as a trust anchor: {e}"),
            "ca_pem",
        ))
    })?;
    let fp = tls::fingerprint(&der);
    let hash = ferry_api::routes::partners::secret_hash(&secret);
    let own_fp = st.ca_fingerprint.clone();
    let app = st.app.clone();
    let ca_pem = req.ca_pem.clone();
    let address = req.address.clone();
    let pname = name.clone();
    let recorded = tokio::task::spawn_blocking(move || {
        app.store().accept_pairing(
            &hash,
            &own_fp,
            NewPartner {
                name: &pname,
                address: &address,
                ca_fingerprint: &fp,
                ca_pem: &ca_pem,
            },
        )
    })
    .await
    .map_err(|e| fail(ApiError::internal(format!("a worker failed: {e}"))))?;
    recorded.map_err(|e: StoreError| fail(e.into()))?;
    let site = st.app.store().site_name().unwrap_or_default();
    Ok((
        PairReply {
            name: site,
            ca_pem: st.ca_pem.clone(),
        },
        name,
    ))
}

/// The address partners are told to reach this site at: the configured
/// one (`--partner-advertise`), else the bound one, with the hostname for
/// an unspecified IP.
pub fn advertised(bound: std::net::SocketAddr, configured: Option<&str>) -> String {
    if let Some(a) = configured {
        return a.to_owned();
    }
    if bound.ip().is_unspecified()
        && let Some(h) = tls::hostname()
    {
        return format!("{h}:{}", bound.port());
    }
    bound.to_string()
}

/// Checks an address to advertise (`--partner-advertise`): `HOST:PORT` as
/// a pairing token carries it, an IPv6 address in brackets.
pub fn parse_advertised(s: &str) -> Result<String, String> {
    ferry_store::partner_token::check_address(s).map(|()| s.to_owned())
}

/// A valid site name made from the hostname: lowercase, other characters
/// as `-`, at most 63; `site` when nothing is left.
pub fn default_site_name() -> String {
    let host = tls::hostname().unwrap_or_default();
    let host = host.split('.').next().unwrap_or("").to_ascii_lowercase();
    let mut name: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    name = name.trim_start_matches(['-', '_']).to_owned();
    name.truncate(63);
    if ferry_store::validate_name("site", &name).is_err() {
        return "site".to_owned();
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_addresses_are_host_and_port() {
        for ok in [
            "10.0.0.2:7411",
            "site-a.example:1",
            "[::1]:7411",
            "[fe80::1]:65535",
        ] {
            assert_eq!(parse_advertised(ok).as_deref(), Ok(ok));
        }
        for bad in [
            "",
            "nohost",
            ":7411",
            "site-a:0",
            "site-a:65536",
            "site-a:x",
            "::1:7411",
            "a b:1",
            "h/p:1",
            "user@h:1",
        ] {
            let e = parse_advertised(bad).unwrap_err();
            assert!(e.contains("is not HOST:PORT"), "{bad:?}: {e}");
        }
        let bound = "127.0.0.1:7411".parse().unwrap();
        assert_eq!(advertised(bound, None), "127.0.0.1:7411");
        assert_eq!(advertised(bound, Some("proxy:7000")), "proxy:7000");
    }

    #[test]
    fn default_site_name_is_valid() {
        assert!(ferry_store::validate_name("site", &default_site_name()).is_ok());
    }
}
