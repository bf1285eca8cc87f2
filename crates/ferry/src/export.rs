//! `ferry export`: NBD export names bound to a volume (read-write) or to one
//! volume of a snapshot (read-only).

use anyhow::Result;
use clap::{ArgGroup, Args, Subcommand};
use serde_json::{Map, Value, json};

use crate::client::Client;
use crate::output::{print_list, print_object};
use crate::{Format, output, seg};

#[derive(Subcommand, Debug)]
pub enum ExportCmd {
    /// Export a volume read-write (`ferry export add NAME --volume VOLUME`)
    /// or a snapshot's volume read-only (`ferry export add NAME --snapshot
    /// GROUP@SNAP --slot SLOT`; a lone volume's `VOLUME@SNAP` takes no slot)
    Add(AddArgs),
    /// List exports
    List,
    /// Show one export
    Show { name: String },
    /// Remove an export (its volume or snapshot stays)
    Remove { name: String },
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("source").required(true).args(["volume", "snapshot"])))]
pub struct AddArgs {
    /// The NBD export name
    name: String,
    /// The volume to export, read-write
    #[arg(long)]
    volume: Option<String>,
    /// The snapshot to export, read-only: GROUP@SNAP (with --slot), or
    /// VOLUME@SNAP of a lone volume; a group of that name comes before a
    /// volume
    #[arg(long, value_name = "GROUP@SNAP")]
    snapshot: Option<String>,
    /// The slot of a group's snapshot to export (the server refuses it
    /// without --snapshot)
    #[arg(long)]
    slot: Option<String>,
}

const COLUMNS: [&str; 8] = [
    "name",
    "kind",
    "read_only",
    "size",
    "volume",
    "group",
    "snapshot",
    "slot",
];

pub async fn run(client: &Client, out: Format, cmd: ExportCmd) -> Result<()> {
    match cmd {
        ExportCmd::Add(a) => {
            let mut body = Map::new();
            body.insert("name".into(), json!(a.name));
            for (key, value) in [
                ("volume", a.volume),
                ("snapshot", a.snapshot),
                ("slot", a.slot),
            ] {
                if let Some(v) = value {
                    body.insert(key.into(), json!(v));
                }
            }
            let v = client.post("/v1/exports", &Value::Object(body)).await?;
            print_object(out, &v, &COLUMNS);
        }
        ExportCmd::List => print_list(out, &client.get("/v1/exports").await?, &COLUMNS),
        ExportCmd::Show { name } => {
            let v = client.get(&format!("/v1/exports/{}", seg(&name)?)).await?;
            let mut fields = COLUMNS.to_vec();
            fields.push("created");
            print_object(out, &v, &fields);
        }
        ExportCmd::Remove { name } => {
            client
                .delete(&format!("/v1/exports/{}", seg(&name)?))
                .await?;
            output::done(out, &format!("removed export {name}"));
        }
    }
    Ok(())
}
