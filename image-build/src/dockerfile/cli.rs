//! `hafen image build`: the command's arguments and what works of it yet.

use std::path::PathBuf;

use hafen_registry::{Platform, Reference};

use super::check::{self, CheckOptions, Report};
use super::context::Context;
use super::expand::Settings;
use super::ignore::IgnoreRules;
use super::plan;
use super::{Dockerfile, Error, ErrorKind, Errors};
use crate::store::Store;

/// What `hafen image build` was asked for.
#[derive(Debug, Clone, Default)]
pub struct BuildRequest {
    /// The build context directory.
    pub context: PathBuf,
    /// `-f`: the Dockerfile (default `CONTEXT/Dockerfile`).
    pub dockerfile: Option<PathBuf>,
    /// `-t NAME[:TAG]`, any number.
    pub tags: Vec<String>,
    /// `--build-arg K=V` (or `K` to take it from the environment).
    pub build_args: Vec<String>,
    /// `--target STAGE`.
    pub target: Option<String>,
    /// `--no-cache`.
    pub no_cache: bool,
    /// `--no-cache-filter STAGE`, any number.
    pub no_cache_filter: Vec<String>,
    /// `--platform OS/ARCH`.
    pub platform: Option<String>,
    /// `--output oci:DIR` or `oci-archive:FILE`.
    pub output: Option<String>,
    /// `--check`.
    pub check: bool,
    /// `--pull`: resolve every base image in its registry again.
    pub pull: bool,
    /// `--network`: `none` (the default) or `host`, for RUN steps.
    pub network: Option<String>,
    /// The builder VM's kernel (`None`: `$HAFEN_KERNEL`, then the cache).
    pub kernel: Option<PathBuf>,
    /// The builder VM's static hafen-init (`None`: `$HAFEN_INIT`, then
    /// beside this program).
    pub init: Option<PathBuf>,
}

/// Where a build's image goes besides the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// An OCI image layout directory.
    Oci(PathBuf),
    /// A tar of one.
    OciArchive(PathBuf),
}

/// Parses `--output`.
pub fn parse_output(text: &str) -> Result<Output, String> {
    match text.split_once(':') {
        Some(("oci", dir)) if !dir.is_empty() => Ok(Output::Oci(dir.into())),
        Some(("oci-archive", file)) if !file.is_empty() => Ok(Output::OciArchive(file.into())),
        _ => Err(format!(
            "--output {text:?}: use oci:DIR (an OCI image layout) or oci-archive:FILE"
        )),
    }
}

/// The outcome of `--check`.
#[derive(Debug)]
pub struct CheckOutcome {
    /// The findings.
    pub report: Report,
    /// The findings as text, for the terminal.
    pub rendered: String,
}

impl BuildRequest {
    /// The Dockerfile's path, and the name errors show for it: the path as
    /// given, without a leading `./`.
    pub fn dockerfile(&self) -> (PathBuf, String) {
        let path = self
            .dockerfile
            .clone()
            .unwrap_or_else(|| self.context.join("Dockerfile"));
        let shown = path.to_string_lossy();
        let shown = shown.strip_prefix("./").unwrap_or(&shown).to_owned();
        (path, shown)
    }

    /// Checks the arguments that do not need the Dockerfile.
    pub(crate) fn arguments(
        &self,
        file: &str,
    ) -> Result<(Platform, std::collections::BTreeMap<String, String>), Errors> {
        let mut errors = Vec::new();
        let mut bad = |message: String| {
            errors.push(Error::new(
                file,
                0,
                ErrorKind::Invalid {
                    instruction: "hafen image build".into(),
                    message,
                },
            ))
        };
        for tag in &self.tags {
            if let Err(e) = tag.parse::<Reference>() {
                bad(format!("-t {tag}: {e}"));
            }
        }
        if let Some(o) = &self.output {
            if let Err(m) = parse_output(o) {
                bad(m);
            }
        }
        let platform = match self.platform.as_deref().map(str::parse::<Platform>) {
            None => plan::supported_platform(),
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                bad(format!("--platform: {e}"));
                plan::supported_platform()
            }
        };
        let build_args = match plan::build_args(&self.build_args, |k| std::env::var(k).ok()) {
            Ok(a) => a,
            Err(kind) => {
                errors.push(Error::new(file, 0, kind));
                Default::default()
            }
        };
        if errors.is_empty() {
            Ok((platform, build_args))
        } else {
            Err(Errors(errors))
        }
    }
}

/// The settings of a base image in the local store, if it is there.
pub fn stored_settings(store: &Store, reference: &Reference) -> Option<Settings> {
    let desc = store.find(reference).ok()?;
    let image = store
        .layout(&reference.to_string())
        .ok()?
        .resolve_descriptor(desc)
        .ok()?;
    let bytes = store.read_blob(&image.manifest.config.digest).ok()?;
    let json: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    Some(Settings::from_image_config(&json))
}

/// `hafen image build --check`: parses and validates the Dockerfile and
/// the context, runs Docker's build checks, and executes nothing. Base
/// images are looked up in `store` when given (never pulled).
pub fn run_check(req: &BuildRequest, store: Option<&Store>) -> CheckOutcome {
    let (path, shown) = req.dockerfile();
    let source = std::fs::read_to_string(&path).ok();
    let fail = |errors: Errors| {
        let report = Report {
            errors: errors.0,
            ..Report::default()
        };
        let rendered = report.render(source.as_deref());
        CheckOutcome { report, rendered }
    };
    let (platform, build_args) = match req.arguments(&shown) {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    let df = match Dockerfile::read(&path, &shown) {
        Ok(df) => df,
        Err(e) => return fail(e),
    };
    let context = IgnoreRules::load(&req.context, Some(&path))
        .and_then(|rules| Context::new(&req.context, rules));
    let context = match context {
        Ok(c) => c,
        Err(kind) => return fail(Errors(vec![Error::new(&shown, 0, kind)])),
    };
    let mut filter_errors = Vec::new();
    for stage in &req.no_cache_filter {
        if df.stage_named(stage).is_none() {
            filter_errors.push(Error::new(
                &shown,
                0,
                ErrorKind::UnknownTarget {
                    target: stage.clone(),
                    stages: df.stages.iter().filter_map(|s| s.name.clone()).collect(),
                },
            ));
        }
    }
    let opts = CheckOptions {
        build_args,
        target: req.target.clone(),
        platform,
        context: Some(context),
    };
    let lookup = |r: &Reference| store.and_then(|s| stored_settings(s, r));
    let mut report = check::check(&df, &opts, &lookup);
    report.errors.extend(filter_errors);
    report.errors.sort_by_key(|e| e.line);
    let rendered = report.render(source.as_deref());
    CheckOutcome { report, rendered }
}

/// Why a build did not run or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The Dockerfile, the context or the arguments are wrong.
    #[error("{0}")]
    Invalid(Errors),
    /// A step failed: the error names its line.
    #[error("{0}")]
    Failed(Box<super::Error>),
    /// The store, the build VM or the output failed.
    #[error("{0}")]
    Builder(String),
}

/// `hafen image build` without `--check`: builds into the local store.
pub fn build(req: &BuildRequest, store: &Store) -> Result<super::build::Built, BuildError> {
    super::build::build(req, store)
}
