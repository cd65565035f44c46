//! store: node results, content-addressed by cache key, written atomically, verified on read.
//!
//! Layout under the store root (default `.distillery/` beside the spec):
//!
//! ```text
//! objects/ab/abcdef…/      one finished entry: its files + manifest.json (written last)
//! tmp/                     entries being written (renamed into objects/ when complete)
//! locks/abcdef….lock       held while a process computes that key
//! index/<node>.json        the last key and canonical settings recorded per node name (for plan)
//! corrupt/                 entries that failed verification, kept for inspection
//! ```
//!
//! Architecture invariants: an entry under objects/ is complete (the rename is the commit);
//! every read verifies sizes and sha256 of every file against the manifest, and an entry that
//! fails is moved to corrupt/ and reported, never used; two processes computing the same key
//! serialise on its lock file, and the second finds the first's result.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::graph::{CacheKey, FORMAT_VERSION};
use crate::plan::StoreIndex;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("store entry {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    /// [`Store::open_existing`] on a folder that is missing or holds no store.
    #[error("no store at {}: {reason}", path.display())]
    NotAStore { path: PathBuf, reason: &'static str },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

/// One file of an entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative to the entry's folder, `/`-separated.
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// What an entry holds and how it was made; written last, so its presence means complete.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub key: String,
    pub node: String,
    pub kind: String,
    /// The canonical settings the key hashes.
    pub canonical: serde_json::Value,
    /// Final metrics of the node (accuracy, train_seconds, ...).
    pub metrics: serde_json::Value,
    pub created_unix: u64,
    pub files: Vec<FileEntry>,
}

/// A verified entry.
#[derive(Clone, Debug)]
pub struct Entry {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Entry {
    pub fn file(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }
}

/// The answer of [`Store::get`].
#[derive(Debug)]
pub enum Lookup {
    Hit(Entry),
    Miss,
    /// Failed verification; moved to corrupt/ (recompute it).
    Corrupt {
        reason: String,
    },
}

#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

/// An entry being written: put files in [`Pending::dir`], then [`Pending::commit`].
pub struct Pending {
    dir: PathBuf,
    key: CacheKey,
    store: Store,
    committed: bool,
    /// Replace an existing entry of the same key on commit (`--force`).
    replace: bool,
}

/// Held while this process computes a key.
pub struct KeyLock {
    _file: File,
}

fn sha256_file(path: &Path) -> io::Result<(u64, String)> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((size, CacheKey(h.finalize().into()).hex()))
}

fn list_files(dir: &Path, prefix: &str, out: &mut Vec<(String, PathBuf)>) -> io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
        if e.file_type()?.is_dir() {
            list_files(&e.path(), &rel, out)?;
        } else if rel != "manifest.json" {
            out.push((rel, e.path()));
        }
    }
    Ok(())
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// File names for node names (which may hold `[`, `=`, `,`): safe characters kept, the rest escaped.
fn node_file_name(node: &str) -> String {
    node.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c.to_string()
            } else {
                format!("%{:02x}", c as u32)
            }
        })
        .collect()
}

impl Store {
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let root = root.into();
        for sub in ["objects", "tmp", "locks", "index", "corrupt"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        Ok(Store { root })
    }

