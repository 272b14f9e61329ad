//! The processes of a measurement: where they run (pinned with `taskset`),
//! how the orchestrator spawns them and speaks to them over stdin and
//! stdout, and the tokio runtime each role runs.

use std::{
    ffi::OsStr,
    io::{BufRead, BufReader, Write as _},
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc as std_mpsc,
    time::{Duration, Instant},
};

use tokio::sync::mpsc;

use crate::Error;

/// Where the processes of a run go: with two cores and `taskset`, servers
/// on core 0 and the client on core 1.
#[derive(Clone)]
pub(crate) struct Pinning {
    /// This binary, re-executed in each role.
    exe: PathBuf,
    pub(crate) pin: bool,
    cores: usize,
    taskset: bool,
}

impl Pinning {
    /// Pins when asked (`!--no-pin`) and possible.
    pub(crate) fn detect(requested: bool) -> Result<Self, Error> {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let taskset = Command::new("taskset")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        Ok(Self {
            exe: std::env::current_exe()?,
            pin: requested && cores >= 2 && taskset,
            cores,
            taskset,
        })
    }

    /// `pinned` (where the processes go) when pinned, else why not.
    pub(crate) fn describe(&self, pinned: &str) -> String {
        if self.pin {
            pinned.to_owned()
        } else {
            format!(
                "not pinned ({} core(s), taskset: {})",
                self.cores, self.taskset
            )
        }
    }

    /// `program`, on `core` when pinned.
    pub(crate) fn program(&self, core: usize, program: impl AsRef<OsStr>) -> Command {
        if self.pin {
            let mut command = Command::new("taskset");
            command.arg("-c").arg(core.to_string()).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    /// This binary in `role` (`__server`, `__client`) of `harness`, on `core`.
    pub(crate) fn role(&self, core: usize, harness: &str, role: &str) -> Command {
        let mut command = self.program(core, &self.exe);
        command.arg(harness).arg(role);
        command
    }
}

/// A child process spoken to through stdin and stdout lines; killed on drop.
pub(crate) struct Proc {
    pub(crate) name: String,
    child: Child,
    stdin: ChildStdin,
    lines: std_mpsc::Receiver<String>,
}

impl Proc {
    pub(crate) fn spawn(name: &str, mut command: Command) -> Result<Self, Error> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let lines = line_reader(child.stdout.take().ok_or("no stdout")?);
        Ok(Self {
            name: name.to_owned(),
            child,
            stdin,
            lines,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn send(&mut self, line: &str) -> Result<(), Error> {
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()?;
        Ok(())
    }

    /// The rest of the next line starting with `prefix`; other lines go to
    /// stderr.
    pub(crate) fn expect(&self, prefix: &str, timeout: Duration) -> Result<String, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => match line.strip_prefix(prefix) {
                    Some(rest) => return Ok(rest.trim().to_owned()),
                    None => eprintln!("{}: {line}", self.name),
                },
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!("{}: no {prefix:?} within {timeout:?}", self.name).into());
                }
                Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(format!("{}: exited before {prefix:?}", self.name).into());
                }
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lines from a reader, on a thread, into a channel.
fn line_reader<R: std::io::Read + Send + 'static>(reader: R) -> std_mpsc::Receiver<String> {
    let (tx, rx) = std_mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// A role's stdin lines (its orchestrator's commands), on a thread, into a
/// tokio channel.
pub(crate) fn stdin_commands() -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// A line to the orchestrator, flushed.
pub(crate) fn say(line: &str) -> Result<(), Error> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()?;
    Ok(())
}

/// A role's tokio runtime: `current` (current-thread) or `multi` (the
/// multi-thread scheduler with one worker: what `#[tokio::main]` gives on
/// the one core a server has; its LIFO slot runs a task woken by the
/// running task next).
pub(crate) fn runtime(kind: &str) -> Result<tokio::runtime::Runtime, Error> {
    Ok(match kind {
        "current" => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        "multi" => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?,
        other => return Err(format!("unknown runtime {other}").into()),
    })
}
