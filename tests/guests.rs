//! VMs in QEMU guests, for real: `netvm run --vm NAME=guest`, the guest agent as PID 1 of
//! an initramfs `netvm guest image` built, the region reaching the guest as an ivshmem
//! BAR. Under TCG on machines whose KVM cannot run a guest (docs/guests.md).
//!
//! Needs `qemu-system-x86_64` and a kernel in `NETVM_GUEST_KERNEL` (`.ci/run` fetches
//! Debian's). Without them every test says so and passes, unless `NETVM_REQUIRE_GUESTS=1`
//! (CI sets it), when they fail. All tests share one agent build and one image.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use netvm_packet::{BaseProto, Field, PacketSpec};
use serde_json::Value;
use support::{
    netvm, port_row, positions_in_order, read_pcap, run_command, status, vm_row, wait_for,
    write_pcap, Proc,
};

/// The kernel and the shared image, or why the guests cannot run here.
fn guest_env() -> Option<(PathBuf, PathBuf)> {
    static ENV: OnceLock<Result<(PathBuf, PathBuf), String>> = OnceLock::new();
    let env = ENV.get_or_init(prepare);
    match env {
        Ok(found) => Some(found.clone()),
        Err(why) if std::env::var_os("NETVM_REQUIRE_GUESTS").is_some() => {
            panic!("NETVM_REQUIRE_GUESTS is set but guests cannot run: {why}")
        }
        Err(why) => {
            eprintln!("skipped: {why}");
            None
        }
    }
}

/// Build the static agent (cargo, same target dir; release, because under TCG the
/// agent's loop is emulated) and the image from it, once.
fn prepare() -> Result<(PathBuf, PathBuf), String> {
    let kernel = std::env::var_os("NETVM_GUEST_KERNEL")
        .map(PathBuf::from)
        .ok_or("NETVM_GUEST_KERNEL is not set (see .ci/run for fetching Debian's kernel)")?;
    if !kernel.is_file() {
        return Err(format!(
            "NETVM_GUEST_KERNEL={}: no such file",
            kernel.display()
        ));
    }
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        return Err("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)".into());
    }
    // target/debug/netvm -> target
    let netvm_bin = PathBuf::from(env!("CARGO_BIN_EXE_netvm"));
    let target = netvm_bin
        .parent()
        .and_then(Path::parent)
        .ok_or("no target directory")?
        .to_path_buf();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "build",
            "--release",
            "-p",
            "netvm-guest",
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .env("CARGO_TARGET_DIR", &target)
        .env(
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
            "-C target-feature=+crt-static",
        )
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .map_err(|e| format!("running cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "building the guest agent failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let agent = target.join("x86_64-unknown-linux-gnu/release/netvm-guest-agent");
    let image = target.join("netvm-guest-test.cpio");
    let out = netvm()
        .args(["guest", "image", "--agent"])
        .arg(&agent)
        .arg("-o")
        .arg(&image)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "netvm guest image failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok((kernel, image))
}

fn udp_frame(dport: u16, flow: u32, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut spec = PacketSpec::new(BaseProto::Udp);
    spec.set(Field::IpSrc, 0x0a00_0000 + u128::from(flow))
        .set(Field::IpDst, 0xc0a8_0001)
        .set(Field::UdpSport, 1000 + u128::from(flow))
        .set(Field::UdpDport, u128::from(dport))
        .set(Field::IpDscp, u128::from(seq % 64));
    let mut bytes = payload.to_vec();
    bytes.extend_from_slice(&seq.to_be_bytes());
    spec.payload = Some(bytes);
    spec.build().expect("test frames build")
}

/// `frame` with DSCP `dscp` (ECN kept, IPv4 checksum recomputed from scratch).
fn with_dscp(frame: &[u8], dscp: u8) -> Vec<u8> {
    let d = netvm_packet::Decoded::new(frame);
    let l3 = usize::from(d.offsets().l3.expect("IPv4 frames"));
    let mut f = frame.to_vec();
    f[l3 + 1] = (dscp << 2) | (f[l3 + 1] & 0x3);
    f[l3 + 10..l3 + 12].fill(0);
    let sum = etherparse::Ipv4HeaderSlice::from_slice(&f[l3..])
        .unwrap()
        .to_header()
        .calc_header_checksum();
    f[l3 + 10..l3 + 12].copy_from_slice(&sum.to_be_bytes());
    f
}

/// `netvm run` of `policy` in `dir` with `args`, the guests' kernel and image given by
/// option and environment (both names in use).
fn start_switch(dir: &Path, policy: &str, args: &[String]) -> (Proc, PathBuf) {
    let (mut command, control) = run_command(dir, policy);
    command
        .args(["--wait-for-vms", "120", "--vm-stall-ms", "20000"])
        .args(args);
    if let Some((kernel, _)) = guest_env() {
        command.env("NETVM_GUEST_KERNEL", kernel);
    }
    let switch = Proc::spawn(command, dir.join("switch.log"));
    (switch, control)
}

/// [`start_switch`] from `dir/in.pcap` (at `pps` frames a second, if given) to
/// `dir/out.pcap` with `vms` (`--vm` specs), the final report in `dir/stats.json`.
fn pcap_switch(
    dir: &Path,
    policy: &str,
    pps: Option<usize>,
    vms: &[String],
) -> (Proc, PathBuf, PathBuf) {
    let pace = pps.map(|n| format!(",pps={n}")).unwrap_or_default();
    let stats = dir.join("stats.json");
    let mut args = vec![
        "--bind".into(),
        format!("a=pcap:rx={}{pace}", dir.join("in.pcap").display()),
        "--bind".into(),
        format!("b=pcap:tx={}", dir.join("out.pcap").display()),
        "--stats-json".into(),
        stats.display().to_string(),
    ];
    for vm in vms {
        args.push("--vm".into());
        args.push(vm.clone());
    }
    let (switch, control) = start_switch(dir, policy, &args);
    (switch, control, stats)
}

fn guest(vm: &str, dir: &Path, options: &str) -> String {
    let (_, image) = guest_env().unwrap();
    format!(
        "{vm}=guest:image={},console={},{options}",
        image.display(),
        dir.join(format!("{vm}.console")).display()
    )
}

fn stats_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn console(dir: &Path, vm: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{vm}.console"))).unwrap_or_default()
}

fn guest_report<'a>(s: &'a Value, vm: &str) -> &'a Value {
    s["guests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["vm"] == vm)
        .unwrap_or_else(|| panic!("no guest {vm} in {s}"))
}

