//! The `paynotify` command line: parses flags and hands off to a command module.

mod deliveries_cmd;
mod demo_cmd;
mod demo_receiver;
mod demo_summary;
mod dlq_cmd;
mod ops_cmd;
mod progress;
mod reconcile_cmd;
mod simulate_cmd;
mod testpki_cmd;
mod txn_cmd;
mod unionpay_cmd;
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
    /// Run ingest and workers until Ctrl-C or SIGTERM.
    Serve(ops_cmd::ConfigArg),
    /// Look up payments in the ledger.
    #[command(subcommand)]
    Txn(TxnCommand),
    /// Inspect the dead-letter queue.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Re-enqueue archived notifications of a time range (idempotent).
    Replay(ops_cmd::Replay),
    /// Check that every archived notification is accounted for and the ledger adds up.
    Reconcile(reconcile_cmd::Args),
    /// Events parked in the ledger, waiting for their payment.
    #[command(subcommand)]
    Parked(ParkedCommand),
    /// Outgoing events to the merchant's endpoints (docs/events.md).
    #[command(subcommand)]
    Deliveries(DeliveriesCommand),
    /// AWS backend set-up.
    #[command(subcommand)]
    Aws(AwsCommand),
    /// Read the raw archive.
    #[command(subcommand)]
    Archive(ArchiveCommand),
    /// UnionPay: status queries and the daily settlement file.
    #[command(subcommand)]
    Unionpay(UnionpayCommand),
    /// Send signed UnionPay-style notifications to a running paynotify.
    Simulate(simulate_cmd::Args),
    /// Run the whole pipeline on a fresh data directory with simulated traffic.
    Demo(demo_cmd::Args),
}

#[derive(Debug, Subcommand)]
enum TxnCommand {
    /// A payment's state and events.
    Get(txn_cmd::Args),
    /// A payment's whole story as a table: events, PSP times and codes,
    /// amounts, statuses, notifications, and what is parked.
    History(txn_cmd::Args),
    /// The payments of a merchant's order id, each with its state and
    /// events.
    Find(txn_cmd::Find),
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Dead letters with their reasons.
    List(dlq_cmd::List),
    /// One dead letter: reason, error, the request, and why it does not verify.
    Show(dlq_cmd::Show),
    /// Move dead letters back to the queue (all, or one reason).
    Redrive(dlq_cmd::Redrive),
    /// Delete dead letters (one reason, or all); the archive keeps their bytes.
    Purge(dlq_cmd::Purge),
}

#[derive(Debug, Subcommand)]
enum ParkedCommand {
    /// Parked events, oldest first, with how long they have waited and any conflict.
    List(reconcile_cmd::ParkedList),
    /// Takes a parked event out of the ledger, with a record of it and a
    /// note (audit/parked-resolved/ in the archive).
    Resolve(reconcile_cmd::ParkedResolve),
    /// Sets a parked event aside as a dead letter (reason `set_aside`,
    /// pointing at its archived notification) and takes it out of the
    /// ledger; `dlq redrive` brings it back once its payment can take it.
    DeadLetter(reconcile_cmd::ParkedResolve),
}

#[derive(Debug, Subcommand)]
enum DeliveriesCommand {
    /// Deliveries, oldest event first (filter by endpoint, payment, status, time).
    List(deliveries_cmd::List),
    /// One event: its body and its delivery to each endpoint.
    Show(deliveries_cmd::Show),
    /// Send an event to an endpoint again (a dead letter releases the payment's later events).
    Resend(deliveries_cmd::Resend),
    /// Each endpoint: last success, failing since, backlog, lag, disabled.
    Endpoints(ops_cmd::ConfigArg),
    /// Send to a disabled endpoint again.
    Enable(deliveries_cmd::Toggle),
    /// Stop sending to an endpoint; its events wait.
    Disable(deliveries_cmd::Toggle),
}

#[derive(Debug, Subcommand)]
enum AwsCommand {
    /// Create the bucket, queues and table when missing (emulators, first trials).
    Init(ops_cmd::ConfigArg),
}

