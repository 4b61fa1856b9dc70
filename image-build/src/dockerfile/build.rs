//! The executor of `hafen image build`: stages and their steps, the
//! cache, the builder VM that runs RUN steps, and the image it all makes.
//!
//! Every stage is followed on the host as a list of layers and, beside it,
//! the flattened tree of its root filesystem ([`Tree`]), which COPY, ADD,
//! WORKDIR and user names are worked out against. COPY, ADD and WORKDIR
//! make their layers on the host ([`super::layer`]); a RUN step runs in a
//! builder VM (one per build, booted at the first RUN that the cache
//! cannot answer) over the stage's layers, and the layer its changes make
//! comes back as a tar. Every layer goes into the store's blobs, and the
//! cache ([`super::cache`]) names it by the step's chained key, so a build
//! whose every step is cached boots no VM at all.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hafen_proto::build::{BuildOp, StepFile};
use hafen_proto::control::Body;
use hafen_qemu::client::SessionEnd;
use hafen_registry::Reference;
use serde_json::{json, Map, Value};

use super::cache::{Cache, CachedLayer, Entry, Key};
use super::cli::{BuildError, BuildRequest, Output};
use super::context::Context;
use super::expand::{BuildScope, RunStep, Settings, StageState, Step};
use super::ignore::IgnoreRules;
use super::instructions::{CopyFrom, Network};
use super::layer::{self, CopySource, Sources};
use super::plan::{self, Base, PlanOptions};
use super::{Dockerfile, Error, ErrorKind, Errors};
use crate::oci::{self, media, Descriptor, ImageManifest};
use crate::store::Store;
use crate::tree::Tree;

/// What a finished build made.
#[derive(Debug, Clone)]
pub struct Built {
    /// The image manifest's digest.
    pub digest: String,
    /// Steps answered by the cache, and steps executed.
    pub cached: usize,
    /// Steps executed.
    pub executed: usize,
    /// Whether a builder VM was booted.
    pub booted_vm: bool,
}

/// The PATH a RUN step gets when the image sets none (Docker's default).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long a builder VM may take to power off before it is forced.
const VM_STOP_TIME: Duration = Duration::from_secs(10);

/// One layer of a stage.
#[derive(Debug, Clone)]
struct Layer {
    descriptor: Descriptor,
    diff_id: String,
}

/// A stage as far as it has been built.
#[derive(Debug, Clone)]
struct StageResult {
    state: StageState,
    tree: Tree,
    layers: Vec<Layer>,
    history: Vec<Value>,
    key: Key,
}

/// The modification time every made file is clamped to, and the image's
/// creation time: `SOURCE_DATE_EPOCH`, else 0, so a build is reproducible.
fn build_epoch() -> Result<i64, String> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse::<i64>()
            .map_err(|_| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds since 1970")),
        _ => Ok(0),
    }
}

/// Builds the image `req` describes into `store`; progress and RUN output
/// go to stderr.
pub fn build(req: &BuildRequest, store: &Store) -> Result<Built, BuildError> {
    let outcome = super::cli::run_check(req, Some(store));
    if !outcome.report.errors.is_empty() {
        return Err(BuildError::Invalid(Errors(outcome.report.errors)));
    }
    let (path, shown) = req.dockerfile();
    let df = Dockerfile::read(&path, &shown).map_err(BuildError::Invalid)?;
    let (platform, build_args) = req.arguments(&shown).map_err(BuildError::Invalid)?;
    let plan = plan::plan(
        &df,
        &PlanOptions {
            build_args: build_args.clone(),
            target: req.target.clone(),
            platform: platform.clone(),
        },
    )
    .map_err(BuildError::Invalid)?;
    let context = IgnoreRules::load(&req.context, Some(&path))
        .and_then(|rules| Context::new(&req.context, rules))
        .map_err(|kind| BuildError::Invalid(Error::new(&shown, 0, kind).into()))?;
    let epoch = build_epoch().map_err(BuildError::Builder)?;
    let host_network = match req.network.as_deref() {
        None | Some("none") | Some("default") => false,
        Some("host") => true,
        Some(other) => {
            return Err(BuildError::Builder(format!(
                "--network {other:?}: use none (the default: RUN steps have only a loopback interface) or host (they share the build VM's network, which reaches beyond this machine)"
            )))
        }
    };
    let no_cache_stages: Vec<usize> = req
        .no_cache_filter
        .iter()
        .filter_map(|name| df.stage_named(name).map(|s| s.index))
        .collect();

    let mut exec = Executor {
        df: &df,
        file: shown.clone(),
        store,
        cache: Cache::new(store),
        context,
        epoch,
        host_network,
        pull: req.pull,
        platform: platform.to_string(),
        scope: BuildScope::new(&plan, &build_args, df.escape),
        no_cache: req.no_cache,
        no_cache_stages,
        vm: None,
        images: HashMap::new(),
        results: vec![None; df.stages.len()],
        step_no: 0,
        cached: 0,
        executed: 0,
        work: std::env::temp_dir().join(format!("hafen-build-{}", std::process::id())),
        builder_id: None,
        kernel: req.kernel.clone(),
        init: req.init.clone(),
    };
    let result = exec.run(&plan);
    let booted = exec.vm.is_some();
    exec.finish();
    let target = result?;
    let digest = exec.write_image(&target)?;
    for tag in &req.tags {
        let reference: Reference = tag
            .parse()
            .map_err(|e| BuildError::Builder(format!("-t {tag}: {e}")))?;
        store
            .tag(&reference, &digest)
            .map_err(|e| BuildError::Builder(format!("-t {tag}: {e}")))?;
    }
    if req.tags.is_empty() {
        store
            .add_unnamed(&digest)
            .map_err(|e| BuildError::Builder(e.to_string()))?;
    }
    if let Some(output) = &req.output {
        let output = super::cli::parse_output(output).map_err(BuildError::Builder)?;
        write_output(
            store,
            &digest,
            req.tags.first().map(String::as_str),
            &output,
        )?;
    }
    Ok(Built {
        digest: digest.digest,
        cached: exec.cached,
        executed: exec.executed,
        booted_vm: booted,
    })
}

