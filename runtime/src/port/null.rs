//! `null`: receives nothing, transmits into the void (a sink for benchmarks).

use super::{Port, PortError, RxBurst};

#[derive(Debug, Default)]
pub struct NullPort;

impl Port for NullPort {
    fn describe(&self) -> String {
        "null".into()
    }

    fn rx_burst(&mut self, _burst: &mut RxBurst<'_>) {}

    fn rx_done(&self) -> bool {
        true
    }

    fn has_tx(&self) -> bool {
        true
    }

    fn tx_burst(&mut self, frames: &[&[u8]]) -> usize {
        frames.len()
    }

    /// Every switch thread gets its own sink.
    fn split(&mut self, threads: usize) -> Result<Vec<Box<dyn Port>>, PortError> {
        Ok((1..threads)
            .map(|_| Box::new(NullPort) as Box<dyn Port>)
            .collect())
    }
}
