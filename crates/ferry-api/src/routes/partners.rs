//! This site's identity and its partners: naming the site, handing out
//! one-time pairing tokens, pairing with the site that issued a token,
//! listing and unpairing. The other site's side of a pairing (accepting a
//! token) is the daemon's partner listener, not this API.
//!
//! A token's secret is returned once, to the caller that asked for it, and
//! kept only as its BLAKE3 hash; it is never logged.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use ferry_store::partner_token::{PartnerToken, SECRET_LEN, fingerprint_text};
use ferry_store::{NewPartner, PartnerInfo, validate_name};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;

use super::{Plan, blocking, plan};
use crate::auth::Principal;
use crate::body::JsonBody;
use crate::error::ApiError;
use crate::site::SiteLink;
use crate::{AppState, error::ApiResult};

/// How long a pairing token lives unless asked otherwise.
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 15 * 60;
/// The longest a pairing token may live.
pub const MAX_TOKEN_TTL_SECS: u64 = 7 * 24 * 3600;

/// This site as partners see it.
#[derive(Serialize, ToSchema)]
pub struct SiteInfo {
    /// The site's name; partners know it by this name.
    name: String,
    /// SHA-256 of the site CA certificate, colon-separated hex.
    ca_fingerprint: String,
    /// Where partners reach this site's partner listener, `HOST:PORT`.
    partner_address: String,
}

/// A new name for this site.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetSite {
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,62}$")]
    name: String,
}

/// A request for a pairing token.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePairToken {
    /// Seconds the token stays valid (default 900, at most 604800; 0
    /// makes a token that is already expired, for tests).
    #[serde(default)]
    #[schema(maximum = 604800)]
    ttl_seconds: Option<u64>,
}

/// A pairing token, shown this once.
#[derive(Serialize, ToSchema)]
pub struct NewPairToken {
    /// Give this to the other site's `ferry partner pair`.
    token: String,
    /// Expiry, nanoseconds since the Unix epoch.
    expires: u64,
    /// This site's partner listener, as the token carries it.
    partner_address: String,
    /// This site's CA fingerprint, as the token carries it.
    ca_fingerprint: String,
}

/// Pair with the site that issued a token.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PairRequest {
    /// The token printed by `ferry partner token` on the other site.
    #[schema(pattern = "^ferrypair1-[0-9a-f]+$")]
    token: String,
    /// The name to know the other site by here (default: its own name).
    #[serde(default)]
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,62}$")]
    name: Option<String>,
}

fn link(st: &AppState) -> ApiResult<Arc<dyn SiteLink>> {
    st.site_link().cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_partner_listener",
            "this daemon has no partner listener (its TLS material is not usable)",
        )
    })
}

fn site_name(st: &AppState) -> ApiResult<String> {
    st.store().site_name().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "no_site_name",
            "this site has no name yet: ferry site init --name NAME",
        )
    })
}

fn site_info(st: &AppState) -> ApiResult<SiteInfo> {
    let link = link(st)?;
    Ok(SiteInfo {
        name: site_name(st)?,
        ca_fingerprint: link.ca_fingerprint(),
        partner_address: link.partner_address(),
    })
}

fn ttl(req: &CreatePairToken) -> ApiResult<u64> {
    let ttl = req.ttl_seconds.unwrap_or(DEFAULT_TOKEN_TTL_SECS);
    if ttl > MAX_TOKEN_TTL_SECS {
        return Err(ApiError::bad_request(format!(
            "ttl_seconds {ttl} is longer than a week ({MAX_TOKEN_TTL_SECS})"
        ))
        .field("ttl_seconds"));
    }
    Ok(ttl)
}

fn decode_token(text: &str) -> ApiResult<PartnerToken> {
    PartnerToken::decode(text).map_err(|e| ApiError::bad_request(e.to_string()).field("token"))
}

/// The hash under which a token's secret is kept.
pub fn secret_hash(secret: &[u8]) -> String {
    blake3::hash(secret).to_hex().to_string()
}

pub async fn site_get(State(st): State<AppState>) -> ApiResult<Json<SiteInfo>> {
    blocking(move || site_info(&st).map(Json)).await
}

