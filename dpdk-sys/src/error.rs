//! The one error type of the safe layer: which DPDK call failed, and why, in DPDK's words.

/// Why a DPDK operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// This build of netvm has no DPDK.
    #[error("DPDK is not available to this build ({reason}); {hint}", hint = crate::INSTALL_HINT)]
    DpdkMissing { reason: &'static str },
    /// `eal::init` was called a second time; DPDK's EAL initialises once per process.
    #[error("the DPDK EAL is already initialised in this process, and can be only once")]
    EalAlreadyInitialised,
    /// A string handed to DPDK has a NUL byte in it.
    #[error("{what} contains a NUL byte: {value:?}")]
    Nul { what: &'static str, value: String },
    /// A DPDK call returned an error.
    #[error("{call} failed: {message} (error {code})")]
    Call {
        call: &'static str,
        code: i32,
        message: String,
    },
    /// No ethdev of that name has been probed.
    #[error(
        "DPDK has no port named {0:?}; give the EAL its PCI address (-a) or a --vdev, \
         or create it with Eal::vdev_init"
    )]
    NoSuchPort(String),
    /// The requested configuration does not fit the device.
    #[error("port {port}: {message}")]
    Config { port: u16, message: String },
    /// The DPDK found at run time lays out `struct rte_mbuf` differently from the headers
    /// the bindings were generated from: its fields cannot be read inline.
    #[error(
        "DPDK's struct rte_mbuf does not match the bindings ({field}: C says {c}, Rust says \
         {rust}); rebuild netvm against this DPDK"
    )]
    MbufLayout {
        field: &'static str,
        c: u64,
        rust: u64,
    },
    /// The queue handle was already taken, or is out of range.
    #[error("port {port}: {direction} queue {queue} does not exist or is already taken")]
    QueueUnavailable {
        port: u16,
        direction: &'static str,
        queue: u16,
    },
}
