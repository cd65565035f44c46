//! Mutation fuzzing of the spec loader and graph build, on stable Rust (docs/fuzzing.md).
//!
//! `fuzz_spec_loader` mutates the seed corpus (every file of tests/specs/**, experiments/*.yaml
//! and tests/fuzz/crashes/*.yaml) with YAML-aware mutations and runs each input through what
//! `distillery validate`/`plan`/`graph` run: `spec::load_str`, `cli::check`, `plan::plan`,
//! `cli::render_plan`, the diagnostics renderer and the dot/mermaid renderers. It fails when an
//! input panics, aborts (stack overflow, allocation failure) or runs longer than the hang limit.
//!
//! Aborts and hangs cannot be caught in-process, so the fuzz loop runs in child processes (this
//! test binary re-executed on the ignored `fuzz_worker` test) under a 4 GiB address-space limit;
//! each input is written to the spec file before it runs, so the input that killed a child is
//! on disk. Every crash is minimised (line, then byte deletion) and written to
//! target/fuzz-found/. `saved_crashes_do_not_crash` runs every input in tests/fuzz/crashes/.
//!
//! Environment: `DISTILLERY_FUZZ_SECONDS` (default 10), `DISTILLERY_FUZZ_SEED` (default 1: the
//! same inputs in the same order on every machine), `DISTILLERY_FUZZ_JOBS` (parallel workers,
//! default: the cores, at most 2), `DISTILLERY_FUZZ_HANG_SECONDS` (default 10),
//! `DISTILLERY_FUZZ_OUT` (default target/fuzz-found).

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashSet};
use std::hash::{Hash, Hasher};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use std::{env, fs, thread};

use distillery::data::FingerprintCache;
use distillery::{cli, diag, graph, plan, spec};

/// Inputs larger than this are cut: big inputs are slow and rarely find more.
const MAX_INPUT: usize = 2 << 20;
/// Address-space limit of a worker, so that a runaway allocation fails fast (an abort the
/// fuzzer reports) instead of taking the machine's memory.
const WORKER_MEMORY_KIB: u64 = 4 << 20;
/// The stack of the thread that runs inputs: the size of a real main thread's (ulimit -s), so a
/// stack overflow here is one in `distillery` too.
const TARGET_STACK: usize = 8 << 20;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn env_num(name: &str, default: u64) -> u64 {
    match env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?}: expected a whole number")),
        Err(_) => default,
    }
}

fn hang_limit() -> Duration {
    Duration::from_secs(env_num("DISTILLERY_FUZZ_HANG_SECONDS", 10).max(1))
}

// ---- the target ------------------------------------------------------------------------------

/// Runs one input through the loader, graph build, planner and renderers, as the CLI would.
/// Returns a digest of the outcome (ok or which diagnostics, how many nodes) for the fuzzer's
/// feedback: an input with an outcome not seen before joins the pool of inputs to mutate.
fn run_target(spec_file: &Path, input: &[u8], cache: &FingerprintCache) -> u64 {
    self_test_hooks(input);
    let mut h = DefaultHasher::new();
    let text = String::from_utf8_lossy(input);
    match spec::load_str(spec_file, &text) {
        Ok(exp) => (0u8, exp.nodes.len().min(64)).hash(&mut h),
        Err(diags) => {
            1u8.hash(&mut h);
            codes(&diags).hash(&mut h);
        }
    }
    match cli::check(spec_file, cache) {
        Ok((exp, g)) => {
            let entries = plan::plan(&g, &plan::EmptyStore, &plan::Selection::default());
            (2u8, entries.len().min(64)).hash(&mut h);
            std::hint::black_box(cli::render_plan(&exp, &entries));
            if let Some(first) = entries.first() {
                let forced = plan::plan(
                    &g,
                    &plan::EmptyStore,
                    &plan::Selection { force: vec![first.node.clone()], ..plan::Selection::default() },
                );
                std::hint::black_box(cli::render_plan(&exp, &forced));
            }
            std::hint::black_box(graph::to_dot(&g, &exp.name));
            std::hint::black_box(graph::to_mermaid(&g));
        }
        Err(diags) => {
            3u8.hash(&mut h);
            codes(&diags).hash(&mut h);
            std::hint::black_box(diag::render(&diags, spec_file.parent()));
        }
    }
    h.finish()
}

fn codes(diags: &[diag::Diagnostic]) -> Vec<&'static str> {
    let mut c: Vec<&'static str> = diags.iter().map(|d| d.code.as_str()).collect();
    c.sort_unstable();
    c.dedup();
    c
}

