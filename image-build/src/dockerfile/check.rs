//! `hafen image build --check`: everything a build would find wrong before
//! it runs anything, plus Docker's build checks as warnings.

use std::collections::{BTreeMap, BTreeSet};

use hafen_registry::{Platform, Reference};

use super::context::Context;
use super::expand::{BuildScope, Settings, StageState, Step};
use super::instructions::{CopyFrom, Kind};
use super::plan::{self, Base, PlanOptions, PROXY_ARGS};
use super::{Dockerfile, Error, ErrorKind, Warning};

/// What to check with.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// `--build-arg`s.
    pub build_args: BTreeMap<String, String>,
    /// `--target`.
    pub target: Option<String>,
    /// `--platform`.
    pub platform: Platform,
    /// The build context, to check COPY and ADD sources (`None`: skip).
    pub context: Option<Context>,
}

/// What the check found.
#[derive(Debug, Default)]
pub struct Report {
    /// Errors: the build would fail.
    pub errors: Vec<Error>,
    /// Build-check warnings (after `# check=skip=`).
    pub warnings: Vec<Warning>,
    /// `# check=error=true`: warnings fail the check too.
    pub warnings_are_errors: bool,
    /// Stages whose base image settings were unknown (not in the local
    /// store), so variables their base might define were not checked.
    pub unknown_bases: Vec<String>,
}

impl Report {
    /// Whether the build may go ahead.
    pub fn ok(&self) -> bool {
        self.errors.is_empty() && (self.warnings.is_empty() || !self.warnings_are_errors)
    }

    /// The report as `docker build --check` shows it: each finding with its
    /// `FILE:LINE` and the line itself, then a summary.
    pub fn render(&self, source: Option<&str>) -> String {
        let lines: Vec<&str> = source.map(|s| s.lines().collect()).unwrap_or_default();
        let excerpt = |line: usize| -> String {
            match lines.get(line.wrapping_sub(1)) {
                Some(text) if line > 0 => format!("  {line:>4} | {}\n", text.trim_end()),
                _ => String::new(),
            }
        };
        let mut items: Vec<(usize, bool, String)> = Vec::new();
        for e in &self.errors {
            let mut text = format!("{}", e);
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                text.push_str(&format!(": {c}"));
                cause = c.source();
            }
            items.push((e.line, true, text));
        }
        for w in &self.warnings {
            let place = if w.line > 0 {
                format!("{}:{}", w.file, w.line)
            } else {
                w.file.clone()
            };
            items.push((
                w.line,
                false,
                format!("{place}: warning: {}: {} ({})", w.rule, w.message, w.url()),
            ));
        }
        items.sort_by_key(|(line, is_error, _)| (*line, !*is_error));
        let mut out = String::new();
        for (line, is_error, text) in &items {
            if *is_error {
                // "FILE:LINE: error: ..." keeps the place first, like a compiler.
                match text.split_once(": ") {
                    Some((place, rest)) if *line > 0 => {
                        out.push_str(&format!("{place}: error: {rest}\n"))
                    }
                    _ => out.push_str(&format!("error: {text}\n")),
                }
            } else {
                out.push_str(text);
                out.push('\n');
            }
            out.push_str(&excerpt(*line));
        }
        for base in &self.unknown_bases {
            out.push_str(&format!(
                "note: stage {base}: the image is not in the local store, so the variables it defines are unknown and UndefinedVar was not checked (hafen image pull it first)\n"
            ));
        }
        let (e, w) = (self.errors.len(), self.warnings.len());
        let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
        if e == 0 && w == 0 {
            out.push_str("Check complete, no warnings found.\n");
        } else {
            out.push_str(&format!(
                "Check complete: {}, {}{}.\n",
                plural(e, "error"),
                plural(w, "warning"),
                if self.warnings_are_errors && w > 0 {
                    " (# check=error=true makes warnings fail)"
                } else {
                    ""
                }
            ));
        }
        out
    }
}

/// The `# check=` directive: which rules to skip and whether warnings fail.
fn check_directive(value: Option<&str>) -> (BTreeSet<String>, bool, bool) {
    let mut skip = BTreeSet::new();
    let mut skip_all = false;
    let mut error = false;
    for part in value.unwrap_or_default().split(';') {
        let Some((k, v)) = part.split_once('=') else {
            continue;
        };
        match k.trim() {
            "skip" => {
                for rule in v.split(',').map(str::trim).filter(|r| !r.is_empty()) {
                    if rule == "all" {
                        skip_all = true;
                    }
                    skip.insert(rule.to_owned());
                }
            }
            "error" => error = v.trim().eq_ignore_ascii_case("true"),
            _ => {}
        }
    }
    (skip, skip_all, error)
}

