//! Reading captures as libpcap does: streamed record by record, damaged records taken as
//! far as they are sound and reported by number and offset, never a whole file refused
//! for one record. Used by the `pcap` port and by `netvm explain --pcap`.
//!
//! Classic pcap (both byte orders, micro- and nanosecond timestamps) is read here; pcapng
//! through `pcap_file`'s raw block reader, block by block with each block's offset (a
//! damaged block ends the file there, reported as damage, with the frames before it kept;
//! every interface's own link type decodes its packets; timestamps and `if_tsresol` are not
//! used, since netvm does not replay at capture pace). What counts as damage, and what is done:
//!
//! - a captured length above the original length: the captured bytes are kept;
//! - a timestamp fraction of a second at or past one second: kept (netvm does not use it);
//! - a captured length above the file's snapshot length: cut to the snapshot length, as
//!   libpcap does (a snapshot length of 0 means 262,144, libpcap's maximum);
//! - a captured length above 262,144: the record cannot be framed, so the file ends
//!   there (the rest is counted in bytes);
//! - a last record cut short (a writer killed mid-write): what is there is kept when its
//!   16-byte header is whole, the record is skipped when it is not;
//! - a frame too short for its link-layer header: skipped.
//!
//! Link types: Ethernet (EN10MB) frames are handed on as they are. RAW, IPV4, IPV6,
//! LINUX_SLL, LINUX_SLL2 and NULL/LOOP frames become Ethernet frames: the link layer is
//! replaced by a 14-byte Ethernet header whose type is the one the link layer names (the
//! IP version for RAW, the protocol field for SLL, the address family for NULL/LOOP), with
//! zero MAC addresses (the source address is SLL's when it has 6 bytes), so the classifier
//! reads the IP packet the capture holds. Other link types are refused by name.

use std::fs::File;
use std::io::{self, BufReader, Read};

use byteorder_slice::{BigEndian, LittleEndian};
use pcap_file::pcapng::{Block, PcapNgReader};

/// libpcap's largest snapshot length: longer records are damage.
pub const MAX_RECORD: u32 = 262_144;

/// One damaged record: its number (from 1, as tcpdump and Wireshark count), where its
/// header (pcap) or block (pcapng) starts in the file, and what was wrong and done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub record: u64,
    pub offset: Option<u64>,
    pub what: String,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.offset {
            Some(at) => write!(f, "record {} at offset {at}: {}", self.record, self.what),
            None => write!(f, "record {}: {}", self.record, self.what),
        }
    }
}

/// The link layers netvm decodes (LINKTYPE_* numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkType {
    Ethernet,
    /// Raw IP (101, and DLT_RAW 12/14 as some systems write it): version from the first nibble.
    Raw,
    Ipv4,
    Ipv6,
    LinuxSll,
    LinuxSll2,
    /// BSD loopback: a 4-byte address family in the capturing host's byte order.
    Null,
    /// OpenBSD loopback: the family in network byte order.
    Loop,
}

