//! bpf(2) from inside a container (test `policy.rs`).

use std::path::Path;

/// bpf(2) calls a container might try on its own policy
/// (`DEVNS_BPF_CHILD=PROG_ID:MAP_ID:CGROUP`); prints `bpf NAME=RESULT`.
pub fn bpf() {
    let arg = super::var("DEVNS_BPF_CHILD");
    let mut it = arg.splitn(3, ':');
    let (prog, map, cg) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
    let show = |name: &str, r: Result<(), devns_sys::bpf::BpfError>| {
        let shown = match r {
            Ok(()) => "ok".to_owned(),
            Err(e) if e.errno() == Some(rustix::io::Errno::PERM) => "EPERM".to_owned(),
            Err(e) => e.to_string(),
        };
        println!("bpf {name}={shown}");
    };
    show("prog_by_id", devns_sys::bpf::prog_fd_by_id(prog.parse().unwrap()).map(drop));
    show("map_by_id", devns_sys::bpf::map_fd_by_id(map.parse().unwrap()).map(drop));
    let fd = devns::cgroup::open(Path::new(cg)).unwrap();
    show("query", devns_sys::bpf::prog_query(&fd, devns_sys::bpf::BPF_CGROUP_DEVICE).map(drop));
    show("map_create", devns::bpf::DeviceMap::create_hash(8, 0, "x").map(drop));
    let deny_all = devns_core::bpf::to_bytes(&devns_core::bpf::inline_program(&[]));
    show("prog_load", devns_sys::bpf::prog_load(15, &deny_all, "GPL", "x").map(drop));
}

/// A runtime's own device program, as crun attaches one on cgroup2 (its
/// config's rules compiled in, `BPF_F_ALLOW_MULTI`): an OCI hook run
/// before devns's (test `hooks.rs`). Reads the state on stdin and attaches
/// to the cgroup2 cgroup of its `pid` a program that allows only
/// `DEVNS_RUNTIME_ALLOW` (`c:MAJ:MIN`, comma list); prints its id on stderr.
pub fn runtime_program() {
    use devns_core::bpf::{ACC_ALL, DEV_BLOCK, DEV_CHAR, Key};
    let mut state = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut state).unwrap();
    let state = devns_core::oci::parse_state(state.as_bytes()).unwrap();
    let rules: Vec<(Key, u32)> = super::var("DEVNS_RUNTIME_ALLOW")
        .split(',')
        .map(|r| {
            let f: Vec<&str> = r.split(':').collect();
            let ty = if f[0] == "b" { DEV_BLOCK } else { DEV_CHAR };
            (Key { ty, major: f[1].parse().unwrap(), minor: f[2].parse().unwrap() }, ACC_ALL)
        })
        .collect();
    let proc_cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", state.pid.unwrap())).unwrap();
    let rel = devns::cgroup::v2_path(&proc_cgroup).unwrap();
    let mountinfo = std::fs::read("/proc/self/mountinfo").unwrap();
    let cg = devns::cgroup::find_cgroup2(&mountinfo).unwrap().join(rel.trim_start_matches('/'));
    let fd = devns::cgroup::open(&cg).unwrap();
    let insns = devns_core::bpf::to_bytes(&devns_core::bpf::inline_program(&rules));
    let prog =
        devns_sys::bpf::prog_load(devns_sys::bpf::BPF_PROG_TYPE_CGROUP_DEVICE, &insns, "GPL", "runtime").unwrap();
    devns_sys::bpf::prog_attach(&prog, &fd, devns_sys::bpf::BPF_CGROUP_DEVICE, devns_sys::bpf::BPF_F_ALLOW_MULTI)
        .unwrap();
    eprintln!("runtime program {}", devns_sys::bpf::prog_info(&prog).unwrap().id);
}
