//! Batch scripts: `gaffer submit job.sh` reads the flags in the script's leading comment
//! block — `#GAFFER --flag value` with the CLI's own flag names, and the common `#SBATCH`
//! options, translated — the way `sbatch` does. Pure: text in, flags and warnings out.

use std::path::Path;

/// Largest script `gaffer submit` reads.
pub const MAX_SCRIPT: u64 = gaffer_api::batch::MAX_SCRIPT_BYTES as u64;

/// What a script's directives ask for.
#[derive(Debug, Default, PartialEq)]
pub struct Directives {
    /// `gaffer submit` flags, in order (`#SBATCH` ones translated).
    pub args: Vec<String>,
    /// `#SBATCH` options gaffer does not support, as written (e.g. `--partition=gpu`).
    pub unsupported: Vec<String>,
    /// The script has `#SBATCH` lines: its tasks see Slurm's variables.
    pub slurm: bool,
    /// From `#SBATCH --array A-B:S`: the array id of task 0 and the step.
    pub array_ids: Option<(u32, u32)>,
    /// From `#SBATCH --export` (Slurm's default: the whole submit environment).
    pub export: Export,
}

/// Which of the submitting shell's variables a Slurm-style job gets.
#[derive(Debug, Default, PartialEq)]
pub enum Export {
    /// All of them (Slurm's default), plus these.
    #[default]
    All,
    /// Only these: names taken from the environment, or NAME=VALUE.
    Only(Vec<String>),
    /// All of them, plus these NAME=VALUE or names.
    AllAnd(Vec<String>),
}

/// Whether `path` is a batch script: a regular file that starts with `#!`, or an executable
/// text file. Binaries (a NUL in the first 4 KiB) are commands, not scripts.
pub fn is_script(path: &Path) -> bool {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    if !meta.is_file() {
        return false;
    }
    let mut head = Vec::with_capacity(4096);
    let read = std::fs::File::open(path).and_then(|f| f.take(4096).read_to_end(&mut head));
    if read.is_err() || head.contains(&0) {
        return false;
    }
    head.starts_with(b"#!") || (meta.permissions().mode() & 0o111 != 0 && !head.is_empty())
}

/// Reads the directives of a script: the comment lines after an optional `#!` line, up to
/// the first line that is neither a comment nor blank. Errors name the line.
pub fn parse(body: &str) -> Result<Directives, String> {
    let mut d = Directives::default();
    let mut slurm_opts = Vec::new();
    for (n, line) in body.lines().enumerate() {
        let t = line.trim();
        if n == 0 && t.starts_with("#!") {
            continue;
        }
        if t.is_empty() {
            continue;
        }
        if !t.starts_with('#') {
            break;
        }
        let (kind, rest) = match (t.strip_prefix("#GAFFER"), t.strip_prefix("#SBATCH")) {
            (Some(r), _) => ("#GAFFER", r),
            (_, Some(r)) => ("#SBATCH", r),
            _ => continue,
        };
        if !rest.is_empty() && !rest.starts_with(char::is_whitespace) {
            continue;
        }
        let words = shlex::split(rest)
            .ok_or_else(|| format!("line {}: unbalanced quotes in `{t}`", n + 1))?;
        if kind == "#GAFFER" {
            if let Some(w) = words.iter().find(|w| !w.starts_with('-')) {
                if words.first() == Some(w) {
                    return Err(format!(
                        "line {}: `{t}`: directives are flags (`#GAFFER --flag value`), not `{w}`",
                        n + 1
                    ));
                }
            }
            d.args.extend(words);
        } else {
            d.slurm = true;
            slurm_opts.extend(words.into_iter().map(|w| (n + 1, w)));
        }
    }
    translate(&slurm_opts, &mut d)?;
    Ok(d)
}

/// The `#SBATCH` options gaffer knows: (long name, short letter, what it becomes).
const SBATCH: &[(&str, Option<char>)] = &[
    ("job-name", Some('J')),
    ("array", Some('a')),
    ("cpus-per-task", Some('c')),
    ("mem", None),
    ("mem-per-cpu", None),
    ("time", Some('t')),
    ("output", Some('o')),
    ("error", Some('e')),
    ("chdir", Some('D')),
    ("dependency", Some('d')),
    ("export", None),
    ("hold", Some('H')),
    ("ntasks", Some('n')),
    ("nodes", Some('N')),
];

/// Options that take no value.
const FLAGS: &[&str] = &["hold"];

