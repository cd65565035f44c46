//! Image folders: `root/<class>/<image>.{png,jpg,jpeg}`, classes in sorted directory order
//! (as torchvision's ImageFolder). Images are decoded to RGB, resized so the shorter side is
//! `image_size` (bilinear) and centre-cropped to a square, once, at load time.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use rayon::prelude::*;

use crate::data::dataset::Dataset;
use crate::data::fingerprint::{FingerprintBuilder, FingerprintCache, selection_params};
use crate::data::select::{Selection, select};
use crate::data::sources::{Records, require_dir};
use crate::data::{DataError, DatasetConfig, Fingerprint, FolderSplit, Source, Split};

struct Listing {
    root: PathBuf,
    class_names: Vec<String>,
    /// Relative paths `class/file`, sorted, with their class.
    files: Vec<(String, u32)>,
    /// Indices into `files` in the requested split.
    candidates: Vec<usize>,
    /// Digests of split list files, part of the fingerprint.
    list_files: Vec<(String, PathBuf)>,
}

fn is_image(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.ends_with(".png") || lower.ends_with(".jpg") || lower.ends_with(".jpeg")
}

fn sorted_entries(dir: &Path) -> Result<Vec<(String, bool)>, DataError> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let e = e.map_err(|e| DataError::io(dir, e))?;
        let is_dir = e.file_type().map_err(|err| DataError::io(e.path(), err))?.is_dir();
        out.push((e.file_name().to_string_lossy().into_owned(), is_dir));
    }
    out.sort();
    Ok(out)
}

/// The class sub-directories of an image folder, sorted (its labels' order).
pub(crate) fn class_names(root: &Path) -> Result<Vec<String>, DataError> {
    require_dir(root, "an image folder with one sub-directory per class")?;
    let names: Vec<String> = sorted_entries(root)?.into_iter().filter(|e| e.1).map(|e| e.0).collect();
    if names.is_empty() {
        return Err(DataError::Format {
            path: root.to_path_buf(),
            detail: "no class sub-directories; expected root/<class>/<image>.png".into(),
        });
    }
    Ok(names)
}

fn list(cfg: &DatasetConfig, base_dir: &Path) -> Result<(Listing, usize), DataError> {
    let Source::ImageFolder { root, split, image_size } = &cfg.source else { unreachable!("folder source") };
    if *image_size == 0 {
        return Err(DataError::config("image_size", "expected > 0, got 0"));
    }
    let root = crate::data::resolve(base_dir, root);
    let class_names = class_names(&root)?;
    let mut files = Vec::new();
    for (c, name) in class_names.iter().enumerate() {
        for (f, is_dir) in sorted_entries(&root.join(name))? {
            if !is_dir && is_image(&f) {
                files.push((format!("{name}/{f}"), c as u32));
            }
        }
    }
    let mut list_files = Vec::new();
    let candidates: Vec<usize> = match split {
        FolderSplit::FirstFraction(f) => {
            if !(*f > 0.0 && *f < 1.0) {
                return Err(DataError::config(
                    "split.train_fraction",
                    format!("expected a value in (0, 1), got {f}"),
                ));
            }
            let mut out = Vec::new();
            for c in 0..class_names.len() as u32 {
                let members: Vec<usize> = (0..files.len()).filter(|&i| files[i].1 == c).collect();
                let n_train = ((members.len() as f64) * f).round() as usize;
                match cfg.split {
                    Split::Train => out.extend(&members[..n_train]),
                    Split::Test => out.extend(&members[n_train..]),
                    Split::All => out.extend(&members),
                }
            }
            out.sort_unstable();
            out
        }
        FolderSplit::Lists { train, test } => {
            let mut wanted: Vec<PathBuf> = Vec::new();
            if cfg.split != Split::Test {
                wanted.push(crate::data::resolve(base_dir, train));
            }
            if cfg.split != Split::Train {
                wanted.push(crate::data::resolve(base_dir, test));
            }
            // Not a binary search: "class/file" strings need not sort in class order
            // ("a b/x" < "a/x" although class "a" < "a b").
            let by_name: std::collections::HashMap<&str, usize> =
                files.iter().enumerate().map(|(i, f)| (f.0.as_str(), i)).collect();
            let mut out = Vec::new();
            for lf in wanted {
                let text = std::fs::read_to_string(&lf).map_err(|e| DataError::io(&lf, e))?;
                for (n, line) in text.lines().enumerate() {
                    let rel = line.trim().trim_start_matches("./");
                    if rel.is_empty() {
                        continue;
                    }
                    match by_name.get(rel) {
                        Some(&i) => out.push(i),
                        None => {
                            return Err(DataError::Format {
                                path: lf.clone(),
                                detail: format!(
                                    "line {}: {rel} is not an image under {}",
                                    n + 1,
                                    root.display()
                                ),
                            });
                        }
                    }
                }
                let name = lf.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                list_files.push((format!("split-list {name}"), lf));
            }
            out.sort_unstable();
            out.dedup();
            out
        }
    };
    Ok((Listing { root, class_names, files, candidates, list_files }, *image_size))
}

