//! A stateful TCP firewall as a netvm network function process, written against
//! `netvm-nf` from scratch.
//!
//! It tracks TCP connections by their symmetric 5-tuple: a connection opens with a SYN
//! (without ACK), lives while packets flow, and closes on RST or after both FINs. A TCP
//! packet that belongs to no open connection (a stray ACK, a scan, the tail of a
//! connection opened before the firewall started) is dropped; everything that is not
//! TCP passes. At the end it prints what it saw.
//!
//! Two options use the policy's names, resolved when the firewall attaches (an unknown
//! name stops it there, listing the names the switch has):
//! - `--inside PORT`: only a SYN that arrived on port PORT opens a connection (the
//!   packet's ingress port, by name); a SYN from any other port is refused (dropped).
//! - `--strays-to PORT`: packets of no open connection leave by port PORT (a quarantine
//!   capture, say) instead of being dropped.
//!
//! ```text
//! netvm run examples/ids-chain.nvr --vm fw=process --control /tmp/netvm.sock &
//! cargo run --release -p netvm-nf --example stateful-firewall -- /tmp/netvm.sock fw \
//!     [--inside PORT] [--strays-to PORT]
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use netvm_nf::{AttachOptions, Nf, Packet, Verdict};
use netvm_packet::{Decoded, Field};

/// Both directions of a connection map to the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ConnKey {
    low: (u128, u16),
    high: (u128, u16),
}

impl ConnKey {
    fn of(d: &Decoded<'_>) -> Option<ConnKey> {
        let src = d.field(Field::IpSrc).or_else(|| d.field(Field::Ip6Src))?;
        let dst = d.field(Field::IpDst).or_else(|| d.field(Field::Ip6Dst))?;
        let sport = d.field(Field::TcpSport)? as u16;
        let dport = d.field(Field::TcpDport)? as u16;
        let (a, b) = ((src, sport), (dst, dport));
        Some(if a <= b {
            ConnKey { low: a, high: b }
        } else {
            ConnKey { low: b, high: a }
        })
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Conn {
    fins: u8,
}

#[derive(Debug)]
struct Firewall {
    conns: HashMap<ConnKey, Conn>,
    /// The only port a connection may be opened from (`--inside`); `None`: any.
    inside: Option<String>,
    /// What happens to a packet of no open connection: drop, or out a port.
    stray: Verdict,
    opened: u64,
    closed: u64,
    passed: u64,
    out_of_state: u64,
    refused_from_outside: u64,
    not_tcp: u64,
}

impl Firewall {
    fn new(inside: Option<String>, stray: Verdict) -> Firewall {
        Firewall {
            conns: HashMap::new(),
            inside,
            stray,
            opened: 0,
            closed: 0,
            passed: 0,
            out_of_state: 0,
            refused_from_outside: 0,
            not_tcp: 0,
        }
    }

    fn verdict(&mut self, packet: &Packet<'_>) -> Verdict {
        let d = packet.decode();
        let Some(key) = ConnKey::of(&d) else {
            self.not_tcp += 1;
            return Verdict::Next;
        };
        let flag = |f: Field| d.field(f).is_some_and(|v| v != 0);
        let (syn, ack, fin, rst) = (
            flag(Field::TcpFlagSyn),
            flag(Field::TcpFlagAck),
            flag(Field::TcpFlagFin),
            flag(Field::TcpFlagRst),
        );
        if syn && !ack {
            if let Some(inside) = &self.inside {
                if packet.in_port().map(|p| p.name) != Some(inside.as_str()) {
                    self.refused_from_outside += 1;
                    return Verdict::Drop;
                }
            }
            if self.conns.insert(key, Conn::default()).is_none() {
                self.opened += 1;
            }
            self.passed += 1;
            return Verdict::Next;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            self.out_of_state += 1;
            return self.stray;
        };
        if fin {
            conn.fins += 1;
        }
        if rst || conn.fins >= 2 {
            self.conns.remove(&key);
            self.closed += 1;
        }
        self.passed += 1;
        Verdict::Next
    }
}

const USAGE: &str =
    "usage: stateful-firewall CONTROL_SOCKET VM_NAME [--inside PORT] [--strays-to PORT]";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(control), Some(vm)) = (args.next(), args.next()) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let (mut inside, mut strays_to) = (None, None);
    while let Some(flag) = args.next() {
        match (flag.as_str(), args.next()) {
            ("--inside", Some(port)) => inside = Some(port),
            ("--strays-to", Some(port)) => strays_to = Some(port),
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let mut nf = match Nf::attach_with(&PathBuf::from(&control), &vm, AttachOptions::default()) {
        Ok(nf) => nf,
        Err(e) => {
            eprintln!("stateful-firewall: attaching to VM `{vm}` at {control}: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Names become indices once, here: a typo stops the firewall before any packet.
    let stray = match strays_to.as_deref().map(|port| nf.out(port)) {
        None => Verdict::Drop,
        Some(Ok(verdict)) => verdict,
        Some(Err(e)) => {
            eprintln!("stateful-firewall: --strays-to: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(Err(e)) = inside.as_deref().map(|port| nf.port_index(port)) {
        eprintln!("stateful-firewall: --inside: {e}");
        return ExitCode::FAILURE;
    }
    eprintln!(
        "stateful-firewall: attached to VM `{}` ({})",
        nf.info().vm,
        if nf.info().trusted {
            "trusted: packets in place"
        } else {
            "untrusted: private copies"
        }
    );
    let mut fw = Firewall::new(inside, stray);
    let result = nf.run(|packet| fw.verdict(packet));
    println!(
        "stateful-firewall: {} connections opened, {} closed, {} open; {} packets passed, \
         {} out of state, {} SYNs refused from outside, {} not TCP",
        fw.opened,
        fw.closed,
        fw.conns.len(),
        fw.passed,
        fw.out_of_state,
        fw.refused_from_outside,
        fw.not_tcp
    );
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stateful-firewall: {e}");
            ExitCode::FAILURE
        }
    }
}
