//! Frames built from a [`PacketSpec`] decode back to every field that was set, and no input,
//! however short or malformed, panics the decoder or makes it read outside the frame.

use netvm_packet::{BaseProto, Decoded, Field, FieldHeader, PacketSpec, Proto};
use proptest::prelude::*;

/// Fields whose value the builder writes as given (not structural overrides such as
/// `ip.proto` or `eth.type`, which change what follows).
fn settable(base: BaseProto, v6: bool, field: Field) -> bool {
    use Field::*;
    if matches!(
        field,
        IpProto | Ip6Nh | EthType | IpLen | PktLen | PayloadLen | L4Sport | L4Dport
    ) {
        return false;
    }
    match field.header() {
        FieldHeader::Frame | FieldHeader::Payload | FieldHeader::TcpOrUdp => false,
        FieldHeader::Proto(Proto::Eth | Proto::Vlan) => true,
        FieldHeader::Proto(Proto::Arp) => false,
        FieldHeader::Proto(Proto::Ip) => !v6 && !matches!(base, BaseProto::Eth | BaseProto::Arp),
        FieldHeader::Proto(Proto::Ip6) => v6,
        FieldHeader::Proto(Proto::Tcp) => base == BaseProto::Tcp,
        FieldHeader::Proto(Proto::Udp) => base == BaseProto::Udp,
        FieldHeader::Proto(Proto::Icmp) => base == BaseProto::Icmp,
        FieldHeader::Proto(Proto::Icmp6) => base == BaseProto::Icmp6,
    }
}

