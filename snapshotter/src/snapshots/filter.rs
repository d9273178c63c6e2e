//! containerd's filter syntax (`github.com/containerd/containerd/filters`), as snapshots.v1 `List` takes it:
//!
//! ```text
//! filter    := selector ("," selector)*          every selector must match
//! selector  := fieldpath [op value]               no op: the field is present
//! fieldpath := field ("." field)*                 field: [A-Za-z0-9_]+ or a "quoted" string
//! op        := "==" | "!=" | "~="                 ~= is a regular expression match
//! value     := any run of characters but ',' and space, or "quoted" (for ~= also /quoted/ or |quoted|)
//! ```
//!
//! A request's several filters are alternatives: an item is listed when any one matches. Pure; the fields a
//! filter can name are given by the caller through [`Fields`].

use regex::Regex;

/// Why a filter does not parse; `position` is a byte offset into `filter`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid filter {filter:?} at byte {position}: {reason}")]
pub struct FilterError {
    pub filter: String,
    pub position: usize,
    pub reason: String,
}

/// Something filters can look at: the value of a field path, or `None` when the field is absent.
pub trait Fields {
    fn field(&self, path: &[String]) -> Option<String>;
}

/// Several filters, any of which may match (no filter: everything matches).
#[derive(Debug, Clone, Default)]
pub struct AnyFilter {
    alternatives: Vec<Filter>,
}

impl AnyFilter {
    pub fn parse<S: AsRef<str>>(filters: &[S]) -> Result<Self, FilterError> {
        let alternatives = filters
            .iter()
            .map(|text| Filter::parse(text.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(AnyFilter { alternatives })
    }

    pub fn matches(&self, item: &dyn Fields) -> bool {
        self.alternatives.is_empty() || self.alternatives.iter().any(|f| f.matches(item))
    }
}

/// One filter: selectors that must all match (an empty filter matches everything).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    selectors: Vec<Selector>,
}

#[derive(Debug, Clone)]
struct Selector {
    path: Vec<String>,
    operator: Operator,
}

#[derive(Debug, Clone)]
enum Operator {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(Regex),
}

impl Filter {
    pub fn parse(text: &str) -> Result<Self, FilterError> {
        if text.trim().is_empty() {
            return Ok(Filter::default());
        }
        Parser {
            text,
            scanner: Scanner::new(text),
        }
        .filter()
    }

    pub fn matches(&self, item: &dyn Fields) -> bool {
        self.selectors.iter().all(|selector| {
            let value = item.field(&selector.path);
            match &selector.operator {
                Operator::Present => value.is_some(),
                Operator::Equal(expected) => value.as_ref() == Some(expected),
                // As containerd: an absent field counts as the empty string here.
                Operator::NotEqual(other) => value.unwrap_or_default() != *other,
                Operator::Matches(re) => re.is_match(&value.unwrap_or_default()),
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Field(String),
    /// The raw text, quotes included.
    Quoted(String),
    Value(String),
    Separator(char),
    Operator(String),
    Eof,
}

struct Scanner<'a> {
    text: &'a str,
    position: usize,
    /// After an operator, the next unquoted run is a value.
    value_mode: bool,
}

fn is_field_char(c: char) -> bool {
    c == '_' || c.is_ascii_alphanumeric()
}

fn is_quote(c: char) -> bool {
    matches!(c, '"' | '/' | '|')
}

impl<'a> Scanner<'a> {
    fn new(text: &'a str) -> Self {
        Scanner {
            text,
            position: 0,
            value_mode: false,
        }
    }

    fn rest(&self) -> &'a str {
        &self.text[self.position..]
    }

    /// The next token and the byte offset it starts at.
    fn scan(&mut self) -> Result<(usize, Token), (usize, String)> {
        let trimmed = self.rest().trim_start();
        self.position = self.text.len() - trimmed.len();
        let start = self.position;
        let Some(c) = trimmed.chars().next() else {
            return Ok((start, Token::Eof));
        };
        if is_quote(c) {
            let mut escaped = false;
            for (offset, next) in trimmed.char_indices().skip(1) {
                match next {
                    '\n' => break,
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    _ if next == c => {
                        self.position = start + offset + next.len_utf8();
                        self.value_mode = false;
                        return Ok((start, Token::Quoted(self.text[start..self.position].into())));
                    }
                    _ => {}
                }
            }
            return Err((start, "quoted literal not terminated".into()));
        }
        if matches!(c, ',' | '.') {
            self.position += 1;
            self.value_mode = false;
            return Ok((start, Token::Separator(c)));
        }
        if matches!(c, '=' | '!' | '~') {
            let len = trimmed
                .find(|c| !matches!(c, '=' | '!' | '~'))
                .unwrap_or(trimmed.len());
            self.position += len;
            self.value_mode = true;
            return Ok((start, Token::Operator(trimmed[..len].into())));
        }
        if self.value_mode {
            let len = trimmed
                .find(|c: char| c == ',' || c.is_whitespace())
                .unwrap_or(trimmed.len());
            self.position += len;
            self.value_mode = false;
            return Ok((start, Token::Value(trimmed[..len].into())));
        }
        if is_field_char(c) {
            let len = trimmed.find(|c| !is_field_char(c)).unwrap_or(trimmed.len());
            self.position += len;
            return Ok((start, Token::Field(trimmed[..len].into())));
        }
        Err((start, format!("unexpected character {c:?}")))
    }

    fn peek(&mut self) -> Result<Token, (usize, String)> {
        let (position, value_mode) = (self.position, self.value_mode);
        let token = self.scan().map(|(_, token)| token);
        (self.position, self.value_mode) = (position, value_mode);
        token
    }
}

struct Parser<'a> {
    text: &'a str,
    scanner: Scanner<'a>,
}

impl Parser<'_> {
    fn error(&self, position: usize, reason: impl Into<String>) -> FilterError {
        FilterError {
            filter: self.text.to_owned(),
            position,
            reason: reason.into(),
        }
    }

