//! The sled database beside a repository (`REPO/state/`): tracking state,
//! object index, health. Everything in it can be rebuilt.
//!
//! sled stops for good after an I/O error (a full or vanished device): every
//! later operation fails with the same error. So users never keep a tree:
//! they ask [`StateDb::tree`] for each piece of work, and after a failure
//! the daemon calls [`StateDb::reopen`] once the device is usable again,
//! then writes its in-memory state back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use crate::repo::{open_sled, RepoError};
use crate::util::{Locked, RwLocked};

pub struct StateDb {
    path: Option<PathBuf>,
    db: RwLock<Option<sled::Db>>,
    trees: Mutex<HashMap<&'static str, sled::Tree>>,
    /// Since when (seconds since the epoch) and why the database is failing.
    failure: Mutex<Option<(i64, String)>>,
}

fn closed() -> sled::Error {
    sled::Error::Io(std::io::Error::other("the state database is closed after an error; reopening"))
}

impl StateDb {
    /// Open the database at `path` (retrying briefly while a previous user's
    /// lock goes away).
    pub fn open(path: &Path) -> Result<Arc<StateDb>, RepoError> {
        let db = open_sled(path)?;
        Ok(Arc::new(StateDb {
            path: Some(path.to_path_buf()),
            db: RwLock::new(Some(db)),
            trees: Mutex::new(HashMap::new()),
            failure: Mutex::new(None),
        }))
    }

    /// A database in memory (tests).
    pub fn temporary() -> Arc<StateDb> {
        let db = sled::Config::new().temporary(true).open().expect("temporary sled");
        Arc::new(StateDb {
            path: None,
            db: RwLock::new(Some(db)),
            trees: Mutex::new(HashMap::new()),
            failure: Mutex::new(None),
        })
    }

    /// A tree, for one piece of work (do not keep it).
    pub fn tree(&self, name: &'static str) -> sled::Result<sled::Tree> {
        if let Some(t) = self.trees.locked().get(name) {
            return Ok(t.clone());
        }
        let db = self.db.read_locked();
        let t = db.as_ref().ok_or_else(closed)?.open_tree(name)?;
        self.trees.locked().insert(name, t.clone());
        Ok(t)
    }

    /// Make everything written so far durable.
    pub fn flush(&self) -> sled::Result<()> {
        let db = self.db.read_locked();
        db.as_ref().ok_or_else(closed)?.flush().map(|_| ())
    }

    /// Note that an operation failed: from now on the database is suspect
    /// until [`StateDb::reopen`] succeeds.
    pub fn failed(&self, e: &dyn std::fmt::Display) {
        let mut f = self.failure.locked();
        if f.is_none() {
            let msg = readable(&e.to_string());
            log::error!("STATE DATABASE FAILED: {msg}; tracking goes on in memory");
            *f = Some((crate::util::unix_now(), msg));
        }
    }

    pub fn failure(&self) -> Option<(i64, String)> {
        self.failure.locked().clone()
    }

    /// Close the database and open it again (after a failure: sled then
    /// recovers to its last durable state). The caller writes its state
    /// back afterwards and then calls [`StateDb::recovered`].
    pub fn reopen(&self) -> Result<(), RepoError> {
        let Some(path) = &self.path else { return Ok(()) };
        let mut db = self.db.write_locked();
        self.trees.locked().clear();
        if let Some(old) = db.take() {
            drop(old);
        }
        *db = Some(open_sled(path)?);
        drop(db);
        // usable again once written to: a full device fails at the first write
        let probe = self.tree("meta").and_then(|m| m.insert("probe", &[1u8]).map(|_| ())).and_then(|_| self.flush());
        if let Err(e) = probe {
            return Err(RepoError::State { path: path.clone(), source: e });
        }
        Ok(())
    }

    /// Everything is written back after [`StateDb::reopen`]: the database
    /// is trusted again. (Until then writers of tracking state stay off it.)
    pub fn recovered(&self) {
        *self.failure.locked() = None;
    }
}

/// sled shows io errors with their Debug form (`Os { code: 28, kind: ...,
/// message: "No space left on device" }`): keep the message.
pub fn readable(msg: &str) -> String {
    let Some(start) = msg.find("Os { code: ") else {
        if msg.contains("(os error 28)") {
            return format!("{msg} (the repository's device is full)");
        }
        return msg.to_string();
    };
    let rest = &msg[start..];
    let (Some(m), Some(end)) = (rest.find("message: \""), rest.find("\" }")) else { return msg.to_string() };
    let text = &rest[m + 10..end];
    let full = if rest.starts_with("Os { code: 28,") { " (the repository's device is full)" } else { "" };
    format!("{}{text}{full}{}", &msg[..start], &rest[end + 3..])
}

#[cfg(test)]
mod tests {
    #[test]
    fn readable_io_errors() {
        let e = std::io::Error::from_raw_os_error(28);
        assert_eq!(
            super::readable(&format!("tracking database: IO error: {e:?}")),
            "tracking database: IO error: No space left on device (the repository's device is full)"
        );
        assert_eq!(
            super::readable(&format!("{e}")),
            "No space left on device (os error 28) (the repository's device is full)"
        );
        assert_eq!(super::readable("plain"), "plain");
    }
}
