//! IDX files (LeCun's MNIST format, also used by Fashion-MNIST), plain or gzipped.
//!
//! Images: magic 0x00000803 (u8, 3 dims), count, rows, cols, then count*rows*cols bytes.
//! Labels: magic 0x00000801 (u8, 1 dim), count, then count bytes.

use std::path::{Path, PathBuf};

use super::{Records, first_existing, read_maybe_gz, require_dir};
use crate::data::{DataError, IdxFlavor, Split};

/// Class names of Fashion-MNIST, in label order (zalandoresearch/fashion-mnist README).
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

fn stems(split: Split) -> &'static [&'static str] {
    match split {
        Split::Train => &["train"],
        Split::Test => &["t10k"],
        Split::All => &["train", "t10k"],
    }
}

fn find(dir: &Path, stem: &str, kind: &str) -> Result<PathBuf, DataError> {
    let (a, b) = if kind == "images" { ("images", "idx3") } else { ("labels", "idx1") };
    let candidates: Vec<PathBuf> = [
        format!("{stem}-{a}-{b}-ubyte.gz"),
        format!("{stem}-{a}-{b}-ubyte"),
        format!("{stem}-{a}.{b}-ubyte"),
        format!("{stem}-{a}.{b}-ubyte.gz"),
    ]
    .iter()
    .map(|n| dir.join(n))
    .collect();
    first_existing(&candidates, &format!("the {stem} {kind} IDX file"))
}

pub(crate) fn files(dir: &Path, split: Split) -> Result<Vec<(String, PathBuf)>, DataError> {
    require_dir(dir, "a directory with IDX files (train-images-idx3-ubyte[.gz], ...)")?;
    let mut out = Vec::new();
    for stem in stems(split) {
        for kind in ["images", "labels"] {
            out.push((format!("{stem}-{kind}"), find(dir, stem, kind)?));
        }
    }
    Ok(out)
}

pub(crate) fn read(dir: &Path, flavor: IdxFlavor, split: Split) -> Result<Records, DataError> {
    require_dir(dir, "a directory with IDX files (train-images-idx3-ubyte[.gz], ...)")?;
    let class_names: Vec<String> = match flavor {
        IdxFlavor::Mnist => (0..10).map(|i| i.to_string()).collect(),
        IdxFlavor::FashionMnist => FASHION_MNIST_CLASSES.iter().map(|s| s.to_string()).collect(),
    };
    let mut out = Records { images: Vec::new(), shape: [1, 0, 0], labels: Vec::new(), class_names };
    for stem in stems(split) {
        let ip = find(dir, stem, "images")?;
        let lp = find(dir, stem, "labels")?;
        let (images, rows, cols) = parse_images(&ip, &read_maybe_gz(&ip)?)?;
        let labels = parse_labels(&lp, &read_maybe_gz(&lp)?, out.class_names.len())?;
        let n = images.len() / (rows * cols);
        if labels.len() != n {
            return Err(DataError::Format {
                path: lp,
                detail: format!("{} labels for {n} images in {}", labels.len(), ip.display()),
            });
        }
        if out.shape[1] != 0 && (out.shape[1], out.shape[2]) != (rows, cols) {
            return Err(DataError::Format {
                path: ip,
                detail: format!(
                    "images are {rows}x{cols}, the train split's are {}x{}",
                    out.shape[1], out.shape[2]
                ),
            });
        }
        out.shape = [1, rows, cols];
        out.images.extend_from_slice(&images);
        out.labels.extend(labels);
    }
    Ok(out)
}

fn be_u32(b: &[u8], at: usize) -> usize {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize
}

pub(crate) fn parse_images(path: &Path, b: &[u8]) -> Result<(Vec<u8>, usize, usize), DataError> {
    if b.len() < 16 {
        return Err(DataError::Truncated {
            path: path.into(),
            detail: format!("{} bytes, shorter than the 16-byte IDX image header", b.len()),
        });
    }
    if be_u32(b, 0) != 0x0803 {
        return Err(DataError::Format {
            path: path.into(),
            detail: format!("not an IDX image file (magic {:#010x}, expected 0x00000803)", be_u32(b, 0)),
        });
    }
    let (n, rows, cols) = (be_u32(b, 4), be_u32(b, 8), be_u32(b, 12));
    let want = n * rows * cols;
    if b.len() - 16 < want {
        return Err(DataError::Truncated {
            path: path.into(),
            detail: format!(
                "header announces {n} images of {rows}x{cols} ({want} bytes), only {} bytes follow",
                b.len() - 16
            ),
        });
    }
    Ok((b[16..16 + want].to_vec(), rows, cols))
}

pub(crate) fn parse_labels(path: &Path, b: &[u8], n_classes: usize) -> Result<Vec<u32>, DataError> {
    if b.len() < 8 {
        return Err(DataError::Truncated {
            path: path.into(),
            detail: format!("{} bytes, shorter than the 8-byte IDX label header", b.len()),
        });
    }
    if be_u32(b, 0) != 0x0801 {
        return Err(DataError::Format {
            path: path.into(),
            detail: format!("not an IDX label file (magic {:#010x}, expected 0x00000801)", be_u32(b, 0)),
        });
    }
    let n = be_u32(b, 4);
    if b.len() - 8 < n {
        return Err(DataError::Truncated {
            path: path.into(),
            detail: format!("header announces {n} labels, only {} bytes follow", b.len() - 8),
        });
    }
    b[8..8 + n]
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            if (l as usize) < n_classes {
                Ok(l as u32)
            } else {
                Err(DataError::LabelOutOfRange { path: path.into(), record: i, label: l as i64, n_classes })
            }
        })
        .collect()
}
