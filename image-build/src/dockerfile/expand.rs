//! From a parsed instruction to what to do: variable expansion with the
//! variables in scope at that point of a stage, and the stage's image
//! settings (ENV, USER, WORKDIR, CMD, ...) kept up to date.
//!
//! An executor makes one [`StageState`] per stage (from its base image's
//! config, or from the state an earlier stage ended in), calls
//! [`StageState::apply`] for each instruction in order and executes the
//! returned [`Step`]; at the end, [`StageState::settings`] is the image
//! config.

use std::collections::{BTreeMap, BTreeSet};

use super::instructions::{
    Check, Command, Copy, CopyFrom, Healthcheck, Heredoc, Instruction, KeyValue, Kind, Network,
    Run, Source, Word,
};
use super::pattern::clean;
use super::plan::{Plan, PROXY_ARGS};
use super::shell::{self, Mode, Processed};
use super::ErrorKind;

/// A healthcheck as an image config holds it (`Healthcheck`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthConfig {
    /// `["NONE"]`, `["CMD", ...]` or `["CMD-SHELL", "..."]`.
    pub test: Vec<String>,
    /// Nanoseconds; 0 means the runtime's default.
    pub interval_ns: u64,
    /// Nanoseconds; 0 means the default.
    pub timeout_ns: u64,
    /// Nanoseconds; 0 means none.
    pub start_period_ns: u64,
    /// Nanoseconds; 0 means the default.
    pub start_interval_ns: u64,
    /// 0 means the default.
    pub retries: u32,
}

impl HealthConfig {
    fn from_check(check: &Check) -> HealthConfig {
        HealthConfig {
            test: check.test(),
            interval_ns: check.interval_ns,
            timeout_ns: check.timeout_ns,
            start_period_ns: check.start_period_ns,
            start_interval_ns: check.start_interval_ns,
            retries: check.retries,
        }
    }
}

/// The settings an image carries and a stage's instructions change: the
/// image config's `config` object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// `Env`, in order.
    pub env: Vec<(String, String)>,
    /// `User` (empty: root).
    pub user: String,
    /// `WorkingDir` (empty: `/`).
    pub workdir: String,
    /// `Entrypoint`.
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`.
    pub cmd: Option<Vec<String>>,
    /// `Shell` (empty: `/bin/sh -c`).
    pub shell: Vec<String>,
    /// `ExposedPorts` (`80/tcp`).
    pub exposed_ports: BTreeSet<String>,
    /// `Volumes`.
    pub volumes: BTreeSet<String>,
    /// `Labels`.
    pub labels: BTreeMap<String, String>,
    /// `StopSignal`.
    pub stop_signal: Option<String>,
    /// `Healthcheck`.
    pub healthcheck: Option<HealthConfig>,
    /// The image's `author` (MAINTAINER).
    pub author: Option<String>,
    /// `OnBuild`: triggers a base image asks builds on it to run. Hafen
    /// does not run them, so a build on such an image must be refused.
    pub onbuild: Vec<String>,
}

impl Settings {
    /// Reads an image config: the whole config JSON or its `config` object.
    pub fn from_image_config(json: &serde_json::Value) -> Settings {
        let c = json.get("config").unwrap_or(json);
        let strings = |key: &str| -> Option<Vec<String>> {
            c.get(key)?.as_array().map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
        };
        let text = |key: &str| c.get(key).and_then(|v| v.as_str()).map(str::to_owned);
        let keys = |key: &str| -> BTreeSet<String> {
            c.get(key)
                .and_then(|v| v.as_object())
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default()
        };
        let env = strings("Env")
            .unwrap_or_default()
            .into_iter()
            .map(|e| match e.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (e, String::new()),
            })
            .collect();
        let labels = c
            .get("Labels")
            .and_then(|v| v.as_object())
            .map(|o| {
                o.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        let healthcheck = c.get("Healthcheck").and_then(|h| {
            let test = h.get("Test")?.as_array()?;
            let ns = |key: &str| h.get(key).and_then(serde_json::Value::as_u64).unwrap_or(0);
            Some(HealthConfig {
                test: test
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect(),
                interval_ns: ns("Interval"),
                timeout_ns: ns("Timeout"),
                start_period_ns: ns("StartPeriod"),
                start_interval_ns: ns("StartInterval"),
                retries: u32::try_from(ns("Retries")).unwrap_or(u32::MAX),
            })
        });
        Settings {
            env,
            user: text("User").unwrap_or_default(),
            workdir: text("WorkingDir").unwrap_or_default(),
            entrypoint: strings("Entrypoint"),
            cmd: strings("Cmd"),
            shell: strings("Shell").unwrap_or_default(),
            exposed_ports: keys("ExposedPorts"),
            volumes: keys("Volumes"),
            labels,
            stop_signal: text("StopSignal"),
            healthcheck,
            author: json
                .get("author")
                .and_then(|v| v.as_str())
                .map(str::to_owned),
            onbuild: strings("OnBuild").unwrap_or_default(),
        }
    }

    /// The working directory, `/` when none is set.
    pub fn workdir_or_root(&self) -> &str {
        if self.workdir.is_empty() {
            "/"
        } else {
            &self.workdir
        }
    }
}

/// A file a step needs that the Dockerfile itself holds (a heredoc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlineFile {
    /// RUN: an absolute path in the step's container (`/dev/pipes/EOF`);
    /// COPY/ADD: the file name under the destination.
    pub path: String,
    /// The content.
    pub data: String,
    /// Permission bits.
    pub mode: u32,
}

/// The kind of a RUN `--mount`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountKind {
    /// A read-only (unless `rw`) view of the context, a stage or an image.
    Bind,
    /// A directory kept between builds (`id` names it).
    Cache,
    /// A fresh tmpfs.
    Tmpfs,
}

/// `sharing=` of a cache mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sharing {
    /// Concurrent builds share it (the default).
    #[default]
    Shared,
    /// Each concurrent user gets its own.
    Private,
    /// One user at a time.
    Locked,
}

/// A RUN `--mount`, expanded and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Its kind.
    pub kind: MountKind,
    /// Where it appears in the step's container (absolute).
    pub target: String,
    /// Bind: the path inside `from` (default its root); cache: the path
    /// inside the cache's `from` seed.
    pub source: Option<String>,
    /// Bind/cache: where the files come from (`None`: the build context).
    pub from: Option<CopyFrom>,
    /// Mounted read-only.
    pub readonly: bool,
    /// Cache: its id (default: the target).
    pub id: Option<String>,
    /// Cache: sharing mode.
    pub sharing: Sharing,
    /// Cache/tmpfs: mode of the directory.
    pub mode: Option<u32>,
    /// Cache: owner.
    pub uid: Option<u32>,
    /// Cache: group.
    pub gid: Option<u32>,
    /// Tmpfs: size limit in bytes.
    pub size: Option<u64>,
}

/// A user or group as `--chown` gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdOrName {
    /// A number.
    Id(u32),
    /// A name to look up in the stage's `/etc/passwd` or `/etc/group`.
    Name(String),
}

/// `--chown=user[:group]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chown {
    /// The owner.
    pub user: IdOrName,
    /// The group; `None` means the user's number (Docker's rule).
    pub group: Option<IdOrName>,
}

