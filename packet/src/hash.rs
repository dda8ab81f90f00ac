//! Flow hashing for `balance`: the Toeplitz hash that NICs use for receive-side scaling (RSS).
//!
//! - [`Toeplitz`] is the hash itself, over any 40-byte key, checked against the Microsoft RSS
//!   verification vectors.
//! - [`flow_hash`] is `balance G by flow` (the default): the Toeplitz hash with the symmetric
//!   key (`0x6d5a` repeated, Woo and Park, "Scalable TCP Session Monitoring with Symmetric
//!   Receive-side Scaling") over (source address, destination address, source port,
//!   destination port) for TCP and UDP over IPv4 or IPv6, the address pair alone for other
//!   IP traffic and for IP fragments (first or later, so every fragment of a datagram goes
//!   where the others go), and the MAC pair for non-IP frames; 0 for a frame too short for
//!   Ethernet.
//! - [`fields_hash`] is `balance G by (FIELD, ...)`: the Toeplitz hash with the standard
//!   Microsoft key over the chosen values, each as a presence byte and 16 value bytes.
//!
//! Why `flow_hash` is symmetric: Toeplitz is linear, each input bit at position `i` XORs in
//! the 32 key bits starting at `i`, and with a key whose bits repeat every 16 those depend only
//! on `i mod 16`. Source and destination (32, 128 or 48 bits each, adjacent) and the two 16-bit
//! ports sit a multiple of 16 bits apart, so swapping them changes no bit's contribution. The
//! price, inherent to symmetric RSS, is that the hash is a linear function of the XOR of the
//! input's 16-bit words: at most 2^16 distinct values, plenty to spread flows over a group of
//! VMs but not a flow identifier. `fields_hash` needs no symmetry, so it uses the full key.
//!
//! This module does not pick the VM; callers reduce the hash to a group member.

use crate::decode::Decoded;
use crate::field::{Field, Proto};

/// A Toeplitz hash with a 40-byte key (RSS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Toeplitz {
    key: [u8; 40],
}

/// The key of Microsoft's RSS verification suite (and many NICs' default).
pub const MICROSOFT_KEY: [u8; 40] = [
    0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0,
    0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c,
    0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
];

/// The symmetric key: `0x6d5a` repeated.
pub const SYMMETRIC_KEY: [u8; 40] = {
    let mut key = [0u8; 40];
    let mut i = 0;
    while i < 40 {
        key[i] = if i % 2 == 0 { 0x6d } else { 0x5a };
        i += 1;
    }
    key
};

impl Toeplitz {
    pub const fn new(key: [u8; 40]) -> Toeplitz {
        Toeplitz { key }
    }

    pub fn key(&self) -> &[u8; 40] {
        &self.key
    }

    /// The hash of `input`: for each set bit `i` (most significant bit of each byte first),
    /// XOR in key bits `i .. i + 32`. The key covers 36 input bytes (IPv6 addresses and
    /// ports); longer inputs wrap around it.
    pub fn hash(&self, input: &[u8]) -> u32 {
        // Invariant: before input byte `j`, `window` holds key bits 8j .. 8j + 64.
        let mut window = u64::from_be_bytes([
            self.key[0],
            self.key[1],
            self.key[2],
            self.key[3],
            self.key[4],
            self.key[5],
            self.key[6],
            self.key[7],
        ]);
        let mut result = 0u32;
        for (j, &byte) in input.iter().enumerate() {
            for bit in 0..8 {
                if byte & (0x80 >> bit) != 0 {
                    result ^= (window >> 32) as u32;
                }
                window <<= 1;
            }
            window |= u64::from(self.key[(j + 8) % 40]);
        }
        result
    }
}

const SYMMETRIC: Toeplitz = Toeplitz::new(SYMMETRIC_KEY);
const STANDARD: Toeplitz = Toeplitz::new(MICROSOFT_KEY);

/// The largest flow-hash input: two IPv6 addresses and two ports.
const MAX_FLOW_INPUT: usize = 16 + 16 + 2 + 2;

