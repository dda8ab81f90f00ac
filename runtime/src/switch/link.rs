//! Links to VMs: what the switch keeps per VM ([`VmSlot`]), how a packet is handed to a
//! VM ([`Engine::visit`]: run inline, or queued on a thread's or process's ring with a
//! [`Pending`] record in the link's FIFO), how answers come back ([`Engine::drain_vm`],
//! [`Engine::answered`]), and the untrusted VMs' private copies in and out. The VM thread
//! itself is [`VmWorker`].

use super::*;

/// What the switch remembers about a packet a VM thread holds.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pending {
    /// The packet's buffer in the shared pool.
    pub(super) shared: u32,
    /// The index the VM was given: `shared` for trusted VMs, a private one otherwise.
    pub(super) given: u32,
    pub(super) rule: u32,
    /// Next hop of the chain once the VM is done.
    pub(super) pos: u32,
    pub(super) mirror: bool,
    /// The program the packet was classified by: it finishes that program's chain even
    /// if a reload installs another meanwhile.
    pub(super) generation: u32,
}

pub(super) enum Link {
    Inline(Box<dyn NetworkFunction>),
    Process(ProcessLink),
    Thread {
        tx: RingProducer,
        rx: RingConsumer,
        /// Packets the VM holds, in the order it will answer.
        fifo: VecDeque<Pending>,
        /// Packets waiting for room in the VM's queue.
        backlog: VecDeque<Pending>,
    },
}

pub(super) struct VmSlot {
    pub(super) trusted: bool,
    pub(super) writes: bool,
    pub(super) hold: Duration,
    /// Allocation cache over the VM's private pool (untrusted VMs).
    pub(super) copy_cache: Option<PoolCache>,
    /// Indices queued for the VM's ring but not yet published: the last `staged.len()`
    /// entries of the FIFO. A burst goes onto the ring with one store of its head
    /// ([`Engine::publish`]), not one per packet, so the VM's core sees the ring's
    /// head line change once per burst instead of bouncing it with every packet.
    pub(super) staged: Vec<u32>,
    pub(super) link: Link,
}

impl VmSlot {
    #[inline]
    pub(super) fn in_flight(&self) -> usize {
        match &self.link {
            Link::Inline(_) => 0,
            Link::Thread { fifo, backlog, .. } => fifo.len() + backlog.len(),
            Link::Process(p) => p.fifo.len() + p.backlog.len(),
        }
    }
}

impl Link {
    /// Packets a VM thread or process holds, in answer order.
    #[inline]
    pub(super) fn fifo_mut(&mut self) -> Option<&mut VecDeque<Pending>> {
        match self {
            Link::Thread { fifo, .. } => Some(fifo),
            Link::Process(p) => Some(&mut p.fifo),
            Link::Inline(_) => None,
        }
    }

    /// Whether the VM runs elsewhere and answers through a ring.
    #[inline]
    pub(super) fn queued(&self) -> bool {
        !matches!(self, Link::Inline(_))
    }

    /// Packets waiting for room in the VM's ring.
    #[inline]
    pub(super) fn backlog_mut(&mut self) -> Option<&mut VecDeque<Pending>> {
        match self {
            Link::Thread { backlog, .. } => Some(backlog),
            Link::Process(p) => Some(&mut p.backlog),
            Link::Inline(_) => None,
        }
    }

    #[inline]
    pub(super) fn backlog_len(&self) -> usize {
        match self {
            Link::Thread { backlog, .. } => backlog.len(),
            Link::Process(p) => p.backlog.len(),
            Link::Inline(_) => 0,
        }
    }
}

/// Copy `len` bytes of buffer `from` (in `src`) into buffer `to` (in `dst`), which must
/// be exclusively held.
#[inline]
pub(super) fn copy_buffer(src: &PacketPool, from: u32, dst: &PacketPool, to: u32) -> usize {
    // SAFETY: the switch holds a reference to `from` (nobody writes a buffer with more
    // than one reference, and a VM that holds it is not running on it: the switch only
    // copies buffers it has been handed back or has not sent yet), and `to` was just
    // allocated or returned to the switch, so it holds the only reference.
    unsafe {
        let Ok(bytes) = src.buf_data(from) else {
            return 0;
        };
        if dst.write_data(to, bytes).is_err() {
            return 0;
        }
        bytes.len()
    }
}