pub async fn site_set(
    State(st): State<AppState>,
    JsonBody(req): JsonBody<SetSite>,
) -> ApiResult<Json<SiteInfo>> {
    blocking(move || {
        st.store().set_site_name(&req.name)?;
        site_info(&st).map(Json)
    })
    .await
}

pub async fn plan_site_set(
    State(st): State<AppState>,
    JsonBody(req): JsonBody<SetSite>,
) -> ApiResult<Json<Plan>> {
    blocking(move || {
        validate_name("site", &req.name)?;
        let partners = st.store().list_partners().len();
        let current = st.store().site_name();
        if partners > 0 && current.as_deref() != Some(req.name.as_str()) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "in_use",
                format!(
                    "the site has {partners} partner(s) that know it by its name; unpair them first"
                ),
            ));
        }
        Ok(plan(
            "site.set",
            vec![format!(
                "name this site {} (was {})",
                req.name,
                current.as_deref().unwrap_or("unnamed")
            )],
        ))
    })
    .await
}

pub async fn token_create(
    State(st): State<AppState>,
    JsonBody(req): JsonBody<CreatePairToken>,
) -> ApiResult<(StatusCode, Json<NewPairToken>)> {
    let ttl = ttl(&req)?;
    let link = link(&st)?;
    site_name(&st)?;
    let mut secret = [0u8; SECRET_LEN];
    getrandom::fill(&mut secret)
        .map_err(|e| ApiError::internal(format!("no randomness for the token: {e}")))?;
    let ca_fingerprint = link.ca_fingerprint();
    let mut fp = [0u8; 32];
    let hex: String = ca_fingerprint.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 {
        return Err(ApiError::internal("the site CA fingerprint is not SHA-256"));
    }
    for (i, b) in fp.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| ApiError::internal("the site CA fingerprint is not hex"))?;
    }
    let partner_address = link.partner_address();
    let token = PartnerToken {
        ca_fingerprint: fp,
        secret,
        address: partner_address.clone(),
    };
    let hash = secret_hash(&secret);
    let expires = blocking(move || {
        Ok(st
            .store()
            .create_pair_token(&hash, ttl.saturating_mul(1_000_000_000))?)
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(NewPairToken {
            token: token.encode(),
            expires,
            partner_address,
            ca_fingerprint,
        }),
    ))
}

pub async fn plan_token_create(
    State(st): State<AppState>,
    JsonBody(req): JsonBody<CreatePairToken>,
) -> ApiResult<Json<Plan>> {
    let ttl = ttl(&req)?;
    let link = link(&st)?;
    let name = site_name(&st)?;
    Ok(plan(
        "partner.token",
        vec![format!(
            "make a one-time pairing token for site {name} (partner listener {}), valid {ttl} s",
            link.partner_address()
        )],
    ))
}

pub async fn pair(
    State(st): State<AppState>,
    Extension(_who): Extension<Principal>,
    JsonBody(req): JsonBody<PairRequest>,
) -> ApiResult<(StatusCode, Json<PartnerInfo>)> {
    let token = decode_token(&req.token)?;
    let link = link(&st)?;
    let own = site_name(&st)?;
    let pin = fingerprint_text(&token.ca_fingerprint);
    if pin == link.ca_fingerprint() {
        return Err(ApiError::bad_request(
            "this token was issued by this very site: a site cannot pair with itself",
        )
        .field("token"));
    }
    // what can be checked before the other site records anything
    let store = st.store().clone();
    let wanted = req.name.clone();
    let pin2 = pin.clone();
    blocking(move || precheck(&store, wanted.as_deref(), &pin2)).await?;
    let answer = link.pair(&token, &own).await?;
    if answer.ca_fingerprint != pin {
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "partner_mismatch",
            "the site answered with a CA other than the one the token names",
        ));
    }
    let named = req.name.is_some();
    let name = req.name.unwrap_or_else(|| answer.name.clone());
    let other = PartnerInfo {
        name: answer.name.clone(),
        address: token.address.clone(),
        ca_fingerprint: answer.ca_fingerprint.clone(),
        ca_pem: answer.ca_pem.clone(),
        paired: 0,
        bandwidth: None,
    };
    let store = st.store().clone();
    let rec = other.clone();
    let recorded = blocking(move || {
        // its own name may be taken here: checked only now that it is known
        if !named && store.site_name().as_deref() == Some(name.as_str()) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "in_use",
                format!("the other site is named {name:?}, this site's own name"),
            ));
        }
        Ok(store.add_partner(NewPartner {
            name: &name,
            address: &rec.address,
            ca_fingerprint: &rec.ca_fingerprint,
            ca_pem: &rec.ca_pem,
        })?)
    })
    .await;
    match recorded {
        Ok(p) => Ok((StatusCode::CREATED, Json(p))),
        Err(mut e) => {
            // The other site has recorded this one already: undo that, so
            // that a second try (with --name-as) finds both sites clean.
            let undone = match link.ask_to_forget(&other).await {
                Ok(()) => format!("{} was told to forget this site again", other.name),
                Err(u) => format!(
                    "{} still lists this site and could not be told to forget it ({}); its admin must unpair it there",
                    other.name, u.message
                ),
            };
            e.message = format!(
                "{}; pairing not recorded here, {undone}{}",
                e.message,
                if named {
                    ""
                } else {
                    "; pair again with a new token and --name-as NAME"
                }
            );
            Err(e)
        }
    }
}

