//! The Dockerfile language against the Dockerfile reference's own
//! examples (https://docs.docker.com/reference/dockerfile/): directives,
//! continuations, heredocs, ENV and substitution, COPY and ADD, the other
//! instructions; errors with their lines; `.dockerignore` and selecting
//! sources from a context; and a loop of random inputs that must never
//! panic the parser.

use std::collections::BTreeMap;
use std::path::Path;

use hafen_image_build::dockerfile::check::{self, CheckOptions};
use hafen_image_build::dockerfile::context::{ArchiveKind, Context, EntryKind};
use hafen_image_build::dockerfile::expand::{
    Applied, BuildScope, Chmod, IdOrName, InlineFile, Settings, StageState, Step,
};
use hafen_image_build::dockerfile::ignore::IgnoreRules;
use hafen_image_build::dockerfile::instructions::{Command, CopyFrom, Kind, Network};
use hafen_image_build::dockerfile::plan::{self, Base, PlanOptions};
use hafen_image_build::dockerfile::{parse, Dockerfile, ErrorKind, Errors};

fn parsed(text: &str) -> Dockerfile {
    match parse(text, "Dockerfile") {
        Ok(df) => df,
        Err(e) => panic!("{text}\n--> {e}"),
    }
}

fn errors(text: &str) -> Errors {
    match parse(text, "Dockerfile") {
        Ok(df) => panic!("expected an error for:\n{text}\ngot {df:#?}"),
        Err(e) => e,
    }
}

