//! [`Decoded`]: a zero-copy view over a raw Ethernet frame that applies the language's
//! absent-header rules, and [`format_value`], which writes a field value as the language does.
//!
//! `Decoded::new` walks the headers once, records where each layer starts and which headers
//! are present, and reads field values from the frame on demand. It never reads out of
//! bounds and never panics, for any input (every read goes through `slice::get`); it contains
//! no `unsafe`. It does not validate checksums, does not reassemble fragments and does not
//! look inside tunnels: what it reports is exactly the rules below.
//!
//! The rules (LANGUAGE.md "Absent headers", made exact here; the interpreter, the JIT and
//! `netvm explain` all follow them through this module):
//! - `eth` is present iff the frame has at least 14 bytes (`eth.src`, `eth.dst`).
//! - Up to two VLAN tags (TPID 0x8100 or 0x88a8) are skipped. A tag counts as complete when
//!   the Ethernet header grown by it fits (14 + 4 bytes per tag, i.e. the tag and the type
//!   field after it). `vlan` is present iff at least one complete tag is; `vlan.id` and
//!   `vlan.pcp` come from the outer tag. `eth.type` is the type after the complete tags; when
//!   a tag is cut off, `eth.type` is absent (while `eth.src`/`eth.dst` stay present) and no
//!   L3 header is decoded. A third tag is not skipped: `eth.type` is then its TPID.
//! - `arp` is present iff `eth.type` is 0x0806 and 28 bytes of ARP fit.
//! - `ip` (IPv4) is present iff `eth.type` is 0x0800, the version is 4, IHL ≥ 5 and the
//!   IHL×4 header bytes (options included) fit. `ip.dscp` is TOS >> 2, `ip.len` the total
//!   length field as written, `ip.frag` is true when More-Fragments is set or the fragment
//!   offset is not 0.
//! - `ip6` is present iff `eth.type` is 0x86DD, the version is 6 and 40 bytes fit. `ip6.nh`
//!   is the fixed header's next header; `ip6.flow` the 20-bit flow label. Extension headers
//!   hop-by-hop (0), routing (43), destination options (60) and fragment (44) are walked, at
//!   most 8, each of which must fit (`(hdr_ext_len + 1) × 8` bytes; the fragment header 8),
//!   to find the upper protocol. A truncated extension header, a ninth one, or a fragment
//!   header with a non-zero offset leaves no upper protocol (so no L4).
//! - L4 is decoded only in a first fragment (IPv4 fragment offset 0; More-Fragments alone is
//!   fine). `tcp`: upper protocol 6, data offset ≥ 5 and the data offset × 4 header bytes fit.
//!   `udp`: 17 and 8 bytes fit. `icmp`: IPv4 protocol 1 and 8 bytes fit (`icmp.*` is ICMPv4
//!   only). `icmp6`: IPv6 upper protocol 58 and 8 bytes fit. IPv4 protocol 58 and IPv6 upper
//!   protocol 1 are neither. `l4.sport`/`l4.dport` are present iff `tcp` or `udp` is.
//!   `tcp.flags` is byte 13; `tcp.flags.fin` 0x01, `syn` 0x02, `rst` 0x04, `psh` 0x08,
//!   `ack` 0x10, `urg` 0x20.
//! - `pkt.len` is the captured frame length saturated to 65535; always present.
//! - The payload starts after the L4 header when `tcp`/`udp`/`icmp`/`icmp6` is present;
//!   otherwise after the IP header and the walked extension headers when `ip`/`ip6` is;
//!   otherwise after Ethernet and the complete VLAN tags when `eth` is (ARP is not skipped:
//!   an ARP frame's payload begins with the ARP header); it is absent when the frame is
//!   shorter than 14 bytes. It ends at the end of the frame, except that for IPv4 it ends at
//!   `l3 + total length` (IPv6: `l3 + 40 + payload length`) when that length is sane: at
//!   least the IP header length (IHL×4; 40) and no more than what was captured. So Ethernet
//!   padding is not payload. When a sane length ends before the payload would start (the
//!   length does not cover the L4 header), the payload is present and empty.
//!   `payload.len` is present iff the payload is, saturated to 65535.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::field::{Field, FieldHeader, FieldType, Proto};

/// Where every byte is: header sizes, offsets inside headers and protocol numbers.
mod layout {
    pub const ETH_HEADER: usize = 14;
    pub const ETH_DST: usize = 0;
    pub const ETH_SRC: usize = 6;
    pub const ETH_TYPE: usize = 12;
    pub const MAC_LEN: usize = 6;
    pub const VLAN_TAG: usize = 4;
    pub const MAX_VLAN_TAGS: usize = 2;
    pub const TPID_8021Q: u16 = 0x8100;
    pub const TPID_8021AD: u16 = 0x88a8;

    pub const ETHERTYPE_IPV4: u16 = 0x0800;
    pub const ETHERTYPE_ARP: u16 = 0x0806;
    pub const ETHERTYPE_IPV6: u16 = 0x86dd;

    pub const ARP_LEN: usize = 28;

    pub const IPV4_MIN_HEADER: usize = 20;
    pub const IPV4_TOS: usize = 1;
    pub const IPV4_TOTAL_LEN: usize = 2;
    pub const IPV4_FLAGS_FRAG: usize = 6;
    pub const IPV4_TTL: usize = 8;
    pub const IPV4_PROTO: usize = 9;
    pub const IPV4_SRC: usize = 12;
    pub const IPV4_DST: usize = 16;
    pub const IPV4_MF: u16 = 0x2000;
    pub const IPV4_OFFSET_MASK: u16 = 0x1fff;

    pub const IPV6_HEADER: usize = 40;
    pub const IPV6_PAYLOAD_LEN: usize = 4;
    pub const IPV6_NEXT_HEADER: usize = 6;
    pub const IPV6_HOP_LIMIT: usize = 7;
    pub const IPV6_SRC: usize = 8;
    pub const IPV6_DST: usize = 24;
    pub const IPV6_MAX_EXTENSIONS: usize = 8;
    pub const IPV6_FRAGMENT_HEADER: usize = 8;

    pub const PROTO_HOP_BY_HOP: u8 = 0;
    pub const PROTO_ICMP: u8 = 1;
    pub const PROTO_TCP: u8 = 6;
    pub const PROTO_UDP: u8 = 17;
    pub const PROTO_ROUTING: u8 = 43;
    pub const PROTO_FRAGMENT: u8 = 44;
    pub const PROTO_ICMPV6: u8 = 58;
    pub const PROTO_DEST_OPTIONS: u8 = 60;

    pub const TCP_MIN_HEADER: usize = 20;
    pub const TCP_DATA_OFFSET: usize = 12;
    pub const TCP_FLAGS: usize = 13;
    pub const UDP_HEADER: usize = 8;
    pub const ICMP_HEADER: usize = 8;
}

use layout::*;

/// Where the layers start inside the frame, for code that reads the frame itself (the JIT,
/// the runtime). All offsets are from the first byte of the frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offsets {
    /// The ARP, IPv4 or IPv6 header, when one is present (after Ethernet and complete tags).
    pub l3: Option<u16>,
    /// The TCP, UDP, ICMP or ICMPv6 header, when one is present.
    pub l4: Option<u16>,
    /// The first payload byte, when the payload is present (it may equal `payload_end`).
    pub payload: Option<u16>,
    /// One past the last payload byte; 0 when the payload is absent. Saturated to 65535 for
    /// frames longer than that (use [`Decoded::payload`] for those).
    pub payload_end: u16,
}

