//! Class filters, per-class and fractional subsets, and the seeded holdout split. Pure
//! functions of labels and config: the same inputs always pick the same records.

use super::rng::Rng;
use super::{ClassRef, DataError, DatasetConfig, Holdout, Split};

/// The records a selection keeps, with labels renumbered to the selected classes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Selection {
    /// Indices into the source's records, ascending.
    pub indices: Vec<usize>,
    /// New label of each kept record.
    pub labels: Vec<u32>,
    pub class_names: Vec<String>,
    /// For each new label, the class index in the source.
    pub source_classes: Vec<u32>,
}

// Stream tags so the holdout, per_class and fraction choices never share random numbers.
const TAG_HOLDOUT: u64 = 1;
const TAG_PER_CLASS: u64 = 2;
const TAG_FRACTION: u64 = 3;

pub(crate) fn validate(cfg: &DatasetConfig) -> Result<(), DataError> {
    if let Some(f) = cfg.fraction
        && !(f > 0.0 && f <= 1.0)
    {
        return Err(DataError::config("fraction", format!("expected a value in (0, 1], got {f}")));
    }
    if cfg.per_class == Some(0) {
        return Err(DataError::config("per_class", "expected > 0, got 0"));
    }
    let h = cfg.holdout.fraction;
    if !(h > 0.0 && h < 1.0) {
        return Err(DataError::config("holdout.fraction", format!("expected a value in (0, 1), got {h}")));
    }
    if let Some(classes) = &cfg.classes
        && classes.is_empty()
    {
        return Err(DataError::config("classes", "expected at least one class"));
    }
    Ok(())
}

/// Resolves class references to source class indices, in the order given.
pub(crate) fn resolve_classes(refs: Option<&[ClassRef]>, names: &[String]) -> Result<Vec<u32>, DataError> {
    let Some(refs) = refs else {
        return Ok((0..names.len() as u32).collect());
    };
    let valid = || {
        if names.len() <= 20 {
            names.join(", ")
        } else {
            format!("0..{} or a class name such as {}", names.len() - 1, names[..3].join(", "))
        }
    };
    let mut out = Vec::with_capacity(refs.len());
    for r in refs {
        let idx = match r {
            ClassRef::Index(i) if (*i as usize) < names.len() => *i,
            ClassRef::Index(i) => {
                return Err(DataError::UnknownClass { class: i.to_string(), valid: valid() });
            }
            ClassRef::Name(n) => match names.iter().position(|x| x == n) {
                Some(i) => i as u32,
                None => {
                    return Err(DataError::UnknownClass { class: n.clone(), valid: valid() });
                }
            },
        };
        if out.contains(&idx) {
            return Err(DataError::config("classes", format!("class {} listed twice", names[idx as usize])));
        }
        out.push(idx);
    }
    Ok(out)
}

/// Splits records into (train, test) by a stratified seeded holdout.
pub(crate) fn holdout_split(labels: &[u32], n_classes: usize, split: Split, holdout: Holdout) -> Vec<usize> {
    if split == Split::All {
        return (0..labels.len()).collect();
    }
    let mut is_test = vec![false; labels.len()];
    for (c, mut members) in by_class(labels, n_classes).into_iter().enumerate() {
        let n_test = ((members.len() as f64) * holdout.fraction).round() as usize;
        Rng::derive(&[holdout.seed, TAG_HOLDOUT, c as u64]).shuffle(&mut members);
        for &i in &members[..n_test] {
            is_test[i] = true;
        }
    }
    let want_test = split == Split::Test;
    (0..labels.len()).filter(|&i| is_test[i] == want_test).collect()
}

/// Applies classes, per_class and fraction to the `candidates` (record indices of the split).
pub(crate) fn select(
    labels: &[u32],
    candidates: &[usize],
    names: &[String],
    cfg: &DatasetConfig,
) -> Result<Selection, DataError> {
    let classes = resolve_classes(cfg.classes.as_deref(), names)?;
    let mut new_label = vec![u32::MAX; names.len()];
    for (new, &old) in classes.iter().enumerate() {
        new_label[old as usize] = new as u32;
    }
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); classes.len()];
    for &i in candidates {
        let l = new_label[labels[i] as usize];
        if l != u32::MAX {
            members[l as usize].push(i);
        }
    }
    for (new, m) in members.iter_mut().enumerate() {
        let old = classes[new] as u64;
        if let Some(n) = cfg.per_class {
            if m.len() < n {
                return Err(DataError::NotEnough {
                    class: names[old as usize].clone(),
                    wanted: n,
                    available: m.len(),
                });
            }
            Rng::derive(&[cfg.seed, TAG_PER_CLASS, old]).shuffle(m);
            m.truncate(n);
            m.sort_unstable();
        }
        if let Some(f) = cfg.fraction {
            let keep = (((m.len() as f64) * f).round() as usize).clamp(1.min(m.len()), m.len());
            Rng::derive(&[cfg.seed, TAG_FRACTION, old]).shuffle(m);
            m.truncate(keep);
            m.sort_unstable();
        }
    }
    let mut kept: Vec<(usize, u32)> =
        members.iter().enumerate().flat_map(|(c, m)| m.iter().map(move |&i| (i, c as u32))).collect();
    kept.sort_unstable();
    Ok(Selection {
        indices: kept.iter().map(|k| k.0).collect(),
        labels: kept.iter().map(|k| k.1).collect(),
        class_names: classes.iter().map(|&c| names[c as usize].clone()).collect(),
        source_classes: classes,
    })
}