/// `DISTILLERY_FUZZ_SELF_TEST=1` makes marked inputs crash, so the harness's own test can check
/// that panics, aborts and hangs are caught, reported and minimised.
fn self_test_hooks(input: &[u8]) {
    static ON: OnceLock<bool> = OnceLock::new();
    if !*ON.get_or_init(|| env::var_os("DISTILLERY_FUZZ_SELF_TEST").is_some()) {
        return;
    }
    let has = |needle: &[u8]| input.windows(needle.len()).any(|w| w == needle);
    if has(b"self-test-panic") {
        panic!("self-test panic");
    }
    if has(b"self-test-abort") {
        std::process::abort();
    }
    if has(b"self-test-hang") {
        loop {
            thread::sleep(Duration::from_secs(1));
        }
    }
}

// ---- the seed corpus -------------------------------------------------------------------------

/// Every seed: tests/specs/** (recursively), experiments/*.yaml, tests/fuzz/corpus/*.yaml and
/// the saved crashes, sorted by path so that a seed gives the same inputs everywhere.
fn seed_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>, recurse: bool) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                if recurse {
                    walk(&p, out, true);
                }
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                out.push(p);
            }
        }
    }
    let r = root();
    let mut files = Vec::new();
    walk(&r.join("tests/specs"), &mut files, true);
    walk(&r.join("experiments"), &mut files, false);
    walk(&r.join("tests/fuzz/corpus"), &mut files, false);
    walk(&r.join("tests/fuzz/crashes"), &mut files, false);
    files.sort();
    files
}

fn saved_crashes() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(root().join("tests/fuzz/crashes"))
        .map(|rd| {
            rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "yaml")).collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The worker's folder: `case/spec.yaml` is the input, `parts/` holds tests/specs/parts so the
/// seeds' `include: ../parts/...` still resolve.
fn lay_out_work_dir(dir: &Path) {
    fs::create_dir_all(dir.join("case")).unwrap();
    fs::create_dir_all(dir.join("found")).unwrap();
    let parts = dir.join("parts");
    fs::create_dir_all(&parts).unwrap();
    for e in fs::read_dir(root().join("tests/specs/parts")).unwrap().flatten() {
        fs::copy(e.path(), parts.join(e.file_name())).unwrap();
    }
}

// ---- mutations -------------------------------------------------------------------------------

/// splitmix64: small, fast, and the same sequence on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

const EXTREME_NUMBERS: [&str; 22] = [
    "0",
    "-1",
    "1",
    "-0.0",
    "1e300",
    "-1e300",
    "1e-300",
    "4294967295",
    "4294967296",
    "2147483648",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "99999999999999999999",
    "65536",
    "1000000000",
    ".nan",
    ".inf",
    "-.inf",
    "0x7fffffff",
    "0o777",
    "1_000_000",
];

const YAML_TOKENS: [&str; 30] = [
    "~",
    "null",
    "\"\"",
    "''",
    "[]",
    "{}",
    "true",
    "-",
    ": ",
    ", ",
    "[",
    "]",
    "{",
    "}",
    "&a ",
    "*a",
    "<<: *a",
    "!!str ",
    "!!binary ",
    "!tag ",
    "? ",
    "---\n",
    "...\n",
    "%YAML 1.2\n---\n",
    "|\n  ",
    ">-\n  ",
    "\"\\u0000\"",
    "# ",
    "\t",
    "\"\\ud800\"",
];

/// Levels of nesting the mutations write (deeper than about 20,000 crashed the loader until
/// `too_deep_at` bounded nesting before parsing: tests/fuzz/crashes/).
const NESTING_DEPTHS: [usize; 7] = [16, 128, 129, 1000, 5000, 10_000, 100_000];

/// Paths for `include:`, `path:` and the like: the input itself, its folder, special files.
const PATHS: [&str; 9] =
    ["spec.yaml", "./spec.yaml", "../case/spec.yaml", "../parts/base.yaml", ".", "..", "/dev/null", "/", ""];

struct Mutator {
    rng: Rng,
    seeds: Vec<Vec<u8>>,
    /// Identifiers and keys found in the seeds: names to rename references to, keys to add.
    words: Vec<Vec<u8>>,
}

fn lines_of(input: &[u8]) -> Vec<Vec<u8>> {
    input.split_inclusive(|&b| b == b'\n').map(<[u8]>::to_vec).collect()
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'/' || b == b'.'
}

fn is_number_byte(b: u8) -> bool {
    b.is_ascii_digit() || b == b'.' || b == b'-' || b == b'e' || b == b'+'
}

/// Byte ranges of maximal runs of `pred` that start with a byte of `first`.
fn runs(input: &[u8], pred: fn(u8) -> bool, first: fn(u8) -> bool) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < input.len() {
        if pred(input[i]) && (i == 0 || !pred(input[i - 1])) {
            let start = i;
            while i < input.len() && pred(input[i]) {
                i += 1;
            }
            if first(input[start]) {
                out.push((start, i));
            }
        } else {
            i += 1;
        }
    }
    out
}