fn spec() -> impl Strategy<Value = PacketSpec> {
    let base = prop::sample::select(BaseProto::ALL.to_vec());
    let values = prop::collection::vec((0..Field::ALL.len(), any::<u128>()), 0..12);
    let payload = prop::option::of(prop::collection::vec(any::<u8>(), 0..64));
    (base, values, payload).prop_map(|(base, values, payload)| {
        let v6 = matches!(base, BaseProto::Ip6 | BaseProto::Icmp6);
        let mut spec = PacketSpec::new(base);
        for (i, raw) in values {
            let field = Field::ALL[i];
            if settable(base, v6, field) {
                let value = raw & field.ty().max_value();
                // Flag fields and tcp.flags overlap: keep the bits consistent.
                if !matches!(field, Field::TcpFlags)
                    || spec
                        .fields
                        .iter()
                        .all(|(f, _)| f.header() != field.header())
                {
                    spec.set(field, value);
                }
            }
        }
        spec.payload = payload;
        spec
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn built_frames_decode_to_the_fields_that_were_set(spec in spec()) {
        let frame = spec.build().expect("settable fields always build");
        let decoded = Decoded::new(&frame);
        let mut last: Vec<(Field, u128)> = Vec::new();
        for &(f, v) in &spec.fields {
            last.retain(|(g, _)| *g != f);
            last.push((f, v));
        }
        let flag_fields_set = last.iter().any(|(f, _)| f.name().starts_with("tcp.flags."));
        for (field, value) in last {
            if field == Field::TcpFlags && flag_fields_set {
                continue; // single flags applied after tcp.flags change it, by design
            }
            prop_assert_eq!(decoded.field(field), Some(value), "{} in {:?}", field.name(), frame);
        }
        // ARP is not skipped: the decoded payload of an ARP frame starts at its 28-byte header.
        let skip = if spec.base == BaseProto::Arp { 28 } else { 0 };
        let payload = decoded.payload().and_then(|p| p.get(skip..)).map(<[u8]>::to_vec);
        prop_assert_eq!(payload, Some(spec.payload.clone().unwrap_or_default()));
    }

    #[test]
    fn any_bytes_decode_without_panicking(frame in prop::collection::vec(any::<u8>(), 0..200)) {
        let decoded = Decoded::new(&frame);
        for &field in Field::ALL {
            let _ = decoded.field(field);
        }
        if let Some(p) = decoded.payload() {
            prop_assert!(p.len() <= frame.len());
        }
        let _ = decoded.describe();
        let _ = netvm_packet::hash::flow_hash(&decoded);
    }

    #[test]
    fn truncated_and_mutated_frames_decode_without_panicking(
        spec in spec(), cut in any::<prop::sample::Index>(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4)
    ) {
        let mut frame = spec.build().expect("builds");
        for (at, byte) in flips {
            let i = at.index(frame.len());
            frame[i] ^= byte;
        }
        let frame = &frame[..cut.index(frame.len() + 1)];
        let decoded = Decoded::new(frame);
        for &field in Field::ALL {
            let _ = decoded.field(field);
        }
        let _ = decoded.payload();
    }
}

#[test]
fn an_empty_frame_has_no_headers_and_no_payload() {
    let d = Decoded::new(&[]);
    for p in Proto::ALL {
        assert!(!d.has(p));
    }
    assert_eq!(d.field(Field::PktLen), Some(0));
    assert_eq!(d.payload(), None);
}

#[test]
fn l4_fields_are_absent_in_later_fragments() {
    let mut spec = PacketSpec::new(BaseProto::Tcp);
    spec.set(Field::IpFrag, 1);
    let mut frame = spec.build().expect("builds");
    assert_eq!(
        Decoded::new(&frame).field(Field::TcpDport),
        Some(80),
        "MF alone keeps L4"
    );
    frame[14 + 7] = 1; // fragment offset 1
    let d = Decoded::new(&frame);
    assert!(d.has(Proto::Ip) && !d.has(Proto::Tcp));
    assert_eq!(d.field(Field::L4Dport), None);
    assert_eq!(d.field(Field::IpFrag), Some(1));
}

#[test]
fn vlan_tags_are_skipped_and_the_outer_one_is_read() {
    let mut spec = PacketSpec::new(BaseProto::Udp);
    spec.set(Field::VlanId, 100).set(Field::VlanPcp, 5);
    let frame = spec.build().expect("builds");
    // Wrap a second (inner) tag inside: the outer tag's id is still what vlan.id reads.
    let mut double = frame[..16].to_vec();
    double.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
    double.extend_from_slice(&frame[16..]);
    let d = Decoded::new(&double);
    assert_eq!(d.field(Field::VlanId), Some(100));
    assert_eq!(d.field(Field::VlanPcp), Some(5));
    assert_eq!(d.field(Field::UdpDport), Some(53));
    // A third tag is not skipped: no IP.
    let mut triple = double[..16].to_vec();
    triple.extend_from_slice(&[0x81, 0x00, 0x00, 0x08]);
    triple.extend_from_slice(&double[16..]);
    assert!(!Decoded::new(&triple).has(Proto::Ip));
}

#[test]
fn ipv6_extension_headers_are_walked_to_the_transport_header() {
    let frame = PacketSpec::new(BaseProto::Ip6).build().expect("builds");
    let udp = {
        let mut s = PacketSpec::new(BaseProto::Udp);
        s.set(Field::Ip6Src, 1);
        s.build().expect("builds")
    };
    // Insert a hop-by-hop header (8 bytes) between the fixed header and UDP.
    let mut with_ext = udp[..54].to_vec();
    with_ext[14 + 6] = 0; // next header: hop-by-hop
    with_ext[14 + 5] += 8; // payload length grows by 8
    with_ext.extend_from_slice(&[17, 0, 0, 0, 0, 0, 0, 0]);
    with_ext.extend_from_slice(&udp[54..]);
    let d = Decoded::new(&with_ext);
    assert_eq!(
        d.field(Field::Ip6Nh),
        Some(0),
        "ip6.nh is the fixed header's"
    );
    assert_eq!(d.field(Field::UdpDport), Some(53));
    assert!(Decoded::new(&frame).has(Proto::Ip6));
}

#[test]
fn ethernet_padding_is_not_payload() {
    let mut spec = PacketSpec::new(BaseProto::Udp);
    spec.payload = Some(b"hi".to_vec());
    spec.set(Field::PktLen, 60);
    let frame = spec.build().expect("builds");
    assert_eq!(frame.len(), 60);
    assert_eq!(Decoded::new(&frame).payload(), Some(&b"hi"[..]));
}

#[test]
fn etherparse_agrees_with_the_builder() {
    let mut spec = PacketSpec::new(BaseProto::Tcp);
    spec.set(Field::IpSrc, 0x0102_0304)
        .set(Field::TcpDport, 443);
    spec.payload = Some(b"hello".to_vec());
    let frame = spec.build().expect("builds");
    let parsed = etherparse::SlicedPacket::from_ethernet(&frame).expect("etherparse parses it");
    match parsed.net {
        Some(etherparse::NetSlice::Ipv4(ip)) => {
            assert_eq!(ip.header().source(), [1, 2, 3, 4]);
            assert!(ip.header().header_checksum() != 0);
        }
        other => panic!("expected IPv4, got {other:?}"),
    }
    match parsed.transport {
        Some(etherparse::TransportSlice::Tcp(tcp)) => {
            assert_eq!(tcp.destination_port(), 443);
            assert!(tcp.syn() && !tcp.ack());
            let ip = etherparse::Ipv4HeaderSlice::from_slice(&frame[14..]).expect("ip");
            let expected = tcp
                .to_header()
                .calc_checksum_ipv4(&ip.to_header(), tcp.payload())
                .expect("sum");
            assert_eq!(tcp.checksum(), expected, "TCP checksum");
        }
        other => panic!("expected TCP, got {other:?}"),
    }
}