/// Checks `df` as a build with `opts` would use it. `base_settings` gives
/// the settings of a base image when it is at hand (the local store), so
/// variables it defines count as defined.
pub fn check(
    df: &Dockerfile,
    opts: &CheckOptions,
    base_settings: &dyn Fn(&Reference) -> Option<Settings>,
) -> Report {
    let mut report = Report::default();
    let mut warnings = df.warnings.clone();
    let file = df.file.clone();
    let (planned, plan_warnings) = plan::plan_with_warnings(
        df,
        &PlanOptions {
            build_args: opts.build_args.clone(),
            target: opts.target.clone(),
            platform: opts.platform.clone(),
        },
    );
    warnings.extend(plan_warnings);
    let plan = match planned {
        Ok(p) => p,
        Err(errors) => {
            report.errors = errors.0;
            finish(&mut report, df, warnings);
            return report;
        }
    };
    let scope = BuildScope::new(&plan, &opts.build_args, df.escape);
    let mut states: Vec<Option<StageState>> = Vec::new();
    let mut env_known: Vec<bool> = Vec::new();
    for stage in &df.stages {
        let (mut state, known) = match &plan.bases[stage.index] {
            Base::Scratch => (StageState::new(Settings::default(), scope.clone()), true),
            Base::Stage(j) => match states.get(*j).and_then(Option::as_ref) {
                Some(parent) => (StageState::from_parent(parent), env_known[*j]),
                None => (StageState::new(Settings::default(), scope.clone()), false),
            },
            Base::Image { reference, .. } => match base_settings(reference) {
                Some(s) if !s.onbuild.is_empty() => {
                    report.errors.push(Error::new(
                        &file,
                        stage.span.start,
                        ErrorKind::Unsupported {
                            what: format!(
                                "{} carries ONBUILD triggers ({}), which",
                                reference.familiar(),
                                s.onbuild.join("; ")
                            ),
                            hint: "Hafen does not run them; write those instructions into this Dockerfile after FROM".into(),
                        },
                    ));
                    (StageState::new(s, scope.clone()), true)
                }
                Some(s) => (StageState::new(s, scope.clone()), true),
                None => {
                    report.unknown_bases.push(format!(
                        "{} ({})",
                        stage.display_name(),
                        reference.familiar()
                    ));
                    (StageState::new(Settings::default(), scope.clone()), false)
                }
            },
        };
        for ins in &stage.instructions {
            let line = ins.span.start;
            let applied = match state.apply(ins) {
                Ok(a) => a,
                Err(kind) => {
                    report.errors.push(Error::new(&file, line, kind));
                    continue;
                }
            };
            for (rule, message) in applied.warnings {
                warnings.push(Warning {
                    file: file.clone(),
                    line,
                    rule,
                    message,
                });
            }
            if known {
                for name in &applied.undefined {
                    let options: Vec<&str> = state.vars().iter().map(|(k, _)| k.as_str()).collect();
                    let hint = super::suggest(name, options)
                        .map(|s| format!(" (did you mean ${s}?)"))
                        .unwrap_or_default();
                    warnings.push(Warning {
                        file: file.clone(),
                        line,
                        rule: "UndefinedVar",
                        message: format!("Usage of undefined variable '${name}'{hint}"),
                    });
                }
            }
            if let (Step::Copy(step), Some(context)) = (&applied.step, &opts.context) {
                if step.from == CopyFrom::Context {
                    let kw = ins.keyword.to_ascii_uppercase();
                    if let Err(kind) = context.select(step, &kw) {
                        report.errors.push(Error::new(&file, line, kind));
                    }
                }
            }
        }
        states.push(Some(state));
        env_known.push(known);
    }

    // Docker: "One or more build-args were not consumed".
    let mut declared: BTreeSet<&str> = df
        .global_args
        .iter()
        .map(|a| a.decl.name.as_str())
        .collect();
    for stage in &df.stages {
        for ins in &stage.instructions {
            if let Kind::Arg(decls) = &ins.kind {
                declared.extend(decls.iter().map(|d| d.name.as_str()));
            }
        }
    }
    for name in opts.build_args.keys() {
        if !declared.contains(name.as_str()) && !PROXY_ARGS.contains(&name.as_str()) {
            warnings.push(Warning {
                file: file.clone(),
                line: 0,
                rule: "UnconsumedBuildArg",
                message: format!(
                    "--build-arg {name} is not declared by any ARG, so nothing uses it"
                ),
            });
        }
    }
    finish(&mut report, df, warnings);
    report
}

fn finish(report: &mut Report, df: &Dockerfile, mut warnings: Vec<Warning>) {
    let (skip, skip_all, error) = check_directive(df.directives.check.as_deref());
    warnings.retain(|w| !skip_all && !skip.contains(w.rule));
    warnings.sort_by_key(|w| w.line);
    warnings.dedup();
    report.warnings = warnings;
    report.warnings_are_errors = error;
    report.errors.sort_by_key(|e| e.line);
}
