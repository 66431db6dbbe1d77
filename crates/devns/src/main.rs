use clap::Parser;
use devns::commands::Cli;
use devns::commands::oci::runtime;
use std::process::ExitCode;

/// Exit status for errors of devns itself, as container runtimes use it.
const EXIT_DEVNS_ERROR: u8 = 125;

fn main() -> ExitCode {
    // As `devns-runtime` (a symlink), devns is the runtime wrapper alone:
    // every argument is the runtime's.
    let mut argv = std::env::args_os();
    let argv0 = argv.next().unwrap_or_default();
    let cli = if std::path::Path::new(&argv0).file_name().is_some_and(|n| n == runtime::ARGV0) {
        Cli::parse_from(runtime::argv_of_wrapper(argv))
    } else {
        Cli::parse()
    };
    devns::logs::init();
    let json = cli.global.json_errors || cli.global.json;
    if cli.command.ends_on_a_closed_pipe() {
        let _ = devns_sys::signal::default_sigpipe();
    }
    let result = cli.command.run(&cli.global);
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            if json {
                eprintln!("{}", serde_json::json!({ "error": format!("{e:#}") }));
            } else {
                eprintln!("devns: {e:#}");
            }
            ExitCode::from(EXIT_DEVNS_ERROR)
        }
    }
}
