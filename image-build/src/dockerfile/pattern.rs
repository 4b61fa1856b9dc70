//! Path patterns: Go's `filepath.Match` (COPY and ADD wildcards), its
//! `filepath.Clean`, and the `.dockerignore` flavour with `**`.

/// A malformed pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad pattern {pattern:?}: {reason}")]
pub struct PatternError {
    /// The pattern as written.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Go's `filepath.Clean` for `/`-separated paths: one slash between
/// names, no `.` names, `..` resolved lexically, no trailing slash, `.`
/// for nothing.
pub fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            p => parts.push(p),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

/// Whether `text` holds a wildcard character of `filepath.Match`.
pub fn has_wildcard(text: &str) -> bool {
    text.contains(['*', '?', '[', '\\'])
}

/// One item of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Lit(char),
    /// `?`: one character other than `/`.
    One,
    /// `*`: any run of characters other than `/`.
    Star,
    /// `**/` inside a pattern: nothing, or anything ending with `/`.
    Dirs,
    /// `**` at the end: anything.
    Rest,
    /// `[...]`.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

fn parse_class(
    chars: &[char],
    mut i: usize,
    pattern: &str,
) -> Result<(Token, usize), PatternError> {
    let bad = |reason| PatternError {
        pattern: pattern.to_owned(),
        reason,
    };
    let negated = chars.get(i) == Some(&'^');
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let one = |i: &mut usize| -> Result<char, PatternError> {
        match chars.get(*i) {
            None => Err(bad("unterminated [")),
            Some('\\') => {
                *i += 1;
                let c = chars.get(*i).copied().ok_or(bad("unterminated ["))?;
                *i += 1;
                Ok(c)
            }
            Some(']' | '-') => Err(bad("a character class needs a character here")),
            Some(&c) => {
                *i += 1;
                Ok(c)
            }
        }
    };
    loop {
        if chars.get(i) == Some(&']') && !ranges.is_empty() {
            return Ok((Token::Class { negated, ranges }, i + 1));
        }
        let lo = one(&mut i)?;
        let hi = if chars.get(i) == Some(&'-') {
            i += 1;
            one(&mut i)?
        } else {
            lo
        };
        if hi < lo {
            return Err(bad("a character range runs backwards"));
        }
        ranges.push((lo, hi));
    }
}

fn match_tokens(tokens: &[Token], path: &[char]) -> bool {
    // reach[j]: the tokens so far can match path[..j].
    let n = path.len();
    let mut reach = vec![false; n + 1];
    reach[0] = true;
    for token in tokens {
        let mut next = vec![false; n + 1];
        match token {
            Token::Lit(c) => {
                for j in 0..n {
                    next[j + 1] = reach[j] && path[j] == *c;
                }
            }
            Token::One => {
                for j in 0..n {
                    next[j + 1] = reach[j] && path[j] != '/';
                }
            }
            Token::Class { negated, ranges } => {
                for j in 0..n {
                    let inside = ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&path[j]));
                    next[j + 1] = reach[j] && inside != *negated;
                }
            }
            Token::Star => {
                for j in 0..=n {
                    if reach[j] {
                        next[j] = true;
                        let mut k = j;
                        while k < n && path[k] != '/' {
                            k += 1;
                            next[k] = true;
                        }
                    }
                }
            }
            Token::Dirs => {
                let mut any = false;
                for j in 0..=n {
                    // Empty, or anything that ends with '/'.
                    next[j] = reach[j] || (any && j > 0 && path[j - 1] == '/');
                    any |= reach[j];
                }
            }
            Token::Rest => {
                let mut any = false;
                for j in 0..=n {
                    any |= reach[j];
                    next[j] = any;
                }
            }
        }
        reach = next;
    }
    reach[n]
}

/// A `filepath.Match` pattern for one path component (COPY wildcards).
#[derive(Debug, Clone)]
pub struct Glob {
    tokens: Vec<Token>,
}