    /// Opens a store that must already exist, creating nothing (for commands that only read or
    /// remove: `plan`, `gc`), so they work on a read-only store and a typo never makes a new
    /// one: a missing folder, or one without `objects/`, is [`StoreError::NotAStore`].
    pub fn open_existing(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let root = root.into();
        let reason = if !root.exists() {
            "the folder does not exist"
        } else if !root.is_dir() {
            "it is a file, not a folder"
        } else if !root.join("objects").is_dir() {
            "the folder holds no stored results (no objects/ in it)"
        } else {
            return Ok(Store { root });
        };
        Err(StoreError::NotAStore { path: root, reason })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the running job of `key` keeps its checkpoint: `checkpoints/<key>.safetensors`,
    /// outside every entry (a checkpoint is progress, never a result). The folder is made here.
    pub fn checkpoint_path(&self, key: &CacheKey) -> Result<PathBuf, StoreError> {
        let dir = self.root.join("checkpoints");
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(dir.join(format!("{}.safetensors", key.hex())))
    }

    /// Removes the checkpoint of `key`, if there is one.
    pub fn remove_checkpoint(&self, key: &CacheKey) -> Result<(), StoreError> {
        let p = self.checkpoint_path(key)?;
        match fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(&p)(e)),
            _ => Ok(()),
        }
    }

    fn entry_dir(&self, key: &CacheKey) -> PathBuf {
        let hex = key.hex();
        self.root.join("objects").join(&hex[..2]).join(hex)
    }

    /// Whether a complete entry exists (cheap: the manifest is there; [`Store::get`] verifies).
    pub fn contains(&self, key: &CacheKey) -> bool {
        self.entry_dir(key).join("manifest.json").is_file()
    }

    /// The entry for `key`, verified file by file.
    pub fn get(&self, key: &CacheKey) -> Result<Lookup, StoreError> {
        let dir = self.entry_dir(key);
        if !dir.exists() {
            return Ok(Lookup::Miss);
        }
        match self.verify(key, &dir) {
            Ok(manifest) => Ok(Lookup::Hit(Entry { dir, manifest })),
            Err(reason) => {
                let dest = self.root.join("corrupt").join(format!("{}-{}", key.hex(), now_unix()));
                fs::rename(&dir, &dest).map_err(io_err(&dir))?;
                Ok(Lookup::Corrupt { reason })
            }
        }
    }

    fn verify(&self, key: &CacheKey, dir: &Path) -> Result<Manifest, String> {
        let text =
            fs::read_to_string(dir.join("manifest.json")).map_err(|e| format!("manifest unreadable: {e}"))?;
        let m: Manifest = serde_json::from_str(&text).map_err(|e| format!("manifest invalid: {e}"))?;
        if m.key != key.hex() {
            return Err(format!("manifest names key {}", m.key));
        }
        let mut on_disk = Vec::new();
        list_files(dir, "", &mut on_disk).map_err(|e| format!("cannot list files: {e}"))?;
        let listed: HashSet<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
        if let Some((extra, _)) = on_disk.iter().find(|(rel, _)| !listed.contains(rel.as_str())) {
            return Err(format!("unexpected file {extra}"));
        }
        for f in &m.files {
            let (size, sha) = sha256_file(&dir.join(&f.path)).map_err(|e| format!("{}: {e}", f.path))?;
            if size != f.size {
                return Err(format!("{}: size {size}, manifest says {}", f.path, f.size));
            }
            if sha != f.sha256 {
                return Err(format!("{}: checksum mismatch", f.path));
            }
        }
        Ok(m)
    }

    /// Waits until no other process computes `key`, then holds it.
    pub fn lock(&self, key: &CacheKey) -> Result<KeyLock, StoreError> {
        let p = self.root.join("locks").join(format!("{}.lock", key.hex()));
        let file = File::options().create(true).truncate(false).write(true).open(&p).map_err(io_err(&p))?;
        file.lock().map_err(io_err(&p))?;
        Ok(KeyLock { _file: file })
    }

    /// A fresh folder to write an entry into.
    pub fn begin(&self, key: &CacheKey) -> Result<Pending, StoreError> {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = self.root.join("tmp").join(format!("{}.{}.{n}", key.hex(), std::process::id()));
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(Pending { dir, key: key.clone(), store: self.clone(), committed: false, replace: false })
    }

    /// Records that `node` last produced `key` from `canonical` settings (for plan's reasons).
    pub fn record(
        &self,
        node: &str,
        key: &CacheKey,
        canonical: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let p = self.root.join("index").join(format!("{}.json", node_file_name(node)));
        let v = serde_json::json!({ "node": node, "key": key.hex(), "canonical": canonical });
        write_atomic(&p, serde_json::to_string(&v).expect("json").as_bytes())
    }

    /// Removes every entry whose key is not in `live`; returns (entries removed, bytes freed).
    pub fn gc(&self, live: &HashSet<CacheKey>) -> Result<(usize, u64), StoreError> {
        let live_hex: HashSet<String> = live.iter().map(CacheKey::hex).collect();
        let objects = self.root.join("objects");
        let (mut n, mut bytes) = (0, 0);
        for shard in fs::read_dir(&objects).map_err(io_err(&objects))? {
            let shard = shard.map_err(io_err(&objects))?.path();
            for e in fs::read_dir(&shard).map_err(io_err(&shard))? {
                let e = e.map_err(io_err(&shard))?.path();
                let name = e.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                if live_hex.contains(&name) {
                    continue;
                }
                let mut files = Vec::new();
                list_files(&e, "", &mut files).map_err(io_err(&e))?;
                bytes += files.iter().filter_map(|(_, p)| p.metadata().ok()).map(|m| m.len()).sum::<u64>();
                fs::remove_dir_all(&e).map_err(io_err(&e))?;
                n += 1;
            }
        }
        // Checkpoints of keys no experiment references any more (a live key's is kept: its
        // node resumes from it).
        let checkpoints = self.root.join("checkpoints");
        if checkpoints.is_dir() {
            for e in fs::read_dir(&checkpoints).map_err(io_err(&checkpoints))? {
                let p = e.map_err(io_err(&checkpoints))?.path();
                let name = p.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                let key = name.split('.').next().unwrap_or_default();
                if !live_hex.contains(key) {
                    bytes += p.metadata().map(|m| m.len()).unwrap_or(0);
                    fs::remove_file(&p).map_err(io_err(&p))?;
                    n += 1;
                }
            }
        }
        // The Slurm launcher's folders of keys no experiment references (job file, record,
        // events, logs); a live key's stay: its record says what was submitted.
        let jobs = self.root.join("slurm").join("jobs");
        if jobs.is_dir() {
            for e in fs::read_dir(&jobs).map_err(io_err(&jobs))? {
                let p = e.map_err(io_err(&jobs))?.path();
                let name = p.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                if p.is_dir() && !live_hex.contains(&name) {
                    let mut files = Vec::new();
                    list_files(&p, "", &mut files).map_err(io_err(&p))?;
                    bytes +=
                        files.iter().filter_map(|(_, f)| f.metadata().ok()).map(|m| m.len()).sum::<u64>();
                    fs::remove_dir_all(&p).map_err(io_err(&p))?;
                    n += 1;
                }
            }
        }
        // Interrupted writes of any age are garbage too.
        let tmp = self.root.join("tmp");
        let tmp_entries = if tmp.is_dir() { Some(fs::read_dir(&tmp).map_err(io_err(&tmp))?) } else { None };
        for e in tmp_entries.into_iter().flatten() {
            let p = e.map_err(io_err(&tmp))?.path();
            let _ = fs::remove_dir_all(&p);
        }
        Ok((n, bytes))
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

impl Pending {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// On commit, replace an existing entry of this key instead of keeping it.
    pub fn replacing(mut self) -> Pending {
        self.replace = true;
        self
    }

    /// Checksums every file, writes the manifest, and renames the folder into place.
    pub fn commit(
        mut self,
        node: &str,
        kind: &str,
        canonical: serde_json::Value,
        metrics: serde_json::Value,
    ) -> Result<Entry, StoreError> {
        let mut files = Vec::new();
        list_files(&self.dir, "", &mut files).map_err(io_err(&self.dir))?;
        let mut entries = Vec::with_capacity(files.len());
        for (rel, p) in files {
            File::open(&p).and_then(|f| f.sync_all()).map_err(io_err(&p))?;
            let (size, sha256) = sha256_file(&p).map_err(io_err(&p))?;
            entries.push(FileEntry { path: rel, size, sha256 });
        }
        let manifest = Manifest {
            format: FORMAT_VERSION,
            key: self.key.hex(),
            node: node.to_string(),
            kind: kind.to_string(),
            canonical,
            metrics,
            created_unix: now_unix(),
            files: entries,
        };
        write_atomic(
            &self.dir.join("manifest.json"),
            serde_json::to_string_pretty(&manifest).expect("json").as_bytes(),
        )?;
        let dest = self.store.entry_dir(&self.key);
        let parent = dest.parent().expect("sharded");
        fs::create_dir_all(parent).map_err(io_err(parent))?;
        if dest.exists() && !self.replace {
            // Another process finished the same key first: identical by construction; keep theirs.
            fs::remove_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        } else {
            if dest.exists() {
                // A forced rerun replaces the entry: move the old one aside, then put ours in.
                let old = self.dir.with_extension("replaced");
                fs::rename(&dest, &old).map_err(io_err(&dest))?;
                fs::rename(&self.dir, &dest).map_err(io_err(&dest))?;
                let _ = fs::remove_dir_all(&old);
            } else {
                fs::rename(&self.dir, &dest).map_err(io_err(&dest))?;
            }
        }
        self.committed = true;
        Ok(Entry { dir: dest, manifest })
    }
}

impl Drop for Pending {
    /// An abandoned write (error, Ctrl-C) leaves nothing behind.
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

impl StoreIndex for Store {
    fn contains(&self, key: &CacheKey) -> bool {
        Store::contains(self, key)
    }

    fn last_recorded(&self, node: &str) -> Option<serde_json::Value> {
        let p = self.root.join("index").join(format!("{}.json", node_file_name(node)));
        let v: serde_json::Value = serde_json::from_str(&fs::read_to_string(p).ok()?).ok()?;
        v.get("canonical").cloned()
    }
}

/// The store as one experiment's plan sees it: several experiments may share a store (and node
/// names), so what was recorded is looked up under `experiment/node`.
pub struct Scoped<'a> {
    store: &'a Store,
    experiment: &'a str,
}

impl Store {
    pub fn scoped<'a>(&'a self, experiment: &'a str) -> Scoped<'a> {
        Scoped { store: self, experiment }
    }

    /// The name a node's last result is recorded under.
    pub fn index_name(experiment: &str, node: &str) -> String {
        format!("{experiment}/{node}")
    }
}

impl StoreIndex for Scoped<'_> {
    fn contains(&self, key: &CacheKey) -> bool {
        self.store.contains(key)
    }

    fn last_recorded(&self, node: &str) -> Option<serde_json::Value> {
        StoreIndex::last_recorded(self.store, &Store::index_name(self.experiment, node))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(n: u8) -> CacheKey {
        CacheKey([n; 32])
    }

    fn put(store: &Store, k: &CacheKey, body: &str) -> Entry {
        let p = store.begin(k).unwrap();
        fs::write(p.dir().join("model.safetensors"), body).unwrap();
        fs::create_dir_all(p.dir().join("logs")).unwrap();
        fs::write(p.dir().join("logs/metrics.jsonl"), "{}\n").unwrap();
        p.commit("n", "train", json!({"a": 1}), json!({"accuracy": 0.5})).unwrap()
    }

    #[test]
    fn commit_then_get_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert!(matches!(s.get(&key(1)).unwrap(), Lookup::Miss));
        put(&s, &key(1), "weights");
        let Lookup::Hit(e) = s.get(&key(1)).unwrap() else { panic!() };
        assert_eq!(e.manifest.files.len(), 2);
        assert_eq!(fs::read_to_string(e.file("model.safetensors")).unwrap(), "weights");
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn corrupt_entries_are_quarantined_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        for (i, damage) in ["flip", "truncate", "extra", "manifest"].iter().enumerate() {
            let k = key(10 + i as u8);
            let e = put(&s, &k, "weights-weights");
            match *damage {
                "flip" => fs::write(e.file("model.safetensors"), "weights-weightz").unwrap(),
                "truncate" => fs::write(e.file("model.safetensors"), "weights").unwrap(),
                "extra" => fs::write(e.file("stray.bin"), "x").unwrap(),
                _ => fs::write(e.file("manifest.json"), "{\"format\":").unwrap(),
            }
            let Lookup::Corrupt { reason } = s.get(&k).unwrap() else { panic!("{damage} not detected") };
            assert!(!reason.is_empty());
            assert!(matches!(s.get(&k).unwrap(), Lookup::Miss), "{damage}: quarantined entry gone");
        }
        assert_eq!(fs::read_dir(dir.path().join("corrupt")).unwrap().count(), 4);
    }

    #[test]
    fn abandoned_writes_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        {
            let p = s.begin(&key(2)).unwrap();
            fs::write(p.dir().join("half"), "x").unwrap();
        }
        assert!(!s.contains(&key(2)));
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn a_forced_rewrite_replaces_the_entry_a_plain_one_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        put(&s, &key(6), "first");
        put(&s, &key(6), "second");
        let Lookup::Hit(e) = s.get(&key(6)).unwrap() else { panic!() };
        assert_eq!(
            fs::read_to_string(e.file("model.safetensors")).unwrap(),
            "first",
            "concurrent twin: keep the first"
        );
        let p = s.begin(&key(6)).unwrap().replacing();
        fs::write(p.dir().join("model.safetensors"), "third").unwrap();
        p.commit("n", "train", json!({}), json!({})).unwrap();
        let Lookup::Hit(e) = s.get(&key(6)).unwrap() else { panic!() };
        assert_eq!(fs::read_to_string(e.file("model.safetensors")).unwrap(), "third");
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn gc_keeps_live_entries_only() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        put(&s, &key(3), "a");
        put(&s, &key(4), "b");
        // A checkpoint of a live key stays (its node resumes from it), another key's goes.
        fs::write(s.checkpoint_path(&key(3)).unwrap(), "live").unwrap();
        fs::write(s.checkpoint_path(&key(5)).unwrap(), "stale").unwrap();
        let (n, _) = s.gc(&HashSet::from([key(3)])).unwrap();
        assert_eq!(n, 2);
        assert!(s.contains(&key(3)) && !s.contains(&key(4)));
        assert!(
            s.checkpoint_path(&key(3)).unwrap().is_file() && !s.checkpoint_path(&key(5)).unwrap().exists()
        );
        s.remove_checkpoint(&key(3)).unwrap();
        s.remove_checkpoint(&key(3)).unwrap();
        assert!(!s.checkpoint_path(&key(3)).unwrap().exists(), "removed, and removing none is fine");
        // The Slurm launcher's job folders: a live key's stays.
        for k in [3, 7] {
            let d = dir.path().join("slurm/jobs").join(key(k).hex());
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("record.json"), "{}").unwrap();
        }
        let (n, bytes) = s.gc(&HashSet::from([key(3)])).unwrap();
        assert_eq!((n, bytes), (1, 2));
        assert!(dir.path().join("slurm/jobs").join(key(3).hex()).is_dir());
        assert!(!dir.path().join("slurm/jobs").join(key(7).hex()).exists());
    }

    #[test]
    fn open_existing_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("typo");
        let err = Store::open_existing(&missing).unwrap_err();
        assert!(matches!(err, StoreError::NotAStore { .. }), "{err}");
        assert!(!missing.exists());
        let file = dir.path().join("file");
        fs::write(&file, "x").unwrap();
        assert!(Store::open_existing(&file).unwrap_err().to_string().contains("is a file"));
        let err = Store::open_existing(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no objects/"), "{err}");
        assert!(!dir.path().join("objects").exists());
        fs::create_dir(dir.path().join("objects")).unwrap();
        let s = Store::open_existing(dir.path()).unwrap();
        assert_eq!(s.gc(&HashSet::new()).unwrap(), (0, 0), "a store without tmp/ is fine");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2, "nothing created: objects/ and file");
    }

    #[test]
    fn record_feeds_plan_index() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.record("kd[seed=1]", &key(5), &json!({"x": 2})).unwrap();
        assert_eq!(StoreIndex::last_recorded(&s, "kd[seed=1]"), Some(json!({"x": 2})));
        assert_eq!(StoreIndex::last_recorded(&s, "kd[seed=2]"), None);
    }
}
