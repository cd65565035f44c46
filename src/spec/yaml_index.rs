//! Positions of keys and values in a YAML file, by dotted key path.
//!
//! serde_yaml keeps no positions once a document is parsed, so we read the same text a second
//! time as a stream of marked events and remember where each key and value starts. Diagnostics
//! found later (in typed deserialisation or validation) look their path up here.

use std::collections::HashMap;
use std::sync::Arc;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use super::join;
use super::load::limits;
use crate::diag::{Location, SourceFile};

#[derive(Clone, Debug, Default)]
pub struct Spot {
    pub key: Option<Location>,
    pub value: Option<Location>,
}

/// Key path -> where its key and its value are, for one or several (included) files.
#[derive(Clone, Debug, Default)]
pub struct SpanIndex {
    spots: HashMap<String, Spot>,
    /// `to` prefix -> `from` prefix: defaults copied into a node (`nodes.a.train` ->
    /// `defaults.train`), looked up lazily so that a defaults block costs O(1) a node.
    aliases: HashMap<String, String>,
}

impl SpanIndex {
    /// Indexes one file. A file that does not parse yields an empty index: serde_yaml reports the
    /// syntax error with its own position.
    pub fn build(file: &Arc<SourceFile>) -> SpanIndex {
        let scan = Scan::run(file);
        if scan.error.is_some() { SpanIndex::default() } else { scan.index }
    }

    /// The key path whose value starts at `line:col` (for parser errors that give a position only).
    pub(super) fn path_at(&self, line: usize, col: usize) -> Option<&str> {
        let at = |l: &Option<Location>| l.as_ref().is_some_and(|l| l.line == line && l.col == col);
        let mut hits: Vec<&str> =
            self.spots.iter().filter(|(_, s)| at(&s.value)).map(|(k, _)| k.as_str()).collect();
        // The innermost (longest) path when a mapping and its first value start together.
        hits.sort_by_key(|k| std::cmp::Reverse(k.len()));
        hits.first().copied()
    }

    /// Entries of `other` replace ours (an including file overrides what it includes).
    pub fn overlay(&mut self, other: SpanIndex) {
        for (k, v) in other.spots {
            self.spots.insert(k, v);
        }
        self.aliases.extend(other.aliases);
    }

    /// Records that everything under `from` now also lives under `to` (defaults copied into a
    /// node): a path under `to` without a position of its own takes the one under `from`.
    pub fn alias(&mut self, from: &str, to: &str) {
        self.aliases.insert(to.to_string(), from.to_string());
    }

    /// `p` with an aliased prefix replaced (`nodes.a.train.epochs` -> `defaults.train.epochs`).
    fn aliased(&self, p: &str) -> Option<String> {
        if self.aliases.is_empty() {
            return None;
        }
        let ends = p.match_indices('.').map(|(i, _)| i).chain([p.len()]);
        for end in ends {
            if let Some(from) = self.aliases.get(&p[..end]) {
                return Some(format!("{from}{}", &p[end..]));
            }
        }
        None
    }

    /// Where the key at `path` is written, falling back to the closest enclosing key.
    pub fn key(&self, path: &str) -> Option<Location> {
        self.find(path, |s| s.key.clone().or_else(|| s.value.clone()))
    }

    /// Where the value at `path` is written, falling back to the closest enclosing key.
    pub fn value(&self, path: &str) -> Option<Location> {
        self.find(path, |s| s.value.clone().or_else(|| s.key.clone()))
    }

    fn find(&self, path: &str, pick: impl Fn(&Spot) -> Option<Location>) -> Option<Location> {
        let mut p = path;
        loop {
            if let Some(loc) = self.spots.get(p).and_then(&pick) {
                return Some(loc);
            }
            if let Some(loc) = self.aliased(p).and_then(|q| self.spots.get(&q)).and_then(&pick) {
                return Some(loc);
            }
            match p.rfind('.') {
                Some(i) => p = &p[..i],
                None => {
                    return if p.is_empty() { None } else { self.spots.get("").and_then(&pick) };
                }
            }
        }
    }
}

/// One pass of yaml-rust2 over a file: the index, the first repeated key, the alias that makes
/// the document too large, and the parser's error.
///
/// This pass runs before serde_yaml: it is linear in the text even for deeply nested flow
/// collections (it stops at 255 levels), where libyaml's scanner takes quadratic time, and for
/// nested aliases, which serde_yaml expands one value at a time.
pub(super) struct Scan {
    pub index: SpanIndex,
    /// Key paths written twice in one mapping, with the second occurrence (the first few).
    pub duplicates: Vec<(String, Location)>,
    /// The `*alias` at which the values that aliases add pass [`limits::MAX_ALIAS_NODES`].
    pub too_many_alias_nodes: Option<Location>,
    pub error: Option<(String, Location)>,
}

