//! A header-only policy as OpenFlow flows (`netvm export openflow`): text for
//! `ovs-ofctl add-flows`, one table, first match by priority.
//!
//! How a policy becomes flows:
//! - Each rule's predicate (the lowered IR, [`crate::lower`]) is put in disjunctive normal
//!   form. Every atom becomes a set of alternative OpenFlow matches, each carrying its
//!   prerequisites (`ip.src in 10.0.0.0/8` is `dl_type=0x0800,nw_src=10.0.0.0/255.0.0.0`;
//!   `tcp` is `dl_type=0x0800` or `0x86dd`, `nw_proto=6`, `ip_frag=not_later`, because
//!   netvm decodes L4 only in a first fragment). Ranges become value/mask pairs (a port range
//!   `1000..1999` is 7 of them); fields OpenFlow matches only exactly (`dl_type`,
//!   `nw_proto`, `nw_ttl`, `ip_dscp`, `icmp_type`, ...) are enumerated, up to
//!   [`MAX_ENUMERATED`] values.
//! - `not` is pushed down to the atoms. A negated field becomes "its header is absent, or
//!   the value lies in the complement"; a negated `vlan` is `vlan_tci=0/0x1000`; a negated
//!   `in_port` the other declared ports. What is left — a protocol that must be absent
//!   (`not tcp`, `not ip`) — has no OpenFlow match, so it is written as *shadow* flows: for
//!   `m and not P`, the packets of `m and P` are given, at higher priority, the flows of the
//!   rules after this one restricted to `m and P` (their own actions), and then `m` gets the
//!   rule's action. The first-match order is kept exactly; only the flow count grows, and an
//!   export over [`MAX_FLOWS`] is refused naming the rule.
//! - Priorities descend in rule order: the flows of rule N lie above those of every later
//!   rule (shadow flows, which carry a later rule's action, sit above the rule that needs
//!   them); the default is priority 0 with an empty match. Each flow's cookie is its rule's
//!   number from 1 (the default: `0xffff`), so `ovs-appctl ofproto/trace` and
//!   `ovs-ofctl dump-flows` show which rule a packet hit.
//! - Actions: `drop` is `drop`; `out PORT` is `output:N`, plus a flow above it with
//!   `in_port=N` and action `in_port`, because OpenFlow's `output` never sends a packet back
//!   out the port it came in on while netvm's `out` does. Ports get OpenFlow numbers in
//!   declaration order (1, 2, ...) unless given.
//! - **Fragments**: the bridge must run with `ovs-ofctl set-frags BRIDGE nx-match`, where
//!   TCP/UDP/ICMP fields are read in a first fragment and are zero in later ones — netvm's
//!   rule. Open vSwitch's default, `normal`, zeroes them in every fragment, so a rule on
//!   `tcp.dport` would miss first fragments that netvm matches. The export's first line says
//!   so.
//! - Refused, naming the rule: payload tests, `pkt.len`, `payload.len`, `ip.len` and
//!   `ip6.nh` (OpenFlow has no such match, or its `nw_proto` is the protocol after the
//!   extension headers), and every action but `drop` and `out` (VMs, chains, balancing,
//!   mirrors, counters).
//!
//! Where the two switches still differ, for frames netvm's decoder and Open vSwitch's parser
//! read differently: frames shorter than 14 bytes; two VLAN tags (OVS parses one by
//! default, netvm two); an `eth.type` below 0x600 (OVS reads 802.3 frames as `0x05ff`);
//! broken IP headers (a bad version or IHL is "no IPv4 header" to netvm and still
//! `dl_type=0x0800` to OVS); truncated L4 headers; IPv6 extension header chains longer than
//! netvm walks. Well-formed Ethernet, 802.1Q, ARP, IPv4 and IPv6 frames with TCP, UDP, ICMP
//! and ICMPv6 classify alike (the differential test against `ovs-appctl ofproto/trace`,
//! `compiler/tests/openflow_ovs.rs`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use netvm_lang::interval::IntervalSet;
use netvm_lang::policy::{Fate, Policy};
use netvm_packet::{Field, Proto};

use crate::ir::{Atom, Classifier, Expr};

/// The most flows one export may have (Open vSwitch takes more, but a policy that needs this
/// many is better run as it is).
pub const MAX_FLOWS: usize = 200_000;
/// The most values an exact-only OpenFlow field is enumerated into for one range set.
pub const MAX_ENUMERATED: usize = 4096;
/// Up to this many flows, a flow that an earlier one covers is left out.
const SUBSUMPTION_CHECK: usize = 4096;
/// The cookie of the default's flow.
pub const DEFAULT_COOKIE: u64 = 0xffff;

/// Why a policy cannot be exported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", rule.as_ref().map(|r| format!("rule `{r}`: ")).unwrap_or_default())]
pub struct ExportError {
    /// The rule at fault (`None`: the default, or the policy as a whole).
    pub rule: Option<String>,
    pub message: String,
}

/// An OpenFlow match field, in the order `ovs-ofctl` wants prerequisites written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Of {
    DlSrc,
    DlDst,
    VlanTci,
    DlType,
    NwSrc,
    NwDst,
    Ipv6Src,
    Ipv6Dst,
    Ipv6Label,
    NwProto,
    NwTtl,
    IpDscp,
    IpFrag,
    TcpSrc,
    TcpDst,
    TcpFlags,
    UdpSrc,
    UdpDst,
    IcmpType,
    IcmpCode,
    Icmpv6Type,
    Icmpv6Code,
}

