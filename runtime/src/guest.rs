//! VMs in QEMU guests: `--vm NAME=guest[:OPTIONS]` boots one `qemu-system-x86_64` per VM
//! whose network function runs inside the guest on the switch's own memory.
//!
//! A guest is a process VM to the switch ([`crate::external`]): the same rings, the same
//! want/ack link, the same `vm_lost`/`vm_down` accounting and crash recovery. What differs
//! is how it attaches. There is no socket into a guest, so a supervisor thread per guest
//! ([`Guests::start`]) does what a control connection does for a process:
//!
//! - **Memory.** The region's memfd reaches QEMU through an ivshmem server on a UNIX
//!   socket ([`IvshmemServer`], QEMU's `docs/specs/ivshmem-spec.rst`: version 0, the peer
//!   id, the memfd with id -1, then the guest's interrupt eventfds, over `SCM_RIGHTS`), and
//!   becomes BAR2 of an `ivshmem-doorbell` device. A trusted guest gets the shared pool's
//!   memfd; an untrusted one its private region's and nothing else. The memfd is grown to
//!   a power of two (PCI's rule for a BAR) with the attach area at its end
//!   (`netvm_shm::guest`); no file of packet memory is ever on disk.
//! - **Attach.** The supervisor writes the attach record into the guest's slot, boots
//!   QEMU, and when the guest agent says it is ready, attaches the VM through
//!   [`ExternalVms::attach`] (fresh rings, engine ends claimed) and tells the guest.
//!   Boot-to-attach time is measured from the spawn to that moment.
//! - **Death.** A QEMU that exits for any reason (SIGKILL included) is seen within a few
//!   milliseconds (`waitpid`); the VM is detached ([`ExternalVms::detach`]: every buffer it
//!   held reclaimed, counted `vm_lost`) and the guest is booted again (`restart=no` to
//!   leave it down).
//! - **No QEMU outlives netvm.** QEMU runs in its own process group with
//!   `PR_SET_PDEATHSIG(SIGKILL)` tied to the supervisor thread, and the supervisor kills it
//!   when the switch stops; a netvm killed with -9 takes its guests with it.
//! - **Acceleration.** [`detect_accel`]: KVM only where `/dev/kvm` opens and `kvm_intel` or
//!   `kvm_amd` is loaded; a PVM host (`kvm_pvm` alone) cannot run an ordinary guest
//!   (Debian's kernel hangs after "Probing EDD"), so `auto` falls back to TCG there and
//!   says so, and `accel=kvm` is refused with the reason instead of hanging.
//!
//! This module prints nothing: events go to the log callback the binary passes.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use netvm_shm::control::{send_with_fds, AttachReply};
use netvm_shm::guest::{AttachArea, Offer, SLOTS};
use serde_json::json;

use crate::external::{ExternalVm, ExternalVms};

use crate::layout::LAYOUT_VERSION;
pub use netvm_shm::guest::bar_bytes;

/// Environment variable naming the guest kernel when `kernel=` is not given.
pub const KERNEL_ENV: &str = "NETVM_GUEST_KERNEL";
/// Environment variable naming a prebuilt initramfs when `image=` is not given.
pub const IMAGE_ENV: &str = "NETVM_GUEST_IMAGE";
/// Environment variable naming the guest agent binary (`netvm guest image`).
pub const AGENT_ENV: &str = "NETVM_GUEST_AGENT";
/// Environment variable naming the QEMU binary (default `qemu-system-x86_64` on PATH).
pub const QEMU_ENV: &str = "NETVM_QEMU";
/// The agent's file name.
pub const AGENT_NAME: &str = "netvm-guest-agent";

/// Which accelerator a guest asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelChoice {
    Auto,
    Kvm,
    Tcg,
}

/// The accelerator a guest runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// `--vm NAME=guest[:cpus=N,mem=SIZE,accel=auto|kvm|tcg,kernel=PATH,image=PATH,
/// console=PATH,restart=yes|no,attach_timeout=SECONDS,scan=HEX,nf=SPEC]`. `nf=` comes
/// last and takes the rest, commas and colons included (`nf=rewrite:dscp=46`).
#[derive(Debug, Clone, PartialEq)]
pub struct GuestSpec {
    pub cpus: u32,
    /// Guest memory, MiB.
    pub mem_mib: u32,
    pub accel: AccelChoice,
    pub kernel: Option<PathBuf>,
    pub image: Option<PathBuf>,
    pub console: Option<PathBuf>,
    /// Boot the guest again when QEMU exits while the switch runs.
    pub restart: bool,
    /// How long a boot may take to attach before QEMU is killed and the guest failed.
    pub attach_timeout: Duration,
    /// Bytes for the agent to search its BAR for (tests; `netvm.scan`).
    pub scan: Option<String>,
    /// What the agent runs: a built-in spec.
    pub nf: String,
}

impl Default for GuestSpec {
    fn default() -> Self {
        GuestSpec {
            cpus: 1,
            mem_mib: 256,
            accel: AccelChoice::Auto,
            kernel: None,
            image: None,
            console: None,
            restart: true,
            attach_timeout: Duration::from_secs(60),
            scan: None,
            nf: "forward".into(),
        }
    }
}