/// Translates `#SBATCH` options (with their line numbers) into gaffer flags.
fn translate(opts: &[(usize, String)], d: &mut Directives) -> Result<(), String> {
    let mut i = 0;
    let (mut cpus, mut mem_per_cpu) = (None::<f64>, None::<String>);
    let (mut export, mut unsupported) = (None, Vec::new());
    while i < opts.len() {
        let (line, word) = &opts[i];
        i += 1;
        let Some((name, inline)) = option_name(word) else {
            d.unsupported.push(word.clone());
            continue;
        };
        let Some(&(long, _)) = SBATCH.iter().find(|(l, s)| {
            *l == name || (name.len() == 1 && s.is_some_and(|c| name.starts_with(c)))
        }) else {
            // Skip an unknown option's separate value too, when it looks like one.
            let mut shown = word.clone();
            if inline.is_none() && opts.get(i).is_some_and(|(_, w)| !w.starts_with('-')) {
                shown = format!("{word} {}", opts[i].1);
                i += 1;
            }
            d.unsupported.push(shown);
            continue;
        };
        let value = if FLAGS.contains(&long) {
            String::new()
        } else if let Some(v) = inline {
            v
        } else if let Some((_, v)) = opts.get(i) {
            i += 1;
            v.clone()
        } else {
            return Err(format!("line {line}: #SBATCH {word} needs a value"));
        };
        let bad = |why: String| format!("line {line}: #SBATCH {word} {value}: {why}");
        // A flag, and its value unless it is empty (a flag without one).
        let mut push = |flag: &str, v: String| {
            d.args.push(flag.to_string());
            if !v.is_empty() {
                d.args.push(v);
            }
        };
        match long {
            "job-name" => push("--name", value),
            "cpus-per-task" => {
                let c: f64 = value.parse().map_err(|_| bad("expected a number".into()))?;
                cpus = Some(c);
                push("--cpus", value);
            }
            "mem" => push("--memory", slurm_size(&value).map_err(bad)?),
            "mem-per-cpu" => mem_per_cpu = Some(slurm_size(&value).map_err(bad)?),
            "time" => {
                if let Some(secs) = slurm_time(&value).map_err(bad)? {
                    push("--timeout", format!("{secs}s"));
                }
            }
            "output" => push("--stdout", value),
            "error" => push("--stderr", value),
            "chdir" => push("--workdir", value),
            "hold" => push("--hold", String::new()),
            "array" => {
                let (count, first, step, limit) = slurm_array(&value).map_err(bad)?;
                let spec = match limit {
                    Some(k) => format!("{count}%{k}"),
                    None => count.to_string(),
                };
                push("--array", spec);
                d.array_ids = Some((first, step));
            }
            "dependency" => {
                for (flag, v) in slurm_dependency(&value).map_err(bad)? {
                    push(flag, v.unwrap_or_default());
                }
            }
            "export" => export = Some(slurm_export(&value)),
            // One task on one node is what every gaffer task is.
            "ntasks" | "nodes" if value == "1" || value == "1-1" => {}
            _ => unsupported.push(format!("--{long}={value}")),
        }
    }
    d.unsupported.extend(unsupported);
    if let Some(e) = export {
        d.export = e;
    }
    if let Some(per_cpu) = mem_per_cpu {
        let bytes = gaffer_api::units::parse_size(&per_cpu).map_err(|e| e.to_string())?;
        let total = (bytes.0 as f64 * cpus.unwrap_or(1.0)).ceil() as u64;
        d.args.push("--memory".into());
        d.args.push(total.to_string());
    }
    Ok(())
}

/// `--name=value`, `--name`, `-Xvalue` or `-X`: the option's name and inline value.
fn option_name(word: &str) -> Option<(&str, Option<String>)> {
    if let Some(long) = word.strip_prefix("--") {
        return Some(match long.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (long, None),
        });
    }
    let short = word.strip_prefix('-')?;
    let mut chars = short.chars();
    let c = chars.next()?;
    let rest = chars.as_str();
    let rest = rest.strip_prefix('=').unwrap_or(rest);
    Some((
        &short[..c.len_utf8()],
        (!rest.is_empty()).then(|| rest.to_string()),
    ))
}

/// Slurm's memory sizes: a number of megabytes, or with a K, M, G or T suffix.
fn slurm_size(v: &str) -> Result<String, String> {
    let v = v.trim();
    let (digits, unit) = match v.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&v[..i], &v[i..]),
        None => (v, "M"),
    };
    let unit = unit.trim_end_matches(['B', 'b']);
    if digits.is_empty() || !matches!(unit.to_ascii_uppercase().as_str(), "K" | "M" | "G" | "T") {
        return Err("expected a size in megabytes, or with a K, M, G or T suffix".into());
    }
    Ok(format!("{digits}{}", unit.to_ascii_uppercase()))
}