impl Of {
    fn name(self) -> &'static str {
        match self {
            Of::DlSrc => "dl_src",
            Of::DlDst => "dl_dst",
            Of::VlanTci => "vlan_tci",
            Of::DlType => "dl_type",
            Of::NwSrc => "nw_src",
            Of::NwDst => "nw_dst",
            Of::Ipv6Src => "ipv6_src",
            Of::Ipv6Dst => "ipv6_dst",
            Of::Ipv6Label => "ipv6_label",
            Of::NwProto => "nw_proto",
            Of::NwTtl => "nw_ttl",
            Of::IpDscp => "ip_dscp",
            Of::IpFrag => "ip_frag",
            Of::TcpSrc => "tcp_src",
            Of::TcpDst => "tcp_dst",
            Of::TcpFlags => "tcp_flags",
            Of::UdpSrc => "udp_src",
            Of::UdpDst => "udp_dst",
            Of::IcmpType => "icmp_type",
            Of::IcmpCode => "icmp_code",
            Of::Icmpv6Type => "icmpv6_type",
            Of::Icmpv6Code => "icmpv6_code",
        }
    }

    fn bits(self) -> u32 {
        match self {
            Of::DlSrc | Of::DlDst => 48,
            Of::VlanTci | Of::DlType | Of::TcpSrc | Of::TcpDst | Of::UdpSrc | Of::UdpDst => 16,
            Of::TcpFlags => 12,
            Of::NwSrc | Of::NwDst => 32,
            Of::Ipv6Src | Of::Ipv6Dst => 128,
            Of::Ipv6Label => 20,
            Of::NwProto | Of::NwTtl | Of::IcmpType | Of::IcmpCode => 8,
            Of::Icmpv6Type | Of::Icmpv6Code => 8,
            Of::IpDscp => 6,
            Of::IpFrag => 2,
        }
    }

    fn full(self) -> u128 {
        width_mask(self.bits())
    }

    /// Whether OpenFlow takes an arbitrary mask for the field (otherwise exact or absent).
    fn maskable(self) -> bool {
        !matches!(
            self,
            Of::DlType
                | Of::NwProto
                | Of::NwTtl
                | Of::IpDscp
                | Of::IcmpType
                | Of::IcmpCode
                | Of::Icmpv6Type
                | Of::Icmpv6Code
        )
    }
}

fn width_mask(bits: u32) -> u128 {
    if bits >= 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    }
}

/// `ip_frag` bits as Open vSwitch defines them.
const FRAG_ANY: u128 = 1;
const FRAG_LATER: u128 = 2;
const VLAN_CFI: u128 = 0x1000;
const ETH_IP: u128 = 0x0800;
const ETH_ARP: u128 = 0x0806;
const ETH_IP6: u128 = 0x86dd;

/// One OpenFlow match: an optional input port (a policy port index) and masked fields.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
struct Match {
    in_port: Option<usize>,
    /// field → (value, mask), value within mask, mask non-zero.
    fields: BTreeMap<Of, (u128, u128)>,
}

impl Match {
    fn with(mut self, field: Of, value: u128, mask: u128) -> Option<Match> {
        let one = Match {
            in_port: None,
            fields: BTreeMap::from([(field, (value & mask, mask))]),
        };
        self = self.merge(&one)?;
        Some(self)
    }

    fn dl_type(t: u128) -> Match {
        Match {
            in_port: None,
            fields: BTreeMap::from([(Of::DlType, (t, 0xffff))]),
        }
    }

    /// The packets both match, or `None` when no packet can.
    fn merge(&self, other: &Match) -> Option<Match> {
        let in_port = match (self.in_port, other.in_port) {
            (Some(a), Some(b)) if a != b => return None,
            (a, b) => a.or(b),
        };
        let mut fields = self.fields.clone();
        for (&f, &(v, m)) in &other.fields {
            let entry = fields.entry(f).or_insert((0, 0));
            let common = entry.1 & m;
            if (entry.0 ^ v) & common != 0 {
                return None;
            }
            *entry = (entry.0 | v, entry.1 | m);
        }
        // A later fragment is always a fragment: `later` without `any` matches nothing.
        if let Some(&(v, m)) = fields.get(&Of::IpFrag) {
            if v & FRAG_LATER != 0 && m & FRAG_ANY != 0 && v & FRAG_ANY == 0 {
                return None;
            }
        }
        Some(Match { in_port, fields })
    }

    /// Whether every packet this matches is matched by `other`.
    fn within(&self, other: &Match) -> bool {
        if other.in_port.is_some() && other.in_port != self.in_port {
            return false;
        }
        other.fields.iter().all(|(f, &(v, m))| {
            self.fields
                .get(f)
                .is_some_and(|&(sv, sm)| sm & m == m && (sv ^ v) & m == 0)
        })
    }

    fn text(&self, ports: &[u32]) -> String {
        let mut parts = Vec::new();
        if let Some(p) = self.in_port {
            parts.push(format!("in_port={}", ports[p]));
        }
        for (&f, &(v, m)) in &self.fields {
            parts.push(format!("{}={}", f.name(), field_text(f, v, m)));
        }
        parts.join(",")
    }
}

