//! `netvm run` end to end: a capture in, a policy with chains, balance, mirror and an
//! untrusted VM, a capture out; the output holds exactly the expected frames, byte for
//! byte, in per-flow order, and the run ends with every buffer back in the pool and
//! rx = tx + drops.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use netvm_packet::{BaseProto, Decoded, Field, PacketSpec};

mod support;
use support::{read_pcap, write_pcap};

const POLICY: &str = r#"
port wan
port lan
vm fw trusted
vm ids
vm lb1, lb2 trusted
group lb = {lb1, lb2}

rule ssh  : tcp and tcp.dport == 22                        => count ssh, drop
rule web  : tcp and tcp.dport == 80                        => mirror ids, chain fw -> ids -> out lan
rule dns  : udp                                            => chain balance lb by flow -> out lan
rule tap  : tcp and tcp.dport == 443                       => mirror ids, out lan
default                                                    => out lan
"#;

#[derive(Clone, Copy)]
enum Kind {
    Ssh,
    Web,
    Dns,
    Tls,
    Icmp,
}

fn frame(kind: Kind, flow: u32, seq: u8, dscp: Option<u128>) -> Vec<u8> {
    let base = match kind {
        Kind::Dns => BaseProto::Udp,
        Kind::Icmp => BaseProto::Icmp,
        _ => BaseProto::Tcp,
    };
    let mut spec = PacketSpec::new(base);
    spec.set(Field::IpSrc, 0x0a00_0000 + u128::from(flow))
        .set(Field::IpDst, 0xcb00_7101);
    match kind {
        Kind::Ssh => spec.set(Field::TcpDport, 22),
        Kind::Web => spec.set(Field::TcpDport, 80),
        Kind::Tls => spec.set(Field::TcpDport, 443),
        Kind::Dns => spec.set(Field::UdpSport, 1000 + u128::from(flow)),
        Kind::Icmp => spec.set(Field::IcmpType, 8),
    };
    if let Some(d) = dscp {
        spec.set(Field::IpDscp, d);
    }
    spec.payload = Some(vec![seq; 20 + (flow as usize % 7)]);
    spec.build().expect("test frames build")
}

/// Frames of each flow (keyed by the low bits of the source address), in order.
type PerFlow = BTreeMap<u32, Vec<Vec<u8>>>;

/// Input frames and, per flow, the frames expected out.
fn traffic() -> (Vec<Vec<u8>>, PerFlow) {
    let kinds = [Kind::Ssh, Kind::Web, Kind::Dns, Kind::Tls, Kind::Icmp];
    let mut input = Vec::new();
    let mut expected = PerFlow::new();
    for seq in 0..40u8 {
        for flow in 0..10u32 {
            let kind = kinds[flow as usize % kinds.len()];
            input.push(frame(kind, flow, seq, None));
            let out = match kind {
                Kind::Ssh => None,
                // fw rewrites DSCP to 46 (the builder computes the right checksum).
                Kind::Web => Some(frame(kind, flow, seq, Some(46))),
                _ => Some(frame(kind, flow, seq, None)),
            };
            if let Some(out) = out {
                expected.entry(flow).or_default().push(out);
            }
        }
    }
    (input, expected)
}

fn write_pcapng(path: &Path, frames: &[Vec<u8>]) {
    use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
    use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionBlock;
    let file = std::fs::File::create(path).unwrap();
    let mut w = pcap_file::pcapng::PcapNgWriter::new(file).unwrap();
    w.write_pcapng_block(InterfaceDescriptionBlock {
        linktype: pcap_file::DataLink::ETHERNET,
        snaplen: 0,
        options: vec![],
    })
    .unwrap();
    for f in frames {
        w.write_pcapng_block(EnhancedPacketBlock {
            interface_id: 0,
            timestamp: std::time::Duration::ZERO,
            original_len: f.len() as u32,
            data: std::borrow::Cow::Borrowed(f),
            options: vec![],
        })
        .unwrap();
    }
}

fn flow_of(frame: &[u8]) -> u32 {
    (Decoded::new(frame)
        .field(Field::IpSrc)
        .expect("IPv4 source")
        - 0x0a00_0000) as u32
}

fn run_switch(dir: &Path, input_name: &str, extra: &[&str]) -> serde_json::Value {
    let policy = dir.join("e2e.nvr");
    std::fs::write(&policy, POLICY).unwrap();
    let out = dir.join("out.pcap");
    let tap = dir.join("ids.pcap");
    let stats = dir.join("stats.json");
    let output = Command::new(env!("CARGO_BIN_EXE_netvm"))
        .arg("run")
        .arg(&policy)
        .arg("--bind")
        .arg(format!("wan=pcap:rx={}", dir.join(input_name).display()))
        .arg("--bind")
        .arg(format!("lan=pcap:tx={}", out.display()))
        .args([
            "--vm",
            "fw=rewrite:dscp=46",
            "--vm",
            "lb1=forward",
            "--vm",
            "lb2=counter",
        ])
        .arg("--vm")
        .arg(format!("ids=pcap-tap:{}", tap.display()))
        .args(["--hugepages", "off", "--idle", "sleep", "--duration", "20"])
        .args(extra)
        .arg("--stats-json")
        .arg(&stats)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "netvm run failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(stats).unwrap()).unwrap()
}

