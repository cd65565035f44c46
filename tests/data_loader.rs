//! The loader and transforms on the built-in digits: determinism, coverage, exact invariants
//! (flip is a mirror, crop keeps pixels) and goldens of augmented outputs with fixed seeds.

use std::path::Path;
use std::sync::Arc;

use distillery::data::{
    Dataset, DatasetConfig, DsaConfig, DsaMode, Loader, LoaderConfig, Normalize, Source, Split,
    TransformConfig, load,
};
use distillery::data::{FamilyScope, TransformConfig as T};

fn digits(split: Split) -> Arc<Dataset> {
    Arc::new(load(&DatasetConfig::new(Source::BuiltinDigits, split), Path::new(".")).unwrap())
}

fn loader(d: &Arc<Dataset>, batch: usize, seed: u64, t: TransformConfig) -> Loader {
    Loader::new(d.clone(), LoaderConfig::train(batch, true, seed, t)).unwrap()
}

#[test]
fn same_seed_and_epoch_give_identical_batches() {
    let d = digits(Split::Train);
    let t =
        TransformConfig { dsa: Some(DsaConfig::paper(DsaMode::Multiple)), ..TransformConfig::cifar_train(8) };
    let a: Vec<_> = loader(&d, 64, 9, t.clone()).epoch(3).map(Result::unwrap).collect();
    let b: Vec<_> = loader(&d, 64, 9, t.clone()).epoch(3).map(Result::unwrap).collect();
    assert_eq!(a, b);
    let c: Vec<_> = loader(&d, 64, 9, t.clone()).epoch(4).map(Result::unwrap).collect();
    assert_ne!(a[0].indices, c[0].indices);
    let e: Vec<_> = loader(&d, 64, 10, t.clone()).epoch(3).map(Result::unwrap).collect();
    assert_ne!(a[0].indices, e[0].indices);
    // The background iterator yields exactly what direct calls build.
    let l = loader(&d, 64, 9, t);
    assert_eq!(a[5], l.batch(3, 5));
    assert_eq!(a.len(), l.n_batches());
}

#[test]
fn batches_do_not_depend_on_thread_count() {
    let d = digits(Split::Train);
    let t =
        TransformConfig { dsa: Some(DsaConfig::paper(DsaMode::Single)), ..TransformConfig::cifar_train(8) };
    let l = loader(&d, 32, 1, t);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let single = pool.install(|| l.batch(2, 7));
    assert_eq!(single, l.batch(2, 7));
}

#[test]
fn an_epoch_covers_every_image_once_with_its_label() {
    let d = digits(Split::Test);
    let l = Loader::new(
        d.clone(),
        LoaderConfig {
            shuffle: true,
            drop_last: false,
            ..LoaderConfig::train(50, true, 0, TransformConfig::eval())
        },
    )
    .unwrap();
    let batches: Vec<_> = l.epoch(0).map(Result::unwrap).collect();
    assert_eq!(batches.len(), l.n_batches());
    let mut seen: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
    for b in &batches {
        assert_eq!(b.shape[1..], [1, 8, 8]);
        assert_eq!(b.images.len(), b.shape.iter().product::<usize>());
        for (k, &i) in b.indices.iter().enumerate() {
            assert_eq!(b.labels[k], d.labels[i]);
        }
    }
    seen.sort();
    assert_eq!(seen, (0..d.len()).collect::<Vec<_>>());
    // drop_last: only full batches.
    let l = loader(&d, 50, 0, TransformConfig::eval());
    assert!(l.epoch(0).all(|b| b.unwrap().shape[0] == 50));
}

