//! The CRD YAML under crds/ is generated; this fails when someone changed the
//! Rust types without running crdgen (or edited the YAML by hand).

#[test]
fn crd_yaml_matches_the_rust_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for (name, expected) in drover_crds::crd_files().expect("CRDs render") {
        let path = dir.join(name);
        let actual = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        assert!(
            actual == expected,
            "{} is stale: run `cargo run -p drover-crds --bin crdgen`",
            path.display()
        );
    }
}
