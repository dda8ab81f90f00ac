//! [`PacketSpec`]: the owned description of a test packet, and the frame builder that
//! `netvm test`, `netvm explain` and the ClassBench tools use.
//!
//! A spec names a base protocol (`tcp { ... }`) and sets fields; every field not set gets a
//! documented default (LANGUAGE.md leaves them to us):
//! Ethernet `02:00:00:00:00:01 -> 02:00:00:00:00:02`; IPv4 `10.0.0.2 -> 10.0.0.3` TTL 64,
//! DSCP 0, not a fragment; IPv6 `fd00::2 -> fd00::3` hop limit 64, flow label 0; TCP
//! `49152 -> 80` flags SYN only; UDP `49152 -> 53`; ICMP echo request (type 8 code 0; ICMPv6
//! 128/0); no payload; no padding. Base `eth` builds Ethernet alone (type 0x88B5, the IEEE
//! local experimental type) followed by the payload; `arp` an ARP request (who-has 10.0.0.3
//! tell 10.0.0.2) followed by the payload; `ip` an IPv4 header with protocol 253 (RFC 3692,
//! testing) and `ip6` an IPv6 header with next header 59 (no next header), then the payload.
//!
//! The stack is IPv4 unless the base is `ip6`/`icmp6` or an `ip6.` field is set (then
//! `tcp { ip6.src = ... }` is Ethernet/IPv6/TCP). A `vlan.` field adds one 802.1Q tag.
//!
//! Errors (a [`BuildError`] naming the field): a value wider than the field's type; a field
//! of a header the stack does not have (`udp { tcp.dport = 1 }`, `eth { ip.src = ... }`); IPv4
//! and IPv6 fields together; `icmp` with `ip6.` fields; `l4.sport`/`l4.dport` on a base other
//! than `tcp`/`udp`, or disagreeing with `tcp.`/`udp.` ports set too; `payload.len`
//! disagreeing with the payload given (or grown by `payload[N]`); `pkt.len` shorter than the
//! frame; a packet too long for the IP length fields.
//!
//! What the builder writes as given, and what it derives:
//! - `l4.sport`/`l4.dport` set the TCP or UDP port. `tcp.flags` sets every flag bit; then each
//!   `tcp.flags.X = true/false` sets or clears one bit. `ip.frag = true` sets More-Fragments
//!   with offset 0, so L4 stays present.
//! - Overrides: `eth.type`, `ip.proto` and `ip6.nh` replace the number the builder would
//!   write, but the headers below are still built per the base (`tcp { ip.proto = 17 }` is a
//!   TCP header that the decoder then reads as UDP). `ip.len` replaces the IPv4 total length
//!   (which then trims or not per the decoder's rule). Checksums are computed for the headers
//!   built, with the protocol number of the base.
//! - `pkt.len = N` pads the frame with zero bytes to N. With base `eth` or `arp` the padding
//!   is payload to the decoder (no IP length trims it).
//! - `payload.len = N` without a payload gives N zero bytes; `payload[N] = V` sets one byte,
//!   growing the payload with zeros as needed.
//! - ARP is not skipped by the decoder, so the decoded payload of an `arp` packet starts with
//!   the 28-byte ARP header followed by the payload given.
//!
//! So every field a spec sets decodes (with [`crate::Decoded`]) to the value set, except
//! below an override that changes the protocol, and `tcp.flags` when single flags follow it.
//!
//! The builder writes bytes by hand rather than through a packet library because it must
//! also write what no library writes (overridden lengths and protocol numbers); etherparse
//! checks its output (checksums included) in the tests.

use std::fmt;

use crate::field::{Field, FieldHeader, Proto};

/// The packet kind a test case starts from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BaseProto {
    #[default]
    Eth,
    Arp,
    Ip,
    Ip6,
    Tcp,
    Udp,
    Icmp,
    Icmp6,
}

impl BaseProto {
    pub const ALL: [BaseProto; 8] = [
        BaseProto::Eth,
        BaseProto::Arp,
        BaseProto::Ip,
        BaseProto::Ip6,
        BaseProto::Tcp,
        BaseProto::Udp,
        BaseProto::Icmp,
        BaseProto::Icmp6,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BaseProto::Eth => "eth",
            BaseProto::Arp => "arp",
            BaseProto::Ip => "ip",
            BaseProto::Ip6 => "ip6",
            BaseProto::Tcp => "tcp",
            BaseProto::Udp => "udp",
            BaseProto::Icmp => "icmp",
            BaseProto::Icmp6 => "icmp6",
        }
    }

    pub fn from_name(name: &str) -> Option<BaseProto> {
        BaseProto::ALL.into_iter().find(|b| b.name() == name)
    }
}

/// Why a spec cannot be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildError {
    /// The field the problem is about, when there is one.
    pub field: Option<Field>,
    pub message: String,
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for BuildError {}

/// A test packet: a base protocol, field values, payload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PacketSpec {
    pub base: BaseProto,
    /// Field assignments in order; a later one wins.
    pub fields: Vec<(Field, u128)>,
    pub payload: Option<Vec<u8>>,
    /// `payload[N] = V`, applied after `payload` (the payload grows with zeros as needed).
    pub payload_bytes: Vec<(u16, u8)>,
}

const IPV4_DEFAULT_PROTO: u8 = 253; // RFC 3692: for experimentation and testing
const IPV6_NO_NEXT_HEADER: u8 = 59;
const ETH_DEFAULT_TYPE: u16 = 0x88b5; // IEEE 802 local experimental ethertype

