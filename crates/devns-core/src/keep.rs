//! Keeping seccomp listeners past the daemon's death, as data: the holder's
//! messages, the names listeners get in systemd's fd store, what a
//! restarted daemon does with each listener it is given back, and with the
//! call that was in flight when its predecessor died.

use std::fmt;

/// The longest message the holder takes (anything longer is refused whole).
pub const MAX_MESSAGE: usize = 128;

/// A request to the holder (one datagram of a `SOCK_SEQPACKET` socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Keep the listener passed with it, which serves namespace `ns` (0:
    /// not known); answered `ok KEY`.
    Put { ns: u64 },
    /// Keep the journal (a memfd) passed with it, replacing any before.
    Journal,
    /// Keep the private `/tmp` devns made for namespace `ns` (a tmpfs
    /// directory passed with it), while a listener of `ns` is held: the
    /// next daemon makes `ns`'s nodes there again.
    Tmp { ns: u64 },
    /// Close the listener `key`: the daemon has no more use for it.
    Drop { key: u64 },
    /// Send copies of everything held (`held KEY NS`, `journal`), then `end N`.
    Take,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ok(Option<u64>),
    Err(String),
    Held { key: u64, ns: u64 },
    Journal,
    Tmp { ns: u64 },
    End(usize),
}

fn number(s: Option<&str>) -> Result<u64, String> {
    let s = s.ok_or("a number is missing")?;
    // Decimal digits only: no sign, no spaces, no leading `+`.
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("not a number: {s:?}"));
    }
    s.parse().map_err(|_| format!("not a number: {s:?}"))
}

fn words(msg: &[u8]) -> Result<Vec<&str>, String> {
    if msg.len() > MAX_MESSAGE {
        return Err(format!("message longer than {MAX_MESSAGE} bytes"));
    }
    let text = std::str::from_utf8(msg).map_err(|_| "message is not UTF-8".to_owned())?;
    Ok(text.split(' ').collect())
}

impl Request {
    pub fn parse(msg: &[u8]) -> Result<Request, String> {
        let w = words(msg)?;
        let r = match (w.as_slice(), w.len()) {
            (["put", ..], 2) => Request::Put { ns: number(w.get(1).copied())? },
            (["journal"], 1) => Request::Journal,
            (["tmp", ..], 2) => Request::Tmp { ns: number(w.get(1).copied())? },
            (["drop", ..], 2) => Request::Drop { key: number(w.get(1).copied())? },
            (["take"], 1) => Request::Take,
            _ => return Err("unknown request".into()),
        };
        Ok(r)
    }

    /// How many fds come with it.
    pub fn fds(self) -> usize {
        match self {
            Request::Put { .. } | Request::Journal | Request::Tmp { .. } => 1,
            Request::Drop { .. } | Request::Take => 0,
        }
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Put { ns } => write!(f, "put {ns}"),
            Request::Journal => write!(f, "journal"),
            Request::Tmp { ns } => write!(f, "tmp {ns}"),
            Request::Drop { key } => write!(f, "drop {key}"),
            Request::Take => write!(f, "take"),
        }
    }
}

impl Reply {
    pub fn parse(msg: &[u8]) -> Result<Reply, String> {
        let w = words(msg)?;
        let r = match w.as_slice() {
            ["ok"] => Reply::Ok(None),
            ["ok", k] => Reply::Ok(Some(number(Some(k))?)),
            ["err", ..] => Reply::Err(w[1..].join(" ")),
            ["held", k, n] => Reply::Held { key: number(Some(k))?, ns: number(Some(n))? },
            ["journal"] => Reply::Journal,
            ["tmp", n] => Reply::Tmp { ns: number(Some(n))? },
            ["end", n] => Reply::End(number(Some(n))? as usize),
            _ => return Err("unknown reply".into()),
        };
        Ok(r)
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Ok(None) => write!(f, "ok"),
            Reply::Ok(Some(k)) => write!(f, "ok {k}"),
            Reply::Err(why) => write!(f, "err {why}"),
            Reply::Held { key, ns } => write!(f, "held {key} {ns}"),
            Reply::Journal => write!(f, "journal"),
            Reply::Tmp { ns } => write!(f, "tmp {ns}"),
            Reply::End(n) => write!(f, "end {n}"),
        }
    }
}

