//! `devns k8s device-plugin`: devns's devices as Kubernetes extended
//! resources (`crate::deviceplugin`).

use super::Global;
use anyhow::Result;
use clap::Subcommand;
use devns_core::deviceplugin::Class;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: K8s,
}

#[derive(Debug, Subcommand)]
pub enum K8s {
    /// Serve the kubelet's device plugin API (v1beta1): one resource per
    /// class, registered with the kubelet; Allocate answers CDI names of
    /// devns's spec (devns cdi generate).
    DevicePlugin {
        /// A resource and its devices, RESOURCE=DEVICES: `loop` (loop-control
        /// slots), or /dev names and prefixes ending in `*`, comma-separated.
        /// Repeatable. Default: devns.io/loop=loop and devns.io/tun=net/tun.
        #[arg(long = "class", value_name = "RESOURCE=DEVICES", value_parser = Class::parse)]
        classes: Vec<Class>,
        /// The kubelet's directory of plugin sockets.
        #[arg(long, value_name = "DIR", default_value = crate::deviceplugin::KUBELET_DIR)]
        dir: PathBuf,
        /// The CDI kind of the names Allocate answers (devns cdi generate --kind).
        #[arg(long, default_value = devns_core::cdi::KIND)]
        cdi_kind: String,
        /// How many containers a node's devns.io/loop serves at once.
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
        loop_slots: u16,
    },
}

pub fn run(global: &Global, args: Args) -> Result<i32> {
    let K8s::DevicePlugin { mut classes, dir, cdi_kind, loop_slots } = args.command;
    if !devns_core::cdi::is_kind(&cdi_kind) {
        anyhow::bail!("{cdi_kind:?} is not a CDI kind (vendor/class, such as {})", devns_core::cdi::KIND);
    }
    if classes.is_empty() {
        classes =
            ["devns.io/loop=loop", "devns.io/tun=net/tun"].iter().map(|c| Class::parse(c).expect("valid")).collect();
    }
    crate::deviceplugin::run(crate::deviceplugin::Options {
        dir,
        classes,
        kind: cdi_kind,
        loop_slots: usize::from(loop_slots),
        socket: global.socket.clone(),
    })
}
