//! `devns lxc config|policy`: what an LXC container's config needs for
//! devns (lxc.container.conf(5)).

use super::Global;
use anyhow::Result;
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Lxc,
}

#[derive(Debug, Subcommand)]
pub enum Lxc {
    /// Print the config lines: the hooks, the seccomp policy and LXC's
    /// notify proxy, devns's LXC socket.
    Config {
        /// Where the seccomp policy file is (devns lxc policy writes it).
        #[arg(long, value_name = "FILE", default_value = "/etc/devns/lxc.seccomp")]
        policy: PathBuf,
    },
    /// Print the seccomp policy (LXC's policy language 2): LXC's own
    /// default denials, and the calls devns's agent serves sent to it.
    Policy,
}

/// LXC's default denials (its `common.seccomp`), then the calls devns
/// serves: device `mknod`s, mounts, and loop-control's three ioctls.
pub const POLICY: &str = "2
denylist
reject_force_umount
[all]
kexec_load errno 1
open_by_handle_at errno 1
init_module errno 1
finit_module errno 1
delete_module errno 1
mknod notify
mknodat notify
mount notify
ioctl notify [1,0x4C80,SCMP_CMP_EQ]
ioctl notify [1,0x4C81,SCMP_CMP_EQ]
ioctl notify [1,0x4C82,SCMP_CMP_EQ]
";

pub fn run(global: &Global, args: Args) -> Result<i32> {
    match args.command {
        Lxc::Policy => print!("{POLICY}"),
        Lxc::Config { policy } => {
            let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/usr/bin/devns"));
            let socket = if global.socket == std::path::Path::new(devns_core::layout::SOCKET) {
                String::new()
            } else {
                format!(" --socket {}", global.socket.display())
            };
            let proxy = devns_core::layout::lxc_socket(&global.socket);
            println!("# devns for this container: its /dev a view of its own namespace, its mknod, mount");
            println!("# and loop-control calls served (devns lxc policy > {})", policy.display());
            for hook in ["pre-start", "autodev", "start-host", "post-stop"] {
                println!("lxc.hook.{hook} = {}{socket} hook lxc", exe.display());
            }
            println!("lxc.seccomp.profile = {}", policy.display());
            println!("lxc.seccomp.notify.proxy = unix:{}", proxy.display());
        }
    }
    Ok(0)
}
