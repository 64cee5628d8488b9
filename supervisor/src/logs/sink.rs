//! The log of one instance: the lines its pipes gave and the supervisor's notes about it, in
//! order, on their way to `<process>.log` (rotate.rs), journald (journal.rs) and followers.
//!
//! The capture thread (capture.rs) reads the pipes, queues each read's whole lines here and
//! then writes them itself ([`Shared::settle`]): a write into the page cache takes
//! microseconds, and doing it on the thread that was woken anyway costs no second wake-up.
//! A sink whose write took [`SLOW_WRITE`] or more (the disk is behind: dirty-page throttling,
//! a stalled device) gets a writer thread of its own while it stays slow, so the capture
//! thread keeps serving every other instance. While that writer has `queue_bytes` waiting,
//! the capture thread stops reading this instance's pipes and the child blocks in write(2):
//! back-pressure on the one process that floods, as a pipe gives under supervisord or
//! journald. Nothing is dropped to keep up. What cannot be written at all (an I/O error: a
//! full disk, permissions) is counted ([`LogSink::dropped`]), warned about, and noted in the
//! file once it can be written again; waiting for a full disk would stop every app that logs.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

#[cfg(test)]
use tokio::process::{ChildStderr, ChildStdout};

use super::capture::Capture;
use super::journal::{Journal, JournalEntry, NOTE_PRIORITY};
use super::rotate::RotatingFile;
use super::{LiveLines, LogConfig, LogLine, Rotation, lock};

/// A write that takes this long means the disk is behind: the sink's next batches are
/// written by a thread of its own until one is fast again.
pub(super) const SLOW_WRITE: Duration = Duration::from_millis(20);

/// The longest a flush waits (a hung disk must not keep a blocking-pool thread forever; the
/// callers give up sooner anyway).
const FLUSH_LIMIT: Duration = Duration::from_secs(10);

/// Where a line came from (its journald priority).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
    /// The supervisor's own `[piku] …` lines.
    Note,
}

impl Stream {
    fn priority(self) -> u8 {
        match self {
            Stream::Stdout => 6,
            Stream::Stderr => 3,
            Stream::Note => NOTE_PRIORITY,
        }
    }
}

/// Whole lines from one stream, each ending in '\n'.
pub(super) struct Chunk {
    pub stream: Stream,
    pub text: String,
    pub lines: u64,
}

impl Chunk {
    /// `[piku] <line>` for each line of `msg`; `None` for an empty message.
    fn note(msg: &str) -> Option<Chunk> {
        let mut text = String::new();
        let mut lines = 0;
        for line in msg.lines() {
            text.push_str("[piku] ");
            text.push_str(line);
            text.push('\n');
            lines += 1;
        }
        (lines > 0).then_some(Chunk {
            stream: Stream::Note,
            text,
            lines,
        })
    }

    /// What the chunk costs against the queue's byte budget: its text plus bookkeeping.
    fn cost(&self) -> usize {
        self.text.len() + std::mem::size_of::<Chunk>() + 16
    }

    fn lines(&self) -> impl Iterator<Item = &str> {
        self.text.split_terminator('\n')
    }
}

/// Everything a new sink needs from its hub.
pub(super) struct SinkSetup {
    pub app: String,
    pub process: String,
    pub path: std::path::PathBuf,
    pub rotation: Rotation,
    pub config: LogConfig,
    pub journal: Option<Arc<Journal>>,
    pub live: LiveLines,
    pub capture: Capture,
}

/// The log of one instance. Cheap to clone.
#[derive(Clone)]
pub struct LogSink {
    shared: Arc<Shared>,
}

pub(super) struct Shared {
    app: String,
    process: String,
    config: LogConfig,
    journal: Option<Arc<Journal>>,
    live: LiveLines,
    capture: Capture,
    state: Mutex<State>,
    /// Held by whoever writes: the capture thread, or the sink's writer thread.
    file: Mutex<RotatingFile>,
    /// Signalled (with `state`) after every batch written and every pipe closed, when
    /// `State::waiters` says someone waits.
    progress: Condvar,
    /// The instance serves HTTP requests: its pipes never go quiet (see `pace`).
    serves_requests: AtomicBool,
}

