//! Physical lines to logical instructions: parser directives, comments,
//! line continuations and here-document bodies.

use super::ErrorKind;

/// The parser directives at the top of a Dockerfile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directives {
    /// `# syntax=`: recorded, not acted upon (the builder is built in).
    pub syntax: Option<String>,
    /// `# escape=`: `\` (default) or `` ` ``.
    pub escape: Option<char>,
    /// `# check=`: which build checks to skip and whether they fail the check.
    pub check: Option<String>,
}

/// One physical line.
#[derive(Debug)]
struct Line<'a> {
    /// Without its `\n` (a `\r` before it stays).
    text: &'a str,
    /// Whether a `\n` ended it.
    newline: bool,
}

/// An instruction's text after continuations were joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logical {
    /// First line (1-based).
    pub start: usize,
    /// Last line.
    pub end: usize,
    /// The joined text, leading whitespace removed.
    pub text: String,
    /// Whether an empty line sat inside the continuation.
    pub empty_continuation: bool,
}

/// Reads a Dockerfile line by line.
#[derive(Debug)]
pub struct Lexer<'a> {
    lines: Vec<Line<'a>>,
    /// Index of the next unread line.
    pos: usize,
    escape: char,
}

fn trim_newline(s: &str) -> &str {
    s.trim_end_matches(['\r', '\n'])
}

/// `# key = value`, with the key and value as Docker's directive syntax
/// takes them: a letter, then letters and digits; the value trimmed.
fn directive(line: &str) -> Option<(String, String)> {
    let rest = line.strip_prefix('#')?.trim_start();
    let key_len = rest
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())))
        .map_or(rest.len(), |(i, _)| i);
    if key_len == 0 {
        return None;
    }
    let (key, after) = rest.split_at(key_len);
    let value = after.trim_start().strip_prefix('=')?.trim();
    if value.is_empty() {
        return None;
    }
    Some((key.to_ascii_lowercase(), value.to_owned()))
}

