//! The README's examples run as written, in order, against a live `acctor serve` on a
//! fresh data dir: `scripts/readme-examples` extracts every ```sh block and runs it with
//! every curl failing on an HTTP error; this test runs that script with the binary this
//! build produced.

use std::process::Command;

#[test]
fn every_readme_example_runs_against_a_live_server() {
    let root = env!("CARGO_MANIFEST_DIR");
    let output = Command::new("bash")
        .arg(format!("{root}/scripts/readme-examples"))
        .arg(env!("CARGO_BIN_EXE_acctor"))
        .current_dir(root)
        .output()
        .expect("bash runs scripts/readme-examples");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "scripts/readme-examples failed ({}):\n{stdout}\n{stderr}\n\
         (it needs curl, jq and python3: scripts/test installs jq)",
        output.status
    );
    assert!(stdout.contains("README example blocks ran"), "{stdout}");
}