    fn scan(&mut self) -> Result<(usize, Token), FilterError> {
        self.scanner
            .scan()
            .map_err(|(position, reason)| self.error(position, reason))
    }

    fn peek(&mut self) -> Result<Token, FilterError> {
        self.scanner
            .peek()
            .map_err(|(position, reason)| self.error(position, reason))
    }

    fn filter(mut self) -> Result<Filter, FilterError> {
        let mut selectors = vec![self.selector()?];
        loop {
            match self.scan()? {
                (_, Token::Eof) => return Ok(Filter { selectors }),
                (_, Token::Separator(',')) => selectors.push(self.selector()?),
                (position, token) => {
                    return Err(self.error(position, format!("unexpected input {token:?}")))
                }
            }
        }
    }

    fn selector(&mut self) -> Result<Selector, FilterError> {
        let mut path = vec![self.field()?];
        while self.peek()? == Token::Separator('.') {
            self.scan()?;
            path.push(self.field()?);
        }
        let operator = match self.peek()? {
            Token::Eof | Token::Separator(',') => Operator::Present,
            _ => match self.scan()? {
                (position, Token::Operator(op)) => {
                    let (value_position, value) = self.value(op == "~=")?;
                    match op.as_str() {
                        "==" => Operator::Equal(value),
                        "!=" => Operator::NotEqual(value),
                        "~=" => Operator::Matches(Regex::new(&value).map_err(|e| {
                            self.error(value_position, format!("invalid regular expression: {e}"))
                        })?),
                        _ => {
                            return Err(self.error(position, format!("unsupported operator {op:?}")))
                        }
                    }
                }
                (position, _) => {
                    return Err(self.error(position, "expected an operator (==, != or ~=)"))
                }
            },
        };
        Ok(Selector { path, operator })
    }

    fn field(&mut self) -> Result<String, FilterError> {
        match self.scan()? {
            (_, Token::Field(name)) => Ok(name),
            (position, Token::Quoted(raw)) => self.unquote(position, &raw, false),
            (position, _) => Err(self.error(position, "expected a field name or a quoted string")),
        }
    }

    fn value(&mut self, alternative_quotes: bool) -> Result<(usize, String), FilterError> {
        match self.scan()? {
            (position, Token::Value(value) | Token::Field(value)) => Ok((position, value)),
            (position, Token::Quoted(raw)) => {
                Ok((position, self.unquote(position, &raw, alternative_quotes)?))
            }
            (position, _) => Err(self.error(position, "expected a value")),
        }
    }

