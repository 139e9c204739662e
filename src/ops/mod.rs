//! What a repository offers besides taking snapshots, one file per verb,
//! each a plain function that the daemon (for a mounted directory) and the
//! offline command line both call: `verify` (structure and data),
//! `verify_live` (the tracker against the live directory), `maint`
//! (forget with keep rules, prune), `restore` (and rollback), `health`
//! (what status reports), `schedule` (automatic snapshots' clock),
//! `replica` (copies elsewhere).

pub mod copy;
pub mod health;
pub mod maint;
pub mod replica;
pub mod restore;
pub mod rollback;
pub mod schedule;
pub mod verify;
pub mod verify_live;
