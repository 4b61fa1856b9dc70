//! Logical lines to typed instructions and stages.

use std::collections::BTreeMap;

use super::instructions::{
    ArgDecl, Check, Command, Copy, CopyFrom, From, Healthcheck, Heredoc, Instruction, KeyValue,
    Kind, MountSpec, Network, Run, Source, Span, Stage, Word,
};
use super::lexer::{Lexer, Logical};
use super::shell::{self, Mode, NoVars};
use super::{Dockerfile, Error, ErrorKind, Errors, GlobalArg, Warning};

/// Every instruction Docker knows, for "did you mean".
const KEYWORDS: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// Parses a Dockerfile's text; `file` names it in errors and warnings.
///
/// Every instruction is checked, so the errors of all bad lines come back
/// together.
pub fn parse(text: &str, file: &str) -> Result<Dockerfile, Errors> {
    let fail = |line, kind| Errors(vec![Error::new(file, line, kind)]);
    let (mut lexer, directives) = Lexer::new(text).map_err(|(line, kind)| fail(line, kind))?;
    let escape = lexer.escape();
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut parsed: Vec<Parsed> = Vec::new();
    while let Some(logical) = lexer.next_logical() {
        if logical.empty_continuation {
            warnings.push(Warning {
                file: file.to_owned(),
                line: logical.end,
                rule: "NoEmptyContinuation",
                message: "Empty continuation line: remove it (empty continuation lines will become errors in a future release)".into(),
            });
        }
        let start = logical.start;
        match parse_line(&mut lexer, logical, escape) {
            Ok(p) => parsed.push(p),
            Err(kind) => errors.push(Error::new(file, start, kind)),
        }
    }
    if parsed.is_empty() && errors.is_empty() {
        return Err(fail(lexer.line_count().max(1), ErrorKind::Empty));
    }

    let mut df = Dockerfile {
        file: file.to_owned(),
        directives,
        escape,
        global_args: Vec::new(),
        stages: Vec::new(),
        warnings,
    };
    casing_warnings(&mut df, &parsed);
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    for p in parsed {
        match p.body {
            Body::From(from, name) => {
                if let Some(n) = &name {
                    if let Some(&first) = names.get(n) {
                        errors.push(Error::new(
                            file,
                            p.span.start,
                            ErrorKind::DuplicateStage {
                                name: n.clone(),
                                first,
                            },
                        ));
                    } else {
                        names.insert(n.clone(), p.span.start);
                    }
                }
                df.stages.push(Stage {
                    index: df.stages.len(),
                    name,
                    from: *from,
                    span: p.span,
                    text: p.text,
                    instructions: Vec::new(),
                });
            }
            Body::Instruction(kind) => {
                let Some(stage) = df.stages.last_mut() else {
                    match kind {
                        Kind::Arg(decls) => {
                            df.global_args
                                .extend(decls.into_iter().map(|decl| GlobalArg {
                                    decl,
                                    line: p.span.start,
                                }))
                        }
                        _ => errors.push(Error::new(
                            file,
                            p.span.start,
                            ErrorKind::BeforeFrom {
                                instruction: p.keyword.to_ascii_uppercase(),
                            },
                        )),
                    }
                    continue;
                };
                stage.instructions.push(Instruction {
                    span: p.span,
                    keyword: p.keyword,
                    text: p.text,
                    kind,
                });
            }
        }
    }
    if df.stages.is_empty() && errors.is_empty() {
        let line = df.global_args.last().map_or(1, |a| a.line);
        errors.push(Error::new(
            file,
            line,
            ErrorKind::Syntax {
                instruction: "FROM".into(),
                message: "the Dockerfile has no FROM: every build starts from an image, a stage or scratch".into(),
            },
        ));
    }
    resolve_stage_references(&mut df, &mut errors);
    stage_warnings(&mut df);
    if errors.is_empty() {
        Ok(df)
    } else {
        errors.sort_by_key(|e| e.line);
        Err(Errors(errors))
    }
}

/// One parsed line before it is put into a stage.
struct Parsed {
    span: Span,
    keyword: String,
    text: String,
    body: Body,
}

enum Body {
    From(Box<From>, Option<String>),
    Instruction(Kind),
}

fn syntax(instruction: &str, message: impl Into<String>) -> ErrorKind {
    ErrorKind::Syntax {
        instruction: instruction.to_ascii_uppercase(),
        message: message.into(),
    }
}

fn unsupported(what: impl Into<String>, hint: impl Into<String>) -> ErrorKind {
    ErrorKind::Unsupported {
        what: what.into(),
        hint: hint.into(),
    }
}

fn is_blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\u{b}' | '\u{c}' | '\r')
}

