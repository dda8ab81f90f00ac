//! A running switch's policy, and the one door through which it changes.
//!
//! [`LivePolicy`] owns what the switch was built from — the policy's source text and
//! where it came from — next to the [`ProgramHandle`] the switch threads read. SIGHUP in
//! `netvm run`, `netvm reload` and the REPL's edits (in-process or over the control
//! socket) all call [`LivePolicy::reload`]: check the text, compile it, swap it in
//! ([`policy_table::reload`]), and report what changed. A mutex around the installed
//! source serializes reloads, which [`policy_table::reload`] requires; the data path
//! never takes it.
//!
//! It is also the binary's side of the control socket (the runtime's `AdminHandler`):
//! ops `policy`, `stage`, `reload` and `stats`, answered with the serde types of this
//! module. A socket message is one line of at most 64 KiB, so policy text travels in
//! slices and rule counters in pages; [`client`] is the other side, shared by `netvm
//! reload` and `netvm repl --connect`. It does not answer `hello`, `attach` or `status`
//! (the runtime does) and never prints: the callers decide what the operator sees.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netvm_runtime::stats::{PortRow, RuleRow, Stats, VmRow};
use netvm_runtime::ProgramHandle;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::policy_table::{self, PolicyDiff, RuleText};

/// What a successful reload did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReloadReport {
    /// The policy's name as diagnostics show it (its path, or `<repl>`).
    pub origin: String,
    pub diff: PolicyDiff,
    /// Parsing, resolving and type-checking the text.
    pub check_ms: f64,
    /// Working out what changed: each rule's text and lowered meaning, compared by name.
    pub diff_ms: f64,
    /// Lowering, the JIT, the runtime table and the counter carry-over.
    pub compile_ms: f64,
    /// The atomic pointer swap: the moment the data path moves over.
    pub swap_us: f64,
    pub engine: String,
    pub counters_carried: usize,
    /// Warnings of the new policy, rendered as `netvm check` renders them.
    pub warnings: Vec<String>,
}

impl std::fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "reloaded {}: {}check {:.2} ms, diff {:.2} ms, compile ({}) {:.2} ms, swap {:.1} µs; \
             counters carried over for {} rules that kept their name",
            self.origin,
            self.diff,
            self.check_ms,
            self.diff_ms,
            self.engine,
            self.compile_ms,
            self.swap_us,
            self.counters_carried,
        )
    }
}

/// Why a reload left the running policy in place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReloadError {
    /// The text has errors; `diagnostics` are rendered as `netvm check` renders them.
    #[error("rejected: the policy has errors; still running the previous policy")]
    Rejected { diagnostics: String },
    /// It checks, but cannot replace the running one (ports or VMs changed, ...).
    #[error("refused: {0}; still running the previous policy")]
    Refused(String),
    /// The file could not be read.
    #[error("failed: {0}; still running the previous policy")]
    Unreadable(String),
}

impl ReloadError {
    /// The rendered diagnostics of a rejected policy; empty for other errors.
    pub fn diagnostics(&self) -> &str {
        match self {
            ReloadError::Rejected { diagnostics } => diagnostics,
            _ => "",
        }
    }

    /// The diagnostics, then the one-line reason: everything an operator needs to see.
    pub fn full(&self) -> String {
        format!("{}{self}", self.diagnostics())
    }
}

/// Every counter of a running switch, by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwitchStats {
    /// Seconds since the switch started.
    pub elapsed_s: f64,
    pub ports: Vec<PortRow>,
    pub vms: Vec<VmRow>,
    /// Rules in order, then `default`.
    pub rules: Vec<RuleRow>,
    pub counters: Vec<(String, u64)>,
    /// Drop reasons with a nonzero count.
    pub drops: Vec<(String, u64)>,
    pub rx: u64,
    pub tx: u64,
    pub dropped: u64,
}

/// How the switch's ports and VMs were bound (from the launch), for `stats`.
#[derive(Debug, Clone, Default)]
pub struct Bindings {
    /// One per port, in policy order: the driver's description.
    pub port_drivers: Vec<String>,
    /// One per VM, in policy order: the network function's description.
    pub vm_functions: Vec<String>,
    /// VMs run on the switch thread (`VmMode::Inline`).
    pub vms_inline: bool,
}

