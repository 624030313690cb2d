//! `chunkwise slurm-script COMMAND... --parts N`: the sbatch script of an array job whose
//! tasks are the command's parts (spec/SCALE.md §3).

use std::ffi::OsString;

use clap::Parser;

use super::{CliResult, Global, Outcome, parse_size, say};

/// The commands that split into parts, and whether their memory plan is `--memory`.
const SPLITTABLE: &[(&str, bool)] = &[
    ("convert", true),
    ("append", false),
    ("pyramid", true),
    ("gaussian", true),
    ("correlate1d", true),
    ("lut", true),
    ("threshold", true),
    ("eval", true),
    ("cumsum", true),
    ("cumprod", true),
    ("cummax", true),
    ("cummin", true),
    ("neighbourhood-lut", true),
    ("stats", false),
    ("histogram", false),
    ("reduce", false),
    ("where", false),
    ("graph", false),
];

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example: chunkwise slurm-script gaussian in.zarr out.zarr --sigma 2 --memory 8GiB \
                  --parts 16 --time 2:00:00 > smooth.sbatch && sbatch smooth.sbatch"
)]
pub(crate) struct Args {
    /// The chunkwise command to split, with its arguments (without --partition), and this
    /// command's options (--parts, --time, --mem, ...) before, after or among them.
    #[arg(
        required = true,
        num_args = 1..,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND..."
    )]
    command: Vec<OsString>,
}

/// This command's own options, taken out of the command line.
#[derive(Debug, Default)]
struct Opts {
    parts: Option<u32>,
    time: Option<String>,
    mem: Option<u64>,
    cpus: Option<u32>,
    job_name: Option<String>,
    queue: Option<String>,
    max_running: Option<u32>,
}

fn bad(reason: impl Into<String>) -> chunkwise::Error {
    chunkwise::Error::InvalidOption {
        option: "slurm-script",
        reason: reason.into(),
    }
}

/// Splits `args` into this command's options and the command.
fn take_opts(args: &[OsString]) -> chunkwise::Result<(Opts, Vec<String>)> {
    let mut o = Opts::default();
    let mut rest = Vec::new();
    let mut it = args.iter().map(|a| {
        a.to_str()
            .map(str::to_string)
            .ok_or_else(|| bad(format!("{a:?} is not UTF-8")))
    });
    while let Some(a) = it.next() {
        let a = a?;
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let known = [
            "--parts",
            "--time",
            "--mem",
            "--cpus-per-task",
            "--job-name",
            "--queue",
            "--max-running",
        ];
        if !known.contains(&flag.as_str()) {
            rest.push(a);
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => it
                .next()
                .ok_or_else(|| bad(format!("{flag} needs a value")))??,
        };
        let num = |v: &str| -> chunkwise::Result<u32> {
            v.parse::<u32>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| bad(format!("{flag} {v:?}: give a positive number")))
        };
        match flag.as_str() {
            "--parts" => o.parts = Some(num(&value)?),
            "--time" => o.time = Some(value),
            "--mem" => o.mem = Some(parse_size(&value).map_err(|e| bad(format!("--mem: {e}")))?),
            "--cpus-per-task" => o.cpus = Some(num(&value)?),
            "--job-name" => o.job_name = Some(value),
            "--queue" => o.queue = Some(value),
            "--max-running" => o.max_running = Some(num(&value)?),
            _ => unreachable!("known flags only"),
        }
    }
    Ok((o, rest))
}

/// A word as the shell reads it back unchanged.
fn quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%^".contains(c));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Slurm's `--mem` in MiB, rounded up.
fn mib(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20)
}

/// The part of a task's allocation the job's `--memory` plan may take: the rest is the
/// process, its I/O buffers and the allocator's slack.
const PLAN_SHARE: f64 = 0.8;
/// The allocation of a task when neither `--mem` nor `--memory` says.
const DEFAULT_MEM: u64 = 4 << 30;

