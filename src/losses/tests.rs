//! Losses against PyTorch fixtures (tools/fixtures_losses.py, float64) and central finite
//! differences, plus the error paths.
//!
//! Tolerances: in f64, every value and gradient element within 1e-9 of PyTorch relative to
//! max(|expected|, largest |element| of that tensor) (so tiny elements are judged at the
//! tensor's scale; worst seen 1e-15); the same fixtures in f32 (burn's default dtype) within
//! 1e-5 (worst seen 3e-6, a simclrv2 batch-norm gradient). Finite differences (f64, h = 1e-6)
//! agree with autodiff within 1e-6 relative (floor 1).

use std::collections::HashMap;
use std::path::PathBuf;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use serde_json::Value;

use super::*;

const TOL_F64: f64 = 1e-9;
const TOL_F32: f64 = 1e-5;

fn device() -> Device {
    Device::flex().autodiff()
}

fn fixture(name: &str) -> Value {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/losses").join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("{}: {e}; regenerate with python tools/fixtures_losses.py", path.display())
    });
    serde_json::from_str(&text).expect("fixture is JSON")
}

/// (shape, row-major data) of a fixture tensor.
fn raw(v: &Value) -> (Vec<usize>, Vec<f64>) {
    let shape = v["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
    let data = v["data"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    (shape, data)
}

fn data_of(shape: &[usize], data: Vec<f64>, dtype: DType) -> TensorData {
    TensorData::new(data, shape.to_vec()).convert_dtype(dtype)
}

fn host<const D: usize>(t: &Tensor<D>) -> Vec<f64> {
    t.to_data().iter::<f64>().collect()
}

/// Fails with the first element outside `tol` of `want`, judged relative to
/// max(|want_i|, max |want|).
fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: {} elements, expected {}", got.len(), want.len());
    let scale = want.iter().fold(0.0f64, |m, w| m.max(w.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs() / w.abs().max(scale).max(1e-300);
        assert!(err <= tol, "{what}[{i}]: got {g}, expected {w} (relative error {err:e} > {tol:e})");
    }
}

fn projector_kind(s: &str) -> ProjectorKind {
    match s {
        "linear" => ProjectorKind::Linear,
        "mocov2" => ProjectorKind::MocoV2,
        "simclr" => ProjectorKind::SimClr,
        "simclrv2" => ProjectorKind::SimClrV2,
        other => panic!("unknown projector {other}"),
    }
}

fn config_of(c: &Value) -> LossConfig {
    let f = |k: &str| c[k].as_f64().unwrap();
    match c["kind"].as_str().unwrap() {
        "ce" => LossConfig::Ce(CeConfig { label_smoothing: f("label_smoothing") }),
        "kd" => LossConfig::Kd(KdConfig { temperature: f("temperature") }),
        "align_uniform" => LossConfig::AlignUniform(AlignUniformConfig {
            projector: projector_kind(c["projector"].as_str().unwrap()),
            dim: c["dim"].as_u64().unwrap() as usize,
            alpha: f("alpha"),
            t: f("t"),
            align_weight: f("align_weight"),
            uniform_weight: f("uniform_weight"),
        }),
        "crd" => LossConfig::Crd(CrdConfig {
            projector: projector_kind(c["projector"].as_str().unwrap()),
            feat_dim: c["feat_dim"].as_u64().unwrap() as usize,
            nce_k: c["nce_k"].as_u64().unwrap() as usize,
            nce_t: f("nce_t"),
            momentum: f("momentum"),
            seed: Some(0),
        }),
        "srrl" => LossConfig::Srrl(SrrlConfig {
            connector: if c["connector"] == "mlp" { ConnectorKind::Mlp } else { ConnectorKind::Mlp2 },
            embed_weight: f("embed_weight"),
        }),
        "fitnet" => LossConfig::FitNet(FeatureConfig { regressor: true }),
        "cosine" => LossConfig::Cosine(FeatureConfig { regressor: true }),
        other => panic!("unknown loss {other}"),
    }
}

/// Fixture key of a module path: `entries.<i>.head.<Variant>.<rest>` -> `<i>/<rest>`.
fn key_of(path: &[String]) -> String {
    format!("{}/{}", path[1], path[4..].join("."))
}

/// Replaces every float parameter by its fixture value (or casts it when the fixture has
/// none), in `dtype`, as a fresh leaf keeping its trainability.
struct Load<'a> {
    path: Vec<String>,
    values: &'a HashMap<String, (Vec<usize>, Vec<f64>)>,
    dtype: DType,
    used: Vec<String>,
}

impl ModuleMapper for Load<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let key = key_of(&self.path);
        let found = self.values.get(&key).cloned();
        if found.is_some() {
            self.used.push(key.clone());
        }
        let dtype = self.dtype;
        param.map(|t| {
            let trainable = t.is_require_grad();
            let device = t.device();
            let data = match found {
                Some((shape, data)) => {
                    assert_eq!(shape, t.dims().to_vec(), "fixture {key} shape");
                    data_of(&shape, data, dtype)
                }
                None => t.to_data().convert_dtype(dtype),
            };
            let fresh = Tensor::<D>::from_data(data, (&device, dtype));
            if trainable { fresh.require_grad() } else { fresh }
        })
    }
}