impl Chown {
    /// Parses `user[:group]`.
    pub fn parse(text: &str) -> Result<Chown, String> {
        let one = |s: &str| -> Result<IdOrName, String> {
            if s.is_empty() {
                return Err(format!("--chown={text}: a user or group is empty"));
            }
            if s.bytes().all(|b| b.is_ascii_digit()) {
                return s
                    .parse()
                    .map(IdOrName::Id)
                    .map_err(|_| format!("--chown={text}: {s} is too large for an id"));
            }
            Ok(IdOrName::Name(s.to_owned()))
        };
        match text.split_once(':') {
            Some((u, g)) => Ok(Chown {
                user: one(u)?,
                group: Some(one(g)?),
            }),
            None => Ok(Chown {
                user: one(text)?,
                group: None,
            }),
        }
    }
}

/// One clause of a symbolic `--chmod` (`u+x`, `go=rX`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChmodClause {
    /// Bits of `u`, `g`, `o` (as 0o700, 0o070, 0o007 masks), all for none given.
    pub who: u32,
    /// The operations, in order.
    pub ops: Vec<(char, ChmodPerms)>,
}

/// What an operation of a symbolic mode sets, adds or removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChmodPerms {
    /// `rwxXst` letters.
    Letters(String),
    /// `u`, `g` or `o`: copy that class's current bits.
    Copy(char),
}

/// `--chmod`: octal or symbolic (Dockerfile 1.14).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chmod {
    /// `755`.
    Octal(u32),
    /// `u=rwX,go=rX`.
    Symbolic(Vec<ChmodClause>),
}

impl Chmod {
    /// Parses an octal or symbolic mode.
    pub fn parse(text: &str) -> Result<Chmod, String> {
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            return match u32::from_str_radix(text, 8) {
                Ok(m) if m <= 0o7777 => Ok(Chmod::Octal(m)),
                _ => Err(format!("--chmod={text} is not an octal mode (0 to 7777)")),
            };
        }
        let bad = || {
            format!("--chmod={text} is neither an octal mode (755) nor a symbolic one (u=rwX,go=rX, +x)")
        };
        let mut clauses = Vec::new();
        for clause in text.split(',') {
            let mut chars = clause.chars().peekable();
            let mut who = 0;
            while let Some(&c) = chars.peek() {
                who |= match c {
                    'u' => 0o4700,
                    'g' => 0o2070,
                    'o' => 0o1007,
                    'a' => 0o7777,
                    _ => break,
                };
                chars.next();
            }
            let mut ops = Vec::new();
            while let Some(op) = chars.next() {
                if !matches!(op, '+' | '-' | '=') {
                    return Err(bad());
                }
                let mut letters = String::new();
                let mut copy = None;
                while let Some(&c) = chars.peek() {
                    match c {
                        'r' | 'w' | 'x' | 'X' | 's' | 't' if copy.is_none() => letters.push(c),
                        'u' | 'g' | 'o' if letters.is_empty() && copy.is_none() => copy = Some(c),
                        '+' | '-' | '=' => break,
                        _ => return Err(bad()),
                    }
                    chars.next();
                }
                ops.push((
                    op,
                    match copy {
                        Some(c) => ChmodPerms::Copy(c),
                        None => ChmodPerms::Letters(letters),
                    },
                ));
            }
            if ops.is_empty() {
                return Err(bad());
            }
            clauses.push(ChmodClause {
                who: if who == 0 { 0o7777 } else { who },
                ops,
            });
        }
        Ok(Chmod::Symbolic(clauses))
    }

    /// The mode a file of `mode` gets (permission bits and setuid, setgid,
    /// sticky; the file type bits are not touched).
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        let clauses = match self {
            Chmod::Octal(m) => return (mode & !0o7777) | m,
            Chmod::Symbolic(c) => c,
        };
        let mut mode = mode;
        for clause in clauses {
            for (op, perms) in &clause.ops {
                let bits = match perms {
                    ChmodPerms::Copy(class) => {
                        let shift = match class {
                            'u' => 6,
                            'g' => 3,
                            _ => 0,
                        };
                        let rwx = (mode >> shift) & 0o7;
                        (rwx << 6 | rwx << 3 | rwx) & clause.who & 0o777
                    }
                    ChmodPerms::Letters(letters) => {
                        let mut b = 0;
                        for l in letters.chars() {
                            b |= match l {
                                'r' => 0o444,
                                'w' => 0o222,
                                'x' => 0o111,
                                'X' if is_dir || mode & 0o111 != 0 => 0o111,
                                'X' => 0,
                                's' => 0o6000,
                                't' => 0o1000,
                                _ => 0,
                            };
                        }
                        b & clause.who
                    }
                };
                match op {
                    '+' => mode |= bits,
                    '-' => mode &= !bits,
                    _ => mode = (mode & !(clause.who & 0o7777)) | bits,
                }
            }
        }
        mode
    }
}