/// A copy made for a VM carries the packet's ingress port (a VM process reads it from the
/// buffer header). Copies back from a VM keep the original's port: a VM cannot change it.
#[inline]
pub(super) fn carry_port(src: &PacketPool, from: u32, dst: &PacketPool, to: u32) {
    if let Ok(port) = src.port(from) {
        let _ = dst.set_port(to, port);
    }
}

impl Engine {
    /// A private copy of `index` in the shared pool (for a VM that writes a buffer
    /// someone else also references). Frees our reference to the original.
    #[inline]
    pub(super) fn unshare(&mut self, index: u32) -> Option<u32> {
        let copy = self.cache.alloc()?;
        copy_buffer(&self.pool, index, &self.pool, copy);
        carry_port(&self.pool, index, &self.pool, copy);
        let _ = self.cache.free(index);
        Some(copy)
    }

    /// Hand the packet to VM `vm`. Inline: run it and return the buffer and verdict.
    /// Thread: queue it under its program's generation (`by`) and return `None` (the
    /// answer comes through `drain_vm`).
    #[inline]
    pub(super) fn visit(
        &mut self,
        by: ClassifiedBy<'_>,
        vm: usize,
        mut index: u32,
        rule: u32,
        pos: u32,
        mirror: bool,
    ) -> Option<(u32, Verdict)> {
        if let Link::Process(p) = &self.vms[vm].link {
            if p.ends.is_none() {
                let mut on_failure = by
                    .program
                    .table
                    .vm_on_failure
                    .get(vm)
                    .copied()
                    .unwrap_or_default();
                if on_failure == OnFailure::Bypass
                    && by.program.chain(rule).get(pos as usize).is_none()
                {
                    // Nothing after the VM to go on to (`to VM`, or the last hop): the
                    // packet is lost to the down VM, not to the chain's end.
                    on_failure = OnFailure::Drop;
                }
                return self.visit_down(on_failure, index, mirror);
            }
        }
        let counters = &self.stats.vms[vm];
        if mirror {
            counters.mirrored_in.add(1);
        } else {
            counters.packets_in.add(1);
        }
        let slot = &self.vms[vm];
        if slot.trusted && slot.writes && self.pool.refcount(index).unwrap_or(0) > 1 {
            match self.unshare(index) {
                Some(copy) => index = copy,
                None => {
                    self.settle(index, mirror, DropReason::NoBuffer);
                    return None;
                }
            }
        }
        let pending = Pending {
            shared: index,
            given: index,
            rule,
            pos,
            mirror,
            generation: by.generation,
        };
        if matches!(self.vms[vm].link, Link::Inline(_)) {
            let (index, verdict) = self.run_inline(vm, index, mirror);
            let pending = Pending {
                shared: index,
                given: index,
                ..pending
            };
            return self.answered(vm, pending, verdict);
        }
        if let Link::Process(p) = &self.vms[vm].link {
            if p.stalled || p.backlog.len() >= self.ring_slots {
                // Stalled, or as far behind as a whole ring: drop, never wait.
                self.settle(pending.shared, mirror, DropReason::VmFull);
                return None;
            }
        }
        // From here the packet is queued to the VM (its ring or its backlog).
        self.gens.hold(pending.generation);
        let fits = self.vms[vm].link.backlog_len() == 0;
        if !(fits && self.send(vm, pending)) {
            if let Link::Process(p) = &mut self.vms[vm].link {
                if p.backlog.is_empty() {
                    p.last_progress = Instant::now();
                }
            }
            if let Some(backlog) = self.vms[vm].link.backlog_mut() {
                backlog.push_back(pending);
            }
        }
        None
    }

    /// A packet for a VM whose process is down: the policy's `on_failure` decides.
    pub(super) fn visit_down(
        &mut self,
        on_failure: OnFailure,
        index: u32,
        mirror: bool,
    ) -> Option<(u32, Verdict)> {
        if mirror {
            // A down VM gets no copy; the extra reference is settled.
            self.settle(index, true, DropReason::VmDown);
            return None;
        }
        match on_failure {
            OnFailure::Bypass => Some((index, Verdict::Next)),
            OnFailure::Drop => {
                self.drop(index, DropReason::VmDown);
                None
            }
        }
    }