struct State {
    queue: VecDeque<Chunk>,
    /// Sum of the queued chunks' `cost()`.
    cost: usize,
    rotation: Rotation,
    /// Notes that must wait until the capture thread has read what this instance's pipes
    /// already hold (see [`LogSink::note`]).
    held_notes: Vec<Chunk>,
    /// The last write was slow: new batches go to a writer thread.
    slow: bool,
    writer_thread: bool,
    /// The capture thread stopped reading this sink's pipes (the queue is full).
    paused: bool,
    /// Close the file when the queue is next empty (the app was forgotten).
    close_when_idle: bool,
    /// Chunks ever queued / ever written (or given up on): `flush` waits for the latter to
    /// reach the former.
    accepted: u64,
    written: u64,
    /// Pipes the capture thread holds for this sink, and how many of them it does not read
    /// the moment they have data.
    pipes: u32,
    unarmed_pipes: u32,
    /// Lines lost to write errors: in total, and not yet noted in the file.
    lost_total: u64,
    lost_unnoted: u64,
    last_error: String,
    /// Times the capture thread stopped reading this sink's pipes.
    pauses: u64,
    /// Threads in [`Shared::wait_until`]. Signalling `progress` is a futex syscall even when
    /// nobody waits, and a flood writes a batch every couple of milliseconds: with no waiter
    /// the write skips it. (A waiter counts itself and checks the state under the same lock
    /// the writer updates it under, so it either sees the batch or is counted before it.)
    waiters: u32,
    /// Tests: a pause after each batch written, as a slow disk gives.
    #[cfg(test)]
    write_pause: Duration,
}

