//! `netvm export openflow` against the real Open vSwitch: random header-only policies and
//! random frames; for each frame, the rule `ovs-appctl ofproto/trace` says OVS hit (each
//! flow's cookie is its rule's number) and the datapath action it took must be what netvm's
//! interpreter decides.
//!
//! OVS runs in a temporary directory (`OVS_RUNDIR`/`OVS_DBDIR`/`OVS_LOGDIR`): `ovsdb-server`
//! on a fresh database, `ovs-vswitchd --enable-dummy=override --disable-system` (no kernel
//! module), one bridge with `datapath_type=netdev`, fragment handling `nx-match`, and three
//! `dummy` ports numbered 1 to 3.
//! Without the OVS tools the test says so on stderr and passes, unless
//! `NETVM_REQUIRE_OVS=1` (CI), where it fails. `NETVM_OVS_POLICIES` and
//! `NETVM_OVS_FRAMES` (default 24 and 40) size it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use netvm_compiler::openflow::{self, DEFAULT_COOKIE};
use netvm_compiler::{lower, Interpreter};
use netvm_lang::policy::{Fate, Policy};
use netvm_packet::{BaseProto, Field, PacketSpec};

const TOOLS: [&str; 6] = [
    "ovsdb-tool",
    "ovsdb-server",
    "ovs-vswitchd",
    "ovs-vsctl",
    "ovs-ofctl",
    "ovs-appctl",
];
const PORTS: [&str; 3] = ["a", "b", "c"];

fn find(tool: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.exists())
}

/// An Open vSwitch of our own, stopped (by the pids it wrote) when dropped.
struct Ovs {
    dir: PathBuf,
    tools: BTreeMap<&'static str, PathBuf>,
}

