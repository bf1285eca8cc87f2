//! `ferry`: the command line. Noun, then verb; every command is one or a few
//! calls of ferryd's HTTP API.
//!
//! Exit codes: 0 success, 1 any other error, 2 bad usage, 3 not found,
//! 4 conflict (exists or in use), 5 not allowed (no or bad token, role),
//! 6 server unreachable, 7 audit verification failed.

mod client;
mod context;
mod export;
mod job;
mod ops;
mod output;
mod partner;
mod replication;

use anyhow::{Result, bail};
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};
use std::collections::BTreeMap;

use client::{Client, Failure};
use output::{print_list, print_object};

const EXIT_CODES: &str = "Exit codes: 0 success, 1 other error, 2 bad usage, 3 not found, \
4 conflict (already exists or in use), 5 not allowed (token or role), 6 server unreachable, \
7 audit verification failed.";

/// ferry: block storage for VMs with disaster recovery built in.
#[derive(Parser, Debug)]
#[command(version, about, after_help = EXIT_CODES)]
struct Cli {
    /// Server URL [env: FERRY_SERVER] [default: http://127.0.0.1:7410]
    #[arg(long, global = true, env = "FERRY_SERVER", hide_env = true)]
    server: Option<String>,
    /// API token [env: FERRY_TOKEN]
    #[arg(
        long,
        global = true,
        env = "FERRY_TOKEN",
        hide_env_values = true,
        hide_env = true
    )]
    token: Option<String>,
    /// File holding the API token [env: FERRY_TOKEN_FILE] [default: ./ferry-data/admin.token when present]
    #[arg(long, global = true, env = "FERRY_TOKEN_FILE", hide_env = true)]
    token_file: Option<String>,
    /// CA certificate to trust for an https:// server, e.g. ferryd's DATA/tls/ca.pem [env: FERRY_CA] [default: the system's roots, plus DIR/tls/ca.pem when the token file is DIR/admin.token]
    #[arg(
        long,
        global = true,
        env = "FERRY_CA",
        hide_env = true,
        value_name = "FILE"
    )]
    ca: Option<String>,
    /// Output format
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    /// Check a change against the server's current state and print what it
    /// would do, changing nothing
    #[arg(long, global = true)]
    dry_run: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Virtual disks
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// The disks of one VM as named slots
    #[command(subcommand)]
    Group(GroupCmd),
    /// Points in time of a whole group
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Clone a snapshot into a new group: `ferry clone GROUP@SNAP --as NEWGROUP`
    Clone(CloneArgs),
    /// Replace slots of a group by clones of a snapshot, keeping an undo snapshot
    Sync(SyncArgs),
    /// Space used per volume
    Space,
    /// NBD export names of volumes (read-write) and snapshots (read-only)
    #[command(subcommand)]
    Export(export::ExportCmd),
    /// This site's name and identity, as partners see it
    #[command(subcommand)]
    Site(partner::SiteCmd),
    /// Other sites paired with this one (by a one-time token)
    #[command(subcommand)]
    Partner(partner::PartnerCmd),
    /// Replicate groups to a partner site: enable, pause, resume, status
    #[command(subcommand)]
    Replication(replication::ReplicationCmd),
    /// A replica group's recovery points
    #[command(subcommand, name = "recovery-point")]
    RecoveryPoint(replication::RecoveryPointCmd),
    /// Failover drills and the real thing: test, planned, unplanned
    #[command(subcommand)]
    Failover(replication::FailoverCmd),
    /// Long operations (a deleted snapshot's space, sync): list, show, cancel
    #[command(subcommand)]
    Job(JobCmd),
    /// The tamper-evident record of every change
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Users and their roles
    #[command(subcommand)]
    User(UserCmd),
    /// API tokens
    #[command(subcommand)]
    Token(TokenCmd),
    /// Named sites (server and token file) to switch between
    #[command(subcommand)]
    Context(ContextCmd),
    /// Print a shell completion script: `ferry completions bash > /etc/bash_completion.d/ferry`
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Which API operation each command calls (for the tests), as JSON
    #[command(name = "__operations", hide = true)]
    Operations,
}