impl Scan {
    pub fn run(file: &Arc<SourceFile>) -> Scan {
        let mut rx = Receiver {
            file: file.clone(),
            stack: Vec::new(),
            index: SpanIndex::default(),
            duplicates: Vec::new(),
            expansion: Expansion::default(),
        };
        let mut parser = Parser::new_from_str(&file.text);
        let error = parser.load(&mut rx, false).err().map(|e| {
            let m = e.marker();
            let loc = Location { file: file.clone(), line: m.line(), col: m.col() + 1, len: 1 };
            (e.info().to_string(), loc)
        });
        let too_many_alias_nodes =
            rx.expansion.too_many_at.map(|mark| rx.loc(mark, alias_len(&file.text, mark)));
        Scan { index: rx.index, duplicates: rx.duplicates, too_many_alias_nodes, error }
    }
}

/// Characters of the `*name` at `mark`, for the caret (a walk of the text, for the one alias
/// reported). By line and column: yaml-rust2's `index` counts bytes after some block scalars.
fn alias_len(text: &str, mark: Marker) -> usize {
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while line < mark.line() {
        match chars.next() {
            Some('\n') => line += 1,
            // A lone CR ends a line too, as it does for the parser.
            Some('\r') if chars.peek() != Some(&'\n') => line += 1,
            Some(_) => {}
            None => return 1,
        }
    }
    let is_end = |c: &char| c.is_whitespace() || matches!(c, ',' | '[' | ']' | '{' | '}');
    chars.skip(mark.col()).take_while(|c| !is_end(c)).count()
}

/// Counts, in the same pass, the values that `*alias` references add once serde_yaml replaces
/// each by a copy of its anchor's value (anchors inside anchors multiply: ten aliases of an
/// anchor that holds ten aliases of ... add 10^n values from a few lines of text).
///
/// Linear: an anchor's size is known when its node ends, so an alias costs one lookup, never a
/// walk of what it stands for. Sizes saturate instead of overflowing.
#[derive(Default)]
struct Expansion {
    /// Values each anchor's node expands to, by yaml-rust2's anchor id (every `&name` gets a new
    /// id and an alias refers to the latest; ids start at 1). 0: not known yet (still open).
    anchor_sizes: Vec<u64>,
    /// The collections being read: their anchor id (0: none) and their values so far.
    open: Vec<(usize, u64)>,
    /// Values that aliases have added so far.
    by_aliases: u64,
    too_many_at: Option<Marker>,
}

impl Expansion {
    fn start(&mut self, anchor: usize) {
        self.open.push((anchor, 1));
    }

    fn end(&mut self) {
        if let Some((anchor, size)) = self.open.pop() {
            self.node(anchor, size);
        }
    }

    fn alias(&mut self, anchor: usize, mark: Marker) {
        // An alias of an anchor whose node is still open refers to itself: it never ends.
        let size = match self.anchor_sizes.get(anchor) {
            Some(&n) if n > 0 => n,
            _ => u64::MAX,
        };
        self.by_aliases = self.by_aliases.saturating_add(size);
        if self.by_aliases > limits::MAX_ALIAS_NODES && self.too_many_at.is_none() {
            self.too_many_at = Some(mark);
        }
        self.node(0, size);
    }

    /// A finished node of `size` values, with anchor id `anchor` (0: none).
    fn node(&mut self, anchor: usize, size: u64) {
        if let Some((_, parent)) = self.open.last_mut() {
            *parent = parent.saturating_add(size);
        }
        if anchor > 0 {
            if self.anchor_sizes.len() <= anchor {
                self.anchor_sizes.resize(anchor + 1, 0);
            }
            self.anchor_sizes[anchor] = size;
        }
    }
}

/// How serde_yaml names a plain key that means null (`~`, `null`, empty): all are the key `~`.
pub(super) const NULL_KEY: &str = "~";

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, next: usize },
}

struct Receiver {
    file: Arc<SourceFile>,
    stack: Vec<Frame>,
    index: SpanIndex,
    duplicates: Vec<(String, Location)>,
    expansion: Expansion,
}

impl Receiver {
    fn loc(&self, mark: Marker, len: usize) -> Location {
        Location { file: self.file.clone(), line: mark.line(), col: mark.col() + 1, len: len.max(1) }
    }

    /// Path of the value about to be read in the current container, advancing the container.
    fn next_value_path(&mut self) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Map { path, key }) => key.take().map(|k| join(path, &k)),
            Some(Frame::Seq { path, next }) => {
                let p = join(path, &next.to_string());
                *next += 1;
                Some(p)
            }
        }
    }

    fn expecting_key(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Map { key: None, .. }))
    }
}

