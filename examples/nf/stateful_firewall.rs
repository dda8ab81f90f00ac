//! A stateful TCP firewall as a netvm network function process, written against
//! `netvm-nf` from scratch.
//!
//! It tracks TCP connections by their symmetric 5-tuple: a connection opens with a SYN
//! (without ACK), lives while packets flow, and closes on RST or after both FINs. A TCP
//! packet that belongs to no open connection (a stray ACK, a scan, the tail of a
//! connection opened before the firewall started) is dropped; everything that is not
//! TCP passes. At the end it prints what it saw.
//!
//! ```text
//! netvm run examples/ids-chain.nvr --vm fw=process --control /tmp/netvm.sock &
//! cargo run --release -p netvm-nf --example stateful-firewall -- /tmp/netvm.sock fw
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use netvm_nf::{AttachOptions, Nf, Verdict};
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

#[derive(Debug, Default)]
struct Firewall {
    conns: HashMap<ConnKey, Conn>,
    opened: u64,
    closed: u64,
    passed: u64,
    dropped_out_of_state: u64,
    not_tcp: u64,
}

impl Firewall {
    fn verdict(&mut self, d: &Decoded<'_>) -> Verdict {
        let Some(key) = ConnKey::of(d) else {
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
            if self.conns.insert(key, Conn::default()).is_none() {
                self.opened += 1;
            }
            self.passed += 1;
            return Verdict::Next;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            self.dropped_out_of_state += 1;
            return Verdict::Drop;
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

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(control), Some(vm)) = (args.next(), args.next()) else {
        eprintln!("usage: stateful-firewall CONTROL_SOCKET VM_NAME");
        return ExitCode::from(2);
    };
    let mut nf = match Nf::attach_with(&PathBuf::from(&control), &vm, AttachOptions::default()) {
        Ok(nf) => nf,
        Err(e) => {
            eprintln!("stateful-firewall: attaching to VM `{vm}` at {control}: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "stateful-firewall: attached to VM `{}` ({})",
        nf.info().vm,
        if nf.info().trusted {
            "trusted: packets in place"
        } else {
            "untrusted: private copies"
        }
    );
    let mut fw = Firewall::default();
    let result = nf.run(|packet| fw.verdict(&packet.decode()));
    println!(
        "stateful-firewall: {} connections opened, {} closed, {} open; {} packets passed, \
         {} dropped out of state, {} not TCP",
        fw.opened,
        fw.closed,
        fw.conns.len(),
        fw.passed,
        fw.dropped_out_of_state,
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
