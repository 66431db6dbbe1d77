//! Loop-control ioctls from inside containers (tests `loops.rs`,
//! `sec_loops.rs`).

use std::fs::File;

const LOOP_CTL_ADD: libc::c_ulong = 0x4C80;
const LOOP_CTL_REMOVE: libc::c_ulong = 0x4C81;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;

/// One loop-control ioctl on `file`: its result, or minus its errno.
fn ctl(file: &File, nr: libc::c_ulong, arg: i64) -> i32 {
    // SAFETY: the loop-control ioctls take their argument by value; `file`
    // is open for the call.
    let r = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(file), nr, arg as libc::c_ulong) };
    if r < 0 { -std::io::Error::last_os_error().raw_os_error().unwrap() } else { r }
}

fn open(path: &str) -> File {
    std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap()
}

/// `CMD:ARG` (CMD one of add, remove, get_free, or a request number in
/// hex such as `0x5401`; ARG 0 when left out): the ioctl's number and its
/// argument.
fn parse(op: &str) -> (libc::c_ulong, i64) {
    let (cmd, arg) = op.split_once(':').unwrap_or((op, "0"));
    let nr = match cmd {
        "add" => LOOP_CTL_ADD,
        "remove" => LOOP_CTL_REMOVE,
        "get_free" => LOOP_CTL_GET_FREE,
        _ => cmd
            .strip_prefix("0x")
            .and_then(|h| libc::c_ulong::from_str_radix(h, 16).ok())
            .unwrap_or_else(|| panic!("unknown op {cmd}")),
    };
    (nr, arg.parse().unwrap())
}

/// `DEVNS_LOOP_OPS` is a list of `CMD:ARG` done on `/dev/loop-control`
/// (opened for each), or of `file=PATH` to use another file for those
/// after it; prints `op CMD:ARG=RESULT` lines.
pub fn ioctls() {
    let mut file = "/dev/loop-control".to_owned();
    for op in super::var("DEVNS_LOOP_OPS").split(',') {
        if let Some(f) = op.strip_prefix("file=") {
            file = f.to_owned();
            continue;
        }
        let (nr, arg) = parse(op);
        println!("op {op}={}", ctl(&open(&file), nr, arg));
    }
}

/// `DEVNS_SEC_OPS` is a list of `CMD:ARG` on `/dev/loop-control` (opened
/// once); prints `op CMD:ARG=RESULT` lines.
pub fn ops() {
    let f = open("/dev/loop-control");
    for op in super::var("DEVNS_SEC_OPS").split(',') {
        let (nr, arg) = parse(op);
        println!("op {op}={}", ctl(&f, nr, arg));
    }
}

/// `DEVNS_RACE=INDEX:ITERATIONS:SECONDS` races for loopINDEX
/// (`LOOP_CTL_ADD` of it, and `LOOP_CTL_REMOVE` when it was given), with a
/// `GET_FREE` + `REMOVE` of a device of its own every fourth round; prints
/// one line `race got=N exist=N rounds=N bad(N)=[...]`, `bad` counting (and
/// naming the first few of) the answers that are not native for a device
/// that is one's own (a given device that cannot be removed again, an
/// error other than `EEXIST` for the add).
pub fn race() {
    let v: Vec<u64> = super::var("DEVNS_RACE").split(':').map(|s| s.parse().unwrap()).collect();
    let (index, rounds, secs) = (v[0] as i64, v[1], v[2]);
    let f = open("/dev/loop-control");
    let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let (mut got, mut exist, mut done, mut bad) = (0, 0, 0, Vec::new());
    while done < rounds && std::time::Instant::now() < until {
        done += 1;
        match ctl(&f, LOOP_CTL_ADD, index) {
            r if r as i64 == index => {
                got += 1;
                let r = ctl(&f, LOOP_CTL_REMOVE, index);
                if r != 0 {
                    bad.push(format!("remove:{index}={r}"));
                }
            }
            r if r == -libc::EEXIST => exist += 1,
            r => bad.push(format!("add:{index}={r}")),
        }
        if done % 4 == 0 {
            match ctl(&f, LOOP_CTL_GET_FREE, 0) {
                n if n >= 0 => {
                    let r = ctl(&f, LOOP_CTL_REMOVE, n as i64);
                    if r != 0 {
                        bad.push(format!("remove:{n}={r} (from get_free)"));
                    }
                }
                r => bad.push(format!("get_free={r}")),
            }
        }
    }
    let n = bad.len();
    bad.truncate(6);
    println!("race got={got} exist={exist} rounds={done} bad({n})={bad:?}");
}
