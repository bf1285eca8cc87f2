//! The table of every endpoint: method, path, action name, the privilege it
//! needs, its handler, and the shapes of its request and reply (for the
//! OpenAPI document, [`crate::openapi`]), side by side.

mod admin;
mod exports;
mod groups;
mod jobs;
pub mod partners;
mod replication;
mod snapshots;
mod volumes;

use axum::handler::Handler;
use axum::http::{Method, StatusCode};
use axum::routing::{MethodFilter, MethodRouter};
use utoipa::ToSchema;

use crate::openapi::{Schema, list_of, schema_of};

use crate::auth::Privilege;
use crate::error::ApiError;
use crate::{AppState, error::ApiResult};

/// One endpoint.
#[derive(Clone, Debug)]
pub struct RouteInfo {
    pub method: Method,
    pub path: &'static str,
    /// Stable name, used in audit records and as the operation id.
    pub action: &'static str,
    pub privilege: Privilege,
    pub summary: &'static str,
    pub handler: MethodRouter<AppState>,
    /// The JSON body it takes, if any.
    pub body: Option<Schema>,
    /// The status of success and the JSON it returns (none for 204).
    pub reply: Option<(StatusCode, Option<Schema>)>,
    /// Query parameters: name, required, description.
    pub query: Vec<(&'static str, bool, &'static str)>,
    /// For a mutation, what answers `?dry_run=true`: it checks the request
    /// against the current state and says what would change, changing nothing.
    pub plan: Option<MethodRouter<AppState>>,
}

/// What a dry run answers: the changes the request would make.
#[derive(Clone, Debug, serde::Serialize, ToSchema)]
pub struct Plan {
    /// Always true: nothing was changed.
    pub dry_run: bool,
    /// The action that would run.
    pub action: String,
    /// What would change, one line each.
    pub changes: Vec<String>,
}

/// A dry run's answer.
pub(crate) fn plan(action: &str, changes: Vec<String>) -> axum::Json<Plan> {
    axum::Json(Plan {
        dry_run: true,
        action: action.to_owned(),
        changes,
    })
}

impl RouteInfo {
    /// Takes a JSON body of type `T`.
    fn body<T: ToSchema>(mut self) -> RouteInfo {
        self.body = Some(schema_of::<T>);
        self
    }

    /// Answers `status` with a `T`.
    fn reply<T: ToSchema>(mut self, status: StatusCode) -> RouteInfo {
        self.reply = Some((status, Some(schema_of::<T>)));
        self
    }

    /// Answers 200 with a list of `T`.
    fn list<T: ToSchema>(mut self) -> RouteInfo {
        self.reply = Some((StatusCode::OK, Some(list_of::<T>)));
        self
    }

    /// Answers 204 No Content.
    fn no_content(mut self) -> RouteInfo {
        self.reply = Some((StatusCode::NO_CONTENT, None));
        self
    }

    /// Answers `?dry_run=true` with `handler`, which returns a [`Plan`].
    fn plan<H, T>(mut self, handler: H) -> RouteInfo
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(self.method.clone()).expect("a standard method");
        self.plan = Some(axum::routing::on(filter, handler));
        self
    }

    /// Takes a query parameter.
    fn query(mut self, name: &'static str, required: bool, description: &'static str) -> RouteInfo {
        self.query.push((name, required, description));
        self
    }
}

fn route<H, T>(
    method: Method,
    path: &'static str,
    action: &'static str,
    privilege: Privilege,
    summary: &'static str,
    handler: H,
) -> RouteInfo
where
    H: Handler<T, AppState>,
    T: 'static,
{
    let filter = MethodFilter::try_from(method.clone()).expect("a standard method");
    RouteInfo {
        method,
        path,
        action,
        privilege,
        summary,
        handler: axum::routing::on(filter, handler),
        body: None,
        reply: None,
        query: Vec::new(),
        plan: None,
    }
}

