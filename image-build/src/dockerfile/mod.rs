//! Dockerfiles: the language (parser, variable expansion, validation), the
//! build context (`.dockerignore`, selecting COPY and ADD sources) and
//! `hafen image build --check`.
//!
//! The pieces an executor uses, in order:
//! 1. [`parse`] (or [`Dockerfile::read`]) turns the text into a
//!    [`Dockerfile`]: global ARGs and [`Stage`]s of typed
//!    [`instructions::Instruction`]s with their lines.
//! 2. [`plan::plan`] applies `--build-arg`s and `--platform` to the global
//!    ARGs, resolves each stage's base (scratch, an earlier stage, an
//!    image) and `--target`, and orders the stages the target needs.
//! 3. For each stage, [`expand::StageState`] starts from the base's
//!    settings and turns each instruction into an [`expand::Step`]: a RUN
//!    to execute, files to copy, a directory to make, or only a change of
//!    the image's settings, which it keeps.
//! 4. [`context::Context`] selects a COPY or ADD's files from the build
//!    context under the `.dockerignore` rules ([`ignore::IgnoreRules`]).
//!
//! [`check::check`] runs 1-4 without executing anything.

pub mod build;
pub mod cache;
pub mod check;
pub mod cli;
pub mod context;
pub mod expand;
pub mod ignore;
pub mod instructions;
pub mod layer;
pub mod lexer;
mod parser;
pub mod pattern;
pub mod plan;
pub mod shell;

use std::fmt;
use std::path::{Path, PathBuf};

pub use instructions::{Instruction, Kind, Stage};
pub use lexer::Directives;
pub use parser::parse;

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    /// The name errors use (`Dockerfile`, `build/app.Dockerfile`).
    pub file: String,
    /// The parser directives.
    pub directives: Directives,
    /// The escape character (`\` or `` ` ``).
    pub escape: char,
    /// ARGs before the first FROM: usable in FROM lines only, and by a
    /// stage that declares the name again.
    pub global_args: Vec<GlobalArg>,
    /// The stages, in order.
    pub stages: Vec<Stage>,
    /// Build-check warnings found while parsing.
    pub warnings: Vec<Warning>,
}

/// An ARG before the first FROM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalArg {
    /// The declaration.
    pub decl: instructions::ArgDecl,
    /// Where it is.
    pub line: usize,
}

impl Dockerfile {
    /// Reads and parses the Dockerfile at `path`, naming it `name` in errors.
    pub fn read(path: &Path, name: &str) -> Result<Dockerfile, Errors> {
        let bytes = std::fs::read(path).map_err(|source| {
            Errors(vec![Error::new(
                name,
                0,
                ErrorKind::Io {
                    path: path.to_owned(),
                    source,
                },
            )])
        })?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let line = 1 + e.as_bytes()[..e.utf8_error().valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            Errors(vec![Error::new(name, line, ErrorKind::NotUtf8)])
        })?;
        parse(&text, name)
    }

    /// The stage named `name` (case-insensitive, as Docker looks them up).
    pub fn stage_named(&self, name: &str) -> Option<&Stage> {
        let lower = name.to_ascii_lowercase();
        self.stages
            .iter()
            .find(|s| s.name.as_deref() == Some(lower.as_str()))
    }
}

