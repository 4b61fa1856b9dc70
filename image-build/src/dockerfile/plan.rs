//! From a parsed Dockerfile and the build's arguments to the stages to
//! build: global ARG values, each stage's base, the target and the order.

use std::collections::{BTreeMap, BTreeSet};

use hafen_registry::{Platform, Reference};

use super::instructions::{CopyFrom, Kind};
use super::shell;
use super::{Dockerfile, Error, ErrorKind, Errors, Warning};

/// The proxy variables every build accepts without an ARG; like Docker,
/// they reach RUN steps but neither the cache key nor the history unless
/// the Dockerfile declares them.
pub const PROXY_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// The only platform builds run on: the VM is x86_64.
pub fn supported_platform() -> Platform {
    Platform::default()
}

/// Parses `--build-arg` values: `KEY=VALUE`, or `KEY` alone to take the
/// value from `env` (Docker's rule; a `KEY` not in `env` is dropped).
pub fn build_args(
    given: &[String],
    env: impl Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>, ErrorKind> {
    let mut out = BTreeMap::new();
    for item in given {
        match item.split_once('=') {
            Some(("", _)) => return Err(ErrorKind::BuildArg(item.clone())),
            Some((k, v)) => {
                out.insert(k.to_owned(), v.to_owned());
            }
            None if item.is_empty() => return Err(ErrorKind::BuildArg(item.clone())),
            None => {
                if let Some(v) = env(item) {
                    out.insert(item.clone(), v);
                }
            }
        }
    }
    Ok(out)
}

/// What the build was asked for.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// `--build-arg`s.
    pub build_args: BTreeMap<String, String>,
    /// `--target`.
    pub target: Option<String>,
    /// `--platform` (the target platform).
    pub platform: Platform,
}

/// What a stage starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    /// Nothing (`FROM scratch`).
    Scratch,
    /// An earlier stage's result, by index.
    Stage(usize),
    /// An image.
    Image {
        /// The reference, normalised (`docker.io/library/busybox:latest`).
        reference: Reference,
        /// As written after substitution (`busybox`).
        written: String,
    },
}

/// The stages to build and the values they start with.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Global ARGs with values (after `--build-arg`), plus the automatic
    /// platform ARGs (`TARGETPLATFORM`, `BUILDARCH`, ...).
    pub globals: Vec<(String, String)>,
    /// Every name a global ARG declares, with or without a value.
    pub global_names: BTreeSet<String>,
    /// Each stage's base, by stage index.
    pub bases: Vec<Base>,
    /// The target stage.
    pub target: usize,
    /// The stages the target needs, itself last; every stage comes after
    /// the ones it uses.
    pub order: Vec<usize>,
    /// The target platform.
    pub platform: Platform,
    /// Build checks that fired (UndefinedArgInFrom, ...).
    pub warnings: Vec<Warning>,
}

