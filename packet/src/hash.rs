//! Flow hashing for `balance`: the Toeplitz hash that NICs use for RSS, with the symmetric key
//! (`0x6d5a` repeated), so that both directions of a connection hash alike and reach the same
//! VM of a group.
//!
//! With a key whose bits repeat every 16, swapping the source and destination address (each a
//! multiple of 16 bits, at the same distance apart) or port leaves the hash unchanged.

use crate::decode::Decoded;
use crate::field::{Field, Proto};

/// A Toeplitz hash with a 40-byte key.
#[derive(Clone, Debug)]
pub struct Toeplitz {
    key: [u8; 40],
}

/// Microsoft's RSS verification key (from the RSS specification).
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

    /// The hash of `input`. Inputs longer than 36 bytes wrap around the key.
    pub fn hash(&self, input: &[u8]) -> u32 {
        let key_bit = |i: usize| (self.key[(i / 8) % 40] >> (7 - i % 8)) & 1;
        let mut window = u32::from_be_bytes([self.key[0], self.key[1], self.key[2], self.key[3]]);
        let mut result = 0u32;
        for (byte_index, byte) in input.iter().enumerate() {
            for bit in 0..8 {
                if byte & (0x80 >> bit) != 0 {
                    result ^= window;
                }
                window = window << 1 | u32::from(key_bit(32 + byte_index * 8 + bit));
            }
        }
        result
    }
}

const SYMMETRIC: Toeplitz = Toeplitz::new(SYMMETRIC_KEY);

/// The symmetric flow hash of a frame: addresses and ports for TCP/UDP over IPv4 or IPv6, the
/// address pair for other IP traffic, the MAC pair otherwise (0 for a frame with no header).
pub fn flow_hash(d: &Decoded) -> u32 {
    let mut input = [0u8; 36];
    let mut len = 0;
    let mut push = |value: u128, bytes: usize| {
        input[len..len + bytes].copy_from_slice(&value.to_be_bytes()[16 - bytes..]);
        len += bytes;
    };
    let pair = if d.has(Proto::Ip) {
        Some((Field::IpSrc, Field::IpDst, 4))
    } else if d.has(Proto::Ip6) {
        Some((Field::Ip6Src, Field::Ip6Dst, 16))
    } else {
        None
    };
    match pair {
        Some((src, dst, bytes)) => {
            push(d.field(src).unwrap_or(0), bytes);
            push(d.field(dst).unwrap_or(0), bytes);
            if let (Some(sport), Some(dport)) = (d.field(Field::L4Sport), d.field(Field::L4Dport)) {
                push(sport, 2);
                push(dport, 2);
            }
        }
        None => {
            // MACs are 48 bits: pad each to 64 so the pair stays 16-bit aligned and symmetric.
            match (d.field(Field::EthSrc), d.field(Field::EthDst)) {
                (Some(src), Some(dst)) => {
                    push(src, 8);
                    push(dst, 8);
                }
                _ => return 0,
            }
        }
    }
    SYMMETRIC.hash(&input[..len])
}

/// The hash of chosen field values (`balance g by (ip.src, tcp.dport)`): each value as 16
/// bytes, an absent one as a distinct marker. Not symmetric, by design: the operator chose
/// the fields.
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
    SYMMETRIC.hash(&input)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::{BaseProto, PacketSpec};

    #[test]
    fn microsoft_rss_verification_vectors() {
        let t = Toeplitz::new(MICROSOFT_KEY);
        // (src, dst, sport, dport, hash with ports, hash without) from the RSS specification.
        type Vector = ([u8; 4], [u8; 4], u16, u16, u32, u32);
        let cases: [Vector; 3] = [
            (
                [66, 9, 149, 187],
                [161, 142, 100, 80],
                2794,
                1766,
                0x51ccc178,
                0x323e8fc2,
            ),
            (
                [199, 92, 111, 2],
                [65, 69, 140, 83],
                14230,
                4739,
                0xc626b0ea,
                0xd718262a,
            ),
            (
                [24, 19, 198, 95],
                [12, 22, 207, 184],
                12898,
                38024,
                0x5c2b394a,
                0xd2d0a5de,
            ),
        ];
        for (src, dst, sport, dport, with_ports, without) in cases {
            let mut input = Vec::new();
            input.extend_from_slice(&src);
            input.extend_from_slice(&dst);
            assert_eq!(t.hash(&input), without);
            input.extend_from_slice(&sport.to_be_bytes());
            input.extend_from_slice(&dport.to_be_bytes());
            assert_eq!(t.hash(&input), with_ports);
        }
    }

    fn tcp(src: u128, dst: u128, sport: u128, dport: u128, v6: bool) -> Vec<u8> {
        let mut spec = PacketSpec::new(BaseProto::Tcp);
        let (s, d) = if v6 {
            (Field::Ip6Src, Field::Ip6Dst)
        } else {
            (Field::IpSrc, Field::IpDst)
        };
        spec.set(s, src).set(d, dst);
        spec.set(Field::TcpSport, sport).set(Field::TcpDport, dport);
        spec.build().expect("builds")
    }

    #[test]
    fn both_directions_of_a_connection_hash_alike() {
        for v6 in [false, true] {
            let a = tcp(0x0a00_0001, 0xc0a8_0102, 40000, 443, v6);
            let b = tcp(0xc0a8_0102, 0x0a00_0001, 443, 40000, v6);
            let other = tcp(0x0a00_0001, 0xc0a8_0102, 40001, 443, v6);
            let (ha, hb) = (flow_hash(&Decoded::new(&a)), flow_hash(&Decoded::new(&b)));
            assert_eq!(ha, hb);
            assert_ne!(ha, flow_hash(&Decoded::new(&other)));
        }
    }

    #[test]
    fn frames_without_headers_hash_to_zero() {
        assert_eq!(flow_hash(&Decoded::new(&[])), 0);
        assert_eq!(flow_hash(&Decoded::new(&[1, 2, 3])), 0);
    }

    #[test]
    fn absent_fields_hash_differently_from_zero() {
        assert_ne!(fields_hash(&[None]), fields_hash(&[Some(0)]));
    }
}
