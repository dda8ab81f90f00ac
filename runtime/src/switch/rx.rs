//! RX: a burst from a port, classified in one call, counted per rule run and per port,
//! each packet dispatched ([`super::dispatch`]). Ports whose device lends frames in place
//! ([`Port::device_domain`]) take [`Engine::rx_device`]: frames whose rule is a plain
//! `out`/`drop` never become pool buffers.

use super::*;

/// One burst of frames a device lent the switch ([`Engine::rx_device`]).
pub(super) struct LentBurst {
    pub(super) frames: [DeviceFrame; MAX_BURST],
    /// Each frame's rule.
    pub(super) rules: [u32; MAX_BURST],
    /// Frames whose rule is a plain `drop`, given straight back.
    pub(super) dropped: [DeviceFrame; MAX_BURST],
    /// Frames that go out as they are, and the port each goes to.
    pub(super) staged: [DeviceFrame; MAX_BURST],
    pub(super) staged_port: [u32; MAX_BURST],
    /// Indices (into `frames`) of frames for the general path.
    pub(super) general: [u8; MAX_BURST],
}

/// A burst's rule counts, added to a program's rule counters (one shard's) per run of
/// frames with the same rule rather than per frame: a burst is mostly one or two runs,
/// and consecutive load/store pairs on one counter would each wait for the one before.
pub(super) struct RuleRuns<'a> {
    pub(super) counters: &'a [Arc<RuleCounters>],
    pub(super) rule: u32,
    pub(super) packets: u64,
    pub(super) bytes: u64,
}

impl<'a> RuleRuns<'a> {
    pub(super) fn new(counters: &'a [Arc<RuleCounters>]) -> Self {
        RuleRuns {
            counters,
            rule: 0,
            packets: 0,
            bytes: 0,
        }
    }

    /// One frame of `bytes` bytes matched `rule` (an index into the counters).
    #[inline]
    pub(super) fn add(&mut self, rule: u32, bytes: u64) {
        if rule != self.rule {
            self.finish();
            self.rule = rule;
        }
        self.packets += 1;
        self.bytes += bytes;
    }

    /// Add the current run to its counters.
    #[inline]
    pub(super) fn finish(&mut self) {
        if self.packets > 0 {
            let rc = &self.counters[self.rule as usize];
            rc.packets.add(self.packets);
            rc.bytes.add(self.bytes);
            (self.packets, self.bytes) = (0, 0);
        }
    }
}

impl Drop for RuleRuns<'_> {
    /// The last run is added when the burst's count goes out of scope.
    fn drop(&mut self) {
        self.finish();
    }
}

impl Engine {
    /// One RX burst from `port`; returns packets received.
    #[inline]
    pub(super) fn rx(&mut self, prog: &Program, port: usize) -> usize {
        if let Some(domain) = self.port_domain[port] {
            return self.rx_device(prog, port, domain);
        }
        let mut indices = [0u32; MAX_BURST];
        let (n, oversize, oversize_bytes) = {
            let mut burst =
                RxBurst::new(&mut self.cache, &mut indices[..self.burst_len], port as u16);
            self.ports[port].rx_burst(&mut burst);
            (burst.len(), burst.oversize, burst.oversize_bytes)
        };
        self.count_oversize(port, oversize);
        self.stats.ports[port].rx_bytes.add(oversize_bytes);
        if n == 0 {
            return oversize as usize;
        }
        let mut rules = [0u32; MAX_BURST];
        let mut lens = [0usize; MAX_BURST];
        {
            let mut frames: [&[u8]; MAX_BURST] = [&[]; MAX_BURST];
            for (i, &index) in indices[..n].iter().enumerate() {
                // SAFETY: we allocated these buffers in this burst and hold their only
                // reference; nothing writes them until the frames array is dropped.
                frames[i] = unsafe { self.pool.buf_data(index) }.unwrap_or(&[]);
                lens[i] = frames[i].len();
            }
            prog.classifier
                .classify_burst(&frames[..n], port as u32, &mut rules[..n]);
        }
        let mut bytes = 0u64;
        let mut counted = RuleRuns::new(prog.rule_counters(self.shard));
        let default_rule = prog.table.rules.len() as u32;
        for i in 0..n {
            bytes += lens[i] as u64;
            let rule = rules[i].min(default_rule);
            counted.add(rule, lens[i] as u64);
            self.dispatch(prog, indices[i], rule);
        }
        let counters = &self.stats.ports[port];
        counters.rx_packets.add(n as u64);
        counters.rx_bytes.add(bytes);
        self.publish_all();
        n + oversize as usize
    }

