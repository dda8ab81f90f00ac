//! The `netvm` command as an operator runs it: the real binary, its exit codes (0 ok, 1 policy
//! errors / failed tests / unformatted, 2 usage errors and unreadable files), what it prints on
//! stdout and stderr. Policies and captures that a test needs are written under the system
//! temp directory, each under a unique name, and removed when the test ends.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const CLASSBENCH_FW1_1K: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/data/classbench/fw1_1k"
);

/// What one run of the binary did.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `netvm ARGS...` in the repository root.
fn netvm<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_netvm"))
        .args(args)
        .current_dir(ROOT)
        .env("NO_COLOR", "1")
        .output()
        .expect("the netvm binary runs");
    Run {
        code: out
            .status
            .code()
            .expect("netvm exits, not killed by a signal"),
        stdout: String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(out.stderr).expect("stderr is UTF-8"),
    }
}

/// A directory of its own under the system temp directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(purpose: &str) -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("netvm-cli-{}-{n}-{purpose}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create a scratch directory");
        Scratch(dir)
    }

    /// Writes `name` inside the scratch directory; returns its path as a string for argv.
    fn file(&self, name: &str, contents: impl AsRef<[u8]>) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write a scratch file");
        path.to_str().expect("temp paths are UTF-8").to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn examples() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(Path::new(ROOT).join("examples"))
        .expect("examples/ exists")
        .map(|e| e.expect("read examples/").path())
        .filter(|p| p.extension().is_some_and(|e| e == "nvr"))
        .map(|p| {
            p.strip_prefix(ROOT)
                .expect("inside the repo")
                .to_str()
                .expect("UTF-8 path")
                .to_string()
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no examples/*.nvr found");
    files
}

/// The diagnostics of `--format json`, one object per stdout line.
fn json_diagnostics(run: &Run) -> Vec<Value> {
    run.stdout
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line:?}\n{run:?}"))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// netvm check

#[test]
fn check_accepts_every_example() {
    for file in examples() {
        let run = netvm(&["check", &file]);
        assert_eq!(run.code, 0, "{file}: {run:?}");
        assert!(run.stderr.contains("0 errors"), "{file}: {run:?}");
    }
}

#[test]
fn check_accepts_every_example_with_deny_warnings() {
    let files = examples();
    let mut args = vec!["check".to_string(), "--deny-warnings".to_string()];
    args.extend(files.iter().cloned());
    let run = netvm(&args);
    assert_eq!(run.code, 0, "{run:?}");
    let summary = format!("checked {} files: 0 errors, 0 warnings", files.len());
    assert!(run.stderr.contains(&summary), "{run:?}");
}

#[test]
fn check_shows_an_error_rustc_style_with_location_source_underline_and_did_you_mean() {
    let dir = Scratch::new("misspelt");
    let file = dir.file(
        "misspelt.nvr",
        "import std.ports\n\nrule web : tcp.dport == HTPP => drop\n",
    );
    let run = netvm(&["check", &file]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout.is_empty(),
        "text diagnostics go to stderr: {run:?}"
    );
    let err = &run.stderr;
    assert!(err.contains("error[E002]: unknown name `HTPP`"), "{run:?}");
    assert!(err.contains(&format!("--> {file}:3:25")), "{run:?}");
    assert!(
        err.contains("3 | rule web : tcp.dport == HTPP => drop"),
        "{run:?}"
    );
    // The underline sits under the name, and only under it.
    let source = err
        .lines()
        .position(|l| l.ends_with("rule web : tcp.dport == HTPP => drop"))
        .expect("source line shown");
    let underline = err.lines().nth(source + 1).expect("underline line");
    let column = |line: &str, needle: &str| line.find(needle).expect("found");
    assert_eq!(
        column(underline, "^^^^"),
        column(err.lines().nth(source).expect("source"), "HTPP"),
        "{run:?}"
    );
    assert!(!underline.contains("^^^^^"), "{run:?}");
    assert!(err.contains("help: did you mean `HTTP`?"), "{run:?}");
    assert!(
        err.contains("checked 1 file: 1 error, 0 warnings"),
        "{run:?}"
    );
}

#[test]
fn check_suggests_the_corrected_prefix_for_host_bits() {
    let dir = Scratch::new("host-bits");
    let file = dir.file("host_bits.nvr", "rule r : ip.src in 10.0.0.1/8 => drop\n");
    let run = netvm(&["check", &file]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("error[E007]"), "{run:?}");
    assert!(run.stderr.contains(&format!("--> {file}:1:20")), "{run:?}");
    assert!(run.stderr.contains("^^^^^^^^^^"), "{run:?}");
    assert!(
        run.stderr.contains("help: did you mean `10.0.0.0/8`?"),
        "{run:?}"
    );
}

#[test]
fn check_gives_the_valid_range_for_an_out_of_range_vlan_id() {
    let dir = Scratch::new("vlan");
    let file = dir.file("vlan.nvr", "rule r : vlan.id == 5000 => drop\n");
    let run = netvm(&["check", &file]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("error[E006]: 5000 is out of range for `vlan.id`"),
        "{run:?}"
    );
    assert!(run.stderr.contains(&format!("--> {file}:1:21")), "{run:?}");
    assert!(
        run.stderr.contains("help: `vlan.id` takes 0..4095"),
        "{run:?}"
    );
}

#[test]
fn check_reports_every_error_of_a_file_in_one_run() {
    let dir = Scratch::new("all-errors");
    let file = dir.file(
        "all.nvr",
        "import std.ports\n\
         rule a : tcp.dport == HTPP => drop\n\
         rule b : tcp.dprt == 22 => drop\n\
         rule c : vlan.id == 5000 => drop\n\
         rule d : ip.src in 10.0.0.1/8 => drop\n",
    );
    let run = netvm(&["check", &file]);
    assert_eq!(run.code, 1, "{run:?}");
    for (code, line) in [("E002", 2), ("E004", 3), ("E006", 4), ("E007", 5)] {
        assert!(run.stderr.contains(&format!("error[{code}]")), "{run:?}");
        assert!(
            run.stderr.contains(&format!("--> {file}:{line}:")),
            "{code} on line {line}: {run:?}"
        );
    }
    assert_eq!(run.stderr.matches("error[E").count(), 4, "{run:?}");
    assert!(run.stderr.contains("4 errors"), "{run:?}");
}

#[test]
fn deny_warnings_turns_a_warnings_only_file_into_a_failure() {
    let file = "tests/lang/warnings/w002_unused_const.nvr";
    let lenient = netvm(&["check", file]);
    assert_eq!(lenient.code, 0, "{lenient:?}");
    assert!(lenient.stderr.contains("warning[W002]"), "{lenient:?}");
    assert!(!lenient.stderr.contains("error["), "{lenient:?}");

    let strict = netvm(&["check", "--deny-warnings", file]);
    assert_eq!(strict.code, 1, "{strict:?}");
    assert!(strict.stderr.contains("warning[W002]"), "{strict:?}");
}

#[test]
fn json_format_prints_one_object_per_diagnostic_on_stdout() {
    let dir = Scratch::new("json");
    let file = dir.file(
        "json.nvr",
        "import std.ports\n\
         const UNUSED = 8080\n\
         rule a : tcp.dport == HTPP => drop\n\
         rule d : vlan.id == 5000 => drop\n",
    );
    let run = netvm(&["check", "--format", "json", &file]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        !run.stderr.contains("error["),
        "JSON mode prints no text diagnostics: {run:?}"
    );
    let diags = json_diagnostics(&run);
    assert_eq!(diags.len(), 3, "{run:?}");
    for d in &diags {
        for key in [
            "file", "line", "column", "end", "severity", "code", "message",
        ] {
            assert!(d.get(key).is_some(), "`{key}` missing in {d}");
        }
        assert_eq!(d["file"], file.as_str(), "{d}");
        assert!(d["line"].is_u64() && d["column"].is_u64(), "{d}");
        assert!(d["message"].is_string(), "{d}");
    }
    let summary: Vec<(&str, &str, u64, u64)> = diags
        .iter()
        .map(|d| {
            (
                d["code"].as_str().expect("code is a string"),
                d["severity"].as_str().expect("severity is a string"),
                d["line"].as_u64().expect("line"),
                d["column"].as_u64().expect("column"),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("W002", "warning", 2, 7),
            ("E002", "error", 3, 23),
            ("E006", "error", 4, 21),
        ]
    );
    assert_eq!(diags[1]["message"], "unknown name `HTPP`");
}

#[test]
fn json_format_with_deny_warnings_fails_on_warnings_alone() {
    let run = netvm(&[
        "check",
        "--deny-warnings",
        "--format",
        "json",
        "tests/lang/warnings/w002_unused_const.nvr",
    ]);
    assert_eq!(run.code, 1, "{run:?}");
    let diags = json_diagnostics(&run);
    assert_eq!(diags.len(), 1, "{run:?}");
    assert_eq!(diags[0]["severity"], "warning");
    assert_eq!(diags[0]["code"], "W002");
}

#[test]
fn check_of_a_missing_file_exits_2() {
    let run = netvm(&["check", "no/such/policy.nvr"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("no/such/policy.nvr"), "{run:?}");
}

#[test]
fn an_unknown_flag_exits_2() {
    let run = netvm(&["check", "--no-such-flag", "examples/quickstart.nvr"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("--no-such-flag"), "{run:?}");
}

// ---------------------------------------------------------------------------------------
// netvm test

/// The `test ... ok|FAILED` lines of a run.
fn case_lines(run: &Run) -> Vec<&str> {
    run.stdout
        .lines()
        .filter(|l| l.starts_with("test ") && !l.starts_with("test result:"))
        .collect()
}

#[test]
fn test_prints_one_line_per_case_and_an_ok_summary() {
    let run = netvm(&["test", "examples/quickstart.nvr"]);
    assert_eq!(run.code, 0, "{run:?}");
    let cases = case_lines(&run);
    assert!(!cases.is_empty(), "{run:?}");
    for line in &cases {
        assert!(line.starts_with("test examples/quickstart.nvr:"), "{line}");
        assert!(line.ends_with(" ... ok"), "{line}");
    }
    let last = run.stdout.lines().last().expect("a summary line");
    assert_eq!(
        last,
        format!("test result: ok. {} passed; 0 failed", cases.len())
    );
}

#[test]
fn test_with_a_wrong_expectation_fails_naming_expected_actual_and_rule() {
    let dir = Scratch::new("wrong-test");
    let file = dir.file(
        "wrong.nvr",
        "port lan\n\
         rule ssh : tcp.dport == 22 => drop\n\
         default => out lan\n\
         test \"ssh goes out\" {\n\
         \x20 tcp { tcp.dport = 22 } => out lan\n\
         \x20 tcp { tcp.dport = 80 } => out lan\n\
         }\n",
    );
    let run = netvm(&["test", &file]);
    assert_eq!(run.code, 1, "{run:?}");
    let cases = case_lines(&run);
    assert_eq!(cases.len(), 2, "{run:?}");
    assert!(
        cases[0].contains(":5 ") && cases[0].ends_with("... FAILED"),
        "{run:?}"
    );
    assert!(cases[1].ends_with("... ok"), "{run:?}");
    let failure = run
        .stdout
        .lines()
        .find(|l| l.contains(&format!("{file}:5:")) && !l.starts_with("test "))
        .unwrap_or_else(|| panic!("no failure text for line 5: {run:?}"));
    assert!(failure.contains("out lan"), "expected actions: {failure}");
    assert!(failure.contains("drop"), "actual actions: {failure}");
    assert!(failure.contains("rule ssh"), "matched rule: {failure}");
    let last = run.stdout.lines().last().expect("a summary line");
    assert!(last.starts_with("test result: FAILED. "), "{last}");
    assert!(last.ends_with("1 passed; 1 failed"), "{last}");
}

#[test]
fn test_with_a_wrong_rule_expectation_names_the_rule_that_matched() {
    let dir = Scratch::new("wrong-rule");
    let file = dir.file(
        "wrong_rule.nvr",
        "rule ssh : tcp.dport == 22 => drop\n\
         test \"t\" {\n\
         \x20 tcp { tcp.dport = 22 } => rule default\n\
         }\n",
    );
    let run = netvm(&["test", &file]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("rule default"), "{run:?}");
    assert!(run.stdout.contains("rule ssh"), "{run:?}");
    assert_eq!(
        run.stdout.lines().last(),
        Some("test result: FAILED. 0 passed; 1 failed"),
        "{run:?}"
    );
}

#[test]
fn test_runs_a_stdlib_module_named_std_dpi() {
    let run = netvm(&["test", "std.dpi"]);
    assert_eq!(run.code, 0, "{run:?}");
    let cases = case_lines(&run);
    assert!(!cases.is_empty(), "{run:?}");
    assert_eq!(
        run.stdout.lines().last(),
        Some(format!("test result: ok. {} passed; 0 failed", cases.len()).as_str())
    );
}

#[test]
fn test_of_a_policy_with_errors_exits_1_without_running_it() {
    let dir = Scratch::new("broken-test");
    let file = dir.file("broken.nvr", "rule r : vlan.id == 5000 => drop\n");
    let run = netvm(&["test", &file]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("error[E006]"), "{run:?}");
    assert!(run.stdout.contains("test result: FAILED."), "{run:?}");
}

// ---------------------------------------------------------------------------------------
// netvm explain

#[test]
fn explain_shows_headers_each_sub_predicate_and_the_matching_rule() {
    let run = netvm(&[
        "explain",
        "examples/quickstart.nvr",
        "tcp { tcp.dport = 22, ip.src = 1.2.3.4 }",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    let out = &run.stdout;
    // The decoded headers.
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("ip") && l.contains("1.2.3.4")),
        "{run:?}"
    );
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("tcp") && l.contains("-> 22")),
        "{run:?}"
    );
    // Rules tried, each with its sub-predicates marked.
    assert!(out.contains("✗ rule block_bad"), "{run:?}");
    assert!(out.contains("✗ ip.src in BLOCKED"), "{run:?}");
    assert!(out.contains("✓ rule ssh_admin"), "{run:?}");
    assert!(out.contains("✓ tcp.dport == SSH"), "{run:?}");
    assert!(out.contains("✓ ip.src != ADMIN"), "{run:?}");
    assert!(!out.contains("rule sqli"), "first match wins: {run:?}");
    assert!(out.contains("\nmatched: rule ssh_admin\n"), "{run:?}");
    assert!(out.contains("\nactions: drop\n"), "{run:?}");
}

#[test]
fn explain_of_a_malformed_packet_exits_1_with_a_diagnostic() {
    let run = netvm(&[
        "explain",
        "examples/quickstart.nvr",
        "tcp { tcp.dport = , ip.src = 1.2.3.4 }",
    ]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("error[E001]"), "{run:?}");
    assert!(run.stderr.contains('^'), "{run:?}");
    assert!(!run.stdout.contains("matched:"), "{run:?}");

    let run = netvm(&[
        "explain",
        "examples/quickstart.nvr",
        "tcp { tcp.dprt = 22 }",
    ]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("error[E004]"), "{run:?}");
    assert!(
        run.stderr.contains("help: did you mean `tcp.dport`?"),
        "{run:?}"
    );
}

#[test]
fn explain_refuses_a_packet_argument_that_is_more_than_one_packet() {
    let run = netvm(&[
        "explain",
        "examples/quickstart.nvr",
        "tcp { tcp.dport = 22 } => drop\n}\ntest \"x\" {\n  tcp { tcp.dport = 80 }",
    ]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(!run.stdout.contains("matched:"), "{run:?}");
}

#[test]
fn explain_in_port_names_a_port_of_the_policy() {
    let run = netvm(&[
        "explain",
        "examples/quickstart.nvr",
        "udp { udp.dport = 53 }",
        "--in-port",
        "wan",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("in_port wan"), "{run:?}");
    assert!(run.stdout.contains("matched: rule dns"), "{run:?}");

    let run = netvm(&[
        "explain",
        "examples/quickstart.nvr",
        "udp { udp.dport = 53 }",
        "--in-port",
        "nosuch",
    ]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("nosuch"), "{run:?}");
}

/// An Ethernet/IPv4 frame: a DNS query over UDP, then an SSH SYN over TCP from 1.2.3.4.
fn two_frame_capture(dir: &Scratch) -> String {
    use etherparse::PacketBuilder;
    use pcap_file::pcap::{PcapPacket, PcapWriter};

    let mac_a = [2, 0, 0, 0, 0, 1];
    let mac_b = [2, 0, 0, 0, 0, 2];
    let mut dns = Vec::new();
    let query =
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01";
    PacketBuilder::ethernet2(mac_a, mac_b)
        .ipv4([10, 0, 0, 2], [10, 0, 0, 53], 64)
        .udp(40000, 53)
        .write(&mut dns, query)
        .expect("build the DNS frame");
    let mut ssh = Vec::new();
    PacketBuilder::ethernet2(mac_a, mac_b)
        .ipv4([1, 2, 3, 4], [10, 0, 0, 3], 64)
        .tcp(49152, 22, 1000, 65535)
        .syn()
        .write(&mut ssh, &[])
        .expect("build the SSH frame");

    let mut bytes = Vec::new();
    {
        let mut writer = PcapWriter::new(&mut bytes).expect("pcap header");
        for (i, frame) in [&dns, &ssh].into_iter().enumerate() {
            let len = u32::try_from(frame.len()).expect("small frame");
            let packet = PcapPacket::new(Duration::from_millis(i as u64), len, frame);
            writer.write_packet(&packet).expect("pcap record");
        }
    }
    dir.file("two.pcap", bytes)
}

#[test]
fn explain_pcap_index_counts_packets_from_1() {
    let dir = Scratch::new("pcap");
    let capture = two_frame_capture(&dir);

    let second = netvm(&[
        "explain",
        "examples/quickstart.nvr",
        "--pcap",
        &capture,
        "--index",
        "2",
    ]);
    assert_eq!(second.code, 0, "{second:?}");
    assert!(
        second.stdout.contains(&format!("{capture} #2")),
        "{second:?}"
    );
    assert!(second.stdout.contains("1.2.3.4"), "{second:?}");
    assert!(
        second.stdout.contains("\nmatched: rule ssh_admin\n"),
        "{second:?}"
    );
    assert!(second.stdout.contains("\nactions: drop\n"), "{second:?}");

    let first = netvm(&[
        "explain",
        "examples/quickstart.nvr",
        "--pcap",
        &capture,
        "--index",
        "1",
    ]);
    assert_eq!(first.code, 0, "{first:?}");
    assert!(first.stdout.contains("\nmatched: rule dns\n"), "{first:?}");
}

#[test]
fn explain_pcap_index_0_or_past_the_end_exits_2_with_the_valid_range() {
    let dir = Scratch::new("pcap-range");
    let capture = two_frame_capture(&dir);
    for index in ["0", "3"] {
        let run = netvm(&[
            "explain",
            "examples/quickstart.nvr",
            "--pcap",
            &capture,
            "--index",
            index,
        ]);
        assert_eq!(run.code, 2, "--index {index}: {run:?}");
        assert!(
            run.stderr.contains("holds 2 packets") && run.stderr.contains("from 1 to 2"),
            "--index {index}: {run:?}"
        );
        assert!(run.stdout.is_empty(), "--index {index}: {run:?}");
    }
}

#[test]
fn explain_of_a_file_that_is_not_a_capture_exits_2() {
    let dir = Scratch::new("not-pcap");
    let bogus = dir.file("bogus.pcap", "this is not a capture");
    let run = netvm(&[
        "explain",
        "examples/quickstart.nvr",
        "--pcap",
        &bogus,
        "--index",
        "1",
    ]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("is not a pcap or pcapng capture"),
        "{run:?}"
    );
}

// ---------------------------------------------------------------------------------------
// netvm fmt

/// `netvm check --format json` of a file, as (code, message) pairs.
fn diagnostic_messages(file: &str) -> Vec<(String, String)> {
    let run = netvm(&["check", "--format", "json", file]);
    json_diagnostics(&run)
        .iter()
        .map(|d| (d["code"].to_string(), d["message"].to_string()))
        .collect()
}

#[test]
fn fmt_output_of_quickstart_checks_the_same_and_is_already_formatted() {
    let run = netvm(&["fmt", "examples/quickstart.nvr"]);
    assert_eq!(run.code, 0, "{run:?}");
    // The formatted file sits beside a copy of the file it imports.
    let dir = Scratch::new("fmt");
    let lab_nets = std::fs::read(Path::new(ROOT).join("examples/lab-nets.nvr"))
        .expect("examples/lab-nets.nvr");
    dir.file("lab-nets.nvr", lab_nets);
    let formatted = dir.file("quickstart.nvr", &run.stdout);

    let before = diagnostic_messages("examples/quickstart.nvr");
    assert_eq!(before, [], "quickstart has no diagnostics");
    assert_eq!(diagnostic_messages(&formatted), before);

    let check = netvm(&["fmt", "--check", &formatted]);
    assert_eq!(check.code, 0, "{check:?}");
    assert!(
        check.stdout.is_empty() && check.stderr.is_empty(),
        "{check:?}"
    );

    let tests = netvm(&["test", &formatted]);
    assert_eq!(tests.code, 0, "{tests:?}");
}

#[test]
fn fmt_keeps_comments_between_declarations() {
    let dir = Scratch::new("fmt-comments");
    let file = dir.file(
        "comments.nvr",
        "# the head comment\n\
         port   lan\n\
         \n\
         # about ssh\n\
         rule ssh:tcp.dport==22=>drop\n\
         // about the rest\n\
         default=>out lan\n",
    );
    let run = netvm(&["fmt", &file]);
    assert_eq!(run.code, 0, "{run:?}");
    let out = &run.stdout;
    let at = |needle: &str| {
        out.find(needle)
            .unwrap_or_else(|| panic!("`{needle}` missing: {run:?}"))
    };
    assert!(at("# the head comment") < at("port lan"), "{run:?}");
    assert!(at("port lan") < at("# about ssh"), "{run:?}");
    assert!(at("# about ssh") < at("rule ssh"), "{run:?}");
    assert!(at("rule ssh") < at("// about the rest"), "{run:?}");
    assert!(at("// about the rest") < at("default"), "{run:?}");

    let formatted = dir.file("formatted.nvr", out);
    let check = netvm(&["fmt", "--check", &formatted]);
    assert_eq!(check.code, 0, "{check:?}");
    let unformatted = netvm(&["fmt", "--check", &file]);
    assert_eq!(unformatted.code, 1, "{unformatted:?}");
}

#[test]
fn fmt_write_rewrites_the_file_in_place() {
    let dir = Scratch::new("fmt-write");
    let file = dir.file("w.nvr", "port   lan\nrule ssh:tcp.dport==22=>drop\n");
    let printed = netvm(&["fmt", &file]);
    assert_eq!(printed.code, 0, "{printed:?}");
    let run = netvm(&["fmt", "--write", &file]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
    let written = std::fs::read_to_string(&file).expect("read back");
    assert_eq!(written, printed.stdout);
}

// ---------------------------------------------------------------------------------------
// netvm import

#[test]
fn import_classbench_fw1_1k_gives_a_policy_that_checks() {
    let Ok(rules) = std::fs::read_to_string(CLASSBENCH_FW1_1K) else {
        eprintln!("note: {CLASSBENCH_FW1_1K} is missing; import test skipped");
        return;
    };
    let count = rules.lines().filter(|l| !l.trim().is_empty()).count();
    assert!(count > 0);
    let run = netvm(&["import", "classbench", CLASSBENCH_FW1_1K]);
    assert_eq!(run.code, 0, "exit {}: {}", run.code, run.stderr);

    let names: Vec<&str> = run
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("rule "))
        .map(|l| l.split_whitespace().next().expect("a rule name"))
        .collect();
    let expected: Vec<String> = (1..=count).map(|i| format!("r{i}")).collect();
    assert_eq!(names, expected, "rules r1..r{count}, in file order");

    let dir = Scratch::new("classbench");
    let policy = dir.file("fw1_1k.nvr", &run.stdout);
    let check = netvm(&["check", &policy]);
    assert_eq!(check.code, 0, "{}", check.stderr);
    assert!(check.stderr.contains(" 0 errors"), "{}", check.stderr);
}

#[test]
fn export_openflow_prints_flows_and_refuses_what_openflow_cannot_express_by_rule() {
    let run = netvm(&["export", "openflow", "benches/bench20.nvr", "--port", "b=7"]);
    assert_eq!(run.code, 0, "{run:?}");
    let flows: Vec<&str> = run.stdout.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(flows.len(), 21, "{run:?}");
    assert!(run.stdout.contains("ports a=1 b=7"), "{run:?}");
    assert!(
        flows[0].starts_with("priority=20,cookie=0x1,dl_type=0x0800,nw_src=10.10.0.0/255.255.0.0"),
        "{run:?}"
    );
    assert!(
        flows.contains(&"priority=2,cookie=0x13,in_port=1,actions=output:7"),
        "{run:?}"
    );
    assert_eq!(
        flows[20], "priority=0,cookie=0xffff,actions=drop",
        "{run:?}"
    );

    let dir = Scratch::new("export");
    let file = dir.file(
        "dpi.nvr",
        "port a\nrule ok : tcp => drop\nrule dpi : payload contains \"GET\" => out a\n",
    );
    let run = netvm(&["export", "openflow", &file]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr
            .contains("rule `dpi`: payload tests have no OpenFlow match"),
        "{run:?}"
    );
    let run = netvm(&["export", "openflow", "benches/bench20.nvr", "--port", "c=1"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("the policy has no port `c`"), "{run:?}");
}
