//! `hafen exec`: runs a command in a running container, with its output
//! on our stdout and stderr, optionally our stdin (`-i`) and a terminal
//! (`-t`) whose raw mode and window size follow ours.

use std::io::Write;

use hafen_proto::control::{Body, ErrorCode, ExecRequest, Stream as Output};

use super::terminal::{self, RawMode};
use super::{Client, Error, Wake};

/// Exit code when the command cannot be found (as a shell and docker say).
pub const NOT_FOUND: i32 = 127;
/// Exit code when the command was found but cannot run.
pub const CANNOT_RUN: i32 = 126;

/// `hafen exec`.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// The VM.
    pub vm: String,
    /// The container.
    pub container: String,
    /// The command and its arguments.
    pub args: Vec<String>,
    /// `KEY=VALUE` for the process's environment.
    pub env: Vec<String>,
    /// Run as this user (`USER`, `UID`, `USER:GROUP`, `UID:GID`).
    pub user: Option<String>,
    /// Working directory.
    pub cwd: Option<String>,
    /// Pass our stdin.
    pub interactive: bool,
    /// Allocate a terminal.
    pub tty: bool,
}

/// How an exec ended, before it is an exit code.
#[derive(Debug)]
pub enum Ended {
    /// The process exited with this shell status.
    Exited(i32),
    /// It could not be started: the guest's message.
    NotStarted {
        /// The exit code for it: [`NOT_FOUND`] or [`CANNOT_RUN`].
        code: i32,
        /// Why.
        message: String,
    },
    /// A signal to us ended the session (the process was let go).
    Interrupted(i32),
}

/// The exit code for a command that could not start with `message`.
pub fn start_failure_code(message: &str) -> i32 {
    if message.contains("not found") {
        NOT_FOUND
    } else {
        CANNOT_RUN
    }
}

/// `hafen exec`. Returns the exit code: the command's, 126 or 127 when it
/// cannot run (the reason on stderr), 128+N when signal N ended us.
pub fn exec(opts: &ExecOptions) -> Result<i32, Error> {
    match run(opts)? {
        Ended::Exited(code) | Ended::Interrupted(code) => Ok(code),
        Ended::NotStarted { code, message } => {
            eprintln!("hafen: {message}");
            Ok(code)
        }
    }
}

/// Runs the session to its end.
pub fn run(opts: &ExecOptions) -> Result<Ended, Error> {
    let mut client = Client::connect(&opts.vm)?;
    client.catch_signals(&[libc::SIGWINCH])?;
    let stdin = rustix::stdio::stdin();
    let stdout = rustix::stdio::stdout();
    // The size comes from whichever of our ends is a terminal.
    let size_of = || terminal::window_size(stdin).or_else(|| terminal::window_size(stdout));
    // Raw mode when the keys go to the guest: -i and -t on a terminal.
    let _raw = if opts.tty && opts.interactive && terminal::is_terminal(stdin) {
        Some(RawMode::enter(stdin).map_err(Error::Terminal)?)
    } else {
        None
    };
    let request = ExecRequest {
        container: opts.container.clone(),
        args: opts.args.clone(),
        env: opts.env.clone(),
        user: opts.user.clone(),
        cwd: opts.cwd.clone(),
        tty: opts.tty,
        stdin: opts.interactive,
        size: if opts.tty { size_of() } else { None },
    };
    let id = client.fresh_id();
    client.send(id, Body::Exec(request))?;
    let mut started = false;
    // Our stdin is read only once the process runs, and until its end.
    let mut reading = false;
    let mut buf = vec![0u8; 32 * 1024];
    let mut our_stdout = std::io::stdout().lock();
    let mut our_stderr = std::io::stderr().lock();
    loop {
        let also = if reading { vec![stdin] } else { Vec::new() };
        let wake = match client.wait(&also, None) {
            Ok(w) => w,
            Err(Error::Closed { .. }) if started => {
                return Err(Error::Closed {
                    vm: client.vm.clone(),
                })
            }
            Err(e) => return Err(e),
        };
        match wake {
            Wake::Message(m) if m.id != id => {}
            Wake::Message(m) => match m.body {
                Body::ExecStarted { .. } => {
                    started = true;
                    reading = opts.interactive;
                }
                Body::Output { stream, data } => {
                    let written = match stream {
                        Output::Stdout => our_stdout
                            .write_all(&data)
                            .and_then(|()| our_stdout.flush()),
                        Output::Stderr => our_stderr.write_all(&data),
                    };
                    if let Err(e) = written {
                        client.send(id, Body::Cancel)?;
                        return Err(Error::Output(e));
                    }
                }
                Body::ExecExit { status } => return Ok(Ended::Exited(status.code())),
                Body::Error { code, message } => {
                    if !started && code == ErrorCode::Failed {
                        return Ok(Ended::NotStarted {
                            code: start_failure_code(&message),
                            message,
                        });
                    }
                    // Refused input (the process does not read it) or a
                    // session the guest lost: let go of it.
                    let _ = client.send(id, Body::Cancel);
                    return Err(Error::Refused {
                        vm: client.vm.clone(),
                        code,
                        message,
                    });
                }
                _ => {}
            },
            Wake::Ready => reading = client.forward_input(id, stdin, &mut buf)?,
            Wake::Signal(libc::SIGWINCH) => {
                if let (true, Some((rows, cols))) = (opts.tty && started, size_of()) {
                    client.send(id, Body::Resize { rows, cols })?;
                }
            }
            Wake::Signal(sig) => {
                // SIGINT, SIGTERM or SIGHUP to us: let the process go.
                let _ = client.send(id, Body::Cancel);
                return Ok(Ended::Interrupted(128 + sig));
            }
            Wake::Timeout => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_that_is_not_found_is_127_anything_else_126() {
        assert_eq!(
            start_failure_code(
                "exec /bin/nope: not found in the container (no such file or directory)"
            ),
            NOT_FOUND
        );
        assert_eq!(
            start_failure_code("exec /etc/passwd: permission denied"),
            CANNOT_RUN
        );
        assert_eq!(start_failure_code("no command to run"), CANNOT_RUN);
    }
}
