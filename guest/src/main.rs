//! The netvm guest agent: PID 1 of the initramfs that `netvm guest image` builds.
//!
//! It mounts `/proc`, `/sys` and `/dev`, reads what to run from the kernel command line
//! that netvm gives QEMU, attaches to its VM through the ivshmem device's BAR2
//! ([`netvm_nf::Nf::attach_guest`]) and runs the NF with the same loop an NF process runs,
//! until the switch closes the slot; then it powers the guest off, so QEMU exits.
//!
//! Kernel command line (netvm writes it):
//! - `netvm.nf=SPEC`: a built-in (`forward`, `counter`, `rewrite:dscp=N`, ...; default
//!   `forward`), or `hostile` — a test NF that answers with garbage on purpose (indices it
//!   was never given, verdicts naming VMs that do not exist, buffer lengths and offsets
//!   past the buffer, answers for nothing), which the switch must refuse and count.
//! - `netvm.slot=N`: its slot in the BAR's attach area.
//! - `netvm.idle=busy|sleep` (default `sleep`: a guest polls, and TCG makes spinning dear).
//! - `netvm.scan=HEX`: when the switch closes the slot, search all of the BAR for these
//!   bytes and print whether they were found (tests use it to show what an untrusted
//!   guest can and cannot read). Not before: the switch waits for nobody while it scans.
//!
//! Everything it says goes to the console (the serial port, which netvm logs to a file),
//! one line each, prefixed `netvm-guest:`.

use std::time::{Duration, Instant};

use netvm_nf::guest::{init_pid1, kernel_arg, power_off};
use netvm_nf::{AttachOptions, IdlePolicy, NetworkFunction, Nf, NfError, MAX_BURST};
use netvm_shm::vm::{self, wire};

/// How long the agent waits for the switch to offer the slot and bring the VM up.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(120);

fn say(line: &str) {
    println!("netvm-guest: {line}");
}

fn main() {
    let started = Instant::now();
    let pid1 = std::process::id() == 1;
    if pid1 {
        if let Err(e) = init_pid1() {
            say(&format!("error: {e}"));
            power_off();
        }
    }
    let code = match run(started) {
        Ok(()) => 0,
        Err(e) => {
            say(&format!("error: {e}"));
            1
        }
    };
    if pid1 {
        power_off();
    }
    std::process::exit(code);
}

fn run(started: Instant) -> Result<(), NfError> {
    let spec = kernel_arg("netvm.nf").unwrap_or_else(|| "forward".into());
    let idle = match kernel_arg("netvm.idle").as_deref() {
        Some("busy") => IdlePolicy::Busy,
        _ => IdlePolicy::Sleep,
    };
    let scan = match kernel_arg("netvm.scan") {
        Some(hex) => Some(parse_hex(&hex).ok_or_else(|| {
            NfError::Guest(format!(
                "netvm.scan={hex}: expected an even number of hex digits"
            ))
        })?),
        None => None,
    };
    let mut function: Option<Box<dyn NetworkFunction>> = if spec == "hostile" {
        None
    } else {
        Some(vm::builtin(&spec).map_err(|e| NfError::Guest(e.to_string()))?)
    };
    let writes = function.as_ref().is_some_and(|f| f.writes());
    let mut nf = Nf::attach_guest(AttachOptions { writes, idle }, ATTACH_TIMEOUT)?;
    let info = nf.info();
    say(&format!(
        "attached to VM `{}` (index {}, {}, {} region) {} ms after the agent started; BAR2 is {} bytes",
        info.vm,
        info.vm_index,
        if info.trusted { "trusted" } else { "untrusted" },
        info.region,
        started.elapsed().as_millis(),
        nf.region().len_bytes()
    ));
    match function.as_mut() {
        Some(f) => {
            say(&format!("running {}", f.describe()));
            nf.run_function(f.as_mut())?;
        }
        None => {
            say("running hostile (garbage answers on purpose)");
            hostile(&mut nf);
        }
    }
    if let Some(marker) = &scan {
        report_scan(&nf, marker, "at the end");
    }
    if let Some(summary) = function.as_ref().and_then(|f| f.summary()) {
        say(&format!("summary: {summary}"));
    }
    if let Some(f) = function.as_mut() {
        f.finish().map_err(NfError::Guest)?;
    }
    say("the switch closed the slot; powering off");
    Ok(())
}

