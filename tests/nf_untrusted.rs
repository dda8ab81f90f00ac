//! Trust domains, enforced by the kernel, checked from the untrusted process's side.
//!
//! This test process *is* the untrusted VM's network function: it attaches to a real
//! `netvm run` through the control socket with `netvm-nf`, handles its packets, and then
//! looks at everything it can reach — every memfd in `/proc/self/maps` and
//! `/proc/self/fd` — and at the bytes of that memory. It must hold only its private region
//! (never the switch's shared pool, by name and by inode), and the packets of the other
//! flow, which never went through this VM, must appear nowhere in it.
//!
//! It is alone in its test binary on purpose: no other test may map netvm memory here.

mod support;

use std::os::unix::net::UnixStream;
use std::time::Duration;

use netvm_nf::audit::MemoryAudit;
use netvm_nf::{Nf, Verdict};
use netvm_packet::{BaseProto, Field, PacketSpec};
use support::{netvm, wait_for, write_pcap, Proc};

const MINE: &[u8] = b"FOR-THE-IDS-ONLY";
const SECRET: &[u8] = b"SECRET-OF-ANOTHER-FLOW";

fn frame(dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut spec = PacketSpec::new(BaseProto::Udp);
    spec.set(Field::IpSrc, 0x0a00_0001)
        .set(Field::IpDst, 0x0a00_0002)
        .set(Field::UdpDport, u128::from(dport));
    spec.payload = Some(payload.to_vec());
    spec.build().unwrap()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Inodes of the memfds named `name` that process `pid` maps.
fn memfd_inodes(pid: u32, name: &str) -> Vec<u64> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    maps.lines()
        .filter(|l| {
            l.contains(&format!("/memfd:{name} ")) || l.ends_with(&format!("/memfd:{name}"))
        })
        .filter_map(|l| l.split_whitespace().nth(4)?.parse().ok())
        .collect()
}

#[test]
fn an_untrusted_process_holds_only_its_private_region_and_never_sees_other_flows() {
    let dir = tempfile::tempdir().unwrap();
    let mut frames = Vec::new();
    for i in 0..500u32 {
        frames.push(frame(1111, &[MINE, &i.to_be_bytes()].concat()));
        frames.push(frame(2222, &[SECRET, &i.to_be_bytes()].concat()));
    }
    let input = dir.path().join("in.pcap");
    let output = dir.path().join("out.pcap");
    write_pcap(&input, &frames);
    let policy = dir.path().join("policy.nvr");
    std::fs::write(
        &policy,
        "port a\nport b\nvm ids\n\
         rule inspected : udp.dport == 1111 => chain ids -> out b\n\
         rule other     : udp.dport == 2222 => out b\n",
    )
    .unwrap();
    let control = dir.path().join("control.sock");
    let mut command = netvm();
    command
        .arg("run")
        .arg(&policy)
        .arg("--bind")
        .arg(format!("a=pcap:rx={}", input.display()))
        .arg("--bind")
        .arg(format!("b=pcap:tx={}", output.display()))
        .args(["--vm", "ids=process", "--wait-for-vms", "30"])
        .args(["--hugepages", "off", "--idle", "sleep", "--control"])
        .arg(&control);
    let mut switch = Proc::spawn(command, dir.path().join("switch.log"));
    wait_for("the control socket", Duration::from_secs(20), || {
        UnixStream::connect(&control).is_ok()
    });
    let shared_inodes = memfd_inodes(switch.pid(), "netvm-region");
    assert!(
        !shared_inodes.is_empty(),
        "the switch maps its shared region"
    );

    let mut nf = Nf::attach(&control, "ids").expect("attach as the untrusted VM");
    assert!(!nf.info().trusted);
    assert_eq!(nf.info().region, "private");
    let mut seen = 0u32;
    let mut saw_secret = false;
    nf.run(|packet| {
        seen += 1;
        saw_secret |= contains(packet.data(), SECRET);
        assert!(contains(packet.data(), MINE));
        Verdict::Next
    })
    .unwrap();
    assert_eq!(
        switch.wait(Duration::from_secs(60)),
        Some(0),
        "{}",
        switch.log()
    );
    assert_eq!(seen, 500, "every inspected packet, and only those");
    assert!(!saw_secret);

    // Everything this process can map of netvm's memory, as the kernel lists it.
    let audit = MemoryAudit::of_self().unwrap();
    assert!(
        !audit.mappings.is_empty() && !audit.descriptors.is_empty(),
        "{audit:?}"
    );
    for m in audit.mappings.iter().chain(&audit.descriptors) {
        assert_eq!(
            m.name, "memfd:netvm-private",
            "untrusted process holds {m:?}"
        );
        assert!(
            !shared_inodes.contains(&m.inode),
            "the shared pool's memfd: {m:?}"
        );
    }
    // And what that memory holds: our packets, never the other flow's.
    let mut bytes_scanned = 0;
    for d in &audit.descriptors {
        let fd = d.how.trim_start_matches("fd ");
        let memory = std::fs::read(format!("/proc/self/fd/{fd}")).unwrap();
        bytes_scanned += memory.len();
        assert!(!contains(&memory, SECRET), "another flow's bytes in {d:?}");
        assert!(
            contains(&memory, MINE),
            "our own packets should be in {d:?}"
        );
    }
    assert!(bytes_scanned > 0);
    drop(nf);
}