impl Ovs {
    fn start(tools: BTreeMap<&'static str, PathBuf>) -> Ovs {
        let dir = std::env::temp_dir().join(format!("netvm-ovs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ovs = Ovs { dir, tools };
        let schema = ["/usr/share/openvswitch/vswitch.ovsschema"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("vswitch.ovsschema (installed with openvswitch-common)");
        let db = ovs.dir.join("conf.db");
        let sock = format!("unix:{}", ovs.dir.join("db.sock").display());
        ovs.run("ovsdb-tool", &["create", &db.to_string_lossy(), schema]);
        ovs.run(
            "ovsdb-server",
            &[
                &db.to_string_lossy(),
                &format!("--remote=p{sock}"),
                "--pidfile",
                "--detach",
                "--log-file",
            ],
        );
        ovs.run(
            "ovs-vswitchd",
            &[
                &sock,
                "--enable-dummy=override",
                "--disable-system",
                "--pidfile",
                "--detach",
                "--log-file",
            ],
        );
        let mut args = vec![
            format!("--db={sock}"),
            "--".into(),
            "add-br".into(),
            "br0".into(),
            "--".into(),
            "set".into(),
            "bridge".into(),
            "br0".into(),
            "datapath_type=netdev".into(),
        ];
        for (i, _) in PORTS.iter().enumerate() {
            let name = format!("p{}", i + 1);
            args.extend(
                [
                    "--",
                    "add-port",
                    "br0",
                    &name,
                    "--",
                    "set",
                    "Interface",
                    &name,
                    "type=dummy",
                    &format!("ofport_request={}", i + 1),
                ]
                .map(String::from),
            );
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ovs.run("ovs-vsctl", &args);
        // L4 fields in first fragments, as netvm reads them (OVS's `normal` zeroes them in
        // every fragment); see `netvm_compiler::openflow`.
        ovs.run("ovs-ofctl", &["set-frags", "br0", "nx-match"]);
        ovs
    }

    fn command(&self, tool: &str) -> Command {
        let mut c = Command::new(&self.tools[tool]);
        for var in ["OVS_RUNDIR", "OVS_DBDIR", "OVS_LOGDIR", "OVS_SYSCONFDIR"] {
            c.env(var, &self.dir);
        }
        c.stdin(Stdio::null());
        c
    }

    fn run(&self, tool: &str, args: &[&str]) -> String {
        let out = self
            .command(tool)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The datapath port number of each OpenFlow port 1..=3.
    fn odp_ports(&self) -> BTreeMap<u32, String> {
        let show = self.run("ovs-appctl", &["dpif/show"]);
        let mut map = BTreeMap::new();
        for line in show.lines() {
            // `    p1 1/2: (dummy)`
            let mut words = line.split_whitespace();
            if let (Some(_), Some(nums)) = (words.next(), words.next()) {
                if let Some((of, odp)) = nums.trim_end_matches(':').split_once('/') {
                    if let Ok(of) = of.parse::<u32>() {
                        map.insert(of, odp.to_string());
                    }
                }
            }
        }
        map
    }
}

impl Drop for Ovs {
    fn drop(&mut self) {
        for pidfile in ["ovs-vswitchd.pid", "ovsdb-server.pid"] {
            if let Ok(pid) = std::fs::read_to_string(self.dir.join(pidfile)) {
                let _ = Command::new("kill").arg(pid.trim()).status();
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Values the policies test, so that random frames hit the rules.
#[derive(Default)]
struct Pool(BTreeMap<Field, Vec<u128>>);

impl Pool {
    fn add(&mut self, f: Field, v: u128) {
        self.0.entry(f).or_default().push(v);
    }
}

fn ip4(v: u32) -> String {
    std::net::Ipv4Addr::from(v).to_string()
}

/// A random atom of the exportable language, noting the values it tests.
fn atom(rng: &mut Rng, pool: &mut Pool) -> String {
    let port = |rng: &mut Rng| rng.below(65536) as u128;
    match rng.below(22) {
        0 => rng
            .pick(&["tcp", "udp", "icmp", "ip", "ip6", "arp", "vlan", "icmp6"])
            .to_string(),
        1 | 2 => {
            let len = *rng.pick(&[8u32, 16, 24, 32]);
            let v = (rng.pick(&[0x0a00_0000u32, 0xc0a8_0000, 0x0a01_0000]) | rng.below(256) as u32)
                & (u32::MAX << (32 - len));
            let f = *rng.pick(&[Field::IpSrc, Field::IpDst]);
            pool.add(f, u128::from(v));
            format!("{} in {}/{len}", f.name(), ip4(v))
        }
        3 | 4 => {
            let f = *rng.pick(&[
                Field::TcpDport,
                Field::TcpSport,
                Field::UdpDport,
                Field::UdpSport,
                Field::L4Dport,
                Field::L4Sport,
            ]);
            let lo = port(rng) & 0xfff;
            let hi = lo + rng.below(3000) as u128;
            pool.add(f, lo);
            pool.add(f, hi);
            pool.add(f, hi + 1);
            match rng.below(4) {
                0 => format!("{} == {lo}", f.name()),
                1 => format!("{} in {lo}..{hi}", f.name()),
                2 => format!("{} in {{{lo}, {hi}, 443}}", f.name()),
                _ => format!("{} >= {hi}", f.name()),
            }
        }
        5 => {
            let v = *rng.pick(&[6u128, 17, 1, 47, 253]);
            pool.add(Field::IpProto, v);
            format!("ip.proto == {v}")
        }
        6 => {
            let v = 1 + rng.below(70) as u128;
            pool.add(Field::IpTtl, v);
            format!("ip.ttl < {v}")
        }
        7 => {
            let v = rng.below(64) as u128;
            pool.add(Field::IpDscp, v);
            format!("ip.dscp == {v}")
        }
        8 => {
            let v = rng.below(4096) as u128;
            pool.add(Field::VlanId, v);
            format!("vlan.id == {v}")
        }
        9 => {
            let v = rng.below(8) as u128;
            pool.add(Field::VlanPcp, v);
            format!("vlan.pcp >= {v}")
        }
        10 => {
            let v = 0x0200_0000_0000u128 | rng.below(4) as u128;
            pool.add(Field::EthSrc, v);
            format!("eth.src == 02:00:00:00:00:{:02x}", v & 0xff)
        }
        11 => rng
            .pick(&[
                "eth.type == 0x0800",
                "eth.type == 0x86dd",
                "eth.type == 0x0806",
            ])
            .to_string(),
        12 => {
            let v = 0xfd00u128 << 112 | u128::from(rng.below(4) as u8) << 64;
            pool.add(Field::Ip6Src, v);
            format!("ip6.src in {}/64", std::net::Ipv6Addr::from(v))
        }
        13 => {
            let v = rng.below(4) as u128;
            pool.add(Field::Ip6Flow, v);
            format!("ip6.flow == {v}")
        }
        14 => rng
            .pick(&[
                "tcp.flags.syn",
                "tcp.flags.ack",
                "tcp.flags & 0x12 == 0x12",
                "tcp.flags == 0x02",
            ])
            .to_string(),
        15 => {
            let v = *rng.pick(&[0u128, 3, 8, 11]);
            pool.add(Field::IcmpType, v);
            format!("icmp.type == {v}")
        }
        16 => {
            let v = *rng.pick(&[128u128, 129, 135]);
            pool.add(Field::Icmp6Type, v);
            format!("icmp6.type == {v}")
        }
        17 => "ip.frag".to_string(),
        18 | 19 => format!("in_port == {}", rng.pick(&PORTS)),
        20 => {
            let v = 64 - rng.below(4) as u128;
            pool.add(Field::Ip6Hlim, v);
            format!("ip6.hlim == {v}")
        }
        _ => {
            let v = *rng.pick(&[0x10u128, 0x20, 0x30]);
            pool.add(Field::IpProto, v | 1);
            format!("ip.proto & 0xf0 == {v}")
        }
    }
}

fn predicate(rng: &mut Rng, pool: &mut Pool, depth: u32) -> String {
    if depth == 0 || rng.below(3) == 0 {
        return atom(rng, pool);
    }
    match rng.below(5) {
        0 => format!("not ({})", predicate(rng, pool, depth - 1)),
        1 | 2 => format!(
            "({}) and ({})",
            predicate(rng, pool, depth - 1),
            predicate(rng, pool, depth - 1)
        ),
        _ => format!(
            "({}) or ({})",
            predicate(rng, pool, depth - 1),
            predicate(rng, pool, depth - 1)
        ),
    }
}

fn action(rng: &mut Rng) -> String {
    match rng.below(4) {
        0 => "drop".into(),
        _ => format!("out {}", rng.pick(&PORTS)),
    }
}

fn policy_text(rng: &mut Rng, pool: &mut Pool) -> String {
    let mut text: String = PORTS.iter().map(|p| format!("port {p}\n")).collect();
    for r in 0..1 + rng.below(7) {
        let depth = if rng.below(4) == 0 { 3 } else { 2 };
        text += &format!(
            "rule r{r} : {} => {}\n",
            predicate(rng, pool, depth),
            action(rng)
        );
    }
    text += &format!("default => {}\n", action(rng));
    text
}

/// A random frame, its fields drawn from the policy's values half of the time.
fn frame(rng: &mut Rng, pool: &Pool) -> Option<Vec<u8>> {
    let base = *rng.pick(&[
        BaseProto::Tcp,
        BaseProto::Tcp,
        BaseProto::Udp,
        BaseProto::Udp,
        BaseProto::Icmp,
        BaseProto::Icmp6,
        BaseProto::Ip,
        BaseProto::Ip6,
        BaseProto::Arp,
        BaseProto::Eth,
    ]);
    let v6 = matches!(base, BaseProto::Ip6 | BaseProto::Icmp6) || rng.below(4) == 0;
    let mut spec = PacketSpec::new(base);
    for (&f, values) in &pool.0 {
        if rng.below(2) == 0 {
            continue;
        }
        let v = if rng.below(4) == 0 {
            rng.next() as u128 & f.ty().max_value()
        } else {
            values[rng.below(values.len() as u64) as usize]
        };
        spec.set(f, v & f.ty().max_value());
    }
    if v6 && !matches!(base, BaseProto::Icmp | BaseProto::Arp | BaseProto::Eth) {
        spec.set(
            Field::Ip6Src,
            0xfd00u128 << 112 | u128::from(rng.below(4) as u8) << 64,
        );
    }
    if rng.below(5) == 0 {
        spec.set(Field::VlanId, rng.below(4096) as u128);
    }
    if rng.below(6) == 0 {
        spec.set(Field::IpFrag, 1);
    }
    if rng.below(3) == 0 {
        spec.set(Field::TcpFlags, rng.below(64) as u128);
    }
    // Fields of a header the stack does not have make the builder refuse: drop them one by
    // one until it builds.
    loop {
        match spec.build() {
            Ok(f) => return Some(later_fragment(rng, f)),
            Err(e) => {
                let field = e.field?;
                let before = spec.fields.len();
                spec.fields.retain(|(f, _)| *f != field);
                if spec.fields.len() == before {
                    return None;
                }
            }
        }
    }
}

/// One IPv4 frame in eight becomes a later fragment (offset 8 bytes, More-Fragments kept
/// as it was): no L4 header to netvm, `ip_frag=later` to OVS. Neither checks the checksum.
fn later_fragment(rng: &mut Rng, mut frame: Vec<u8>) -> Vec<u8> {
    let l3 = if frame.get(12..14) == Some(&[0x81, 0x00]) {
        18
    } else {
        14
    };
    if frame.get(l3 - 2..l3) == Some(&[0x08, 0x00]) && frame.len() > l3 + 8 && rng.below(8) == 0 {
        frame[l3 + 7] = 1;
    }
    frame
}

fn hex(frame: &[u8]) -> String {
    frame.iter().map(|b| format!("{b:02x}")).collect()
}

/// (cookie of the flow hit, datapath actions) of one trace.
fn trace(ovs: &Ovs, in_port: u32, frame: &[u8]) -> (u64, String) {
    let out = ovs.run(
        "ovs-appctl",
        &[
            "ofproto/trace",
            "br0",
            &format!("in_port={in_port}"),
            &hex(frame),
        ],
    );
    let cookie = out
        .lines()
        .find_map(|l| {
            let l = l.trim_start();
            if !l.starts_with("0. ") {
                return None;
            }
            let c = l.split("cookie ").nth(1)?;
            u64::from_str_radix(c.trim().trim_start_matches("0x"), 16).ok()
        })
        .unwrap_or_else(|| panic!("no table-0 flow in the trace:\n{out}"));
    let actions = out
        .lines()
        .find_map(|l| l.strip_prefix("Datapath actions: "))
        .unwrap_or_else(|| panic!("no datapath actions in the trace:\n{out}"))
        .trim()
        .to_string();
    (cookie, actions)
}

#[test]
fn open_vswitch_classifies_every_frame_as_netvm_does() {
    let mut tools = BTreeMap::new();
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|t| match find(t) {
            Some(p) => {
                tools.insert(**t, p);
                false
            }
            None => true,
        })
        .copied()
        .collect();
    if !missing.is_empty() {
        let msg = format!(
            "openflow_ovs: Open vSwitch not installed (missing {}): install openvswitch-switch \
             to compare `netvm export openflow` with OVS",
            missing.join(", ")
        );
        assert!(std::env::var("NETVM_REQUIRE_OVS").is_err(), "{msg}");
        eprintln!("SKIPPED {msg}");
        return;
    }
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let policies = env("NETVM_OVS_POLICIES", 24);
    let frames = env("NETVM_OVS_FRAMES", 40);
    let ovs = Ovs::start(tools);
    let odp = ovs.odp_ports();
    let flows_file = ovs.dir.join("flows.txt");
    let mut rng = Rng(0x5eed_0f0f_5eed);
    let (mut compared, mut exported, mut by_rule) = (0, 0, 0);
    for _ in 0..policies {
        let mut pool = Pool::default();
        let text = policy_text(&mut rng, &mut pool);
        let Some(policy): Option<Policy> = netvm_lang::check_text("random.nvr", &text).policy
        else {
            continue;
        };
        let ports = openflow::port_numbers(&policy, &[]).expect("port numbers");
        let export = match openflow::export(&policy, &ports) {
            Ok(e) => e,
            Err(e) if e.message.contains("more than") => continue,
            Err(e) => panic!("{e}\n{text}"),
        };
        exported += 1;
        std::fs::write(&flows_file, export.text(&policy)).expect("flows file");
        ovs.run("ovs-ofctl", &["del-flows", "br0"]);
        ovs.run(
            "ovs-ofctl",
            &["add-flows", "br0", &flows_file.to_string_lossy()],
        );
        let interp = Interpreter::new(lower(&policy)).expect("interpreter");
        for _ in 0..frames {
            let Some(f) = frame(&mut rng, &pool) else {
                continue;
            };
            let in_port = rng.below(PORTS.len() as u64) as usize;
            let rule = interp.classify(&f, in_port as u32);
            let (cookie, actions) = trace(&ovs, ports[in_port], &f);
            let want = rule.map_or(DEFAULT_COOKIE, |r| r as u64 + 1);
            let fate = &policy.actions_of(rule).fate;
            let want_actions = match fate {
                Fate::Drop => "drop".to_string(),
                Fate::Out(p) => odp[&ports[*p]].clone(),
                other => panic!("unexported fate {other:?}"),
            };
            let name = |c: u64| match c {
                DEFAULT_COOKIE => "default".to_string(),
                c => policy.rules[(c - 1) as usize].name.clone(),
            };
            assert!(
                cookie == want && actions == want_actions,
                "in_port {} frame {}: netvm {} ({want_actions}), OVS {} ({actions})\n\
                 policy:\n{text}\nflows:\n{}",
                PORTS[in_port],
                hex(&f),
                name(want),
                name(cookie),
                export.text(&policy)
            );
            compared += 1;
            by_rule += usize::from(rule.is_some());
        }
    }
    eprintln!(
        "openflow_ovs: {exported} policies, {compared} frames, {by_rule} by a rule (not the \
         default): OVS and netvm agree"
    );
    assert!(
        exported >= policies / 2,
        "only {exported} policies exported"
    );
    assert!(
        by_rule >= compared / 5,
        "too few frames hit a rule: {by_rule}/{compared}"
    );
}