/// What systemd's fd store keeps: a listener, by its key and namespace,
/// or the journal. Names are what `FDNAME=` allows (at most 255 of
/// `[A-Za-z0-9_.-]`, here far fewer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    Listener { key: u64, ns: u64 },
    Tmp { ns: u64 },
    Journal,
}

impl Stored {
    pub fn name(self) -> String {
        match self {
            Stored::Listener { key, ns } => format!("devns-listener-{key}-{ns}"),
            Stored::Tmp { ns } => format!("devns-tmp-{ns}"),
            Stored::Journal => "devns-journal".into(),
        }
    }

    pub fn parse(name: &str) -> Option<Stored> {
        if name == "devns-journal" {
            return Some(Stored::Journal);
        }
        if let Some(ns) = name.strip_prefix("devns-tmp-") {
            return Some(Stored::Tmp { ns: number(Some(ns)).ok()? });
        }
        let rest = name.strip_prefix("devns-listener-")?;
        let (key, ns) = rest.split_once('-')?;
        Some(Stored::Listener { key: number(Some(key)).ok()?, ns: number(Some(ns)).ok()? })
    }
}

/// The fds systemd passed (`LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`),
/// for process `me`: each fd number from 3 on with its name; none when
/// they were meant for another process or say nothing sensible.
pub fn listen_fds(me: u32, pid: Option<&str>, fds: Option<&str>, names: Option<&str>) -> Vec<(i32, String)> {
    let ours = pid.and_then(|p| number(Some(p)).ok()) == Some(u64::from(me));
    let n = fds.and_then(|n| number(Some(n)).ok()).unwrap_or(0);
    if !ours || n == 0 || n > 65_536 {
        return Vec::new();
    }
    let mut names = names.unwrap_or("").split(':');
    (0..n as i32).map(|i| (3 + i, names.next().unwrap_or("unknown").to_owned())).collect()
}

/// Whether a file of `dev`, `ino` is the journal's stream that systemd
/// set as stdout or stderr (`JOURNAL_STREAM`, "DEV:INO" in decimal).
pub fn is_journal_stream(var: Option<&str>, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = var.and_then(|v| v.split_once(':')) else { return false };
    number(Some(d)).ok() == Some(dev) && number(Some(i)).ok() == Some(ino)
}

/// What a restarted daemon does with a listener it is given back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovered {
    /// Serve it.
    Serve,
    /// Close it and have the store close it too: `why`.
    Stale(&'static str),
}

/// A listener given back serves on iff no filtered process has hung it up
/// and the namespace it was tagged with (if any) is still kept or still
/// has a process (`alive`, asked only of one not kept): one that died
/// while the daemon was down leaves no caller behind. A runtime's
/// listener (the seccomp agent socket) is tagged with its container's
/// namespace before any hook brings that under the daemon (crun connects
/// before its hooks run), or without one ever doing so: not kept, yet
/// alive, it serves on.
pub fn recovered(ns: u64, hung_up: bool, kept: impl Fn(u64) -> bool, alive: impl Fn(u64) -> bool) -> Recovered {
    if hung_up {
        Recovered::Stale("no filtered process is left")
    } else if ns != 0 && !kept(ns) && !alive(ns) {
        Recovered::Stale("its namespace ended while the daemon was down")
    } else {
        Recovered::Serve
    }
}

/// The journal's record of the one call in flight: the daemon answers one
/// call at a time, so one record is all there is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InFlight {
    /// No call between its receipt and its answer.
    Idle,
    /// Received from listener `key`, not yet answered.
    Received { key: u64 },
    /// Its answer decided and about to be sent.
    Answered { key: u64 },
}

/// What to do at restart with the call in flight, given whether the
/// kernel still waits for an answer to it (`NOTIF_ID_VALID`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    Nothing,
    /// Send the recorded answer.
    SendAnswer {
        key: u64,
    },
    /// Handle the recorded notification again, from its arguments.
    HandleAgain {
        key: u64,
    },
}

