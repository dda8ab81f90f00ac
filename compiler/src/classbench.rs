//! ClassBench header traces as frames, for `netvm classify`, `netvm bench`, the benches and the
//! `.expected` test.
//!
//! A trace line is `SRC DST SPORT DPORT PROTO FLAGS FILTER` (tab-separated decimal). Each line
//! becomes one Ethernet/IPv4 frame built with [`PacketSpec`]: a TCP header for protocol 6, UDP
//! for 17, an ICMP echo header for 1, and no L4 header for any other protocol (the IPv4
//! protocol field carries the number). Ports exist only in TCP and UDP frames, so for other
//! protocols the trace's port columns are not in the frame — and a rule with a port condition
//! cannot match it, where ClassBench's 5-tuple scan (and the `.expected` files) may say it
//! does. FLAGS and FILTER are ignored (TCP flags are ignored by the imported rules too).

use netvm_packet::{BaseProto, Field, PacketSpec};

/// One trace line's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceHeader {
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

/// Parses a trace (blank lines skipped); the error names the line.
pub fn parse_trace(text: &str) -> Result<Vec<TraceHeader>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split_whitespace().collect();
        let num = |k: usize| -> Result<u64, String> {
            cols.get(k)
                .and_then(|c| c.parse::<u64>().ok())
                .ok_or_else(|| {
                    format!("line {}: column {} is not a number: `{line}`", i + 1, k + 1)
                })
        };
        let narrow = |v: u64, max: u64, what: &str| -> Result<u64, String> {
            if v > max {
                Err(format!("line {}: {what} {v} is out of range", i + 1))
            } else {
                Ok(v)
            }
        };
        out.push(TraceHeader {
            src: narrow(num(0)?, u64::from(u32::MAX), "source address")? as u32,
            dst: narrow(num(1)?, u64::from(u32::MAX), "destination address")? as u32,
            sport: narrow(num(2)?, 65535, "source port")? as u16,
            dport: narrow(num(3)?, 65535, "destination port")? as u16,
            proto: narrow(num(4)?, 255, "protocol")? as u8,
        });
    }
    Ok(out)
}

impl TraceHeader {
    /// Whether the frame carries the trace's ports (TCP or UDP).
    pub fn has_ports(&self) -> bool {
        matches!(self.proto, 6 | 17)
    }

    /// The frame for this header (see the module doc).
    pub fn frame(&self) -> Vec<u8> {
        let mut spec = match self.proto {
            6 => PacketSpec::new(BaseProto::Tcp),
            17 => PacketSpec::new(BaseProto::Udp),
            1 => PacketSpec::new(BaseProto::Icmp),
            _ => PacketSpec::new(BaseProto::Ip),
        };
        spec.set(Field::IpSrc, u128::from(self.src));
        spec.set(Field::IpDst, u128::from(self.dst));
        match self.proto {
            6 => {
                spec.set(Field::TcpSport, u128::from(self.sport));
                spec.set(Field::TcpDport, u128::from(self.dport));
            }
            17 => {
                spec.set(Field::UdpSport, u128::from(self.sport));
                spec.set(Field::UdpDport, u128::from(self.dport));
            }
            1 => {}
            p => {
                spec.set(Field::IpProto, u128::from(p));
            }
        }
        // Every field set above belongs to the stack of its base, so the builder accepts it;
        // an empty frame (classified as the default) would only hide a builder regression,
        // which the `.expected` test would then report.
        spec.build().unwrap_or_default()
    }
}

/// Parses a `.expected` file: one 1-based rule number per line, 0 for none.
pub fn parse_expected(text: &str) -> Result<Vec<usize>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            l.trim()
                .parse()
                .map_err(|_| format!("line {}: not a rule number: `{l}`", i + 1))
        })
        .collect()
}
