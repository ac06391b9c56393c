//! Positions of YAML nodes, for messages about documents serde_yaml accepted but validation did
//! not. serde_yaml's `Value` carries no spans, so the text is read a second time with
//! saphyr-parser's event stream into a small tree of positioned nodes. The same pass rejects what
//! serde_yaml would silently accept or report badly: no document, several documents, a document
//! that is not a map, duplicate keys, and nesting too deep to be a scenario.

use saphyr_parser::{Event, Parser, Span};

/// A 1-based line and column, as serde_yaml reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl Pos {
    pub const START: Pos = Pos { line: 1, col: 1 };

    fn of(span: &Span) -> Pos {
        // saphyr: line 1-based, column 0-based; serde_yaml (libyaml): both 1-based.
        Pos { line: span.start.line(), col: span.start.col() + 1 }
    }
}

/// No scenario has a reason to nest deeper than this; deeper input is refused before serde_yaml
/// (whose own limit is 128) or recursive drops get to it.
pub const MAX_DEPTH: usize = 64;

#[derive(Debug)]
pub enum Kind {
    Scalar(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
    /// An alias (`*anchor`); its target is not followed.
    Alias,
}

#[derive(Debug)]
pub struct Node {
    pub pos: Pos,
    pub kind: Kind,
    /// Where the node starts and ends in the text, in characters (end exclusive).
    pub span: (usize, usize),
}

/// One step of a path into the document.
#[derive(Debug, Clone, Copy)]
pub enum Seg<'a> {
    K(&'a str),
    I(usize),
}

/// A problem found while reading the structure.
#[derive(Debug, PartialEq, Eq)]
pub struct LocateError {
    pub pos: Pos,
    pub message: String,
}

/// The positioned tree of a one-document YAML text whose root is a map.
#[derive(Debug)]
pub struct Locator {
    root: Node,
}

enum Open {
    Seq((Pos, usize), Vec<Node>),
    /// Pending key (if any) and the entries so far.
    Map((Pos, usize), Option<Node>, Vec<(Node, Node)>),
}

impl Locator {
    /// Reads `text`; `what` names the document in messages ("scenario", "ConfigMap").
    pub fn new(text: &str, what: &str) -> Result<Locator, LocateError> {
        let mut stack: Vec<Open> = Vec::new();
        let mut root: Option<Node> = None;
        let mut documents = 0usize;
        for ev in Parser::new_from_str(text) {
            let (ev, span) = ev.map_err(|e| LocateError {
                pos: Pos { line: e.marker().line(), col: e.marker().col() + 1 },
                message: if e.info().contains("recursion limit") {
                    format!("nesting deeper than {MAX_DEPTH} levels is not a {what}")
                } else {
                    format!("invalid YAML: {}", e.info())
                },
            })?;
            let pos = Pos::of(&span);
            let range = (span.start.index(), span.end.index());
            let done = match ev {
                Event::DocumentStart(_) => {
                    documents += 1;
                    if documents > 1 {
                        return Err(LocateError {
                            pos,
                            message: format!("a {what} file holds exactly one YAML document, found a second one"),
                        });
                    }
                    None
                }
                Event::Scalar(v, ..) => Some(Node { pos, kind: Kind::Scalar(v.into_owned()), span: range }),
                Event::Alias(_) => Some(Node { pos, kind: Kind::Alias, span: range }),
                Event::SequenceStart(..) | Event::MappingStart(..) => {
                    if stack.len() >= MAX_DEPTH {
                        return Err(LocateError {
                            pos,
                            message: format!("nesting deeper than {MAX_DEPTH} levels is not a {what}"),
                        });
                    }
                    stack.push(if matches!(ev, Event::SequenceStart(..)) {
                        Open::Seq((pos, range.0), Vec::new())
                    } else {
                        Open::Map((pos, range.0), None, Vec::new())
                    });
                    None
                }
                Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                    Some(Open::Seq((p, s), items)) => Some(Node { pos: p, kind: Kind::Seq(items), span: (s, range.1) }),
                    Some(Open::Map((p, s), _, entries)) => {
                        Some(Node { pos: p, kind: Kind::Map(entries), span: (s, range.1) })
                    }
                    None => None,
                },
                _ => None,
            };
            let Some(node) = done else { continue };
            match stack.last_mut() {
                None => root = Some(node),
                Some(Open::Seq(_, items)) => items.push(node),
                Some(Open::Map(_, pending, entries)) => match pending.take() {
                    None => {
                        if let Kind::Scalar(k) = &node.kind {
                            if let Some((first, _)) =
                                entries.iter().find(|(key, _)| matches!(&key.kind, Kind::Scalar(s) if s == k))
                            {
                                return Err(LocateError {
                                    pos: node.pos,
                                    message: format!("duplicate key \"{k}\" (first given at line {})", first.pos.line),
                                });
                            }
                        }
                        *pending = Some(node);
                    }
                    Some(key) => entries.push((key, node)),
                },
            }
        }
        let empty = || LocateError { pos: Pos::START, message: format!("the {what} file is empty") };
        let root = root.ok_or_else(empty)?;
        match &root.kind {
            Kind::Map(_) => Ok(Locator { root }),
            Kind::Scalar(s) if s.is_empty() || s == "~" || s == "null" => Err(empty()),
            Kind::Scalar(_) => Err(not_map(root.pos, what, "a scalar")),
            Kind::Seq(_) => Err(not_map(root.pos, what, "a sequence")),
            Kind::Alias => Err(not_map(root.pos, what, "an alias")),
        }
    }