fn field_text(f: Of, v: u128, m: u128) -> String {
    let full = m == f.full();
    match f {
        Of::DlSrc | Of::DlDst => {
            let mac = |x: u128| {
                let b = (x as u64).to_be_bytes();
                format!(
                    "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                    b[2], b[3], b[4], b[5], b[6], b[7]
                )
            };
            if full {
                mac(v)
            } else {
                format!("{}/{}", mac(v), mac(m))
            }
        }
        Of::NwSrc | Of::NwDst => {
            let ip = |x: u128| Ipv4Addr::from(x as u32);
            if full {
                ip(v).to_string()
            } else {
                format!("{}/{}", ip(v), ip(m))
            }
        }
        Of::Ipv6Src | Of::Ipv6Dst => {
            // A prefix mask as its length: `ovs-ofctl` misreads `::/8000::`.
            if full {
                Ipv6Addr::from(v).to_string()
            } else if m.leading_ones() + m.trailing_zeros() == 128 {
                format!("{}/{}", Ipv6Addr::from(v), m.leading_ones())
            } else {
                format!("{}/{}", Ipv6Addr::from(v), Ipv6Addr::from(m))
            }
        }
        Of::IpFrag => match (v, m) {
            (0, FRAG_ANY) | (0, 3) => "no",
            (FRAG_ANY, FRAG_ANY) => "yes",
            (FRAG_ANY, 3) => "first",
            (_, FRAG_LATER) if v == FRAG_LATER => "later",
            (3, 3) => "later",
            _ => "not_later",
        }
        .to_string(),
        Of::DlType | Of::VlanTci | Of::TcpFlags | Of::Ipv6Label => {
            if full {
                format!("{v:#06x}")
            } else {
                format!("{v:#06x}/{m:#06x}")
            }
        }
        _ => {
            if full {
                v.to_string()
            } else {
                format!("{v:#x}/{m:#x}")
            }
        }
    }
}

/// Where a netvm field lives in OpenFlow: the field, the shift of its bits inside it, and
/// the header it needs.
struct Place {
    of: Of,
    shift: u32,
    width: u32,
    header: Header,
}

#[derive(Clone, Copy)]
enum Header {
    Eth,
    Vlan,
    Ip,
    Ip6,
    Tcp,
    Udp,
    Icmp,
    Icmp6,
}

/// The places of a netvm field (two for `l4.*`: TCP's and UDP's), or why it has none.
fn places(field: Field) -> Result<Vec<Place>, String> {
    let p = |of, shift, width, header| Place {
        of,
        shift,
        width,
        header,
    };
    use Field::*;
    Ok(match field {
        EthSrc => vec![p(Of::DlSrc, 0, 48, Header::Eth)],
        EthDst => vec![p(Of::DlDst, 0, 48, Header::Eth)],
        EthType => vec![p(Of::DlType, 0, 16, Header::Eth)],
        VlanId => vec![p(Of::VlanTci, 0, 12, Header::Vlan)],
        VlanPcp => vec![p(Of::VlanTci, 13, 3, Header::Vlan)],
        IpSrc => vec![p(Of::NwSrc, 0, 32, Header::Ip)],
        IpDst => vec![p(Of::NwDst, 0, 32, Header::Ip)],
        IpProto => vec![p(Of::NwProto, 0, 8, Header::Ip)],
        IpTtl => vec![p(Of::NwTtl, 0, 8, Header::Ip)],
        IpDscp => vec![p(Of::IpDscp, 0, 6, Header::Ip)],
        IpFrag => vec![p(Of::IpFrag, 0, 1, Header::Ip)],
        Ip6Src => vec![p(Of::Ipv6Src, 0, 128, Header::Ip6)],
        Ip6Dst => vec![p(Of::Ipv6Dst, 0, 128, Header::Ip6)],
        Ip6Hlim => vec![p(Of::NwTtl, 0, 8, Header::Ip6)],
        Ip6Flow => vec![p(Of::Ipv6Label, 0, 20, Header::Ip6)],
        TcpSport => vec![p(Of::TcpSrc, 0, 16, Header::Tcp)],
        TcpDport => vec![p(Of::TcpDst, 0, 16, Header::Tcp)],
        TcpFlags => vec![p(Of::TcpFlags, 0, 8, Header::Tcp)],
        TcpFlagFin | TcpFlagSyn | TcpFlagRst | TcpFlagPsh | TcpFlagAck | TcpFlagUrg => {
            let bit = field.tcp_flag_mask().unwrap_or(0).trailing_zeros();
            vec![p(Of::TcpFlags, bit, 1, Header::Tcp)]
        }
        UdpSport => vec![p(Of::UdpSrc, 0, 16, Header::Udp)],
        UdpDport => vec![p(Of::UdpDst, 0, 16, Header::Udp)],
        L4Sport => vec![
            p(Of::TcpSrc, 0, 16, Header::Tcp),
            p(Of::UdpSrc, 0, 16, Header::Udp),
        ],
        L4Dport => vec![
            p(Of::TcpDst, 0, 16, Header::Tcp),
            p(Of::UdpDst, 0, 16, Header::Udp),
        ],
        IcmpType => vec![p(Of::IcmpType, 0, 8, Header::Icmp)],
        IcmpCode => vec![p(Of::IcmpCode, 0, 8, Header::Icmp)],
        Icmp6Type => vec![p(Of::Icmpv6Type, 0, 8, Header::Icmp6)],
        Icmp6Code => vec![p(Of::Icmpv6Code, 0, 8, Header::Icmp6)],
        IpLen => return Err("`ip.len` has no OpenFlow match".into()),
        Ip6Nh => {
            return Err(
                "`ip6.nh` has no OpenFlow match (OpenFlow's `nw_proto` is the protocol \
                        after the extension headers; test `tcp`, `udp`, ... instead)"
                    .into(),
            )
        }
        PktLen | PayloadLen => return Err(format!("`{}` has no OpenFlow match", field.name())),
    })
}

