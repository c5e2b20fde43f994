//! The `paynotify` command line: parses flags and hands off to a command module.

mod testpki_cmd;
mod verify_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Receive payment notifications and turn them into a correct payment ledger.
#[derive(Debug, Parser)]
#[command(name = "paynotify", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Verify one raw notification body read from stdin and print a JSON verdict.
    Verify(verify_cmd::Args),
    /// Generate a UnionPay-shaped test PKI and a config snippet that trusts it.
    Testpki(testpki_cmd::Args),
}

/// Prints to stdout; a closed pipe (`| head`) ends output quietly instead of panicking.
///
/// # Errors
/// Other write errors.
pub(crate) fn print_stdout(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Verify(args) => verify_cmd::run(args),
        Command::Testpki(args) => testpki_cmd::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("paynotify: {e:#}");
            ExitCode::from(2)
        }
    }
}
