//! The append-only audit log: one JSON line per mutating request, each
//! record's hash covering the previous record's hash, so that any edited,
//! removed or reordered record breaks the chain at that record.
//!
//! `hash = blake3(prev + "\n" + the record's JSON without its hash)`, hex.
//! The first record's `prev` is 64 zeros.

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audit record.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Record {
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub actor: String,
    pub action: String,
    pub object: String,
    /// `allowed`, `denied` or `failed`.
    pub outcome: String,
    /// The HTTP status returned.
    pub status: u16,
    pub prev: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
}

impl Record {
    fn compute_hash(&self) -> String {
        let mut unhashed = self.clone();
        unhashed.hash = String::new();
        let json = serde_json::to_string(&unhashed).expect("records serialize");
        let mut h = blake3::Hasher::new();
        h.update(self.prev.as_bytes());
        h.update(b"\n");
        h.update(json.as_bytes());
        h.finalize().to_hex().to_string()
    }
}

/// What `verify` found.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Verdict {
    pub ok: bool,
    pub records: u64,
    /// The 1-based line of the first bad record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_bad_line: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_bad_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

#[derive(Debug)]
struct Tail {
    file: File,
    seq: u64,
    hash: String,
}

/// The audit log file, appended under a lock.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    tail: Mutex<Tail>,
}

impl AuditLog {
    /// Opens (creating) the log; continues the chain from its last record.
    pub fn open(path: impl AsRef<Path>) -> io::Result<AuditLog> {
        let path = path.as_ref().to_path_buf();
        let (mut seq, mut hash) = (0, GENESIS.to_owned());
        if let Ok(f) = File::open(&path) {
            for line in BufReader::new(f).lines() {
                if let Ok(r) = serde_json::from_str::<Record>(&line?) {
                    seq = r.seq;
                    hash = r.hash;
                }
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(AuditLog {
            path,
            tail: Mutex::new(Tail { file, seq, hash }),
        })
    }

    /// Appends one record and syncs it.
    pub fn append(
        &self,
        actor: &str,
        action: &str,
        object: &str,
        outcome: &str,
        status: u16,
    ) -> io::Result<Record> {
        let mut tail = self.tail.lock();
        let mut r = Record {
            seq: tail.seq + 1,
            time_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            actor: actor.to_owned(),
            action: action.to_owned(),
            object: object.to_owned(),
            outcome: outcome.to_owned(),
            status,
            prev: tail.hash.clone(),
            hash: String::new(),
        };
        r.hash = r.compute_hash();
        let mut line = serde_json::to_string(&r).expect("records serialize");
        line.push('\n');
        tail.file.write_all(line.as_bytes())?;
        tail.file.sync_data()?;
        tail.seq = r.seq;
        tail.hash = r.hash.clone();
        Ok(r)
    }

    /// Every record, oldest first (lines that do not parse are skipped).
    pub fn list(&self) -> io::Result<Vec<Record>> {
        let _tail = self.tail.lock();
        let f = File::open(&self.path)?;
        let mut out = Vec::new();
        for line in BufReader::new(f).lines() {
            if let Ok(r) = serde_json::from_str(&line?) {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Checks the whole chain; names the first bad record.
    pub fn verify(&self) -> io::Result<Verdict> {
        let _tail = self.tail.lock();
        verify_file(&self.path)
    }
}

/// Checks the chain of an audit log file.
pub fn verify_file(path: &Path) -> io::Result<Verdict> {
    let f = File::open(path)?;
    let mut prev = GENESIS.to_owned();
    let mut count = 0;
    for (line_no, line) in (1u64..).zip(BufReader::new(f).lines()) {
        let expected_seq = line_no;
        let line = line?;
        let bad = |seq: Option<u64>, problem: String| Verdict {
            ok: false,
            records: count,
            first_bad_line: Some(line_no),
            first_bad_seq: seq,
            problem: Some(problem),
        };
        let r: Record = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                return Ok(bad(
                    None,
                    format!("line {line_no} is not a valid record: {e}"),
                ));
            }
        };
        if r.seq != expected_seq {
            return Ok(bad(
                Some(r.seq),
                format!(
                    "record {} found where record {expected_seq} should be (removed or reordered)",
                    r.seq
                ),
            ));
        }
        if r.prev != prev {
            return Ok(bad(
                Some(r.seq),
                format!("record {} does not follow the record before it", r.seq),
            ));
        }
        if r.compute_hash() != r.hash {
            return Ok(bad(
                Some(r.seq),
                format!("record {} was modified: its hash does not match", r.seq),
            ));
        }
        prev = r.hash;
        count += 1;
    }
    Ok(Verdict {
        ok: true,
        records: count,
        first_bad_line: None,
        first_bad_seq: None,
        problem: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_edit_removal_or_reorder_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        for i in 0..5 {
            log.append(
                "admin",
                "volume.create",
                &format!("volume/v{i}"),
                "allowed",
                201,
            )
            .unwrap();
        }
        assert!(log.verify().unwrap().ok);
        drop(log);
        let log = AuditLog::open(&path).unwrap();
        assert_eq!(log.append("a", "b", "c", "denied", 403).unwrap().seq, 6);
        let good = std::fs::read(&path).unwrap();
        assert!(verify_file(&path).unwrap().ok);

        // every single byte edited, anywhere, is caught at its line
        let lines: Vec<usize> = good
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .map(|(i, _)| i)
            .collect();
        for at in (0..good.len()).step_by(7) {
            if good[at] == b'\n' {
                continue;
            }
            let mut bad = good.clone();
            bad[at] = if bad[at] == b'1' { b'2' } else { b'1' };
            std::fs::write(&path, &bad).unwrap();
            let v = verify_file(&path).unwrap();
            let line = lines.iter().position(|nl| *nl > at).unwrap() as u64 + 1;
            assert!(!v.ok, "edit at byte {at} went unnoticed");
            assert_eq!(v.first_bad_line, Some(line), "edit at byte {at}: {v:?}");
        }
        // a removed record
        let text = String::from_utf8(good.clone()).unwrap();
        let mut ls: Vec<&str> = text.lines().collect();
        ls.remove(2);
        std::fs::write(&path, ls.join("\n") + "\n").unwrap();
        assert_eq!(verify_file(&path).unwrap().first_bad_line, Some(3));
        // two records swapped
        let mut ls: Vec<&str> = text.lines().collect();
        ls.swap(1, 3);
        std::fs::write(&path, ls.join("\n") + "\n").unwrap();
        assert_eq!(verify_file(&path).unwrap().first_bad_line, Some(2));
    }
}
