//! What a repository offers besides taking snapshots, one file per verb,
//! each a plain function that the daemon (for a mounted directory) and the
//! offline command line both call: `verify` (structure and data),
//! `verify_live` (the tracker against the live directory), `maint`
//! (forget with keep rules, prune), `restore` (and rollback), `health`
//! (what status reports), `schedule` (automatic snapshots' clock),
//! `replica` (copies elsewhere).
//!
//! The verbs fail with an [`OpError`]: what was refused, what is damaged,
//! which system call failed on what, or an error of a layer below, with
//! the context a verb adds kept as a chain of sources (the daemon and the
//! command line print it whole, see [`crate::util::with_causes`]).

use thiserror::Error;

use crate::os::errno::Errno;
use crate::repo::crypto::CryptoError;
use crate::repo::objstore::ObjError;
use crate::repo::store::StoreError;
use crate::repo::RepoError;
use crate::snapshot::SnapError;

/// A verb's failure. Display shows this level only; the causes are its
/// `source()` chain (a variant shows its source's text, or names it as the
/// source: never both).
#[derive(Debug, Error)]
pub enum OpError {
    /// What was asked for is not allowed: the repository's state, the
    /// arguments, the key (write-only), a target restore will not touch.
    #[error("{0}")]
    Refused(String),
    /// The repository or the data is damaged or missing.
    #[error("{0}")]
    Damaged(String),
    /// A check of what cannot happen failed: a bug, stopped before harm.
    #[error("internal error: {0}")]
    Internal(String),
    /// A system call failed on a named path or thing.
    #[error("{what}")]
    Sys { what: String, source: Errno },
    /// A system call failed (no name to give).
    #[error(transparent)]
    Errno(#[from] Errno),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Obj(#[from] ObjError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Snap(#[from] SnapError),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Nul(#[from] std::ffi::NulError),
    /// What was being done when `inner` failed.
    #[error("{what}")]
    Context {
        what: String,
        #[source]
        inner: Box<OpError>,
    },
}

pub type OpResult<T> = Result<T, OpError>;

impl OpError {
    /// A system call failed on `what` (a path, a name).
    pub fn sys(what: impl Into<String>, source: impl Into<Errno>) -> OpError {
        OpError::Sys { what: what.into(), source: source.into() }
    }

    /// This error, as the cause of a failure to do `what`.
    pub fn within(self, what: impl Into<String>) -> OpError {
        OpError::Context { what: what.into(), inner: Box::new(self) }
    }
}

/// Context for a verb's errors, as `anyhow::Context` gives it: the error
/// becomes the cause of a failure to do `what`.
pub trait OpContext<T> {
    fn what(self, what: impl Into<String>) -> OpResult<T>;
    fn with_what<S: Into<String>>(self, what: impl FnOnce() -> S) -> OpResult<T>;
}

impl<T, E: Into<OpError>> OpContext<T> for Result<T, E> {
    fn what(self, what: impl Into<String>) -> OpResult<T> {
        self.map_err(|e| e.into().within(what))
    }

    fn with_what<S: Into<String>>(self, what: impl FnOnce() -> S) -> OpResult<T> {
        self.map_err(|e| e.into().within(what()))
    }
}

// The two macros are seen (textual scope) by the modules declared below.

/// Return an [`OpError::Refused`] with a `format!` message.
macro_rules! refused {
    ($($arg:tt)*) => {
        return Err($crate::ops::OpError::Refused(format!($($arg)*)))
    };
}

/// Return an [`OpError::Damaged`] with a `format!` message.
macro_rules! damaged {
    ($($arg:tt)*) => {
        return Err($crate::ops::OpError::Damaged(format!($($arg)*)))
    };
}

pub mod copy;
pub mod health;
pub mod maint;
pub mod metrics;
pub mod repair;
pub mod replica;
pub mod restore;
pub mod rollback;
pub mod schedule;
pub mod verify;
pub mod verify_live;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::with_causes;

    fn refuse(n: u32) -> OpResult<()> {
        if n > 1 {
            refused!("{n} is too many");
        }
        Ok(())
    }

    #[test]
    fn a_context_chain_prints_each_level_once() {
        let e = refuse(2).what("inner").what("outer").unwrap_err();
        assert_eq!(e.to_string(), "outer");
        assert_eq!(with_causes(&e), "outer: inner: 2 is too many");
        // as the command line and the daemon print it
        assert_eq!(format!("{:#}", anyhow::Error::from(e)), "outer: inner: 2 is too many");
        // a named system call: its errno once, as the cause
        let e = Err::<(), _>(OpError::sys("a/b", Errno::ENOENT)).with_what(|| "restoring a").unwrap_err();
        assert_eq!(with_causes(&e), format!("restoring a: a/b: {}", Errno::ENOENT));
        // a transparent lower error shows its own text and causes, once
        let e: OpError = ObjError::Missing(crate::repo::objects::ObjectId::ZERO).into();
        assert_eq!(with_causes(&e), ObjError::Missing(crate::repo::objects::ObjectId::ZERO).to_string());
        let e = damaged_at().unwrap_err();
        assert!(matches!(e, OpError::Damaged(_)) && e.to_string() == "pack p is short", "{e}");
    }

    fn damaged_at() -> OpResult<()> {
        damaged!("pack {} is short", "p");
    }
}