#[derive(Subcommand, Debug)]
enum ContextCmd {
    /// Add (or replace) a context: `ferry context add dr --server URL --token-file F [--ca FILE]`
    Add { name: String },
    /// Make a context the current one
    Use { name: String },
    /// List contexts; the current one is marked
    List,
    /// Remove a context
    Remove { name: String },
}

#[derive(Subcommand, Debug)]
enum VolumeCmd {
    /// Create a volume: `ferry volume create NAME --size 10G`
    Create {
        name: String,
        /// 10G, 512M, 1T or bytes
        #[arg(long, allow_hyphen_values = true)]
        size: String,
    },
    /// List volumes
    List,
    /// Show one volume
    Show { name: String },
    /// Make a volume larger
    Grow {
        name: String,
        /// The new size: 20G, 1T or bytes
        #[arg(long, allow_hyphen_values = true)]
        size: String,
    },
    /// Delete a volume (not while it is in a group)
    Delete { name: String },
}

#[derive(Subcommand, Debug)]
enum GroupCmd {
    /// Create a group: `ferry group create NAME --slot SLOT=VOLUME ...`
    Create {
        name: String,
        /// SLOT=VOLUME, repeatable
        #[arg(long = "slot", value_name = "SLOT=VOLUME")]
        slots: Vec<String>,
        /// KEY=VALUE, repeatable
        #[arg(long = "tag", value_name = "KEY=VALUE")]
        tags: Vec<String>,
    },
    /// List groups
    List,
    /// Show one group
    Show { name: String },
    /// Delete a group (its volumes stay)
    Delete { name: String },
    /// Replace a group's tags: `ferry group tag NAME KEY=VALUE ...`
    Tag {
        name: String,
        #[arg(value_name = "KEY=VALUE")]
        tags: Vec<String>,
    },
    /// Set the shell commands that freeze and thaw the group's application
    /// around application-consistent snapshots (run by ferryd, as itself,
    /// with FERRY_GROUP set), or --clear them
    Hooks {
        name: String,
        #[arg(long, required_unless_present = "clear", requires = "post")]
        pre: Option<String>,
        #[arg(long, required_unless_present = "clear", requires = "pre")]
        post: Option<String>,
        /// How long each may take: 30s (default), 2m, or seconds
        #[arg(long, default_value = "30s")]
        timeout: String,
        #[arg(long, conflicts_with_all = ["pre", "post"])]
        clear: bool,
    },
    /// Put a volume into a slot: `ferry group slot-set GROUP SLOT VOLUME`
    SlotSet {
        name: String,
        slot: String,
        volume: String,
    },
    /// Take a slot out of a group (its volume stays)
    SlotRemove { name: String, slot: String },
}

#[derive(Subcommand, Debug)]
enum SnapshotCmd {
    /// Snapshot a group: `ferry snapshot create GROUP --name SNAP`
    Create {
        group: String,
        #[arg(long)]
        name: String,
        /// crash or app
        #[arg(long, default_value = "crash")]
        kind: String,
    },
    /// List a group's snapshots
    List { group: String },
    /// Show one snapshot: GROUP@SNAP
    Show { snapshot: String },
    /// Delete a snapshot: GROUP@SNAP; waits while its space is given back
    Delete {
        snapshot: String,
        /// Return at once, printing the id of the job that gives the space back
        #[arg(long)]
        no_wait: bool,
    },
    /// Blocks changed between GROUP@A and GROUP@B (or GROUP@live)
    Diff { from: String, to: String },
}

#[derive(Args, Debug)]
struct CloneArgs {
    /// GROUP@SNAP
    snapshot: String,
    /// Name of the new group
    #[arg(long = "as", value_name = "NEWGROUP")]
    new_group: String,
}

