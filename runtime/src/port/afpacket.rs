//! `afpacket:IFACE`: a Linux raw socket (`AF_PACKET`, `SOCK_RAW`, `ETH_P_ALL`) bound to
//! one interface, receiving through a `PACKET_MMAP` ring.
//!
//! **RX** is a TPACKET_V2 ring (`setsockopt(PACKET_RX_RING)` + `mmap`): the kernel
//! writes each frame into a ring slot and flips the slot's `tp_status` to
//! `TP_STATUS_USER`; [`rx_burst`](Port::rx_burst) walks the slots in order without a
//! system call, pushes each frame into the burst (the one copy, ring slot → pool
//! buffer) and hands the slot back (`TP_STATUS_KERNEL`). A frame the burst refuses
//! stays in its slot for the next poll. The socket is non-blocking and never waited on:
//! the switch polls. Frames the kernel truncated (longer than a slot) and frames larger
//! than a pool buffer are consumed and counted as `oversize`, never forwarded cut short.
//! Frames the interface *sends* (`PACKET_OUTGOING`) are not received: a port sees what
//! arrives on the wire, as a NIC would.
//!
//! **TX** is `sendmmsg` on the same socket, one system call per burst. A
//! `PACKET_TX_RING` would save nothing here: the pool's buffers are not in the kernel's
//! ring, so each frame would still be copied once (into the ring instead of by the
//! kernel from our buffer) and it would add a second mapping plus a `send` to kick the
//! ring; `sendmmsg` keeps the one copy and the one call per burst. A full socket buffer
//! (`EAGAIN`) reports the rest of the burst unsent (dropped as `tx_error`).
//!
//! What it does not do: TPACKET_V3 block rings, fanout across several switch threads,
//! or set the interface promiscuous or up (that is the operator's job, `ip link`).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use super::{bad_args, Port, PortError, RxBurst};

/// Bytes per ring slot: a `tpacket2_hdr`, the `sockaddr_ll`, and a 2 KiB frame.
const SLOT_BYTES: usize = 4096;
/// Slots per 4 KiB-multiple block (the kernel wants a block to hold whole slots).
const BLOCK_BYTES: usize = 1 << 16;
/// Slots in the RX ring (1 MiB of ring).
const RING_SLOTS: usize = 256;
/// `TPACKET_V2` in `enum tpacket_versions`.
const TPACKET_V2: libc::c_int = 1;
/// `TPACKET_ALIGN(sizeof(struct tpacket2_hdr))`: where the `sockaddr_ll` starts.
const TPACKET2_HDRLEN: usize = 32;

/// The frame left its sender (a local socket, a veth) with checksum offload: its TCP or
/// UDP checksum field holds only the pseudo-header sum.
const TP_STATUS_CSUMNOTREADY: u32 = 1 << 3;

const _: () = assert!(std::mem::size_of::<libc::tpacket2_hdr>() == TPACKET2_HDRLEN);
const _: () =
    assert!(BLOCK_BYTES % SLOT_BYTES == 0 && RING_SLOTS % (BLOCK_BYTES / SLOT_BYTES) == 0);

/// The mmapped RX ring; unmapped on drop.
struct RxRing {
    base: NonNull<u8>,
    bytes: usize,
}

// SAFETY: the mapping is owned by this value alone and only reached through `&mut self`
// of the port that owns it; the kernel's concurrent writes are synchronised through the
// atomic `tp_status` of each slot.
unsafe impl Send for RxRing {}

impl Drop for RxRing {
    fn drop(&mut self) {
        // SAFETY: `base..base+bytes` is the mapping made in `AfPacketPort::open`, and no
        // reference into it outlives `self`.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.bytes);
        }
    }
}

pub struct AfPacketPort {
    iface: String,
    // Field order: the ring is unmapped before the socket closes.
    ring: RxRing,
    socket: OwnedFd,
    next_slot: usize,
    tx_error: Option<io::Error>,
    /// A frame whose checksum the port completes before it is pushed.
    scratch: Vec<u8>,
}

fn os_error(what: impl Into<String>) -> PortError {
    PortError::Io {
        what: what.into(),
        source: io::Error::last_os_error(),
    }
}