impl LinkType {
    pub fn from_number(n: u32) -> Result<LinkType, String> {
        Ok(match n {
            1 => LinkType::Ethernet,
            12 | 14 | 101 => LinkType::Raw,
            228 => LinkType::Ipv4,
            229 => LinkType::Ipv6,
            113 => LinkType::LinuxSll,
            276 => LinkType::LinuxSll2,
            0 => LinkType::Null,
            108 => LinkType::Loop,
            other => {
                let name = match other {
                    6 => "IEEE802_5",
                    9 => "PPP",
                    10 => "FDDI",
                    50 => "PPP_HDLC",
                    104 => "C_HDLC",
                    105 => "IEEE802_11",
                    119 => "PRISM_HEADER",
                    127 => "IEEE802_11_RADIOTAP",
                    147..=162 => "USERn",
                    187 => "BLUETOOTH_HCI_H4",
                    189 => "USB_LINUX",
                    195 => "IEEE802_15_4",
                    220 => "USB_LINUX_MMAPPED",
                    249 => "NETLINK",
                    _ => "",
                };
                let named = if name.is_empty() {
                    format!("link type {other}")
                } else {
                    format!("link type {other} ({name})")
                };
                return Err(format!(
                    "{named} is not one netvm decodes (EN10MB, RAW, IPV4, IPV6, LINUX_SLL, LINUX_SLL2, NULL, LOOP)"
                ));
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            LinkType::Ethernet => "EN10MB",
            LinkType::Raw => "RAW",
            LinkType::Ipv4 => "IPV4",
            LinkType::Ipv6 => "IPV6",
            LinkType::LinuxSll => "LINUX_SLL",
            LinkType::LinuxSll2 => "LINUX_SLL2",
            LinkType::Null => "NULL",
            LinkType::Loop => "LOOP",
        }
    }

    /// The record's bytes as an Ethernet frame; `Err` names why it cannot be one.
    pub fn to_ethernet(self, data: &[u8]) -> Result<Vec<u8>, String> {
        let frame = |src: [u8; 6], ty: u16, rest: &[u8]| {
            let mut f = Vec::with_capacity(14 + rest.len());
            f.extend_from_slice(&[0; 6]);
            f.extend_from_slice(&src);
            f.extend_from_slice(&ty.to_be_bytes());
            f.extend_from_slice(rest);
            f
        };
        let short = |need: usize| {
            format!(
                "{} bytes is too short for a {} header ({need} bytes): skipped",
                data.len(),
                self.name()
            )
        };
        let ip_type = |first: Option<&u8>| match first.map(|b| b >> 4) {
            Some(4) => 0x0800,
            Some(6) => 0x86dd,
            _ => 0,
        };
        let family_type = |family: u32| match family {
            2 => 0x0800,
            10 | 24 | 28 | 30 => 0x86dd,
            _ => 0,
        };
        Ok(match self {
            LinkType::Ethernet => data.to_vec(),
            LinkType::Raw => frame([0; 6], ip_type(data.first()), data),
            LinkType::Ipv4 => frame([0; 6], 0x0800, data),
            LinkType::Ipv6 => frame([0; 6], 0x86dd, data),
            LinkType::LinuxSll => {
                let h = data.get(..16).ok_or_else(|| short(16))?;
                let mut src = [0; 6];
                if u16::from_be_bytes([h[4], h[5]]) == 6 {
                    src.copy_from_slice(&h[6..12]);
                }
                frame(src, u16::from_be_bytes([h[14], h[15]]), &data[16..])
            }
            LinkType::LinuxSll2 => {
                let h = data.get(..20).ok_or_else(|| short(20))?;
                let mut src = [0; 6];
                if h[11] == 6 {
                    src.copy_from_slice(&h[12..18]);
                }
                frame(src, u16::from_be_bytes([h[0], h[1]]), &data[20..])
            }
            LinkType::Null | LinkType::Loop => {
                let h = data.get(..4).ok_or_else(|| short(4))?;
                let be = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
                let family = if self == LinkType::Loop || be < 256 {
                    be
                } else {
                    u32::from_le_bytes([h[0], h[1], h[2], h[3]])
                };
                frame([0; 6], family_type(family), &data[4..])
            }
        })
    }
}

enum Format {
    Pcap {
        file: BufReader<File>,
        swapped: bool,
        nanos: bool,
        snaplen: u32,
        link: LinkType,
        offset: u64,
    },
    PcapNg {
        reader: Box<PcapNgReader<BufReader<File>>>,
        /// Where the next block starts in the file.
        offset: u64,
    },
}

/// A capture opened for reading, one frame at a time.
pub struct CaptureReader {
    path: String,
    format: Format,
    /// Records read so far (sound or damaged).
    records: u64,
    damaged: Vec<Damage>,
    done: bool,
}

/// `what` with the OS's reason.
fn io_error(path: &str, e: &io::Error) -> String {
    format!("reading {path}: {}", os_reason(e))
}

/// The OS's words for an I/O error ("No such file or directory"), without Rust's
/// "(os error 2)".
pub fn os_reason(e: &io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// The 32-bit word at `i` of a pcap header, in the file's byte order.
fn word_at(header: &[u8], i: usize, swapped: bool) -> u32 {
    let b = [header[i], header[i + 1], header[i + 2], header[i + 3]];
    if swapped {
        u32::from_be_bytes(b)
    } else {
        u32::from_le_bytes(b)
    }
}

/// Reads up to `buf.len()` bytes; fewer only at the end of the file.
fn read_full(file: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

impl CaptureReader {
    /// Opens a pcap or pcapng file (told apart by magic). Errors name the file and why:
    /// the OS's reason, an empty or cut-off file header, an unknown magic, a link type
    /// netvm does not decode.
    pub fn open(path: &str) -> Result<CaptureReader, String> {
        let mut file = BufReader::new(File::open(path).map_err(|e| io_error(path, &e))?);
        let mut header = [0u8; 24];
        let got = read_full(&mut file, &mut header).map_err(|e| io_error(path, &e))?;
        if got == 0 {
            return Err(format!(
                "{path} is empty (0 bytes): a capture starts with a 24-byte pcap header or a pcapng section"
            ));
        }
        let magic = [header[0], header[1], header[2], header[3]];
        if magic == [0x0a, 0x0d, 0x0d, 0x0a] {
            let file = BufReader::new(File::open(path).map_err(|e| io_error(path, &e))?);
            let reader = PcapNgReader::new(file)
                .map_err(|e| format!("{path}: not a readable pcapng capture: {e}"))?;
            // The section header block was read by `new`: its total length (in the byte
            // order its byte-order magic names) is where the next block starts.
            let big = header[8..12] == [0x1a, 0x2b, 0x3c, 0x4d];
            let offset = u64::from(word_at(&header, 4, big));
            return Ok(CaptureReader {
                path: path.to_string(),
                format: Format::PcapNg {
                    reader: Box::new(reader),
                    offset,
                },
                records: 0,
                damaged: Vec::new(),
                done: false,
            });
        }
        let (swapped, nanos) = match magic {
            [0xd4, 0xc3, 0xb2, 0xa1] => (false, false),
            [0xa1, 0xb2, 0xc3, 0xd4] => (true, false),
            [0x4d, 0x3c, 0xb2, 0xa1] => (false, true),
            [0xa1, 0xb2, 0x3c, 0x4d] => (true, true),
            _ => {
                return Err(format!(
                    "{path} is not a pcap or pcapng capture (it starts with {:02x} {:02x} {:02x} {:02x})",
                    magic[0], magic[1], magic[2], magic[3]
                ))
            }
        };
        if got < 24 {
            return Err(format!(
                "{path}: the pcap file header is cut short ({got} of 24 bytes)"
            ));
        }
        let word = |i: usize| word_at(&header, i, swapped);
        let snaplen = match word(16) {
            0 => MAX_RECORD,
            n => n.min(MAX_RECORD),
        };
        // The low 16 bits are the link type; the upper ones carry FCS information.
        let link = LinkType::from_number(word(20) & 0xffff).map_err(|e| format!("{path}: {e}"))?;
        Ok(CaptureReader {
            path: path.to_string(),
            format: Format::Pcap {
                file,
                swapped,
                nanos,
                snaplen,
                link,
                offset: 24,
            },
            records: 0,
            damaged: Vec::new(),
            done: false,
        })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether the end of the input was reached (or an error ended it).
    pub fn finished(&self) -> bool {
        self.done
    }

    /// Records read so far, damaged ones included.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The damaged records met so far, in file order.
    pub fn damaged(&self) -> &[Damage] {
        &self.damaged
    }

    /// One line for an operator: how many records were damaged, and which (the first few).
    pub fn damage_summary(&self) -> Option<String> {
        let n = self.damaged.len();
        if n == 0 {
            return None;
        }
        let shown: Vec<String> = self.damaged.iter().take(5).map(Damage::to_string).collect();
        let more = if n > 5 {
            format!("; and {} more", n - 5)
        } else {
            String::new()
        };
        Some(format!(
            "{}: {n} damaged record{} of {}: {}{more}",
            self.path,
            if n == 1 { "" } else { "s" },
            self.records,
            shown.join("; ")
        ))
    }

    fn damage(&mut self, offset: Option<u64>, what: impl Into<String>) {
        self.damaged.push(Damage {
            record: self.records,
            offset,
            what: what.into(),
        });
    }

    /// The next frame (as an Ethernet frame), with its record number; `None` at the end.
    /// Damaged records are recorded in [`Self::damaged`] and skipped or clamped; an I/O
    /// error ends the file and is returned once.
    pub fn next_frame(&mut self) -> Option<Result<(u64, Vec<u8>), String>> {
        while !self.done {
            let step = match &mut self.format {
                Format::Pcap { .. } => self.next_pcap(),
                Format::PcapNg { .. } => self.next_pcapng(),
            };
            match step {
                Step::Frame(f) => return Some(Ok((self.records, f))),
                Step::Skipped => continue,
                Step::End => self.done = true,
                Step::Failed(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        None
    }

    fn next_pcap(&mut self) -> Step {
        let Format::Pcap {
            file,
            swapped,
            nanos,
            snaplen,
            link,
            offset,
        } = &mut self.format
        else {
            return Step::End;
        };
        let (swapped, nanos, snaplen, link) = (*swapped, *nanos, *snaplen, *link);
        let at = *offset;
        let path = &self.path;
        let mut damage = |what: String| {
            self.damaged.push(Damage {
                record: self.records + 1,
                offset: Some(at),
                what,
            })
        };
        let mut header = [0u8; 16];
        let got = match read_full(file, &mut header) {
            Ok(n) => n,
            Err(e) => return Step::Failed(io_error(path, &e)),
        };
        if got == 0 {
            return Step::End;
        }
        *offset += got as u64;
        if got < 16 {
            damage(format!(
                "the file ends inside the record header ({got} of 16 bytes): skipped"
            ));
            self.records += 1;
            return Step::End;
        }
        let word = |i: usize| word_at(&header, i, swapped);
        let (frac, incl, orig) = (word(4), word(8), word(12));
        let mut problems = Vec::new();
        let second = if nanos { 1_000_000_000 } else { 1_000_000 };
        if frac >= second {
            problems.push(format!(
                "timestamp fraction {frac} is not below {second} {}",
                if nanos { "ns" } else { "µs" }
            ));
        }
        if incl > MAX_RECORD {
            let mut rest = 0u64;
            let mut sink = [0u8; 8192];
            while let Ok(n) = file.read(&mut sink) {
                if n == 0 {
                    break;
                }
                rest += n as u64;
            }
            damage(format!(
                "captured length {incl} is more than {MAX_RECORD}: the record cannot be framed, so the rest of the file ({rest} bytes) is not read"
            ));
            self.records += 1;
            return Step::End;
        }
        if incl > orig {
            problems.push(format!(
                "captured length {incl} is more than the original length {orig}"
            ));
        }
        let mut data = vec![0u8; incl as usize];
        let got = match read_full(file, &mut data) {
            Ok(n) => n,
            Err(e) => return Step::Failed(io_error(path, &e)),
        };
        *offset += got as u64;
        let cut_short = got < data.len();
        if cut_short {
            data.truncate(got);
            problems.push(format!(
                "the file ends inside the record ({got} of {incl} bytes): the {got} bytes are kept"
            ));
        }
        if data.len() > snaplen as usize {
            problems.push(format!(
                "captured length {incl} is more than the snapshot length {snaplen}: cut to {snaplen} bytes"
            ));
            data.truncate(snaplen as usize);
        }
        let step = match link.to_ethernet(&data) {
            Ok(f) => Step::Frame(f),
            Err(why) => {
                problems.push(why);
                if cut_short {
                    Step::End
                } else {
                    Step::Skipped
                }
            }
        };
        if !problems.is_empty() {
            damage(problems.join("; "));
        }
        self.records += 1;
        step
    }

    fn next_pcapng(&mut self) -> Step {
        let Format::PcapNg { reader, offset } = &mut self.format else {
            return Step::End;
        };
        let at = *offset;
        // Blocks are read raw, so each one's length moves the offset on (the parser
        // still records section and interface blocks as they pass). A section header
        // block names its own byte order; every other block is in its section's.
        let big = reader.section().endianness == pcap_file::Endianness::Big;
        let Some(raw) = reader.next_raw_block() else {
            return Step::End;
        };
        let block = raw.and_then(|raw| {
            *offset += u64::from(raw.initial_len);
            if big {
                raw.try_into_block::<BigEndian>()
            } else {
                raw.try_into_block::<LittleEndian>()
            }
        });
        let (interface, data) = match block {
            Ok(Block::EnhancedPacket(p)) => (Some(p.interface_id), p.data.into_owned()),
            Ok(Block::SimplePacket(p)) => (Some(0), p.data.into_owned()),
            Ok(Block::Packet(p)) => (Some(u32::from(p.interface_id)), p.data.into_owned()),
            Ok(_) => return Step::Skipped,
            Err(e) => {
                self.records += 1;
                self.damage(Some(at), format!("{e}: the rest of the file is not read"));
                return Step::End;
            }
        };
        self.records += 1;
        let link = interface
            .and_then(|i| reader.interfaces().get(i as usize))
            .map(|idb| u32::from(idb.linktype));
        let Some(link) = link else {
            self.damage(
                Some(at),
                "names an interface the file does not describe: skipped",
            );
            return Step::Skipped;
        };
        let link = match LinkType::from_number(link) {
            Ok(l) => l,
            Err(e) => {
                self.damage(Some(at), format!("{e}: skipped"));
                return Step::Skipped;
            }
        };
        match link.to_ethernet(&data) {
            Ok(f) => Step::Frame(f),
            Err(why) => {
                self.damage(Some(at), why);
                Step::Skipped
            }
        }
    }
}

enum Step {
    Frame(Vec<u8>),
    Skipped,
    End,
    Failed(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_types_are_named_when_refused() {
        let e = LinkType::from_number(105).unwrap_err();
        assert!(e.contains("IEEE802_11") && e.contains("LINUX_SLL2"), "{e}");
        assert!(LinkType::from_number(4242).unwrap_err().contains("4242"));
    }

    #[test]
    fn loopback_families_in_either_byte_order() {
        let ip = [0x45u8, 0, 0, 20];
        for family in [2u32.to_le_bytes(), 2u32.to_be_bytes()] {
            let data = [&family[..], &ip[..]].concat();
            let f = LinkType::Null.to_ethernet(&data).unwrap();
            assert_eq!(&f[12..14], &[0x08, 0x00]);
            assert_eq!(&f[14..], &ip);
        }
        let data = [&30u32.to_le_bytes()[..], &[0x60, 0, 0, 0][..]].concat();
        assert_eq!(
            &LinkType::Null.to_ethernet(&data).unwrap()[12..14],
            &[0x86, 0xdd]
        );
    }
}
