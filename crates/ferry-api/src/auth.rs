//! Users, tokens, roles and privileges.
//!
//! A token is 32 random bytes shown once, as `ferry_` + hex; only its blake3
//! hash is stored (`auth.json`, written atomically, mode 0600). Roles are
//! unions of named privileges, decided by one exhaustive match.

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// What a request may need.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Privilege {
    VolumeRead,
    VolumeWrite,
    GroupRead,
    GroupWrite,
    SnapshotRead,
    SnapshotCreate,
    SnapshotDelete,
    Clone,
    Sync,
    SpaceRead,
    ExportRead,
    ExportWrite,
    JobRead,
    JobCancel,
    AuditRead,
    UserRead,
    UserWrite,
    /// See this site's identity and its partners.
    PartnerRead,
    /// Name the site, hand out pairing tokens, pair and unpair.
    PartnerWrite,
    /// See replications, their health and figures, and a replica group's
    /// recovery points.
    ReplicationRead,
    /// Pause and resume a replication, and start its next cycle now.
    ReplicationRun,
    /// Enable, disable and reverse replications; write and apply seeds.
    ReplicationWrite,
    /// Run a failover test (a throw-away copy of a recovery point, with
    /// exports) and clean it up.
    FailoverTest,
    /// Planned and unplanned failover: which site takes a group's writes.
    Failover,
}

impl Privilege {
    /// The name used in the API and its OpenAPI document, e.g. `volume_write`.
    pub fn as_str(self) -> String {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::String(s)) => s,
            _ => format!("{self:?}"),
        }
    }

    pub const ALL: [Privilege; 24] = [
        Privilege::VolumeRead,
        Privilege::VolumeWrite,
        Privilege::GroupRead,
        Privilege::GroupWrite,
        Privilege::SnapshotRead,
        Privilege::SnapshotCreate,
        Privilege::SnapshotDelete,
        Privilege::Clone,
        Privilege::Sync,
        Privilege::SpaceRead,
        Privilege::ExportRead,
        Privilege::ExportWrite,
        Privilege::JobRead,
        Privilege::JobCancel,
        Privilege::AuditRead,
        Privilege::UserRead,
        Privilege::UserWrite,
        Privilege::PartnerRead,
        Privilege::PartnerWrite,
        Privilege::ReplicationRead,
        Privilege::ReplicationRun,
        Privilege::ReplicationWrite,
        Privilege::FailoverTest,
        Privilege::Failover,
    ];
}

/// A user's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything.
    Admin,
    /// Runs snapshots, clones, syncs, exports and reads everything; no
    /// configuration.
    Operator,
    /// Only groups whose tags were granted to them: see them (and their
    /// exports) and snapshot them.
    User,
}

impl Role {
    /// Whether the role holds a privilege. No default arm: a new privilege
    /// must be decided for every role here.
    pub fn allows(self, p: Privilege) -> bool {
        use Privilege as P;
        use Role as R;
        match p {
            P::VolumeRead
            | P::SpaceRead
            | P::AuditRead
            | P::UserRead
            | P::PartnerRead
            | P::ReplicationRead => matches!(self, R::Admin | R::Operator),
            // Pairing lets another site in: configuration, like users. So
            // is what replicates where, and which site takes the writes.
            P::VolumeWrite
            | P::GroupWrite
            | P::UserWrite
            | P::PartnerWrite
            | P::ReplicationWrite
            | P::Failover => matches!(self, R::Admin),
            // Exporting a disk opens it to NBD clients: an operator's task,
            // like clone and sync, not self-service. So are the disaster
            // recovery drill (a failover test) and holding or hurrying a
            // replication's cycles.
            P::SnapshotDelete
            | P::Clone
            | P::Sync
            | P::ExportWrite
            | P::ReplicationRun
            | P::FailoverTest => matches!(self, R::Admin | R::Operator),
            // A scoped user reads and cancels only jobs on groups it sees
            // (the job routes check), and sees only the exports of volumes
            // and snapshots of those groups (the export routes check), as it
            // sees their slots' volumes in the group itself.
            P::GroupRead
            | P::SnapshotRead
            | P::SnapshotCreate
            | P::ExportRead
            | P::JobRead
            | P::JobCancel => matches!(self, R::Admin | R::Operator | R::User),
        }
    }

