//! TX and drops: per-port batches of pool buffers and of lent device frames, flushed
//! to the drivers with their counters; a drop counts its reason and frees the buffer.

use super::*;

impl Engine {
    #[inline]
    pub(super) fn drop(&mut self, index: u32, reason: DropReason) {
        self.stats.count_drop(reason, 1);
        let _ = self.cache.free(index);
    }

    /// A reference that ends here: a mirror's extra reference is settled (it is not a
    /// packet, so it is not a drop), a packet is counted dropped for `reason`; either
    /// way the buffer reference is freed.
    #[inline]
    pub(super) fn settle(&mut self, index: u32, mirror: bool, reason: DropReason) {
        if mirror {
            self.stats.mirrors_done.add(1);
            let _ = self.cache.free(index);
        } else {
            self.drop(index, reason);
        }
    }

    #[inline]
    pub(super) fn tx(&mut self, port: usize, index: u32) {
        match self.port_has_tx.get(port) {
            None => return self.drop(index, DropReason::BadVerdict),
            Some(false) => return self.drop(index, DropReason::NoTx),
            Some(true) => {}
        }
        self.tx_batches[port].push(index);
        if self.tx_batches[port].len() >= self.burst_len {
            self.flush(port);
        }
    }

    #[inline]
    pub(super) fn flush(&mut self, port: usize) {
        self.flush_device(port);
        let mut batch = std::mem::take(&mut self.tx_batches[port]);
        if batch.is_empty() {
            self.tx_batches[port] = batch;
            return;
        }
        // SAFETY: the switch holds one reference to every batched buffer, of the pool its
        // cache draws from, and hands them over here; nobody writes a buffer it holds a
        // reference to while it is batched (VMs are done with it, and a mirror's holder
        // only reads a buffer with two references).
        let (sent, bytes) = unsafe { self.ports[port].tx_buffers(&mut self.cache, &batch) };
        let sent = sent.min(batch.len());
        if sent < batch.len() {
            self.stats
                .count_drop(DropReason::TxError, (batch.len() - sent) as u64);
        }
        let counters = &self.stats.ports[port];
        counters.tx_packets.add(sent as u64);
        counters.tx_bytes.add(bytes);
        batch.clear();
        self.tx_batches[port] = batch;
    }

    /// Send the device frames batched for `port`.
    #[inline]
    pub(super) fn flush_device(&mut self, port: usize) {
        let batch = &mut self.device_batches[port];
        if !batch.is_empty() {
            Self::send_device_batch(&mut self.ports, &self.stats, batch, port);
        }
    }

    /// Send `batch` (device frames for `port`) and empty it; what the port did not send
    /// is counted as a TX error. (Fields, not `&mut self`: the RX loop calls this while
    /// it holds its burst scratch.)
    pub(super) fn send_device_batch(
        ports: &mut [Box<dyn Port>],
        stats: &StatsShard,
        batch: &mut Vec<DeviceFrame>,
        port: usize,
    ) {
        let (sent, bytes) = ports[port].tx_device(batch);
        let sent = sent.min(batch.len());
        if sent < batch.len() {
            stats.count_drop(DropReason::TxError, (batch.len() - sent) as u64);
        }
        let counters = &stats.ports[port];
        counters.tx_packets.add(sent as u64);
        counters.tx_bytes.add(bytes);
        batch.clear();
    }
}
