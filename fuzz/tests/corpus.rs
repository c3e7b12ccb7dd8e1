//! Every file of every corpus (seeds and the crashes found and fixed, kept as regressions)
//! through its target, without libFuzzer: `cargo test` in fuzz/.

use std::fs;
use std::path::Path;

#[test]
fn every_corpus_file_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (name, body) in golem_vpn_fuzz::TARGETS {
        let dir = root.join(name);
        let mut files: Vec<_> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{name} has no corpus");
        for f in files {
            let data = fs::read(&f).unwrap();
            let r = std::panic::catch_unwind(|| body(&data));
            assert!(r.is_ok(), "{} fails its target", f.display());
        }
    }
}
