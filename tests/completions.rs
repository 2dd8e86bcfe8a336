//! `gaffer completions bash|zsh|fish`: scripts the shells accept, naming the subcommands and
//! their flags.

mod util;

use std::process::Command;

fn completions(shell: &str) -> String {
    let out = Command::new(util::BIN)
        .args(["completions", shell])
        .output()
        .unwrap();
    assert!(out.status.success(), "{shell}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn completion_scripts_load_and_know_the_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let s = completions(shell);
        for word in ["submit", "status", "replicas", "shared-dir"] {
            assert!(s.contains(word), "{shell} completions lack {word}");
        }
    }
    // bash loads it and registers the function for `gaffer`.
    let script = completions("bash");
    let out = Command::new("bash")
        .args(["-c", &format!("{script}\ncomplete -p gaffer")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("_gaffer"),
        "{out:?}"
    );
    let bad = Command::new(util::BIN)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("possible values"));
}