struct Installed {
    origin: String,
    source: String,
    rules: Vec<RuleText>,
    /// Bumped by every reload, so a client reading the text in slices sees a change.
    version: u64,
}

/// Policy text per control-socket message: a message is one line of at most
/// [`MAX_LINE`](netvm_runtime::control::MAX_LINE) bytes, and JSON may spell one byte in
/// six (`\u0000`), so text travels in slices of this many bytes.
pub const TEXT_SLICE_BYTES: usize = 8 * 1024;
/// Rules per `stats` reply, for the same reason.
pub const RULES_PER_REPLY: usize = 256;
/// Rules of each kind (added, removed, changed) and warnings a `reload` reply lists; the
/// counts are always exact.
pub const LISTED_PER_KIND: usize = 20;
/// Characters of a rule's text a `reload` reply shows.
pub const LISTED_TEXT_CHARS: usize = 200;
/// Uploads (`stage`) in progress at once, and the bytes they may hold together.
const UPLOADS_MAX: usize = 16;
const UPLOAD_BYTES_MAX: usize = 64 << 20;

/// How long an upload may wait for its next slice before it is dropped (its client died).
const UPLOAD_IDLE: Duration = Duration::from_secs(60);

/// A policy text arriving in slices.
#[derive(Default)]
struct Upload {
    text: String,
    last_slice: Option<Instant>,
}

/// `text[offset..]`, at most [`TEXT_SLICE_BYTES`], cut at a character boundary.
fn text_slice(text: &str, offset: usize) -> Result<&str, String> {
    if offset > text.len() || !text.is_char_boundary(offset) {
        return Err(format!(
            "offset {offset} is not a character boundary of a {}-byte text",
            text.len()
        ));
    }
    let mut end = (offset + TEXT_SLICE_BYTES).min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Ok(&text[offset..end])
}

/// The running policy of one switch; see the module doc.
pub struct LivePolicy {
    handle: ProgramHandle,
    stats: Arc<Stats>,
    bindings: Bindings,
    started: Instant,
    installed: Mutex<Installed>,
    /// Policy texts being uploaded in slices (`stage`), by the client's upload name.
    uploads: Mutex<std::collections::HashMap<String, Upload>>,
}

/// The directory a policy's `import "file"` is relative to: its own, when `origin` is a
/// file; the working directory otherwise.
pub fn import_dir(origin: &str) -> PathBuf {
    let path = Path::new(origin);
    match path.canonicalize() {
        Ok(p) if p.is_file() => p.parent().map(Path::to_path_buf).unwrap_or_default(),
        _ => std::env::current_dir().unwrap_or_default(),
    }
}

/// Check `source` as the root policy named `origin` (imports relative to
/// [`import_dir`]).
pub fn check_source(origin: &str, source: &str) -> netvm_lang::Checked {
    let root = netvm_lang::RootSource::Text {
        name: origin.to_string(),
        text: source.to_string(),
        dir: import_dir(origin),
    };
    netvm_lang::check(root).unwrap_or_else(|_| netvm_lang::check_text(origin, source))
}

/// Every diagnostic of `checked` that `keep` accepts, rendered without color, each
/// followed by a blank line.
pub fn render_diagnostics(
    checked: &netvm_lang::Checked,
    keep: impl Fn(&netvm_lang::Diagnostic) -> bool,
) -> String {
    checked
        .diagnostics
        .iter()
        .filter(|d| keep(d))
        .map(|d| format!("{}\n\n", d.render(checked.sources(), false)))
        .collect()
}