    /// Run an inline VM on buffer `index`; an untrusted VM works on a private copy,
    /// copied back unless this is a mirror visit. Returns the packet's buffer (a fresh
    /// one when the original was shared and had to be copied) and the verdict.
    #[inline]
    pub(super) fn run_inline(
        &mut self,
        vm: usize,
        index: u32,
        mirror: bool,
    ) -> (u32, Option<Verdict>) {
        let slot = &mut self.vms[vm];
        let Link::Inline(nf) = &mut slot.link else {
            return (index, None);
        };
        let deadline = (!slot.hold.is_zero()).then(|| Instant::now() + slot.hold);
        let mut index = index;
        let verdict = match &mut slot.copy_cache {
            None => {
                let exclusive = self.pool.refcount(index).unwrap_or(0) == 1;
                // SAFETY: the switch holds a reference to `index`; when it is the only
                // one the VM may write (exclusive), otherwise it only reads.
                unsafe {
                    if exclusive {
                        self.pool.buf_data_mut(index).ok().map(|bytes| {
                            let mut frame = Frame::exclusive(bytes);
                            let verdict = nf.process(&mut frame);
                            if frame.written() {
                                let _ = self.pool.forget_content(index);
                            }
                            verdict
                        })
                    } else {
                        self.pool
                            .buf_data(index)
                            .ok()
                            .map(|bytes| nf.process(&mut Frame::shared(bytes)))
                    }
                }
            }
            Some(cache) => match cache.alloc() {
                None => None,
                Some(copy) => {
                    let private = cache.pool().clone();
                    let tag = self.pool.content_tag(index).unwrap_or(0);
                    let mut copied = copy_buffer(&self.pool, index, &private, copy);
                    let mut written = false;
                    // SAFETY: `copy` was just allocated from the VM's private pool; the
                    // switch holds its only reference.
                    let verdict = unsafe { private.buf_data_mut(copy) }.ok().map(|bytes| {
                        let mut frame = Frame::exclusive(bytes);
                        let verdict = nf.process(&mut frame);
                        written = frame.written();
                        verdict
                    });
                    if !mirror {
                        if self.pool.refcount(index).unwrap_or(0) > 1 {
                            if let Some(fresh) = self.cache.alloc() {
                                let _ = self.cache.free(index);
                                index = fresh;
                            }
                        }
                        if self.pool.refcount(index).unwrap_or(0) == 1 {
                            let back = copy_buffer(&private, copy, &self.pool, index);
                            copied += back;
                            if !written && back > 0 {
                                // The copy brought back the very bytes it took, so
                                // what the tag said of them still holds.
                                let _ = self.pool.set_content_tag(index, tag);
                            }
                        }
                    }
                    let _ = cache.free(copy);
                    self.stats.vms[vm].copied_bytes.add(copied as u64);
                    verdict
                }
            },
        };
        if let Some(deadline) = deadline {
            while Instant::now() < deadline {
                std::hint::spin_loop();
            }
        }
        (index, verdict)
    }

    /// Queue a pending packet for a VM thread's or process's ring (staged, published with
    /// its burst); `false` when there is no room.
    #[inline]
    pub(super) fn send(&mut self, vm: usize, mut pending: Pending) -> bool {
        let ring_slots = self.ring_slots;
        let slot = &mut self.vms[vm];
        let fifo = match &mut slot.link {
            Link::Thread { fifo, .. } => fifo,
            Link::Process(ProcessLink {
                ends: Some(_),
                fifo,
                ..
            }) => fifo,
            _ => return false,
        };
        if fifo.len() >= ring_slots {
            return false;
        }
        if let Some(cache) = &mut slot.copy_cache {
            let Some(copy) = cache.alloc() else {
                return false;
            };
            let bytes = copy_buffer(&self.pool, pending.shared, cache.pool(), copy);
            carry_port(&self.pool, pending.shared, cache.pool(), copy);
            self.stats.vms[vm].copied_bytes.add(bytes as u64);
            pending.given = copy;
        }
        if slot.staged.is_empty() {
            self.staged_vms.push(vm);
        }
        slot.staged.push(pending.given);
        fifo.push_back(pending);
        if slot.staged.len() >= MAX_BURST {
            self.publish(vm);
        }
        true
    }