/// A base or `COPY --from` image, opened once per build.
#[derive(Debug, Clone)]
struct BaseImage {
    digest: String,
    config: Value,
    layers: Vec<Layer>,
    tree: Tree,
}

struct Executor<'a> {
    df: &'a Dockerfile,
    file: String,
    store: &'a Store,
    cache: Cache,
    context: Context,
    epoch: i64,
    host_network: bool,
    pull: bool,
    platform: String,
    scope: BuildScope,
    no_cache: bool,
    no_cache_stages: Vec<usize>,
    vm: Option<BuilderVm>,
    images: HashMap<String, BaseImage>,
    results: Vec<Option<StageResult>>,
    step_no: usize,
    cached: usize,
    executed: usize,
    /// Scratch files (layers on their way into the VM).
    work: PathBuf,
    /// What runs RUN steps: hafen-init's and the kernel's digests.
    builder_id: Option<String>,
    kernel: Option<PathBuf>,
    init: Option<PathBuf>,
}

impl std::fmt::Debug for Executor<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("file", &self.file)
            .finish()
    }
}

impl Executor<'_> {
    fn at(&self, line: usize, instruction: &str, message: impl Into<String>) -> BuildError {
        BuildError::Failed(Box::new(Error::new(
            &self.file,
            line,
            ErrorKind::Invalid {
                instruction: instruction.to_owned(),
                message: message.into(),
            },
        )))
    }

    fn run(&mut self, plan: &plan::Plan) -> Result<StageResult, BuildError> {
        for &index in &plan.order {
            let result = self.stage(plan, index)?;
            self.results[index] = Some(result);
        }
        self.results[plan.target]
            .clone()
            .ok_or_else(|| BuildError::Builder("the target stage was not built".into()))
    }

    /// Opens an image for FROM or COPY --from: from the store, pulled when
    /// the store lacks it or `--pull` was given.
    fn image(&mut self, reference: &Reference, line: usize) -> Result<BaseImage, BuildError> {
        let text = reference.to_string();
        if let Some(found) = self.images.get(&text) {
            return Ok(found.clone());
        }
        let local = if self.pull && reference.digest.is_none() {
            None
        } else {
            match crate::find_in_store(self.store, reference) {
                Ok(_) => Some(()),
                Err(crate::store::StoreError::NotFound { .. }) => None,
                Err(e) => return Err(self.at(line, "FROM", format!("{text}: {e}"))),
            }
        };
        if local.is_none() {
            let client = hafen_registry::Client::new(hafen_registry::ClientOptions::from_env());
            let progress = hafen_registry::progress::stderr_progress();
            crate::pull::pull(
                &client,
                self.store,
                reference,
                &hafen_registry::Platform::default(),
                &*progress,
            )
            .map_err(|e| {
                self.at(
                    line,
                    "FROM",
                    format!(
                        "{text}: not in the local store, and pulling it failed: {}",
                        crate::error_chain(&e)
                    ),
                )
            })?;
        }
        let opened = crate::stored_image(self.store, reference, &text)
            .map_err(|e| self.at(line, "FROM", format!("{text}: {}", crate::error_chain(&e))))?;
        let tree = crate::flatten_image(&opened)
            .map_err(|e| self.at(line, "FROM", format!("{text}: {}", crate::error_chain(&e))))?;
        let config_bytes = self
            .store
            .read_blob(&opened.image.manifest.config.digest)
            .map_err(|e| self.at(line, "FROM", format!("{text}: {e}")))?;
        let config: Value = serde_json::from_slice(&config_bytes)
            .map_err(|e| self.at(line, "FROM", format!("{text}: its config is not JSON: {e}")))?;
        let layers = opened
            .image
            .manifest
            .layers
            .iter()
            .zip(&opened.image.config.rootfs.diff_ids)
            .map(|(d, id)| Layer {
                descriptor: d.clone(),
                diff_id: id.clone(),
            })
            .collect();
        let image = BaseImage {
            digest: opened.image.digest.clone(),
            config,
            layers,
            tree,
        };
        self.images.insert(text, image.clone());
        Ok(image)
    }

    fn stage(&mut self, plan: &plan::Plan, index: usize) -> Result<StageResult, BuildError> {
        let df = self.df;
        let stage = &df.stages[index];
        let line = stage.span.start;
        let mut result = match &plan.bases[index] {
            Base::Scratch => StageResult {
                state: StageState::new(Settings::default(), self.scope.clone()),
                tree: Tree::new(),
                layers: Vec::new(),
                history: Vec::new(),
                key: Key::root(&self.platform, "scratch"),
            },
            Base::Stage(i) => {
                let parent = self.results[*i].clone().ok_or_else(|| {
                    self.at(line, "FROM", format!("stage {i} was not built before"))
                })?;
                StageResult {
                    state: StageState::from_parent(&parent.state),
                    ..parent
                }
            }
            Base::Image { reference, .. } => {
                let image = self.image(reference, line)?;
                let settings =
                    Settings::from_image_config(image.config.get("config").unwrap_or(&Value::Null));
                if !settings.onbuild.is_empty() {
                    return Err(self.at(
                        line,
                        "FROM",
                        format!(
                            "{reference}'s ONBUILD triggers ({}) are not supported: build from an image without them",
                            settings.onbuild.join("; ")
                        ),
                    ));
                }
                let history = base_history(&image.config, image.layers.len());
                StageResult {
                    state: StageState::new(settings, self.scope.clone()),
                    tree: image.tree.clone(),
                    layers: image.layers.clone(),
                    history,
                    key: Key::root(&self.platform, &image.digest),
                }
            }
        };
        let total = stage.instructions.len() + 1;
        self.step_no += 1;
        eprintln!(
            "#{} [{} 1/{total}] {}",
            self.step_no,
            stage.display_name(),
            stage.text
        );
        let use_cache = !self.no_cache && !self.no_cache_stages.contains(&index);
        for (n, ins) in stage.instructions.iter().enumerate() {
            self.step_no += 1;
            eprintln!(
                "#{} [{} {}/{total}] {}",
                self.step_no,
                stage.display_name(),
                n + 2,
                ins.text
            );
            let line = ins.span.start;
            let keyword = ins.keyword.to_ascii_uppercase();
            let applied = result
                .state
                .apply(ins)
                .map_err(|kind| BuildError::Failed(Box::new(Error::new(&self.file, line, kind))))?;
            let started = Instant::now();
            let made = match &applied.step {
                Step::Config => None,
                Step::Workdir(path) => {
                    let user = result.state.settings.user.clone();
                    let owner = layer::workdir_owner(&result.tree, &user)
                        .map_err(|e| self.at(line, &keyword, e.to_string()))?;
                    let key =
                        result
                            .key
                            .chain(&["WORKDIR", path, &format!("{}:{}", owner.0, owner.1)]);
                    let tree = &result.tree;
                    let epoch = self.epoch;
                    Some(self.layer_step(key, use_cache, line, &keyword, || {
                        layer::workdir_layer(tree, path, owner, epoch)
                            .map(|l| l.map(|l| l.tar))
                            .map_err(|e| e.to_string())
                    })?)
                }
                Step::Copy(copy) => {
                    let from_tree;
                    let (source, from_id) = match &copy.from {
                        CopyFrom::Context => {
                            (CopySource::Context(&self.context), "context".to_owned())
                        }
                        CopyFrom::Stage(i) => {
                            let s = self.results[*i].as_ref().ok_or_else(|| {
                                self.at(line, &keyword, format!("stage {i} was not built before"))
                            })?;
                            from_tree = s.tree.clone();
                            (
                                CopySource::Tree(&from_tree),
                                format!("stage:{}", s.key.as_str()),
                            )
                        }
                        CopyFrom::Image(name) => {
                            let reference: Reference = name.parse().map_err(|e| {
                                self.at(line, &keyword, format!("--from={name}: {e}"))
                            })?;
                            let image = self.image(&reference, line)?;
                            from_tree = image.tree.clone();
                            (
                                CopySource::Tree(&from_tree),
                                format!("image:{}", image.digest),
                            )
                        }
                    };
                    let sources = Sources::gather(copy, source, &keyword).map_err(|kind| {
                        BuildError::Failed(Box::new(Error::new(&self.file, line, kind)))
                    })?;
                    let key = result.key.chain(&[
                        &keyword,
                        &format!("{copy:?}"),
                        &from_id,
                        &sources.digest(),
                        &self.epoch.to_string(),
                    ]);
                    let tree = &result.tree;
                    let epoch = self.epoch;
                    let kw = keyword.clone();
                    Some(self.layer_step(key, use_cache, line, &keyword, || {
                        sources
                            .layer(copy, tree, &kw, epoch)
                            .map(|l| Some(l.tar))
                            .map_err(|e| e.to_string())
                    })?)
                }
                Step::Run(run) => {
                    let key = self.run_key(&result, run)?;
                    if run.network == Network::Host && !self.host_network {
                        return Err(self.at(
                            line,
                            &keyword,
                            "--network=host needs `hafen image build --network host` (steps have no network by default)",
                        ));
                    }
                    if !run.mounts.is_empty() {
                        return Err(self.at(
                            line,
                            &keyword,
                            "RUN --mount is not supported yet: COPY what the step needs first",
                        ));
                    }
                    match self.lookup(&key, use_cache) {
                        Some(entry) => Some((key, entry)),
                        None => {
                            let entry = self.execute_run(&result, run, line, &ins.text)?;
                            self.record(&key, &entry)?;
                            eprintln!(
                                "#{} DONE {:.1}s",
                                self.step_no,
                                started.elapsed().as_secs_f64()
                            );
                            Some((key, entry))
                        }
                    }
                }
            };
            let created_by = applied.history.clone();
            match made {
                None => result.history.push(history(self.epoch, &created_by, true)),
                Some((key, entry)) => {
                    result.key = key;
                    match entry.layer {
                        None => result.history.push(history(self.epoch, &created_by, true)),
                        Some(cached) => {
                            let tar = self
                                .layer_tar(&cached.descriptor)
                                .map_err(|e| self.at(line, &keyword, format!("its layer: {e}")))?;
                            let index = result.layers.len();
                            result
                                .tree
                                .apply_layer(index, tar.as_slice())
                                .map_err(|e| self.at(line, &keyword, format!("its layer: {e}")))?;
                            result.layers.push(Layer {
                                descriptor: cached.descriptor,
                                diff_id: cached.diff_id,
                            });
                            result.history.push(history(self.epoch, &created_by, false));
                        }
                    }
                }
            }
        }
        Ok(result)
    }

    /// A COPY, ADD or WORKDIR: the cached layer, or `make`'s, stored.
    fn layer_step(
        &mut self,
        key: Key,
        use_cache: bool,
        line: usize,
        keyword: &str,
        make: impl FnOnce() -> Result<Option<Vec<u8>>, String>,
    ) -> Result<(Key, Entry), BuildError> {
        if let Some(entry) = self.lookup(&key, use_cache) {
            return Ok((key, entry));
        }
        let tar = make().map_err(|m| self.at(line, keyword, m))?;
        let entry = match tar {
            None => Entry { layer: None },
            Some(tar) => Entry {
                layer: Some(self.store_layer(&tar)?),
            },
        };
        self.record(&key, &entry)?;
        Ok((key, entry))
    }

    /// The cache's entry for `key` (counted and shown as cached), unless
    /// the cache is bypassed for this step.
    fn lookup(&mut self, key: &Key, use_cache: bool) -> Option<Entry> {
        let entry = use_cache
            .then(|| self.cache.get(self.store, key))
            .flatten()?;
        self.cached += 1;
        eprintln!("#{} CACHED", self.step_no);
        Some(entry)
    }

    /// Records an executed step's result in the cache.
    fn record(&mut self, key: &Key, entry: &Entry) -> Result<(), BuildError> {
        self.cache.put(key, entry).map_err(|e| {
            BuildError::Builder(format!(
                "cannot write the build cache in {}: {e}",
                self.cache.dir().display()
            ))
        })?;
        self.executed += 1;
        Ok(())
    }

    /// Compresses a layer and puts it into the store.
    fn store_layer(&self, tar: &[u8]) -> Result<CachedLayer, BuildError> {
        let diff_id = oci::digest_of(tar);
        let gz = crate::import::gzip(tar)
            .map_err(|e| BuildError::Builder(format!("cannot compress a layer: {e}")))?;
        let descriptor = self
            .store
            .put_blob(media::LAYER_GZIP, &gz)
            .map_err(|e| BuildError::Builder(format!("cannot store a layer: {e}")))?;
        Ok(CachedLayer {
            descriptor,
            diff_id,
        })
    }

    /// A stored layer's uncompressed tar.
    fn layer_tar(&self, descriptor: &Descriptor) -> Result<Vec<u8>, String> {
        let compression = oci::layer_compression(&descriptor.media_type).ok_or_else(|| {
            format!(
                "layer media type {:?} is not a layer",
                descriptor.media_type
            )
        })?;
        let blob = self
            .store
            .open_blob(&descriptor.digest)
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        compression
            .decoder(blob)
            .and_then(|mut r| r.read_to_end(&mut out))
            .map_err(|e| format!("{}: {e}", descriptor.digest))?;
        Ok(out)
    }

    /// What identifies the builder that runs RUN steps: hafen-init's and
    /// the kernel's content.
    fn builder_id(&mut self) -> Result<String, BuildError> {
        if let Some(id) = &self.builder_id {
            return Ok(id.clone());
        }
        let (_, init) = crate::locate_init(self.init.as_deref())
            .map_err(|e| BuildError::Builder(e.to_string()))?;
        let (vmlinux, _) = crate::locate_kernel(self.kernel.as_deref())
            .map_err(|e| BuildError::Builder(e.to_string()))?;
        let kernel = std::fs::read(&vmlinux)
            .map_err(|e| BuildError::Builder(format!("{}: {e}", vmlinux.display())))?;
        let id = format!("{} {}", oci::digest_of(&init), oci::digest_of(&kernel));
        self.builder_id = Some(id.clone());
        Ok(id)
    }

    fn run_key(&mut self, stage: &StageResult, run: &RunStep) -> Result<Key, BuildError> {
        let builder = self.builder_id()?;
        let files: Vec<String> = run
            .files
            .iter()
            .map(|f| {
                format!(
                    "{} {:o} {}",
                    f.path,
                    f.mode,
                    oci::digest_of(f.data.as_bytes())
                )
            })
            .collect();
        let network = match run.network {
            Network::Host => "host",
            Network::None => "none",
            Network::Default if self.host_network => "host",
            Network::Default => "none",
        };
        Ok(stage.key.chain(&[
            "RUN",
            &builder,
            &serde_json::to_string(&run.argv).unwrap_or_default(),
            &files.join("\n"),
            &serde_json::to_string(&run.cache_env).unwrap_or_default(),
            &run.user,
            &run.workdir,
            network,
            &self.epoch.to_string(),
        ]))
    }

    /// Runs a RUN step in the builder VM and brings its layer back.
    fn execute_run(
        &mut self,
        stage: &StageResult,
        run: &RunStep,
        line: usize,
        text: &str,
    ) -> Result<Entry, BuildError> {
        let user =
            layer::resolve_user(&stage.tree, &run.user).map_err(|m| self.at(line, "RUN", m))?;
        let mut env = run.env.clone();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.push(format!("PATH={DEFAULT_PATH}"));
        }
        if !env.iter().any(|e| e.starts_with("HOME=")) {
            env.push(format!("HOME={}", home_of(&stage.tree, user.uid)));
        }
        let host_network = match run.network {
            Network::Host => true,
            Network::None => false,
            Network::Default => self.host_network,
        };
        if self.vm.is_none() {
            let vm = BuilderVm::boot(
                self.host_network,
                &self.work,
                self.kernel.as_deref(),
                self.init.as_deref(),
            )?;
            self.vm = Some(vm);
        }
        // Every layer of the stage must be in the VM.
        let mut lowers = Vec::with_capacity(stage.layers.len());
        for l in &stage.layers {
            let id = match self.vm.as_ref().and_then(|vm| vm.layers.get(&l.diff_id)) {
                Some(&id) => id,
                None => {
                    let tar = self
                        .layer_tar(&l.descriptor)
                        .map_err(|e| self.at(line, "RUN", format!("a layer of its stage: {e}")))?;
                    let vm = self
                        .vm
                        .as_mut()
                        .ok_or_else(|| BuildError::Builder("no VM".into()))?;
                    vm.put_layer(&l.diff_id, &tar)?
                }
            };
            lowers.push(id);
        }
        lowers.reverse();
        let vm = self
            .vm
            .as_mut()
            .ok_or_else(|| BuildError::Builder("no VM".into()))?;
        let layer = vm.fresh_layer();
        let step = hafen_proto::build::RunStep {
            layer,
            lowers,
            args: run.argv.clone(),
            env,
            cwd: run.workdir.clone(),
            uid: user.uid,
            gid: user.gid,
            additional_gids: user.additional_gids.clone(),
            host_network,
            hostname: "hafen-build".into(),
            // Docker's default profile, as every container of an appliance
            // gets (a step runs as root with Docker's default capabilities).
            seccomp_json: serde_json::to_string(&crate::seccomp::default_profile(
                &hafen_proto::capability::DEFAULT
                    .iter()
                    .map(|c| (*c).to_owned())
                    .collect::<Vec<_>>(),
            ))
            .ok(),
            files: run
                .files
                .iter()
                .map(|f| StepFile {
                    path: f.path.clone(),
                    mode: f.mode,
                    data: f.data.clone().into_bytes(),
                })
                .collect(),
        };
        let code = vm.op(BuildOp::Run(Box::new(step)), None, &mut std::io::stderr())?;
        if code != 0 {
            let why = match code {
                hafen_proto::build::SETUP_FAILED => {
                    "could not be started in the build VM (see the message above)".to_owned()
                }
                c if c > 128 => format!("was killed by signal {}", c - 128),
                c => format!("failed with exit code {c}"),
            };
            return Err(self.at(line, "RUN", format!("`{}` {why}", text.trim())));
        }
        let vm = self
            .vm
            .as_mut()
            .ok_or_else(|| BuildError::Builder("no VM".into()))?;
        let tar = vm.get_layer(layer, self.epoch)?;
        if tar_is_empty(&tar) {
            return Ok(Entry { layer: None });
        }
        let cached = self.store_layer(&tar)?;
        if let Some(vm) = self.vm.as_mut() {
            vm.layers.insert(cached.diff_id.clone(), layer);
        }
        Ok(Entry {
            layer: Some(cached),
        })
    }

    /// Powers the VM off and removes scratch files.
    fn finish(&mut self) {
        if let Some(vm) = self.vm.take() {
            vm.stop();
        }
        let _ = std::fs::remove_dir_all(&self.work);
    }

    /// Writes the target's config and manifest into the store.
    fn write_image(&self, target: &StageResult) -> Result<Descriptor, BuildError> {
        let config = image_config(
            &target.state.settings,
            &target.layers,
            &target.history,
            self.epoch,
        );
        let config_json = serde_json::to_vec(&config)
            .map_err(|e| BuildError::Builder(format!("cannot encode the image config: {e}")))?;
        let put = |media_type: &str, bytes: &[u8]| {
            self.store
                .put_blob(media_type, bytes)
                .map_err(|e| BuildError::Builder(format!("cannot store the image: {e}")))
        };
        let config = put(media::CONFIG, &config_json)?;
        let manifest = ImageManifest {
            schema_version: 2,
            media_type: Some(media::MANIFEST.into()),
            config,
            layers: target.layers.iter().map(|l| l.descriptor.clone()).collect(),
        };
        let manifest_json = serde_json::to_vec(&manifest)
            .map_err(|e| BuildError::Builder(format!("cannot encode the image manifest: {e}")))?;
        put(media::MANIFEST, &manifest_json)
    }
}

