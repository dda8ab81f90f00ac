//! Which packet facts a classifier's verdict depends on, for an exact-match flow cache.
//!
//! A rule's verdict is a function of its atoms ([`crate::ir::Atom`]), and each header atom
//! reads one thing of the decoded frame: whether a header is present ([`Atom::Proto`]), one
//! field's value or absence ([`Atom::Field`]), or the input port ([`Atom::InPort`]).
//! [`FlowKeySpec::of`] collects those reads; two frames with equal [`FlowKeySpec::key`]s
//! get the same rule from every engine, so a cache keyed on it never changes a verdict.
//! A classifier that reads the payload (bytes, literals, regexes) has no such key: the
//! payload is not a header field, and caching it would cost what classifying does. The IR
//! has no stateful or random atom; one added later must make [`FlowKeySpec::of`] refuse.

use netvm_packet::{Decoded, Field, Proto};

use crate::ir::{Atom, Classifier};

/// The facts of a frame a header-only classifier reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowKeySpec {
    /// Headers whose presence an atom tests, in [`Proto::ALL`] order.
    pub protos: Vec<Proto>,
    /// Fields an atom reads (value, or absent), sorted.
    pub fields: Vec<Field>,
    /// Some rule tests the input port.
    pub in_port: bool,
}

/// The key of one frame: equal keys, equal verdicts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    /// Bit `i` set: `protos[i]` present.
    pub protos: u16,
    /// In `fields` order.
    pub fields: Vec<Option<u128>>,
    /// The input port, when the spec reads it (else 0).
    pub in_port: u32,
}

impl FlowKeySpec {
    /// The reads of `ir`, or `None` when its verdict depends on more than header fields
    /// (any payload atom), so that no exact-match cache may stand in front of it.
    pub fn of(ir: &Classifier) -> Option<FlowKeySpec> {
        let mut protos = Vec::new();
        let mut fields = Vec::new();
        let mut in_port = false;
        for atom in &ir.atoms {
            match atom {
                Atom::Proto(p) => protos.push(*p),
                Atom::Field { field, .. } => fields.push(*field),
                Atom::InPort { .. } => in_port = true,
                Atom::PayloadByte { .. }
                | Atom::Contains(_)
                | Atom::StartsWith(_)
                | Atom::Matches(_) => return None,
            }
        }
        protos.sort_unstable_by_key(|p| Proto::ALL.iter().position(|q| q == p));
        protos.dedup();
        fields.sort_unstable();
        fields.dedup();
        Some(FlowKeySpec {
            protos,
            fields,
            in_port,
        })
    }

    /// The key of `frame` received on `in_port`.
    pub fn key(&self, frame: &[u8], in_port: u32) -> FlowKey {
        let decoded = Decoded::new(frame);
        let mut protos = 0u16;
        for (i, p) in self.protos.iter().enumerate() {
            protos |= u16::from(decoded.has(*p)) << i;
        }
        FlowKey {
            protos,
            fields: self.fields.iter().map(|f| decoded.field(*f)).collect(),
            in_port: if self.in_port { in_port } else { 0 },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ir_of(src: &str) -> Classifier {
        let checked = netvm_lang::check_text("t.nvr", src);
        match checked.policy {
            Some(p) => crate::lower(&p),
            None => panic!("policy does not check: {src}"),
        }
    }

    #[test]
    fn a_header_policy_reads_its_fields_protocols_and_port() {
        let ir = ir_of(
            "port a\nport b\nrule r1 : in_port == a and tcp and tcp.dport == 80 => out b\n\
             rule r2 : ip.src in 10.0.0.0/8 => drop\ndefault => out a\n",
        );
        let spec = FlowKeySpec::of(&ir).expect("header-only");
        assert!(spec.in_port);
        assert!(spec.protos.contains(&Proto::Tcp));
        assert!(spec.fields.contains(&Field::TcpDport));
        assert!(spec.fields.contains(&Field::IpSrc));
        assert!(!spec.fields.contains(&Field::IpDst));
    }

    #[test]
    fn a_payload_policy_has_no_flow_key() {
        let ir =
            ir_of("port a\nrule r1 : tcp and payload contains \"GET\" => drop\ndefault => out a\n");
        assert_eq!(FlowKeySpec::of(&ir), None);
    }

    #[test]
    fn frames_differing_only_in_unread_bytes_share_a_key() {
        let ir = ir_of("port a\nrule r1 : ip.dst == 10.0.0.1 => drop\ndefault => out a\n");
        let spec = FlowKeySpec::of(&ir).unwrap();
        let frame = |src: u8, dst: u8| {
            let mut f = vec![0u8; 60];
            f[12..14].copy_from_slice(&[0x08, 0x00]);
            f[14] = 0x45;
            f[16..18].copy_from_slice(&[0, 46]);
            f[23] = 17;
            f[26..30].copy_from_slice(&[10, 0, 0, src]);
            f[30..34].copy_from_slice(&[10, 0, 0, dst]);
            f
        };
        assert_eq!(spec.key(&frame(1, 1), 0), spec.key(&frame(2, 1), 0));
        assert_ne!(spec.key(&frame(1, 1), 0), spec.key(&frame(1, 2), 0));
        // The port is not part of the key of a policy that never tests it.
        assert_eq!(spec.key(&frame(1, 1), 0), spec.key(&frame(1, 1), 7));
    }
}
