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
