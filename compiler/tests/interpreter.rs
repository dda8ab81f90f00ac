//! The reference interpreter on the spec's semantics, and on every input without panicking.

use netvm_compiler::{lower, Interpreter, NO_PORT};
use netvm_lang::check_text;
use netvm_packet::{BaseProto, Field, PacketSpec};
use proptest::prelude::*;

/// A policy that reads every field of the catalogue and every payload operation.
const EVERYTHING: &str = r#"
port lan
port wan
rule r_eth   : eth.src == 02:00:00:00:00:09 or eth.dst == 02:00:00:00:00:09 or eth.type == 0x88b6 => out lan
rule r_vlan  : vlan.id == 7 and vlan.pcp < 3                       => out lan
rule r_arp   : arp                                                 => out lan
rule r_ip    : ip.src in 192.0.2.0/24 and ip.ttl < 5 and ip.dscp != 0 and ip.len > 1400 => out lan
rule r_frag  : ip.frag and ip.proto == 17                          => out lan
rule r_ip6   : ip6.src in 2001:db8::/32 and ip6.flow == 5 and ip6.hlim == 1 and ip6.nh == 0 => out lan
rule r_tcp   : tcp.flags.syn and not tcp.flags.ack and tcp.flags & 0x3f == 0x02 and tcp.sport < 1024 => out lan
rule r_udp   : udp.dport == 53 and udp.sport != 53                 => out lan
rule r_l4    : l4.dport in {80, 443, 8000..8100} and l4.sport >= 1024 => out lan
rule r_icmp  : icmp.type == 8 and icmp.code == 0                   => out lan
rule r_icmp6 : icmp6.type == 128                                   => out lan
rule r_len   : pkt.len > 1000 or payload.len == 3                  => out lan
rule r_bytes : payload[0] == 0x16 and payload[5] & 0xf0 == 0x10    => out lan
rule r_dpi   : payload contains "evil" or payload starts_with "SSH-" or payload matches /union\s+select/i => out lan
rule r_port  : in_port == wan                                      => out lan
default => drop
"#;

fn engine(text: &str) -> (netvm_lang::Policy, Interpreter) {
    let checked = check_text("policy.nvr", text);
    let diags: Vec<String> = checked
        .diagnostics
        .iter()
        .map(|d| d.render(checked.sources(), false))
        .collect();
    let policy = checked
        .policy
        .unwrap_or_else(|| panic!("{}", diags.join("\n")));
    let engine = Interpreter::new(lower(&policy)).expect("compiles");
    (policy, engine)
}

/// The `EVERYTHING` engine, built once for all property cases.
fn everything() -> &'static Interpreter {
    static ENGINE: std::sync::OnceLock<Interpreter> = std::sync::OnceLock::new();
    ENGINE.get_or_init(|| engine(EVERYTHING).1)
}

fn rule_of(policy: &netvm_lang::Policy, index: Option<usize>) -> &str {
    index.map_or("default", |i| policy.rules[i].name.as_str())
}

#[test]
fn absent_headers_make_comparisons_false_and_their_negation_true() {
    let (policy, engine) = engine(
        "port lan\nrule ne : tcp.dport != 22 => out lan\nrule not_eq : not tcp.dport == 22 => drop\n",
    );
    let udp = PacketSpec::new(BaseProto::Udp).build().expect("builds");
    assert_eq!(rule_of(&policy, engine.classify(&udp, NO_PORT)), "not_eq");
    let mut ssh = PacketSpec::new(BaseProto::Tcp);
    ssh.set(Field::TcpDport, 22);
    let ssh = ssh.build().expect("builds");
    assert_eq!(rule_of(&policy, engine.classify(&ssh, NO_PORT)), "default");
    let web = PacketSpec::new(BaseProto::Tcp).build().expect("builds");
    assert_eq!(rule_of(&policy, engine.classify(&web, NO_PORT)), "ne");
}

#[test]
fn sets_use_the_members_of_the_fields_family() {
    let (policy, engine) = engine(
        "const S = {192.0.2.0/24, 2001:db8::/32}\nrule v4 : ip.src in S => drop\nrule v6 : ip6.src in S => drop\ndefault => drop\n",
    );
    let mut v4 = PacketSpec::new(BaseProto::Udp);
    v4.set(Field::IpSrc, 0xc000_0207);
    let mut v6 = PacketSpec::new(BaseProto::Udp);
    v6.set(Field::Ip6Src, 0x2001_0db8 << 96 | 1);
    assert_eq!(
        rule_of(&policy, engine.classify(&v4.build().expect("v4"), NO_PORT)),
        "v4"
    );
    assert_eq!(
        rule_of(&policy, engine.classify(&v6.build().expect("v6"), NO_PORT)),
        "v6"
    );
}

#[test]
fn in_port_is_false_when_the_port_is_unknown() {
    let (policy, engine) = engine(EVERYTHING);
    let frame = PacketSpec::new(BaseProto::Eth).build().expect("builds");
    assert_eq!(
        rule_of(&policy, engine.classify(&frame, NO_PORT)),
        "default"
    );
    let wan = policy.port_index("wan").expect("wan") as u32;
    assert_eq!(rule_of(&policy, engine.classify(&frame, wan)), "r_port");
}

#[test]
fn payload_tests_need_a_payload() {
    let (policy, engine) = engine(EVERYTHING);
    let mut dpi = PacketSpec::new(BaseProto::Tcp);
    dpi.set(Field::TcpDport, 5000);
    dpi.payload = Some(b"xx UNION   select 1".to_vec());
    assert_eq!(
        rule_of(&policy, engine.classify(&dpi.build().expect("b"), NO_PORT)),
        "r_dpi"
    );
    // 13 bytes: no Ethernet header, so no payload at all.
    assert_eq!(
        rule_of(&policy, engine.classify(b"evil evil evi", NO_PORT)),
        "default"
    );
}

fn spec() -> impl Strategy<Value = PacketSpec> {
    let base = prop::sample::select(BaseProto::ALL.to_vec());
    let payload = prop::option::of(prop::sample::select(vec![
        b"evil".to_vec(),
        b"SSH-2.0-x".to_vec(),
        b"a union select b".to_vec(),
        vec![0x16, 3, 1, 0, 0, 0x12],
        vec![1, 2, 3],
    ]));
    (base, payload, 0u16..1200, any::<bool>()).prop_map(|(base, payload, dport, vlan)| {
        let mut spec = PacketSpec::new(base);
        if vlan {
            spec.set(Field::VlanId, 7);
        }
        match base {
            BaseProto::Tcp | BaseProto::Udp => {
                spec.set(Field::L4Dport, u128::from(dport));
            }
            _ => {}
        }
        spec.payload = payload;
        spec
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn random_bytes_never_panic_the_interpreter(frame in prop::collection::vec(any::<u8>(), 0..256), port in 0u32..3) {
        let engine = everything();
        let _ = engine.classify(&frame, port);
        let _ = engine.classify(&frame, NO_PORT);
    }

    #[test]
    fn truncated_and_mutated_frames_never_panic_the_interpreter(
        spec in spec(), cut in any::<prop::sample::Index>(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4)
    ) {
        let engine = everything();
        let mut frame = spec.build().expect("builds");
        for (at, byte) in flips {
            let i = at.index(frame.len());
            frame[i] ^= byte;
        }
        for len in [cut.index(frame.len() + 1), 0, 13, 14, frame.len()] {
            let _ = engine.classify(&frame[..len.min(frame.len())], 1);
        }
    }
}