    /// Removes the quotes and resolves escapes (`\n`, `\"`, `\x41`, `\u00e9` …). Inside the `/…/` and `|…|`
    /// quotes of a regular expression only the quote character is unescaped.
    fn unquote(
        &self,
        position: usize,
        raw: &str,
        alternative: bool,
    ) -> Result<String, FilterError> {
        let quote = raw.chars().next().unwrap_or('"');
        if quote != '"' && !alternative {
            return Err(self.error(position, "invalid quote encountered"));
        }
        let inner = &raw[1..raw.len() - 1];
        if quote != '"' {
            return Ok(inner.replace(&format!("\\{quote}"), &quote.to_string()));
        }
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            let bad = || self.error(position, "illegal escape sequence");
            let escaped = chars.next().ok_or_else(bad)?;
            let mut hex = |digits: usize| -> Result<char, FilterError> {
                let text: String = chars.by_ref().take(digits).collect();
                u32::from_str_radix(&text, 16)
                    .ok()
                    .filter(|_| text.len() == digits)
                    .and_then(char::from_u32)
                    .ok_or_else(bad)
            };
            out.push(match escaped {
                'a' => '\u{7}',
                'b' => '\u{8}',
                'f' => '\u{c}',
                'n' => '\n',
                'r' => '\r',
                't' => '\t',
                'v' => '\u{b}',
                '\\' | '"' => escaped,
                'x' => hex(2)?,
                'u' => hex(4)?,
                'U' => hex(8)?,
                '0'..='7' => {
                    let rest: String = chars.by_ref().take(2).collect();
                    u32::from_str_radix(&format!("{escaped}{rest}"), 8)
                        .ok()
                        .filter(|_| rest.len() == 2)
                        .and_then(char::from_u32)
                        .ok_or_else(bad)?
                }
                _ => return Err(bad()),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A snapshot-like item: name, parent, kind and labels.
    struct Item {
        name: &'static str,
        parent: &'static str,
        kind: &'static str,
        labels: BTreeMap<String, String>,
    }

    impl Fields for Item {
        fn field(&self, path: &[String]) -> Option<String> {
            match path.first()?.as_str() {
                "name" => Some(self.name.into()),
                "parent" => Some(self.parent.into()),
                "kind" => Some(self.kind.into()),
                "labels" if !self.labels.is_empty() => {
                    self.labels.get(&path[1..].join(".")).cloned()
                }
                _ => None,
            }
        }
    }

    fn item(
        name: &'static str,
        parent: &'static str,
        kind: &'static str,
        labels: &[(&str, &str)],
    ) -> Item {
        Item {
            name,
            parent,
            kind,
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        }
    }

    fn matches(filters: &[&str], item: &Item) -> bool {
        AnyFilter::parse(filters).unwrap().matches(item)
    }

    #[test]
    fn the_walk_filters_of_containerds_testsuite() {
        let root = "containerd.io/gc.root";
        let a = item("a-wl", "p", "active", &[(root, "check-walk"), ("l", "2")]);
        let p = item("p", "", "committed", &[(root, "check-walk")]);
        let v = item("v", "p", "view", &[]);
        let gc = r#"labels."containerd.io/gc.root"==check-walk"#;
        assert!(matches(&[gc], &a) && matches(&[gc], &p) && !matches(&[gc], &v));
        let active = format!("kind==active,{gc}");
        assert!(matches(&[&active], &a) && !matches(&[&active], &p));
        assert!(matches(&["kind==committed"], &p));
        assert!(matches(&["name==p", "name==a-np-wl"], &p));
        assert!(!matches(&["name==p", "name==a-np-wl"], &a));
        assert!(matches(&["name==a-wl,labels.l"], &a));
        assert!(!matches(&["name==a-wl,labels.l"], &p));
        assert!(matches(&["parent==p"], &a) && !matches(&["parent==p"], &p));
        let has_parent = format!(r#"parent!="",{gc}"#);
        assert!(matches(&[&has_parent], &a) && !matches(&[&has_parent], &p));
        assert!(matches(&["labels.l==2"], &a) && !matches(&["labels.l==3"], &a));
        assert!(matches(&[], &v), "no filter lists everything");
        assert!(matches(&[""], &v), "an empty filter matches everything");
    }

    #[test]
    fn quoting_values_and_regexes() {
        let i = item("/tmp/x y", "a.b", "view", &[("k.with.dots", "v,1")]);
        assert!(matches(&[r#"name=="/tmp/x y""#], &i));
        assert!(
            matches(&["parent==a.b"], &i),
            "dots inside an unquoted value"
        );
        assert!(matches(&[r#"labels."k.with.dots"=="v,1""#], &i));
        assert!(
            matches(&["labels.k.with.dots==\"v\\x2c1\""], &i),
            "hex escape"
        );
        assert!(matches(&["name~=^/tmp/"], &i) || matches(&["name~=|^/tmp/|"], &i));
        assert!(matches(&["name~=|^/tmp/x|"], &i));
        assert!(matches(&[r"name~=/^\/tmp\/x/"], &i));
        assert!(!matches(&["name~=|^/var|"], &i));
        assert!(
            matches(&["name!=other , kind == view"], &i),
            "spaces around tokens"
        );
        assert!(
            matches(&["missing!=x"], &i),
            "an absent field is not equal to anything but \"\""
        );
        assert!(!matches(&["missing==\"\""], &i));
    }

    #[test]
    fn malformed_filters_are_refused_with_a_position() {
        for (text, position) in [
            ("name==", 6),
            ("name=\"x", 5),
            ("name=>x", 4),
            ("==x", 0),
            ("name==x,", 8),
            ("name==/abs", 6),
            ("name==x y", 8),
            ("name~=|(|", 6),
            (r#"name=="\q""#, 6),
        ] {
            let err = Filter::parse(text).unwrap_err();
            assert_eq!(err.position, position, "{text:?}: {err}");
        }
        assert!(AnyFilter::parse(&["kind==view", "name=="]).is_err());
    }
}