/// What COPY or ADD is to do, with every word expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyStep {
    /// ADD rather than COPY.
    pub add: bool,
    /// Where the files come from.
    pub from: CopyFrom,
    /// Source paths or `filepath.Match` patterns (relative to the context
    /// or the stage or image's root).
    pub sources: Vec<String>,
    /// Files made from heredocs, named by their delimiters.
    pub inline: Vec<InlineFile>,
    /// The destination: absolute, cleaned, and ending with `/` when it is
    /// a directory to copy into.
    pub dest: String,
    /// `--chown`.
    pub chown: Option<Chown>,
    /// `--chmod`.
    pub chmod: Option<Chmod>,
    /// `--link`.
    pub link: bool,
    /// `--exclude` patterns.
    pub excludes: Vec<String>,
    /// ADD: unpack local tar archives (on unless `--unpack=false`).
    pub unpack: bool,
}

impl CopyStep {
    /// Whether the destination is a directory to copy into.
    pub fn dest_is_dir(&self) -> bool {
        self.dest.ends_with('/')
    }
}

/// What RUN is to execute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunStep {
    /// The process's argv (the shell form already wrapped in the shell).
    pub argv: Vec<String>,
    /// Files the argv needs (a heredoc script with a `#!` line).
    pub files: Vec<InlineFile>,
    /// The environment, `KEY=VALUE`: ENV, ARGs with values, and the proxy
    /// build args.
    pub env: Vec<String>,
    /// `env` without the proxy build args the Dockerfile does not declare:
    /// what the cache key and history may see.
    pub cache_env: Vec<String>,
    /// The user (empty: root).
    pub user: String,
    /// The working directory.
    pub workdir: String,
    /// `--network`.
    pub network: Network,
    /// `--mount`s.
    pub mounts: Vec<Mount>,
}

/// What an instruction makes the executor do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Run a process; its filesystem changes are a layer.
    Run(RunStep),
    /// Copy files; they are a layer.
    Copy(CopyStep),
    /// WORKDIR: make the directory (owned by the stage's user) when missing.
    Workdir(String),
    /// Only the settings changed (ENV, LABEL, CMD, ...): no layer.
    Config,
}

/// The result of [`StageState::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// What to do.
    pub step: Step,
    /// The image history's `created_by` (with variables expanded).
    pub history: String,
    /// Variables referenced and neither set nor declared (UndefinedVar).
    pub undefined: BTreeSet<String>,
    /// Build checks that fired: rule and message.
    pub warnings: Vec<Lint>,
}

/// The build-wide values a stage starts with.
#[derive(Debug, Clone, Default)]
pub struct BuildScope {
    /// `--build-arg`s.
    pub build_args: BTreeMap<String, String>,
    /// Global ARGs with values (from [`Plan::globals`]).
    pub globals: Vec<(String, String)>,
    /// The escape character of the Dockerfile.
    pub escape: char,
}

impl BuildScope {
    /// The scope of `plan` for a Dockerfile with `escape`.
    pub fn new(plan: &Plan, build_args: &BTreeMap<String, String>, escape: char) -> BuildScope {
        BuildScope {
            build_args: build_args.clone(),
            globals: plan.globals.clone(),
            escape,
        }
    }
}

/// A stage being built: its settings and the variables in scope.
#[derive(Debug, Clone)]
pub struct StageState {
    /// The image settings so far.
    pub settings: Settings,
    scope: BuildScope,
    /// Variables substitution sees: ENV and ARGs with values, last wins.
    vars: Vec<(String, String)>,
    /// ARGs declared in this stage (or its base stages), in order.
    args: Vec<String>,
    /// CMD was set in this stage (so ENTRYPOINT keeps it).
    cmd_set: bool,
    /// An absolute WORKDIR was set in this stage's chain.
    workdir_set: bool,
}

fn set_var(vars: &mut Vec<(String, String)>, key: &str, value: String) {
    vars.retain(|(k, _)| k != key);
    vars.push((key.to_owned(), value));
}

