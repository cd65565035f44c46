//! Diagnostics: what is wrong with an experiment file, where, and what to do.
//!
//! Bad input is data: the spec and graph layers return every problem they find as a
//! [`Diagnostic`], and the CLI renders them once with [`render`].

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A position in a source file (1-based line and column).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub file: Arc<SourceFile>,
    pub line: usize,
    pub col: usize,
    /// Length of the offending token in characters, for the caret underline (at least 1).
    pub len: usize,
}

impl Location {
    /// The start of a file (for problems with the file as a whole, e.g. an empty one).
    pub fn start(file: Arc<SourceFile>) -> Location {
        Location { file, line: 1, col: 1, len: 1 }
    }
}

/// A number as people write it: `1e300`, not 301 digits; `2`, not `2.0`; `0.25` as is.
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if v.is_finite() && v.fract() == 0.0 && a < 1e15 {
        format!("{}", v as i64)
    } else if v.is_finite() && v != 0.0 && !(1e-4..1e15).contains(&a) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

/// A name or value cut to `max` characters for a message (`abc…`), so a 100,000-character name
/// gives a readable line.
pub fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// A file's name as the user gave it, and its text, kept for rendering snippets.
#[derive(Debug, PartialEq, Eq)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
}

impl SourceFile {
    pub fn new(path: impl Into<PathBuf>, text: impl Into<String>) -> Arc<SourceFile> {
        Arc::new(SourceFile { path: path.into(), text: text.into() })
    }
}

/// Stable short identifiers, one per kind of problem (documented in docs/spec.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Code {
    Io,
    Syntax,
    UnknownKey,
    MissingKey,
    WrongType,
    OutOfRange,
    UnknownVariant,
    MissingReference,
    Cycle,
    Matrix,
    Include,
    Conflict,
    Data,
    /// A key the spec reserves for a feature this build does not have yet.
    Unsupported,
    /// A `device:` this binary or machine cannot run (no CUDA build, driver, GPU, NVRTC, headers).
    Device,
    /// `resources:` the cluster refuses (`sbatch --test-only`).
    Resources,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Io => "io",
            Code::Syntax => "syntax",
            Code::UnknownKey => "unknown-key",
            Code::MissingKey => "missing-key",
            Code::WrongType => "wrong-type",
            Code::OutOfRange => "out-of-range",
            Code::UnknownVariant => "unknown-variant",
            Code::MissingReference => "missing-reference",
            Code::Cycle => "cycle",
            Code::Matrix => "matrix",
            Code::Include => "include",
            Code::Conflict => "conflict",
            Code::Data => "data",
            Code::Unsupported => "unsupported",
            Code::Device => "device",
            Code::Resources => "resources",
        }
    }
}

/// One problem found in an experiment file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub code: Code,
    /// Dotted key path, e.g. `nodes.kd.distill.losses.kd.temperature`; empty for the whole file.
    pub path: String,
    /// The node (or dataset/model) the problem belongs to, when there is one.
    pub node: Option<String>,
    pub message: String,
    /// What to do about it.
    pub help: Option<String>,
    pub location: Option<Location>,
}

impl Diagnostic {
    pub fn new(code: Code, path: impl Into<String>, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            code,
            path: path.into(),
            node: None,
            message: message.into(),
            help: None,
            location: None,
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }

    pub fn with_node(mut self, node: impl Into<String>) -> Diagnostic {
        self.node = Some(node.into());
        self
    }

    pub fn at(mut self, location: Option<Location>) -> Diagnostic {
        self.location = location;
        self
    }

    /// `file:line:col`, or the file alone, or nothing.
    pub fn position(&self) -> Option<String> {
        self.location.as_ref().map(|l| format!("{}:{}:{}", l.file.path.display(), l.line, l.col))
    }
}

