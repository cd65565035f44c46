//! Content fingerprints of dataset selections, for the graph's cache keys.
//!
//! A fingerprint is SHA-256 over a format version, the selection parameters that change which
//! records are kept, and the digests of exactly the files the selection reads: the record
//! files of the split for IDX/CIFAR/JSON sources, and each selected image for image folders
//! (so editing one image changes only the selections that contain it). File digests are
//! cached by (path, size, mtime) in memory and optionally in a small text file, so a file is
//! hashed once.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::UNIX_EPOCH;

use sha2::{Digest, Sha256};

use super::{DataError, DatasetConfig};

/// Bumped whenever decoding or selection changes what a config yields.
pub(crate) const FORMAT_VERSION: &str = "distillery-data-v1";

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", &self.to_hex()[..16])
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Computes a selection's fingerprint without decoding images (image folders list their
/// files; record sources hash their files).
pub fn fingerprint(cfg: &DatasetConfig, base_dir: &Path) -> Result<Fingerprint, DataError> {
    fingerprint_with_cache(cfg, base_dir, FingerprintCache::global())
}

pub fn fingerprint_with_cache(
    cfg: &DatasetConfig,
    base_dir: &Path,
    cache: &FingerprintCache,
) -> Result<Fingerprint, DataError> {
    super::select::validate(cfg)?;
    let fp = super::sources::fingerprint(cfg, base_dir, cache)?;
    cache.save()?;
    Ok(fp)
}

/// Incremental builder: params as `key=value` lines, then `(name, digest)` pairs.
pub(crate) struct FingerprintBuilder {
    hasher: Sha256,
}

impl FingerprintBuilder {
    pub fn new() -> Self {
        let mut hasher = Sha256::new();
        hasher.update(FORMAT_VERSION.as_bytes());
        hasher.update(b"\n");
        Self { hasher }
    }

    pub fn param(&mut self, key: &str, value: impl fmt::Display) -> &mut Self {
        self.hasher.update(format!("{key}={value}\n").as_bytes());
        self
    }

    pub fn content(&mut self, name: &str, digest: &[u8; 32]) -> &mut Self {
        self.hasher.update(format!("file {name} {}\n", hex(digest)).as_bytes());
        self
    }

    pub fn finish(self) -> Fingerprint {
        Fingerprint(self.hasher.finalize().into())
    }
}

