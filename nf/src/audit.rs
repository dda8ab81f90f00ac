//! What this process can reach of netvm's memory, as the kernel sees it.
//!
//! An untrusted VM's process must hold nothing but its private region: no descriptor of
//! the shared pool, no mapping of it. [`MemoryAudit::of_self`] lists every `memfd`
//! mapping in `/proc/self/maps` and every `memfd` descriptor in `/proc/self/fd`, with
//! their inode numbers, so a test (or an operator, `netvm nf --audit`) can check it.

use serde_json::{json, Value};

/// One `memfd` this process maps or holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemfdUse {
    /// `memfd:NAME` as the kernel names it (without ` (deleted)`).
    pub name: String,
    pub inode: u64,
    /// `mapped 0x..-0x..` or `fd N`.
    pub how: String,
}

#[derive(Debug, Clone, Default)]
pub struct MemoryAudit {
    pub mappings: Vec<MemfdUse>,
    pub descriptors: Vec<MemfdUse>,
}

impl MemoryAudit {
    /// Read `/proc/self/maps` and `/proc/self/fd`.
    pub fn of_self() -> std::io::Result<MemoryAudit> {
        let maps = std::fs::read_to_string("/proc/self/maps")?;
        let mut mappings = Vec::new();
        for line in maps.lines() {
            // address perms offset dev inode path
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 6 || !fields[5].starts_with("/memfd:") {
                continue;
            }
            mappings.push(MemfdUse {
                name: fields[5].trim_start_matches('/').to_string(),
                inode: fields[4].parse().unwrap_or(0),
                how: format!("mapped {}", fields[0]),
            });
        }
        let mut descriptors = Vec::new();
        for entry in std::fs::read_dir("/proc/self/fd")?.flatten() {
            let Ok(target) = std::fs::read_link(entry.path()) else {
                continue;
            };
            let target = target.to_string_lossy().to_string();
            if !target.starts_with("/memfd:") {
                continue;
            }
            let inode = std::fs::metadata(entry.path()).map_or(0, |m| {
                use std::os::unix::fs::MetadataExt;
                m.ino()
            });
            descriptors.push(MemfdUse {
                name: target
                    .trim_start_matches('/')
                    .trim_end_matches(" (deleted)")
                    .to_string(),
                inode,
                how: format!("fd {}", entry.file_name().to_string_lossy()),
            });
        }
        Ok(MemoryAudit {
            mappings,
            descriptors,
        })
    }

    /// Every memfd name seen, mapped or held.
    pub fn names(&self) -> Vec<&str> {
        self.mappings
            .iter()
            .chain(&self.descriptors)
            .map(|m| m.name.as_str())
            .collect()
    }

    pub fn to_json(&self) -> Value {
        let rows = |v: &[MemfdUse]| -> Vec<Value> {
            v.iter()
                .map(|m| json!({"name": m.name, "inode": m.inode, "how": m.how}))
                .collect()
        };
        json!({
            "pid": std::process::id(),
            "mappings": rows(&self.mappings),
            "descriptors": rows(&self.descriptors),
        })
    }
}