/// The home directory of `uid` in the stage's /etc/passwd, `/` when it
/// has none (Docker's rule for a step's HOME).
fn home_of(tree: &Tree, uid: u32) -> String {
    tree.read_text("etc/passwd")
        .and_then(|text| {
            text.lines().find_map(|line| {
                let fields: Vec<&str> = line.split(':').collect();
                (fields.len() >= 6 && fields[2].parse() == Ok(uid) && !fields[5].is_empty())
                    .then(|| fields[5].to_owned())
            })
        })
        .unwrap_or_else(|| "/".to_owned())
}

/// Whether a tar holds no entry (the RUN step changed nothing).
fn tar_is_empty(tar: &[u8]) -> bool {
    tar.iter().take(512).all(|&b| b == 0)
}

/// A base image's history, one entry per layer besides the empty ones;
/// when its config's history does not match its layers (an image made
/// without one), an entry per layer says so instead.
fn base_history(config: &Value, layers: usize) -> Vec<Value> {
    let given = config
        .get("history")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let non_empty = given
        .iter()
        .filter(|h| h.get("empty_layer") != Some(&Value::Bool(true)))
        .count();
    if non_empty == layers {
        return given;
    }
    (0..layers)
        .map(|_| json!({"created_by": "(a layer of the base image, which has no history for it)"}))
        .collect()
}

