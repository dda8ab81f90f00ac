//! Nesting limits (E019): a policy nested deeper than `netvm_lang::MAX_NESTING` is refused
//! with a diagnostic, never a stack overflow, and the deepest policy `check` accepts goes
//! through every later stage (shadow analysis, lowering, the JIT, the interpreter, the
//! printer) on a thread with a 4 MiB stack, a quarter of what the threads that compile a
//! reload get.

use netvm_compiler::{lower, Interpreter, Jit};
use netvm_lang::{check_text, Checked, Code, MAX_NESTING};
use netvm_packet::{BaseProto, PacketSpec};

/// Runs `f` on a thread with a [`STACK`] stack: an overflow there aborts the test binary,
/// so these tests fail loudly without the limits.
/// A quarter of the stack the control socket gives the thread that compiles a reload
/// (`netvm_runtime::control::CONNECTION_STACK`).
const STACK: usize = 4 << 20;
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(STACK)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("no panic")
}

fn policy(pred: &str) -> String {
    format!("port wan\nport lan\nrule deep : {pred} => out lan\ndefault => drop\n")
}

fn codes(checked: &Checked) -> Vec<&'static str> {
    checked
        .diagnostics
        .iter()
        .map(|d| d.code.as_str())
        .collect()
}

fn line_of(checked: &Checked, i: usize) -> usize {
    let d = &checked.diagnostics[i];
    checked
        .sources()
        .get(d.span.file)
        .line_col(d.span.start as usize)
        .0
}

#[test]
fn deep_parentheses_and_nots_are_e019_on_their_line() {
    let cases = [
        // 400 plain parentheses (crashed `netvm reload`'s connection thread).
        policy(&format!("{}tcp{}", "(".repeat(400), ")".repeat(400))),
        // ((... or udp) or udp) 2,000 deep (crashed `netvm check`).
        policy(&format!(
            "{}tcp{}",
            "(".repeat(2000),
            " or udp)".repeat(2000)
        )),
        // 100,000 chained `not`s.
        policy(&format!("{}tcp", "not ".repeat(100_000))),
        // not (not (not ...)).
        policy(&format!("{}tcp{}", "not (".repeat(1000), ")".repeat(1000))),
    ];
    for text in cases {
        let checked = on_small_stack(move || check_text("deep.nvr", &text));
        assert_eq!(codes(&checked), ["E019"], "{:?}", checked.diagnostics);
        assert_eq!(line_of(&checked, 0), 3);
        let d = &checked.diagnostics[0];
        assert!(
            d.message.contains(&MAX_NESTING.to_string()),
            "names the limit: {}",
            d.message
        );
    }
}

#[test]
fn a_deep_declaration_does_not_hide_the_errors_after_it() {
    let text = format!(
        "port wan\nport lan\nlet a = {}tcp{}\nrule r : tpc => out lan\n",
        "(".repeat(500),
        ")".repeat(500)
    );
    let checked = on_small_stack(move || check_text("deep.nvr", &text));
    assert_eq!(
        codes(&checked),
        ["E019", "E002"],
        "{:?}",
        checked.diagnostics
    );
}

#[test]
fn parentheses_in_strings_regexes_and_comments_do_not_count() {
    let open = "(".repeat(300);
    let text = format!(
        "port wan\nport lan\n# {open}\nrule r : payload contains \"{open}\" or payload matches /\\({open}/ or ip.src in 10.0.0.0/8 => out lan\n"
    );
    let checked = on_small_stack(move || check_text("strings.nvr", &text));
    assert!(
        !codes(&checked).contains(&"E019"),
        "{:?}",
        checked.diagnostics
    );
}

/// `let`s inline: a chain of lets each one level deeper than the last.
fn let_chain(n: usize, reversed: bool) -> String {
    let mut lets: Vec<String> = (1..=n)
        .map(|i| match i % 3 {
            0 => format!("let x{i} = not x{}\n", i - 1),
            1 => format!("let x{i} = x{} or udp.dport == {i}\n", i - 1),
            _ => format!("let x{i} = x{} and tcp.sport != {i}\n", i - 1),
        })
        .collect();
    if reversed {
        lets.reverse();
    }
    format!(
        "port wan\nport lan\nlet x0 = tcp\n{}rule deep : x{n} => out lan\ndefault => drop\n",
        lets.concat()
    )
}

#[test]
fn let_chains_past_the_limit_are_one_e019_at_the_let_that_crosses_it() {
    for reversed in [false, true] {
        let text = let_chain(3000, reversed);
        let checked = on_small_stack(move || check_text("lets.nvr", &text));
        assert_eq!(
            codes(&checked),
            ["E019"],
            "reversed={reversed}: {:?}",
            checked.diagnostics
        );
    }
    // x0 is one level; x127 is 128: the deepest accepted.
    let text = let_chain(MAX_NESTING - 1, false);
    let checked = on_small_stack(move || check_text("lets.nvr", &text));
    assert_eq!(codes(&checked), Vec::<&str>::new());
    let text = let_chain(MAX_NESTING, false);
    let checked = on_small_stack(move || check_text("lets.nvr", &text));
    assert_eq!(codes(&checked), ["E019"]);
    assert_eq!(checked.diagnostics[0].code, Code::TooDeep);
}

#[test]
fn the_deepest_accepted_policy_runs_through_every_stage_on_a_small_stack() {
    // 128 levels of and/or/not after inlining, behind parentheses nested to the limit.
    let chain = let_chain(MAX_NESTING - 1, false);
    let parens = MAX_NESTING;
    let text = format!(
        "{chain}rule parens : {}x{} and udp{} => drop\n",
        "(".repeat(parens),
        MAX_NESTING - 2,
        ")".repeat(parens)
    );
    let frames = on_small_stack(move || {
        let checked = check_text("deepest.nvr", &text);
        assert!(
            !checked.diagnostics.iter().any(|d| d.is_error()),
            "{:?}",
            checked.diagnostics
        );
        let policy = checked.policy.expect("checks");
        assert_eq!(policy.rules[0].pred.depth(), MAX_NESTING);
        assert_eq!(policy.rules[1].pred.depth(), MAX_NESTING);
        let ir = lower(&policy);
        let jit = Jit::compile(&ir).expect("jit compiles");
        let interp = Interpreter::new(ir).expect("interp");
        let formatted = netvm_lang::print::format_source(&text).expect("fmt");
        assert!(formatted.contains("rule parens"));
        let frames: Vec<Vec<u8>> = [BaseProto::Tcp, BaseProto::Udp, BaseProto::Icmp]
            .into_iter()
            .map(|p| PacketSpec::new(p).build().expect("builds"))
            .collect();
        for f in &frames {
            assert_eq!(jit.classify(f, 0), interp.classify(f, 0));
        }
        frames.len()
    });
    assert_eq!(frames, 3);
}
