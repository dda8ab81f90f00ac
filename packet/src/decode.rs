//! [`Decoded`]: a zero-copy view over a raw Ethernet frame that applies the language's
//! absent-header rules. It never reads out of bounds and never panics, for any input.
//!
//! The rules (LANGUAGE.md, made exact here):
//! - `eth` is present iff the frame has at least 14 bytes. Up to two VLAN tags (TPID 0x8100
//!   or 0x88a8) are skipped; `vlan` is present iff at least one complete tag is, and
//!   `vlan.id`/`vlan.pcp` come from the outer tag. `eth.type` is the type after the tags; when
//!   a tag is cut off, `eth.type` is absent (while `eth.src`/`eth.dst` stay present).
//! - `arp`: type 0x0806 and 28 bytes of ARP. `ip`: type 0x0800, version 4, IHL ≥ 5 and the
//!   whole header (with options) captured. `ip6`: type 0x86DD, version 6, 40 bytes; `ip6.nh`
//!   is the fixed header's next header. Extension headers (hop-by-hop 0, routing 43,
//!   destination options 60, fragment 44) are walked, at most 8, each complete, to find the
//!   upper protocol; a non-first fragment (offset ≠ 0) has no L4.
//! - L4 only in the first fragment (IPv4 offset 0; MF alone is fine). `tcp`: protocol 6, data
//!   offset ≥ 5, header captured. `udp`: 17 and 8 bytes. `icmp`: IPv4 protocol 1 and 8 bytes.
//!   `icmp6`: IPv6 upper protocol 58 and 8 bytes. `l4.*` is present iff tcp or udp is.
//! - `pkt.len` is the captured length (saturated to 65535), always present.
//! - The payload is the bytes after the L4 header when one is present; else after the IP
//!   header (and walked extension headers); else after the ARP header; else after the
//!   Ethernet header and complete tags (the innermost header decoded, in every case);
//!   absent when the frame has no Ethernet header. Its end is trimmed to the IPv4 total length
//!   (or 40 + the IPv6 payload length) when that is sane (at least the header, at most what
//!   was captured), so Ethernet padding is not payload.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::field::{Field, FieldType, Proto};

/// Where the layers start inside the frame (what the JIT and the runtime need to know).

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offsets {
    pub l3: Option<u16>,
    pub l4: Option<u16>,
    pub payload: Option<u16>,
    pub payload_end: u16,
}

/// A decoded frame: header presence and offsets, computed once; fields read on demand.
pub struct Decoded<'a> {
    f: &'a [u8],
    eth: bool,
    eth_type: Option<u16>,
    vlan: Option<usize>,
    l3: usize,
    arp: bool,
    ip: bool,
    ip6: bool,
    upper: Option<u8>,
    l4: usize,
    l4_kind: Option<Proto>,
    payload: Option<(usize, usize)>,
}

fn be16(f: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*f.get(at)?, *f.get(at + 1)?]))
}

