//! One module per subcommand.

pub mod check;
pub mod explain;
pub mod fmt;
pub mod import;
pub mod run;
pub mod test;