fn drops(s: &Value, reason: &str) -> u64 {
    s["drops"][reason].as_u64().unwrap()
}

/// Bytes in no frame of the input: planted in pool buffers that only the trusted guest
/// may see.
const MARKER: &str = "5345435245542d4d41524b45522d3432"; // "SECRET-MARKER-42"

#[test]
fn a_trusted_guest_forwards_an_untrusted_guest_rewrites_byte_exact_and_cannot_see_the_pool() {
    let Some(_) = guest_env() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let marker = (0..MARKER.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&MARKER[i..i + 2], 16).unwrap())
        .collect::<Vec<u8>>();
    // 600 frames through the chain, then 20 carrying the marker straight out (never to a VM).
    let chain: Vec<Vec<u8>> = (0..600u32)
        .map(|i| udp_frame(53, i % 7, i, &vec![i as u8; (i % 300) as usize]))
        .collect();
    let secret: Vec<Vec<u8>> = (0..20u32).map(|i| udp_frame(9, 99, i, &marker)).collect();
    assert!(chain
        .iter()
        .all(|f| !f.windows(marker.len()).any(|w| w == marker)));
    let input: Vec<Vec<u8>> = chain.iter().chain(&secret).cloned().collect();
    write_pcap(&d.join("in.pcap"), &input);
    let policy = "port a\nport b\nvm fw trusted\nvm mon\n\
                  rule secret : udp.dport == 9 => out b\n\
                  rule all : ip => chain fw -> mon -> out b\n";
    let stats = d.join("stats.json");
    let (mut switch, _control) = start_switch(
        d,
        policy,
        &[
            "--buffers".into(),
            "4096".into(),
            "--bind".into(),
            format!("a=pcap:rx={}", d.join("in.pcap").display()),
            "--bind".into(),
            format!("b=pcap:tx={}", d.join("out.pcap").display()),
            "--vm".into(),
            guest("fw", d, &format!("scan={MARKER},nf=forward")),
            "--vm".into(),
            guest("mon", d, &format!("scan={MARKER},nf=rewrite:dscp=46")),
            "--stats-json".into(),
            stats.display().to_string(),
        ],
    );
    assert_eq!(
        switch.wait(Duration::from_secs(180)),
        Some(0),
        "{}\nfw console:\n{}\nmon console:\n{}",
        switch.log(),
        console(d, "fw"),
        console(d, "mon")
    );
    // What came out: the chain's frames rewritten by the untrusted guest, byte-exact and
    // in order, and the secret frames untouched (the two rules' frames interleave as they
    // finish, so each is compared on its own).
    let out = read_pcap(&d.join("out.pcap"));
    let has_marker = |f: &Vec<u8>| f.windows(marker.len()).any(|w| w == marker);
    let (out_secret, out_chain): (Vec<Vec<u8>>, Vec<Vec<u8>>) =
        out.iter().cloned().partition(has_marker);
    let expected: Vec<Vec<u8>> = chain.iter().map(|f| with_dscp(f, 46)).collect();
    assert_eq!(
        out_chain.len(),
        expected.len(),
        "{}\nfw console:\n{}\nmon console:\n{}",
        switch.log(),
        console(d, "fw"),
        console(d, "mon")
    );
    assert_eq!(
        positions_in_order(&out_chain, &expected).len(),
        expected.len()
    );
    assert!(
        out_chain == expected,
        "output differs from the frames the test computed"
    );
    assert!(out_secret == secret);
    let s = stats_json(&stats);
    assert_eq!(s["buffers_returned"], s["buffers"], "{s}");
    assert_eq!(s["private_leaks"], serde_json::json!([]), "{s}");
    assert_eq!(s["dropped"], 0, "{s}");
    assert_eq!(
        vm_row(&s, "fw")["copied_bytes"],
        0,
        "trusted is zero-copy: {s}"
    );
    assert!(
        vm_row(&s, "mon")["copied_bytes"].as_u64().unwrap() > 0,
        "{s}"
    );
    // The untrusted guest's BAR2 is its private region (grown to a power of two), smaller
    // than the pool's; the trusted guest's is the pool.
    let (fw, mon) = (guest_report(&s, "fw"), guest_report(&s, "mon"));
    assert_eq!(
        (fw["region"].as_str(), mon["region"].as_str()),
        (Some("shared"), Some("private"))
    );
    let mon_bar = mon["bar_bytes"].as_u64().unwrap();
    let fw_bar = fw["bar_bytes"].as_u64().unwrap();
    assert!(mon_bar < fw_bar, "{s}");
    assert_eq!(
        mon_bar as usize,
        netvm_runtime::guest::bar_bytes(mon["region_bytes"].as_u64().unwrap() as usize)
    );
    let mon_console = console(d, "mon");
    let fw_console = console(d, "fw");
    assert!(
        mon_console.contains("untrusted, private region) ")
            && mon_console.contains(&format!("BAR2 is {mon_bar} bytes")),
        "{mon_console}"
    );
    assert!(
        fw_console.contains(&format!("BAR2 is {fw_bar} bytes")),
        "{fw_console}"
    );
    // The marker: the trusted guest finds it in the pool (so the scan works), the
    // untrusted one finds it nowhere it can read.
    assert!(
        fw_console.contains("scan at the end: marker found"),
        "{fw_console}"
    );
    assert!(
        mon_console.contains(&format!(
            "scan at the end: marker not found in {mon_bar} bytes"
        )),
        "{mon_console}"
    );
    assert!(!mon_console.contains("marker found"), "{mon_console}");
    // The run report names each console log and boot-to-attach time.
    let log = switch.log();
    for vm in ["fw", "mon"] {
        assert!(
            log.contains(&format!(
                "console log {}",
                d.join(format!("{vm}.console")).display()
            )),
            "{log}"
        );
        assert_eq!(guest_report(&s, vm)["attaches"], 1, "{s}");
        assert!(
            guest_report(&s, vm)["boot_to_attach_s"][0]
                .as_f64()
                .unwrap()
                > 0.0
        );
    }
    assert!(log.contains("TCG") || log.contains("KVM"), "{log}");
}