impl<'a> Lexer<'a> {
    /// Splits `text` into lines and reads the parser directives at its top.
    pub fn new(text: &'a str) -> Result<(Lexer<'a>, Directives), (usize, ErrorKind)> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut lines = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match rest.find('\n') {
                Some(i) => {
                    lines.push(Line {
                        text: &rest[..i],
                        newline: true,
                    });
                    rest = &rest[i + 1..];
                }
                None => {
                    lines.push(Line {
                        text: rest,
                        newline: false,
                    });
                    rest = "";
                }
            }
        }
        let mut lexer = Lexer {
            lines,
            pos: 0,
            escape: '\\',
        };
        let mut directives = Directives::default();
        while let Some(line) = lexer.lines.get(lexer.pos) {
            let text = trim_newline(line.text).trim_start();
            let Some((key, value)) = directive(text) else {
                break;
            };
            let line_no = lexer.pos + 1;
            let slot_taken = match key.as_str() {
                "syntax" => directives.syntax.replace(value.clone()).is_some(),
                "check" => directives.check.replace(value.clone()).is_some(),
                "escape" => {
                    let escape = match value.as_str() {
                        "\\" => '\\',
                        "`" => '`',
                        _ => {
                            return Err((
                                line_no,
                                ErrorKind::Directive(format!(
                                    "invalid escape character {value:?}: it must be \\ or `"
                                )),
                            ))
                        }
                    };
                    lexer.escape = escape;
                    directives.escape.replace(escape).is_some()
                }
                // An unknown directive is a comment, and ends the directives.
                _ => break,
            };
            if slot_taken {
                return Err((
                    line_no,
                    ErrorKind::Directive(format!("only one {key} parser directive can be used")),
                ));
            }
            lexer.pos += 1;
        }
        Ok((lexer, directives))
    }

    /// The escape character in effect.
    pub fn escape(&self) -> char {
        self.escape
    }

    /// How many physical lines the file has.
    pub fn line_count(&self) -> usize {
        self.lines.len()
    }

    /// Strips a line continuation: `Some(text)` when the line ends with the
    /// escape character (trailing blanks allowed) that is not itself
    /// escaped.
    fn continued<'s>(&self, text: &'s str) -> Option<&'s str> {
        let stripped = text.trim_end_matches([' ', '\t']);
        let body = stripped.strip_suffix(self.escape)?;
        if body.ends_with(self.escape) {
            return None;
        }
        Some(body)
    }

    /// The next instruction, or `None` at the end.
    pub fn next_logical(&mut self) -> Option<Logical> {
        loop {
            let line = self.lines.get(self.pos)?;
            self.pos += 1;
            let start = self.pos;
            let text = trim_newline(line.text).trim_start();
            if text.is_empty() || text.starts_with('#') {
                continue;
            }
            let mut joined = String::new();
            let mut empty_continuation = false;
            let mut more = match self.continued(text) {
                Some(body) => {
                    joined.push_str(body);
                    true
                }
                None => {
                    joined.push_str(text);
                    false
                }
            };
            while more {
                let Some(line) = self.lines.get(self.pos) else {
                    break;
                };
                self.pos += 1;
                let raw = trim_newline(line.text);
                let trimmed = raw.trim_start();
                if trimmed.starts_with('#') {
                    continue;
                }
                if trimmed.is_empty() {
                    empty_continuation = true;
                    continue;
                }
                match self.continued(raw) {
                    Some(body) => joined.push_str(body),
                    None => {
                        joined.push_str(raw);
                        more = false;
                    }
                }
            }
            if joined.trim().is_empty() {
                // Only continuations and comments: nothing to run.
                continue;
            }
            return Some(Logical {
                start,
                end: self.pos,
                text: joined,
                empty_continuation,
            });
        }
    }

    /// Reads a here-document's body after the current instruction: the
    /// lines up to the one that is exactly `name` (after leading tabs when
    /// `chomp`). Returns the body and its last line, or `None` when the
    /// file ends first.
    pub fn heredoc(&mut self, name: &str, chomp: bool) -> Option<(String, usize)> {
        let mut body = String::new();
        while let Some(line) = self.lines.get(self.pos) {
            self.pos += 1;
            let mut candidate = trim_newline(line.text);
            if chomp {
                candidate = candidate.trim_start_matches('\t');
            }
            if candidate == name {
                return Some((body, self.pos));
            }
            body.push_str(line.text);
            if line.newline {
                body.push('\n');
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logical(text: &str) -> Vec<(usize, usize, String)> {
        let (mut lexer, _) = Lexer::new(text).expect("must succeed");
        std::iter::from_fn(|| lexer.next_logical())
            .map(|l| (l.start, l.end, l.text))
            .collect()
    }

    #[test]
    fn directives_are_read_only_at_the_top() {
        let (_, d) = Lexer::new("# syntax=docker/dockerfile:1\n#ESCAPE = `\nFROM x\n")
            .expect("must succeed");
        assert_eq!(d.syntax.as_deref(), Some("docker/dockerfile:1"));
        assert_eq!(d.escape, Some('`'));
        // After a comment, a directive is a comment.
        let (lexer, d) =
            Lexer::new("# About my dockerfile\n# escape=`\nFROM x\n").expect("must succeed");
        assert_eq!(d, Directives::default());
        assert_eq!(lexer.escape(), '\\');
        // An unknown directive is a comment and ends the directives.
        let (_, d) =
            Lexer::new("# unknowndirective=value\n# syntax=value\n").expect("must succeed");
        assert_eq!(d.syntax, None);
        // After an empty line too.
        let (_, d) = Lexer::new("\n# escape=`\nFROM x").expect("must succeed");
        assert_eq!(d.escape, None);
        let err = Lexer::new("# escape=\\\n# escape=`\n").expect_err("must fail");
        assert_eq!(err.0, 2);
        assert!(Lexer::new("# escape=x\n").is_err());
    }

    #[test]
    fn the_reference_whitespace_forms_of_a_directive_are_equal() {
        for line in [
            "#directive=value",
            "# directive =value",
            "#\tdirective= value",
            "# directive = value",
            "#\t  dIrEcTiVe=value",
        ] {
            assert_eq!(
                directive(line),
                Some(("directive".into(), "value".into())),
                "{line}"
            );
        }
    }

    #[test]
    fn continuations_join_without_separator_and_skip_comments() {
        let text = "RUN echo hello \\\n# comment\nworld\n";
        assert_eq!(logical(text), [(1, 3, "RUN echo hello world".into())]);
        let text = "RUN a \\  \n  b\n";
        assert_eq!(logical(text), [(1, 2, "RUN a   b".into())]);
        let text = "RUN a \\\n\n  b\n";
        let (mut lexer, _) = Lexer::new(text).expect("must succeed");
        let l = lexer.next_logical().expect("must succeed");
        assert!(l.empty_continuation);
        assert_eq!(l.text, "RUN a   b");
        // An escaped escape at the end is no continuation.
        assert_eq!(
            logical("RUN a \\\\\nRUN b"),
            [(1, 1, "RUN a \\\\".into()), (2, 2, "RUN b".into())]
        );
    }
}
