//! `chunkwise info STORE [--json]`.

use std::path::PathBuf;

use super::{CliResult, Global, Outcome, say};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The array (a store, or anything the other commands read).
    store: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(a: Args, _g: &Global) -> CliResult {
    let info = chunkwise::info(&chunkwise::Input::open(&a.store)?)?;
    if a.json {
        say(serde_json::to_string_pretty(&info.to_json()).expect("plain JSON"))?;
    } else {
        say(&info)?;
    }
    Ok(Outcome::Ok)
}