/// Every endpoint of the API.
pub fn table() -> Vec<RouteInfo> {
    use Method as M;
    use Privilege as P;
    use StatusCode as S;
    vec![
        route(
            M::GET,
            "/v1/volumes",
            "volume.list",
            P::VolumeRead,
            "List volumes",
            volumes::list,
        )
        .list::<ferry_store::VolumeInfo>(),
        route(
            M::POST,
            "/v1/volumes",
            "volume.create",
            P::VolumeWrite,
            "Create a volume",
            volumes::create,
        )
        .plan(volumes::plan_create)
        .body::<volumes::CreateVolume>()
        .reply::<ferry_store::VolumeInfo>(S::CREATED),
        route(
            M::GET,
            "/v1/volumes/{name}",
            "volume.get",
            P::VolumeRead,
            "Show a volume",
            volumes::get,
        )
        .reply::<ferry_store::VolumeInfo>(S::OK),
        route(
            M::POST,
            "/v1/volumes/{name}/grow",
            "volume.grow",
            P::VolumeWrite,
            "Grow a volume",
            volumes::grow,
        )
        .plan(volumes::plan_grow)
        .body::<volumes::GrowVolume>()
        .reply::<ferry_store::VolumeInfo>(S::OK),
        route(
            M::DELETE,
            "/v1/volumes/{name}",
            "volume.delete",
            P::VolumeWrite,
            "Delete a volume",
            volumes::delete,
        )
        .plan(volumes::plan_delete)
        .no_content(),
        route(
            M::GET,
            "/v1/groups",
            "group.list",
            P::GroupRead,
            "List groups",
            groups::list,
        )
        .list::<ferry_store::GroupInfo>(),
        route(
            M::POST,
            "/v1/groups",
            "group.create",
            P::GroupWrite,
            "Create a group",
            groups::create,
        )
        .plan(groups::plan_create)
        .body::<groups::CreateGroup>()
        .reply::<ferry_store::GroupInfo>(S::CREATED),
        route(
            M::GET,
            "/v1/groups/{name}",
            "group.get",
            P::GroupRead,
            "Show a group",
            groups::get,
        )
        .reply::<ferry_store::GroupInfo>(S::OK),
        route(
            M::DELETE,
            "/v1/groups/{name}",
            "group.delete",
            P::GroupWrite,
            "Delete a group",
            groups::delete,
        )
        .plan(groups::plan_delete)
        .no_content(),
        route(
            M::PUT,
            "/v1/groups/{name}/hooks",
            "group.set_hooks",
            P::GroupWrite,
            "Set (or clear) the commands that freeze and thaw a group's application for application-consistent snapshots",
            groups::set_hooks,
        )
        .plan(groups::plan_set_hooks)
        .body::<groups::SetHooks>()
        .reply::<ferry_store::GroupInfo>(S::OK),
        route(
            M::PUT,
            "/v1/groups/{name}/tags",
            "group.set_tags",
            P::GroupWrite,
            "Replace a group's tags",
            groups::set_tags,
        )
        .plan(groups::plan_set_tags)
        .body::<groups::Tags>()
        .reply::<ferry_store::GroupInfo>(S::OK),
        route(
            M::PUT,
            "/v1/groups/{name}/slots/{slot}",
            "group.set_slot",
            P::GroupWrite,
            "Put a volume in a slot",
            groups::set_slot,
        )
        .plan(groups::plan_set_slot)
        .body::<groups::SetSlot>()
        .reply::<ferry_store::GroupInfo>(S::OK),
        route(
            M::DELETE,
            "/v1/groups/{name}/slots/{slot}",
            "group.remove_slot",
            P::GroupWrite,
            "Empty a slot",
            groups::remove_slot,
        )
        .plan(groups::plan_remove_slot)
        .reply::<ferry_store::GroupInfo>(S::OK),
        route(
            M::GET,
            "/v1/groups/{name}/snapshots",
            "snapshot.list",
            P::SnapshotRead,
            "List a group's snapshots",
            snapshots::list,
        )
        .list::<ferry_store::SnapshotInfo>(),
        route(
            M::POST,
            "/v1/groups/{name}/snapshots",
            "snapshot.create",
            P::SnapshotCreate,
            "Snapshot a group",
            snapshots::create,
        )
        .plan(snapshots::plan_create)
        .body::<snapshots::CreateSnapshot>()
        .reply::<ferry_store::SnapshotInfo>(S::CREATED),
        route(
            M::GET,
            "/v1/groups/{name}/snapshots/{snapshot}",
            "snapshot.get",
            P::SnapshotRead,
            "Show a snapshot",
            snapshots::get,
        )
        .reply::<ferry_store::SnapshotInfo>(S::OK),
        route(
            M::DELETE,
            "/v1/groups/{name}/snapshots/{snapshot}",
            "snapshot.delete",
            P::SnapshotDelete,
            "Delete a snapshot; its space is given back by a job",
            snapshots::delete,
        )
        .plan(snapshots::plan_delete)
        .reply::<crate::jobs::Job>(S::ACCEPTED),
        route(
            M::GET,
            "/v1/groups/{name}/diff",
            "snapshot.diff",
            P::SnapshotRead,
            "Blocks changed between two snapshots",
            snapshots::diff,
        )
        .query("from", true, "the older snapshot")
        .query("to", false, "the newer snapshot, or `live` (the default)")
        .reply::<snapshots::DiffSummary>(S::OK),
        route(
            M::POST,
            "/v1/groups/{name}/snapshots/{snapshot}/clone",
            "clone.create",
            P::Clone,
            "Clone a snapshot into a new group",
            snapshots::clone,
        )
        .plan(snapshots::plan_clone)
        .body::<snapshots::CloneRequest>()
        .reply::<ferry_store::GroupInfo>(S::CREATED),
        route(
            M::POST,
            "/v1/sync",
            "sync.run",
            P::Sync,
            "Replace slots of a group by clones of a snapshot, as a job",
            snapshots::sync,
        )
        .plan(snapshots::plan_sync)
        .body::<snapshots::SyncRequest>()
        .reply::<crate::jobs::Job>(S::ACCEPTED),
        route(
            M::GET,
            "/v1/exports",
            "export.list",
            P::ExportRead,
            "List NBD exports",
            exports::list,
        )
        .list::<ferry_store::ExportInfo>(),
        route(
            M::POST,
            "/v1/exports",
            "export.create",
            P::ExportWrite,
            "Export a volume (read-write) or a snapshot's volume (read-only) over NBD",
            exports::create,
        )
        .plan(exports::plan_create)
        .body::<exports::CreateExport>()
        .reply::<ferry_store::ExportInfo>(S::CREATED),
        route(
            M::GET,
            "/v1/exports/{name}",
            "export.get",
            P::ExportRead,
            "Show an NBD export",
            exports::get,
        )
        .reply::<ferry_store::ExportInfo>(S::OK),
        route(
            M::DELETE,
            "/v1/exports/{name}",
            "export.delete",
            P::ExportWrite,
            "Remove an NBD export; its volume or snapshot stays",
            exports::delete,
        )
        .plan(exports::plan_delete)
        .no_content(),
        route(
            M::GET,
            "/v1/jobs",
            "job.list",
            P::JobRead,
            "List jobs",
            jobs::list,
        )
        .list::<crate::jobs::Job>(),
        route(
            M::GET,
            "/v1/jobs/{id}",
            "job.get",
            P::JobRead,
            "Show a job and its progress",
            jobs::get,
        )
        .reply::<crate::jobs::Job>(S::OK),
        route(
            M::POST,
            "/v1/jobs/{id}/cancel",
            "job.cancel",
            P::JobCancel,
            "Ask a job to stop at its next safe point",
            jobs::cancel,
        )
        .plan(jobs::plan_cancel)
        .reply::<crate::jobs::Job>(S::ACCEPTED),
        route(
            M::GET,
            "/v1/space",
            "space.list",
            P::SpaceRead,
            "Space per volume",
            volumes::space,
        )
        .list::<ferry_store::SpaceInfo>(),
        route(
            M::GET,
            "/v1/audit",
            "audit.list",
            P::AuditRead,
            "List audit records",
            admin::audit_list,
        )
        .list::<crate::audit::Record>(),
        route(
            M::GET,
            "/v1/audit/verify",
            "audit.verify",
            P::AuditRead,
            "Verify the audit chain",
            admin::audit_verify,
        )
        .reply::<crate::audit::Verdict>(S::OK),
        route(
            M::GET,
            "/v1/users",
            "user.list",
            P::UserRead,
            "List users",
            admin::user_list,
        )
        .list::<crate::auth::User>(),
        route(
            M::POST,
            "/v1/users",
            "user.create",
            P::UserWrite,
            "Create a user",
            admin::user_create,
        )
        .plan(admin::plan_user_create)
        .body::<admin::CreateUser>()
        .reply::<crate::auth::User>(S::CREATED),
        route(
            M::DELETE,
            "/v1/users/{name}",
            "user.delete",
            P::UserWrite,
            "Delete a user and its tokens",
            admin::user_delete,
        )
        .plan(admin::plan_user_delete)
        .no_content(),
        route(
            M::POST,
            "/v1/users/{name}/tokens",
            "token.create",
            P::UserWrite,
            "Make a token for a user",
            admin::token_create,
        )
        .plan(admin::plan_token_create)
        .reply::<admin::NewToken>(S::CREATED),
        route(
            M::GET,
            "/v1/tokens",
            "token.list",
            P::UserRead,
            "List tokens",
            admin::token_list,
        )
        .list::<crate::auth::TokenInfo>(),
        route(
            M::DELETE,
            "/v1/tokens/{id}",
            "token.delete",
            P::UserWrite,
            "Revoke a token",
            admin::token_delete,
        )
        .plan(admin::plan_token_delete)
        .no_content(),
        route(
            M::GET,
            "/v1/site",
            "site.get",
            P::PartnerRead,
            "Show this site: its name, CA fingerprint and partner address",
            partners::site_get,
        )
        .reply::<partners::SiteInfo>(S::OK),
        route(
            M::PUT,
            "/v1/site",
            "site.set",
            P::PartnerWrite,
            "Name this site (refused once it has partners)",
            partners::site_set,
        )
        .plan(partners::plan_site_set)
        .body::<partners::SetSite>()
        .reply::<partners::SiteInfo>(S::OK),
        route(
            M::GET,
            "/v1/partners",
            "partner.list",
            P::PartnerRead,
            "List partners",
            partners::list,
        )
        .list::<ferry_store::PartnerInfo>(),
        route(
            M::POST,
            "/v1/partners",
            "partner.pair",
            P::PartnerWrite,
            "Pair with the site that issued a pairing token",
            partners::pair,
        )
        .plan(partners::plan_pair)
        .body::<partners::PairRequest>()
        .reply::<ferry_store::PartnerInfo>(S::CREATED),
        route(
            M::POST,
            "/v1/partners/tokens",
            "partner.token",
            P::PartnerWrite,
            "Make a one-time pairing token for another site",
            partners::token_create,
        )
        .plan(partners::plan_token_create)
        .body::<partners::CreatePairToken>()
        .reply::<partners::NewPairToken>(S::CREATED),
        route(
            M::GET,
            "/v1/partners/{name}",
            "partner.get",
            P::PartnerRead,
            "Show a partner",
            partners::get,
        )
        .reply::<ferry_store::PartnerInfo>(S::OK),
        route(
            M::GET,
            "/v1/partners/{name}/hello",
            "partner.hello",
            P::PartnerRead,
            "Call a partner over mutual TLS: how it knows this site, and its name",
            partners::hello,
        )
        .reply::<crate::site::PartnerHello>(S::OK),
        route(
            M::PUT,
            "/v1/partners/{name}/limits",
            "partner.set_limits",
            P::PartnerWrite,
            "Cap the bandwidth of all replication to a partner (or remove the cap)",
            partners::set_limits,
        )
        .plan(partners::plan_set_limits)
        .body::<partners::PartnerLimits>()
        .reply::<ferry_store::PartnerInfo>(S::OK),
        route(
            M::PUT,
            "/v1/partners/{name}/address",
            "partner.set_address",
            P::PartnerWrite,
            "Record where a partner's listener is now (checked by calling it there unless check is false)",
            partners::set_address,
        )
        .plan(partners::plan_set_address)
        .body::<partners::PartnerAddress>()
        .reply::<ferry_store::PartnerInfo>(S::OK),
        route(
            M::DELETE,
            "/v1/partners/{name}",
            "partner.unpair",
            P::PartnerWrite,
            "Unpair a partner (refused while a group replicates with it); its connections are refused from the next handshake, and it is asked to forget this site too",
            partners::unpair,
        )
        .plan(partners::plan_unpair)
        .reply::<partners::Unpaired>(S::OK),
        route(
            M::POST,
            "/v1/replications",
            "replication.enable",
            P::ReplicationWrite,
            "Replicate a group to a partner; the first cycle is the initial copy",
            replication::enable,
        )
        .plan(replication::plan_enable)
        .body::<replication::EnableReplication>()
        .reply::<replication::ReplicationStatus>(S::CREATED),
        route(
            M::GET,
            "/v1/replications",
            "replication.list",
            P::ReplicationRead,
            "List replications with their state, health, lag and figures",
            replication::list,
        )
        .list::<replication::ReplicationStatus>(),
        route(
            M::GET,
            "/v1/replications/{group}",
            "replication.get",
            P::ReplicationRead,
            "Show a group's replication: state, health, lag and figures",
            replication::get,
        )
        .reply::<replication::ReplicationStatus>(S::OK),
        route(
            M::POST,
            "/v1/replications/{group}/pause",
            "replication.pause",
            P::ReplicationRun,
            "Pause a replication (no cycle starts until resumed)",
            replication::pause,
        )
        .plan(replication::plan_pause)
        .reply::<replication::ReplicationStatus>(S::OK),
        route(
            M::POST,
            "/v1/replications/{group}/resume",
            "replication.resume",
            P::ReplicationRun,
            "Resume a paused replication",
            replication::resume,
        )
        .plan(replication::plan_resume)
        .reply::<replication::ReplicationStatus>(S::OK),
        route(
            M::POST,
            "/v1/replications/{group}/run",
            "replication.run",
            P::ReplicationRun,
            "Start a cycle now instead of at the next interval",
            replication::run_now,
        )
        .plan(replication::plan_run)
        .reply::<replication::ReplicationStatus>(S::OK),
        route(
            M::DELETE,
            "/v1/replications/{group}",
            "replication.disable",
            P::ReplicationWrite,
            "Stop replicating a group",
            replication::disable,
        )
        .plan(replication::plan_disable)
        .no_content(),
        route(
            M::POST,
            "/v1/replications/{group}/reverse",
            "replication.reverse",
            P::ReplicationWrite,
            "After a failover here: make the old primary the replica, sending only what changed since the common point",
            replication::reverse,
        )
        .plan(replication::plan_reverse)
        .reply::<ferry_store::Demotion>(S::OK),
        route(
            M::POST,
            "/v1/replications/{group}/seed-export",
            "replication.seed_export",
            P::ReplicationWrite,
            "Write a group's initial copy into a file on the daemon's machine, to carry to the replica",
            replication::seed_export,
        )
        .plan(replication::plan_seed_export)
        .body::<replication::SeedExportRequest>()
        .reply::<crate::site::SeedExport>(S::CREATED),
        route(
            M::POST,
            "/v1/replications/{group}/seed-import",
            "replication.seed_import",
            P::ReplicationWrite,
            "Apply a seed file (on the daemon's machine) as a replica group's first recovery point",
            replication::seed_import,
        )
        .plan(replication::plan_seed_import)
        .body::<replication::SeedImportRequest>()
        .reply::<ferry_store::RecoveryPoint>(S::CREATED),
        route(
            M::POST,
            "/v1/failover/{group}/test",
            "failover.test",
            P::FailoverTest,
            "Clone a recovery point into a throw-away group with read-write exports; replication goes on",
            replication::failover_test,
        )
        .plan(replication::plan_failover_test)
        .body::<replication::PointChoice>()
        .reply::<replication::FailoverTest>(S::CREATED),
        route(
            M::DELETE,
            "/v1/failover/{group}/test",
            "failover.test_cleanup",
            P::FailoverTest,
            "Remove a failover test's group, volumes and exports",
            replication::failover_test_cleanup,
        )
        .plan(replication::plan_failover_test_cleanup)
        .no_content(),
        route(
            M::POST,
            "/v1/failover/{group}/unplanned",
            "failover.unplanned",
            P::Failover,
            "The primary is gone: run a replica group from a recovery point and take writes",
            replication::failover_unplanned,
        )
        .plan(replication::plan_failover_unplanned)
        .body::<replication::PointChoice>()
        .reply::<ferry_store::Promotion>(S::OK),
        route(
            M::POST,
            "/v1/failover/{group}/planned",
            "failover.planned",
            P::Failover,
            "At the source: stop writes, ship the last changes, hand over to the replica, become its replica",
            replication::failover_planned,
        )
        .plan(replication::plan_failover_planned)
        .reply::<crate::site::PlannedFailover>(S::OK),
        route(
            M::GET,
            "/v1/groups/{group}/recovery-points",
            "recovery_point.list",
            P::ReplicationRead,
            "List a replica group's recovery points, oldest first",
            replication::recovery_points,
        )
        .list::<ferry_store::RecoveryPoint>(),
    ]
}

/// Runs engine work on the blocking pool.
pub(crate) async fn blocking<T, F>(f: F) -> ApiResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> ApiResult<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("a worker failed: {e}")))?
}