#[derive(Args, Debug)]
struct SyncArgs {
    /// GROUP@SNAP to copy from
    #[arg(required_unless_present = "mappings")]
    snapshot: Option<String>,
    /// The group whose slots are replaced
    #[arg(long, required_unless_present = "mappings")]
    to: Option<String>,
    /// Slots to replace, comma-separated
    #[arg(long, value_delimiter = ',', required_unless_present = "mappings")]
    slots: Vec<String>,
    /// JSON file: a list of {"source": "GROUP@SNAP", "target": "GROUP", "slots": [...]}
    #[arg(long, conflicts_with_all = ["snapshot", "to", "slots"])]
    mappings: Option<String>,
    /// Return at once, printing the id of each sync's job
    #[arg(long)]
    no_wait: bool,
}

#[derive(Subcommand, Debug)]
enum JobCmd {
    /// List jobs, oldest first
    List,
    /// Show one job and its progress: `ferry job show job-3`
    Show { id: String },
    /// Ask a job to stop at its next safe point, and wait until it stopped
    Cancel {
        id: String,
        /// Return at once instead of waiting for the job to stop
        #[arg(long)]
        no_wait: bool,
    },
}

#[derive(Subcommand, Debug)]
enum AuditCmd {
    /// List audit records
    List,
    /// Check the hash chain; fails naming the first bad record
    Verify,
}

#[derive(Subcommand, Debug)]
enum UserCmd {
    /// Create a user: `ferry user create NAME --role admin|operator|user [--grant KEY=VALUE]`
    Create {
        name: String,
        #[arg(long)]
        role: String,
        #[arg(long = "grant", value_name = "KEY=VALUE")]
        grants: Vec<String>,
    },
    /// List users
    List,
    /// Delete a user and its tokens
    Delete { name: String },
}

#[derive(Subcommand, Debug)]
enum TokenCmd {
    /// Make a token for a user (the secret is shown once)
    Create { user: String },
    /// List tokens
    List,
    /// Revoke a token
    Delete { id: String },
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("starting the runtime");
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) if client::is_dry_run(&e) => 0,
        Err(e) => {
            let code = e.downcast_ref::<Failure>().map_or(1, Failure::exit_code);
            eprintln!("error: {e:#}");
            code
        }
    };
    std::process::exit(code);
}

/// What `--no-wait` prints: the job's id, or the job as JSON.
fn print_started(out: Format, job: &Value) -> Result<()> {
    match out {
        Format::Table => println!("{}", job::id(job)?),
        Format::Json => println!("{}", serde_json::to_string_pretty(job)?),
    }
    Ok(())
}

fn split_ref(s: &str) -> Result<(&str, &str)> {
    match s.split_once('@') {
        Some((g, n)) if !g.is_empty() && !n.is_empty() => Ok((g, n)),
        _ => bail!("{s:?} must look like GROUP@SNAPSHOT"),
    }
}

/// One path segment (or query value) of a request: percent-encoded, so that
/// a name holding `/`, `?`, `#` or `%` reaches the server as that name (and is
/// refused there) instead of addressing another endpoint. `.` and `..` cannot
/// be encoded (URLs resolve them), so they are refused here.
fn seg(s: &str) -> Result<String> {
    if s.is_empty() || s == "." || s == ".." {
        bail!("{s:?} is not a valid name");
    }
    Ok(s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect())
}

fn pairs(items: &[String], what: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for item in items {
        let Some((k, v)) = item.split_once('=') else {
            bail!(
                "{what} {item:?} must look like {}",
                if what == "slot" {
                    "SLOT=VOLUME"
                } else {
                    "KEY=VALUE"
                }
            );
        };
        out.insert(k.to_owned(), v.to_owned());
    }
    Ok(out)
}

