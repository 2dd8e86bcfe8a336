//! Unit tests of job specs.

use super::*;

fn spec(json: &str) -> Result<Vec<JobSpec>, FieldError> {
    parse_specs_json(json.as_bytes()).map_err(|mut e| e.remove(0))
}

#[test]
fn a_batch_reports_every_error_of_every_spec() {
    let errs = parse_specs_json(
        br#"[{"command": ["ok"]}, {"command": [], "bogus": 1}, {"shell": "x", "array": 0}]"#,
    )
    .unwrap_err();
    let got: Vec<_> = errs.iter().map(|e| (e.index, e.field.as_str())).collect();
    assert_eq!(got, [(Some(1), "bogus"), (Some(2), "array")]);
}

#[test]
fn minimal_spec_parses_and_validates() {
    let s = &spec(r#"{"command": ["echo", "hi"]}"#).unwrap()[0];
    s.validate().unwrap();
    assert_eq!(s.display_name(), "echo");
    assert_eq!(s.task_count(), 1);
}

#[test]
fn units_parse_inside_specs() {
    let s = &spec(
        r#"{"shell": "true", "resources": {"memory": "256M", "cpus": 0.5}, "timeout": "2s"}"#,
    )
    .unwrap()[0];
    assert_eq!(s.resources.memory, Some(ByteSize(256 << 20)));
    assert_eq!(s.timeout, Some(DurationSpec(2000)));
    assert_eq!(s.argv(), vec!["/bin/sh", "-c", "true"]);
}

#[test]
fn unknown_fields_are_named() {
    let e = spec(r#"{"command": ["x"], "comand": 1}"#).unwrap_err();
    assert_eq!(e.field, "comand");
    let e = spec(r#"[{"command": ["x"]}, {"command": ["x"], "bogus": 1}]"#).unwrap_err();
    assert_eq!(e.index, Some(1));
}

#[test]
fn bad_units_and_negative_numbers_are_rejected() {
    let e = spec(r#"{"command": ["x"], "resources": {"memory": "12XB"}}"#).unwrap_err();
    assert!(e.message.contains("XB"), "{e}");
    assert_eq!(e.field, "resources.memory");
    let e = spec(r#"{"command": ["x"], "resources": {"mem": 1}}"#).unwrap_err();
    assert_eq!(e.field, "resources.mem");
    assert!(spec(r#"{"command": ["x"], "retries": -1}"#).is_err());
    assert!(spec(r#"{"command": ["x"], "timeout": "abc"}"#).is_err());
}

#[test]
fn validation_names_every_bad_field() {
    let s = JobSpec {
        array: Some(0),
        outputs: vec!["../x".into(), "/etc/*".into(), "ok/*.csv".into()],
        ..Default::default()
    };
    let errs = s.validate().unwrap_err();
    let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["command", "array", "outputs[0]", "outputs[1]"]);
    let big = JobSpec {
        command: vec!["x".into()],
        array: Some(MAX_ARRAY + 1),
        ..Default::default()
    };
    assert_eq!(big.validate().unwrap_err()[0].field, "array");
}

#[test]
fn command_and_shell_are_exclusive() {
    let s = JobSpec {
        command: vec!["x".into()],
        shell: Some("y".into()),
        ..Default::default()
    };
    assert_eq!(s.validate().unwrap_err()[0].field, "command");
}
