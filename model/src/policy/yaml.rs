//! YAML documents → JSON values plus a JSON-pointer → line/column index.
//!
//! One event parser (saphyr-parser) builds both the value and the positions, so the two can never
//! disagree on which document or node is meant. Plain scalars are resolved the way `kubectl`'s
//! YAML reader (sigs.k8s.io/yaml over go-yaml v2, i.e. YAML 1.1) resolves them: `yes`/`on`/`y` are
//! booleans, `0x1F` and `017` are integers. That is what the API server then validates, so a
//! label value written `external: yes` is a boolean here too, exactly as `kubectl apply` sees it.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span, Tag};
use serde_json::{Map, Number, Value};

/// A 1-based line and column in the source text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    fn from_span(span: &Span) -> Pos {
        Pos { line: span.start.line(), column: span.start.col() + 1 }
    }
}

/// Where a node sits: its mapping key (if it is a mapping value) and its value.
#[derive(Clone, Copy, Debug)]
pub struct NodePos {
    pub key: Option<Pos>,
    pub value: Pos,
}

/// One YAML document: its JSON value and the position of every node, by JSON pointer.
#[derive(Debug)]
pub struct YamlDoc {
    pub value: Value,
    pub positions: HashMap<String, NodePos>,
    /// Position of the document's root node.
    pub start: Pos,
}

impl YamlDoc {
    /// Position for a diagnostic about `pointer`: the value itself, or (when `prefer_key`) the
    /// key it hangs from. A pointer to something absent (a missing field) falls back to the
    /// nearest ancestor that exists.
    pub fn locate(&self, pointer: &str, prefer_key: bool) -> Pos {
        let mut p = pointer;
        loop {
            if let Some(np) = self.positions.get(p) {
                return match (prefer_key, np.key) {
                    (true, Some(k)) => k,
                    _ => np.value,
                };
            }
            match p.rfind('/') {
                Some(i) => p = &p[..i],
                None => return self.start,
            }
        }
    }
}

/// A syntax error of the YAML text itself.
#[derive(Debug, Clone)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

type Ev<'a> = (Event<'a>, Span);

struct Builder<'a> {
    events: std::iter::Peekable<Parser<'a, saphyr_parser::StrInput<'a>>>,
    /// Anchored values with their node count and nesting height.
    anchors: HashMap<usize, (Value, usize, usize)>,
    positions: HashMap<String, NodePos>,
    /// Collections open around the node being read.
    depth: usize,
    /// Nodes the document may still produce, counting each alias as the nodes it copies: an
    /// alias bomb ("billion laughs") fails here instead of exhausting memory.
    budget: usize,
}

/// Deeper nesting than this is refused (no policy comes close; deeper would risk the stack).
pub const MAX_DEPTH: usize = 64;

/// At most this many nodes per document, aliases expanded.
pub const MAX_NODES: usize = 1_000_000;

/// Nodes in a value (itself included) and its nesting height (0 for a scalar). Values are
/// built within [`MAX_DEPTH`], which bounds this recursion.
fn measure(v: &Value) -> (usize, usize) {
    let children: Vec<(usize, usize)> = match v {
        Value::Array(a) => a.iter().map(measure).collect(),
        Value::Object(m) => m.values().map(measure).collect(),
        _ => return (1, 0),
    };
    (1 + children.iter().map(|c| c.0).sum::<usize>(), 1 + children.iter().map(|c| c.1).max().unwrap_or(0))
}

