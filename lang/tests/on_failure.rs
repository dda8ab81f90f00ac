//! `vm NAME[, NAME...] [trusted|untrusted] [on_failure drop|bypass]`: what the checked
//! policy hands the switch, and that `netvm fmt` keeps it. (Diagnostics for bad clauses are
//! in the corpus: tests/lang/invalid/e018_*.nvr and e001_*on_failure*.nvr.)

use netvm_lang::policy::OnFailure;
use netvm_lang::{check_text, print, Policy};

fn policy(text: &str) -> Policy {
    let checked = check_text("on_failure.nvr", text);
    assert!(
        checked.diagnostics.is_empty(),
        "{text}\n{:?}",
        checked.diagnostics
    );
    checked.policy.expect("a clean policy")
}

fn failure_policy_of(policy: &Policy, vm: &str) -> OnFailure {
    policy
        .vms
        .iter()
        .find(|v| v.name == vm)
        .unwrap_or_else(|| panic!("no vm {vm}"))
        .on_failure
}

const TEXT: &str = "\
vm fw trusted on_failure drop
vm ids on_failure bypass
vm w1, w2 untrusted on_failure bypass
vm plain
group web = {w1, w2}
port lan
rule r : tcp => mirror ids, chain fw -> balance web -> plain -> out lan
";

#[test]
fn every_vm_gets_the_failure_policy_of_its_declaration_and_drop_by_default() {
    let policy = policy(TEXT);
    assert_eq!(failure_policy_of(&policy, "fw"), OnFailure::Drop);
    assert_eq!(failure_policy_of(&policy, "ids"), OnFailure::Bypass);
    assert_eq!(failure_policy_of(&policy, "w1"), OnFailure::Bypass);
    assert_eq!(failure_policy_of(&policy, "w2"), OnFailure::Bypass);
    assert_eq!(failure_policy_of(&policy, "plain"), OnFailure::Drop);
    assert_eq!(OnFailure::default(), OnFailure::Drop);
}

#[test]
fn the_failure_policy_is_independent_of_trust() {
    let policy = policy(TEXT);
    let trust: Vec<(&str, bool, OnFailure)> = policy
        .vms
        .iter()
        .map(|v| (v.name.as_str(), v.trusted, v.on_failure))
        .collect();
    assert_eq!(
        trust,
        [
            ("fw", true, OnFailure::Drop),
            ("ids", false, OnFailure::Bypass),
            ("w1", false, OnFailure::Bypass),
            ("w2", false, OnFailure::Bypass),
            ("plain", false, OnFailure::Drop),
        ]
    );
}

#[test]
fn fmt_keeps_each_clause_as_written() {
    let formatted = print::format_source(TEXT).expect("formats");
    assert_eq!(formatted, TEXT);
    let messy = "vm   w1 ,w2   trusted\n   on_failure   bypass\nvm x on_failure drop\n";
    assert_eq!(
        print::format_source(messy).expect("formats"),
        "vm w1, w2 trusted on_failure bypass\nvm x on_failure drop\n"
    );
}

#[test]
fn on_failure_and_bypass_stay_ordinary_names_outside_vm_declarations() {
    let policy = policy(
        "vm bypass on_failure bypass\nconst on_failure = 80\n\
         rule r : tcp.dport == on_failure => to bypass\n",
    );
    assert_eq!(failure_policy_of(&policy, "bypass"), OnFailure::Bypass);
}

#[test]
fn words_round_trip_through_the_enum() {
    for policy in OnFailure::ALL {
        assert_eq!(OnFailure::from_word(policy.as_str()), Some(policy));
    }
    assert_eq!(OnFailure::from_word("Bypass"), None);
}