/// Commands that do not talk to a server.
fn local(cli: &Cli) -> Result<bool> {
    let out = cli.output;
    match &cli.command {
        Command::Context(cmd) => {
            let mut config = context::load()?;
            // saves the changed config, or with --dry-run says what it would do
            let commit = |config: &context::Config, would: &str, done: &str| {
                if cli.dry_run {
                    if out == Format::Json {
                        println!(
                            "{:#}",
                            json!({"dry_run": true, "action": "context", "changes": [would]})
                        );
                    } else {
                        println!("dry run, nothing changed; this would:\n  {would}");
                    }
                    return Ok(());
                }
                context::save(config)?;
                output::done(out, done);
                anyhow::Ok(())
            };
            match cmd {
                ContextCmd::Add { name } => {
                    let Some(server) = &cli.server else {
                        bail!(
                            "give the context's server: ferry context add {name} --server URL --token-file FILE"
                        );
                    };
                    let token_file = &cli.token_file;
                    if !server.starts_with("http://") && !server.starts_with("https://") {
                        bail!(
                            "--server must be a URL such as http://127.0.0.1:7410, not {server:?}"
                        );
                    }
                    let absolute = |f: &Option<String>, what: &str| -> Result<Option<String>> {
                        match f {
                            Some(f) => Ok(Some(
                                std::fs::canonicalize(f)
                                    .map_err(|e| anyhow::anyhow!("{what} {f}: {e}"))?
                                    .display()
                                    .to_string(),
                            )),
                            None => Ok(None),
                        }
                    };
                    let token_file = absolute(token_file, "token file")?;
                    let ca = absolute(&cli.ca, "CA certificate")?;
                    config.contexts.insert(
                        name.clone(),
                        context::Site {
                            server: server.clone(),
                            token_file,
                            ca,
                        },
                    );
                    commit(
                        &config,
                        &format!("add context {name} ({server})"),
                        &format!("added context {name}"),
                    )?;
                }
                ContextCmd::Use { name } => {
                    if !config.contexts.contains_key(name) {
                        bail!("no context named {name:?}; `ferry context list` shows them");
                    }
                    config.current = Some(name.clone());
                    commit(
                        &config,
                        &format!("use context {name}"),
                        &format!("now using context {name}"),
                    )?;
                }
                ContextCmd::List => {
                    let list: Vec<Value> = config
                        .contexts
                        .iter()
                        .map(|(name, site)| {
                            json!({
                                "name": name,
                                "current": config.current.as_deref() == Some(name.as_str()),
                                "server": site.server,
                                "token_file": site.token_file,
                                "ca": site.ca,
                            })
                        })
                        .collect();
                    print_list(
                        out,
                        &Value::Array(list),
                        &["name", "current", "server", "token_file", "ca"],
                    );
                }
                ContextCmd::Remove { name } => {
                    if config.contexts.remove(name).is_none() {
                        bail!("no context named {name:?}");
                    }
                    if config.current.as_deref() == Some(name.as_str()) {
                        config.current = None;
                    }
                    commit(
                        &config,
                        &format!("remove context {name}"),
                        &format!("removed context {name}"),
                    )?;
                }
            }
            Ok(true)
        }
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "ferry", &mut std::io::stdout());
            Ok(true)
        }
        Command::Operations => {
            println!("{:#}", ops::describe(&Cli::command()));
            Ok(true)
        }
        _ => Ok(false),
    }
}