/// `drop_last: false` (the default, as PyTorch's): every image is used; a last batch of a single
/// image joins the one before (batch norm cannot normalise one image), any other remainder is
/// its own smaller batch. `drop_last: true`: full batches only.
#[test]
fn every_image_is_used_and_a_lone_last_image_joins_the_batch_before() {
    let d = digits(Split::Test);
    let n = d.len();
    let keep =
        |b: usize| Loader::new(d.clone(), LoaderConfig::train(b, false, 3, TransformConfig::eval())).unwrap();
    let sizes = |l: &Loader| l.epoch(1).map(|b| b.unwrap().shape[0]).collect::<Vec<_>>();
    // A batch size leaving one image over, with at least two batches.
    let b = (2..n / 2).find(|b| n % b == 1).expect("some batch size leaves one image");
    let l = keep(b);
    let s = sizes(&l);
    assert_eq!(s.len(), n / b);
    assert_eq!(s.len(), l.n_batches());
    assert_eq!(*s.last().unwrap(), b + 1, "the lone image joined the last batch");
    assert_eq!(s.iter().sum::<usize>(), n);
    assert!(l.merges_last_image());
    // A larger remainder is a batch of its own.
    let b = (2..n / 2).find(|b| n % b > 1).unwrap();
    let s = sizes(&keep(b));
    assert_eq!((s.len(), *s.last().unwrap()), (n.div_ceil(b), n % b));
    assert_eq!(s.iter().sum::<usize>(), n);
    // drop_last: n / b full batches, the rest unseen this epoch.
    let l = Loader::new(d.clone(), LoaderConfig::train(b, true, 3, TransformConfig::eval())).unwrap();
    let s = sizes(&l);
    assert!(s.len() == n / b && s.iter().all(|&x| x == b));
}

#[test]
fn dropping_an_epoch_early_stops_the_producer() {
    let d = digits(Split::Train);
    let l = loader(&d, 8, 0, TransformConfig::cifar_train(8));
    let mut e = l.epoch(0);
    assert!(e.next().is_some());
    drop(e); // must not hang
}

#[test]
fn flip_is_an_exact_mirror() {
    let d = digits(Split::Train);
    let l = loader(&d, 128, 4, TransformConfig { hflip: true, ..T::default() });
    let b = l.batch(0, 0);
    let (mut flipped, mut kept) = (0, 0);
    for (k, &i) in b.indices.iter().enumerate() {
        let out = &b.images[k * 64..(k + 1) * 64];
        let src: Vec<f32> = d.image(i).iter().map(|&p| p as f32 / 255.0).collect();
        let mirror: Vec<f32> = src.chunks(8).flat_map(|r| r.iter().rev().copied()).collect();
        if out == src.as_slice() && out != mirror.as_slice() {
            kept += 1;
        } else if out == mirror.as_slice() && out != src.as_slice() {
            flipped += 1;
        } else {
            assert!(out == src.as_slice(), "image {i} is neither itself nor its mirror");
        }
    }
    assert!(flipped > 30 && kept > 30, "flipped {flipped}, kept {kept}");
}

#[test]
fn pad_and_random_crop_keeps_pixels_and_zero_fills() {
    let d = digits(Split::Train);
    let t = TransformConfig {
        random_crop: Some(distillery::data::RandomCrop { size: 8, padding: 2 }),
        ..T::default()
    };
    let b = loader(&d, 64, 5, t).batch(1, 0);
    let mut offsets = std::collections::HashSet::new();
    for (k, &i) in b.indices.iter().enumerate() {
        let out = &b.images[k * 64..(k + 1) * 64];
        let src = d.image(i);
        let window = |dy: i64, dx: i64| -> Vec<f32> {
            (0..64)
                .map(|p| {
                    let (y, x) = (p as i64 / 8 + dy, p as i64 % 8 + dx);
                    if (0..8).contains(&y) && (0..8).contains(&x) {
                        src[(y * 8 + x) as usize] as f32 / 255.0
                    } else {
                        0.0
                    }
                })
                .collect()
        };
        let hit =
            (-2..=2).flat_map(|dy| (-2..=2).map(move |dx| (dy, dx))).find(|&(dy, dx)| window(dy, dx) == out);
        let (dy, dx) = hit.unwrap_or_else(|| panic!("image {i} is not a shifted window of its source"));
        offsets.insert((dy, dx));
    }
    assert!(offsets.len() > 5, "offsets drawn: {offsets:?}");
}

#[test]
fn dataset_normalisation_centres_and_scales() {
    let d = digits(Split::All);
    let b = Loader::new(d.clone(), LoaderConfig::eval(d.len(), TransformConfig::eval())).unwrap().batch(0, 0);
    let n = b.images.len() as f64;
    let mean = b.images.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = b.images.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    assert!(mean.abs() < 1e-4 && (var.sqrt() - 1.0).abs() < 1e-4, "mean {mean} std {}", var.sqrt());
}

