//! `netvm run` on DPDK ports (`--features dpdk`), each configuration in its own process
//! (DPDK's EAL initialises once per process), with huge pages and with `--no-huge`:
//! - `net_pcap` in → a policy with a chain of trusted VMs → `net_pcap` out writes exactly
//!   the frames the same run on the `pcap` driver writes, byte for byte, and the DPDK ports
//!   report that netvm copied no byte (frames were received into and sent from the shared
//!   pool's buffers);
//! - `net_ring`: frames sent into the ring come back on the same port and go out again;
//! - `net_af_packet` on veth pairs into two network namespaces carries real kernel traffic
//!   (ping) through the switch;
//! - `net_vhost` serves a virtio-net driver in another process (`virtio_user` under
//!   `dpdk-testpmd --forward-mode=macswap`, standing in for a KVM guest) and the frames
//!   come back with their MACs swapped;
//! - the same with two queue pairs per port (`qpairs=2`, the kernel's fanout spreading
//!   flows over them) and `--switch-threads 2`: 16 UDP flows are echoed back through two
//!   switch threads, both of which carry some, and every buffer comes back.
//!
//! Skips loudly (on stderr, passing) without root, without DPDK in the build, or without
//! `ip` for the namespace test. Without the feature, only the message telling an operator
//! how to get the driver is checked.

use std::path::Path;
use std::process::{Command, Output, Stdio};

fn netvm_run(policy: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_netvm"))
        .arg("run")
        .arg(policy)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("netvm runs")
}

