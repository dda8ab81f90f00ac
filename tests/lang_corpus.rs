//! The data-driven language suite: every `.nvr` file under `tests/lang/`.
//!
//! - `valid/`: must check with no diagnostic at all, and every `test` case must pass.
//! - `invalid/`: the first line says `# expect: E005 E002 ...`, the codes of every diagnostic
//!   the file produces, in source order; the rendered diagnostics are snapshotted (insta), so
//!   a change in wording is reviewed.
//! - `warnings/`: no errors, and exactly the warnings the first line lists.
//!
//! Also: every stdlib module and every example checks clean and passes its own tests.

use std::path::{Path, PathBuf};

use netvm_compiler::testing::run_tests;
use netvm_compiler::{lower, Interpreter};
use netvm_lang::{Checked, RootSource};

fn corpus(dir: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files = Vec::new();
    let mut stack = vec![root];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "nvr") {
                files.push(path);
            }
        }
    }
    files.sort();
    assert!(!files.is_empty(), "no .nvr files under {dir}");
    files
}

fn expected_codes(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).expect("readable");
    let first = text.lines().next().unwrap_or("");
    let codes = first
        .strip_prefix("# expect:")
        .unwrap_or_else(|| panic!("{}: first line must be `# expect: CODES`", path.display()));
    codes.split_whitespace().map(str::to_string).collect()
}

fn relative(path: &Path) -> String {
    path.strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .unwrap_or(path)
        .display()
        .to_string()
}

fn check(path: &Path) -> Checked {
    // Names in diagnostics are relative to the repository, whatever the working directory.
    std::env::set_current_dir(env!("CARGO_MANIFEST_DIR")).expect("cd to the repository");
    netvm_lang::check(RootSource::Path(PathBuf::from(relative(path)))).expect("loads")
}

fn rendered(checked: &Checked) -> String {
    checked
        .diagnostics
        .iter()
        .map(|d| d.render(checked.sources(), false))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Checks clean and passes every test case; returns the number of cases.
fn assert_clean_and_passing(checked: &Checked, name: &str) -> usize {
    assert!(
        checked.diagnostics.is_empty(),
        "{name} should check clean:\n{}",
        rendered(checked)
    );
    let policy = checked
        .policy
        .as_ref()
        .expect("clean policies have a policy");
    let engine = Interpreter::new(lower(policy)).expect("regexes compile");
    let outcomes = run_tests(policy, &engine);
    let failures: Vec<String> = outcomes
        .iter()
        .filter_map(|o| {
            o.failure.as_ref().map(|f| {
                let case = &policy.tests[o.test].cases[o.case];
                let (line, _) = checked
                    .sources()
                    .get(case.span.file)
                    .line_col(case.span.start as usize);
                format!("{name}:{line}: {f}")
            })
        })
        .collect();
    assert!(
        failures.is_empty(),
        "failing cases:\n{}",
        failures.join("\n")
    );
    outcomes.len()
}

#[test]
fn valid_files_check_clean_and_pass_their_tests() {
    let mut cases = 0;
    for path in corpus("tests/lang/valid") {
        cases += assert_clean_and_passing(&check(&path), &relative(&path));
    }
    assert!(cases > 0, "the valid corpus has test cases");
}

/// `None` when the file produces exactly the codes its `# expect:` line lists, in order.
fn codes_mismatch(path: &Path, checked: &Checked) -> Option<String> {
    let codes: Vec<&str> = checked
        .diagnostics
        .iter()
        .map(|d| d.code.as_str())
        .collect();
    let expected = expected_codes(path);
    (codes != expected).then(|| {
        format!(
            "{}: expected {expected:?}, got {codes:?}\n{}",
            relative(path),
            rendered(checked)
        )
    })
}

#[test]
fn invalid_files_report_exactly_the_expected_diagnostics() {
    let mut failures = Vec::new();
    for path in corpus("tests/lang/invalid") {
        let text = std::fs::read_to_string(&path).expect("readable");
        if !text.starts_with("# expect:") {
            continue; // a helper file of a multi-file case (it carries no expectation)
        }
        let checked = check(&path);
        if let Some(mismatch) = codes_mismatch(&path, &checked) {
            failures.push(mismatch);
            continue;
        }
        let name = relative(&path).replace(['/', '.'], "_");
        insta::assert_snapshot!(name, rendered(&checked));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn warning_files_report_exactly_the_expected_warnings() {
    let mut failures = Vec::new();
    for path in corpus("tests/lang/warnings") {
        let checked = check(&path);
        if let Some(mismatch) = codes_mismatch(&path, &checked) {
            failures.push(mismatch);
        } else if checked.policy.is_none() {
            failures.push(format!("{}: warnings only, yet no policy", relative(&path)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn every_stdlib_module_checks_clean_and_passes_its_tests() {
    for (module, _) in netvm_lang::load::STDLIB {
        let checked = netvm_lang::check(RootSource::Std(module.to_string())).expect("stdlib loads");
        let cases = assert_clean_and_passing(&checked, &format!("std.{module}"));
        assert!(cases > 0, "std.{module} has test cases");
    }
}

#[test]
fn every_example_checks_clean_and_passes_its_tests() {
    for path in corpus("examples") {
        let checked = check(&path);
        assert_clean_and_passing(&checked, &relative(&path));
    }
}
