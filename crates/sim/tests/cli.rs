//! The `zeroscale-sim` binary end to end on the committed sample: the table, JSON, the
//! sweep's recommendation line, the report file, and clear errors.

use std::path::PathBuf;
use std::process::Command;

fn sample() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/azure-llm-code-sample.csv")
}

fn sim(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_zeroscale-sim"))
        .args(args)
        .output()
        .expect("the binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn run_prints_a_table_and_json_with_the_same_numbers() {
    let trace = sample();
    let trace = trace.to_str().unwrap();
    let (ok, table, err) = sim(&["run", "--trace", trace, "--split-models", "2"]);
    assert!(ok, "{err}");
    assert!(
        table.contains("model                    requests"),
        "{table}"
    );
    let total = table
        .lines()
        .find(|l| l.starts_with("total "))
        .expect("a total row");
    assert!(total.split_whitespace().nth(1) == Some("303"), "{total}");
    let (ok, json, err) = sim(&["run", "--trace", trace, "--split-models", "2", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["run"]["total"]["requests"], 303);
    let cold = v["run"]["total"]["cold_starts"].as_u64().unwrap();
    assert_eq!(
        total.split_whitespace().nth(2),
        Some(cold.to_string().as_str())
    );
}

#[test]
fn sweep_answers_the_grace_question_and_writes_a_report() {
    let dir = std::env::temp_dir().join(format!("zeroscale-sim-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let report = dir.join("r.html");
    let trace = sample();
    let (ok, out, err) = sim(&[
        "sweep",
        "--trace",
        trace.to_str().unwrap(),
        "--grace",
        "5s,1m,5m",
        "--model-load",
        "5s",
        "--report",
        report.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("recommendation: "))
        .expect("a recommendation");
    assert!(line.contains("scale-to-zero-grace-period="), "{line}");
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(html.contains("<svg"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn errors_name_the_problem() {
    let dir = std::env::temp_dir().join(format!("zeroscale-sim-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.csv");
    std::fs::write(&bad, "timestamp,model\n1,a\n2,a\nlater,a\n").unwrap();
    let (ok, _, err) = sim(&["run", "--trace", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("line 4: bad timestamp \"later\""), "{err}");
    let trace = sample();
    let (ok, _, err) = sim(&[
        "run",
        "--trace",
        trace.to_str().unwrap(),
        "--config",
        "scale-to-zero-grace-period=2h",
    ]);
    assert!(!ok);
    assert!(
        err.contains("scale-to-zero-grace-period: \"2h\" is invalid"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