fn words_in(input: &[u8]) -> Vec<(usize, usize)> {
    runs(input, is_word_byte, |b| b.is_ascii_alphabetic() || b == b'_')
}

fn numbers_in(input: &[u8]) -> Vec<(usize, usize)> {
    runs(input, is_number_byte, |b| b.is_ascii_digit() || b == b'-')
}

/// Where scalar values are: after `: ` or `[`/`,` up to the next `,`, `]`, `}` or line end.
fn values_in(input: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for i in 0..input.len() {
        let starts = match input[i] {
            b':' => input.get(i + 1) == Some(&b' '),
            b'[' | b',' => true,
            _ => false,
        };
        if !starts {
            continue;
        }
        let mut s = i + 1;
        while s < input.len() && input[s] == b' ' {
            s += 1;
        }
        let mut e = s;
        while e < input.len() && !matches!(input[e], b',' | b']' | b'}' | b'\n' | b'{' | b'[') {
            e += 1;
        }
        if e > s {
            out.push((s, e));
        }
    }
    out
}

fn splice(input: &mut Vec<u8>, (s, e): (usize, usize), with: &[u8]) {
    input.splice(s..e, with.iter().copied());
}

impl Mutator {
    fn new(seed: u64, seeds: Vec<Vec<u8>>) -> Mutator {
        let mut words: Vec<Vec<u8>> =
            seeds.iter().flat_map(|s| words_in(s).into_iter().map(|(a, b)| s[a..b].to_vec())).collect();
        words.sort();
        words.dedup();
        Mutator { rng: Rng(seed), seeds, words }
    }

    /// A new input: 1 to 4 stacked mutations of `base`.
    fn mutate(&mut self, base: &[u8]) -> Vec<u8> {
        let mut input = base.to_vec();
        let n = 1 + (self.rng.next().trailing_zeros() as usize).min(3);
        for _ in 0..n {
            self.mutate_once(&mut input);
            input.truncate(MAX_INPUT);
        }
        input
    }

    fn long_string(&mut self) -> Vec<u8> {
        let n = *self.rng.pick(&[256, 4096, 65_537, 100_000]);
        let c = *self.rng.pick(&[b'a', b'x', b'-', b' ', b'9', 0xc3]);
        if c == 0xc3 { "é".repeat(n / 2).into_bytes() } else { vec![c; n] }
    }

    fn nesting(&mut self) -> Vec<u8> {
        let depth = *self.rng.pick(&NESTING_DEPTHS);
        let (open, close): (&[u8], &[u8]) =
            *self.rng.pick(&[(&b"["[..], &b"]"[..]), (b"{a: ", b"}"), (b"- ", b""), (b"[{x: ", b"}]")]);
        let mut v = open.repeat(depth);
        if self.rng.chance(2) {
            v.extend(close.repeat(depth));
        }
        v
    }