/// A history entry.
fn history(epoch: i64, created_by: &str, empty: bool) -> Value {
    let mut h = Map::new();
    h.insert("created".into(), json!(hafen_proto::time::rfc3339(epoch)));
    h.insert("created_by".into(), json!(created_by));
    h.insert("comment".into(), json!("hafen image build"));
    if empty {
        h.insert("empty_layer".into(), json!(true));
    }
    Value::Object(h)
}

/// The image config of a stage: Docker's field names.
fn image_config(settings: &Settings, layers: &[Layer], history: &[Value], epoch: i64) -> Value {
    let mut c = Map::new();
    if !settings.user.is_empty() {
        c.insert("User".into(), json!(settings.user));
    }
    if !settings.exposed_ports.is_empty() {
        let ports: Map<String, Value> = settings
            .exposed_ports
            .iter()
            .map(|p| (p.clone(), json!({})))
            .collect();
        c.insert("ExposedPorts".into(), Value::Object(ports));
    }
    let env: Vec<String> = settings
        .env
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if !env.is_empty() {
        c.insert("Env".into(), json!(env));
    }
    if let Some(e) = &settings.entrypoint {
        c.insert("Entrypoint".into(), json!(e));
    }
    if let Some(cmd) = &settings.cmd {
        c.insert("Cmd".into(), json!(cmd));
    }
    if let Some(h) = &settings.healthcheck {
        let mut hc = Map::new();
        hc.insert("Test".into(), json!(h.test));
        for (name, v) in [
            ("Interval", h.interval_ns),
            ("Timeout", h.timeout_ns),
            ("StartPeriod", h.start_period_ns),
            ("StartInterval", h.start_interval_ns),
        ] {
            if v != 0 {
                hc.insert(name.into(), json!(v));
            }
        }
        if h.retries != 0 {
            hc.insert("Retries".into(), json!(h.retries));
        }
        c.insert("Healthcheck".into(), Value::Object(hc));
    }
    if !settings.volumes.is_empty() {
        let v: Map<String, Value> = settings
            .volumes
            .iter()
            .map(|p| (p.clone(), json!({})))
            .collect();
        c.insert("Volumes".into(), Value::Object(v));
    }
    if !settings.workdir.is_empty() {
        c.insert("WorkingDir".into(), json!(settings.workdir));
    }
    if !settings.labels.is_empty() {
        c.insert("Labels".into(), json!(settings.labels));
    }
    if let Some(s) = &settings.stop_signal {
        c.insert("StopSignal".into(), json!(s));
    }
    if settings.shell != Settings::default().shell {
        c.insert("Shell".into(), json!(settings.shell));
    }
    if !settings.onbuild.is_empty() {
        c.insert("OnBuild".into(), json!(settings.onbuild));
    }
    let mut image = Map::new();
    image.insert("created".into(), json!(hafen_proto::time::rfc3339(epoch)));
    if let Some(a) = &settings.author {
        image.insert("author".into(), json!(a));
    }
    image.insert("architecture".into(), json!("amd64"));
    image.insert("os".into(), json!("linux"));
    image.insert("config".into(), Value::Object(c));
    image.insert(
        "rootfs".into(),
        json!({"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()}),
    );
    image.insert("history".into(), Value::Array(history.to_vec()));
    Value::Object(image)
}

/// Writes the image `manifest` names as an OCI layout (`oci:DIR`) or a
/// tar of one (`oci-archive:FILE`); the target appears only complete.
fn write_output(
    store: &Store,
    manifest: &Descriptor,
    tag: Option<&str>,
    output: &Output,
) -> Result<(), BuildError> {
    let fail = |what: &Path, e: &dyn std::fmt::Display| {
        BuildError::Builder(format!("--output: {}: {e}", what.display()))
    };
    let manifest_bytes = store
        .read_blob(&manifest.digest)
        .map_err(|e| BuildError::Builder(e.to_string()))?;
    let parsed: ImageManifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| BuildError::Builder(format!("the built manifest: {e}")))?;
    let mut blobs = vec![manifest.digest.clone(), parsed.config.digest.clone()];
    blobs.extend(parsed.layers.iter().map(|l| l.digest.clone()));
    let mut descriptor = manifest.clone();
    if let Some(tag) = tag {
        let t = tag
            .rsplit_once(':')
            .map(|(_, t)| t)
            .filter(|t| !t.contains('/'));
        descriptor
            .annotations
            .insert(oci::REF_NAME.into(), t.unwrap_or("latest").to_owned());
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": media::INDEX,
        "manifests": [descriptor],
    });
    let index_json = serde_json::to_vec(&index).map_err(|e| BuildError::Builder(e.to_string()))?;
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    files.insert("oci-layout".into(), layout.to_vec());
    files.insert("index.json".into(), index_json);
    for digest in blobs {
        let hex = oci::digest_hex(&digest).unwrap_or_default().to_owned();
        let bytes = store
            .read_blob(&digest)
            .map_err(|e| BuildError::Builder(e.to_string()))?;
        files.insert(format!("blobs/sha256/{hex}"), bytes);
    }
    match output {
        Output::Oci(dir) => {
            // The image directory's writer: a temporary sibling, renamed
            // into place (the old one kept until then).
            crate::write_output(dir, |tmp| {
                for (name, bytes) in &files {
                    let path = tmp.join(name);
                    let written = match path.parent() {
                        Some(parent) => std::fs::create_dir_all(parent),
                        None => Ok(()),
                    }
                    .and_then(|()| std::fs::write(&path, bytes));
                    written.map_err(|source| crate::Error::Output { path, source })?;
                }
                Ok(())
            })
            .map_err(|e| fail(dir, &crate::error_chain(&e)))?;
        }
        Output::OciArchive(file) => {
            let tmp = file.with_extension(format!("tmp-{}", std::process::id()));
            let written = (|| -> std::io::Result<()> {
                let mut b = tar::Builder::new(File::create(&tmp)?);
                let mut dirs = vec!["blobs/", "blobs/sha256/"];
                dirs.dedup();
                for d in dirs {
                    let mut h = tar::Header::new_ustar();
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    h.set_mtime(0);
                    b.append_data(&mut h, d, std::io::empty())?;
                }
                for (name, bytes) in &files {
                    let mut h = tar::Header::new_ustar();
                    h.set_mode(0o644);
                    h.set_size(bytes.len() as u64);
                    h.set_mtime(0);
                    b.append_data(&mut h, name, bytes.as_slice())?;
                }
                let f = b.into_inner()?;
                f.sync_all()?;
                std::fs::rename(&tmp, file)
            })();
            if let Err(e) = written {
                let _ = std::fs::remove_file(&tmp);
                return Err(fail(file, &e));
            }
        }
    }
    Ok(())
}

