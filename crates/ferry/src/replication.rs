//! `ferry replication` and `ferry recovery-point`: replicating groups to a
//! partner site, their status, and a replica's recovery points.

use anyhow::Result;
use clap::Subcommand;
use serde_json::{Map, Value, json};

use crate::client::Client;
use crate::output::{print_list, print_object};
use crate::partner::parse_secs;
use crate::{Format, output, seg};

#[derive(Subcommand, Debug)]
pub enum ReplicationCmd {
    /// Replicate GROUP to a partner; the first cycle copies every allocated block
    Enable {
        group: String,
        /// The partner site (`ferry partner list`)
        #[arg(long)]
        partner: String,
        /// Time between cycles: 30s, 5m, 15m, 1h or seconds (default 5m)
        #[arg(long, default_value = "5m")]
        interval: String,
        /// Hourly recovery points kept besides the latest (default 24)
        #[arg(long)]
        keep_hourly: Option<u32>,
        /// The last points kept whatever their hour (default 4)
        #[arg(long)]
        keep_last: Option<u32>,
        /// Every N-th point application-consistent (default 0: never)
        #[arg(long)]
        app_every: Option<u32>,
        /// zstd (default) or off
        #[arg(long, default_value = "zstd")]
        compression: String,
        /// At most this rate on the wire: 10mbit, 20MB (per second), 500k or bytes
        #[arg(long)]
        bandwidth: Option<String>,
        /// Start paused (to carry the initial copy by hand: `seed export`)
        #[arg(long)]
        paused: bool,
        /// Start the initial copy no earlier than TIME: 2026-12-01T02:00:00Z,
        /// 02:00 (the next 02:00 UTC) or +2h
        #[arg(long, value_name = "TIME")]
        start_at: Option<String>,
    },
    /// The initial copy as a file carried by hand
    #[command(subcommand)]
    Seed(SeedCmd),
    /// Stop replicating GROUP (the source deletes its cycle snapshots; a
    /// replica keeps its recovery points as ordinary snapshots)
    Disable { group: String },
    /// Start no cycle of GROUP until resumed
    Pause { group: String },
    /// Resume a paused replication
    Resume { group: String },
    /// Start a cycle of GROUP now
    Run { group: String },
    /// State, health, lag, last recovery point and figures (of GROUP, or all)
    Status { group: Option<String> },
    /// Bytes sent, changed bytes, compression ratio and throughput of GROUP
    Measure { group: String },
    /// After a failover here: make the old primary GROUP's replica, sending
    /// only blocks changed since the common point (what it wrote after that
    /// point is kept there as a snapshot)
    Reverse { group: String },
}

