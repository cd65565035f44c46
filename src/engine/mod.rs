//! Training engine on burn 0.22.1: models, optimizers and schedules, checkpoints in
//! torchvision-named safetensors, evaluation.
//!
//! Architecture invariant: the engine does no I/O except reading and writing the checkpoint
//! files it is handed; it knows nothing of specs, graphs or tracking.

pub mod checkpoint;
pub mod conv;
mod cpu;
pub mod cvae;
pub(crate) use cpu::isa_summary;
pub mod device;
pub mod ema;
pub mod error;
pub mod eval;
pub mod layers;
pub mod models;
pub mod norm;
pub mod optim;
pub mod safetensors;
pub mod schedule;
pub mod state;

pub use checkpoint::{LoadOptions, load, load_into, save, torch_state_names};
pub use cvae::{Cvae, CvaeConfig};
pub use device::parse_device;
pub use ema::{Ema, EmaConfig};
pub use error::EngineError;
pub use eval::{EvalMetrics, cross_entropy, evaluate_batches};
pub use models::{Arch, Model, ModelConfig, Stem, VitPreset};
pub use optim::{OptimizerConfig, ParamRule, StepInfo, Trainer, TrainerConfig};
pub use schedule::{Anneal, ScheduleConfig, StepEvery, lr_at, lr_at_epoch, momentum_at};

pub use layers::{freeze_batch_norm, seed_dropout};

#[cfg(test)]
mod engine_tests;
#[cfg(test)]
pub(crate) mod parity_tests;
#[cfg(test)]
mod recipe_tests;

/// Keep freed tensor buffers in the process heap instead of returning them to the kernel.
///
/// glibc's malloc serves large blocks (every activation of a CNN) with fresh `mmap`s and
/// unmaps them on free, so each training step page-faults its whole working set back in
/// (a profile of the engine bench showed ~12% of the time in page-fault handling). Raising
/// the mmap and trim thresholds makes freed activations reusable. Call once at start-up;
/// a no-op on other platforms.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        // SAFETY: mallopt only changes allocator tuning parameters; called before any
        // concurrent allocation-heavy work, and valid values are passed.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 1 << 30);
            mallopt(M_TRIM_THRESHOLD, i32::MAX);
        }
    }
}
