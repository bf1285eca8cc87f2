//! Sites and partners: this site's name, the remote sites paired with it,
//! and the one-time pairing tokens it handed out, kept in the catalog.
//!
//! Invariants: partner names are unique and never this site's name; the site
//! is not renamed while it has partners (they know it by that name). A
//! pairing token is kept only as the hash of its secret; accepting a pairing
//! consumes the token and records the partner in one catalog transaction, so
//! a token pairs at most once and a refused pairing records nothing.
//!
//! Must not: speak TLS or HTTP, or check certificates (the daemon does, and
//! hands over the fingerprint it computed).

use super::{Store, now};
use crate::catalog::{Change, PairTokenRec, PartnerRec, SiteRec};
use crate::error::{Result, StoreError};
use crate::types::validate_name;

/// Why a pairing request was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PairingRefusal {
    #[error("the pairing token is not known here (wrong secret, already used, or never issued)")]
    UnknownToken,
    #[error("the pairing token expired")]
    Expired,
    #[error("a site cannot pair with itself")]
    SameSite,
    #[error("this site has no name yet")]
    NoSiteName,
}

/// A paired site as listed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PartnerInfo {
    /// The name this site knows it by.
    pub name: String,
    /// Its partner listener, `HOST:PORT`.
    pub address: String,
    /// SHA-256 of its CA certificate, colon-separated hex.
    pub ca_fingerprint: String,
    /// Its CA certificate, PEM.
    pub ca_pem: String,
    /// Pairing time, nanoseconds since the Unix epoch.
    pub paired: u64,
    /// Bytes per second at most for all replication to it (none: no cap).
    #[serde(default)]
    pub bandwidth: Option<u64>,
}

/// A site to record as a partner.
#[derive(Clone, Debug)]
pub struct NewPartner<'a> {
    pub name: &'a str,
    pub address: &'a str,
    pub ca_fingerprint: &'a str,
    pub ca_pem: &'a str,
}

fn info(r: &PartnerRec) -> PartnerInfo {
    PartnerInfo {
        name: r.name.clone(),
        address: r.address.clone(),
        ca_fingerprint: r.ca_fingerprint.clone(),
        ca_pem: r.ca_pem.clone(),
        paired: r.paired,
        bandwidth: r.bandwidth,
    }
}