/// Parses every document of `text`. Empty documents (`---` with nothing, or only comments) are
/// left out, as `kubectl` does.
pub fn parse_documents(text: &str) -> Result<Vec<YamlDoc>, SyntaxError> {
    let mut b = Builder {
        events: Parser::new_from_str(text).peekable(),
        anchors: HashMap::new(),
        positions: HashMap::new(),
        depth: 0,
        budget: MAX_NODES,
    };
    let mut docs = Vec::new();
    loop {
        let (ev, span) = b.next()?;
        match ev {
            Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
            Event::StreamEnd => break,
            Event::DocumentStart(_) => {
                b.anchors.clear();
                b.positions.clear();
                b.budget = MAX_NODES;
                let (first, first_span) = b.next()?;
                if matches!(first, Event::DocumentEnd) {
                    continue;
                }
                let start = Pos::from_span(&first_span);
                let value = b.node(first, first_span, String::new(), None)?;
                if value.is_null() {
                    continue;
                }
                docs.push(YamlDoc { value, positions: std::mem::take(&mut b.positions), start });
            }
            other => {
                return Err(SyntaxError {
                    pos: Pos::from_span(&span),
                    message: format!("unexpected yaml event {other:?}"),
                })
            }
        }
    }
    Ok(docs)
}

impl<'a> Builder<'a> {
    fn next(&mut self) -> Result<Ev<'a>, SyntaxError> {
        match self.events.next() {
            Some(Ok(ev)) => Ok(ev),
            Some(Err(e)) => Err(SyntaxError {
                pos: Pos { line: e.marker().line(), column: e.marker().col() + 1 },
                message: e.info().to_string(),
            }),
            None => Err(SyntaxError { pos: Pos::default(), message: "unexpected end of yaml stream".into() }),
        }
    }

    fn node(&mut self, ev: Event<'a>, span: Span, ptr: String, key: Option<Pos>) -> Result<Value, SyntaxError> {
        let pos = Pos::from_span(&span);
        self.spend(1, pos)?;
        self.positions.insert(ptr.clone(), NodePos { key, value: pos });
        let opens = matches!(ev, Event::SequenceStart(..) | Event::MappingStart(..));
        if opens {
            if self.depth >= MAX_DEPTH {
                return Err(SyntaxError {
                    pos,
                    message: format!("nesting deeper than {MAX_DEPTH} levels is not a policy"),
                });
            }
            self.depth += 1;
        }
        let v = self.node_inner(ev, pos, ptr)?;
        if opens {
            self.depth -= 1;
        }
        Ok(v)
    }

    fn remember(&mut self, anchor: usize, v: &Value) {
        let (weight, height) = measure(v);
        self.anchors.insert(anchor, (v.clone(), weight, height));
    }

    fn spend(&mut self, nodes: usize, pos: Pos) -> Result<(), SyntaxError> {
        self.budget = self.budget.checked_sub(nodes).ok_or_else(|| SyntaxError {
            pos,
            message: format!("the document expands to more than {MAX_NODES} nodes through aliases (an alias bomb?)"),
        })?;
        Ok(())
    }

    fn node_inner(&mut self, ev: Event<'a>, pos: Pos, ptr: String) -> Result<Value, SyntaxError> {
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                let v = resolve_scalar(&text, style, tag.as_deref()).map_err(|message| SyntaxError { pos, message })?;
                if anchor > 0 {
                    self.remember(anchor, &v);
                }
                Ok(v)
            }
            Event::Alias(id) => {
                let unknown = || SyntaxError { pos, message: "alias to an unknown anchor".into() };
                let (_, weight, height) = *self.anchors.get(&id).ok_or_else(unknown)?;
                if self.depth + height > MAX_DEPTH {
                    return Err(SyntaxError {
                        pos,
                        message: format!("nesting deeper than {MAX_DEPTH} levels is not a policy"),
                    });
                }
                // This alias event already paid for one node.
                self.spend(weight.saturating_sub(1), pos)?;
                self.anchors.get(&id).map(|a| a.0.clone()).ok_or_else(unknown)
            }
            Event::SequenceStart(anchor, _) => {
                let mut items = Vec::new();
                loop {
                    let (ev, span) = self.next()?;
                    if matches!(ev, Event::SequenceEnd) {
                        break;
                    }
                    let child = format!("{ptr}/{}", items.len());
                    items.push(self.node(ev, span, child, None)?);
                }
                let v = Value::Array(items);
                if anchor > 0 {
                    self.remember(anchor, &v);
                }
                Ok(v)
            }
            Event::MappingStart(anchor, _) => {
                let mut map = Map::new();
                let mut merged: Vec<(Map<String, Value>, Pos)> = Vec::new();
                loop {
                    let (kev, kspan) = self.next()?;
                    if matches!(kev, Event::MappingEnd) {
                        break;
                    }
                    let kpos = Pos::from_span(&kspan);
                    let is_merge = matches!(&kev, Event::Scalar(t, ScalarStyle::Plain, _, None) if t == "<<");
                    let key = match kev {
                        Event::Scalar(text, style, _, tag) => {
                            let k = resolve_scalar(&text, style, tag.as_deref())
                                .map_err(|message| SyntaxError { pos: kpos, message })?;
                            match k {
                                Value::String(s) => s,
                                Value::Null => "null".to_string(),
                                other => other.to_string(),
                            }
                        }
                        _ => return Err(SyntaxError { pos: kpos, message: "mapping keys must be scalars".into() }),
                    };
                    let (vev, vspan) = self.next()?;
                    if is_merge {
                        let v = self.node(vev, vspan, format!("{ptr}/<<"), Some(kpos))?;
                        let sources = match v {
                            Value::Object(m) => vec![m],
                            Value::Array(a) => a
                                .into_iter()
                                .filter_map(|x| if let Value::Object(m) = x { Some(m) } else { None })
                                .collect(),
                            _ => {
                                return Err(SyntaxError { pos: kpos, message: "merge key `<<` needs a mapping".into() })
                            }
                        };
                        merged.extend(sources.into_iter().map(|m| (m, kpos)));
                        continue;
                    }
                    if map.contains_key(&key) {
                        return Err(SyntaxError { pos: kpos, message: format!("duplicate key {key:?}") });
                    }
                    let child = format!("{ptr}/{}", escape_pointer(&key));
                    let v = self.node(vev, vspan, child, Some(kpos))?;
                    map.insert(key, v);
                }
                for (source, kpos) in merged {
                    for (k, v) in source {
                        if !map.contains_key(&k) {
                            let child = format!("{ptr}/{}", escape_pointer(&k));
                            self.positions.insert(child, NodePos { key: Some(kpos), value: kpos });
                            map.insert(k, v);
                        }
                    }
                }
                let v = Value::Object(map);
                if anchor > 0 {
                    self.remember(anchor, &v);
                }
                Ok(v)
            }
            other => Err(SyntaxError { pos, message: format!("unexpected yaml event {other:?}") }),
        }
    }
}

