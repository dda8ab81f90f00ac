//! Finds the system's DPDK with pkg-config, compiles `src/shim.c` with DPDK's cflags, and
//! generates allow-listed bindings with bindgen into `$OUT_DIR/bindings.rs`.
//!
//! It never fails for want of DPDK: when `libdpdk` (>= 22.11) is not found, when
//! `NETVM_NO_DPDK=1` is set, or when the shim or the bindings cannot be built (no C compiler,
//! no libclang), it emits `cfg(dpdk_missing)` and the reason, and the crate compiles to the
//! same API with every entry point returning `Error::DpdkMissing`.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const MIN_VERSION: &str = "22.11";

/// The functions netvm calls; everything they take or return is pulled in by bindgen.
const FUNCTIONS: &[&str] = &[
    // EAL, lcores, sockets, errors
    "rte_eal_init",
    "rte_eal_cleanup",
    "rte_eal_process_type",
    "rte_eal_has_hugepages",
    "rte_socket_id",
    "rte_lcore_count",
    "rte_get_main_lcore",
    "rte_lcore_to_socket_id",
    "rte_strerror",
    "rte_thread_register",
    "rte_eal_iova_mode",
    // ethdev
    "rte_eth_dev_count_avail",
    "rte_eth_dev_get_port_by_name",
    "rte_eth_dev_get_name_by_port",
    "rte_eth_dev_is_valid_port",
    "rte_eth_dev_socket_id",
    "rte_eth_dev_info_get",
    "rte_eth_dev_configure",
    "rte_eth_rx_queue_setup",
    "rte_eth_tx_queue_setup",
    "rte_eth_dev_start",
    "rte_eth_dev_stop",
    "rte_eth_dev_close",
    "rte_eth_promiscuous_enable",
    "rte_eth_macaddr_get",
    "rte_eth_link_get_nowait",
    "rte_eth_stats_get",
    "rte_eth_stats_reset",
    "rte_eth_dev_rss_hash_update",
    "rte_eth_dev_rss_reta_update",
    "rte_eth_dev_rss_hash_conf_get",
    // virtual devices
    "rte_vdev_init",
    "rte_vdev_uninit",
    // mempools and mbuf pools
    "rte_mempool_create",
    "rte_mempool_create_empty",
    "rte_mempool_populate_default",
    "rte_mempool_populate_iova",
    "rte_mempool_populate_virt",
    "rte_mempool_set_ops_byname",
    "rte_mempool_free",
    "rte_mempool_lookup",
    "rte_mempool_avail_count",
    "rte_mempool_in_use_count",
    "rte_pktmbuf_pool_create",
    "rte_pktmbuf_pool_create_by_ops",
    "rte_pktmbuf_pool_create_extbuf",
    "rte_pktmbuf_pool_init",
    "rte_pktmbuf_init",
    "rte_pktmbuf_free_bulk",
    // external memory (zero-copy into netvm's shared region)
    "rte_extmem_register",
    "rte_extmem_unregister",
    "rte_extmem_attach",
    "rte_extmem_detach",
    "rte_dev_dma_map",
    "rte_dev_dma_unmap",
    "rte_mem_virt2iova",
    "rte_mem_virt2phy",
    "rte_dev_probe",
    "rte_malloc_heap_create",
    "rte_malloc_heap_destroy",
    "rte_malloc_heap_get_socket",
    "rte_malloc_heap_memory_add",
    "rte_malloc_heap_memory_remove",
    // the shim over DPDK's static inline functions (src/shim.h)
    "netvm_rte_.*",
];

/// Types bound with their fields, because the safe layer reads and writes them inline
/// (the mbuf's fast-path fields: no call per field). `src/shim.c` reports the C compiler's
/// offsets of those fields and `mempool::check_mbuf_layout` compares them at EAL init.
const TYPES: &[&str] = &["rte_mbuf", "rte_eth_rss_conf"];

/// Constants the safe layer and the runtime need.
const VARS: &[&str] = &[
    "RTE_MAX_ETHPORTS",
    "RTE_MAX_LCORE",
    "RTE_MAX_NUMA_NODES",
    "RTE_PKTMBUF_HEADROOM",
    "RTE_MBUF_DEFAULT_DATAROOM",
    "RTE_MBUF_DEFAULT_BUF_SIZE",
    "RTE_MEMPOOL_CACHE_MAX_SIZE",
    "RTE_ETHDEV_QUEUE_STAT_CNTRS",
    "SOCKET_ID_ANY",
    "RTE_MBUF_F_EXTERNAL",
    "RTE_MBUF_PORT_INVALID",
];

