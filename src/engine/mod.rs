//! Training engine on burn 0.22.1: models, optimizers and schedules, checkpoints in
//! torchvision-named safetensors, evaluation.
//!
//! Architecture invariant: the engine does no I/O except reading and writing the checkpoint
//! files it is handed; it knows nothing of specs, graphs or tracking.

pub mod checkpoint;
pub mod device;
pub mod error;
pub mod eval;
pub mod layers;
pub mod models;
pub mod optim;
pub mod safetensors;
pub mod schedule;

pub use device::parse_device;
pub use error::EngineError;
pub use models::{Arch, Model, ModelConfig, Stem, VitPreset};
pub use checkpoint::{LoadOptions, load, load_into, save, torch_state_names};
pub use eval::{EvalMetrics, cross_entropy, evaluate_batches};
pub use optim::{OptimizerConfig, ParamRule, StepInfo, Trainer, TrainerConfig};
pub use schedule::{ScheduleConfig, lr_at_epoch};

pub use layers::freeze_batch_norm;

#[cfg(test)]
mod engine_tests;
#[cfg(test)]
mod parity_tests;
