//! The field catalogue of the `.nvr` language: every header field a predicate can read, its
//! spelling, its type, and the protocol header it lives in.
//!
//! This table is the single source of truth shared by the language (names and types for the
//! checker), the compiler (what the interpreter and the JIT extract) and the runtime (flow-hash
//! keys). Values of scalar fields are carried as `u128`: integers and booleans as themselves,
//! MAC addresses in the low 48 bits (first octet most significant), IPv4 addresses in the low
//! 32 bits and IPv6 addresses as the full 128 bits, both in network order as numbers.
//!
//! Fields that are not a fixed scalar of the frame (`in_port`, `payload`, `payload[N]`) are not
//! in this table: the language models them itself.

/// A protocol header whose presence a predicate can test (`tcp`, `ip6`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Eth,
    Vlan,
    Arp,
    Ip,
    Ip6,
    Tcp,
    Udp,
    Icmp,
    Icmp6,
}

impl Proto {
    pub const ALL: [Proto; 9] = [
        Proto::Eth,
        Proto::Vlan,
        Proto::Arp,
        Proto::Ip,
        Proto::Ip6,
        Proto::Tcp,
        Proto::Udp,
        Proto::Icmp,
        Proto::Icmp6,
    ];

    /// The keyword an operator writes.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Eth => "eth",
            Proto::Vlan => "vlan",
            Proto::Arp => "arp",
            Proto::Ip => "ip",
            Proto::Ip6 => "ip6",
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
            Proto::Icmp6 => "icmp6",
        }
    }

    pub fn from_name(name: &str) -> Option<Proto> {
        Proto::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// The type of a field's value, as the checker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldType {
    /// An unsigned integer of the given width in bits (`u3`, `u8`, `u16`, ...).
    Uint(u8),
    Bool,
    Mac,
    Ipv4,
    Ipv6,
}

impl FieldType {
    /// The largest value of the type, as carried in `u128`.
    pub fn max_value(self) -> u128 {
        match self {
            FieldType::Uint(bits) => (1u128 << bits) - 1,
            FieldType::Bool => 1,
            FieldType::Mac => (1u128 << 48) - 1,
            FieldType::Ipv4 => u32::MAX as u128,
            FieldType::Ipv6 => u128::MAX,
        }
    }

    /// Width of the value in bits.
    pub fn bits(self) -> u8 {
        match self {
            FieldType::Uint(bits) => bits,
            FieldType::Bool => 1,
            FieldType::Mac => 48,
            FieldType::Ipv4 => 32,
            FieldType::Ipv6 => 128,
        }
    }

    /// How the type is spelt in diagnostics.
    pub fn describe(self) -> String {
        match self {
            FieldType::Uint(bits) => format!("u{bits}"),
            FieldType::Bool => "bool".into(),
            FieldType::Mac => "mac".into(),
            FieldType::Ipv4 => "ipv4".into(),
            FieldType::Ipv6 => "ipv6".into(),
        }
    }
}

/// The header a field belongs to. A field is present exactly when its header is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldHeader {
    /// Always present (`pkt.len`).
    Frame,
    /// Present when this protocol header is.
    Proto(Proto),
    /// `l4.*`: present when a TCP or a UDP header is.
    TcpOrUdp,
    /// Present when the payload is (see `Decoded::payload`).
    Payload,
}

macro_rules! fields {
    ($( $variant:ident => $name:literal, $ty:expr, $hdr:expr; )*) => {
        /// A scalar header field of the spec's catalogue (plus `icmp6.type`/`icmp6.code`,
        /// netvm's documented extension).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Field { $( $variant, )* }

        impl Field {
            pub const ALL: &'static [Field] = &[ $( Field::$variant, )* ];

            /// The dotted name an operator writes (`tcp.dport`).
            pub fn name(self) -> &'static str {
                match self { $( Field::$variant => $name, )* }
            }

            pub fn ty(self) -> FieldType {
                match self { $( Field::$variant => $ty, )* }
            }

            pub fn header(self) -> FieldHeader {
                match self { $( Field::$variant => $hdr, )* }
            }
        }
    };
}

use FieldHeader as H;
use FieldType as T;

