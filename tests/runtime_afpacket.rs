//! The `afpacket` port on real kernel traffic: two network namespaces, each joined to
//! the host by a veth pair whose host ends are the switch's ports. `netvm run` forwards
//! between them (through a `pcap-tap` VM one way), and the namespaces ping each other
//! (ICMP echo from a raw socket) and exchange UDP datagrams. Replies only come back if
//! the switch carried ARP, the requests and the replies both ways; the tap's capture
//! must hold the echo requests with the right addresses.
//!
//! Needs root and iproute2's `ip`; otherwise it says why on stderr and passes. Every
//! namespace and link it makes carries the test's pid and is deleted on the way out,
//! panics included.

use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

/// Two namespaces and two veth pairs; torn down on drop.
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
        Ipv4Addr::new(10, 77, self.subnet, 1 + i as u8)
    }

    fn new() -> Result<Lab, String> {
        let pid = std::process::id();
        let lab = Lab {
            ns: [format!("netvm-t{pid}-a"), format!("netvm-t{pid}-b")],
            host_if: [
                format!("nva{}", pid % 1_000_000),
                format!("nvb{}", pid % 1_000_000),
            ],
            subnet: (pid % 250) as u8,
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

/// Why this machine cannot run the test, if it cannot.
fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (needs to create namespaces and raw sockets)".into());
    }
    if Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        return Some("`ip` (iproute2) is not installed".into());
    }
    None
}

/// Run `f` on a thread inside network namespace `ns`.
fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("the namespace's file");
        // SAFETY: `file` is an open namespace descriptor; setns only moves this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum = 0u32;
    for pair in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Send `count` ICMP echo requests to `dst` from a raw socket; the number of matching
/// echo replies received within the deadline.
fn ping(dst: Ipv4Addr, count: u16) -> usize {
    // SAFETY: plain system call; checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
    assert!(
        fd >= 0,
        "raw ICMP socket: {}",
        std::io::Error::last_os_error()
    );
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 200_000,
    };
    // SAFETY: `timeout` is a live timeval of the length passed.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    // SAFETY: all-zero is a valid sockaddr_in; the fields that matter are set.
    let mut to: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    to.sin_family = libc::AF_INET as u16;
    to.sin_addr.s_addr = u32::from(dst).to_be();
    let id = (std::process::id() & 0xffff) as u16;
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut next_seq = 0u16;
    while Instant::now() < deadline && seen.len() < count as usize {
        if next_seq < count {
            let mut msg = vec![8u8, 0, 0, 0];
            msg.extend_from_slice(&id.to_be_bytes());
            msg.extend_from_slice(&next_seq.to_be_bytes());
            msg.extend_from_slice(b"netvm afpacket test");
            let c = checksum(&msg);
            msg[2..4].copy_from_slice(&c.to_be_bytes());
            // SAFETY: `msg` and `to` are live for the call and their lengths are passed.
            unsafe {
                libc::sendto(
                    fd,
                    msg.as_ptr().cast(),
                    msg.len(),
                    0,
                    (&to as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                );
            }
            next_seq += 1;
        }
        let mut buf = [0u8; 1500];
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n > 0 {
            let ihl = usize::from(buf[0] & 0x0f) * 4;
            let icmp = &buf[ihl..n as usize];
            if icmp.len() >= 8 && icmp[0] == 0 && icmp[4..6] == id.to_be_bytes() {
                seen.insert(u16::from_be_bytes([icmp[6], icmp[7]]));
            }
        }
    }
    // SAFETY: `fd` is ours and closed once.
    unsafe { libc::close(fd) };
    seen.len()
}

#[test]
fn afpacket_ports_carry_ping_and_udp_between_two_namespaces() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIPPED afpacket_ports_carry_ping_and_udp_between_two_namespaces: {why}");
        return;
    }
    let lab = match Lab::new() {
        Ok(lab) => lab,
        Err(e) => {
            // Root without CAP_SYS_ADMIN (some containers) cannot make namespaces.
            eprintln!("SKIPPED afpacket_ports_carry_ping_and_udp_between_two_namespaces: {e}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("bridge.nvr");
    let tap = dir.path().join("tap.pcap");
    let stats = dir.path().join("stats.json");
    std::fs::write(
        &policy,
        format!(
            "port a = afpacket(\"{}\")\nport b\nvm tap trusted\n\
             rule a_to_b : in_port == a => chain tap -> out b\n\
             rule b_to_a : in_port == b => out a\ndefault => drop\n",
            lab.host_if[0]
        ),
    )
    .unwrap();
    let switch = Command::new(env!("CARGO_BIN_EXE_netvm"))
        .arg("run")
        .arg(&policy)
        .args(["--bind", &format!("b=afpacket:{}", lab.host_if[1])])
        .args(["--vm", &format!("tap=pcap-tap:{}", tap.display())])
        .args(["--duration", "5", "--idle", "sleep", "--vm-mode", "inline"])
        .arg("--stats-json")
        .arg(&stats)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("netvm run starts");
    std::thread::sleep(Duration::from_millis(700));

    let (a, b) = (lab.addr(0), lab.addr(1));
    let receiver = in_netns(&lab.ns[1], move || {
        let socket = UdpSocket::bind((b, 5353)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut got = Vec::new();
        // Until shortly before the switch stops (5 s from its start, 0.7 s before this):
        // on a loaded machine the pings ahead of the datagrams can take most of 3 s.
        let deadline = Instant::now() + Duration::from_millis(4_000);
        let mut buf = [0u8; 256];
        while Instant::now() < deadline && got.len() < 5 {
            if let Ok((n, from)) = socket.recv_from(&mut buf) {
                got.push((buf[..n].to_vec(), from.ip()));
            }
        }
        got
    });
    let replies = in_netns(&lab.ns[0], move || {
        let replies = ping(b, 5);
        let socket = UdpSocket::bind((a, 0)).unwrap();
        for i in 0..5u8 {
            socket.send_to(&[b'u', i], (b, 5353)).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        replies
    })
    .join()
    .unwrap();
    let datagrams = receiver.join().unwrap();
    let out = switch.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "netvm run failed:\n{stderr}\n{stdout}"
    );
    assert_eq!(replies, 5, "ping replies through the switch\n{stdout}");
    assert_eq!(
        datagrams.len(),
        5,
        "UDP datagrams through the switch\n{stdout}"
    );
    assert!(datagrams
        .iter()
        .enumerate()
        .all(|(i, (d, from))| d == &[b'u', i as u8] && *from == a));

    let frames = netvm_runtime::port::pcap::read_frames(tap.to_str().unwrap()).unwrap();
    let requests = frames
        .iter()
        .filter(|f| {
            f.len() >= 42
                && f[12..14] == [0x08, 0x00]
                && f[23] == 1
                && f[26..30] == a.octets()
                && f[30..34] == b.octets()
                && f[34] == 8
        })
        .count();
    assert_eq!(requests, 5, "echo requests a -> b in the tap's capture");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert_eq!(json["balanced"], true);
    assert_eq!(json["buffers_returned"], json["buffers"]);
    drop(lab);
}
