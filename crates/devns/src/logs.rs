//! Where devns's log goes. Under systemd, when stderr is the journal's
//! stream (`JOURNAL_STREAM`, systemd.exec(5)), to the journal natively:
//! each event's fields kept as journal fields (`DEVNS_NS`, `DEVNS_PID`,
//! ...), its level as `PRIORITY`, `SYSLOG_IDENTIFIER=devns`. Else to
//! stderr as text, coloured only on a terminal. `DEVNS_LOG` filters both
//! (default `warn`).

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The prefix of every journal field of an event's own.
const FIELD_PREFIX: &str = "DEVNS";

pub fn init() {
    let filter = || EnvFilter::try_from_env("DEVNS_LOG").unwrap_or_else(|_| "warn".into());
    if stderr_is_journal() {
        match tracing_journald::layer() {
            Ok(journal) => {
                let journal =
                    journal.with_syslog_identifier("devns".into()).with_field_prefix(Some(FIELD_PREFIX.into()));
                tracing_subscriber::registry().with(filter()).with(journal).init();
                return;
            }
            Err(e) => eprintln!("devns: logging to stderr, the journal's socket cannot be used: {e}"),
        }
    }
    let stderr = rustix::stdio::stderr();
    tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .with_ansi(rustix::termios::isatty(stderr))
        .without_time()
        .init();
}

fn stderr_is_journal() -> bool {
    let var = std::env::var("JOURNAL_STREAM").ok();
    var.is_some()
        && rustix::fs::fstat(rustix::stdio::stderr())
            .is_ok_and(|st| devns_core::keep::is_journal_stream(var.as_deref(), st.st_dev, st.st_ino))
}