/// Renders diagnostics the way a compiler does: headline, position, the source line with a caret,
/// and the help line. `base` is stripped from file paths so output is stable across checkouts.
pub fn render(diags: &[Diagnostic], base: Option<&Path>) -> String {
    let mut out = String::new();
    let mut lines = Lines::default();
    for d in diags {
        render_one(&mut out, d, base, &mut lines);
        out.push('\n');
    }
    let n = diags.len();
    let _ = writeln!(out, "{n} error{} found", if n == 1 { "" } else { "s" });
    out
}

/// Where each line of a file starts, indexed once per file (finding line n by walking the text
/// for every diagnostic made rendering 100,000 diagnostics quadratic).
#[derive(Default)]
struct Lines(std::collections::HashMap<*const SourceFile, Vec<usize>>);

impl Lines {
    fn line<'t>(&mut self, file: &'t Arc<SourceFile>, n: usize) -> Option<&'t str> {
        let text = file.text.as_str();
        let starts = self.0.entry(Arc::as_ptr(file)).or_insert_with(|| {
            std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect()
        });
        let start = *starts.get(n.checked_sub(1)?)?;
        if start >= text.len() {
            return None; // an empty file, or past a final newline: no such line
        }
        let end = starts.get(n).map_or(text.len(), |&e| e - 1);
        Some(text[start..end].strip_suffix('\r').unwrap_or(&text[start..end]))
    }
}

fn render_one(out: &mut String, d: &Diagnostic, base: Option<&Path>, lines: &mut Lines) {
    let _ = write!(out, "error[{}]: ", d.code.as_str());
    if !d.path.is_empty() {
        // Segments clipped, so a 100,000-character name does not fill the screen.
        let path: Vec<String> = d.path.split('.').map(|s| clip(s, 60)).collect();
        let _ = write!(out, "{}: ", path.join("."));
    }
    let _ = writeln!(out, "{}", d.message);
    if let Some(loc) = &d.location {
        let shown = match base {
            Some(b) => loc.file.path.strip_prefix(b).unwrap_or(&loc.file.path),
            None => &loc.file.path,
        };
        let _ = writeln!(out, "  --> {}:{}:{}", shown.display(), loc.line, loc.col);
        if let Some(text) = lines.line(&loc.file, loc.line.max(1)) {
            let gutter = loc.line.to_string().len();
            let pad = " ".repeat(gutter);
            let (shown, col, len) = snippet(text, loc.col, loc.len);
            let _ = writeln!(out, "{pad} |");
            let _ = writeln!(out, "{} | {}", loc.line, shown);
            let caret_pad: String = shown
                .chars()
                .take(col.saturating_sub(1))
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            let _ = writeln!(out, "{pad} | {caret_pad}{}", "^".repeat(len.max(1)));
        }
    }
    if let Some(node) = &d.node {
        let _ = writeln!(out, "  = in: {node}");
    }
    if let Some(help) = &d.help {
        let _ = writeln!(out, "  = help: {help}");
    }
}

/// Longest source line shown in full; longer ones show a window around the column.
const SNIPPET_CHARS: usize = 120;

/// The part of a source line to show, and the caret's column and length within it.
fn snippet(text: &str, col: usize, len: usize) -> (String, usize, usize) {
    let n = text.chars().count();
    if n <= SNIPPET_CHARS {
        return (text.to_string(), col, len.min(n.saturating_sub(col.saturating_sub(1)).max(1)));
    }
    let start = col.saturating_sub(1).saturating_sub(40).min(n);
    let body: String = text.chars().skip(start).take(SNIPPET_CHARS).collect();
    let more = start + SNIPPET_CHARS < n;
    let shown = format!("{}{body}{}", if start > 0 { "…" } else { "" }, if more { "…" } else { "" });
    let col = col - start + usize::from(start > 0);
    let room = SNIPPET_CHARS.saturating_sub(col.saturating_sub(1 + usize::from(start > 0)));
    (shown, col, len.min(room).max(1))
}

