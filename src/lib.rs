//! distillery: run knowledge-distillation experiments declared in YAML.
//!
//! See ARCHITECTURE.md for the layers and what each may depend on.

pub mod cli;
pub mod data;
pub mod diag;
pub mod exec;
pub mod engine;
pub mod losses;
pub mod graph;
pub mod plan;
pub mod spec;
pub mod store;
pub mod track;