/// JSON-pointer escaping of one segment (RFC 6901).
pub fn escape_pointer(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

fn resolve_scalar(text: &str, style: ScalarStyle, tag: Option<&Tag>) -> Result<Value, String> {
    if let Some(tag) = tag {
        if tag.handle == "!!" || tag.handle == "tag:yaml.org,2002:" {
            return match tag.suffix.as_str() {
                "str" => Ok(Value::String(text.to_string())),
                "null" => Ok(Value::Null),
                "bool" => resolve_bool(text).map(Value::Bool).ok_or(format!("{text:?} is not a !!bool")),
                "int" => resolve_int(text).ok_or(format!("{text:?} is not an !!int")),
                "float" => resolve_float(text)
                    .or_else(|| {
                        resolve_int(text).and_then(|v| v.as_f64()).and_then(Number::from_f64).map(Value::Number)
                    })
                    .ok_or(format!("{text:?} is not a !!float")),
                other => Err(format!("unsupported yaml tag !!{other}")),
            };
        }
    }
    if style != ScalarStyle::Plain {
        return Ok(Value::String(text.to_string()));
    }
    if matches!(text, "" | "~" | "null" | "Null" | "NULL") {
        return Ok(Value::Null);
    }
    if let Some(b) = resolve_bool(text) {
        return Ok(Value::Bool(b));
    }
    if let Some(v) = resolve_int(text) {
        return Ok(v);
    }
    if let Some(v) = resolve_float(text) {
        return Ok(v);
    }
    Ok(Value::String(text.to_string()))
}

/// YAML 1.1 booleans, as go-yaml v2 knows them.
fn resolve_bool(t: &str) -> Option<bool> {
    match t {
        "y" | "Y" | "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => Some(true),
        "n" | "N" | "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => Some(false),
        _ => None,
    }
}

/// Integers as Go's `strconv.ParseInt(s, 0, 64)` reads them after go-yaml drops underscores:
/// optional sign, `0x`/`0o`/`0b` prefixes, a leading `0` meaning octal.
fn resolve_int(t: &str) -> Option<Value> {
    let plain: String = t.chars().filter(|&c| c != '_').collect();
    let (neg, body) = match plain.as_bytes().first()? {
        b'-' => (true, &plain[1..]),
        b'+' => (false, &plain[1..]),
        _ => (false, &plain[..]),
    };
    if body.is_empty() || !body.as_bytes()[0].is_ascii_digit() {
        return None;
    }
    let lower = body.to_ascii_lowercase();
    let (radix, digits) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..])
    } else {
        (10, &lower[..])
    };
    if digits.is_empty() {
        return None;
    }
    let magnitude = u64::from_str_radix(digits, radix).ok()?;
    if neg {
        let v = i64::try_from(magnitude).ok().map(|m| -m).or((magnitude == 1u64 << 63).then_some(i64::MIN))?;
        Some(Value::Number(v.into()))
    } else {
        Some(Value::Number(magnitude.into()))
    }
}

