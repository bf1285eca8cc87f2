//! Jobs: list, show and cancel. A scoped user sees only jobs all of whose
//! groups it sees; any other job is a 404 to them.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use ferry_store::Store;

use super::blocking;
use super::groups::visible;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::jobs::{CancelError, Job, JobId};
use crate::{AppState, error::ApiResult};

/// Whether the principal may see this job.
fn sees(store: &Store, who: &Principal, job: &Job) -> bool {
    !who.role.scoped()
        || job
            .params
            .groups()
            .into_iter()
            .all(|g| visible(store, who, g).is_ok())
}

fn no_job(id: &str) -> ApiError {
    ApiError::not_found(format!("job {id:?} does not exist")).field("id")
}

/// The job named in the path, if the principal may see it.
fn find(st: &AppState, who: &Principal, id: &str) -> ApiResult<Job> {
    let jid: JobId = id.parse().map_err(|()| no_job(id))?;
    st.jobs()
        .get(jid)
        .filter(|j| sees(st.store(), who, j))
        .ok_or_else(|| no_job(id))
}

pub async fn list(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
) -> ApiResult<Json<Vec<Job>>> {
    blocking(move || {
        Ok(Json(
            st.jobs()
                .list()
                .into_iter()
                .filter(|j| sees(st.store(), &who, j))
                .collect(),
        ))
    })
    .await
}

pub async fn get(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<Job>> {
    blocking(move || find(&st, &who, &id).map(Json)).await
}

/// Asks a job to stop at its next safe point: 202 with the job as it is
/// (still running until it gets there); 409 when it already finished.
pub async fn cancel(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    blocking(move || {
        let job = find(&st, &who, &id)?;
        match st.jobs().cancel(job.id) {
            Ok(j) => Ok((StatusCode::ACCEPTED, Json(j))),
            Err(e @ CancelError::NotFound(_)) => Err(no_job(&id).with_message(e.to_string())),
            Err(e @ CancelError::Finished { .. }) => Err(ApiError::new(
                StatusCode::CONFLICT,
                "job_finished",
                e.to_string(),
            )),
        }
    })
    .await
}

/// Dry run of a cancel: the job exists, is visible and still running.
pub async fn plan_cancel(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<super::Plan>> {
    blocking(move || {
        let job = find(&st, &who, &id)?;
        if job.state.finished() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "job_finished",
                format!("job {} has already finished: it is {:?}", job.id, job.state),
            ));
        }
        Ok(super::plan(
            "job.cancel",
            vec![format!(
                "ask job {} ({:?} of {}) to stop at its next safe point",
                job.id, job.kind, job.target
            )],
        ))
    })
    .await
}
