//! The devns model and every decision that can be made without the kernel.
//!
//! Everything here is plain data in, plain data out: which devices a
//! namespace's view must hold, who owns a device, what a config file means,
//! how host ids look from inside a namespace. The `devns` binary observes the
//! kernel, asks these functions what should be, and applies the answer.
#![forbid(unsafe_code)]

pub mod agentsock;
pub mod api;
pub mod blockmount;
pub mod bpf;
pub mod cdi;
pub mod clients;
pub mod config;
pub mod dac;
pub mod device;
pub mod deviceplugin;
pub mod devmounts;
pub mod doctor;
pub mod expect;
pub mod hook;
pub mod idmap;
pub mod keep;
pub mod layout;
pub mod loopctl;
pub mod lxcproxy;
pub mod model;
pub mod mountinfo;
pub mod nodes;
pub mod nstree;
pub mod oci;
pub mod ociprofile;
pub mod ociruntime;
pub mod registry;
pub mod seccomp;
pub mod spec;
pub mod state;
pub mod subid;
pub mod table;
pub mod uevent;
pub mod view;

pub use device::{DevId, DevType, Device, Kind};
pub use registry::{NsId, Owner, Registry};