impl<'a> Decoded<'a> {
    pub fn new(f: &'a [u8]) -> Decoded<'a> {
        let mut d = Decoded {
            f,
            eth: false,
            eth_type: None,
            vlan: None,
            l3: 0,
            arp: false,
            ip: false,
            ip6: false,
            upper: None,
            l4: 0,
            l4_kind: None,
            payload: None,
        };
        if f.len() < 14 {
            return d;
        }
        d.eth = true;
        let mut at = 12;
        let mut ty = be16(f, 12);
        for _ in 0..2 {
            match ty {
                Some(0x8100) | Some(0x88a8) => {
                    if f.len() < at + 6 {
                        ty = None;
                        break;
                    }
                    if d.vlan.is_none() {
                        d.vlan = Some(at + 2);
                    }
                    at += 4;
                    ty = be16(f, at);
                }
                _ => break,
            }
        }
        d.eth_type = ty;
        d.l3 = at + 2;
        let l3 = d.l3;
        let mut end = f.len();
        let mut after_l3 = l3;
        match ty {
            Some(0x0806) if f.len() >= l3 + 28 => d.arp = true,
            Some(0x0800)
                if f.len() >= l3 + 20
                    && f[l3] >> 4 == 4
                    && f[l3] & 0xf >= 5
                    && f.len() >= l3 + (f[l3] & 0xf) as usize * 4 =>
            {
                d.ip = true;
                let ihl = (f[l3] & 0xf) as usize * 4;
                after_l3 = l3 + ihl;
                let total = be16(f, l3 + 2).unwrap_or(0) as usize;
                if total >= ihl && l3 + total <= f.len() {
                    end = l3 + total;
                }
                let frag_off = be16(f, l3 + 6).unwrap_or(0) & 0x1fff;
                if frag_off == 0 {
                    d.upper = Some(f[l3 + 9]);
                }
            }
            Some(0x86dd) if f.len() >= l3 + 40 && f[l3] >> 4 == 6 => {
                d.ip6 = true;
                let plen = be16(f, l3 + 4).unwrap_or(0) as usize;
                if l3 + 40 + plen <= f.len() {
                    end = l3 + 40 + plen;
                }
                let mut nh = f[l3 + 6];
                let mut p = l3 + 40;
                let mut upper = Some(nh);
                for _ in 0..8 {
                    match nh {
                        0 | 43 | 60 => {
                            if p + 8 > f.len() {
                                upper = None;
                                break;
                            }
                            let len = (f[p + 1] as usize + 1) * 8;
                            if p + len > f.len() {
                                upper = None;
                                break;
                            }
                            nh = f[p];
                            p += len;
                            upper = Some(nh);
                        }
                        44 => {
                            if p + 8 > f.len() {
                                upper = None;
                                break;
                            }
                            let off = be16(f, p + 2).unwrap_or(0) >> 3;
                            nh = f[p];
                            p += 8;
                            upper = if off == 0 { Some(nh) } else { None };
                            if off != 0 {
                                break;
                            }
                        }
                        _ => break,
                    }
                }
                if matches!(nh, 0 | 43 | 60 | 44) {
                    upper = None;
                }
                after_l3 = p;
                d.upper = upper;
            }
            _ => {}
        }
        let end = end.max(after_l3.min(f.len()));
        d.l4 = after_l3;
        let a = after_l3;
        let kind = match d.upper {
            Some(6) if d.ip || d.ip6 => (f.len() >= a + 20
                && f[a + 12] >> 4 >= 5
                && f.len() >= a + (f[a + 12] >> 4) as usize * 4)
                .then(|| (Proto::Tcp, (f[a + 12] >> 4) as usize * 4)),
            Some(17) => (f.len() >= a + 8).then_some((Proto::Udp, 8)),
            Some(1) if d.ip => (f.len() >= a + 8).then_some((Proto::Icmp, 8)),
            Some(58) if d.ip6 => (f.len() >= a + 8).then_some((Proto::Icmp6, 8)),
            _ => None,
        };
        let start = match kind {
            Some((p, len)) => {
                d.l4_kind = Some(p);
                a + len
            }
            None if d.ip || d.ip6 => a,
            None if d.arp => l3 + 28,
            None => l3.min(f.len()),
        };
        let end = if d.ip || d.ip6 { end } else { f.len() };
        d.payload = Some((start.min(end), end));
        d
    }
    pub fn frame(&self) -> &'a [u8] {
        self.f
    }
    pub fn has(&self, p: Proto) -> bool {
        match p {
            Proto::Eth => self.eth,
            Proto::Vlan => self.vlan.is_some(),
            Proto::Arp => self.arp,
            Proto::Ip => self.ip,
            Proto::Ip6 => self.ip6,
            other => self.l4_kind == Some(other),
        }
    }
    pub fn field(&self, field: Field) -> Option<u128> {
        use Field::*;
        let f = self.f;
        let b = |i: usize| f.get(i).map(|&v| v as u128);
        let n = |i: usize, len: usize| -> Option<u128> {
            let s = f.get(i..i + len)?;
            Some(s.iter().fold(0u128, |acc, &x| acc << 8 | x as u128))
        };
        let l3 = self.l3;
        let l4 = self.l4;
        let ip = self.ip;
        let ip6 = self.ip6;
        let tcp = self.l4_kind == Some(Proto::Tcp);
        let udp = self.l4_kind == Some(Proto::Udp);
        let v = match field {
            EthSrc if self.eth => n(6, 6),
            EthDst if self.eth => n(0, 6),
            EthType if self.eth => self.eth_type.map(u128::from),
            VlanId => self.vlan.and_then(|v| n(v, 2)).map(|x| x & 0xfff),
            VlanPcp => self.vlan.and_then(b).map(|x| x >> 5),
            IpSrc if ip => n(l3 + 12, 4),
            IpDst if ip => n(l3 + 16, 4),
            IpProto if ip => b(l3 + 9),
            IpTtl if ip => b(l3 + 8),
            IpDscp if ip => b(l3 + 1).map(|x| x >> 2),
            IpLen if ip => n(l3 + 2, 2),
            IpFrag if ip => n(l3 + 6, 2).map(|x| u128::from(x & 0x3fff != 0)),
            Ip6Src if ip6 => n(l3 + 8, 16),
            Ip6Dst if ip6 => n(l3 + 24, 16),
            Ip6Nh if ip6 => b(l3 + 6),
            Ip6Hlim if ip6 => b(l3 + 7),
            Ip6Flow if ip6 => n(l3, 4).map(|x| x & 0xfffff),
            TcpSport if tcp => n(l4, 2),
            TcpDport if tcp => n(l4 + 2, 2),
            TcpFlags if tcp => b(l4 + 13),
            TcpFlagFin if tcp => b(l4 + 13).map(|x| x & 1),
            TcpFlagSyn if tcp => b(l4 + 13).map(|x| x >> 1 & 1),
            TcpFlagRst if tcp => b(l4 + 13).map(|x| x >> 2 & 1),
            TcpFlagPsh if tcp => b(l4 + 13).map(|x| x >> 3 & 1),
            TcpFlagAck if tcp => b(l4 + 13).map(|x| x >> 4 & 1),
            TcpFlagUrg if tcp => b(l4 + 13).map(|x| x >> 5 & 1),
            UdpSport if udp => n(l4, 2),
            UdpDport if udp => n(l4 + 2, 2),
            L4Sport if tcp || udp => n(l4, 2),
            L4Dport if tcp || udp => n(l4 + 2, 2),
            IcmpType if self.l4_kind == Some(Proto::Icmp) => b(l4),
            IcmpCode if self.l4_kind == Some(Proto::Icmp) => b(l4 + 1),
            Icmp6Type if self.l4_kind == Some(Proto::Icmp6) => b(l4),
            Icmp6Code if self.l4_kind == Some(Proto::Icmp6) => b(l4 + 1),
            PktLen => Some(f.len().min(65535) as u128),
            PayloadLen => self.payload().map(|p| p.len().min(65535) as u128),
            _ => None,
        };
        v
    }
    pub fn payload(&self) -> Option<&'a [u8]> {
        let (s, e) = self.payload?;
        self.f.get(s..e)
    }

    /// Layer offsets: `l3` when an IP or ARP header is present, `l4` when a TCP, UDP or ICMP
    /// header is, `payload` when the payload is (with `payload_end`).
    pub fn offsets(&self) -> Offsets {
        let l3 = (self.ip || self.ip6 || self.arp).then_some(self.l3 as u16);
        let l4 = self.l4_kind.map(|_| self.l4 as u16);
        let (payload, payload_end) = match self.payload {
            Some((s, e)) => (Some(s as u16), e as u16),
            None => (None, 0),
        };
        Offsets {
            l3,
            l4,
            payload,
            payload_end,
        }
    }

    /// One line per present header, for `netvm explain`.
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        let mut lines = Vec::new();
        let v = |f: Field| {
            self.field(f)
                .map_or("?".to_string(), |x| format_value(f.ty(), x))
        };
        if !self.eth {
            lines.push((
                "frame",
                format!("{} bytes: too short for Ethernet", self.f.len()),
            ));
            return lines;
        }
        let ty = self
            .eth_type
            .map_or("absent (truncated tag)".to_string(), |t| {
                format!("0x{t:04x}")
            });
        lines.push((
            "eth",
            format!("{} -> {} type {ty}", v(Field::EthSrc), v(Field::EthDst)),
        ));
        if self.vlan.is_some() {
            lines.push((
                "vlan",
                format!("id {} pcp {}", v(Field::VlanId), v(Field::VlanPcp)),
            ));
        }
        if self.arp {
            lines.push(("arp", "present".to_string()));
        }
        if self.ip {
            lines.push((
                "ip",
                format!(
                    "{} -> {} proto {} ttl {} dscp {} len {}{}",
                    v(Field::IpSrc),
                    v(Field::IpDst),
                    v(Field::IpProto),
                    v(Field::IpTtl),
                    v(Field::IpDscp),
                    v(Field::IpLen),
                    if self.field(Field::IpFrag) == Some(1) {
                        " fragment"
                    } else {
                        ""
                    }
                ),
            ));
        }
        if self.ip6 {
            lines.push((
                "ip6",
                format!(
                    "{} -> {} nh {} hlim {} flow {}",
                    v(Field::Ip6Src),
                    v(Field::Ip6Dst),
                    v(Field::Ip6Nh),
                    v(Field::Ip6Hlim),
                    v(Field::Ip6Flow)
                ),
            ));
        }
        match self.l4_kind {
            Some(Proto::Tcp) => {
                let flags = self.field(Field::TcpFlags).unwrap_or(0) as u8;
                let names: String = [
                    (0x02, 'S'),
                    (0x10, '.'),
                    (0x01, 'F'),
                    (0x04, 'R'),
                    (0x08, 'P'),
                    (0x20, 'U'),
                ]
                .iter()
                .filter(|(bit, _)| flags & bit != 0)
                .map(|(_, c)| *c)
                .collect();
                lines.push((
                    "tcp",
                    format!(
                        "{} -> {} flags [{names}] (0x{flags:02x})",
                        v(Field::TcpSport),
                        v(Field::TcpDport)
                    ),
                ));
            }
            Some(Proto::Udp) => lines.push((
                "udp",
                format!("{} -> {}", v(Field::UdpSport), v(Field::UdpDport)),
            )),
            Some(Proto::Icmp) => lines.push((
                "icmp",
                format!("type {} code {}", v(Field::IcmpType), v(Field::IcmpCode)),
            )),
            Some(Proto::Icmp6) => lines.push((
                "icmp6",
                format!("type {} code {}", v(Field::Icmp6Type), v(Field::Icmp6Code)),
            )),
            _ => {}
        }
        if let Some(p) = self.payload() {
            let shown: String = p
                .iter()
                .take(48)
                .flat_map(|&b| std::ascii::escape_default(b))
                .map(char::from)
                .collect();
            let more = if p.len() > 48 { "..." } else { "" };
            lines.push(("payload", format!("{} bytes \"{shown}{more}\"", p.len())));
        }
        lines
    }
}

/// A field value as the language writes it: `10.0.0.1`, `2001:db8::1`, `02:00:00:aa:bb:cc`,
/// decimal integers, `true`/`false`.
pub fn format_value(ty: FieldType, v: u128) -> String {
    match ty {
        FieldType::Ipv4 => Ipv4Addr::from(v as u32).to_string(),
        FieldType::Ipv6 => Ipv6Addr::from(v).to_string(),
        FieldType::Mac => {
            let b = (v as u64).to_be_bytes();
            format!(
                "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                b[2], b[3], b[4], b[5], b[6], b[7]
            )
        }
        FieldType::Bool => (v != 0).to_string(),
        FieldType::Uint(_) => v.to_string(),
    }
}