impl LivePolicy {
    /// The policy `checked` (named `origin`) is what `handle` runs now.
    pub fn new(
        handle: ProgramHandle,
        stats: Arc<Stats>,
        bindings: Bindings,
        origin: String,
        checked: &netvm_lang::Checked,
    ) -> LivePolicy {
        let source = checked.sources().get(netvm_lang::FileId(0)).text.clone();
        let rules = checked
            .policy
            .as_ref()
            .map(|p| policy_table::rule_texts(p, &checked.program))
            .unwrap_or_default();
        LivePolicy {
            handle,
            stats,
            bindings,
            started: Instant::now(),
            installed: Mutex::new(Installed {
                origin,
                source,
                rules,
                version: 0,
            }),
            uploads: Mutex::default(),
        }
    }

    fn installed(&self) -> std::sync::MutexGuard<'_, Installed> {
        // A panic while holding the lock leaves consistent data (fields are replaced
        // whole after a successful swap), so a poisoned lock is still usable.
        self.installed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The running policy's name and source text.
    pub fn source(&self) -> (String, String) {
        let installed = self.installed();
        (installed.origin.clone(), installed.source.clone())
    }

    /// Check `source` (named `origin`), compile it and swap it in. On any error the
    /// running policy stays as it was.
    pub fn reload(&self, origin: &str, source: String) -> Result<ReloadReport, ReloadError> {
        let mut installed = self.installed();
        let start = Instant::now();
        let checked = check_source(origin, &source);
        let Some(policy) = &checked.policy else {
            return Err(ReloadError::Rejected {
                diagnostics: render_diagnostics(&checked, |_| true),
            });
        };
        let check = start.elapsed();
        let diff_start = Instant::now();
        let rules = policy_table::rule_texts(policy, &checked.program);
        let diff = PolicyDiff::between(&installed.rules, &rules);
        let diff_time = diff_start.elapsed();
        let warnings = checked
            .diagnostics
            .iter()
            .map(|d| d.render(checked.sources(), false))
            .collect();
        let done = policy_table::reload(&self.handle, policy).map_err(ReloadError::Refused)?;
        *installed = Installed {
            origin: origin.to_string(),
            source,
            rules,
            version: installed.version + 1,
        };
        Ok(ReloadReport {
            origin: origin.to_string(),
            diff,
            check_ms: ms(check),
            diff_ms: ms(diff_time),
            compile_ms: ms(done.compile),
            swap_us: done.swap.as_secs_f64() * 1e6,
            engine: done.engine,
            counters_carried: done.counters_carried,
            warnings,
        })
    }

    /// Re-read `path` and reload it (SIGHUP, the REPL's `:reload`).
    pub fn reload_file(&self, path: &str) -> Result<ReloadReport, ReloadError> {
        let source = std::fs::read_to_string(path)
            .map_err(|e| ReloadError::Unreadable(format!("cannot read `{path}`: {e}")))?;
        self.reload(path, source)
    }

    /// Every counter now, by name.
    pub fn stats(&self) -> SwitchStats {
        let program = self.handle.load();
        let table = &program.table;
        let s = &self.stats;
        let ports = table
            .port_names
            .iter()
            .enumerate()
            .map(|(i, name)| (i, name, s.port(i)))
            .map(|(i, name, c)| PortRow {
                name: name.clone(),
                driver: self
                    .bindings
                    .port_drivers
                    .get(i)
                    .cloned()
                    .unwrap_or_default(),
                rx_packets: c.rx_packets,
                rx_bytes: c.rx_bytes,
                tx_packets: c.tx_packets,
                tx_bytes: c.tx_bytes,
            })
            .collect();
        let vms = table
            .vm_names
            .iter()
            .enumerate()
            .map(|(i, name)| (i, name, s.vm(i)))
            .map(|(i, name, c)| VmRow {
                name: name.clone(),
                function: self
                    .bindings
                    .vm_functions
                    .get(i)
                    .cloned()
                    .unwrap_or_default(),
                trusted: table.vm_trusted.get(i).copied().unwrap_or(false),
                inline: self.bindings.vms_inline,
                packets_in: c.packets_in,
                mirrored_in: c.mirrored_in,
                passed: c.passed,
                dropped: c.dropped,
                copied_bytes: c.copied_bytes,
                // What a VM says of itself comes at the end of a run, not from live counters.
                summary: None,
            })
            .collect();
        let rules = table
            .rules
            .iter()
            .chain(std::iter::once(&table.default))
            .zip(program.rule_totals())
            .map(|(rule, (packets, bytes))| RuleRow {
                name: rule.name.clone(),
                packets,
                bytes,
            })
            .collect();
        let counters = table
            .counter_names
            .iter()
            .cloned()
            .zip(program.named_totals())
            .collect();
        let drops = netvm_runtime::stats::DropReason::ALL
            .iter()
            .map(|&r| (r.name().to_string(), s.drops(r)))
            .filter(|(_, n)| *n > 0)
            .collect();
        SwitchStats {
            elapsed_s: self.started.elapsed().as_secs_f64(),
            ports,
            vms,
            rules,
            counters,
            drops,
            rx: s.rx_total(),
            tx: s.tx_total(),
            dropped: s.drop_total(),
        }
    }