fn invalid(ins: &Instruction, message: impl Into<String>) -> ErrorKind {
    ErrorKind::Invalid {
        instruction: ins.keyword.to_ascii_uppercase(),
        message: message.into(),
    }
}

/// Whether `src` names something Hafen does not fetch (URL, Git).
fn remote_source(src: &str) -> bool {
    let lower = src.to_ascii_lowercase();
    ["http://", "https://", "git@", "git://", "ssh://"]
        .iter()
        .any(|p| lower.starts_with(p))
}

impl StageState {
    /// A stage on an image (or scratch, with default settings).
    pub fn new(base: Settings, scope: BuildScope) -> StageState {
        let vars = base.env.clone();
        StageState {
            settings: base,
            scope,
            vars,
            args: Vec::new(),
            cmd_set: false,
            workdir_set: false,
        }
    }

    /// A stage on an earlier stage: its settings, and the ARGs and ENV in
    /// scope where it ended.
    pub fn from_parent(parent: &StageState) -> StageState {
        StageState {
            cmd_set: false,
            ..parent.clone()
        }
    }

    /// The variables substitution sees now.
    pub fn vars(&self) -> &[(String, String)] {
        &self.vars
    }

    /// The ARG names declared so far.
    pub fn declared_args(&self) -> &[String] {
        &self.args
    }

    /// The environment of a RUN now: `(env, cache_env)`.
    pub fn run_env(&self) -> (Vec<String>, Vec<String>) {
        let cache_env: Vec<String> = self.vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut env = cache_env.clone();
        for proxy in PROXY_ARGS {
            if self.vars.iter().any(|(k, _)| k == proxy) {
                continue;
            }
            if let Some(v) = self.scope.build_args.get(*proxy) {
                env.push(format!("{proxy}={v}"));
            }
        }
        (env, cache_env)
    }

    fn expand(
        &self,
        ins: &Instruction,
        word: &Word,
        vars: &[(String, String)],
        undefined: &mut BTreeSet<String>,
    ) -> Result<Processed, ErrorKind> {
        let p = shell::expand(word.raw(), &vars, self.scope.escape).map_err(|source| {
            ErrorKind::Substitution {
                instruction: ins.keyword.to_ascii_uppercase(),
                word: word.raw().to_owned(),
                source,
            }
        })?;
        undefined.extend(
            p.unmatched
                .iter()
                .filter(|n| !self.args.contains(n))
                .cloned(),
        );
        Ok(p)
    }

