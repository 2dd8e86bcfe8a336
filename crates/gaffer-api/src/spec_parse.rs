//! Reading specs from JSON: one spec, a list, or `{"jobs": [...]}`, every problem reported
//! with its field and position.

use crate::spec::{FieldError, JobSpec};

/// Parses one spec or a list of specs from JSON and validates them; on error returns every
/// problem of every spec, each naming its field (and its position in a list).
pub fn parse_specs_json(body: &[u8]) -> Result<Vec<JobSpec>, Vec<FieldError>> {
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| vec![FieldError::new("", format!("invalid JSON: {e}"))])?;
    specs_from_value(v)
}

/// Converts a JSON value (one spec object, a list, or `{"jobs": [...]}`) into validated specs.
pub fn specs_from_value(v: serde_json::Value) -> Result<Vec<JobSpec>, Vec<FieldError>> {
    let (items, listed) = match v {
        serde_json::Value::Array(a) => (a, true),
        serde_json::Value::Object(mut o) if o.len() == 1 && o.contains_key("jobs") => {
            match o.remove("jobs") {
                Some(serde_json::Value::Array(a)) => (a, true),
                _ => return Err(vec![FieldError::new("jobs", "must be a list of job specs")]),
            }
        }
        other @ serde_json::Value::Object(_) => (vec![other], false),
        _ => {
            return Err(vec![FieldError::new(
                "",
                "expected a job spec object or a list of them",
            )])
        }
    };
    if items.is_empty() {
        return Err(vec![FieldError::new("", "the list of jobs is empty")]);
    }
    let mut specs = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let parsed = {
            serde_path_to_error::deserialize::<_, JobSpec>(item).map_err(|e| {
                let path = e.path().to_string();
                let msg = e.inner().to_string();
                let field = if path.is_empty() || path == "." {
                    field_from_serde_message(&msg)
                } else {
                    path
                };
                FieldError {
                    index: listed.then_some(i),
                    field,
                    message: msg,
                }
            })
        };
        match parsed {
            Ok(spec) => match spec.validate() {
                Ok(()) => specs.push(spec),
                Err(errs) => errors.extend(errs.into_iter().map(|mut e| {
                    e.index = listed.then_some(i);
                    e
                })),
            },
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(specs)
    } else {
        Err(errors)
    }
}

/// Best effort: pulls the field name out of serde's "unknown field `x`" style messages.
fn field_from_serde_message(msg: &str) -> String {
    for marker in ["unknown field `", "missing field `"] {
        if let Some(rest) = msg.split(marker).nth(1) {
            if let Some(end) = rest.find('`') {
                return rest[..end].to_string();
            }
        }
    }
    String::new()
}
