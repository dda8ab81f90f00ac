//! VMs run by other processes: the attachment table between the control socket and the
//! switch engine.
//!
//! A VM bound as a process (`--vm NAME=process`, built-in [`vm::External`]) has two SPSC
//! rings like a VM thread: ring *in* (switch → VM) and ring *out* (VM → switch, each slot
//! an index and a verdict). The rings live in the shared region for a trusted VM and in
//! the VM's private region for an untrusted one; that region's memfd is what the control
//! socket hands the process, and nothing else.
//!
//! Who does what, with no lock on the data path:
//! - the **control thread** of a connection asks for a change by storing a new *want*
//!   word (a generation number and up/down), then waits for the engine to store the same
//!   word in *ack*;
//! - the **switch engine** checks every want word once per poll round (one relaxed load
//!   per process VM); on a change it brings the link up (fresh rings, its own ends
//!   claimed) or down (answers already written are taken, every packet the VM still held
//!   is freed and counted as lost, its private copies returned), then acknowledges.
//!
//! So a process that dies (the kernel closes its socket, the control thread sees the
//! hang-up at once) costs no buffers, and a restarted process attaches to the same VM
//! name and gets fresh rings. The engine alone resets rings, and only while it holds no
//! end of them.
//!
//! A VM bound to a QEMU guest (`--vm NAME=guest`, [`crate::guest`]) is the same kind of
//! VM: the guest supervisor attaches and detaches it through [`ExternalVms`] exactly as a
//! control connection does, and records what `netvm status` shows about the guest
//! ([`ExternalVm::set_guest`]); such a VM refuses attaches from the control socket.
//!
//! [`vm::External`]: crate::vm::External

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::region::SharedRegion;

/// How long a control thread waits for the switch engine to take a change.
pub const ENGINE_TIMEOUT: Duration = Duration::from_secs(3);

/// What the policy says happens to packets for a VM that is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFailure {
    /// Drop them, counted as `vm_down`.
    #[default]
    Drop,
    /// Skip the VM: the packet continues its chain as if the VM answered "next".
    Bypass,
}

impl OnFailure {
    pub fn name(self) -> &'static str {
        match self {
            OnFailure::Drop => "drop",
            OnFailure::Bypass => "bypass",
        }
    }
}

/// A want/ack word: generation in the high bits, up in bit 0.
pub(crate) fn word(generation: u64, up: bool) -> u64 {
    (generation << 1) | u64::from(up)
}

/// Whether a want/ack word says "up".
pub(crate) fn word_up(word: u64) -> bool {
    word & 1 == 1
}

/// One VM bound to a process.
#[derive(Debug)]
pub struct ExternalVm {
    pub name: String,
    pub vm: usize,
    pub trusted: bool,
    /// The region the process maps: the shared one (trusted) or the VM's private one.
    pub region: Arc<SharedRegion>,
    /// Ring numbers inside `region`.
    pub ring_in: usize,
    pub ring_out: usize,
    want: AtomicU64,
    ack: AtomicU64,
    /// The connection that holds the VM (0: none).
    owner: AtomicU64,
    pid: AtomicU32,
    writes: AtomicBool,
    attaches: AtomicU64,
    /// Set when a guest supervisor runs this VM: what `netvm status` shows of the guest.
    guest: Mutex<Option<Value>>,
}

impl ExternalVm {
    pub(crate) fn new(
        name: String,
        vm: usize,
        trusted: bool,
        region: Arc<SharedRegion>,
        ring_in: usize,
        ring_out: usize,
    ) -> ExternalVm {
        ExternalVm {
            name,
            vm,
            trusted,
            region,
            ring_in,
            ring_out,
            want: AtomicU64::new(0),
            ack: AtomicU64::new(0),
            owner: AtomicU64::new(0),
            pid: AtomicU32::new(0),
            writes: AtomicBool::new(false),
            attaches: AtomicU64::new(0),
            guest: Mutex::new(None),
        }
    }

    /// The engine's view: the current want word.
    #[inline]
    pub(crate) fn want(&self) -> u64 {
        self.want.load(Ordering::Acquire)
    }

    /// The engine took `want`.
    pub(crate) fn acknowledge(&self, want: u64) {
        self.ack.store(want, Ordering::Release);
    }

    /// Whether the engine has the VM up (as last acknowledged).
    pub fn is_up(&self) -> bool {
        word_up(self.ack.load(Ordering::Acquire))
    }