fields! {
    EthSrc => "eth.src", T::Mac, H::Proto(Proto::Eth);
    EthDst => "eth.dst", T::Mac, H::Proto(Proto::Eth);
    EthType => "eth.type", T::Uint(16), H::Proto(Proto::Eth);
    VlanId => "vlan.id", T::Uint(12), H::Proto(Proto::Vlan);
    VlanPcp => "vlan.pcp", T::Uint(3), H::Proto(Proto::Vlan);
    IpSrc => "ip.src", T::Ipv4, H::Proto(Proto::Ip);
    IpDst => "ip.dst", T::Ipv4, H::Proto(Proto::Ip);
    IpProto => "ip.proto", T::Uint(8), H::Proto(Proto::Ip);
    IpTtl => "ip.ttl", T::Uint(8), H::Proto(Proto::Ip);
    IpDscp => "ip.dscp", T::Uint(6), H::Proto(Proto::Ip);
    IpLen => "ip.len", T::Uint(16), H::Proto(Proto::Ip);
    IpFrag => "ip.frag", T::Bool, H::Proto(Proto::Ip);
    Ip6Src => "ip6.src", T::Ipv6, H::Proto(Proto::Ip6);
    Ip6Dst => "ip6.dst", T::Ipv6, H::Proto(Proto::Ip6);
    Ip6Nh => "ip6.nh", T::Uint(8), H::Proto(Proto::Ip6);
    Ip6Hlim => "ip6.hlim", T::Uint(8), H::Proto(Proto::Ip6);
    Ip6Flow => "ip6.flow", T::Uint(20), H::Proto(Proto::Ip6);
    TcpSport => "tcp.sport", T::Uint(16), H::Proto(Proto::Tcp);
    TcpDport => "tcp.dport", T::Uint(16), H::Proto(Proto::Tcp);
    TcpFlags => "tcp.flags", T::Uint(8), H::Proto(Proto::Tcp);
    TcpFlagFin => "tcp.flags.fin", T::Bool, H::Proto(Proto::Tcp);
    TcpFlagSyn => "tcp.flags.syn", T::Bool, H::Proto(Proto::Tcp);
    TcpFlagRst => "tcp.flags.rst", T::Bool, H::Proto(Proto::Tcp);
    TcpFlagPsh => "tcp.flags.psh", T::Bool, H::Proto(Proto::Tcp);
    TcpFlagAck => "tcp.flags.ack", T::Bool, H::Proto(Proto::Tcp);
    TcpFlagUrg => "tcp.flags.urg", T::Bool, H::Proto(Proto::Tcp);
    UdpSport => "udp.sport", T::Uint(16), H::Proto(Proto::Udp);
    UdpDport => "udp.dport", T::Uint(16), H::Proto(Proto::Udp);
    L4Sport => "l4.sport", T::Uint(16), H::TcpOrUdp;
    L4Dport => "l4.dport", T::Uint(16), H::TcpOrUdp;
    IcmpType => "icmp.type", T::Uint(8), H::Proto(Proto::Icmp);
    IcmpCode => "icmp.code", T::Uint(8), H::Proto(Proto::Icmp);
    Icmp6Type => "icmp6.type", T::Uint(8), H::Proto(Proto::Icmp6);
    Icmp6Code => "icmp6.code", T::Uint(8), H::Proto(Proto::Icmp6);
    PktLen => "pkt.len", T::Uint(16), H::Frame;
    PayloadLen => "payload.len", T::Uint(16), H::Payload;
}

impl Field {
    pub fn from_name(name: &str) -> Option<Field> {
        Field::ALL.iter().copied().find(|f| f.name() == name)
    }

    /// The single-flag fields `tcp.flags.*`.
    pub const TCP_FLAGS: [Field; 6] = [
        Field::TcpFlagFin,
        Field::TcpFlagSyn,
        Field::TcpFlagRst,
        Field::TcpFlagPsh,
        Field::TcpFlagAck,
        Field::TcpFlagUrg,
    ];

    /// For a `tcp.flags.*` field, its bit in the TCP flags byte (byte 13 of the header).
    pub fn tcp_flag_mask(self) -> Option<u8> {
        match self {
            Field::TcpFlagFin => Some(0x01),
            Field::TcpFlagSyn => Some(0x02),
            Field::TcpFlagRst => Some(0x04),
            Field::TcpFlagPsh => Some(0x08),
            Field::TcpFlagAck => Some(0x10),
            Field::TcpFlagUrg => Some(0x20),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_name_round_trips() {
        for &f in Field::ALL {
            assert_eq!(Field::from_name(f.name()), Some(f));
        }
        for p in Proto::ALL {
            assert_eq!(Proto::from_name(p.name()), Some(p));
        }
    }

    #[test]
    fn widths_bound_values() {
        assert_eq!(Field::VlanId.ty().max_value(), 4095);
        assert_eq!(Field::VlanPcp.ty().max_value(), 7);
        assert_eq!(Field::Ip6Flow.ty().max_value(), 0xFFFFF);
        assert_eq!(Field::Ip6Src.ty().max_value(), u128::MAX);
    }
}
