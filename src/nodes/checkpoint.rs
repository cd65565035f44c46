//! A training node's checkpoint: everything its next step depends on, in one safetensors file
//! the store keeps beside (never inside) the entry being written (`checkpoints/<key>.safetensors`,
//! [`crate::exec::Task::checkpoint`]).
//!
//! Sections: `model` (the trained module: a model, or a student with its loss heads: projectors,
//! connectors, CRD memory banks), `optimizer` (momentum buffers, AdamW moments and step counts),
//! `ema` (the average) and `best` (the best-on-validation weights so far). The metadata holds the
//! job's key and [`Progress`] as JSON (floats written to read back exactly). Everything random is
//! a function of the seed and a position (data order, augmentation, dropout masks) except CRD's
//! negative sampler, whose stream position is kept. The schedule is a function of the step.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::engine::state::{self, Tensors};

const KIND: &str = "distillery training checkpoint";
/// Bumped when what a checkpoint holds changes; another format is ignored (with a warning).
const FORMAT: &str = "1";

/// Where a run stopped and what it had counted: the loop's state besides tensors.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Progress {
    /// Epochs done, and batches done of the next one (a checkpoint is at a step's boundary).
    pub epoch: u32,
    pub batch: u64,
    pub epochs: u32,
    pub batches_per_epoch: u64,
    /// Optimizer steps, batches and images so far.
    pub step: u64,
    pub batches: u64,
    pub images: u64,
    /// The epoch in progress: summed loss, correct predictions, images, loss terms, seconds.
    pub loss_sum: f64,
    pub correct: u64,
    pub seen: u64,
    pub term_sums: Vec<(String, f64)>,
    pub epoch_seconds: f64,
    /// The loop's seconds so far (every run of it).
    pub loop_seconds: f64,
    /// The history rows of the epochs done, and the last one.
    pub history: Vec<Value>,
    pub best_val: Option<f64>,
    pub best_epoch: u32,
    pub best_ema_val: Option<f64>,
    pub ema_updates: u64,
    pub trainer_steps: u64,
    /// CRD heads' negative-sampler positions, in loss order.
    pub samplers: Vec<u64>,
}

impl Progress {
    /// Where it stopped, in words.
    pub fn place(&self) -> String {
        format!(
            "epoch {} of {}, batch {} of {}",
            self.epoch + 1,
            self.epochs,
            self.batch,
            self.batches_per_epoch
        )
    }
}

/// A checkpoint read back.
pub(super) struct Saved {
    pub progress: Progress,
    pub sections: BTreeMap<String, Tensors>,
}

impl Saved {
    pub fn section(&self, name: &str) -> Option<&Tensors> {
        self.sections.get(name)
    }
}

/// Writes a checkpoint atomically (a temporary file, then renamed over the last one).
pub(super) fn write(
    file: &Path,
    key: &str,
    progress: &Progress,
    sections: &[(&str, &Tensors)],
) -> Result<(), String> {
    let mut meta = BTreeMap::new();
    meta.insert("distillery.kind".to_string(), KIND.to_string());
    meta.insert("distillery.format".to_string(), FORMAT.to_string());
    meta.insert("distillery.key".to_string(), key.to_string());
    meta.insert(
        "distillery.progress".to_string(),
        serde_json::to_string(progress).map_err(|e| e.to_string())?,
    );
    state::write_state(file, sections, &meta).map_err(|e| e.to_string())
}

/// The checkpoint at `file` for the job of `key`: `Ok(None)` when there is none, `Err(why)`
/// when there is one that cannot be used (damaged, of another key or format).
pub(super) fn read(file: &Path, key: &str) -> Result<Option<Saved>, String> {
    if !file.exists() {
        return Ok(None);
    }
    let (sections, meta) = state::read_state(file).map_err(|e| e.to_string())?;
    if meta.get("distillery.kind").map(String::as_str) != Some(KIND) {
        return Err("not a distillery training checkpoint".into());
    }
    if meta.get("distillery.format").map(String::as_str) != Some(FORMAT) {
        return Err(format!(
            "written by another version (format {}, this one reads {FORMAT})",
            meta.get("distillery.format").map_or("?", String::as_str)
        ));
    }
    match meta.get("distillery.key") {
        Some(k) if k == key => {}
        Some(k) => return Err(format!("it belongs to another job (key {k})")),
        None => return Err("it names no job".into()),
    }
    let progress: Progress =
        serde_json::from_str(meta.get("distillery.progress").ok_or("it holds no progress")?)
            .map_err(|e| format!("its progress does not read: {e}"))?;
    // Every epoch done (stopped before committing) is batch 0 of the epoch after the last.
    let at_end = progress.epoch == progress.epochs && progress.batch == 0;
    if !at_end && (progress.epoch >= progress.epochs || progress.batch >= progress.batches_per_epoch.max(1)) {
        return Err(format!("its progress is out of range ({})", progress.place()));
    }
    Ok(Some(Saved { progress, sections }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpoint is taken only by the job of its key, in this format, with its progress in
    /// range; anything else is a reason to ignore it, never an error of the run.
    #[test]
    fn only_the_checkpoint_of_this_key_and_format_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.safetensors");
        assert!(read(&f, "k").unwrap().is_none(), "none yet");
        let mut t = Tensors::default();
        t.0.insert("w".into(), (vec![2], vec![1.0, 2.0]));
        let p = Progress {
            epoch: 1,
            epochs: 3,
            batch: 2,
            batches_per_epoch: 5,
            loss_sum: 0.1 + 0.2,
            ..Default::default()
        };
        write(&f, "k", &p, &[("model", &t)]).unwrap();
        let saved = read(&f, "k").unwrap().unwrap();
        assert_eq!(saved.progress.loss_sum, 0.1 + 0.2, "floats read back exactly");
        assert_eq!(saved.section("model"), Some(&t));
        assert_eq!(saved.progress.place(), "epoch 2 of 3, batch 2 of 5");
        let why = read(&f, "other").err().unwrap();
        assert!(why.contains("another job (key k)"), "{why}");
        // Another format, and progress out of range.
        let mut meta = BTreeMap::new();
        meta.insert("distillery.kind".to_string(), KIND.to_string());
        meta.insert("distillery.format".to_string(), "0".to_string());
        state::write_state(&f, &[("model", &t)], &meta).unwrap();
        assert!(read(&f, "k").err().unwrap().contains("another version"));
        let far = Progress { epoch: 3, epochs: 3, batch: 1, batches_per_epoch: 5, ..Default::default() };
        write(&f, "k", &far, &[("model", &t)]).unwrap();
        assert!(read(&f, "k").err().unwrap().contains("out of range"));
        std::fs::write(&f, b"not a checkpoint").unwrap();
        assert!(read(&f, "k").is_err());
    }
}
