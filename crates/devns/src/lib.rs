//! devns: per-user-namespace `/dev` views for unprivileged containers.
//!
//! The imperative shell around `devns-core`: it reads the host (sysfs, `/proc`,
//! the state file), asks the core what should be, and makes it so with the
//! kernel's mount API.

pub mod agent;
pub mod bpf;
pub mod cdi;
pub mod cgroup;
pub mod client;
pub mod commands;
pub mod config;
pub mod container;
pub mod daemon;
pub mod deviceplugin;
pub mod discover;
pub mod engine;
pub mod fdstore;
pub mod holder;
pub mod host;
pub mod journal;
pub mod layout;
pub mod logs;
pub mod loopctl;
pub mod probes;
pub mod reconcile;
pub mod refusal;
pub mod store;
pub mod uevents;
pub mod view;
pub mod watcher;
pub mod wire;
