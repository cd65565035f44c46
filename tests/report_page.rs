//! The experiment page (`distillery report FILE --format html --out DIR`) in a real headless
//! browser: it loads with no console message (it has no scripts: any message is a problem) and
//! its screenshot is not blank; the page holds every table, the plots inline, the graph and each
//! node's key. Chromium is found as $DISTILLERY_CHROMIUM, else `chromium` or
//! `chromium-headless-shell` on PATH; scripts/test installs Debian's. Under CI=true a missing
//! browser fails the test.

mod e2e_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use e2e_support::{cli, text};

const SPEC: &str = r#"
experiment: page
datasets:
  task: { source: builtin/digits, classes: [5, 6, 7], per_class: 10 }
  test: { source: builtin/digits, classes: [5, 6, 7], split: test }
models:
  small: { arch: cnn, channels: [4] }
nodes:
  teacher: { train: { model: small, data: task, epochs: 2, batch_size: 10 }, seed: 5 }
  scratch: { train: { model: small, data: task, epochs: 2, batch_size: 10 } }
  kd:      { distill: { teacher: teacher, student: small, data: task, losses: kd, epochs: 2, batch_size: 10 } }
  table:   { report: { title: "A <small> & quick table", rows: [scratch, kd], eval: test, columns: [accuracy, cost_flops], compare_to: scratch } }
matrix: { seed: [0, 1, 2] }
"#;

fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("DISTILLERY_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-headless-shell", "chromium-browser"] {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// Loads `page` headless: its console messages (from the browser's log) and a screenshot.
fn load(browser: &Path, page: &Path, shot: &Path) -> Vec<String> {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1280,1800",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium runs");
    let err = text(&out.stderr);
    assert!(shot.exists(), "no screenshot ({}):\n{err}", out.status);
    err.lines().filter(|l| l.contains("CONSOLE")).map(String::from).collect()
}

/// The share of the screenshot's pixels that are not the page's white.
fn ink(png: &Path) -> f64 {
    let img = image::open(png).unwrap().to_rgb8();
    let n = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
    n as f64 / (img.width() * img.height()) as f64
}

#[test]
fn the_experiment_page_loads_in_a_real_browser_without_errors_and_is_not_blank() {
    let Some(browser) = chromium() else {
        assert!(std::env::var("CI").is_err(), "CI=true: chromium is missing (scripts/test installs it)");
        eprintln!("skipped: no chromium (set DISTILLERY_CHROMIUM)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let spec = e2e_support::write(dir.path(), "page.yaml", SPEC);
    let out = cli(&["run"], &spec);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let to = dir.path().join("site");
    let out = cli(&["report", "--format", "html", "--out", to.to_str().unwrap()], &spec);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let page = to.join("page.html");
    let html = std::fs::read_to_string(&page).unwrap();
    // Self-contained: no script, nothing fetched.
    assert!(
        !html.contains("<script")
            && !html.contains("src=")
            && !html.contains("<link")
            && !html.contains("href=\"http"),
        "{html}"
    );
    assert!(html.contains("A &lt;small&gt; &amp; quick table"), "the title escaped");
    assert!(html.contains("<figure class=\"plot\" id=\"table-accuracy_vs_cost\"><svg"), "plots inline");
    assert!(html.contains("class=\"graph\""), "the graph drawn");
    assert!(html.contains("teacher_outputs(teacher on task)"), "every vertex drawn");
    let (table_dir, _) = e2e_support::entry(dir.path(), "table");
    let key = table_dir.file_name().unwrap().to_str().unwrap().to_string();
    assert!(html.contains(&key), "each node's cache key");

    let shot = dir.path().join("shot.png");
    let console = load(&browser, &page, &shot);
    assert!(console.is_empty(), "console messages: {console:?}");
    let covered = ink(&shot);
    assert!(covered > 0.03, "the screenshot is blank ({covered})");

    // The check can fail: a page that writes to the console, and a blank one.
    let bad = dir.path().join("bad.html");
    std::fs::write(&bad, "<!doctype html><html><body><script>console.error('boom')</script></body></html>")
        .unwrap();
    let console = load(&browser, &bad, &dir.path().join("bad.png"));
    assert!(console.iter().any(|l| l.contains("boom")), "the console is read: {console:?}");
    assert!(ink(&dir.path().join("bad.png")) < 0.001, "a blank page reads as blank");
}