/// The matches for "this header is present".
fn header_matches(header: Header) -> Vec<Match> {
    let l4 = |dl: u128, proto: u128| {
        Match::dl_type(dl)
            .with(Of::NwProto, proto, 0xff)
            .and_then(|m| m.with(Of::IpFrag, 0, FRAG_LATER))
    };
    match header {
        Header::Eth => vec![Match::default()],
        Header::Vlan => Match::default()
            .with(Of::VlanTci, VLAN_CFI, VLAN_CFI)
            .into_iter()
            .collect(),
        Header::Ip => vec![Match::dl_type(ETH_IP)],
        Header::Ip6 => vec![Match::dl_type(ETH_IP6)],
        Header::Tcp => [l4(ETH_IP, 6), l4(ETH_IP6, 6)]
            .into_iter()
            .flatten()
            .collect(),
        Header::Udp => [l4(ETH_IP, 17), l4(ETH_IP6, 17)]
            .into_iter()
            .flatten()
            .collect(),
        Header::Icmp => l4(ETH_IP, 1).into_iter().collect(),
        Header::Icmp6 => l4(ETH_IP6, 58).into_iter().collect(),
    }
}

fn proto_header(p: Proto) -> Option<Header> {
    Some(match p {
        Proto::Eth => Header::Eth,
        Proto::Vlan => Header::Vlan,
        Proto::Arp => return None,
        Proto::Ip => Header::Ip,
        Proto::Ip6 => Header::Ip6,
        Proto::Tcp => Header::Tcp,
        Proto::Udp => Header::Udp,
        Proto::Icmp => Header::Icmp,
        Proto::Icmp6 => Header::Icmp6,
    })
}

fn proto_matches(p: Proto) -> Vec<Match> {
    match proto_header(p) {
        Some(h) => header_matches(h),
        None => vec![Match::dl_type(ETH_ARP)],
    }
}

/// `[lo, hi]` as the fewest prefixes (value, mask) of a `bits`-wide number.
fn prefixes(lo: u128, hi: u128, bits: u32) -> Vec<(u128, u128)> {
    let full = width_mask(bits);
    let mut out = Vec::new();
    let mut lo = lo;
    loop {
        if lo > hi {
            break;
        }
        // The largest aligned block starting at lo that stays within hi.
        let mut size_bits = if lo == 0 {
            bits
        } else {
            lo.trailing_zeros().min(bits)
        };
        while size_bits > 0 && lo.checked_add(width_mask(size_bits)).is_none_or(|e| e > hi) {
            size_bits -= 1;
        }
        out.push((lo, full & !width_mask(size_bits)));
        match lo
            .checked_add(width_mask(size_bits))
            .and_then(|e| e.checked_add(1))
        {
            Some(next) if next <= full => lo = next,
            _ => break,
        }
    }
    out
}

/// The (value, mask) pairs, on a `width`-bit value, of "`value & mask` lies in `set`".
fn value_masks(
    mask: Option<u128>,
    set: &IntervalSet,
    width: u32,
    exact: bool,
) -> Result<Vec<(u128, u128)>, String> {
    let full = width_mask(width);
    let limit = |n: usize| {
        if n > MAX_ENUMERATED {
            Err(format!(
                "needs more than {MAX_ENUMERATED} flows for one comparison"
            ))
        } else {
            Ok(())
        }
    };
    let m = mask.unwrap_or(full) & full;
    if exact {
        // Every value of the field that satisfies the test, unless all do.
        let count: u128 = (0..=full).filter(|v| set.contains(v & m)).count() as u128;
        if count == full + 1 {
            return Ok(vec![(0, 0)]);
        }
        limit(count as usize)?;
        return Ok((0..=full)
            .filter(|v| set.contains(v & m))
            .map(|v| (v, full))
            .collect());
    }
    if m == full {
        let mut out = Vec::new();
        for &(lo, hi) in set.ranges() {
            out.extend(prefixes(lo, hi.min(full), width));
            limit(out.len())?;
        }
        return Ok(out);
    }
    // A partial mask: each value the masked field can take (a sub-mask of `m`) that the set
    // holds is one (value, m) pair.
    let bits = m.count_ones();
    if bits <= 12 {
        let mut out = Vec::new();
        let mut sub: u128 = 0;
        loop {
            if set.contains(sub) {
                out.push((sub, m));
            }
            if sub == m {
                break;
            }
            sub = (sub.wrapping_sub(m)) & m;
        }
        if out.len() == 1usize << bits {
            return Ok(vec![(0, 0)]);
        }
        limit(out.len())?;
        return Ok(out);
    }
    if set.ranges().iter().all(|(lo, hi)| lo == hi) {
        return Ok(set
            .ranges()
            .iter()
            .filter(|(v, _)| v & !m == 0)
            .map(|&(v, _)| (v, m))
            .collect());
    }
    Err(format!(
        "a range under the mask {m:#x} (more than 12 bits) has no OpenFlow match"
    ))
}