impl PacketSpec {
    pub fn new(base: BaseProto) -> PacketSpec {
        PacketSpec {
            base,
            fields: Vec::new(),
            payload: None,
            payload_bytes: Vec::new(),
        }
    }

    pub fn set(&mut self, field: Field, value: u128) -> &mut Self {
        self.fields.push((field, value));
        self
    }

    fn get(&self, field: Field) -> Option<u128> {
        self.fields
            .iter()
            .rev()
            .find(|(f, _)| *f == field)
            .map(|(_, v)| *v)
    }

    fn is_ipv6(&self) -> bool {
        matches!(self.base, BaseProto::Ip6 | BaseProto::Icmp6)
            || self
                .fields
                .iter()
                .any(|(f, _)| f.header() == FieldHeader::Proto(Proto::Ip6))
    }

    /// The first `ip6.` field set, which makes the stack IPv6.
    fn first_ip6_field(&self) -> Option<Field> {
        self.fields
            .iter()
            .map(|&(f, _)| f)
            .find(|f| f.header() == FieldHeader::Proto(Proto::Ip6))
    }

    /// Checks that every value fits its field and every field set belongs to a header of this
    /// packet's stack.
    fn check_fields(&self) -> Result<(), BuildError> {
        let v6 = self.is_ipv6();
        let has_ip = !matches!(self.base, BaseProto::Eth | BaseProto::Arp);
        if self.base == BaseProto::Icmp {
            if let Some(f) = self.first_ip6_field() {
                return Err(err(
                    f,
                    format!(
                        "`{}` cannot be set: an `icmp` packet is ICMPv4 over IPv4; use `icmp6`",
                        f.name()
                    ),
                ));
            }
        }
        for &(field, value) in &self.fields {
            if value > field.ty().max_value() {
                return Err(err(
                    field,
                    format!(
                        "{value} does not fit `{}` ({})",
                        field.name(),
                        field.ty().describe()
                    ),
                ));
            }
            let ok = match field.header() {
                FieldHeader::Frame | FieldHeader::Payload => true,
                FieldHeader::Proto(Proto::Eth | Proto::Vlan) => true,
                FieldHeader::Proto(Proto::Arp) => self.base == BaseProto::Arp,
                FieldHeader::Proto(Proto::Ip) => has_ip && !v6,
                FieldHeader::Proto(Proto::Ip6) => has_ip,
                FieldHeader::Proto(Proto::Tcp) => self.base == BaseProto::Tcp,
                FieldHeader::Proto(Proto::Udp) => self.base == BaseProto::Udp,
                FieldHeader::Proto(Proto::Icmp) => self.base == BaseProto::Icmp,
                FieldHeader::Proto(Proto::Icmp6) => self.base == BaseProto::Icmp6,
                FieldHeader::TcpOrUdp => matches!(self.base, BaseProto::Tcp | BaseProto::Udp),
            };
            if !ok {
                let why = match (field.header(), self.first_ip6_field()) {
                    (FieldHeader::Proto(Proto::Ip), Some(v6_field)) if has_ip => format!(
                        "`{}` makes this packet IPv6, and IPv4 and IPv6 fields contradict",
                        v6_field.name()
                    ),
                    (FieldHeader::Proto(Proto::Ip), None) if has_ip => {
                        format!("an `{}` packet is IPv6", self.base.name())
                    }
                    (FieldHeader::TcpOrUdp, _) => {
                        format!("a `{}` packet has no TCP or UDP header", self.base.name())
                    }
                    _ => format!("a `{}` packet has no such header", self.base.name()),
                };
                return Err(err(
                    field,
                    format!("`{}` cannot be set: {why}", field.name()),
                ));
            }
        }
        for (alias, tcp, udp) in [
            (Field::L4Sport, Field::TcpSport, Field::UdpSport),
            (Field::L4Dport, Field::TcpDport, Field::UdpDport),
        ] {
            let Some(a) = self.get(alias) else { continue };
            for port in [tcp, udp] {
                if let Some(p) = self.get(port).filter(|&p| p != a) {
                    return Err(err(
                        alias,
                        format!(
                            "`{} = {a}` contradicts `{} = {p}` (the same header field)",
                            alias.name(),
                            port.name()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The payload: `payload`, else `payload.len` zero bytes, then `payload[N]` bytes; its
    /// final length must be `payload.len` when that is set.
    fn payload_bytes_built(&self) -> Result<Vec<u8>, BuildError> {
        let stated = self.get(Field::PayloadLen);
        let mut payload = match (&self.payload, stated) {
            (Some(p), _) => p.clone(),
            (None, Some(len)) => vec![0; len as usize],
            (None, None) => Vec::new(),
        };
        let given = payload.len();
        for &(index, byte) in &self.payload_bytes {
            let i = usize::from(index);
            if payload.len() <= i {
                payload.resize(i + 1, 0);
            }
            payload[i] = byte;
        }
        match stated {
            Some(len) if payload.len() as u128 != len => {
                let why = if payload.len() == given {
                    format!("the payload given has {given} bytes")
                } else {
                    format!(
                        "`payload[{}]` makes the payload {} bytes long",
                        payload.len() - 1,
                        payload.len()
                    )
                };
                Err(err(
                    Field::PayloadLen,
                    format!("`payload.len = {len}` but {why}"),
                ))
            }
            _ => Ok(payload),
        }
    }

    /// The frame's bytes.
    pub fn build(&self) -> Result<Vec<u8>, BuildError> {
        self.check_fields()?;
        let payload = self.payload_bytes_built()?;
        let v6 = self.is_ipv6();
        let get = |f: Field, default: u128| self.get(f).unwrap_or(default);
        let mut frame = Vec::with_capacity(128);
        frame.extend_from_slice(&mac(get(Field::EthDst, 0x02_00_00_00_00_02)));
        frame.extend_from_slice(&mac(get(Field::EthSrc, 0x02_00_00_00_00_01)));
        if self.get(Field::VlanId).is_some() || self.get(Field::VlanPcp).is_some() {
            let tci = (get(Field::VlanPcp, 0) as u16) << 13 | get(Field::VlanId, 0) as u16;
            frame.extend_from_slice(&0x8100u16.to_be_bytes());
            frame.extend_from_slice(&tci.to_be_bytes());
        }
        let natural_type: u16 = match self.base {
            BaseProto::Eth => ETH_DEFAULT_TYPE,
            BaseProto::Arp => 0x0806,
            _ if v6 => 0x86dd,
            _ => 0x0800,
        };
        frame.extend_from_slice(
            &(get(Field::EthType, u128::from(natural_type)) as u16).to_be_bytes(),
        );
        let l3 = frame.len();
        match self.base {
            BaseProto::Eth => frame.extend_from_slice(&payload),
            BaseProto::Arp => {
                frame.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
                frame.extend_from_slice(&mac(get(Field::EthSrc, 0x02_00_00_00_00_01)));
                frame.extend_from_slice(&[10, 0, 0, 2]);
                frame.extend_from_slice(&[0; 6]);
                frame.extend_from_slice(&[10, 0, 0, 3]);
                frame.extend_from_slice(&payload);
            }
            _ => {
                let (l4, proto) = self.l4_header();
                let upper_len = l4.len() + payload.len();
                let ip_header_len = if v6 { 0 } else { 20 };
                if upper_len + ip_header_len > usize::from(u16::MAX) {
                    return Err(BuildError {
                        field: None,
                        message: format!(
                            "the payload ({} bytes) does not fit the IP length field",
                            payload.len()
                        ),
                    });
                }
                if v6 {
                    let flow = get(Field::Ip6Flow, 0) as u32;
                    frame.extend_from_slice(&(6u32 << 28 | flow).to_be_bytes());
                    frame.extend_from_slice(&(upper_len as u16).to_be_bytes());
                    frame.push(get(Field::Ip6Nh, u128::from(proto)) as u8);
                    frame.push(get(Field::Ip6Hlim, 64) as u8);
                    frame.extend_from_slice(&get(Field::Ip6Src, 0xfd00 << 112 | 2).to_be_bytes());
                    frame.extend_from_slice(&get(Field::Ip6Dst, 0xfd00 << 112 | 3).to_be_bytes());
                } else {
                    let total = get(Field::IpLen, (20 + upper_len) as u128) as u16;
                    let flags: u16 = if get(Field::IpFrag, 0) == 1 {
                        0x2000
                    } else {
                        0
                    };
                    frame.extend_from_slice(&[0x45, (get(Field::IpDscp, 0) as u8) << 2]);
                    frame.extend_from_slice(&total.to_be_bytes());
                    frame.extend_from_slice(&[0, 1]);
                    frame.extend_from_slice(&flags.to_be_bytes());
                    frame.push(get(Field::IpTtl, 64) as u8);
                    frame.push(get(Field::IpProto, u128::from(proto)) as u8);
                    frame.extend_from_slice(&[0, 0]);
                    frame.extend_from_slice(&(get(Field::IpSrc, 0x0a00_0002) as u32).to_be_bytes());
                    frame.extend_from_slice(&(get(Field::IpDst, 0x0a00_0003) as u32).to_be_bytes());
                    let sum = checksum(&frame[l3..l3 + 20], 0);
                    frame[l3 + 10..l3 + 12].copy_from_slice(&sum.to_be_bytes());
                }
                let l4_at = frame.len();
                frame.extend_from_slice(&l4);
                frame.extend_from_slice(&payload);
                self.fill_l4_checksum(&mut frame, l3, l4_at, v6, proto);
            }
        }
        if let Some(len) = self.get(Field::PktLen) {
            let len = len as usize;
            if len < frame.len() {
                return Err(err(
                    Field::PktLen,
                    format!(
                        "`pkt.len = {len}` is shorter than the {} bytes this packet needs",
                        frame.len()
                    ),
                ));
            }
            frame.resize(len, 0);
        }
        Ok(frame)
    }

    /// The L4 header (checksum zero) and the IP protocol number of the base.
    fn l4_header(&self) -> (Vec<u8>, u8) {
        let get = |f: Field, default: u128| self.get(f).unwrap_or(default);
        match self.base {
            BaseProto::Tcp => {
                let mut flags = get(Field::TcpFlags, 0x02) as u8;
                for (field, bit) in Field::TCP_FLAGS
                    .iter()
                    .filter_map(|&f| Some((f, f.tcp_flag_mask()?)))
                {
                    match self.get(field) {
                        Some(1) => flags |= bit,
                        Some(_) => flags &= !bit,
                        None => {}
                    }
                }
                let sport = self
                    .get(Field::TcpSport)
                    .or(self.get(Field::L4Sport))
                    .unwrap_or(49152) as u16;
                let dport = self
                    .get(Field::TcpDport)
                    .or(self.get(Field::L4Dport))
                    .unwrap_or(80) as u16;
                let mut h = Vec::with_capacity(20);
                h.extend_from_slice(&sport.to_be_bytes());
                h.extend_from_slice(&dport.to_be_bytes());
                h.extend_from_slice(&1u32.to_be_bytes());
                h.extend_from_slice(&0u32.to_be_bytes());
                h.extend_from_slice(&[0x50, flags]);
                h.extend_from_slice(&65535u16.to_be_bytes());
                h.extend_from_slice(&[0, 0, 0, 0]);
                (h, 6)
            }
            BaseProto::Udp => {
                let sport = self
                    .get(Field::UdpSport)
                    .or(self.get(Field::L4Sport))
                    .unwrap_or(49152) as u16;
                let dport = self
                    .get(Field::UdpDport)
                    .or(self.get(Field::L4Dport))
                    .unwrap_or(53) as u16;
                let mut h = Vec::with_capacity(8);
                h.extend_from_slice(&sport.to_be_bytes());
                h.extend_from_slice(&dport.to_be_bytes());
                h.extend_from_slice(&[0, 0, 0, 0]);
                (h, 17)
            }
            BaseProto::Icmp => {
                let h = vec![
                    get(Field::IcmpType, 8) as u8,
                    get(Field::IcmpCode, 0) as u8,
                    0,
                    0,
                    0,
                    1,
                    0,
                    1,
                ];
                (h, 1)
            }
            BaseProto::Icmp6 => {
                let h = vec![
                    get(Field::Icmp6Type, 128) as u8,
                    get(Field::Icmp6Code, 0) as u8,
                    0,
                    0,
                    0,
                    1,
                    0,
                    1,
                ];
                (h, 58)
            }
            BaseProto::Ip6 => (Vec::new(), IPV6_NO_NEXT_HEADER),
            _ => (Vec::new(), IPV4_DEFAULT_PROTO),
        }
    }

    fn fill_l4_checksum(&self, frame: &mut [u8], l3: usize, l4: usize, v6: bool, proto: u8) {
        let offset = match proto {
            6 => 16,
            17 => 6,
            1 | 58 => 2,
            _ => return,
        };
        let len = frame.len() - l4;
        if proto == 17 {
            frame[l4 + 4..l4 + 6].copy_from_slice(&(len as u16).to_be_bytes());
        }
        let pseudo = if proto == 1 {
            0
        } else if v6 {
            let mut sum = sum16(&frame[l3 + 8..l3 + 40]);
            sum += len as u32 + u32::from(proto);
            sum
        } else {
            let mut sum = sum16(&frame[l3 + 12..l3 + 20]);
            sum += len as u32 + u32::from(proto);
            sum
        };
        let mut value = checksum(&frame[l4..], pseudo);
        if proto == 17 && value == 0 {
            value = 0xffff;
        }
        frame[l4 + offset..l4 + offset + 2].copy_from_slice(&value.to_be_bytes());
    }
}

fn err(field: Field, message: String) -> BuildError {
    BuildError {
        field: Some(field),
        message,
    }
}

fn mac(v: u128) -> [u8; 6] {
    let b = (v as u64).to_be_bytes();
    [b[2], b[3], b[4], b[5], b[6], b[7]]
}

fn sum16(bytes: &[u8]) -> u32 {
    let mut sum = 0u32;
    for chunk in bytes.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    sum
}

/// The Internet checksum (RFC 1071) of `bytes` plus an initial sum.
fn checksum(bytes: &[u8], initial: u32) -> u16 {
    let mut sum = u64::from(initial) + u64::from(sum16(bytes));
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Decoded;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    use proptest::prelude::*;

    fn build(base: BaseProto, fields: &[(Field, u128)]) -> Result<Vec<u8>, BuildError> {
        let mut spec = PacketSpec::new(base);
        for &(f, v) in fields {
            spec.set(f, v);
        }
        spec.build()
    }

    fn built(base: BaseProto, fields: &[(Field, u128)]) -> Vec<u8> {
        match build(base, fields) {
            Ok(frame) => frame,
            Err(e) => panic!("{} {fields:?} does not build: {e}", base.name()),
        }
    }

    fn present(frame: &[u8]) -> Vec<Proto> {
        let d = Decoded::new(frame);
        Proto::ALL.into_iter().filter(|&p| d.has(p)).collect()
    }

    const FD00_2: u128 = 0xfd00 << 112 | 2;
    const FD00_3: u128 = 0xfd00 << 112 | 3;

    #[test]
    fn base_names_round_trip() {
        for b in BaseProto::ALL {
            assert_eq!(BaseProto::from_name(b.name()), Some(b));
        }
        assert_eq!(BaseProto::from_name("vlan"), None);
    }

    #[test]
    fn every_base_builds_its_stack_with_the_documented_defaults() {
        use Proto::*;
        let cases: [(BaseProto, &[Proto]); 8] = [
            (BaseProto::Eth, &[Eth]),
            (BaseProto::Arp, &[Eth, Arp]),
            (BaseProto::Ip, &[Eth, Ip]),
            (BaseProto::Ip6, &[Eth, Ip6]),
            (BaseProto::Tcp, &[Eth, Ip, Tcp]),
            (BaseProto::Udp, &[Eth, Ip, Udp]),
            (BaseProto::Icmp, &[Eth, Ip, Icmp]),
            (BaseProto::Icmp6, &[Eth, Ip6, Icmp6]),
        ];
        for (base, stack) in cases {
            let frame = built(base, &[]);
            assert_eq!(present(&frame), stack, "{}", base.name());
            let d = Decoded::new(&frame);
            assert_eq!(d.field(Field::EthSrc), Some(0x02_00_00_00_00_01));
            assert_eq!(d.field(Field::EthDst), Some(0x02_00_00_00_00_02));
            assert_eq!(
                d.payload().map(<[u8]>::len),
                Some(if base == BaseProto::Arp { 28 } else { 0 })
            );
        }
        let expect = |base, pairs: &[(Field, u128)]| {
            let frame = built(base, &[]);
            let d = Decoded::new(&frame);
            for &(f, v) in pairs {
                assert_eq!(d.field(f), Some(v), "{} {}", base.name(), f.name());
            }
        };
        expect(
            BaseProto::Eth,
            &[(Field::EthType, 0x88b5), (Field::PktLen, 14)],
        );
        expect(
            BaseProto::Tcp,
            &[
                (Field::IpSrc, 0x0a00_0002),
                (Field::IpDst, 0x0a00_0003),
                (Field::IpTtl, 64),
                (Field::IpProto, 6),
                (Field::IpFrag, 0),
                (Field::IpDscp, 0),
                (Field::IpLen, 40),
                (Field::TcpSport, 49152),
                (Field::TcpDport, 80),
                (Field::TcpFlags, 0x02),
                (Field::PktLen, 54),
            ],
        );
        expect(
            BaseProto::Udp,
            &[(Field::L4Sport, 49152), (Field::L4Dport, 53)],
        );
        expect(
            BaseProto::Icmp,
            &[(Field::IcmpType, 8), (Field::IcmpCode, 0)],
        );
        expect(
            BaseProto::Icmp6,
            &[
                (Field::Icmp6Type, 128),
                (Field::Icmp6Code, 0),
                (Field::Ip6Src, FD00_2),
                (Field::Ip6Dst, FD00_3),
                (Field::Ip6Hlim, 64),
                (Field::Ip6Nh, 58),
                (Field::Ip6Flow, 0),
            ],
        );
        expect(BaseProto::Ip, &[(Field::IpProto, 253)]);
        expect(BaseProto::Ip6, &[(Field::Ip6Nh, 59)]);
    }

    #[test]
    fn an_ip6_field_makes_the_stack_ipv6() {
        let frame = built(BaseProto::Tcp, &[(Field::Ip6Src, 1), (Field::TcpDport, 22)]);
        assert_eq!(present(&frame), [Proto::Eth, Proto::Ip6, Proto::Tcp]);
        let d = Decoded::new(&frame);
        assert_eq!(d.field(Field::Ip6Src), Some(1));
        assert_eq!(d.field(Field::Ip6Dst), Some(FD00_3));
        assert_eq!(d.field(Field::TcpDport), Some(22));
        let frame = built(BaseProto::Ip, &[(Field::Ip6Hlim, 3)]);
        assert_eq!(present(&frame), [Proto::Eth, Proto::Ip6]);
    }

    #[test]
    fn a_vlan_field_adds_one_tag() {
        let frame = built(BaseProto::Udp, &[(Field::VlanId, 42)]);
        assert_eq!(
            present(&frame),
            [Proto::Eth, Proto::Vlan, Proto::Ip, Proto::Udp]
        );
        assert_eq!(&frame[12..16], &[0x81, 0x00, 0x00, 42]);
        let d = Decoded::new(&frame);
        assert_eq!(d.field(Field::VlanPcp), Some(0));
        assert_eq!(d.field(Field::EthType), Some(0x0800));
        let frame = built(
            BaseProto::Eth,
            &[(Field::VlanPcp, 6), (Field::EthType, 0x1234)],
        );
        let d = Decoded::new(&frame);
        assert_eq!(d.field(Field::VlanId), Some(0));
        assert_eq!(d.field(Field::VlanPcp), Some(6));
        assert_eq!(d.field(Field::EthType), Some(0x1234));
    }

    #[test]
    fn fields_outside_the_stack_are_errors_naming_the_field() {
        /// A base, the fields set, the field the error names, words the message has.
        type Case<'a> = (BaseProto, &'a [(Field, u128)], Field, &'a str);
        let cases: &[Case] = &[
            (
                BaseProto::Udp,
                &[(Field::TcpDport, 1)],
                Field::TcpDport,
                "no such header",
            ),
            (
                BaseProto::Eth,
                &[(Field::IpSrc, 1)],
                Field::IpSrc,
                "no such header",
            ),
            (
                BaseProto::Arp,
                &[(Field::Ip6Src, 1)],
                Field::Ip6Src,
                "no such header",
            ),
            (
                BaseProto::Tcp,
                &[(Field::IcmpType, 1)],
                Field::IcmpType,
                "no such header",
            ),
            (
                BaseProto::Icmp,
                &[(Field::L4Dport, 1)],
                Field::L4Dport,
                "no TCP or UDP",
            ),
            (
                BaseProto::Icmp6,
                &[(Field::IpTtl, 1)],
                Field::IpTtl,
                "is IPv6",
            ),
            (
                BaseProto::Icmp,
                &[(Field::Ip6Src, 1)],
                Field::Ip6Src,
                "use `icmp6`",
            ),
            (
                BaseProto::Ip,
                &[(Field::IpSrc, 1), (Field::Ip6Src, 1)],
                Field::IpSrc,
                "`ip6.src` makes this packet IPv6",
            ),
            (
                BaseProto::Ip,
                &[(Field::IpDscp, 64)],
                Field::IpDscp,
                "does not fit",
            ),
            (
                BaseProto::Udp,
                &[(Field::VlanId, 4096)],
                Field::VlanId,
                "does not fit",
            ),
            (
                BaseProto::Tcp,
                &[(Field::TcpDport, 22), (Field::L4Dport, 23)],
                Field::L4Dport,
                "contradicts",
            ),
            (
                BaseProto::Tcp,
                &[(Field::PktLen, 53)],
                Field::PktLen,
                "shorter",
            ),
        ];
        for (base, fields, field, words) in cases {
            let e = build(*base, fields).expect_err("contradiction");
            assert_eq!(e.field, Some(*field), "{e}");
            assert!(e.to_string().contains(field.name()), "{e}");
            assert!(e.to_string().contains(words), "{e}");
        }
        // The same value through both spellings is fine.
        let frame = built(BaseProto::Udp, &[(Field::UdpDport, 5), (Field::L4Dport, 5)]);
        assert_eq!(Decoded::new(&frame).field(Field::UdpDport), Some(5));
    }

    #[test]
    fn l4_ports_set_tcp_or_udp() {
        for base in [BaseProto::Tcp, BaseProto::Udp] {
            let frame = built(base, &[(Field::L4Sport, 7), (Field::L4Dport, 9)]);
            let d = Decoded::new(&frame);
            let (s, dp) = if base == BaseProto::Tcp {
                (Field::TcpSport, Field::TcpDport)
            } else {
                (Field::UdpSport, Field::UdpDport)
            };
            assert_eq!((d.field(s), d.field(dp)), (Some(7), Some(9)));
        }
    }

    #[test]
    fn single_flags_apply_after_tcp_flags() {
        let frame = built(
            BaseProto::Tcp,
            &[
                (Field::TcpFlagAck, 1),
                (Field::TcpFlags, 0x03),
                (Field::TcpFlagFin, 0),
            ],
        );
        assert_eq!(Decoded::new(&frame).field(Field::TcpFlags), Some(0x12));
        let frame = built(BaseProto::Tcp, &[(Field::TcpFlagSyn, 0)]);
        assert_eq!(Decoded::new(&frame).field(Field::TcpFlags), Some(0));
    }

    #[test]
    fn ip_frag_sets_more_fragments_and_keeps_l4() {
        let frame = built(BaseProto::Udp, &[(Field::IpFrag, 1)]);
        assert_eq!(&frame[20..22], &[0x20, 0x00]);
        let d = Decoded::new(&frame);
        assert_eq!(d.field(Field::IpFrag), Some(1));
        assert!(d.has(Proto::Udp));
    }

    #[test]
    fn overrides_replace_numbers_but_not_headers() {
        let frame = built(BaseProto::Tcp, &[(Field::IpProto, 17)]);
        assert_eq!(present(&frame), [Proto::Eth, Proto::Ip, Proto::Udp]);
        let frame = built(BaseProto::Udp, &[(Field::Ip6Nh, 200)]);
        assert_eq!(present(&frame), [Proto::Eth, Proto::Ip6]);
        assert_eq!(Decoded::new(&frame).payload().map(<[u8]>::len), Some(8));
        let frame = built(BaseProto::Tcp, &[(Field::EthType, 0x0801)]);
        assert_eq!(present(&frame), [Proto::Eth]);
        assert_eq!(frame.len(), 54);
        let frame = built(BaseProto::Udp, &[(Field::IpLen, 1000)]);
        let d = Decoded::new(&frame);
        assert_eq!(d.field(Field::IpLen), Some(1000));
        assert!(d.has(Proto::Udp));
    }

    #[test]
    fn lengths_pad_and_fill() {
        let frame = built(BaseProto::Udp, &[(Field::PktLen, 64)]);
        assert_eq!(frame.len(), 64);
        assert!(frame[42..].iter().all(|&b| b == 0));
        let d = Decoded::new(&frame);
        assert_eq!(
            d.payload(),
            Some(&[][..]),
            "the IP length trims the padding"
        );
        let frame = built(BaseProto::Tcp, &[(Field::PayloadLen, 6)]);
        assert_eq!(Decoded::new(&frame).payload(), Some(&[0u8; 6][..]));
        // payload.len agreeing with the payload given is fine; disagreeing is an error.
        let mut spec = PacketSpec::new(BaseProto::Udp);
        spec.payload = Some(b"abc".to_vec());
        spec.set(Field::PayloadLen, 3);
        assert!(spec.build().is_ok());
        spec.set(Field::PayloadLen, 4);
        let e = spec.build().expect_err("contradiction");
        assert_eq!(e.field, Some(Field::PayloadLen));
        // payload[N] beyond payload.len contradicts it.
        let mut spec = PacketSpec::new(BaseProto::Udp);
        spec.set(Field::PayloadLen, 2);
        spec.payload_bytes.push((5, 1));
        assert_eq!(
            spec.build().expect_err("contradiction").field,
            Some(Field::PayloadLen)
        );
    }

    #[test]
    fn payload_bytes_set_and_grow_the_payload() {
        let mut spec = PacketSpec::new(BaseProto::Tcp);
        spec.payload = Some(b"GET /".to_vec());
        spec.payload_bytes = vec![(0, b'P'), (7, 0xff)];
        let frame = spec.build().expect("builds");
        assert_eq!(Decoded::new(&frame).payload(), Some(&b"PET /\0\0\xff"[..]));
    }

    #[test]
    fn an_oversized_payload_is_an_error() {
        let mut spec = PacketSpec::new(BaseProto::Udp);
        spec.payload = Some(vec![0; 65_535 - 28 + 1]);
        assert!(spec.build().is_err());
        spec.payload = Some(vec![0; 65_535 - 28]);
        assert!(spec.build().is_ok());
    }

    /// etherparse agrees on the stack and on every checksum.
    #[test]
    fn etherparse_agrees_and_checksums_are_correct() {
        for base in [
            BaseProto::Tcp,
            BaseProto::Udp,
            BaseProto::Icmp,
            BaseProto::Icmp6,
        ] {
            for v6 in [false, true] {
                if (base == BaseProto::Icmp && v6) || (base == BaseProto::Icmp6 && !v6) {
                    continue;
                }
                let mut spec = PacketSpec::new(base);
                if v6 {
                    spec.set(Field::Ip6Src, 0x2001_0db8u128 << 96 | 7);
                } else {
                    spec.set(Field::IpSrc, 0x0102_0304).set(Field::IpDscp, 10);
                }
                spec.payload = Some(b"odd-length payload".to_vec());
                let frame = spec.build().expect("builds");
                let p = SlicedPacket::from_ethernet(&frame).expect("etherparse parses it");
                let (ip4, ip6) = match &p.net {
                    Some(NetSlice::Ipv4(ip)) => {
                        let h = ip.header().to_header();
                        assert_eq!(h.header_checksum, h.calc_header_checksum(), "IPv4 checksum");
                        (Some(h), None)
                    }
                    Some(NetSlice::Ipv6(ip)) => (None, Some(ip.header().to_header())),
                    other => panic!("{}: no IP: {other:?}", base.name()),
                };
                let ok = match &p.transport {
                    Some(TransportSlice::Tcp(t)) => {
                        let h = t.to_header();
                        let want = match (&ip4, &ip6) {
                            (Some(ip), _) => h.calc_checksum_ipv4(ip, t.payload()),
                            (_, Some(ip)) => h.calc_checksum_ipv6(ip, t.payload()),
                            _ => unreachable!(),
                        };
                        want.ok() == Some(t.checksum())
                    }
                    Some(TransportSlice::Udp(u)) => {
                        let h = u.to_header();
                        let want = match (&ip4, &ip6) {
                            (Some(ip), _) => h.calc_checksum_ipv4(ip, u.payload()),
                            (_, Some(ip)) => h.calc_checksum_ipv6(ip, u.payload()),
                            _ => unreachable!(),
                        };
                        assert_eq!(usize::from(u.length()), 8 + 18);
                        want.ok() == Some(u.checksum())
                    }
                    Some(TransportSlice::Icmpv4(i)) => {
                        let h = i.header();
                        h.icmp_type.calc_checksum(i.payload()) == h.checksum
                    }
                    Some(TransportSlice::Icmpv6(i)) => {
                        let ip = ip6.as_ref().expect("IPv6");
                        let h = i.header();
                        h.icmp_type
                            .calc_checksum(ip.source, ip.destination, i.payload())
                            .ok()
                            == Some(h.checksum)
                    }
                    other => panic!("{}: no L4: {other:?}", base.name()),
                };
                assert!(ok, "{} v6={v6}: L4 checksum", base.name());
            }
        }
    }

    /// Whether a field belongs to the stack of `base` (IPv6 when `v6`).
    fn in_stack(base: BaseProto, v6: bool, field: Field) -> bool {
        let ip = !matches!(base, BaseProto::Eth | BaseProto::Arp);
        match field.header() {
            FieldHeader::Frame | FieldHeader::Payload => true,
            FieldHeader::Proto(Proto::Eth | Proto::Vlan) => true,
            FieldHeader::Proto(Proto::Arp) => false,
            FieldHeader::Proto(Proto::Ip) => ip && !v6,
            FieldHeader::Proto(Proto::Ip6) => ip && v6,
            FieldHeader::Proto(Proto::Tcp) => base == BaseProto::Tcp,
            FieldHeader::Proto(Proto::Udp) => base == BaseProto::Udp,
            FieldHeader::Proto(Proto::Icmp) => base == BaseProto::Icmp,
            FieldHeader::Proto(Proto::Icmp6) => base == BaseProto::Icmp6,
            FieldHeader::TcpOrUdp => matches!(base, BaseProto::Tcp | BaseProto::Udp),
        }
    }

    /// A valid spec: random fields of the stack (overrides included), ports consistent with
    /// their `l4.` spelling, `payload.len` consistent, `pkt.len` at least the frame.
    fn valid_spec() -> impl Strategy<Value = PacketSpec> {
        let base = prop::sample::select(BaseProto::ALL.to_vec());
        let v6 = any::<bool>();
        let fields = prop::collection::vec((0..Field::ALL.len(), any::<u128>()), 0..16);
        let payload = prop::option::of(prop::collection::vec(any::<u8>(), 0..40));
        let bytes = prop::collection::vec((0u16..60, any::<u8>()), 0..3);
        let extra = (any::<bool>(), 0usize..40, any::<bool>());
        (base, v6, fields, payload, bytes, extra).prop_map(
            |(base, v6, fields, payload, bytes, (pad, pad_by, state_len))| {
                let v6 = match base {
                    BaseProto::Ip6 | BaseProto::Icmp6 => true,
                    BaseProto::Tcp | BaseProto::Udp | BaseProto::Ip => v6,
                    _ => false,
                };
                let mut spec = PacketSpec::new(base);
                for (i, raw) in fields {
                    let field = Field::ALL[i];
                    if !in_stack(base, v6, field)
                        || matches!(field, Field::PktLen | Field::PayloadLen)
                    {
                        continue;
                    }
                    let value = raw & field.ty().max_value();
                    // An Ethernet type that is a VLAN tag's TPID announces a tag the frame
                    // does not have: the decoder rightly finds no `eth.type` then.
                    if field == Field::EthType && matches!(value, 0x8100 | 0x88a8) {
                        continue;
                    }
                    spec.set(field, value);
                }
                // Spell each port one way only (the last assignment decides which).
                for (alias, tcp, udp) in [
                    (Field::L4Sport, Field::TcpSport, Field::UdpSport),
                    (Field::L4Dport, Field::TcpDport, Field::UdpDport),
                ] {
                    let last = spec
                        .fields
                        .iter()
                        .rev()
                        .find(|(f, _)| [alias, tcp, udp].contains(f));
                    if let Some(&(keep, _)) = last {
                        spec.fields
                            .retain(|(f, _)| *f == keep || ![alias, tcp, udp].contains(f));
                    }
                }
                spec.payload = payload;
                spec.payload_bytes = bytes;
                if state_len {
                    let len = spec.payload_bytes_built().map_or(0, |p| p.len());
                    spec.set(Field::PayloadLen, len as u128);
                }
                if pad {
                    let len = spec.build().map_or(0, |f| f.len());
                    spec.set(Field::PktLen, (len + pad_by) as u128);
                }
                spec
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Every field set decodes to the value set, but for the documented exceptions:
        /// protocol overrides hide what they override, single flags change `tcp.flags`, and
        /// lengths shift with overrides and the ARP header.
        #[test]
        fn built_frames_decode_to_every_field_set(spec in valid_spec()) {
            let frame = spec.build().map_err(|e| TestCaseError::fail(e.to_string()))?;
            let d = Decoded::new(&frame);
            let v6 = spec.is_ipv6();
            let natural_type = match spec.base {
                BaseProto::Eth => ETH_DEFAULT_TYPE,
                BaseProto::Arp => 0x0806,
                _ if v6 => 0x86dd,
                _ => 0x0800,
            };
            let natural_proto = spec.l4_header().1;
            let eth_overridden = spec.get(Field::EthType).is_some_and(|t| t != u128::from(natural_type));
            let proto_field = if v6 { Field::Ip6Nh } else { Field::IpProto };
            let proto_overridden = spec.get(proto_field).is_some_and(|p| p != u128::from(natural_proto));
            let flag_bits_set = spec.fields.iter().any(|(f, _)| f.name().starts_with("tcp.flags."));
            let padded_raw = matches!(spec.base, BaseProto::Eth | BaseProto::Arp)
                && spec.get(Field::PktLen).is_some();
            for &(field, value) in &spec.fields {
                if spec.get(field) != Some(value) {
                    continue; // a later assignment wins
                }
                let hidden = match field.header() {
                    FieldHeader::Frame => false,
                    FieldHeader::Proto(Proto::Eth | Proto::Vlan) => false,
                    FieldHeader::Proto(Proto::Ip | Proto::Ip6) => eth_overridden,
                    FieldHeader::Payload => {
                        eth_overridden || proto_overridden || padded_raw
                            || spec.get(Field::IpLen).is_some() || spec.base == BaseProto::Arp
                    }
                    _ => eth_overridden || proto_overridden,
                };
                if hidden || (field == Field::TcpFlags && flag_bits_set) {
                    continue;
                }
                prop_assert_eq!(d.field(field), Some(value), "{} in {:?}", field.name(), frame);
            }
            if !(eth_overridden || proto_overridden || padded_raw || spec.get(Field::IpLen).is_some()) {
                let want = spec.payload_bytes_built().map_err(|e| TestCaseError::fail(e.to_string()))?;
                let skip = if spec.base == BaseProto::Arp { 28 } else { 0 };
                prop_assert_eq!(d.payload().and_then(|p| p.get(skip..)), Some(&want[..]));
                let stack_ok = present(&frame).len() == match spec.base {
                    BaseProto::Eth => 1,
                    BaseProto::Arp | BaseProto::Ip | BaseProto::Ip6 => 2,
                    _ => 3,
                } + usize::from(d.has(Proto::Vlan));
                prop_assert!(stack_ok, "{:?}", present(&frame));
            }
        }

        /// A field outside the stack is always refused, naming it.
        #[test]
        fn fields_outside_the_stack_are_refused(
            base in prop::sample::select(BaseProto::ALL.to_vec()),
            i in 0..Field::ALL.len(),
        ) {
            let field = Field::ALL[i];
            let v6 = matches!(base, BaseProto::Ip6 | BaseProto::Icmp6)
                || field.header() == FieldHeader::Proto(Proto::Ip6);
            let result = build(base, &[(field, 0)]);
            let fits = in_stack(base, v6, field) && !(base == BaseProto::Icmp && v6)
                && field != Field::PktLen;
            match result {
                Ok(_) => prop_assert!(fits, "{} accepted on {}", field.name(), base.name()),
                Err(e) => {
                    prop_assert!(!fits || field == Field::PktLen, "{}", e);
                    prop_assert_eq!(e.field, Some(field));
                }
            }
        }
    }
}