fn setsockopt<T>(fd: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live `T` of the length passed; the kernel copies it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_PACKET,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl AfPacketPort {
    /// Open `IFACE` (the whole argument, e.g. `veth0`). Needs `CAP_NET_RAW`.
    pub fn open(args: &str) -> Result<AfPacketPort, PortError> {
        let iface = args.trim();
        if iface.is_empty() || iface.contains([',', '=', '/']) || iface.len() >= libc::IFNAMSIZ {
            return Err(bad_args(
                "afpacket",
                format!("expected an interface name (afpacket:veth0), not `{args}`"),
            ));
        }
        let name = CString::new(iface).map_err(|_| bad_args("afpacket", "NUL in the name"))?;
        // SAFETY: `name` is a NUL-terminated string that outlives the call.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(os_error(format!("afpacket: no interface `{iface}`")));
        }
        let proto_be = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain system call; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::c_int::from(proto_be),
            )
        };
        if fd < 0 {
            return Err(os_error(format!(
                "afpacket:{iface}: opening a raw socket (needs root or CAP_NET_RAW)"
            )));
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        let io_err = |what: &str| {
            let what = format!("afpacket:{iface}: {what}");
            move |source| PortError::Io { what, source }
        };
        setsockopt(fd, libc::PACKET_VERSION, &TPACKET_V2)
            .map_err(io_err("selecting TPACKET_V2"))?;
        // Best effort (Linux >= 4.20); outgoing frames are also skipped in `rx_burst`.
        let _ = setsockopt(fd, libc::PACKET_IGNORE_OUTGOING, &1 as &libc::c_int);
        let req = libc::tpacket_req {
            tp_block_size: BLOCK_BYTES as u32,
            tp_block_nr: (RING_SLOTS * SLOT_BYTES / BLOCK_BYTES) as u32,
            tp_frame_size: SLOT_BYTES as u32,
            tp_frame_nr: RING_SLOTS as u32,
        };
        setsockopt(fd, libc::PACKET_RX_RING, &req)
            .map_err(io_err("setting up the PACKET_RX_RING"))?;
        let bytes = RING_SLOTS * SLOT_BYTES;
        // SAFETY: maps the ring the kernel just allocated for this socket; the result is
        // checked and owned by `RxRing`, which unmaps it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_LOCKED,
                fd,
                0,
            )
        };
        // MAP_LOCKED can fail under a low RLIMIT_MEMLOCK; retry without it.
        let base = if base == libc::MAP_FAILED {
            // SAFETY: as above.
            unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    bytes,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    fd,
                    0,
                )
            }
        } else {
            base
        };
        if base == libc::MAP_FAILED {
            return Err(os_error(format!("afpacket:{iface}: mapping the RX ring")));
        }
        let ring = RxRing {
            base: NonNull::new(base.cast())
                .ok_or_else(|| PortError::Other("mmap gave null".into()))?,
            bytes,
        };
        // SAFETY: an all-zero `sockaddr_ll` is a valid value; the fields that matter are
        // set below.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto_be;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: `addr` is a live `sockaddr_ll` of the length passed.
        let rc = unsafe {
            libc::bind(
                fd,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(os_error(format!(
                "afpacket:{iface}: binding to the interface"
            )));
        }
        Ok(AfPacketPort {
            iface: iface.to_string(),
            ring,
            socket,
            next_slot: 0,
            tx_error: None,
            scratch: Vec::with_capacity(SLOT_BYTES),
        })
    }

    fn slot(&self, i: usize) -> *mut u8 {
        // SAFETY: `i < RING_SLOTS`, so the offset stays inside the mapping.
        unsafe { self.ring.base.as_ptr().add(i * SLOT_BYTES) }
    }

    /// The slot's `tp_status`, the word the kernel and we hand the slot over with.
    fn status(&self, i: usize) -> &AtomicU32 {
        // SAFETY: every slot starts with a 4-byte aligned (page-aligned mapping, slot
        // size a multiple of 16) `tp_status` that lives as long as the mapping, and the
        // kernel accesses it atomically (smp_store_release / smp_rmb), as we do.
        unsafe { AtomicU32::from_ptr(self.slot(i).cast()) }
    }
}

impl Port for AfPacketPort {
    fn describe(&self) -> String {
        format!("afpacket:{}", self.iface)
    }

    fn rx_burst(&mut self, burst: &mut RxBurst<'_>) {
        while burst.room() > 0 {
            let i = self.next_slot;
            let status = self.status(i).load(Ordering::Acquire);
            if status & libc::TP_STATUS_USER == 0 {
                return;
            }
            // SAFETY: the kernel set TP_STATUS_USER (Acquire above), so the slot is ours
            // until we store TP_STATUS_KERNEL; the header is at the slot's start.
            let hdr = unsafe { std::ptr::read(self.slot(i).cast::<libc::tpacket2_hdr>()) };
            // SAFETY: the `sockaddr_ll` follows the aligned header, inside the slot.
            let ll = unsafe {
                std::ptr::read_unaligned(
                    self.slot(i)
                        .add(TPACKET2_HDRLEN)
                        .cast::<libc::sockaddr_ll>(),
                )
            };
            let mac = usize::from(hdr.tp_mac);
            let snap = hdr.tp_snaplen as usize;
            let taken = if ll.sll_pkttype == libc::PACKET_OUTGOING {
                true
            } else if mac > SLOT_BYTES || snap > SLOT_BYTES - mac || hdr.tp_snaplen < hdr.tp_len {
                // Truncated by the kernel (or a nonsense header): never forward a cut frame.
                burst.count_oversize(hdr.tp_len as usize);
                true
            } else if status & TP_STATUS_CSUMNOTREADY != 0 {
                // SAFETY: `mac + snap <= SLOT_BYTES` (checked), and the slot is ours.
                let frame = unsafe { std::slice::from_raw_parts(self.slot(i).add(mac), snap) };
                self.scratch.clear();
                self.scratch.extend_from_slice(frame);
                complete_l4_checksum(&mut self.scratch);
                burst.push(&self.scratch)
            } else {
                // SAFETY: `mac + snap <= SLOT_BYTES` (checked), and the slot is ours.
                let frame = unsafe { std::slice::from_raw_parts(self.slot(i).add(mac), snap) };
                burst.push(frame)
            };
            if !taken {
                return;
            }
            self.status(i)
                .store(libc::TP_STATUS_KERNEL, Ordering::Release);
            self.next_slot = (i + 1) % RING_SLOTS;
        }
    }