/// `netvm status`, retried (a loaded machine may refuse one).
fn status_retried(control: &Path) -> Value {
    for _ in 0..100 {
        if let Some(s) = status(control) {
            return s;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("netvm status failed for 5 s");
}

fn port_rx(control: &Path, port: &str) -> u64 {
    port_row(&status_retried(control), port)["rx_packets"]
        .as_u64()
        .unwrap()
}

fn packets_in(control: &Path, vm: &str) -> u64 {
    vm_row(&status_retried(control), vm)["packets_in"]
        .as_u64()
        .unwrap()
}

/// SIGKILL the QEMU of guest `vm` (up), and wait for the switch to mark it down.
fn kill_guest(control: &Path, vm: &str) {
    let s = status_retried(control);
    let row = vm_row(&s, vm);
    assert_eq!(
        (&row["kind"], &row["state"]),
        (&"guest".into(), &"up".into()),
        "{s}"
    );
    let qemu = row["guest"]["qemu_pid"].as_u64().unwrap() as i32;
    // SAFETY: kill(2) on the QEMU the switch started (its pid from the switch's status).
    unsafe { libc::kill(qemu, libc::SIGKILL) };
    wait_for(
        "the switch to mark the guest down",
        Duration::from_secs(5),
        || status(control).is_some_and(|s| vm_row(&s, vm)["state"] == "down"),
    );
}

#[test]
fn a_guest_sigkilled_mid_stream_is_reclaimed_rebooted_and_every_frame_is_accounted() {
    let Some(_) = guest_env() else { return };
    const FRAMES: usize = 10_000;
    const PPS: usize = 1_000;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let frames: Vec<Vec<u8>> = (0..FRAMES as u32)
        .map(|i| udp_frame(53, i % 13, i, &vec![i as u8; (i % 100) as usize]))
        .collect();
    write_pcap(&d.join("in.pcap"), &frames);
    // The guest holds every packet 20 ms, so it holds some when it is killed; `mon` is a
    // process, to keep the test to two guest boots.
    let policy = "port a\nport b\nvm fw trusted\nvm mon\n\
                  rule all : ip => chain fw -> mon -> out b\n";
    let (mut switch, control, stats) = pcap_switch(
        d,
        policy,
        Some(PPS),
        &[guest("fw", d, "nf=delay:us=20000"), "mon=process".into()],
    );
    wait_for("the control socket", Duration::from_secs(30), || {
        control.exists()
    });
    let mut mon = {
        let mut c = netvm();
        c.args([
            "nf",
            "forward",
            "--vm",
            "mon",
            "--idle",
            "sleep",
            "--control",
        ])
        .arg(&control);
        Proc::spawn(c, d.join("mon.log"))
    };
    wait_for("some input read", Duration::from_secs(120), || {
        port_rx(&control, "a") >= 800
    });
    kill_guest(&control, "fw");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !status(&control).is_some_and(|s| {
        let row = vm_row(&s, "fw");
        row["state"] == "up" && row["attaches"] == 2
    }) {
        assert!(
            std::time::Instant::now() < deadline,
            "fw did not boot again and attach within 120 s:\n{}\n{}",
            switch.log(),
            console(d, "fw")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let read_before_up = port_rx(&control, "a") as usize;
    assert!(
        read_before_up + 200 <= FRAMES,
        "too little input left after the reboot ({read_before_up} of {FRAMES} read)"
    );
    assert_eq!(
        switch.wait(Duration::from_secs(120)),
        Some(0),
        "{}",
        switch.log()
    );
    assert_eq!(mon.wait(Duration::from_secs(10)), Some(0), "{}", mon.log());
    let out = read_pcap(&d.join("out.pcap"));
    let positions = positions_in_order(&out, &frames);
    let missing = (read_before_up..FRAMES)
        .filter(|i| positions.binary_search(i).is_err())
        .count();
    let s = stats_json(&stats);
    assert_eq!(
        missing,
        0,
        "frames read after the reboot are missing: {s}\n{}\n{}",
        switch.log(),
        console(d, "fw")
    );
    let (n, sent) = (FRAMES as u64, out.len() as u64);
    assert_eq!(
        (s["rx"].as_u64(), s["tx"].as_u64()),
        (Some(n), Some(sent)),
        "{s}"
    );
    let (lost, down) = (drops(&s, "vm_lost"), drops(&s, "vm_down"));
    assert!(lost > 0, "fw held packets when killed: {s}");
    assert!(down > 0, "the reboot takes seconds: {s}");
    assert_eq!(
        lost + down,
        n - sent,
        "every frame left out is counted: {s}"
    );
    for (reason, count) in s["drops"].as_object().unwrap() {
        if reason != "vm_lost" && reason != "vm_down" {
            assert_eq!(count, 0, "no `{reason}` drops expected: {s}");
        }
    }
    assert_eq!(s["buffers_returned"], s["buffers"], "{s}");
    assert_eq!(s["private_leaks"], serde_json::json!([]), "{s}");
    let g = guest_report(&s, "fw");
    assert_eq!(
        (g["boots"].as_u64(), g["attaches"].as_u64()),
        (Some(2), Some(2)),
        "{s}"
    );
    assert!(
        switch.log().contains("QEMU was killed by signal 9"),
        "{}",
        switch.log()
    );
}

#[test]
fn a_hostile_untrusted_guest_costs_no_buffer_and_no_crash() {
    let Some(_) = guest_env() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let frames: Vec<Vec<u8>> = (0..1500u32)
        .map(|i| udp_frame(53, i % 5, i, &[7u8; 40]))
        .collect();
    write_pcap(&d.join("in.pcap"), &frames);
    let policy = "port a\nport b\nvm bad\nvm ok trusted\n\
                  rule all : ip => chain bad -> ok -> out b\n";
    let (mut switch, _control, stats) = pcap_switch(
        d,
        policy,
        Some(1500),
        &[guest("bad", d, "nf=hostile"), "ok=counter".into()],
    );
    assert_eq!(
        switch.wait(Duration::from_secs(180)),
        Some(0),
        "{}\n{}",
        switch.log(),
        console(d, "bad")
    );
    let s = stats_json(&stats);
    let n = frames.len() as u64;
    assert_eq!(s["rx"], n, "{s}");
    // Every kind of garbage was refused and counted; the rest passed.
    let ignored = drops(&s, "vm_verdict");
    let bad_verdict = drops(&s, "bad_verdict");
    assert!(ignored > 0 && bad_verdict > 0, "{s}");
    assert_eq!(
        s["tx"].as_u64().unwrap() + s["dropped"].as_u64().unwrap(),
        n,
        "{s}"
    );
    assert!(s["tx"].as_u64().unwrap() > 0, "{s}");
    // What went out is input frames, whole: a data window written past the buffer was
    // refused, not sent on clamped (as an empty frame).
    let sent = read_pcap(&d.join("out.pcap"));
    assert_eq!(sent.len() as u64, s["tx"].as_u64().unwrap(), "{s}");
    let unknown = sent.iter().filter(|f| !frames.contains(f)).count();
    assert_eq!(
        unknown, 0,
        "{unknown} frames out that were never sent in: {s}"
    );
    // No buffer lost or freed twice, shared or private; the guest never restarted.
    assert_eq!(s["buffers_returned"], s["buffers"], "{s}");
    assert_eq!(s["private_leaks"], serde_json::json!([]), "{s}");
    assert_eq!(guest_report(&s, "bad")["boots"], 1, "{s}");
    assert!(console(d, "bad").contains("running hostile"));
}

/// Whether process `pid` runs (exists and is no zombie).
fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit(')')
                .next()
                .map(|r| r.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

/// The ivshmem socket QEMU `pid` was told to connect to (from its command line).
fn ivshmem_socket(pid: u64) -> PathBuf {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    cmdline
        .split(|&b| b == 0)
        .filter_map(|arg| std::str::from_utf8(arg).ok())
        .find_map(|arg| arg.strip_prefix("socket,id=ivshmem,path="))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no ivshmem socket in QEMU {pid}'s command line"))
}

/// A netvm with one guest and a minute of input (it would run on), ended by `signal`
/// once the guest is up. SIGINT and SIGTERM stop it in order: when it has exited its QEMU
/// is gone (no grace: the stop waits for it), so is the ivshmem socket, and the report
/// was written. After SIGKILL the QEMU dies with it (`PR_SET_PDEATHSIG`, so a moment later).
fn no_qemu_outlives_a_netvm_ended_with(signal: libc::c_int) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let policy = "port a\nport b\nvm fw trusted\nrule all : ip => chain fw -> out b\n";
    let frames: Vec<Vec<u8>> = (0..600u32).map(|i| udp_frame(53, 1, i, &[1; 20])).collect();
    write_pcap(&d.join("in.pcap"), &frames);
    let stats = d.join("stats.json");
    let (mut switch, control) = start_switch(
        d,
        policy,
        &[
            "--bind".into(),
            format!("a=pcap:rx={},pps=10", d.join("in.pcap").display()),
            "--bind".into(),
            "b=null".into(),
            "--vm".into(),
            guest("fw", d, "nf=forward"),
            "--stats-json".into(),
            stats.display().to_string(),
        ],
    );
    wait_for("fw to attach", Duration::from_secs(120), || {
        status(&control).is_some_and(|s| vm_row(&s, "fw")["state"] == "up")
    });
    let s = status(&control).unwrap();
    let qemu = vm_row(&s, "fw")["guest"]["qemu_pid"].as_u64().unwrap();
    let socket = ivshmem_socket(qemu);
    assert!(alive(qemu), "QEMU {qemu} runs while netvm does");
    assert!(socket.exists(), "{} while netvm runs", socket.display());
    switch.signal(signal);
    if signal == libc::SIGKILL {
        assert!(switch.wait(Duration::from_secs(5)).is_some());
        wait_for("QEMU to die with netvm", Duration::from_secs(5), || {
            !alive(qemu)
        });
        let _ = std::fs::remove_file(&socket);
        return;
    }
    let code = switch.wait(Duration::from_secs(30));
    assert_eq!(code, Some(0), "netvm stops in order: {}", switch.log());
    assert!(
        !alive(qemu),
        "QEMU {qemu} outlived netvm stopped by signal {signal}: {}",
        switch.log()
    );
    assert!(
        !socket.exists(),
        "{} outlived netvm stopped by signal {signal}",
        socket.display()
    );
    // The report was written: every buffer back, less input read than there was.
    let s = stats_json(&stats);
    assert_eq!(s["buffers_returned"], s["buffers"], "{s}");
    assert!(s["rx"].as_u64().unwrap() < frames.len() as u64, "{s}");
    assert_eq!(guest_report(&s, "fw")["attaches"], 1, "{s}");
}

#[test]
fn no_qemu_outlives_a_netvm_stopped_with_sigterm() {
    let Some(_) = guest_env() else { return };
    no_qemu_outlives_a_netvm_ended_with(libc::SIGTERM);
}

#[test]
fn no_qemu_outlives_a_netvm_stopped_with_sigint() {
    let Some(_) = guest_env() else { return };
    no_qemu_outlives_a_netvm_ended_with(libc::SIGINT);
}

#[test]
fn no_qemu_outlives_a_netvm_killed_with_sigkill() {
    let Some(_) = guest_env() else { return };
    no_qemu_outlives_a_netvm_ended_with(libc::SIGKILL);
}

/// `netvm run` of a one-guest policy with `env` set; (exit code, stderr).
fn run_one_guest(
    d: &Path,
    vm_spec: &str,
    env: &[(&str, &str)],
    extra: &[&str],
) -> (Option<i32>, String) {
    let policy = d.join("p.nvr");
    std::fs::write(
        &policy,
        "port a\nport b\nvm fw trusted\nrule all : ip => chain fw -> out b\n",
    )
    .unwrap();
    let mut c = netvm();
    c.arg("run")
        .arg(&policy)
        .args([
            "--bind",
            "a=gen:flows=1,size=64,count=10",
            "--bind",
            "b=null",
        ])
        .args(["--hugepages", "off", "--idle", "sleep", "--control"])
        .arg(d.join("c.sock"))
        .args(["--vm", vm_spec])
        .args(extra)
        .env_remove("NETVM_GUEST_KERNEL")
        .env_remove("NETVM_QEMU");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_missing_kernel_or_qemu_is_an_error_naming_what_to_install() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // No QEMU on PATH: the package is named.
    let empty = d.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (code, err) = run_one_guest(d, "fw=guest", &[("PATH", empty.to_str().unwrap())], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("install Debian's `qemu-system-x86`"), "{err}");
    let (code, err) = run_one_guest(d, "fw=guest", &[("NETVM_QEMU", "/nonexistent/qemu")], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("NETVM_QEMU=/nonexistent/qemu: no such file"),
        "{err}"
    );
    // No kernel (QEMU faked by an existing file): both names and the Debian package.
    let (code, err) = run_one_guest(d, "fw=guest", &[("NETVM_QEMU", "/bin/true")], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("no guest kernel")
            && err.contains("kernel=PATH")
            && err.contains("NETVM_GUEST_KERNEL")
            && err.contains("linux-image-cloud-amd64"),
        "{err}"
    );
    let (code, err) = run_one_guest(
        d,
        "fw=guest:kernel=/nonexistent/vmlinuz",
        &[("NETVM_QEMU", "/bin/true")],
        &[],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("guest kernel /nonexistent/vmlinuz (from kernel=): no such file"),
        "{err}"
    );
    // A typo in what the guest runs fails before anything boots.
    let (code, err) = run_one_guest(d, "fw=guest:nf=fowrard", &[], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("unknown built-in VM `fowrard`"), "{err}");
}

#[test]
fn a_guest_that_does_not_attach_in_time_fails_the_run_naming_its_console_log() {
    let Some((kernel, _)) = guest_env() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // One second is less than any boot takes here.
    let spec = guest("fw", d, "attach_timeout=1,nf=forward");
    // RX waits 4 s for it: the timeout fires meanwhile, then the switch runs on and ends.
    let (code, err) = run_one_guest(
        d,
        &spec,
        &[("NETVM_GUEST_KERNEL", kernel.to_str().unwrap())],
        &["--wait-for-vms", "4"],
    );
    assert_eq!(code, Some(1), "{err}");
    let console = d.join("fw.console").display().to_string();
    assert!(
        err.contains("guest `fw`: did not attach within 1 s")
            && err.contains(&format!("see its console log {console}")),
        "{err}"
    );
}

#[test]
fn a_killed_guest_with_on_failure_bypass_is_skipped_and_every_frame_is_accounted() {
    let Some(_) = guest_env() else { return };
    const FRAMES: usize = 3_000;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let frames: Vec<Vec<u8>> = (0..FRAMES as u32)
        .map(|i| udp_frame(53, i % 11, i, &vec![i as u8; (i % 90) as usize]))
        .collect();
    write_pcap(&d.join("in.pcap"), &frames);
    // fw holds each packet 20 ms (so it holds some when killed) and is not booted again:
    // from its death on, its hop is skipped and `mon` (a thread) sees every packet.
    let policy = "port a\nport b\nvm fw trusted on_failure bypass\nvm mon\n\
                  rule all : ip => chain fw -> mon -> out b\n";
    let (mut switch, control, stats) = pcap_switch(
        d,
        policy,
        Some(1000),
        &[
            guest("fw", d, "restart=no,nf=delay:us=20000"),
            "mon=counter".into(),
        ],
    );
    wait_for("some input read", Duration::from_secs(120), || {
        port_rx(&control, "a") >= 500
    });
    kill_guest(&control, "fw");
    let read_at_down = port_rx(&control, "a") as usize;
    assert!(
        read_at_down + 500 <= FRAMES,
        "too little input left after the kill ({read_at_down} of {FRAMES} read)"
    );
    assert_eq!(
        switch.wait(Duration::from_secs(60)),
        Some(0),
        "{}",
        switch.log()
    );
    let s = stats_json(&stats);
    let out = read_pcap(&d.join("out.pcap"));
    let positions = positions_in_order(&out, &frames);
    assert_eq!(positions.len(), out.len(), "output in input order: {s}");
    let missing = (read_at_down..FRAMES)
        .filter(|i| positions.binary_search(i).is_err())
        .count();
    assert_eq!(
        missing, 0,
        "frames read after fw went down are bypassed: {s}"
    );
    let (n, sent) = (FRAMES as u64, out.len() as u64);
    assert_eq!((s["rx"].as_u64(), s["tx"].as_u64()), (Some(n), Some(sent)));
    // What fw held when killed is lost; nothing is `vm_down` (bypassed instead).
    let lost = drops(&s, "vm_lost");
    assert!(lost > 0, "fw held packets when killed: {s}");
    assert_eq!(lost, n - sent, "every frame left out is counted: {s}");
    for (reason, count) in s["drops"].as_object().unwrap() {
        if reason != "vm_lost" {
            assert_eq!(count, 0, "no `{reason}` drops expected: {s}");
        }
    }
    // Every frame that went out passed mon; fw saw only those before its death.
    assert_eq!(vm_row(&s, "mon")["packets_in"], sent, "{s}");
    let fw_in = vm_row(&s, "fw")["packets_in"].as_u64().unwrap();
    assert!(fw_in <= read_at_down as u64 && fw_in > 0, "{s}");
    assert_eq!(s["buffers_returned"], s["buffers"], "{s}");
    let g = guest_report(&s, "fw");
    assert_eq!(
        (g["boots"].as_u64(), g["attaches"].as_u64()),
        (Some(1), Some(1))
    );
}

#[test]
fn a_hot_reload_around_a_guest_in_a_chain_accounts_for_every_packet() {
    let Some(_) = guest_env() else { return };
    const FRAMES: usize = 3_000;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let frames: Vec<Vec<u8>> = (0..FRAMES as u32)
        .map(|i| udp_frame(53, i % 7, i, &vec![i as u8; (i % 120) as usize]))
        .collect();
    write_pcap(&d.join("in.pcap"), &frames);
    // Through the guest (which holds each packet 5 ms, so some are in it at each reload),
    // then around it (SIGHUP), then through it again (`netvm reload`).
    let through = "port a\nport b\nvm fw trusted\nrule all : ip => chain fw -> out b\n";
    let around = "port a\nport b\nvm fw trusted\nrule all : ip => out b\n";
    let (mut switch, control, stats) =
        pcap_switch(d, through, Some(600), &[guest("fw", d, "nf=delay:us=5000")]);
    let fw_in = |control: &Path| packets_in(control, "fw");
    wait_for("some input through fw", Duration::from_secs(120), || {
        fw_in(&control) >= 300
    });
    std::fs::write(d.join("policy.nvr"), around).unwrap();
    switch.signal(libc::SIGHUP);
    wait_for("the SIGHUP reload", Duration::from_secs(10), || {
        switch.log().contains("reloaded")
    });
    // Around fw: its count stops (give what was classified before the swap 200 ms).
    std::thread::sleep(Duration::from_millis(200));
    let (before, rx_before) = (fw_in(&control), port_rx(&control, "a"));
    wait_for("input around fw", Duration::from_secs(20), || {
        port_rx(&control, "a") >= rx_before + 300
    });
    assert_eq!(
        fw_in(&control),
        before,
        "no packet reaches fw after the reload"
    );
    let path = d.join("through.nvr");
    std::fs::write(&path, through).unwrap();
    let reload = netvm()
        .arg("reload")
        .arg(&path)
        .arg("--control")
        .arg(&control)
        .output()
        .unwrap();
    assert!(
        reload.status.success(),
        "{}",
        String::from_utf8_lossy(&reload.stderr)
    );
    let rx_again = port_rx(&control, "a") as usize;
    assert!(rx_again + 300 <= FRAMES, "input left for the last policy");
    wait_for("input through fw again", Duration::from_secs(20), || {
        fw_in(&control) >= before + 200
    });
    assert_eq!(
        switch.wait(Duration::from_secs(60)),
        Some(0),
        "{}\n{}",
        switch.log(),
        console(d, "fw")
    );
    // Every packet accounted: all out, none dropped, every buffer back; the three
    // policies' frames interleave where a reload meets the guest's delay, so compare
    // as sets.
    let s = stats_json(&stats);
    let n = FRAMES as u64;
    assert_eq!(
        (s["rx"].as_u64(), s["tx"].as_u64()),
        (Some(n), Some(n)),
        "{s}"
    );
    assert_eq!(s["dropped"], 0, "{s}");
    assert_eq!(s["buffers_returned"], s["buffers"], "{s}");
    let mut out = read_pcap(&d.join("out.pcap"));
    let mut expected = frames.clone();
    out.sort();
    expected.sort();
    assert!(out == expected, "output is the input, each frame once");
    let fw_total = vm_row(&s, "fw")["packets_in"].as_u64().unwrap();
    assert!(fw_total > before && fw_total < n, "{s}");
    assert_eq!(guest_report(&s, "fw")["attaches"], 1, "{s}");
}

#[test]
fn a_guest_that_never_attaches_with_on_failure_bypass_is_skipped_and_the_run_says_why() {
    let Some((kernel, _)) = guest_env() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let policy = d.join("p.nvr");
    std::fs::write(
        &policy,
        "port a\nport b\nvm fw trusted on_failure bypass\nrule all : ip => chain fw -> out b\n",
    )
    .unwrap();
    let stats = d.join("stats.json");
    // One second is less than any boot takes here, and it is not booted again: RX starts
    // after 3 s with fw down for good.
    let out = netvm()
        .arg("run")
        .arg(&policy)
        .args([
            "--bind",
            "a=gen:flows=4,size=64,count=2000",
            "--bind",
            "b=null",
        ])
        .args([
            "--hugepages",
            "off",
            "--idle",
            "sleep",
            "--wait-for-vms",
            "3",
        ])
        .arg("--control")
        .arg(d.join("c.sock"))
        .arg("--stats-json")
        .arg(&stats)
        .arg("--vm")
        .arg(guest("fw", d, "attach_timeout=1,restart=no,nf=forward"))
        .env("NETVM_GUEST_KERNEL", &kernel)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the guest's failure is the run's: {err}"
    );
    assert!(
        err.contains("guest `fw`: did not attach within 1 s"),
        "{err}"
    );
    let s = stats_json(&stats);
    assert_eq!(
        (s["rx"].as_u64(), s["tx"].as_u64()),
        (Some(2000), Some(2000)),
        "{s}"
    );
    assert_eq!(s["dropped"], 0, "bypassed, not `vm_down`: {s}");
    assert_eq!(vm_row(&s, "fw")["packets_in"], 0, "{s}");
    assert_eq!(s["buffers_returned"], s["buffers"], "{s}");
    let g = guest_report(&s, "fw");
    assert_eq!(
        (g["boots"].as_u64(), g["attaches"].as_u64()),
        (Some(1), Some(0)),
        "{s}"
    );
}