pub async fn plan_pair(
    State(st): State<AppState>,
    JsonBody(req): JsonBody<PairRequest>,
) -> ApiResult<Json<Plan>> {
    let token = decode_token(&req.token)?;
    let link = link(&st)?;
    site_name(&st)?;
    if fingerprint_text(&token.ca_fingerprint) == link.ca_fingerprint() {
        return Err(ApiError::bad_request(
            "this token was issued by this very site: a site cannot pair with itself",
        )
        .field("token"));
    }
    precheck(
        st.store(),
        req.name.as_deref(),
        &fingerprint_text(&token.ca_fingerprint),
    )?;
    Ok(plan(
        "partner.pair",
        vec![format!(
            "ask the site at {} (CA {}) to pair, then record it as a partner{}",
            token.address,
            fingerprint_text(&token.ca_fingerprint),
            req.name.map(|n| format!(" named {n}")).unwrap_or_default()
        )],
    ))
}

/// Refuses a pairing whose outcome is already known to fail here: a name
/// taken, a CA already paired.
fn precheck(store: &ferry_store::Store, name: Option<&str>, pin: &str) -> ApiResult<()> {
    if let Some(name) = name {
        validate_name("partner", name)?;
        if store.partner(name).is_ok() {
            return Err(ferry_store::StoreError::exists("partner", name).into());
        }
        if store.site_name().as_deref() == Some(name) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "in_use",
                format!("{name:?} is this site's own name"),
            )
            .field("name"));
        }
    }
    if let Some(p) = store
        .list_partners()
        .iter()
        .find(|p| p.ca_fingerprint == pin)
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_exists",
            format!("the site with CA {pin} is already paired as {:?}", p.name),
        )
        .field("token"));
    }
    Ok(())
}

pub async fn list(State(st): State<AppState>) -> ApiResult<Json<Vec<PartnerInfo>>> {
    blocking(move || Ok(Json(st.store().list_partners()))).await
}

