//! Progress bars for long commands (`replay`, `reconcile`, `dlq redrive`,
//! `dlq purge`): drawn on stderr when it is a terminal, hidden when piped or
//! redirected, so output meant for a program stays clean.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` steps (a spinner when the total is unknown) labelled
/// `what`; hidden unless stderr is a terminal.
pub fn bar(len: Option<u64>, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match len {
        Some(n) => ProgressBar::new(n).with_style(
            ProgressStyle::with_template(
                "{msg:>12} [{bar:40}] {pos}/{len} ({per_sec}, {eta} left)",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {msg} {pos} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    bar.set_message(what.to_owned());
    bar
}

/// A callback that moves `bar` to the count it is given (the queue port's
/// `Progress`).
pub fn position(bar: &ProgressBar) -> impl Fn(usize) + Send + Sync {
    let bar = bar.clone();
    move |n| bar.set_position(n as u64)
}