/// The network-layer header found after Ethernet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum L3 {
    None,
    Arp,
    Ip,
    Ip6,
}

/// A decoded frame: header presence and layer offsets, computed once by [`Decoded::new`];
/// field values are read from the frame on demand.
#[derive(Debug, Clone, Copy)]
pub struct Decoded<'a> {
    frame: &'a [u8],
    /// Offset of the outer VLAN tag's TCI, when at least one complete tag is present.
    vlan_tci: Option<usize>,
    /// The type after the complete tags; `None` without Ethernet or after a cut-off tag.
    eth_type: Option<u16>,
    /// Where the header after Ethernet and the complete tags starts.
    l3: usize,
    l3_kind: L3,
    /// Where the header after IP (and its walked extension headers) starts.
    l4: usize,
    /// `Tcp`, `Udp`, `Icmp` or `Icmp6` when that header is present.
    l4_kind: Option<Proto>,
    /// `[start, end)` of the payload.
    payload: Option<(usize, usize)>,
    /// An IPv4 fragment (MF or offset) or an IPv6 packet with a walked fragment header.
    fragment: bool,
}

/// What an IP header says about what follows it.
struct IpLayer {
    /// The first byte after the IP header and its walked extension headers.
    after: usize,
    /// `l3 + length field` when that is sane, else the end of the frame.
    end: usize,
    /// The upper-layer protocol when L4 may be decoded (a first fragment, a complete walk).
    upper: Option<u8>,
    /// Whether the packet is a fragment (IPv4 MF or offset; an IPv6 fragment header).
    fragment: bool,
}

fn byte(f: &[u8], at: usize) -> Option<u8> {
    f.get(at).copied()
}

fn be16(f: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([
        byte(f, at)?,
        byte(f, at.checked_add(1)?)?,
    ]))
}

/// `len` bytes at `at` as a big-endian number (`len` ≤ 16).
fn uint(f: &[u8], at: usize, len: usize) -> Option<u128> {
    let bytes = f.get(at..at.checked_add(len)?)?;
    Some(bytes.iter().fold(0u128, |acc, &b| acc << 8 | u128::from(b)))
}

/// Whether `len` bytes starting at `at` lie inside the frame.
fn fits(f: &[u8], at: usize, len: usize) -> bool {
    at.checked_add(len).is_some_and(|end| end <= f.len())
}

fn ipv4(f: &[u8], l3: usize) -> Option<IpLayer> {
    let version_ihl = byte(f, l3)?;
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 || header_len < IPV4_MIN_HEADER || !fits(f, l3, header_len) {
        return None;
    }
    let total = usize::from(be16(f, l3 + IPV4_TOTAL_LEN)?);
    let end = if total >= header_len && fits(f, l3, total) {
        l3 + total
    } else {
        f.len()
    };
    let flags_frag = be16(f, l3 + IPV4_FLAGS_FRAG)?;
    let first_fragment = flags_frag & IPV4_OFFSET_MASK == 0;
    let upper = if first_fragment {
        Some(byte(f, l3 + IPV4_PROTO)?)
    } else {
        None
    };
    Some(IpLayer {
        after: l3 + header_len,
        end,
        upper,
        fragment: flags_frag & (IPV4_MF | IPV4_OFFSET_MASK) != 0,
    })
}

fn ipv6(f: &[u8], l3: usize) -> Option<IpLayer> {
    if !fits(f, l3, IPV6_HEADER) || byte(f, l3)? >> 4 != 6 {
        return None;
    }
    let payload_len = usize::from(be16(f, l3 + IPV6_PAYLOAD_LEN)?);
    let end = if fits(f, l3, IPV6_HEADER + payload_len) {
        l3 + IPV6_HEADER + payload_len
    } else {
        f.len()
    };
    let mut next = byte(f, l3 + IPV6_NEXT_HEADER)?;
    let mut at = l3 + IPV6_HEADER;
    let mut walked = 0;
    let mut fragment = false;
    let upper = loop {
        let len = match next {
            PROTO_HOP_BY_HOP | PROTO_ROUTING | PROTO_DEST_OPTIONS => match byte(f, at + 1) {
                Some(ext_len) => (usize::from(ext_len) + 1) * 8,
                None => break None,
            },
            PROTO_FRAGMENT => IPV6_FRAGMENT_HEADER,
            upper => break Some(upper),
        };
        if walked == IPV6_MAX_EXTENSIONS || !fits(f, at, len) {
            break None;
        }
        let Some(after_this) = byte(f, at) else {
            break None;
        };
        let later_fragment =
            next == PROTO_FRAGMENT && be16(f, at + 2).is_some_and(|off| off >> 3 != 0);
        // Offset or More-Fragments; an atomic fragment (both zero) is a whole datagram.
        fragment |= next == PROTO_FRAGMENT && be16(f, at + 2).is_some_and(|v| v & 0xfff9 != 0);
        next = after_this;
        at += len;
        walked += 1;
        if later_fragment {
            break None;
        }
    };
    Some(IpLayer {
        after: at,
        end,
        upper,
        fragment,
    })
}

/// The L4 header after IP, when present: its kind and length.
fn transport(f: &[u8], l3: L3, upper: Option<u8>, at: usize) -> Option<(Proto, usize)> {
    let (kind, len) = match (l3, upper?) {
        (L3::Ip | L3::Ip6, PROTO_TCP) => {
            let data_offset = usize::from(byte(f, at + TCP_DATA_OFFSET)? >> 4) * 4;
            if data_offset < TCP_MIN_HEADER {
                return None;
            }
            (Proto::Tcp, data_offset)
        }
        (L3::Ip | L3::Ip6, PROTO_UDP) => (Proto::Udp, UDP_HEADER),
        (L3::Ip, PROTO_ICMP) => (Proto::Icmp, ICMP_HEADER),
        (L3::Ip6, PROTO_ICMPV6) => (Proto::Icmp6, ICMP_HEADER),
        _ => return None,
    };
    fits(f, at, len).then_some((kind, len))
}

impl<'a> Decoded<'a> {
    /// Decodes `frame`. Never panics, whatever its length or content.
    pub fn new(frame: &'a [u8]) -> Decoded<'a> {
        let mut d = Decoded {
            frame,
            vlan_tci: None,
            eth_type: None,
            l3: 0,
            l3_kind: L3::None,
            l4: 0,
            l4_kind: None,
            payload: None,
            fragment: false,
        };
        if frame.len() < ETH_HEADER {
            return d;
        }
        let mut type_at = ETH_TYPE;
        let mut eth_type = be16(frame, type_at);
        for _ in 0..MAX_VLAN_TAGS {
            if !matches!(eth_type, Some(TPID_8021Q | TPID_8021AD)) {
                break;
            }
            if !fits(frame, type_at + VLAN_TAG, 2) {
                eth_type = None;
                break;
            }
            d.vlan_tci.get_or_insert(type_at + 2);
            type_at += VLAN_TAG;
            eth_type = be16(frame, type_at);
        }
        d.eth_type = eth_type;
        let l3 = type_at + 2;
        d.l3 = l3;
        d.l4 = l3;

        let ip = match eth_type {
            Some(ETHERTYPE_ARP) if fits(frame, l3, ARP_LEN) => {
                d.l3_kind = L3::Arp;
                None
            }
            Some(ETHERTYPE_IPV4) => ipv4(frame, l3).inspect(|_| d.l3_kind = L3::Ip),
            Some(ETHERTYPE_IPV6) => ipv6(frame, l3).inspect(|_| d.l3_kind = L3::Ip6),
            _ => None,
        };
        let (start, end) = match ip {
            Some(ip) => {
                d.l4 = ip.after;
                d.fragment = ip.fragment;
                let start = match transport(frame, d.l3_kind, ip.upper, ip.after) {
                    Some((kind, len)) => {
                        d.l4_kind = Some(kind);
                        ip.after + len
                    }
                    None => ip.after,
                };
                // A sane length field that ends before the payload starts leaves it empty.
                (start, ip.end.max(start))
            }
            None => (l3, frame.len()),
        };
        d.payload = Some((start, end));
        d
    }

    /// The frame this view decodes.
    pub fn frame(&self) -> &'a [u8] {
        self.frame
    }

