//! `hafen image build --check` from the command line: a good multi-stage
//! Dockerfile passes; each kind of bad input fails with `Dockerfile:LINE`
//! and what to do; a build names the base image it cannot get.

use std::path::Path;
use std::process::{Command, Output};

struct Context(tempfile::TempDir);

impl Context {
    fn new(dockerfile: &str, files: &[(&str, &str)]) -> Context {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("Dockerfile"), dockerfile).expect("write Dockerfile");
        for (path, content) in files {
            let full = dir.path().join(path);
            std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
            std::fs::write(full, content).expect("write");
        }
        Context(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    /// Runs `hafen image build ARGS .` in the context, with an empty cache
    /// (no store, so no base image is known).
    fn build(&self, args: &[&str]) -> Output {
        let cache = self.path().join(".cache-for-test");
        Command::new(env!("CARGO_BIN_EXE_hafen"))
            .args(["image", "build"])
            .args(args)
            .arg(".")
            .current_dir(self.path())
            .env("HAFEN_CACHE", &cache)
            .output()
            .expect("run hafen")
    }
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const GOOD: &str = "\
# syntax=docker/dockerfile:1
ARG VERSION=1.36
FROM busybox:${VERSION} AS build
WORKDIR /src
COPY src/ ./
RUN --mount=type=cache,target=/root/.cache <<EOF
set -e
cat hello.txt > /out.txt
EOF

FROM scratch
COPY --from=build /out.txt /app/out.txt
COPY --chmod=755 bin/run /app/run
USER 1000:1000
WORKDIR /app
VOLUME /data
EXPOSE 8080/tcp
HEALTHCHECK --interval=30s --timeout=3s CMD [\"/app/run\", \"--health\"]
ENTRYPOINT [\"/app/run\"]
";

#[test]
fn check_passes_a_good_multi_stage_dockerfile() {
    let ctx = Context::new(
        GOOD,
        &[
            ("src/hello.txt", "hello\n"),
            ("bin/run", "#!/bin/sh\n"),
            ("notes.log", "x"),
            (".dockerignore", "*.log\n"),
        ],
    );
    let out = ctx.build(&["--check", "-t", "app:1", "--build-arg", "VERSION=1.36"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("Check complete, no warnings found."),
        "{stdout}"
    );
    // The target's stage alone checks too.
    let out = ctx.build(&["--check", "--target", "build"]);
    assert!(out.status.success(), "{:?}", text(&out));
    // Nothing was written into the cache directory.
    assert!(!ctx.path().join(".cache-for-test").exists());
}

#[test]
fn check_fails_each_kind_of_bad_input_with_its_line() {
    let files: &[(&str, &str)] = &[
        ("app.txt", "a"),
        ("secret.log", "s"),
        (".dockerignore", "*.log\n"),
    ];
    let table: &[(&str, &str)] = &[
        ("FROM busybox\nFORM x\n", "Dockerfile:2: error: unknown instruction FORM (did you mean FROM?)"),
        ("RUN echo\nFROM busybox\n", "Dockerfile:1: error: RUN before the first FROM"),
        ("FROM busybox\nCOPY ../outside /x\n", "Dockerfile:2: error: COPY source \"../outside\" is outside the build context"),
        ("FROM busybox\nCOPY missing.txt /x\n", "Dockerfile:2: error: COPY source \"missing.txt\" not found"),
        ("FROM busybox\n\nCOPY secret.log /x\n", "Dockerfile:3: error: COPY source \"secret.log\" not found in the build context \".\" (secret.log is excluded by ./.dockerignore line 1: *.log)"),
        ("FROM busybox\nCOPY --from=later /a /b\nFROM busybox AS later\n", "Dockerfile:2: error: COPY --from=later: stage later is defined after this one"),
        ("FROM busybox AS a\nFROM busybox AS a\n", "Dockerfile:2: error: stage name \"a\" is already used"),
        ("FROM busybox\nEXPOSE 80 http\n", "Dockerfile:2: error: EXPOSE: \"http\" is not a port number"),
        ("FROM busybox\nHEALTHCHECK --interval=10 CMD true\n", "Dockerfile:2: error: HEALTHCHECK: --interval=10"),
        ("FROM busybox\nSHELL /bin/bash -c\n", "Dockerfile:2: error: SHELL: SHELL must be a JSON array"),
        ("FROM busybox\nRUN --networking=none true\n", "Dockerfile:2: error: RUN: unknown flag --networking"),
        ("FROM busybox\nONBUILD RUN make\n", "Dockerfile:2: error: ONBUILD is not supported"),
        ("FROM busybox\nADD https://example.com/a.tgz /\n", "Dockerfile:2: error: ADD from a URL or Git repository"),
        ("FROM busybox\nRUN <<EOF\nnever ends\n", "Dockerfile:2: error: here-document \"EOF\" has no end"),
        ("", "Dockerfile:1: error: the Dockerfile has no instructions"),
    ];
    for (dockerfile, want) in table {
        let ctx = Context::new(dockerfile, files);
        let out = ctx.build(&["--check"]);
        let (stdout, stderr) = text(&out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{dockerfile:?}\n{stdout}{stderr}"
        );
        assert!(
            stderr.contains(want),
            "{dockerfile:?}: want {want:?} in\n{stderr}"
        );
    }
}

#[test]
fn check_reports_every_bad_line_and_warnings_with_docker_rule_names() {
    let ctx = Context::new(
        "FROM busybox\nCMD echo hi\nCOPY nope /x\nEXPOSE 99999\n",
        &[],
    );
    let out = ctx.build(&["--check"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("Dockerfile:2: warning: JSONArgsRecommended"),
        "{stderr}"
    );
    assert!(stderr.contains("Dockerfile:3: error:"), "{stderr}");
    assert!(stderr.contains("Dockerfile:4: error:"), "{stderr}");
    assert!(
        stderr.contains("Check complete: 2 errors, 1 warning."),
        "{stderr}"
    );
    // Warnings alone pass, unless the Dockerfile asks otherwise.
    let ctx = Context::new("FROM busybox\nCMD echo hi\n", &[]);
    assert!(ctx.build(&["--check"]).status.success());
    let ctx = Context::new("# check=error=true\nFROM busybox\nCMD echo hi\n", &[]);
    assert_eq!(ctx.build(&["--check"]).status.code(), Some(1));
}

#[test]
fn check_validates_the_build_arguments() {
    let ctx = Context::new("FROM busybox AS a\nFROM busybox AS b\n", &[]);
    let cases: &[(&[&str], &str)] = &[
        (
            &["--target", "c"],
            "--target \"c\" names no stage (the stages are: a, b)",
        ),
        (&["--no-cache-filter", "z"], "--target \"z\" names no stage"),
        (&["-t", "Bad:Name"], "-t Bad:Name"),
        (
            &["--platform", "linux/arm64"],
            "--platform linux/arm64 is not supported",
        ),
        (&["--output", "tar:x"], "use oci:DIR"),
        (
            &["--build-arg", "=x"],
            "--build-arg \"=x\" is not KEY=VALUE",
        ),
    ];
    for (args, want) in cases {
        let mut all = vec!["--check"];
        all.extend_from_slice(args);
        let out = ctx.build(&all);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(want),
            "{args:?}: want {want:?} in\n{stderr}"
        );
    }
    // An unused build argument is a warning, not an error.
    let out = ctx.build(&["--check", "--build-arg", "UNUSED=1"]);
    let (stdout, _) = text(&out);
    assert!(out.status.success());
    assert!(stdout.contains("UnconsumedBuildArg"), "{stdout}");
}

#[test]
fn check_takes_a_dockerfile_from_elsewhere_and_its_own_ignore_file() {
    let ctx = Context::new(
        "FROM scratch\n",
        &[
            ("build/app.Dockerfile", "FROM scratch\nCOPY a.txt /\n"),
            ("build/app.Dockerfile.dockerignore", "a.txt\n"),
            ("a.txt", "a"),
        ],
    );
    let out = ctx.build(&["--check", "-f", "build/app.Dockerfile"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("build/app.Dockerfile:2: error:"),
        "{stderr}"
    );
    assert!(
        stderr.contains("app.Dockerfile.dockerignore line 1"),
        "{stderr}"
    );
    let out = ctx.build(&["--check", "-f", "build/none.Dockerfile"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("cannot read"), "{stderr}");
}

#[test]
fn a_build_names_the_base_image_it_cannot_get_and_its_line() {
    // Nothing listens on port 1: the pull fails at once, and nothing leaves
    // this machine.
    let ctx = Context::new("FROM 127.0.0.1:1/nothing:1\nRUN true\n", &[]);
    let started = std::time::Instant::now();
    let out = ctx.build(&["-t", "app:1"]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("Dockerfile:1") && stderr.contains("127.0.0.1:1/nothing:1"),
        "{stderr}"
    );
    assert!(stderr.contains("pulling it failed"), "{stderr}");
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    // A bad Dockerfile is still reported as such first.
    let ctx = Context::new("FROM busybox\nFORM x\n", &[]);
    let (_, stderr) = text(&ctx.build(&[]));
    assert!(
        stderr.contains("Dockerfile:2: unknown instruction FORM"),
        "{stderr}"
    );
}

#[test]
fn check_knows_the_variables_of_a_base_image_in_the_local_store() {
    let ctx = Context::new(
        "FROM base:1\nWORKDIR $GOPATH/src\nCOPY x$NOPE .\n",
        &[("x", "x"), ("rootfs/etc/hostname", "h")],
    );
    let import = Command::new(env!("CARGO_BIN_EXE_hafen"))
        .args([
            "image",
            "import",
            "rootfs",
            "--tag",
            "base:1",
            "--env",
            "GOPATH=/go",
        ])
        .current_dir(ctx.path())
        .env("HAFEN_CACHE", ctx.path().join(".cache-for-test"))
        .output()
        .expect("run hafen image import");
    assert!(import.status.success(), "{:?}", text(&import));
    let out = ctx.build(&["--check"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    // GOPATH comes from the image; NOPE from nowhere.
    assert!(!stdout.contains("GOPATH"), "{stdout}");
    assert!(
        stdout.contains("Dockerfile:3: warning: UndefinedVar: Usage of undefined variable '$NOPE'"),
        "{stdout}"
    );
    // An image the store lacks: nothing is known, and the report says so.
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM other:1\nCOPY x$NOPE .\n",
    )
    .expect("write");
    let (stdout, _) = text(&ctx.build(&["--check"]));
    assert!(!stdout.contains("warning: UndefinedVar"), "{stdout}");
    assert!(stdout.contains("not in the local store"), "{stdout}");
}
