//! `pcap:rx=IN,tx=OUT[,pps=N]`: replay a capture (pcap or pcapng, told apart by magic) and
//! record what leaves (classic pcap, Ethernet link type, readable by tcpdump).
//! Either side is optional. The input is streamed ([`super::capture`]: read as libpcap
//! reads it, other link types turned into Ethernet frames): its header is read at open, so
//! a file that is not a capture is refused before any packet moves; damaged records are
//! counted and named (number and offset) in a warning when the run ends.
//!
//! The input is replayed as fast as the switch takes it, or, with `pps=N`, at N frames per
//! second from the first receive poll (frame `k` is not received before `k / N` seconds),
//! so that a short capture lasts long enough for something to happen mid-stream (a
//! network function process killed and restarted, a reload). The capture's own
//! timestamps are not used.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::time::Instant;

use pcap_file::pcap::{PcapPacket, PcapWriter};

use super::capture::CaptureReader;
use super::{bad_args, parse_args, Port, PortError, RxBurst};
use crate::vm::now_timestamp;

pub struct PcapPort {
    rx_path: Option<String>,
    tx_path: Option<String>,
    reader: Option<CaptureReader>,
    /// A frame read but not yet taken (the burst was full, or it is not due).
    pending: Option<Vec<u8>>,
    /// Frames handed to the switch so far.
    next: usize,
    /// An I/O error that ended the input early.
    rx_error: Option<String>,
    /// Replay rate (`pps=N`); `None`: as fast as the switch takes frames.
    pps: Option<u64>,
    /// When the first receive poll came (the paced replay's clock).
    started: Option<Instant>,
    writer: Option<PcapWriter<BufWriter<File>>>,
    tx_error: Option<String>,
}

/// Every frame of a pcap or pcapng file, in file order, as Ethernet frames (damaged records
/// clamped or skipped as [`CaptureReader`] does).
pub fn read_frames(path: &str) -> Result<Vec<Vec<u8>>, PortError> {
    let mut reader = CaptureReader::open(path).map_err(PortError::Other)?;
    let mut frames = Vec::new();
    while let Some(frame) = reader.next_frame() {
        frames.push(frame.map_err(PortError::Other)?.1);
    }
    Ok(frames)
}