async fn run(cli: Cli) -> Result<i32> {
    let out = cli.output;
    if local(&cli)? {
        return Ok(0);
    }
    // Flags and environment first, then the current context, then defaults.
    let site = if cli.server.is_none() {
        context::current()?
    } else {
        None
    };
    let server = cli
        .server
        .clone()
        .or_else(|| site.as_ref().map(|s| s.server.clone()));
    let token_file = cli
        .token_file
        .clone()
        .or_else(|| site.as_ref().and_then(|s| s.token_file.clone()));
    let ca = cli
        .ca
        .clone()
        .or_else(|| site.as_ref().and_then(|s| s.ca.clone()));
    let mut client = Client::new(
        server.as_deref(),
        cli.token.as_deref(),
        token_file.as_deref(),
        ca.as_deref(),
    )?;
    if cli.dry_run {
        client.dry_run(out);
    }
    match cli.command {
        Command::Volume(cmd) => match cmd {
            VolumeCmd::Create { name, size } => {
                let v = client
                    .post("/v1/volumes", &json!({"name": name, "size": size}))
                    .await?;
                print_object(out, &v, &["name", "size", "group", "slot"]);
            }
            VolumeCmd::List => print_list(
                out,
                &client.get("/v1/volumes").await?,
                &["name", "size", "group", "slot"],
            ),
            VolumeCmd::Show { name } => print_object(
                out,
                &client.get(&format!("/v1/volumes/{}", seg(&name)?)).await?,
                &["name", "size", "group", "slot", "created"],
            ),
            VolumeCmd::Grow { name, size } => {
                let v = client
                    .post(
                        &format!("/v1/volumes/{}/grow", seg(&name)?),
                        &json!({"size": size}),
                    )
                    .await?;
                print_object(out, &v, &["name", "size"]);
            }
            VolumeCmd::Delete { name } => {
                client
                    .delete(&format!("/v1/volumes/{}", seg(&name)?))
                    .await?;
                output::done(out, &format!("deleted volume {name}"));
            }
        },
        Command::Group(cmd) => match cmd {
            GroupCmd::Create { name, slots, tags } => {
                let body = json!({"name": name, "slots": pairs(&slots, "slot")?, "tags": pairs(&tags, "tag")?});
                print_object(
                    out,
                    &client.post("/v1/groups", &body).await?,
                    &["name", "slots", "tags"],
                );
            }
            GroupCmd::List => print_list(
                out,
                &client.get("/v1/groups").await?,
                &["name", "slots", "tags"],
            ),
            GroupCmd::Show { name } => print_object(
                out,
                &client.get(&format!("/v1/groups/{}", seg(&name)?)).await?,
                &["name", "slots", "tags", "created"],
            ),
            GroupCmd::Delete { name } => {
                client
                    .delete(&format!("/v1/groups/{}", seg(&name)?))
                    .await?;
                output::done(out, &format!("deleted group {name}"));
            }
            GroupCmd::Tag { name, tags } => {
                let body = serde_json::to_value(pairs(&tags, "tag")?)?;
                print_object(
                    out,
                    &client
                        .put(&format!("/v1/groups/{}/tags", seg(&name)?), &body)
                        .await?,
                    &["name", "tags"],
                );
            }
            GroupCmd::Hooks {
                name,
                pre,
                post,
                timeout,
                clear,
            } => {
                let body = if clear {
                    serde_json::json!({ "pre": null, "post": null })
                } else {
                    serde_json::json!({
                        "pre": pre,
                        "post": post,
                        "timeout_seconds": partner::parse_secs("--timeout", &timeout)?,
                    })
                };
                print_object(
                    out,
                    &client
                        .put(&format!("/v1/groups/{}/hooks", seg(&name)?), &body)
                        .await?,
                    &["name", "hooks"],
                );
            }
            GroupCmd::SlotSet { name, slot, volume } => {
                let v = client
                    .put(
                        &format!("/v1/groups/{}/slots/{}", seg(&name)?, seg(&slot)?),
                        &json!({"volume": volume}),
                    )
                    .await?;
                print_object(out, &v, &["name", "slots"]);
            }
            GroupCmd::SlotRemove { name, slot } => {
                let v = client
                    .delete(&format!("/v1/groups/{}/slots/{}", seg(&name)?, seg(&slot)?))
                    .await?;
                print_object(out, &v, &["name", "slots"]);
            }
        },
        Command::Snapshot(cmd) => match cmd {
            SnapshotCmd::Create { group, name, kind } => {
                let v = client
                    .post(
                        &format!("/v1/groups/{}/snapshots", seg(&group)?),
                        &json!({"name": name, "kind": kind}),
                    )
                    .await?;
                print_object(out, &v, &["name", "owner", "kind", "created", "members"]);
            }
            SnapshotCmd::List { group } => {
                let v = client
                    .get(&format!("/v1/groups/{}/snapshots", seg(&group)?))
                    .await?;
                print_list(out, &v, &["name", "kind", "created", "members"]);
            }
            SnapshotCmd::Show { snapshot } => {
                let (g, s) = split_ref(&snapshot)?;
                let v = client
                    .get(&format!("/v1/groups/{}/snapshots/{}", seg(g)?, seg(s)?))
                    .await?;
                print_object(out, &v, &["name", "owner", "kind", "created", "members"]);
            }
            SnapshotCmd::Delete { snapshot, no_wait } => {
                let (g, s) = split_ref(&snapshot)?;
                let started = client
                    .delete(&format!("/v1/groups/{}/snapshots/{}", seg(g)?, seg(s)?))
                    .await?;
                if no_wait {
                    print_started(out, &started)?;
                    return Ok(0);
                }
                let done = job::expect_done(job::wait(&client, started).await?)?;
                let message = format!("deleted snapshot {snapshot}");
                match out {
                    Format::Table => println!("{message}"),
                    Format::Json => println!(
                        "{}",
                        serde_json::to_string_pretty(
                            &json!({"ok": true, "message": message, "job": done})
                        )?
                    ),
                }
            }
            SnapshotCmd::Diff { from, to } => {
                let (g, a) = split_ref(&from)?;
                let (g2, b) = split_ref(&to)?;
                if g != g2 {
                    bail!("both snapshots must be of the same group ({g} and {g2} differ)");
                }
                let v = client
                    .get(&format!(
                        "/v1/groups/{}/diff?from={}&to={}",
                        seg(g)?,
                        seg(a)?,
                        seg(b)?
                    ))
                    .await?;
                output::print_diff(out, &v);
            }
        },
        Command::Clone(a) => {
            let (g, s) = split_ref(&a.snapshot)?;
            let v = client
                .post(
                    &format!("/v1/groups/{}/snapshots/{}/clone", seg(g)?, seg(s)?),
                    &json!({"as": a.new_group}),
                )
                .await?;
            print_object(out, &v, &["name", "slots"]);
        }
        Command::Sync(a) => {
            let mappings: Vec<Value> = match &a.mappings {
                Some(file) => {
                    let text = std::fs::read_to_string(file)
                        .map_err(|e| anyhow::anyhow!("reading {file}: {e}"))?;
                    let list: Value = serde_json::from_str(&text)
                        .map_err(|e| anyhow::anyhow!("parsing {file}: {e}"))?;
                    let Value::Array(items) = list else {
                        bail!(
                            "{file} must hold a JSON list of {{\"source\", \"target\", \"slots\"}} entries"
                        );
                    };
                    items
                }
                None => vec![json!({
                    "source": a.snapshot.clone().unwrap_or_default(),
                    "target": a.to.clone().unwrap_or_default(),
                    "slots": a.slots,
                })],
            };
            let mut results = Vec::new();
            for mapping in mappings {
                let started = match client.post("/v1/sync", &mapping).await {
                    // each mapping's plan is printed; go on to the next
                    Err(e) if client::is_dry_run(&e) => continue,
                    r => r?,
                };
                if a.no_wait {
                    if out == Format::Table {
                        println!("{}", job::id(&started)?);
                    }
                    results.push(started);
                    continue;
                }
                let done = job::expect_done(job::wait(&client, started).await?)?;
                let r = &done["result"];
                if out == Format::Table {
                    println!(
                        "synced {} into {} (slots {}); undo snapshot: {}",
                        mapping["source"].as_str().unwrap_or("?"),
                        mapping["target"].as_str().unwrap_or("?"),
                        r["slots"].as_array().map_or(String::new(), |s| s
                            .iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(",")),
                        r["undo_snapshot"].as_str().unwrap_or("?")
                    );
                }
                results.push(json!({
                    "source": mapping["source"],
                    "target": mapping["target"],
                    "job": done["id"],
                    "result": r,
                }));
            }
            if out == Format::Json && !results.is_empty() {
                println!("{}", serde_json::to_string_pretty(&results)?);
            }
        }
        Command::Job(cmd) => match cmd {
            JobCmd::List => job::print_jobs(out, &client.get("/v1/jobs").await?),
            JobCmd::Show { id } => {
                job::print_job(out, &client.get(&format!("/v1/jobs/{}", seg(&id)?)).await?)
            }
            JobCmd::Cancel { id, no_wait } => {
                let asked = client
                    .post(&format!("/v1/jobs/{}/cancel", seg(&id)?), &json!({}))
                    .await?;
                let job = if no_wait {
                    asked
                } else {
                    job::wait(&client, asked).await?
                };
                match out {
                    Format::Json => job::print_job(out, &job),
                    Format::Table => match job["state"].as_str() {
                        Some("cancelled") => println!("cancelled job {id}"),
                        Some(state @ ("done" | "failed")) => {
                            println!("job {id} finished ({state}) before it could stop")
                        }
                        _ => println!("asked job {id} to stop"),
                    },
                }
            }
        },
        Command::Export(cmd) => export::run(&client, out, cmd).await?,
        Command::Site(cmd) => partner::run_site(&client, out, cmd).await?,
        Command::Partner(cmd) => partner::run(&client, out, cmd).await?,
        Command::Replication(cmd) => replication::run(&client, out, cmd).await?,
        Command::RecoveryPoint(cmd) => replication::run_points(&client, out, cmd).await?,
        Command::Failover(cmd) => replication::run_failover(&client, out, cmd).await?,
        Command::Space => print_list(
            out,
            &client.get("/v1/space").await?,
            &["volume", "logical", "allocated", "snapshot_only"],
        ),
        Command::Audit(cmd) => match cmd {
            AuditCmd::List => print_list(
                out,
                &client.get("/v1/audit").await?,
                &[
                    "seq", "time_ms", "actor", "action", "object", "outcome", "status",
                ],
            ),
            AuditCmd::Verify => {
                let v = client.get("/v1/audit/verify").await?;
                let ok = v["ok"].as_bool() == Some(true);
                if out == Format::Json {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else if ok {
                    println!("audit log verified: {} records, chain intact", v["records"]);
                } else {
                    println!(
                        "audit log BROKEN at line {} (record {}): {}",
                        v["first_bad_line"],
                        v["first_bad_seq"],
                        v["problem"].as_str().unwrap_or("?")
                    );
                }
                return Ok(if ok { 0 } else { 7 });
            }
        },
        Command::User(cmd) => match cmd {
            UserCmd::Create { name, role, grants } => {
                let v = client
                    .post(
                        "/v1/users",
                        &json!({"name": name, "role": role, "grants": grants}),
                    )
                    .await?;
                print_object(out, &v, &["name", "role", "grants"]);
            }
            UserCmd::List => print_list(
                out,
                &client.get("/v1/users").await?,
                &["name", "role", "grants"],
            ),
            UserCmd::Delete { name } => {
                client.delete(&format!("/v1/users/{}", seg(&name)?)).await?;
                output::done(out, &format!("deleted user {name}"));
            }
        },
        Command::Context(_) | Command::Completions { .. } | Command::Operations => {
            unreachable!("handled by local()")
        }
        Command::Token(cmd) => match cmd {
            TokenCmd::Create { user } => {
                let v = client
                    .post(&format!("/v1/users/{}/tokens", seg(&user)?), &json!({}))
                    .await?;
                print_object(out, &v, &["id", "user", "token"]);
            }
            TokenCmd::List => print_list(
                out,
                &client.get("/v1/tokens").await?,
                &["id", "user", "created_ms"],
            ),
            TokenCmd::Delete { id } => {
                client.delete(&format!("/v1/tokens/{}", seg(&id)?)).await?;
                output::done(out, &format!("revoked token {id}"));
            }
        },
    }
    Ok(0)
}
