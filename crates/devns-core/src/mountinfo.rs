//! `/proc/PID/mountinfo` (proc(5)): one mount per line,
//! `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE
//! SUPEROPTIONS`. Paths are bytes with the kernel's octal escapes (`\040`
//! for a space, also tab, newline and backslash), so a mount point any
//! user may name (a FUSE mount) is read exactly, UTF-8 or not.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// One line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub id: u32,
    pub parent: u32,
    pub major: u32,
    pub minor: u32,
    /// What of its filesystem the mount shows (`/` for the whole).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    pub options: String,
    /// `shared:N`, `master:N`, ...
    pub optional: Vec<String>,
    pub fstype: String,
    pub source: String,
    pub super_options: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MountinfoError {
    #[error("mountinfo line {line}: no {field}")]
    Missing { line: usize, field: &'static str },
    #[error("mountinfo line {line}: bad {field} {value:?}")]
    Bad { line: usize, field: &'static str, value: String },
}

/// Every line of `text` (a last one without its newline too); each a mount
/// or why it is not one (`line` counts from 1).
pub fn parse(text: &[u8]) -> impl Iterator<Item = Result<Mount, MountinfoError>> + '_ {
    text.split(|b| *b == b'\n').enumerate().filter(|(_, l)| !l.is_empty()).map(|(i, l)| parse_line(l, i + 1))
}

/// The mounts of `text` that parse (a line that does not names no mount).
pub fn mounts(text: &[u8]) -> impl Iterator<Item = Mount> + '_ {
    parse(text).filter_map(Result::ok)
}

/// One line, `line` its number for errors.
pub fn parse_line(l: &[u8], line: usize) -> Result<Mount, MountinfoError> {
    let missing = |field| MountinfoError::Missing { line, field };
    let bad = |field, v: &[u8]| MountinfoError::Bad { line, field, value: String::from_utf8_lossy(v).into_owned() };
    let mut f = l.split(|b| *b == b' ');
    let mut next = |field| f.next().ok_or_else(|| missing(field));
    let num = |field, v: &[u8]| {
        std::str::from_utf8(v)
            .ok()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(field, v))
    };
    let id = num("mount id", next("mount id")?)?;
    let parent = num("parent id", next("parent id")?)?;
    let dev = next("device")?;
    let (major, minor) = match dev.iter().position(|b| *b == b':') {
        Some(i) => (num("device", &dev[..i])?, num("device", &dev[i + 1..])?),
        None => return Err(bad("device", dev)),
    };
    let root = path(next("root")?);
    let mount_point = path(next("mount point")?);
    let options = text(next("mount options")?);
    let mut optional = Vec::new();
    loop {
        match next("separator")? {
            b"-" => break,
            o => optional.push(text(o)),
        }
    }
    let fstype = text(next("filesystem type")?);
    let source = String::from_utf8_lossy(&unescape(next("source")?)).into_owned();
    // The rest: a filesystem's own options may hold an unescaped space.
    let mut super_options = text(next("super options")?);
    for more in f {
        super_options.push(' ');
        super_options.push_str(&String::from_utf8_lossy(more));
    }
    Ok(Mount { id, parent, major, minor, root, mount_point, options, optional, fstype, source, super_options })
}

fn path(v: &[u8]) -> PathBuf {
    PathBuf::from(OsString::from_vec(unescape(v)))
}

fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

/// Undoes the kernel's octal escapes (`\ooo`); anything else stays as it is.
pub fn unescape(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push(d.iter().fold(0u8, |n, c| n.wrapping_mul(8).wrapping_add(c - b'0')));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    out
}

/// The kernel's escapes of a path (`mangle`: space, tab, newline, backslash).
pub fn escape(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    for c in b {
        match c {
            b' ' | b'\t' | b'\n' | b'\\' => out.extend_from_slice(format!("\\{c:03o}").as_bytes()),
            c => out.push(*c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MI: &[u8] = b"22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n\
        31 22 0:26 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate\n\
        40 22 0:40 /sub /a\\040b rw master:3 shared:7 - tmpfs my\\040src rw\n";

    #[test]
    fn reads_every_field_and_unescapes_paths() {
        let m: Vec<Mount> = parse(MI).collect::<Result<_, _>>().unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!((m[0].id, m[0].parent, m[0].major, m[0].minor), (22, 1, 253, 1));
        assert_eq!((m[1].fstype.as_str(), m[1].mount_point.to_str()), ("cgroup2", Some("/sys/fs/cgroup/unified")));
        assert_eq!(m[2].root, PathBuf::from("/sub"));
        assert_eq!(m[2].mount_point, PathBuf::from("/a b"));
        assert_eq!(m[2].optional, ["master:3", "shared:7"]);
        assert_eq!((m[2].source.as_str(), m[2].super_options.as_str()), ("my src", "rw"));
    }

    #[test]
    fn this_process_s_mountinfo_reads_whole() {
        let text = std::fs::read("/proc/self/mountinfo").unwrap();
        let all: Vec<Mount> = parse(&text).collect::<Result<_, _>>().unwrap();
        assert!(all.iter().any(|m| m.mount_point.as_os_str() == "/"), "a root mount");
    }

    #[test]
    fn bad_lines_say_which_and_why() {
        let e = |l: &[u8]| parse(l).next().unwrap().unwrap_err().to_string();
        assert_eq!(e(b"x 1 0:1 / / rw - t s o"), "mountinfo line 1: bad mount id \"x\"");
        assert_eq!(e(b"1 1 01 / / rw - t s o"), "mountinfo line 1: bad device \"01\"");
        assert_eq!(e(b"1 1 0:1 / / rw t s o"), "mountinfo line 1: no separator");
        assert_eq!(e(b"1 1 0:1 / / rw - t s"), "mountinfo line 1: no super options");
        assert_eq!(parse_line(b"1 1 0:1 / / rw - t s o x", 1).unwrap().super_options, "o x");
        assert_eq!(e(b"1 1 0:+1 / / rw - t s o"), "mountinfo line 1: bad device \"+1\"");
        let two: Vec<_> = parse(b"1 1 0:1 / / rw - t s o\n\nbad\n").collect();
        assert_eq!(two[1], Err(MountinfoError::Bad { line: 3, field: "mount id", value: "bad".into() }));
    }

    #[test]
    fn escapes_undo_and_stray_backslashes_stay() {
        assert_eq!(unescape(b"/a\\040b\\011c"), b"/a b\tc");
        assert_eq!(unescape(b"/trailing\\04"), b"/trailing\\04");
        assert_eq!(unescape(b"\\"), b"\\");
        let odd = b"/x y\t\\z\n\xff";
        assert_eq!(escape(odd), b"/x\\040y\\011\\134z\\012\xff");
        assert_eq!(unescape(&escape(odd)), odd);
    }
}
