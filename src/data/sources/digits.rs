//! The built-in UCI optical digits (Alpaydin & Kaynak 1998, CC BY 4.0; the copy scikit-learn
//! ships), embedded so the default dataset needs no download. See src/data/builtin/README.md.
//!
//! Format: one image a line, 64 comma-separated pixel values 0..=16 (8x8, row-major), then
//! the label 0..=9. Pixels are rescaled to 0..=255 as `round(v * 255 / 16)`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::Records;
use crate::data::DataError;
use crate::data::fingerprint::hash_bytes;

static DIGITS_CSV_GZ: &[u8] = include_bytes!("../builtin/digits.csv.gz");

const NAME: &str = "builtin/digits (digits.csv.gz)";

pub(crate) fn content_digest() -> &'static [u8; 32] {
    static DIGEST: OnceLock<[u8; 32]> = OnceLock::new();
    DIGEST.get_or_init(|| hash_bytes(DIGITS_CSV_GZ))
}

pub(crate) fn read() -> Result<Records, DataError> {
    let csv = super::gunzip_if_needed(Path::new(NAME), DIGITS_CSV_GZ.to_vec())?;
    parse(Path::new(NAME), &csv)
}

pub(crate) fn parse(path: &Path, csv: &[u8]) -> Result<Records, DataError> {
    let text = std::str::from_utf8(csv).map_err(|_| format_err(path, 0, "not UTF-8 text"))?;
    let mut images = Vec::with_capacity(1797 * 64);
    let mut labels = Vec::with_capacity(1797);
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != 65 {
            return Err(format_err(
                path,
                n + 1,
                &format!("expected 65 comma-separated values, got {}", fields.len()),
            ));
        }
        for f in &fields[..64] {
            let v: u32 = f
                .trim()
                .parse()
                .map_err(|_| format_err(path, n + 1, &format!("pixel {f:?} is not an integer")))?;
            if v > 16 {
                return Err(format_err(path, n + 1, &format!("pixel {v} outside 0..=16")));
            }
            images.push(((v * 255 + 8) / 16) as u8);
        }
        let label: i64 =
            fields[64].trim().parse().map_err(|_| format_err(path, n + 1, "label is not an integer"))?;
        if !(0..10).contains(&label) {
            return Err(DataError::LabelOutOfRange {
                path: path.to_path_buf(),
                record: labels.len(),
                label,
                n_classes: 10,
            });
        }
        labels.push(label as u32);
    }
    Ok(Records { images, shape: [1, 8, 8], labels, class_names: (0..10).map(|i| i.to_string()).collect() })
}

fn format_err(path: &Path, line: usize, detail: &str) -> DataError {
    DataError::Format { path: PathBuf::from(path), detail: format!("line {line}: {detail}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_digits_have_the_documented_shape_and_first_record() {
        let r = read().unwrap();
        assert_eq!(r.labels.len(), 1797);
        assert_eq!(r.images.len(), 1797 * 64);
        // First line of digits.csv.gz: 0,0,5,13,9,1,0,0,... label 0.
        assert_eq!(&r.images[..6], &[0, 0, 80, 207, 143, 16]);
        assert_eq!(r.labels[..3], [0, 1, 2]);
        let mut counts = [0usize; 10];
        r.labels.iter().for_each(|&l| counts[l as usize] += 1);
        // Class sizes of the UCI test set copy scikit-learn ships.
        assert_eq!(counts, [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]);
    }

    #[test]
    fn bad_label_is_a_typed_error_naming_the_file() {
        let line = format!("{}11\n", "0,".repeat(64));
        let e = parse(Path::new("x.csv"), line.as_bytes()).unwrap_err().to_string();
        assert_eq!(e, "x.csv: record 0: label 11 out of range (the dataset has 10 classes)");
    }
}