/// Slurm's time limits: `MM`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`, `D-HH:MM:SS`, or
/// `UNLIMITED`/`infinite` (no limit, `None`). In seconds.
pub fn slurm_time(v: &str) -> Result<Option<u64>, String> {
    if matches!(v.to_ascii_lowercase().as_str(), "unlimited" | "infinite") {
        return Ok(None);
    }
    let bad = || "expected MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS".to_string();
    let num = |s: &str| -> Result<u64, String> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse().map_err(|_| bad())
    };
    let (days, rest) = match v.split_once('-') {
        Some((d, r)) => (Some(num(d)?), r),
        None => (None, v),
    };
    let parts: Vec<u64> = rest.split(':').map(num).collect::<Result<_, _>>()?;
    let (d, hms) = match (days, parts.as_slice()) {
        (None, [m]) => (0, [0, *m, 0]),
        (None, [m, s]) => (0, [0, *m, *s]),
        (None, [h, m, s]) => (0, [*h, *m, *s]),
        (Some(d), [h]) => (d, [*h, 0, 0]),
        (Some(d), [h, m]) => (d, [*h, *m, 0]),
        (Some(d), [h, m, s]) => (d, [*h, *m, *s]),
        _ => return Err(bad()),
    };
    // Numbers that large are typos: years of seconds overflow nothing, but u64 could.
    let secs = d
        .checked_mul(86_400)
        .and_then(|t| t.checked_add(hms[0].checked_mul(3600)?))
        .and_then(|t| t.checked_add(hms[1].checked_mul(60)?))
        .and_then(|t| t.checked_add(hms[2]))
        .ok_or_else(|| "the time limit is too large".to_string())?;
    if secs == 0 {
        return Err("a time limit of 0 means none in Slurm: give UNLIMITED or leave it out".into());
    }
    Ok(Some(secs))
}

/// Slurm's `--array`: `N`, `A-B`, `A-B:S` or an evenly spaced list `A,B,C`, with an optional
/// `%K`. Returns (tasks, first id, step, K).
fn slurm_array(v: &str) -> Result<(u32, u32, u32, Option<u32>), String> {
    let (ids, limit) = match v.split_once('%') {
        Some((ids, k)) => (
            ids,
            Some(
                k.parse::<u32>()
                    .map_err(|_| format!("`%{k}` is not a number"))?,
            ),
        ),
        None => (v, None),
    };
    let num = |s: &str| {
        s.trim()
            .parse::<u32>()
            .map_err(|_| format!("`{s}` is not an array id"))
    };
    let (first, last, step) = if ids.contains(',') {
        let list: Vec<u32> = ids.split(',').map(num).collect::<Result<_, _>>()?;
        let step = if list.len() > 1 {
            list[1].saturating_sub(list[0])
        } else {
            1
        };
        let even = step > 0
            && list
                .windows(2)
                .all(|w| w[0].checked_add(step) == Some(w[1]));
        if !even {
            return Err(
                "gaffer arrays take evenly spaced ids (A-B or A-B:S): this list is not".into(),
            );
        }
        (list[0], *list.last().expect("split gives one item"), step)
    } else {
        let (range, step) = match ids.split_once(':') {
            Some((r, s)) => (r, num(s)?),
            None => (ids, 1),
        };
        match range.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?, step),
            None => (num(range)?, num(range)?, step),
        }
    };
    if last < first || step == 0 {
        return Err("the range is empty".into());
    }
    let count = ((last - first) / step) as u64 + 1;
    if count > gaffer_api::MAX_ARRAY as u64 {
        return Err(format!(
            "{count} tasks: an array has at most {}",
            gaffer_api::MAX_ARRAY
        ));
    }
    Ok((count as u32, first, step, limit))
}

/// Slurm's `--dependency`: `TYPE:ID[:ID...]` joined by `,` (all must hold), as gaffer flags.
fn slurm_dependency(v: &str) -> Result<Vec<(&'static str, Option<String>)>, String> {
    if v.contains('?') {
        return Err("`?` (any one of) is not supported: gaffer waits for all".into());
    }
    let mut out = Vec::new();
    for part in v.split(',') {
        if part == "singleton" {
            out.push(("--singleton", None));
            continue;
        }
        let mut it = part.split(':');
        let kind = it.next().unwrap_or_default();
        let flag = match kind {
            "afterok" => "--after",
            "afterany" => "--after-any",
            "afternotok" => "--after-not-ok",
            _ => {
                return Err(format!(
                    "`{kind}` is not supported (afterok, afterany, afternotok and singleton are)"
                ))
            }
        };
        let ids: Vec<&str> = it.collect();
        if ids.is_empty() {
            return Err(format!("`{part}` names no job"));
        }
        if let Some(id) = ids.iter().find(|i| i.contains('_') || i.contains('+')) {
            return Err(format!(
                "`{id}`: dependencies on single array tasks or with delays are not supported"
            ));
        }
        out.push((flag, Some(ids.join(","))));
    }
    Ok(out)
}

/// Slurm's `--export`: `ALL`, `NONE`, or names and NAME=VALUE pairs (after `ALL,` to add them
/// to the whole environment).
fn slurm_export(v: &str) -> Export {
    let mut items: Vec<String> = v.split(',').map(str::to_string).collect();
    match items.first().map(String::as_str) {
        Some("ALL") => {
            items.remove(0);
            Export::AllAnd(items)
        }
        Some("NONE") => {
            items.remove(0);
            Export::Only(items)
        }
        _ => Export::Only(items),
    }
}

#[cfg(test)]
#[path = "directives_tests.rs"]
mod tests;
