//! The builder's word lexer: quote removal, escapes and `$VAR` substitution
//! the way the Dockerfile reference describes them (its "Environment
//! replacement" section). It is not a shell: it never runs anything, and
//! the commands of RUN, CMD and ENTRYPOINT never pass through it.

use std::collections::BTreeSet;

/// Where variable values come from.
pub trait Vars {
    /// The value of `name`, or `None` when it is not set.
    fn get(&self, name: &str) -> Option<&str>;
}

/// No variables at all.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoVars;

impl Vars for NoVars {
    fn get(&self, _: &str) -> Option<&str> {
        None
    }
}

fn last_of<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

impl Vars for &[(String, String)] {
    fn get(&self, name: &str) -> Option<&str> {
        last_of(self, name)
    }
}

impl Vars for Vec<(String, String)> {
    fn get(&self, name: &str) -> Option<&str> {
        last_of(self, name)
    }
}

impl Vars for std::collections::BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<&str> {
        std::collections::BTreeMap::get(self, name).map(String::as_str)
    }
}

/// A word the lexer could not process.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShellError {
    /// A quote or `${` was never closed.
    #[error("unexpected end of text while looking for the matching {0}")]
    Unterminated(&'static str),
    /// `${}`, `${:x}`, `${{x}` and the like.
    #[error("bad substitution in {0:?}")]
    BadSubstitution(String),
    /// A modifier the builder does not know (`${x!y}`).
    #[error("unsupported modifier {modifier:?} in ${{{name}...}}")]
    UnsupportedModifier {
        /// The variable.
        name: String,
        /// What followed its name.
        modifier: String,
    },
    /// `${x?message}` with `x` unset (or `${x:?message}` with it empty).
    #[error("{name}: {message}")]
    Required {
        /// The variable.
        name: String,
        /// The word after `?`, or a default.
        message: String,
    },
    /// A bad pattern in `${x#pattern}` and friends.
    #[error("invalid pattern {0:?} in a substitution (only *, ? and \\ escapes of *, ?, \\ are allowed)")]
    BadPattern(String),
}

/// How a word is processed.
#[derive(Debug, Clone, Copy)]
pub struct Mode {
    /// The escape character (`\` or the `# escape=` directive's).
    pub escape: char,
    /// Keep quote characters in the result (quoting still applies).
    pub raw_quotes: bool,
    /// Keep escape characters in the result.
    pub raw_escapes: bool,
    /// Treat quotes as ordinary characters (heredoc bodies).
    pub skip_quotes: bool,
    /// Leave `$NAME` of unset variables as written.
    pub skip_unset: bool,
}

impl Mode {
    /// Ordinary processing with escape character `escape`.
    pub fn new(escape: char) -> Mode {
        Mode {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_quotes: false,
            skip_unset: false,
        }
    }
}

/// The result of processing one word.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Processed {
    /// The text with quotes removed and variables replaced.
    pub value: String,
    /// The same, split into words at unquoted whitespace.
    pub words: Vec<String>,
    /// Variables that were referenced and set.
    pub matched: BTreeSet<String>,
    /// Variables that were referenced and not set.
    pub unmatched: BTreeSet<String>,
}

/// Processes `word` with `vars`.
pub fn process(word: &str, vars: &dyn Vars, mode: Mode) -> Result<Processed, ShellError> {
    let mut lexer = Lexer {
        chars: word.chars().collect(),
        pos: 0,
        vars,
        mode,
        raw_escapes: mode.raw_escapes,
        matched: BTreeSet::new(),
        unmatched: BTreeSet::new(),
    };
    let (value, words) = lexer.until(None, mode.raw_escapes)?;
    Ok(Processed {
        value,
        words,
        matched: lexer.matched,
        unmatched: lexer.unmatched,
    })
}

/// Processes `word` with the default mode for `escape`: the value only.
pub fn expand(word: &str, vars: &dyn Vars, escape: char) -> Result<Processed, ShellError> {
    process(word, vars, Mode::new(escape))
}

/// Splits a result into words at unquoted whitespace, the way the shell
/// would after substitution.
#[derive(Default)]
struct Words {
    buf: String,
    words: Vec<String>,
    in_word: bool,
}