    fn rx_done(&self) -> bool {
        false
    }

    fn has_tx(&self) -> bool {
        true
    }

    fn tx_burst(&mut self, frames: &[&[u8]]) -> usize {
        let mut sent = 0;
        while sent < frames.len() {
            let chunk = &frames[sent..frames.len().min(sent + 64)];
            let mut iov: Vec<libc::iovec> = chunk
                .iter()
                .map(|f| libc::iovec {
                    iov_base: f.as_ptr() as *mut libc::c_void,
                    iov_len: f.len(),
                })
                .collect();
            let mut msgs: Vec<libc::mmsghdr> = iov
                .iter_mut()
                .map(|v| {
                    // SAFETY: an all-zero `mmsghdr` is valid (no name, no control data).
                    let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                    m.msg_hdr.msg_iov = v;
                    m.msg_hdr.msg_iovlen = 1;
                    m
                })
                .collect();
            // SAFETY: `msgs` and the `iov`s and frames they point to live across the
            // call; the kernel only reads them. The socket is bound, so no address.
            let n = unsafe {
                libc::sendmmsg(
                    self.socket.as_raw_fd(),
                    msgs.as_mut_ptr(),
                    msgs.len() as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                let e = io::Error::last_os_error();
                if n < 0 && e.kind() != io::ErrorKind::WouldBlock {
                    self.tx_error.get_or_insert(e);
                }
                break;
            }
            sent += n as usize;
        }
        sent
    }

    fn finish(&mut self) -> Result<(), PortError> {
        match self.tx_error.take() {
            Some(source) => Err(PortError::Io {
                what: format!("afpacket:{}: sending", self.iface),
                source,
            }),
            None => Ok(()),
        }
    }
}

/// Finish a TCP or UDP checksum left partial by checksum offload (the field holds the
/// pseudo-header sum, not complemented): a switch that forwards the frame to another
/// link is where the "hardware" would have done it. Frames it does not understand
/// (no IPv4/IPv6 over Ethernet, IPv6 extension headers, fragments) are left alone.
fn complete_l4_checksum(frame: &mut [u8]) {
    let (l3, ethertype) = match frame.get(12..14) {
        Some([0x81, 0x00]) => (18, frame.get(16..18)),
        _ => (14, frame.get(12..14)),
    };
    let (l4, proto) = match ethertype {
        Some([0x08, 0x00]) => {
            let Some(&vihl) = frame.get(l3) else { return };
            let fragment = frame
                .get(l3 + 6..l3 + 8)
                .map(|f| u16::from_be_bytes([f[0], f[1]]) & 0x3fff);
            if fragment != Some(0) {
                return;
            }
            (l3 + usize::from(vihl & 0x0f) * 4, frame.get(l3 + 9))
        }
        Some([0x86, 0xdd]) => (l3 + 40, frame.get(l3 + 6)),
        _ => return,
    };
    let field = match proto {
        Some(6) => l4 + 16,
        Some(17) => l4 + 6,
        _ => return,
    };
    if field + 2 > frame.len() {
        return;
    }
    let mut sum = 0u32;
    for pair in frame[l4..].chunks(2) {
        sum += u32::from(u16::from_be_bytes([
            pair[0],
            pair.get(1).copied().unwrap_or(0),
        ]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let mut csum = !(sum as u16);
    if csum == 0 && proto == Some(&17) {
        csum = 0xffff;
    }
    frame[field..field + 2].copy_from_slice(&csum.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_interface_names() {
        for bad in ["", "a,b", "rx=x", "name-longer-than-ifnamsiz"] {
            assert!(matches!(
                AfPacketPort::open(bad),
                Err(PortError::BadArgs { .. })
            ));
        }
        assert!(AfPacketPort::open("netvm-no-such0").is_err());
    }

    #[test]
    fn completes_a_partial_udp_checksum() {
        let mut spec = netvm_packet::PacketSpec::new(netvm_packet::BaseProto::Udp);
        spec.payload = Some(b"partial checksum".to_vec());
        let good = spec.build().unwrap();
        // What offload leaves: the pseudo-header sum (src, dst, proto, UDP length).
        let mut sum = 17u32 + u32::from(u16::from_be_bytes([good[38], good[39]]));
        for pair in good[26..34].chunks(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        let mut partial = good.clone();
        partial[40..42].copy_from_slice(&(sum as u16).to_be_bytes());
        assert_ne!(partial, good);
        complete_l4_checksum(&mut partial);
        assert_eq!(partial, good);
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        let before = arp.clone();
        complete_l4_checksum(&mut arp);
        assert_eq!(arp, before);
    }
}