/// One conjunction: a match and the protocols that must be absent ("none of these").
#[derive(Debug, Clone)]
struct Term {
    m: Match,
    absent: Vec<Vec<Match>>,
}

impl Term {
    fn of(m: Match) -> Term {
        Term {
            m,
            absent: Vec::new(),
        }
    }

    /// Both terms; `None` when nothing matches both.
    fn and(&self, other: &Term) -> Option<Term> {
        let m = self.m.merge(&other.m)?;
        let mut absent = self.absent.clone();
        absent.extend(other.absent.iter().cloned());
        Term { m, absent }.simplified()
    }

    /// Drops absent-alternatives that cannot meet `m`; `None` when `m` implies one.
    fn simplified(mut self) -> Option<Term> {
        let mut absent = Vec::new();
        for alts in self.absent {
            if alts.iter().any(|a| self.m.within(a)) {
                return None;
            }
            let alts: Vec<Match> = alts
                .into_iter()
                .filter(|a| self.m.merge(a).is_some())
                .collect();
            if !alts.is_empty() {
                absent.push(alts);
            }
        }
        self.absent = absent;
        Some(self)
    }
}

struct Translator<'a> {
    ir: &'a Classifier,
    ports: usize,
}

impl Translator<'_> {
    fn atom(&self, atom: &Atom, negated: bool) -> Result<Vec<Term>, String> {
        match atom {
            Atom::Proto(p) if !negated => Ok(proto_matches(*p).into_iter().map(Term::of).collect()),
            Atom::Proto(Proto::Eth) => Ok(Vec::new()),
            Atom::Proto(Proto::Vlan) => Ok(Match::default()
                .with(Of::VlanTci, 0, VLAN_CFI)
                .into_iter()
                .map(Term::of)
                .collect()),
            Atom::Proto(p) => Ok(vec![Term {
                m: Match::default(),
                absent: vec![proto_matches(*p)],
            }]),
            Atom::InPort { ranges } => {
                let set = IntervalSet::from_ranges(ranges.clone());
                Ok((0..self.ports)
                    .filter(|&p| set.contains(p as u128) != negated)
                    .map(|p| {
                        Term::of(Match {
                            in_port: Some(p),
                            ..Match::default()
                        })
                    })
                    .collect())
            }
            Atom::Field {
                field,
                mask,
                ranges,
            } => {
                let mut set = IntervalSet::from_ranges(ranges.clone());
                let places = places(*field)?;
                let mut terms = Vec::new();
                if negated {
                    set = set.complement(field.ty().max_value());
                    // The header may be absent instead.
                    let headers: Vec<Match> = places
                        .iter()
                        .flat_map(|p| header_matches(p.header))
                        .collect();
                    if !matches!(places[0].header, Header::Eth) {
                        if matches!(places[0].header, Header::Vlan) {
                            terms.extend(
                                Match::default()
                                    .with(Of::VlanTci, 0, VLAN_CFI)
                                    .map(Term::of),
                            );
                        } else {
                            terms.push(Term {
                                m: Match::default(),
                                absent: vec![headers],
                            });
                        }
                    }
                }
                for place in &places {
                    let pairs = value_masks(*mask, &set, place.width, !place.of.maskable())?;
                    for h in header_matches(place.header) {
                        for &(v, m) in &pairs {
                            let t = if m == 0 {
                                Some(h.clone())
                            } else {
                                h.clone().with(place.of, v << place.shift, m << place.shift)
                            };
                            terms.extend(t.map(Term::of));
                        }
                    }
                }
                Ok(terms)
            }
            Atom::PayloadByte { .. }
            | Atom::Contains(_)
            | Atom::StartsWith(_)
            | Atom::Matches(_) => Err("payload tests have no OpenFlow match".into()),
        }
    }

    fn dnf(&self, expr: &Expr, negated: bool) -> Result<Vec<Term>, String> {
        let cap = |terms: &Vec<Term>| {
            if terms.len() > MAX_FLOWS {
                Err(format!("needs more than {MAX_FLOWS} flows"))
            } else {
                Ok(())
            }
        };
        match expr {
            Expr::Const(b) => Ok(if *b != negated {
                vec![Term::of(Match::default())]
            } else {
                Vec::new()
            }),
            Expr::Atom(a) => self.atom(&self.ir.atoms[*a], negated),
            Expr::Not(e) => self.dnf(e, !negated),
            Expr::And(items) | Expr::Or(items) => {
                // `and`, or a negated `or`, is a product; the others a sum.
                let product = matches!(expr, Expr::And(_)) != negated;
                let mut acc = if product {
                    vec![Term::of(Match::default())]
                } else {
                    Vec::new()
                };
                for item in items {
                    let terms = self.dnf(item, negated)?;
                    if product {
                        let mut next = Vec::new();
                        for a in &acc {
                            next.extend(terms.iter().filter_map(|t| a.and(t)));
                            cap(&next)?;
                        }
                        acc = next;
                    } else {
                        acc.extend(terms);
                        cap(&acc)?;
                    }
                }
                Ok(acc)
            }
        }
    }
}

