//! Every shipped scenario parses and validates, and the smallest one runs end to end on an
//! embedded cluster. The full run (all scenarios, several seeds) is the CLI's job:
//! `cargo run -p tollgate-sim -- run simulator/scenarios/*.toml --seeds 2`.

use std::path::PathBuf;

use tollgate_sim::runner::{self, Target};
use tollgate_sim::{evaluate, scenario};

fn scenario_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("simulator/scenarios exists")
        .map(|entry| entry.expect("readable entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_shipped_scenario_parses_validates_and_says_what_it_is_written_from() {
    let files = scenario_files();
    assert!(
        files.len() >= 15,
        "the simulator ships at least 15 runaway scenarios: {files:?}"
    );
    for path in files {
        let loaded = scenario::load(&path).unwrap_or_else(|e| panic!("{e:#}"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("# Written from:"),
            "{} must open with the real failure it is written from",
            path.display()
        );
        assert!(!loaded.scenario.description.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_at_the_budget_boundary_is_granted_exactly_what_fits() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios/08-boundary-burst.toml");
    let loaded = scenario::load(&path).unwrap();
    let output = runner::run(&loaded.scenario, 1, &Target::Embedded)
        .await
        .expect("the scenario runs");
    let result = evaluate::evaluate(&loaded.scenario, &loaded.path, 1, &output, 0);
    assert!(result.passed, "{:#?}", result.checks);
    assert!(
        result.history.violations.is_empty(),
        "{:#?}",
        result.history.violations
    );
    assert_eq!(result.metrics.runaway_grants, 5, "$0.50 left, $0.10 each");
}

/// The recursive loop's file with `old` replaced by `new`, parsed and validated.
fn recursive_loop_with(old: &str, new: &str) -> anyhow::Result<scenario::Scenario> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios/01-recursive-loop.toml");
    let text = std::fs::read_to_string(path).unwrap();
    assert_eq!(text.matches(old).count(), 1, "{old}");
    let parsed: scenario::Scenario = toml::from_str(&text.replace(old, new))?;
    parsed.validate()?;
    Ok(parsed)
}

#[test]
fn a_scenario_must_expect_the_cutoff_it_says_it_proves() {
    recursive_loop_with("proves", "proves").expect("the shipped file validates");
    let limit = recursive_loop_with(r#"proves = "detection""#, r#"proves = "limit""#)
        .expect_err("a limit scenario cut off by a trip");
    assert!(limit.to_string().contains("proves = limit"), "{limit:#}");
    let detection = recursive_loop_with(
        r#"cutoff_by = "tripped:repetition""#,
        r#"cutoff_by = "monthly-cost""#,
    )
    .expect_err("a detection scenario cut off by a limit");
    assert!(
        detection.to_string().contains("proves = detection"),
        "{detection:#}"
    );
    let cause = recursive_loop_with(
        r#"cutoff_by = "tripped:repetition""#,
        r#"cutoff_by = "tripped:boredom""#,
    )
    .expect_err("an unknown trip cause");
    assert!(
        cause
            .to_string()
            .contains("repetition, velocity or shape-velocity"),
        "{cause:#}"
    );
}

#[test]
fn a_repetition_trip_must_be_expected_within_the_configured_count() {
    // The tenant's default repeat_max is 5: at most 3 grants after the first repeat.
    let error = recursive_loop_with(
        "calls_after_first_repeat = 3",
        "calls_after_first_repeat = 4",
    )
    .expect_err("more grants than the repetition count allows");
    assert!(error.to_string().contains("repeat_max 5"), "{error:#}");
}
