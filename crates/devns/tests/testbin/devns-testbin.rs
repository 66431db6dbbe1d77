//! `devns-testbin ROLE`: the programs the integration tests run inside
//! containers, one role each (as youki's `runtimetest` is). A role reads
//! its input from the environment variables the test sets, prints what it
//! saw on stdout, and the test asserts on that. Not installed: the
//! `testbin` feature that builds it is on only for this package's tests.

mod bpf;
mod holder;
mod ipc;
mod loops;
mod mknod;
mod ptrace;
mod runtime;
mod tty;

/// A role: its name, the variables it needs set (all of them), and what
/// it does.
type Role = (&'static str, &'static [&'static str], fn());

const ROLES: &[Role] = &[
    ("attack", &["DEVNS_ATTACK_OUTSIDE", "DEVNS_ATTACK_FD"], mknod::attack),
    ("bpf", &["DEVNS_BPF_CHILD"], bpf::bpf),
    ("filtered", &[], holder::filtered),
    ("filtered-shell", &["DEVNS_SHELL"], runtime::filtered_shell),
    ("i386-mknod", &["DEVNS_I386_PATH"], mknod::i386),
    ("holder-peer", &["DEVNS_HOLDER_SOCK"], holder::peer),
    ("loop-ioctls", &["DEVNS_LOOP_OPS"], loops::ioctls),
    ("loop-ops", &["DEVNS_SEC_OPS"], loops::ops),
    ("loop-race", &["DEVNS_RACE"], loops::race),
    ("oci-peer", &["DEVNS_OCI_SOCK", "DEVNS_OCI_MSG"], runtime::peer),
    ("posix-ipc", &["DEVNS_IPC_NAME"], ipc::posix_ipc),
    ("ptrace-init", &[], ptrace::ptrace_init),
    ("runtime-program", &["DEVNS_RUNTIME_ALLOW"], bpf::runtime_program),
    ("signal-storm", &["DEVNS_STORM_ITERATIONS"], mknod::signal_storm),
    ("tiocsti", &["DEVNS_TIOCSTI", "DEVNS_OUTER_TTY"], tty::tiocsti),
];

fn main() {
    let names = ROLES.iter().map(|r| r.0).collect::<Vec<_>>().join(", ");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [role] = args.as_slice() else {
        refuse(&format!("usage: devns-testbin ROLE (one of {names}), a helper of devns's integration tests"));
    };
    let Some((_, vars, run)) = ROLES.iter().find(|r| r.0 == role) else {
        refuse(&format!("devns-testbin: unknown role {role:?} (one of {names})"));
    };
    if let Some(var) = vars.iter().find(|v| std::env::var_os(v).is_none()) {
        refuse(&format!("devns-testbin {role}: {var} is not set (the test that runs it sets it)"));
    }
    run();
}

fn refuse(why: &str) -> ! {
    eprintln!("{why}");
    std::process::exit(2)
}

/// The value of a variable `main` checked is set.
fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|e| panic!("{name}: {e}"))
}
