//! `chunkwise status OUT`: which parts of a job are done, running or missing.

use std::path::PathBuf;

use serde_json::json;

use super::{CliResult, Global, Outcome, say};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The job's output (the array a kernel command or convert writes, or the file of a
    /// reduction, `where` or `graph`).
    out: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(a: Args, _g: &Global) -> CliResult {
    // A pyramid being built into OUT, else a job's.
    let s = match chunkwise::pyramid_status(&a.out)? {
        Some(s) => s,
        None => chunkwise::job_status(&a.out)?,
    };
    if a.json {
        let parts: Vec<_> = s
            .parts
            .iter()
            .map(|p| {
                json!({"part": format!("{}/{}", p.index, p.of), "state": p.state(),
                       "chunks": p.chunks, "done": p.done, "running": p.running})
            })
            .collect();
        say(serde_json::to_string_pretty(&json!({
            "path": s.path,
            "published": s.published,
            "fingerprint": s.fingerprint,
            "building": s.building,
            "chunks_total": s.chunks_total,
            "chunks_done": s.chunks_done,
            "parts": parts,
        }))
        .expect("plain JSON"))?;
        return Ok(Outcome::Ok);
    }
    let name = a.out.display();
    if s.published {
        say(format!(
            "{name}: published{}",
            if s.building {
                " (and a new job is being built beside it)"
            } else {
                ""
            }
        ))?;
    }
    if s.building && s.chunks_total == 0 {
        // A job whose output is one file: each part's result is saved or not.
        let saved = s.parts.iter().filter(|p| p.done > 0).count();
        say(format!(
            "{name}: job in {} parts, {saved} saved (the last to finish writes {name})",
            s.parts.len()
        ))?;
        for p in &s.parts {
            say(format!("part {}/{}: {}", p.index, p.of, p.state()))?;
        }
    } else if s.building {
        say(format!(
            "{name}: job in {} part{}, {} of {} chunks done",
            s.parts.len(),
            if s.parts.len() == 1 { "" } else { "s" },
            s.chunks_done,
            s.chunks_total
        ))?;
        for p in &s.parts {
            say(format!(
                "part {}/{}: {} ({} of {} chunks)",
                p.index,
                p.of,
                p.state(),
                p.done,
                p.chunks
            ))?;
        }
    }
    Ok(Outcome::Ok)
}