    fn take_upload(&self, name: &str) -> Result<String, String> {
        let mut uploads = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
        uploads
            .remove(name)
            .map(|u| u.text)
            .ok_or_else(|| format!("no upload `{name}` (send it with `stage` first)"))
    }

    /// Answer one control-socket op (see the module doc).
    pub fn answer(&self, op: &str, args: &Value) -> Result<Value, String> {
        let offset = |name: &str| args.get(name).and_then(Value::as_u64).unwrap_or(0) as usize;
        match op {
            // {offset} → a slice of the running policy's text.
            "policy" => {
                let installed = self.installed();
                let at = offset("offset");
                let slice = text_slice(&installed.source, at)?;
                Ok(json!({
                    "origin": installed.origin,
                    "version": installed.version,
                    "total": installed.source.len(),
                    "offset": at,
                    "source": slice,
                }))
            }
            // {upload, offset, text} → append a slice to an upload.
            "stage" => {
                let name = args
                    .get("upload")
                    .and_then(Value::as_str)
                    .ok_or("`stage` needs `upload`, a name for the upload")?;
                let text = args
                    .get("text")
                    .and_then(Value::as_str)
                    .ok_or("`stage` needs `text`")?;
                let mut uploads = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
                uploads.retain(|_, u| u.last_slice.is_some_and(|t| t.elapsed() < UPLOAD_IDLE));
                let held: usize = uploads.values().map(|u| u.text.len()).sum();
                if held + text.len() > UPLOAD_BYTES_MAX {
                    return Err(format!("uploads in progress exceed {UPLOAD_BYTES_MAX} bytes"));
                }
                if !uploads.contains_key(name) && uploads.len() >= UPLOADS_MAX {
                    return Err(format!("{UPLOADS_MAX} uploads are already in progress"));
                }
                let upload = uploads.entry(name.to_string()).or_default();
                if offset("offset") != upload.text.len() {
                    let have = upload.text.len();
                    uploads.remove(name);
                    return Err(format!(
                        "upload `{name}`: slice at offset {} but {have} bytes received; start over",
                        offset("offset")
                    ));
                }
                upload.text.push_str(text);
                upload.last_slice = Some(Instant::now());
                Ok(json!({ "staged": upload.text.len() }))
            }
            // {source | upload, origin} → check, compile, swap; the report or diagnostics.
            "reload" => {
                let inline = args.get("source").and_then(Value::as_str);
                let upload = args.get("upload").and_then(Value::as_str);
                let source = match (inline, upload) {
                    (Some(text), _) => text.to_string(),
                    (None, Some(name)) => self.take_upload(name)?,
                    (None, None) => {
                        return Err("`reload` needs `source` (the policy's text) or `upload`".into())
                    }
                };
                let origin = match args.get("origin").and_then(Value::as_str) {
                    Some(o) => o.to_string(),
                    None => self.source().0,
                };
                let mut report = self.reload(&origin, source).map_err(|e| {
                    let full = e.full();
                    // The reply must fit one message: keep the first diagnostics.
                    match text_slice(&full, 0) {
                        Ok(cut) if cut.len() < full.len() => {
                            format!("{cut}\n... (diagnostics cut; run `netvm check` for all)\n{e}")
                        }
                        _ => full,
                    }
                })?;
                fit_in_one_message(&mut report);
                Ok(json!({ "report": report }))
            }
            // {rules_from} → every counter, with at most RULES_PER_REPLY rules.
            "stats" => {
                let mut stats = self.stats();
                let total = stats.rules.len();
                let from = offset("rules_from").min(total);
                stats.rules = stats.rules.drain(from..).take(RULES_PER_REPLY).collect();
                Ok(json!({ "stats": stats, "rules_total": total, "rules_from": from }))
            }
            other => Err(format!(
                "unknown op `{other}` (this switch answers hello, attach, status, policy, stage, reload, stats)"
            )),
        }
    }
}

