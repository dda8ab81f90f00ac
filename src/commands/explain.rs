//! `netvm explain FILE 'tcp { tcp.dport = 22 }'` or `--pcap CAPTURE --index N`.
//!
//! A packet written on the command line is checked exactly like a test case of the file (so
//! it may use the file's consts and ports): it is appended to the policy text as a one-case
//! test block and goes through the same checker.

use std::path::Path;
use std::process::ExitCode;

use netvm_compiler::explain::explain;
use netvm_compiler::testing::{case_frame, case_port};
use netvm_compiler::NO_PORT;
use netvm_lang::RootSource;
use netvm_runtime::port::capture::CaptureReader;

use crate::report::{self, Format};

#[derive(clap::Args)]
pub struct Args {
    /// The policy file.
    file: String,
    /// A packet written as in a test case: `tcp { ip.src = 1.2.3.4, tcp.dport = 22 }`.
    #[arg(required_unless_present = "pcap", conflicts_with = "pcap")]
    packet: Option<String>,
    /// Explain a packet from a capture (pcap or pcapng) instead.
    #[arg(long, requires = "index")]
    pcap: Option<String>,
    /// Which packet of the capture, counted from 1 as Wireshark and tcpdump number them.
    #[arg(long)]
    index: Option<usize>,
    /// The port the packet arrives on (default: unknown, so `in_port` tests are false).
    #[arg(long)]
    in_port: Option<String>,
}

pub fn run(args: Args) -> Result<ExitCode, String> {
    let text = std::fs::read_to_string(&args.file)
        .map_err(|e| format!("cannot read `{}`: {e}", args.file))?;
    let dir = Path::new(&args.file)
        .canonicalize()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    // The packet must be exactly one case packet on its own before it joins the policy text.
    if let Some(packet) = &args.packet {
        let mut sources = netvm_lang::SourceMap::default();
        let id = sources.add(netvm_lang::source::SourceFile::new(
            "<packet>".into(),
            None,
            packet.clone(),
        ));
        if let Err(diag) = netvm_lang::parse::parse_case_packet(id, packet) {
            eprintln!("{}", diag.render(&sources, false));
            return Ok(ExitCode::from(1));
        }
    }
    let packet_offset = text.len() + "\ntest \"netvm explain\" {\n  ".len();
    let (root_text, described) = match &args.packet {
        Some(packet) => (
            format!("{text}\ntest \"netvm explain\" {{\n  {packet} => rule default\n}}\n"),
            packet.clone(),
        ),
        None => (text, String::new()),
    };
    let checked = netvm_lang::check(RootSource::Text {
        name: args.file.clone(),
        text: root_text,
        dir,
    })?;
    let mut checked = checked;
    // Diagnostics about the packet point into the packet argument, not past the file's end.
    let packet_file = checked
        .program
        .sources
        .add(netvm_lang::source::SourceFile::new(
            "<packet>".into(),
            None,
            described.clone(),
        ));
    let root = netvm_lang::FileId(0);
    let move_to_packet = |span: &mut netvm_lang::Span| {
        if span.file == root && span.start as usize >= packet_offset {
            let len = described.len() as u32;
            let start = (span.start - packet_offset as u32).min(len);
            let end = (span.end - packet_offset as u32).clamp(start, len);
            *span = netvm_lang::Span::new(packet_file, start as usize, end as usize);
        }
    };
    for diag in &mut checked.diagnostics {
        move_to_packet(&mut diag.span);
        for (span, _) in &mut diag.notes {
            move_to_packet(span);
        }
    }
    let errors: Vec<_> = checked
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .cloned()
        .collect();
    report::print_all(&errors, &checked, Format::Text);
    let Some(policy) = &checked.policy else {
        return Ok(ExitCode::from(1));
    };
    let (frame, mut in_port, described) = match (&args.packet, &args.pcap) {
        (Some(_), _) => {
            let case = policy
                .tests
                .last()
                .and_then(|t| t.cases.last())
                .ok_or("the packet did not parse as a test case")?;
            (case_frame(case)?, case_port(case), described)
        }
        (None, Some(pcap)) => {
            let index = args.index.unwrap_or(1);
            let frame = read_capture_frame(pcap, index)?;
            let described = format!("{pcap} #{index} ({} bytes)", frame.len());
            (frame, NO_PORT, described)
        }
        (None, None) => return Err("give a packet or --pcap".into()),
    };
    if let Some(name) = &args.in_port {
        let port = policy
            .port_index(name)
            .ok_or_else(|| format!("the policy has no port `{name}`"))?;
        in_port = port as u32;
    }
    let explanation = explain(policy, &frame, in_port).map_err(|e| e.to_string())?;
    print!(
        "{}",
        render(policy, checked.sources(), &explanation, &described, in_port)
    );
    Ok(ExitCode::SUCCESS)
}