/// Gradients of every trainable parameter, by fixture key.
struct Grads<'a> {
    path: Vec<String>,
    grads: &'a burn::tensor::Gradients,
    out: HashMap<String, Vec<f64>>,
}

impl ModuleVisitor for Grads<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = param.val().grad(self.grads) {
            self.out.insert(key_of(&self.path), host(&g));
        }
    }
}

/// One fixture batch, as tensors.
struct Batch {
    inputs: HashMap<String, Tensor<2>>,
    labels: Vec<i64>,
    indices: Option<Vec<usize>>,
    contrast: Option<Vec<Vec<usize>>>,
}

impl Batch {
    /// `perturb`: (input name, flat index, delta) for finite differences.
    fn new(step: &Value, dtype: DType, perturb: Option<(&str, usize, f64)>) -> Self {
        let device = device();
        let mut inputs = HashMap::new();
        for (name, v) in step["inputs"].as_object().unwrap() {
            let (shape, mut data) = raw(v);
            if let Some((p, i, d)) = perturb
                && p == name
            {
                data[i] += d;
            }
            let t = Tensor::<2>::from_data(data_of(&shape, data, dtype), (&device, dtype)).require_grad();
            inputs.insert(name.clone(), t);
        }
        let usizes = |v: &Value| {
            v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect::<Vec<_>>()
        };
        Self {
            inputs,
            labels: step["labels"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect(),
            indices: step.get("indices").map(usizes),
            contrast: step.get("contrast").map(|rows| rows.as_array().unwrap().iter().map(usizes).collect()),
        }
    }

    fn distill_inputs(&self) -> DistillInputs {
        let n = self.labels.len();
        DistillInputs {
            student_features: self.inputs["student_features"].clone(),
            student_logits: self.inputs["student_logits"].clone(),
            teacher_features: self.inputs["teacher_features"].clone(),
            teacher_logits: self.inputs["teacher_logits"].clone(),
            labels: Tensor::<1, Int>::from_data(TensorData::new(self.labels.clone(), [n]), &device()),
            indices: self.indices.clone(),
            contrast_indices: self.contrast.clone(),
        }
    }
}

/// Builds the losses of a fixture with its parameters loaded; `extra` overrides/adds values
/// (CRD banks and Z) by key.
fn build(
    case: &Value,
    dtype: DType,
    extra: &[(&str, Value)],
    perturb: Option<(&str, usize, f64)>,
) -> DistillLosses {
    let device = device();
    let losses: Vec<WeightedLoss> = case["losses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let (w, c) = (l[0].as_f64().unwrap(), &l[1]);
            match config_of(c) {
                // The fixture weighs srrl's terms inside the loss (RepDistiller's l2, l4 on an
                // outer weight); ours: the loss's weight is the logits term's, embed_weight the
                // feature term's.
                LossConfig::Srrl(s) => WeightedLoss::new(
                    w * c["logits_weight"].as_f64().unwrap(),
                    LossConfig::Srrl(SrrlConfig { embed_weight: w * s.embed_weight, ..s }),
                ),
                other => WeightedLoss::new(w, other),
            }
        })
        .collect();
    let d = &case["dims"];
    let dim = |k: &str| d[k].as_u64().unwrap() as usize;
    let dims = LossDims {
        student_dim: dim("student_dim"),
        teacher_dim: dim("teacher_dim"),
        num_classes: dim("num_classes"),
        n_data: dim("n_data"),
    };
    let mut values: HashMap<String, (Vec<usize>, Vec<f64>)> = HashMap::new();
    for (k, v) in case["params"].as_object().unwrap() {
        let key = if k.contains('/') { k.clone() } else { format!("0/{k}") };
        values.insert(key, raw(v));
    }
    for (k, v) in extra {
        values.insert(format!("0/{k}"), raw(v));
    }
    if let Some((p, i, delta)) = perturb
        && let Some(entry) = values.get_mut(p)
    {
        entry.1[i] += delta;
    }
    // The teacher's classifier comes from the teacher; here a Linear with the fixture's values.
    let classifier = values
        .contains_key("0/teacher_classifier.weight")
        .then(|| burn::nn::LinearConfig::new(dims.teacher_dim, dims.num_classes).init(&device));
    let module = DistillLosses::new(&losses, dims, classifier, &device).expect("fixture config is valid");
    let mut load = Load { path: Vec::new(), values: &values, dtype, used: Vec::new() };
    let module = module.map(&mut load);
    let mut missing: Vec<_> = values.keys().filter(|k| !load.used.contains(k)).collect();
    missing.sort();
    assert!(missing.is_empty(), "fixture parameters not found in the module: {missing:?}");
    module
}

