//! Writes the CRD YAML files (`crds/*.yaml`) from the Rust API types, so the
//! schema has one source. Usage: `crdgen [OUT_DIR]` (default: this crate's dir).

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let out_dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let files = match drover_crds::crd_files() {
        Ok(files) => files,
        Err(err) => {
            eprintln!("crdgen: cannot render the CRDs: {err}");
            return ExitCode::FAILURE;
        }
    };
    for (name, text) in files {
        let path = out_dir.join(name);
        if let Err(err) = std::fs::write(&path, text) {
            eprintln!("crdgen: cannot write {}: {err}", path.display());
            return ExitCode::FAILURE;
        }
        println!("wrote {}", path.display());
    }
    ExitCode::SUCCESS
}