impl LogSink {
    pub(super) fn new(setup: SinkSetup) -> LogSink {
        LogSink {
            shared: Arc::new(Shared {
                app: setup.app,
                process: setup.process,
                config: setup.config,
                journal: setup.journal,
                live: setup.live,
                capture: setup.capture,
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    cost: 0,
                    rotation: setup.rotation,
                    held_notes: Vec::new(),
                    slow: false,
                    writer_thread: false,
                    paused: false,
                    close_when_idle: false,
                    accepted: 0,
                    written: 0,
                    pipes: 0,
                    unarmed_pipes: 0,
                    lost_total: 0,
                    lost_unnoted: 0,
                    last_error: String::new(),
                    pauses: 0,
                    waiters: 0,
                    #[cfg(test)]
                    write_pause: Duration::ZERO,
                }),
                file: Mutex::new(RotatingFile::new(setup.path)),
                progress: Condvar::new(),
                serves_requests: AtomicBool::new(false),
            }),
        }
    }

    /// Starts capturing a freshly spawned child's pipes: from now on the capture thread owns
    /// their read ends (until EOF). Lines are split on '\n' (a line longer than 64 KiB is cut
    /// into pieces); invalid UTF-8 is replaced lossily. (Instances hand their pipes over as
    /// descriptors, through [`LogSink::adopt`].)
    #[cfg(test)]
    pub fn attach(&self, stdout: ChildStdout, stderr: ChildStderr, pid: u32) {
        for (pipe, stream) in [
            (stdout.into_owned_fd(), Stream::Stdout),
            (stderr.into_owned_fd(), Stream::Stderr),
        ] {
            let attached = pipe.and_then(|fd| self.attach_fd(fd, stream, pid, Vec::new()));
            if let Err(err) = attached {
                tracing::error!(app = %self.shared.app, process = %self.shared.process, %err, "cannot capture a pipe of the process; its output there is lost");
            }
        }
    }

    /// Captures the pipes of a process handed over by the previous image: each read end, and
    /// the start of the line it was in.
    pub fn adopt(
        &self,
        pid: u32,
        stdout: Option<(std::os::fd::OwnedFd, Vec<u8>)>,
        stderr: Option<(std::os::fd::OwnedFd, Vec<u8>)>,
    ) {
        for (pipe, stream) in [(stdout, Stream::Stdout), (stderr, Stream::Stderr)] {
            if let Some((fd, partial)) = pipe
                && let Err(err) = self.attach_fd(fd, stream, pid, partial)
            {
                tracing::error!(app = %self.shared.app, process = %self.shared.process, %err, "cannot capture a pipe of the process; its output there is lost");
            }
        }
    }

    pub(super) fn attach_fd(
        &self,
        fd: std::os::fd::OwnedFd,
        stream: Stream,
        pid: u32,
        partial: Vec<u8>,
    ) -> std::io::Result<()> {
        lock(&self.shared.state).pipes += 1;
        let attached =
            self.shared
                .capture
                .attach(fd, stream, Arc::clone(&self.shared), pid, partial);
        if attached.is_err() {
            lock(&self.shared.state).pipes -= 1;
        }
        attached
    }

    /// A line from the supervisor about this instance ("started pid 123", "exited with status
    /// 1, restarting in 0.4 s"), written as `[piku] <msg>` into the same file and streams.
    ///
    /// A note comes after what the instance's pipes gave before it: when one of them is not
    /// read the moment it has data (a quiet or flooding pipe, see pace.rs) the note waits
    /// until the capture thread has read it, so a crash's last words come before "exited".
    /// Otherwise it is written with the next batch, or on the capture thread's next tick.
    pub fn note(&self, msg: &str) {
        let Some(chunk) = Chunk::note(msg) else {
            return;
        };
        let urgent = {
            let mut state = lock(&self.shared.state);
            if state.unarmed_pipes > 0 || !state.held_notes.is_empty() {
                state.held_notes.push(chunk);
                true
            } else {
                self.shared.enqueue(&mut state, chunk);
                false
            }
        };
        self.shared.capture.noted(Arc::clone(&self.shared), urgent);
    }

    /// Lines that could not be written to the file since the sink was created (an I/O
    /// error such as a full disk). Lines are never dropped for speed: a child that writes
    /// faster than the disk takes its output waits instead.
    pub fn dropped(&self) -> u64 {
        lock(&self.shared.state).lost_total
    }

    pub fn set_rotation(&self, rotation: Rotation) {
        lock(&self.shared.state).rotation = rotation;
    }

    /// The instance serves HTTP requests (it has a port): its pipes stay armed through
    /// silences, so that the first burst of requests after one does not wait in its log writes
    /// for the capture thread's one-second tick.
    pub fn set_serves_requests(&self, serves: bool) {
        self.shared.serves_requests.store(serves, Ordering::Relaxed);
    }

    /// Returns when everything the instance's pipes held at the call (as far as the queue's
    /// budget allows) and every note before it has been written, or after [`FLUSH_LIMIT`].
    pub(super) async fn flush(&self) {
        let shared = Arc::clone(&self.shared);
        // Waiting for another thread is blocking work: on the blocking pool (which also keeps
        // tokio's paused test clock from jumping over callers' timeouts meanwhile).
        let _ = tokio::task::spawn_blocking(move || shared.flush_blocking()).await;
    }

    /// Returns once the capture thread has closed every pipe of the sink (each reached EOF).
    #[cfg(test)]
    pub(super) async fn pipes_closed(&self) {
        let shared = Arc::clone(&self.shared);
        let closed = tokio::task::spawn_blocking(move || {
            shared.wait_until(|state| state.pipes == 0, FLUSH_LIMIT)
        });
        assert!(
            closed.await.unwrap(),
            "pipes still open after {FLUSH_LIMIT:?}"
        );
    }

    /// Tests: every write of this sink takes `pause` longer, as on a slow disk.
    #[cfg(test)]
    pub(super) fn slow_down_writes(&self, pause: Duration) {
        lock(&self.shared.state).write_pause = pause;
    }

    /// Tests: the last write error, if any.
    #[cfg(test)]
    pub(super) fn last_write_error(&self) -> String {
        lock(&self.shared.state).last_error.clone()
    }

    /// Tests: (times its pipes were not read because its writer was behind, whether its
    /// writes go to a writer thread).
    #[cfg(test)]
    pub(super) fn back_pressure(&self) -> (u64, bool) {
        let state = lock(&self.shared.state);
        (state.pauses, state.slow)
    }

    /// After the app is forgotten: close the file once the queue is empty.
    pub(super) fn close_when_idle(&self) {
        lock(&self.shared.state).close_when_idle = true;
        self.shared.capture.settle(Arc::clone(&self.shared));
    }
}

impl Shared {
    pub(super) fn process(&self) -> &str {
        &self.process
    }

    pub(super) fn serves_requests(&self) -> bool {
        self.serves_requests.load(Ordering::Relaxed)
    }

