//! One file per subcommand: an `Args` struct and a `run` function each.

pub mod assign;
pub mod attach;
pub mod cdi;
pub mod daemon;
pub mod doctor;
pub mod events;
pub mod fuse_driver;
pub mod generate;
pub mod global;
pub mod hold;
pub mod hook;
pub mod k8s;
pub mod ls;
pub mod lxc;
pub mod ns;
pub mod oci;
pub mod release;
pub mod run;
pub mod view;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "devns", version, about = "Per-user-namespace /dev views for unprivileged containers")]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand takes.
#[derive(Debug, clap::Args)]
pub struct Global {
    /// Policy file; a missing file means the built-in defaults.
    #[arg(long, global = true, value_name = "FILE", default_value = "/etc/devns/config.toml", env = "DEVNS_CONFIG")]
    pub config: PathBuf,
    /// Where devns keeps what must outlive one process (assignments, namespaces): root's alone.
    #[arg(long, global = true, value_name = "DIR", default_value = devns_core::layout::STATE_DIR, env = "DEVNS_STATE_DIR")]
    pub state_dir: PathBuf,
    /// The daemon's socket, which every user may reach.
    #[arg(long, global = true, value_name = "PATH", default_value = devns_core::layout::SOCKET, env = "DEVNS_SOCKET")]
    pub socket: PathBuf,
    /// Print results and errors as JSON.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print errors as one JSON object on stderr.
    #[arg(long, global = true)]
    pub json_errors: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command in new namespaces with its own /dev view.
    Run(run::Args),
    /// List the host's devices with owner and global flag.
    Ls(ls::Args),
    /// Run the daemon: live ownership, hotplug, namespace lifetime.
    Daemon(daemon::Args),
    /// Give a device to a namespace.
    Assign(assign::Args),
    /// Return a device to the host.
    Release(release::Args),
    /// Make a device global (in every view) or not.
    Global(global::Args),
    /// Namespaces under devns.
    Ns(ns::Args),
    /// Show a namespace's view.
    View(view::Args),
    /// Bring an existing process's user namespace under devns.
    Attach(attach::Args),
    /// Stream ownership, hotplug and namespace events.
    Events(events::Args),
    /// An OCI hook (createRuntime, poststop): a container's state on stdin.
    Hook(hook::Args),
    /// For container runtimes: a seccomp profile, a runtime wrapper.
    Oci(oci::Args),
    /// The CDI spec of devns's devices (podman --device devns.io/device=NAME).
    Cdi(cdi::Args),
    /// For Kubernetes: the kubelet's device plugin.
    K8s(k8s::Args),
    /// For LXC: the config lines and the seccomp policy.
    Lxc(lxc::Args),
    /// Check what devns needs on this host: one line per kernel feature,
    /// file and service (ok, warn or missing, and why).
    Doctor(doctor::Args),
    /// Man pages and shell completions, for packagers.
    Generate(generate::Args),
    /// Hold the daemon's seccomp listeners while no daemon runs (started
    /// by the daemon).
    #[command(hide = true)]
    Hold(hold::Args),
    /// The FUSE driver of a container's mount of its own block device
    /// (started by the agent).
    #[command(hide = true)]
    FuseDriver(fuse_driver::Args),
}

impl Command {
    /// Whether the command only prints and ends, so that a closed pipe on
    /// its standard output ends it quietly (`SIGPIPE`'s default) rather
    /// than with a failed write. Not the long-lived ones, which clean up
    /// (`run`, `daemon`, `hold`), nor `hook`, whose runtime reads its exit.
    pub fn ends_on_a_closed_pipe(&self) -> bool {
        !matches!(
            self,
            Command::Run(_) | Command::Daemon(_) | Command::Hold(_) | Command::Hook(_) | Command::FuseDriver(_)
        )
    }

    pub fn run(self, global: &Global) -> anyhow::Result<i32> {
        match self {
            Command::Run(a) => run::run(global, a),
            Command::Ls(a) => ls::run(global, a),
            Command::Daemon(a) => daemon::run(global, a),
            Command::Assign(a) => assign::run(global, a),
            Command::Release(a) => release::run(global, a),
            Command::Global(a) => global::run(global, a),
            Command::Ns(a) => ns::run(global, a),
            Command::View(a) => view::run(global, a),
            Command::Attach(a) => attach::run(global, a),
            Command::Events(a) => events::run(global, a),
            Command::Hook(a) => hook::run(global, a),
            Command::Oci(a) => oci::run(global, a),
            Command::Cdi(a) => cdi::run(global, a),
            Command::K8s(a) => k8s::run(global, a),
            Command::Lxc(a) => lxc::run(global, a),
            Command::Doctor(a) => doctor::run(global, a),
            Command::Generate(a) => generate::run(global, a),
            Command::Hold(a) => hold::run(global, a),
            Command::FuseDriver(a) => fuse_driver::run(global, a),
        }
    }
}

/// The width of the terminal stdout is, if it is one: tables fit it.
pub fn terminal_width() -> Option<usize> {
    let out = rustix::stdio::stdout();
    rustix::termios::isatty(out)
        .then(|| rustix::termios::tcgetwinsize(out).ok())
        .flatten()
        .map(|w| usize::from(w.ws_col))
        .filter(|&w| w > 0)
}

/// Whether stdout gets colour (a terminal, no `NO_COLOR`, no `TERM=dumb`).
pub fn colour() -> bool {
    devns_core::table::colour_wanted(
        rustix::termios::isatty(rustix::stdio::stdout()),
        std::env::var("NO_COLOR").ok().as_deref(),
        std::env::var("TERM").ok().as_deref(),
    )
}

/// Prints a change's result: JSON with `--json`, else `human()`.
pub fn print_result(global: &Global, r: &serde_json::Value, human: impl FnOnce() -> String) {
    if global.json {
        println!("{r}");
    } else {
        println!("{}", human());
    }
}