#[test]
fn test_split_normalised_with_train_statistics() {
    let (train, test) = (digits(Split::Train), digits(Split::Test));
    let t = TransformConfig { normalize: Some(Normalize::from_stats(&train.stats)), ..T::default() };
    let b = Loader::new(test.clone(), LoaderConfig::eval(4, t)).unwrap().batch(0, 0);
    let px = test.image(b.indices[0])[10] as f32 / 255.0;
    assert_eq!(b.images[10], (px - train.stats.mean[0]) * (1.0 / train.stats.std[0]));
    assert_ne!(train.stats, test.stats);
}

#[test]
fn bad_transforms_are_config_errors() {
    let d = digits(Split::Train);
    let t = TransformConfig { center_crop: Some(9), ..T::default() };
    let e = Loader::new(d.clone(), LoaderConfig::train(4, true, 0, t)).err().unwrap().to_string();
    assert_eq!(e, "transform.center_crop: 9 does not fit images of 8x8");
    let t = TransformConfig { normalize: Some(Normalize::ImageNet), ..T::default() };
    let e = Loader::new(d, LoaderConfig::train(4, true, 0, t)).err().unwrap().to_string();
    assert_eq!(e, "transform.normalize: 3 means and 3 stds for images with 1 channels");
}

// ---------- goldens ----------

const GOLDEN: &str = "tests/fixtures/data/aug_golden.json";

fn golden_cases() -> Vec<(&'static str, TransformConfig)> {
    let mut per_image_s = DsaConfig::paper(DsaMode::Single);
    per_image_s.scope = FamilyScope::Image;
    vec![
        ("cifar_style", TransformConfig::cifar_train(8)),
        (
            "dsa_m",
            TransformConfig { dsa: Some(DsaConfig::paper(DsaMode::Multiple)), ..TransformConfig::eval() },
        ),
        (
            "dsa_s_batch",
            TransformConfig { dsa: Some(DsaConfig::paper(DsaMode::Single)), ..TransformConfig::eval() },
        ),
        ("dsa_s_image", TransformConfig { dsa: Some(per_image_s), ..TransformConfig::eval() }),
        (
            "random_resized_crop",
            TransformConfig { random_resized_crop: Some(6), hflip: true, ..TransformConfig::eval() },
        ),
        (
            "rgb_resize_crop_flip",
            TransformConfig {
                grayscale_to_rgb: true,
                resize: Some(12),
                center_crop: Some(10),
                hflip: true,
                normalize: Some(Normalize::ImageNet),
                ..T::default()
            },
        ),
    ]
}

/// Seed 3, epoch 1, the first batch of 3 images of the digits train split.
fn golden_outputs() -> serde_json::Value {
    let d = digits(Split::Train);
    let mut out = serde_json::Map::new();
    for (name, t) in golden_cases() {
        let b = loader(&d, 3, 3, t).batch(1, 0);
        let vals: Vec<f64> = b.images.iter().map(|&v| (v as f64 * 1e5).round() / 1e5).collect();
        out.insert(
            name.into(),
            serde_json::json!({ "indices": b.indices, "shape": b.shape, "images": vals }),
        );
    }
    serde_json::Value::Object(out)
}

#[test]
fn augmentation_goldens_with_fixed_seeds() {
    let got = golden_outputs();
    if std::env::var("DISTILLERY_BLESS").is_ok_and(|v| v == "1") {
        std::fs::write(GOLDEN, serde_json::to_string(&got).unwrap()).unwrap();
        eprintln!("wrote {GOLDEN}");
    }
    let want: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(GOLDEN)
            .expect("golden file missing; run with DISTILLERY_BLESS=1 once and review it"),
    )
    .unwrap();
    for (name, _) in golden_cases() {
        let (g, w) = (&got[name], &want[name]);
        assert!(!w.is_null(), "{name}: no golden; run with DISTILLERY_BLESS=1 and review the diff");
        assert_eq!(g["indices"], w["indices"], "{name}: batch order changed");
        assert_eq!(g["shape"], w["shape"], "{name}");
        let (g, w) = (g["images"].as_array().unwrap(), w["images"].as_array().unwrap());
        assert_eq!(g.len(), w.len(), "{name}");
        for (k, (a, b)) in g.iter().zip(w).enumerate() {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            // sin/cos of the libm in use may differ in the last bits.
            assert!((a - b).abs() < 1e-4, "{name} value {k}: got {a}, golden {b}");
        }
    }
}