pub(crate) fn run(a: Args, _g: &Global) -> CliResult {
    let (o, mut cmd) = take_opts(&a.command)?;
    let Some(parts) = o.parts else {
        return Err(bad("give --parts N (the number of array tasks)").into());
    };
    let Some(name) = cmd.first().cloned() else {
        return Err(bad("give the command to split").into());
    };
    let Some(&(_, planned)) = SPLITTABLE.iter().find(|(n, _)| *n == name) else {
        let names: Vec<&str> = SPLITTABLE.iter().map(|(n, _)| *n).collect();
        return Err(bad(format!(
            "{name:?} does not split into parts; these do: {}",
            names.join(", ")
        ))
        .into());
    };
    if cmd
        .iter()
        .any(|a| a == "--partition" || a.starts_with("--partition="))
    {
        return Err(bad("leave --partition out: each task gets its own part").into());
    }
    // The memory plan and the allocation agree: the plan is a share of the allocation.
    let memory = cmd
        .iter()
        .position(|a| a == "--memory")
        .and_then(|i| cmd.get(i + 1));
    let memory = match memory {
        Some(m) => Some(parse_size(m).map_err(|e| bad(format!("--memory: {e}")))?),
        None => None,
    };
    let mem = match (o.mem, memory) {
        (Some(m), _) => m,
        (None, Some(m)) => ((m as f64 / PLAN_SHARE) as u64).max(m + (256 << 20)),
        (None, None) => DEFAULT_MEM,
    };
    if planned && memory.is_none() {
        let plan = (mem as f64 * PLAN_SHARE) as u64;
        cmd.extend(["--memory".to_string(), format!("{}MiB", mib(plan))]);
    }
    // The command must parse as given (with a part), so that a typo fails here, not in
    // every task of the array.
    let mut check = vec!["chunkwise".to_string()];
    check.extend(cmd.iter().cloned());
    check.extend(["--partition".to_string(), format!("0/{parts}")]);
    if let Err(e) = super::Cli::try_parse_from(&check) {
        return Err(bad(format!(
            "the command does not parse: {}",
            e.to_string().lines().next().unwrap_or("")
        ))
        .into());
    }
    let exe = std::env::current_exe().map_err(|e| chunkwise::Error::Io {
        path: "the chunkwise executable".into(),
        source: e,
    })?;
    let cwd = std::env::current_dir().map_err(|e| chunkwise::Error::Io {
        path: ".".into(),
        source: e,
    })?;
    let job_name = o.job_name.unwrap_or_else(|| format!("chunkwise-{name}"));
    let cpus = o.cpus.unwrap_or(2);
    let mut s = String::from("#!/bin/bash\n");
    s += &format!("#SBATCH --job-name={}\n", quote(&job_name));
    s += &format!(
        "#SBATCH --array=0-{}{}\n",
        parts - 1,
        o.max_running.map(|m| format!("%{m}")).unwrap_or_default()
    );
    s += &format!("#SBATCH --cpus-per-task={cpus}\n");
    s += &format!("#SBATCH --mem={}M\n", mib(mem));
    if let Some(t) = &o.time {
        s += &format!("#SBATCH --time={}\n", quote(t));
    }
    if let Some(q) = &o.queue {
        s += &format!("#SBATCH --partition={}\n", quote(q));
    }
    s += &format!("#SBATCH --chdir={}\n", quote(&cwd.to_string_lossy()));
    s += &format!("#SBATCH --output={}-%A_%a.log\n", quote(&job_name));
    s += "#\n";
    s += &format!(
        "# Task I of {parts} computes part I/{parts}; the last part to finish writes the output.\n"
    );
    s += "# A task that fails or is cancelled resumes where it stopped when resubmitted alone:\n";
    s += "#   sbatch --array=I THIS-SCRIPT\n";
    s += "# `chunkwise status OUTPUT` says which parts are done, running or missing.\n";
    s += "set -euo pipefail\n";
    let words: Vec<String> = cmd.iter().map(|w| quote(w)).collect();
    // N is written out, not $SLURM_ARRAY_TASK_COUNT: a task resubmitted alone
    // (`--array=I`) sees a count of 1.
    s += &format!(
        "exec {} --threads \"${{SLURM_CPUS_PER_TASK:-{cpus}}}\" {} \\\n    --partition \"$SLURM_ARRAY_TASK_ID/{parts}\"\n",
        quote(&exe.to_string_lossy()),
        words.join(" ")
    );
    say(s.trim_end())?;
    Ok(Outcome::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_survive_the_shell() {
        assert_eq!(quote("in.zarr"), "in.zarr");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
    }
}
