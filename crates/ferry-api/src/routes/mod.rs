//! The table of every endpoint: method, path, action name, the privilege it
//! needs, and its handler, side by side.

mod admin;
mod groups;
mod snapshots;
mod volumes;

use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{MethodFilter, MethodRouter};

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
    }
}

/// Every endpoint of the API.
pub fn table() -> Vec<RouteInfo> {
    use Method as M;
    use Privilege as P;
    vec![
        route(
            M::GET,
            "/v1/volumes",
            "volume.list",
            P::VolumeRead,
            "List volumes",
            volumes::list,
        ),
        route(
            M::POST,
            "/v1/volumes",
            "volume.create",
            P::VolumeWrite,
            "Create a volume",
            volumes::create,
        ),
        route(
            M::GET,
            "/v1/volumes/{name}",
            "volume.get",
            P::VolumeRead,
            "Show a volume",
            volumes::get,
        ),
        route(
            M::POST,
            "/v1/volumes/{name}/grow",
            "volume.grow",
            P::VolumeWrite,
            "Grow a volume",
            volumes::grow,
        ),
        route(
            M::DELETE,
            "/v1/volumes/{name}",
            "volume.delete",
            P::VolumeWrite,
            "Delete a volume",
            volumes::delete,
        ),
        route(
            M::GET,
            "/v1/groups",
            "group.list",
            P::GroupRead,
            "List groups",
            groups::list,
        ),
        route(
            M::POST,
            "/v1/groups",
            "group.create",
            P::GroupWrite,
            "Create a group",
            groups::create,
        ),
        route(
            M::GET,
            "/v1/groups/{name}",
            "group.get",
            P::GroupRead,
            "Show a group",
            groups::get,
        ),
        route(
            M::DELETE,
            "/v1/groups/{name}",
            "group.delete",
            P::GroupWrite,
            "Delete a group",
            groups::delete,
        ),
        route(
            M::PUT,
            "/v1/groups/{name}/tags",
            "group.set_tags",
            P::GroupWrite,
            "Replace a group's tags",
            groups::set_tags,
        ),
        route(
            M::PUT,
            "/v1/groups/{name}/slots/{slot}",
            "group.set_slot",
            P::GroupWrite,
            "Put a volume in a slot",
            groups::set_slot,
        ),
        route(
            M::DELETE,
            "/v1/groups/{name}/slots/{slot}",
            "group.remove_slot",
            P::GroupWrite,
            "Empty a slot",
            groups::remove_slot,
        ),
        route(
            M::GET,
            "/v1/groups/{name}/snapshots",
            "snapshot.list",
            P::SnapshotRead,
            "List a group's snapshots",
            snapshots::list,
        ),
        route(
            M::POST,
            "/v1/groups/{name}/snapshots",
            "snapshot.create",
            P::SnapshotCreate,
            "Snapshot a group",
            snapshots::create,
        ),
        route(
            M::GET,
            "/v1/groups/{name}/snapshots/{snapshot}",
            "snapshot.get",
            P::SnapshotRead,
            "Show a snapshot",
            snapshots::get,
        ),
        route(
            M::DELETE,
            "/v1/groups/{name}/snapshots/{snapshot}",
            "snapshot.delete",
            P::SnapshotDelete,
            "Delete a snapshot",
            snapshots::delete,
        ),
        route(
            M::GET,
            "/v1/groups/{name}/diff",
            "snapshot.diff",
            P::SnapshotRead,
            "Blocks changed between two snapshots",
            snapshots::diff,
        ),
        route(
            M::POST,
            "/v1/groups/{name}/snapshots/{snapshot}/clone",
            "clone.create",
            P::Clone,
            "Clone a snapshot into a new group",
            snapshots::clone,
        ),
        route(
            M::POST,
            "/v1/sync",
            "sync.run",
            P::Sync,
            "Replace slots of a group by clones of a snapshot",
            snapshots::sync,
        ),
        route(
            M::GET,
            "/v1/space",
            "space.list",
            P::SpaceRead,
            "Space per volume",
            volumes::space,
        ),
        route(
            M::GET,
            "/v1/audit",
            "audit.list",
            P::AuditRead,
            "List audit records",
            admin::audit_list,
        ),
        route(
            M::GET,
            "/v1/audit/verify",
            "audit.verify",
            P::AuditRead,
            "Verify the audit chain",
            admin::audit_verify,
        ),
        route(
            M::GET,
            "/v1/users",
            "user.list",
            P::UserRead,
            "List users",
            admin::user_list,
        ),
        route(
            M::POST,
            "/v1/users",
            "user.create",
            P::UserWrite,
            "Create a user",
            admin::user_create,
        ),
        route(
            M::DELETE,
            "/v1/users/{name}",
            "user.delete",
            P::UserWrite,
            "Delete a user and its tokens",
            admin::user_delete,
        ),
        route(
            M::POST,
            "/v1/users/{name}/tokens",
            "token.create",
            P::UserWrite,
            "Make a token for a user",
            admin::token_create,
        ),
        route(
            M::GET,
            "/v1/tokens",
            "token.list",
            P::UserRead,
            "List tokens",
            admin::token_list,
        ),
        route(
            M::DELETE,
            "/v1/tokens/{id}",
            "token.delete",
            P::UserWrite,
            "Revoke a token",
            admin::token_delete,
        ),
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
