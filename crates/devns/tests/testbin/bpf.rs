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