    fn mutate_once(&mut self, input: &mut Vec<u8>) {
        let len = input.len();
        match self.rng.below(18) {
            // bytes: flip a bit, set a YAML-significant byte, delete or insert a short range
            0 if len > 0 => {
                let i = self.rng.below(len);
                input[i] ^= 1 << self.rng.below(8);
            }
            1 if len > 0 => {
                let i = self.rng.below(len);
                input[i] = *self.rng.pick(b"[]{}:,-#&*!|>'\"\n\t ~?%@`\\\0\r");
            }
            2 if len > 0 => {
                let i = self.rng.below(len);
                let n = 1 + self.rng.below(16);
                input.drain(i..(i + n).min(len));
            }
            3 => {
                let tok = self.rng.pick(&YAML_TOKENS).as_bytes().to_vec();
                let i = self.rng.below(len + 1);
                splice(input, (i, i), &tok);
            }
            // lines: delete, duplicate (duplicate keys), swap, re-indent
            4 | 5 | 6 | 7 => {
                let mut lines = lines_of(input);
                if lines.is_empty() {
                    return;
                }
                let i = self.rng.below(lines.len());
                match self.rng.below(4) {
                    0 => {
                        lines.remove(i);
                    }
                    1 => {
                        let l = lines[i].clone();
                        let at = if self.rng.chance(2) { i } else { self.rng.below(lines.len()) };
                        lines.insert(at, l);
                    }
                    2 => {
                        let j = self.rng.below(lines.len());
                        lines.swap(i, j);
                    }
                    _ => {
                        let spaces = lines[i].iter().take_while(|&&b| b == b' ').count();
                        let l = &mut lines[i];
                        match self.rng.below(4) {
                            0 => l
                                .splice(0..0, std::iter::repeat_n(b' ', 1 + self.rng.below(4)))
                                .for_each(drop),
                            1 => l.insert(0, b'\t'),
                            _ => {
                                let cut = 1 + self.rng.below(spaces.max(1));
                                l.drain(..cut.min(spaces));
                            }
                        }
                    }
                }
                *input = lines.concat();
            }
            // splice lines between corpus files
            8 | 9 => {
                let other = lines_of(&self.seeds[self.rng.below(self.seeds.len())]);
                if other.is_empty() {
                    return;
                }
                let mut lines = lines_of(input);
                let at = self.rng.below(lines.len() + 1);
                if self.rng.chance(2) {
                    let from = self.rng.below(other.len());
                    let n = 1 + self.rng.below(4);
                    let take: Vec<Vec<u8>> = other[from..(from + n).min(other.len())].to_vec();
                    lines.splice(at..at, take);
                } else {
                    lines.truncate(at);
                    lines.extend(other[self.rng.below(other.len())..].iter().cloned());
                }
                *input = lines.concat();
            }
            // numbers -> extremes
            10 | 11 => {
                let nums = numbers_in(input);
                if nums.is_empty() {
                    return;
                }
                let r = *self.rng.pick(&nums);
                let with = self.rng.pick(&EXTREME_NUMBERS).as_bytes().to_vec();
                splice(input, r, &with);
            }
            // scalar values -> ~, empty collections, long strings, other words, numbers
            12 | 13 => {
                let vals = values_in(input);
                if vals.is_empty() {
                    return;
                }
                let r = *self.rng.pick(&vals);
                let with = match self.rng.below(5) {
                    0 => self.long_string(),
                    1 if self.rng.chance(3) => self.rng.pick(&PATHS).as_bytes().to_vec(),
                    1 => self.rng.pick(&self.words).clone(),
                    2 => self.rng.pick(&EXTREME_NUMBERS).as_bytes().to_vec(),
                    3 => self.nesting(),
                    _ => self
                        .rng
                        .pick(&["~", "\"\"", "[]", "{}", "null", "true", "-", "[~]", "{~: ~}"])
                        .as_bytes()
                        .to_vec(),
                };
                splice(input, r, &with);
            }
            // deep nesting anywhere
            14 => {
                let at = self.rng.below(len + 1);
                let with = self.nesting();
                splice(input, (at, at), &with);
            }
            // references: rename one or every occurrence of a name to another declared name
            15 => {
                let words = words_in(input);
                if words.is_empty() {
                    return;
                }
                let (s, e) = *self.rng.pick(&words);
                let old = input[s..e].to_vec();
                let new = match self.rng.below(5) {
                    0 | 1 => {
                        let (a, b) = *self.rng.pick(&words);
                        input[a..b].to_vec()
                    }
                    2 => self.long_string(),
                    3 => self.rng.pick(&PATHS).as_bytes().to_vec(),
                    _ => self.rng.pick(&self.words).clone(),
                };
                if self.rng.chance(2) {
                    splice(input, (s, e), &new);
                } else {
                    // one pass: splicing each occurrence in place is quadratic on big inputs
                    let mut out = Vec::with_capacity(input.len());
                    let mut at = 0;
                    for &(a, b) in &words {
                        if out.len() > MAX_INPUT {
                            break;
                        }
                        if input[a..b] == old[..] {
                            out.extend(&input[at..a]);
                            out.extend(&new);
                            at = b;
                        }
                    }
                    out.extend(&input[at..]);
                    *input = out;
                }
            }
            // a long chain of nodes, each reading the one before (deep graphs)
            16 if self.rng.chance(4) => {
                let n = *self.rng.pick(&[100, 1000, 10_000, 30_000]);
                let mut chain = b"  n0: { train: { model: small, data: task } }\n".to_vec();
                for k in 1..n {
                    let kind = if self.rng.chance(2) {
                        "finetune: { from"
                    } else {
                        "distill: { student: small, teacher"
                    };
                    chain.extend(format!("  n{k}: {{ {kind}: n{}, data: task }} }}\n", k - 1).as_bytes());
                }
                let lines = lines_of(input);
                let at = lines.iter().position(|l| l.starts_with(b"nodes:")).map_or(lines.len(), |i| i + 1);
                let mut out = lines[..at].concat();
                if at == lines.len() {
                    out.extend(b"\nnodes:\n");
                }
                out.extend(chain);
                out.extend(lines[at..].concat());
                *input = out;
            }
            // many copies of a line, each name numbered (many nodes, datasets, list items)
            16 => {
                let lines = lines_of(input);
                if lines.is_empty() {
                    return;
                }
                let i = self.rng.below(lines.len());
                let n = *self.rng.pick(&[2, 10, 100, 1000, 3000]);
                let mut out: Vec<u8> = lines[..i].concat();
                let line = &lines[i];
                let first_word = words_in(line).first().copied();
                for k in 0..n {
                    if out.len() > MAX_INPUT {
                        break;
                    }
                    match first_word {
                        Some((_, e)) => {
                            out.extend(&line[..e]);
                            out.extend(k.to_string().as_bytes());
                            out.extend(&line[e..]);
                        }
                        None => out.extend(line),
                    }
                }
                out.extend(lines[i + 1..].concat());
                *input = out;
            }
            // aliases: anchor a value and refer to it elsewhere (also billion-laughs shapes)
            _ => {
                let vals = values_in(input);
                if vals.len() < 2 {
                    return;
                }
                let a = *self.rng.pick(&vals);
                let b = *self.rng.pick(&vals);
                let (first, second) = if a.0 <= b.0 { (a, b) } else { (b, a) };
                if first.1 > second.0 {
                    return;
                }
                splice(input, (second.0, second.1), b"*a");
                splice(input, (first.0, first.0), b"&a ");
            }
        }
    }
}