/// Compares two byte strings in time that depends only on their lengths.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Store {
    /// This site's name, if it has one.
    pub fn site_name(&self) -> Option<String> {
        self.catalog().state.site.as_ref().map(|s| s.name.clone())
    }

    /// Names the site. Refused while it has partners, unless the name stays.
    pub fn set_site_name(&self, name: &str) -> Result<()> {
        validate_name("site", name)?;
        let mut cat = self.catalog();
        if let Some(site) = &cat.state.site {
            if site.name == name {
                return Ok(());
            }
            if !cat.state.partners.is_empty() {
                return Err(StoreError::InUse {
                    kind: "site",
                    name: site.name.clone(),
                    reason: format!(
                        "it has {} partner(s) that know it by this name; unpair them first",
                        cat.state.partners.len()
                    ),
                });
            }
        }
        if cat.state.partners.values().any(|p| p.name == name) {
            return Err(StoreError::exists("partner", name));
        }
        cat.commit(vec![Change::PutSite(SiteRec {
            name: name.to_owned(),
        })])
    }

    /// Names the site `name` if it has no name yet; returns its name.
    pub fn ensure_site_name(&self, name: &str) -> Result<String> {
        if let Some(n) = self.site_name() {
            return Ok(n);
        }
        self.set_site_name(name)?;
        Ok(name.to_owned())
    }

    /// Records a pairing token by the hash of its secret, valid for
    /// `ttl_nanos`; drops expired ones in the same transaction. Returns
    /// its expiry (nanoseconds since the Unix epoch).
    pub fn create_pair_token(&self, secret_hash: &str, ttl_nanos: u64) -> Result<u64> {
        let mut cat = self.catalog();
        let created = now();
        let expires = created.saturating_add(ttl_nanos);
        let mut changes: Vec<Change> = cat
            .state
            .pair_tokens
            .values()
            .filter(|t| t.expires < created)
            .map(|t| Change::DelPairToken(t.id))
            .collect();
        let id = cat.alloc_id();
        changes.push(Change::PutPairToken(PairTokenRec {
            id,
            secret_hash: secret_hash.to_owned(),
            created,
            expires,
        }));
        cat.commit(changes)?;
        Ok(expires)
    }

    /// Checks a pairing request against the tokens this site handed out
    /// and, when it passes, consumes the token and records the partner in
    /// one transaction. `own_fingerprint` is this site's CA's: a request
    /// carrying it comes from this very site.
    pub fn accept_pairing(
        &self,
        secret_hash: &str,
        own_fingerprint: &str,
        partner: NewPartner<'_>,
    ) -> Result<PartnerInfo> {
        validate_name("partner", partner.name)?;
        let mut cat = self.catalog();
        let t = now();
        // every token is compared, so the time taken says nothing of which matched
        let mut found = None;
        for tok in cat.state.pair_tokens.values() {
            if same_secret(tok.secret_hash.as_bytes(), secret_hash.as_bytes()) {
                found = Some(tok.clone());
            }
        }
        let token = found.ok_or(StoreError::Pairing(PairingRefusal::UnknownToken))?;
        if token.expires < t {
            return Err(StoreError::Pairing(PairingRefusal::Expired));
        }
        let site = cat
            .state
            .site
            .clone()
            .ok_or(StoreError::Pairing(PairingRefusal::NoSiteName))?;
        if partner.ca_fingerprint == own_fingerprint {
            return Err(StoreError::Pairing(PairingRefusal::SameSite));
        }
        self.check_new_partner(&cat.state, &site, &partner)?;
        let rec = self.partner_rec(cat.alloc_id(), &partner, t);
        let out = info(&rec);
        cat.commit(vec![
            Change::DelPairToken(token.id),
            Change::PutPartner(rec),
        ])?;
        Ok(out)
    }

    /// Records a partner whose side of the pairing already accepted this site.
    pub fn add_partner(&self, partner: NewPartner<'_>) -> Result<PartnerInfo> {
        validate_name("partner", partner.name)?;
        let mut cat = self.catalog();
        let site = cat
            .state
            .site
            .clone()
            .ok_or(StoreError::Pairing(PairingRefusal::NoSiteName))?;
        self.check_new_partner(&cat.state, &site, &partner)?;
        let rec = self.partner_rec(cat.alloc_id(), &partner, now());
        let out = info(&rec);
        cat.commit(vec![Change::PutPartner(rec)])?;
        Ok(out)
    }

    /// Checks a new partner's name and CA against this site and the
    /// partners it has (also usable before asking the other side).
    pub fn check_partner(&self, partner: &NewPartner<'_>) -> Result<()> {
        validate_name("partner", partner.name)?;
        let cat = self.catalog();
        let site = cat
            .state
            .site
            .clone()
            .ok_or(StoreError::Pairing(PairingRefusal::NoSiteName))?;
        self.check_new_partner(&cat.state, &site, partner)
    }

    fn check_new_partner(
        &self,
        state: &crate::catalog::CatalogState,
        site: &SiteRec,
        partner: &NewPartner<'_>,
    ) -> Result<()> {
        if partner.name == site.name {
            return Err(StoreError::InUse {
                kind: "partner name",
                name: partner.name.to_owned(),
                reason: "it is this site's own name".into(),
            });
        }
        if state.partners.values().any(|p| p.name == partner.name) {
            return Err(StoreError::exists("partner", partner.name));
        }
        if let Some(p) = state.partners.values().find(|p| {
            !partner.ca_fingerprint.is_empty() && p.ca_fingerprint == partner.ca_fingerprint
        }) {
            return Err(StoreError::InUse {
                kind: "partner CA",
                name: partner.ca_fingerprint.to_owned(),
                reason: format!("it is already paired as {:?}", p.name),
            });
        }
        Ok(())
    }

    fn partner_rec(&self, id: u64, p: &NewPartner<'_>, paired: u64) -> PartnerRec {
        PartnerRec {
            id,
            name: p.name.to_owned(),
            ca_pem: p.ca_pem.to_owned(),
            ca_fingerprint: p.ca_fingerprint.to_owned(),
            address: p.address.to_owned(),
            paired,
            bandwidth: None,
        }
    }

    /// Every partner, by name.
    pub fn list_partners(&self) -> Vec<PartnerInfo> {
        let cat = self.catalog();
        let mut out: Vec<_> = cat.state.partners.values().map(info).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// One partner.
    pub fn partner(&self, name: &str) -> Result<PartnerInfo> {
        let cat = self.catalog();
        cat.state
            .partners
            .values()
            .find(|p| p.name == name)
            .map(info)
            .ok_or_else(|| StoreError::not_found("partner", name))
    }

    /// Caps (or uncaps) the bandwidth of all replication to a partner.
    pub fn set_partner_bandwidth(&self, name: &str, bandwidth: Option<u64>) -> Result<PartnerInfo> {
        if bandwidth == Some(0) {
            return Err(StoreError::Invalid(
                "a bandwidth cap must be at least 1 byte per second",
            ));
        }
        let mut cat = self.catalog();
        let mut r = cat
            .state
            .partners
            .values()
            .find(|p| p.name == name)
            .cloned()
            .ok_or_else(|| StoreError::not_found("partner", name))?;
        r.bandwidth = bandwidth;
        cat.commit(vec![Change::PutPartner(r.clone())])?;
        Ok(info(&r))
    }

    /// Records where partner `name`'s listener is now (`HOST:PORT`). With
    /// `ca`, only while the partner of that name still has that CA (the
    /// one the address was checked with).
    pub fn set_partner_address(
        &self,
        name: &str,
        address: &str,
        ca: Option<&str>,
    ) -> Result<PartnerInfo> {
        if !crate::partner_token::address_ok(address) {
            return Err(StoreError::Invalid("a partner address must be HOST:PORT"));
        }
        let mut cat = self.catalog();
        let mut r = cat
            .state
            .partners
            .values()
            .find(|p| p.name == name)
            .cloned()
            .ok_or_else(|| StoreError::not_found("partner", name))?;
        if ca.is_some_and(|ca| ca != r.ca_fingerprint) {
            return Err(StoreError::Conflict(format!(
                "partner {name:?} was paired again meanwhile (another CA): its address is not changed"
            )));
        }
        r.address = address.to_owned();
        cat.commit(vec![Change::PutPartner(r.clone())])?;
        Ok(info(&r))
    }

    /// Forgets a partner. Refused while a group replicates with it (to it
    /// or from it): those replications would be left without their other
    /// site. Returns the partner as it was.
    pub fn remove_partner(&self, name: &str) -> Result<PartnerInfo> {
        let mut cat = self.catalog();
        let rec = Self::unused_partner(&cat.state, name)?;
        cat.commit(vec![Change::DelPartner(rec.id)])?;
        Ok(info(&rec))
    }

    /// Refuses as [`Store::remove_partner`] would, without removing.
    pub fn check_partner_unused(&self, name: &str) -> Result<()> {
        Self::unused_partner(&self.catalog().state, name).map(drop)
    }

    /// Partner `name`'s record, when no group replicates with it.
    fn unused_partner(state: &crate::catalog::CatalogState, name: &str) -> Result<PartnerRec> {
        let rec = state
            .partners
            .values()
            .find(|p| p.name == name)
            .cloned()
            .ok_or_else(|| StoreError::not_found("partner", name))?;
        let mut groups: Vec<&str> = state
            .replications
            .values()
            .filter(|r| r.partner == name)
            .filter_map(|r| state.groups.get(&r.group).map(|g| g.name.as_str()))
            .collect();
        if !groups.is_empty() {
            groups.sort_unstable();
            return Err(StoreError::InUse {
                kind: "partner",
                name: name.to_owned(),
                reason: format!(
                    "group(s) {} replicate with it; `ferry replication disable` them first",
                    groups.join(", ")
                ),
            });
        }
        Ok(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partner<'a>(name: &'a str, fp: &'a str) -> NewPartner<'a> {
        NewPartner {
            name,
            address: "127.0.0.1:7411",
            ca_fingerprint: fp,
            ca_pem: "PEM",
        }
    }

    #[test]
    fn a_token_pairs_once_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            assert_eq!(s.ensure_site_name("a").unwrap(), "a");
            s.create_pair_token("h1", 60_000_000_000).unwrap();
            let wrong = s.accept_pairing("h2", "AA", partner("b", "BB"));
            assert!(matches!(
                wrong,
                Err(StoreError::Pairing(PairingRefusal::UnknownToken))
            ));
            let own = s.accept_pairing("h1", "AA", partner("b", "AA"));
            assert!(matches!(
                own,
                Err(StoreError::Pairing(PairingRefusal::SameSite))
            ));
            let named_like_us = s.accept_pairing("h1", "AA", partner("a", "BB"));
            assert!(named_like_us.is_err());
            assert!(s.list_partners().is_empty());
            s.accept_pairing("h1", "AA", partner("b", "BB")).unwrap();
            let again = s.accept_pairing("h1", "AA", partner("c", "CC"));
            assert!(matches!(
                again,
                Err(StoreError::Pairing(PairingRefusal::UnknownToken))
            ));
            assert!(s.set_site_name("renamed").is_err());
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.site_name().as_deref(), Some("a"));
        assert_eq!(s.list_partners().len(), 1);
        assert!(s.add_partner(partner("b", "DD")).is_err());
        assert!(s.add_partner(partner("d", "BB")).is_err());
        s.remove_partner("b").unwrap();
        assert!(s.list_partners().is_empty());
        s.set_site_name("renamed").unwrap();
    }

    #[test]
    fn an_expired_token_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.set_site_name("a").unwrap();
        let expires = s.create_pair_token("h", 0).unwrap();
        while now() <= expires {
            std::hint::spin_loop();
        }
        let r = s.accept_pairing("h", "AA", partner("b", "BB"));
        assert!(matches!(
            r,
            Err(StoreError::Pairing(PairingRefusal::Expired))
        ));
        assert!(s.list_partners().is_empty());
    }
}