/// Parameters of a selection that change which records are kept, in a canonical text form.
/// The seed counts only when a seeded choice is made, so a matrix over seeds does not split
/// the cache of a dataset that does not depend on it.
pub(crate) fn selection_params(
    b: &mut FingerprintBuilder,
    cfg: &DatasetConfig,
    class_names: &[String],
    uses_holdout: bool,
) -> Result<(), DataError> {
    b.param("split", format!("{:?}", cfg.split));
    if let Some(classes) = &cfg.classes {
        // Resolved to source indices: `5` and `"5"` select the same thing, and an unknown
        // class fails here, at planning time.
        let resolved = super::select::resolve_classes(Some(classes), class_names)?;
        let list: Vec<String> = resolved.iter().map(|i| i.to_string()).collect();
        b.param("classes", list.join(","));
    }
    if let Some(n) = cfg.per_class {
        b.param("per_class", n);
    }
    if let Some(f) = cfg.fraction {
        b.param("fraction", format!("{:016x}", f.to_bits()));
    }
    if cfg.per_class.is_some() || cfg.fraction.is_some() {
        b.param("seed", cfg.seed);
    }
    if uses_holdout && cfg.split != super::Split::All {
        b.param("holdout", format!("{:016x},{}", cfg.holdout.fraction.to_bits(), cfg.holdout.seed));
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Entry {
    size: u64,
    mtime_ns: i128,
    digest: [u8; 32],
}

/// File digests keyed by absolute path, size and modification time.
pub struct FingerprintCache {
    file: Option<PathBuf>,
    entries: Mutex<HashMap<PathBuf, Entry>>,
    dirty: Mutex<bool>,
    hashed: AtomicUsize,
}

impl FingerprintCache {
    pub fn in_memory() -> Self {
        Self {
            file: None,
            entries: Mutex::new(HashMap::new()),
            dirty: Mutex::new(false),
            hashed: AtomicUsize::new(0),
        }
    }

    /// The process-wide in-memory cache used by [`super::load`] and [`fingerprint`].
    pub fn global() -> &'static FingerprintCache {
        static GLOBAL: OnceLock<FingerprintCache> = OnceLock::new();
        GLOBAL.get_or_init(FingerprintCache::in_memory)
    }

    /// A cache persisted in `file` (created on first save). A corrupt cache file is ignored:
    /// it only costs rehashing.
    pub fn open(file: &Path) -> Result<Self, DataError> {
        let cache = Self { file: Some(file.to_path_buf()), ..Self::in_memory() };
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(cache),
            Err(e) => return Err(DataError::io(file, e)),
        };
        let mut entries = cache.entries.lock().unwrap();
        for line in text.lines() {
            // digest size mtime_ns path (the path last: it may contain spaces)
            let mut parts = line.splitn(4, ' ');
            let (Some(d), Some(s), Some(m), Some(p)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let (Some(digest), Ok(size), Ok(mtime_ns)) = (parse_hex32(d), s.parse(), m.parse()) else {
                continue;
            };
            entries.insert(PathBuf::from(p), Entry { size, mtime_ns, digest });
        }
        drop(entries);
        Ok(cache)
    }

    /// How many files this cache has actually read and hashed (not served from the cache).
    pub fn files_hashed(&self) -> usize {
        self.hashed.load(Ordering::Relaxed)
    }

    /// SHA-256 of a file's content, from the cache when its size and mtime are unchanged.
    pub fn file_digest(&self, path: &Path) -> Result<[u8; 32], DataError> {
        let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
        let size = meta.len();
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(-1);
        let key = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        if let Some(e) = self.entries.lock().unwrap().get(&key)
            && e.size == size
            && e.mtime_ns == mtime_ns
        {
            return Ok(e.digest);
        }
        let digest = hash_file(path)?;
        self.hashed.fetch_add(1, Ordering::Relaxed);
        self.entries.lock().unwrap().insert(key, Entry { size, mtime_ns, digest });
        *self.dirty.lock().unwrap() = true;
        Ok(digest)
    }

    /// Writes the cache file (atomically) when it has one and something changed. Processes
    /// saving at once each write a whole file and the last rename wins; a lost entry only
    /// costs hashing that file again.
    pub fn save(&self) -> Result<(), DataError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let mut dirty = self.dirty.lock().unwrap();
        if !*dirty {
            return Ok(());
        }
        let entries = self.entries.lock().unwrap();
        let mut lines: Vec<String> = entries
            .iter()
            .map(|(p, e)| format!("{} {} {} {}\n", hex(&e.digest), e.size, e.mtime_ns, p.display()))
            .collect();
        lines.sort();
        if let Some(dir) = file.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
        }
        let tmp = file.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, lines.concat()).map_err(|e| DataError::io(&tmp, e))?;
        std::fs::rename(&tmp, file).map_err(|e| DataError::io(file, e))?;
        *dirty = false;
        Ok(())
    }
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn hash_file(path: &Path) -> Result<[u8; 32], DataError> {
    let mut f = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| DataError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().into())
}

pub(crate) fn hash_bytes(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_abc_is_the_standard_vector() {
        assert_eq!(
            hex(&hash_bytes(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn cache_file_round_trips_and_skips_rehash() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("a.bin");
        std::fs::write(&data, b"abc").unwrap();
        let cache_file = dir.path().join("cache/fp.txt");
        let c1 = FingerprintCache::open(&cache_file).unwrap();
        assert_eq!(c1.file_digest(&data).unwrap(), hash_bytes(b"abc"));
        assert_eq!(c1.files_hashed(), 1);
        c1.save().unwrap();
        let c2 = FingerprintCache::open(&cache_file).unwrap();
        assert_eq!(c2.file_digest(&data).unwrap(), hash_bytes(b"abc"));
        assert_eq!(c2.files_hashed(), 0, "digest should come from the cache file");
        std::fs::write(&data, b"abcd").unwrap();
        assert_eq!(c2.file_digest(&data).unwrap(), hash_bytes(b"abcd"));
        assert_eq!(c2.files_hashed(), 1);
    }

    #[test]
    fn corrupt_cache_lines_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let cache_file = dir.path().join("fp.txt");
        std::fs::write(&cache_file, "garbage\nzz 1 2 /x\n").unwrap();
        let c = FingerprintCache::open(&cache_file).unwrap();
        assert!(c.entries.lock().unwrap().is_empty());
    }
}
