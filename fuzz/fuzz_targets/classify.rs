//! Frame decoding and classification on arbitrary bytes: nothing on the data path may panic.
//!
//! The first input byte picks one of a few fixed policies (its low bits) and the arrival port
//! (its high bits); the rest is the frame. The policies together read every field of the
//! catalogue, every kind of value (integers, masks, ranges, sets, prefixes, MACs, IPv6) and
//! every payload operation, so every decoder path that a classifier can reach is exercised.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use netvm_compiler::{lower, Interpreter, NO_PORT};
use netvm_packet::{Decoded, Field};

/// Ethernet, VLAN, IPv4 and L4 headers: every scalar field kind, masks, ranges and sets.
const HEADERS: &str = r#"
port lan
port wan
const WEB = {80, 443, 8000..8100}
rule r_eth   : eth.src == 02:00:00:00:00:09 or eth.dst == ff:ff:ff:ff:ff:ff or eth.type == 0x88b6 => out lan
rule r_vlan  : vlan and vlan.id in 1..100 and vlan.pcp >= 3                => out lan
rule r_arp   : arp                                                         => out lan
rule r_ip    : ip.src in {192.0.2.0/24, 10.0.0.0/8} and ip.dst != 10.0.0.1 and ip.ttl < 5 => out lan
rule r_ipf   : ip.dscp == 46 or ip.len > 1400 or (ip.frag and ip.proto == 17) => out lan
rule r_tcp   : tcp.flags.syn and not tcp.flags.ack and tcp.flags & 0x3f == 0x02 and tcp.sport < 1024 => out lan
rule r_flags : tcp.flags.fin or tcp.flags.rst or tcp.flags.psh or tcp.flags.urg => drop
rule r_udp   : udp.dport == 53 and udp.sport != 53                         => out lan
rule r_l4    : l4.dport in WEB and l4.sport not in 0..1023                 => out lan
rule r_icmp  : icmp.type == 8 and icmp.code == 0                           => out lan
rule r_len   : pkt.len > 1000 or payload.len == 3                          => out lan
rule r_port  : in_port == wan                                              => out lan
default => drop
"#;

/// IPv6 and ICMPv6 (extension headers are walked to reach them).
const IPV6: &str = r#"
port lan
rule r_src   : ip6.src in 2001:db8::/32 and ip6.dst != ::1                 => out lan
rule r_hdr   : ip6.flow == 5 or ip6.hlim == 1 or ip6.nh == 0               => out lan
rule r_icmp6 : icmp6.type == 128 and icmp6.code == 0                       => out lan
rule r_l4    : ip6 and (tcp.dport == 22 or udp.dport in 5000..6000)        => drop
rule r_len   : ip6 and payload.len >= 8 and payload[7] & 0x0f == 0x01      => out lan
default => out lan
"#;

/// Payload operations: literals, prefixes, regexes (with flags) and byte indexing.
const PAYLOAD: &str = r#"
port lan
vm ids
const SQLI = /union\s+select/i
rule r_tls   : payload[0] == 0x16 and payload[1] == 0x03 and payload[5] & 0xf0 == 0x10 => to ids
rule r_far   : payload[1499] == 0xff                                       => to ids
rule r_ssh   : payload starts_with "SSH-"                                  => mirror ids, out lan
rule r_evil  : payload contains "evil\x00\xff" or payload contains "GET /admin" => drop
rule r_sqli  : tcp and payload matches SQLI                                => to ids
rule r_dot   : udp and payload matches /a.b/s                              => count dotall, drop
rule r_empty : payload.len == 0                                            => out lan
default => out lan
"#;

const POLICIES: [&str; 3] = [HEADERS, IPV6, PAYLOAD];

/// The engines, checked and lowered once for the whole run.
fn engines() -> &'static [Interpreter] {
    static ENGINES: OnceLock<Vec<Interpreter>> = OnceLock::new();
    ENGINES.get_or_init(|| {
        POLICIES
            .iter()
            .map(|text| {
                let checked = netvm_lang::check_text("fuzz.nvr", text);
                let Some(policy) = checked.policy else {
                    let diags: Vec<String> = checked
                        .diagnostics
                        .iter()
                        .map(|d| d.render(checked.sources(), false))
                        .collect();
                    panic!("a fuzz policy does not check:\n{}", diags.join("\n"));
                };
                Interpreter::new(lower(&policy)).expect("the fuzz policies' regexes compile")
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, frame)) = data.split_first() else {
        return;
    };
    let engines = engines();
    let engine = &engines[usize::from(selector) % engines.len()];
    let port = match selector >> 6 {
        0 => NO_PORT,
        n => u32::from(n - 1),
    };
    let _ = engine.classify(frame, port);

    let decoded = Decoded::new(frame);
    for &field in Field::ALL {
        let _ = decoded.field(field);
    }
    let _ = decoded.payload();
    let _ = decoded.describe();
});
