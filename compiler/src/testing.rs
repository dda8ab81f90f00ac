//! Running a policy's `test` blocks: build each case's packet, classify it, resolve the
//! actions of the matching rule, and compare with what the case expects.

use netvm_lang::policy::{Actions, Expectation, Policy, TestCase};
use netvm_packet::PacketSpec;

use crate::interp::Interpreter;
use crate::ir::NO_PORT;

/// The result of one test case.
#[derive(Debug, Clone)]
pub struct CaseOutcome {
    /// Index of the `test` block and of the case within it.
    pub test: usize,
    pub case: usize,
    /// The rule that matched (`None`: the default).
    pub matched: Option<usize>,
    /// `None` when the case passed; otherwise what went wrong, in words.
    pub failure: Option<String>,
}

impl CaseOutcome {
    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }
}

/// The frame a test case describes.
pub fn case_frame(case: &TestCase) -> Result<Vec<u8>, String> {
    let mut spec = PacketSpec::new(case.base);
    for &(field, value) in &case.fields {
        spec.set(field, value);
    }
    spec.payload = case.payload.clone();
    spec.payload_bytes = case.payload_bytes.clone();
    spec.build().map_err(|e| e.to_string())
}

/// The input port of a test case as the engines take it.
pub fn case_port(case: &TestCase) -> u32 {
    case.in_port.map_or(NO_PORT, |p| p as u32)
}

/// Runs every case of every test block of the policy.
pub fn run_tests(policy: &Policy, engine: &Interpreter) -> Vec<CaseOutcome> {
    let mut outcomes = Vec::new();
    for (t, test) in policy.tests.iter().enumerate() {
        for (c, case) in test.cases.iter().enumerate() {
            outcomes.push(run_case(policy, engine, case, t, c));
        }
    }
    outcomes
}

fn rule_name(policy: &Policy, index: Option<usize>) -> String {
    index.map_or("default".to_string(), |i| policy.rules[i].name.clone())
}

fn run_case(
    policy: &Policy,
    engine: &Interpreter,
    case: &TestCase,
    test: usize,
    index: usize,
) -> CaseOutcome {
    let frame = match case_frame(case) {
        Ok(f) => f,
        Err(e) => {
            return CaseOutcome {
                test,
                case: index,
                matched: None,
                failure: Some(format!("the packet cannot be built: {e}")),
            }
        }
    };
    let matched = engine.classify(&frame, case_port(case));
    let actual: &Actions = policy.actions_of(matched);
    let failure = match &case.expect {
        Expectation::Rule(expected) if *expected == matched => None,
        Expectation::Rule(expected) => Some(format!(
            "expected rule {}, but rule {} matched (=> {})",
            rule_name(policy, *expected),
            rule_name(policy, matched),
            policy.describe_actions(actual)
        )),
        Expectation::Actions(expected) if expected.same_as(actual) => None,
        Expectation::Actions(expected) => Some(format!(
            "expected => {}, but rule {} matched => {}",
            policy.describe_actions(expected),
            rule_name(policy, matched),
            policy.describe_actions(actual)
        )),
    };
    CaseOutcome {
        test,
        case: index,
        matched,
        failure,
    }
}
