//! JSON Schema of experiment files, for editors (yaml-language-server and friends).

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde_json::{Value, json};

use super::types::*;

/// The top level of an experiment file as written (before includes and defaults are applied).
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct ExperimentFile {
    /// The MLflow experiment name; defaults to the file's name.
    experiment: Option<String>,
    description: Option<String>,
    /// Files merged under this one (this file's keys win), relative to this file.
    include: Option<Vec<String>>,
    /// Seed of every node that does not set its own (default 0).
    seed: Option<u64>,
    /// `cpu` (default), `cuda:N` or `auto`.
    #[schemars(regex(pattern = r"^(cpu|auto|cuda(:[0-9]+)?)$"))]
    device: Option<String>,
    /// How nodes run: `local` (default) or `slurm` (docs/cluster.md).
    launcher: Option<LauncherKind>,
    /// Settings merged under every node of a kind (the node's own win); `resources` under every
    /// node's `resources`.
    defaults: Option<IndexMap<String, serde_json::Map<String, Value>>>,
    datasets: Option<IndexMap<String, DatasetSpec>>,
    models: Option<IndexMap<String, ModelSpec>>,
    nodes: Option<IndexMap<String, NodeEntry>>,
    /// Key -> values: `seed` expands every node that trains; other keys are paths into node settings.
    matrix: Option<IndexMap<String, Vec<Value>>>,
}

/// A node: exactly one kind key, plus optional `seed`, `matrix`, `description`.
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct NodeEntry {
    train: Option<TrainSpec>,
    finetune: Option<FinetuneSpec>,
    distill: Option<DistillSpec>,
    generate: Option<GenerateSpec>,
    generator: Option<GeneratorSpec>,
    evaluate: Option<EvaluateSpec>,
    report: Option<ReportSpec>,
    plugin: Option<PluginSpec>,
    /// Fix this node's seed (it is then not expanded by a global seed matrix).
    seed: Option<u64>,
    /// Expand this node over settings: dotted paths into its kind's settings -> values.
    matrix: Option<IndexMap<String, Vec<Value>>>,
    description: Option<String>,
    /// What a cluster job for this node asks for (over `defaults.resources`).
    resources: Option<Resources>,
}

/// The JSON Schema (draft 2020-12) of an experiment file.
pub fn json_schema() -> Value {
    let mut schema = serde_json::to_value(schemars::schema_for!(ExperimentFile)).expect("schema serialises");
    schema["title"] = json!("distillery experiment");
    // Tagged settings also accept their tag alone: `optimizer: sgd`, `- flip`.
    for def in ["OptimizerSpec", "ScheduleSpec", "AugmentSpec", "TransformSpec"] {
        let Some(d) = schema.pointer_mut(&format!("/$defs/{def}")) else {
            continue;
        };
        let tags: Vec<Value> = d
            .get("oneOf")
            .and_then(Value::as_array)
            .map(|alts| alts.iter().filter_map(|a| a.pointer("/properties/type/const").cloned()).collect())
            .unwrap_or_default();
        let full = d.take();
        *d = json!({ "anyOf": [full, { "type": "string", "enum": tags }] });
    }
    // Every node kind's settings may be partial under `defaults`.
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_accepts_shorthands_and_lists_kinds() {
        let s = json_schema();
        let opt = &s["$defs"]["OptimizerSpec"]["anyOf"][1]["enum"];
        assert_eq!(opt, &json!(["sgd", "adamw"]));
        let node_props = s["$defs"]["NodeEntry"]["properties"].as_object().unwrap();
        for k in NODE_KINDS {
            assert!(node_props.contains_key(k), "node kind {k} missing from schema");
        }
        assert_eq!(s["additionalProperties"], json!(false));
    }
}