impl Glob {
    /// Parses `pattern`.
    pub fn new(pattern: &str) -> Result<Glob, PatternError> {
        let chars: Vec<char> = pattern.chars().collect();
        let mut tokens = Vec::new();
        let mut i = 0;
        while let Some(&c) = chars.get(i) {
            i += 1;
            tokens.push(match c {
                '*' => Token::Star,
                '?' => Token::One,
                '[' => {
                    let (t, next) = parse_class(&chars, i, pattern)?;
                    i = next;
                    t
                }
                '\\' => {
                    let Some(&n) = chars.get(i) else {
                        return Err(PatternError {
                            pattern: pattern.to_owned(),
                            reason: "it ends with an escape",
                        });
                    };
                    i += 1;
                    Token::Lit(n)
                }
                c => Token::Lit(c),
            });
        }
        Ok(Glob { tokens })
    }

    /// Whether `name` matches the whole pattern.
    pub fn matches(&self, name: &str) -> bool {
        let chars: Vec<char> = name.chars().collect();
        match_tokens(&self.tokens, &chars)
    }
}

/// How a `.dockerignore` pattern is matched; Docker's matcher picks one
/// of these from the pattern's shape, and the choice shows in corner
/// cases (`**foo` matches any path ending in `foo`).
#[derive(Debug, Clone)]
enum Kind {
    Exact,
    /// `dir/**`: anything starting with `dir/`.
    Prefix(String),
    /// `**/name`: anything ending with `/name`, or `name` itself.
    Suffix(String),
    Tokens(Vec<Token>),
}

/// One `.dockerignore` pattern, cleaned.
#[derive(Debug, Clone)]
pub struct IgnorePattern {
    /// The cleaned pattern (without `!`).
    pub text: String,
    /// A `!` exception: matching paths are included again.
    pub exception: bool,
    kind: Kind,
}

impl IgnorePattern {
    /// Compiles a cleaned pattern.
    pub fn new(text: &str, exception: bool) -> Result<IgnorePattern, PatternError> {
        #[derive(PartialEq)]
        enum Detected {
            Exact,
            Prefix,
            Suffix,
            Tokens,
        }
        let chars: Vec<char> = text.chars().collect();
        let mut tokens = Vec::new();
        let mut detected = Detected::Exact;
        let mut i = 0;
        let mut step = 0;
        while let Some(&c) = chars.get(i) {
            i += 1;
            match c {
                '*' if chars.get(i) == Some(&'*') => {
                    i += 1;
                    if chars.get(i) == Some(&'/') {
                        i += 1;
                    }
                    if i >= chars.len() {
                        detected = if detected == Detected::Exact {
                            Detected::Prefix
                        } else {
                            Detected::Tokens
                        };
                        tokens.push(Token::Rest);
                    } else {
                        detected = Detected::Tokens;
                        tokens.push(Token::Dirs);
                    }
                    if step == 0 {
                        detected = Detected::Suffix;
                    }
                }
                '*' => {
                    tokens.push(Token::Star);
                    detected = Detected::Tokens;
                }
                '?' => {
                    tokens.push(Token::One);
                    detected = Detected::Tokens;
                }
                '\\' => match chars.get(i) {
                    Some(&n) => {
                        i += 1;
                        tokens.push(Token::Lit(n));
                        detected = Detected::Tokens;
                    }
                    None => tokens.push(Token::Lit('\\')),
                },
                '[' => {
                    let (t, next) = parse_class(&chars, i, text)?;
                    i = next;
                    tokens.push(t);
                    detected = Detected::Tokens;
                }
                ']' => {
                    tokens.push(Token::Lit(']'));
                    detected = Detected::Tokens;
                }
                c => tokens.push(Token::Lit(c)),
            }
            step += 1;
        }
        let kind = match detected {
            Detected::Suffix => Kind::Suffix(chars.iter().skip(2).collect()),
            Detected::Prefix => Kind::Prefix(chars[..chars.len() - 2].iter().collect()),
            Detected::Exact => Kind::Exact,
            Detected::Tokens => Kind::Tokens(tokens),
        };
        Ok(IgnorePattern {
            text: text.to_owned(),
            exception,
            kind,
        })
    }