    /// The capture thread queues whole lines read from a pipe.
    pub(super) fn queue_read(&self, chunk: Chunk) {
        let mut state = lock(&self.state);
        self.enqueue(&mut state, chunk);
    }

    /// Whether the capture thread may read more from this sink's pipes; if not, the sink
    /// remembers to have them resumed once its writer has taken the queue.
    pub(super) fn accepts_more(&self) -> bool {
        let mut state = lock(&self.state);
        let room = state.cost < self.config.queue_bytes;
        if !room && !std::mem::replace(&mut state.paused, true) {
            state.pauses += 1;
            tracing::debug!(app = %self.app, process = %self.process, pauses = state.pauses, "log writer behind: the process waits until it catches up");
        }
        room
    }

    pub(super) fn has_held_notes(&self) -> bool {
        !lock(&self.state).held_notes.is_empty()
    }

    /// Queues the held notes, after what the capture thread has just read.
    pub(super) fn release_notes(&self) {
        let mut state = lock(&self.state);
        for note in std::mem::take(&mut state.held_notes) {
            self.enqueue(&mut state, note);
        }
    }

    /// Chunks queued so far (what a flush waits for).
    pub(super) fn accepted(&self) -> u64 {
        lock(&self.state).accepted
    }

    /// A pipe of this sink stopped (`armed`: it was read at once) or started being read the
    /// moment it has data.
    pub(super) fn pipe_armed(&self, armed: bool) {
        let mut state = lock(&self.state);
        if armed {
            state.unarmed_pipes = state.unarmed_pipes.saturating_sub(1);
        } else {
            state.unarmed_pipes += 1;
        }
    }

    /// A pipe of this sink reached EOF (`armed`: whether it was in the armed set).
    pub(super) fn pipe_closed(&self, armed: bool) {
        let waiters = {
            let mut state = lock(&self.state);
            state.pipes = state.pipes.saturating_sub(1);
            if !armed {
                state.unarmed_pipes = state.unarmed_pipes.saturating_sub(1);
            }
            state.waiters
        };
        if waiters > 0 {
            self.progress.notify_all();
        }
    }

    fn enqueue(&self, state: &mut State, chunk: Chunk) {
        if self.followed() {
            self.broadcast(&chunk);
        }
        state.cost += chunk.cost();
        state.accepted += 1;
        state.queue.push_back(chunk);
    }

    /// Whether anyone follows the app (else lines are not even copied for them).
    fn followed(&self) -> bool {
        self.live
            .get()
            .is_some_and(|live| live.receiver_count() > 0)
    }

    fn broadcast(&self, chunk: &Chunk) {
        let Some(live) = self.live.get() else { return };
        for line in chunk.lines() {
            // Err only means every follower is gone.
            let _ = live.send(LogLine {
                process: self.process.clone(),
                line: line.to_owned(),
            });
        }
    }

    /// Called by the capture thread after it queued something (or was asked to): writes the
    /// queue now, or leaves it to the sink's writer thread when there is one or the disk is
    /// slow.
    ///
    /// Returns true when the capture thread had stopped reading this sink's pipes and must
    /// read them again: it took the queue itself, so no writer thread will ask
    /// ([`Capture::resume`]). (A pipe is held back behind its sibling whose read in the same
    /// round filled the queue, or after a slow spell whose writer thread has ended.)
    #[must_use = "held-back pipes must be read again"]
    pub(super) fn settle(self: &Arc<Self>) -> bool {
        let (batch, rotation, resume) = {
            let mut state = lock(&self.state);
            if state.writer_thread {
                return false;
            }
            if state.queue.is_empty() {
                if state.close_when_idle {
                    drop(state);
                    lock(&self.file).close();
                }
                return false;
            }
            if state.slow {
                state.writer_thread = true;
                drop(state);
                self.start_writer_thread();
                return false;
            }
            state.cost = 0;
            (
                std::mem::take(&mut state.queue),
                state.rotation,
                std::mem::take(&mut state.paused),
            )
        };
        let took = self.write(batch, rotation);
        if took >= SLOW_WRITE {
            tracing::debug!(app = %self.app, process = %self.process, ?took, "slow log write: this log gets a writer thread");
            lock(&self.state).slow = true;
        }
        resume
    }

