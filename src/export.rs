//! `distillery export`: a trained node's weights (torchvision names), its model.json and a
//! PyTorch loader (`load.py`, the same file for every model: it builds the architecture that
//! model.json names) in a folder of the user's.
//!
//! `load.py` is verified against torchvision at fixture time (tools/fixtures_export.py loads each
//! engine fixture's weights through it and compares logits with torchvision's own models); the
//! tests here check that the exported file is byte for byte the verified one and that every
//! verified architecture's `ModelConfig` serialises as the fixture wrote it.

use std::path::{Path, PathBuf};

use crate::job::Weights;

/// The PyTorch loader written beside the weights.
pub const LOADER: &str = include_str!("export/load.py");

/// What an export writes, in this order.
pub const FILES: [&str; 3] = ["model.safetensors", "model.json", "load.py"];

/// Writes the entry's `which` weights, its model.json and [`LOADER`] into `to` (created when
/// missing). Refuses, having written nothing, when the entry holds no such weights or `to`
/// already has one of the files: an export never overwrites.
pub fn export(entry: &Path, which: Weights, to: &Path) -> Result<Vec<PathBuf>, String> {
    let weights = entry.join(which.file());
    if !entry.join("model.json").is_file() {
        return Err("the node trained no model (only train, finetune and distill nodes do)".into());
    }
    if !weights.is_file() {
        return Err(match which {
            Weights::Best => {
                "the node kept no best weights (it had no `val:` set); export `--weights final`".into()
            }
            Weights::Final => format!("the entry has no {}", which.file()),
        });
    }
    let targets: Vec<PathBuf> = FILES.iter().map(|f| to.join(f)).collect();
    if let Some(t) = targets.iter().find(|t| t.exists()) {
        return Err(format!(
            "{} already exists; export into an empty folder (nothing is overwritten)",
            t.display()
        ));
    }
    std::fs::create_dir_all(to).map_err(|e| format!("cannot create {}: {e}", to.display()))?;
    // Each file under a temporary name, then renamed: a file there is whole.
    for (i, target) in targets.iter().enumerate() {
        let tmp = target.with_extension("partial");
        let written = match i {
            0 => std::fs::copy(&weights, &tmp).map(|_| ()),
            1 => std::fs::copy(entry.join("model.json"), &tmp).map(|_| ()),
            _ => std::fs::write(&tmp, LOADER),
        };
        written.and_then(|_| std::fs::rename(&tmp, target)).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("cannot write {}: {e}", target.display())
        })?;
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::parity_tests::{config, fixture_dir};
    use sha2::{Digest, Sha256};

    fn verified() -> serde_json::Value {
        let p = fixture_dir().join("../export/verified.json");
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
    }

    #[test]
    fn the_exported_loader_is_the_one_verified_against_torchvision() {
        let v = verified();
        let sha: String = Sha256::digest(LOADER.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            v["template_sha256"], sha,
            "src/export/load.py changed since it was verified: run `python tools/fixtures_export.py`"
        );
        // Every architecture's model.json form is what the fixture loaded (f32 widths as written).
        let cases = v["cases"].as_object().unwrap();
        assert_eq!(cases.len(), 8);
        for (case, c) in cases {
            let ours: serde_json::Value =
                serde_json::from_str(&serde_json::to_string(&config(case)).unwrap()).unwrap();
            assert_eq!(ours, c["model"], "{case}");
            assert!(c["max_abs_logit_error"].as_f64().unwrap() <= 1e-5, "{case}");
        }
    }

    #[test]
    fn export_copies_the_chosen_weights_and_never_overwrites() {
        let entry = tempfile::tempdir().unwrap();
        let w = fixture_dir().join("resnet18_imagenet.weights.safetensors");
        std::fs::copy(&w, entry.path().join("model.safetensors")).unwrap();
        std::fs::write(entry.path().join("model.json"), "{}").unwrap();
        let out = tempfile::tempdir().unwrap();
        let to = out.path().join("resnet18");
        // No best weights kept: a clear error, nothing written.
        let e = export(entry.path(), Weights::Best, &to).unwrap_err();
        assert!(e.contains("no best weights"), "{e}");
        assert!(!to.exists());
        let files = export(entry.path(), Weights::Final, &to).unwrap();
        assert_eq!(files.len(), 3);
        assert_eq!(std::fs::read(to.join("model.safetensors")).unwrap(), std::fs::read(&w).unwrap());
        assert_eq!(std::fs::read_to_string(to.join("load.py")).unwrap(), LOADER);
        // A second export into the same folder refuses and leaves the first intact.
        std::fs::copy(&w, entry.path().join("best.safetensors")).unwrap();
        let e = export(entry.path(), Weights::Best, &to).unwrap_err();
        assert!(e.contains("already exists"), "{e}");
        assert_eq!(std::fs::read(to.join("model.safetensors")).unwrap(), std::fs::read(&w).unwrap());
        // Not a model entry.
        let report = tempfile::tempdir().unwrap();
        assert!(
            export(report.path(), Weights::Final, &out.path().join("x"))
                .unwrap_err()
                .contains("trained no model")
        );
    }
}
