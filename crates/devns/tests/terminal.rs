//! `devns run` on a real terminal (tmux's) and with `--tty`: the container's
//! own pty, its size following the window, job control, a full-screen
//! program, the terminal's modes given back.

mod common;

use common::*;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A tmux server of the test's own (its own socket), killed on drop with
/// everything it runs.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    /// A detached session running `shell_line` in a `cols`×`rows` window
    /// with no status line.
    fn start(env: &Env, shell_line: &str, cols: u16, rows: u16) -> Tmux {
        let t = Tmux { socket: env.dir.path().join("tmux.sock") };
        let (x, y) = (cols.to_string(), rows.to_string());
        let mut c = t.cmd();
        c.args(["-f", "/dev/null", "new-session", "-d", "-s", "t", "-x", &x, "-y", &y, shell_line]);
        let o = env.devns_env(&mut c).env("TERM", "xterm").output().expect("tmux");
        assert!(o.status.success(), "tmux new-session: {}", String::from_utf8_lossy(&o.stderr));
        t.run(&["set-option", "-g", "status", "off"]);
        t.run(&["set-option", "-g", "remain-on-exit", "on"]);
        t
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&self.socket);
        c
    }

    fn run(&self, args: &[&str]) -> String {
        let o = self.cmd().args(args).output().expect("tmux");
        assert!(o.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Types `keys` (tmux key names, `Enter`, `C-c`, `Escape`, or text).
    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "t"];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    /// A line typed and entered.
    fn line(&self, text: &str) {
        self.keys(&["-l", text]);
        self.keys(&["Enter"]);
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "t"])
    }

    /// The screen with lines the terminal wrapped joined again, and the
    /// programs' colours as escape sequences.
    fn joined_with_colours(&self) -> String {
        self.run(&["capture-pane", "-p", "-J", "-e", "-t", "t"])
    }

    /// Waits until the screen shows `what`; the screen then.
    fn until(&self, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.screen();
            if s.contains(what) {
                return s;
            }
            assert!(Instant::now() < deadline, "the screen never showed {what:?}:\n{s}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The pane's size as tmux gives it to the program in it: "ROWS COLS".
    fn size(&self) -> String {
        self.run(&["display-message", "-p", "-t", "t", "#{pane_height} #{pane_width}"]).trim().to_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").stderr(Stdio::null()).status();
    }
}

/// Waits until a process runs `cmd` (the container's, seen from the host).
fn running(cmd: &str) {
    let pattern = format!("^{cmd}$");
    eventually(&format!("{cmd} runs"), || {
        Command::new("pgrep").args(["-f", &pattern]).stdout(Stdio::null()).status().is_ok_and(|s| s.success())
    });
}

/// Under tmux, as a person at a terminal: `tty` names a pty of the
/// container's own, the size follows the window, Ctrl-C and Ctrl-Z reach
/// the foreground job of an interactive shell, `vi` draws its screen and
/// saves, and when the run ends the terminal has its modes back.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn under_tmux_job_control_resizes_and_a_full_screen_program_work() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let (before, after) = (env.dir.path().join("modes.before"), env.dir.path().join("modes.after"));
    let line = format!(
        "stty -g > {b}; {devns} run --name term -- bash --norc --noprofile -i; echo devns-ended-$?; stty -g > {a}",
        b = before.display(),
        a = after.display(),
        devns = env!("CARGO_BIN_EXE_devns"),
    );
    let t = Tmux::start(&env, &line, 100, 30);
    // What the screen is waited for is never in the line typed (its echo).
    t.line("PS1='in''>'");
    t.until("in>");
    t.line("tty; [ -c \"$(tty)\" ] && echo pts-is-$((1+1)); stty size; hostname");
    let s = t.until("pts-is-2");
    assert!(s.contains("/dev/pts/0"), "{s}");
    t.until(&format!("{}\n", t.size()));
    t.until("term\n");

    t.run(&["resize-window", "-t", "t", "-x", "120", "-y", "40"]);
    assert_eq!(t.size(), "40 120");
    t.line("clear; stty size");
    t.until("40 120");

    // Ctrl-C ends the foreground job, not the shell; Ctrl-Z stops it and
    // the shell's job table has it.
    t.line("clear; sleep 1000");
    running("sleep 1000");
    t.keys(&["C-c"]);
    t.line("echo interrupted-$?");
    t.until("interrupted-130");
    t.line("clear; sleep 1001");
    running("sleep 1001");
    t.keys(&["C-z"]);
    t.until("Stopped");
    t.line("jobs; kill -9 %1; wait; echo killed-$((6*7))");
    let s = t.until("killed-42");
    assert!(s.contains("sleep 1001"), "{s}");

    // A full-screen program: its empty lines drawn to the bottom, then an
    // edit saved.
    t.line("clear; busybox vi /tmp/note");
    let s = t.until("~");
    assert!(s.lines().filter(|l| l.starts_with('~')).count() >= 30, "vi did not fill the screen:\n{s}");
    t.keys(&["i"]);
    t.keys(&["-l", "hello from vi"]);
    t.until("hello from vi");
    t.keys(&["Escape"]);
    // Apart from the next key, or vi reads the two as one sequence.
    std::thread::sleep(Duration::from_millis(300));
    t.keys(&["-l", ":wq"]);
    t.keys(&["Enter"]);
    t.line("clear; cat /tmp/note; echo; echo sa''ved");
    let s = t.until("saved");
    assert!(s.contains("hello from vi"), "{s}");

    t.line("exit 7");
    t.until("devns-ended-7");
    let read = |p: &PathBuf| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(s) = std::fs::read_to_string(p)
                && !s.is_empty()
            {
                return s;
            }
            assert!(Instant::now() < deadline, "{} never written", p.display());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert_eq!(read(&before), read(&after), "the terminal's modes were not given back");
}