#[derive(Subcommand, Debug)]
pub enum SeedCmd {
    /// At the source: write GROUP's initial copy into FILE (an absolute
    /// path on the daemon's machine; it must not exist)
    Export {
        group: String,
        #[arg(long)]
        file: String,
    },
    /// At the replica: apply FILE (an absolute path on the daemon's
    /// machine) made by PARTNER as GROUP's first recovery point
    Import {
        group: String,
        #[arg(long)]
        partner: String,
        #[arg(long)]
        file: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum FailoverCmd {
    /// At the replica: clone a recovery point into GROUP-test with
    /// read-write exports while replication goes on; --cleanup removes it
    Test {
        group: String,
        /// The recovery point (default: the latest)
        #[arg(long, conflicts_with = "cleanup")]
        point: Option<String>,
        /// Remove the test group, its volumes and exports
        #[arg(long)]
        cleanup: bool,
    },
    /// At the source: stop writes, ship the last changes, hand GROUP over to
    /// the replica and become its replica; nothing is lost
    Planned { group: String },
    /// At the replica, when the primary is gone: run GROUP from a recovery
    /// point and take writes
    Unplanned {
        group: String,
        /// The recovery point (default: the latest)
        #[arg(long)]
        point: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum RecoveryPointCmd {
    /// A replica group's recovery points, oldest first
    List { group: String },
}

/// Bytes per second in `10mbit`, `20MB`, `500k`, `1g` or a plain number of
/// bytes (all per second; `bit` units are bits).
pub(crate) fn parse_rate(s: &str) -> Result<u64> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix("/s").unwrap_or(&t);
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| {
        anyhow::anyhow!(
            "--bandwidth {s:?} is not a rate: use 10mbit, 20MB, 500k or bytes per second"
        )
    })?;
    let mult: f64 = match unit {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "kbit" => 1e3 / 8.0,
        "mbit" => 1e6 / 8.0,
        "gbit" => 1e9 / 8.0,
        "kib" => 1024.0,
        "mib" => 1048576.0,
        "gib" => 1073741824.0,
        u => anyhow::bail!(
            "--bandwidth {s:?}: unknown unit {u:?} (use k, m, g, kbit, mbit, gbit, KiB, MiB, GiB)"
        ),
    };
    let v = n * mult;
    if !v.is_finite() || !(1.0..=1e15).contains(&v) {
        anyhow::bail!("--bandwidth {s:?} must be between 1 byte and 1 PB per second");
    }
    Ok(v as u64)
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Seconds since the Unix epoch of `--start-at`: `YYYY-MM-DDTHH:MM[:SS]Z`,
/// `HH:MM` (its next occurrence, UTC) or `+DURATION` (from `now`).
pub(crate) fn parse_start_at(s: &str, now: u64) -> Result<u64> {
    let bad = || {
        anyhow::anyhow!(
            "--start-at {s:?} is not a time: use 2026-12-01T02:00:00Z, 02:00 (UTC) or +2h"
        )
    };
    let num = |t: &str| t.parse::<u32>().map_err(|_| bad());
    if let Some(rel) = s.strip_prefix('+') {
        return Ok(now + parse_secs("--start-at", rel)?);
    }
    let hm = |t: &str| -> Result<u64> {
        let parts: Vec<&str> = t.split(':').collect();
        let (h, m, sec) = match parts.as_slice() {
            [h, m] => (num(h)?, num(m)?, 0),
            [h, m, sec] => (num(h)?, num(m)?, num(sec)?),
            _ => return Err(bad()),
        };
        if h > 23 || m > 59 || sec > 59 {
            return Err(bad());
        }
        Ok(u64::from(h) * 3600 + u64::from(m) * 60 + u64::from(sec))
    };
    if let Some((date, time)) = s.split_once('T') {
        let time = time.strip_suffix('Z').ok_or_else(|| {
            anyhow::anyhow!("--start-at {s:?}: give the time in UTC, ending in Z")
        })?;
        let d: Vec<&str> = date.split('-').collect();
        let [y, mo, da] = d.as_slice() else {
            return Err(bad());
        };
        let (y, mo, da) = (num(y)?, num(mo)?, num(da)?);
        if !(1970..=9999).contains(&y) || !(1..=12).contains(&mo) || !(1..=31).contains(&da) {
            return Err(bad());
        }
        let days = days_from_civil(i64::from(y), mo, da);
        return Ok(days as u64 * 86_400 + hm(time)?);
    }
    let t = hm(s)?;
    let today = now - now % 86_400;
    Ok(if today + t > now {
        today + t
    } else {
        today + 86_400 + t
    })
}

fn flat(v: &Value) -> Value {
    let mut o = Map::new();
    for k in ["group", "role", "partner", "state", "health", "last_point"] {
        o.insert(k.into(), v[k].clone());
    }
    o.insert(
        "lag".into(),
        json!(v["lag_seconds"].as_f64().map(|l| format!("{l:.0}s"))),
    );
    o.insert(
        "interval".into(),
        json!(format!("{}s", v["settings"]["interval_secs"])),
    );
    let s = &v["stats"];
    o.insert(
        "missed/hour".into(),
        json!(format!(
            "{}/{}",
            s["cycles_missed_last_hour"].as_u64().unwrap_or(0),
            s["cycles_due_last_hour"].as_u64().unwrap_or(0)
        )),
    );
    o.insert("sent".into(), s["bytes_sent"].clone());
    o.insert("pending".into(), s["pending_bytes"].clone());
    Value::Object(o)
}

const STATUS_COLUMNS: [&str; 11] = [
    "group",
    "role",
    "partner",
    "state",
    "health",
    "last_point",
    "lag",
    "interval",
    "missed/hour",
    "sent",
    "pending",
];

pub async fn run(client: &Client, out: Format, cmd: ReplicationCmd) -> Result<()> {
    match cmd {
        ReplicationCmd::Enable {
            group,
            partner,
            interval,
            keep_hourly,
            keep_last,
            app_every,
            compression,
            bandwidth,
            paused,
            start_at,
        } => {
            let interval = parse_secs("--interval", &interval)?;
            if interval == 0 {
                anyhow::bail!("--interval must be at least 1s");
            }
            if !matches!(compression.as_str(), "zstd" | "off") {
                anyhow::bail!("--compression must be zstd or off, not {compression:?}");
            }
            let mut body = Map::new();
            body.insert("group".into(), json!(group));
            body.insert("partner".into(), json!(partner));
            body.insert("interval_seconds".into(), json!(interval));
            body.insert("compression".into(), json!(compression));
            if let Some(k) = keep_hourly {
                body.insert("keep_hourly".into(), json!(k));
            }
            if let Some(k) = keep_last {
                body.insert("keep_last".into(), json!(k));
            }
            if let Some(a) = app_every {
                body.insert("app_every".into(), json!(a));
            }
            if let Some(b) = bandwidth {
                body.insert("bandwidth_bytes_per_second".into(), json!(parse_rate(&b)?));
            }
            if paused {
                body.insert("paused".into(), json!(true));
            }
            if let Some(t) = start_at {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_secs();
                body.insert(
                    "start_at_unix_seconds".into(),
                    json!(parse_start_at(&t, now)?),
                );
            }
            let v = client
                .post("/v1/replications", &Value::Object(body))
                .await?;
            match out {
                Format::Json => println!("{}", serde_json::to_string_pretty(&v)?),
                Format::Table => {
                    print_list(out, &json!([flat(&v)]), &STATUS_COLUMNS);
                    if app_every.unwrap_or(0) > 0 {
                        eprintln!(
                            "note: points are crash-consistent for now; application-consistent points need the group's hooks"
                        );
                    }
                }
            }
        }
        ReplicationCmd::Disable { group } => {
            client
                .delete(&format!("/v1/replications/{}", seg(&group)?))
                .await?;
            output::done(out, &format!("stopped replicating {group}"));
        }
        ReplicationCmd::Pause { group } => action(client, out, &group, "pause").await?,
        ReplicationCmd::Resume { group } => action(client, out, &group, "resume").await?,
        ReplicationCmd::Run { group } => action(client, out, &group, "run").await?,
        ReplicationCmd::Seed(SeedCmd::Export { group, file }) => {
            let file = absolute(&file)?;
            let v = client
                .post(
                    &format!("/v1/replications/{}/seed-export", seg(&group)?),
                    &json!({ "file": file }),
                )
                .await?;
            print_object(
                out,
                &v,
                &["group", "file", "point", "bytes", "changed_bytes"],
            );
        }
        ReplicationCmd::Seed(SeedCmd::Import {
            group,
            partner,
            file,
        }) => {
            let file = absolute(&file)?;
            let v = client
                .post(
                    &format!("/v1/replications/{}/seed-import", seg(&group)?),
                    &json!({ "partner": partner, "file": file }),
                )
                .await?;
            print_object(out, &v, &["name", "kind", "created", "source_id"]);
        }
        ReplicationCmd::Reverse { group } => {
            let v = client
                .post(
                    &format!("/v1/replications/{}/reverse", seg(&group)?),
                    &json!({}),
                )
                .await?;
            print_object(out, &v, &["group", "common", "kept"]);
        }
        ReplicationCmd::Status { group } => {
            let list = match group {
                Some(g) => json!([client
                    .get(&format!("/v1/replications/{}", seg(&g)?))
                    .await?]),
                None => client.get("/v1/replications").await?,
            };
            match out {
                Format::Json => println!("{}", serde_json::to_string_pretty(&list)?),
                Format::Table => {
                    let rows: Vec<Value> = list
                        .as_array()
                        .map(|a| a.iter().map(flat).collect())
                        .unwrap_or_default();
                    print_list(out, &Value::Array(rows), &STATUS_COLUMNS);
                    for v in list.as_array().into_iter().flatten() {
                        for r in v["health_reasons"].as_array().into_iter().flatten() {
                            eprintln!(
                                "{}: {}",
                                v["group"].as_str().unwrap_or("?"),
                                r.as_str().unwrap_or("")
                            );
                        }
                    }
                }
            }
        }
        ReplicationCmd::Measure { group } => {
            let v = client
                .get(&format!("/v1/replications/{}", seg(&group)?))
                .await?;
            let s = &v["stats"];
            let m = json!({
                "group": v["group"],
                "bytes_sent": s["bytes_sent"],
                "bytes_changed": s["bytes_changed"],
                "compression_ratio": v["compression_ratio"],
                "throughput_bytes_per_second": s["last_throughput"],
                "last_cycle_seconds": s["last_cycle_seconds"],
                "cycles_ok": s["cycles_ok"],
                "cycles_failed": s["cycles_failed"],
                "pending_bytes": s["pending_bytes"],
                "lag_seconds": v["lag_seconds"],
            });
            print_object(
                out,
                &m,
                &[
                    "group",
                    "bytes_sent",
                    "bytes_changed",
                    "compression_ratio",
                    "throughput_bytes_per_second",
                    "last_cycle_seconds",
                    "cycles_ok",
                    "cycles_failed",
                    "pending_bytes",
                    "lag_seconds",
                ],
            );
        }
    }
    Ok(())
}

/// A path made absolute against the current directory (the daemon reads
/// and writes it; it is meant for a daemon on this machine).
fn absolute(file: &str) -> Result<String> {
    let p = std::path::Path::new(file);
    let p = if p.is_absolute() {
        p.to_owned()
    } else {
        std::env::current_dir()?.join(p)
    };
    p.to_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("--file {file:?} is not valid UTF-8"))
}

async fn action(client: &Client, out: Format, group: &str, what: &str) -> Result<()> {
    let v = client
        .post(
            &format!("/v1/replications/{}/{what}", seg(group)?),
            &json!({}),
        )
        .await?;
    match out {
        Format::Json => println!("{}", serde_json::to_string_pretty(&v)?),
        Format::Table => print_list(out, &json!([flat(&v)]), &STATUS_COLUMNS),
    }
    Ok(())
}

pub async fn run_failover(client: &Client, out: Format, cmd: FailoverCmd) -> Result<()> {
    match cmd {
        FailoverCmd::Test {
            group,
            cleanup: true,
            ..
        } => {
            client
                .delete(&format!("/v1/failover/{}/test", seg(&group)?))
                .await?;
            output::done(out, &format!("removed the failover test of {group}"));
        }
        FailoverCmd::Test { group, point, .. } => {
            let v = client
                .post(
                    &format!("/v1/failover/{}/test", seg(&group)?),
                    &json!({ "point": point }),
                )
                .await?;
            match out {
                Format::Json => println!("{}", serde_json::to_string_pretty(&v)?),
                Format::Table => {
                    println!(
                        "test group {} from {group}; exports (read-write): {}",
                        v["group"]["name"].as_str().unwrap_or("?"),
                        v["exports"]
                            .as_array()
                            .map(|a| a
                                .iter()
                                .filter_map(|x| x.as_str())
                                .collect::<Vec<_>>()
                                .join(", "))
                            .unwrap_or_default()
                    );
                    eprintln!("remove it with `ferry failover test {group} --cleanup`");
                }
            }
        }
        FailoverCmd::Planned { group } => {
            let v = client
                .post(
                    &format!("/v1/failover/{}/planned", seg(&group)?),
                    &json!({}),
                )
                .await?;
            print_object(out, &v, &["group", "partner", "point"]);
        }
        FailoverCmd::Unplanned { group, point } => {
            let v = client
                .post(
                    &format!("/v1/failover/{}/unplanned", seg(&group)?),
                    &json!({ "point": point }),
                )
                .await?;
            print_object(out, &v, &["group", "point", "point_id", "source_id"]);
            if out == Format::Table {
                eprintln!(
                    "{group} takes writes here now; once the old primary is back, `ferry replication reverse {group}`"
                );
            }
        }
    }
    Ok(())
}

pub async fn run_points(client: &Client, out: Format, cmd: RecoveryPointCmd) -> Result<()> {
    match cmd {
        RecoveryPointCmd::List { group } => print_list(
            out,
            &client
                .get(&format!("/v1/groups/{}/recovery-points", seg(&group)?))
                .await?,
            &["name", "kind", "created", "received", "source_id"],
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_rate;

    #[test]
    fn start_at() {
        use super::parse_start_at;
        // 2026-11-30T10:00:00Z
        let now = 1_796_032_800;
        assert_eq!(parse_start_at("2026-11-30T10:00:00Z", 0).unwrap(), now);
        assert_eq!(
            parse_start_at("2026-12-01T02:00Z", 0).unwrap(),
            now + 16 * 3600
        );
        assert_eq!(parse_start_at("+2h", now).unwrap(), now + 7200);
        assert_eq!(parse_start_at("11:30", now).unwrap(), now + 5400);
        assert_eq!(parse_start_at("09:00", now).unwrap(), now + 23 * 3600);
        for bad in [
            "",
            "25:00",
            "2026-13-01T00:00Z",
            "2026-12-01T02:00",
            "tomorrow",
            "+-1h",
        ] {
            assert!(parse_start_at(bad, now).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn intervals() {
        let secs = |s| crate::partner::parse_secs("--interval", s);
        for (text, want) in [
            ("30s", 30),
            ("5m", 300),
            ("15m", 900),
            ("1h", 3600),
            ("90", 90),
        ] {
            assert_eq!(secs(text).unwrap(), want, "{text}");
        }
        for bad in ["-1", "5x", "", "m"] {
            assert!(secs(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("10mbit").unwrap(), 1_250_000);
        assert_eq!(parse_rate("20MB").unwrap(), 20_000_000);
        assert_eq!(parse_rate("20MB/s").unwrap(), 20_000_000);
        assert_eq!(parse_rate("1MiB").unwrap(), 1_048_576);
        assert_eq!(parse_rate("4096").unwrap(), 4096);
        assert!(parse_rate("-1").is_err());
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("5parsecs").is_err());
    }
}