/// Shorten a reload's report so that its reply fits one socket message whatever the
/// policy: at most [`LISTED_PER_KIND`] rules of each kind (the counts stay exact), rule
/// texts cut to [`LISTED_TEXT_CHARS`], and warnings up to [`TEXT_SLICE_BYTES`] in all,
/// then a line saying how many were left out.
fn fit_in_one_message(report: &mut ReloadReport) {
    fn cut(text: &mut String) {
        if let Some((at, _)) = text.char_indices().nth(LISTED_TEXT_CHARS) {
            text.truncate(at);
            text.push('…');
        }
    }
    report.diff = report.diff.capped(LISTED_PER_KIND);
    for rule in report.diff.added.iter_mut().chain(&mut report.diff.removed) {
        cut(&mut rule.text);
    }
    for (before, after) in &mut report.diff.changed {
        cut(&mut before.text);
        cut(&mut after.text);
    }
    let mut bytes = 0;
    let kept = report
        .warnings
        .iter()
        .take_while(|w| {
            bytes += w.len();
            bytes <= TEXT_SLICE_BYTES
        })
        .count();
    let left_out = report.warnings.len() - kept;
    report.warnings.truncate(kept);
    if left_out > 0 {
        report.warnings.push(format!(
            "... and {left_out} more warnings (`netvm check` shows them all)"
        ));
    }
}

/// The client side of the admin ops, for `netvm reload` and `netvm repl --connect`.
pub mod client {
    use netvm_runtime::control::{ControlClient, ControlError};
    use serde_json::{json, Value};

    use super::{text_slice, ReloadReport, SwitchStats, TEXT_SLICE_BYTES};

    fn field<T: serde::de::DeserializeOwned>(reply: &Value, name: &str) -> Result<T, ControlError> {
        let value = reply
            .get(name)
            .cloned()
            .ok_or_else(|| ControlError::Protocol(format!("the switch's reply has no `{name}`")))?;
        serde_json::from_value(value)
            .map_err(|e| ControlError::Protocol(format!("the switch's `{name}` is malformed: {e}")))
    }