/// The builder VM of one build.
#[derive(Debug)]
struct BuilderVm {
    name: String,
    image_dir: PathBuf,
    client: hafen_qemu::client::Client,
    next: u32,
    /// Layers the VM holds, by diff id.
    layers: HashMap<String, u32>,
    work: PathBuf,
}

impl BuilderVm {
    /// Writes the builder image and boots it detached; returns once its
    /// PID 1 answers.
    fn boot(
        outbound: bool,
        work: &Path,
        kernel: Option<&Path>,
        init: Option<&Path>,
    ) -> Result<BuilderVm, BuildError> {
        let vm_err = |e: &dyn std::fmt::Display| BuildError::Builder(format!("the build VM: {e}"));
        std::fs::create_dir_all(work).map_err(|e| vm_err(&e))?;
        let image_dir = work.join("vm");
        crate::build_builder(&image_dir, kernel, init, outbound).map_err(|e| vm_err(&e))?;
        let name = format!("build-{}", std::process::id());
        eprintln!("   booting the build VM ({name})");
        let opts = hafen_qemu::RunOptions {
            image: image_dir.clone(),
            memory_mib: None,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get().min(4) as u32),
            accel: hafen_qemu::Accel::Auto,
            verbose: false,
            append: Vec::new(),
            name: Some(name.clone()),
            control: true,
            data_size: None,
            host_volumes: Vec::new(),
            stop_with_caller: true,
        };
        let name = hafen_qemu::run_detached(&opts).map_err(|e| vm_err(&e))?;
        let client = match hafen_qemu::client::Client::connect(&name) {
            Ok(c) => c,
            Err(e) => {
                let _ = hafen_qemu::client::vm::shut_down(&name, VM_STOP_TIME);
                return Err(vm_err(&e));
            }
        };
        let mut vm = BuilderVm {
            name,
            image_dir,
            client,
            next: 1,
            layers: HashMap::new(),
            work: work.to_owned(),
        };
        vm.client
            .catch_signals(&[])
            .map_err(|e| BuildError::Builder(format!("the build VM: {e}")))?;
        Ok(vm)
    }

    fn fresh_layer(&mut self) -> u32 {
        let id = self.next;
        self.next += 1;
        id
    }

    /// Runs one op; its stdout goes into `stdout`, its stderr to ours.
    fn op(
        &mut self,
        op: BuildOp,
        input: Option<&File>,
        stdout: &mut dyn Write,
    ) -> Result<i32, BuildError> {
        let end = self
            .client
            .session(
                Body::Build(op),
                input.map(|f| f.as_fd()),
                stdout,
                &mut std::io::stderr(),
            )
            .map_err(|e| BuildError::Builder(format!("the build VM: {e}")))?;
        match end {
            SessionEnd::Exited(code) => Ok(code),
            SessionEnd::Interrupted(sig) => Err(BuildError::Builder(format!(
                "interrupted (signal {sig}); the build VM is shut down"
            ))),
        }
    }

    /// Sends a layer's tar; returns its number in the VM.
    fn put_layer(&mut self, diff_id: &str, tar: &[u8]) -> Result<u32, BuildError> {
        let path = self.work.join("layer.tar");
        let err = |e: std::io::Error| BuildError::Builder(format!("{}: {e}", path.display()));
        std::fs::write(&path, tar).map_err(err)?;
        let file = File::open(&path).map_err(err)?;
        let id = self.fresh_layer();
        let code = self.op(
            BuildOp::PutLayer { layer: id },
            Some(&file),
            &mut std::io::sink(),
        )?;
        let _ = std::fs::remove_file(&path);
        if code != 0 {
            return Err(BuildError::Builder(format!(
                "the build VM could not unpack layer {diff_id} (status {code}; see the message above)"
            )));
        }
        self.layers.insert(diff_id.to_owned(), id);
        Ok(id)
    }

    /// Brings a layer back as an OCI layer tar.
    fn get_layer(&mut self, layer: u32, epoch: i64) -> Result<Vec<u8>, BuildError> {
        let mut tar = Vec::new();
        let code = self.op(BuildOp::GetLayer { layer, epoch }, None, &mut tar)?;
        if code != 0 {
            return Err(BuildError::Builder(format!(
                "the build VM could not pack a step's layer (status {code}; see the message above)"
            )));
        }
        Ok(tar)
    }

    fn stop(self) {
        if let Err(e) = hafen_qemu::client::vm::shut_down(&self.name, VM_STOP_TIME) {
            eprintln!("hafen: stopping the build VM {}: {e}", self.name);
        }
        let _ = std::fs::remove_dir_all(&self.image_dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_tar_is_recognised() {
        assert!(tar_is_empty(&[0u8; 1024]));
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(1);
        h.set_mode(0o644);
        b.append_data(&mut h, "a", &b"x"[..]).expect("append");
        assert!(!tar_is_empty(&b.into_inner().expect("tar")));
    }

    #[test]
    fn the_config_carries_every_setting() {
        let mut s = Settings {
            user: "app".into(),
            workdir: "/srv".into(),
            entrypoint: Some(vec!["/bin/app".into()]),
            cmd: Some(vec!["serve".into()]),
            stop_signal: Some("SIGQUIT".into()),
            ..Settings::default()
        };
        s.env.push(("A".into(), "1".into()));
        s.exposed_ports.insert("80/tcp".into());
        s.volumes.insert("/data".into());
        s.labels.insert("k".into(), "v".into());
        let layers = vec![Layer {
            descriptor: Descriptor {
                media_type: media::LAYER_GZIP.into(),
                digest: "sha256:00".into(),
                size: 1,
                platform: None,
                annotations: BTreeMap::new(),
            },
            diff_id: "sha256:11".into(),
        }];
        let c = image_config(&s, &layers, &[history(0, "RUN x", false)], 0);
        assert_eq!(c["config"]["User"], "app");
        assert_eq!(c["config"]["WorkingDir"], "/srv");
        assert_eq!(c["config"]["Env"], json!(["A=1"]));
        assert_eq!(c["config"]["Entrypoint"], json!(["/bin/app"]));
        assert_eq!(c["config"]["Cmd"], json!(["serve"]));
        assert_eq!(c["config"]["ExposedPorts"], json!({"80/tcp": {}}));
        assert_eq!(c["config"]["Volumes"], json!({"/data": {}}));
        assert_eq!(c["config"]["Labels"], json!({"k": "v"}));
        assert_eq!(c["config"]["StopSignal"], "SIGQUIT");
        assert_eq!(c["rootfs"]["diff_ids"], json!(["sha256:11"]));
        assert_eq!(c["created"], "1970-01-01T00:00:00Z");
        assert_eq!(c["history"][0]["created_by"], "RUN x");
    }
}