/// The `index`-th record (from 1, as tcpdump and Wireshark number them) of a pcap or pcapng
/// file, read up to that record only. A damaged record is explained as far as it is sound,
/// with a warning saying what was wrong; one that cannot be read at all is named.
pub fn read_capture_frame(path: &str, index: usize) -> Result<Vec<u8>, String> {
    let mut reader = CaptureReader::open(path)?;
    let wanted = index as u64;
    while let Some(next) = reader.next_frame() {
        let (record, frame) = next?;
        if record >= wanted {
            if record > wanted {
                break; // the wanted record was skipped as damaged
            }
            if let Some(d) = reader.damaged().iter().find(|d| d.record == wanted) {
                eprintln!("warning: {path}: {d}");
            }
            return Ok(frame);
        }
    }
    if let Some(d) = reader.damaged().iter().find(|d| d.record == wanted) {
        return Err(format!("{path}: {d}"));
    }
    while let Some(next) = reader.next_frame() {
        next?;
    }
    let count = reader.records();
    Err(format!(
        "`{path}` holds {count} packets; --index counts from 1 to {count}"
    ))
}

/// Every frame of a pcap or pcapng file; damaged records are reported on stderr.
pub fn read_capture(path: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut reader = CaptureReader::open(path)?;
    let mut frames = Vec::new();
    while let Some(next) = reader.next_frame() {
        frames.push(next?.1);
    }
    if let Some(summary) = reader.damage_summary() {
        eprintln!("warning: {summary}");
    }
    Ok(frames)
}

/// What `netvm explain` (and the REPL's `:explain`) prints: the packet's headers, each
/// rule tried with the conditions that held (✓) or not (✗), the match and its actions.
pub fn render(
    policy: &netvm_lang::Policy,
    sources: &netvm_lang::SourceMap,
    explanation: &netvm_compiler::explain::Explanation,
    described: &str,
    in_port: u32,
) -> String {
    use std::fmt::Write;
    let mut out = format!("packet: {described}\n");
    if in_port != NO_PORT {
        let _ = writeln!(out, "  in_port {}", policy.ports[in_port as usize].name);
    }
    if explanation.headers.is_empty() {
        out.push_str("  (no complete Ethernet header: every header is absent)\n");
    }
    for (header, line) in &explanation.headers {
        let _ = writeln!(out, "  {header:<8} {line}");
    }
    out.push_str("rules:\n");
    for trace in &explanation.rules {
        let rule = &policy.rules[trace.rule];
        let mark = if trace.matched { "✓" } else { "✗" };
        let _ = writeln!(out, "  {mark} rule {}", rule.name);
        for node in &trace.nodes {
            let mark = if node.held { "✓" } else { "✗" };
            let text = sources
                .snippet(node.span)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            let _ = writeln!(out, "      {}{mark} {text}", "  ".repeat(node.depth));
        }
    }
    if explanation.rules.len() < policy.rules.len() {
        let rest = policy.rules.len() - explanation.rules.len();
        let _ = writeln!(
            out,
            "  ({rest} later rules not tried: the first match wins)"
        );
    }
    match explanation.matched {
        Some(i) => {
            let _ = writeln!(out, "matched: rule {}", policy.rules[i].name);
        }
        None => out.push_str("matched: default (no rule matched)\n"),
    }
    let _ = writeln!(out, "actions: {}", explanation.actions);
    out
}