    /// Whether the header is present, per the module's rules.
    pub fn has(&self, proto: Proto) -> bool {
        match proto {
            Proto::Eth => self.frame.len() >= ETH_HEADER,
            Proto::Vlan => self.vlan_tci.is_some(),
            Proto::Arp => self.l3_kind == L3::Arp,
            Proto::Ip => self.l3_kind == L3::Ip,
            Proto::Ip6 => self.l3_kind == L3::Ip6,
            Proto::Tcp | Proto::Udp | Proto::Icmp | Proto::Icmp6 => self.l4_kind == Some(proto),
        }
    }

    /// Whether the header a field lives in is present (`eth.type` aside, see [`Self::field`]).
    fn header_present(&self, header: FieldHeader) -> bool {
        match header {
            FieldHeader::Frame => true,
            FieldHeader::Proto(p) => self.has(p),
            FieldHeader::TcpOrUdp => self.has(Proto::Tcp) || self.has(Proto::Udp),
            FieldHeader::Payload => self.payload.is_some(),
        }
    }

    /// The value of a field, or `None` when its header is absent. `eth.type` is also absent
    /// when a VLAN tag is cut off.
    pub fn field(&self, field: Field) -> Option<u128> {
        use Field::*;
        if !self.header_present(field.header()) {
            return None;
        }
        let f = self.frame;
        let (l3, l4) = (self.l3, self.l4);
        let flag = |bit: u8| byte(f, l4 + TCP_FLAGS).map(|b| u128::from(b & bit != 0));
        match field {
            EthSrc => uint(f, ETH_SRC, MAC_LEN),
            EthDst => uint(f, ETH_DST, MAC_LEN),
            EthType => self.eth_type.map(u128::from),
            VlanId => uint(f, self.vlan_tci?, 2).map(|tci| tci & 0x0fff),
            VlanPcp => byte(f, self.vlan_tci?).map(|b| u128::from(b >> 5)),
            IpSrc => uint(f, l3 + IPV4_SRC, 4),
            IpDst => uint(f, l3 + IPV4_DST, 4),
            IpProto => uint(f, l3 + IPV4_PROTO, 1),
            IpTtl => uint(f, l3 + IPV4_TTL, 1),
            IpDscp => byte(f, l3 + IPV4_TOS).map(|tos| u128::from(tos >> 2)),
            IpLen => uint(f, l3 + IPV4_TOTAL_LEN, 2),
            IpFrag => be16(f, l3 + IPV4_FLAGS_FRAG)
                .map(|v| u128::from(v & (IPV4_MF | IPV4_OFFSET_MASK) != 0)),
            Ip6Src => uint(f, l3 + IPV6_SRC, 16),
            Ip6Dst => uint(f, l3 + IPV6_DST, 16),
            Ip6Nh => uint(f, l3 + IPV6_NEXT_HEADER, 1),
            Ip6Hlim => uint(f, l3 + IPV6_HOP_LIMIT, 1),
            Ip6Flow => uint(f, l3, 4).map(|v| v & 0x000f_ffff),
            TcpSport | UdpSport | L4Sport => uint(f, l4, 2),
            TcpDport | UdpDport | L4Dport => uint(f, l4 + 2, 2),
            TcpFlags => uint(f, l4 + TCP_FLAGS, 1),
            TcpFlagFin | TcpFlagSyn | TcpFlagRst | TcpFlagPsh | TcpFlagAck | TcpFlagUrg => {
                flag(field.tcp_flag_mask().unwrap_or(0))
            }
            IcmpType | Icmp6Type => uint(f, l4, 1),
            IcmpCode | Icmp6Code => uint(f, l4 + 1, 1),
            PktLen => Some(f.len().min(usize::from(u16::MAX)) as u128),
            PayloadLen => self
                .payload()
                .map(|p| p.len().min(usize::from(u16::MAX)) as u128),
        }
    }