/// Whether a `--vm` value asks for a guest.
pub fn is_guest_spec(spec: &str) -> bool {
    spec == "guest" || spec.starts_with("guest:")
}

/// Parse the value of `--vm NAME=guest...`.
pub fn parse_spec(spec: &str) -> Result<GuestSpec, String> {
    let mut out = GuestSpec::default();
    let options = match spec.strip_prefix("guest") {
        Some("") => return Ok(out),
        Some(rest) => rest
            .strip_prefix(':')
            .ok_or_else(|| format!("`{spec}`: expected guest or guest:OPTIONS"))?,
        None => return Err(format!("`{spec}` is not a guest spec")),
    };
    let mut rest = options;
    while !rest.is_empty() {
        if let Some(nf) = rest.strip_prefix("nf=") {
            if nf.is_empty() || nf.contains(char::is_whitespace) {
                return Err(format!(
                    "guest option nf=`{nf}`: expected a built-in, without spaces"
                ));
            }
            check_nf(nf)?;
            out.nf = nf.to_string();
            break;
        }
        let (item, tail) = rest.split_once(',').unwrap_or((rest, ""));
        rest = tail;
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| format!("guest option `{item}`: expected KEY=VALUE"))?;
        let bad = |why: &str| format!("guest option {key}=`{value}`: {why}");
        match key {
            "cpus" => {
                out.cpus = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=64).contains(n))
                    .ok_or_else(|| bad("expected 1 to 64"))?
            }
            "mem" => out.mem_mib = parse_mib(value).ok_or_else(|| bad("expected MiB, or a size like 256M or 1G (64M at least)"))?,
            "accel" => {
                out.accel = match value {
                    "auto" => AccelChoice::Auto,
                    "kvm" => AccelChoice::Kvm,
                    "tcg" => AccelChoice::Tcg,
                    _ => return Err(bad("expected auto, kvm or tcg")),
                }
            }
            "kernel" => out.kernel = Some(PathBuf::from(value)),
            "image" => out.image = Some(PathBuf::from(value)),
            "console" => out.console = Some(PathBuf::from(value)),
            "restart" => {
                out.restart = match value {
                    "yes" | "on" | "true" => true,
                    "no" | "off" | "false" => false,
                    _ => return Err(bad("expected yes or no")),
                }
            }
            "attach_timeout" => {
                out.attach_timeout = value
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0 && *s < 86_400.0)
                    .map(Duration::from_secs_f64)
                    .ok_or_else(|| bad("expected seconds"))?
            }
            "scan" => {
                if value.is_empty()
                    || value.len() % 2 != 0
                    || !value.chars().all(|c| c.is_ascii_hexdigit())
                {
                    return Err(bad("expected an even number of hex digits"));
                }
                out.scan = Some(value.to_string())
            }
            _ => {
                return Err(format!(
                    "unknown guest option `{key}` (expected cpus, mem, accel, kernel, image, console, restart, attach_timeout, scan, nf)"
                ))
            }
        }
    }
    Ok(out)
}

/// What a guest may run: a built-in (checked here, so a typo fails at start, not as a
/// guest that boots and powers off), or `hostile` (the agent's test NF).
fn check_nf(nf: &str) -> Result<(), String> {
    if nf == "hostile" {
        return Ok(());
    }
    let name = nf.split_once(':').map_or(nf, |(n, _)| n);
    match name {
        "process" => Err("guest option nf=process: a guest runs a built-in, not a process".into()),
        "pcap-tap" => Err(
            "guest option nf=pcap-tap: the file would be written in the guest's memory and lost \
             at power off; mirror to a pcap-tap VM on the host instead"
                .into(),
        ),
        _ => crate::vm::builtin(nf)
            .map(|_| ())
            .map_err(|e| format!("guest option nf={nf}: {e}")),
    }
}

fn parse_mib(text: &str) -> Option<u32> {
    let (digits, scale) = match text.as_bytes().last()? {
        b'M' | b'm' => (&text[..text.len() - 1], 1),
        b'G' | b'g' => (&text[..text.len() - 1], 1024),
        _ => (text, 1),
    };
    digits
        .parse::<u32>()
        .ok()?
        .checked_mul(scale)
        .filter(|m| (64..=1 << 20).contains(m))
}

/// What `/dev/kvm` can do here, from the modules sysfs shows.
pub fn detect_accel(choice: AccelChoice) -> Result<(Accel, String), String> {
    detect_accel_in(choice, Path::new("/sys/module"), Path::new("/dev/kvm"))
}

