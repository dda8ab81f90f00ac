//! `netvm classify`'s library path on ClassBench: both engines match the `.expected` files on
//! every line of every shared set (the JIT on the whole trace, single frames and bursts; the
//! interpreter, which scans every rule, on every line of the 1K sets and on an evenly spaced
//! sample of the others, to keep debug-build CI time in seconds), and the JIT compiles each
//! set in under a second (asserted in release builds only, and only for the 1K and 10K sets).
//! The 100K sets are ignored in debug builds (checking and building 100K rules there takes
//! minutes); `cargo test --release -p netvm-compiler --test classbench` runs them.
//!
//! The data lives outside the repository (`../shared/data/classbench/`); without it the tests
//! print a note and pass.

use std::path::PathBuf;
use std::time::Instant;

use netvm_compiler::classbench::{parse_expected, parse_trace};
use netvm_compiler::{lower, Interpreter, Jit, NO_PORT};

fn data_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/classbench");
    dir.is_dir().then_some(dir)
}

/// Checks one set (see the module doc); the interpreter checks every `interp_every`-th line.
fn check_set(name: &str, interp_every: usize) {
    let Some(dir) = data_dir() else {
        eprintln!("note: ../shared/data/classbench is absent; skipping {name}");
        return;
    };
    let read = |file: String| {
        std::fs::read_to_string(dir.join(&file)).unwrap_or_else(|e| panic!("{file}: {e}"))
    };
    let text = netvm_lang::import::classbench(&read(name.to_string()), name).expect("imports");
    let checked = netvm_lang::check_text("policy.nvr", &text);
    let policy = checked.policy.expect("the imported policy checks");
    let started = Instant::now();
    let ir = lower(&policy);
    let jit = Jit::compile(&ir).expect("compiles");
    let compile = started.elapsed();
    if !cfg!(debug_assertions) && policy.rules.len() < 20_000 {
        assert!(compile.as_secs_f64() < 1.0, "{name}: JIT took {compile:?}");
    }
    let interp = Interpreter::new(ir).expect("no regexes");
    let trace = parse_trace(&read(format!("{name}_trace"))).expect("parses");
    let expected = parse_expected(&read(format!("{name}_trace.expected"))).expect("parses");
    assert_eq!(trace.len(), expected.len());
    // The burst entry point (what `netvm bench` and the switch call) gives the same lines.
    let frames: Vec<Vec<u8>> = trace.iter().map(|h| h.frame()).collect();
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    let mut out = [0u32; 32];
    for (b, burst) in refs.chunks(32).enumerate() {
        jit.classify_burst(burst, NO_PORT, &mut out);
        for (k, &got) in out[..burst.len()].iter().enumerate() {
            let line = b * 32 + k;
            let got = if got as usize >= jit.rule_count() {
                0
            } else {
                got as usize + 1
            };
            assert_eq!(got, expected[line], "{name} line {}: burst", line + 1);
        }
    }
    let tree = netvm_compiler::jit::tree::Tree::build(&lower(&policy));
    let (mut depth, mut scanned, mut interpreted) = (0, 0, 0);
    let mut portless = std::collections::BTreeMap::<u8, usize>::new();
    for (line, (h, &want)) in trace.iter().zip(&expected).enumerate() {
        let frame = &frames[line];
        let j = jit.classify(frame, NO_PORT).map_or(0, |r| r + 1);
        // Frames of other protocols than TCP/UDP carry no ports. The data's expected rules
        // for those lines never have a port condition, so every line must match.
        assert_eq!(
            j,
            want,
            "{name} line {} (proto {}): the JIT got rule {j}",
            line + 1,
            h.proto
        );
        if line % interp_every == 0 {
            let i = interp.classify(frame, NO_PORT).map_or(0, |r| r + 1);
            assert_eq!(i, want, "{name} line {}: the interpreter got {i}", line + 1);
            interpreted += 1;
        }
        if let Some(t) = &tree {
            let (r, d, s) = t.lookup(frame);
            assert_eq!(r.map_or(0, |r| r + 1), want);
            depth += d;
            scanned += s;
        }
        if !h.has_ports() {
            *portless.entry(h.proto).or_default() += 1;
        }
    }
    eprintln!(
        "{name}: {} lines equal to .expected with the JIT, {interpreted} with the interpreter (lines without ports, by protocol: {portless:?}); lowering + JIT ({:?}, {:?}) took {compile:.1?}",
        trace.len(),
        jit.strategy(),
        jit.tree_stats(),
    );
    if let Some(t) = &tree {
        eprintln!(
            "{name}: tree {:?} (node words, boxes in leaves, distinct boxes, table bytes); per packet: depth {:.2}, boxes scanned {:.2}",
            t.size(),
            depth as f64 / trace.len() as f64,
            scanned as f64 / trace.len() as f64
        );
    }
}

#[test]
fn acl1_1k_matches_expected_with_both_engines() {
    check_set("acl1_1k", 1);
}

#[test]
fn fw1_1k_matches_expected_with_both_engines() {
    check_set("fw1_1k", 1);
}

#[test]
fn acl1_10k_matches_expected_with_both_engines() {
    check_set("acl1_10k", 100);
}

#[test]
fn fw1_10k_matches_expected_with_both_engines() {
    check_set("fw1_10k", 100);
}

#[test]
fn ipc2_10k_matches_expected_with_both_engines() {
    check_set("ipc2_10k", 100);
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "100K rules take minutes to check and build in a debug build; run with --release"
)]
fn acl1_100k_matches_expected_with_both_engines() {
    check_set("acl1_100k", 1000);
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "100K rules take minutes to check and build in a debug build; run with --release"
)]
fn fw1_100k_matches_expected_with_both_engines() {
    check_set("fw1_100k", 1000);
}