    /// Put VM `vm`'s staged indices on its ring with one head store, and wake the VM if
    /// it sleeps. Whatever does not fit (only a process that corrupts its ring's indices
    /// can make that happen: the FIFO never holds more than the ring has slots) goes
    /// back to the front of the backlog, its private copy freed, as a failed send
    /// always did.
    #[inline]
    pub(super) fn publish(&mut self, vm: usize) {
        let slot = &mut self.vms[vm];
        if slot.staged.is_empty() {
            return;
        }
        let sent = match &mut slot.link {
            Link::Thread { tx, .. }
            | Link::Process(ProcessLink {
                ends: Some((tx, _)),
                ..
            }) => {
                let sent = tx.enqueue_burst(&slot.staged);
                // A VM that found nothing to do for a while sleeps on its ring's doorbell.
                tx.kick();
                sent
            }
            // A process taken down with packets staged (not reached: take_down runs
            // between rounds, when nothing is staged): back to the backlog.
            _ => 0,
        };
        let unsent = slot.staged.len() - sent;
        slot.staged.clear();
        for _ in 0..unsent {
            let Some(fifo) = slot.link.fifo_mut() else {
                break;
            };
            let Some(mut pending) = fifo.pop_back() else {
                break;
            };
            if let Some(cache) = &mut slot.copy_cache {
                let _ = cache.free(pending.given);
                pending.given = pending.shared;
            }
            if let Link::Process(p) = &mut slot.link {
                if p.backlog.is_empty() {
                    p.last_progress = Instant::now();
                }
            }
            if let Some(backlog) = slot.link.backlog_mut() {
                backlog.push_front(pending);
            }
        }
    }

    /// Publish every VM's staged burst (after an RX burst, after a VM's answers).
    #[inline]
    pub(super) fn publish_all(&mut self) {
        while let Some(vm) = self.staged_vms.pop() {
            self.publish(vm);
        }
    }

    /// Take a VM thread's answers; returns how many.
    pub(super) fn drain_vm(&mut self, prog: &Program, vm: usize) -> usize {
        let mut answers = [0u32; MAX_BURST];
        let n = match &mut self.vms[vm].link {
            Link::Thread { rx, .. } => rx.dequeue_burst(&mut answers),
            Link::Process(ProcessLink {
                ends: Some((_, rx)),
                ..
            }) => rx.dequeue_burst(&mut answers),
            _ => 0,
        };
        if n > 0 {
            if let Link::Process(p) = &mut self.vms[vm].link {
                p.last_progress = Instant::now();
            }
        }
        // Answers can only be for packets on the ring: nothing is staged between bursts,
        // and what the answers below stage (a `to` back to this VM, the backlog) is not
        // the VM's to answer yet.
        let mut on_ring = self.vms[vm]
            .link
            .fifo_mut()
            .map_or(0, |f| f.len())
            .saturating_sub(self.vms[vm].staged.len());
        for &answer in &answers[..n] {
            let (given, verdict) = vm::wire::decode(answer);
            let Some(fifo) = self.vms[vm].link.fifo_mut() else {
                break;
            };
            if on_ring == 0 {
                // An answer for nothing we sent: ignore it rather than free a stranger.
                continue;
            }
            on_ring -= 1;
            let Some(pending) = fifo.pop_front() else {
                continue;
            };
            // The FIFO, not the VM, says which buffer this is; a VM that answers with
            // another index has its verdict ignored.
            let verdict = (given == pending.given).then_some(verdict);
            // Classified before a reload: the packet finishes the old program's chain.
            let retired = self.gens.retired_program(pending.generation);
            if let Some((index, verdict)) = self.answered(vm, pending, verdict) {
                let by = match &retired {
                    Some(old) => ClassifiedBy {
                        program: old,
                        generation: pending.generation,
                    },
                    None => ClassifiedBy {
                        program: prog,
                        generation: self.gens.generation,
                    },
                };
                self.apply(by, index, pending, verdict);
            }
            // Only now: a next VM hop has taken its own hold, so a retired program its
            // chain still needs is not freed in between.
            self.gens.release(pending.generation);
        }
        // Room freed: move the backlog in.
        loop {
            let next = self.vms[vm]
                .link
                .backlog_mut()
                .and_then(|b| b.front().copied());
            let Some(pending) = next else { break };
            if !self.send(vm, pending) {
                break;
            }
            if let Some(backlog) = self.vms[vm].link.backlog_mut() {
                backlog.pop_front();
            }
        }
        self.publish_all();
        n
    }