    /// The payload bytes (see the module doc for where they start and end), or `None` when
    /// the frame has no Ethernet header.
    pub fn payload(&self) -> Option<&'a [u8]> {
        let (start, end) = self.payload?;
        self.frame.get(start..end)
    }

    /// Whether the packet is an IP fragment, first or later (IPv4 More-Fragments or a non-zero
    /// offset; IPv6 with a fragment header among the walked extension headers). Flow hashing
    /// leaves ports out for fragments so that all of a datagram's fragments hash alike.
    pub(crate) fn is_fragment(&self) -> bool {
        self.fragment
    }

    /// Layer offsets (see [`Offsets`]).
    pub fn offsets(&self) -> Offsets {
        let narrow = |v: usize| u16::try_from(v).unwrap_or(u16::MAX);
        let l3 = (self.l3_kind != L3::None).then_some(narrow(self.l3));
        let l4 = self.l4_kind.map(|_| narrow(self.l4));
        let (payload, payload_end) = match self.payload {
            Some((start, end)) => (Some(narrow(start)), narrow(end)),
            None => (None, 0),
        };
        Offsets {
            l3,
            l4,
            payload,
            payload_end,
        }
    }

    /// One `(header, line)` pair per present header, outermost first, for `netvm explain`:
    /// `("eth", "02:00:00:00:00:01 -> 02:00:00:00:00:02 type 0x0800")`,
    /// `("tcp", "49152 -> 80 flags [S]")`, `("payload", "5 bytes \"GET /\"")`. Empty when the
    /// frame has no Ethernet header. Lines also say why an expected header is missing (a
    /// cut-off VLAN tag, a malformed IP header).
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        let mut lines = Vec::new();
        if !self.has(Proto::Eth) {
            return lines;
        }
        let v = |f: Field| {
            self.field(f)
                .map_or_else(|| "?".to_string(), |x| format_value(f.ty(), x))
        };
        let ty = self.eth_type.map_or_else(
            || "absent (VLAN tag cut off)".to_string(),
            |t| format!("0x{t:04x}"),
        );
        lines.push((
            "eth",
            format!("{} -> {} type {ty}", v(Field::EthSrc), v(Field::EthDst)),
        ));
        if self.has(Proto::Vlan) {
            lines.push((
                "vlan",
                format!("id {} pcp {}", v(Field::VlanId), v(Field::VlanPcp)),
            ));
        }
        match self.l3_kind {
            L3::Arp => lines.push(("arp", self.describe_arp())),
            L3::Ip => {
                let frag = be16(self.frame, self.l3 + IPV4_FLAGS_FRAG).unwrap_or(0);
                let mut line = format!(
                    "{} -> {} proto {} ttl {} len {} dscp {}",
                    v(Field::IpSrc),
                    v(Field::IpDst),
                    v(Field::IpProto),
                    v(Field::IpTtl),
                    v(Field::IpLen),
                    v(Field::IpDscp),
                );
                if frag & (IPV4_MF | IPV4_OFFSET_MASK) != 0 {
                    line += &format!(
                        " fragment offset {}{}",
                        (frag & IPV4_OFFSET_MASK) * 8,
                        if frag & IPV4_MF != 0 { " +MF" } else { "" }
                    );
                }
                lines.push(("ip", line));
            }
            L3::Ip6 => lines.push((
                "ip6",
                format!(
                    "{} -> {} nh {} hlim {} flow {}",
                    v(Field::Ip6Src),
                    v(Field::Ip6Dst),
                    v(Field::Ip6Nh),
                    v(Field::Ip6Hlim),
                    v(Field::Ip6Flow)
                ),
            )),
            L3::None => match self.eth_type {
                Some(ETHERTYPE_IPV4) => {
                    lines.push(("ip", "absent: malformed or truncated header".into()))
                }
                Some(ETHERTYPE_IPV6) => {
                    lines.push(("ip6", "absent: malformed or truncated header".into()))
                }
                Some(ETHERTYPE_ARP) => lines.push(("arp", "absent: truncated".into())),
                _ => {}
            },
        }
        match self.l4_kind {
            Some(Proto::Tcp) => {
                let flags = byte(self.frame, self.l4 + TCP_FLAGS).unwrap_or(0);
                lines.push((
                    "tcp",
                    format!(
                        "{} -> {} flags [{}]",
                        v(Field::TcpSport),
                        v(Field::TcpDport),
                        tcp_flag_letters(flags)
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
            lines.push(("payload", describe_bytes(p)));
        }
        lines
    }

    fn describe_arp(&self) -> String {
        let f = self.frame;
        let at = self.l3;
        let op = be16(f, at + 6).unwrap_or(0);
        let ethernet_ipv4 = be16(f, at) == Some(1)
            && be16(f, at + 2) == Some(ETHERTYPE_IPV4)
            && byte(f, at + 4) == Some(6)
            && byte(f, at + 5) == Some(4);
        if !ethernet_ipv4 {
            return format!(
                "htype {} ptype 0x{:04x} op {op}",
                be16(f, at).unwrap_or(0),
                be16(f, at + 2).unwrap_or(0)
            );
        }
        let ip = |off: usize| format_value(FieldType::Ipv4, uint(f, at + off, 4).unwrap_or(0));
        let mac = |off: usize| format_value(FieldType::Mac, uint(f, at + off, 6).unwrap_or(0));
        match op {
            1 => format!("who-has {} tell {} ({})", ip(24), ip(14), mac(8)),
            2 => format!("reply {} is-at {}", ip(14), mac(8)),
            _ => format!("op {op} {} ({}) -> {}", ip(14), mac(8), ip(24)),
        }
    }
}

/// TCP flags as tcpdump writes them: `S`, `S.`, `F.`, `R`, `P.`, ..., `none` for no flag.
fn tcp_flag_letters(flags: u8) -> String {
    const LETTERS: [(u8, char); 8] = [
        (0x01, 'F'),
        (0x02, 'S'),
        (0x04, 'R'),
        (0x08, 'P'),
        (0x10, '.'),
        (0x20, 'U'),
        (0x40, 'E'),
        (0x80, 'W'),
    ];
    let s: String = LETTERS
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|&(_, c)| c)
        .collect();
    if s.is_empty() {
        "none".to_string()
    } else {
        s
    }
}

/// `N bytes "..."`: the first 48 bytes, escaped like a `.nvr` string.
fn describe_bytes(p: &[u8]) -> String {
    const SHOWN: usize = 48;
    let mut shown = String::new();
    for &b in p.iter().take(SHOWN) {
        match b {
            b'"' => shown.push_str("\\\""),
            b'\\' => shown.push_str("\\\\"),
            b'\n' => shown.push_str("\\n"),
            b'\r' => shown.push_str("\\r"),
            b'\t' => shown.push_str("\\t"),
            0x20..=0x7e => shown.push(char::from(b)),
            _ => shown.push_str(&format!("\\x{b:02x}")),
        }
    }
    let more = if p.len() > SHOWN { "..." } else { "" };
    let unit = if p.len() == 1 { "byte" } else { "bytes" };
    format!("{} {unit} \"{shown}{more}\"", p.len())
}

/// A field value as the language writes it: `10.0.0.1`, `2001:db8::1` (RFC 5952: lower case,
/// the longest run of zero groups compressed), `02:00:00:aa:bb:cc`, decimal integers,
/// `true`/`false`. Bits above the type's width are ignored.
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
        FieldType::Bool => (v & 1 != 0).to_string(),
        FieldType::Uint(bits) if bits < 128 => (v & ((1u128 << bits) - 1)).to_string(),
        FieldType::Uint(_) => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
    const SRC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

    fn eth(ty: u16, rest: &[u8]) -> Vec<u8> {
        let mut f = DST.to_vec();
        f.extend_from_slice(&SRC);
        f.extend_from_slice(&ty.to_be_bytes());
        f.extend_from_slice(rest);
        f
    }

    /// An IPv4 header (no options unless `ihl` > 5; options are zero) followed by `rest`.
    fn ipv4(proto: u8, frag: u16, ihl: u8, total: Option<u16>, rest: &[u8]) -> Vec<u8> {
        let header_len = usize::from(ihl) * 4;
        let total = total.unwrap_or((header_len.max(20) + rest.len()) as u16);
        let mut h = vec![0x40 | ihl, 0xb8];
        h.extend_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&[0, 1]);
        h.extend_from_slice(&frag.to_be_bytes());
        h.extend_from_slice(&[64, proto, 0, 0, 10, 0, 0, 2, 192, 168, 1, 3]);
        h.resize(header_len.max(20), 0);
        h.extend_from_slice(rest);
        h
    }

    fn ipv6(nh: u8, payload_len: Option<u16>, rest: &[u8]) -> Vec<u8> {
        let plen = payload_len.unwrap_or(rest.len() as u16);
        let mut h = vec![0x6a, 0xb1, 0x23, 0x45];
        h.extend_from_slice(&plen.to_be_bytes());
        h.extend_from_slice(&[nh, 33]);
        h.extend_from_slice(&(0x2001_0db8u128 << 96 | 1).to_be_bytes());
        h.extend_from_slice(&(0xfd00u128 << 112 | 0xab).to_be_bytes());
        h.extend_from_slice(rest);
        h
    }

    fn tcp(flags: u8, data_offset: u8, rest: &[u8]) -> Vec<u8> {
        let mut h = vec![0xc0, 0x00, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0];
        h.extend_from_slice(&[data_offset << 4, flags, 0xff, 0xff, 0, 0, 0, 0]);
        h.resize((usize::from(data_offset) * 4).max(20), 0);
        h.extend_from_slice(rest);
        h
    }

    fn udp(rest: &[u8]) -> Vec<u8> {
        let mut h = vec![0x30, 0x39, 0x00, 0x35];
        h.extend_from_slice(&((8 + rest.len()) as u16).to_be_bytes());
        h.extend_from_slice(&[0, 0]);
        h.extend_from_slice(rest);
        h
    }

    fn present(d: &Decoded) -> Vec<Proto> {
        Proto::ALL.into_iter().filter(|&p| d.has(p)).collect()
    }

    #[test]
    fn frames_shorter_than_ethernet_have_only_pkt_len() {
        for len in 0..14 {
            let frame = vec![0xaa; len];
            let d = Decoded::new(&frame);
            assert!(present(&d).is_empty());
            for &f in Field::ALL {
                let expected = (f == Field::PktLen).then_some(len as u128);
                assert_eq!(d.field(f), expected, "{}", f.name());
            }
            assert_eq!(d.payload(), None);
            assert_eq!(d.offsets(), Offsets::default());
            assert!(d.describe().is_empty());
        }
    }

    #[test]
    fn a_bare_ethernet_header_has_an_empty_payload() {
        let frame = eth(0x88b5, &[]);
        let d = Decoded::new(&frame);
        assert_eq!(present(&d), [Proto::Eth]);
        assert_eq!(d.field(Field::EthDst), Some(0x02_00_00_00_00_02));
        assert_eq!(d.field(Field::EthSrc), Some(0x02_00_00_00_00_01));
        assert_eq!(d.field(Field::EthType), Some(0x88b5));
        assert_eq!(d.payload(), Some(&[][..]));
        assert_eq!(d.field(Field::PayloadLen), Some(0));
        assert_eq!(d.field(Field::L4Dport), None);
    }

    #[test]
    fn unknown_ethertype_payload_follows_ethernet_and_keeps_padding() {
        let frame = eth(0x1234, &[1, 2, 3, 0, 0]);
        let d = Decoded::new(&frame);
        assert_eq!(d.payload(), Some(&[1, 2, 3, 0, 0][..]));
        assert_eq!(d.offsets().payload, Some(14));
        assert_eq!(d.offsets().l3, None);
    }

    #[test]
    fn one_vlan_tag_is_skipped_and_read() {
        // PCP 5, DEI 1, VID 100.
        let inner = eth(0x0800, &ipv4(17, 0, 5, None, &udp(b"x")));
        let mut frame = inner[..12].to_vec();
        frame.extend_from_slice(&[0x81, 0x00, 0xb0, 0x64]);
        frame.extend_from_slice(&inner[12..]);
        let d = Decoded::new(&frame);
        assert_eq!(
            present(&d),
            [Proto::Eth, Proto::Vlan, Proto::Ip, Proto::Udp]
        );
        assert_eq!(d.field(Field::VlanId), Some(100));
        assert_eq!(d.field(Field::VlanPcp), Some(5));
        assert_eq!(d.field(Field::EthType), Some(0x0800));
        assert_eq!(d.field(Field::UdpDport), Some(53));
        assert_eq!(d.offsets().l3, Some(18));
        assert_eq!(d.payload(), Some(&b"x"[..]));
    }

    #[test]
    fn two_tags_are_skipped_and_the_outer_one_is_read() {
        let inner = eth(0x86dd, &ipv6(17, None, &udp(b"")));
        let mut frame = inner[..12].to_vec();
        frame.extend_from_slice(&[0x88, 0xa8, 0x20, 0x0a]); // 802.1ad, PCP 1, VID 10
        frame.extend_from_slice(&[0x81, 0x00, 0xe0, 0x14]); // 802.1Q, PCP 7, VID 20
        frame.extend_from_slice(&inner[12..]);
        let d = Decoded::new(&frame);
        assert_eq!(d.field(Field::VlanId), Some(10));
        assert_eq!(d.field(Field::VlanPcp), Some(1));
        assert_eq!(d.field(Field::EthType), Some(0x86dd));
        assert!(d.has(Proto::Ip6) && d.has(Proto::Udp));
        assert_eq!(d.offsets().l3, Some(22));
    }

    #[test]
    fn a_third_tag_is_not_skipped() {
        let inner = eth(0x0800, &ipv4(17, 0, 5, None, &udp(b"")));
        let mut frame = inner[..12].to_vec();
        for _ in 0..3 {
            frame.extend_from_slice(&[0x81, 0x00, 0x00, 0x01]);
        }
        frame.extend_from_slice(&inner[12..]);
        let d = Decoded::new(&frame);
        assert_eq!(present(&d), [Proto::Eth, Proto::Vlan]);
        assert_eq!(d.field(Field::EthType), Some(0x8100));
        assert_eq!(d.offsets().payload, Some(22));
    }

    #[test]
    fn a_cut_off_tag_makes_eth_type_absent_but_keeps_the_addresses() {
        for extra in [&[0x00][..], &[0x00, 0x05], &[0x00, 0x05, 0x08]] {
            let frame = eth(0x8100, extra);
            let d = Decoded::new(&frame);
            assert_eq!(present(&d), [Proto::Eth], "{frame:?}");
            assert_eq!(d.field(Field::EthType), None);
            assert_eq!(d.field(Field::EthSrc), Some(0x02_00_00_00_00_01));
            assert_eq!(d.field(Field::VlanId), None);
            assert_eq!(
                d.payload(),
                Some(extra),
                "payload follows the complete tags (none)"
            );
        }
        // Outer tag complete, inner one cut off: vlan is present, eth.type is not.
        let frame = eth(0x88a8, &[0x00, 0x07, 0x81, 0x00, 0x00]);
        let d = Decoded::new(&frame);
        assert_eq!(present(&d), [Proto::Eth, Proto::Vlan]);
        assert_eq!(d.field(Field::VlanId), Some(7));
        assert_eq!(d.field(Field::EthType), None);
        assert_eq!(d.payload(), Some(&[0x00][..]), "after 14 + 4 bytes");
        assert!(d.describe()[0].1.contains("absent"));
    }

    #[test]
    fn arp_needs_28_bytes_and_its_payload_starts_at_the_arp_header() {
        let body: Vec<u8> = (0..28).collect();
        let frame = eth(0x0806, &body);
        let d = Decoded::new(&frame);
        assert_eq!(present(&d), [Proto::Eth, Proto::Arp]);
        assert_eq!(d.offsets().l3, Some(14));
        assert_eq!(d.payload(), Some(&body[..]));
        let short = eth(0x0806, &body[..27]);
        assert_eq!(present(&Decoded::new(&short)), [Proto::Eth]);
    }

    #[test]
    fn ipv4_fields_are_read() {
        let frame = eth(0x0800, &ipv4(6, 0, 5, None, &tcp(0x12, 5, b"hello")));
        let d = Decoded::new(&frame);
        assert_eq!(present(&d), [Proto::Eth, Proto::Ip, Proto::Tcp]);
        assert_eq!(d.field(Field::IpSrc), Some(0x0a00_0002));
        assert_eq!(d.field(Field::IpDst), Some(0xc0a8_0103));
        assert_eq!(d.field(Field::IpProto), Some(6));
        assert_eq!(d.field(Field::IpTtl), Some(64));
        assert_eq!(d.field(Field::IpDscp), Some(46));
        assert_eq!(d.field(Field::IpLen), Some(45));
        assert_eq!(d.field(Field::IpFrag), Some(0));
        assert_eq!(d.field(Field::TcpSport), Some(49152));
        assert_eq!(d.field(Field::TcpDport), Some(80));
        assert_eq!(d.field(Field::L4Sport), Some(49152));
        assert_eq!(d.field(Field::L4Dport), Some(80));
        assert_eq!(d.field(Field::UdpDport), None);
        assert_eq!(d.field(Field::Ip6Src), None);
        assert_eq!(d.field(Field::PktLen), Some(59));
        assert_eq!(d.payload(), Some(&b"hello"[..]));
        assert_eq!(d.field(Field::PayloadLen), Some(5));
        assert_eq!(
            d.offsets(),
            Offsets {
                l3: Some(14),
                l4: Some(34),
                payload: Some(54),
                payload_end: 59
            }
        );
    }

    #[test]
    fn tcp_flags_are_byte_13_and_its_bits() {
        let bits = [
            (Field::TcpFlagFin, 0x01),
            (Field::TcpFlagSyn, 0x02),
            (Field::TcpFlagRst, 0x04),
            (Field::TcpFlagPsh, 0x08),
            (Field::TcpFlagAck, 0x10),
            (Field::TcpFlagUrg, 0x20),
        ];
        for flags in [0x00, 0x02, 0x12, 0x3f, 0xc1, 0xff] {
            let frame = eth(0x0800, &ipv4(6, 0, 5, None, &tcp(flags, 5, b"")));
            let d = Decoded::new(&frame);
            assert_eq!(d.field(Field::TcpFlags), Some(u128::from(flags)));
            for (field, bit) in bits {
                assert_eq!(d.field(field), Some(u128::from(flags & bit != 0)));
            }
        }
    }

    #[test]
    fn a_malformed_ipv4_header_is_absent_and_so_is_everything_above_it() {
        let good = ipv4(17, 0, 5, None, &udp(b"abc"));
        let mut bad_version = good.clone();
        bad_version[0] = 0x55;
        let mut short_ihl = good.clone();
        short_ihl[0] = 0x44;
        let options_cut_off = ipv4(17, 0, 15, None, &[])[..40].to_vec();
        for bad in [bad_version, short_ihl, options_cut_off, good[..19].to_vec()] {
            let frame = eth(0x0800, &bad);
            let d = Decoded::new(&frame);
            assert_eq!(present(&d), [Proto::Eth], "{bad:?}");
            assert_eq!(d.field(Field::IpSrc), None);
            assert_eq!(d.field(Field::L4Dport), None);
            assert_eq!(d.payload(), Some(&bad[..]), "payload follows Ethernet");
            assert!(d
                .describe()
                .iter()
                .any(|(h, l)| *h == "ip" && l.contains("absent")));
        }
    }

    #[test]
    fn ipv4_options_move_the_transport_header() {
        let frame = eth(0x0800, &ipv4(17, 0, 7, None, &udp(b"p")));
        let d = Decoded::new(&frame);
        assert_eq!(d.field(Field::UdpSport), Some(12345));
        assert_eq!(d.field(Field::UdpDport), Some(53));
        assert_eq!(d.offsets().l4, Some(14 + 28));
        assert_eq!(d.payload(), Some(&b"p"[..]));
    }

    #[test]
    fn l4_is_only_in_the_first_fragment() {
        // More-Fragments alone: a first fragment, L4 present.
        let frame = eth(0x0800, &ipv4(6, 0x2000, 5, None, &tcp(0x02, 5, b"")));
        let d = Decoded::new(&frame);
        assert!(d.has(Proto::Tcp));
        assert_eq!(d.field(Field::IpFrag), Some(1));
        // A later fragment: no L4, the payload follows the IP header.
        for frag in [0x0001, 0x2001, 0x1fff] {
            let body = tcp(0x02, 5, b"");
            let frame = eth(0x0800, &ipv4(6, frag, 5, None, &body));
            let d = Decoded::new(&frame);
            assert_eq!(present(&d), [Proto::Eth, Proto::Ip]);
            assert_eq!(d.field(Field::IpFrag), Some(1));
            assert_eq!(d.field(Field::TcpDport), None);
            assert_eq!(d.field(Field::L4Dport), None);
            assert_eq!(d.payload(), Some(&body[..]));
            assert_eq!(d.offsets().l4, None);
        }
        // Don't-Fragment is not a fragment.
        let frame = eth(0x0800, &ipv4(6, 0x4000, 5, None, &tcp(0x02, 5, b"")));
        assert_eq!(Decoded::new(&frame).field(Field::IpFrag), Some(0));
    }

    #[test]
    fn a_tcp_header_needs_a_sane_data_offset_that_fits() {
        for doff in [0, 4] {
            let body = tcp(0x02, doff, b"");
            let frame = eth(0x0800, &ipv4(6, 0, 5, None, &body));
            let d = Decoded::new(&frame);
            assert_eq!(present(&d), [Proto::Eth, Proto::Ip], "doff {doff}");
            assert_eq!(d.payload(), Some(&body[..]));
        }
        // Data offset 8 (32 bytes) with only 20 captured.
        let body = tcp(0x02, 8, b"")[..20].to_vec();
        let frame = eth(0x0800, &ipv4(6, 0, 5, None, &body));
        assert!(!Decoded::new(&frame).has(Proto::Tcp));
        // Data offset 8 with options captured: the payload follows them.
        let frame = eth(0x0800, &ipv4(6, 0, 5, None, &tcp(0x02, 8, b"data")));
        let d = Decoded::new(&frame);
        assert!(d.has(Proto::Tcp));
        assert_eq!(d.payload(), Some(&b"data"[..]));
        // 19 bytes of TCP: absent.
        let frame = eth(0x0800, &ipv4(6, 0, 5, None, &tcp(0x02, 5, b"")[..19]));
        assert!(!Decoded::new(&frame).has(Proto::Tcp));
    }

    #[test]
    fn udp_and_icmp_need_8_bytes() {
        let frame = eth(0x0800, &ipv4(17, 0, 5, None, &udp(b"")[..7]));
        assert_eq!(present(&Decoded::new(&frame)), [Proto::Eth, Proto::Ip]);
        let frame = eth(
            0x0800,
            &ipv4(1, 0, 5, None, &[8, 0, 0, 0, 0, 1, 0, 1, 0xaa]),
        );
        let d = Decoded::new(&frame);
        assert_eq!(present(&d), [Proto::Eth, Proto::Ip, Proto::Icmp]);
        assert_eq!(d.field(Field::IcmpType), Some(8));
        assert_eq!(d.field(Field::IcmpCode), Some(0));
        assert_eq!(d.field(Field::Icmp6Type), None);
        assert_eq!(d.field(Field::L4Sport), None);
        assert_eq!(d.payload(), Some(&[0xaa][..]));
        let frame = eth(0x0800, &ipv4(1, 0, 5, None, &[8, 0, 0, 0, 0, 1, 0]));
        assert!(!Decoded::new(&frame).has(Proto::Icmp));
    }

    #[test]
    fn icmp_and_icmp6_belong_to_their_own_ip_version() {
        let icmp = [3, 1, 0, 0, 0, 0, 0, 0];
        let frame = eth(0x0800, &ipv4(58, 0, 5, None, &icmp));
        assert_eq!(present(&Decoded::new(&frame)), [Proto::Eth, Proto::Ip]);
        let frame = eth(0x86dd, &ipv6(1, None, &icmp));
        assert_eq!(present(&Decoded::new(&frame)), [Proto::Eth, Proto::Ip6]);
        let frame = eth(0x86dd, &ipv6(58, None, &icmp));
        let d = Decoded::new(&frame);
        assert_eq!(present(&d), [Proto::Eth, Proto::Ip6, Proto::Icmp6]);
        assert_eq!(d.field(Field::Icmp6Type), Some(3));
        assert_eq!(d.field(Field::Icmp6Code), Some(1));
        assert_eq!(d.field(Field::IcmpType), None);
    }

    #[test]
    fn ipv6_fields_are_read() {
        let frame = eth(0x86dd, &ipv6(6, None, &tcp(0x10, 5, b"z")));
        let d = Decoded::new(&frame);
        assert_eq!(present(&d), [Proto::Eth, Proto::Ip6, Proto::Tcp]);
        assert_eq!(d.field(Field::Ip6Src), Some(0x2001_0db8u128 << 96 | 1));
        assert_eq!(d.field(Field::Ip6Dst), Some(0xfd00u128 << 112 | 0xab));
        assert_eq!(d.field(Field::Ip6Nh), Some(6));
        assert_eq!(d.field(Field::Ip6Hlim), Some(33));
        assert_eq!(d.field(Field::Ip6Flow), Some(0x12345));
        assert_eq!(d.field(Field::TcpFlagAck), Some(1));
        assert_eq!(d.field(Field::IpSrc), None);
        assert_eq!(d.payload(), Some(&b"z"[..]));
        assert_eq!(d.offsets().l4, Some(54));
        let mut v4_in_v6 = frame.clone();
        v4_in_v6[14] = 0x45;
        assert_eq!(present(&Decoded::new(&v4_in_v6)), [Proto::Eth]);
        assert_eq!(present(&Decoded::new(&frame[..14 + 39])), [Proto::Eth]);
    }

    /// An extension header of `len` bytes (a multiple of 8) announcing `next`.
    fn ext(next: u8, len: usize) -> Vec<u8> {
        let mut h = vec![next, (len / 8 - 1) as u8];
        h.resize(len, 0);
        h
    }

    fn fragment(next: u8, offset: u16, more: bool) -> Vec<u8> {
        let mut h = vec![next, 0];
        h.extend_from_slice(&(offset << 3 | u16::from(more)).to_be_bytes());
        h.extend_from_slice(&[0, 0, 0, 7]);
        h
    }

    #[test]
    fn ipv6_extension_headers_are_walked() {
        let mut chain = ext(43, 8);
        chain.extend(ext(60, 24));
        chain.extend(fragment(17, 0, true));
        chain.extend(udp(b"q"));
        let frame = eth(0x86dd, &ipv6(0, None, &chain));
        let d = Decoded::new(&frame);
        assert_eq!(present(&d), [Proto::Eth, Proto::Ip6, Proto::Udp]);
        assert_eq!(
            d.field(Field::Ip6Nh),
            Some(0),
            "the fixed header's next header"
        );
        assert_eq!(d.field(Field::UdpDport), Some(53));
        assert_eq!(d.offsets().l4, Some(14 + 40 + 40));
        assert_eq!(d.payload(), Some(&b"q"[..]));
    }

    #[test]
    fn a_later_ipv6_fragment_has_no_l4() {
        let mut chain = fragment(6, 1, false);
        let body = tcp(0x02, 5, b"");
        chain.extend_from_slice(&body);
        let frame = eth(0x86dd, &ipv6(44, None, &chain));
        let d = Decoded::new(&frame);
        assert_eq!(present(&d), [Proto::Eth, Proto::Ip6]);
        assert_eq!(d.payload(), Some(&body[..]));
    }

    #[test]
    fn at_most_eight_extension_headers_are_walked() {
        for count in [8, 9] {
            let mut chain = Vec::new();
            for i in 0..count {
                chain.extend(ext(if i + 1 == count { 17 } else { 60 }, 8));
            }
            chain.extend(udp(b""));
            let frame = eth(0x86dd, &ipv6(60, None, &chain));
            let d = Decoded::new(&frame);
            assert_eq!(d.has(Proto::Udp), count == 8, "{count} headers");
        }
    }

    #[test]
    fn a_cut_off_extension_header_leaves_no_l4() {
        let mut chain = ext(60, 8);
        chain.extend(&ext(17, 16)[..12]);
        let frame = eth(0x86dd, &ipv6(0, None, &chain));
        let d = Decoded::new(&frame);
        assert_eq!(present(&d), [Proto::Eth, Proto::Ip6]);
        assert_eq!(
            d.offsets().payload,
            Some(14 + 40 + 8),
            "after the complete ones"
        );
        let mut chain = ext(60, 8);
        chain.extend(&fragment(17, 0, false)[..7]);
        let frame = eth(0x86dd, &ipv6(0, None, &chain));
        assert_eq!(present(&Decoded::new(&frame)), [Proto::Eth, Proto::Ip6]);
    }

    #[test]
    fn fragments_are_flagged_for_flow_hashing() {
        let whole = eth(0x0800, &ipv4(17, 0x4000, 5, None, &udp(b"")));
        assert!(!Decoded::new(&whole).is_fragment(), "Don't-Fragment");
        for frag in [0x2000, 0x0001] {
            let f = eth(0x0800, &ipv4(17, frag, 5, None, &udp(b"")));
            assert!(Decoded::new(&f).is_fragment());
        }
        for (offset, more, expected) in [(0, false, false), (0, true, true), (3, false, true)] {
            let mut chain = fragment(17, offset, more);
            chain.extend(udp(b""));
            let f = eth(0x86dd, &ipv6(44, None, &chain));
            let d = Decoded::new(&f);
            assert_eq!(d.is_fragment(), expected, "offset {offset} more {more}");
            assert_eq!(d.has(Proto::Udp), offset == 0);
        }
    }

    #[test]
    fn ethernet_padding_is_trimmed_by_the_ip_length() {
        let mut frame = eth(0x0800, &ipv4(17, 0, 5, None, &udp(b"hi")));
        frame.resize(60, 0);
        assert_eq!(Decoded::new(&frame).payload(), Some(&b"hi"[..]));
        let mut frame = eth(0x86dd, &ipv6(17, None, &udp(b"hi")));
        frame.resize(90, 0xee);
        let d = Decoded::new(&frame);
        assert_eq!(d.payload(), Some(&b"hi"[..]));
        assert_eq!(d.offsets().payload_end, 14 + 40 + 10);
    }

    #[test]
    fn an_insane_ip_length_does_not_trim() {
        // Longer than captured (a snapped capture), or shorter than the IP header.
        for total in [1000, 0, 19] {
            let frame = eth(0x0800, &ipv4(17, 0, 5, Some(total), &udp(b"abc")));
            assert_eq!(Decoded::new(&frame).payload(), Some(&b"abc"[..]), "{total}");
        }
        let frame = eth(0x86dd, &ipv6(17, Some(1000), &udp(b"abc")));
        assert_eq!(Decoded::new(&frame).payload(), Some(&b"abc"[..]));
    }

    #[test]
    fn a_sane_length_that_ends_inside_l4_leaves_an_empty_payload() {
        let frame = eth(0x0800, &ipv4(6, 0, 5, Some(24), &tcp(0x02, 5, b"abc")));
        let d = Decoded::new(&frame);
        assert!(
            d.has(Proto::Tcp),
            "the header is complete in the captured bytes"
        );
        assert_eq!(d.payload(), Some(&[][..]));
        assert_eq!(d.field(Field::PayloadLen), Some(0));
        let o = d.offsets();
        assert_eq!(o.payload, Some(o.payload_end));
    }

    #[test]
    fn describe_writes_one_line_per_header() {
        let frame = eth(
            0x0800,
            &ipv4(6, 0, 5, None, &tcp(0x02, 5, b"GET /\"x\"\n\x01")),
        );
        let lines = Decoded::new(&frame).describe();
        let expected = [
            ("eth", "02:00:00:00:00:01 -> 02:00:00:00:00:02 type 0x0800"),
            (
                "ip",
                "10.0.0.2 -> 192.168.1.3 proto 6 ttl 64 len 50 dscp 46",
            ),
            ("tcp", "49152 -> 80 flags [S]"),
            ("payload", "10 bytes \"GET /\\\"x\\\"\\n\\x01\""),
        ];
        let lines: Vec<(&str, &str)> = lines.iter().map(|(h, l)| (*h, l.as_str())).collect();
        assert_eq!(lines, expected);

        let frame = eth(0x0800, &ipv4(17, 0x2003, 5, None, &[]));
        let lines = Decoded::new(&frame).describe();
        assert!(lines[1].1.ends_with("fragment offset 24 +MF"), "{lines:?}");

        let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
        arp.extend_from_slice(&SRC);
        arp.extend_from_slice(&[10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 10, 0, 0, 3]);
        let lines = Decoded::new(&eth(0x0806, &arp)).describe();
        assert_eq!(
            lines[1],
            (
                "arp",
                "who-has 10.0.0.3 tell 10.0.0.2 (02:00:00:00:00:01)".into()
            )
        );
    }

    #[test]
    fn tcp_flags_are_written_as_tcpdump_does() {
        assert_eq!(tcp_flag_letters(0x02), "S");
        assert_eq!(tcp_flag_letters(0x12), "S.");
        assert_eq!(tcp_flag_letters(0x11), "F.");
        assert_eq!(tcp_flag_letters(0x18), "P.");
        assert_eq!(tcp_flag_letters(0x04), "R");
        assert_eq!(tcp_flag_letters(0), "none");
    }

    #[test]
    fn values_are_formatted_as_the_language_writes_them() {
        assert_eq!(format_value(FieldType::Ipv4, 0x0a00_0001), "10.0.0.1");
        assert_eq!(
            format_value(FieldType::Ipv6, 0x2001_0db8u128 << 96 | 1),
            "2001:db8::1"
        );
        assert_eq!(format_value(FieldType::Ipv6, 0), "::");
        assert_eq!(
            format_value(FieldType::Ipv6, 0x2001_0db8_0000_0000_0001_0000_0000_0001),
            "2001:db8::1:0:0:1",
            "the first of two equal zero runs is compressed"
        );
        assert_eq!(
            format_value(FieldType::Ipv6, 0x2001_0db8_0000_0001_0001_0001_0001_0001),
            "2001:db8:0:1:1:1:1:1",
            "a single zero group is not compressed"
        );
        assert_eq!(
            format_value(FieldType::Ipv6, 0xfe80u128 << 112 | 0xAB),
            "fe80::ab"
        );
        assert_eq!(
            format_value(FieldType::Mac, 0x0200_00aa_bbcc),
            "02:00:00:aa:bb:cc"
        );
        assert_eq!(format_value(FieldType::Uint(16), 443), "443");
        assert_eq!(format_value(FieldType::Uint(12), 0x1005), "5");
        assert_eq!(format_value(FieldType::Bool, 1), "true");
        assert_eq!(format_value(FieldType::Bool, 0), "false");
    }

    /// Well-formed frames of every kind, for mutation.
    fn templates() -> Vec<Vec<u8>> {
        let mut v6_chain = ext(60, 8);
        v6_chain.extend(fragment(6, 0, true));
        v6_chain.extend(tcp(0x12, 6, b"payload"));
        let mut tagged = eth(0x0800, &ipv4(17, 0, 6, None, &udp(b"u")));
        tagged.splice(12..12, [0x88, 0xa8, 0, 5, 0x81, 0, 0, 6]);
        vec![
            eth(
                0x0800,
                &ipv4(6, 0, 5, None, &tcp(0x02, 5, b"GET / HTTP/1.1")),
            ),
            eth(0x0800, &ipv4(1, 0, 5, None, &[8, 0, 0, 0, 0, 1, 0, 1])),
            eth(0x86dd, &ipv6(0, None, &v6_chain)),
            eth(0x86dd, &ipv6(58, None, &[128, 0, 0, 0, 0, 0, 0, 0])),
            eth(0x0806, &[0; 28]),
            tagged,
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Presence is consistent: a field has a value exactly when its header is present
        /// (`eth.type` may also be absent after a cut-off tag), values fit their types, and
        /// the payload and offsets stay inside the frame.
        #[test]
        fn decoding_is_total_and_consistent(
            template in 0usize..6,
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut frame = templates()[template].clone();
            for (at, byte) in flips {
                let i = at.index(frame.len());
                frame[i] ^= byte;
            }
            let frame = &frame[..cut.index(frame.len() + 1)];
            let d = Decoded::new(frame);
            for &field in Field::ALL {
                let value = d.field(field);
                let expected = d.header_present(field.header());
                if field == Field::EthType {
                    prop_assert!(value.is_none() || expected);
                } else {
                    prop_assert_eq!(value.is_some(), expected, "{}", field.name());
                }
                if let Some(v) = value {
                    prop_assert!(v <= field.ty().max_value(), "{} = {}", field.name(), v);
                }
            }
            prop_assert!(!d.has(Proto::Vlan) || d.has(Proto::Eth));
            let l3s = [Proto::Arp, Proto::Ip, Proto::Ip6].iter().filter(|&&p| d.has(p)).count();
            prop_assert!(l3s <= 1);
            let l4s = [Proto::Tcp, Proto::Udp, Proto::Icmp, Proto::Icmp6]
                .iter().filter(|&&p| d.has(p)).count();
            prop_assert!(l4s <= 1);
            prop_assert!(l4s == 0 || d.has(Proto::Ip) || d.has(Proto::Ip6));
            let o = d.offsets();
            prop_assert_eq!(d.payload().is_some(), d.has(Proto::Eth));
            if let (Some(p), Some(start)) = (d.payload(), o.payload) {
                prop_assert!(usize::from(o.payload_end) <= frame.len());
                prop_assert_eq!(p, &frame[usize::from(start)..usize::from(o.payload_end)]);
                prop_assert!(o.l4.is_none_or(|l4| l4 < start));
                prop_assert!(o.l3.is_none_or(|l3| l3 <= start));
            }
            let _ = d.describe();
        }

        #[test]
        fn random_bytes_never_panic(frame in prop::collection::vec(any::<u8>(), 0..128)) {
            let d = Decoded::new(&frame);
            for &field in Field::ALL {
                let _ = d.field(field);
            }
            let _ = (d.payload(), d.offsets(), d.describe());
        }
    }
}
