//! Other tools' rule sets as `.nvr` text.
//!
//! [`classbench`]: a ClassBench filter set (the format `dpdk-test-acl` reads). Rule `rN` is
//! line N of the file, in order; each matches `ip.src`, `ip.dst`, `l4.sport`, `l4.dport` and
//! `ip.proto` as the line says, a wildcard adding no condition (TCP flags are ignored, as
//! rte_acl ignores them), action `drop`; unmatched packets go `out p0`.

use std::fmt::Write as _;

/// The policy text for a ClassBench rule file.
pub fn classbench(text: &str, name: &str) -> Result<String, String> {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# imported from ClassBench rule file {name} by `netvm import classbench`"
    );
    out.push_str("port p0\n\n");
    let mut n = 0;
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        n += 1;
        let conditions =
            classbench_line(line).map_err(|e| format!("{name}:{}: {e}: `{line}`", index + 1))?;
        let pred = if conditions.is_empty() {
            "ip".to_string()
        } else {
            conditions.join(" and ")
        };
        let _ = writeln!(out, "rule r{n} : {pred} => drop");
    }
    out.push_str("default => out p0\n");
    Ok(out)
}

fn classbench_line(line: &str) -> Result<Vec<String>, String> {
    let line = line
        .strip_prefix('@')
        .ok_or("a rule line starts with `@`")?;
    let fields: Vec<&str> = line
        .split('\t')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .collect();
    if fields.len() < 5 {
        return Err(format!(
            "expected 6 tab-separated fields, found {}",
            fields.len()
        ));
    }
    let mut conditions = Vec::new();
    for (field, text) in [("ip.src", fields[0]), ("ip.dst", fields[1])] {
        let (addr, len) = text
            .split_once('/')
            .ok_or("an address must be PREFIX/LEN")?;
        let len: u8 = len.parse().map_err(|_| "bad prefix length")?;
        let addr: std::net::Ipv4Addr = addr.parse().map_err(|_| "bad IPv4 address")?;
        if len > 32 {
            return Err("prefix length above 32".into());
        }
        if len > 0 {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            let net = std::net::Ipv4Addr::from(u32::from(addr) & mask);
            if len == 32 {
                conditions.push(format!("{field} == {net}"));
            } else {
                conditions.push(format!("{field} in {net}/{len}"));
            }
        }
    }
    for (field, text) in [("l4.sport", fields[2]), ("l4.dport", fields[3])] {
        let (lo, hi) = text.split_once(':').ok_or("a port range must be LO : HI")?;
        let lo: u16 = lo.trim().parse().map_err(|_| "bad port")?;
        let hi: u16 = hi.trim().parse().map_err(|_| "bad port")?;
        if lo == hi {
            conditions.push(format!("{field} == {lo}"));
        } else if !(lo == 0 && hi == 65535) {
            conditions.push(format!("{field} in {lo}..{hi}"));
        }
    }
    let (proto, mask) = fields[4]
        .split_once('/')
        .ok_or("the protocol must be PROTO/MASK")?;
    let parse_hex = |t: &str| u8::from_str_radix(t.trim_start_matches("0x"), 16);
    let proto = parse_hex(proto).map_err(|_| "bad protocol")?;
    let mask = parse_hex(mask).map_err(|_| "bad protocol mask")?;
    match mask {
        0 => {}
        0xff => conditions.push(format!("ip.proto == {proto}")),
        m => conditions.push(format!("ip.proto & {m} == {}", proto & m)),
    }
    Ok(conditions)
}