/// `--tty` gives the command a pty when devns's stdio are pipes, as
/// `podman run -t` does: all three are it, its output has a terminal's
/// line ends, piped input is typed in and its end is end-of-file; without
/// the flag pipes stay pipes.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn tty_gives_a_pty_of_the_container_s_own_when_stdio_are_pipes() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let mut c = env.devns();
    c.args(["run", "--tty", "--", "sh", "-c"])
        .arg("tty; stty size; [ -t 0 ] && [ -t 2 ] && echo all-three; read x; echo got-$x; cat; echo after-eof; exit 4")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"typed\n").unwrap();
    let o = child.wait_with_output().unwrap();
    let got = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(4), "{got} / {}", String::from_utf8_lossy(&o.stderr));
    // The pty's echo of the typed line comes among the output.
    for want in ["/dev/pts/0\r\n", "24 80\r\n", "all-three\r\n", "got-typed\r\n", "after-eof\r\n"] {
        assert!(got.contains(want), "{want:?} in {got:?}");
    }
    let o = env.run(&["--", "sh", "-c", "tty; echo $?"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "not a tty\n1\n");
}

/// On a terminal, `devns ns ls` fits its width (a namespace's long device
/// list wrapped under its column, no line longer than the terminal) and
/// `devns events` lines are aligned with the event coloured; through a pipe
/// the same events have no colour.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn tables_fit_the_terminal_and_events_are_coloured_only_there() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = Daemon::start(&env);
    let mut a = shell_container(&env, &["--name", "a"]);
    assert_eq!(a.sh("echo in"), ["in"]);
    let loops: Vec<Loop> = (0..5).map(|_| Loop::new(false)).collect();
    for l in &loops {
        devns_ok(&env, &["assign", &l.name, "--to", "a"]);
    }
    let mut piped = env.devns().args(["events"]).stdout(Stdio::piped()).spawn().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = piped.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let devns = env!("CARGO_BIN_EXE_devns");
    let t = Tmux::start(&env, &format!("{devns} ns ls; echo ==; {devns} events"), 44, 30);
    t.until("==");
    // Released (and given back, and released again) until both
    // subscribers, which subscribe on their own time, have seen it.
    let want = format!("release  {}", loops[0].name);
    let (mut shown, mut plain) = (None, None);
    for _ in 0..20 {
        devns_ok(&env, &["release", &loops[0].name]);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && (shown.is_none() || plain.is_none()) {
            let s = t.joined_with_colours();
            if shown.is_none() && s.split_once("==").is_some_and(|(_, ev)| ev.contains("release")) {
                shown = Some(s);
            }
            while let Ok(l) = rx.try_recv() {
                if plain.is_none() && l.contains("release") {
                    plain = Some(l);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if shown.is_some() && plain.is_some() {
            break;
        }
        devns_ok(&env, &["assign", &loops[0].name, "--to", "a"]);
    }
    let shown = shown.expect("a release event on the terminal");
    let line = plain.expect("a release event through the pipe");
    assert!(line.starts_with(&want) && !line.contains('\x1b'), "plain through a pipe: {line:?}");
    let _ = piped.kill();
    let _ = piped.wait();
    let (table, events) = shown.split_once("==").unwrap();
    assert!(table.lines().all(|l| l.chars().count() <= 44), "a line wider than the terminal:\n{table}");
    let names: Vec<&str> = table.split_whitespace().collect();
    for l in &loops {
        assert!(names.contains(&l.name.as_str()), "{} listed:\n{table}", l.name);
    }
    assert!(table.lines().count() > 2, "the device list wrapped:\n{table}");
    let line = events.lines().find(|l| l.contains("release")).unwrap();
    assert!(line.contains("\x1b[31mrelease "), "coloured on the terminal: {line:?}");
}
