//! Properties of the front end over random input:
//! - random well-typed policies check clean, print (`netvm fmt`), and re-parse to the same tree;
//! - random text never panics the parser, the checker or the formatter.

use netvm_lang::ast::File;
use netvm_lang::parse::parse_file;
use netvm_lang::print;
use netvm_lang::FileId;
use proptest::prelude::*;

/// A comparison on a field with a value of its type.
fn comparison() -> impl Strategy<Value = String> {
    prop_oneof![
        (
            0u32..=65535,
            prop::sample::select(vec![
                "tcp.dport",
                "tcp.sport",
                "udp.dport",
                "l4.sport",
                "l4.dport",
                "payload.len",
                "pkt.len",
                "ip.len",
                "eth.type"
            ]),
            prop::sample::select(vec!["==", "!=", "<", "<=", ">", ">="])
        )
            .prop_map(|(v, f, op)| format!("{f} {op} {v}")),
        (
            0u32..=255,
            prop::sample::select(vec![
                "ip.proto",
                "ip.ttl",
                "ip6.nh",
                "ip6.hlim",
                "icmp.type",
                "icmp.code",
                "icmp6.type",
                "tcp.flags",
                "payload[0]",
                "payload[7]"
            ])
        )
            .prop_map(|(v, f)| format!("{f} == {v}")),
        (0u32..=4095, 0u32..=4095).prop_map(|(a, b)| format!(
            "vlan.id in {}..{}",
            a.min(b),
            a.max(b)
        )),
        (0u32..=7).prop_map(|v| format!("vlan.pcp != {v}")),
        (0u32..=63).prop_map(|v| format!("ip.dscp == {v}")),
        (0u32..=0xfffff).prop_map(|v| format!("ip6.flow == 0x{v:x}")),
        (any::<u32>(), 0u8..=32).prop_map(|(a, len)| {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            format!("ip.src in {}/{len}", std::net::Ipv4Addr::from(a & mask))
        }),
        (any::<u32>(), any::<bool>()).prop_map(|(a, neg)| format!(
            "ip.dst {} {}",
            if neg { "!=" } else { "==" },
            std::net::Ipv4Addr::from(a)
        )),
        (any::<u128>(), 0u8..=128).prop_map(|(a, len)| {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            format!("ip6.src in {}/{len}", std::net::Ipv6Addr::from(a & mask))
        }),
        any::<[u8; 6]>().prop_map(|m| format!(
            "eth.src == {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )),
        prop::collection::vec(0u16..=65535, 1..4).prop_map(|v| format!(
            "tcp.dport not in {{{}}}",
            v.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")
        )),
        (0u8..=255, 0u8..=255).prop_map(|(m, v)| format!("tcp.flags & {m} == {}", v & m)),
        prop::sample::select(vec![
            "tcp",
            "udp",
            "ip",
            "ip6",
            "arp",
            "vlan",
            "eth",
            "icmp",
            "icmp6",
            "ip.frag",
            "tcp.flags.syn",
            "tcp.flags.ack"
        ])
        .prop_map(str::to_string),
        "[a-zA-Z0-9 /]{0,8}".prop_map(|s| format!("payload contains \"{s}\"")),
        prop::collection::vec(any::<u8>(), 0..6)
            .prop_map(|b| format!("payload starts_with {}", print::string(&b))),
        prop::sample::select(vec![
            "/GET \\/[a-z]+/",
            "/^SSH-2\\.0/i",
            "/a.b/s",
            "/\\x16\\x03[\\x00-\\x03]/"
        ])
        .prop_map(|r| format!("payload matches {r}")),
    ]
}

fn predicate() -> impl Strategy<Value = String> {
    comparison().prop_recursive(3, 16, 3, |inner| {
        prop_oneof![
            inner.clone().prop_map(|p| format!("not {p}")),
            inner.clone().prop_map(|p| format!("({p})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} and {b}")),
            (inner.clone(), inner).prop_map(|(a, b)| format!("{a} or {b}")),
        ]
    })
}

fn action() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "drop",
        "out lan",
        "to fw",
        "chain fw -> ids -> out lan",
        "chain fw -> balance web by (ip.src, l4.dport) -> drop",
        "balance web",
        "balance web by flow",
        "balance web by ip6.src",
        "mirror ids, count hits, out wan",
        "count c1, drop",
    ])
    .prop_map(str::to_string)
}

/// What may follow a vm declaration's names: a trust level and a failure policy, each optional.
fn vm_options() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["", " trusted", " untrusted"]),
        prop::sample::select(vec!["", " on_failure drop", " on_failure bypass"]),
    )
        .prop_map(|(trust, on_failure)| format!("{trust}{on_failure}"))
}

fn policy() -> impl Strategy<Value = String> {
    (
        prop::collection::vec((predicate(), action()), 1..6),
        [vm_options(), vm_options(), vm_options()],
    )
        .prop_map(|(rules, [fw, ids, workers])| {
        let mut text = format!(
            "port lan\nport wan = pcap(\"rx=in.pcap\")\nvm fw{fw}\nvm ids{ids}\nvm w1, w2{workers}\ngroup web = {{w1, w2}}\n",
        );
        for (i, (pred, action)) in rules.iter().enumerate() {
            text.push_str(&format!("rule r{i} : {pred} => {action}\n"));
        }
        text.push_str("default => out wan\n");
        text
    })
}

fn parse(text: &str) -> File {
    let (file, diags) = parse_file(FileId(0), text);
    assert!(diags.is_empty(), "{text}\n{diags:?}");
    file
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn well_typed_policies_print_and_reparse_to_the_same_tree(text in policy()) {
        let checked = netvm_lang::check_text("random.nvr", &text);
        let errors: Vec<_> = checked.diagnostics.iter().filter(|d| d.is_error()).collect();
        prop_assert!(errors.is_empty(), "{text}\n{errors:?}");
        let first = parse(&text);
        let printed = print::file(&first);
        let second = parse(&printed);
        prop_assert_eq!(&first, &second, "printed:\n{}", printed);
        let formatted = print::format_source(&text).expect("formats");
        prop_assert_eq!(parse(&formatted), first);
    }

    #[test]
    fn random_text_never_panics_the_front_end(text in "\\PC{0,200}") {
        let _ = netvm_lang::check_text("random.nvr", &text);
        let _ = print::format_source(&text);
    }

    #[test]
    fn policy_like_text_never_panics_the_front_end(
        text in "(rule|const|let|vm|port|group|test|default|import|on_failure|bypass|trusted|tcp|ip\\.src|==|=>|in|not|and|[{}(),.:/\"#0-9a-f ]|\n){0,60}"
    ) {
        let _ = netvm_lang::check_text("random.nvr", &text);
        let _ = print::format_source(&text);
    }
}