    /// Process id of the attached process (0: none).
    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::Relaxed)
    }

    /// Whether the attached process said it writes packets.
    pub fn writes(&self) -> bool {
        self.writes.load(Ordering::Relaxed)
    }

    /// How many times a process has attached.
    pub fn attaches(&self) -> u64 {
        self.attaches.load(Ordering::Relaxed)
    }

    /// Mark the VM as a guest's and record what `netvm status` shows of it (QEMU pid,
    /// accel, boot time, console log, ...).
    pub fn set_guest(&self, details: Value) {
        if let Ok(mut guest) = self.guest.lock() {
            *guest = Some(details);
        }
    }

    /// What the guest supervisor recorded; `None` for a VM run by a process.
    pub fn guest(&self) -> Option<Value> {
        self.guest.lock().ok().and_then(|g| g.clone())
    }

    /// Packets queued to the process right now.
    pub fn ring_fill(&self) -> usize {
        self.region.ring(self.ring_in).map_or(0, |r| r.len())
    }

    /// Ask the engine for `up` and wait until it took it.
    fn change(&self, up: bool, engine: &EngineState) -> Result<(), String> {
        let generation = (self.want.load(Ordering::Acquire) >> 1) + 1;
        let want = word(generation, up);
        self.want.store(want, Ordering::Release);
        let deadline = Instant::now() + ENGINE_TIMEOUT;
        loop {
            if self.ack.load(Ordering::Acquire) == want {
                return Ok(());
            }
            if engine.finished.load(Ordering::Acquire) {
                return Err("the switch has stopped".into());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the switch did not take the change within {} s (is it running?)",
                    ENGINE_TIMEOUT.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// Whether the engine is polling, shared by the control threads.
#[derive(Debug, Default)]
pub struct EngineState {
    pub(crate) finished: AtomicBool,
}

/// Every VM of the switch that a process may attach to.
#[derive(Debug, Default)]
pub struct ExternalVms {
    pub vms: Vec<Arc<ExternalVm>>,
    pub engine: EngineState,
    next_owner: AtomicU64,
}

/// What an attaching process gets: the memory to map and where its rings are.
#[derive(Debug)]
pub struct Grant {
    pub vm: Arc<ExternalVm>,
    pub region_fd: OwnedFd,
    /// Identifies this attachment in [`ExternalVms::detach`].
    pub owner: u64,
}

impl ExternalVms {
    pub(crate) fn new(vms: Vec<Arc<ExternalVm>>) -> ExternalVms {
        ExternalVms {
            vms,
            engine: EngineState::default(),
            next_owner: AtomicU64::new(1),
        }
    }

    pub fn by_name(&self, name: &str) -> Option<&Arc<ExternalVm>> {
        self.vms.iter().find(|v| v.name == name)
    }

    /// Attach process `pid` to VM `name`: the engine brings the link up with fresh rings.
    /// `vm_names` are every VM of the policy, for the error when `name` is not a process VM.
    pub fn attach(
        &self,
        name: &str,
        pid: u32,
        writes: bool,
        vm_names: &[String],
    ) -> Result<Grant, String> {
        let Some(vm) = self.by_name(name) else {
            return Err(if vm_names.iter().any(|n| n == name) {
                format!(
                    "VM `{name}` is bound to a built-in in this switch, not to a process \
                     (start the switch with `--vm {name}=process`)"
                )
            } else if vm_names.is_empty() {
                format!("no VM named `{name}`: the policy declares no VMs")
            } else {
                format!(
                    "no VM named `{name}` in the policy (it declares: {})",
                    vm_names.join(", ")
                )
            });
        };
        let owner = self.next_owner.fetch_add(1, Ordering::Relaxed);
        if let Err(held) = vm
            .owner
            .compare_exchange(0, owner, Ordering::AcqRel, Ordering::Acquire)
        {
            let _ = held;
            return Err(format!(
                "VM `{name}` is already attached (process {})",
                vm.pid()
            ));
        }
        let region_fd = match vm.region.fd().try_clone_to_owned() {
            Ok(fd) => fd,
            Err(e) => {
                vm.owner.store(0, Ordering::Release);
                return Err(format!("could not duplicate the region descriptor: {e}"));
            }
        };
        vm.pid.store(pid, Ordering::Relaxed);
        vm.writes.store(writes, Ordering::Relaxed);
        if let Err(e) = vm.change(true, &self.engine) {
            vm.pid.store(0, Ordering::Relaxed);
            vm.owner.store(0, Ordering::Release);
            return Err(e);
        }
        vm.attaches.fetch_add(1, Ordering::Relaxed);
        Ok(Grant {
            vm: vm.clone(),
            region_fd,
            owner,
        })
    }

    /// The process of attachment `owner` is gone (or said goodbye): the engine takes the
    /// VM down and reclaims what it held. Returns once the engine did (or has stopped).
    pub fn detach(&self, vm: &ExternalVm, owner: u64) {
        if vm.owner.load(Ordering::Acquire) != owner {
            return;
        }
        // The engine may already have stopped; then there is nothing left to reclaim.
        let _ = vm.change(false, &self.engine);
        vm.pid.store(0, Ordering::Relaxed);
        vm.owner.store(0, Ordering::Release);
    }
}