    /// Applies one instruction: updates the settings and variables and
    /// says what to execute.
    pub fn apply(&mut self, ins: &Instruction) -> Result<Applied, ErrorKind> {
        // Every word of an instruction sees the variables as they were
        // before it (`ENV a=1 b=$a` takes the old `a`).
        let vars = self.vars.clone();
        let mut undefined = BTreeSet::new();
        let mut warnings = Vec::new();
        let kw = ins.keyword.to_ascii_uppercase();
        let (step, history) = match &ins.kind {
            Kind::Env(pairs) | Kind::Label(pairs) => {
                let mut done = Vec::new();
                for KeyValue { key, value, .. } in pairs {
                    let k = self.expand(ins, key, &vars, &mut undefined)?.value;
                    let v = self.expand(ins, value, &vars, &mut undefined)?.value;
                    if k.is_empty() {
                        return Err(invalid(
                            ins,
                            format!("{:?} expands to an empty name", key.raw()),
                        ));
                    }
                    done.push((k, v));
                }
                let is_env = matches!(ins.kind, Kind::Env(_));
                let mut history = kw.clone();
                for (k, v) in done {
                    history.push_str(&format!(" {k}={v}"));
                    if is_env {
                        set_var(&mut self.settings.env, &k, v.clone());
                        set_var(&mut self.vars, &k, v);
                    } else {
                        self.settings.labels.insert(k, v);
                    }
                }
                (Step::Config, history)
            }
            Kind::Arg(decls) => {
                let mut parts = Vec::new();
                for decl in decls {
                    let value = if let Some(v) = self.scope.build_args.get(&decl.name) {
                        Some(v.clone())
                    } else if let Some(default) = &decl.default {
                        // Each default sees the ARGs before it on the line.
                        let current = self.vars.clone();
                        Some(self.expand(ins, default, &current, &mut undefined)?.value)
                    } else {
                        self.scope
                            .globals
                            .iter()
                            .rev()
                            .find(|(k, _)| *k == decl.name)
                            .map(|(_, v)| v.clone())
                    };
                    if !self.args.contains(&decl.name) {
                        self.args.push(decl.name.clone());
                    }
                    match value {
                        Some(v) => {
                            parts.push(format!("{}={v}", decl.name));
                            set_var(&mut self.vars, &decl.name, v);
                        }
                        None => parts.push(decl.name.clone()),
                    }
                }
                (Step::Config, format!("ARG {}", parts.join(" ")))
            }
            Kind::Workdir(path) => {
                let p = self.expand(ins, path, &vars, &mut undefined)?.value;
                if p.is_empty() {
                    return Err(invalid(
                        ins,
                        format!("{:?} expands to an empty path", path.raw()),
                    ));
                }
                if !p.starts_with('/') && !self.workdir_set {
                    warnings.push((
                        "WorkdirRelativePath",
                        format!("Relative workdir {p:?} can have unexpected results if the base image changes"),
                    ));
                }
                self.workdir_set = true;
                let abs = if p.starts_with('/') {
                    clean(&p)
                } else {
                    clean(&format!("{}/{p}", self.settings.workdir_or_root()))
                };
                self.settings.workdir = abs.clone();
                let step = if abs == "/" {
                    Step::Config
                } else {
                    Step::Workdir(abs.clone())
                };
                (step, format!("WORKDIR {abs}"))
            }
            Kind::User(user) => {
                let u = self.expand(ins, user, &vars, &mut undefined)?.value;
                if u.is_empty() {
                    return Err(invalid(
                        ins,
                        format!("{:?} expands to an empty user", user.raw()),
                    ));
                }
                self.settings.user = u.clone();
                (Step::Config, format!("USER {u}"))
            }
            Kind::Cmd(command) | Kind::Entrypoint(command) => {
                let is_cmd = matches!(ins.kind, Kind::Cmd(_));
                if matches!(command, Command::Shell(_)) && self.settings.shell.is_empty() {
                    warnings.push((
                        "JSONArgsRecommended",
                        format!("JSON arguments recommended for {kw} to prevent unintended behavior related to OS signals (write {kw} [\"executable\", \"arg\"])"),
                    ));
                }
                let argv = command.argv(&self.settings.shell);
                let history = format!("{kw} {}", json_list(&argv));
                if is_cmd {
                    self.settings.cmd = Some(argv);
                    self.cmd_set = true;
                } else {
                    self.settings.entrypoint = match command {
                        Command::Exec(a) if a.is_empty() => None,
                        _ => Some(argv),
                    };
                    if !self.cmd_set {
                        self.settings.cmd = None;
                    }
                }
                (Step::Config, history)
            }
            Kind::Expose(words) => {
                let mut ports = Vec::new();
                for w in words {
                    let p = self.expand(ins, w, &vars, &mut undefined)?;
                    for item in p.words {
                        let (list, warning) = parse_port(&item).map_err(|m| invalid(ins, m))?;
                        warnings.extend(warning);
                        ports.extend(list);
                    }
                }
                let history = format!("EXPOSE {}", ports.join(" "));
                self.settings.exposed_ports.extend(ports);
                (Step::Config, history)
            }
            Kind::Volume(paths) => {
                let mut done = Vec::new();
                for path in paths {
                    let v = self.expand(ins, path, &vars, &mut undefined)?.value;
                    if v.trim().is_empty() {
                        return Err(invalid(
                            ins,
                            format!("{:?} expands to an empty path", path.raw()),
                        ));
                    }
                    done.push(v);
                }
                let history = format!("VOLUME {}", json_list(&done));
                self.settings.volumes.extend(done);
                (Step::Config, history)
            }
            Kind::StopSignal(sig) => {
                let s = self.expand(ins, sig, &vars, &mut undefined)?.value;
                if hafen_proto::signal::parse(&s).is_none() {
                    return Err(invalid(
                        ins,
                        format!("{s:?} is not a signal: use a name (SIGTERM, TERM, SIGRTMIN+3) or a number from 1 to 64"),
                    ));
                }
                self.settings.stop_signal = Some(s.clone());
                (Step::Config, format!("STOPSIGNAL {s}"))
            }
            Kind::Healthcheck(h) => {
                let config = match h {
                    Healthcheck::None => HealthConfig {
                        test: vec!["NONE".into()],
                        ..HealthConfig::default()
                    },
                    Healthcheck::Check(check) => HealthConfig::from_check(check),
                };
                let history = format!("HEALTHCHECK {}", json_list(&config.test));
                self.settings.healthcheck = Some(config);
                (Step::Config, history)
            }
            Kind::Shell(argv) => {
                self.settings.shell = argv.clone();
                (Step::Config, format!("SHELL {}", json_list(argv)))
            }
            Kind::Maintainer(name) => {
                self.settings.author = Some(name.clone());
                (Step::Config, format!("MAINTAINER {name}"))
            }
            Kind::Run(run) => {
                let step = self.run_step(ins, run, &vars, &mut undefined)?;
                let shown: Vec<String> = self
                    .args
                    .iter()
                    .filter_map(|a| {
                        vars.iter()
                            .rev()
                            .find(|(k, _)| k == a)
                            .map(|(k, v)| format!("{k}={v}"))
                    })
                    .collect();
                let prefix = if shown.is_empty() {
                    String::new()
                } else {
                    format!("|{} {} ", shown.len(), shown.join(" "))
                };
                let history = format!("RUN {prefix}{}", step.argv.join(" "));
                (Step::Run(step), history)
            }
            Kind::Copy(copy) => {
                let step = self.copy_step(ins, copy, &vars, &mut undefined)?;
                let mut shown: Vec<String> = step.sources.clone();
                shown.extend(step.inline.iter().map(|f| format!("<<{}", f.path)));
                let history = format!("{kw} {} {}", shown.join(" "), step.dest);
                (Step::Copy(step), history)
            }
        };
        Ok(Applied {
            step,
            history,
            undefined,
            warnings,
        })
    }