    /// Whether the pattern matches `path` itself (cleaned, relative).
    pub fn matches_path(&self, path: &str) -> bool {
        match &self.kind {
            Kind::Exact => path == self.text,
            Kind::Prefix(p) => path.starts_with(p.as_str()),
            Kind::Suffix(s) => {
                path.ends_with(s.as_str()) || s.strip_prefix('/').is_some_and(|rest| path == rest)
            }
            Kind::Tokens(t) => {
                let chars: Vec<char> = path.chars().collect();
                match_tokens(t, &chars)
            }
        }
    }

    /// Whether the pattern matches `path` or one of its parent directories.
    pub fn matches_or_parent(&self, path: &str) -> bool {
        if self.matches_path(path) {
            return true;
        }
        let mut end = 0;
        while let Some(slash) = path[end..].find('/') {
            end += slash;
            if self.matches_path(&path[..end]) {
                return true;
            }
            end += 1;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_behaves_like_go() {
        let table = [
            ("", "."),
            (".", "."),
            ("./foo", "foo"),
            ("foo/", "foo"),
            ("/foo/../bar", "/bar"),
            ("a//b/./c/..", "a/b"),
            ("../x", "../x"),
            ("/../x", "/x"),
            ("a/../..", ".."),
            ("/", "/"),
        ];
        for (input, want) in table {
            assert_eq!(clean(input), want, "{input:?}");
        }
    }

    #[test]
    fn glob_follows_filepath_match() {
        let table = [
            ("hom*", "home", true),
            ("hom*", "hom", true),
            ("hom?.txt", "home.txt", true),
            ("hom?.txt", "hom.txt", false),
            ("index.?s", "index.js", true),
            ("index.?s", "index.ts", true),
            ("*.png", ".hidden.png", true),
            ("arr[[]0].txt", "arr[0].txt", true),
            ("[a-c]x", "bx", true),
            ("[^a-c]x", "bx", false),
            ("[^a-c]x", "dx", true),
            ("a\\*b", "a*b", true),
            ("a\\*b", "axb", false),
        ];
        for (pattern, name, want) in table {
            assert_eq!(
                Glob::new(pattern).expect("must succeed").matches(name),
                want,
                "{pattern} {name}"
            );
        }
        assert!(Glob::new("[a").is_err());
        assert!(Glob::new("[]").is_err());
        assert!(Glob::new("[z-a]").is_err());
        assert!(Glob::new("a\\").is_err());
    }

    #[test]
    fn ignore_patterns_match_like_docker() {
        let table = [
            ("*/temp*", "somedir/temporary.txt", true),
            ("*/temp*", "somedir/temp", true),
            ("*/temp*", "temp", false),
            ("*/*/temp*", "somedir/subdir/temporary.txt", true),
            ("temp?", "tempa", true),
            ("temp?", "tempab", false),
            ("**/*.go", "main.go", true),
            ("**/*.go", "a/b/c.go", true),
            ("**", "anything/at/all", true),
            ("foo/**", "foo/bar", true),
            ("foo/**/bar", "foo/bar", true),
            ("foo/**/bar", "foo/a/b/bar", true),
            ("**/foo.txt", "foo.txt", true),
            ("**/foo.txt", "x/foo.txt", true),
            ("**/foo.txt", "xfoo.txt", false),
            ("*.md", "README.md", true),
            ("*.md", "docs/README.md", false),
        ];
        for (pattern, path, want) in table {
            let p = IgnorePattern::new(pattern, false).expect("must succeed");
            assert_eq!(p.matches_path(path), want, "{pattern} {path}");
        }
    }

    #[test]
    fn a_pattern_naming_a_directory_excludes_its_content() {
        let p = IgnorePattern::new("node_modules", false).expect("must succeed");
        assert!(p.matches_or_parent("node_modules/x/y.js"));
        assert!(!p.matches_or_parent("src/node_modules_x"));
        let p = IgnorePattern::new("**/foo", false).expect("must succeed");
        assert!(p.matches_or_parent("a/b/foo/c/d"));
    }
}