pub fn resume(in_flight: InFlight, still_waiting: bool) -> Resume {
    match (in_flight, still_waiting) {
        (_, false) | (InFlight::Idle, _) => Resume::Nothing,
        (InFlight::Answered { key }, true) => Resume::SendAnswer { key },
        (InFlight::Received { key }, true) => Resume::HandleAgain { key },
    }
}

/// What a restarted daemon must know of a runtime's listener beyond its
/// namespace, noted in the state directory beside it (`listeners/KEY.json`):
/// the container whose runtime passed it (which crun's exec listeners name)
/// and what is still due at its first trapped call.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerNote {
    pub container: String,
    #[serde(default)]
    pub due: Option<DueNote>,
}

/// A listener's first call's due work (the daemon's `Due`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "do", rename_all = "kebab-case", deny_unknown_fields)]
pub enum DueNote {
    /// Bring the container in as `name`, with `devices`.
    Attach { name: String, devices: Vec<String> },
    /// Defer the runtime's device rules of process `pid` again.
    Defer { pid: i32 },
}

/// Largest note read back; the most devices one names.
pub const MAX_NOTE_BYTES: usize = 16 << 10;
pub const MAX_NOTE_DEVICES: usize = 64;

/// A note read back, checked: one that is not devns's (too large, not the
/// shape, a name or device that could not have been written) is `Err`,
/// and its listener is served as one with nothing due.
pub fn parse_note(bytes: &[u8]) -> Result<ListenerNote, String> {
    if bytes.len() > MAX_NOTE_BYTES {
        return Err(format!("larger than {MAX_NOTE_BYTES} bytes"));
    }
    let n: ListenerNote = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let printable = |s: &str, max: usize| !s.is_empty() && s.len() <= max && !s.chars().any(char::is_control);
    if !printable(&n.container, 1024) {
        return Err("the container id is not 1 to 1024 printable characters".into());
    }
    match &n.due {
        Some(DueNote::Attach { name, devices }) => {
            if !crate::hook::is_name(name) {
                return Err(format!("{name:?} is not a namespace name"));
            }
            if devices.len() > MAX_NOTE_DEVICES || !devices.iter().all(|d| printable(d, 256)) {
                return Err("its devices are not up to 64 names of 1 to 256 printable characters".into());
            }
        }
        Some(DueNote::Defer { pid }) if *pid <= 0 => return Err(format!("pid {pid} names no process")),
        _ => {}
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_listener_note_reads_back_and_a_bad_one_is_refused() {
        let n = ListenerNote {
            container: "c1".into(),
            due: Some(DueNote::Attach { name: "web".into(), devices: vec!["loop3".into()] }),
        };
        let text = serde_json::to_vec(&n).unwrap();
        assert_eq!(parse_note(&text), Ok(n));
        let d = ListenerNote { container: "c1".into(), due: Some(DueNote::Defer { pid: 42 }) };
        assert_eq!(parse_note(&serde_json::to_vec(&d).unwrap()), Ok(d));
        assert_eq!(parse_note(br#"{"container":"c1"}"#).unwrap().due, None);
        for bad in [
            &br#"{"container":""}"#[..],
            br#"{"container":"c1","due":{"do":"attach","name":"a:b","devices":[]}}"#,
            br#"{"container":"c1","due":{"do":"defer","pid":0}}"#,
            br#"{"container":"c1","due":{"do":"explode"}}"#,
            br#"{"container":"c1","extra":1}"#,
            b"not json",
        ] {
            assert!(parse_note(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert!(parse_note(&vec![b' '; MAX_NOTE_BYTES + 1]).unwrap_err().contains("larger"));
    }

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn requests_and_replies_read_back_what_was_written() {
        for r in [
            Request::Put { ns: 4026531837 },
            Request::Journal,
            Request::Tmp { ns: 3 },
            Request::Drop { key: 7 },
            Request::Take,
        ] {
            assert_eq!(Request::parse(r.to_string().as_bytes()), Ok(r));
        }
        for r in [
            Reply::Ok(None),
            Reply::Ok(Some(3)),
            Reply::Err("not a listener".into()),
            Reply::Held { key: 1, ns: 2 },
            Reply::Journal,
            Reply::Tmp { ns: 8 },
            Reply::End(5),
        ] {
            assert_eq!(Reply::parse(r.to_string().as_bytes()), Ok(r));
        }
    }

    #[test]
    fn junk_is_refused() {
        for m in [
            &b""[..],
            b"put",
            b"put -1",
            b"put +1",
            b"put 1 2",
            b"tmp",
            b"tmp 0x1",
            b"put 99999999999999999999999",
            b"drop x",
            b"take ",
            b"TAKE",
            b"\xff\xfe",
            &[b'a'; 200],
        ] {
            assert!(Request::parse(m).is_err(), "{m:?}");
        }
    }

    #[test]
    fn stored_names_read_back_and_others_are_not_ours() {
        for s in [Stored::Listener { key: 9, ns: 4026532000 }, Stored::Tmp { ns: 4 }, Stored::Journal] {
            assert_eq!(Stored::parse(&s.name()), Some(s));
            assert!(s.name().len() <= 255);
        }
        for n in ["", "stored", "devns-listener-1", "devns-listener-a-1", "devns-listener-1-2-3"] {
            assert_eq!(Stored::parse(n), None, "{n}");
        }
    }

    #[test]
    fn the_journal_s_stream_is_known_by_device_and_inode() {
        assert!(is_journal_stream(Some("8:1234"), 8, 1234));
        for other in
            [None, Some(""), Some("8:123"), Some("9:1234"), Some("8"), Some("8:1234:5"), Some("x:y"), Some(":")]
        {
            assert!(!is_journal_stream(other, 8, 1234), "{other:?}");
        }
    }

    #[test]
    fn listen_fds_are_taken_only_when_meant_for_this_process() {
        assert_eq!(listen_fds(10, Some("10"), Some("2"), Some("a:b")), vec![(3, "a".into()), (4, "b".into())]);
        assert_eq!(listen_fds(10, Some("10"), Some("2"), Some("a")), vec![(3, "a".into()), (4, "unknown".into())]);
        assert!(listen_fds(10, Some("11"), Some("2"), Some("a:b")).is_empty());
        assert!(listen_fds(10, None, Some("2"), None).is_empty());
        assert!(listen_fds(10, Some("10"), Some("x"), None).is_empty());
    }

    #[test]
    fn a_listener_of_a_namespace_that_ended_or_hung_up_is_stale() {
        let kept = |ns| ns == 5;
        let alive = |ns| ns == 5 || ns == 7;
        assert_eq!(recovered(5, false, kept, alive), Recovered::Serve);
        assert_eq!(recovered(0, false, kept, alive), Recovered::Serve);
        assert!(matches!(recovered(6, false, kept, alive), Recovered::Stale(_)));
        assert!(matches!(recovered(5, true, kept, alive), Recovered::Stale(_)));
        // Not kept (yet), but its processes live: a runtime's container.
        assert_eq!(recovered(7, false, kept, alive), Recovered::Serve);
        assert!(matches!(recovered(7, true, kept, alive), Recovered::Stale(_)));
    }

    #[test]
    fn only_a_call_the_kernel_still_waits_for_is_resumed() {
        assert_eq!(resume(InFlight::Answered { key: 1 }, true), Resume::SendAnswer { key: 1 });
        assert_eq!(resume(InFlight::Received { key: 1 }, true), Resume::HandleAgain { key: 1 });
        assert_eq!(resume(InFlight::Received { key: 1 }, false), Resume::Nothing);
        assert_eq!(resume(InFlight::Idle, true), Resume::Nothing);
    }

    proptest! {
        #[test]
        fn no_message_makes_the_parsers_panic(m in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Request::parse(&m);
            let _ = Reply::parse(&m);
            let _ = Stored::parse(&String::from_utf8_lossy(&m));
        }
    }
}