/// Splits at runs of blanks (Docker's whitespace-delimited arguments:
/// quotes mean nothing here).
fn blank_split(text: &str) -> Vec<String> {
    text.split(is_blank)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Leading `--flag[=value]` words (quotes and escapes processed), then the
/// rest. A bare `--` ends the flags.
fn split_flags(rest: &str, escape: char) -> (Vec<String>, String) {
    let chars: Vec<char> = rest.chars().collect();
    let mut flags = Vec::new();
    let mut i = 0;
    loop {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        if !(chars.get(i) == Some(&'-') && chars.get(i + 1) == Some(&'-')) {
            return (
                flags,
                chars[i..].iter().collect::<String>().trim().to_owned(),
            );
        }
        let mut word = String::new();
        let mut quote: Option<char> = None;
        while let Some(&c) = chars.get(i) {
            match quote {
                None if c.is_whitespace() => break,
                None if c == '\'' || c == '"' => quote = Some(c),
                Some(q) if c == q => quote = None,
                _ if c == escape && quote != Some('\'') => {
                    if let Some(&n) = chars.get(i + 1) {
                        word.push(n);
                        i += 1;
                    }
                }
                _ => word.push(c),
            }
            i += 1;
        }
        if word == "--" {
            return (
                flags,
                chars[i..].iter().collect::<String>().trim().to_owned(),
            );
        }
        flags.push(word);
    }
}

/// Docker's words for ENV, LABEL and ARG: split at unquoted whitespace,
/// quotes and escapes kept (substitution removes them later).
fn words(text: &str, escape: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            None if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut word));
                    in_word = false;
                }
                continue;
            }
            None => {
                in_word = true;
                if c == '\'' || c == '"' {
                    quote = Some(c);
                } else if c == escape {
                    match chars.next() {
                        Some(n) => {
                            word.push(c);
                            word.push(n);
                        }
                        // An escape at the very end is dropped.
                        None => continue,
                    }
                    continue;
                }
                word.push(c);
            }
            Some(q) => {
                if c == q {
                    quote = None;
                } else if c == escape && q != '\'' {
                    match chars.next() {
                        Some(n) => {
                            word.push(c);
                            word.push(n);
                        }
                        None => quote = None,
                    }
                    continue;
                }
                word.push(c);
            }
        }
    }
    if in_word {
        out.push(word);
    }
    out
}