impl PcapPort {
    pub fn open(args: &str) -> Result<PcapPort, PortError> {
        let mut rx_path = None;
        let mut tx_path = None;
        let mut pps = None;
        for (k, v) in parse_args("pcap", args, &["rx", "tx", "pps"])? {
            match k {
                "rx" => rx_path = Some(v.to_string()),
                "pps" => match v.parse::<u64>() {
                    Ok(n) if n > 0 => pps = Some(n),
                    _ => {
                        return Err(bad_args(
                            "pcap",
                            format!("pps must be a number of frames per second above 0, not `{v}`"),
                        ))
                    }
                },
                _ => tx_path = Some(v.to_string()),
            }
        }
        if rx_path.is_none() && tx_path.is_none() {
            return Err(bad_args("pcap", "needs rx=FILE, tx=FILE or both"));
        }
        if pps.is_some() && rx_path.is_none() {
            return Err(bad_args(
                "pcap",
                "pps=N paces the replay of rx=FILE; give rx=FILE",
            ));
        }
        let reader = match &rx_path {
            Some(path) => Some(CaptureReader::open(path).map_err(PortError::Other)?),
            None => None,
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
            reader,
            pending: None,
            next: 0,
            rx_error: None,
            pps,
            started: None,
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
        if let Some(pps) = self.pps {
            parts.push(format!("pps={pps}"));
        }
        format!("pcap:{}", parts.join(","))
    }

    fn rx_burst(&mut self, burst: &mut RxBurst<'_>) {
        let due = match self.pps {
            None => usize::MAX,
            Some(pps) => {
                let started = *self.started.get_or_insert_with(Instant::now);
                let due = started.elapsed().as_micros() * u128::from(pps) / 1_000_000;
                // Frame k is due k/pps seconds in: frame 0 at once.
                usize::try_from(due + 1).unwrap_or(usize::MAX)
            }
        };
        while self.next < due {
            if self.pending.is_none() {
                self.pending = match self.reader.as_mut().and_then(CaptureReader::next_frame) {
                    Some(Ok((_, frame))) => Some(frame),
                    Some(Err(e)) => {
                        self.rx_error = Some(e);
                        None
                    }
                    None => None,
                };
            }
            let Some(frame) = &self.pending else {
                break;
            };
            if !burst.push(frame) {
                break;
            }
            self.pending = None;
            self.next += 1;
        }
    }

    fn rx_done(&self) -> bool {
        self.pending.is_none() && self.reader.as_ref().is_none_or(CaptureReader::finished)
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
        let mut problems = Vec::new();
        if let Some(e) = self.rx_error.take() {
            problems.push(e);
        }
        if let Some(summary) = self.reader.as_ref().and_then(CaptureReader::damage_summary) {
            problems.push(summary);
        }
        if let Some(e) = self.tx_error.take() {
            problems.push(format!("writing the capture: {e}"));
        }
        match problems.is_empty() {
            true => Ok(()),
            false => Err(PortError::Other(problems.join("; "))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::RegionConfig;
    use crate::region::{HugepagePolicy, SharedRegion};
    use crate::PacketPool;
    use std::time::Duration;

    fn capture(dir: &std::path::Path, frames: usize) -> String {
        let path = dir.join("in.pcap");
        let mut w = PcapWriter::new(File::create(&path).unwrap()).unwrap();
        for i in 0..frames {
            let frame = vec![i as u8; 60];
            w.write_packet(&PcapPacket::new(Duration::ZERO, 60, &frame))
                .unwrap();
        }
        path.display().to_string()
    }

    #[test]
    fn pps_refuses_nonsense_and_needs_an_input() {
        let dir = tempfile::tempdir().unwrap();
        let rx = capture(dir.path(), 1);
        for bad in ["pps=0", "pps=fast", "pps=-3"] {
            let e = PcapPort::open(&format!("rx={rx},{bad}")).err().unwrap();
            assert!(e.to_string().contains("frames per second"), "{e}");
        }
        let out = dir.path().join("out.pcap").display().to_string();
        let e = PcapPort::open(&format!("tx={out},pps=10")).err().unwrap();
        assert!(e.to_string().contains("give rx=FILE"), "{e}");
        let port = PcapPort::open(&format!("rx={rx},pps=10")).unwrap();
        assert_eq!(port.describe(), format!("pcap:rx={rx},pps=10"));
    }

    #[test]
    fn pps_paces_the_replay_from_the_first_poll() {
        let dir = tempfile::tempdir().unwrap();
        let rx = capture(dir.path(), 30);
        let config = RegionConfig {
            buffer_count: 64,
            ring_count: 1,
            ring_slots: 16,
            counter_count: 0,
        };
        let pool =
            PacketPool::new(SharedRegion::create(config, HugepagePolicy::Off).unwrap()).unwrap();
        let mut cache = pool.cache(8).unwrap();
        let mut port = PcapPort::open(&format!("rx={rx},pps=100")).unwrap();
        let mut poll = |port: &mut PcapPort| {
            let mut out = [0u32; 64];
            let n = {
                let mut b = RxBurst::new(&mut cache, &mut out, 0);
                port.rx_burst(&mut b);
                b.len()
            };
            let _ = pool.free_burst(&out[..n]);
            n
        };
        let start = Instant::now();
        // Frame 0 at once, then one every 10 ms: never ahead of the clock.
        let mut received = poll(&mut port);
        assert!(received >= 1);
        while !port.rx_done() {
            let allowed = start.elapsed().as_millis() / 10 + 1;
            assert!(
                received as u128 <= allowed,
                "{received} frames by {:?}",
                start.elapsed()
            );
            std::thread::sleep(Duration::from_millis(3));
            received += poll(&mut port);
        }
        assert_eq!(received, 30);
        assert!(
            start.elapsed() >= Duration::from_millis(290),
            "{:?}",
            start.elapsed()
        );
        // Without pps the whole capture comes at once.
        let mut fast = PcapPort::open(&format!("rx={rx}")).unwrap();
        assert_eq!(poll(&mut fast), 30);
        assert!(fast.rx_done());
    }
}
