//! Installs (or finds in the cache) the local model the sandbox and the
//! consensus e2e test serve, and prints where it is. `cargo xtask test`
//! calls it so the first download shows its progress before the tests start.

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut progress = |line: &str| {
        let _ = writeln!(std::io::stderr().lock(), "local-model: {line}");
    };
    match drover_e2e::local_model::ensure_installed(&mut progress) {
        Ok(install) => {
            println!("python\t{}", install.python.display());
            println!("model\t{}", install.model.display());
            ExitCode::SUCCESS
        }
        Err(err) => {
            progress(&format!("error: {}", drover_e2e::error_chain(&err)));
            ExitCode::FAILURE
        }
    }
}