    fn start_writer_thread(self: &Arc<Self>) {
        let shared = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("piku-log-writer".into())
            .spawn(move || {
                crate::handover::leave_signals_to_main_thread();
                shared.run_writer_thread()
            });
        if let Err(err) = spawned {
            // Then the capture thread writes, slowly: still nothing lost.
            tracing::warn!(%err, "cannot start a log writer thread");
            let mut state = lock(&self.state);
            state.writer_thread = false;
            state.slow = false;
        }
    }

    /// The writer of a slow sink: takes the whole queue, writes it, until the queue is empty.
    fn run_writer_thread(self: Arc<Self>) {
        loop {
            let (batch, rotation, resume) = {
                let mut state = lock(&self.state);
                if state.queue.is_empty() {
                    state.writer_thread = false;
                    let close = state.close_when_idle;
                    drop(state);
                    if close {
                        lock(&self.file).close();
                    }
                    return;
                }
                state.cost = 0;
                (
                    std::mem::take(&mut state.queue),
                    state.rotation,
                    std::mem::take(&mut state.paused),
                )
            };
            // The queue is empty again: the capture thread may read the next `queue_bytes`
            // while this batch is written.
            if resume {
                self.capture.resume(Arc::clone(&self));
            }
            if self.write(batch, rotation) < SLOW_WRITE {
                lock(&self.state).slow = false;
            }
        }
    }

    /// Writes `batch` to the file (then journald); returns how long it took.
    fn write(&self, mut batch: VecDeque<Chunk>, rotation: Rotation) -> Duration {
        let started = Instant::now();
        let taken = batch.len() as u64;
        let mut file = lock(&self.file);
        let (unnoted, last_error) = {
            let mut state = lock(&self.state);
            (
                std::mem::take(&mut state.lost_unnoted),
                state.last_error.clone(),
            )
        };
        let gap_note = if unnoted > 0 {
            Chunk::note(&format!(
                "{unnoted} lines could not be written to this file ({last_error})"
            ))
        } else {
            None
        };
        let texts = gap_note
            .iter()
            .chain(batch.iter())
            .map(|chunk| chunk.text.as_bytes());
        let failure = file.write_chunks(texts, rotation).err();
        if let Some(journal) = &self.journal {
            let mut scratch = Vec::new();
            for chunk in gap_note.iter().chain(batch.iter()) {
                let template = JournalEntry {
                    app: &self.app,
                    process: &self.process,
                    priority: chunk.stream.priority(),
                    message: &[],
                };
                journal.send_lines(&template, chunk.lines(), &mut scratch);
            }
        }
        #[cfg(test)]
        std::thread::sleep(lock(&self.state).write_pause);
        drop(file);
        let waiters = {
            let mut state = lock(&self.state);
            state.written += taken;
            if let Some(err) = failure {
                let lost: u64 = batch
                    .iter()
                    .filter(|chunk| chunk.stream != Stream::Note)
                    .map(|chunk| chunk.lines)
                    .sum();
                if state.lost_total == 0 || state.last_error != err.to_string() {
                    tracing::warn!(app = %self.app, process = %self.process, %err, "log lines could not be written");
                }
                state.lost_total += lost;
                state.lost_unnoted += unnoted + lost;
                state.last_error = err.to_string();
            }
            state.waiters
        };
        batch.clear();
        if waiters > 0 {
            self.progress.notify_all();
        }
        started.elapsed()
    }

    fn flush_blocking(self: Arc<Self>) {
        let (reply, replied) = tokio::sync::oneshot::channel();
        self.capture.flush(Arc::clone(&self), reply);
        // Without an answer (the capture thread is gone) what is queued is still written by
        // whoever writes it.
        let target = replied
            .blocking_recv()
            .unwrap_or_else(|_| lock(&self.state).accepted);
        self.wait_until(|state| state.written >= target, FLUSH_LIMIT);
    }

    /// Waits until `done` holds for the state (checked after each write and pipe close), at
    /// most `limit`; returns whether it does.
    fn wait_until(&self, done: impl Fn(&State) -> bool, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut state = lock(&self.state);
        state.waiters += 1;
        let met = loop {
            if done(&state) {
                break true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break false;
            }
            state = self
                .progress
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        };
        state.waiters -= 1;
        met
    }
}