// ---- the worker (a child process) ------------------------------------------------------------

/// What the last panic said and where, set by the worker's panic hook.
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

fn install_panic_hook() {
    panic::set_hook(Box::new(|info| {
        let msg = if let Some(s) = info.payload().downcast_ref::<&str>() {
            s.to_string()
        } else if let Some(s) = info.payload().downcast_ref::<String>() {
            s.clone()
        } else {
            "(no message)".to_string()
        };
        let loc = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        let bt = std::backtrace::Backtrace::force_capture().to_string();
        // The innermost frame in distillery's own code says where to look.
        let frame = bt
            .lines()
            .map(str::trim)
            .filter_map(|l| l.split_once(": ").map(|(_, f)| f))
            .find(|f| f.starts_with("distillery::") || f.starts_with("<distillery::"))
            .unwrap_or("?")
            .to_string();
        let mut msg = msg;
        if msg.len() > 400 {
            let cut = (0..=400).rev().find(|&i| msg.is_char_boundary(i)).unwrap_or(0);
            msg.truncate(cut);
            msg.push_str("...");
        }
        *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(format!("panic at {loc} (in {frame})\n{msg}"));
    }));
}

/// Runs one input, catching a panic: `Err(report)` whose first line is the crash signature.
/// The input file's modification time marks the start of an execution, `done`'s its end.
fn run_caught(spec_file: &Path, input: &[u8], cache: &FingerprintCache) -> Result<u64, String> {
    fs::write(spec_file, input).unwrap();
    let r = panic::catch_unwind(AssertUnwindSafe(|| run_target(spec_file, input, cache))).map_err(|_| {
        LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_else(|| "panic".into())
    });
    fs::write(done_file(spec_file), b"").unwrap();
    r
}

fn done_file(spec_file: &Path) -> PathBuf {
    spec_file.with_file_name("done")
}

#[test]
#[ignore = "run by fuzz_spec_loader and saved_crashes_do_not_crash in a child process"]
fn fuzz_worker() {
    let dir = PathBuf::from(env::var("DISTILLERY_FUZZ_DIR").expect("DISTILLERY_FUZZ_DIR"));
    let mode = env::var("DISTILLERY_FUZZ_WORKER").expect("DISTILLERY_FUZZ_WORKER");
    install_panic_hook();
    let work = thread::Builder::new().stack_size(TARGET_STACK).spawn(move || match mode.as_str() {
        "run" => {
            let input = fs::read(env::var("DISTILLERY_FUZZ_INPUT").unwrap()).unwrap();
            let cache = FingerprintCache::in_memory();
            if let Err(report) = run_caught(&dir.join("case/spec.yaml"), &input, &cache) {
                fs::write(dir.join("panic.txt"), report).unwrap();
                std::process::exit(3);
            }
        }
        "fuzz" => fuzz_loop(&dir),
        other => panic!("DISTILLERY_FUZZ_WORKER={other}"),
    });
    work.unwrap().join().unwrap();
}

