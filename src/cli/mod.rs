//! The client side of the command line: talk to a mount's daemon, or work
//! on a repository offline, and print (text, or `--json`).

pub mod maint;