fn check_run(mode: &str, pcapng: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (input, expected) = traffic();
    let name = if pcapng { "in.pcapng" } else { "in.pcap" };
    if pcapng {
        write_pcapng(&dir.path().join(name), &input);
    } else {
        write_pcap(&dir.path().join(name), &input);
    }
    let stats = run_switch(dir.path(), name, &["--vm-mode", mode]);

    let got = read_pcap(&dir.path().join("out.pcap"));
    let mut per_flow = PerFlow::new();
    for f in got {
        per_flow.entry(flow_of(&f)).or_default().push(f);
    }
    assert_eq!(per_flow.len(), expected.len(), "flows out ({mode})");
    for (flow, frames) in &expected {
        assert!(
            per_flow.get(flow) == Some(frames),
            "flow {flow} ({mode}): output differs from the expected frames"
        );
    }

    // Every web and 443 packet was mirrored to the untrusted tap, web ones also went
    // through it on the chain (rewritten by fw first).
    let tapped = read_pcap(&dir.path().join("ids.pcap"));
    assert_eq!(
        tapped.len(),
        40 * (2 + 2 + 2),
        "ids saw mirrors and chain visits"
    );

    assert_eq!(stats["rx"], 400);
    assert_eq!(stats["tx"], 320);
    assert_eq!(stats["dropped"], 80);
    assert_eq!(stats["drops"]["policy"], 80);
    assert_eq!(stats["balanced"], true);
    assert_eq!(stats["buffers"], stats["buffers_returned"]);
    assert_eq!(stats["private_leaks"].as_array().unwrap().len(), 0);
    assert_eq!(stats["counters"]["ssh"], 80);
    let vms = stats["vms"].as_array().unwrap();
    let lb: u64 = vms[2..4]
        .iter()
        .map(|v| v["packets_in"].as_u64().unwrap())
        .sum();
    assert_eq!(lb, 80, "every DNS packet visits one member of the group");
    assert!(
        vms[1]["copied_bytes"].as_u64().unwrap() > 0,
        "ids works on copies"
    );

    if let Ok(tcpdump) = Command::new("tcpdump")
        .args(["-nn", "-r"])
        .arg(dir.path().join("out.pcap"))
        .output()
    {
        let lines = String::from_utf8_lossy(&tcpdump.stdout).lines().count();
        assert_eq!(lines, 320, "tcpdump reads every packet of the output");
    } else {
        eprintln!("skipping the tcpdump check: tcpdump is not installed");
    }
}

#[test]
fn inline_vms_deliver_exactly_the_expected_frames_per_flow() {
    check_run("inline", false);
}

#[test]
fn threaded_vms_deliver_exactly_the_expected_frames_per_flow_from_pcapng() {
    check_run("thread", true);
}

#[test]
fn the_embedded_default_runs_quickstart_with_no_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let stats = dir.path().join("q.json");
    let output = Command::new(env!("CARGO_BIN_EXE_netvm"))
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples"))
        .args([
            "run",
            "quickstart.nvr",
            "--duration",
            "0.5",
            "--idle",
            "sleep",
        ])
        .arg("--stats-json")
        .arg(&stats)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("accounting: rx = tx + dropped holds"),
        "{stdout}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(stats).unwrap()).unwrap();
    assert!(json["rx"].as_u64().unwrap() > 0);
    assert_eq!(json["balanced"], true);
}

/// `gen:...,prefilled=1` resends recycled buffers without rewriting them; through an
/// untrusted VM (copy in, copy back) and a DSCP-rewriting trusted one, what leaves must
/// still be exactly the generator's templates with the DSCP set, every packet counted.
#[test]
fn prefilled_generator_frames_stay_exact_through_copies_and_rewrites() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("prefilled.nvr");
    std::fs::write(
        &policy,
        "port src\nport dst\nvm ids\nvm fw trusted\nvm mark trusted\n\
         rule ssh : tcp and tcp.dport == 22 => chain ids -> mark -> out dst\n\
         default => chain ids -> fw -> out dst\n",
    )
    .unwrap();
    let out = dir.path().join("out.pcap");
    let gen = "gen:flows=16,size=200,count=3000,prefilled=1";
    for mode in ["inline", "thread"] {
        let output = Command::new(env!("CARGO_BIN_EXE_netvm"))
            .arg("run")
            .arg(&policy)
            .args(["--bind", &format!("src={gen}")])
            .args(["--bind", &format!("dst=pcap:tx={}", out.display())])
            .args(["--vm", "mark=rewrite:dscp=46", "--vm-mode", mode])
            .args(["--idle", "sleep", "--buffers", "256"])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let templates = netvm_runtime::port::gen::GenPort::new(
            &netvm_runtime::port::gen::GenConfig::parse(&gen[4..]).unwrap(),
            0,
        )
        .unwrap()
        .templates()
        .to_vec();
        let frames = read_pcap(&out);
        assert_eq!(frames.len(), 3000, "{mode}");
        let mut marked = 0;
        for f in &frames {
            let d = Decoded::new(f);
            if d.field(Field::TcpDport) == Some(22) {
                assert_eq!(f[15] >> 2, 46, "{mode}: ssh frames are marked");
                marked += 1;
            } else {
                assert!(
                    templates.contains(f),
                    "{mode}: a frame that is not a template"
                );
            }
        }
        assert!(marked > 0, "{mode}: the generator sent no ssh");
    }
}