/// Who a flow acts for: a rule (index) or the default (`None`).
type Origin = Option<usize>;

struct Entry {
    term: Term,
    origin: Origin,
}

/// Writes the flows of a decision list, highest priority first.
fn emit(
    entries: &[Entry],
    out: &mut Vec<(Match, Origin)>,
    blame: &mut Option<Origin>,
) -> Result<(), ()> {
    for (k, e) in entries.iter().enumerate() {
        emit_entry(&e.term, e.origin, &entries[k + 1..], out, blame)?;
    }
    Ok(())
}

fn emit_entry(
    term: &Term,
    origin: Origin,
    rest: &[Entry],
    out: &mut Vec<(Match, Origin)>,
    blame: &mut Option<Origin>,
) -> Result<(), ()> {
    if out.len() > MAX_FLOWS {
        blame.get_or_insert(origin);
        return Err(());
    }
    let Some((first, others)) = term.absent.split_first() else {
        // A flow under one that already matches all its packets is never hit.
        let shadowed = out.len() < SUBSUMPTION_CHECK && out.iter().any(|(m, _)| term.m.within(m));
        if !shadowed {
            out.push((term.m.clone(), origin));
        }
        return Ok(());
    };
    // Packets of `m` that have the protocol fall through to the rules after this one.
    for alt in first {
        let Some(y) = term.m.merge(alt) else { continue };
        let restricted: Vec<Entry> = rest
            .iter()
            .filter_map(|r| {
                let t = r.term.and(&Term::of(y.clone()))?;
                Some(Entry {
                    term: t,
                    origin: r.origin,
                })
            })
            .collect();
        emit(&restricted, out, blame)?;
    }
    let remaining = Term {
        m: term.m.clone(),
        absent: others.to_vec(),
    };
    emit_entry(&remaining, origin, rest, out, blame)
}

/// One flow of an export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub priority: u16,
    pub cookie: u64,
    /// The match, as `ovs-ofctl` writes it (empty: every packet).
    pub matches: String,
    pub actions: String,
    /// The rule whose action this is (`None`: the default).
    pub rule: Option<usize>,
}

/// A policy's flows, highest priority first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    pub flows: Vec<Flow>,
}

impl Export {
    /// The `ovs-ofctl add-flows` text: a comment line naming each run of flows' rule, then
    /// one flow per line.
    pub fn text(&self, policy: &Policy) -> String {
        let mut out = String::new();
        let mut last: Option<Option<usize>> = None;
        for f in &self.flows {
            if last != Some(f.rule) {
                let name = f.rule.map_or("default".to_string(), |r| {
                    format!("rule {}", policy.rules[r].name)
                });
                let _ = writeln!(out, "# {name}");
            }
            last = Some(f.rule);
            let sep = if f.matches.is_empty() { "" } else { "," };
            let _ = writeln!(
                out,
                "priority={},cookie={:#x}{sep}{},actions={}",
                f.priority, f.cookie, f.matches, f.actions
            );
        }
        out
    }
}