fn detect_accel_in(
    choice: AccelChoice,
    modules: &Path,
    dev: &Path,
) -> Result<(Accel, String), String> {
    let has = |m: &str| modules.join(m).exists();
    let opens = OpenOptions::new().read(true).write(true).open(dev);
    let kvm = match (&opens, has("kvm_intel") || has("kvm_amd"), has("kvm_pvm")) {
        (Ok(_), true, _) => Ok("/dev/kvm with kvm_intel/kvm_amd".to_string()),
        (Ok(_), false, true) => Err(format!(
            "{} is a PVM host (module kvm_pvm, no kvm_intel or kvm_amd): it cannot run an \
             ordinary guest (a stock kernel hangs after \"Probing EDD\")",
            dev.display()
        )),
        (Ok(_), false, false) => Err(format!(
            "{} opens but neither kvm_intel nor kvm_amd is loaded",
            dev.display()
        )),
        (Err(e), _, _) => Err(format!("{}: {e}", dev.display())),
    };
    match (choice, kvm) {
        (AccelChoice::Tcg, _) => Ok((
            Accel::Tcg,
            "TCG as asked (accel=tcg): emulated, slow".into(),
        )),
        (_, Ok(why)) => Ok((Accel::Kvm, format!("KVM ({why})"))),
        (AccelChoice::Auto, Err(why)) => Ok((
            Accel::Tcg,
            format!("TCG, EMULATED AND SLOW: no usable KVM because {why}"),
        )),
        (AccelChoice::Kvm, Err(why)) => {
            Err(format!("accel=kvm: {why}; use accel=tcg or accel=auto"))
        }
    }
}

/// The QEMU binary, or an error naming the package.
pub fn find_qemu() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(QEMU_ENV) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("{QEMU_ENV}={}: no such file", path.display()))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("qemu-system-x86_64"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "qemu-system-x86_64 not found on PATH: install Debian's `qemu-system-x86` \
             (apt-get install qemu-system-x86), or set NETVM_QEMU"
                .to_string()
        })
}

/// The guest kernel: `kernel=`, else `$NETVM_GUEST_KERNEL`; an error says what to get.
pub fn find_kernel(spec: &GuestSpec) -> Result<PathBuf, String> {
    let (path, from) = match (&spec.kernel, std::env::var_os(KERNEL_ENV)) {
        (Some(p), _) => (p.clone(), "kernel="),
        (None, Some(p)) => (PathBuf::from(p), KERNEL_ENV),
        (None, None) => {
            return Err(format!(
                "no guest kernel: pass `--vm NAME=guest:kernel=PATH` or set {KERNEL_ENV} to a \
                 vmlinuz with PCI and a serial console, e.g. Debian's, unpacked without \
                 installing it: `apt-get download $(apt-cache depends linux-image-cloud-amd64 \
                 | awk '/Depends: linux-image/{{print $2}}') && dpkg -x linux-image-*.deb k` \
                 then {KERNEL_ENV}=k/boot/vmlinuz-*"
            ))
        }
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "guest kernel {} (from {from}): no such file",
            path.display()
        ))
    }
}

/// Where the guest agent is: `$NETVM_GUEST_AGENT`, else beside this executable, else in the
/// cargo target directory's `x86_64-unknown-linux-gnu/{release,debug}`.
pub fn find_agent() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(AGENT_ENV) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().map_err(|e| format!("locating this executable: {e}"))?;
    let mut candidates = Vec::new();
    let mut dir = exe.parent();
    // target/debug/netvm, target/debug/deps/test-binary: look two levels up.
    for _ in 0..3 {
        let Some(d) = dir else { break };
        candidates.push(d.join(AGENT_NAME));
        for profile in ["release", "debug"] {
            candidates.push(
                d.join("x86_64-unknown-linux-gnu")
                    .join(profile)
                    .join(AGENT_NAME),
            );
        }
        dir = d.parent();
    }
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        format!(
            "no guest agent ({AGENT_NAME}) beside {} or in the target directory: build it with \
             `CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS=\"-C target-feature=+crt-static\" \
             cargo build --release -p netvm-guest --target x86_64-unknown-linux-gnu`, or set {AGENT_ENV}",
            exe.display()
        )
    })
}