#[derive(Debug, Subcommand)]
enum UnionpayCommand {
    /// Ask UnionPay about one transaction now, archive the exchange and
    /// apply a final answer.
    Query(unionpay_cmd::Target),
    /// Ask about an order on the source's schedule until UnionPay gives a
    /// final answer (workers do the asking).
    Watch(unionpay_cmd::Target),
    /// Transactions still being asked about.
    Watches(unionpay_cmd::Watches),
    /// The daily settlement file.
    #[command(subcommand)]
    Settlement(SettlementCommand),
}

#[derive(Debug, Subcommand)]
enum SettlementCommand {
    /// Download and archive a day's file.
    Fetch(unionpay_cmd::Settlement),
    /// Compare a day's file with the ledger; exit 1 on any mismatch.
    Reconcile(unionpay_cmd::Settlement),
}

#[derive(Debug, Subcommand)]
enum ArchiveCommand {
    /// List archive keys.
    Ls(ops_cmd::ArchiveLs),
    /// Print one archived envelope.
    Cat(ops_cmd::ArchiveCat),
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

async fn run_async(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(args) => ops_cmd::serve(args).await,
        Command::Txn(TxnCommand::Get(args)) => txn_cmd::get(args).await,
        Command::Txn(TxnCommand::History(args)) => txn_cmd::history(args).await,
        Command::Txn(TxnCommand::Find(args)) => txn_cmd::find_order(args).await,
        Command::Dlq(DlqCommand::List(args)) => dlq_cmd::list(args).await,
        Command::Dlq(DlqCommand::Show(args)) => dlq_cmd::show(args).await,
        Command::Dlq(DlqCommand::Redrive(args)) => dlq_cmd::redrive(args).await,
        Command::Dlq(DlqCommand::Purge(args)) => dlq_cmd::purge(args).await,
        Command::Replay(args) => ops_cmd::replay(args).await,
        Command::Reconcile(args) => reconcile_cmd::run(args).await,
        Command::Parked(ParkedCommand::List(args)) => reconcile_cmd::parked_list(args).await,
        Command::Parked(ParkedCommand::Resolve(args)) => reconcile_cmd::parked_resolve(args).await,
        Command::Parked(ParkedCommand::DeadLetter(args)) => {
            reconcile_cmd::parked_dead_letter(args).await
        }
        Command::Deliveries(c) => match c {
            DeliveriesCommand::List(args) => deliveries_cmd::list(args).await,
            DeliveriesCommand::Show(args) => deliveries_cmd::show(args).await,
            DeliveriesCommand::Resend(args) => deliveries_cmd::resend(args).await,
            DeliveriesCommand::Endpoints(args) => deliveries_cmd::endpoints(args).await,
            DeliveriesCommand::Enable(args) => deliveries_cmd::enable(args).await,
            DeliveriesCommand::Disable(args) => deliveries_cmd::disable(args).await,
        },
        Command::Aws(AwsCommand::Init(args)) => ops_cmd::aws_init(args).await,
        Command::Archive(ArchiveCommand::Ls(args)) => ops_cmd::archive_ls(args).await,
        Command::Archive(ArchiveCommand::Cat(args)) => ops_cmd::archive_cat(args).await,
        Command::Unionpay(UnionpayCommand::Query(args)) => unionpay_cmd::query(args).await,
        Command::Unionpay(UnionpayCommand::Watch(args)) => unionpay_cmd::watch(args).await,
        Command::Unionpay(UnionpayCommand::Watches(args)) => unionpay_cmd::watches(args).await,
        Command::Unionpay(UnionpayCommand::Settlement(SettlementCommand::Fetch(args))) => {
            unionpay_cmd::fetch(args).await
        }
        Command::Unionpay(UnionpayCommand::Settlement(SettlementCommand::Reconcile(args))) => {
            unionpay_cmd::reconcile(args).await
        }
        Command::Simulate(args) => simulate_cmd::run(args).await,
        Command::Demo(args) => demo_cmd::run(args).await,
        Command::Verify(args) => verify_cmd::run(args).await,
        Command::Testpki(args) => testpki_cmd::run(args),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run_async(cli.command)));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("paynotify: {e:#}");
            ExitCode::from(2)
        }
    }
}
