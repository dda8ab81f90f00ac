//! Const values and their conversion to the set of values a field comparison accepts.
//!
//! A `const` is untyped until it is used: `{HTTP, 8000..8100}` is a set of integers that only
//! becomes a set of `u16` when compared with `tcp.dport`. A set may mix IPv4 and IPv6 members;
//! a comparison uses the members of its field's family (LANGUAGE.md).

use netvm_packet::FieldType;

use super::Checker;
use crate::diag::{Code, Diagnostic};
use crate::interval::IntervalSet;
use crate::source::Span;

#[derive(Debug, Clone, PartialEq)]
pub enum ConstValue {
    Int(u128),
    V4 { addr: u32, len: u8 },
    V6 { addr: u128, len: u8 },
    Mac(u64),
    Str(Vec<u8>),
    Regex { pattern: String, source: String },
    Range(Box<ConstItem>, Box<ConstItem>),
    Set(Vec<ConstItem>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConstItem {
    pub value: ConstValue,
    pub span: Span,
}

impl ConstValue {
    pub fn describe(&self) -> String {
        match self {
            ConstValue::Int(v) => format!("the integer {v}"),
            ConstValue::V4 { len: 32, .. } => "an IPv4 address".into(),
            ConstValue::V4 { .. } => "an IPv4 prefix".into(),
            ConstValue::V6 { len: 128, .. } => "an IPv6 address".into(),
            ConstValue::V6 { .. } => "an IPv6 prefix".into(),
            ConstValue::Mac(_) => "a MAC address".into(),
            ConstValue::Str(_) => "a string".into(),
            ConstValue::Regex { .. } => "a regex".into(),
            ConstValue::Range(..) => "a range".into(),
            ConstValue::Set(_) => "a set".into(),
        }
    }
}

/// The regex-syntax text for a literal's pattern and flags.
pub fn regex_pattern(pattern: &str, flags: &str) -> String {
    let mut flags: Vec<char> = flags.chars().filter(|c| matches!(c, 'i' | 's')).collect();
    flags.sort_unstable();
    flags.dedup();
    if flags.is_empty() {
        pattern.to_string()
    } else {
        format!("(?{}){pattern}", flags.into_iter().collect::<String>())
    }
}

/// Parses a pattern the way the compiler will compile it (bytes, Unicode off).
pub fn validate_regex(pattern: &str) -> Result<(), String> {
    regex_syntax::ParserBuilder::new()
        .unicode(false)
        .utf8(false)
        .build()
        .parse(pattern)
        .map(|_| ())
        .map_err(|e| match e {
            regex_syntax::Error::Parse(p) => p.kind().to_string(),
            regex_syntax::Error::Translate(t) => t.kind().to_string(),
            other => other.to_string(),
        })
}

fn type_name(ty: FieldType) -> String {
    match ty {
        FieldType::Ipv4 => "an IPv4 address".into(),
        FieldType::Ipv6 => "an IPv6 address".into(),
        FieldType::Mac => "a MAC address".into(),
        FieldType::Bool => "a bool".into(),
        FieldType::Uint(bits) => format!("a u{bits} integer"),
    }
}

fn mismatch(checker: &mut Checker, item: &ConstItem, ty: FieldType, what: &str) {
    let mut diag = Diagnostic::new(
        Code::TypeMismatch,
        item.span,
        format!(
            "`{what}` is compared with {}, but it takes {}",
            item.value.describe(),
            type_name(ty)
        ),
    )
    .label(format!("expected {}", type_name(ty)));
    if let (FieldType::Uint(_), ConstValue::V4 { .. } | ConstValue::V6 { .. }) = (ty, &item.value) {
        diag = diag.help("addresses are compared with `ip.src`, `ip.dst`, `ip6.src` or `ip6.dst`");
    }
    checker.push(diag);
}

fn out_of_range(checker: &mut Checker, span: Span, v: u128, ty: FieldType, what: &str) {
    checker.push(
        Diagnostic::new(
            Code::OutOfRange,
            span,
            format!("{v} is out of range for `{what}` ({})", ty.describe()),
        )
        .label("out of range")
        .help(format!("`{what}` takes 0..{}", ty.max_value())),
    );
}

/// One value of the field's type (for `<`, masks and test packets).
pub fn single_value(
    checker: &mut Checker,
    item: &ConstItem,
    ty: FieldType,
    what: &str,
) -> Option<u128> {
    match (&item.value, ty) {
        (ConstValue::Int(v), FieldType::Uint(_)) => {
            if *v > ty.max_value() {
                out_of_range(checker, item.span, *v, ty, what);
                return None;
            }
            Some(*v)
        }
        (ConstValue::V4 { addr, len: 32 }, FieldType::Ipv4) => Some(u128::from(*addr)),
        (ConstValue::V6 { addr, len: 128 }, FieldType::Ipv6) => Some(*addr),
        (ConstValue::Mac(m), FieldType::Mac) => Some(u128::from(*m)),
        (ConstValue::V4 { .. }, FieldType::Ipv4) | (ConstValue::V6 { .. }, FieldType::Ipv6) => {
            checker.push(
                Diagnostic::new(
                    Code::TypeMismatch,
                    item.span,
                    format!(
                        "a single address is needed here, found {}",
                        item.value.describe()
                    ),
                )
                .help("use `in PREFIX` to test a prefix"),
            );
            None
        }
        _ => {
            mismatch(checker, item, ty, what);
            None
        }
    }
}

/// The set of values a `==`/`in` comparison accepts.
pub fn value_set(
    checker: &mut Checker,
    item: &ConstItem,
    ty: FieldType,
    what: &str,
) -> Option<IntervalSet> {
    let mut ranges = Vec::new();
    let mut other_family = 0usize;
    if !collect(
        checker,
        item,
        ty,
        what,
        false,
        &mut ranges,
        &mut other_family,
    ) {
        return None;
    }
    if ranges.is_empty() && other_family > 0 {
        let family = if ty == FieldType::Ipv4 {
            "IPv4"
        } else {
            "IPv6"
        };
        checker.push(
            Diagnostic::new(
                Code::TypeMismatch,
                item.span,
                format!("this set has no {family} members, so `{what}` can never be in it"),
            )
            .help(if ty == FieldType::Ipv4 {
                "compare `ip6.src`/`ip6.dst` with IPv6 members"
            } else {
                "compare `ip.src`/`ip.dst` with IPv4 members"
            }),
        );
        return None;
    }
    Some(IntervalSet::from_ranges(ranges))
}

fn collect(
    checker: &mut Checker,
    item: &ConstItem,
    ty: FieldType,
    what: &str,
    in_set: bool,
    out: &mut Vec<(u128, u128)>,
    other_family: &mut usize,
) -> bool {
    match (&item.value, ty) {
        (ConstValue::Set(members), _) => {
            // The first bad member is reported; the rest of the set would only repeat it.
            members
                .iter()
                .all(|m| collect(checker, m, ty, what, true, out, other_family))
        }
        (ConstValue::Range(lo, hi), _) => {
            let (Some(l), Some(h)) = (
                single_value(checker, lo, ty, what),
                single_value(checker, hi, ty, what),
            ) else {
                return false;
            };
            if l > h {
                checker.push(
                    Diagnostic::new(Code::OutOfRange, item.span, "this range is empty")
                        .label("the low end is above the high end")
                        .help("write ranges low..high; both ends are included"),
                );
                return false;
            }
            out.push((l, h));
            true
        }
        (ConstValue::V4 { addr, len }, FieldType::Ipv4) => {
            let host = u32::MAX.checked_shr(u32::from(*len)).unwrap_or(0);
            out.push((u128::from(*addr), u128::from(*addr | host)));
            true
        }
        (ConstValue::V6 { addr, len }, FieldType::Ipv6) => {
            let host = u128::MAX.checked_shr(u32::from(*len)).unwrap_or(0);
            out.push((*addr, *addr | host));
            true
        }
        (ConstValue::V6 { .. }, FieldType::Ipv4) | (ConstValue::V4 { .. }, FieldType::Ipv6)
            if in_set =>
        {
            *other_family += 1;
            true
        }
        _ => match single_value(checker, item, ty, what) {
            Some(v) => {
                out.push((v, v));
                true
            }
            None => false,
        },
    }
}