pub async fn get(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<PartnerInfo>> {
    blocking(move || Ok(Json(st.store().partner(&name)?))).await
}

pub async fn hello(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<crate::site::PartnerHello>> {
    let link = link(&st)?;
    let store = st.store().clone();
    let p = blocking(move || Ok(store.partner(&name)?)).await?;
    Ok(Json(link.hello(&p).await?))
}

/// What an unpairing did.
#[derive(Serialize, ToSchema)]
pub struct Unpaired {
    /// The partner forgotten here.
    partner: String,
    /// Whether the partner forgot this site too.
    told: bool,
    /// Why it did not (unreachable, or it refused), when it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    not_told: Option<String>,
}

pub async fn unpair(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Unpaired>> {
    let store = st.store().clone();
    let p = blocking(move || Ok(store.remove_partner(&name)?)).await?;
    // Forgotten here whatever the other site says: then it is told.
    let not_told = match link(&st) {
        Ok(link) => link.ask_to_forget(&p).await.err().map(|e| e.message),
        Err(e) => Some(e.message),
    };
    Ok(Json(Unpaired {
        partner: p.name,
        told: not_told.is_none(),
        not_told,
    }))
}

pub async fn plan_unpair(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Plan>> {
    blocking(move || {
        let p = st.store().partner(&name)?;
        st.store().check_partner_unused(&name)?;
        Ok(plan(
            "partner.unpair",
            vec![format!(
                "forget partner {name} ({}); its connections are refused from the next handshake; then ask it to forget this site too",
                p.address
            )],
        ))
    })
    .await
}

/// A bandwidth cap for all replication to a partner.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PartnerLimits {
    /// Bytes per second at most; null removes the cap.
    #[schema(minimum = 1)]
    bandwidth_bytes_per_second: Option<u64>,
}

fn check_limits(req: &PartnerLimits) -> ApiResult<()> {
    if req.bandwidth_bytes_per_second == Some(0) {
        return Err(
            ApiError::bad_request("bandwidth_bytes_per_second must be at least 1")
                .field("bandwidth_bytes_per_second"),
        );
    }
    Ok(())
}

pub async fn set_limits(
    State(st): State<AppState>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<PartnerLimits>,
) -> ApiResult<Json<PartnerInfo>> {
    check_limits(&req)?;
    blocking(move || {
        Ok(Json(st.store().set_partner_bandwidth(
            &name,
            req.bandwidth_bytes_per_second,
        )?))
    })
    .await
}

pub async fn plan_set_limits(
    State(st): State<AppState>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<PartnerLimits>,
) -> ApiResult<Json<Plan>> {
    check_limits(&req)?;
    blocking(move || {
        let p = st.store().partner(&name)?;
        Ok(plan(
            "partner.set_limits",
            vec![match req.bandwidth_bytes_per_second {
                Some(b) => format!(
                    "cap all replication to {name} at {b} bytes/s (was {})",
                    p.bandwidth
                        .map_or("no cap".into(), |x| format!("{x} bytes/s"))
                ),
                None => format!("remove the bandwidth cap of {name}"),
            }],
        ))
    })
    .await
}

/// Where a partner's listener is now.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PartnerAddress {
    /// `HOST:PORT` (an IPv6 address in brackets).
    #[schema(max_length = 255)]
    address: String,
    /// Call the partner there over mutual TLS before recording it (default
    /// true); false records it unchecked, for a partner that is down.
    #[serde(default)]
    check: Option<bool>,
}

fn check_address(req: &PartnerAddress) -> ApiResult<()> {
    ferry_store::partner_token::check_address(&req.address)
        .map_err(|e| ApiError::bad_request(e).field("address"))
}

pub async fn set_address(
    State(st): State<AppState>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<PartnerAddress>,
) -> ApiResult<Json<PartnerInfo>> {
    check_address(&req)?;
    let store = st.store().clone();
    let n = name.clone();
    let mut p = blocking(move || Ok(store.partner(&n)?)).await?;
    p.address = req.address.clone();
    if req.check.unwrap_or(true) {
        // the site answering there must hold the partner's CA and know this site
        link(&st)?.hello(&p).await.map_err(|e| {
            let mut e = e;
            e.message = format!(
                "{}; nothing changed (--no-check records the address without calling it)",
                e.message
            );
            e
        })?;
    }
    blocking(move || {
        Ok(Json(st.store().set_partner_address(
            &name,
            &req.address,
            Some(&p.ca_fingerprint),
        )?))
    })
    .await
}

pub async fn plan_set_address(
    State(st): State<AppState>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<PartnerAddress>,
) -> ApiResult<Json<Plan>> {
    check_address(&req)?;
    blocking(move || {
        let p = st.store().partner(&name)?;
        Ok(plan(
            "partner.set_address",
            vec![format!(
                "{}record that partner {name} is reached at {} (was {})",
                if req.check.unwrap_or(true) {
                    format!("call {name} at {} over mutual TLS, then ", req.address)
                } else {
                    String::new()
                },
                req.address,
                p.address
            )],
        ))
    })
    .await
}
