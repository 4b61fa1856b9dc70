//! `.dockerignore`: which files of the build context COPY and ADD cannot
//! see.
//!
//! The rules are Docker's: one pattern per line (Go's `filepath.Match`
//! plus `**` for any number of directories); a line starting with `#` is
//! a comment; each pattern is trimmed and cleaned like `filepath.Clean`, so
//! `/foo`, `./foo` and `foo/` all mean `foo`; `!` makes an exception. A
//! pattern excludes a path when it matches the path or one of its parent
//! directories, and the last pattern that matches decides. The Dockerfile
//! and the ignore file are read whatever the rules say (the builder needs
//! them), but COPY sees them only if the rules keep them.

use std::path::{Path, PathBuf};

use super::pattern::{clean, IgnorePattern};
use super::ErrorKind;

/// One rule and where it was written.
#[derive(Debug, Clone)]
struct Rule {
    pattern: IgnorePattern,
    line: usize,
}

/// The rules of one `.dockerignore` (none when there is no file).
#[derive(Debug, Clone, Default)]
pub struct IgnoreRules {
    rules: Vec<Rule>,
    file: Option<PathBuf>,
}

impl IgnoreRules {
    /// No rules: everything is in the context.
    pub fn none() -> IgnoreRules {
        IgnoreRules::default()
    }

    /// Parses an ignore file's text; `file` names it in errors.
    pub fn parse(text: &str, file: Option<&Path>) -> Result<IgnoreRules, ErrorKind> {
        let name = file.map_or_else(|| PathBuf::from(".dockerignore"), Path::to_owned);
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut rules = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.starts_with('#') {
                continue;
            }
            let mut pattern = line.trim();
            if pattern.is_empty() {
                continue;
            }
            let exception = pattern.starts_with('!');
            if exception {
                pattern = pattern[1..].trim();
                if pattern.is_empty() {
                    return Err(ErrorKind::Ignore {
                        path: name,
                        line: i + 1,
                        message: "\"!\" alone excludes nothing: write !PATTERN".into(),
                    });
                }
            }
            let mut cleaned = clean(pattern);
            if cleaned.len() > 1 {
                if let Some(rest) = cleaned.strip_prefix('/') {
                    cleaned = rest.to_owned();
                }
            }
            let compiled =
                IgnorePattern::new(&cleaned, exception).map_err(|e| ErrorKind::Ignore {
                    path: name.clone(),
                    line: i + 1,
                    message: e.to_string(),
                })?;
            rules.push(Rule {
                pattern: compiled,
                line: i + 1,
            });
        }
        Ok(IgnoreRules {
            rules,
            file: file.map(Path::to_owned),
        })
    }

    /// The rules for a build: `DOCKERFILE.dockerignore` next to the
    /// Dockerfile when there is one (Docker's per-Dockerfile ignore file),
    /// else `CONTEXT/.dockerignore`, else none.
    pub fn load(context: &Path, dockerfile: Option<&Path>) -> Result<IgnoreRules, ErrorKind> {
        let mut candidates = Vec::new();
        if let Some(df) = dockerfile {
            let mut name = df.as_os_str().to_owned();
            name.push(".dockerignore");
            candidates.push(PathBuf::from(name));
        }
        candidates.push(context.join(".dockerignore"));
        for path in candidates {
            match std::fs::read(&path) {
                Ok(bytes) => {
                    let text = String::from_utf8_lossy(&bytes);
                    return IgnoreRules::parse(&text, Some(&path));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(ErrorKind::Io { path, source }),
            }
        }
        Ok(IgnoreRules::none())
    }

    /// The file the rules came from.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Whether any rule is a `!` exception (then an excluded directory
    /// may still hold included files).
    pub fn has_exceptions(&self) -> bool {
        self.rules.iter().any(|r| r.pattern.exception)
    }

    /// Whether `path` (relative to the context, `/`-separated) is left out.
    pub fn excluded(&self, path: &str) -> bool {
        self.deciding(path).is_some_and(|r| !r.pattern.exception)
    }

    /// The rule that excludes `path`: its line and pattern.
    pub fn excluded_by(&self, path: &str) -> Option<(usize, &str)> {
        self.deciding(path)
            .filter(|r| !r.pattern.exception)
            .map(|r| (r.line, r.pattern.text.as_str()))
    }

    fn deciding(&self, path: &str) -> Option<&Rule> {
        let path = clean(path.trim_start_matches('/'));
        if path == "." {
            return None;
        }
        self.rules
            .iter()
            .rev()
            .find(|r| r.pattern.matches_or_parent(&path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> IgnoreRules {
        IgnoreRules::parse(text, None).expect("must succeed")
    }

    #[test]
    fn the_reference_example_file() {
        let r = rules("# comment\n*/temp*\n*/*/temp*\ntemp?\n");
        assert!(r.excluded("somedir/temporary.txt"));
        assert!(r.excluded("somedir/temp"));
        assert!(r.excluded("somedir/temp/inside.txt"));
        assert!(r.excluded("somedir/subdir/temporary.txt"));
        assert!(r.excluded("tempa"));
        assert!(r.excluded("tempb"));
        assert!(!r.excluded("temp"));
        assert!(!r.excluded("temporary.txt"));
        assert!(!r.excluded("# comment"));
    }

    #[test]
    fn the_last_matching_line_decides() {
        let r = rules("*.md\n!README*.md\nREADME-secret.md\n");
        assert!(r.excluded("CHANGES.md"));
        assert!(!r.excluded("README.md"));
        assert!(r.excluded("README-secret.md"));
        let r = rules("*.md\nREADME-secret.md\n!README*.md\n");
        assert!(!r.excluded("README-secret.md"));
        assert_eq!(r.excluded_by("CHANGES.md"), Some((1, "*.md")));
        assert_eq!(r.excluded_by("README.md"), None);
    }

    #[test]
    fn leading_slash_dot_and_trailing_slash_are_the_same_pattern() {
        for p in ["/foo/bar", "foo/bar", "./foo/bar", "foo/bar/", "foo//bar"] {
            let r = rules(p);
            assert!(r.excluded("foo/bar"), "{p}");
            assert!(r.excluded("foo/bar/baz"), "{p}");
            assert!(!r.excluded("foo"), "{p}");
            assert!(!r.excluded("bar"), "{p}");
        }
    }

    #[test]
    fn double_star_and_everything_but() {
        let r = rules("**/*.go\n");
        assert!(r.excluded("main.go"));
        assert!(r.excluded("cmd/x/main.go"));
        assert!(!r.excluded("main.goo"));
        let r = rules("*\n!src\n!Dockerfile\n");
        assert!(r.excluded("README.md"));
        assert!(!r.excluded("src/main.rs"));
        assert!(!r.excluded("Dockerfile"));
        assert!(r.has_exceptions());
    }

    #[test]
    fn comments_only_start_in_column_one_and_bad_lines_are_errors() {
        let r = rules("  #notacomment\n");
        assert!(r.excluded("#notacomment"));
        let e = IgnoreRules::parse("ok\n!\n", None).expect_err("must fail");
        assert!(matches!(e, ErrorKind::Ignore { line: 2, .. }));
        let e = IgnoreRules::parse("a[\n", None).expect_err("must fail");
        assert!(matches!(e, ErrorKind::Ignore { line: 1, .. }));
    }
}
