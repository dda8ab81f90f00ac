//! One module per subcommand.

pub mod bench;
pub mod check;
pub mod classify;
pub mod explain;
pub mod export;
pub mod fmt;
pub mod guest;
pub mod import;
pub mod nf;
pub mod reload;
pub mod repl;
pub mod run;
pub mod status;
pub mod test;
