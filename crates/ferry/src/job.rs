//! Jobs as the CLI shows them, and waiting for one: `GET /v1/jobs/{id}`
//! polled until the job finished, with a progress bar when stdout is a
//! terminal (and nothing drawn otherwise).

use anyhow::{Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};
use std::io::IsTerminal;
use std::time::Duration;

use crate::Format;
use crate::client::Client;
use crate::output::{print_list, print_object, rfc3339};

/// How often a waiting CLI asks how far the job got.
const POLL: Duration = Duration::from_millis(100);

const FINISHED: [&str; 3] = ["done", "failed", "cancelled"];

fn finished(job: &Value) -> bool {
    job["state"].as_str().is_some_and(|s| FINISHED.contains(&s))
}

/// `done/total unit`
fn progress(job: &Value) -> String {
    let p = &job["progress"];
    format!(
        "{}/{} {}",
        p["done"].as_u64().unwrap_or(0),
        p["total"].as_u64().unwrap_or(0),
        p["unit"].as_str().unwrap_or("")
    )
}

fn time(v: &Value) -> Value {
    v.as_u64()
        .map_or(Value::Null, |ms| Value::String(rfc3339(ms / 1000)))
}

/// A job with its times and progress as people read them.
fn display(job: &Value) -> Value {
    json!({
        "id": job["id"],
        "kind": job["kind"],
        "target": job["target"],
        "state": job["state"],
        "progress": progress(job),
        "actor": job["actor"],
        "created": time(&job["created_ms"]),
        "finished": time(&job["finished_ms"]),
        "error": job["error"],
        "result": job["result"],
    })
}

pub fn print_jobs(out: Format, list: &Value) {
    if out == Format::Json {
        return print_list(out, list, &[]);
    }
    let rows = Value::Array(list.as_array().into_iter().flatten().map(display).collect());
    print_list(
        out,
        &rows,
        &[
            "id", "kind", "target", "state", "progress", "actor", "created",
        ],
    );
}

pub fn print_job(out: Format, job: &Value) {
    if out == Format::Json {
        return print_object(out, job, &[]);
    }
    print_object(
        out,
        &display(job),
        &[
            "id", "kind", "target", "state", "progress", "actor", "created", "finished", "error",
            "result",
        ],
    );
}

pub fn id(job: &Value) -> Result<&str> {
    match job["id"].as_str() {
        Some(id) => Ok(id),
        None => bail!("the server answered without a job id: {job}"),
    }
}

/// Polls a job until it finished; draws a bar when stdout is a terminal.
pub async fn wait(client: &Client, job: Value) -> Result<Value> {
    let id = id(&job)?.to_owned();
    let terminal = std::io::stdout().is_terminal();
    // Drawn once the job knows its total, so that it never shows 0/0.
    let mut bar: Option<ProgressBar> = None;
    let mut job = job;
    loop {
        let p = &job["progress"];
        let total = p["total"].as_u64().unwrap_or(0);
        if terminal && bar.is_none() && total > 0 {
            bar = Some(new_bar(&id, &job));
        }
        if let Some(bar) = &bar {
            bar.set_message(format!(
                "{} {}",
                p["unit"].as_str().unwrap_or(""),
                job["state"].as_str().unwrap_or("")
            ));
            bar.set_length(total);
            bar.set_position(p["done"].as_u64().unwrap_or(0));
        }
        if finished(&job) {
            break;
        }
        tokio::time::sleep(POLL).await;
        job = client.get(&format!("/v1/jobs/{id}")).await?;
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(job)
}

fn new_bar(id: &str, job: &Value) -> ProgressBar {
    // Hidden until set up: each setter may draw.
    let bar = ProgressBar::hidden();
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{wide_bar}] {pos}/{len} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(format!(
        "{id} {} {}",
        job["kind"].as_str().unwrap_or(""),
        job["target"].as_str().unwrap_or("")
    ));
    let p = &job["progress"];
    bar.set_length(p["total"].as_u64().unwrap_or(0));
    bar.set_position(p["done"].as_u64().unwrap_or(0));
    bar.set_draw_target(ProgressDrawTarget::stdout());
    bar
}

/// The job, when it is done; its error otherwise (exit code 1).
pub fn expect_done(job: Value) -> Result<Value> {
    let id = id(&job)?;
    match job["state"].as_str() {
        Some("done") => Ok(job),
        Some(state) => bail!(
            "job {id} {}: {}",
            if state == "cancelled" {
                "was cancelled"
            } else {
                "failed"
            },
            job["error"].as_str().unwrap_or("no reason given")
        ),
        None => bail!("job {id} has no state: {job}"),
    }
}