    fn run_step(
        &self,
        ins: &Instruction,
        run: &Run,
        vars: &[(String, String)],
        undefined: &mut BTreeSet<String>,
    ) -> Result<RunStep, ErrorKind> {
        let mut mounts = Vec::new();
        for spec in &run.mounts {
            let mut m = parse_mount(spec.text.raw(), |w| {
                self.expand(ins, &Word(w.to_owned()), vars, undefined)
                    .map(|p| p.value)
            })?;
            if m.kind != MountKind::Tmpfs {
                m.from = spec.from.clone();
            }
            if !m.target.starts_with('/') {
                m.target = clean(&format!("{}/{}", self.settings.workdir_or_root(), m.target));
            }
            mounts.push(m);
        }
        let shell = &self.settings.shell;
        let mut files = Vec::new();
        let argv = match (&run.command, run.heredocs.as_slice()) {
            (Command::Shell(text), [doc, ..])
                if super::parser::heredoc_word(text.trim())
                    .is_some_and(|(_, _, name, _)| name == doc.name) =>
            {
                // The whole command is one heredoc: its body is the script.
                let body = doc.body();
                if body.starts_with("#!") {
                    let path = format!("/dev/pipes/{}", doc.name);
                    files.push(InlineFile {
                        path: path.clone(),
                        data: body,
                        mode: 0o755,
                    });
                    Command::Shell(path).argv(shell)
                } else {
                    Command::Shell(body).argv(shell)
                }
            }
            (Command::Shell(text), docs) if !docs.is_empty() => {
                // The shell reads the heredocs itself.
                let mut script = text.clone();
                for doc in docs {
                    script.push('\n');
                    script.push_str(&doc.content);
                    script.push_str(&doc.name);
                }
                Command::Shell(script).argv(shell)
            }
            (command, _) => command.argv(shell),
        };
        let (env, cache_env) = self.run_env();
        Ok(RunStep {
            argv,
            files,
            env,
            cache_env,
            user: self.settings.user.clone(),
            workdir: self.settings.workdir_or_root().to_owned(),
            network: run.network,
            mounts,
        })
    }

    fn copy_step(
        &self,
        ins: &Instruction,
        copy: &Copy,
        vars: &[(String, String)],
        undefined: &mut BTreeSet<String>,
    ) -> Result<CopyStep, ErrorKind> {
        let mut sources = Vec::new();
        let mut inline = Vec::new();
        for src in &copy.sources {
            match src {
                Source::Path(w) => {
                    let s = self.expand(ins, w, vars, undefined)?.value;
                    if s.is_empty() {
                        return Err(invalid(
                            ins,
                            format!("source {:?} expands to nothing", w.raw()),
                        ));
                    }
                    if copy.add && remote_source(&s) {
                        return Err(ErrorKind::Unsupported {
                            what: format!("ADD from a URL or Git repository ({s})"),
                            hint: "put the file into the build context first (or fetch it in a RUN step with --network=host)".into(),
                        });
                    }
                    sources.push(s);
                }
                Source::Heredoc(doc) => inline.push(InlineFile {
                    path: doc.name.clone(),
                    data: self.heredoc_body(ins, doc, vars, undefined)?,
                    mode: 0o644,
                }),
            }
        }
        let dest_raw = self.expand(ins, &copy.dest, vars, undefined)?.value;
        if dest_raw.is_empty() {
            return Err(invalid(
                ins,
                format!("destination {:?} expands to nothing", copy.dest.raw()),
            ));
        }
        let dir_like = dest_raw.ends_with('/')
            || dest_raw.ends_with("/.")
            || dest_raw == "."
            || dest_raw.ends_with("/..")
            || dest_raw == "..";
        let joined = if dest_raw.starts_with('/') {
            dest_raw.clone()
        } else {
            format!("{}/{dest_raw}", self.settings.workdir_or_root())
        };
        let mut dest = clean(&joined);
        if dir_like && dest != "/" {
            dest.push('/');
        }
        if sources.len() + inline.len() > 1 && !dest.ends_with('/') {
            return Err(invalid(
                ins,
                format!("with more than one source, the destination must be a directory ending with /: write {dest_raw}/"),
            ));
        }
        let chown = match &copy.chown {
            Some(w) => {
                let text = self.expand(ins, w, vars, undefined)?.value;
                Some(Chown::parse(&text).map_err(|m| invalid(ins, m))?)
            }
            None => None,
        };
        let chmod = match &copy.chmod {
            Some(w) => {
                let text = self.expand(ins, w, vars, undefined)?.value;
                Some(Chmod::parse(&text).map_err(|m| invalid(ins, m))?)
            }
            None => None,
        };
        let mut excludes = Vec::new();
        for w in &copy.excludes {
            excludes.push(self.expand(ins, w, vars, undefined)?.value);
        }
        Ok(CopyStep {
            add: copy.add,
            from: copy.from.clone(),
            sources,
            inline,
            dest,
            chown,
            chmod,
            link: copy.link,
            excludes,
            unpack: copy.add && copy.unpack.unwrap_or(true),
        })
    }

    /// A COPY heredoc's content: tabs stripped for `<<-`, then `$VAR`
    /// substituted unless the delimiter was quoted (quotes in the body are
    /// text, as in a shell heredoc).
    fn heredoc_body(
        &self,
        ins: &Instruction,
        doc: &Heredoc,
        vars: &[(String, String)],
        undefined: &mut BTreeSet<String>,
    ) -> Result<String, ErrorKind> {
        let body = doc.body();
        if !doc.expand {
            return Ok(body);
        }
        let mode = Mode {
            skip_quotes: true,
            ..Mode::new('\\')
        };
        let p = shell::process(&body, &vars, mode).map_err(|source| ErrorKind::Substitution {
            instruction: ins.keyword.to_ascii_uppercase(),
            word: format!("<<{}", doc.name),
            source,
        })?;
        undefined.extend(
            p.unmatched
                .iter()
                .filter(|n| !self.args.contains(n))
                .cloned(),
        );
        Ok(p.value)
    }
}