impl Words {
    fn add_char(&mut self, ch: char) {
        if ch.is_whitespace() {
            if self.in_word && !self.buf.is_empty() {
                self.words.push(std::mem::take(&mut self.buf));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(ch);
        }
    }

    fn add_raw_char(&mut self, ch: char) {
        self.buf.push(ch);
        self.in_word = true;
    }

    fn add_str(&mut self, s: &str) {
        s.chars().for_each(|c| self.add_char(c));
    }

    fn add_raw_str(&mut self, s: &str) {
        self.buf.push_str(s);
        self.in_word = true;
    }

    fn finish(mut self) -> Vec<String> {
        if !self.buf.is_empty() {
            self.words.push(self.buf);
        }
        self.words
    }
}

struct Lexer<'a> {
    chars: Vec<char>,
    pos: usize,
    vars: &'a dyn Vars,
    mode: Mode,
    raw_escapes: bool,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
}

impl Lexer<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        Some(c)
    }

    fn lookup(&mut self, name: &str) -> Option<String> {
        match self.vars.get(name) {
            Some(v) => {
                self.matched.insert(name.to_owned());
                Some(v.to_owned())
            }
            None => {
                self.unmatched.insert(name.to_owned());
                None
            }
        }
    }

    /// Processes up to `stop` (consumed) or the end of the text.
    fn until(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Result<(String, Vec<String>), ShellError> {
        let saved = std::mem::replace(&mut self.raw_escapes, raw_escapes);
        let result = self.until_inner(stop);
        self.raw_escapes = saved;
        result
    }

    fn until_inner(&mut self, stop: Option<char>) -> Result<(String, Vec<String>), ShellError> {
        let mut out = String::new();
        let mut words = Words::default();
        while let Some(ch) = self.peek() {
            if Some(ch) == stop {
                self.pos += 1;
                return Ok((out, words.finish()));
            }
            match ch {
                '$' => {
                    let v = self.dollar()?;
                    out.push_str(&v);
                    words.add_str(&v);
                }
                '<' => {
                    let v = self.possible_heredoc();
                    out.push_str(&v);
                    words.add_raw_str(&v);
                }
                '\'' if !self.mode.skip_quotes => {
                    let v = self.single_quoted()?;
                    out.push_str(&v);
                    words.add_raw_str(&v);
                }
                '"' if !self.mode.skip_quotes => {
                    let v = self.double_quoted()?;
                    out.push_str(&v);
                    words.add_raw_str(&v);
                }
                _ => {
                    self.pos += 1;
                    let mut ch = ch;
                    if ch == self.mode.escape {
                        if self.raw_escapes {
                            words.add_raw_char(ch);
                            out.push(ch);
                        }
                        match self.next() {
                            Some(c) => ch = c,
                            None => break,
                        }
                        words.add_raw_char(ch);
                    } else {
                        words.add_char(ch);
                    }
                    out.push(ch);
                }
            }
        }
        match stop {
            Some('}') => Err(ShellError::Unterminated("'}'")),
            Some('/') => Err(ShellError::Unterminated("'/' in ${}")),
            Some(_) => Err(ShellError::Unterminated("character")),
            None => Ok((out, words.finish())),
        }
    }

    fn single_quoted(&mut self) -> Result<String, ShellError> {
        let mut out = String::new();
        let open = self.next();
        if self.mode.raw_quotes {
            out.extend(open);
        }
        loop {
            match self.next() {
                None => return Err(ShellError::Unterminated("single quote")),
                Some('\'') => {
                    if self.mode.raw_quotes {
                        out.push('\'');
                    }
                    return Ok(out);
                }
                Some(c) => out.push(c),
            }
        }
    }

    fn double_quoted(&mut self) -> Result<String, ShellError> {
        let mut out = String::new();
        let open = self.next();
        if self.mode.raw_quotes {
            out.extend(open);
        }
        loop {
            match self.peek() {
                None => return Err(ShellError::Unterminated("double quote")),
                Some('"') => {
                    self.pos += 1;
                    if self.mode.raw_quotes {
                        out.push('"');
                    }
                    return Ok(out);
                }
                Some('$') => {
                    let v = self.dollar()?;
                    out.push_str(&v);
                }
                Some(mut ch) => {
                    self.pos += 1;
                    if ch == self.mode.escape {
                        if self.raw_escapes {
                            out.push(ch);
                        }
                        match self.peek() {
                            None => continue,
                            Some(c) if c == '"' || c == '$' || c == self.mode.escape => {
                                self.pos += 1;
                                ch = c;
                            }
                            // Any other escape stays as written.
                            Some(_) => {}
                        }
                    }
                    out.push(ch);
                }
            }
        }
    }

    /// A name after `$`: letters, digits and `_`; or one digit run; or one
    /// of the shell's special parameters.
    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && ch.is_ascii_digit() {
                while let Some(d) = self.peek().filter(char::is_ascii_digit) {
                    self.pos += 1;
                    name.push(d);
                }
                return name;
            }
            if name.is_empty() && matches!(ch, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0') {
                self.pos += 1;
                name.push(ch);
                return name;
            }
            if !(ch.is_alphanumeric() || ch == '_') {
                break;
            }
            self.pos += 1;
            name.push(ch);
        }
        name
    }

    fn dollar(&mut self) -> Result<String, ShellError> {
        let start = self.pos;
        self.pos += 1;
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".into());
            }
            return Ok(match self.lookup(&name) {
                Some(v) => v,
                None if self.mode.skip_unset => format!("${name}"),
                None => String::new(),
            });
        }
        self.pos += 1;
        match self.peek() {
            None => return Err(ShellError::Unterminated("'}'")),
            Some('{' | '}' | ':') => {
                return Err(ShellError::BadSubstitution(self.text_from(start)));
            }
            Some(_) => {}
        }
        let name = self.name();
        let Some(first) = self.next() else {
            return Err(ShellError::Unterminated("'}'"));
        };
        match first {
            '}' => Ok(match self.lookup(&name) {
                Some(v) => v,
                None if self.mode.skip_unset => format!("${{{name}}}"),
                None => String::new(),
            }),
            '/' => self.replace(name),
            ':' | '+' | '-' | '?' | '#' | '%' => {
                let (null_is_unset, op) = if first == ':' {
                    match self.next() {
                        Some(op) => (true, op),
                        None => return Err(ShellError::Unterminated("'}'")),
                    }
                } else {
                    (false, first)
                };
                let modifier = if null_is_unset {
                    format!(":{op}")
                } else {
                    op.to_string()
                };
                let pattern_like = op == '#' || op == '%';
                if !matches!(op, '+' | '-' | '?' | '#' | '%') || (null_is_unset && pattern_like) {
                    return Err(ShellError::UnsupportedModifier { name, modifier });
                }
                let (word, _) = self.until(Some('}'), pattern_like)?;
                let value = self.lookup(&name);
                if self.mode.skip_unset && value.is_none() {
                    return Ok(format!("${{{name}{modifier}{word}}}"));
                }
                let empty_is_unset = |v: &Option<String>| match v {
                    None => true,
                    Some(s) => null_is_unset && s.is_empty(),
                };
                match op {
                    '-' => Ok(if empty_is_unset(&value) {
                        word
                    } else {
                        value.unwrap_or_default()
                    }),
                    '+' => Ok(if empty_is_unset(&value) {
                        String::new()
                    } else {
                        word
                    }),
                    '?' => match value {
                        None => Err(ShellError::Required {
                            name,
                            message: if word.is_empty() {
                                "is not allowed to be unset".into()
                            } else {
                                word
                            },
                        }),
                        Some(v) if null_is_unset && v.is_empty() => Err(ShellError::Required {
                            name,
                            message: if word.is_empty() {
                                "is not allowed to be empty".into()
                            } else {
                                word
                            },
                        }),
                        Some(v) => Ok(v),
                    },
                    _ => {
                        let value = value.unwrap_or_default();
                        let (greedy, pattern) = match word.strip_prefix(op) {
                            Some(rest) => (true, rest.to_owned()),
                            None => (false, word),
                        };
                        let glob = Glob::parse(&pattern)?;
                        let chars: Vec<char> = value.chars().collect();
                        Ok(if op == '#' {
                            let ends = glob.prefix_ends(&chars);
                            let end = if greedy { ends.last() } else { ends.first() };
                            chars[end.copied().unwrap_or(0)..].iter().collect()
                        } else {
                            let starts = glob.suffix_starts(&chars);
                            // The shortest suffix starts last.
                            let start = if greedy {
                                starts.first()
                            } else {
                                starts.last()
                            };
                            chars[..start.copied().unwrap_or(chars.len())]
                                .iter()
                                .collect()
                        })
                    }
                }
            }
            other => {
                // Consume the rest so the message shows it.
                Err(ShellError::UnsupportedModifier {
                    name,
                    modifier: other.to_string(),
                })
            }
        }
    }

    /// `${name/pattern/replacement}` and `${name//pattern/replacement}`.
    fn replace(&mut self, name: String) -> Result<String, ShellError> {
        let all = self.peek() == Some('/');
        if all {
            self.pos += 1;
        }
        let (pattern, _) = self.until(Some('/'), true)?;
        let (replacement, _) = self.until(Some('}'), true)?;
        let value = self.lookup(&name);
        let Some(value) = value else {
            if self.mode.skip_unset {
                return Ok(format!("${{{name}/{pattern}/{replacement}}}"));
            }
            return Ok(String::new());
        };
        let glob = Glob::parse(&pattern)?;
        let chars: Vec<char> = value.chars().collect();
        let mut out = String::new();
        let mut i = 0;
        let mut replaced = false;
        let mut last_end: Option<usize> = None;
        while i <= chars.len() {
            if replaced && !all {
                break;
            }
            // The leftmost start with a match; the longest match there.
            let found = glob.prefix_ends(&chars[i..]).last().copied();
            match found {
                Some(len) if len == 0 && last_end == Some(i) => {
                    // An empty match right after a match does not count.
                    if let Some(&c) = chars.get(i) {
                        out.push(c);
                    }
                    i += 1;
                }
                Some(len) => {
                    out.push_str(&replacement);
                    replaced = true;
                    if len == 0 {
                        if let Some(&c) = chars.get(i) {
                            out.push(c);
                        }
                        i += 1;
                    } else {
                        i += len;
                        last_end = Some(i);
                    }
                }
                None => {
                    if let Some(&c) = chars.get(i) {
                        out.push(c);
                    }
                    i += 1;
                }
            }
        }
        if i < chars.len() {
            out.extend(&chars[i..]);
        }
        Ok(out)
    }

    /// `<<` and the whitespace after it stay together, so a heredoc word
    /// (`<< EOF`) is one word.
    fn possible_heredoc(&mut self) -> String {
        self.pos += 1;
        if self.peek() != Some('<') {
            return "<".into();
        }
        self.pos += 1;
        let mut out = String::from("<<");
        while let Some(c) = self.peek().filter(|c| matches!(c, '\t' | '\r' | ' ')) {
            self.pos += 1;
            out.push(c);
        }
        out
    }

    fn text_from(&self, start: usize) -> String {
        self.chars[start..self.pos.min(self.chars.len())]
            .iter()
            .collect()
    }
}

