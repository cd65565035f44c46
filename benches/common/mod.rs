//! Shared by the benches: running a PyTorch script beside ours in the same run.

/// Runs `tools/<script>` with the Python named by `DISTILLERY_TORCH_PYTHON` (default `python3`;
/// it needs torch) and reads its `name median` lines; None (with the reason on stderr) when
/// there is no such Python, so a bench still prints its own numbers.
#[allow(dead_code)]
pub fn torch_medians(script: &str, args: &[String]) -> Option<Vec<(String, f64)>> {
    let py = std::env::var("DISTILLERY_TORCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let path = format!("{}/tools/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = match std::process::Command::new(&py).arg(&path).args(args).output() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("pytorch comparison skipped: cannot run {py}: {e} (set DISTILLERY_TORCH_PYTHON)");
            return None;
        }
    };
    if !out.status.success() {
        eprintln!("pytorch comparison failed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                l.split_once(' ').and_then(|(n, v)| Some((n.to_string(), v.trim().parse().ok()?)))
            })
            .collect(),
    )
}

/// Seconds per batch of `warmup + iters` training steps (forward, cross-entropy, backward, SGD
/// momentum 0.9 and weight decay 5e-4) and as many inference passes (eval mode), the warm-up
/// left out, for `cfg` on `device` at `batch` images; each timed to a `device.sync()`. The engine
/// and GPU benches both measure this.
#[allow(dead_code)]
pub fn train_and_infer_seconds(
    device: &burn::tensor::Device,
    cfg: distillery::engine::ModelConfig,
    batch: usize,
    warmup: usize,
    iters: usize,
) -> (Vec<f64>, Vec<f64>) {
    use burn::module::Module;
    use burn::tensor::{Distribution, Int, Tensor};
    use distillery::engine::cross_entropy;
    use std::time::Instant;
    let ad = device.clone().autodiff();
    let mut model = cfg.init(&ad).unwrap();
    let mut trainer = sgd_trainer();
    let (c, px, classes) = (cfg.in_channels, cfg.image_size, cfg.num_classes);
    let x = Tensor::<4>::random([batch, c, px, px], Distribution::Normal(0.0, 1.0), &ad);
    let y = Tensor::<1, Int>::random([batch], Distribution::Uniform(0.0, classes as f64), &ad);
    ad.sync().unwrap();
    let mut train = Vec::new();
    for i in 0..warmup + iters {
        let t = Instant::now();
        let (_, z) = model.forward(x.clone());
        let loss = cross_entropy(z, y.clone());
        model = trainer.step(model, loss).0;
        ad.sync().unwrap();
        if i >= warmup {
            train.push(t.elapsed().as_secs_f64());
        }
    }
    let eval = model.valid();
    let x = x.without_autodiff();
    let mut infer = Vec::new();
    for i in 0..warmup + iters {
        let t = Instant::now();
        let z = eval.forward(x.clone()).1;
        let _ = z.into_data();
        device.sync().unwrap();
        if i >= warmup {
            infer.push(t.elapsed().as_secs_f64());
        }
    }
    (train, infer)
}

/// The benches' optimizer: SGD, lr 0.01, momentum 0.9, weight decay 5e-4, one epoch.
#[allow(dead_code)]
pub fn sgd_trainer() -> distillery::engine::Trainer {
    use distillery::engine::{OptimizerConfig, Trainer, TrainerConfig};
    let mut tc = TrainerConfig::new(OptimizerConfig::Sgd {
        lr: 0.01,
        momentum: 0.9,
        nesterov: false,
        weight_decay: 5e-4,
    });
    tc.epochs = 1;
    Trainer::new(tc).unwrap()
}

/// Runs `python script args...` and reads the JSON of its last stdout line; the reason when
/// there is no such Python or the script fails.
#[allow(dead_code)]
pub fn torch_json(python: &str, script: &str, args: &[String]) -> Result<serde_json::Value, String> {
    let out = std::process::Command::new(python).arg(script).args(args).output().map_err(|e| {
        format!("cannot run {python}: {e} (set DISTILLERY_TORCH_PYTHON to a python with torch)")
    })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!("{python} {script} failed: {}", err.lines().last().unwrap_or("")));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or(""))
        .map_err(|e| format!("bad output from {script}: {e}"))
}

/// A `usize` from the environment, or `default`.
#[allow(dead_code)]
pub fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[allow(dead_code)]
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}