    /// Frames the port consumed as oversize: received, and dropped.
    #[inline]
    pub(super) fn count_oversize(&self, port: usize, oversize: u64) {
        if oversize > 0 {
            self.stats.ports[port].rx_packets.add(oversize);
            self.stats.count_drop(DropReason::Oversize, oversize);
        }
    }

    /// One RX burst from a port of device domain `domain`: the frames are classified
    /// where the device put them; a frame whose rule is just `out PORT` to a port of the
    /// same domain is batched for it as it is (no pool buffer, no header, no chain
    /// walk), one whose rule is just `drop` goes straight back; every other frame is adopted into a pool buffer and dispatched as
    /// [`rx`](Self::rx) does. Zero-copy either way: the device's buffers are the pool's.
    pub(super) fn rx_device(&mut self, prog: &Program, port: usize, domain: usize) -> usize {
        let (n, oversize) = self.ports[port].rx_device(&mut self.lent.frames[..self.burst_len]);
        let n = n.min(self.burst_len);
        self.count_oversize(port, oversize);
        if n == 0 {
            return oversize as usize;
        }
        let lent = &mut *self.lent;
        {
            let mut bytes: [&[u8]; MAX_BURST] = [&[]; MAX_BURST];
            for (slot, frame) in bytes.iter_mut().zip(&lent.frames[..n]) {
                // SAFETY: the port lent us these frames for this burst and nobody writes
                // them until we give them back (after the slices are dropped).
                *slot = unsafe { frame.bytes() };
            }
            prog.classifier
                .classify_burst(&bytes[..n], port as u32, &mut lent.rules[..n]);
        }
        let default_rule = prog.table.rules.len() as u32;
        let mut total = 0u64;
        let mut general_n = 0;
        let mut dropped_n = 0;
        let mut staged_n = 0;
        {
            let mut counted = RuleRuns::new(prog.rule_counters(self.shard));
            for i in 0..n {
                let frame = lent.frames[i];
                let len = u64::from(frame.len);
                total += len;
                let rule = lent.rules[i].min(default_rule);
                lent.rules[i] = rule;
                counted.add(rule, len);
                // `Program` keeps both answers per rule: one load each, no lookup.
                match prog.direct_out(rule) {
                    Some(out) if self.port_domain.get(out) == Some(&Some(domain)) => {
                        lent.staged[staged_n] = frame;
                        lent.staged_port[staged_n] = out as u32;
                        staged_n += 1;
                    }
                    _ if prog.plain_drop(rule) => {
                        lent.dropped[dropped_n] = frame;
                        dropped_n += 1;
                    }
                    _ => {
                        lent.general[general_n] = i as u8;
                        general_n += 1;
                    }
                }
            }
        }
        // The frames that go out as they are join their port's batch a run of one port at
        // a time (a burst is mostly one run), not one push per frame.
        let mut k = 0;
        while k < staged_n {
            let out = lent.staged_port[k];
            let run = lent.staged_port[k..staged_n]
                .iter()
                .take_while(|&&p| p == out)
                .count();
            let out = out as usize;
            let batch = &mut self.device_batches[out];
            if batch.len() + run > MAX_BURST {
                Self::send_device_batch(&mut self.ports, &self.stats, batch, out);
            }
            batch.extend_from_slice(&lent.staged[k..k + run]);
            if batch.len() >= self.burst_len {
                Self::send_device_batch(&mut self.ports, &self.stats, batch, out);
            }
            k += run;
        }
        if dropped_n > 0 {
            self.ports[port].free_device(&self.lent.dropped[..dropped_n]);
            self.stats.count_drop(DropReason::Policy, dropped_n as u64);
        }
        for k in 0..general_n {
            let i = self.lent.general[k] as usize;
            let (frame, rule) = (self.lent.frames[i], self.lent.rules[i]);
            let mut held = [0u32; 1];
            let adopted = {
                let mut burst = RxBurst::new(&mut self.cache, &mut held, port as u16);
                self.ports[port].adopt_device(frame, &mut burst) && burst.len() == 1
            };
            if adopted {
                self.dispatch(prog, held[0], rule);
            } else {
                self.stats.count_drop(DropReason::NoBuffer, 1);
            }
        }
        let counters = &self.stats.ports[port];
        counters.rx_packets.add(n as u64);
        counters.rx_bytes.add(total);
        self.publish_all();
        n + oversize as usize
    }
}