/// Plans `text` with `args` and applies every instruction of every stage
/// (each stage on default settings, or its parent stage's state).
fn run_with(text: &str, args: &[(&str, &str)]) -> Vec<Vec<Applied>> {
    let df = parsed(text);
    let build_args: BTreeMap<String, String> = args
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let plan = plan::plan(
        &df,
        &PlanOptions {
            build_args: build_args.clone(),
            ..PlanOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let scope = BuildScope::new(&plan, &build_args, df.escape);
    let mut states: Vec<StageState> = Vec::new();
    let mut out = Vec::new();
    for stage in &df.stages {
        let mut state = match plan.bases[stage.index] {
            Base::Stage(j) => StageState::from_parent(&states[j]),
            _ => StageState::new(Settings::default(), scope.clone()),
        };
        let mut applied = Vec::new();
        for ins in &stage.instructions {
            applied.push(
                state
                    .apply(ins)
                    .unwrap_or_else(|e| panic!("line {}: {e}", ins.span.start)),
            );
        }
        states.push(state);
        out.push(applied);
    }
    out
}

fn run(text: &str) -> Vec<Vec<Applied>> {
    run_with(text, &[])
}

/// The state of the last stage after all its instructions.
fn final_state(text: &str, args: &[(&str, &str)]) -> StageState {
    let df = parsed(text);
    let build_args: BTreeMap<String, String> = args
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let plan = plan::plan(
        &df,
        &PlanOptions {
            build_args: build_args.clone(),
            ..PlanOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let scope = BuildScope::new(&plan, &build_args, df.escape);
    let mut states: Vec<StageState> = Vec::new();
    for stage in &df.stages {
        let mut state = match plan.bases[stage.index] {
            Base::Stage(j) => StageState::from_parent(&states[j]),
            _ => StageState::new(Settings::default(), scope.clone()),
        };
        for ins in &stage.instructions {
            state.apply(ins).unwrap_or_else(|e| panic!("{e}"));
        }
        states.push(state);
    }
    states.pop().expect("a stage")
}

fn env_of(state: &StageState) -> BTreeMap<String, String> {
    state.settings.env.iter().cloned().collect()
}

fn run_argv(applied: &Applied) -> &[String] {
    match &applied.step {
        Step::Run(r) => &r.argv,
        other => panic!("not a RUN: {other:?}"),
    }
}

fn sh(script: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), script.into()]
}

// ---- Format, comments and parser directives ----

#[test]
fn comment_lines_inside_a_continuation_are_removed() {
    let a = run("FROM busybox\nRUN echo hello \\\n# comment\nworld\n");
    assert_eq!(run_argv(&a[0][0]), sh("echo hello world"));
    let b = run("FROM busybox\nRUN echo hello \\\nworld\n");
    assert_eq!(run_argv(&b[0][0]), sh("echo hello world"));
    // A `#` anywhere else is an argument.
    let c = run("FROM busybox\nRUN echo 'we are running some # of cool things'\n");
    assert_eq!(
        run_argv(&c[0][0]),
        sh("echo 'we are running some # of cool things'")
    );
}

#[test]
fn leading_whitespace_before_instructions_is_ignored() {
    let a =
        run("FROM busybox\n        # this is a comment-line\n    RUN echo hello\nRUN echo world\n");
    assert_eq!(run_argv(&a[0][0]), sh("echo hello"));
    assert_eq!(run_argv(&a[0][1]), sh("echo world"));
    let b = run("FROM busybox\nRUN echo \"\\\n     hello\\\n     world\"\n");
    assert_eq!(run_argv(&b[0][0]), sh("echo \"     hello     world\""));
}

#[test]
fn directives_from_the_reference() {
    // Treated as a comment: after an instruction.
    let df = parsed("FROM busybox\n# escape=`\nRUN echo a\\\nb\n");
    assert_eq!(df.escape, '\\');
    // Treated as a comment: after a comment that is no directive.
    let df = parsed("# About my dockerfile\n# escape=`\nFROM busybox\n");
    assert_eq!(df.escape, '\\');
    // An unknown directive is a comment, and so is a syntax after it.
    let df = parsed("# unknowndirective=value\n# syntax=value\nFROM busybox\n");
    assert_eq!(df.directives.syntax, None);
    // Whitespace is allowed around key and value, and the key's case does
    // not matter.
    let df = parsed("#\t  sYnTaX = docker/dockerfile:1 \nFROM busybox\n");
    assert_eq!(df.directives.syntax.as_deref(), Some("docker/dockerfile:1"));
    // A known directive twice is an error at its second line.
    let e = errors("# syntax=a\n# syntax=b\n\nFROM busybox\n");
    assert_eq!(e.0[0].line, 2);
    assert!(matches!(e.0[0].kind, ErrorKind::Directive(_)));
    // Line continuation in a directive: not a directive, and the next line
    // becomes an (unknown) instruction.
    let e = errors("# direc \\\ntive=value\nFROM busybox\n");
    assert_eq!(e.0[0].line, 2);
    assert!(matches!(e.0[0].kind, ErrorKind::UnknownInstruction { .. }));
    // The check directive is recorded.
    let df = parsed("# check=skip=JSONArgsRecommended;error=true\nFROM busybox\n");
    assert_eq!(
        df.directives.check.as_deref(),
        Some("skip=JSONArgsRecommended;error=true")
    );
}

#[test]
fn escape_directive_examples_from_the_reference() {
    // With the backtick, `\` is an ordinary character.
    let text = "# escape=`\n\nFROM microsoft/nanoserver\nCOPY testfile.txt c:\\\nRUN dir c:\\\n";
    let df = parsed(text);
    assert_eq!(df.escape, '`');
    let a = run(text);
    match &a[0][0].step {
        Step::Copy(c) => {
            assert_eq!(c.sources, ["testfile.txt"]);
            // Relative to the root, since `c:\` is no absolute path here.
            assert_eq!(c.dest, "/c:\\");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(run_argv(&a[0][1]), sh("dir c:\\"));
    // With the default escape, `c:\\` is an escaped backslash (no
    // continuation), and the last line's `\` continues to the end of file.
    let text = "FROM microsoft/nanoserver\nCOPY testfile.txt c:\\\\\nRUN dir c:\\\n";
    let a = run(text);
    match &a[0][0].step {
        Step::Copy(c) => assert_eq!(c.dest, "/c:\\"),
        other => panic!("{other:?}"),
    }
    assert_eq!(run_argv(&a[0][1]), sh("dir c:"));
    // The backtick continues lines.
    let a = run("# escape=`\nFROM busybox\nRUN echo a `\n  b\n");
    assert_eq!(run_argv(&a[0][0]), sh("echo a   b"));
}

#[test]
fn empty_continuation_lines_are_skipped_with_a_warning() {
    let df = parsed("FROM busybox\nRUN apk add \\\n\n    curl\n");
    assert!(df.warnings.iter().any(|w| w.rule == "NoEmptyContinuation"));
    let a = run("FROM busybox\nRUN apk add \\\n\n    curl\n");
    assert_eq!(run_argv(&a[0][0]), sh("apk add     curl"));
}

#[test]
fn trailing_whitespace_after_the_escape_still_continues() {
    let a = run("FROM busybox\nRUN a \\  \t\nb\n");
    assert_eq!(run_argv(&a[0][0]), sh("a b"));
}

#[test]
fn crlf_line_endings_parse_like_lf() {
    let a = run("FROM busybox\r\nRUN echo a \\\r\nb\r\nCMD [\"x\"]\r\n");
    assert_eq!(run_argv(&a[0][0]), sh("echo a b"));
}

// ---- Shell and exec form ----

#[test]
fn exec_and_shell_forms() {
    let df = parsed(
        "FROM busybox\n\
         ENTRYPOINT [\"/bin/bash\", \"-c\", \"echo hello\"]\n\
         RUN [ \"echo\", \"$HOME\" ]\n\
         RUN [\"c:\\windows\\system32\\tasklist.exe\"]\n\
         RUN [\"c:\\\\windows\\\\system32\\\\tasklist.exe\"]\n\
         RUN ['single', 'quotes']\n\
         CMD []\n",
    );
    let kinds: Vec<&Kind> = df.stages[0].instructions.iter().map(|i| &i.kind).collect();
    assert_eq!(
        kinds[0],
        &Kind::Entrypoint(Command::Exec(vec![
            "/bin/bash".into(),
            "-c".into(),
            "echo hello".into()
        ]))
    );
    let run_cmd = |k: &Kind| match k {
        Kind::Run(r) => r.command.clone(),
        other => panic!("{other:?}"),
    };
    // Exec form: no substitution.
    assert_eq!(
        run_cmd(kinds[1]),
        Command::Exec(vec!["echo".into(), "$HOME".into()])
    );
    // Not valid JSON (\w is no JSON escape): the shell form, as written.
    assert_eq!(
        run_cmd(kinds[2]),
        Command::Shell("[\"c:\\windows\\system32\\tasklist.exe\"]".into())
    );
    assert_eq!(
        run_cmd(kinds[3]),
        Command::Exec(vec!["c:\\windows\\system32\\tasklist.exe".into()])
    );
    // Single quotes are not JSON: shell form.
    assert_eq!(
        run_cmd(kinds[4]),
        Command::Shell("['single', 'quotes']".into())
    );
    assert_eq!(kinds[5], &Kind::Cmd(Command::Exec(vec![])));
    // JSON that is an array but not of strings is an error, not shell form.
    let e = errors("FROM busybox\nRUN [\"a\", 1]\n");
    assert_eq!(e.0[0].line, 2);
}

#[test]
fn shell_instruction_changes_the_shell_of_later_shell_forms() {
    let a = run("FROM busybox\nSHELL [\"/bin/bash\", \"-c\"]\nRUN echo hello\nCMD echo hi\n");
    assert_eq!(
        run_argv(&a[0][1]),
        ["/bin/bash", "-c", "echo hello"].map(String::from)
    );
    let s = final_state(
        "FROM busybox\nSHELL [\"/bin/bash\", \"-c\"]\nCMD echo hi\n",
        &[],
    );
    assert_eq!(
        s.settings.cmd,
        Some(["/bin/bash", "-c", "echo hi"].map(String::from).to_vec())
    );
    // SHELL must be JSON.
    let e = errors("FROM busybox\nSHELL powershell -command\n");
    assert_eq!(e.0[0].line, 2);
    assert!(e.to_string().contains("JSON"), "{e}");
}

// ---- Here-documents ----

#[test]
fn heredoc_examples_from_the_reference() {
    let a = run(
        "FROM debian\nRUN <<EOT bash\n  set -ex\n  apt-get update\n  apt-get install -y vim\nEOT\n",
    );
    assert_eq!(
        run_argv(&a[0][0]),
        sh("<<EOT bash\n  set -ex\n  apt-get update\n  apt-get install -y vim\nEOT")
    );
    // Only a heredoc: its body is the script.
    let a = run("FROM debian\nRUN <<EOT\n  mkdir -p foo/bar\nEOT\n");
    assert_eq!(run_argv(&a[0][0]), sh("  mkdir -p foo/bar\n"));
    // A shebang: the body becomes an executable file.
    let a = run("FROM python:3.6\nRUN <<EOT\n#!/usr/bin/env python\nprint(\"hello world\")\nEOT\n");
    match &a[0][0].step {
        Step::Run(r) => {
            assert_eq!(r.argv, sh("/dev/pipes/EOT"));
            assert_eq!(
                r.files,
                [InlineFile {
                    path: "/dev/pipes/EOT".into(),
                    data: "#!/usr/bin/env python\nprint(\"hello world\")\n".into(),
                    mode: 0o755
                }]
            );
        }
        other => panic!("{other:?}"),
    }
    // Two heredocs on one line.
    let text = "FROM alpine\nRUN <<FILE1 cat > file1 && <<FILE2 cat > file2\nI am\nfirst\nFILE1\nI am\nsecond\nFILE2\nRUN echo after\n";
    let df = parsed(text);
    let ins = &df.stages[0].instructions;
    assert_eq!((ins[0].span.start, ins[0].span.end), (2, 8));
    assert_eq!(ins[1].span.start, 9);
    let a = run(text);
    assert_eq!(
        run_argv(&a[0][0]),
        sh("<<FILE1 cat > file1 && <<FILE2 cat > file2\nI am\nfirst\nFILE1\nI am\nsecond\nFILE2")
    );
}

#[test]
fn copy_heredocs_become_files_and_expand_unless_quoted() {
    let a = run("FROM alpine\nCOPY <<EOF greeting.txt\nhello world\nEOF\n");
    match &a[0][0].step {
        Step::Copy(c) => {
            assert!(c.sources.is_empty());
            assert_eq!(c.dest, "/greeting.txt");
            assert_eq!(c.inline[0].path, "EOF");
            assert_eq!(c.inline[0].data, "hello world\n");
        }
        other => panic!("{other:?}"),
    }
    let copy_data = |text: &str| match &run(text)[0][1].step {
        Step::Copy(c) => c.inline[0].data.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        copy_data(
            "FROM alpine\nARG FOO=bar\nCOPY <<-EOT /script.sh\n  echo \"hello ${FOO}\"\nEOT\n"
        ),
        "  echo \"hello bar\"\n"
    );
    assert_eq!(
        copy_data(
            "FROM alpine\nARG FOO=bar\nCOPY <<-\"EOT\" /script.sh\n  echo \"hello ${FOO}\"\nEOT\n"
        ),
        "  echo \"hello ${FOO}\"\n"
    );
    // `<<-` strips leading tabs from the body and the delimiter line.
    assert_eq!(
        copy_data("FROM alpine\nARG X=1\nCOPY <<-EOT /f\n\t\tx=$X\n\tEOT\n"),
        "x=1\n"
    );
    // Several heredocs into a directory.
    let a = run("FROM alpine\nCOPY <<FILE1 <<FILE2 /dest/\ncontent 1\nFILE1\ncontent 2\nFILE2\n");
    match &a[0][0].step {
        Step::Copy(c) => {
            let files: Vec<(&str, &str)> = c
                .inline
                .iter()
                .map(|f| (f.path.as_str(), f.data.as_str()))
                .collect();
            assert_eq!(files, [("FILE1", "content 1\n"), ("FILE2", "content 2\n")]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn heredoc_quoting_and_unterminated_bodies() {
    let df = parsed("FROM alpine\nRUN <<'EOF'\necho $HOME\nEOF\nRUN <<eo'f'\nx\neof\n");
    let docs: Vec<(String, bool)> = df.stages[0]
        .instructions
        .iter()
        .map(|i| match &i.kind {
            Kind::Run(r) => (r.heredocs[0].name.clone(), r.heredocs[0].expand),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(docs, [("EOF".into(), false), ("eof".into(), false)]);
    let e = errors("FROM alpine\nRUN <<EOF\necho never ends\n");
    assert_eq!(e.0[0].line, 2);
    assert!(matches!(e.0[0].kind, ErrorKind::UnterminatedHeredoc { .. }));
    // A heredoc as the destination is refused.
    let e = errors("FROM alpine\nCOPY a <<EOF\nx\nEOF\n");
    assert_eq!(e.0[0].line, 2);
    // Other instructions do not take heredocs: `<<` is text.
    let df = parsed("FROM alpine\nUSER <<INVALID\n");
    assert!(matches!(df.stages[0].instructions[0].kind, Kind::User(_)));
}

// ---- Environment replacement ----

#[test]
fn environment_replacement_example() {
    let a = run("FROM busybox\nENV FOO=/bar\nWORKDIR ${FOO}\nADD . $FOO\nCOPY \\$FOO /quux\n");
    assert_eq!(a[0][1].step, Step::Workdir("/bar".into()));
    match (&a[0][2].step, &a[0][3].step) {
        (Step::Copy(add), Step::Copy(copy)) => {
            assert!(add.add);
            assert_eq!(add.sources, ["."]);
            assert_eq!(add.dest, "/bar");
            assert_eq!(copy.sources, ["$FOO"]);
            assert_eq!(copy.dest, "/quux");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn one_value_per_variable_throughout_an_instruction() {
    let s = final_state(
        "FROM busybox\nENV abc=hello\nENV abc=bye def=$abc\nENV ghi=$abc\n",
        &[],
    );
    let env = env_of(&s);
    assert_eq!(env["def"], "hello");
    assert_eq!(env["ghi"], "bye");
}

#[test]
fn env_examples_from_the_reference() {
    let one = final_state(
        "FROM busybox\nENV MY_NAME=\"John Doe\"\nENV MY_DOG=Rex\\ The\\ Dog\nENV MY_CAT=fluffy\n",
        &[],
    );
    let multi = final_state(
        "FROM busybox\nENV MY_NAME=\"John Doe\" MY_DOG=Rex\\ The\\ Dog \\\n    MY_CAT=fluffy\n",
        &[],
    );
    let want: BTreeMap<String, String> = [
        ("MY_NAME", "John Doe"),
        ("MY_DOG", "Rex The Dog"),
        ("MY_CAT", "fluffy"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    assert_eq!(env_of(&one), want);
    assert_eq!(env_of(&multi), want);
    // The legacy form takes the rest of the line as the value.
    let legacy = "FROM busybox\nENV MY_VAR my-value\nENV ONE TWO= THREE=world\n";
    let s = final_state(legacy, &[]);
    assert_eq!(env_of(&s)["MY_VAR"], "my-value");
    assert_eq!(env_of(&s)["ONE"], "TWO= THREE=world");
    assert!(parsed(legacy)
        .warnings
        .iter()
        .any(|w| w.rule == "LegacyKeyValueFormat"));
    // Bad forms.
    for (text, line) in [
        ("FROM busybox\nENV\n", 2),
        ("FROM busybox\nENV ONLYKEY\n", 2),
        ("FROM busybox\nENV a=1 b\n", 2),
        ("FROM busybox\nENV =x\n", 2),
    ] {
        let e = errors(text);
        assert_eq!(e.0[0].line, line, "{text}");
    }
}

#[test]
fn label_examples_from_the_reference() {
    let s = final_state(
        "FROM busybox\n\
         LABEL \"com.example.vendor\"=\"ACME Incorporated\"\n\
         LABEL com.example.label-with-value=\"foo\"\n\
         LABEL version=\"1.0\"\n\
         LABEL description=\"This text illustrates \\\n\
         that label-values can span multiple lines.\"\n\
         LABEL multi.label1=\"value1\" \\\n      multi.label2=\"value2\" \\\n      other=\"value3\"\n",
        &[],
    );
    let want: BTreeMap<String, String> = [
        ("com.example.vendor", "ACME Incorporated"),
        ("com.example.label-with-value", "foo"),
        ("version", "1.0"),
        (
            "description",
            "This text illustrates that label-values can span multiple lines.",
        ),
        ("multi.label1", "value1"),
        ("multi.label2", "value2"),
        ("other", "value3"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    assert_eq!(s.settings.labels, want);
    // Single quotes keep `$` as text.
    let s = final_state("FROM busybox\nENV X=1\nLABEL a='$X' b=\"$X\"\n", &[]);
    assert_eq!(s.settings.labels["a"], "$X");
    assert_eq!(s.settings.labels["b"], "1");
}

#[test]
fn arg_scope_example_from_the_reference() {
    let text = "FROM busybox\nUSER ${username:-some_user}\nARG username\nUSER $username\n";
    let a = run_with(text, &[("username", "what_user")]);
    assert_eq!(a[0][0].history, "USER some_user");
    assert_eq!(a[0][2].history, "USER what_user");
}

#[test]
fn env_overrides_arg_and_arg_feeds_env() {
    let text = "FROM ubuntu\nARG CONT_IMG_VER\nENV CONT_IMG_VER=v1.0.0\nRUN echo $CONT_IMG_VER\n";
    let a = run_with(text, &[("CONT_IMG_VER", "v2.0.1")]);
    match &a[0][2].step {
        Step::Run(r) => assert!(
            r.env.contains(&"CONT_IMG_VER=v1.0.0".to_owned()),
            "{:?}",
            r.env
        ),
        other => panic!("{other:?}"),
    }
    let text = "FROM ubuntu\nARG CONT_IMG_VER\nENV CONT_IMG_VER=${CONT_IMG_VER:-v1.0.0}\n";
    assert_eq!(
        env_of(&final_state(text, &[("CONT_IMG_VER", "v2.0.1")]))["CONT_IMG_VER"],
        "v2.0.1"
    );
    assert_eq!(env_of(&final_state(text, &[]))["CONT_IMG_VER"], "v1.0.0");
}

#[test]
fn args_reach_run_env_and_history_but_not_the_image() {
    let text = "FROM busybox\nARG user1=someuser\nARG buildno=1\nRUN make\n";
    let a = run_with(text, &[("buildno", "7")]);
    match &a[0][2].step {
        Step::Run(r) => {
            assert!(r.env.contains(&"user1=someuser".to_owned()));
            assert!(r.env.contains(&"buildno=7".to_owned()));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        a[0][2].history,
        "RUN |2 user1=someuser buildno=7 /bin/sh -c make"
    );
    assert!(final_state(text, &[]).settings.env.is_empty());
}

#[test]
fn proxy_args_reach_run_but_not_the_cache_key_unless_declared() {
    let text = "FROM ubuntu\nRUN echo \"Hello World\"\n";
    let a = run_with(text, &[("HTTP_PROXY", "http://proxy:3128")]);
    match &a[0][0].step {
        Step::Run(r) => {
            assert!(r.env.contains(&"HTTP_PROXY=http://proxy:3128".to_owned()));
            assert!(!r.cache_env.iter().any(|e| e.starts_with("HTTP_PROXY")));
        }
        other => panic!("{other:?}"),
    }
    let text = "FROM ubuntu\nARG HTTP_PROXY\nRUN echo \"Hello World\"\n";
    let a = run_with(text, &[("HTTP_PROXY", "http://proxy:3128")]);
    match &a[0][1].step {
        Step::Run(r) => {
            assert!(r
                .cache_env
                .contains(&"HTTP_PROXY=http://proxy:3128".to_owned()))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn global_args_feed_from_and_only_from() {
    let text = "ARG  CODE_VERSION=latest\nFROM base:${CODE_VERSION}\nCMD  /code/run-app\n\nFROM extras:${CODE_VERSION}\nCMD  /code/run-extras\n";
    let df = parsed(text);
    let plan = plan::plan(&df, &PlanOptions::default()).expect("plan");
    let names: Vec<String> = plan
        .bases
        .iter()
        .map(|b| match b {
            Base::Image { reference, .. } => reference.to_string(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        names,
        [
            "docker.io/library/base:latest",
            "docker.io/library/extras:latest"
        ]
    );
    // A global ARG is not in scope in a stage until declared there again.
    let text = "ARG VERSION=latest\nFROM busybox:$VERSION\nRUN echo $VERSION\nARG VERSION\nRUN echo $VERSION > image_version\n";
    let a = run(text);
    match (&a[0][0].step, &a[0][2].step) {
        (Step::Run(before), Step::Run(after)) => {
            assert!(!before.env.iter().any(|e| e.starts_with("VERSION=")));
            assert!(after.env.contains(&"VERSION=latest".to_owned()));
        }
        other => panic!("{other:?}"),
    }
    // --build-arg overrides the global default.
    let plan = plan::plan(
        &parsed("ARG V=1\nFROM busybox:$V\n"),
        &PlanOptions {
            build_args: [("V".to_owned(), "2".to_owned())].into(),
            ..PlanOptions::default()
        },
    )
    .expect("plan");
    assert!(matches!(&plan.bases[0], Base::Image { written, .. } if written == "busybox:2"));
    // Platform ARGs are predefined in the global scope.
    let plan = plan::plan(
        &parsed("FROM --platform=$BUILDPLATFORM busybox AS b\n"),
        &PlanOptions::default(),
    )
    .expect("plan");
    assert!(plan
        .globals
        .contains(&("TARGETARCH".into(), "amd64".into())));
}

#[test]
fn pattern_substitutions_work_in_instructions() {
    let s = final_state(
        "FROM busybox\nARG str=foobarbaz\nENV a=${str#f*b} b=${str##f*b} c=${str%b*} d=${str%%b*} e=${str/ba/fo} f=${str//ba/fo}\n",
        &[],
    );
    let env = env_of(&s);
    assert_eq!(
        [&env["a"], &env["b"], &env["c"], &env["d"], &env["e"], &env["f"]],
        ["arbaz", "az", "foobar", "foo", "fooforbaz", "fooforfoz"]
    );
}

// ---- The other instructions ----

#[test]
fn workdir_examples_from_the_reference() {
    let a = run("FROM busybox\nWORKDIR /a\nWORKDIR b\nWORKDIR c\nRUN pwd\n");
    match &a[0][3].step {
        Step::Run(r) => assert_eq!(r.workdir, "/a/b/c"),
        other => panic!("{other:?}"),
    }
    // $DIRNAME is not set: it expands to nothing.
    let s = final_state(
        "FROM busybox\nENV DIRPATH=/path\nWORKDIR $DIRPATH/$DIRNAME\n",
        &[],
    );
    assert_eq!(s.settings.workdir, "/path");
}

#[test]
fn copy_and_add_destinations_follow_the_reference() {
    let dests = |text: &str| -> Vec<String> {
        run(text)[0]
            .iter()
            .filter_map(|a| match &a.step {
                Step::Copy(c) => Some(c.dest.clone()),
                _ => None,
            })
            .collect()
    };
    assert_eq!(
        dests("FROM busybox\nCOPY test.txt /abs/\nCOPY test.txt /abs\nWORKDIR /usr/src/app\nCOPY test.txt rel/\nCOPY test.txt .\nADD file1.txt file2.txt /usr/src/things/\n"),
        ["/abs/", "/abs", "/usr/src/app/rel/", "/usr/src/app/", "/usr/src/things/"]
    );
    // More than one source needs a directory.
    let df = parsed("FROM busybox\nCOPY a b /dest\n");
    let plan = plan::plan(&df, &PlanOptions::default()).expect("plan");
    let mut state = StageState::new(
        Settings::default(),
        BuildScope::new(&plan, &BTreeMap::new(), '\\'),
    );
    let err = state
        .apply(&df.stages[0].instructions[0])
        .expect_err("needs a dir");
    assert!(err.to_string().contains("/dest/"), "{err}");
}

#[test]
fn copy_flags_from_the_reference() {
    let text = "FROM alpine AS build\nRUN true\n\
        FROM scratch\n\
        COPY --from=build /hello /\n\
        COPY --from=nginx:latest /etc/nginx/nginx.conf /nginx.conf\n\
        COPY --from=0 /x /y\n\
        COPY --chown=55:mygroup files* /somedir/\n\
        COPY --chown=bin files* /somedir/\n\
        COPY --chown=myuser:mygroup --chmod=644 files* /somedir/\n\
        COPY --chmod=u=rwX,go=rX . /app/\n\
        ARG MODE=440\n\
        COPY --chmod=$MODE . .\n\
        COPY --link --exclude=*.txt --exclude=*.md hom* /mydir/\n";
    let a = run(text);
    let copies: Vec<_> = a[1]
        .iter()
        .filter_map(|x| match &x.step {
            Step::Copy(c) => Some(c.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(copies[0].from, CopyFrom::Stage(0));
    assert_eq!(copies[1].from, CopyFrom::Image("nginx:latest".into()));
    assert_eq!(copies[2].from, CopyFrom::Stage(0));
    let chown = copies[3].chown.clone().expect("chown");
    assert_eq!(chown.user, IdOrName::Id(55));
    assert_eq!(chown.group, Some(IdOrName::Name("mygroup".into())));
    assert_eq!(copies[4].chown.clone().expect("chown").group, None);
    assert_eq!(copies[5].chmod, Some(Chmod::Octal(0o644)));
    assert!(matches!(copies[6].chmod, Some(Chmod::Symbolic(_))));
    assert_eq!(copies[7].chmod, Some(Chmod::Octal(0o440)));
    assert!(copies[8].link);
    assert_eq!(copies[8].excludes, ["*.txt", "*.md"]);
}

#[test]
fn add_refuses_urls_and_git_and_defaults_to_unpacking() {
    for src in [
        "https://example.com/archive.zip",
        "git@github.com:user/repo.git",
        "http://example.com/x",
    ] {
        let df = parsed(&format!("FROM alpine\nADD {src} /usr/src/things/\n"));
        let plan = plan::plan(&df, &PlanOptions::default()).expect("plan");
        let mut state = StageState::new(
            Settings::default(),
            BuildScope::new(&plan, &BTreeMap::new(), '\\'),
        );
        let err = state
            .apply(&df.stages[0].instructions[0])
            .expect_err("a URL");
        assert!(matches!(err, ErrorKind::Unsupported { .. }), "{err}");
    }
    let a = run("FROM alpine\nADD my-archive.tar.gz .\nADD --unpack=false my-archive.tar.gz .\nCOPY my-archive.tar.gz .\n");
    let unpack: Vec<bool> = a[0]
        .iter()
        .map(|x| match &x.step {
            Step::Copy(c) => c.unpack,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(unpack, [true, false, false]);
    // --checksum and --keep-git-dir belong to remote sources.
    assert!(parse("FROM alpine\nADD --checksum=sha256:x f /\n", "Dockerfile").is_err());
}

#[test]
fn expose_volume_user_stopsignal_healthcheck() {
    let s = final_state(
        "FROM busybox\n\
         EXPOSE 80/udp\n\
         EXPOSE 80/tcp 53/udp 8000-8002\n\
         ARG P=9090\n\
         EXPOSE $P\n\
         VOLUME [\"/data\"]\n\
         VOLUME /var/log /var/db\n\
         USER patrick\n\
         STOPSIGNAL SIGKILL\n\
         HEALTHCHECK --interval=5m --timeout=3s \\\n  CMD curl -f http://localhost/ || exit 1\n",
        &[],
    );
    let ports: Vec<&str> = s
        .settings
        .exposed_ports
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(
        ports,
        ["53/udp", "80/tcp", "80/udp", "8000/tcp", "8001/tcp", "8002/tcp", "9090/tcp"]
    );
    let vols: Vec<&str> = s.settings.volumes.iter().map(String::as_str).collect();
    assert_eq!(vols, ["/data", "/var/db", "/var/log"]);
    assert_eq!(s.settings.user, "patrick");
    assert_eq!(s.settings.stop_signal.as_deref(), Some("SIGKILL"));
    let h = s.settings.healthcheck.expect("healthcheck");
    assert_eq!(h.test, ["CMD-SHELL", "curl -f http://localhost/ || exit 1"]);
    assert_eq!(h.interval_ns, 300_000_000_000);
    assert_eq!(h.timeout_ns, 3_000_000_000);
    let s = final_state(
        "FROM busybox\nHEALTHCHECK --retries=5 --start-period=10s --start-interval=1s CMD [\"/bin/check\"]\nSTOPSIGNAL 9\nUSER 1000:1000\n",
        &[],
    );
    let h = s.settings.healthcheck.expect("healthcheck");
    assert_eq!(h.test, ["CMD", "/bin/check"]);
    assert_eq!(
        (h.retries, h.start_period_ns, h.start_interval_ns),
        (5, 10_000_000_000, 1_000_000_000)
    );
    assert_eq!(s.settings.user, "1000:1000");
    let s = final_state("FROM busybox\nHEALTHCHECK NONE\n", &[]);
    assert_eq!(s.settings.healthcheck.expect("none").test, ["NONE"]);
}

#[test]
fn entrypoint_resets_an_inherited_cmd() {
    let s = final_state(
        "FROM busybox AS base\nCMD [\"base\"]\nFROM base\nENTRYPOINT [\"/app\"]\n",
        &[],
    );
    assert_eq!(s.settings.entrypoint, Some(vec!["/app".to_owned()]));
    assert_eq!(s.settings.cmd, None);
    let s = final_state(
        "FROM busybox\nCMD [\"--help\"]\nENTRYPOINT [\"/app\"]\n",
        &[],
    );
    assert_eq!(s.settings.cmd, Some(vec!["--help".to_owned()]));
    let s = final_state("FROM busybox\nENTRYPOINT [\"/app\"]\nENTRYPOINT []\n", &[]);
    assert_eq!(s.settings.entrypoint, None);
}

#[test]
fn a_stage_inherits_env_and_args_from_the_stage_it_is_based_on() {
    let text = "FROM busybox AS base\nENV A=1\nARG B=2\nFROM base AS next\nRUN true\n";
    let a = run(text);
    match &a[1][0].step {
        Step::Run(r) => {
            assert!(r.env.contains(&"A=1".to_owned()));
            assert!(r.env.contains(&"B=2".to_owned()));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn run_flags_are_parsed_and_unsupported_ones_refused() {
    let df = parsed(
        "FROM golang AS build\nRUN true\nFROM golang\n\
         RUN --mount=type=cache,target=/root/.cache/go-build --network=none go build\n\
         RUN --mount=type=bind,from=build,source=/out,target=/in cp /in/x /x\n\
         RUN --network=host true\n",
    );
    let runs: Vec<_> = df.stages[1]
        .instructions
        .iter()
        .map(|i| match &i.kind {
            Kind::Run(r) => r.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(runs[0].network, Network::None);
    assert_eq!(runs[1].mounts[0].from, Some(CopyFrom::Stage(0)));
    assert_eq!(runs[2].network, Network::Host);
    for (text, what) in [
        (
            "FROM a\nRUN --mount=type=secret,id=aws cat /run/secrets/aws\n",
            "secret",
        ),
        ("FROM a\nRUN --device=nvidia.com/gpu=all true\n", "device"),
        ("FROM a\nRUN --security=insecure true\n", "insecure"),
    ] {
        let df = parse(text, "Dockerfile");
        let message = match df {
            Err(e) => e.to_string(),
            Ok(df) => {
                // type=secret is refused when the mount is expanded.
                let plan = plan::plan(&df, &PlanOptions::default()).expect("plan");
                let mut state = StageState::new(
                    Settings::default(),
                    BuildScope::new(&plan, &BTreeMap::new(), '\\'),
                );
                state
                    .apply(&df.stages[0].instructions[0])
                    .expect_err("unsupported")
                    .to_string()
            }
        };
        assert!(message.contains("not supported"), "{what}: {message}");
    }
    let e = errors("FROM a\nRUN --network=bridge true\n");
    assert_eq!(e.0[0].line, 2);
}

#[test]
fn maintainer_is_deprecated_but_accepted_and_onbuild_is_refused() {
    let text = "FROM busybox\nMAINTAINER SvenDowideit@home.org.au\n";
    let df = parsed(text);
    assert!(df.warnings.iter().any(|w| w.rule == "MaintainerDeprecated"));
    assert_eq!(
        final_state(text, &[]).settings.author.as_deref(),
        Some("SvenDowideit@home.org.au")
    );
    let e = errors("FROM busybox\nONBUILD RUN make\n");
    assert_eq!(e.0[0].line, 2);
    assert!(e.to_string().contains("ONBUILD is not supported"), "{e}");
}

#[test]
fn stages_names_targets_and_references() {
    let df = parsed("FROM ubuntu AS base\nRUN a\nFROM base AS dev\nRUN b\nFROM base AS prod\nCOPY --from=dev /app /app\n");
    let plan = plan::plan(&df, &PlanOptions::default()).expect("plan");
    assert_eq!(plan.bases[1], Base::Stage(0));
    assert_eq!(plan.target, 2);
    assert_eq!(plan.order, [0, 1, 2]);
    let plan = plan::plan(
        &df,
        &PlanOptions {
            target: Some("dev".into()),
            ..PlanOptions::default()
        },
    )
    .expect("plan");
    assert_eq!(plan.order, [0, 1]);
    // A stage another one does not use is not in the order.
    let df = parsed("FROM a AS x\nFROM b AS y\nFROM c\nCOPY --from=y / /\n");
    assert_eq!(
        plan::plan(&df, &PlanOptions::default())
            .expect("plan")
            .order,
        [1, 2]
    );
    let e = plan::plan(
        &df,
        &PlanOptions {
            target: Some("z".into()),
            ..PlanOptions::default()
        },
    )
    .expect_err("unknown target");
    assert!(e.to_string().contains("x, y"), "{e}");
    // Stage names are lowercased and looked up case-insensitively.
    let df = parsed("FROM a AS Builder\nFROM b\nCOPY --from=BUILDER /x /x\n");
    assert_eq!(df.stages[0].name.as_deref(), Some("builder"));
    assert!(df.warnings.iter().any(|w| w.rule == "StageNameCasing"));
}

#[test]
fn errors_carry_their_lines() {
    let table: &[(&str, usize, &str)] = &[
        ("", 1, "no instructions"),
        ("# only a comment\n\n", 2, "no instructions"),
        ("RUN echo\nFROM a\n", 1, "before the first FROM"),
        ("FROM a\nFORM b\n", 2, "did you mean FROM"),
        ("FROM a\nRUN --mnt=x true\n", 2, "unknown flag --mnt"),
        ("FROM a\nCOPY --chown a b\n", 2, "needs a value"),
        ("FROM a\nCOPY --link=maybe a b\n", 2, "true or false"),
        ("FROM a\nCOPY --from=x --from=y a b\n", 2, "twice"),
        ("FROM a\nCOPY onlyone\n", 2, "source and a destination"),
        ("FROM a\nEXPOSE\n", 2, "at least one port"),
        ("FROM a\nHEALTHCHECK --interval=5 CMD true\n", 2, "unit"),
        (
            "FROM a\nHEALTHCHECK --timeout=1us CMD true\n",
            2,
            "shorter than 1ms",
        ),
        ("FROM a\nHEALTHCHECK --retries=-1 CMD true\n", 2, "count"),
        ("FROM a\nHEALTHCHECK CMDX true\n", 2, "unknown type"),
        ("FROM a\nHEALTHCHECK NONE extra\n", 2, "takes no"),
        ("FROM a AS 1st\n", 1, "invalid stage name"),
        ("FROM a AS x\nFROM b AS x\n", 2, "already used"),
        ("FROM a b\n", 1, "AS <name>"),
        ("FROM a AS x\nCOPY --from=x /a /b\n", 2, "itself"),
        (
            "FROM a\nCOPY --from=later /a /b\nFROM b AS later\n",
            2,
            "defined after",
        ),
        ("FROM a\nCOPY --from=5 /a /b\n", 2, "no stage 5"),
        ("FROM a\nCOPY --from=$X /a /b\n", 2, "cannot use variables"),
        ("FROM a\nWORKDIR\n", 2, "exactly one argument"),
        ("FROM a\nCOPY --parents a/b /c/\n", 2, "not supported"),
        ("FROM a\nRUN\n", 2, "needs a command"),
        ("FROM a\nCMD\n", 2, "needs a command"),
        ("FROM a\nVOLUME []\n", 2, "at least one path"),
        ("FROM a\nSHELL []\n", 2, "at least the executable"),
        ("FROM a\nARG\n", 2, "needs a name"),
        ("# escape=x\nFROM a\n", 1, "escape"),
    ];
    for (text, line, needle) in table {
        let e = errors(text);
        assert_eq!(e.0[0].line, *line, "{text:?}: {e}");
        let shown = e.to_string();
        assert!(shown.contains(needle), "{text:?}: {shown}");
        assert!(
            shown.starts_with(&format!("Dockerfile:{line}: ")),
            "{shown}"
        );
    }
    // Every bad line is reported, not only the first.
    let e = errors("FROM a\nFORM b\nRUN --x true\nEXPOSE\n");
    let lines: Vec<usize> = e.0.iter().map(|e| e.line).collect();
    assert_eq!(lines, [2, 3, 4]);
}

#[test]
fn expansion_errors_carry_their_lines_through_check() {
    let table: &[(&str, usize, &str)] = &[
        ("FROM a\nEXPOSE 70000\n", 2, "port number"),
        ("FROM a\nEXPOSE 80/icmp\n", 2, "tcp, udp or sctp"),
        ("FROM a\nSTOPSIGNAL SIGNOPE\n", 2, "not a signal"),
        ("FROM a\nCOPY --chmod=999 a b\n", 2, "octal"),
        ("FROM a\nCOPY --chown=: a b\n", 2, "empty"),
        ("FROM a\nENV X=\"${Y:?must be set}\"\n", 2, "must be set"),
        ("FROM a\nUSER ${}\n", 2, "bad substitution"),
        ("FROM a\nWORKDIR ${X\n", 2, "cannot expand"),
        ("ARG V\nFROM busybox:$V\n", 2, "invalid image reference"),
        ("FROM $EMPTY\n", 1, "empty after substitution"),
        ("FROM --platform=linux/arm64 a\n", 1, "not supported"),
        ("FROM a\nRUN --mount=type=cache true\n", 2, "needs a target"),
        ("FROM later\nFROM busybox AS later\n", 1, "defined after it"),
    ];
    for (text, line, needle) in table {
        let df = parsed(text);
        let report = check::check(&df, &CheckOptions::default(), &|_| None);
        assert!(!report.ok(), "{text:?}");
        let e = &report.errors[0];
        assert_eq!(e.line, *line, "{text:?}: {e}");
        let mut shown = e.to_string();
        let mut cause = std::error::Error::source(e);
        while let Some(c) = cause {
            shown.push_str(&format!(": {c}"));
            cause = c.source();
        }
        assert!(shown.contains(needle), "{text:?}: {shown}");
    }
}

#[test]
fn build_checks_warn_like_docker() {
    let text = "FROM alpine as Base\nCMD echo \"Hello, world!\"\nENTRYPOINT echo\nWORKDIR rel\nCOPY x$foo .\nfrom base\nCMD [\"a\"]\nCMD [\"b\"]\n";
    let df = parsed(text);
    let report = check::check(
        &df,
        &CheckOptions::default(),
        &|_| Some(Settings::default()),
    );
    assert!(report.ok(), "{:?}", report.errors);
    let mut rules: Vec<(usize, &str)> = report.warnings.iter().map(|w| (w.line, w.rule)).collect();
    rules.sort();
    assert_eq!(
        rules,
        [
            (1, "FromAsCasing"),
            (1, "StageNameCasing"),
            (2, "JSONArgsRecommended"),
            (3, "JSONArgsRecommended"),
            (4, "WorkdirRelativePath"),
            (5, "UndefinedVar"),
            (6, "ConsistentInstructionCasing"),
            (7, "MultipleInstructionsDisallowed"),
        ]
    );
    let undefined = report
        .warnings
        .iter()
        .find(|w| w.rule == "UndefinedVar")
        .expect("UndefinedVar");
    assert_eq!(undefined.message, "Usage of undefined variable '$foo'");
    // A typo gets a suggestion; declared ARGs without a value are defined.
    let df = parsed("FROM alpine\nENV PATH=/bin\nENV PATH=$PAHT:/app/bin\nARG foo\nCOPY x$foo .\n");
    let report = check::check(
        &df,
        &CheckOptions::default(),
        &|_| Some(Settings::default()),
    );
    let found: Vec<&str> = report.warnings.iter().map(|w| w.message.as_str()).collect();
    assert_eq!(
        found,
        ["Usage of undefined variable '$PAHT' (did you mean $PATH?)"]
    );
    // Unknown base settings: nothing is known to be undefined.
    let report = check::check(
        &parsed("FROM alpine\nCOPY x$foo .\n"),
        &CheckOptions::default(),
        &|_| None,
    );
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    // FROM with an undeclared ARG.
    let report = check::check(
        &parsed("FROM alpine:${VERSON}\n"),
        &CheckOptions::default(),
        &|_| None,
    );
    assert!(report
        .warnings
        .iter()
        .any(|w| w.rule == "UndefinedArgInFrom"));
    // # check=skip and error=true.
    let df = parsed("# check=skip=JSONArgsRecommended\nFROM a\nCMD x\n");
    assert!(check::check(&df, &CheckOptions::default(), &|_| None)
        .warnings
        .is_empty());
    let df = parsed("# check=error=true\nFROM a\nCMD x\n");
    assert!(!check::check(&df, &CheckOptions::default(), &|_| None).ok());
    let df = parsed("# check=skip=all\nFROM a\nCMD x\nmaintainer me\n");
    assert!(check::check(&df, &CheckOptions::default(), &|_| None)
        .warnings
        .is_empty());
}

#[test]
fn base_image_settings_are_read_from_its_config_and_onbuild_is_refused() {
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "author": "someone",
        "config": {
            "Env": ["PATH=/usr/bin:/bin", "GOPATH=/go"],
            "User": "1000",
            "WorkingDir": "/go/src",
            "Entrypoint": ["/entry"],
            "Cmd": ["serve"],
            "ExposedPorts": {"80/tcp": {}},
            "Volumes": {"/data": {}},
            "Labels": {"a": "b"},
            "StopSignal": "SIGINT",
            "Healthcheck": {"Test": ["CMD", "true"], "Interval": 5000000000u64, "Retries": 2},
            "OnBuild": ["RUN make"]
        }
    });
    let settings = Settings::from_image_config(&config);
    assert_eq!(settings.env[1], ("GOPATH".to_owned(), "/go".to_owned()));
    assert_eq!(settings.user, "1000");
    assert_eq!(settings.workdir, "/go/src");
    assert_eq!(settings.entrypoint, Some(vec!["/entry".to_owned()]));
    assert_eq!(settings.cmd, Some(vec!["serve".to_owned()]));
    assert!(settings.exposed_ports.contains("80/tcp"));
    assert!(settings.volumes.contains("/data"));
    assert_eq!(settings.labels["a"], "b");
    assert_eq!(settings.stop_signal.as_deref(), Some("SIGINT"));
    let h = settings.healthcheck.clone().expect("healthcheck");
    assert_eq!((h.interval_ns, h.retries), (5_000_000_000, 2));
    assert_eq!(settings.author.as_deref(), Some("someone"));
    assert_eq!(settings.onbuild, ["RUN make"]);
    // The base's variables count in substitution and as defined.
    let df = parsed("FROM golang\nWORKDIR $GOPATH/app\nRUN go build\n");
    let mut base = settings.clone();
    base.onbuild.clear();
    let report = check::check(&df, &CheckOptions::default(), &|_| Some(base.clone()));
    assert!(
        report.ok() && report.warnings.is_empty(),
        "{:?}",
        report.warnings
    );
    // A base with ONBUILD triggers is refused at its FROM.
    let report = check::check(&df, &CheckOptions::default(), &|_| Some(settings.clone()));
    assert_eq!(report.errors.len(), 1);
    assert_eq!(report.errors[0].line, 1);
    assert!(report.errors[0].to_string().contains("ONBUILD"));
}

// ---- .dockerignore and the context ----

struct TempContext(tempfile::TempDir);

impl TempContext {
    fn new(files: &[(&str, &str)]) -> TempContext {
        let dir = tempfile::tempdir().expect("tempdir");
        for (path, content) in files {
            let full = dir.path().join(path);
            std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
            std::fs::write(&full, content).expect("write");
        }
        TempContext(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    fn context(&self) -> Context {
        let rules = IgnoreRules::load(self.path(), None).expect("ignore rules");
        Context::new(self.path(), rules).expect("context")
    }

    /// The names COPY selects for `line` (one COPY in a stage).
    fn select(&self, line: &str) -> Result<Vec<Vec<String>>, String> {
        let a = run(&format!("FROM scratch\n{line}\n"));
        let step = match &a[0].last().expect("a step").step {
            Step::Copy(c) => c.clone(),
            other => panic!("{other:?}"),
        };
        let selected = self
            .context()
            .select(&step, "COPY")
            .map_err(|e| e.to_string())?;
        Ok(selected
            .iter()
            .flat_map(|s| s.matches.iter())
            .map(|m| {
                let mut names = vec![m.path.clone()];
                names.extend(m.tree.iter().map(|e| format!("  {}", e.path)));
                names
            })
            .collect())
    }
}

#[test]
fn dockerignore_leaves_files_out_and_exceptions_bring_them_back() {
    let ctx = TempContext::new(&[
        (
            ".dockerignore",
            "# comment\n*.md\n!README*.md\nREADME-secret.md\nnode_modules\n/build/\n",
        ),
        ("Dockerfile", "FROM scratch\n"),
        ("README.md", "r"),
        ("README-secret.md", "s"),
        ("CHANGES.md", "c"),
        ("src/main.rs", "m"),
        ("src/notes.md", "n"),
        ("node_modules/x/index.js", "x"),
        ("build/out", "o"),
    ]);
    let all: Vec<String> = ctx
        .context()
        .walk()
        .expect("walk")
        .into_iter()
        .map(|e| e.path)
        .collect();
    assert_eq!(
        all,
        [
            ".dockerignore",
            "Dockerfile",
            "README.md",
            "src",
            "src/main.rs",
            "src/notes.md"
        ]
    );
    let err = ctx.select("COPY CHANGES.md /").expect_err("ignored");
    assert!(
        err.contains("excluded by") && err.contains("line 2: *.md"),
        "{err}"
    );
    assert!(ctx.select("COPY node_modules /x/").is_err());
    assert_eq!(
        ctx.select("COPY . /app/").expect("select")[0][0],
        "",
        "the whole context"
    );
}

#[test]
fn dockerignore_everything_but_keeps_parents_of_kept_files() {
    let ctx = TempContext::new(&[
        (".dockerignore", "*\n!src/keep\n"),
        ("src/keep", "k"),
        ("src/drop", "d"),
        ("other", "o"),
    ]);
    let all: Vec<String> = ctx
        .context()
        .walk()
        .expect("walk")
        .into_iter()
        .map(|e| e.path)
        .collect();
    assert_eq!(all, ["src", "src/keep"]);
    assert_eq!(
        ctx.select("COPY src /dst/").expect("select"),
        [vec!["src".to_owned(), "  keep".to_owned()]]
    );
    assert!(ctx.select("COPY src/drop /dst/").is_err());
}

#[test]
fn a_dockerfile_specific_ignore_file_wins() {
    let ctx = TempContext::new(&[
        (".dockerignore", "a\n"),
        ("build/app.Dockerfile", "FROM scratch\n"),
        ("build/app.Dockerfile.dockerignore", "b\n"),
        ("a", "a"),
        ("b", "b"),
    ]);
    let rules = IgnoreRules::load(ctx.path(), Some(&ctx.path().join("build/app.Dockerfile")))
        .expect("rules");
    assert!(rules.excluded("b"));
    assert!(!rules.excluded("a"));
}

#[test]
fn copy_sources_wildcards_and_the_context_boundary() {
    let ctx = TempContext::new(&[
        ("file1.txt", "1"),
        ("file2.txt", "2"),
        ("a.png", "p"),
        ("b.png", "p"),
        ("index.js", "j"),
        ("index.ts", "t"),
        ("arr[0].txt", "a"),
        ("home/notes.txt", "n"),
        ("home/notes.rs", "r"),
        ("homework.txt", "w"),
        ("dir/sub/f", "f"),
    ]);
    let names = |line: &str| -> Vec<String> {
        ctx.select(line)
            .unwrap_or_else(|e| panic!("{line}: {e}"))
            .into_iter()
            .flatten()
            .collect()
    };
    assert_eq!(
        names("COPY file1.txt file2.txt /usr/src/things/"),
        ["file1.txt", "file2.txt"]
    );
    assert_eq!(names("COPY *.png /dest/"), ["a.png", "b.png"]);
    assert_eq!(names("COPY index.?s /dest/"), ["index.js", "index.ts"]);
    assert_eq!(names("COPY arr[[]0].txt /dest/"), ["arr[0].txt"]);
    assert_eq!(
        names("COPY --exclude=*.txt hom* /mydir/"),
        ["home", "  notes.rs"]
    );
    assert_eq!(names("COPY dir/ /d"), ["dir", "  sub", "  sub/f"]);
    assert_eq!(names("COPY /file1.txt /f"), ["file1.txt"]);
    // A wildcard matching several files needs a directory destination.
    let err = ctx.select("COPY *.png /dest").expect_err("needs /");
    assert!(err.contains("/dest/"), "{err}");
    // Outside the context: refused, saying what Docker would do.
    let err = ctx.select("COPY ../etc/passwd /x").expect_err("outside");
    assert!(
        err.contains("outside the build context") && err.contains("\"etc/passwd\""),
        "{err}"
    );
    let err = ctx.select("COPY missing.txt /x").expect_err("missing");
    assert!(err.contains("not found"), "{err}");
    let err = ctx.select("COPY *.gif /x/").expect_err("no match");
    assert!(err.contains("matches the pattern"), "{err}");
}

#[test]
fn symlinks_are_followed_inside_the_context_and_refused_outside() {
    let ctx = TempContext::new(&[("real/file", "f"), ("other", "o")]);
    let p = ctx.path();
    std::os::unix::fs::symlink("real", p.join("link")).expect("symlink");
    std::os::unix::fs::symlink("/real/file", p.join("abs")).expect("symlink");
    std::os::unix::fs::symlink("../../etc/passwd", p.join("escape")).expect("symlink");
    std::os::unix::fs::symlink("../other", p.join("real/up")).expect("symlink");
    let matched = |line: &str| {
        let a = run(&format!("FROM scratch\n{line}\n"));
        let Step::Copy(step) = &a[0][0].step else {
            panic!("not a copy")
        };
        ctx.context().select(step, "COPY")
    };
    let m = matched("COPY link/file /f").expect("through a link");
    assert_eq!(m[0].matches[0].real, "real/file");
    let m = matched("COPY abs /f").expect("absolute link, from the context root");
    assert_eq!(m[0].matches[0].real, "real/file");
    assert_eq!(m[0].matches[0].path, "abs");
    let m = matched("COPY real/up /f").expect("a link up, still inside");
    assert_eq!(m[0].matches[0].real, "other");
    let err = matched("COPY escape /f").expect_err("escapes");
    assert!(
        matches!(&err, ErrorKind::LinkOutsideContext { link, .. } if link == "escape"),
        "{err}"
    );
    // Walking a directory keeps links as links.
    let m = matched("COPY real /r/").expect("dir");
    let up = m[0].matches[0]
        .tree
        .iter()
        .find(|e| e.path == "up")
        .expect("up");
    assert_eq!(up.kind, EntryKind::Symlink("../other".into()));
}

#[test]
fn add_recognises_local_archives_by_content() {
    let ctx = TempContext::new(&[("not-a-tar.tar.gz", "")]);
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(2);
    header.set_mode(0o644);
    header.set_cksum();
    builder
        .append_data(&mut header, "hello", &b"hi"[..])
        .expect("append");
    let tar_bytes = builder.into_inner().expect("tar");
    std::fs::write(ctx.path().join("plain.tar"), &tar_bytes).expect("write");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &tar_bytes).expect("gzip");
    std::fs::write(ctx.path().join("a.bin"), gz.finish().expect("gzip")).expect("write");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, b"just text, no tar").expect("gzip");
    std::fs::write(ctx.path().join("text.gz"), gz.finish().expect("gzip")).expect("write");
    std::fs::write(ctx.path().join("x.bz2"), b"BZh91AY&SY").expect("write");
    let kind = |line: &str| -> Result<Option<ArchiveKind>, String> {
        let a = run(&format!("FROM scratch\n{line}\n"));
        let Step::Copy(step) = &a[0][0].step else {
            panic!("not a copy")
        };
        ctx.context()
            .select(step, "ADD")
            .map(|s| s[0].matches[0].archive)
            .map_err(|e| e.to_string())
    };
    assert_eq!(kind("ADD plain.tar /x/"), Ok(Some(ArchiveKind::Tar)));
    assert_eq!(kind("ADD a.bin /x/"), Ok(Some(ArchiveKind::TarGzip)));
    assert_eq!(kind("ADD text.gz /x/"), Ok(None));
    assert_eq!(kind("ADD not-a-tar.tar.gz /x/"), Ok(None));
    assert_eq!(kind("ADD --unpack=false plain.tar /x/"), Ok(None));
    assert_eq!(kind("COPY plain.tar /x/"), Ok(None));
    let err = kind("ADD x.bz2 /x/").expect_err("bzip2");
    assert!(err.contains("--unpack=false"), "{err}");
}

#[test]
fn check_with_a_context_reports_copy_problems_at_their_lines() {
    let ctx = TempContext::new(&[
        (".dockerignore", "*.log\n"),
        ("app.log", "l"),
        ("src/a", "a"),
    ]);
    let df = parsed("FROM scratch\nCOPY src /src/\nCOPY app.log /\nCOPY ../x /\nCOPY nope /\n");
    let report = check::check(
        &df,
        &CheckOptions {
            context: Some(ctx.context()),
            ..CheckOptions::default()
        },
        &|_| None,
    );
    let lines: Vec<usize> = report.errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, [3, 4, 5]);
    let rendered = report.render(None);
    assert!(rendered.contains("Dockerfile:3: error:"), "{rendered}");
}

// ---- Robustness ----

/// xorshift64*: a small deterministic generator, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_input_never_panics_the_parser_or_the_checker() {
    const PIECES: &[&str] = &[
        "FROM ",
        "RUN ",
        "COPY ",
        "ADD ",
        "ENV ",
        "ARG ",
        "EXPOSE ",
        "LABEL ",
        "HEALTHCHECK ",
        "SHELL ",
        "WORKDIR ",
        "USER ",
        "VOLUME ",
        "CMD ",
        "ENTRYPOINT ",
        "STOPSIGNAL ",
        "ONBUILD ",
        "AS ",
        "scratch",
        "busybox",
        "\n",
        "\n",
        "\r\n",
        "\\",
        "\\\n",
        "`",
        "# escape=`\n",
        "# syntax=x\n",
        "#",
        " ",
        "\t",
        "\"",
        "'",
        "$",
        "${",
        "}",
        "${a:-",
        "${a/",
        "${a#",
        ":",
        "=",
        "a=b",
        "[",
        "]",
        "[\"a\"]",
        ",",
        "<<",
        "<<-",
        "EOF",
        "\nEOF\n",
        "--from=",
        "--mount=",
        "type=cache",
        "--chmod=",
        "u+x",
        "--interval=",
        "1s",
        "*",
        "?",
        "/",
        "..",
        "0",
        "99999",
        "/tcp",
        "é",
        "\u{feff}",
        "\0",
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..3000 {
        let text: String = if round % 4 == 0 {
            // Raw bytes, made text the lossy way.
            let bytes: Vec<u8> = (0..rng.below(200)).map(|_| rng.next() as u8).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        } else {
            (0..rng.below(60))
                .map(|_| PIECES[rng.below(PIECES.len())])
                .collect()
        };
        if let Ok(df) = parse(&text, "Dockerfile") {
            let report = check::check(
                &df,
                &CheckOptions::default(),
                &|_| Some(Settings::default()),
            );
            let _ = report.render(Some(&text));
        }
        let _ = IgnoreRules::parse(&text, None);
        let _ = hafen_image_build::dockerfile::shell::expand(
            &text,
            &vec![("a".to_owned(), "x/y*z".to_owned())],
            '\\',
        );
    }
}
