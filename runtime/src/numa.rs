//! Where threads and memory go: NUMA topology, region binding, core pinning and the
//! placement planner.
//!
//! [`Topology`] is read from sysfs (`<root>/node*/cpulist`, cpulist syntax such as
//! `0-3,8-11`); [`Topology::from_sysfs_root`] reads a fake tree so tests can describe
//! any machine. [`bind_region`] applies `mbind(2)` to the shared region and
//! [`pin_current_thread`] applies `sched_setaffinity(2)`; both report failure as an
//! error for the caller to print, because on a one-node machine (or in a container that
//! forbids them) running unbound is slower, not wrong. [`plan`] assigns every switch and
//! VM thread its own core on the pool's node where it can, and says plainly when it
//! cannot (oversubscription, remote cores) in [`Placement::warnings`] and in its
//! printable table. This module only decides and applies placement; it starts no
//! threads.

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::region::SharedRegion;

/// Where the kernel describes NUMA nodes.
pub const SYSFS_NODE_ROOT: &str = "/sys/devices/system/node";
/// Largest CPU number we accept (well past any real machine, bounds every set we build).
pub const MAX_CPU: usize = 4095;

/// Why topology could not be read or placement could not be planned or applied.
#[derive(Debug, thiserror::Error)]
pub enum NumaError {
    #[error("bad cpu list {list:?}: {why}")]
    BadCpuList { list: String, why: &'static str },
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no NUMA node directories under {0}")]
    NoNodes(PathBuf),
    #[error("core {0} is not on any node of this machine")]
    UnknownCore(usize),
    #[error("node {0} does not exist on this machine")]
    UnknownNode(usize),
    #[error("no cores to place threads on")]
    NoCores,
    #[error("pinning the current thread to core {core} failed")]
    Pin {
        core: usize,
        #[source]
        source: io::Error,
    },
    #[error("reading this thread's CPU affinity failed")]
    Affinity(#[source] io::Error),
    #[error("binding the shared region to node {node} failed (running unbound)")]
    Mbind {
        node: usize,
        #[source]
        source: io::Error,
    },
}

/// Parse a kernel cpulist (`0-3,8-11`, `5`, empty) into sorted, distinct CPU numbers.
pub fn parse_cpulist(list: &str) -> Result<Vec<usize>, NumaError> {
    let bad = |why| NumaError::BadCpuList {
        list: list.to_string(),
        why,
    };
    let mut cpus = BTreeSet::new();
    for part in list.trim().split(',').filter(|p| !p.trim().is_empty()) {
        let part = part.trim();
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let first: usize = first.parse().map_err(|_| bad("not a number"))?;
        let last: usize = last.parse().map_err(|_| bad("not a number"))?;
        if first > last {
            return Err(bad("range runs backwards"));
        }
        if last > MAX_CPU {
            return Err(bad("cpu number too large"));
        }
        cpus.extend(first..=last);
    }
    Ok(cpus.into_iter().collect())
}

/// One NUMA node and its CPUs (possibly none: memory-only nodes exist).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: usize,
    pub cpus: Vec<usize>,
}

/// The machine's NUMA nodes, sorted by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    nodes: Vec<Node>,
}

impl Topology {
    /// This machine's topology. Without a sysfs node tree (non-NUMA kernels, some
    /// containers) it is one node 0 holding the CPUs this thread may run on.
    pub fn detect() -> Result<Topology, NumaError> {
        let root = Path::new(SYSFS_NODE_ROOT);
        if root.is_dir() {
            return Self::from_sysfs_root(root);
        }
        Ok(Self::single_node(allowed_cpus()?))
    }

    /// Read `root/node<N>/cpulist` for every `node<N>` directory under `root`.
    pub fn from_sysfs_root(root: &Path) -> Result<Topology, NumaError> {
        let read_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| NumaError::Read { path, source }
        };
        let mut nodes = Vec::new();
        for entry in std::fs::read_dir(root).map_err(read_err(root))? {
            let entry = entry.map_err(read_err(root))?;
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_prefix("node"))
                .and_then(|n| n.parse::<usize>().ok())
            else {
                continue;
            };
            let path = entry.path().join("cpulist");
            let list = std::fs::read_to_string(&path).map_err(read_err(&path))?;
            nodes.push(Node {
                id,
                cpus: parse_cpulist(&list)?,
            });
        }
        if nodes.is_empty() {
            return Err(NumaError::NoNodes(root.to_path_buf()));
        }
        nodes.sort_by_key(|n| n.id);
        Ok(Topology { nodes })
    }

    /// A one-node machine with these CPUs.
    pub fn single_node(cpus: Vec<usize>) -> Topology {
        Topology {
            nodes: vec![Node { id: 0, cpus }],
        }
    }

    /// The nodes, sorted by id.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The node `cpu` belongs to.
    pub fn node_of_cpu(&self, cpu: usize) -> Option<usize> {
        self.nodes
            .iter()
            .find(|n| n.cpus.binary_search(&cpu).is_ok())
            .map(|n| n.id)
    }

    /// Every CPU, sorted.
    pub fn cpus(&self) -> Vec<usize> {
        let mut all: Vec<usize> = self
            .nodes
            .iter()
            .flat_map(|n| n.cpus.iter().copied())
            .collect();
        all.sort_unstable();
        all
    }
}

