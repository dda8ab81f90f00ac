//! [`PacketSpec`]: the owned description of a test packet, and the frame builder that
//! `netvm test`, `netvm explain` and the ClassBench tools use.
//!
//! A spec names a base protocol (`tcp { ... }`) and sets fields; every field not set gets a
//! documented default (LANGUAGE.md leaves them to us):
//! Ethernet `02:00:00:00:00:01 -> 02:00:00:00:00:02`; IPv4 `10.0.0.2 -> 10.0.0.3` TTL 64;
//! IPv6 `fd00::2 -> fd00::3` hop limit 64; TCP `49152 -> 80` flags SYN only; UDP
//! `49152 -> 53`; ICMP echo request (8/0; ICMPv6 128/0); no payload; no padding.
//! The stack is IPv4 unless the base is `ip6`/`icmp6` or an `ip6.` field is set. A `vlan.`
//! field adds one 802.1Q tag. Setting a field of a header the stack does not have is an error
//! naming the field. `ip.proto`, `ip6.nh`, `eth.type`, `ip.len` override what the builder
//! would write (the headers below are still built per the base). `pkt.len = N` pads the frame
//! with zeros to N bytes; `payload.len = N` without a payload gives N zero bytes.
//! `ip.frag = true` sets More-Fragments (offset 0, so L4 stays present). Checksums are correct.
//!
//! The builder writes bytes by hand rather than through a packet library because it must
//! also write what no library writes (overridden lengths and protocol numbers); the decoder
//! and etherparse check its output in the tests.

use std::fmt;

use crate::field::{Field, FieldHeader, Proto};

/// The packet kind a test case starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BaseProto {
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
#[derive(Clone, Debug, PartialEq, Eq)]
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

    /// Checks that every field set belongs to a header of this packet's stack.
    fn check_fields(&self) -> Result<(), BuildError> {
        let v6 = self.is_ipv6();
        let has_ip = !matches!(self.base, BaseProto::Eth | BaseProto::Arp);
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
                FieldHeader::Proto(Proto::Ip6) => has_ip && v6,
                FieldHeader::Proto(Proto::Tcp) => self.base == BaseProto::Tcp,
                FieldHeader::Proto(Proto::Udp) => self.base == BaseProto::Udp,
                FieldHeader::Proto(Proto::Icmp) => self.base == BaseProto::Icmp,
                FieldHeader::Proto(Proto::Icmp6) => self.base == BaseProto::Icmp6,
                FieldHeader::TcpOrUdp => matches!(self.base, BaseProto::Tcp | BaseProto::Udp),
            };
            if !ok {
                let what = match field.header() {
                    FieldHeader::Proto(Proto::Ip) if v6 => {
                        "this packet is IPv6 (an `ip6.` field is set or the kind is ip6/icmp6)"
                            .to_string()
                    }
                    FieldHeader::Proto(Proto::Ip6) if has_ip => {
                        format!("a `{}` packet is IPv4 here", self.base.name())
                    }
                    _ => format!("a `{}` packet has no such header", self.base.name()),
                };
                return Err(err(
                    field,
                    format!("`{}` cannot be set: {what}", field.name()),
                ));
            }
        }
        if self.base == BaseProto::Icmp && v6 {
            return Err(BuildError {
                field: None,
                message: "an `icmp` packet is ICMPv4 and cannot carry `ip6.` fields; use `icmp6`"
                    .into(),
            });
        }
        Ok(())
    }

    fn payload_bytes_built(&self) -> Result<Vec<u8>, BuildError> {
        let mut payload = self.payload.clone().unwrap_or_default();
        if let Some(len) = self.get(Field::PayloadLen) {
            let len = len as usize;
            match &self.payload {
                Some(p) if p.len() != len => {
                    return Err(err(
                        Field::PayloadLen,
                        format!(
                            "`payload.len = {len}` but the payload given has {} bytes",
                            p.len()
                        ),
                    ))
                }
                _ => payload.resize(len, 0),
            }
        }
        for &(index, byte) in &self.payload_bytes {
            let i = usize::from(index);
            if payload.len() <= i {
                payload.resize(i + 1, 0);
            }
            payload[i] = byte;
        }
        Ok(payload)
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
                let (l4, proto) = self.l4_header(&payload);
                let upper_len = l4.len() + payload.len();
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
    fn l4_header(&self, _payload: &[u8]) -> (Vec<u8>, u8) {
        let get = |f: Field, default: u128| self.get(f).unwrap_or(default);
        match self.base {
            BaseProto::Tcp => {
                let mut flags = get(Field::TcpFlags, 0x02) as u8;
                for (field, bit) in [
                    (Field::TcpFlagFin, 0x01),
                    (Field::TcpFlagSyn, 0x02),
                    (Field::TcpFlagRst, 0x04),
                    (Field::TcpFlagPsh, 0x08),
                    (Field::TcpFlagAck, 0x10),
                    (Field::TcpFlagUrg, 0x20),
                ] {
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