/// Forward + backward: (term values, total, input grads, param grads).
type Outcome = (Vec<(String, f64)>, HashMap<String, Vec<f64>>, HashMap<String, Vec<f64>>);

fn run(module: &DistillLosses, batch: &Batch) -> Outcome {
    let terms = module.forward(batch.distill_inputs()).expect("fixture batch is valid");
    let values = terms.values();
    let grads = terms.total.backward();
    let inputs =
        batch.inputs.iter().filter_map(|(k, t)| t.grad(&grads).map(|g| (k.clone(), host(&g)))).collect();
    let mut visitor = Grads { path: Vec::new(), grads: &grads, out: HashMap::new() };
    module.visit(&mut visitor);
    (values, inputs, visitor.out)
}

fn compare_grads(name: &str, what: &str, got: &HashMap<String, Vec<f64>>, want: &Value, tol: f64) {
    let want = want.as_object().unwrap();
    for (k, v) in want {
        let key = if what == "param" && !k.contains('/') { format!("0/{k}") } else { k.clone() };
        let g = got.get(&key).unwrap_or_else(|| panic!("{name}: no gradient for {what} {key}"));
        assert_close(&format!("{name}: d total / d {key}"), g, &raw(v).1, tol);
    }
    // A trainable head weight PyTorch has no gradient for would be a wrong graph.
    if what == "param" {
        for k in got.keys() {
            let plain = k.strip_prefix("0/").unwrap_or(k);
            assert!(want.contains_key(k) || want.contains_key(plain), "{name}: unexpected gradient for {k}");
        }
    }
}

fn check_case(name: &str, dtype: DType, tol: f64) {
    let case = fixture(name);
    let module = build(&case, dtype, &[], None);
    let batch = Batch::new(&case, dtype, None);
    let (values, grad_inputs, grad_params) = run(&module, &batch);
    let terms = case["terms"].as_object().unwrap();
    assert_eq!(values.len(), terms.len() + 1, "{name}: terms {values:?}");
    for (term, value) in &values {
        let want =
            if term == "total" { case["total"].as_f64().unwrap() } else { terms[term][1].as_f64().unwrap() };
        assert_close(&format!("{name}: {term}"), &[*value], &[want], tol);
    }
    // The weights the total used are the fixture's.
    let terms_out = module.forward(batch.distill_inputs()).unwrap();
    for t in &terms_out.terms {
        assert_eq!(t.weight, terms[&t.name][0].as_f64().unwrap(), "{name}: weight of {}", t.name);
    }
    compare_grads(name, "input", &grad_inputs, &case["grad_inputs"], tol);
    compare_grads(name, "param", &grad_params, &case["grad_params"], tol);
}

const CASES: [&str; 12] = [
    "ce_ls0",
    "ce_ls1",
    "kd",
    "align_uniform_linear",
    "align_uniform_mocov2",
    "align_uniform_simclr",
    "align_uniform_simclrv2",
    "srrl_mlp",
    "srrl_mlp2",
    "fitnet",
    "cosine",
    "combo",
];

#[test]
fn matches_pytorch_f64() {
    for name in CASES {
        check_case(name, DType::F64, TOL_F64);
    }
}

#[test]
fn matches_pytorch_f32() {
    for name in CASES {
        check_case(name, DType::F32, TOL_F32);
    }
}

