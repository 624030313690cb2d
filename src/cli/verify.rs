//! `chunkwise verify STORE`: exit 0 if every stored chunk decodes, 1 if any does not.

use std::path::PathBuf;

use serde_json::json;

use super::{CliResult, Global, Outcome, say};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The array directory.
    store: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(a: Args, g: &Global) -> CliResult {
    let r = chunkwise::verify(&a.store, &g.run())?;
    if a.json {
        let bad: Vec<_> = r
            .bad
            .iter()
            .map(|b| json!({"key": b.key, "reason": b.reason}))
            .collect();
        say(serde_json::to_string_pretty(&json!({
            "ok": r.ok(),
            "chunks_total": r.chunks_total,
            "chunks_checked": r.chunks_checked,
            "bad": bad,
        }))
        .expect("plain JSON"))?;
    } else {
        for b in &r.bad {
            say(format!("bad chunk {}: {}", b.key, b.reason))?;
        }
        if !g.quiet || !r.ok() {
            say(format!(
                "{}: {} of {} chunks stored, {} decoded, {} bad",
                a.store.display(),
                r.chunks_checked,
                r.chunks_total,
                r.chunks_checked - r.bad.len() as u64,
                r.bad.len()
            ))?;
        }
    }
    Ok(if r.ok() { Outcome::Ok } else { Outcome::Failed })
}