fn parse_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.is_empty() || hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Search every byte this guest can address through its BAR for `marker`.
fn report_scan(nf: &Nf, marker: &[u8], when: &str) {
    let region = nf.region();
    let (base, len) = (region.base_addr(), region.len_bytes());
    let mut found = Vec::new();
    let chunk = 1 << 16;
    let mut buf = vec![0u8; chunk + marker.len()];
    let mut at = 0;
    while at < len {
        let n = (chunk + marker.len()).min(len - at);
        // SAFETY: [base + at, base + at + n) lies inside the mapping of `len` bytes,
        // which lives as long as `nf`; bytes are plain data (others may write them
        // meanwhile, which at worst makes the copy stale).
        unsafe {
            std::ptr::copy_nonoverlapping((base + at) as *const u8, buf.as_mut_ptr(), n);
        }
        // First byte by a fast scan, then the rest: TCG makes a compare per byte dear.
        let window = &buf[..n];
        let mut from = 0;
        while let Some(i) = window[from..].iter().position(|&b| b == marker[0]) {
            let i = from + i;
            if i >= chunk || i + marker.len() > n {
                break;
            }
            if &window[i..i + marker.len()] == marker {
                found.push(at + i);
            }
            from = i + 1;
        }
        at += chunk;
    }
    if found.is_empty() {
        say(&format!(
            "scan {when}: marker not found in {len} bytes of BAR2"
        ));
    } else {
        say(&format!(
            "scan {when}: marker found {} times in {len} bytes of BAR2, first at offset {}",
            found.len(),
            found[0]
        ));
    }
}

/// A VM that answers with garbage: the switch must refuse every kind, and lose or free
/// twice no buffer. Runs until the switch closes the slot.
fn hostile(nf: &mut Nf) {
    let mut round = 0u64;
    let mut idle = 0u32;
    loop {
        let (pool, rx, tx) = nf.raw_parts();
        let mut indices = [0u32; MAX_BURST];
        let n = rx.dequeue_burst(&mut indices);
        let mut answers = Vec::with_capacity(2 * n);
        for &index in &indices[..n] {
            round += 1;
            let answer = match round % 5 {
                // An index it was never given.
                0 => wire::encode(index ^ 0x5a5a, netvm_nf::Verdict::Next),
                // A verdict naming a VM that does not exist (code 255).
                1 => (0xff << wire::INDEX_BITS) | index,
                // A length and offset past the buffer, written into its header.
                2 => {
                    if let Some(header) = header_of(pool, index) {
                        header
                            .data_offset
                            .store(u16::MAX, std::sync::atomic::Ordering::Relaxed);
                        header
                            .data_len
                            .store(u16::MAX, std::sync::atomic::Ordering::Relaxed);
                    }
                    wire::encode(index, netvm_nf::Verdict::Next)
                }
                // An index past every pool.
                3 => wire::encode(wire::INDEX_MASK, netvm_nf::Verdict::Next),
                // A right answer, and one more for nothing.
                _ => {
                    answers.push(wire::encode(index, netvm_nf::Verdict::Next));
                    wire::encode(index, netvm_nf::Verdict::Next)
                }
            };
            answers.push(answer);
        }
        let mut sent = 0;
        let mut spins = 0u32;
        while sent < answers.len() && spins < 1_000_000 {
            sent += tx.enqueue_burst(&answers[sent..]);
            spins += 1;
        }
        if n == 0 {
            idle = idle.wrapping_add(1);
            if idle % 64 == 0 && nf.switch_gone() {
                return;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// The header of buffer `index`, as this guest maps it.
fn header_of(pool: &netvm_shm::PacketPool, index: u32) -> Option<&netvm_shm::layout::BufHeader> {
    let layout = pool.region().layout();
    let offset = layout.buffer_offset(index)?;
    if offset + std::mem::size_of::<netvm_shm::layout::BufHeader>() > pool.region().len_bytes() {
        return None;
    }
    // SAFETY: the offset is inside the mapping (checked), buffers are 64-byte aligned, and
    // BufHeader is all atomics, so any bytes are a valid value; the mapping lives as long
    // as the pool.
    Some(unsafe { &*((pool.region().base_addr() + offset) as *const netvm_shm::layout::BufHeader) })
}
