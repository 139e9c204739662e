//! snapfs: protect a directory with a FUSE layer that sees every write.
//!
//! Layers, bottom up:
//! - [`repo`]: the repository on disk (config, lock, tracking state);
//! - [`tracker`]: the dirty set (blocks and metadata changed since the epoch
//!   began), persisted in sled, with [`scan`] for changes made unwatched;
//! - [`live`]: the POSIX passthrough over the backing directory, a plain API
//!   that tests drive without a mount;
//! - [`fuse`]: the thin FUSE adapter over [`live`];
//! - [`daemon`] and [`control`]: mounting, signals, the control socket.
//!
//! Errors become errno values in one place, [`errno`].

pub mod blockset;
pub mod capture;
pub mod check;
pub mod control;
pub mod creds;
pub mod daemon;
pub mod errno;
pub mod fuse;
pub mod health;
pub mod live;
pub mod livecheck;
pub mod maint;
pub mod mounts;
pub mod objects;
pub mod objstore;
pub mod pack;
pub mod private;
pub mod replica;
pub mod repo;
pub mod restore;
pub mod s3;
pub mod scan;
pub mod schedule;
pub mod snapshot;
pub mod state;
pub mod store;
pub mod sys;
pub mod tracker;
pub mod util;
pub mod view;
