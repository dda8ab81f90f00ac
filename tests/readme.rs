//! The README and docs work as written: every ```nvr block of README.md and docs/*.md
//! checks clean and passes its own tests, and every shell command line the README shows
//! that can run here runs and exits 0 (each other one is listed below with the reason it
//! cannot, so a new command line must be placed in one group or the other).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use netvm_compiler::testing::run_tests;
use netvm_compiler::{lower, Interpreter};
use netvm_lang::RootSource;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn docs() -> Vec<PathBuf> {
    let mut files = vec![repo().join("README.md")];
    let mut more: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    more.sort();
    files.extend(more);
    files
}

/// The fenced blocks of `lang` in a Markdown file: (line of the fence, text).
fn blocks(path: &Path, lang: &str) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let fence = line.trim_start();
        match &mut current {
            Some(_) if fence.starts_with("```") => out.extend(current.take()),
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
            None if fence.strip_prefix("```") == Some(lang) => {
                current = Some((i + 1, String::new()))
            }
            None => {}
        }
    }
    out
}

#[test]
fn every_nvr_block_of_the_readme_and_docs_checks_clean_and_passes_its_tests() {
    let mut seen = 0;
    let mut failures = Vec::new();
    for doc in docs() {
        for (line, text) in blocks(&doc, "nvr") {
            seen += 1;
            let name = format!("{}:{line}", doc.file_name().unwrap().to_string_lossy());
            let checked = netvm_lang::check(RootSource::Text {
                name: name.clone(),
                text,
                dir: repo(),
            })
            .unwrap();
            let problems: Vec<String> = checked
                .diagnostics
                .iter()
                .filter(|d| d.severity() != netvm_lang::Severity::Note)
                .map(|d| d.render(checked.sources(), false))
                .collect();
            if !problems.is_empty() {
                failures.push(format!("{name}: check:\n{}", problems.join("\n")));
                continue;
            }
            let policy = checked.policy.expect("no errors");
            let engine = Interpreter::new(lower(&policy)).unwrap();
            for o in run_tests(&policy, &engine) {
                if let Some(f) = o.failure {
                    failures.push(format!("{name}: test: {f}"));
                }
            }
        }
    }
    assert!(seen > 0, "the README has a policy block");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Command lines of the README's ```sh blocks, continuations joined, comments dropped.
fn readme_commands() -> Vec<String> {
    let mut out = Vec::new();
    for (_, block) in blocks(&repo().join("README.md"), "sh") {
        let mut pending = String::new();
        for line in block.lines() {
            let line = match line
                .find(" #")
                .or_else(|| line.starts_with('#').then_some(0))
            {
                Some(i) => &line[..i],
                None => line,
            };
            let line = line.trim();
            match line.strip_suffix('\\') {
                Some(start) => {
                    pending.push_str(start.trim());
                    pending.push(' ');
                }
                None => {
                    pending.push_str(line);
                    if !pending.trim().is_empty() {
                        out.push(pending.trim().to_string());
                    }
                    pending.clear();
                }
            }
        }
    }
    out
}

/// Why a README command line cannot run in this test, or `None` when it can.
fn cannot_run(cmd: &str) -> Option<&'static str> {
    if cmd.starts_with("netvm reload") {
        return Some("needs a switch on the default socket (tests/reload.rs runs it)");
    }
    if cmd.contains("...") {
        return Some("a placeholder (`...`, `[optional]`), not a command to paste");
    }
    if cmd.contains("dpdk") {
        return Some("needs the `dpdk` feature build (tests/runtime_dpdk.rs)");
    }
    if cmd.starts_with("netvm repl") {
        return Some("interactive (tests/repl.rs and tests/reload.rs drive the REPL)");
    }
    if cmd.starts_with("cargo test")
        || cmd.starts_with("cargo install")
        || cmd.starts_with("cargo +nightly")
        || cmd.starts_with("cargo build")
        || cmd.starts_with("cd fuzz")
        || cmd.contains("--example")
    {
        return Some(
            "builds the project or an example (CI does; tests/nf_processes.rs runs the example)",
        );
    }
    None
}

/// The command as this test runs it: optional `[...]` parts left out; `cargo run
/// --release --` is the binary under test;
/// the control socket lives in the scratch directory; the 10k ClassBench set is the 1k
/// one, so that a debug build benchmarks its interpreter in seconds.
fn as_run(cmd: &str, scratch: &Path) -> String {
    // `[--engine jit|interp]`: an optional part, left out.
    let mut cmd = cmd.to_string();
    while let (Some(a), Some(b)) = (cmd.find(" ["), cmd.find(']')) {
        if b < a {
            break;
        }
        cmd.replace_range(a..=b, "");
    }
    cmd.replace("cargo run --release -- ", "netvm ")
        .replace(
            "/tmp/edge.sock",
            &scratch.join("edge.sock").display().to_string(),
        )
        .replace("acl1_10k", "acl1_1k")
}

fn shell(cmd: &str, dir: &Path) -> Command {
    let bin = Path::new(env!("CARGO_BIN_EXE_netvm")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut c = Command::new("sh");
    c.arg("-c").arg(cmd).current_dir(dir).env("PATH", path);
    c
}

struct Background(Vec<Child>);

impl Drop for Background {
    fn drop(&mut self) {
        for child in &mut self.0 {
            // SAFETY: kill with our own child's pid and a standard signal.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}

#[test]
fn the_readme_shell_commands_run_as_written() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    // What the commands name: the tour's policy, captures, ClassBench files, examples/ and
    // benches/.
    let tour = &blocks(&repo().join("README.md"), "nvr")[0].1;
    std::fs::write(dir.join("policy.nvr"), tour).unwrap();
    let frames: Vec<Vec<u8>> = (0..4)
        .map(|i| {
            let mut spec = netvm_packet::PacketSpec::new(netvm_packet::BaseProto::Tcp);
            spec.set(netvm_packet::Field::TcpDport, 80 + i);
            spec.build().unwrap()
        })
        .collect();
    support::write_pcap(&dir.join("capture.pcap"), &frames);
    support::write_pcap(&dir.join("in.pcap"), &frames);
    let data = repo().join("../shared/data/classbench");
    for f in ["acl1_1k", "acl1_1k_trace"] {
        std::fs::copy(data.join(f), dir.join(f)).unwrap();
    }
    for d in ["examples", "benches"] {
        std::os::unix::fs::symlink(repo().join(d), dir.join(d)).unwrap();
    }

    let mut background = Background(Vec::new());
    let mut ran = 0;
    let mut failures = Vec::new();
    for cmd in readme_commands() {
        if let Some(why) = cannot_run(&cmd) {
            eprintln!("skipped: {cmd}\n  ({why})");
            continue;
        }
        let run = as_run(&cmd, dir);
        ran += 1;
        if let Some(bg) = run.strip_suffix('&') {
            let child = shell(&format!("exec {bg}"), dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            background.0.push(child);
            // The next command talks to it: wait for its socket.
            let socket = dir.join("edge.sock");
            let deadline = Instant::now() + Duration::from_secs(10);
            while bg.contains("netvm run") && !socket.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            std::thread::sleep(Duration::from_millis(300));
            continue;
        }
        let out = shell(&run, dir).output().unwrap();
        if !out.status.success() {
            failures.push(format!(
                "`{run}` exited {:?}:\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(ran >= 15, "ran only {ran} commands");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