impl MarkedEventReceiver for Receiver {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(_, _, anchor, _) => self.expansion.node(anchor, 1),
            Event::MappingStart(anchor, _) | Event::SequenceStart(anchor, _) => self.expansion.start(anchor),
            Event::MappingEnd | Event::SequenceEnd => self.expansion.end(),
            Event::Alias(anchor) => self.expansion.alias(anchor, mark),
            _ => {}
        }
        match ev {
            Event::Scalar(text, style, ..) => {
                if self.expecting_key() {
                    let len = text.chars().count();
                    let loc = self.loc(mark, len);
                    let plain_null = style == TScalarStyle::Plain
                        && matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL");
                    let text = if plain_null { NULL_KEY.to_string() } else { text };
                    if let Some(Frame::Map { path, key }) = self.stack.last_mut() {
                        let full = join(path, &text);
                        *key = Some(text);
                        let spot = self.index.spots.entry(full.clone()).or_default();
                        if spot.key.is_some() && self.duplicates.len() < 16 {
                            self.duplicates.push((full, loc.clone()));
                        }
                        spot.key = Some(loc);
                    }
                } else if let Some(p) = self.next_value_path() {
                    let loc = self.loc(mark, text.chars().count());
                    self.index.spots.entry(p).or_default().value = Some(loc);
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                if self.expecting_key() {
                    // A complex key: not something an experiment file uses; index nothing below.
                    self.stack.push(Frame::Map { path: "\u{0}".into(), key: None });
                    return;
                }
                let p = self.next_value_path().unwrap_or_default();
                let loc = self.loc(mark, 1);
                self.index.spots.entry(p.clone()).or_default().value = Some(loc);
                if matches!(ev, Event::MappingStart(..)) {
                    self.stack.push(Frame::Map { path: p, key: None });
                } else {
                    self.stack.push(Frame::Seq { path: p, next: 0 });
                }
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::Alias(_) => {
                let _ = self.next_value_path();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_block_and_flow_keys() {
        let text = "experiment: x\nnodes:\n  kd: { distill: { epochs: 3 } }\n  l: [a, b]\n";
        let idx = SpanIndex::build(&SourceFile::new("f.yaml", text));
        let k = idx.key("nodes.kd.distill.epochs").unwrap();
        assert_eq!((k.line, k.col, k.len), (3, 20, 6));
        let v = idx.value("nodes.kd.distill.epochs").unwrap();
        assert_eq!((v.line, v.col), (3, 28));
        let item = idx.value("nodes.l.1").unwrap();
        assert_eq!((item.line, item.col), (4, 10));
        // Unknown deeper paths fall back to the closest known key.
        let f = idx.key("nodes.kd.distill.epochs.nope").unwrap();
        assert_eq!(f.line, 3);
    }

    /// `a0: &a0 [x, ...]` and `levels` lines `aN: &aN [*aN-1, ...]`, ten items each: aN expands
    /// to (10^(N+2) - 1) / 9 values.
    fn nested_aliases(levels: usize) -> String {
        let mut text = format!("a0: &a0 [{}]\n", ["x"; 10].join(", "));
        for n in 1..=levels {
            let items = vec![format!("*a{}", n - 1); 10].join(", ");
            text.push_str(&format!("a{n}: &a{n} [{items}]\n"));
        }
        text
    }

    /// Where the scan says aliases add too many values: (line, col, len).
    fn too_many_at(text: &str) -> Option<(usize, usize, usize)> {
        let scan = Scan::run(&SourceFile::new("f.yaml", text));
        scan.too_many_alias_nodes.map(|l| (l.line, l.col, l.len))
    }

    #[test]
    fn alias_expansion_is_counted_and_located_at_the_alias_that_passes_the_limit() {
        assert_eq!(limits::MAX_ALIAS_NODES, 1_000_000, "the positions below assume it");
        // Aliases add 123,440 values up to a4; a5's eighth `*a4` (111,111 each) passes 1,000,000.
        assert_eq!(too_many_at(&nested_aliases(4)), None);
        assert_eq!(too_many_at(&nested_aliases(5)), Some((6, 45, 3)));
        // 40 levels expand to more than u64 can count: sizes saturate, the first crossing stays.
        assert_eq!(too_many_at(&nested_aliases(40)), Some((6, 45, 3)));
        // An alias refers to the latest node with its anchor's name: here a plain scalar.
        let redefined = format!("{}b: &a4 x\nc: [{}]\n", nested_aliases(4), ["*a4"; 10].join(", "));
        assert_eq!(too_many_at(&redefined), None);
        let kept = format!("{}c: [{}]\n", nested_aliases(4), ["*a4"; 10].join(", "));
        assert_eq!(too_many_at(&kept), Some((6, 40, 3)));
        // An alias inside its own anchor's node expands without end.
        assert_eq!(too_many_at("a: &a [x, *a]\n"), Some((1, 11, 2)));
        assert_eq!(too_many_at("s: &s x\nl: [*s, *s, *s]\nm: { k: *s }\n"), None);
    }
}
