//! Typed Dockerfile instructions as parsed, before variable expansion.
//!
//! Every text the builder expands is a [`Word`]: the source text with its
//! quotes and escapes still in it. [`super::expand`] turns an instruction
//! into a [`super::expand::Step`] once the variables in scope are known.

use std::fmt;

/// Source text the builder expands later (quotes and escapes kept).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Word(pub String);

impl Word {
    /// The text as written in the Dockerfile.
    pub fn raw(&self) -> &str {
        &self.0
    }

    /// Whether expansion can change it (it holds `$`, a quote or `escape`).
    pub fn is_literal(&self, escape: char) -> bool {
        !self.0.contains(['$', '"', '\'', escape])
    }
}

impl fmt::Display for Word {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Lines of the Dockerfile an instruction spans (1-based, inclusive; a
/// heredoc's body counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// First line.
    pub start: usize,
    /// Last line.
    pub end: usize,
}

/// A command of RUN, CMD, ENTRYPOINT or HEALTHCHECK CMD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `["executable", "arg"]`: run as is, no shell, no substitution.
    Exec(Vec<String>),
    /// `executable arg`: given to the stage's shell as one string.
    Shell(String),
}

impl Command {
    /// The argv: the exec form as is; the shell form after `shell`
    /// (`/bin/sh -c` when empty), as one argument.
    pub fn argv(&self, shell: &[String]) -> Vec<String> {
        match self {
            Command::Exec(args) => args.clone(),
            Command::Shell(text) => {
                let mut argv = if shell.is_empty() {
                    default_shell()
                } else {
                    shell.to_vec()
                };
                argv.push(text.clone());
                argv
            }
        }
    }
}

/// The shell of the shell form when no SHELL says otherwise.
pub fn default_shell() -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into()]
}

/// A here-document (`<<EOF` ... `EOF`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    /// The delimiter word with quotes removed (`EOF`); for COPY and ADD
    /// also the name of the file it becomes.
    pub name: String,
    /// The lines between the instruction and the delimiter, each with its
    /// newline, as written (tabs not yet stripped).
    pub content: String,
    /// `<<-`: leading tabs are stripped from each line.
    pub chomp: bool,
    /// The delimiter was unquoted: the body is subject to substitution
    /// (COPY/ADD: by the builder; RUN: by the shell).
    pub expand: bool,
    /// The file descriptor written before `<<` (`3<<EOF`), else 0.
    pub fd: u32,
}

impl Heredoc {
    /// The body with leading tabs stripped when `<<-` asked for it.
    pub fn body(&self) -> String {
        if !self.chomp {
            return self.content.clone();
        }
        self.content
            .split_inclusive('\n')
            .map(|line| line.trim_start_matches('\t'))
            .collect()
    }
}

/// `--network` of RUN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// Not given, or `default`: the build's network (none unless the
    /// build allows it).
    #[default]
    Default,
    /// `none`.
    None,
    /// `host`.
    Host,
}

/// RUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// The command.
    pub command: Command,
    /// Here-documents, in the order of their delimiters on the line.
    pub heredocs: Vec<Heredoc>,
    /// `--mount` values.
    pub mounts: Vec<MountSpec>,
    /// `--network`.
    pub network: Network,
}

/// One `--mount` of RUN as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// The comma-separated options (expanded and parsed into a
    /// [`super::expand::Mount`] at expansion).
    pub text: Word,
    /// Its `from=`, resolved against the stages (`None`: the context).
    pub from: Option<CopyFrom>,
}

/// One source of COPY or ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A path or wildcard pattern, relative to the context or the `--from`
    /// stage or image's root.
    Path(Word),
    /// A file made from a here-document (`COPY <<EOF /dest`).
    Heredoc(Heredoc),
}

/// Where COPY takes its files from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyFrom {
    /// The build context.
    Context,
    /// An earlier stage, by index.
    Stage(usize),
    /// An image reference (`--from=nginx:latest`, or a name that is no
    /// stage's).
    Image(String),
}

/// COPY and ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    /// ADD rather than COPY.
    pub add: bool,
    /// `--from` (COPY only), resolved against the stages.
    pub from: CopyFrom,
    /// The sources.
    pub sources: Vec<Source>,
    /// The destination.
    pub dest: Word,
    /// `--chown`.
    pub chown: Option<Word>,
    /// `--chmod`.
    pub chmod: Option<Word>,
    /// `--link` (accepted; layers are always independent of what is below).
    pub link: bool,
    /// `--exclude`, each a pattern.
    pub excludes: Vec<Word>,
    /// ADD `--unpack`: `None` means the default (local archives unpacked).
    pub unpack: Option<bool>,
    /// The arguments were a JSON array.
    pub json: bool,
}

