//! What the CLI prints for people: tables whose columns are as wide as
//! their widest cell, the last one wrapped (at spaces) to fit a terminal's
//! width, and `devns events` lines aligned, their event names coloured
//! when a terminal shows them. Pure: the caller says the width and whether
//! colour is wanted.

use crate::api::Event;

/// Columns between cells.
const GAP: usize = 2;
/// The narrowest the last column is wrapped to, however narrow the
/// terminal: below that, lines run over instead.
const MIN_LAST: usize = 16;

/// `rows` under `header`, each column as wide as its widest cell; with a
/// `width` (a terminal's), the last column's cells wrap at spaces onto
/// lines of their own, indented to that column. Every line ends in `\n`;
/// no line has trailing spaces.
pub fn render(header: &[&str], rows: &[Vec<String>], width: Option<usize>) -> String {
    let n = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(n) {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let indent: usize = widths[..n.saturating_sub(1)].iter().map(|w| w + GAP).sum();
    let last_width = width.map(|w| w.saturating_sub(indent).max(MIN_LAST));
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for r in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, w) in widths.iter().enumerate().take(n - 1) {
            let cell = r.get(i).map_or("", String::as_str);
            line.push_str(cell);
            line.push_str(&" ".repeat(w - cell.chars().count() + GAP));
        }
        let last = r.get(n - 1).map_or("", String::as_str);
        let pieces = match last_width {
            Some(w) => wrap(last, w),
            None => vec![last.to_owned()],
        };
        for (k, piece) in pieces.iter().enumerate() {
            if k > 0 {
                line = " ".repeat(indent);
            }
            line.push_str(piece);
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
    out
}

/// `text` in lines of at most `width` characters, broken at spaces; a word
/// longer than `width` has a line of its own. At least one line.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let cur = lines.last_mut().expect("one line");
        if cur.is_empty() {
            cur.push_str(word);
        } else if cur.chars().count() + 1 + word.chars().count() <= width {
            cur.push(' ');
            cur.push_str(word);
        } else {
            lines.push(word.to_owned());
        }
    }
    lines
}

/// The widest event name (`ns-gone`, `release`).
const EVENT_WIDTH: usize = 8;
/// A device name column wide enough for most (`nvme0n1p12`, `loop127`).
const DEVICE_WIDTH: usize = 12;
/// `b:MAJ:MIN` of most.
const DEV_WIDTH: usize = 10;

/// One event as `devns events` prints it for people: the event's name, the
/// device, its numbers and the namespace in columns, `global=` last; the
/// name coloured by what happened when `colour` (green: a device comes,
/// red: one goes, cyan: a namespace's, yellow: global).
pub fn event_line(ev: &Event, colour: bool) -> String {
    let name = format!("{:<EVENT_WIDTH$}", ev.event);
    let name = match (colour, event_colour(&ev.event)) {
        (true, Some(c)) => format!("\x1b[{c}m{name}\x1b[0m"),
        _ => name,
    };
    let mut line = format!(
        "{name} {:<DEVICE_WIDTH$} {:<DEV_WIDTH$} {}",
        ev.device.as_deref().unwrap_or("-"),
        ev.dev.as_deref().unwrap_or("-"),
        ev.ns.as_deref().map_or_else(|| "-".to_owned(), |n| format!("ns={n}")),
    );
    if let Some(g) = ev.global {
        line.push_str(&format!(" global={g}"));
    }
    line.trim_end().to_owned()
}

/// The SGR colour of an event's name.
fn event_colour(event: &str) -> Option<&'static str> {
    match event {
        "add" | "assign" => Some("32"),
        "remove" | "release" => Some("31"),
        "ns-new" | "ns-gone" => Some("36"),
        "global" => Some("33"),
        _ => None,
    }
}

/// Whether people's output gets colour: a terminal, and neither `NO_COLOR`
/// (no-color.org: set to anything but empty) nor `TERM=dumb`.
pub fn colour_wanted(is_terminal: bool, no_color: Option<&str>, term: Option<&str>) -> bool {
    is_terminal && no_color.is_none_or(str::is_empty) && term != Some("dumb")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(r: &[&[&str]]) -> Vec<Vec<String>> {
        r.iter().map(|c| c.iter().map(|s| (*s).to_owned()).collect()).collect()
    }

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let t = render(
            &["ID", "NAME", "DEVICES"],
            &rows(&[&["4026532301", "web", "loop3 loop4"], &["7", "a-longer-name", ""]]),
            None,
        );
        assert_eq!(
            t,
            "ID          NAME           DEVICES\n\
             4026532301  web            loop3 loop4\n\
             7           a-longer-name\n"
        );
    }

    #[test]
    fn the_last_column_wraps_at_spaces_to_fit_the_width() {
        let devices = "loop10 loop11 loop12 loop13 loop14 loop15 loop16";
        let t = render(&["ID", "DEVICES"], &rows(&[&["1", devices]]), Some(30));
        for l in t.lines() {
            assert!(l.chars().count() <= 30, "{l:?} in\n{t}");
        }
        assert_eq!(t, "ID  DEVICES\n1   loop10 loop11 loop12\n    loop13 loop14 loop15\n    loop16\n");
        // Every word is there once, in order.
        let words: Vec<&str> = t.lines().skip(1).flat_map(|l| l.split_whitespace()).skip(1).collect();
        assert_eq!(words.join(" "), devices);
    }

    #[test]
    fn a_terminal_too_narrow_still_gets_every_cell() {
        let t = render(&["A-WIDE-HEADER", "DEVICES"], &rows(&[&["x", "a-very-long-device-name b"]]), Some(10));
        assert_eq!(t, "A-WIDE-HEADER  DEVICES\nx              a-very-long-device-name\n               b\n");
        assert_eq!(render(&["ID", "X"], &[], Some(10)), "ID  X\n");
    }

    #[test]
    fn event_lines_align_and_colour_only_when_asked() {
        let a = Event::device("assign", "loop3", "b:7:3", Some("id:7 (web)".into()));
        let g = Event {
            event: "global".into(),
            device: Some("fuse".into()),
            dev: Some("c:10:229".into()),
            ns: None,
            global: Some(true),
        };
        let n = Event::ns("ns-gone", "id:7");
        assert_eq!(event_line(&a, false), "assign   loop3        b:7:3      ns=id:7 (web)");
        assert_eq!(event_line(&g, false), "global   fuse         c:10:229   - global=true");
        assert_eq!(event_line(&n, false), "ns-gone  -            -          ns=id:7");
        assert_eq!(event_line(&a, true), "\x1b[32massign  \x1b[0m loop3        b:7:3      ns=id:7 (web)");
        let other = Event::ns("something", "id:1");
        assert!(!event_line(&other, true).contains('\x1b'));
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color_or_a_dumb_term() {
        assert!(colour_wanted(true, None, Some("xterm-256color")));
        assert!(colour_wanted(true, Some(""), None));
        assert!(!colour_wanted(false, None, Some("xterm")));
        assert!(!colour_wanted(true, Some("1"), Some("xterm")));
        assert!(!colour_wanted(true, None, Some("dumb")));
    }
}