/// `["a", "b"]`, as Docker's history shows lists.
fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_default()
}

/// One EXPOSE item: `80`, `80/tcp`, `53/udp`, `8000-8010`; Docker also
/// takes (and warns about) `[ip:][host:]port`.
/// A build check that fired: its rule and message.
type Lint = (&'static str, String);

fn parse_port(item: &str) -> Result<(Vec<String>, Option<Lint>), String> {
    let mut warning = None;
    let container = match item.rfind(':') {
        Some(i) => {
            warning = Some((
                "ExposeInvalidFormat",
                format!("EXPOSE {item} should not map an IP address or host port (write only the container port)"),
            ));
            &item[i + 1..]
        }
        None => item,
    };
    let (range, proto) = match container.split_once('/') {
        Some((r, p)) => (r, p),
        None => (container, "tcp"),
    };
    let proto_lower = proto.to_ascii_lowercase();
    if !matches!(proto_lower.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!(
            "{item:?}: the protocol must be tcp, udp or sctp, not {proto:?}"
        ));
    }
    if proto != proto_lower {
        warning = Some((
            "ExposeProtoCasing",
            format!("Defined protocol '{item}' in EXPOSE instruction should be lowercase"),
        ));
    }
    let number = |s: &str| -> Result<u32, String> {
        s.parse::<u32>()
            .ok()
            .filter(|n| *n <= 65535)
            .ok_or_else(|| {
                if s == item {
                    format!("{item:?} is not a port number (0 to 65535)")
                } else {
                    format!("{item:?}: {s:?} is not a port number (0 to 65535)")
                }
            })
    };
    let (start, end) = match range.split_once('-') {
        Some((a, b)) => (number(a)?, number(b)?),
        None => {
            let n = number(range)?;
            (n, n)
        }
    };
    if end < start {
        return Err(format!("{item:?}: the range ends before it starts"));
    }
    Ok((
        (start..=end)
            .map(|p| format!("{p}/{proto_lower}"))
            .collect(),
        warning,
    ))
}

/// Parses a `--mount` value, expanding each value with `expand`.
fn parse_mount(
    text: &str,
    mut expand: impl FnMut(&str) -> Result<String, ErrorKind>,
) -> Result<Mount, ErrorKind> {
    let bad = |message: String| ErrorKind::Invalid {
        instruction: "RUN".into(),
        message: format!("--mount={text}: {message}"),
    };
    let mut m = Mount {
        kind: MountKind::Bind,
        target: String::new(),
        source: None,
        from: None,
        readonly: true,
        id: None,
        sharing: Sharing::Shared,
        mode: None,
        uid: None,
        gid: None,
        size: None,
    };
    let mut readonly: Option<bool> = None;
    let fields = csv_fields(text).map_err(|e| bad(e.into()))?;
    let parse_bool = |key: &str, v: &str| -> Result<bool, ErrorKind> {
        match v.to_ascii_lowercase().as_str() {
            "1" | "t" | "true" => Ok(true),
            "0" | "f" | "false" => Ok(false),
            _ => Err(bad(format!("{key}={v} is not true or false"))),
        }
    };
    for field in fields {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.to_owned())),
            None => (field.trim().to_ascii_lowercase(), None),
        };
        let Some(raw) = value else {
            match key.as_str() {
                "readonly" | "ro" => readonly = Some(true),
                "readwrite" | "rw" => readonly = Some(false),
                _ => return Err(bad(format!("{key:?} must be key=value"))),
            }
            continue;
        };
        let v = expand(&raw)?;
        match key.as_str() {
            "type" => {
                m.kind = match v.to_ascii_lowercase().as_str() {
                    "bind" => MountKind::Bind,
                    "cache" => MountKind::Cache,
                    "tmpfs" => MountKind::Tmpfs,
                    "secret" | "ssh" => {
                        return Err(ErrorKind::Unsupported {
                            what: format!("RUN --mount=type={v}"),
                            hint: "hafen image build has no --secret or --ssh yet; use a bind mount of a file outside the image's layers only if it is not secret".into(),
                        })
                    }
                    _ => return Err(bad(format!("unknown mount type {v:?} (use bind, cache or tmpfs)"))),
                }
            }
            "target" | "dst" | "destination" => m.target = v,
            "source" | "src" => m.source = Some(v),
            // Resolved against the stages by the parser.
            "from" => {}
            "readonly" | "ro" => readonly = Some(parse_bool(&key, &v)?),
            "readwrite" | "rw" => readonly = Some(!parse_bool(&key, &v)?),
            "id" => m.id = Some(v),
            "sharing" => {
                m.sharing = match v.to_ascii_lowercase().as_str() {
                    "shared" => Sharing::Shared,
                    "private" => Sharing::Private,
                    "locked" => Sharing::Locked,
                    _ => return Err(bad(format!("sharing={v}: use shared, private or locked"))),
                }
            }
            "mode" => {
                m.mode = Some(
                    u32::from_str_radix(&v, 8)
                        .map_err(|_| bad(format!("mode={v} is not an octal mode")))?,
                )
            }
            "uid" => m.uid = Some(v.parse().map_err(|_| bad(format!("uid={v} is not a number")))?),
            "gid" => m.gid = Some(v.parse().map_err(|_| bad(format!("gid={v} is not a number")))?),
            "size" => m.size = Some(parse_size(&v).ok_or_else(|| bad(format!("size={v} is not a size (bytes, or with k, m, g)")))?),
            "required" | "env" => {
                return Err(bad(format!("{key}= applies to secret and ssh mounts only")))
            }
            _ => return Err(bad(format!("unknown option {key:?}"))),
        }
    }
    if m.target.is_empty() {
        return Err(bad("the mount needs a target (target=/path)".into()));
    }
    if m.size.is_some() && m.kind != MountKind::Tmpfs {
        return Err(bad("size= applies to tmpfs mounts only".into()));
    }
    m.readonly = match m.kind {
        MountKind::Bind => readonly.unwrap_or(true),
        MountKind::Cache | MountKind::Tmpfs => readonly.unwrap_or(false),
    };
    Ok(m)
}

