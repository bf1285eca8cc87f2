//! `ferry site` and `ferry partner`: this site's name, and pairing with
//! other sites by a one-time token.

use anyhow::Result;
use clap::Subcommand;
use serde_json::{Map, Value, json};

use crate::client::Client;
use crate::output::{print_list, print_object};
use crate::{Format, seg};

#[derive(Subcommand, Debug)]
pub enum SiteCmd {
    /// Name this site (`ferry site init --name NAME`; refused once it has
    /// partners), or show it when no name is given
    Init {
        /// The site's name (lowercase letters, digits, '.', '_', '-')
        #[arg(long)]
        name: Option<String>,
    },
    /// Show this site: name, CA fingerprint (SHA-256), partner address
    Show,
}

#[derive(Subcommand, Debug)]
pub enum PartnerCmd {
    /// Make a one-time pairing token for another site's `ferry partner pair`
    Token {
        /// How long it stays valid: 90s, 15m, 2h, 1d or seconds (default 15m)
        #[arg(long, default_value = "15m")]
        ttl: String,
    },
    /// Pair with the site that made TOKEN (`ferry partner token` there)
    Pair {
        /// The token (`ferrypair1-...`)
        #[arg(value_name = "TOKEN")]
        pairing_token: String,
        /// The name to know that site by here (default: its own name)
        #[arg(long)]
        name_as: Option<String>,
    },
    /// List partners
    List,
    /// Show one partner
    Show { name: String },
    /// Call a partner over mutual TLS and show how it knows this site
    Hello { name: String },
    /// Unpair a partner (refused while a group replicates with it): its
    /// connections are refused from the next handshake, and it is asked to
    /// forget this site too
    Unpair { name: String },
    /// Record where a partner's listener is now, after the site moved
    /// (its CA and name stay); checked by calling the partner there first
    Address {
        name: String,
        /// HOST:PORT (an IPv6 address in brackets)
        #[arg(value_name = "HOST:PORT")]
        address: String,
        /// Record it without calling the partner (it is down, or not there yet)
        #[arg(long)]
        no_check: bool,
    },
    /// Cap the bandwidth of all replication to a partner
    Limit {
        name: String,
        /// 10mbit, 20MB (per second), 500k, bytes, or off
        #[arg(long)]
        bandwidth: String,
    },
}

const SITE_FIELDS: [&str; 3] = ["name", "ca_fingerprint", "partner_address"];
const COLUMNS: [&str; 4] = ["name", "address", "ca_fingerprint", "paired"];

fn parse_ttl(s: &str) -> Result<u64> {
    parse_secs("--ttl", s)
}

/// Seconds in `90s`, `15m`, `2h`, `1d` or a plain number of seconds, for
/// the flag named `flag`.
pub(crate) fn parse_secs(flag: &str, s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], Some(c)),
        _ => (s, None),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("{flag} {s:?} is not a duration: use 90s, 15m, 2h, 1d"))?;
    let mult = match unit {
        None | Some('s') => 1,
        Some('m') => 60,
        Some('h') => 3600,
        Some('d') => 86_400,
        Some(u) => anyhow::bail!("{flag} {s:?}: unknown unit {u:?} (use s, m, h or d)"),
    };
    n.checked_mul(mult)
        .ok_or_else(|| anyhow::anyhow!("{flag} {s:?} is too long"))
}

pub async fn run_site(client: &Client, out: Format, cmd: SiteCmd) -> Result<()> {
    let v = match cmd {
        SiteCmd::Init { name: Some(name) } => {
            client.put("/v1/site", &json!({ "name": name })).await?
        }
        SiteCmd::Init { name: None } | SiteCmd::Show => client.get("/v1/site").await?,
    };
    print_object(out, &v, &SITE_FIELDS);
    Ok(())
}

pub async fn run(client: &Client, out: Format, cmd: PartnerCmd) -> Result<()> {
    match cmd {
        PartnerCmd::Token { ttl } => {
            let ttl = parse_ttl(&ttl)?;
            let v = client
                .post("/v1/partners/tokens", &json!({ "ttl_seconds": ttl }))
                .await?;
            match out {
                Format::Json => println!("{}", serde_json::to_string_pretty(&v)?),
                Format::Table => {
                    println!("{}", v["token"].as_str().unwrap_or(""));
                    eprintln!(
                        "one-time pairing token for this site (partner address {}, CA {}), valid {ttl} s: on the other site run `ferry partner pair TOKEN`",
                        v["partner_address"].as_str().unwrap_or("?"),
                        v["ca_fingerprint"].as_str().unwrap_or("?"),
                    );
                }
            }
        }
        PartnerCmd::Pair {
            pairing_token,
            name_as,
        } => {
            let mut body = Map::new();
            body.insert("token".into(), json!(pairing_token.trim()));
            if let Some(n) = name_as {
                body.insert("name".into(), json!(n));
            }
            let v = client.post("/v1/partners", &Value::Object(body)).await?;
            print_object(out, &v, &COLUMNS);
        }
        PartnerCmd::List => print_list(out, &client.get("/v1/partners").await?, &COLUMNS),
        PartnerCmd::Show { name } => {
            let v = client.get(&format!("/v1/partners/{}", seg(&name)?)).await?;
            let mut fields = COLUMNS.to_vec();
            fields.push("ca_pem");
            print_object(out, &v, &fields);
        }
        PartnerCmd::Hello { name } => {
            let v = client
                .get(&format!("/v1/partners/{}/hello", seg(&name)?))
                .await?;
            print_object(out, &v, &["partner", "site"]);
        }
        PartnerCmd::Limit { name, bandwidth } => {
            let cap = match bandwidth.as_str() {
                "off" => Value::Null,
                b => json!(crate::replication::parse_rate(b)?),
            };
            let v = client
                .put(
                    &format!("/v1/partners/{}/limits", seg(&name)?),
                    &json!({ "bandwidth_bytes_per_second": cap }),
                )
                .await?;
            print_object(out, &v, &["name", "address", "bandwidth"]);
        }
        PartnerCmd::Unpair { name } => {
            let v = client
                .delete(&format!("/v1/partners/{}", seg(&name)?))
                .await?;
            match out {
                Format::Json => println!("{}", serde_json::to_string_pretty(&v)?),
                Format::Table if v["told"] == true => {
                    println!("unpaired {name}; {name} forgot this site too");
                }
                Format::Table => {
                    println!("unpaired {name} here");
                    eprintln!(
                        "warning: {name} was not told ({}); it still lists this site until its admin runs `ferry partner unpair` there",
                        v["not_told"].as_str().unwrap_or("no reason given")
                    );
                }
            }
        }
        PartnerCmd::Address {
            name,
            address,
            no_check,
        } => {
            let v = client
                .put(
                    &format!("/v1/partners/{}/address", seg(&name)?),
                    &json!({ "address": address, "check": !no_check }),
                )
                .await?;
            print_object(out, &v, &COLUMNS);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ttl() {
        assert_eq!(super::parse_ttl("15m").unwrap(), 900);
        assert_eq!(super::parse_ttl("0").unwrap(), 0);
        assert_eq!(super::parse_ttl("2h").unwrap(), 7200);
        assert!(super::parse_ttl("m").is_err());
        assert!(super::parse_ttl("5y").is_err());
    }
}
