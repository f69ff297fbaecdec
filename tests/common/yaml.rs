//! YAML files read as JSON values with PyYAML (installed with kubernetes-validate by
//! `cargo xtask setup`), so that the tests that read deploy/ add no crate.

use std::{path::Path, process::Command};

use serde_json::Value;

/// The YAML documents of `file`, as JSON values (empty documents left out).
pub fn yaml_documents(file: &Path) -> Vec<Value> {
    let script = "import json, sys, yaml\n\
                  docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]\n\
                  json.dump(docs, sys.stdout)";
    let out = Command::new("python3")
        .args(["-c", script, file.to_str().unwrap()])
        .output()
        .expect("running python3 (run `cargo xtask setup`)");
    assert!(
        out.status.success(),
        "{} is not valid YAML (or PyYAML is missing: run `cargo xtask setup`):\n{}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