/// `1024`, `64m`, `1g`, `512kb`.
fn parse_size(text: &str) -> Option<u64> {
    let lower = text.trim().to_ascii_lowercase();
    let digits = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let n: u64 = lower[..digits].parse().ok()?;
    let scale = match lower[digits..].trim_end_matches('b') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// Comma-separated fields; a field may be `"quoted, with commas"` in whole
/// or after `key=`.
fn csv_fields(text: &str) -> Result<Vec<String>, &'static str> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    if quoted {
        return Err("a quote is not closed");
    }
    fields.push(cur);
    Ok(fields.into_iter().filter(|f| !f.is_empty()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chmod_octal_and_symbolic_apply_like_chmod() {
        let table: &[(&str, u32, bool, u32)] = &[
            ("755", 0o644, false, 0o755),
            ("0644", 0o100755, false, 0o100644),
            ("+x", 0o644, false, 0o755),
            ("u=rwX,go=rX", 0o600, false, 0o644),
            ("u=rwX,go=rX", 0o700, false, 0o755),
            ("u=rwX,go=rX", 0o700, true, 0o755),
            ("u=rwX,go=rX", 0o600, true, 0o755),
            ("g=u", 0o640, false, 0o660),
            ("go-w", 0o666, false, 0o644),
            ("a=r", 0o777, false, 0o444),
            ("u+s", 0o755, false, 0o4755),
            ("+t", 0o777, true, 0o1777),
        ];
        for (text, before, dir, after) in table {
            let m = Chmod::parse(text).expect("must succeed");
            assert_eq!(m.apply(*before, *dir), *after, "{text} on {before:o}");
        }
        for bad in ["", "8", "77777", "u", "u+q", "x+r", "+x,", "=ur"] {
            assert!(Chmod::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn chown_takes_names_and_numbers() {
        assert_eq!(
            Chown::parse("55:mygroup").expect("must succeed"),
            Chown {
                user: IdOrName::Id(55),
                group: Some(IdOrName::Name("mygroup".into()))
            }
        );
        assert_eq!(Chown::parse("bin").expect("must succeed").group, None);
        assert!(Chown::parse("").is_err());
        assert!(Chown::parse("a:").is_err());
        assert!(Chown::parse("99999999999").is_err());
    }

    #[test]
    fn ports_parse_with_ranges_and_protocols() {
        let ok = |s: &str| parse_port(s).expect("must succeed").0;
        assert_eq!(ok("80"), ["80/tcp"]);
        assert_eq!(ok("80/tcp"), ["80/tcp"]);
        assert_eq!(ok("53/udp"), ["53/udp"]);
        assert_eq!(ok("8000-8002"), ["8000/tcp", "8001/tcp", "8002/tcp"]);
        assert_eq!(ok("80/TCP"), ["80/tcp"]);
        assert_eq!(
            parse_port("80/TCP")
                .expect("must succeed")
                .1
                .expect("must succeed")
                .0,
            "ExposeProtoCasing"
        );
        assert_eq!(
            parse_port("127.0.0.1:8080:80")
                .expect("must succeed")
                .1
                .expect("must succeed")
                .0,
            "ExposeInvalidFormat"
        );
        for bad in ["http", "70000", "80/icmp", "90-80", "", "-1"] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mounts_parse_and_default_readonly_by_kind() {
        let id = |s: &str| Ok::<_, ErrorKind>(s.to_owned());
        let m =
            parse_mount("type=cache,target=/root/.cache,sharing=locked", id).expect("must succeed");
        assert_eq!(m.kind, MountKind::Cache);
        assert!(!m.readonly);
        assert_eq!(m.sharing, Sharing::Locked);
        let m = parse_mount("target=/src", id).expect("must succeed");
        assert_eq!(m.kind, MountKind::Bind);
        assert!(m.readonly);
        let m = parse_mount("type=bind,target=/src,rw", id).expect("must succeed");
        assert!(!m.readonly);
        let m = parse_mount("type=tmpfs,target=/tmp,size=64m", id).expect("must succeed");
        assert_eq!(m.size, Some(64 << 20));
        assert!(matches!(
            parse_mount("type=secret,id=x", id),
            Err(ErrorKind::Unsupported { .. })
        ));
        assert!(parse_mount("type=cache", id).is_err());
        assert!(parse_mount("type=bogus,target=/x", id).is_err());
        assert!(parse_mount("type=bind,target=/x,size=1", id).is_err());
    }
}