/// Exports a checked policy. `ports[i]` is the OpenFlow number of the policy's port `i`.
pub fn export(policy: &Policy, ports: &[u32]) -> Result<Export, ExportError> {
    let err = |rule: Origin, message: String| ExportError {
        rule: rule.map(|r| policy.rules[r].name.clone()),
        message,
    };
    if ports.len() != policy.ports.len() {
        return Err(err(
            None,
            format!(
                "{} port numbers for {} ports",
                ports.len(),
                policy.ports.len()
            ),
        ));
    }
    // The actions first: a rule whose action has no OpenFlow form is refused whatever its
    // predicate.
    let action_of = |origin: Origin| -> Result<Option<usize>, ExportError> {
        let actions = policy.actions_of(origin);
        let what = |w: &str| {
            err(
                origin,
                format!("{w} has no OpenFlow form (only `drop` and `out PORT` have)"),
            )
        };
        if !actions.mirrors.is_empty() {
            return Err(what("`mirror`"));
        }
        if !actions.counts.is_empty() {
            return Err(what("`count`"));
        }
        match &actions.fate {
            Fate::Drop => Ok(None),
            Fate::Out(p) => Ok(Some(*p)),
            Fate::To(_) => Err(what("sending to a VM (`to`)")),
            Fate::Chain(_) => Err(what("a `chain`")),
            Fate::Balance(_) => Err(what("`balance`")),
        }
    };
    let mut outs = Vec::new();
    for r in 0..policy.rules.len() {
        outs.push(action_of(Some(r))?);
    }
    let default_out = action_of(None)?;

    let ir = crate::lower(policy);
    let translator = Translator {
        ir: &ir,
        ports: ports.len(),
    };
    let mut entries = Vec::new();
    for (r, expr) in ir.rules.iter().enumerate() {
        let terms = translator.dnf(expr, false).map_err(|m| err(Some(r), m))?;
        // Terms that need no protocol absent first: their flows then cover part of what the
        // others' shadow flows would otherwise have to.
        let (plain, shadowed): (Vec<Term>, Vec<Term>) = terms
            .into_iter()
            .filter_map(Term::simplified)
            .partition(|t| t.absent.is_empty());
        entries.extend(plain.into_iter().chain(shadowed).map(|term| Entry {
            term,
            origin: Some(r),
        }));
    }
    entries.push(Entry {
        term: Term::of(Match::default()),
        origin: None,
    });
    let mut flat = Vec::new();
    let mut blame = None;
    if emit(&entries, &mut flat, &mut blame).is_err() {
        return Err(err(
            blame.flatten(),
            format!("the export needs more than {MAX_FLOWS} flows"),
        ));
    }

    // Runs of one origin share a priority; an `out P` run gets a hairpin group above it.
    let mut groups: Vec<(Origin, bool, Vec<Match>)> = Vec::new();
    let mut i = 0;
    while i < flat.len() {
        let origin = flat[i].1;
        let mut run = Vec::new();
        while i < flat.len() && flat[i].1 == origin {
            if !run.contains(&flat[i].0) {
                run.push(flat[i].0.clone());
            }
            i += 1;
        }
        let out = origin.map_or(default_out, |r| outs[r]);
        if let Some(p) = out {
            let hairpin: Vec<Match> = run
                .iter()
                .filter(|m| m.in_port.is_none_or(|q| q == p))
                .map(|m| Match {
                    in_port: Some(p),
                    ..m.clone()
                })
                .collect();
            let normal: Vec<Match> = run.into_iter().filter(|m| m.in_port != Some(p)).collect();
            let mut hairpin_dedup: Vec<Match> = Vec::new();
            for m in hairpin {
                if !hairpin_dedup.contains(&m) {
                    hairpin_dedup.push(m);
                }
            }
            if !hairpin_dedup.is_empty() {
                groups.push((origin, true, hairpin_dedup));
            }
            if !normal.is_empty() {
                groups.push((origin, false, normal));
            }
        } else {
            groups.push((origin, false, run));
        }
    }
    if groups.len() > usize::from(u16::MAX) {
        return Err(err(
            None,
            format!(
                "the export needs {} priorities, more than OpenFlow's 65,535",
                groups.len()
            ),
        ));
    }
    let mut flows = Vec::new();
    let top = groups.len() - 1;
    for (g, (origin, hairpin, matches)) in groups.into_iter().enumerate() {
        let priority = (top - g) as u16;
        let out = origin.map_or(default_out, |r| outs[r]);
        let actions = match (out, hairpin) {
            (None, _) => "drop".to_string(),
            (Some(_), true) => "in_port".to_string(),
            (Some(p), false) => format!("output:{}", ports[p]),
        };
        let cookie = origin.map_or(DEFAULT_COOKIE, |r| r as u64 + 1);
        for m in matches {
            flows.push(Flow {
                priority,
                cookie,
                matches: m.text(ports),
                actions: actions.clone(),
                rule: origin,
            });
        }
    }
    Ok(Export { flows })
}

