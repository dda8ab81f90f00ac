//! VM processes: attach and detach requests from the control socket, taking a dead or
//! cut-off process's packets back (every buffer freed, counted `vm_lost`/`vm_down`), and
//! declaring a process that stops answering stalled.

use super::*;

/// A VM run by another process: rings like a thread's, but the process may come and go.
pub(super) struct ProcessLink {
    pub(super) ext: Arc<ExternalVm>,
    pub(super) ring_in: Ring,
    pub(super) ring_out: Ring,
    /// Our ends while the VM is up.
    pub(super) ends: Option<(RingProducer, RingConsumer)>,
    /// The last want word the engine acted on.
    pub(super) seen: u64,
    /// Taken down for good (the switch is stopping); attaches are no longer taken.
    pub(super) closed: bool,
    /// Packets the process holds, in the order it will answer.
    pub(super) fifo: VecDeque<Pending>,
    /// Packets waiting for room in its ring (RX pauses meanwhile, as for threads).
    pub(super) backlog: VecDeque<Pending>,
    /// When the process last answered while packets waited for it.
    pub(super) last_progress: Instant,
    /// Declared stalled: packets for it are dropped (`vm_full`) until its ring is half
    /// empty again, so a process that stops draining cannot stall the switch.
    pub(super) stalled: bool,
}

/// How long a VM process may leave a backlog waiting without answering anything before
/// the switch stops waiting for it and drops its overflow ([`SwitchConfig::process_stall`]).
pub const DEFAULT_PROCESS_STALL: Duration = Duration::from_millis(10);

impl Engine {
    /// Act on attach/detach requests from the control socket (one load per process VM).
    pub(super) fn sync_external(&mut self, prog: &Program) {
        for i in 0..self.process_vms.len() {
            let vm = self.process_vms[i];
            let Link::Process(p) = &mut self.vms[vm].link else {
                continue;
            };
            let want = p.ext.want();
            if want == p.seen || p.closed {
                continue;
            }
            let up = external::word_up(want);
            if up && p.ends.is_none() {
                // SAFETY: we hold no end of either ring (ends is None), and the control
                // thread asks for "up" only for a new owner, after the previous owner's
                // "down" was acknowledged here: its process has exited or been cut off.
                let reset = unsafe { p.ring_in.reset().and(p.ring_out.reset()) };
                let claimed =
                    reset.and_then(|()| Ok((p.ring_in.producer()?, p.ring_out.consumer()?)));
                if let Ok(ends) = claimed {
                    p.ends = Some(ends);
                    let writes = p.ext.writes();
                    self.vms[vm].writes = writes;
                }
            } else if !up && p.ends.is_some() {
                self.take_down(prog, vm);
            }
            if let Link::Process(p) = &mut self.vms[vm].link {
                p.seen = want;
                p.ext.acknowledge(want);
            }
        }
    }

    /// A VM process is gone: take the answers it already wrote, then free every packet
    /// it still held (counted lost) and its private copies, and drop our ring ends.
    pub(super) fn take_down(&mut self, prog: &Program, vm: usize) {
        // Bounded: a cut-off process that is still alive cannot keep us here.
        for _ in 0..=self.ring_slots / MAX_BURST {
            if self.drain_vm(prog, vm) == 0 {
                break;
            }
        }
        let Link::Process(p) = &mut self.vms[vm].link else {
            return;
        };
        // A process asleep on its doorbell wakes and sees the switch gone or cut off.
        if let Some((tx, _)) = &p.ends {
            tx.kick();
        }
        p.ends = None;
        p.stalled = false;
        // Packets still waiting to be sent never reached it: dropped as for a down VM.
        let waiting: Vec<Pending> = p.backlog.drain(..).collect();
        for pending in waiting {
            self.gens.release(pending.generation);
            self.settle(pending.shared, pending.mirror, DropReason::VmDown);
        }
        let Link::Process(p) = &mut self.vms[vm].link else {
            return;
        };
        let lost: Vec<Pending> = p.fifo.drain(..).collect();
        for pending in lost {
            self.gens.release(pending.generation);
            if let Some(cache) = &mut self.vms[vm].copy_cache {
                let _ = cache.free(pending.given);
            }
            self.settle(pending.shared, pending.mirror, DropReason::VmLost);
        }
    }

    /// A process that has left its backlog waiting for `process_stall` without an
    /// answer is declared stalled: its backlog is dropped and so is what comes for it,
    /// until its ring is half empty again. Reads the clock only while a backlog waits.
    pub(super) fn check_stalls(&mut self) {
        let mut now = None;
        for i in 0..self.process_vms.len() {
            let vm = self.process_vms[i];
            let ring_slots = self.ring_slots;
            let Link::Process(p) = &mut self.vms[vm].link else {
                continue;
            };
            if p.stalled {
                if p.fifo.len() <= ring_slots / 2 {
                    p.stalled = false;
                }
                continue;
            }
            if p.backlog.is_empty() {
                continue;
            }
            let now = *now.get_or_insert_with(Instant::now);
            if now.duration_since(p.last_progress) < self.process_stall {
                continue;
            }
            p.stalled = true;
            let dropped: Vec<Pending> = p.backlog.drain(..).collect();
            for pending in dropped {
                self.gens.release(pending.generation);
                self.settle(pending.shared, pending.mirror, DropReason::VmFull);
            }
        }
    }

    /// Whether every process VM is attached.
    pub(super) fn processes_up(&self) -> bool {
        self.process_vms.iter().all(|&vm| match &self.vms[vm].link {
            Link::Process(p) => p.ends.is_some(),
            _ => true,
        })
    }

    /// The switch is stopping: take every process VM down for good.
    pub(super) fn close_external(&mut self, prog: &Program) {
        for i in 0..self.process_vms.len() {
            let vm = self.process_vms[i];
            self.take_down(prog, vm);
            if let Link::Process(p) = &mut self.vms[vm].link {
                p.closed = true;
                let want = p.ext.want();
                p.ext.acknowledge(external::word(want >> 1, false));
            }
        }
    }
}