/// The symmetric flow hash of a frame (see the module doc): both directions of a connection
/// hash alike.
pub fn flow_hash(d: &Decoded) -> u32 {
    let mut input = [0u8; MAX_FLOW_INPUT];
    let mut len = 0;
    let mut push = |value: u128, bytes: usize| {
        if let (Some(dst), Some(src)) = (
            input.get_mut(len..len + bytes),
            value.to_be_bytes().get(16 - bytes..),
        ) {
            dst.copy_from_slice(src);
            len += bytes;
        }
    };
    let (src, dst, bytes) = if d.has(Proto::Ip) {
        (Field::IpSrc, Field::IpDst, 4)
    } else if d.has(Proto::Ip6) {
        (Field::Ip6Src, Field::Ip6Dst, 16)
    } else {
        (Field::EthSrc, Field::EthDst, 6)
    };
    let (Some(src), Some(dst)) = (d.field(src), d.field(dst)) else {
        return 0;
    };
    push(src, bytes);
    push(dst, bytes);
    if !d.is_fragment() {
        if let (Some(sport), Some(dport)) = (d.field(Field::L4Sport), d.field(Field::L4Dport)) {
            push(sport, 2);
            push(dport, 2);
        }
    }
    SYMMETRIC.hash(&input[..len])
}