/// The CPUs the calling thread may run on (`sched_getaffinity`).
pub fn allowed_cpus() -> Result<Vec<usize>, NumaError> {
    // SAFETY: cpu_set_t is plain bits; all-zero is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: we pass the set's true size and a valid pointer; pid 0 means this thread.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(NumaError::Affinity(io::Error::last_os_error()));
    }
    let max = (libc::CPU_SETSIZE as usize).min(MAX_CPU + 1);
    // SAFETY: `cpu < CPU_SETSIZE`, inside the set.
    Ok((0..max)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Pin the calling thread to `core` (`sched_setaffinity`).
pub fn pin_current_thread(core: usize) -> Result<(), NumaError> {
    if core >= libc::CPU_SETSIZE as usize {
        return Err(NumaError::Pin {
            core,
            source: io::Error::from_raw_os_error(libc::EINVAL),
        });
    }
    // SAFETY: all-zero is a valid empty cpu_set_t.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `core < CPU_SETSIZE` was checked above.
    unsafe { libc::CPU_SET(core, &mut set) };
    // SAFETY: valid set pointer and its true size; pid 0 means this thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(NumaError::Pin {
            core,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// How strictly [`bind_region`] ties the region to its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemPolicy {
    /// Allocate on the node when it has memory, elsewhere otherwise (`MPOL_PREFERRED`).
    Preferred,
    /// Allocate only on the node (`MPOL_BIND`).
    Bind,
}

const MPOL_PREFERRED: libc::c_ulong = 1;
const MPOL_BIND: libc::c_ulong = 2;
const MPOL_MF_MOVE: libc::c_ulong = 1 << 1;

/// Apply `mbind(2)` to the whole region, moving pages already faulted in. An error
/// means the region stays wherever the kernel put it; report it and carry on.
pub fn bind_region(region: &SharedRegion, node: usize, policy: MemPolicy) -> Result<(), NumaError> {
    if node > MAX_CPU {
        return Err(NumaError::UnknownNode(node));
    }
    let bits = std::mem::size_of::<libc::c_ulong>() * 8;
    let mut mask = vec![0 as libc::c_ulong; node / bits + 1];
    mask[node / bits] |= 1 << (node % bits);
    let mode = match policy {
        MemPolicy::Preferred => MPOL_PREFERRED,
        MemPolicy::Bind => MPOL_BIND,
    };
    // The kernel reads `maxnode - 1` bits, hence the + 1.
    let maxnode = (mask.len() * bits + 1) as libc::c_ulong;
    // SAFETY: the address range is the region's own page-aligned mapping, which lives as
    // long as `region`; the mask pointer and `maxnode` describe `mask` exactly. mbind
    // changes only the placement policy of those pages, never their contents.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            region.base_addr() as *mut libc::c_void,
            region.len_bytes() as libc::c_ulong,
            mode,
            mask.as_ptr(),
            maxnode,
            MPOL_MF_MOVE,
        )
    };
    if rc != 0 {
        return Err(NumaError::Mbind {
            node,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// What a placed thread does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadRole {
    /// Switch thread `n` (polls ports, classifies, forwards).
    Switch(usize),
    /// VM thread `n`.
    Vm(usize),
}

impl fmt::Display for ThreadRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ThreadRole::Switch(n) => write!(f, "switch {n}"),
            ThreadRole::Vm(n) => write!(f, "vm {n}"),
        }
    }
}

/// What to place. `cores` is the operator's `--cores` list (`None`: every core).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlacementRequest {
    pub cores: Option<Vec<usize>>,
    pub switch_threads: usize,
    pub vm_threads: usize,
    /// Node for the packet pool; `None`: the node holding most of the requested cores.
    pub pool_node: Option<usize>,
}