/// Whether an ELF executable asks for a dynamic loader (`PT_INTERP`): it then cannot be
/// PID 1 of an initramfs that holds nothing else.
pub fn elf_is_static(bytes: &[u8]) -> Result<bool, String> {
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |o: usize| {
        bytes
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        bytes.get(o..o + 8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        })
    };
    if bytes.get(..4) != Some(b"\x7fELF") || bytes.get(4) != Some(&2) || bytes.get(5) != Some(&1) {
        return Err("not a 64-bit little-endian ELF executable".into());
    }
    let bad = || "truncated ELF header".to_string();
    let phoff = u64_at(0x20).ok_or_else(bad)? as usize;
    let phentsize = u16_at(0x36).ok_or_else(bad)? as usize;
    let phnum = u16_at(0x38).ok_or_else(bad)? as usize;
    for i in 0..phnum {
        let at = phoff
            .checked_add(i.checked_mul(phentsize).ok_or_else(bad)?)
            .ok_or_else(bad)?;
        if u32_at(at).ok_or_else(bad)? == 3 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// One cpio "newc" entry.
fn cpio_entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
    let header = format!(
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
        0,
        0,
        1,
        0,
        data.len(),
        0,
        0,
        rdev.0,
        rdev.1,
        name.len() + 1,
        0
    );
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    while out.len() % 4 != 0 {
        out.push(0);
    }
    out.extend_from_slice(data);
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

/// An initramfs (cpio "newc", uncompressed) whose `/init` is `agent`, with `/dev/console`,
/// `/proc`, `/sys` and `/dev`. Refuses an agent that is not statically linked.
pub fn build_image(agent: &Path) -> Result<Vec<u8>, String> {
    let bytes =
        std::fs::read(agent).map_err(|e| format!("reading the agent {}: {e}", agent.display()))?;
    if !elf_is_static(&bytes).map_err(|e| format!("the agent {}: {e}", agent.display()))? {
        return Err(format!(
            "the agent {} is dynamically linked and an initramfs has no libc: build it with \
             CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS=\"-C target-feature=+crt-static\" \
             and --target x86_64-unknown-linux-gnu",
            agent.display()
        ));
    }
    let mut out = Vec::with_capacity(bytes.len() + 4096);
    cpio_entry(&mut out, 1, "dev", 0o040755, (0, 0), &[]);
    cpio_entry(&mut out, 2, "dev/console", 0o020600, (5, 1), &[]);
    cpio_entry(&mut out, 3, "proc", 0o040755, (0, 0), &[]);
    cpio_entry(&mut out, 4, "sys", 0o040755, (0, 0), &[]);
    cpio_entry(&mut out, 5, "init", 0o100755, (0, 0), &bytes);
    cpio_entry(&mut out, 0, "TRAILER!!!", 0, (0, 0), &[]);
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// The ivshmem server.

/// An ivshmem server for one guest: a UNIX socket QEMU's `ivshmem-doorbell` connects to;
/// each connection gets the protocol version, its peer id, the region's memfd and the
/// guest's interrupt eventfd (vector 0), as `docs/specs/ivshmem-spec.rst` says.
pub struct IvshmemServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// The guest's vector 0: writing 8 bytes to it rings the guest's doorbell.
    pub doorbell: Arc<OwnedFd>,
}

/// How long a stopping switch waits for a guest to power off before killing its QEMU.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Boots in a row that end before attaching, after which a guest is failed, not rebooted.
const MAX_UNATTACHED_EXITS: u32 = 3;

/// The id the server gives its one peer.
const PEER_ID: i64 = 1;

fn send_message(stream: &UnixStream, value: i64, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let bytes = value.to_le_bytes();
    match fd {
        Some(fd) => {
            let sent = send_with_fds(stream, &bytes, &[fd.as_raw_fd()])?;
            if sent != bytes.len() {
                return Err(io::Error::other("short ivshmem message"));
            }
            Ok(())
        }
        None => (&*stream).write_all(&bytes),
    }
}

impl IvshmemServer {
    /// Listen on `path` and hand every peer `memory`.
    pub fn start(path: &Path, memory: OwnedFd) -> io::Result<IvshmemServer> {
        let _ = std::fs::remove_file(path);
        // SAFETY: umask only changes this process's file-creation mask; restored below.
        let old = unsafe { libc::umask(0o177) };
        let bound = UnixListener::bind(path);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let listener = bound?;
        listener.set_nonblocking(true)?;
        // SAFETY: eventfd takes no pointers; the result is checked and owned from here.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor we own.
        let doorbell = Arc::new(unsafe { OwnedFd::from_raw_fd(efd) });
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            let doorbell = doorbell.clone();
            std::thread::Builder::new()
                .name("netvm-ivshmem".into())
                .spawn(move || {
                    let mut peers: Vec<UnixStream> = Vec::new();
                    while !stop.load(Ordering::Acquire) {
                        match listener.accept() {
                            Ok((stream, _)) => {
                                let _ = stream.set_nonblocking(false);
                                let setup = send_message(&stream, 0, None)
                                    .and_then(|_| send_message(&stream, PEER_ID, None))
                                    .and_then(|_| send_message(&stream, -1, Some(memory.as_fd())))
                                    .and_then(|_| {
                                        send_message(&stream, PEER_ID, Some(doorbell.as_fd()))
                                    });
                                if setup.is_ok() {
                                    // Kept open: QEMU treats a closed server as gone.
                                    peers.push(stream);
                                }
                                peers.retain(|p| {
                                    let mut byte = [0u8; 1];
                                    let _ = p.set_nonblocking(true);
                                    !matches!((&*p).read(&mut byte), Ok(0))
                                });
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(20)),
                        }
                    }
                })?
        };
        Ok(IvshmemServer {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
            doorbell,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for IvshmemServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

// ---------------------------------------------------------------------------------------
// Supervisors.

/// Where guests report what happens (boots, attaches, deaths, failures).
pub type GuestLog = Arc<dyn Fn(&str) + Send + Sync>;

/// One guest VM to run.
#[derive(Debug, Clone)]
pub struct GuestPlan {
    pub vm: String,
    pub spec: GuestSpec,
}

/// What the run report says of a guest when the switch is done.
#[derive(Debug, Clone, PartialEq)]
pub struct GuestReport {
    pub vm: String,
    pub accel: Accel,
    pub console: PathBuf,
    /// The guest's BAR2: the region's memfd, grown to a power of two.
    pub bar_bytes: usize,
    /// `shared` (trusted: the pool) or `private` (untrusted: its private region).
    pub region: String,
    /// Bytes of that region as its layout describes it (the BAR less the attach area and
    /// the rounding).
    pub region_bytes: usize,
    pub boots: u64,
    pub attaches: u64,
    /// Boot-to-attach time of each boot that attached.
    pub boot_to_attach: Vec<Duration>,
    /// Why it stopped being run, if it failed (an attach timeout, QEMU refusing to start).
    pub failure: Option<String>,
}

/// Everything prepared for one guest before its supervisor starts.
struct Prepared {
    vm: Arc<ExternalVm>,
    spec: GuestSpec,
    qemu: PathBuf,
    kernel: PathBuf,
    image: PathBuf,
    console: PathBuf,
    accel: Accel,
    area: AttachArea,
    slot: usize,
    bar: usize,
    server: IvshmemServer,
    reply: AttachReply,
}

/// The running guests of a switch: one supervisor thread each.
pub struct Guests {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<GuestReport>>,
    /// The image built at start, removed at stop.
    built_image: Option<PathBuf>,
}

/// Grow `fd` to `bytes` if it is shorter.
fn grow(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<()> {
    let file = File::from(fd.try_clone_to_owned()?);
    if (file.metadata()?.len() as usize) < bytes {
        file.set_len(bytes as u64)?;
    }
    Ok(())
}

impl Guests {
    /// Check everything the guests need (QEMU, kernel, image, KVM or TCG), give each its
    /// memory and ivshmem server, and start their supervisors; the first boots begin at
    /// once. `dir` holds the sockets, the default console logs and a built image.
    pub fn start(
        external: &Arc<ExternalVms>,
        plans: &[GuestPlan],
        port_names: &[String],
        vm_names: &[String],
        dir: &Path,
        log: GuestLog,
    ) -> Result<Guests, String> {
        if plans.is_empty() {
            return Ok(Guests {
                stop: Arc::new(AtomicBool::new(false)),
                threads: Vec::new(),
                built_image: None,
            });
        }
        let qemu = find_qemu()?;
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        for stale in remove_stale_files(dir) {
            log(&format!(
                "removed {} (left by a netvm that is no longer running)",
                stale.display()
            ));
        }
        let pid = std::process::id();
        let mut built_image: Option<PathBuf> = None;
        let mut trusted_slots = 0;
        let mut prepared = Vec::new();
        for plan in plans {
            let what = |e: String| format!("guest `{}`: {e}", plan.vm);
            let vm = external
                .by_name(&plan.vm)
                .ok_or_else(|| what("not a VM the switch runs externally".into()))?
                .clone();
            let kernel = find_kernel(&plan.spec).map_err(what)?;
            let (accel, why) = detect_accel(plan.spec.accel).map_err(what)?;
            log(&format!("guest `{}`: {why}", plan.vm));
            let image = match (&plan.spec.image, std::env::var_os(IMAGE_ENV), &built_image) {
                (Some(p), _, _) => p.clone(),
                (None, Some(p), _) => PathBuf::from(p),
                (None, None, Some(p)) => p.clone(),
                (None, None, None) => {
                    let agent = find_agent().map_err(what)?;
                    let bytes = build_image(&agent).map_err(what)?;
                    let path = dir.join(format!("netvm-{pid}-guest.cpio"));
                    std::fs::write(&path, bytes)
                        .map_err(|e| what(format!("writing {}: {e}", path.display())))?;
                    built_image = Some(path.clone());
                    path
                }
            };
            if !image.is_file() {
                return Err(what(format!("initramfs {}: no such file", image.display())));
            }
            let slot = if vm.trusted {
                trusted_slots += 1;
                trusted_slots - 1
            } else {
                0
            };
            if slot >= SLOTS {
                return Err(what(format!(
                    "at most {SLOTS} trusted guests can share the pool's attach area"
                )));
            }
            let bar = bar_bytes(vm.region.len_bytes());
            grow(vm.region.fd(), bar).map_err(|e| {
                what(format!(
                    "growing the region's memfd to {bar} bytes for its BAR: {e}"
                ))
            })?;
            let area = AttachArea::map(vm.region.fd(), bar).map_err(|e| what(e.to_string()))?;
            let memory = vm
                .region
                .fd()
                .try_clone_to_owned()
                .map_err(|e| what(format!("duplicating the region's memfd: {e}")))?;
            let socket = dir.join(format!("netvm-{pid}-{}.ivshmem", plan.vm));
            let server = IvshmemServer::start(&socket, memory)
                .map_err(|e| what(format!("ivshmem server on {}: {e}", socket.display())))?;
            let console = plan
                .spec
                .console
                .clone()
                .unwrap_or_else(|| dir.join(format!("netvm-{pid}-{}.console", plan.vm)));
            File::create(&console)
                .map_err(|e| what(format!("console log {}: {e}", console.display())))?;
            let reply = AttachReply {
                vm: vm.name.clone(),
                vm_index: vm.vm,
                trusted: vm.trusted,
                region: if vm.trusted { "shared" } else { "private" }.into(),
                ring_in: vm.ring_in,
                ring_out: vm.ring_out,
                layout: LAYOUT_VERSION,
                ports: port_names.to_vec(),
                vms: vm_names.to_vec(),
            };
            vm.set_guest(json!({
                "state": "booting",
                "accel": accel.name(),
                "console": console.display().to_string(),
                "bar_bytes": bar,
                "region": reply.region,
            }));
            prepared.push(Prepared {
                vm,
                spec: plan.spec.clone(),
                qemu: qemu.clone(),
                kernel,
                image,
                console,
                accel,
                area,
                slot,
                bar,
                server,
                reply,
            });
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for p in prepared {
            let stop = stop.clone();
            let external = external.clone();
            let log = log.clone();
            let name = format!("netvm-guest-{}", p.vm.name);
            let thread = std::thread::Builder::new()
                .name(name)
                .spawn(move || supervise(p, &external, &stop, &log))
                .map_err(|e| format!("starting a guest supervisor: {e}"))?;
            threads.push(thread);
        }
        Ok(Guests {
            stop,
            threads,
            built_image,
        })
    }

    /// Close every slot, give the guests a moment to power off, kill what remains, and
    /// say what each guest did.
    pub fn stop(self) -> Vec<GuestReport> {
        self.stop.store(true, Ordering::Release);
        let reports = self
            .threads
            .into_iter()
            .filter_map(|t| t.join().ok())
            .collect();
        if let Some(image) = &self.built_image {
            let _ = std::fs::remove_file(image);
        }
        reports
    }
}

/// Start QEMU for boot `generation`, in its own process group, killed when this thread
/// (its parent) dies.
fn spawn_qemu(p: &Prepared, generation: u64) -> Result<Child, String> {
    let mut append = format!(
        "console=ttyS0 panic=-1 quiet loglevel=3 netvm.vm={} netvm.slot={} netvm.boot={generation} netvm.nf={}",
        p.vm.name, p.slot, p.spec.nf
    );
    if let Some(scan) = &p.spec.scan {
        append.push_str(&format!(" netvm.scan={scan}"));
    }
    let mut console = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .open(&p.console)
        .map_err(|e| format!("console log {}: {e}", p.console.display()))?;
    let _ = writeln!(
        console,
        "--- netvm: boot {generation} of guest `{}` ---",
        p.vm.name
    );
    let stderr = console
        .try_clone()
        .map_err(|e| format!("console log {}: {e}", p.console.display()))?;
    let mut cmd = Command::new(&p.qemu);
    cmd.arg("-name")
        .arg(format!("netvm-{}", p.vm.name))
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .args(["-monitor", "none", "-nic", "none"]);
    match p.accel {
        Accel::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => cmd.args(["-accel", "tcg", "-cpu", "max"]),
    };
    cmd.arg("-smp")
        .arg(p.spec.cpus.to_string())
        .arg("-m")
        .arg(format!("{}M", p.spec.mem_mib))
        .arg("-kernel")
        .arg(&p.kernel)
        .arg("-initrd")
        .arg(&p.image)
        .arg("-append")
        .arg(append)
        .arg("-chardev")
        .arg(format!(
            "file,id=console,path={},append=on",
            p.console.display()
        ))
        .args(["-serial", "chardev:console"])
        .arg("-chardev")
        .arg(format!(
            "socket,id=ivshmem,path={}",
            p.server.path().display()
        ))
        .args(["-device", "ivshmem-doorbell,chardev=ivshmem,vectors=1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    // SAFETY: getpid is async-signal-safe and takes nothing.
    let parent = unsafe { libc::getpid() };
    // SAFETY: between fork and exec the closure calls only async-signal-safe functions
    // (setpgid, prctl, getppid, _exit) and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            libc::setpgid(0, 0);
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            );
            // The parent may have died before the prctl took effect.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    cmd.spawn()
        .map_err(|e| format!("starting {}: {e}", p.qemu.display()))
}

/// The last lines of the console log, for an error message.
fn console_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (_, Some(sig)) => format!("was killed by signal {sig}"),
        _ => "ended".into(),
    }
}

/// One guest's life: boot, attach, watch, detach, boot again, until the switch stops.
fn supervise(
    p: Prepared,
    external: &ExternalVms,
    stop: &AtomicBool,
    log: &GuestLog,
) -> GuestReport {
    let name = p.vm.name.clone();
    let mut report = GuestReport {
        vm: name.clone(),
        accel: p.accel,
        console: p.console.clone(),
        bar_bytes: p.bar,
        region: p.reply.region.clone(),
        region_bytes: p.vm.region.len_bytes(),
        boots: 0,
        attaches: 0,
        boot_to_attach: Vec::new(),
        failure: None,
    };
    let status = |state: &str, pid: Option<u32>, boot_ms: Option<u128>, report: &GuestReport| {
        p.vm.set_guest(json!({
            "state": state,
            "qemu_pid": pid,
            "accel": p.accel.name(),
            "boot_ms": boot_ms,
            "boots": report.boots,
            "console": p.console.display().to_string(),
            "bar_bytes": p.bar,
            "region": p.reply.region,
            "failure": report.failure,
        }));
    };
    let mut backoff = Duration::from_millis(100);
    let mut last_boot_ms = None;
    // Boots in a row whose QEMU exited before the guest attached.
    let mut unattached_exits = 0;
    while !stop.load(Ordering::Acquire) {
        report.boots += 1;
        let generation = report.boots;
        if let Err(e) = p.area.offer(p.slot, generation, &p.reply) {
            report.failure = Some(e.to_string());
            break;
        }
        let spawned = Instant::now();
        let mut child = match spawn_qemu(&p, generation) {
            Ok(c) => c,
            Err(e) => {
                log(&format!("guest `{name}`: {e}"));
                report.failure = Some(e);
                break;
            }
        };
        let qemu_pid = child.id();
        log(&format!(
            "guest `{name}`: boot {generation}, QEMU pid {qemu_pid} ({}), console {}",
            p.accel.name(),
            p.console.display()
        ));
        status("booting", Some(qemu_pid), last_boot_ms, &report);
        let mut owner: Option<u64> = None;
        let exit = loop {
            if stop.load(Ordering::Acquire) {
                // Let the agent see the slot close and power off; then kill what is left.
                let _ = p.area.set_offer(p.slot, generation, Offer::Closed);
                let deadline = Instant::now() + STOP_GRACE;
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                let _ = child.kill();
                let status = child.wait().ok();
                break status;
            }
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) => {}
                Err(_) => break None,
            }
            if owner.is_none() {
                match p.area.answer(p.slot) {
                    Ok(Some(answer)) if answer.generation == generation => {
                        match external.attach(&name, qemu_pid, answer.writes, &p.reply.vms) {
                            Ok(grant) => {
                                owner = Some(grant.owner);
                                let took = spawned.elapsed();
                                report.attaches += 1;
                                report.boot_to_attach.push(took);
                                last_boot_ms = Some(took.as_millis());
                                let _ = p.area.set_offer(p.slot, generation, Offer::Attached);
                                backoff = Duration::from_millis(100);
                                log(&format!(
                                    "guest `{name}`: attached {:.2} s after QEMU started (boot {generation})",
                                    took.as_secs_f64()
                                ));
                                status("up", Some(qemu_pid), last_boot_ms, &report);
                            }
                            Err(e) => {
                                // The engine was slow to take the change (a loaded
                                // machine): the guest waits for `attached`, so try again;
                                // the attach timeout still bounds it.
                                log(&format!(
                                    "guest `{name}`: attach not taken yet ({e}); retrying"
                                ));
                                std::thread::sleep(Duration::from_millis(100));
                            }
                        }
                    }
                    _ if spawned.elapsed() > p.spec.attach_timeout => {
                        let why = format!(
                            "did not attach within {:.0} s (QEMU pid {qemu_pid} killed); see its console log {} (last lines: {})",
                            p.spec.attach_timeout.as_secs_f64(),
                            p.console.display(),
                            console_tail(&p.console)
                        );
                        log(&format!("guest `{name}`: {why}"));
                        report.failure = Some(why);
                        let _ = child.kill();
                    }
                    _ => {}
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let attached = owner.is_some();
        if let Some(owner) = owner.take() {
            external.detach(&p.vm, owner);
        }
        let how = exit.map_or("ended".to_string(), describe_exit);
        if stop.load(Ordering::Acquire) {
            break;
        }
        unattached_exits = if attached { 0 } else { unattached_exits + 1 };
        if report.failure.is_none() && unattached_exits >= MAX_UNATTACHED_EXITS {
            let why = format!(
                "QEMU {how} before the guest attached, {unattached_exits} boots in a row; see its console log {} (last lines: {})",
                p.console.display(),
                console_tail(&p.console)
            );
            log(&format!("guest `{name}`: {why}"));
            report.failure = Some(why);
        }
        if report.failure.is_some() {
            status("failed", None, last_boot_ms, &report);
            break;
        }
        if !p.spec.restart {
            log(&format!(
                "guest `{name}`: down, QEMU {how}; not restarted (restart=no)"
            ));
            status("down", None, last_boot_ms, &report);
            break;
        }
        log(&format!(
            "guest `{name}`: down, QEMU {how}; its packets are reclaimed; booting it again"
        ));
        status("restarting", None, last_boot_ms, &report);
        let until = Instant::now() + backoff;
        while Instant::now() < until && !stop.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(10));
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
    if report.failure.is_none() {
        status("stopped", None, last_boot_ms, &report);
    }
    report
}

/// Whether a guest VM spec's failure should make the run fail.
pub fn any_failed(reports: &[GuestReport]) -> bool {
    reports.iter().any(|r| r.failure.is_some())
}

/// Removes the ivshmem sockets and built images (`netvm-PID-*.ivshmem`,
/// `netvm-PID-guest.cpio`) that a netvm killed with SIGKILL left in `dir`: those whose PID
/// no longer runs. Console logs stay (they say why a guest died). Returns what it removed.
pub fn remove_stale_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix("netvm-") else {
            continue;
        };
        if !(name.ends_with(".ivshmem") || name.ends_with("-guest.cpio")) {
            continue;
        }
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let alive = Path::new("/proc").join(pid.to_string()).exists();
        if !alive && std::fs::remove_file(entry.path()).is_ok() {
            removed.push(entry.path());
        }
    }
    removed.sort();
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_left_by_a_dead_netvm_are_removed_and_a_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let own = std::process::id();
        // No PID reaches 999999999 (pid_max is at most 2^22).
        let names = [
            "netvm-999999999-fw.ivshmem",
            "netvm-999999999-guest.cpio",
            "netvm-999999999-fw.console",
            &format!("netvm-{own}-fw.ivshmem"),
            "netvm-x-fw.ivshmem",
            "other.ivshmem",
        ];
        for n in names {
            std::fs::write(d.join(n), b"").unwrap();
        }
        let removed = remove_stale_files(d);
        assert_eq!(
            removed,
            vec![
                d.join("netvm-999999999-fw.ivshmem"),
                d.join("netvm-999999999-guest.cpio")
            ]
        );
        for kept in &names[2..] {
            assert!(d.join(kept).exists(), "{kept} was removed");
        }
    }

    #[test]
    fn specs_parse_with_nf_taking_the_rest() {
        assert_eq!(parse_spec("guest").unwrap(), GuestSpec::default());
        let s = parse_spec(
            "guest:cpus=2,mem=1G,accel=tcg,console=/tmp/c.log,restart=no,nf=rewrite:dscp=46",
        )
        .unwrap();
        assert_eq!((s.cpus, s.mem_mib, s.accel), (2, 1024, AccelChoice::Tcg));
        assert_eq!(s.console, Some(PathBuf::from("/tmp/c.log")));
        assert!(!s.restart);
        assert_eq!(s.nf, "rewrite:dscp=46");
        // What follows nf= is the NF's, commas too: `x=1` reaches `rewrite`, which refuses it
        // (a guest option would have been refused as a guest option).
        let err = parse_spec("guest:nf=rewrite:dscp=46,x=1").unwrap_err();
        assert!(
            err.contains("built-in `rewrite`: unknown option `x`"),
            "{err}"
        );
        assert!(parse_spec("guest:cpus=0").unwrap_err().contains("cpus=`0`"));
        assert!(parse_spec("guest:mem=12").unwrap_err().contains("mem=`12`"));
        assert!(parse_spec("guest:accel=xen")
            .unwrap_err()
            .contains("auto, kvm or tcg"));
        assert!(parse_spec("guest:disk=x")
            .unwrap_err()
            .contains("unknown guest option `disk`"));
        assert!(parse_spec("guest:cpus").unwrap_err().contains("KEY=VALUE"));
        assert!(parse_spec("guest:scan=abc").is_err());
        assert!(parse_spec("guestx").is_err());
        assert!(parse_spec("guest:nf=nat")
            .unwrap_err()
            .contains("unknown built-in"));
        assert!(parse_spec("guest:nf=pcap-tap:/x")
            .unwrap_err()
            .contains("lost"));
        assert!(parse_spec("guest:nf=process").is_err());
        assert_eq!(parse_spec("guest:nf=hostile").unwrap().nf, "hostile");
        assert!(is_guest_spec("guest:nf=forward") && !is_guest_spec("process"));
    }

    #[test]
    fn a_pvm_host_falls_back_to_tcg_and_refuses_kvm_with_the_reason() {
        let dir = std::env::temp_dir().join(format!("netvm-accel-{}", std::process::id()));
        let modules = dir.join("module");
        std::fs::create_dir_all(modules.join("kvm")).unwrap();
        std::fs::create_dir_all(modules.join("kvm_pvm")).unwrap();
        let dev = dir.join("kvm");
        std::fs::write(&dev, b"").unwrap();
        let (accel, why) = detect_accel_in(AccelChoice::Auto, &modules, &dev).unwrap();
        assert_eq!(accel, Accel::Tcg);
        assert!(
            why.contains("PVM host") && why.contains("EMULATED"),
            "{why}"
        );
        let e = detect_accel_in(AccelChoice::Kvm, &modules, &dev).unwrap_err();
        assert!(e.contains("PVM host"), "{e}");
        std::fs::create_dir_all(modules.join("kvm_amd")).unwrap();
        assert_eq!(
            detect_accel_in(AccelChoice::Auto, &modules, &dev)
                .unwrap()
                .0,
            Accel::Kvm
        );
        assert_eq!(
            detect_accel_in(AccelChoice::Tcg, &modules, &dev).unwrap().0,
            Accel::Tcg
        );
        let missing = detect_accel_in(AccelChoice::Auto, &modules, &dir.join("nope")).unwrap();
        assert_eq!(missing.0, Accel::Tcg);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn images_are_newc_archives_and_dynamic_agents_are_refused() {
        let this = std::fs::read("/proc/self/exe").unwrap();
        // Test binaries link libc dynamically.
        assert!(!elf_is_static(&this).unwrap());
        assert!(elf_is_static(b"#!/bin/sh\n").is_err());
        let mut out = Vec::new();
        cpio_entry(&mut out, 5, "init", 0o100755, (0, 0), b"abc");
        assert_eq!(&out[..6], b"070701");
        assert_eq!(out.len() % 4, 0);
        // namesize "init\0" = 5, filesize 3.
        assert_eq!(&out[54..62], b"00000003");
        assert_eq!(&out[94..102], b"00000005");
        assert_eq!(&out[110..115], b"init\0");
    }
}