/// A JSON array of strings (exec form), `None` when `text` is not JSON
/// (shell form), an error when it is JSON but not all strings.
fn json_array(text: &str, instruction: &str) -> Result<Option<Vec<String>>, ErrorKind> {
    let text = text.trim_start();
    if !text.starts_with('[') {
        return Ok(None);
    }
    let Ok(serde_json::Value::Array(items)) = serde_json::from_str::<serde_json::Value>(text)
    else {
        return Ok(None);
    };
    items
        .into_iter()
        .map(|v| match v {
            serde_json::Value::String(s) => Ok(s),
            _ => Err(syntax(
                instruction,
                "a JSON array must hold strings only (write [\"executable\", \"arg\"])",
            )),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Flags of one instruction, checked against the ones it takes.
struct Flags {
    instruction: String,
    given: Vec<String>,
    values: BTreeMap<&'static str, Vec<String>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FlagType {
    Bool,
    String,
    Strings,
}

impl Flags {
    fn parse(
        instruction: &str,
        given: Vec<String>,
        allowed: &[(&'static str, FlagType)],
    ) -> Result<Flags, ErrorKind> {
        let mut flags = Flags {
            instruction: instruction.to_ascii_uppercase(),
            given,
            values: BTreeMap::new(),
        };
        for arg in &flags.given {
            let body = arg.strip_prefix("--").unwrap_or(arg);
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (body, None),
            };
            let Some(&(key, ty)) = allowed.iter().find(|(n, _)| *n == name) else {
                let hint = if allowed.is_empty() {
                    format!("{} takes no flags", flags.instruction)
                } else {
                    let names: Vec<String> =
                        allowed.iter().map(|(n, _)| format!("--{n}")).collect();
                    match super::suggest(name, allowed.iter().map(|(n, _)| *n)) {
                        Some(s) => format!("did you mean --{s}? it takes {}", names.join(", ")),
                        None => format!("it takes {}", names.join(", ")),
                    }
                };
                return Err(syntax(
                    instruction,
                    format!("unknown flag --{name} ({hint})"),
                ));
            };
            let slot = flags.values.entry(key).or_default();
            if !slot.is_empty() && ty != FlagType::Strings {
                return Err(syntax(instruction, format!("--{name} is given twice")));
            }
            match (ty, value) {
                (FlagType::Bool, None) => slot.push("true".into()),
                (FlagType::Bool, Some(v)) => match v.to_ascii_lowercase().as_str() {
                    "true" => slot.push("true".into()),
                    "false" => slot.push("false".into()),
                    "" => {
                        return Err(syntax(
                            instruction,
                            format!("--{name}= needs a value (true or false)"),
                        ))
                    }
                    _ => {
                        return Err(syntax(
                            instruction,
                            format!("--{name} takes true or false, not {v:?}"),
                        ))
                    }
                },
                (_, None) => {
                    return Err(syntax(
                        instruction,
                        format!("--{name} needs a value (--{name}=VALUE)"),
                    ))
                }
                (_, Some(v)) => slot.push(v.to_owned()),
            }
        }
        Ok(flags)
    }

    fn string(&self, name: &str) -> Option<String> {
        self.values.get(name).and_then(|v| v.last().cloned())
    }

    fn strings(&self, name: &str) -> Vec<String> {
        self.values.get(name).cloned().unwrap_or_default()
    }

    fn bool(&self, name: &str) -> Option<bool> {
        self.string(name).map(|v| v == "true")
    }

    fn none_given(&self) -> Result<(), ErrorKind> {
        match self.given.first() {
            None => Ok(()),
            Some(f) => Err(syntax(
                &self.instruction,
                format!("unknown flag {f} ({} takes no flags)", self.instruction),
            )),
        }
    }
}

/// A heredoc delimiter word: `[n]<<[-]WORD`.
pub(super) fn heredoc_word(word: &str) -> Option<(u32, bool, String, bool)> {
    let digits = word.chars().take_while(char::is_ascii_digit).count();
    let rest = word[digits..].strip_prefix("<<")?;
    let (chomp, rest) = match rest.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let rest = rest.trim_start();
    if rest.is_empty() || rest.contains('<') {
        return None;
    }
    let fd = if digits == 0 {
        0
    } else {
        word[..digits].parse().ok()?
    };
    let plain = Mode {
        skip_unset: true,
        ..Mode::new('\\')
    };
    let unquoted = shell::process(rest, &NoVars, plain).ok()?;
    if unquoted.words.len() != 1 {
        return None;
    }
    let raw = shell::process(
        rest,
        &NoVars,
        Mode {
            raw_quotes: true,
            ..plain
        },
    )
    .ok()?;
    let quotes = |s: &str| s.chars().filter(|c| *c == '\'' || *c == '"').count();
    let name = unquoted.words[0].clone();
    let expand = raw.words.len() == 1 && quotes(&name) == quotes(&raw.words[0]);
    Some((fd, chomp, name, expand))
}

/// The heredocs a line opens, in order.
fn heredocs_in(line: &str) -> Vec<(u32, bool, String, bool)> {
    let mode = Mode {
        raw_quotes: true,
        raw_escapes: true,
        skip_unset: true,
        ..Mode::new('\\')
    };
    let Ok(p) = shell::process(line, &NoVars, mode) else {
        return Vec::new();
    };
    p.words.iter().filter_map(|w| heredoc_word(w)).collect()
}

/// Reads the bodies of the heredocs `line` opens.
fn read_heredocs(
    lexer: &mut Lexer<'_>,
    line: &str,
    span: &mut Span,
) -> Result<Vec<Heredoc>, ErrorKind> {
    let mut docs = Vec::new();
    if !line.contains("<<") {
        return Ok(docs);
    }
    for (fd, chomp, name, expand) in heredocs_in(line) {
        let Some((content, end)) = lexer.heredoc(&name, chomp) else {
            return Err(ErrorKind::UnterminatedHeredoc { name });
        };
        span.end = end;
        docs.push(Heredoc {
            name,
            content,
            chomp,
            expand,
            fd,
        });
    }
    Ok(docs)
}

fn parse_line(lexer: &mut Lexer<'_>, logical: Logical, escape: char) -> Result<Parsed, ErrorKind> {
    let text = logical.text.trim();
    let (keyword, rest) = match text.find(is_blank) {
        Some(i) => (&text[..i], text[i..].trim_start_matches(is_blank)),
        None => (text, ""),
    };
    let lower = keyword.to_ascii_lowercase();
    let (flags, args) = split_flags(rest, escape);
    let mut span = Span {
        start: logical.start,
        end: logical.end,
    };
    let keyword_owned = keyword.to_owned();
    let upper = keyword.to_ascii_uppercase();

    // RUN, COPY and ADD may open heredocs; read their bodies first, so an
    // error in the instruction does not turn its body into instructions.
    let heredocs = match lower.as_str() {
        "run" | "copy" | "add" if !matches!(json_array(&args, &lower), Ok(Some(_))) => {
            read_heredocs(lexer, &logical.text, &mut span)?
        }
        _ => Vec::new(),
    };

    let body = match lower.as_str() {
        "from" => {
            let (from, name) = parse_from(keyword, flags, &args)?;
            Body::From(Box::new(from), name)
        }
        "run" => Body::Instruction(Kind::Run(parse_run(flags, &args, heredocs)?)),
        "copy" | "add" => Body::Instruction(Kind::Copy(parse_copy(
            lower == "add",
            flags,
            &args,
            heredocs,
        )?)),
        "cmd" | "entrypoint" => {
            Flags::parse(&upper, flags, &[])?.none_given()?;
            let command = match json_array(&args, &upper)? {
                Some(argv) => Command::Exec(argv),
                None if args.is_empty() => {
                    return Err(syntax(
                        &upper,
                        format!("{upper} needs a command: {upper} [\"executable\", \"arg\"] (or {upper} [] for none)"),
                    ))
                }
                None => Command::Shell(args.clone()),
            };
            Body::Instruction(if lower == "cmd" {
                Kind::Cmd(command)
            } else {
                Kind::Entrypoint(command)
            })
        }
        "shell" => {
            Flags::parse(&upper, flags, &[])?.none_given()?;
            match json_array(&args, &upper)? {
                Some(argv) if !argv.is_empty() => Body::Instruction(Kind::Shell(argv)),
                Some(_) => return Err(syntax(&upper, "SHELL needs at least the executable: SHELL [\"/bin/sh\", \"-c\"]")),
                None => return Err(syntax(&upper, format!("SHELL must be a JSON array of strings, such as SHELL [\"/bin/bash\", \"-c\"], not {args:?}"))),
            }
        }
        "env" | "label" => {
            Flags::parse(&upper, flags, &[])?.none_given()?;
            let pairs = name_values(&upper, &args, escape)?;
            Body::Instruction(if lower == "env" {
                Kind::Env(pairs)
            } else {
                Kind::Label(pairs)
            })
        }
        "arg" => {
            Flags::parse(&upper, flags, &[])?.none_given()?;
            Body::Instruction(Kind::Arg(parse_arg(&args, escape)?))
        }
        "expose" => {
            Flags::parse(&upper, flags, &[])?.none_given()?;
            let ports = blank_split(&args);
            if ports.is_empty() {
                return Err(syntax(&upper, "EXPOSE needs at least one port (EXPOSE 80 443/tcp 53/udp)"));
            }
            Body::Instruction(Kind::Expose(ports.into_iter().map(Word).collect()))
        }
        "volume" => {
            Flags::parse(&upper, flags, &[])?.none_given()?;
            let paths = match json_array(&args, &upper)? {
                Some(p) => p,
                None => blank_split(&args),
            };
            if paths.is_empty() {
                return Err(syntax(&upper, "VOLUME needs at least one path (VOLUME /data or VOLUME [\"/data\"])"));
            }
            if paths.iter().any(|p| p.trim().is_empty()) {
                return Err(syntax(&upper, "a VOLUME path cannot be empty"));
            }
            Body::Instruction(Kind::Volume(
                paths.into_iter().map(|p| Word(p.trim().to_owned())).collect(),
            ))
        }
        "workdir" | "user" | "stopsignal" | "maintainer" => {
            Flags::parse(&upper, flags, &[])?.none_given()?;
            if args.is_empty() {
                let example = match lower.as_str() {
                    "workdir" => "WORKDIR /app",
                    "user" => "USER 1000:1000",
                    "stopsignal" => "STOPSIGNAL SIGTERM",
                    _ => "LABEL org.opencontainers.image.authors=\"you@example.com\"",
                };
                return Err(syntax(&upper, format!("{upper} needs exactly one argument ({example})")));
            }
            Body::Instruction(match lower.as_str() {
                "workdir" => Kind::Workdir(Word(args.clone())),
                "user" => Kind::User(Word(args.clone())),
                "stopsignal" => Kind::StopSignal(Word(args.clone())),
                _ => Kind::Maintainer(args.clone()),
            })
        }
        "healthcheck" => Body::Instruction(Kind::Healthcheck(parse_healthcheck(flags, &args)?)),
        "onbuild" => {
            return Err(unsupported(
                "ONBUILD",
                "Hafen neither records nor runs build triggers; put the instruction in the Dockerfile that builds on this image",
            ))
        }
        _ => {
            return Err(ErrorKind::UnknownInstruction {
                name: keyword.to_owned(),
                suggestion: super::suggest(keyword, KEYWORDS.iter().copied()),
            })
        }
    };
    Ok(Parsed {
        span,
        keyword: keyword_owned,
        text: text.to_owned(),
        body,
    })
}

fn parse_from(
    keyword: &str,
    flags: Vec<String>,
    args: &str,
) -> Result<(From, Option<String>), ErrorKind> {
    let flags = Flags::parse("FROM", flags, &[("platform", FlagType::String)])?;
    let parts = blank_split(args);
    let (image, as_keyword, name) = match parts.as_slice() {
        [image] => (image.clone(), None, None),
        [image, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => {
            (image.clone(), Some(as_kw.clone()), Some(name.clone()))
        }
        [] => {
            return Err(syntax(
                "FROM",
                "FROM needs an image: FROM busybox, FROM scratch or FROM <earlier stage>",
            ))
        }
        _ => {
            return Err(syntax(
                "FROM",
                format!("FROM takes an image and optionally AS <name>, not {args:?}"),
            ))
        }
    };
    let lowered = name.as_ref().map(|n| n.to_ascii_lowercase());
    if let Some(n) = &lowered {
        let mut chars = n.chars();
        let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
        if !valid {
            return Err(syntax(
                "FROM",
                format!(
                    "invalid stage name {:?}: a stage name starts with a letter and holds letters, digits, '-', '_' and '.'",
                    name.as_deref().unwrap_or_default()
                ),
            ));
        }
    }
    Ok((
        From {
            image: Word(image),
            platform: flags.string("platform").map(Word),
            keyword: keyword.to_owned(),
            as_keyword,
            name_as_written: name,
        },
        lowered,
    ))
}

fn parse_run(flags: Vec<String>, args: &str, heredocs: Vec<Heredoc>) -> Result<Run, ErrorKind> {
    if flags
        .iter()
        .any(|f| f == "--device" || f.starts_with("--device="))
    {
        return Err(unsupported(
            "RUN --device",
            "build steps get no host devices",
        ));
    }
    let flags = Flags::parse(
        "RUN",
        flags,
        &[
            ("mount", FlagType::Strings),
            ("network", FlagType::String),
            ("security", FlagType::String),
        ],
    )?;
    let network = match flags.string("network").as_deref() {
        None | Some("default") => Network::Default,
        Some("none") => Network::None,
        Some("host") => Network::Host,
        Some(other) => {
            return Err(syntax(
                "RUN",
                format!("--network={other} is not a network mode: use default, none or host"),
            ))
        }
    };
    match flags.string("security").as_deref() {
        None | Some("sandbox") => {}
        Some("insecure") => {
            return Err(unsupported(
                "RUN --security=insecure",
                "build steps run confined; drop the flag",
            ))
        }
        Some(other) => {
            return Err(syntax(
                "RUN",
                format!("--security={other} is not a security mode: use sandbox or insecure"),
            ))
        }
    }
    let mut mounts = Vec::new();
    for text in flags.strings("mount") {
        mounts.push(MountSpec {
            from: mount_from(&text)?,
            text: Word(text),
        });
    }
    let command = match json_array(args, "RUN")? {
        Some(argv) if argv.is_empty() => {
            return Err(syntax("RUN", "RUN [] runs nothing: give a command"))
        }
        Some(argv) => Command::Exec(argv),
        None if args.is_empty() => {
            return Err(syntax(
                "RUN",
                "RUN needs a command (RUN make, RUN [\"make\"], RUN <<EOF ...)",
            ))
        }
        None => Command::Shell(args.to_owned()),
    };
    Ok(Run {
        command,
        heredocs,
        mounts,
        network,
    })
}

/// The `from=` of a `--mount`, which may not use variables (Docker's rule:
/// stages are resolved before anything is expanded). Resolved later.
fn mount_from(text: &str) -> Result<Option<CopyFrom>, ErrorKind> {
    for field in text.split(',') {
        let Some((key, value)) = field.split_once('=') else {
            continue;
        };
        if key.trim().eq_ignore_ascii_case("from") {
            let value = value.trim().trim_matches('"');
            if value.contains('$') {
                return Err(syntax(
                    "RUN",
                    "--mount from= cannot use variables: add a stage (FROM image:$VERSION AS name) and mount from=name",
                ));
            }
            return Ok(Some(CopyFrom::Image(value.to_owned())));
        }
    }
    Ok(None)
}

fn parse_copy(
    add: bool,
    flags: Vec<String>,
    args: &str,
    heredocs: Vec<Heredoc>,
) -> Result<Copy, ErrorKind> {
    let name = if add { "ADD" } else { "COPY" };
    let mut allowed = vec![
        ("chown", FlagType::String),
        ("chmod", FlagType::String),
        ("link", FlagType::Bool),
        ("exclude", FlagType::Strings),
    ];
    if add {
        allowed.extend([
            ("keep-git-dir", FlagType::Bool),
            ("checksum", FlagType::String),
            ("unpack", FlagType::Bool),
        ]);
    } else {
        allowed.extend([("from", FlagType::String), ("parents", FlagType::Bool)]);
    }
    let flags = Flags::parse(name, flags, &allowed)?;
    if flags.bool("parents") == Some(true) {
        return Err(unsupported(
            "COPY --parents",
            "copy each directory with its own COPY (COPY x/a.txt /parents/x/)",
        ));
    }
    if flags.string("keep-git-dir").is_some() || flags.string("checksum").is_some() {
        return Err(unsupported(
            "ADD --keep-git-dir and --checksum",
            "they apply to Git and URL sources, which Hafen does not fetch",
        ));
    }
    let (items, json) = match json_array(args, name)? {
        Some(items) => (items, true),
        None => (blank_split(args), false),
    };
    if items.len() < 2 {
        return Err(syntax(
            name,
            format!("{name} needs a source and a destination ({name} <src>... <dest>)"),
        ));
    }
    let (dest, srcs) = items.split_last().unwrap_or((&items[0], &[]));
    if !json && heredoc_word(dest).is_some() {
        return Err(syntax(
            name,
            format!("{name} cannot take a here-document as its destination"),
        ));
    }
    let mut sources = Vec::new();
    for src in srcs {
        match (!json).then(|| heredoc_word(src)).flatten() {
            Some((_, _, doc_name, _)) => {
                let doc = heredocs
                    .iter()
                    .find(|h| h.name == doc_name)
                    .cloned()
                    .ok_or_else(|| {
                        syntax(name, format!("here-document {doc_name:?} has no body"))
                    })?;
                sources.push(Source::Heredoc(doc));
            }
            None => sources.push(Source::Path(Word(src.clone()))),
        }
    }
    let from = match flags.string("from") {
        None => CopyFrom::Context,
        Some(f) if f.contains('$') => {
            return Err(syntax(
                name,
                "--from cannot use variables (Docker's rule too): add a stage FROM image:$VERSION AS name and copy --from=name",
            ))
        }
        Some(f) if f.is_empty() => {
            return Err(syntax(name, "--from needs a stage name, a stage index or an image"))
        }
        // Resolved against the stages once they are all known.
        Some(f) => CopyFrom::Image(f),
    };
    Ok(Copy {
        add,
        from,
        sources,
        dest: Word(dest.clone()),
        chown: flags.string("chown").map(Word),
        chmod: flags.string("chmod").map(Word),
        link: flags.bool("link").unwrap_or(false),
        excludes: flags.strings("exclude").into_iter().map(Word).collect(),
        unpack: flags.bool("unpack"),
        json,
    })
}

/// ENV and LABEL: `k=v k2=v2`, or the legacy `k v`.
fn name_values(instruction: &str, args: &str, escape: char) -> Result<Vec<KeyValue>, ErrorKind> {
    let ws = words(args, escape);
    let Some(first) = ws.first() else {
        return Err(syntax(
            instruction,
            format!("{instruction} needs at least one KEY=VALUE"),
        ));
    };
    if !first.contains('=') {
        let mut parts = args.splitn(2, is_blank);
        let key = parts.next().unwrap_or_default();
        let value = parts
            .next()
            .map(|v| v.trim_start_matches(is_blank))
            .unwrap_or_default();
        if value.is_empty() {
            return Err(syntax(
                instruction,
                format!("{instruction} {key} has no value: write {instruction} {key}=VALUE"),
            ));
        }
        return Ok(vec![KeyValue {
            key: Word(key.to_owned()),
            value: Word(value.to_owned()),
            legacy: true,
        }]);
    }
    ws.into_iter()
        .map(|w| match w.split_once('=') {
            Some(("", _)) => Err(syntax(instruction, format!("{w:?} has no name before ="))),
            Some((k, v)) => Ok(KeyValue {
                key: Word(k.to_owned()),
                value: Word(v.to_owned()),
                legacy: false,
            }),
            None => Err(syntax(
                instruction,
                format!("{w:?} is not KEY=VALUE (every item after the first KEY=VALUE must be one; quote values with spaces)"),
            )),
        })
        .collect()
}

fn parse_arg(args: &str, escape: char) -> Result<Vec<ArgDecl>, ErrorKind> {
    let ws = words(args, escape);
    if ws.is_empty() {
        return Err(syntax(
            "ARG",
            "ARG needs a name (ARG NAME or ARG NAME=default)",
        ));
    }
    ws.into_iter()
        .map(|w| match w.split_once('=') {
            Some(("", _)) => Err(syntax("ARG", format!("{w:?} has no name before ="))),
            Some((k, v)) => Ok(ArgDecl {
                name: k.to_owned(),
                default: Some(Word(v.to_owned())),
            }),
            None => Ok(ArgDecl {
                name: w,
                default: None,
            }),
        })
        .collect()
}

fn parse_healthcheck(flags: Vec<String>, args: &str) -> Result<Healthcheck, ErrorKind> {
    let (kind, rest) = match args.find(char::is_whitespace) {
        Some(i) => (&args[..i], args[i..].trim_start()),
        None => (args, ""),
    };
    match kind.to_ascii_uppercase().as_str() {
        "" => Err(syntax(
            "HEALTHCHECK",
            "HEALTHCHECK needs CMD <command> or NONE",
        )),
        "NONE" => {
            if !rest.is_empty() || !flags.is_empty() {
                return Err(syntax(
                    "HEALTHCHECK",
                    "HEALTHCHECK NONE takes no arguments or flags",
                ));
            }
            Ok(Healthcheck::None)
        }
        "CMD" => {
            let flags = Flags::parse(
                "HEALTHCHECK",
                flags,
                &[
                    ("interval", FlagType::String),
                    ("timeout", FlagType::String),
                    ("start-period", FlagType::String),
                    ("start-interval", FlagType::String),
                    ("retries", FlagType::String),
                ],
            )?;
            let command = match json_array(rest, "HEALTHCHECK")? {
                Some(argv) if argv.is_empty() => {
                    return Err(syntax("HEALTHCHECK", "HEALTHCHECK CMD [] has no command"))
                }
                Some(argv) => Command::Exec(argv),
                None if rest.is_empty() => {
                    return Err(syntax("HEALTHCHECK", "HEALTHCHECK CMD needs a command"))
                }
                None => Command::Shell(rest.to_owned()),
            };
            let duration = |name: &str| -> Result<u64, ErrorKind> {
                let Some(text) = flags.string(name) else {
                    return Ok(0);
                };
                let ns = parse_duration(&text).map_err(|why| {
                    syntax(
                        "HEALTHCHECK",
                        format!(
                            "--{name}={text}: {why} (write a duration such as 30s, 1m30s or 500ms)"
                        ),
                    )
                })?;
                if ns != 0 && ns < 1_000_000 {
                    return Err(syntax(
                        "HEALTHCHECK",
                        format!("--{name}={text} is shorter than 1ms"),
                    ));
                }
                Ok(ns)
            };
            let retries = match flags.string("retries") {
                None => 0,
                Some(t) => t.parse::<u32>().map_err(|_| {
                    syntax(
                        "HEALTHCHECK",
                        format!("--retries={t} is not a count (a whole number, 0 or more)"),
                    )
                })?,
            };
            Ok(Healthcheck::Check(Check {
                command,
                interval_ns: duration("interval")?,
                timeout_ns: duration("timeout")?,
                start_period_ns: duration("start-period")?,
                start_interval_ns: duration("start-interval")?,
                retries,
            }))
        }
        other => Err(syntax(
            "HEALTHCHECK",
            format!("unknown type {other:?}: use HEALTHCHECK CMD <command> or HEALTHCHECK NONE"),
        )),
    }
}

/// Go's `time.ParseDuration`, for what Docker accepts in HEALTHCHECK:
/// `1h2m3.5s`, `300ms`, `0`; negative durations are refused.
pub fn parse_duration(text: &str) -> Result<u64, &'static str> {
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest.starts_with('-') {
        return Err("a duration cannot be negative");
    }
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err("empty duration");
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num = &rest[..num_len];
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err("not a duration");
        }
        let value: f64 = num.parse().map_err(|_| "not a duration")?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err("a duration needs a unit (ns, us, ms, s, m, h)"),
            _ => return Err("unknown unit (use ns, us, ms, s, m or h)"),
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    if total > u64::MAX as f64 / 2.0 {
        return Err("duration too long");
    }
    Ok(total.round() as u64)
}

/// Resolves COPY `--from` and RUN `--mount from=` against the stages: an
/// earlier stage by name or index, else an image. A reference to the stage
/// itself or a later one is an error (Docker's rule, and what makes stage
/// cycles impossible).
fn resolve_stage_references(df: &mut Dockerfile, errors: &mut Vec<Error>) {
    let names: Vec<Option<String>> = df.stages.iter().map(|s| s.name.clone()).collect();
    for (index, stage) in df.stages.iter_mut().enumerate() {
        for ins in &mut stage.instructions {
            let keyword = ins.keyword.to_ascii_uppercase();
            let mut refs: Vec<(&mut CopyFrom, String)> = Vec::new();
            match &mut ins.kind {
                Kind::Copy(c) => refs.push((&mut c.from, "--from".into())),
                Kind::Run(r) => {
                    for m in &mut r.mounts {
                        if let Some(f) = &mut m.from {
                            refs.push((f, "--mount from".into()));
                        }
                    }
                }
                _ => {}
            }
            for (from, flag) in refs {
                let CopyFrom::Image(text) = from else {
                    continue;
                };
                let lower = text.to_ascii_lowercase();
                let by_index = text.parse::<usize>().ok();
                let by_name = names
                    .iter()
                    .position(|n| n.as_deref() == Some(lower.as_str()));
                let target = by_index.or(by_name);
                let reference = format!("{flag}={text}");
                match target {
                    Some(t) if t < index => *from = CopyFrom::Stage(t),
                    Some(t) if t == index => errors.push(Error::new(
                        &df.file,
                        ins.span.start,
                        ErrorKind::StageReference {
                            instruction: keyword.clone(),
                            reference,
                            message: "a stage cannot copy from itself".into(),
                        },
                    )),
                    Some(t) if by_index.is_some() && t >= names.len() => errors.push(Error::new(
                        &df.file,
                        ins.span.start,
                        ErrorKind::StageReference {
                            instruction: keyword.clone(),
                            reference,
                            message: format!(
                                "there is no stage {t} (stages are numbered from 0; this Dockerfile has {})",
                                names.len()
                            ),
                        },
                    )),
                    Some(t) => errors.push(Error::new(
                        &df.file,
                        ins.span.start,
                        ErrorKind::StageReference {
                            instruction: keyword.clone(),
                            reference,
                            message: format!(
                                "stage {} is defined after this one: a stage can only use stages before it (move it up)",
                                names[t].clone().unwrap_or_else(|| t.to_string())
                            ),
                        },
                    )),
                    None => {}
                }
            }
        }
    }
}

/// Docker's ConsistentInstructionCasing, FromAsCasing and StageNameCasing.
fn casing_warnings(df: &mut Dockerfile, parsed: &[Parsed]) {
    let consistent = |k: &str| k == k.to_ascii_lowercase() || k == k.to_ascii_uppercase();
    let (mut lower, mut upper) = (0, 0);
    for p in parsed {
        if consistent(&p.keyword) {
            if p.keyword == p.keyword.to_ascii_lowercase() {
                lower += 1;
            } else {
                upper += 1;
            }
        }
    }
    let majority_lower = lower > upper;
    for p in parsed {
        let wrong = if majority_lower {
            p.keyword != p.keyword.to_ascii_lowercase()
        } else {
            p.keyword != p.keyword.to_ascii_uppercase()
        };
        if wrong {
            df.warnings.push(Warning {
                file: df.file.clone(),
                line: p.span.start,
                rule: "ConsistentInstructionCasing",
                message: format!(
                    "Command '{}' should match the case of the command majority ({})",
                    p.keyword,
                    if majority_lower {
                        "lowercase"
                    } else {
                        "uppercase"
                    }
                ),
            });
        }
        if let Body::From(from, _) = &p.body {
            if let (Some(as_kw), Some(name)) = (&from.as_keyword, &from.name_as_written) {
                let from_lower = from.keyword == from.keyword.to_ascii_lowercase();
                let from_upper = from.keyword == from.keyword.to_ascii_uppercase();
                let mismatch = (from_lower && *as_kw != as_kw.to_ascii_lowercase())
                    || (from_upper && *as_kw != as_kw.to_ascii_uppercase());
                if mismatch {
                    df.warnings.push(Warning {
                        file: df.file.clone(),
                        line: p.span.start,
                        rule: "FromAsCasing",
                        message: format!(
                            "'{as_kw}' and '{}' keywords' casing do not match",
                            from.keyword
                        ),
                    });
                }
                if *name != name.to_ascii_lowercase() {
                    df.warnings.push(Warning {
                        file: df.file.clone(),
                        line: p.span.start,
                        rule: "StageNameCasing",
                        message: format!("Stage name '{name}' should be lowercase"),
                    });
                }
            }
        }
    }
}

/// Warnings about stages and instructions that need no variables.
fn stage_warnings(df: &mut Dockerfile) {
    let mut warnings = Vec::new();
    let warn = |line, rule, message: String| Warning {
        file: df.file.clone(),
        line,
        rule,
        message,
    };
    for stage in &df.stages {
        if let Some(name) = &stage.name {
            if name == "scratch" || name == "context" {
                warnings.push(warn(
                    stage.span.start,
                    "ReservedStageName",
                    format!("Stage name should not use the same name as reserved stage {name:?}"),
                ));
            }
        }
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for ins in &stage.instructions {
            let key = match &ins.kind {
                Kind::Cmd(_) => Some("CMD"),
                Kind::Entrypoint(_) => Some("ENTRYPOINT"),
                Kind::Healthcheck(_) => Some("HEALTHCHECK"),
                _ => None,
            };
            if let Some(k) = key {
                *seen.entry(k).or_default() += 1;
            }
            match &ins.kind {
                Kind::Maintainer(_) => warnings.push(warn(
                    ins.span.start,
                    "MaintainerDeprecated",
                    "Maintainer instruction is deprecated in favor of using label (LABEL org.opencontainers.image.authors=...)".into(),
                )),
                Kind::Env(pairs) | Kind::Label(pairs) if pairs.iter().any(|p| p.legacy) => {
                    let k = ins.keyword.to_ascii_uppercase();
                    warnings.push(warn(
                        ins.span.start,
                        "LegacyKeyValueFormat",
                        format!("\"{k} key=value\" should be used instead of legacy \"{k} key value\" format"),
                    ));
                }
                _ => {}
            }
        }
        for ins in &stage.instructions {
            let key = match &ins.kind {
                Kind::Cmd(_) => "CMD",
                Kind::Entrypoint(_) => "ENTRYPOINT",
                Kind::Healthcheck(_) => "HEALTHCHECK",
                _ => continue,
            };
            if seen.get(key).copied().unwrap_or(0) > 1 {
                // Every one but the last is overridden.
                let last =
                    stage.instructions.iter().rev().find(|i| {
                        std::mem::discriminant(&i.kind) == std::mem::discriminant(&ins.kind)
                    });
                if last.map(|l| l.span) != Some(ins.span) {
                    warnings.push(warn(
                        ins.span.start,
                        "MultipleInstructionsDisallowed",
                        format!("Multiple {key} instructions should not be used in the same stage because only the last one will be used"),
                    ));
                }
            }
        }
    }
    df.warnings.extend(warnings);
    df.warnings.sort_by_key(|w| w.line);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_keep_quoted_values_together() {
        let (flags, rest) = split_flags(
            "--mount=type=cache,target=\"/a b\" --network=none echo hi",
            '\\',
        );
        assert_eq!(flags, ["--mount=type=cache,target=/a b", "--network=none"]);
        assert_eq!(rest, "echo hi");
        let (flags, rest) = split_flags("-- --not-a-flag", '\\');
        assert!(flags.is_empty());
        assert_eq!(rest, "--not-a-flag");
    }

    #[test]
    fn words_keep_quotes_for_substitution() {
        assert_eq!(
            words("MY_NAME=\"John Doe\" MY_DOG=Rex\\ The\\ Dog", '\\'),
            ["MY_NAME=\"John Doe\"", "MY_DOG=Rex\\ The\\ Dog"]
        );
        assert_eq!(words("a='x y' b", '\\'), ["a='x y'", "b"]);
    }

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("30s"), Ok(30_000_000_000));
        assert_eq!(parse_duration("1m30s"), Ok(90_000_000_000));
        assert_eq!(parse_duration("1.5h"), Ok(5_400_000_000_000));
        assert_eq!(parse_duration("500ms"), Ok(500_000_000));
        assert_eq!(parse_duration("0"), Ok(0));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1x").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn heredoc_words_are_recognised_with_quoting() {
        assert_eq!(heredoc_word("<<EOF"), Some((0, false, "EOF".into(), true)));
        assert_eq!(heredoc_word("<<-EOF"), Some((0, true, "EOF".into(), true)));
        assert_eq!(heredoc_word("3<<EOF"), Some((3, false, "EOF".into(), true)));
        assert_eq!(
            heredoc_word("<<\"EOF\""),
            Some((0, false, "EOF".into(), false))
        );
        assert_eq!(
            heredoc_word("<<'EOF'"),
            Some((0, false, "EOF".into(), false))
        );
        assert_eq!(
            heredoc_word("<<eo'f'"),
            Some((0, false, "eof".into(), false))
        );
        assert_eq!(heredoc_word("<<"), None);
        assert_eq!(heredoc_word("<<a<b"), None);
        assert_eq!(heredoc_word("x<<EOF"), None);
    }
}