/// Two CRD steps on one module: Z fixed by the first batch, banks updated by momentum.
fn check_crd(dtype: DType, tol: f64) {
    let case = fixture("crd");
    let init = &case["init"];
    let module = build(
        &case,
        dtype,
        &[("memory_s", init["memory_s"].clone()), ("memory_t", init["memory_t"].clone())],
        None,
    );
    for (s, step) in case["steps"].as_array().unwrap().iter().enumerate() {
        let batch = Batch::new(step, dtype, None);
        let (values, grad_inputs, grad_params) = run(&module, &batch);
        let name = format!("crd step {s}");
        assert_eq!(values[0].0, "crd");
        assert_close(&format!("{name}: crd"), &[values[0].1], &[step["crd"].as_f64().unwrap()], tol);
        compare_grads(&name, "input", &grad_inputs, &step["grad_inputs"], tol);
        compare_grads(&name, "param", &grad_params, &step["grad_params"], tol);
        let LossHead::Crd(crd) = &module.entries[0].head else { panic!("crd head") };
        assert_close(
            &format!("{name}: memory_s"),
            &host(&crd.memory_s.value_sync()),
            &raw(&step["memory_s"]).1,
            tol,
        );
        assert_close(
            &format!("{name}: memory_t"),
            &host(&crd.memory_t.value_sync()),
            &raw(&step["memory_t"]).1,
            tol,
        );
        let z: Vec<f64> = step["z"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert_close(&format!("{name}: z"), &host(&crd.z.value_sync()), &z, tol);
    }
}

#[test]
fn crd_matches_pytorch_f64() {
    check_crd(DType::F64, TOL_F64);
}

#[test]
fn crd_matches_pytorch_f32() {
    check_crd(DType::F32, TOL_F32);
}

/// Up to `n` evenly spread indices of `0..len`.
fn spread(len: usize, n: usize) -> Vec<usize> {
    if len <= n { (0..len).collect() } else { (0..n).map(|i| i * len / n).collect() }
}

/// Central differences of the total vs autodiff, for inputs and parameters, in f64.
/// `state`: extra values loaded before the step (CRD banks and Z after the first step, so
/// the step's Z is a constant, as autodiff treats it).
fn check_fd(name: &str, case: &Value, step: &Value, state: &[(&str, Value)]) {
    const H: f64 = 1e-6;
    let dtype = DType::F64;
    let total = |perturb_input: Option<(&str, usize, f64)>, perturb_param: Option<(&str, usize, f64)>| {
        let module = build(case, dtype, state, perturb_param);
        let batch = Batch::new(step, dtype, perturb_input);
        host(&module.forward(batch.distill_inputs()).unwrap().total)[0]
    };
    let module = build(case, dtype, state, None);
    let batch = Batch::new(step, dtype, None);
    let (_, grad_inputs, grad_params) = run(&module, &batch);
    let check = |what: String, ad: f64, fd: f64| {
        let err = (ad - fd).abs() / ad.abs().max(1.0);
        assert!(err <= 1e-6, "{name}: {what}: autodiff {ad}, finite difference {fd} (error {err:e})");
    };
    let mut checked = 0;
    for (input, grad) in &grad_inputs {
        for i in spread(grad.len(), 12) {
            let fd = (total(Some((input, i, H)), None) - total(Some((input, i, -H)), None)) / (2.0 * H);
            check(format!("d/d {input}[{i}]"), grad[i], fd);
            checked += 1;
        }
    }
    for (param, grad) in &grad_params {
        for i in spread(grad.len(), 6) {
            let fd = (total(None, Some((param, i, H))) - total(None, Some((param, i, -H)))) / (2.0 * H);
            check(format!("d/d {param}[{i}]"), grad[i], fd);
            checked += 1;
        }
    }
    assert!(checked > 0, "{name}: nothing to check");
}

#[test]
fn gradients_match_finite_differences() {
    for name in CASES {
        let case = fixture(name);
        check_fd(name, &case, &case, &[]);
    }
}

#[test]
fn crd_gradients_match_finite_differences() {
    let case = fixture("crd");
    let steps = case["steps"].as_array().unwrap();
    // Second step from the state the first left: banks after step 0 and its Z.
    let z = &steps[0]["z"];
    let z = serde_json::json!({"shape": [2], "data": z});
    let state =
        [("memory_s", steps[0]["memory_s"].clone()), ("memory_t", steps[0]["memory_t"].clone()), ("z", z)];
    check_fd("crd", &case, &steps[1], &state);
}

/// Teacher outputs computed on a plain device (how the engine runs the frozen teacher) give
/// the same terms and student gradients, BatchNorm heads included.
#[test]
fn teacher_outputs_without_autodiff() {
    let case = fixture("align_uniform_simclr");
    let module = build(&case, DType::F64, &[], None);
    let mut batch = Batch::new(&case, DType::F64, None);
    for name in ["teacher_features", "teacher_logits"] {
        let t = batch.inputs[name].clone();
        batch.inputs.insert(name.to_string(), Tensor::from_data(t.to_data(), (&Device::flex(), DType::F64)));
    }
    let (values, grad_inputs, grad_params) = run(&module, &batch);
    let total = values.iter().find(|(n, _)| n == "total").unwrap().1;
    assert_close("total", &[total], &[case["total"].as_f64().unwrap()], TOL_F64);
    assert!(!grad_inputs.contains_key("teacher_features"));
    let g = &grad_inputs["student_features"];
    assert_close("d/d student_features", g, &raw(&case["grad_inputs"]["student_features"]).1, TOL_F64);
    let key = "0/proj_t.net.layers.1.BatchNorm.gamma";
    assert_close(
        key,
        &grad_params[key],
        &raw(&case["grad_params"]["proj_t.net.layers.1.BatchNorm.gamma"]).1,
        TOL_F64,
    );
}

// ------------------------------------------------------------------ errors and presets

fn dims() -> LossDims {
    LossDims { student_dim: 5, teacher_dim: 7, num_classes: 3, n_data: 10 }
}

/// `validate` of one config: Ok, or (field, expected fragment, got).
fn check_validate(config: LossConfig, want: Option<(&str, &str, &str)>) {
    let got = config.validate(&dims());
    match (got, want) {
        (Ok(()), None) => {}
        (Err(e), Some((field, expected, value))) => {
            assert_eq!(e.field, field, "{e}");
            assert!(e.expected.contains(expected), "{e}");
            assert_eq!(e.got, value, "{e}");
            assert_eq!(e.loss, config.name());
        }
        (got, want) => panic!("{config:?}: got {got:?}, expected {want:?}"),
    }
}

#[test]
fn bad_parameters_are_config_errors() {
    let kd = |t| LossConfig::Kd(KdConfig { temperature: t });
    check_validate(kd(4.0), None);
    check_validate(kd(-1.0), Some(("temperature", "> 0", "-1")));
    check_validate(kd(0.0), Some(("temperature", "> 0", "0")));
    check_validate(kd(f64::NAN), Some(("temperature", "> 0", "NaN")));
    let ce = |ls| LossConfig::Ce(CeConfig { label_smoothing: ls });
    check_validate(ce(0.1), None);
    check_validate(ce(1.0), Some(("label_smoothing", "[0, 1)", "1")));
    check_validate(ce(-0.1), Some(("label_smoothing", "[0, 1)", "-0.1")));
    let au = |f: fn(&mut AlignUniformConfig)| {
        let mut c = AlignUniformConfig::default();
        f(&mut c);
        LossConfig::AlignUniform(c)
    };
    check_validate(au(|_| {}), None);
    check_validate(au(|c| c.dim = 0), Some(("dim", ">= 1", "0")));
    check_validate(au(|c| c.t = -2.0), Some(("t", "> 0", "-2")));
    check_validate(au(|c| c.alpha = 0.0), Some(("alpha", "> 0", "0")));
    check_validate(au(|c| c.uniform_weight = -1.0), Some(("uniform_weight", ">= 0", "-1")));
    let crd = |f: fn(&mut CrdConfig)| {
        let mut c = CrdConfig { nce_k: 3, ..CrdConfig::default() };
        f(&mut c);
        LossConfig::Crd(c)
    };
    check_validate(crd(|_| {}), None);
    check_validate(crd(|c| c.nce_k = 9), None);
    // The paper's default 4096 on a 10-sample set.
    check_validate(crd(|c| c.nce_k = 4096), Some(("nce_k", "n_data - 1 = 9", "4096")));
    check_validate(crd(|c| c.nce_k = 10), Some(("nce_k", "n_data - 1 = 9", "10")));
    check_validate(crd(|c| c.nce_k = 0), Some(("nce_k", "between 1", "0")));
    check_validate(crd(|c| c.feat_dim = 0), Some(("dim", ">= 1", "0")));
    check_validate(crd(|c| c.nce_t = -0.07), Some(("nce_t", "> 0", "-0.07")));
    check_validate(crd(|c| c.momentum = 1.0), Some(("momentum", "[0, 1)", "1")));
    check_validate(
        LossConfig::FitNet(FeatureConfig { regressor: false }),
        Some(("regressor", "differs", "false")),
    );
    check_validate(
        LossConfig::Srrl(SrrlConfig { embed_weight: f64::INFINITY, ..SrrlConfig::default() }),
        Some(("embed_weight", ">= 0", "inf")),
    );
}

#[test]
fn config_error_message_names_the_path() {
    let e = LossConfig::Kd(KdConfig { temperature: -1.0 }).validate(&dims()).unwrap_err();
    assert_eq!(e.to_string(), "losses.kd.temperature: expected a finite number > 0, got -1");
}

#[test]
fn building_rejects_bad_weights_duplicates_and_missing_classifier() {
    let device = device();
    let err = |losses: Vec<WeightedLoss>, classifier: Option<burn::nn::Linear>| {
        DistillLosses::new(&losses, dims(), classifier, &device).unwrap_err()
    };
    let kd = || LossConfig::Kd(KdConfig::default());
    let e = err(vec![WeightedLoss::new(-1.0, kd())], None);
    assert_eq!((e.loss, e.field), ("kd", "weight"));
    let e = err(vec![WeightedLoss::new(1.0, kd()), WeightedLoss::new(1.0, kd())], None);
    assert_eq!((e.loss, e.field), ("kd", "name"));
    let srrl = vec![WeightedLoss::new(1.0, LossConfig::Srrl(SrrlConfig::default()))];
    let e = err(srrl.clone(), None);
    assert_eq!((e.loss, e.field), ("srrl", "teacher_classifier"));
    let wrong = burn::nn::LinearConfig::new(5, 3).init(&device);
    let e = err(srrl, Some(wrong));
    assert_eq!(e.got, "[5, 3]");
    // Every preset builds for a set large enough for CRD's negatives.
    let big = LossDims { n_data: 5000, ..dims() };
    let fc = || Some(burn::nn::LinearConfig::new(7, 3).init(&device));
    for name in PRESETS {
        DistillLosses::new(&preset(name).unwrap(), big, fc(), &device).unwrap();
    }
    // ... and crd's 4096 negatives do not fit 10 samples.
    let e = DistillLosses::new(&preset("crd").unwrap(), dims(), None, &device).unwrap_err();
    assert_eq!((e.loss, e.field), ("crd", "nce_k"));
}

#[test]
fn presets_follow_the_paper() {
    let summary = |name| -> Vec<(f64, &'static str)> {
        preset(name).unwrap().iter().map(|l| (l.weight, l.config.name())).collect()
    };
    assert_eq!(summary("kd"), [(1.0, "ce"), (1.0, "kd")]);
    assert_eq!(summary("srrl"), [(1.0, "ce"), (1.0, "srrl")]);
    assert_eq!(summary("align_uniform"), [(1.0, "ce"), (1.0, "align_uniform"), (1.0, "kd")]);
    assert_eq!(summary("crd"), [(1.0, "ce"), (1.0, "crd"), (1.0, "kd")]);
    assert!(preset("fitnets").is_none());
    let au = preset("align_uniform").unwrap();
    assert_eq!(au[1].config, LossConfig::AlignUniform(AlignUniformConfig::default()));
    let LossConfig::AlignUniform(c) = &au[1].config else { unreachable!() };
    assert_eq!((c.projector, c.dim, c.alpha, c.t), (ProjectorKind::MocoV2, 128, 2.0, 2.0));
    let LossConfig::Kd(k) = &au[2].config else { unreachable!() };
    assert_eq!(k.temperature, 4.0);
    let crd = preset("crd").unwrap();
    let LossConfig::Crd(c) = &crd[1].config else { unreachable!() };
    assert_eq!((c.feat_dim, c.nce_k, c.nce_t, c.momentum), (128, 4096, 0.07, 0.5));
}

fn small_batch(n: usize, dtype: DType) -> DistillInputs {
    let device = device();
    let t = |rows, cols, seed: f64| {
        let data: Vec<f64> = (0..rows * cols).map(|i| ((i as f64 + seed) * 0.77).sin()).collect();
        Tensor::<2>::from_data(TensorData::new(data, [rows, cols]), (&device, dtype))
    };
    DistillInputs {
        student_features: t(n, 5, 0.0),
        student_logits: t(n, 3, 1.0),
        teacher_features: t(n, 7, 2.0),
        teacher_logits: t(n, 3, 3.0),
        labels: Tensor::<1, Int>::from_data(
            TensorData::new((0..n as i64).map(|i| i % 3).collect::<Vec<_>>(), [n]),
            &device,
        ),
        indices: Some((0..n).collect()),
        contrast_indices: None,
    }
}

#[test]
fn bad_batches_are_errors() {
    let device = device();
    let losses = [
        WeightedLoss::new(1.0, LossConfig::AlignUniform(AlignUniformConfig { dim: 4, ..Default::default() })),
        WeightedLoss::new(1.0, LossConfig::Crd(CrdConfig { nce_k: 3, feat_dim: 4, ..Default::default() })),
    ];
    let module = DistillLosses::new(&losses, dims(), None, &device).unwrap();
    let shape_of = |e: LossError| match e {
        LossError::Shape { tensor, got, .. } => (tensor, got),
        other => panic!("expected a shape error, got {other}"),
    };
    let mut x = small_batch(4, DType::F32);
    x.teacher_features = x.teacher_features.slice([0..4, 0..6]);
    assert_eq!(shape_of(module.forward(x).unwrap_err()), ("teacher_features", vec![4, 6]));
    let mut x = small_batch(4, DType::F32);
    x.labels = x.labels.narrow(0, 0, 3);
    assert_eq!(shape_of(module.forward(x).unwrap_err()), ("labels", vec![3]));
    let batch_error = |x: DistillInputs| match module.forward(x).unwrap_err() {
        LossError::Batch { loss, what } => format!("{loss}: {what}"),
        other => panic!("expected a batch error, got {other}"),
    };
    assert!(
        batch_error(small_batch(1, DType::F32))
            .starts_with("align_uniform: uniformity needs a batch of at least 2")
    );
    let mut x = small_batch(4, DType::F32);
    x.indices = None;
    assert!(batch_error(x).contains("no dataset indices"));
    let mut x = small_batch(4, DType::F32);
    x.indices = Some(vec![0, 1, 1, 2]);
    assert_eq!(batch_error(x), "crd: dataset index 1 appears twice in the batch");
    let mut x = small_batch(4, DType::F32);
    x.indices = Some(vec![0, 1, 2, 10]);
    assert!(batch_error(x).contains("index 10 is out of range for n_data = 10"));
    let mut x = small_batch(4, DType::F32);
    x.contrast_indices = Some(vec![vec![0, 1, 2, 3]; 4]);
    assert!(batch_error(x).contains("contrast row 1 must be [positive 1, 3 negatives]"));
    // A good batch passes.
    module.forward(small_batch(4, DType::F32)).unwrap();
}

#[test]
fn non_finite_terms_name_the_term_and_step() {
    let device = device();
    let losses = preset("kd").unwrap();
    let module = DistillLosses::new(&losses, dims(), None, &device).unwrap();
    let terms = module.forward(small_batch(4, DType::F32)).unwrap();
    let values = terms.check_finite(7).unwrap();
    assert_eq!(values.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["ce", "kd", "total"]);
    let mut x = small_batch(4, DType::F32);
    x.teacher_logits = x.teacher_logits.mul_scalar(f64::NAN);
    let err = module.forward(x).unwrap().check_finite(12).unwrap_err();
    assert_eq!((err.term.as_str(), err.step), ("kd", 12));
    assert!(err.value.is_nan());
    assert_eq!(
        err.to_string(),
        "loss term kd is NaN at step 12: lower the learning rate or check the inputs"
    );
    let err = check_finite(&[("ce".into(), 1.0), ("srrl.logits".into(), f64::INFINITY)], 3).unwrap_err();
    assert_eq!(err.term, "srrl.logits");
}

#[test]
fn default_sampler_is_seeded_and_excludes_the_positive() {
    let mut a = UniformNegatives::new(9);
    let mut b = UniformNegatives::new(9);
    let positives = [0usize, 3, 9];
    let ra = a.sample(&positives, 50, 10);
    assert_eq!(ra, b.sample(&positives, 50, 10), "same seed, same negatives");
    assert_ne!(ra, UniformNegatives::new(10).sample(&positives, 50, 10));
    let mut seen = [false; 10];
    for (row, &p) in ra.iter().zip(&positives) {
        assert_eq!(row.len(), 50);
        for &i in row {
            assert!(i < 10 && i != p, "negative {i} for positive {p}");
            seen[i] = true;
        }
    }
    assert_eq!(seen.iter().filter(|s| **s).count(), 10, "every index drawn somewhere");
}

/// Without explicit contrast rows, CRD draws negatives from its (injectable) sampler.
#[test]
fn crd_uses_the_injected_sampler() {
    #[derive(Debug)]
    struct Fixed(Vec<Vec<usize>>);
    impl NegativeSampler for Fixed {
        fn sample(&mut self, _: &[usize], _: usize, _: usize) -> Vec<Vec<usize>> {
            self.0.clone()
        }
    }
    let case = fixture("crd");
    let step = &case["steps"][0];
    let init = &case["init"];
    let extra = [("memory_s", init["memory_s"].clone()), ("memory_t", init["memory_t"].clone())];
    let batch = Batch::new(step, DType::F64, None);
    let negatives: Vec<Vec<usize>> =
        batch.contrast.as_ref().unwrap().iter().map(|r| r[1..].to_vec()).collect();
    let module = build(&case, DType::F64, &extra, None).with_crd_sampler(Fixed(negatives));
    let mut x = batch.distill_inputs();
    x.contrast_indices = None;
    let crd = host(&module.forward(x).unwrap().terms[0].value)[0];
    assert_close("crd", &[crd], &[step["crd"].as_f64().unwrap()], TOL_F64);
}

/// Every parameter value by fixture-style key.
struct Values {
    path: Vec<String>,
    out: HashMap<String, (bool, Vec<f64>)>,
}

impl ModuleVisitor for Values {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        self.out.insert(key_of(&self.path), (t.is_require_grad(), host(&t)));
    }
}