fn main() {
    println!("cargo::rustc-check-cfg=cfg(dpdk_missing)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=src/shim.c");
    println!("cargo::rerun-if-changed=src/shim.h");
    println!("cargo::rerun-if-env-changed=NETVM_NO_DPDK");

    match build() {
        Ok(version) => println!("cargo::metadata=version={version}"),
        Err(Missing { reason, unexpected }) => {
            if unexpected {
                println!("cargo::warning=dpdk-sys: building without DPDK: {reason}");
            }
            println!("cargo::rustc-cfg=dpdk_missing");
            println!("cargo::rustc-env=DPDK_SYS_MISSING_REASON={reason}");
            println!("cargo::metadata=missing=1");
        }
    }
}

struct Missing {
    reason: String,
    /// DPDK was found but the shim or the bindings failed: worth a build warning.
    unexpected: bool,
}

fn missing(reason: impl Into<String>, unexpected: bool) -> Missing {
    // `rustc-env` values are one line.
    let reason = reason
        .into()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    Missing { reason, unexpected }
}

fn build() -> Result<String, Missing> {
    if env::var_os("NETVM_NO_DPDK").is_some_and(|v| v == "1") {
        return Err(missing(
            "NETVM_NO_DPDK=1 was set when dpdk-sys was built",
            false,
        ));
    }

    // Probe without emitting anything, so a later failure leaves no link lines behind.
    let library = pkg_config::Config::new()
        .atleast_version(MIN_VERSION)
        .cargo_metadata(false)
        .env_metadata(true)
        .probe("libdpdk")
        .map_err(|e| match e {
            pkg_config::Error::Command { .. } => missing("pkg-config is not installed", false),
            _ => missing(
                format!("pkg-config found no libdpdk >= {MIN_VERSION}"),
                false,
            ),
        })?;
    let cflags = dpdk_cflags()?;
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));

    let mut builder = bindgen::Builder::default()
        .header("src/shim.h")
        .clang_args(&cflags)
        .clang_arg("-Isrc")
        .derive_default(true)
        .layout_tests(true)
        .generate_comments(false)
        .parse_callbacks(Box::new(
            bindgen::CargoCallbacks::new().rerun_on_header_files(false),
        ));
    for f in FUNCTIONS {
        builder = builder.allowlist_function(f);
    }
    for t in TYPES {
        builder = builder.allowlist_type(t);
    }
    for v in VARS {
        builder = builder.allowlist_var(v);
    }
    // bindgen panics when libclang cannot be loaded; that is a missing-toolchain case, not a bug.
    let generated =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || builder.generate()))
            .map_err(|_| {
                missing(
                    "bindgen could not load libclang (apt-get install libclang-dev)",
                    true,
                )
            })?
            .map_err(|e| missing(format!("bindgen failed on DPDK's headers: {e}"), true))?;
    generated
        .write_to_file(out.join("bindings.rs"))
        .map_err(|e| missing(format!("could not write the bindings: {e}"), true))?;

    let mut shim = cc::Build::new();
    shim.file("src/shim.c")
        .include("src")
        .warnings(false)
        .cargo_metadata(false);
    for flag in &cflags {
        shim.flag(flag);
    }
    shim.try_compile("netvm_dpdk_shim")
        .map_err(|e| missing(format!("could not compile the DPDK shim: {e}"), true))?;

    // Everything built: now link. The shim first, then DPDK's shared libraries (rustc passes
    // --as-needed, so only the libraries netvm calls end up in DT_NEEDED; the EAL loads the
    // PMDs from its plugin directory at init).
    println!("cargo::rustc-link-search=native={}", out.display());
    println!("cargo::rustc-link-lib=static=netvm_dpdk_shim");
    for path in &library.link_paths {
        println!("cargo::rustc-link-search=native={}", path.display());
    }
    for lib in &library.libs {
        println!("cargo::rustc-link-lib={lib}");
    }
    // `rte_vdev_init` lives in the vdev bus driver, which pkg-config's shared libs leave out.
    println!("cargo::rustc-link-lib=rte_bus_vdev");
    println!("cargo::metadata=cflags={}", cflags.join(" "));
    Ok(library.version)
}

/// DPDK's compile flags: include paths, `-include rte_config.h` and the `-march` it was built
/// for. The pkg-config crate keeps only -I and -D, so ask pkg-config directly.
fn dpdk_cflags() -> Result<Vec<String>, Missing> {
    let pkg_config = env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".into());
    let output = Command::new(&pkg_config)
        .args(["--cflags", "libdpdk"])
        .output()
        .map_err(|e| missing(format!("could not run {pkg_config}: {e}"), true))?;
    if !output.status.success() {
        return Err(missing(
            format!(
                "{pkg_config} --cflags libdpdk failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ),
            true,
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect())
}