impl Plan {
    /// The stages `index` uses directly: its base and what it copies or
    /// mounts from.
    pub fn dependencies(&self, df: &Dockerfile, index: usize) -> BTreeSet<usize> {
        let mut deps = BTreeSet::new();
        if let Some(Base::Stage(b)) = self.bases.get(index) {
            deps.insert(*b);
        }
        if let Some(stage) = df.stages.get(index) {
            for ins in &stage.instructions {
                match &ins.kind {
                    Kind::Copy(c) => {
                        if let CopyFrom::Stage(s) = c.from {
                            deps.insert(s);
                        }
                    }
                    Kind::Run(r) => {
                        for m in &r.mounts {
                            if let Some(CopyFrom::Stage(s)) = m.from {
                                deps.insert(s);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        deps
    }
}

/// The automatic platform ARGs of the global scope.
fn platform_args(target: &Platform) -> Vec<(String, String)> {
    let build = supported_platform();
    let mut out = Vec::new();
    for (prefix, p) in [("TARGET", target), ("BUILD", &build)] {
        out.push((format!("{prefix}PLATFORM"), p.to_string()));
        out.push((format!("{prefix}OS"), p.os.clone()));
        out.push((format!("{prefix}ARCH"), p.architecture.clone()));
        out.push((
            format!("{prefix}VARIANT"),
            p.variant.clone().unwrap_or_default(),
        ));
    }
    out
}

/// Works out the build of `df` for `opts`.
pub fn plan(df: &Dockerfile, opts: &PlanOptions) -> Result<Plan, Errors> {
    plan_with_warnings(df, opts).0
}

/// [`plan`], and the build checks that fired even when it failed (an
/// undeclared ARG in FROM is often why the base is invalid).
pub fn plan_with_warnings(
    df: &Dockerfile,
    opts: &PlanOptions,
) -> (Result<Plan, Errors>, Vec<Warning>) {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let file = df.file.as_str();
    let err = |line, kind| Error::new(file, line, kind);
    if opts.platform != supported_platform() {
        errors.push(err(
            0,
            ErrorKind::Unsupported {
                what: format!("--platform {}", opts.platform),
                hint: format!(
                    "build steps run in an x86_64 VM; build for {}",
                    supported_platform()
                ),
            },
        ));
    }

    let mut globals = platform_args(&opts.platform);
    let mut global_names = BTreeSet::new();
    for arg in &df.global_args {
        global_names.insert(arg.decl.name.clone());
        let value = match (opts.build_args.get(&arg.decl.name), &arg.decl.default) {
            (Some(v), _) => Some(v.clone()),
            (None, Some(default)) => match shell::expand(default.raw(), &globals, df.escape) {
                Ok(p) => Some(p.value),
                Err(source) => {
                    errors.push(err(
                        arg.line,
                        ErrorKind::Substitution {
                            instruction: "ARG".into(),
                            word: default.raw().to_owned(),
                            source,
                        },
                    ));
                    None
                }
            },
            (None, None) => None,
        };
        if let Some(v) = value {
            globals.retain(|(k, _)| *k != arg.decl.name);
            globals.push((arg.decl.name.clone(), v));
        }
    }
    let automatic: BTreeSet<String> = platform_args(&opts.platform)
        .into_iter()
        .map(|(k, _)| k)
        .collect();

    let mut bases = Vec::new();
    for stage in &df.stages {
        let line = stage.span.start;
        let processed = match shell::expand(stage.from.image.raw(), &globals, df.escape) {
            Ok(p) => p,
            Err(source) => {
                errors.push(err(
                    line,
                    ErrorKind::Substitution {
                        instruction: "FROM".into(),
                        word: stage.from.image.raw().to_owned(),
                        source,
                    },
                ));
                bases.push(Base::Scratch);
                continue;
            }
        };
        for name in &processed.unmatched {
            if !global_names.contains(name) && !automatic.contains(name) {
                let known = global_names.iter().map(String::as_str);
                let hint = super::suggest(name, known)
                    .map(|s| format!(" (did you mean {s}?)"))
                    .unwrap_or_default();
                warnings.push(Warning {
                    file: file.to_owned(),
                    line,
                    rule: "UndefinedArgInFrom",
                    message: format!(
                        "FROM argument '{name}' is not declared{hint}: declare it with ARG before the first FROM"
                    ),
                });
            }
        }
        if let Some(platform) = &stage.from.platform {
            match shell::expand(platform.raw(), &globals, df.escape) {
                Ok(p) => match p.value.parse::<Platform>() {
                    Ok(pl) if pl == supported_platform() => {}
                    Ok(pl) => errors.push(err(
                        line,
                        ErrorKind::Unsupported {
                            what: format!("FROM --platform={pl}"),
                            hint: format!(
                                "build steps run in an x86_64 VM; use {} images",
                                supported_platform()
                            ),
                        },
                    )),
                    Err(e) => errors.push(err(
                        line,
                        ErrorKind::Invalid {
                            instruction: "FROM".into(),
                            message: format!("--platform: {e}"),
                        },
                    )),
                },
                Err(source) => errors.push(err(
                    line,
                    ErrorKind::Substitution {
                        instruction: "FROM".into(),
                        word: platform.raw().to_owned(),
                        source,
                    },
                )),
            }
        }
        let image = processed.value;
        let base = if image.is_empty() {
            errors.push(err(
                line,
                ErrorKind::Invalid {
                    instruction: "FROM".into(),
                    message: format!(
                        "the base {:?} is empty after substitution: give its ARG a default or pass --build-arg",
                        stage.from.image.raw()
                    ),
                },
            ));
            Base::Scratch
        } else if image.eq_ignore_ascii_case("scratch") {
            Base::Scratch
        } else if let Some(prev) = df.stages[..stage.index]
            .iter()
            .position(|s| s.name.as_deref() == Some(image.as_str()))
        {
            Base::Stage(prev)
        } else if df.stages[stage.index..]
            .iter()
            .any(|s| s.name.as_deref() == Some(image.to_ascii_lowercase().as_str()))
        {
            // Docker would look for an image of that name; that is never
            // what a Dockerfile with such a stage means.
            errors.push(err(
                line,
                ErrorKind::StageReference {
                    instruction: "FROM".into(),
                    reference: image.clone(),
                    message: "this stage is this one or defined after it: a stage can only start from stages before it (move it up)".into(),
                },
            ));
            Base::Scratch
        } else {
            match image.parse::<Reference>() {
                Ok(reference) => Base::Image {
                    reference,
                    written: image,
                },
                Err(e) => {
                    errors.push(err(
                        line,
                        ErrorKind::Invalid {
                            instruction: "FROM".into(),
                            message: e.to_string(),
                        },
                    ));
                    Base::Scratch
                }
            }
        };
        bases.push(base);
    }

    let target = match &opts.target {
        None => df.stages.len().saturating_sub(1),
        Some(t) => match df.stage_named(t) {
            Some(s) => s.index,
            None => {
                errors.push(err(
                    0,
                    ErrorKind::UnknownTarget {
                        target: t.clone(),
                        stages: df.stages.iter().filter_map(|s| s.name.clone()).collect(),
                    },
                ));
                df.stages.len().saturating_sub(1)
            }
        },
    };
    if !errors.is_empty() {
        errors.sort_by_key(|e| e.line);
        return (Err(Errors(errors)), warnings);
    }
    let mut plan = Plan {
        globals,
        global_names,
        bases,
        target,
        order: Vec::new(),
        platform: opts.platform.clone(),
        warnings: warnings.clone(),
    };
    // Every reference points to an earlier stage (the parser refuses the
    // rest), so the needed stages sorted by index are in build order.
    let mut needed = BTreeSet::from([target]);
    let mut todo = vec![target];
    while let Some(i) = todo.pop() {
        for d in plan.dependencies(df, i) {
            if needed.insert(d) {
                todo.push(d);
            }
        }
    }
    plan.order = needed.into_iter().collect();
    (Ok(plan), warnings)
}