fn param_values(module: &DistillLosses) -> HashMap<String, (bool, Vec<f64>)> {
    let mut v = Values { path: Vec::new(), out: HashMap::new() };
    module.visit(&mut v);
    v.out
}

/// The heads are ordinary burn parameters: a burn optimizer finds and trains every one of
/// them (inside enum variants and the entry list) and leaves the frozen teacher classifier
/// alone; the losses go down on a fixed batch.
#[test]
fn heads_train_with_a_burn_optimizer() {
    use burn::optim::{AdamWConfig, GradientsParams};
    let device = device();
    let losses = [
        WeightedLoss::new(
            1.0,
            LossConfig::AlignUniform(AlignUniformConfig {
                projector: ProjectorKind::SimClr,
                dim: 4,
                ..Default::default()
            }),
        ),
        WeightedLoss::new(1.0, LossConfig::Srrl(SrrlConfig::default())),
        WeightedLoss::new(1.0, LossConfig::Cosine(FeatureConfig::default())),
    ];
    let classifier = burn::nn::LinearConfig::new(7, 3).init(&device);
    let mut module = DistillLosses::new(&losses, dims(), Some(classifier), &device).unwrap();
    let before = param_values(&module);
    let mut optim = AdamWConfig::new().init();
    let mut first = None;
    let mut last = Vec::new();
    for _ in 0..30 {
        let terms = module.forward(small_batch(8, DType::F32)).unwrap();
        last = terms.check_finite(0).unwrap();
        first.get_or_insert_with(|| last.clone());
        let grads = GradientsParams::from_grads(terms.total.backward(), &module);
        module = optim.step(1e-2, module, grads);
    }
    let first = first.unwrap();
    // Each loss's own value (the sum of its terms) must fall. Within one loss the optimizer may
    // trade a term for another (uniformity for alignment; SRRL's feature term for its logit
    // term: with some initialisations srrl.embed rises slightly while srrl.logits falls).
    let by_loss = |terms: &[(String, f64)]| {
        let mut sums: Vec<(String, f64)> = Vec::new();
        for (name, v) in terms {
            let loss = match name.as_str() {
                "align" | "uniform" => "align_uniform",
                n => n.split('.').next().unwrap(),
            };
            match sums.iter_mut().find(|(l, _)| l == loss) {
                Some((_, s)) => *s += v,
                None => sums.push((loss.to_string(), *v)),
            }
        }
        sums
    };
    let (first_sums, last_sums) = (by_loss(&first), by_loss(&last));
    assert_eq!(first_sums.len(), 4, "three losses and the total: {first_sums:?}");
    for ((name, a), (_, b)) in first_sums.iter().zip(&last_sums) {
        assert!(b < a, "{name}: {a} -> {b}");
    }
    let after = param_values(&module);
    for (key, (trainable, v0)) in &before {
        let moved = after[key].1 != *v0;
        if key.contains("teacher_classifier") {
            assert!(!trainable && !moved, "{key} is the frozen teacher classifier");
        } else if key.contains("running_") {
            assert!(moved, "{key}: batch-norm running statistics follow the batches");
        } else {
            assert!(*trainable && moved, "{key}: trainable {trainable}, moved {moved}");
        }
    }
}