    /// The running policy's name and text, read in slices (retried if a reload lands
    /// in between).
    pub fn policy(client: &mut ControlClient) -> Result<(String, String), ControlError> {
        'again: for _ in 0..5 {
            let mut text = String::new();
            let mut first: Option<(String, u64)> = None;
            loop {
                let reply = client.request("policy", json!({ "offset": text.len() }))?;
                let origin: String = field(&reply, "origin")?;
                let version: u64 = field(&reply, "version")?;
                let total: usize = field(&reply, "total")?;
                let slice: String = field(&reply, "source")?;
                match &first {
                    None => first = Some((origin, version)),
                    Some((_, v)) if *v != version => continue 'again,
                    Some(_) => {}
                }
                if slice.is_empty() && text.len() < total {
                    return Err(ControlError::Protocol(
                        "the switch sent an empty slice".into(),
                    ));
                }
                text.push_str(&slice);
                if text.len() >= total {
                    let (origin, _) = first.unwrap_or_default();
                    return Ok((origin, text));
                }
            }
        }
        Err(ControlError::Protocol(
            "the policy kept changing while it was read".into(),
        ))
    }

    /// Hand `source` (named `origin`) to the switch: one message when it is small, else
    /// uploaded in slices first. A refusal is `ControlError::Remote` with the diagnostics.
    pub fn reload(
        client: &mut ControlClient,
        origin: &str,
        source: &str,
    ) -> Result<ReloadReport, ControlError> {
        let reply = if source.len() <= TEXT_SLICE_BYTES {
            client.request("reload", json!({ "origin": origin, "source": source }))?
        } else {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let upload = format!("{}-{nanos}", std::process::id());
            let mut offset = 0;
            while offset < source.len() {
                let slice = text_slice(source, offset).map_err(ControlError::Protocol)?;
                client.request(
                    "stage",
                    json!({ "upload": upload, "offset": offset, "text": slice }),
                )?;
                offset += slice.len();
            }
            client.request("reload", json!({ "origin": origin, "upload": upload }))?
        };
        field(&reply, "report")
    }

    /// Every counter, the rules read in pages.
    pub fn stats(client: &mut ControlClient) -> Result<SwitchStats, ControlError> {
        let reply = client.request("stats", json!({}))?;
        let mut stats: SwitchStats = field(&reply, "stats")?;
        let total: usize = field(&reply, "rules_total")?;
        while stats.rules.len() < total {
            let reply = client.request("stats", json!({ "rules_from": stats.rules.len() }))?;
            let page: SwitchStats = field(&reply, "stats")?;
            if page.rules.is_empty() {
                break;
            }
            stats.rules.extend(page.rules);
        }
        Ok(stats)
    }
}