/// One thread's seat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadPlacement {
    pub role: ThreadRole,
    pub core: usize,
    pub node: usize,
    /// Another thread was given the same core.
    pub shares_core: bool,
}

/// The planner's answer: a seat per thread, switch threads first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub pool_node: usize,
    pub threads: Vec<ThreadPlacement>,
    /// Fewer cores than threads: some polling threads share a core.
    pub oversubscribed: bool,
    /// Sentences for the operator (oversubscription, threads remote from the pool).
    pub warnings: Vec<String>,
}

/// Plan where every thread runs. Each thread gets its own core on the pool's node while
/// cores last, then cores on other nodes; when threads outnumber cores, switch threads
/// keep dedicated cores if they can and VM threads share the rest.
pub fn plan(topology: &Topology, request: &PlacementRequest) -> Result<Placement, NumaError> {
    let mut cores: Vec<usize> = match &request.cores {
        Some(list) => list.clone(),
        None => topology.cpus(),
    };
    cores.sort_unstable();
    cores.dedup();
    let mut seats = Vec::with_capacity(cores.len());
    for &core in &cores {
        let node = topology
            .node_of_cpu(core)
            .ok_or(NumaError::UnknownCore(core))?;
        seats.push((core, node));
    }
    if seats.is_empty() {
        return Err(NumaError::NoCores);
    }
    let pool_node = match request.pool_node {
        Some(node) if topology.nodes().iter().any(|n| n.id == node) => node,
        Some(node) => return Err(NumaError::UnknownNode(node)),
        None => topology
            .nodes()
            .iter()
            .max_by_key(|n| {
                let here = seats.iter().filter(|s| s.1 == n.id).count();
                (here, std::cmp::Reverse(n.id))
            })
            .map_or(0, |n| n.id),
    };
    // Pool-local cores first, then the others by node; stable, so by core within a node.
    seats.sort_by_key(|&(core, node)| (node != pool_node, node, core));

    let roles: Vec<ThreadRole> = (0..request.switch_threads)
        .map(ThreadRole::Switch)
        .chain((0..request.vm_threads).map(ThreadRole::Vm))
        .collect();
    let oversubscribed = roles.len() > seats.len();
    let switch_dedicated = request.switch_threads < seats.len();
    let seat_of = |i: usize| -> (usize, usize) {
        if !oversubscribed {
            seats[i]
        } else if switch_dedicated {
            let s = request.switch_threads;
            if i < s {
                seats[i]
            } else {
                seats[s + (i - s) % (seats.len() - s)]
            }
        } else {
            seats[i % seats.len()]
        }
    };
    let mut threads: Vec<ThreadPlacement> = roles
        .iter()
        .enumerate()
        .map(|(i, &role)| {
            let (core, node) = seat_of(i);
            ThreadPlacement {
                role,
                core,
                node,
                shares_core: false,
            }
        })
        .collect();
    let snapshot: Vec<usize> = threads.iter().map(|t| t.core).collect();
    for t in &mut threads {
        t.shares_core = snapshot.iter().filter(|&&c| c == t.core).count() > 1;
    }

    let mut warnings = Vec::new();
    if oversubscribed {
        warnings.push(format!(
            "{} threads on {} cores: oversubscribed, so polling threads that share a core \
             will take turns and throughput will drop",
            roles.len(),
            seats.len()
        ));
    }
    if topology
        .nodes()
        .iter()
        .all(|n| n.id != pool_node || n.cpus.is_empty())
    {
        warnings.push(format!(
            "pool node {pool_node} has no CPUs: every thread is remote from it"
        ));
    }
    for t in threads.iter().filter(|t| t.node != pool_node) {
        warnings.push(format!(
            "{} on core {} (node {}) is remote from the pool on node {pool_node}",
            t.role, t.core, t.node
        ));
    }
    Ok(Placement {
        pool_node,
        threads,
        oversubscribed,
        warnings,
    })
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cores: BTreeSet<usize> = self.threads.iter().map(|t| t.core).collect();
        writeln!(
            f,
            "packet pool on node {}; {} threads on {} cores{}",
            self.pool_node,
            self.threads.len(),
            cores.len(),
            if self.oversubscribed {
                " (OVERSUBSCRIBED)"
            } else {
                ""
            }
        )?;
        writeln!(f, "{:<12} {:>5} {:>5}  note", "thread", "core", "node")?;
        for t in &self.threads {
            let mut notes = Vec::new();
            if t.shares_core {
                notes.push("shares its core");
            }
            if t.node != self.pool_node {
                notes.push("remote from pool");
            }
            writeln!(
                f,
                "{:<12} {:>5} {:>5}  {}",
                t.role.to_string(),
                t.core,
                t.node,
                notes.join(", ")
            )?;
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(nodes: &[(usize, &str)]) -> (tempfile::TempDir, Topology) {
        let dir = tempfile::tempdir().unwrap();
        for (id, list) in nodes {
            let node = dir.path().join(format!("node{id}"));
            std::fs::create_dir(&node).unwrap();
            std::fs::write(node.join("cpulist"), format!("{list}\n")).unwrap();
        }
        // Noise the real tree has too.
        std::fs::write(dir.path().join("online"), "0-1\n").unwrap();
        std::fs::create_dir(dir.path().join("power")).unwrap();
        let topology = Topology::from_sysfs_root(dir.path()).unwrap();
        (dir, topology)
    }

    fn request(cores: Option<&str>, switch_threads: usize, vm_threads: usize) -> PlacementRequest {
        PlacementRequest {
            cores: cores.map(|c| parse_cpulist(c).unwrap()),
            switch_threads,
            vm_threads,
            pool_node: None,
        }
    }

    #[test]
    fn cpulists_parse_ranges_singles_and_blanks() {
        assert_eq!(
            parse_cpulist("0-3,8-11\n").unwrap(),
            [0, 1, 2, 3, 8, 9, 10, 11]
        );
        assert_eq!(parse_cpulist("5").unwrap(), [5]);
        assert_eq!(parse_cpulist(" 3, 1-2 ,3 ").unwrap(), [1, 2, 3]);
        assert!(parse_cpulist("\n").unwrap().is_empty());
        for bad in ["3-1", "a", "1-", "0-99999", "1--2"] {
            assert!(parse_cpulist(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_fake_two_node_tree_is_read_in_node_order_ignoring_other_entries() {
        let (_dir, topology) = fake(&[(1, "4-7"), (0, "0-3")]);
        assert_eq!(
            topology.nodes(),
            &[
                Node {
                    id: 0,
                    cpus: vec![0, 1, 2, 3]
                },
                Node {
                    id: 1,
                    cpus: vec![4, 5, 6, 7]
                }
            ]
        );
        assert_eq!(topology.node_of_cpu(6), Some(1));
        assert_eq!(topology.node_of_cpu(8), None);
    }

    #[test]
    fn an_empty_tree_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Topology::from_sysfs_root(dir.path()),
            Err(NumaError::NoNodes(_))
        ));
    }

    #[test]
    fn one_node_with_enough_cores_gives_every_thread_its_own_core() {
        let (_dir, topology) = fake(&[(0, "0-7")]);
        let placement = plan(&topology, &request(Some("0-3"), 2, 2)).unwrap();
        let cores: Vec<usize> = placement.threads.iter().map(|t| t.core).collect();
        assert_eq!(cores, [0, 1, 2, 3]);
        assert_eq!(placement.threads[0].role, ThreadRole::Switch(0));
        assert_eq!(placement.threads[3].role, ThreadRole::Vm(1));
        assert!(!placement.oversubscribed);
        assert!(placement.warnings.is_empty());
    }

    #[test]
    fn two_nodes_place_threads_on_the_pool_node_first_and_flag_remote_ones() {
        let (_dir, topology) = fake(&[(0, "0-1"), (1, "2-5")]);
        // Most requested cores are on node 1, so the pool goes there.
        let placement = plan(&topology, &request(Some("1-5"), 1, 4)).unwrap();
        assert_eq!(placement.pool_node, 1);
        let seats: Vec<(usize, usize)> =
            placement.threads.iter().map(|t| (t.core, t.node)).collect();
        assert_eq!(seats, [(2, 1), (3, 1), (4, 1), (5, 1), (1, 0)]);
        assert_eq!(placement.warnings.len(), 1);
        assert!(placement.warnings[0].contains("vm 3 on core 1 (node 0) is remote"));
        let table = placement.to_string();
        assert!(table.contains("remote from pool"), "{table}");

        let pinned_pool = PlacementRequest {
            pool_node: Some(0),
            ..request(None, 2, 0)
        };
        let placement = plan(&topology, &pinned_pool).unwrap();
        assert_eq!(placement.threads[1].core, 1);
        assert!(placement.warnings.is_empty());
    }

    #[test]
    fn uneven_nodes_and_memory_only_nodes_are_handled() {
        let (_dir, topology) = fake(&[(0, "0"), (1, "1-6"), (2, "")]);
        let placement = plan(&topology, &request(None, 2, 2)).unwrap();
        assert_eq!(placement.pool_node, 1);
        assert!(placement.threads.iter().all(|t| t.node == 1));
        let memory_only = PlacementRequest {
            pool_node: Some(2),
            ..request(Some("0-1"), 1, 0)
        };
        let placement = plan(&topology, &memory_only).unwrap();
        assert!(placement.warnings.iter().any(|w| w.contains("has no CPUs")));
    }

    #[test]
    fn more_threads_than_cores_is_reported_and_switch_threads_keep_their_own_cores() {
        let (_dir, topology) = fake(&[(0, "0-1")]);
        let placement = plan(&topology, &request(Some("0-1"), 1, 3)).unwrap();
        assert!(placement.oversubscribed);
        let cores: Vec<usize> = placement.threads.iter().map(|t| t.core).collect();
        assert_eq!(cores, [0, 1, 1, 1]);
        assert!(!placement.threads[0].shares_core);
        assert!(placement.threads[1].shares_core);
        let table = placement.to_string();
        assert!(
            table.contains("OVERSUBSCRIBED") && table.contains("4 threads on 2 cores"),
            "{table}"
        );

        let placement = plan(&topology, &request(None, 3, 1)).unwrap();
        let cores: Vec<usize> = placement.threads.iter().map(|t| t.core).collect();
        assert_eq!(cores, [0, 1, 0, 1]);
    }

    #[test]
    fn unknown_cores_and_nodes_are_errors() {
        let (_dir, topology) = fake(&[(0, "0-1")]);
        assert!(matches!(
            plan(&topology, &request(Some("0-2"), 1, 0)),
            Err(NumaError::UnknownCore(2))
        ));
        assert!(matches!(
            plan(&topology, &request(Some(""), 1, 0)),
            Err(NumaError::NoCores)
        ));
        let bad_node = PlacementRequest {
            pool_node: Some(3),
            ..request(None, 1, 0)
        };
        assert!(matches!(
            plan(&topology, &bad_node),
            Err(NumaError::UnknownNode(3))
        ));
    }

    #[test]
    fn this_machine_has_a_topology_that_covers_the_cpus_we_may_use() {
        let topology = Topology::detect().unwrap();
        let allowed = allowed_cpus().unwrap();
        assert!(!allowed.is_empty());
        for cpu in &allowed {
            assert!(
                topology.node_of_cpu(*cpu).is_some(),
                "cpu {cpu} in {topology:?}"
            );
        }
        let placement = plan(
            &topology,
            &PlacementRequest {
                cores: Some(allowed.clone()),
                switch_threads: 1,
                vm_threads: allowed.len() + 1,
                pool_node: None,
            },
        )
        .unwrap();
        assert!(placement.oversubscribed);
        eprintln!("{placement}");
    }

    #[test]
    fn pinning_a_thread_confines_it_to_that_core() {
        let allowed = allowed_cpus().unwrap();
        let core = *allowed.last().unwrap();
        std::thread::spawn(move || {
            pin_current_thread(core).unwrap();
            assert_eq!(allowed_cpus().unwrap(), [core]);
            // SAFETY: sched_getcpu has no preconditions.
            assert_eq!(unsafe { libc::sched_getcpu() }, core as i32);
        })
        .join()
        .unwrap();
        assert!(matches!(
            pin_current_thread(100_000),
            Err(NumaError::Pin { core: 100_000, .. })
        ));
    }

    #[test]
    fn binding_the_region_to_node_0_succeeds_or_says_why() {
        use crate::layout::RegionConfig;
        use crate::region::HugepagePolicy;
        let region = SharedRegion::create(
            RegionConfig {
                buffer_count: 16,
                ring_count: 0,
                ring_slots: 2,
                counter_count: 0,
            },
            HugepagePolicy::Off,
        )
        .unwrap();
        match bind_region(&region, 0, MemPolicy::Preferred) {
            Ok(()) => {}
            Err(NumaError::Mbind { source, .. }) => {
                // Containers may forbid mbind; that must be a clean, reported error.
                eprintln!("mbind refused here: {source}");
            }
            Err(other) => panic!("unexpected {other}"),
        }
        // A node that cannot exist is refused by the kernel, not silently accepted.
        assert!(bind_region(&region, 63, MemPolicy::Bind).is_err());
    }
}
