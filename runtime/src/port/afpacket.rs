//! `afpacket:IFACE`: a Linux raw socket (placeholder until the PACKET_MMAP ring lands).

use super::{Port, PortError, RxBurst};

pub struct AfPacketPort;

impl AfPacketPort {
    pub fn open(args: &str) -> Result<AfPacketPort, PortError> {
        Err(PortError::Other(format!(
            "afpacket:{args}: not implemented yet"
        )))
    }
}

impl Port for AfPacketPort {
    fn describe(&self) -> String {
        "afpacket".into()
    }
    fn rx_burst(&mut self, _burst: &mut RxBurst<'_>) {}
    fn rx_done(&self) -> bool {
        true
    }
    fn has_tx(&self) -> bool {
        false
    }
    fn tx_burst(&mut self, _frames: &[&[u8]]) -> usize {
        0
    }
}