    /// A VM is done with `pending`: copy an untrusted VM's private frame back, settle
    /// mirrors and count the verdict. Returns the shared buffer and verdict to act on.
    #[inline]
    pub(super) fn answered(
        &mut self,
        vm: usize,
        pending: Pending,
        verdict: Option<Verdict>,
    ) -> Option<(u32, Verdict)> {
        let mut index = pending.shared;
        // Only a VM thread holds a private copy here (inline visits copied back already).
        // Compare kinds, not indices: a private index may equal a shared one.
        let thread = self.vms[vm].link.queued();
        // An untrusted VM that wrote a data window past its buffer answered with garbage:
        // refused (counted as a bad verdict), never sent on clamped.
        let unsound = thread
            && !pending.mirror
            && self.vms[vm]
                .copy_cache
                .as_ref()
                .is_some_and(|c| !c.pool().data_window_is_sound(pending.given));
        if unsound {
            if let Some(cache) = &mut self.vms[vm].copy_cache {
                let _ = cache.free(pending.given);
            }
            self.stats.vms[vm].dropped.add(1);
            self.drop(index, DropReason::BadVerdict);
            return None;
        }
        if thread && self.vms[vm].copy_cache.is_some() {
            // Untrusted: copy the (possibly rewritten) frame back, then free the copy.
            if let Some(cache) = &mut self.vms[vm].copy_cache {
                let private = cache.pool().clone();
                if !pending.mirror {
                    if self.pool.refcount(index).unwrap_or(0) > 1 {
                        if let Some(copy) = self.cache.alloc() {
                            let _ = self.cache.free(index);
                            index = copy;
                        }
                    }
                    if self.pool.refcount(index).unwrap_or(0) == 1 {
                        let bytes = copy_buffer(&private, pending.given, &self.pool, index);
                        self.stats.vms[vm].copied_bytes.add(bytes as u64);
                    }
                }
                let _ = cache.free(pending.given);
            }
        }
        let counters = &self.stats.vms[vm];
        let verdict = verdict.unwrap_or(Verdict::Drop);
        if verdict == Verdict::Drop {
            counters.dropped.add(1);
        } else {
            counters.passed.add(1);
        }
        if pending.mirror {
            self.settle(index, true, DropReason::Vm);
            return None;
        }
        Some((index, verdict))
    }
}

/// A VM on its own thread: read indices, run the function, answer in order, over one
/// ring pair per switch thread.
pub(super) struct VmWorker {
    pub(super) nf: Box<dyn NetworkFunction>,
    /// The shared pool for a trusted VM, the VM's private pool for an untrusted one.
    pub(super) pool: PacketPool,
    /// (packets in, answers out), one pair per switch thread.
    pub(super) pairs: Vec<(RingConsumer, RingProducer)>,
    pub(super) shutdown: Arc<AtomicBool>,
    pub(super) idle: IdlePolicy,
    pub(super) core: Option<usize>,
}

impl VmWorker {
    pub(super) fn run(mut self) -> Box<dyn NetworkFunction> {
        if let Some(core) = self.core {
            // Running unpinned is slower, not wrong; the switch reports its own pinning.
            let _ = numa::pin_current_thread(core);
        }
        let shutdown = self.shutdown.clone();
        let mut pairs: Vec<(&mut RingConsumer, &mut RingProducer)> =
            self.pairs.iter_mut().map(|(rx, tx)| (rx, tx)).collect();
        vm::serve_pairs(self.nf.as_mut(), &self.pool, &mut pairs, self.idle, || {
            shutdown.load(Ordering::Acquire)
        });
        self.nf
    }
}