fn fuzz_loop(dir: &Path) {
    let seed = env_num("DISTILLERY_FUZZ_SEED", 1);
    let until = UNIX_EPOCH + Duration::from_millis(env_num("DISTILLERY_FUZZ_UNTIL", 0));
    let seeds: Vec<Vec<u8>> = seed_files().iter().map(|p| fs::read(p).unwrap()).collect();
    let spec_file = dir.join("case/spec.yaml");
    let cache = FingerprintCache::in_memory();
    let mut m = Mutator::new(seed, seeds.clone());
    let mut pool: Vec<Vec<u8>> = Vec::new();
    let mut outcomes = HashSet::new();
    let mut signatures = HashSet::new();
    let stats = dir.join(format!("execs-{seed}"));
    let mut execs: u64 = 0;
    let mut one = |input: &[u8], execs: &mut u64, pool: &mut Vec<Vec<u8>>, m: &mut Mutator| {
        *execs += 1;
        match run_caught(&spec_file, input, &cache) {
            Ok(outcome) => {
                if outcomes.insert(outcome) {
                    if pool.len() < 4096 {
                        pool.push(input.to_vec());
                    } else {
                        let i = m.rng.below(pool.len());
                        pool[i] = input.to_vec();
                    }
                }
            }
            Err(report) => {
                let sig = report.lines().next().unwrap_or_default().to_string();
                if signatures.insert(sig) {
                    let n = signatures.len();
                    fs::write(dir.join(format!("found/{seed}-{n}.yaml")), input).unwrap();
                    fs::write(dir.join(format!("found/{seed}-{n}.txt")), report).unwrap();
                }
            }
        }
    };
    for s in &seeds {
        one(s, &mut execs, &mut pool, &mut m);
    }
    while SystemTime::now() < until {
        let base = if pool.is_empty() || m.rng.chance(2) {
            m.seeds[m.rng.below(m.seeds.len())].clone()
        } else {
            pool[m.rng.below(pool.len())].clone()
        };
        let input = m.mutate(&base);
        one(&input, &mut execs, &mut pool, &mut m);
        if execs % 64 == 0 {
            fs::write(&stats, execs.to_string()).unwrap();
        }
    }
    fs::write(&stats, execs.to_string()).unwrap();
}

// ---- the supervisor (this process) -----------------------------------------------------------

