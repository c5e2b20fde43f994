//! `paynotify testpki`: a UnionPay-shaped test PKI for demos and simulation.

use std::path::PathBuf;
use std::process::ExitCode;

use paynotify_shared::config::UNIONPAY_IDENTITY;
use paynotify_shared::testpki::{generate, TestPkiOptions};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory to write the certificates, key and config snippet into.
    #[arg(long)]
    dir: PathBuf,
    /// The signing certificate's CN identity (third `@` field).
    #[arg(long, default_value = UNIONPAY_IDENTITY)]
    identity: String,
    /// Merchant ids the generated source accepts.
    #[arg(long = "merchant", default_value = "777290058167151")]
    merchants: Vec<String>,
}

/// Generates and writes the PKI.
///
/// # Errors
/// Generation or write failures.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let options = TestPkiOptions {
        identity: args.identity.clone(),
        ..TestPkiOptions::default()
    };
    let pki = generate(&options)?;
    pki.write(&args.dir, &args.identity, &args.merchants)?;
    crate::print_stdout(&format!(
        "wrote a TEST PKI to {dir}: root.pem, middle.pem, signer.pem (certId {id}), signer.key.pem\n\
         and unionpay-source.toml, a config that trusts it. Never use it in production.",
        dir = args.dir.display(),
        id = pki.leaf_cert_id
    ))?;
    Ok(ExitCode::SUCCESS)
}