fn fingerprint_of(
    cfg: &DatasetConfig,
    l: &Listing,
    sel: &Selection,
    image_size: usize,
    cache: &FingerprintCache,
) -> Result<Fingerprint, DataError> {
    let mut b = FingerprintBuilder::new();
    b.param("source", "image-folder");
    b.param("image_size", image_size);
    b.param("folder_classes", format!("{:?}", l.class_names));
    match &cfg.source {
        Source::ImageFolder { split: FolderSplit::FirstFraction(f), .. } => {
            b.param("folder_split", format!("first {:016x}", f.to_bits()));
        }
        _ => {
            b.param("folder_split", "lists");
        }
    }
    selection_params(&mut b, cfg, &l.class_names, false)?;
    for (name, path) in &l.list_files {
        b.content(name, &cache.file_digest(path)?);
    }
    let digests: Vec<[u8; 32]> = sel
        .indices
        .par_iter()
        .map(|&i| cache.file_digest(&l.root.join(&l.files[i].0)))
        .collect::<Result<_, _>>()?;
    for (&i, d) in sel.indices.iter().zip(&digests) {
        b.content(&l.files[i].0, d);
    }
    Ok(b.finish())
}

fn selection(cfg: &DatasetConfig, l: &Listing) -> Result<Selection, DataError> {
    let labels: Vec<u32> = l.files.iter().map(|f| f.1).collect();
    select(&labels, &l.candidates, &l.class_names, cfg)
}

pub(crate) fn fingerprint(
    cfg: &DatasetConfig,
    base_dir: &Path,
    cache: &FingerprintCache,
) -> Result<Fingerprint, DataError> {
    let (l, size) = list(cfg, base_dir)?;
    let sel = selection(cfg, &l)?;
    fingerprint_of(cfg, &l, &sel, size, cache)
}

pub(crate) fn load(
    cfg: &DatasetConfig,
    base_dir: &Path,
    cache: &FingerprintCache,
) -> Result<Dataset, DataError> {
    let (l, size) = list(cfg, base_dir)?;
    let sel = selection(cfg, &l)?;
    let fp = fingerprint_of(cfg, &l, &sel, size, cache)?;
    cache.save()?;
    let per = 3 * size * size;
    let decoded: Vec<Vec<u8>> = sel
        .indices
        .par_iter()
        .map(|&i| decode(&l.root.join(&l.files[i].0), size))
        .collect::<Result<_, _>>()?;
    let mut images = Vec::with_capacity(decoded.len() * per);
    decoded.iter().for_each(|d| images.extend_from_slice(d));
    // The selection already picked the records: build an identity selection over them.
    let recs = Records {
        images,
        shape: [3, size, size],
        labels: sel.indices.iter().map(|&i| l.files[i].1).collect(),
        class_names: l.class_names.clone(),
    };
    let identity = Selection {
        indices: (0..sel.indices.len()).collect(),
        labels: sel.labels.clone(),
        class_names: sel.class_names.clone(),
        source_classes: sel.source_classes.clone(),
    };
    Ok(Dataset::from_records(recs, &identity, fp))
}

/// Decodes one image to RGB `C,H,W` bytes, shorter side resized to `size`, centre-cropped.
pub(crate) fn decode(path: &Path, size: usize) -> Result<Vec<u8>, DataError> {
    let reader = image::ImageReader::open(path).map_err(|e| DataError::io(path, e))?;
    let reader = reader.with_guessed_format().map_err(|e| DataError::io(path, e))?;
    let img = reader
        .decode()
        .map_err(|e| DataError::Decode { path: path.into(), detail: e.to_string() })?
        .to_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (nw, nh) = if w <= h { (size, (h * size + w / 2) / w) } else { ((w * size + h / 2) / h, size) };
    let resized = if (nw, nh) == (w, h) {
        img
    } else {
        image::imageops::resize(&img, nw as u32, nh as u32, FilterType::Triangle)
    };
    let (x0, y0) = ((nw - size) / 2, (nh - size) / 2);
    let mut out = vec![0u8; 3 * size * size];
    for y in 0..size {
        for x in 0..size {
            let p = resized.get_pixel((x0 + x) as u32, (y0 + y) as u32);
            for c in 0..3 {
                out[c * size * size + y * size + x] = p[c];
            }
        }
    }
    Ok(out)
}
