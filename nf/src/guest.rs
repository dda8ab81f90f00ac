//! Running a network function inside a QEMU guest: the same [`Nf`] loop, attached through
//! the ivshmem device's BAR2 instead of the control socket.
//!
//! The switch hands the guest one memory, an ivshmem PCI device (vendor 1af4, device 1110)
//! whose BAR2 is the region's memfd: the shared pool for a trusted VM, the VM's private
//! region alone for an untrusted one. [`Nf::attach_guest`] finds the device in sysfs, maps
//! `resource2`, reads the attach record at the BAR's end (`netvm_shm::guest`; which slot
//! is ours comes from the kernel command line, `netvm.slot=N`), says it is ready, waits for
//! the switch to bring the rings up and claims its ends. From then on it is the NF a
//! process runs: [`Nf::run`], [`Nf::run_function`], the built-ins.
//!
//! A program that is a guest's PID 1 calls [`init_pid1`] first (it mounts `/proc`, `/sys`
//! and `/dev`) and [`power_off`] last, so QEMU exits when the NF does.

use std::fs::OpenOptions;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use netvm_shm::guest::{Answer, AttachArea, Offer};
use netvm_shm::SharedRegion;

use crate::{AttachOptions, Link, Nf, NfError};

/// The ivshmem device's PCI ids.
pub const IVSHMEM_VENDOR: u16 = 0x1af4;
pub const IVSHMEM_DEVICE: u16 = 0x1110;

/// The guest's tie to the switch: its slot in the attach area and the boot generation.
pub(crate) struct GuestLink {
    area: AttachArea,
    slot: usize,
    generation: u64,
}

impl GuestLink {
    pub(crate) fn switch_gone(&self) -> bool {
        !matches!(self.area.offer_state(self.slot), Ok((g, Offer::Attached)) if g == self.generation)
    }
}

/// `name=value` from the kernel command line (`/proc/cmdline`), e.g. `netvm.nf`.
pub fn kernel_arg(name: &str) -> Option<String> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").ok()?;
    cmdline.split_whitespace().find_map(|word| {
        word.split_once('=')
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    })
}

/// The ivshmem device's `resource2` (BAR2) under `/sys/bus/pci/devices`.
pub fn find_ivshmem() -> Result<PathBuf, NfError> {
    find_ivshmem_in(Path::new("/sys/bus/pci/devices"))
}

fn read_id(path: &Path) -> Option<u16> {
    let text = std::fs::read_to_string(path).ok()?;
    u16::from_str_radix(text.trim().trim_start_matches("0x"), 16).ok()
}

fn find_ivshmem_in(devices: &Path) -> Result<PathBuf, NfError> {
    let entries = std::fs::read_dir(devices).map_err(|e| {
        NfError::Guest(format!(
            "reading {}: {e} (is sysfs mounted?)",
            devices.display()
        ))
    })?;
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|dev| {
            read_id(&dev.join("vendor")) == Some(IVSHMEM_VENDOR)
                && read_id(&dev.join("device")) == Some(IVSHMEM_DEVICE)
        })
        .collect();
    found.sort();
    match found.first() {
        Some(dev) => Ok(dev.join("resource2")),
        None => Err(NfError::Guest(format!(
            "no ivshmem device ({IVSHMEM_VENDOR:04x}:{IVSHMEM_DEVICE:04x}) in {}: start the guest \
             with netvm (`--vm NAME=guest`), which gives it one",
            devices.display()
        ))),
    }
}

/// As PID 1 of an initramfs: mount `/proc`, `/sys` and `/dev` (devtmpfs). Mounts that
/// already exist are left alone.
pub fn init_pid1() -> Result<(), NfError> {
    for (fs, dir) in [("proc", "/proc"), ("sysfs", "/sys"), ("devtmpfs", "/dev")] {
        let _ = std::fs::create_dir_all(dir);
        let c_fs = std::ffi::CString::new(fs).map_err(|e| NfError::Guest(e.to_string()))?;
        let c_dir = std::ffi::CString::new(dir).map_err(|e| NfError::Guest(e.to_string()))?;
        // SAFETY: plain mount(2) with NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                c_fs.as_ptr(),
                c_dir.as_ptr(),
                c_fs.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EBUSY) {
                return Err(NfError::Guest(format!("mounting {fs} on {dir}: {e}")));
            }
        }
    }
    Ok(())
}