#[cfg(not(feature = "dpdk"))]
#[test]
fn without_the_dpdk_feature_netvm_run_says_how_to_get_the_driver() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.nvr");
    std::fs::write(&policy, "port p\ndefault => drop\n").unwrap();
    let out = netvm_run(&policy, &["--bind", "p=dpdk:net_null0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("port `p`"), "{stderr}");
    assert!(stderr.contains("--features dpdk"), "{stderr}");
    assert!(stderr.contains("libdpdk-dev"), "{stderr}");
}

#[cfg(feature = "dpdk")]
mod with_dpdk {
    use std::net::Ipv4Addr;
    use std::os::fd::AsRawFd;
    use std::path::Path;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use netvm_packet::{BaseProto, Field, PacketSpec};
    use netvm_runtime::port::dpdk::hugepages_free;

    use super::netvm_run;

    /// EAL arguments of the two memory configurations.
    const HUGE: &[&str] = &[];
    const NO_HUGE: &[&str] = &["--eal", "--no-huge -m 256"];

    fn skip_reason() -> Option<String> {
        if let Some(why) = dpdk_sys_missing() {
            return Some(why);
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Some("not root (DPDK's EAL needs root here)".into());
        }
        None
    }

    /// Whether the netvm binary found DPDK when it was built: a `dpdk` port on a build
    /// without it fails with this sentence.
    fn dpdk_sys_missing() -> Option<String> {
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("p.nvr");
        std::fs::write(&policy, "port p\ndefault => drop\n").unwrap();
        let out = netvm_run(
            &policy,
            &["--bind", "p=dpdk:net_null0", "--duration", "0.1"],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        stderr
            .contains("found no DPDK")
            .then(|| format!("this build has no DPDK: {}", stderr.trim()))
    }

    fn frames() -> Vec<Vec<u8>> {
        (0..120u32)
            .map(|i| {
                let base = match i % 3 {
                    0 => BaseProto::Tcp,
                    1 => BaseProto::Udp,
                    _ => BaseProto::Icmp,
                };
                let mut spec = PacketSpec::new(base);
                spec.set(Field::IpSrc, 0x0a00_0000 + u128::from(i % 7))
                    .set(Field::IpDst, 0xc000_0201);
                if base == BaseProto::Tcp {
                    spec.set(Field::TcpDport, if i % 2 == 0 { 80 } else { 22 });
                }
                spec.payload = Some(vec![i as u8; 10 + (i as usize * 13) % 1400]);
                spec.build().expect("test frames build")
            })
            .collect()
    }

    fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
        use pcap_file::pcap::{PcapPacket, PcapWriter};
        let file = std::fs::File::create(path).unwrap();
        let mut writer = PcapWriter::new(file).unwrap();
        for (i, f) in frames.iter().enumerate() {
            let ts = Duration::from_micros(1_000 * i as u64);
            writer
                .write_packet(&PcapPacket::new(ts, f.len() as u32, f))
                .unwrap();
        }
    }

    fn read_pcap(path: &Path) -> Vec<Vec<u8>> {
        netvm_runtime::port::pcap::read_frames(path.to_str().unwrap()).unwrap()
    }

    fn stats(path: &Path) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    /// The DPDK ports' descriptions in the run report say netvm copied nothing.
    fn assert_no_copies(json: &serde_json::Value) {
        for port in json["ports"].as_array().unwrap() {
            let driver = port["driver"].as_str().unwrap();
            if driver.starts_with("dpdk") {
                assert!(
                    driver.contains("copied: 0 packets, 0 bytes"),
                    "netvm copied bytes on a DPDK port: {driver}"
                );
            }
        }
        for vm in json["vms"].as_array().unwrap() {
            assert_eq!(
                vm["copied_bytes"], 0,
                "trusted VM {} got copies",
                vm["name"]
            );
        }
    }

    const CHAIN_POLICY: &str = "port wan\nport lan\nvm fw trusted\nvm mon trusted\n\
        rule ssh : tcp and tcp.dport == 22 => count ssh, drop\n\
        rule web : tcp => chain fw -> mon -> out lan\n\
        default => chain mon -> out lan\n";

    fn pcap_in_chain_out_matches_the_pcap_driver(eal: &[&str], label: &str) {
        if let Some(why) = skip_reason() {
            eprintln!("SKIPPED net_pcap chain ({label}): {why}");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("chain.nvr");
        std::fs::write(&policy, CHAIN_POLICY).unwrap();
        let input = dir.path().join("in.pcap");
        let mut sent = frames();
        // Larger than a pool buffer: net_pcap splits it over several mbufs, netvm drops it
        // as `oversize`, as the pcap driver's run does.
        let mut jumbo = sent[0].clone();
        jumbo.resize(3000, 0xa5);
        sent.insert(60, jumbo);
        write_pcap(&input, &sent);

        let reference = dir.path().join("ref.pcap");
        let out = netvm_run(
            &policy,
            &[
                "--bind",
                &format!("wan=pcap:rx={}", input.display()),
                "--bind",
                &format!("lan=pcap:tx={}", reference.display()),
                "--vm-mode",
                "inline",
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        let output = dir.path().join("out.pcap");
        let json_path = dir.path().join("stats.json");
        let mut args = vec![
            "--bind".to_string(),
            format!("wan=dpdk:net_pcap0,rx_pcap={}", input.display()),
            "--bind".to_string(),
            format!("lan=dpdk:net_pcap1,tx_pcap={}", output.display()),
            "--vm-mode".to_string(),
            "inline".to_string(),
            "--stats-json".to_string(),
            json_path.display().to_string(),
            "--duration".to_string(),
            "20".to_string(),
        ];
        args.extend(eal.iter().map(|s| s.to_string()));
        if eal.is_empty() {
            args.extend(["--hugepages".to_string(), "require".to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let started = Instant::now();
        let out = netvm_run(&policy, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stderr}\n{stdout}");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the run ends when the pcap input drains"
        );
        let expected = read_pcap(&reference);
        let got = read_pcap(&output);
        let ssh = frames()
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 3 == 0 && i % 2 == 1)
            .count();
        assert_eq!(expected.len(), sent.len() - ssh - 1, "the reference run");
        assert_eq!(got.len(), expected.len(), "{stdout}");
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert!(g == e, "frame {i} differs from the pcap driver's run");
        }
        let json = stats(&json_path);
        assert_eq!(json["balanced"], true);
        assert_eq!(json["buffers_returned"], json["buffers"]);
        assert_no_copies(&json);
        assert_eq!(json["drops"]["oversize"], 1, "the jumbo frame");
        let wan = json["ports"][0]["driver"].as_str().unwrap();
        assert!(
            wan.contains(&format!("in place: rx {}", sent.len() - 1)),
            "every frame received in place: {wan}"
        );
        let memory = if eal.is_empty() {
            "EAL on huge pages"
        } else {
            "EAL --no-huge"
        };
        assert!(wan.contains(memory), "{wan}");
    }

    #[test]
    fn net_pcap_through_a_chain_matches_the_pcap_driver_on_huge_pages() {
        if hugepages_free() < 24 {
            eprintln!(
                "SKIPPED net_pcap chain (huge pages): only {} free 2 MiB pages",
                hugepages_free()
            );
            return;
        }
        pcap_in_chain_out_matches_the_pcap_driver(HUGE, "huge pages");
    }

    #[test]
    fn net_pcap_through_a_chain_matches_the_pcap_driver_without_huge_pages() {
        pcap_in_chain_out_matches_the_pcap_driver(NO_HUGE, "--no-huge");
    }

    /// Frames a DPDK port lends the switch and that never become pool buffers (a rule
    /// that is just `out PORT` to another DPDK port, or just `drop`) are counted per rule
    /// exactly as frames on the general path are: every rule's packets and bytes, the
    /// policy's drops, and the frames out, with runs of one rule and interleaved rules in
    /// the same burst.
    #[test]
    fn lent_frames_are_counted_per_rule_like_every_other_frame() {
        if let Some(why) = skip_reason() {
            eprintln!("SKIPPED lent-frame counters: {why}");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("lent.nvr");
        // `quiet` and `udp` take the lent path; `ssh` (a named counter) and `web` (a
        // chain) and the default are adopted into pool buffers.
        std::fs::write(
            &policy,
            "port wan\nport lan\nvm fw trusted\n\
             rule ssh : tcp and tcp.dport == 22 => count ssh, drop\n\
             rule quiet : udp and ip.src == 10.0.0.3 => drop\n\
             rule udp : udp => out lan\n\
             rule web : tcp => chain fw -> out lan\n\
             default => out lan\n",
        )
        .unwrap();
        // Runs of one protocol as well as the interleaving of `frames()`.
        let mut sent = frames();
        let mut runs = frames();
        runs.sort_by_key(|f| f[23]); // IPv4 protocol: ICMP, then TCP, then UDP
        sent.extend(runs);
        let input = dir.path().join("in.pcap");
        write_pcap(&input, &sent);
        let output = dir.path().join("out.pcap");
        let json_path = dir.path().join("stats.json");
        let out = netvm_run(
            &policy,
            &[
                "--bind",
                &format!("wan=dpdk:net_pcap0,rx_pcap={}", input.display()),
                "--bind",
                &format!("lan=dpdk:net_pcap1,tx_pcap={}", output.display()),
                "--vm-mode",
                "inline",
                "--stats-json",
                &json_path.display().to_string(),
                "--duration",
                "20",
                "--eal",
                "--no-huge -m 256",
            ],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");

        // What each rule should have seen, from the frames themselves.
        let is_tcp = |f: &[u8]| f[23] == 6;
        let is_udp = |f: &[u8]| f[23] == 17;
        let dport = |f: &[u8]| u16::from_be_bytes([f[36], f[37]]);
        let rule_of = |f: &[u8]| match () {
            _ if is_tcp(f) && dport(f) == 22 => "ssh",
            _ if is_udp(f) && f[29] == 3 => "quiet",
            _ if is_udp(f) => "udp",
            _ if is_tcp(f) => "web",
            _ => "default",
        };
        let json = stats(&json_path);
        let mut dropped = 0;
        for rule in json["rules"].as_array().unwrap() {
            let name = rule["name"].as_str().unwrap();
            let hits: Vec<&Vec<u8>> = sent.iter().filter(|f| rule_of(f) == name).collect();
            assert!(!hits.is_empty(), "the traffic hits rule {name}");
            let bytes: usize = hits.iter().map(|f| f.len()).sum();
            assert_eq!(rule["packets"], hits.len() as u64, "rule {name}: {json}");
            assert_eq!(rule["bytes"], bytes as u64, "rule {name}'s bytes");
            if name == "ssh" || name == "quiet" {
                dropped += hits.len();
            }
        }
        assert_eq!(json["drops"]["policy"], dropped as u64, "{json}");
        assert_eq!(json["balanced"], true);
        assert_eq!(json["buffers_returned"], json["buffers"]);
        assert_no_copies(&json);
        // Every frame that was not dropped went out, byte for byte (the lent ones may
        // overtake the chained ones within a burst, so as a multiset).
        let mut want: Vec<&Vec<u8>> = sent
            .iter()
            .filter(|f| !matches!(rule_of(f), "ssh" | "quiet"))
            .collect();
        let got = read_pcap(&output);
        let mut got: Vec<&Vec<u8>> = got.iter().collect();
        want.sort();
        got.sort();
        assert_eq!(got.len(), want.len(), "frames out");
        assert!(
            got == want,
            "the frames out are the frames in, minus the drops"
        );
    }

    #[test]
    fn net_ring_loops_frames_back_through_the_switch_without_huge_pages() {
        if let Some(why) = skip_reason() {
            eprintln!("SKIPPED net_ring loopback: {why}");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("ring.nvr");
        std::fs::write(
            &policy,
            "port src\nport ring\nport sink\nvm fw trusted\n\
             rule into_ring : in_port == src => out ring\n\
             rule out_of_ring : in_port == ring => chain fw -> out sink\n\
             default => drop\n",
        )
        .unwrap();
        let input = dir.path().join("in.pcap");
        let sent = frames();
        write_pcap(&input, &sent);
        let output = dir.path().join("out.pcap");
        let json_path = dir.path().join("stats.json");
        let out = netvm_run(
            &policy,
            &[
                "--bind",
                &format!("src=dpdk:net_pcap0,rx_pcap={}", input.display()),
                "--bind",
                "ring=dpdk:net_ring0",
                "--bind",
                &format!("sink=dpdk:net_pcap1,tx_pcap={}", output.display()),
                "--vm-mode",
                "inline",
                "--duration",
                "1.5",
                "--stats-json",
                json_path.to_str().unwrap(),
                "--eal",
                "--no-huge -m 256",
            ],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert_eq!(
            read_pcap(&output),
            sent,
            "every frame went round the ring, in order"
        );
        let json = stats(&json_path);
        assert_eq!(json["balanced"], true);
        assert_eq!(json["buffers_returned"], json["buffers"]);
        assert_no_copies(&json);
        let ring = json["ports"][1]["driver"].as_str().unwrap();
        assert!(
            ring.contains(&format!("in place: rx {} tx {}", sent.len(), sent.len())),
            "the ring handed back the buffers it was given: {ring}"
        );
    }

    fn ip(args: &[&str]) -> Result<(), String> {
        let out = Command::new("ip")
            .args(args)
            .output()
            .map_err(|e| format!("ip: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Two namespaces, each joined to the host by a veth pair; torn down on drop.
    struct Lab {
        ns: [String; 2],
        host_if: [String; 2],
        subnet: u8,
    }

    impl Drop for Lab {
        fn drop(&mut self) {
            for i in 0..2 {
                let _ = ip(&["link", "del", &self.host_if[i]]);
                let _ = ip(&["netns", "del", &self.ns[i]]);
            }
        }
    }

    impl Lab {
        fn addr(&self, i: usize) -> Ipv4Addr {
            Ipv4Addr::new(10, 78, self.subnet, 1 + i as u8)
        }

        fn new(tag: &str) -> Result<Lab, String> {
            let pid = std::process::id();
            let lab = Lab {
                ns: [
                    format!("netvm-d{pid}-{tag}a"),
                    format!("netvm-d{pid}-{tag}b"),
                ],
                host_if: [
                    format!("nd{tag}a{}", pid % 100_000),
                    format!("nd{tag}b{}", pid % 100_000),
                ],
                subnet: ((pid + u32::from(tag.as_bytes()[0])) % 250) as u8,
            };
            for i in 0..2 {
                let (ns, host) = (&lab.ns[i], &lab.host_if[i]);
                let inner = format!("{host}i");
                ip(&["netns", "add", ns])?;
                ip(&[
                    "link", "add", host, "type", "veth", "peer", "name", &inner, "netns", ns,
                ])?;
                ip(&["link", "set", host, "up"])?;
                let cidr = format!("{}/24", lab.addr(i));
                ip(&["-n", ns, "addr", "add", &cidr, "dev", &inner])?;
                ip(&["-n", ns, "link", "set", &inner, "up"])?;
                ip(&["-n", ns, "link", "set", "lo", "up"])?;
            }
            Ok(lab)
        }
    }

    /// Moves the calling thread into network namespace `ns`.
    fn enter(ns: &str) {
        let path = format!("/run/netns/{ns}");
        let file = std::fs::File::open(&path).expect("the namespace's file");
        // SAFETY: `file` is an open namespace descriptor; setns moves this thread only.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}");
    }

    /// `count` ICMP echo requests to `dst` from a raw socket on a thread inside namespace
    /// `ns`; the number of echo replies that came back.
    fn ping_from(ns: &str, dst: Ipv4Addr, count: u16) -> usize {
        let ns = ns.to_string();
        std::thread::spawn(move || {
            enter(&ns);
            let socket = socket_icmp();
            let mut replies = std::collections::BTreeSet::new();
            let deadline = Instant::now() + Duration::from_secs(4);
            let mut seq = 0u16;
            while Instant::now() < deadline && replies.len() < count as usize {
                if seq < count {
                    send_echo(socket, dst, seq);
                    seq += 1;
                }
                if let Some(s) = recv_echo_reply(socket) {
                    replies.insert(s);
                }
            }
            // SAFETY: our descriptor, closed once.
            unsafe { libc::close(socket) };
            replies.len()
        })
        .join()
        .unwrap()
    }

    fn socket_icmp() -> i32 {
        // SAFETY: plain system call.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        // SAFETY: a live timeval of the length passed.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        fd
    }

    fn send_echo(fd: i32, dst: Ipv4Addr, seq: u16) {
        let id = (std::process::id() & 0xffff) as u16;
        let mut msg = vec![8u8, 0, 0, 0];
        msg.extend_from_slice(&id.to_be_bytes());
        msg.extend_from_slice(&seq.to_be_bytes());
        msg.extend_from_slice(b"netvm dpdk test");
        let mut sum = 0u32;
        for pair in msg.chunks(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        msg[2..4].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        // SAFETY: all-zero is a valid sockaddr_in; the fields that matter are set.
        let mut to: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        to.sin_family = libc::AF_INET as u16;
        to.sin_addr.s_addr = u32::from(dst).to_be();
        // SAFETY: msg and to are live for the call, their lengths passed.
        unsafe {
            libc::sendto(
                fd,
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&to as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
    }

    fn recv_echo_reply(fd: i32) -> Option<u16> {
        let id = (std::process::id() & 0xffff) as u16;
        let mut buf = [0u8; 1500];
        // SAFETY: buf is writable for its length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            return None;
        }
        let ihl = usize::from(buf[0] & 0x0f) * 4;
        let icmp = &buf[ihl..n as usize];
        (icmp.len() >= 8 && icmp[0] == 0 && icmp[4..6] == id.to_be_bytes())
            .then(|| u16::from_be_bytes([icmp[6], icmp[7]]))
    }

    /// net_af_packet names its PACKET_FANOUT group `pid ^ ifindex`: two switches started
    /// side by side on neighbouring interfaces can pick the same group and the second
    /// fails (EINVAL). The two configurations take turns.
    static AF_PACKET_TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// The veth lab for test `what`, or `None` after saying loudly why it is skipped (no
    /// root or DPDK, no `ip`, namespaces refused).
    fn lab_or_skip(tag: &str, what: &str) -> Option<Lab> {
        if let Some(why) = skip_reason() {
            eprintln!("SKIPPED {what}: {why}");
            return None;
        }
        let ip = Command::new("ip").arg("-V").stdout(Stdio::null()).status();
        if ip.is_err() {
            eprintln!("SKIPPED {what}: `ip` (iproute2) is not installed");
            return None;
        }
        Lab::new(tag)
            .map_err(|e| eprintln!("SKIPPED {what}: {e}"))
            .ok()
    }

    fn af_packet_carries_ping(eal: &[&str], tag: &str) {
        let _turn = AF_PACKET_TURN.lock().unwrap_or_else(|e| e.into_inner());
        let Some(lab) = lab_or_skip(tag, &format!("net_af_packet veth ({tag})")) else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("bridge.nvr");
        std::fs::write(
            &policy,
            "port a\nport b\nvm fw trusted\n\
             rule a_to_b : in_port == a => chain fw -> out b\n\
             rule b_to_a : in_port == b => out a\ndefault => drop\n",
        )
        .unwrap();
        let json_path = dir.path().join("stats.json");
        let mut args = vec![
            "run".to_string(),
            policy.display().to_string(),
            "--bind".to_string(),
            format!("a=dpdk:net_af_packet0,iface={}", lab.host_if[0]),
            "--bind".to_string(),
            format!("b=dpdk:net_af_packet1,iface={}", lab.host_if[1]),
            "--duration".to_string(),
            "5".to_string(),
            "--vm-mode".to_string(),
            "inline".to_string(),
            "--stats-json".to_string(),
            json_path.display().to_string(),
        ];
        args.extend(eal.iter().map(|s| s.to_string()));
        let switch = Command::new(env!("CARGO_BIN_EXE_netvm"))
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("netvm run starts");
        std::thread::sleep(Duration::from_millis(1500));
        let replies = ping_from(&lab.ns[0], lab.addr(1), 5);
        let out = switch.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "netvm run failed:\n{stderr}\n{stdout}"
        );
        assert_eq!(
            replies, 5,
            "ping replies through the switch\n{stderr}\n{stdout}"
        );
        let json = stats(&json_path);
        assert_eq!(json["balanced"], true);
        assert_eq!(json["buffers_returned"], json["buffers"]);
        assert_no_copies(&json);
        drop(lab);
    }

    #[test]
    fn net_af_packet_on_veth_carries_ping_between_namespaces_on_huge_pages() {
        if hugepages_free() < 24 {
            eprintln!(
                "SKIPPED net_af_packet veth (huge pages): only {} free 2 MiB pages",
                hugepages_free()
            );
            return;
        }
        af_packet_carries_ping(HUGE, "h");
    }

    #[test]
    fn net_af_packet_on_veth_carries_ping_between_namespaces_without_huge_pages() {
        af_packet_carries_ping(NO_HUGE, "n");
    }

    const ECHO_PORT: u16 = 7777;

    /// Sends with UDP checksum 0 ("none", for IPv4): a veth hands its peer datagrams with
    /// the checksum left to offload, which `net_af_packet` captures as they are, so a
    /// forwarded datagram would arrive with a wrong one and be dropped.
    fn without_udp_checksum(socket: &std::net::UdpSocket) {
        use std::os::fd::AsRawFd;
        let on: libc::c_int = 1;
        // SAFETY: a live socket and a live int of the length passed.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_NO_CHECK,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_NO_CHECK: {}", std::io::Error::last_os_error());
    }

    /// A UDP echo server in namespace `ns` until `stop` is set; returns once it listens.
    fn udp_echo_server(
        ns: &str,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> std::thread::JoinHandle<()> {
        let ns = ns.to_string();
        let (ready, listening) = std::sync::mpsc::channel();
        let server = std::thread::spawn(move || {
            enter(&ns);
            let socket = std::net::UdpSocket::bind(("0.0.0.0", ECHO_PORT)).expect("echo bind");
            without_udp_checksum(&socket);
            socket
                .set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            ready.send(()).unwrap();
            let mut buf = [0u8; 1500];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(&buf[..n], from);
                }
            }
        });
        listening
            .recv_timeout(Duration::from_secs(5))
            .expect("the echo server listens");
        server
    }

    /// From namespace `ns`, `flows` UDP flows (one socket, so one source port, each) send
    /// `per_flow` datagrams each to `dst`'s echo server, one at a time, resending what
    /// gets no echo; the number echoed back intact.
    fn udp_flows_from(ns: &str, dst: Ipv4Addr, flows: usize, per_flow: usize) -> usize {
        let ns = ns.to_string();
        std::thread::spawn(move || {
            enter(&ns);
            let deadline = Instant::now() + Duration::from_secs(6);
            let mut echoed = 0;
            let mut buf = [0u8; 1500];
            for flow in 0..flows {
                let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
                without_udp_checksum(&socket);
                socket.connect((dst, ECHO_PORT)).unwrap();
                socket
                    .set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                for seq in 0..per_flow {
                    let msg = format!("netvm flow {flow} datagram {seq}");
                    while Instant::now() < deadline {
                        let _ = socket.send(msg.as_bytes());
                        // Echoes of an earlier resend are skipped; a timeout resends.
                        match socket.recv(&mut buf) {
                            Ok(n) if &buf[..n] == msg.as_bytes() => {
                                echoed += 1;
                                break;
                            }
                            _ => continue,
                        }
                    }
                }
            }
            echoed
        })
        .join()
        .unwrap()
    }

    /// `rx by thread: A/B` in a DPDK port's description, as numbers.
    fn rx_by_thread(driver: &str) -> Vec<u64> {
        let at = driver
            .find("rx by thread: ")
            .unwrap_or_else(|| panic!("no per-thread counts in {driver}"));
        driver[at + "rx by thread: ".len()..]
            .split([';', ')'])
            .next()
            .unwrap()
            .split('/')
            .map(|n| n.trim().parse().unwrap())
            .collect()
    }

    #[test]
    fn net_af_packet_with_two_queue_pairs_carries_udp_flows_through_two_switch_threads() {
        let tag = "t";
        let _turn = AF_PACKET_TURN.lock().unwrap_or_else(|e| e.into_inner());
        let Some(lab) = lab_or_skip(tag, "net_af_packet two switch threads") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("bridge.nvr");
        std::fs::write(
            &policy,
            "port a\nport b\n\
             rule a_to_b : in_port == a => out b\n\
             rule b_to_a : in_port == b => out a\ndefault => drop\n",
        )
        .unwrap();
        let json_path = dir.path().join("stats.json");
        let mut args = vec![
            "run".to_string(),
            policy.display().to_string(),
            "--switch-threads".to_string(),
            "2".to_string(),
            "--duration".to_string(),
            "8".to_string(),
            "--stats-json".to_string(),
            json_path.display().to_string(),
        ];
        for (i, port) in ["a", "b"].iter().enumerate() {
            args.push("--bind".to_string());
            args.push(format!(
                "{port}=dpdk:net_af_packet{i},iface={},qpairs=2,rxq=2,txq=2",
                lab.host_if[i]
            ));
        }
        args.extend(NO_HUGE.iter().map(|s| s.to_string()));
        let switch = Command::new(env!("CARGO_BIN_EXE_netvm"))
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("netvm run starts");
        std::thread::sleep(Duration::from_millis(1500));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let server = udp_echo_server(&lab.ns[1], stop.clone());
        const FLOWS: usize = 16;
        const PER_FLOW: usize = 4;
        let echoed = udp_flows_from(&lab.ns[0], lab.addr(1), FLOWS, PER_FLOW);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        server.join().unwrap();
        let out = switch.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "netvm run failed:\n{stderr}\n{stdout}"
        );
        assert_eq!(
            echoed,
            FLOWS * PER_FLOW,
            "UDP echoes through the switch\n{stderr}\n{stdout}"
        );
        let json = stats(&json_path);
        assert_eq!(json["balanced"], true, "{json}");
        assert_eq!(json["buffers_returned"], json["buffers"]);
        assert_no_copies(&json);
        for port in json["ports"].as_array().unwrap() {
            let driver = port["driver"].as_str().unwrap();
            assert!(
                driver.contains("2 switch threads"),
                "the port was split over two switch threads: {driver}"
            );
            let by_thread = rx_by_thread(driver);
            assert_eq!(by_thread.len(), 2, "{driver}");
            // 16 flows hashed over 2 queues: all on one would be a 1 in 32768 chance.
            assert!(
                by_thread.iter().all(|&n| n > 0),
                "the kernel's fanout spread the flows over both threads: {driver}"
            );
        }
        drop(lab);
    }

    /// A `net_vhost` port serves a virtio-net guest driver in another process — what a
    /// KVM guest's virtio-net would be — here DPDK's own `virtio_user` under
    /// `dpdk-testpmd --forward-mode=macswap`, which sends every frame back with its MAC
    /// addresses swapped. Frames from a generator go out through vhost-user, come back,
    /// and are written to a capture: each one is a generator frame with its MACs swapped,
    /// the run balances and every buffer comes back.
    #[test]
    fn net_vhost_serves_a_virtio_user_driver_in_another_process_and_back() {
        if let Some(why) = skip_reason() {
            eprintln!("SKIPPED net_vhost: {why}");
            return;
        }
        if Command::new("dpdk-testpmd")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!(
                "SKIPPED net_vhost: no dpdk-testpmd (apt-get install dpdk-dev) to be the guest"
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("vhost.nvr");
        std::fs::write(
            &policy,
            "port gen\nport guest\nport sink\n\
             rule to_guest : in_port == gen => out guest\n\
             rule from_guest : in_port == guest => out sink\n\
             default => drop\n",
        )
        .unwrap();
        let socket = dir.path().join("vhost.sock");
        let output = dir.path().join("back.pcap");
        let json_path = dir.path().join("stats.json");
        let gen = "gen:flows=8,size=96";
        let switch = Command::new(env!("CARGO_BIN_EXE_netvm"))
            .arg("run")
            .arg(&policy)
            .args(["--bind", &format!("gen={gen}")])
            .args([
                "--bind",
                &format!("guest=dpdk:net_vhost0,iface={}", socket.display()),
            ])
            .args(["--bind", &format!("sink=pcap:tx={}", output.display())])
            // Stopped with Ctrl-C once the guest has forwarded (below); the duration is
            // only a backstop.
            .args(["--duration", "60", "--idle", "sleep", "--control", "none"])
            .args(["--hugepages", "off", "--eal", "--no-huge -m 256"])
            .arg("--stats-json")
            .arg(&json_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The vhost-user socket appears when the port starts.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(socket.exists(), "netvm did not open the vhost-user socket");
        // Line-buffered, so that its "Start automatic packet forwarding" reaches us when
        // it is printed, not when the pipe's buffer fills.
        let mut guest = Command::new("stdbuf")
            .args(["-oL", "dpdk-testpmd"])
            .args([
                "-l",
                "0,1",
                "--no-pci",
                "--no-huge",
                "-m",
                "512",
                "--log-level=4",
            ])
            .arg(format!("--file-prefix=guest{}", std::process::id()))
            .arg(format!("--vdev=net_virtio_user0,path={}", socket.display()))
            .args(["--", "--forward-mode=macswap", "--total-num-mbufs=4096"])
            .args(["--auto-start", "-i"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The guest's start-up (its EAL zeroing 512 MiB without huge pages) takes from
        // under a second to several on a loaded machine: let it forward for two seconds
        // from the moment it says it forwards, not from when it was started.
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let guest_stdout = guest.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            let mut lines = Vec::new();
            for line in std::io::BufReader::new(guest_stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains("Start automatic packet forwarding") {
                    let _ = started_tx.send(());
                }
                lines.push(line);
            }
            lines
        });
        let forwarding = started_rx.recv_timeout(Duration::from_secs(40)).is_ok();
        std::thread::sleep(Duration::from_secs(2));
        {
            use std::io::Write;
            let stdin = guest.stdin.as_mut().unwrap();
            let _ = stdin.write_all(b"quit\n");
        }
        let guest = guest.wait_with_output().unwrap();
        let guest_lines = reader.join().unwrap();
        assert!(
            forwarding,
            "the guest never started forwarding:\n{}\n{}",
            guest_lines.join("\n"),
            String::from_utf8_lossy(&guest.stderr)
        );
        // SAFETY: kill has no memory preconditions; the pid is our child's, not yet reaped.
        unsafe { libc::kill(switch.id() as libc::pid_t, libc::SIGINT) };
        let out = switch.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "netvm run failed:\n{stderr}");
        assert!(
            guest.status.success(),
            "testpmd failed:\n{}",
            String::from_utf8_lossy(&guest.stderr)
        );

        let config = netvm_runtime::port::gen::GenConfig::parse("flows=8,size=96").unwrap();
        let templates = netvm_runtime::port::gen::GenPort::new(&config, 0)
            .unwrap()
            .templates()
            .to_vec();
        let back = read_pcap(&output);
        assert!(
            back.len() > 100,
            "frames came back from the guest: {}\n{stderr}",
            back.len()
        );
        for frame in &back {
            let mut unswapped = frame.clone();
            unswapped[..6].copy_from_slice(&frame[6..12]);
            unswapped[6..12].copy_from_slice(&frame[..6]);
            assert!(
                templates.contains(&unswapped),
                "a frame back from the guest is a generator frame with its MACs swapped: \
                 {frame:02x?}"
            );
        }
        let json = stats(&json_path);
        assert_eq!(json["balanced"], true, "{json}");
        assert_eq!(json["buffers_returned"], json["buffers"]);
        assert_no_copies(&json);
        let guest_port = &json["ports"][1];
        assert_eq!(guest_port["rx_packets"], back.len() as u64, "{json}");
        assert!(guest_port["tx_packets"].as_u64().unwrap() >= back.len() as u64);
    }
}
