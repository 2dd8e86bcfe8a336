//! Output collection: after every process of the task is gone, copy the
//! regular files matching the spec's glob patterns from the working directory
//! into `<dir>/outputs/`, preserving their relative paths.
//!
//! Matches whose canonical path lies outside the working directory (symlink
//! escapes) and anything that is not a regular file are skipped silently.
//! Patterns are assumed to be pre-validated; absolute patterns or patterns
//! with `..` are nevertheless refused here as a second line of defence. This
//! module does not delete or move anything in the working directory.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Component, Path};

/// Result of collecting outputs: copied relative paths plus an optional
/// error description for the status message.
pub(crate) struct Collected {
    pub files: Vec<String>,
    pub error: Option<String>,
}

pub(crate) fn collect(work: &Path, dest: &Path, patterns: &[String]) -> Collected {
    let mut out = Collected {
        files: Vec::new(),
        error: None,
    };
    if patterns.is_empty() {
        return out;
    }
    let mut errors: Vec<String> = Vec::new();
    let canon_work = match work.canonicalize() {
        Ok(p) => p,
        Err(e) => {
            out.error = Some(format!(
                "output copy failed: working directory {}: {e}",
                work.display()
            ));
            return out;
        }
    };
    let Some(work_str) = canon_work.to_str() else {
        out.error = Some(format!(
            "output copy failed: working directory {} is not valid UTF-8",
            canon_work.display()
        ));
        return out;
    };
    let base = glob::Pattern::escape(work_str);
    let mut seen = BTreeSet::new();
    for pattern in patterns {
        let rel_pattern = Path::new(pattern);
        if pattern.is_empty()
            || rel_pattern.is_absolute()
            || rel_pattern
                .components()
                .any(|c| matches!(c, Component::ParentDir))
        {
            errors.push(format!("pattern {pattern:?} refused"));
            continue;
        }
        let full = format!("{base}/{pattern}");
        let paths = match glob::glob(&full) {
            Ok(paths) => paths,
            Err(e) => {
                errors.push(format!("pattern {pattern:?}: {e}"));
                continue;
            }
        };
        for entry in paths {
            let Ok(path) = entry else {
                // Unreadable directory during the walk: nothing to copy there.
                continue;
            };
            let Ok(rel) = path.strip_prefix(&canon_work) else {
                continue;
            };
            let Ok(canon) = path.canonicalize() else {
                continue;
            };
            if !canon.starts_with(&canon_work) {
                continue;
            }
            match fs::metadata(&canon) {
                Ok(meta) if meta.is_file() => {}
                _ => continue,
            }
            let Some(rel_str) = rel.to_str() else {
                continue;
            };
            if !seen.insert(rel_str.to_string()) {
                continue;
            }
            let target = dest.join(rel);
            let copied = match target.parent() {
                Some(parent) => fs::create_dir_all(parent),
                None => Ok(()),
            }
            .and_then(|()| fs::copy(&canon, &target));
            match copied {
                Ok(_) => out.files.push(rel_str.to_string()),
                Err(e) => errors.push(format!("{rel_str}: {e}")),
            }
        }
    }
    if !errors.is_empty() {
        out.error = Some(format!("output copy failed: {}", errors.join("; ")));
    }
    out
}