/// The last `chars` characters of a process's output, each line indented: how a plugin's or a
/// Slurm job's stderr is quoted in an error.
pub fn quoted_tail(bytes: &[u8], chars: usize) -> String {
    let s = String::from_utf8_lossy(bytes);
    let s = s.trim_end();
    let start = s.char_indices().rev().nth(chars).map_or(0, |(i, _)| i);
    s[start..].lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

/// Longest word (and candidate) [`did_you_mean`] compares.
const MAX_SUGGESTED_LEN: usize = 256;

/// The closest candidate to `word` by edit distance, if it is close enough to be a plausible typo.
pub fn did_you_mean<'a, I>(word: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    // Jaro-Winkler costs about the product of the lengths: a word far longer than any name
    // (names are at most 256 characters) gets no suggestion rather than minutes of comparing.
    if word.len() > MAX_SUGGESTED_LEN {
        return None;
    }
    let word = word.to_lowercase();
    let mut best: Option<(f64, &str)> = None;
    for c in candidates {
        if c.len() > MAX_SUGGESTED_LEN {
            continue;
        }
        let score = strsim::jaro_winkler(&word, &c.to_lowercase());
        if best.is_none_or(|(s, _)| score > s) {
            best = Some((score, c));
        }
    }
    best.filter(|(s, _)| *s >= 0.8).map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn did_you_mean_finds_close_names_only() {
        let keys = ["epochs", "model", "data", "batch_size"];
        assert_eq!(did_you_mean("epoch", keys), Some("epochs"));
        assert_eq!(did_you_mean("modle", keys), Some("model"));
        assert_eq!(did_you_mean("zzz", keys), None);
    }

    #[test]
    fn a_huge_word_is_not_compared_with_every_candidate() {
        // A fuzzed spec: a 100,000-character reference among 5,000 names took 10 s.
        let names: Vec<String> = (0..5000).map(|i| format!("n{i}")).collect();
        let word = "-".repeat(100_000);
        let t0 = std::time::Instant::now();
        assert_eq!(did_you_mean(&word, names.iter().map(String::as_str)), None);
        assert!(t0.elapsed().as_secs_f64() < 0.5, "{:?}", t0.elapsed());
        assert_eq!(did_you_mean("n4999x", names.iter().map(String::as_str)), Some("n4999"));
    }

    #[test]
    fn numbers_are_formatted_compactly() {
        assert_eq!(fmt_num(1e300), "1e300");
        assert_eq!(fmt_num(2.0), "2");
        assert_eq!(fmt_num(-1.0), "-1");
        assert_eq!(fmt_num(0.25), "0.25");
        assert_eq!(fmt_num(1.5), "1.5");
        assert_eq!(fmt_num(1e-9), "1e-9");
        assert_eq!(fmt_num(f64::MIN_POSITIVE), "2.2250738585072014e-308");
        assert_eq!(fmt_num(f64::INFINITY), "inf");
    }

    #[test]
    fn long_lines_show_a_window_with_the_caret_on_the_token() {
        let line = format!("  {}: {{ train: {{ epochs: x }} }}", "n".repeat(100_000));
        let file = SourceFile::new("x.yaml", line);
        let d = Diagnostic::new(Code::OutOfRange, "nodes", "name too long").at(Some(Location {
            file,
            line: 1,
            col: 3,
            len: 100_000,
        }));
        let text = render(&[d], None);
        assert!(text.len() < 1_000, "{text}");
        assert!(text.contains(&format!("1 |   {}…", "n".repeat(118))), "{text}");
        assert!(text.contains(&format!("  |   {}", "^".repeat(118))), "{text}");
        assert_eq!(clip("abcdef", 3), "abc…");
        assert_eq!(clip("abc", 3), "abc");
    }

    #[test]
    fn render_points_at_the_column() {
        let file = SourceFile::new("x.yaml", "a: 1\nnodes:\n  kd: { epoch: 3 }\n");
        let d = Diagnostic::new(Code::UnknownKey, "nodes.kd.epoch", "unknown key `epoch`")
            .with_help("did you mean `epochs`?")
            .at(Some(Location { file, line: 3, col: 9, len: 5 }));
        let text = render(&[d], None);
        assert!(text.contains("  --> x.yaml:3:9"), "{text}");
        assert!(text.contains("  |         ^^^^^"), "{text}");
    }
}