    /// Whether the role is limited to granted groups.
    pub fn scoped(self) -> bool {
        matches!(self, Role::User)
    }
}

/// A tag a user was granted: they see groups carrying `key=value`.
#[derive(
    Clone, Debug, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord, utoipa::ToSchema,
)]
pub struct Grant {
    pub key: String,
    pub value: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct User {
    pub name: String,
    pub role: Role,
    #[serde(default)]
    pub grants: Vec<Grant>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct TokenRec {
    id: String,
    user: String,
    hash: String,
    created_ms: u64,
}

/// A token as listed (never its secret).
#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct TokenInfo {
    pub id: String,
    pub user: String,
    pub created_ms: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct AuthFile {
    users: BTreeMap<String, User>,
    tokens: Vec<TokenRec>,
}

/// Who made a request.
#[derive(Clone, Debug)]
pub struct Principal {
    pub user: String,
    pub role: Role,
    pub grants: Vec<Grant>,
}

impl Principal {
    /// Whether this principal may see a group with these tags.
    pub fn sees(&self, tags: &BTreeMap<String, String>) -> bool {
        !self.role.scoped()
            || self
                .grants
                .iter()
                .any(|g| tags.get(&g.key).is_some_and(|v| *v == g.value))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("user {0:?} already exists")]
    UserExists(String),
    #[error("user {0:?} does not exist")]
    NoUser(String),
    #[error("token {0:?} does not exist")]
    NoToken(String),
    #[error("user {0:?} is the last admin; make another admin first")]
    LastAdmin(String),
    #[error("writing the user file: {0}")]
    Io(#[from] io::Error),
}

/// Users and hashed tokens, kept in one file.
#[derive(Debug)]
pub struct Auth {
    path: PathBuf,
    state: Mutex<AuthFile>,
}

fn hash(token: &str) -> String {
    blake3::hash(token.as_bytes()).to_hex().to_string()
}

fn random_hex(bytes: usize) -> io::Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Writes `bytes` to `path` atomically with mode 0600.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic(path, bytes, 0o600)
}

/// Writes `bytes` to `path` atomically with `mode`: a fresh temporary file
/// beside it (`NAME.tmp`, so `ca.pem` and `ca.key` never share one; a stale
/// one is removed first so it cannot lend its mode), fsync, rename, fsync of
/// the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl Auth {
    /// Opens the user file (an empty set of users when missing).
    pub fn open(path: impl AsRef<Path>) -> io::Result<Auth> {
        let path = path.as_ref().to_path_buf();
        let state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => AuthFile::default(),
            Err(e) => return Err(e),
        };
        Ok(Auth {
            path,
            state: Mutex::new(state),
        })
    }

