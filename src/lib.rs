//! distillery: run knowledge-distillation experiments declared in YAML.
//!
//! See ARCHITECTURE.md for the layers and what each may depend on.

pub mod cli;
pub mod data;
pub mod diag;
pub mod engine;
pub mod exec;
pub mod export;
pub mod graph;
pub mod job;
pub mod losses;
pub mod nodes;
pub mod page;
pub mod plan;
pub mod plugins;
pub mod report;
pub mod resolve;
pub mod spec;
pub mod store;
pub mod track;

#[cfg(all(test, feature = "cuda"))]
mod gpu_tests;
