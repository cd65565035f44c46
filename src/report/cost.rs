//! What a model cost, upstream included: each trained entry records its own compute and its
//! lineage's (`metrics.cost`), so a report counts a fine-tuned student's pre-training and shows
//! a distilled student's teacher beside it, from the row's entry alone.
//!
//! A node's `cost` is `{ own, pretraining, teachers }`:
//! - `own`: this node's training (for a distill node: its loop, its teacher's forward passes and
//!   the teacher-outputs pass it read);
//! - `pretraining`: the history of the weights it started from (`init`, `from`, `student_init`):
//!   that node's own and pretraining costs, recursively;
//! - `teachers`: every teacher upstream (this node's, and those of its history), each with its
//!   whole cost (own + pretraining + its own teachers), by key so a shared one counts once.
//!
//! Weights from a file (`pretrained:`, `weights:`) have no recorded cost: `external` names them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Compute of one or more nodes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cost {
    /// Wall seconds.
    pub seconds: f64,
    /// Estimated floating-point operations (training ~ 3 forward passes an image).
    pub flops: f64,
    /// Wall hours x the CPU threads the process had, for nodes that ran on the CPU.
    pub cpu_hours: f64,
    /// Wall hours x 1, for nodes that ran on a GPU.
    pub gpu_hours: f64,
    /// The node instances counted, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
}

impl Cost {
    /// One node's: `seconds` on `device` (`cpu`, `cuda:1`) with `threads` CPU threads.
    pub fn of_node(name: &str, seconds: f64, flops: f64, device: &str, threads: usize) -> Cost {
        let hours = seconds / 3600.0;
        let gpu = device.starts_with("cuda");
        Cost {
            seconds,
            flops,
            cpu_hours: if gpu { 0.0 } else { hours * threads as f64 },
            gpu_hours: if gpu { hours } else { 0.0 },
            nodes: vec![name.to_string()],
        }
    }

    pub fn add(&mut self, o: &Cost) {
        self.seconds += o.seconds;
        self.flops += o.flops;
        self.cpu_hours += o.cpu_hours;
        self.gpu_hours += o.gpu_hours;
        self.nodes.extend(o.nodes.iter().cloned());
    }

    pub fn plus(mut self, o: &Cost) -> Cost {
        self.add(o);
        self
    }

    /// This cost divided among `n` users.
    pub fn share(&self, n: usize) -> Cost {
        let n = n.max(1) as f64;
        Cost {
            seconds: self.seconds / n,
            flops: self.flops / n,
            cpu_hours: self.cpu_hours / n,
            gpu_hours: self.gpu_hours / n,
            nodes: self.nodes.clone(),
        }
    }
}

/// A teacher upstream of a model, with its whole cost.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherCost {
    pub name: String,
    pub key: String,
    pub cost: Cost,
}

/// A trained entry's cost and its lineage's.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lineage {
    pub own: Cost,
    pub pretraining: Cost,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub teachers: Vec<TeacherCost>,
    /// Starting weights from a file, whose training is not counted (the setting that names it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external: Vec<String>,
}

impl Lineage {
    /// The entry metrics' `cost`, if it has one.
    pub fn from_metrics(m: &Value) -> Option<Lineage> {
        serde_json::from_value(m.get("cost")?.clone()).ok()
    }

    /// The model's own training and its history: what it took to get this model, teachers aside.
    pub fn student(&self) -> Cost {
        self.own.clone().plus(&self.pretraining)
    }

    /// Every teacher's whole cost, added.
    pub fn teachers_total(&self) -> Cost {
        self.teachers.iter().fold(Cost::default(), |c, t| c.plus(&t.cost))
    }

    /// Everything: the student's cost and every teacher's.
    pub fn total(&self) -> Cost {
        self.student().plus(&self.teachers_total())
    }

    /// A node's lineage: its `own` cost, started from `init` (the lineage of the entry its weights
    /// came from, if any) and distilled from `teacher` (`(name, key, lineage)`), if any.
    pub fn of(own: Cost, init: Option<&Lineage>, teacher: Option<(&str, &str, &Lineage)>) -> Lineage {
        let mut l = Lineage { own, ..Default::default() };
        if let Some(i) = init {
            l.pretraining = i.student();
            l.teachers = i.teachers.clone();
            l.external = i.external.clone();
        }
        if let Some((name, key, t)) = teacher
            && !l.teachers.iter().any(|x| x.key == key)
        {
            l.teachers.push(TeacherCost { name: name.to_string(), key: key.to_string(), cost: t.total() });
        }
        l
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, s: f64) -> Cost {
        Cost::of_node(name, s, s * 1e9, "cpu", 2)
    }

    #[test]
    fn a_finetuned_model_counts_its_pretraining_and_a_student_its_teacher_apart() {
        let pt = Lineage::of(node("pt", 100.0), None, None);
        let ft = Lineage::of(node("ft", 10.0), Some(&pt), None);
        assert_eq!(ft.student().seconds, 110.0);
        assert_eq!(ft.student().nodes, ["ft", "pt"]);
        assert!((ft.student().cpu_hours - 110.0 * 2.0 / 3600.0).abs() < 1e-12);
        // A student distilled from ft: its own cost, the teacher's whole cost apart.
        let kd = Lineage::of(node("kd", 20.0), None, Some(("ft", "k1", &ft)));
        assert_eq!(kd.student().seconds, 20.0);
        assert_eq!(kd.teachers_total().seconds, 110.0);
        assert_eq!(kd.total().seconds, 130.0);
        // Fine-tuning that student keeps its teacher once, and counts kd as pre-training.
        let kd_ft = Lineage::of(node("kd_ft", 5.0), Some(&kd), Some(("ft", "k1", &ft)));
        assert_eq!((kd_ft.pretraining.seconds, kd_ft.teachers.len()), (20.0, 1));
        assert_eq!(kd_ft.total().seconds, 135.0);
    }

    #[test]
    fn gpu_time_counts_as_gpu_hours_and_shares_divide() {
        let c = Cost::of_node("t", 7200.0, 6.0, "cuda:1", 16);
        assert_eq!((c.cpu_hours, c.gpu_hours), (0.0, 2.0));
        let s = c.share(4);
        assert_eq!((s.seconds, s.flops, s.gpu_hours), (1800.0, 1.5, 0.5));
    }

    #[test]
    fn the_lineage_round_trips_through_entry_metrics() {
        let pt = Lineage::of(node("pt", 1.0), None, None);
        let m = serde_json::json!({ "cost": pt });
        assert_eq!(Lineage::from_metrics(&m), Some(pt));
        assert_eq!(Lineage::from_metrics(&serde_json::json!({})), None);
    }
}