/// Power the guest off (QEMU then exits). As PID 1 this is the only clean way out.
pub fn power_off() -> ! {
    // SAFETY: sync and reboot take no pointers; reboot only returns on failure.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    std::process::exit(0)
}

impl Nf {
    /// Attach from inside a guest: find the ivshmem device, read the attach record of
    /// slot `netvm.slot` (kernel command line, default 0), say ready, and wait up to
    /// `timeout` for the switch to bring the VM up.
    pub fn attach_guest(options: AttachOptions, timeout: Duration) -> Result<Nf, NfError> {
        let slot = match kernel_arg("netvm.slot") {
            Some(text) => text
                .parse()
                .map_err(|_| NfError::Guest(format!("netvm.slot={text}: not a number")))?,
            None => 0,
        };
        let path = find_ivshmem()?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| NfError::Guest(format!("opening {}: {e}", path.display())))?;
        let bar = file
            .metadata()
            .map_err(|e| NfError::Guest(format!("{}: {e}", path.display())))?
            .len() as usize;
        let area = AttachArea::map(file.as_fd(), bar)
            .map_err(|e| NfError::Guest(format!("{}: {e}", path.display())))?;
        let deadline = Instant::now() + timeout;
        let wait = |what: &str| -> Result<(), NfError> {
            if Instant::now() >= deadline {
                return Err(NfError::Guest(format!(
                    "the switch did not {what} within {} s",
                    timeout.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
            Ok(())
        };
        let (generation, reply) = loop {
            match area.read(slot) {
                Ok(found) => break found,
                Err(_) => wait("write an attach record")?,
            }
        };
        area.set_answer(
            slot,
            Answer {
                generation,
                writes: options.writes,
            },
        )
        .map_err(|e| NfError::Guest(e.to_string()))?;
        loop {
            match area.offer_state(slot) {
                Ok((g, Offer::Attached)) if g == generation => break,
                Ok((g, _)) if g != generation => {
                    return Err(NfError::Guest(format!(
                        "the switch moved on to boot {g} while this guest is boot {generation}"
                    )))
                }
                Ok((_, Offer::Closed)) => {
                    return Err(NfError::Guest("the switch closed the slot".into()))
                }
                _ => wait("bring the VM up")?,
            }
        }
        let region = SharedRegion::from_fd(file.into())?;
        Nf::on_region(
            Link::Guest(GuestLink {
                area,
                slot,
                generation,
            }),
            reply,
            region,
            options,
        )
    }

    /// The mapped region (the whole BAR in a guest), for audits that read it back.
    pub fn region(&self) -> &std::sync::Arc<SharedRegion> {
        self.pool.region()
    }

    /// The pool and this NF's ring ends, for tests that play a misbehaving VM on purpose
    /// (writing answers the switch must refuse). Not for NFs: [`Nf::poll`] is the API.
    #[doc(hidden)]
    pub fn raw_parts(
        &mut self,
    ) -> (
        &netvm_shm::PacketPool,
        &mut netvm_shm::RingConsumer,
        &mut netvm_shm::RingProducer,
    ) {
        (&self.pool, &mut self.rx, &mut self.tx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ivshmem_device_is_found_by_its_ids_and_its_absence_is_explained() {
        let dir = std::env::temp_dir().join(format!("netvm-nf-guest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (name, vendor, device) in [
            ("0000:00:01.0", "0x8086", "0x7000"),
            ("0000:00:03.0", "0x1af4", "0x1000"),
        ] {
            let dev = dir.join(name);
            std::fs::create_dir_all(&dev).unwrap();
            std::fs::write(dev.join("vendor"), format!("{vendor}\n")).unwrap();
            std::fs::write(dev.join("device"), format!("{device}\n")).unwrap();
        }
        let e = find_ivshmem_in(&dir).unwrap_err().to_string();
        assert!(e.contains("no ivshmem device (1af4:1110)"), "{e}");
        let dev = dir.join("0000:00:04.0");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("vendor"), "0x1af4\n").unwrap();
        std::fs::write(dev.join("device"), "0x1110\n").unwrap();
        assert_eq!(find_ivshmem_in(&dir).unwrap(), dev.join("resource2"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
