//! Which API operation each command calls, so a test can hold the command
//! tree against the OpenAPI document: every operation has a command, every
//! command either calls an operation or works locally.

/// `command path` → operation id (the route table's action name); a path
/// may end in a flag that makes the command call another operation.
pub const OPERATIONS: &[(&str, &str)] = &[
    ("volume list", "volume.list"),
    ("volume create", "volume.create"),
    ("volume show", "volume.get"),
    ("volume grow", "volume.grow"),
    ("volume delete", "volume.delete"),
    ("group list", "group.list"),
    ("group create", "group.create"),
    ("group show", "group.get"),
    ("group delete", "group.delete"),
    ("group tag", "group.set_tags"),
    ("group hooks", "group.set_hooks"),
    ("group slot-set", "group.set_slot"),
    ("group slot-remove", "group.remove_slot"),
    ("snapshot list", "snapshot.list"),
    ("snapshot create", "snapshot.create"),
    ("snapshot show", "snapshot.get"),
    ("snapshot delete", "snapshot.delete"),
    ("snapshot diff", "snapshot.diff"),
    ("clone", "clone.create"),
    ("sync", "sync.run"),
    ("space", "space.list"),
    ("export list", "export.list"),
    ("export add", "export.create"),
    ("export show", "export.get"),
    ("export remove", "export.delete"),
    ("job list", "job.list"),
    ("job show", "job.get"),
    ("job cancel", "job.cancel"),
    ("audit list", "audit.list"),
    ("audit verify", "audit.verify"),
    ("user list", "user.list"),
    ("user create", "user.create"),
    ("user delete", "user.delete"),
    ("token create", "token.create"),
    ("token list", "token.list"),
    ("token delete", "token.delete"),
    ("site show", "site.get"),
    ("site init", "site.set"),
    ("partner token", "partner.token"),
    ("partner pair", "partner.pair"),
    ("partner list", "partner.list"),
    ("partner show", "partner.get"),
    ("partner hello", "partner.hello"),
    ("partner unpair", "partner.unpair"),
    ("partner limit", "partner.set_limits"),
    ("partner address", "partner.set_address"),
    ("replication enable", "replication.enable"),
    ("replication status", "replication.list"),
    ("replication measure", "replication.get"),
    ("replication pause", "replication.pause"),
    ("replication resume", "replication.resume"),
    ("replication run", "replication.run"),
    ("replication disable", "replication.disable"),
    ("recovery-point list", "recovery_point.list"),
    ("replication reverse", "replication.reverse"),
    ("replication seed export", "replication.seed_export"),
    ("replication seed import", "replication.seed_import"),
    ("failover test", "failover.test"),
    // A flag that makes a command call another operation.
    ("failover test --cleanup", "failover.test_cleanup"),
    ("failover planned", "failover.planned"),
    ("failover unplanned", "failover.unplanned"),
];

/// Commands that do not talk to a server.
pub const LOCAL: &[&str] = &[
    "context add",
    "context use",
    "context list",
    "context remove",
    "completions",
];

/// Every leaf of the command tree, as `noun verb` paths (hidden ones left out).
pub fn leaves(cmd: &clap::Command) -> Vec<String> {
    fn walk(cmd: &clap::Command, prefix: &str, out: &mut Vec<String>) {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            let path = if prefix.is_empty() {
                sub.get_name().to_owned()
            } else {
                format!("{prefix} {}", sub.get_name())
            };
            if sub.has_subcommands() {
                walk(sub, &path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(cmd, "", &mut out);
    out
}

/// What `ferry __operations` prints (for the test).
pub fn describe(cmd: &clap::Command) -> serde_json::Value {
    serde_json::json!({
        "leaves": leaves(cmd),
        "operations": OPERATIONS.iter().map(|(c, o)| (c.to_string(), serde_json::json!(o))).collect::<serde_json::Map<_, _>>(),
        "local": LOCAL,
    })
}
