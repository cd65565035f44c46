//! distillery: run knowledge-distillation experiments declared in YAML.
//!
//! See ARCHITECTURE.md for the layers and what each may depend on.

pub mod data;
pub mod engine;
pub mod losses;
pub mod track;
