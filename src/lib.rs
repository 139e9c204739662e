//! snapfs: protect a directory with a FUSE layer that sees every write.
//!
//! The folders are the layers, bottom up (doc/DESIGN.md has the map):
//! - [`os`]: system call wrappers, errno, per-thread credentials, the mount
//!   table, private files;
//! - [`repo`]: the repository: config and format, objects and their
//!   encodings, packs, the index, storage (local directory, S3), the sled
//!   state database;
//! - [`tracker`]: the dirty set, its block sets, the mount-time scan;
//! - [`live`]: the POSIX passthrough over the backing directory, a plain API;
//! - [`snapshot`]: taking snapshots (builder, copy-before-write), records,
//!   diff, and the read-only view of snapshots;
//! - [`ops`]: what the repository offers besides snapshots, one file per
//!   verb: verify, verify --live, forget and prune, restore and rollback,
//!   health, schedules, replicas;
//! - [`fuse`]: the FUSE adapters over [`live`] and the view;
//! - [`control`]: the control socket between clients and a daemon;
//! - [`daemon`]: mounting, the control service, signals, browse.
//!
//! Errors become errno values in one place, [`os::errno`].

pub mod control;
pub mod daemon;
pub mod fuse;
pub mod live;
pub mod ops;
pub mod os;
pub mod repo;
pub mod snapshot;
pub mod tracker;
pub mod util;