/// The FLOPs a node's cost adds for its loss heads, counted by hand for each head kind.
#[test]
fn head_flops_count_every_linear_layer_and_the_bank_and_batch_products() {
    let dims = LossDims { student_dim: 16, teacher_dim: 32, num_classes: 10, n_data: 100 };
    let build = |l: LossConfig| {
        DistillLosses::new(
            &[WeightedLoss::new(1.0, l)],
            dims,
            Some(LinearConfig::new(32, 10).init(&device())),
            &device(),
        )
        .unwrap()
    };
    let lin = |i: u64, o: u64| 2 * i * o;
    // KD and CE own no trainable head.
    assert_eq!(build(LossConfig::Kd(KdConfig::default())).forward_flops_per_image(64), 0);
    // align/uniform, mocov2 to 8: both projectors, then the pairwise distances of a batch of 64.
    let au = AlignUniformConfig { projector: ProjectorKind::MocoV2, dim: 8, ..AlignUniformConfig::default() };
    let want = lin(16, 16) + lin(16, 8) + lin(32, 32) + lin(32, 8) + 2 * 2 * 64 * 8;
    assert_eq!(build(LossConfig::AlignUniform(au.clone())).forward_flops_per_image(64), want);
    // The uniformity term grows with the batch; nothing else does.
    assert_eq!(build(LossConfig::AlignUniform(au)).forward_flops_per_image(128), want + 2 * 2 * 64 * 8);
    // CRD, linear embeddings to 8 with 20 negatives: the embeddings and 21 bank rows each way
    // (the memory banks themselves are buffers, not layers).
    let crd = CrdConfig { projector: ProjectorKind::Linear, feat_dim: 8, nce_k: 20, ..CrdConfig::default() };
    assert_eq!(
        build(LossConfig::Crd(crd)).forward_flops_per_image(64),
        lin(16, 8) + lin(32, 8) + 2 * 2 * 21 * 8
    );
    // SRRL, mlp2 connector 16 -> 24 -> 32, then the teacher's classifier.
    let srrl = SrrlConfig { connector: ConnectorKind::Mlp2, ..SrrlConfig::default() };
    assert_eq!(
        build(LossConfig::Srrl(srrl)).forward_flops_per_image(64),
        lin(16, 24) + lin(24, 32) + lin(32, 10)
    );
}
