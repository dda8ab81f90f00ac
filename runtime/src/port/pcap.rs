//! `pcap:rx=IN,tx=OUT`: replay a capture (pcap or pcapng, told apart by magic) and
//! record what leaves (classic pcap, Ethernet link type, readable by tcpdump).
//! Either side is optional. The input is read whole at open so a bad file is reported
//! before any packet moves.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};

use pcap_file::pcap::{PcapPacket, PcapReader, PcapWriter};
use pcap_file::pcapng::{Block, PcapNgReader};

use super::{bad_args, parse_args, Port, PortError, RxBurst};
use crate::vm::now_timestamp;

pub struct PcapPort {
    rx_path: Option<String>,
    tx_path: Option<String>,
    frames: Vec<Vec<u8>>,
    next: usize,
    writer: Option<PcapWriter<BufWriter<File>>>,
    tx_error: Option<String>,
}

/// Every Ethernet frame of a pcap or pcapng file, in file order.
pub fn read_frames(path: &str) -> Result<Vec<Vec<u8>>, PortError> {
    let io = |source| PortError::Io {
        what: format!("reading {path}"),
        source,
    };
    let mut file = BufReader::new(File::open(path).map_err(io)?);
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic).map_err(io)?;
    let file = BufReader::new(File::open(path).map_err(io)?);
    let bad = |e: pcap_file::PcapError| PortError::Other(format!("{path}: {e}"));
    let mut frames = Vec::new();
    if magic == [0x0a, 0x0d, 0x0d, 0x0a] {
        let mut reader = PcapNgReader::new(file).map_err(bad)?;
        while let Some(block) = reader.next_block() {
            match block.map_err(bad)? {
                Block::EnhancedPacket(p) => frames.push(p.data.into_owned()),
                Block::SimplePacket(p) => frames.push(p.data.into_owned()),
                Block::Packet(p) => frames.push(p.data.into_owned()),
                _ => {}
            }
        }
    } else {
        let mut reader = PcapReader::new(file).map_err(bad)?;
        while let Some(packet) = reader.next_packet() {
            frames.push(packet.map_err(bad)?.data.into_owned());
        }
    }
    Ok(frames)
}

impl PcapPort {
    pub fn open(args: &str) -> Result<PcapPort, PortError> {
        let mut rx_path = None;
        let mut tx_path = None;
        for (k, v) in parse_args("pcap", args, &["rx", "tx"])? {
            match k {
                "rx" => rx_path = Some(v.to_string()),
                _ => tx_path = Some(v.to_string()),
            }
        }
        if rx_path.is_none() && tx_path.is_none() {
            return Err(bad_args("pcap", "needs rx=FILE, tx=FILE or both"));
        }
        let frames = match &rx_path {
            Some(path) => read_frames(path)?,
            None => Vec::new(),
        };
        let writer = match &tx_path {
            Some(path) => {
                let file = File::create(path).map_err(|source| PortError::Io {
                    what: format!("creating {path}"),
                    source,
                })?;
                Some(
                    PcapWriter::new(BufWriter::new(file))
                        .map_err(|e| PortError::Other(format!("{path}: {e}")))?,
                )
            }
            None => None,
        };
        Ok(PcapPort {
            rx_path,
            tx_path,
            frames,
            next: 0,
            writer,
            tx_error: None,
        })
    }
}

impl Port for PcapPort {
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(p) = &self.rx_path {
            parts.push(format!("rx={p}"));
        }
        if let Some(p) = &self.tx_path {
            parts.push(format!("tx={p}"));
        }
        format!("pcap:{}", parts.join(","))
    }

    fn rx_burst(&mut self, burst: &mut RxBurst<'_>) {
        while let Some(frame) = self.frames.get(self.next) {
            if !burst.push(frame) {
                break;
            }
            self.next += 1;
        }
    }

    fn rx_done(&self) -> bool {
        self.next >= self.frames.len()
    }

    fn has_tx(&self) -> bool {
        self.writer.is_some()
    }

    fn tx_burst(&mut self, frames: &[&[u8]]) -> usize {
        let Some(writer) = &mut self.writer else {
            return 0;
        };
        let ts = now_timestamp();
        let mut sent = 0;
        for frame in frames {
            match writer.write_packet(&PcapPacket::new(ts, frame.len() as u32, frame)) {
                Ok(_) => sent += 1,
                Err(e) => {
                    self.tx_error.get_or_insert(e.to_string());
                }
            }
        }
        sent
    }

    fn finish(&mut self) -> Result<(), PortError> {
        if let Some(writer) = self.writer.take() {
            let path = self.tx_path.clone().unwrap_or_default();
            writer
                .into_writer()
                .flush()
                .map_err(|source| PortError::Io {
                    what: format!("flushing {path}"),
                    source,
                })?;
        }
        match self.tx_error.take() {
            Some(e) => Err(PortError::Other(format!("writing the capture: {e}"))),
            None => Ok(()),
        }
    }
}