/// The OpenFlow numbers of a policy's ports: declaration order from 1, except those given
/// as `NAME=NUMBER`.
pub fn port_numbers(policy: &Policy, given: &[String]) -> Result<Vec<u32>, ExportError> {
    let err = |message: String| ExportError {
        rule: None,
        message,
    };
    let mut numbers: Vec<Option<u32>> = vec![None; policy.ports.len()];
    for g in given {
        let (name, number) = g
            .split_once('=')
            .ok_or_else(|| err(format!("`{g}`: a port number is written NAME=NUMBER")))?;
        let p = policy
            .port_index(name)
            .ok_or_else(|| err(format!("`{g}`: the policy has no port `{name}`")))?;
        let n: u32 = number
            .parse()
            .ok()
            .filter(|n| (1..=0xfeff).contains(n))
            .ok_or_else(|| {
                err(format!(
                    "`{g}`: an OpenFlow port number is 1 to 65279, not `{number}`"
                ))
            })?;
        numbers[p] = Some(n);
    }
    let mut next = 1;
    let mut out = Vec::new();
    for (p, n) in numbers.iter().enumerate() {
        let n = match n {
            Some(n) => *n,
            None => {
                while numbers.contains(&Some(next)) || out.contains(&next) {
                    next += 1;
                }
                next
            }
        };
        if out.contains(&n) {
            return Err(err(format!(
                "port `{}` and another port both have OpenFlow number {n}",
                policy.ports[p].name
            )));
        }
        out.push(n);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> Policy {
        let checked = netvm_lang::check_text("t.nvr", text);
        match checked.policy {
            Some(p) => p,
            None => panic!("policy does not check: {text}"),
        }
    }

    fn flows(text: &str) -> Vec<String> {
        let p = policy(text);
        let ports = port_numbers(&p, &[]).unwrap();
        export(&p, &ports)
            .unwrap()
            .flows
            .iter()
            .map(|f| {
                format!(
                    "priority={},cookie={:#x},{},actions={}",
                    f.priority, f.cookie, f.matches, f.actions
                )
            })
            .collect()
    }

    #[test]
    fn prefixes_cover_exactly_the_range() {
        assert_eq!(prefixes(0, 65535, 16), vec![(0, 0)]);
        assert_eq!(prefixes(80, 80, 16), vec![(80, 0xffff)]);
        // 1000..1999: 1000-1007, 1008-1023, 1024-1535, 1536-1791, 1792-1919, 1920-1983, 1984-1999
        let p = prefixes(1000, 1999, 16);
        assert_eq!(p.len(), 7);
        for v in 0u128..65536 {
            let hit = p.iter().filter(|(pv, m)| v & m == *pv).count();
            assert_eq!(hit, usize::from((1000..=1999).contains(&v)), "{v}");
        }
        assert_eq!(prefixes(0, u128::MAX, 128), vec![(0, 0)]);
        assert_eq!(
            prefixes(u128::MAX, u128::MAX, 128),
            vec![(u128::MAX, u128::MAX)]
        );
    }

    #[test]
    fn rules_become_descending_priorities_with_masks_and_prerequisites() {
        let f = flows(
            "port a\nport b\n\
             rule web : ip.src in 10.1.0.0/16 and tcp.dport in 1024..2047 => drop\n\
             rule from_a : in_port == a => out b\n\
             default => drop\n",
        );
        assert_eq!(
            f,
            vec![
                "priority=2,cookie=0x1,dl_type=0x0800,nw_src=10.1.0.0/255.255.0.0,nw_proto=6,\
                 ip_frag=not_later,tcp_dst=0x400/0xfc00,actions=drop",
                "priority=1,cookie=0x2,in_port=1,actions=output:2",
                "priority=0,cookie=0xffff,,actions=drop",
            ]
        );
    }

    #[test]
    fn a_negated_protocol_becomes_shadow_flows_for_the_later_rules() {
        let f = flows(
            "port a\nport b\n\
             rule not_ip : not ip => drop\n\
             default => out b\n",
        );
        // IPv4 packets skip rule not_ip: they get rule rest's flows above not_ip's.
        assert_eq!(
            f,
            vec![
                "priority=2,cookie=0xffff,in_port=2,dl_type=0x0800,actions=in_port",
                "priority=1,cookie=0xffff,dl_type=0x0800,actions=output:2",
                // Every other packet: the default's own flow lies under this one, unreachable.
                "priority=0,cookie=0x1,,actions=drop",
            ]
        );
    }

    #[test]
    fn a_negated_field_is_its_complement_or_its_header_absent() {
        let f = flows("port a\nrule r : not tcp.dport == 80 => drop\ndefault => out a\n");
        // tcp with dport != 80 as masks, both IP versions; packets without TCP shadowed.
        assert!(
            f.iter().any(|l| l.contains("tcp_dst=0x8000/0x8000")),
            "{f:#?}"
        );
        assert!(f
            .iter()
            .any(|l| l.contains("dl_type=0x86dd") && l.contains("tcp_dst=81,")));
        assert!(!f.iter().any(|l| l.contains("tcp_dst=80,")));
        // Without TCP: the default's flows (out a) above the rule's catch-all drop.
        let n = f.len();
        assert_eq!(f[n - 1], "priority=0,cookie=0x1,,actions=drop");
        assert!(
            f[n - 2].contains("cookie=0xffff,dl_type=0x86dd,nw_proto=6"),
            "{f:#?}"
        );
    }

    #[test]
    fn unrepresentable_rules_are_refused_by_name() {
        let p =
            policy("port a\nvm ids\nrule ok : tcp => drop\nrule spy : udp => mirror ids, out a\n");
        let e = export(&p, &[1]).unwrap_err();
        assert_eq!(e.rule.as_deref(), Some("spy"));
        assert!(e.to_string().starts_with("rule `spy`: `mirror`"), "{e}");
        let p = policy("port a\nrule dpi : tcp and payload contains \"GET\" => drop\n");
        let e = export(&p, &[1]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "rule `dpi`: payload tests have no OpenFlow match"
        );
        let p = policy("port a\nrule big : pkt.len > 1000 => drop\n");
        assert!(export(&p, &[1])
            .unwrap_err()
            .to_string()
            .contains("`pkt.len`"));
        let p = policy("port a\nvm fw\nrule r : tcp => drop\ndefault => to fw\n");
        let e = export(&p, &[1]).unwrap_err();
        assert_eq!(e.rule, None);
        assert!(e.message.contains("`to`"), "{e}");
    }

    #[test]
    fn port_numbers_follow_declaration_order_unless_given() {
        let p = policy("port a\nport b\nport c\ndefault => drop\n");
        assert_eq!(port_numbers(&p, &[]).unwrap(), vec![1, 2, 3]);
        assert_eq!(port_numbers(&p, &["b=1".into()]).unwrap(), vec![2, 1, 3]);
        assert_eq!(
            port_numbers(&p, &["c=7".into(), "a=9".into()]).unwrap(),
            vec![9, 1, 7]
        );
        for bad in ["x=1", "a=0", "a=70000", "a", "a=1x"] {
            assert!(port_numbers(&p, &[bad.into()]).is_err(), "{bad}");
        }
        let e = port_numbers(&p, &["a=2".into(), "b=2".into()]).unwrap_err();
        assert!(e.message.contains("both have OpenFlow number 2"), "{e}");
    }

    #[test]
    fn exact_only_fields_are_enumerated() {
        let f = flows("port a\nrule r : ip.ttl < 3 => drop\ndefault => drop\n");
        assert_eq!(f.iter().filter(|l| l.contains("nw_ttl=")).count(), 3);
        let p = policy("port a\nrule r : eth.type > 10 => drop\n");
        let e = export(&p, &[1]).unwrap_err();
        assert!(e.message.contains("more than 4096"), "{e}");
    }
}