/// A shell pattern of `${x#pattern}`: `*`, `?` and escapes; no brackets.
#[derive(Debug)]
struct Glob(Vec<GlobToken>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GlobToken {
    Star,
    One,
    Char(char),
}

impl Glob {
    fn parse(pattern: &str) -> Result<Glob, ShellError> {
        let mut tokens = Vec::new();
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            tokens.push(match c {
                '*' => GlobToken::Star,
                '?' => GlobToken::One,
                '\\' => match chars.peek().copied() {
                    // `}` and `/` are escaped for the ${} syntax only.
                    Some(n @ ('}' | '/')) => {
                        chars.next();
                        GlobToken::Char(n)
                    }
                    Some(n @ ('*' | '?' | '\\')) => {
                        chars.next();
                        GlobToken::Char(n)
                    }
                    _ => return Err(ShellError::BadPattern(pattern.to_owned())),
                },
                c => GlobToken::Char(c),
            });
        }
        Ok(Glob(tokens))
    }

    /// Every length `n` for which `s[..n]` matches, ascending.
    fn prefix_ends(&self, s: &[char]) -> Vec<usize> {
        // reach[j]: the tokens so far can match s[..j].
        let mut reach = vec![false; s.len() + 1];
        reach[0] = true;
        for token in &self.0 {
            let mut next = vec![false; s.len() + 1];
            match token {
                GlobToken::Star => {
                    let mut any = false;
                    for j in 0..=s.len() {
                        any |= reach[j];
                        next[j] = any;
                    }
                }
                GlobToken::One => {
                    next[1..].copy_from_slice(&reach[..s.len()]);
                }
                GlobToken::Char(c) => {
                    for j in 0..s.len() {
                        next[j + 1] = reach[j] && s[j] == *c;
                    }
                }
            }
            reach = next;
        }
        (0..=s.len()).filter(|&j| reach[j]).collect()
    }

    /// Every start `i` for which `s[i..]` matches, ascending.
    fn suffix_starts(&self, s: &[char]) -> Vec<usize> {
        (0..=s.len())
            .filter(|&i| self.prefix_ends(&s[i..]).last() == Some(&(s.len() - i)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn ex(word: &str, env: &[(&str, &str)]) -> Result<String, ShellError> {
        expand(word, &vars(env), '\\').map(|p| p.value)
    }

    #[test]
    fn substitution_forms_follow_the_reference() {
        let env = [("set", "value"), ("empty", "")];
        let table: &[(&str, &str)] = &[
            ("$set", "value"),
            ("${set}", "value"),
            ("${set}_bar", "value_bar"),
            ("$unset", ""),
            ("${unset:-word}", "word"),
            ("${empty:-word}", "word"),
            ("${set:-word}", "value"),
            ("${unset-word}", "word"),
            ("${empty-word}", ""),
            ("${set:+word}", "word"),
            ("${empty:+word}", ""),
            ("${unset:+word}", ""),
            ("${empty+word}", "word"),
            ("${unset+word}", ""),
            ("${unset:-$set}", "value"),
            ("${unset:-${set}x}", "valuex"),
            ("\\$set", "$set"),
            ("\\${set}", "${set}"),
            ("'$set'", "$set"),
            ("\"$set\"", "value"),
            ("\"a\\\"b\"", "a\"b"),
            ("\"a\\nb\"", "a\\nb"),
            ("a\\ b", "a b"),
            ("$", "$"),
            ("a$", "a$"),
            ("$1", ""),
        ];
        for (word, want) in table {
            assert_eq!(ex(word, &env).as_deref(), Ok(*want), "{word}");
        }
    }

    #[test]
    fn pattern_modifiers_follow_the_reference_examples() {
        let env = [("str", "foobarbaz"), ("string", "foobarbaz")];
        let table: &[(&str, &str)] = &[
            ("${str#f*b}", "arbaz"),
            ("${str##f*b}", "az"),
            ("${string%b*}", "foobar"),
            ("${string%%b*}", "foo"),
            ("${string/ba/fo}", "fooforbaz"),
            ("${string//ba/fo}", "fooforfoz"),
            ("${string#nomatch}", "foobarbaz"),
            ("${string/x/y}", "foobarbaz"),
        ];
        for (word, want) in table {
            assert_eq!(ex(word, &env).as_deref(), Ok(*want), "{word}");
        }
    }

    #[test]
    fn required_and_bad_forms_are_errors() {
        assert!(matches!(
            ex("${x?must be set}", &[]),
            Err(ShellError::Required { .. })
        ));
        assert!(matches!(
            ex("${x:?}", &[("x", "")]),
            Err(ShellError::Required { .. })
        ));
        assert_eq!(ex("${x?}", &[("x", "")]).as_deref(), Ok(""));
        assert!(matches!(ex("${x", &[]), Err(ShellError::Unterminated(_))));
        assert!(matches!(
            ex("${}", &[]),
            Err(ShellError::BadSubstitution(_))
        ));
        assert!(matches!(
            ex("${:x}", &[]),
            Err(ShellError::BadSubstitution(_))
        ));
        assert!(matches!(
            ex("${x!y}", &[]),
            Err(ShellError::UnsupportedModifier { .. })
        ));
        assert!(matches!(
            ex("${x:#y}", &[]),
            Err(ShellError::UnsupportedModifier { .. })
        ));
        assert!(matches!(ex("'abc", &[]), Err(ShellError::Unterminated(_))));
        assert!(matches!(ex("\"abc", &[]), Err(ShellError::Unterminated(_))));
    }

    #[test]
    fn matched_and_unmatched_names_are_reported() {
        let p =
            expand("$a ${b:-$c} $d", &vars(&[("a", "1"), ("d", "")]), '\\').expect("must succeed");
        assert_eq!(p.matched, ["a", "d"].map(String::from).into());
        assert_eq!(p.unmatched, ["b", "c"].map(String::from).into());
    }

    #[test]
    fn words_split_after_substitution_but_not_inside_quotes() {
        let env = vars(&[("ports", "80 443/tcp")]);
        let p = expand("$ports \"8080 x\" 9", &env, '\\').expect("must succeed");
        assert_eq!(p.words, ["80", "443/tcp", "8080 x", "9"]);
    }

    #[test]
    fn backtick_escape_works_like_backslash() {
        assert_eq!(
            expand("c:\\path` x", &NoVars, '`')
                .expect("must succeed")
                .value,
            "c:\\path x"
        );
        assert_eq!(
            expand("`$x", &NoVars, '`').expect("must succeed").value,
            "$x"
        );
    }

    #[test]
    fn skip_unset_keeps_unknown_references_as_written() {
        let mode = Mode {
            skip_unset: true,
            ..Mode::new('\\')
        };
        let p = process("$a ${b} ${c:-x} ${d/e/f}", &NoVars, mode).expect("must succeed");
        assert_eq!(p.value, "$a ${b} ${c:-x} ${d/e/f}");
    }
}