impl netvm_runtime::control::AdminHandler for LivePolicy {
    fn handle(&self, op: &str, args: &Value) -> Result<Value, String> {
        self.answer(op, args)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;
    use netvm_runtime::Program;

    const POLICY: &str = "port a\nport b\nrule web : tcp.dport == 80 => out b\ndefault => out b\n";

    fn live() -> LivePolicy {
        let checked = check_source("live.nvr", POLICY);
        let policy = checked.policy.as_ref().expect("the test policy checks");
        let (classifier, _) = policy_table::compile(policy).unwrap();
        let handle = ProgramHandle::new(
            Program::new(classifier, policy_table::policy_table(policy)).unwrap(),
        );
        LivePolicy::new(
            handle,
            Arc::new(Stats::new(2, 0)),
            Bindings::default(),
            "live.nvr".into(),
            &checked,
        )
    }

    #[test]
    fn text_slices_end_on_character_boundaries_and_cover_the_text() {
        let text = "é".repeat(TEXT_SLICE_BYTES); // two bytes each
        let mut offset = 0;
        let mut joined = String::new();
        while offset < text.len() {
            let slice = text_slice(&text, offset).unwrap();
            assert!(slice.len() <= TEXT_SLICE_BYTES && !slice.is_empty());
            joined.push_str(slice);
            offset += slice.len();
        }
        assert_eq!(joined, text);
        assert!(text_slice(&text, 1).is_err(), "inside a character");
        assert!(text_slice(&text, text.len() + 1).is_err());
    }

    #[test]
    fn an_upload_in_slices_reloads_and_an_out_of_order_slice_is_refused() {
        let live = live();
        let next = POLICY.replace("rule web", "rule dns : udp => out b\nrule web");
        let (head, tail) = next.split_at(10);
        let stage = |offset: usize, text: &str| {
            live.answer(
                "stage",
                &json!({ "upload": "u1", "offset": offset, "text": text }),
            )
        };
        stage(0, head).unwrap();
        assert!(stage(3, tail).unwrap_err().contains("start over"));
        stage(0, head).unwrap();
        stage(head.len(), tail).unwrap();
        let reply = live.answer("reload", &json!({ "upload": "u1" })).unwrap();
        let report: ReloadReport = serde_json::from_value(reply["report"].clone()).unwrap();
        assert_eq!(report.diff.counts(), [1, 0, 0]);
        assert_eq!(live.source().1, next);
        assert!(live
            .answer("reload", &json!({ "upload": "u1" }))
            .unwrap_err()
            .contains("no upload"));
        let policy = live.answer("policy", &json!({})).unwrap();
        assert_eq!(policy["version"], 1);
        assert_eq!(policy["total"], next.len());
    }

    #[test]
    fn a_reload_reply_of_a_huge_change_still_fits_one_message() {
        let live = live();
        let mut next = String::from("port a\nport b\n");
        for i in 0..300 {
            // Long rules, every one shadowed by the first (a warning each).
            let set: Vec<String> = (1..100).map(|p| p.to_string()).collect();
            next.push_str(&format!(
                "rule r{i} : tcp.dport in {{{}}} => drop\n",
                set.join(", ")
            ));
        }
        next.push_str("default => out b\n");
        let reply = live.answer("reload", &json!({ "source": next })).unwrap();
        let line = serde_json::to_string(&reply).unwrap();
        assert!(
            line.len() < netvm_runtime::control::MAX_LINE,
            "{} bytes",
            line.len()
        );
        let report: ReloadReport = serde_json::from_value(reply["report"].clone()).unwrap();
        assert_eq!(report.diff.counts(), [300, 1, 0]);
        assert_eq!(report.diff.added.len(), LISTED_PER_KIND);
        let longest = report
            .diff
            .added
            .iter()
            .map(|r| r.text.chars().count())
            .max();
        assert_eq!(
            longest,
            Some(LISTED_TEXT_CHARS + 1),
            "cut, with an ellipsis"
        );
        assert!(report.warnings.last().unwrap().contains("more warnings"));
    }

    #[test]
    fn a_refused_reload_answers_the_diagnostics_and_keeps_the_policy() {
        let live = live();
        let broken = POLICY.replace("out b\ndefault", "out c\ndefault");
        let err = live
            .answer("reload", &json!({ "source": broken, "origin": "x.nvr" }))
            .unwrap_err();
        assert!(err.contains("x.nvr:3:"), "{err}");
        assert!(err.ends_with("still running the previous policy"), "{err}");
        assert_eq!(live.source(), ("live.nvr".to_string(), POLICY.to_string()));
        assert!(live
            .answer("frobnicate", &json!({}))
            .unwrap_err()
            .contains("unknown op"));
    }

    #[test]
    fn the_stats_reply_carries_the_report_rows_with_every_counter() {
        let checked = check_source(
            "vm.nvr",
            "port a\nport b\nvm fw trusted\ndefault => chain fw -> out b\n",
        );
        let policy = checked.policy.as_ref().expect("the test policy checks");
        let (classifier, _) = policy_table::compile(policy).unwrap();
        let handle = ProgramHandle::new(
            Program::new(classifier, policy_table::policy_table(policy)).unwrap(),
        );
        let stats = Arc::new(Stats::new(2, 1));
        let shard = stats.shard(0);
        shard.ports[1].tx_bytes.add(1500);
        shard.vms[0].packets_in.add(3);
        shard.vms[0].copied_bytes.add(192);
        let bindings = Bindings {
            port_drivers: vec!["gen".into(), "null".into()],
            vm_functions: vec!["forward".into()],
            vms_inline: true,
        };
        let live = LivePolicy::new(handle, stats, bindings, "vm.nvr".into(), &checked);
        let reply = live.answer("stats", &json!({})).unwrap();
        let wire: SwitchStats = serde_json::from_value(reply["stats"].clone()).unwrap();
        let now = live.stats();
        assert_eq!(
            (&wire.ports, &wire.vms, &wire.rules),
            (&now.ports, &now.vms, &now.rules),
            "the wire form reads back whole"
        );
        assert_eq!(
            wire.ports[1],
            PortRow {
                name: "b".into(),
                driver: "null".into(),
                rx_packets: 0,
                rx_bytes: 0,
                tx_packets: 0,
                tx_bytes: 1500,
            }
        );
        let fw = &wire.vms[0];
        assert_eq!(
            (fw.name.as_str(), fw.trusted, fw.inline),
            ("fw", true, true)
        );
        assert_eq!((fw.packets_in, fw.copied_bytes), (3, 192));
        assert_eq!(reply["stats"]["vms"][0]["copied_bytes"], 192);
    }
}