    /// The node at `path`, if the whole path exists.
    pub fn node(&self, path: &[Seg]) -> Option<&Node> {
        let mut n = &self.root;
        for seg in path {
            n = child(n, *seg)?.1;
        }
        Some(n)
    }

    /// Position of the value at `path`, or of its deepest existing ancestor (a missing key is
    /// reported at the map that lacks it).
    pub fn at(&self, path: &[Seg]) -> Pos {
        let mut n = &self.root;
        for seg in path {
            match child(n, *seg) {
                Some((_, c)) => n = c,
                None => break,
            }
        }
        n.pos
    }

    /// Position of the key of the last path segment (the key line of `name: value`), falling
    /// back like [`Locator::at`].
    pub fn key_at(&self, path: &[Seg]) -> Pos {
        let Some((last, parent)) = path.split_last() else { return self.root.pos };
        match self.node(parent).and_then(|p| child(p, *last)) {
            Some((Some(k), _)) => k.pos,
            Some((None, v)) => v.pos,
            None => self.at(path),
        }
    }

    /// The scalar keys of the map at `path`, in document order, with their positions.
    pub fn keys(&self, path: &[Seg]) -> Vec<(&str, Pos)> {
        match self.node(path).map(|n| &n.kind) {
            Some(Kind::Map(entries)) => entries
                .iter()
                .filter_map(|(k, _)| match &k.kind {
                    Kind::Scalar(s) => Some((s.as_str(), k.pos)),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// `text` with everything outside `node` blanked (each character but line breaks turned into a
/// space): a document of that node alone, at its original line and column, so that serde_yaml
/// reads one part of a file with positions that stay those of the file.
pub fn only(text: &str, node: &Node) -> String {
    let (start, end) = node.span;
    text.chars()
        .enumerate()
        .map(|(i, c)| if (start..end).contains(&i) || c == '\n' || c == '\r' { c } else { ' ' })
        .collect()
}

fn not_map(pos: Pos, what: &str, found: &str) -> LocateError {
    LocateError { pos, message: format!("a {what} file must be a map of keys, found {found}") }
}

/// The child at `seg`: (its key node for maps, its value node).
fn child<'n>(n: &'n Node, seg: Seg) -> Option<(Option<&'n Node>, &'n Node)> {
    match (&n.kind, seg) {
        (Kind::Map(entries), Seg::K(key)) => {
            entries.iter().find(|(k, _)| matches!(&k.kind, Kind::Scalar(s) if s == key)).map(|(k, v)| (Some(k), v))
        }
        (Kind::Seq(items), Seg::I(i)) => items.get(i).map(|v| (None, v)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::Seg::{I, K};
    use super::*;

    fn p(line: usize, col: usize) -> Pos {
        Pos { line, col }
    }

    #[test]
    fn positions_of_keys_and_values() {
        let text = "a: 1\nlinks:\n  - {name: x, kind: veth}\n  - name: y\n    parent: x\n";
        let l = Locator::new(text, "scenario").unwrap();
        assert_eq!(l.at(&[K("a")]), p(1, 4));
        assert_eq!(l.key_at(&[K("links")]), p(2, 1));
        assert_eq!(l.at(&[K("links"), I(0)]), p(3, 5));
        assert_eq!(l.key_at(&[K("links"), I(0), K("kind")]), p(3, 15));
        assert_eq!(l.at(&[K("links"), I(1), K("parent")]), p(5, 13));
        assert_eq!(l.key_at(&[K("links"), I(1), K("parent")]), p(5, 5));
        // Missing key: position of the map lacking it.
        assert_eq!(l.at(&[K("links"), I(1), K("id")]), p(4, 5));
        let keys: Vec<_> = l.keys(&[K("links"), I(1)]).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["name", "parent"]);
    }

    #[test]
    fn a_node_alone_keeps_its_position() {
        let text = "a: 1\nlinks:\n  - {name: x, kind: veth}\n  - name: y\n    parent: x\nb: \"q\"\n";
        let l = Locator::new(text, "scenario").unwrap();
        let one = only(text, l.node(&[K("links"), I(1)]).unwrap());
        assert_eq!(one, format!("    \n      \n{}\n    name: y\n    parent: x\n      \n", " ".repeat(25)));
        let zero = only(text, l.node(&[K("links"), I(0)]).unwrap());
        assert_eq!(zero.lines().nth(2), Some("    {name: x, kind: veth}"));
        assert_eq!(only(text, l.node(&[K("b")]).unwrap()).lines().nth(5), Some("   \"q\""));
    }

    #[test]
    fn structural_errors() {
        let e = |t: &str| Locator::new(t, "scenario").unwrap_err();
        assert_eq!(e(""), LocateError { pos: p(1, 1), message: "the scenario file is empty".into() });
        assert_eq!(e("# only a comment\n").message, "the scenario file is empty");
        assert_eq!(e("- a\n").message, "a scenario file must be a map of keys, found a sequence");
        assert_eq!(e("hello\n").message, "a scenario file must be a map of keys, found a scalar");
        let two = e("a: 1\n---\nb: 2\n");
        assert_eq!(two.pos.line, 2);
        assert!(two.message.contains("exactly one YAML document"), "{}", two.message);
        let dup = e("a: 1\nb: 2\na: 3\n");
        assert_eq!((dup.pos, dup.message.as_str()), (p(3, 1), "duplicate key \"a\" (first given at line 1)"));
        let deep = e(&format!("a: {}{}\n", "[".repeat(200), "]".repeat(200)));
        assert!(deep.message.contains("nesting deeper than 64"), "{}", deep.message);
        let syntax = e("a: [1,\n");
        assert!(syntax.message.starts_with("invalid YAML"), "{}", syntax.message);
    }
}
