//! plugins: finding a plugin by name and reading its manifest (docs/plugins.md): `plugins/NAME/plugin.json`
//! beside the experiment file, else `distillery-NAME` on PATH. What the key holds of it: the
//! manifest and a hash of its files (so an edited plugin recomputes its nodes).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::job::PluginRef;

/// The protocol versions this build speaks.
pub const PROTOCOLS: [u32; 1] = [1];

/// `plugins/NAME/plugin.json`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    /// The plugin's name (the folder's).
    name: String,
    /// The protocol version it speaks.
    protocol: u32,
    /// The program and its arguments, run in the plugin's folder; a first word naming a file
    /// of the folder is that file.
    command: Vec<String>,
    /// What its inputs may be: `dataset`, `model`, `entry` (any stored result).
    #[serde(default)]
    consumes: Vec<String>,
    /// `files` (a plugin node's output folder) or `images` (a generator for `generate`).
    produces: String,
    /// Whether it runs on the device (it then takes a `--device-slots` place).
    #[serde(default)]
    gpu: bool,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    version: Option<String>,
}

const CONSUMES: [&str; 3] = ["dataset", "model", "entry"];
const PRODUCES: [&str; 2] = ["files", "images"];

/// The plugin `name` as the experiment in `base_dir` sees it: `plugins/NAME/plugin.json` in
/// the experiment's folder or the nearest folder above it that has one, else `distillery-NAME`
/// on PATH; or why there is none usable.
pub fn find(base_dir: &Path, name: &str) -> Result<PluginRef, String> {
    let base = std::path::absolute(base_dir).unwrap_or_else(|_| base_dir.to_path_buf());
    for d in base.ancestors() {
        let dir = d.join("plugins").join(name);
        let file = dir.join("plugin.json");
        if file.is_file() {
            return from_manifest(&dir, &file, name);
        }
    }
    let exe = format!("distillery-{name}");
    if let Some(path) = on_path(&exe) {
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        return Ok(PluginRef {
            name: name.to_string(),
            command: vec![path.to_string_lossy().into_owned()],
            protocol: PROTOCOLS[PROTOCOLS.len() - 1],
            produces: "any".into(),
            gpu: false,
            manifest: serde_json::Value::Null,
            files_sha256: hex(&Sha256::digest(&bytes)),
            file_path: path,
        });
    }
    Err(format!(
        "no plugin `{name}`: no plugins/{name}/plugin.json in {} or a folder above it, and no `{exe}` on PATH",
        base.display()
    ))
}

fn from_manifest(dir: &Path, file: &Path, name: &str) -> Result<PluginRef, String> {
    let at = file.display();
    let text = std::fs::read_to_string(file).map_err(|e| format!("{at}: {e}"))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{at}: {e}"))?;
    let m: Manifest = serde_json::from_value(value.clone()).map_err(|e| format!("{at}: {e}"))?;
    if m.name != name {
        return Err(format!("{at}: `name` is `{}`, the folder is `{name}`", m.name));
    }
    if !PROTOCOLS.contains(&m.protocol) {
        return Err(format!(
            "{at}: protocol {} is not one this build speaks ({PROTOCOLS:?}); update distillery or the plugin",
            m.protocol
        ));
    }
    if m.command.is_empty() || m.command[0].is_empty() {
        return Err(format!("{at}: `command` is empty; give the program and its arguments"));
    }
    if !PRODUCES.contains(&m.produces.as_str()) {
        return Err(format!("{at}: `produces` is `{}`; expected one of {PRODUCES:?}", m.produces));
    }
    if let Some(c) = m.consumes.iter().find(|c| !CONSUMES.contains(&c.as_str())) {
        return Err(format!("{at}: `consumes` has `{c}`; expected some of {CONSUMES:?}"));
    }
    let mut command = m.command.clone();
    let first = dir.join(&command[0]);
    if !Path::new(&command[0]).is_absolute() && first.is_file() {
        command[0] = first.to_string_lossy().into_owned();
    }
    Ok(PluginRef {
        name: name.to_string(),
        command,
        protocol: m.protocol,
        produces: m.produces,
        gpu: m.gpu,
        manifest: value,
        files_sha256: files_digest(dir)?,
        file_path: dir.to_path_buf(),
    })
}

/// sha256 over the folder's files, in sorted relative-path order: each path and its content's
/// hash. Python's byte-code caches are left out (they change with no edit).
pub fn files_digest(dir: &Path) -> Result<String, String> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        for e in entries {
            let e = e.map_err(|e| format!("{}: {e}", d.display()))?;
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name == "__pycache__" || name.ends_with(".pyc") {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        let rel = f.strip_prefix(dir).unwrap_or(&f).to_string_lossy().into_owned();
        let bytes = std::fs::read(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        h.update(rel.as_bytes());
        h.update([0]);
        h.update(Sha256::digest(&bytes));
    }
    Ok(hex(&h.finalize()))
}

fn on_path(exe: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(exe))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