/// `KEY=VALUE` of ENV and LABEL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key as written.
    pub key: Word,
    /// The value as written.
    pub value: Word,
    /// Written in the legacy `ENV key value` form.
    pub legacy: bool,
}

/// One name of ARG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgDecl {
    /// The name (never expanded).
    pub name: String,
    /// The default value as written.
    pub default: Option<Word>,
}

/// HEALTHCHECK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Healthcheck {
    /// `HEALTHCHECK NONE`: no check, not even the base image's.
    None,
    /// `HEALTHCHECK [OPTIONS] CMD ...`.
    Check(Check),
}

/// The options and command of `HEALTHCHECK CMD`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The command (`CMD` for exec form, `CMD-SHELL` for shell form).
    pub command: Command,
    /// `--interval` in nanoseconds (0: the runtime's default, 30s).
    pub interval_ns: u64,
    /// `--timeout` in nanoseconds (0: 30s).
    pub timeout_ns: u64,
    /// `--start-period` in nanoseconds (0: none).
    pub start_period_ns: u64,
    /// `--start-interval` in nanoseconds (0: 5s).
    pub start_interval_ns: u64,
    /// `--retries` (0: 3).
    pub retries: u32,
}

impl Check {
    /// The image config's `Healthcheck.Test`: `["CMD", ...]` or
    /// `["CMD-SHELL", "text"]`.
    pub fn test(&self) -> Vec<String> {
        match &self.command {
            Command::Exec(args) => std::iter::once("CMD".to_owned())
                .chain(args.iter().cloned())
                .collect(),
            Command::Shell(text) => vec!["CMD-SHELL".into(), text.clone()],
        }
    }
}

/// What an instruction does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// RUN.
    Run(Run),
    /// COPY or ADD (see [`Copy::add`]).
    Copy(Copy),
    /// ENV.
    Env(Vec<KeyValue>),
    /// ARG inside a stage.
    Arg(Vec<ArgDecl>),
    /// WORKDIR.
    Workdir(Word),
    /// USER.
    User(Word),
    /// CMD.
    Cmd(Command),
    /// ENTRYPOINT (`ENTRYPOINT []` is an empty exec form).
    Entrypoint(Command),
    /// EXPOSE, each word as written.
    Expose(Vec<Word>),
    /// VOLUME, each path as written.
    Volume(Vec<Word>),
    /// LABEL.
    Label(Vec<KeyValue>),
    /// STOPSIGNAL.
    StopSignal(Word),
    /// HEALTHCHECK.
    Healthcheck(Healthcheck),
    /// SHELL.
    Shell(Vec<String>),
    /// MAINTAINER (deprecated): the image's author.
    Maintainer(String),
}

/// One instruction of a stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// Where it is.
    pub span: Span,
    /// The keyword as written (`RUN`, `run`).
    pub keyword: String,
    /// The instruction's text, continuation lines joined (no heredoc
    /// bodies): what `docker history` shows.
    pub text: String,
    /// What it does.
    pub kind: Kind,
}

/// What a stage starts from, as written in FROM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct From {
    /// The image, `scratch` or an earlier stage's name; may hold global ARGs.
    pub image: Word,
    /// `--platform`.
    pub platform: Option<Word>,
    /// The FROM keyword as written.
    pub keyword: String,
    /// The AS keyword as written, when there is one.
    pub as_keyword: Option<String>,
    /// The stage name as written (before lowercasing).
    pub name_as_written: Option<String>,
}

/// A build stage: a FROM and the instructions up to the next FROM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// Its position among the stages (what `--from=0` names).
    pub index: usize,
    /// `AS name`, lowercased.
    pub name: Option<String>,
    /// The FROM line.
    pub from: From,
    /// Where the FROM is.
    pub span: Span,
    /// The FROM line's text.
    pub text: String,
    /// The instructions after it.
    pub instructions: Vec<Instruction>,
}

impl Stage {
    /// The name, else `stage-N` (how Docker refers to unnamed stages).
    pub fn display_name(&self) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => format!("stage-{}", self.index),
        }
    }
}