/// The hash of chosen field values, in order (`balance g by (ip.src, tcp.dport)`): each value
/// as a presence byte (1) and its 16 bytes, an absent one as a single 0 byte, so an absent
/// field never hashes like a present 0. Not symmetric: the operator chose the fields.
pub fn fields_hash(values: &[Option<u128>]) -> u32 {
    let mut input = Vec::with_capacity(values.len() * 17);
    for v in values {
        match v {
            Some(v) => {
                input.push(1);
                input.extend_from_slice(&v.to_be_bytes());
            }
            None => input.push(0),
        }
    }
    STANDARD.hash(&input)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::{BaseProto, PacketSpec};
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// One vector of the RSS specification: the hash of the address pair, then with ports.
    fn check_rss_vector(
        t: &Toeplitz,
        src: (&[u8], u16),
        dst: (&[u8], u16),
        with_ports: u32,
        without: u32,
    ) {
        let mut input = Vec::new();
        input.extend_from_slice(src.0);
        input.extend_from_slice(dst.0);
        assert_eq!(t.hash(&input), without, "{src:?} -> {dst:?}");
        input.extend_from_slice(&src.1.to_be_bytes());
        input.extend_from_slice(&dst.1.to_be_bytes());
        assert_eq!(t.hash(&input), with_ports, "{src:?} -> {dst:?} with ports");
    }

    /// The bit-by-bit definition, to check the windowed implementation against.
    fn reference(key: &[u8; 40], input: &[u8]) -> u32 {
        let key_bit = |i: usize| u32::from(key[(i / 8) % 40] >> (7 - i % 8) & 1);
        let mut result = 0;
        for i in 0..input.len() * 8 {
            if input[i / 8] >> (7 - i % 8) & 1 == 1 {
                result ^= (0..32).fold(0u32, |acc, k| acc << 1 | key_bit(i + k));
            }
        }
        result
    }

    #[test]
    fn the_symmetric_key_is_6d5a_repeated() {
        assert!(SYMMETRIC_KEY.chunks(2).all(|c| c == [0x6d, 0x5a]));
    }

    #[test]
    fn microsoft_rss_verification_vectors_ipv4() {
        let t = Toeplitz::new(MICROSOFT_KEY);
        // (source, source port, destination, destination port, hash with ports, without),
        // from "Verifying the RSS Hash Calculation" (Microsoft RSS documentation).
        let cases = [
            (
                "66.9.149.187",
                2794,
                "161.142.100.80",
                1766,
                0x51ccc178,
                0x323e8fc2,
            ),
            (
                "199.92.111.2",
                14230,
                "65.69.140.83",
                4739,
                0xc626b0ea,
                0xd718262a,
            ),
            (
                "24.19.198.95",
                12898,
                "12.22.207.184",
                38024,
                0x5c2b394a,
                0xd2d0a5de,
            ),
            (
                "38.27.205.30",
                48228,
                "209.142.163.6",
                2217,
                0xafc7327f,
                0x82989176,
            ),
            (
                "153.39.163.191",
                44251,
                "202.188.127.2",
                1303,
                0x10e828a2,
                0x5d1809c5,
            ),
        ];
        for (src, sport, dst, dport, with_ports, without) in cases {
            let src: Ipv4Addr = src.parse().expect("address");
            let dst: Ipv4Addr = dst.parse().expect("address");
            check_rss_vector(
                &t,
                (&src.octets(), sport),
                (&dst.octets(), dport),
                with_ports,
                without,
            );
        }
    }

    #[test]
    fn microsoft_rss_verification_vectors_ipv6() {
        let t = Toeplitz::new(MICROSOFT_KEY);
        let cases = [
            (
                "3ffe:2501:200:1fff::7",
                2794,
                "3ffe:2501:200:3::1",
                1766,
                0x40207d3d,
                0x2cc18cd5,
            ),
            (
                "3ffe:501:8::260:97ff:fe40:efab",
                14230,
                "ff02::1",
                4739,
                0xdde51bbf,
                0x0f0c461c,
            ),
            (
                "3ffe:1900:4545:3:200:f8ff:fe21:67cf",
                44251,
                "fe80::200:f8ff:fe21:67cf",
                38024,
                0x02d1feef,
                0x4b61e985,
            ),
        ];
        for (src, sport, dst, dport, with_ports, without) in cases {
            let src: Ipv6Addr = src.parse().expect("address");
            let dst: Ipv6Addr = dst.parse().expect("address");
            check_rss_vector(
                &t,
                (&src.octets(), sport),
                (&dst.octets(), dport),
                with_ports,
                without,
            );
        }
    }

    fn frame(base: BaseProto, v6: bool, src: u128, dst: u128, sport: u128, dport: u128) -> Vec<u8> {
        let mut spec = PacketSpec::new(base);
        let (s, d) = if v6 {
            (Field::Ip6Src, Field::Ip6Dst)
        } else {
            (Field::IpSrc, Field::IpDst)
        };
        spec.set(s, src).set(d, dst);
        if matches!(base, BaseProto::Tcp | BaseProto::Udp) {
            spec.set(Field::L4Sport, sport).set(Field::L4Dport, dport);
        }
        spec.build().expect("builds")
    }

    fn hash_of(frame: &[u8]) -> u32 {
        flow_hash(&Decoded::new(frame))
    }

    #[test]
    fn both_directions_of_a_connection_hash_alike() {
        for base in [
            BaseProto::Tcp,
            BaseProto::Udp,
            BaseProto::Ip,
            BaseProto::Icmp,
        ] {
            for v6 in [false, true] {
                if base == BaseProto::Icmp && v6 {
                    continue;
                }
                let a = frame(base, v6, 0x0a00_0001, 0xc0a8_0102, 40000, 443);
                let b = frame(base, v6, 0xc0a8_0102, 0x0a00_0001, 443, 40000);
                assert_eq!(hash_of(&a), hash_of(&b), "{} v6={v6}", base.name());
            }
        }
    }

    #[test]
    fn ports_and_addresses_change_the_hash() {
        for v6 in [false, true] {
            let a = frame(BaseProto::Tcp, v6, 0x0a00_0001, 0xc0a8_0102, 40000, 443);
            let other_port = frame(BaseProto::Tcp, v6, 0x0a00_0001, 0xc0a8_0102, 40001, 443);
            let other_host = frame(BaseProto::Tcp, v6, 0x0a00_0009, 0xc0a8_0102, 40000, 443);
            assert_ne!(hash_of(&a), hash_of(&other_port));
            assert_ne!(hash_of(&a), hash_of(&other_host));
        }
    }

    #[test]
    fn the_flow_hash_is_the_symmetric_toeplitz_of_the_tuple() {
        let f = frame(BaseProto::Udp, false, 0x0102_0304, 0x0506_0708, 1000, 53);
        let input = [1, 2, 3, 4, 5, 6, 7, 8, 0x03, 0xe8, 0, 53];
        assert_eq!(hash_of(&f), Toeplitz::new(SYMMETRIC_KEY).hash(&input));
        let ip_only = frame(BaseProto::Ip, false, 0x0102_0304, 0x0506_0708, 0, 0);
        assert_eq!(
            hash_of(&ip_only),
            Toeplitz::new(SYMMETRIC_KEY).hash(&input[..8])
        );
    }

    #[test]
    fn fragments_hash_by_addresses_only() {
        let mut spec = PacketSpec::new(BaseProto::Udp);
        spec.set(Field::IpFrag, 1);
        let first = spec.build().expect("builds");
        let ip_only = PacketSpec::new(BaseProto::Ip).build().expect("builds");
        assert_eq!(hash_of(&first), hash_of(&ip_only));
        let mut later = first.clone();
        later[14 + 7] = 0x10; // offset 16 bytes, no MF
        later[14 + 6] = 0;
        assert_eq!(hash_of(&later), hash_of(&ip_only));
        let whole = PacketSpec::new(BaseProto::Udp).build().expect("builds");
        assert_ne!(hash_of(&whole), hash_of(&ip_only));
    }

    #[test]
    fn non_ip_frames_hash_by_mac_pair_symmetrically() {
        let mut a = PacketSpec::new(BaseProto::Arp);
        a.set(Field::EthSrc, 0x02_00_00_00_00_0a)
            .set(Field::EthDst, 0x02_00_00_00_00_0b);
        let mut b = PacketSpec::new(BaseProto::Eth);
        b.set(Field::EthSrc, 0x02_00_00_00_00_0b)
            .set(Field::EthDst, 0x02_00_00_00_00_0a);
        let (a, b) = (a.build().expect("builds"), b.build().expect("builds"));
        assert_eq!(hash_of(&a), hash_of(&b));
        assert_ne!(hash_of(&a), 0);
    }

    #[test]
    fn frames_without_ethernet_hash_to_zero() {
        assert_eq!(hash_of(&[]), 0);
        assert_eq!(hash_of(&[1, 2, 3]), 0);
    }

    #[test]
    fn absent_fields_hash_differently_from_zero() {
        assert_ne!(fields_hash(&[None]), fields_hash(&[Some(0)]));
        assert_ne!(fields_hash(&[None, Some(1)]), fields_hash(&[Some(1), None]));
        assert_ne!(
            fields_hash(&[Some(1), Some(2)]),
            fields_hash(&[Some(2), Some(1)])
        );
        assert_eq!(fields_hash(&[]), 0);
    }

    #[test]
    fn fields_hash_uses_every_bit_of_an_address() {
        // With a 16-bit-periodic key these would collide (swapped 16-bit halves).
        assert_ne!(
            fields_hash(&[Some(0x0001_0002)]),
            fields_hash(&[Some(0x0002_0001)])
        );
    }

    proptest! {
        #[test]
        fn windowed_hash_matches_the_definition(
            key in prop::array::uniform32(any::<u8>()),
            tail in prop::array::uniform8(any::<u8>()),
            input in prop::collection::vec(any::<u8>(), 0..60),
        ) {
            let mut full = [0u8; 40];
            full[..32].copy_from_slice(&key);
            full[32..].copy_from_slice(&tail);
            prop_assert_eq!(Toeplitz::new(full).hash(&input), reference(&full, &input));
        }

        #[test]
        fn flow_hash_is_symmetric(
            v6 in any::<bool>(),
            udp in any::<bool>(),
            src in any::<u128>(),
            dst in any::<u128>(),
            sport in any::<u16>(),
            dport in any::<u16>(),
        ) {
            let base = if udp { BaseProto::Udp } else { BaseProto::Tcp };
            let (src, dst) = if v6 { (src, dst) } else { (src & 0xffff_ffff, dst & 0xffff_ffff) };
            let (sport, dport) = (u128::from(sport), u128::from(dport));
            let a = frame(base, v6, src, dst, sport, dport);
            let b = frame(base, v6, dst, src, dport, sport);
            prop_assert_eq!(hash_of(&a), hash_of(&b));
        }

        #[test]
        fn any_frame_hashes_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..120)) {
            let _ = hash_of(&bytes);
        }
    }
}