fn resolve_float(t: &str) -> Option<Value> {
    match t {
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" | "-.inf" | "-.Inf" | "-.INF" | ".nan" | ".NaN"
        | ".NAN" => {
            // JSON has no infinities or NaN; keep the text so the schema reports a clear type error.
            return Some(Value::String(t.to_string()));
        }
        _ => {}
    }
    let plain: String = t.chars().filter(|&c| c != '_').collect();
    let body = plain.strip_prefix(['-', '+']).unwrap_or(&plain);
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let digits_ok = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some((a, b)) => digits_ok(a) && digits_ok(b) && !(a.is_empty() && b.is_empty()),
        None => !mantissa.is_empty() && digits_ok(mantissa),
    };
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && digits_ok(e)
    });
    if !mantissa_ok || !exponent_ok {
        return None;
    }
    plain.parse::<f64>().ok().and_then(Number::from_f64).map(Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_and_positions() {
        let text = "a: 1\nb:\n  - x\n  - 'yes'\n  - yes\nc: {d: 0x10, e: \"80\", f: 1.5, g: ~}\n---\n---\nz: 017\n";
        let docs = parse_documents(text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(
            docs[0].value,
            json!({"a": 1, "b": ["x", "yes", true], "c": {"d": 16, "e": "80", "f": 1.5, "g": null}})
        );
        assert_eq!(docs[0].locate("/b/1", false), Pos { line: 4, column: 5 });
        assert_eq!(docs[0].locate("/c/e", true), Pos { line: 6, column: 14 });
        assert_eq!(docs[0].locate("/c/e", false), Pos { line: 6, column: 17 });
        assert_eq!(docs[0].locate("/c/missing/deeper", false), Pos { line: 6, column: 4 });
        assert_eq!(docs[1].value, json!({"z": 15}));
        assert_eq!(docs[1].start.line, 9);
    }

    #[test]
    fn anchors_merges_and_errors() {
        let docs = parse_documents("base: &b {x: 1}\nuse:\n  <<: *b\n  w: 2\n  y: 3\n").unwrap();
        // YAML 1.1 as kubectl reads it: a bare `y` key is the boolean true.
        assert_eq!(docs[0].value, json!({"base": {"x": 1}, "use": {"x": 1, "w": 2, "true": 3}}));
        let e = parse_documents("a: 1\na: 2\n").unwrap_err();
        assert_eq!(e.pos.line, 2);
        assert!(e.message.contains("duplicate key"));
        let e = parse_documents("a: [1\n").unwrap_err();
        assert!(e.pos.line >= 1, "{e:?}");
    }
}
