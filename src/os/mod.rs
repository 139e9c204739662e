//! The operating system beneath everything: `*at()` system call wrappers
//! and `/proc/self/fd` paths (`sys`), the one place errors become errno
//! values (`errno`), per-thread credentials and umask for requests that
//! create inodes (`creds`), the mount table and client-side calls on a
//! mount point (`mounts`), files only their owner can use (`private`),
//! memory for keys, out of core dumps and swap (`secret`), and what a
//! daemon uses of systemd: readiness notification and the journal stream
//! (`systemd`).

pub mod creds;
pub mod errno;
pub mod mounts;
pub mod private;
pub mod secret;
pub mod sys;
pub mod systemd;