    fn save(&self, state: &AuthFile) -> io::Result<()> {
        write_private(
            &self.path,
            &serde_json::to_vec_pretty(state).expect("serializes"),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.state.lock().users.is_empty()
    }

    /// The principal a bearer token belongs to.
    pub fn authenticate(&self, token: &str) -> Option<Principal> {
        let h = hash(token);
        let st = self.state.lock();
        let t = st.tokens.iter().find(|t| t.hash == h)?;
        let u = st.users.get(&t.user)?;
        Some(Principal {
            user: u.name.clone(),
            role: u.role,
            grants: u.grants.clone(),
        })
    }

    pub fn create_user(&self, user: User) -> Result<User, AuthError> {
        let mut st = self.state.lock();
        if st.users.contains_key(&user.name) {
            return Err(AuthError::UserExists(user.name));
        }
        st.users.insert(user.name.clone(), user.clone());
        if let Err(e) = self.save(&st) {
            st.users.remove(&user.name);
            return Err(e.into());
        }
        Ok(user)
    }

    pub fn list_users(&self) -> Vec<User> {
        self.state.lock().users.values().cloned().collect()
    }

    pub fn delete_user(&self, name: &str) -> Result<(), AuthError> {
        let mut st = self.state.lock();
        let Some(user) = st.users.get(name) else {
            return Err(AuthError::NoUser(name.to_owned()));
        };
        let admins = st.users.values().filter(|u| u.role == Role::Admin).count();
        if user.role == Role::Admin && admins == 1 {
            return Err(AuthError::LastAdmin(name.to_owned()));
        }
        st.users.remove(name);
        st.tokens.retain(|t| t.user != name);
        self.save(&st)?;
        Ok(())
    }

    /// Makes a new token for a user; the secret is returned once.
    pub fn create_token(&self, user: &str) -> Result<(TokenInfo, String), AuthError> {
        let secret = format!("ferry_{}", random_hex(32)?);
        let mut st = self.state.lock();
        if !st.users.contains_key(user) {
            return Err(AuthError::NoUser(user.to_owned()));
        }
        let rec = TokenRec {
            id: random_hex(6)?,
            user: user.to_owned(),
            hash: hash(&secret),
            created_ms: now_ms(),
        };
        st.tokens.push(rec.clone());
        if let Err(e) = self.save(&st) {
            st.tokens.pop();
            return Err(e.into());
        }
        Ok((
            TokenInfo {
                id: rec.id,
                user: rec.user,
                created_ms: rec.created_ms,
            },
            secret,
        ))
    }

    pub fn list_tokens(&self) -> Vec<TokenInfo> {
        self.state
            .lock()
            .tokens
            .iter()
            .map(|t| TokenInfo {
                id: t.id.clone(),
                user: t.user.clone(),
                created_ms: t.created_ms,
            })
            .collect()
    }

    pub fn delete_token(&self, id: &str) -> Result<(), AuthError> {
        let mut st = self.state.lock();
        let before = st.tokens.len();
        st.tokens.retain(|t| t.id != id);
        if st.tokens.len() == before {
            return Err(AuthError::NoToken(id.to_owned()));
        }
        self.save(&st)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_admin_stays() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Auth::open(dir.path().join("auth.json")).unwrap();
        let user = |name: &str, role| User {
            name: name.into(),
            role,
            grants: vec![],
        };
        auth.create_user(user("a", Role::Admin)).unwrap();
        auth.create_user(user("o", Role::Operator)).unwrap();
        assert!(matches!(
            auth.delete_user("a"),
            Err(AuthError::LastAdmin(_))
        ));
        auth.delete_user("o").unwrap();
        auth.create_user(user("b", Role::Admin)).unwrap();
        auth.delete_user("a").unwrap();
        assert!(matches!(
            auth.delete_user("b"),
            Err(AuthError::LastAdmin(_))
        ));
        assert_eq!(auth.list_users().len(), 1);
    }

    #[test]
    fn tokens_are_stored_hashed_and_authenticate() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Auth::open(dir.path().join("auth.json")).unwrap();
        auth.create_user(User {
            name: "admin".into(),
            role: Role::Admin,
            grants: vec![],
        })
        .unwrap();
        let (_, secret) = auth.create_token("admin").unwrap();
        let file = std::fs::read_to_string(dir.path().join("auth.json")).unwrap();
        assert!(!file.contains(&secret));
        let again = Auth::open(dir.path().join("auth.json")).unwrap();
        assert_eq!(again.authenticate(&secret).unwrap().role, Role::Admin);
        assert!(again.authenticate("ferry_nope").is_none());
    }

    #[test]
    fn roles_are_nested() {
        for p in Privilege::ALL {
            assert!(Role::Admin.allows(p));
            if Role::User.allows(p) {
                assert!(Role::Operator.allows(p), "{p:?}");
            }
        }
        assert!(!Role::Operator.allows(Privilege::VolumeWrite));
        assert!(!Role::User.allows(Privilege::VolumeRead));
        assert!(Role::Operator.allows(Privilege::ExportWrite));
        assert!(Role::User.allows(Privilege::ExportRead));
        assert!(!Role::User.allows(Privilege::ExportWrite));
    }
}
