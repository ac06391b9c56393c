//! The `hostdp` binary: the command line lives in [`hostdp::cli`], one file per subcommand.

use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(hostdp::cli::main().clamp(0, 255) as u8)
}