fn spawn_worker(dir: &Path, mode: &str, envs: &[(&str, String)]) -> Child {
    let exe = env::current_exe().unwrap();
    let stderr = fs::File::create(dir.join("stderr.txt")).unwrap();
    // `ulimit -v` through the shell: std has no setrlimit, and a test may not add libc.
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(format!("ulimit -v {WORKER_MEMORY_KIB} 2>/dev/null; exec \"$0\" \"$@\""))
        .arg(exe)
        .args(["fuzz_worker", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .current_dir(dir)
        .env("DISTILLERY_FUZZ_DIR", dir)
        .env("DISTILLERY_FUZZ_WORKER", mode)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawning a fuzz worker")
}

enum End {
    Exited(ExitStatus),
    Hung,
}

/// Waits for a worker; a hang is an execution (from `spec_file` written to `done` written)
/// that takes longer than `hang`.
fn supervise(child: &mut Child, spec_file: &Path, hang: Duration) -> End {
    let start = SystemTime::now();
    let modified = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return End::Exited(status);
        }
        let began = modified(spec_file).unwrap_or(start).max(start);
        let running = modified(&done_file(spec_file)).is_none_or(|done| done < began);
        if running && SystemTime::now().duration_since(began).unwrap_or_default() > hang {
            let _ = child.kill();
            let _ = child.wait();
            return End::Hung;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The signature of a worker that died: its first line names the kind of crash.
fn death_report(dir: &Path, end: &End) -> String {
    let stderr = fs::read_to_string(dir.join("stderr.txt")).unwrap_or_default();
    let tail: String = stderr.lines().filter(|l| !l.trim().is_empty()).take(6).collect::<Vec<_>>().join("\n");
    let kind = match end {
        End::Hung => format!("hang: no result within {} s", hang_limit().as_secs()),
        End::Exited(_) if stderr.contains("has overflowed its stack") => "abort: stack overflow".to_string(),
        End::Exited(_) if stderr.contains("memory allocation of") => "abort: allocation failure".to_string(),
        End::Exited(s) => format!("abort: worker died ({s})"),
    };
    format!("{kind}\n{tail}")
}

/// Runs one input in a fresh worker: `None` when it neither panics, aborts nor hangs, else the
/// crash report (first line: signature).
fn reproduce(input: &[u8], hang: Duration) -> Option<String> {
    reproduce_with(input, hang, &[])
}

fn reproduce_with(input: &[u8], hang: Duration, extra: &[(&str, String)]) -> Option<String> {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    lay_out_work_dir(dir);
    let file = dir.join("input.yaml");
    fs::write(&file, input).unwrap();
    let mut envs = vec![("DISTILLERY_FUZZ_INPUT", file.display().to_string())];
    envs.extend(extra.iter().cloned());
    let mut child = spawn_worker(dir, "run", &envs);
    let end = supervise(&mut child, &dir.join("case/spec.yaml"), hang);
    match &end {
        End::Exited(s) if s.success() => None,
        End::Exited(s) if s.code() == Some(3) => {
            Some(fs::read_to_string(dir.join("panic.txt")).unwrap_or_else(|_| "panic".into()))
        }
        _ => Some(death_report(dir, &end)),
    }
}

fn signature(report: &str) -> &str {
    report.lines().next().unwrap_or_default()
}

/// Deletes lines, then bytes, in halving chunks while the crash keeps its signature; stops at
/// `budget`.
fn minimise(input: &[u8], sig: &str, hang: Duration, budget: Duration, extra: &[(&str, String)]) -> Vec<u8> {
    let start = Instant::now();
    let crashes_alike =
        |candidate: &[u8]| reproduce_with(candidate, hang, extra).is_some_and(|r| signature(&r) == sig);
    let mut best: Vec<Vec<u8>> = lines_of(input);
    // line deletion
    let mut chunk = best.len().div_ceil(2).max(1);
    loop {
        let mut i = 0;
        while i < best.len() && start.elapsed() < budget {
            let mut cand = best.clone();
            cand.drain(i..(i + chunk).min(cand.len()));
            if crashes_alike(&cand.concat()) { best = cand } else { i += chunk }
        }
        if chunk == 1 || start.elapsed() >= budget {
            break;
        }
        chunk = chunk.div_ceil(2);
    }
    // byte deletion
    let mut bytes = best.concat();
    let mut chunk = bytes.len().div_ceil(2).max(1);
    loop {
        let mut i = 0;
        while i < bytes.len() && start.elapsed() < budget {
            let mut cand = bytes.clone();
            cand.drain(i..(i + chunk).min(cand.len()));
            if crashes_alike(&cand) { bytes = cand } else { i += chunk }
        }
        if chunk == 1 || start.elapsed() >= budget {
            break;
        }
        chunk = chunk.div_ceil(2);
    }
    bytes
}

struct Crash {
    report: String,
    input: Vec<u8>,
}

struct Run {
    execs: u64,
    crashes: BTreeMap<String, Crash>,
}

/// Fuzzes for `seconds` with `jobs` workers; worker `j` draws inputs from seed `seed + j`, a
/// worker that died is restarted on the next seed (`+ jobs`).
fn fuzz(seed: u64, seconds: u64, jobs: u64, hang: Duration) -> Run {
    let until = SystemTime::now() + Duration::from_secs(seconds);
    let until_ms = until.duration_since(UNIX_EPOCH).unwrap().as_millis().to_string();
    let results: Mutex<Run> = Mutex::new(Run { execs: 0, crashes: BTreeMap::new() });
    thread::scope(|s| {
        for j in 0..jobs {
            let (results, until_ms) = (&results, &until_ms);
            s.spawn(move || {
                let mut worker_seed = seed + j;
                while SystemTime::now() < until {
                    let tmp = tempfile::tempdir().unwrap();
                    let dir = tmp.path();
                    lay_out_work_dir(dir);
                    let mut child = spawn_worker(
                        dir,
                        "fuzz",
                        &[
                            ("DISTILLERY_FUZZ_SEED", worker_seed.to_string()),
                            ("DISTILLERY_FUZZ_UNTIL", until_ms.clone()),
                        ],
                    );
                    let spec_file = dir.join("case/spec.yaml");
                    let end = supervise(&mut child, &spec_file, hang);
                    let mut found = Vec::new();
                    if !matches!(&end, End::Exited(s) if s.success()) {
                        found.push(Crash {
                            report: death_report(dir, &end),
                            input: fs::read(&spec_file).unwrap_or_default(),
                        });
                    }
                    let mut names: Vec<PathBuf> =
                        fs::read_dir(dir.join("found")).unwrap().flatten().map(|e| e.path()).collect();
                    names.sort();
                    for p in names.iter().filter(|p| p.extension().is_some_and(|x| x == "yaml")) {
                        let report = fs::read_to_string(p.with_extension("txt")).unwrap_or_default();
                        found.push(Crash { report, input: fs::read(p).unwrap() });
                    }
                    let execs: u64 = fs::read_to_string(dir.join(format!("execs-{worker_seed}")))
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    let mut r = results.lock().unwrap();
                    r.execs += execs;
                    for c in found {
                        r.crashes.entry(signature(&c.report).to_string()).or_insert(c);
                    }
                    drop(r);
                    worker_seed += jobs;
                }
            });
        }
    });
    results.into_inner().unwrap()
}

fn out_dir() -> PathBuf {
    env::var_os("DISTILLERY_FUZZ_OUT").map(PathBuf::from).unwrap_or_else(|| root().join("target/fuzz-found"))
}

/// A file name from a crash signature: `panic-cli-rs-300-a1b2c3d4`.
fn crash_name(sig: &str, input: &[u8]) -> String {
    let kind: String = sig
        .split(['(', '\n'])
        .next()
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .collect();
    let kind: Vec<&str> = kind.split('-').filter(|s| !s.is_empty()).collect();
    let mut h = DefaultHasher::new();
    input.hash(&mut h);
    format!("{}-{:08x}", kind.join("-"), h.finish() as u32)
}

fn preview(input: &[u8]) -> String {
    let s = String::from_utf8_lossy(input);
    if s.len() <= 600 {
        return s.into_owned();
    }
    let cut = (0..=600).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
    format!("{}... ({} bytes in all)", &s[..cut], input.len())
}

#[test]
fn fuzz_spec_loader() {
    let seconds = env_num("DISTILLERY_FUZZ_SECONDS", 10);
    let seed = env_num("DISTILLERY_FUZZ_SEED", 1);
    let cores = thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let jobs = env_num("DISTILLERY_FUZZ_JOBS", cores.min(2)).max(1);
    let hang = hang_limit();
    let t0 = Instant::now();
    let run = fuzz(seed, seconds, jobs, hang);
    let wall = t0.elapsed().as_secs_f64();
    eprintln!(
        "fuzz_spec: seed {seed}, {jobs} worker(s), {:.0} s: {} executions ({:.0}/s), {} crash(es)",
        wall,
        run.execs,
        run.execs as f64 / wall,
        run.crashes.len()
    );
    assert!(run.execs > 0, "the fuzzer ran no input");
    if run.crashes.is_empty() {
        return;
    }
    let out = out_dir();
    fs::create_dir_all(&out).unwrap();
    let mut text = String::new();
    for (sig, c) in &run.crashes {
        let budget = Duration::from_secs(if sig.starts_with("hang") { 3 * hang.as_secs() } else { 60 });
        let alone = reproduce(&c.input, hang);
        let small = match &alone {
            Some(r) if signature(r) == sig => minimise(&c.input, sig, hang, budget, &[]),
            _ => c.input.clone(),
        };
        if alone.is_none_or(|r| signature(&r) != sig) {
            text.push_str(
                "\n(the next one did not crash alike when run alone: it may need the worker's state)",
            );
        }
        let name = crash_name(sig, &small);
        fs::write(out.join(format!("{name}.yaml")), &small).unwrap();
        fs::write(out.join(format!("{name}.txt")), &c.report).unwrap();
        text.push_str(&format!(
            "\n--- {name}.yaml ({} bytes, from {}):\n{}\n--- what happened:\n{}\n",
            small.len(),
            c.input.len(),
            preview(&small),
            c.report
        ));
    }
    panic!(
        "the fuzzer found {} crash(es) (seed {seed}); minimised inputs are in {}: move each to \
         tests/fuzz/crashes/ once fixed (tests/fuzz/pending/ until then){text}",
        run.crashes.len(),
        out.display()
    );
}

/// Every saved crash, and every seed, runs without a panic, abort or hang (errors are fine).
#[test]
fn saved_crashes_do_not_crash() {
    let mut failures = Vec::new();
    let crashes = saved_crashes();
    for p in crashes.iter().chain(seed_files().iter().filter(|p| !crashes.contains(p))) {
        if let Some(report) = reproduce(&fs::read(p).unwrap(), hang_limit()) {
            failures.push(format!("{}: {report}", p.display()));
        }
    }
    assert!(failures.is_empty(), "{} input(s) crash:\n{}", failures.len(), failures.join("\n\n"));
}

/// The harness itself: a panic, an abort and a hang are each caught, kept and minimised to the
/// line that causes them.
#[test]
fn fuzz_harness_catches_and_minimises_panics_aborts_and_hangs() {
    let self_test = [("DISTILLERY_FUZZ_SELF_TEST", "1".to_string())];
    let base = fs::read(root().join("tests/specs/good/include.yaml")).unwrap();
    for (marker, kind) in [
        ("self-test-panic", "panic at"),
        ("self-test-abort", "abort: worker died"),
        ("self-test-hang", "hang:"),
    ] {
        let mut input = base.clone();
        input.extend(format!("description: {marker}\n").as_bytes());
        let hang = Duration::from_secs(1);
        let report =
            reproduce_with(&input, hang, &self_test).unwrap_or_else(|| panic!("{marker} was not caught"));
        assert!(report.starts_with(kind), "{marker}: {report}");
        if marker == "self-test-hang" {
            continue; // each try costs the hang limit; deletion is the same as for the others
        }
        let small = minimise(&input, signature(&report), hang, Duration::from_secs(60), &self_test);
        assert_eq!(String::from_utf8_lossy(&small), marker, "{marker} minimised to {small:?}");
    }
    assert!(reproduce_with(&base, Duration::from_secs(5), &self_test).is_none());
}

#[test]
fn mutations_are_deterministic_given_a_seed() {
    let seeds: Vec<Vec<u8>> = seed_files().iter().map(|p| fs::read(p).unwrap()).collect();
    assert!(seeds.len() >= 40, "only {} seeds", seeds.len());
    let draw = |seed| {
        let mut m = Mutator::new(seed, seeds.clone());
        (0..200).map(|i| m.mutate(&seeds[i % seeds.len()])).collect::<Vec<_>>()
    };
    let a = draw(7);
    assert_eq!(a, draw(7));
    assert_ne!(a, draw(8));
    assert!(
        a.iter().zip(seeds.iter().cycle()).filter(|(m, s)| m != s).count() > 150,
        "mutations change little"
    );
}
