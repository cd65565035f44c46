//! The CIFAR-10 / CIFAR-100 "binary version" (Krizhevsky 2009).
//!
//! CIFAR-10 record: 1 label byte then 3072 pixel bytes (1024 R, 1024 G, 1024 B; row-major
//! 32x32), i.e. already `C,H,W`. CIFAR-100 record: coarse label byte, fine label byte, then
//! the same 3072 bytes.

use std::path::{Path, PathBuf};

use super::{Records, first_existing, require_dir};
use crate::data::{Cifar100Labels, DataError, Split};

const PIXELS: usize = 3 * 32 * 32;

pub const CIFAR10_CLASSES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

pub const CIFAR100_CLASSES: [&str; 100] = [
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
];

pub const CIFAR100_COARSE_CLASSES: [&str; 20] = [
    "aquatic_mammals",
    "fish",
    "flowers",
    "food_containers",
    "fruit_and_vegetables",
    "household_electrical_devices",
    "household_furniture",
    "insects",
    "large_carnivores",
    "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores",
    "medium_mammals",
    "non-insect_invertebrates",
    "people",
    "reptiles",
    "small_mammals",
    "trees",
    "vehicles_1",
    "vehicles_2",
];

/// The directory itself, or the child the official archive unpacks to.
fn data_dir(path: &Path, child: &str, marker: &str) -> Result<PathBuf, DataError> {
    require_dir(path, "a CIFAR binary-version directory")?;
    if !path.join(marker).is_file() && path.join(child).join(marker).is_file() {
        return Ok(path.join(child));
    }
    Ok(path.to_path_buf())
}

pub(crate) fn files_cifar10(path: &Path, split: Split) -> Result<Vec<(String, PathBuf)>, DataError> {
    let dir = data_dir(path, "cifar-10-batches-bin", "test_batch.bin")?;
    let mut names: Vec<String> = Vec::new();
    if split != Split::Test {
        names.extend((1..=5).map(|i| format!("data_batch_{i}.bin")));
    }
    if split != Split::Train {
        names.push("test_batch.bin".into());
    }
    let mut out = Vec::new();
    for n in names {
        out.push((n.clone(), first_existing(&[dir.join(&n)], "a CIFAR-10 batch file")?));
    }
    if dir.join("batches.meta.txt").is_file() {
        out.push(("batches.meta.txt".into(), dir.join("batches.meta.txt")));
    }
    Ok(out)
}

pub(crate) fn files_cifar100(path: &Path, split: Split) -> Result<Vec<(String, PathBuf)>, DataError> {
    let dir = data_dir(path, "cifar-100-binary", "test.bin")?;
    let names: &[&str] = match split {
        Split::Train => &["train.bin"],
        Split::Test => &["test.bin"],
        Split::All => &["train.bin", "test.bin"],
    };
    let mut out = Vec::new();
    for n in names {
        out.push((n.to_string(), first_existing(&[dir.join(n)], "a CIFAR-100 data file")?));
    }
    for meta in ["fine_label_names.txt", "coarse_label_names.txt"] {
        if dir.join(meta).is_file() {
            out.push((meta.into(), dir.join(meta)));
        }
    }
    Ok(out)
}

fn names_from(file: Option<&PathBuf>, defaults: &[&str]) -> Result<Vec<String>, DataError> {
    let Some(file) = file else {
        return Ok(defaults.iter().map(|s| s.to_string()).collect());
    };
    let text = std::fs::read_to_string(file).map_err(|e| DataError::io(file, e))?;
    let names: Vec<String> =
        text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
    if names.len() != defaults.len() {
        return Err(DataError::Format {
            path: file.clone(),
            detail: format!("{} class names, expected {}", names.len(), defaults.len()),
        });
    }
    Ok(names)
}

pub(crate) fn class_names_cifar10(files: &[(String, PathBuf)]) -> Result<Vec<String>, DataError> {
    let meta = files.iter().find(|f| f.0 == "batches.meta.txt").map(|f| &f.1);
    names_from(meta, &CIFAR10_CLASSES)
}

pub(crate) fn class_names_cifar100(
    files: &[(String, PathBuf)],
    labels: Cifar100Labels,
) -> Result<Vec<String>, DataError> {
    let (meta_name, defaults): (&str, &[&str]) = match labels {
        Cifar100Labels::Fine => ("fine_label_names.txt", &CIFAR100_CLASSES),
        Cifar100Labels::Coarse => ("coarse_label_names.txt", &CIFAR100_COARSE_CLASSES),
    };
    names_from(files.iter().find(|f| f.0 == meta_name).map(|f| &f.1), defaults)
}

pub(crate) fn read_cifar10(path: &Path, split: Split) -> Result<Records, DataError> {
    let files = files_cifar10(path, split)?;
    let class_names = class_names_cifar10(&files)?;
    read_batches(&files, 1, 0, class_names)
}

pub(crate) fn read_cifar100(path: &Path, labels: Cifar100Labels, split: Split) -> Result<Records, DataError> {
    let files = files_cifar100(path, split)?;
    // Record layout: coarse label byte, then fine label byte.
    let label_at = match labels {
        Cifar100Labels::Fine => 1,
        Cifar100Labels::Coarse => 0,
    };
    let class_names = class_names_cifar100(&files, labels)?;
    read_batches(&files, 2, label_at, class_names)
}

/// Reads the `.bin` files among `files`, in order.
fn read_batches(
    files: &[(String, PathBuf)],
    header: usize,
    label_at: usize,
    class_names: Vec<String>,
) -> Result<Records, DataError> {
    let mut out = Records { images: Vec::new(), shape: [3, 32, 32], labels: Vec::new(), class_names };
    for (_, file) in files.iter().filter(|f| f.0.ends_with(".bin")) {
        let bytes = std::fs::read(file).map_err(|e| DataError::io(file, e))?;
        parse_records(file, &bytes, header, label_at, &mut out)?;
    }
    Ok(out)
}

/// Appends the records of one file: `header` label bytes then 3072 pixels each.
pub(crate) fn parse_records(
    path: &Path,
    b: &[u8],
    header: usize,
    label_at: usize,
    out: &mut Records,
) -> Result<(), DataError> {
    let rec = header + PIXELS;
    if b.is_empty() || !b.len().is_multiple_of(rec) {
        return Err(DataError::Truncated {
            path: path.into(),
            detail: format!(
                "{} bytes is not a whole number of {rec}-byte records ({} complete)",
                b.len(),
                b.len() / rec
            ),
        });
    }
    let n_classes = out.class_names.len();
    for (i, r) in b.chunks_exact(rec).enumerate() {
        let label = r[label_at] as usize;
        if label >= n_classes {
            return Err(DataError::LabelOutOfRange {
                path: path.into(),
                record: i,
                label: label as i64,
                n_classes,
            });
        }
        out.labels.push(label as u32);
        out.images.extend_from_slice(&r[header..]);
    }
    Ok(())
}