fn by_class(labels: &[u32], n_classes: usize) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new(); n_classes];
    for (i, &l) in labels.iter().enumerate() {
        out[l as usize].push(i);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Source, Split};

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| i.to_string()).collect()
    }

    fn labels() -> Vec<u32> {
        // 3 classes, 10 records each, interleaved.
        (0..30).map(|i| (i % 3) as u32).collect()
    }

    fn cfg() -> DatasetConfig {
        DatasetConfig::new(Source::BuiltinDigits, Split::All)
    }

    #[test]
    fn classes_renumber_in_given_order() {
        let mut c = cfg();
        c.classes = Some(vec![ClassRef::Index(2), ClassRef::Name("0".into())]);
        let all: Vec<usize> = (0..30).collect();
        let s = select(&labels(), &all, &names(3), &c).unwrap();
        assert_eq!(s.class_names, vec!["2", "0"]);
        assert_eq!(s.source_classes, vec![2, 0]);
        assert_eq!(s.indices.len(), 20);
        for (&i, &l) in s.indices.iter().zip(&s.labels) {
            assert_eq!(s.source_classes[l as usize], labels()[i]);
        }
    }

    #[test]
    fn per_class_is_seeded_and_exact() {
        let mut c = cfg();
        c.per_class = Some(4);
        let all: Vec<usize> = (0..30).collect();
        let a = select(&labels(), &all, &names(3), &c).unwrap();
        assert_eq!(a.indices.len(), 12);
        for k in 0..3 {
            assert_eq!(a.labels.iter().filter(|&&l| l == k).count(), 4);
        }
        assert_eq!(a, select(&labels(), &all, &names(3), &c).unwrap());
        c.seed = 1;
        assert_ne!(a.indices, select(&labels(), &all, &names(3), &c).unwrap().indices);
    }

    #[test]
    fn per_class_too_large_names_the_class() {
        let mut c = cfg();
        c.per_class = Some(11);
        let all: Vec<usize> = (0..30).collect();
        let e = select(&labels(), &all, &names(3), &c).unwrap_err().to_string();
        assert_eq!(e, "per_class: class \"0\" has 10 images in this split, 11 requested; lower per_class");
    }

    #[test]
    fn fraction_keeps_rounded_share_per_class() {
        let mut c = cfg();
        c.fraction = Some(0.25);
        let all: Vec<usize> = (0..30).collect();
        let s = select(&labels(), &all, &names(3), &c).unwrap();
        assert_eq!(s.indices.len(), 9); // round(2.5) = 3 per class
    }

    #[test]
    fn unknown_class_lists_valid_ones() {
        let mut c = cfg();
        c.classes = Some(vec![ClassRef::Name("cat".into())]);
        let e = select(&labels(), &[0], &names(3), &c).unwrap_err().to_string();
        assert_eq!(e, "classes: unknown class \"cat\"; valid: 0, 1, 2");
        c.classes = Some(vec![ClassRef::Index(3)]);
        assert!(select(&labels(), &[0], &names(3), &c).is_err());
    }

    #[test]
    fn holdout_is_complementary_and_stratified() {
        let l = labels();
        let h = Holdout { fraction: 0.3, seed: 5 };
        let train = holdout_split(&l, 3, Split::Train, h);
        let test = holdout_split(&l, 3, Split::Test, h);
        assert_eq!(train.len() + test.len(), 30);
        assert!(train.iter().all(|i| !test.contains(i)));
        for k in 0..3 {
            assert_eq!(test.iter().filter(|&&i| l[i] == k).count(), 3);
        }
        assert_ne!(test, holdout_split(&l, 3, Split::Test, Holdout { fraction: 0.3, seed: 6 }));
    }

    #[test]
    fn bad_fraction_is_a_config_error() {
        let mut c = cfg();
        c.fraction = Some(1.5);
        assert_eq!(validate(&c).unwrap_err().to_string(), "fraction: expected a value in (0, 1], got 1.5");
    }

    proptest::proptest! {
        #[test]
        fn selections_keep_candidates_labels_and_shares(
            labels in proptest::collection::vec(0u32..4, 1..200),
            seed in 0u64..1000,
            frac in 0.05f64..1.0,
        ) {
            let candidates = holdout_split(&labels, 4, Split::Train, Holdout { fraction: 0.3, seed });
            let mut c = cfg();
            c.fraction = Some(frac);
            c.seed = seed;
            c.classes = Some(vec![ClassRef::Index(2), ClassRef::Index(0), ClassRef::Index(3)]);
            let s = select(&labels, &candidates, &names(4), &c).unwrap();
            proptest::prop_assert!(s.indices.windows(2).all(|w| w[0] < w[1]));
            for (&i, &l) in s.indices.iter().zip(&s.labels) {
                proptest::prop_assert!(candidates.contains(&i));
                proptest::prop_assert_eq!(labels[i], s.source_classes[l as usize]);
            }
            for (new, &old) in s.source_classes.iter().enumerate() {
                let n = candidates.iter().filter(|&&i| labels[i] == old).count();
                let want = if n == 0 { 0 } else { (((n as f64) * frac).round() as usize).clamp(1, n) };
                proptest::prop_assert_eq!(s.labels.iter().filter(|&&l| l as usize == new).count(), want);
            }
        }
    }
}