/// An IPv4 address in the IPv6 space the mapped sets use: `2001:db8:AABB:CCDD::` for
/// `AA.BB.CC.DD`, so an IPv4 `/L` is an IPv6 `/(L + 32)` whose bits fall in the second
/// 32-bit part and past it.
fn mapped(v4: u32) -> u128 {
    0x2001_0db8u128 << 96 | u128::from(v4) << 64
}

/// One imported ClassBench rule's predicate with every IPv4 condition made IPv6.
fn ipv6_pred(pred: &str) -> String {
    pred.split(" and ")
        .map(|c| {
            let c = c.trim();
            for field in ["src", "dst"] {
                let v6 = |addr: &str| -> u128 {
                    mapped(u32::from(
                        addr.parse::<std::net::Ipv4Addr>().expect("an IPv4 address"),
                    ))
                };
                if let Some(rest) = c.strip_prefix(&format!("ip.{field} in ")) {
                    let (addr, len) = rest.split_once('/').expect("a prefix");
                    let len: u32 = len.parse().expect("a length");
                    return format!(
                        "ip6.{field} in {}/{}",
                        std::net::Ipv6Addr::from(v6(addr)),
                        len + 32
                    );
                }
                if let Some(addr) = c.strip_prefix(&format!("ip.{field} == ")) {
                    return format!("ip6.{field} == {}", std::net::Ipv6Addr::from(v6(addr)));
                }
            }
            match c {
                "ip" => "ip6".to_string(),
                _ => c.replace("ip.proto", "ip6.nh"),
            }
        })
        .collect::<Vec<_>>()
        .join(" and ")
}

/// A ClassBench set mapped to IPv6 (every prefix into `2001:db8::/32`, the protocol into
/// `ip6.nh`, frames built IPv6 likewise): the JIT's forest cuts the IPv6 parts (no rule is
/// left to the linear code) and every line still equals `.expected`, with the interpreter on
/// a sample.
fn check_ipv6_set(name: &str, interp_every: usize) {
    let Some(dir) = data_dir() else {
        eprintln!("note: ../shared/data/classbench is absent; skipping {name}");
        return;
    };
    let read = |file: String| {
        std::fs::read_to_string(dir.join(&file)).unwrap_or_else(|e| panic!("{file}: {e}"))
    };
    let text = netvm_lang::import::classbench(&read(name.to_string()), name).expect("imports");
    let text: String = text
        .lines()
        .map(
            |l| match l.strip_prefix("rule ").and_then(|r| r.split_once(" : ")) {
                Some((rule, rest)) => {
                    let (pred, action) = rest.rsplit_once(" => ").expect("an action");
                    format!("rule {rule} : {} => {action}\n", ipv6_pred(pred))
                }
                None => format!("{l}\n"),
            },
        )
        .collect();
    let checked = netvm_lang::check_text("policy6.nvr", &text);
    let policy = checked.policy.expect("the mapped policy checks");
    let ir = lower(&policy);
    let jit = Jit::compile(&ir).expect("compiles");
    let stats = jit.tree_stats().expect("a decision forest").clone();
    assert!(stats.ipv6_dims, "{stats:?}");
    assert_eq!(stats.residual_rules, 0, "{stats:?}");
    let interp = Interpreter::new(ir).expect("no regexes");
    let trace = parse_trace(&read(format!("{name}_trace"))).expect("parses");
    let expected = parse_expected(&read(format!("{name}_trace.expected"))).expect("parses");
    let frames: Vec<Vec<u8>> = trace
        .iter()
        .map(|h| {
            use netvm_packet::{BaseProto, Field, PacketSpec};
            let mut spec = PacketSpec::new(match h.proto {
                6 => BaseProto::Tcp,
                17 => BaseProto::Udp,
                _ => BaseProto::Ip6,
            });
            spec.set(Field::Ip6Src, mapped(h.src));
            spec.set(Field::Ip6Dst, mapped(h.dst));
            match h.proto {
                6 => {
                    spec.set(Field::TcpSport, u128::from(h.sport));
                    spec.set(Field::TcpDport, u128::from(h.dport));
                }
                17 => {
                    spec.set(Field::UdpSport, u128::from(h.sport));
                    spec.set(Field::UdpDport, u128::from(h.dport));
                }
                p => {
                    spec.set(Field::Ip6Nh, u128::from(p));
                }
            }
            spec.build().expect("an IPv6 frame")
        })
        .collect();
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    let mut out = [0u32; 32];
    let one = |r: Option<usize>| r.map_or(0, |r| r + 1);
    for (b, burst) in refs.chunks(32).enumerate() {
        jit.classify_burst(burst, NO_PORT, &mut out);
        for (k, &got) in out[..burst.len()].iter().enumerate() {
            let line = b * 32 + k;
            let got = one(((got as usize) < jit.rule_count()).then_some(got as usize));
            assert_eq!(
                got,
                expected[line],
                "{name} (IPv6) line {}: burst",
                line + 1
            );
            let single = one(jit.classify(refs[line], NO_PORT));
            assert_eq!(single, expected[line], "{name} (IPv6) line {}", line + 1);
            if line % interp_every == 0 {
                let i = one(interp.classify(refs[line], NO_PORT));
                assert_eq!(
                    i,
                    expected[line],
                    "{name} (IPv6) line {}: interpreter",
                    line + 1
                );
            }
        }
    }
    eprintln!(
        "{name} mapped to IPv6: {} lines equal to .expected; {stats:?}",
        trace.len()
    );
}

#[test]
fn acl1_1k_mapped_to_ipv6_matches_expected() {
    check_ipv6_set("acl1_1k", 10);
}

#[test]
fn fw1_1k_mapped_to_ipv6_matches_expected() {
    check_ipv6_set("fw1_1k", 10);
}