/// What went wrong, without where.
#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    /// No instructions at all.
    #[error("the Dockerfile has no instructions: it needs at least a FROM")]
    Empty,
    /// Not UTF-8.
    #[error("the Dockerfile is not UTF-8 text")]
    NotUtf8,
    /// A bad parser directive.
    #[error("{0}")]
    Directive(String),
    /// An instruction Docker does not have.
    #[error("unknown instruction {name}{}", suggestion.as_ref().map(|s| format!(" (did you mean {s}?)")).unwrap_or_default())]
    UnknownInstruction {
        /// As written.
        name: String,
        /// The closest known one.
        suggestion: Option<String>,
    },
    /// Docker has it, Hafen does not (yet).
    #[error("{what} is not supported: {hint}")]
    Unsupported {
        /// What was asked for.
        what: String,
        /// What to do instead.
        hint: String,
    },
    /// Something other than ARG before the first FROM.
    #[error("{instruction} before the first FROM: only ARG may come before FROM (a Dockerfile starts with FROM, after global ARGs)")]
    BeforeFrom {
        /// The keyword.
        instruction: String,
    },
    /// The arguments do not fit the instruction.
    #[error("{instruction}: {message}")]
    Syntax {
        /// The keyword.
        instruction: String,
        /// What is wrong, and what to write.
        message: String,
    },
    /// A here-document the file ends inside.
    #[error("here-document {name:?} has no end: add a line holding only {name}")]
    UnterminatedHeredoc {
        /// Its delimiter.
        name: String,
    },
    /// Two stages with one name.
    #[error("stage name {name:?} is already used by the stage at line {first}: stage names must be unique")]
    DuplicateStage {
        /// The name.
        name: String,
        /// Where it was first used.
        first: usize,
    },
    /// A reference to a stage that is not before this one.
    #[error("{instruction} {reference}: {message}")]
    StageReference {
        /// The keyword.
        instruction: String,
        /// `--from=x`, `from=x`.
        reference: String,
        /// Why it cannot be used.
        message: String,
    },
    /// A word that substitution fails on.
    #[error("{instruction}: cannot expand {word:?}")]
    Substitution {
        /// The keyword.
        instruction: String,
        /// The word as written.
        word: String,
        /// Why.
        #[source]
        source: shell::ShellError,
    },
    /// A value that is wrong once expanded.
    #[error("{instruction}: {message}")]
    Invalid {
        /// The keyword.
        instruction: String,
        /// What is wrong, and what to write.
        message: String,
    },
    /// `--target` names no stage.
    #[error("--target {target:?} names no stage (the stages are: {})", if stages.is_empty() { "none named".to_owned() } else { stages.join(", ") })]
    UnknownTarget {
        /// As given.
        target: String,
        /// The stage names there are.
        stages: Vec<String>,
    },
    /// A build argument that is not `KEY=VALUE`.
    #[error("--build-arg {0:?} is not KEY=VALUE (or KEY, to take the value from the environment)")]
    BuildArg(String),
    /// A COPY or ADD source that leaves the build context.
    #[error("{instruction} source {path:?} is outside the build context {context:?}: only files inside it can be copied (Docker would silently read {inside:?} instead)")]
    OutsideContext {
        /// The keyword.
        instruction: String,
        /// As written.
        path: String,
        /// The context directory.
        context: PathBuf,
        /// What Docker makes of it.
        inside: String,
    },
    /// A COPY or ADD source that is not there.
    #[error("{instruction} source {path:?} not found in the build context {context:?}{}", hint.as_deref().map(|h| format!(" ({h})")).unwrap_or_default())]
    SourceMissing {
        /// The keyword.
        instruction: String,
        /// As written.
        path: String,
        /// The context directory.
        context: PathBuf,
        /// A likely reason.
        hint: Option<String>,
    },
    /// A symbolic link in the context that points outside it.
    #[error("{instruction} source {path:?}: the symbolic link {link:?} points outside the build context")]
    LinkOutsideContext {
        /// The keyword.
        instruction: String,
        /// As written.
        path: String,
        /// The link, relative to the context.
        link: String,
    },
    /// A `.dockerignore` that cannot be used.
    #[error("{path}:{line}: {message}")]
    Ignore {
        /// The ignore file.
        path: PathBuf,
        /// The line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A file that cannot be read.
    #[error("cannot read {}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// An error at a place in a Dockerfile.
#[derive(Debug)]
pub struct Error {
    /// The Dockerfile's name.
    pub file: String,
    /// The line (1-based), or 0 when no line is to blame.
    pub line: usize,
    /// What is wrong.
    pub kind: ErrorKind,
}

impl Error {
    /// An error at `file:line`.
    pub fn new(file: &str, line: usize, kind: ErrorKind) -> Error {
        Error {
            file: file.to_owned(),
            line,
            kind,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: {}", self.file, self.line, self.kind)
        } else {
            write!(f, "{}: {}", self.file, self.kind)
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // The kind's text is part of this one's; its cause is next.
        std::error::Error::source(&self.kind)
    }
}

/// Every error found, in the order of their lines.
#[derive(Debug)]
pub struct Errors(pub Vec<Error>);

impl fmt::Display for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                write!(f, ": {c}")?;
                cause = c.source();
            }
        }
        Ok(())
    }
}

impl std::error::Error for Errors {}

impl From<Error> for Errors {
    fn from(e: Error) -> Errors {
        Errors(vec![e])
    }
}

/// A build check Docker would warn about (`docker build --check`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The Dockerfile's name.
    pub file: String,
    /// The line, or 0.
    pub line: usize,
    /// Docker's name for the check (`JSONArgsRecommended`).
    pub rule: &'static str,
    /// What it found.
    pub message: String,
}

impl Warning {
    /// Docker's documentation page for the rule.
    pub fn url(&self) -> String {
        let mut slug = String::new();
        for (i, c) in self.rule.chars().enumerate() {
            let prev_lower = self
                .rule
                .chars()
                .nth(i.wrapping_sub(1))
                .is_some_and(|p| p.is_ascii_lowercase());
            if c.is_ascii_uppercase() && i > 0 && prev_lower {
                slug.push('-');
            }
            slug.push(c.to_ascii_lowercase());
        }
        // Docker spells these two with their acronym kept whole.
        let slug = slug.replace("jsonargs", "json-args");
        format!("https://docs.docker.com/go/dockerfile/rule/{slug}/")
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: ", self.file, self.line)?;
        } else {
            write!(f, "{}: ", self.file)?;
        }
        write!(f, "{}: {}", self.rule, self.message)
    }
}

/// The name from `options` closest to `name` (case-insensitive), if it is
/// close enough to be a likely typo.
pub fn suggest<'a>(name: &str, options: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    let mut best: Option<(usize, &str)> = None;
    for option in options {
        let d = edit_distance(&lower, &option.to_ascii_lowercase());
        if best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, option));
        }
    }
    let (d, option) = best?;
    let limit = match name.chars().count() {
        0..=2 => 0,
        3..=5 => 1,
        _ => 2,
    };
    (d > 0 && d <= limit).then(|| option.to_owned())
}

/// Edits (insert, delete, substitute, swap two neighbours) from `a` to `b`.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}
