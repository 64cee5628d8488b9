//! The log of one instance: a bounded in-memory queue between the pipe readers and one writer.
//!
//! Readers (async tasks) only lock the queue for a moment to push what one pipe read gave
//! (a chunk of whole lines); they never touch the disk. When the queue's byte budget is
//! spent, new chunks are dropped and their lines counted, and a `[piku] N lines dropped
//! (writer could not keep up)` line is written exactly where the gap is, once the writer has
//! caught up.
//!
//! The writer is a `spawn_blocking` task started when a chunk arrives at an idle sink and
//! ended when the queue is empty again; it takes the whole queue per batch. Why not a
//! dedicated thread per sink: most sinks are idle most of the time (a daemon supervises
//! dozens of instances) and would each pin a thread; the blocking pool reuses threads across
//! bursts and a busy sink keeps exactly one. Why not tokio::fs: it is spawn_blocking per call
//! anyway, and a batch per hop is cheaper. Either way the async worker threads never call
//! write().

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::process::{ChildStderr, ChildStdout};
use tokio::sync::Notify;

use super::journal::{Journal, JournalEntry};
use super::rotate::RotatingFile;
use super::{LiveLines, LogConfig, LogLine, Rotation, capture, lock};

/// Where a line came from (its journald priority).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stream {
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
            Stream::Note => 5,
        }
    }
}

/// Whole lines from one stream, each ending in '\n'.
struct Chunk {
    stream: Stream,
    text: String,
    lines: u64,
}

impl Chunk {
    /// What the chunk costs against the queue's byte budget: its text plus bookkeeping.
    fn cost(&self) -> usize {
        self.text.len() + std::mem::size_of::<Chunk>() + 16
    }

    fn lines(&self) -> impl Iterator<Item = &str> {
        self.text.split_terminator('\n')
    }
}

fn dropped_note(dropped: u64) -> Chunk {
    Chunk {
        stream: Stream::Note,
        text: format!("[piku] {dropped} lines dropped (writer could not keep up)\n"),
        lines: 1,
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
}

/// The log of one instance. Cheap to clone.
#[derive(Clone)]
pub struct LogSink {
    shared: Arc<Shared>,
}

struct Shared {
    app: String,
    process: String,
    config: LogConfig,
    journal: Option<Arc<Journal>>,
    live: LiveLines,
    queue: Mutex<Queue>,
    /// Held by the (single) running writer for the whole drain.
    file: Mutex<RotatingFile>,
    /// Woken after every batch written, for `flush`.
    written_notify: Notify,
    drop_warning: Mutex<DropWarning>,
}

const DROP_WARNING_EVERY: Duration = Duration::from_secs(10);

#[derive(Default)]
struct DropWarning {
    last: Option<Instant>,
    /// Dropped lines not yet in a warning.
    unreported: u64,
}

struct Queue {
    chunks: VecDeque<Chunk>,
    /// Sum of the queued chunks' `cost()`.
    cost: usize,
    rotation: Rotation,
    writer_running: bool,
    /// Close the file when the queue is next empty (the app was forgotten).
    close_when_idle: bool,
    /// Chunks ever accepted / ever written (or given up on): `flush` waits for the latter to
    /// reach the former's value at call time.
    accepted: u64,
    written: u64,
    /// Lines, not chunks.
    dropped_total: u64,
    /// Lines dropped since the last `[piku] N lines dropped` note.
    dropped_unreported: u64,
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
                queue: Mutex::new(Queue {
                    chunks: VecDeque::new(),
                    cost: 0,
                    rotation: setup.rotation,
                    writer_running: false,
                    close_when_idle: false,
                    accepted: 0,
                    written: 0,
                    dropped_total: 0,
                    dropped_unreported: 0,
                }),
                file: Mutex::new(RotatingFile::new(setup.path)),
                written_notify: Notify::new(),
                drop_warning: Mutex::default(),
            }),
        }
    }

    /// Starts capturing a freshly spawned child's pipes (tasks end at EOF). Lines are split on
    /// '\n' (a line longer than 64 KiB is cut into pieces); invalid UTF-8 is replaced lossily.
    /// Must be called inside the tokio runtime (the pipes belong to it anyway).
    pub fn attach(&self, stdout: ChildStdout, stderr: ChildStderr) {
        self.spawn_reader(stdout, Stream::Stdout);
        self.spawn_reader(stderr, Stream::Stderr);
    }

    pub(super) fn spawn_reader<R>(&self, pipe: R, stream: Stream) -> tokio::task::JoinHandle<()>
    where
        R: tokio::io::AsyncRead + Unpin + Send + 'static,
    {
        let sink = self.clone();
        tokio::spawn(async move {
            capture::read_lines(pipe, |text, lines| {
                sink.push(Chunk {
                    stream,
                    text,
                    lines: lines as u64,
                });
            })
            .await;
        })
    }

    /// A line from the supervisor about this instance ("started pid 123", "exited with status
    /// 1, restarting in 0.4 s"), written as `[piku] <msg>` into the same file and stream.
    /// Notes are never dropped (they are few and they explain what happened).
    pub fn note(&self, msg: &str) {
        let mut text = String::new();
        let mut lines = 0;
        for line in msg.lines() {
            text.push_str("[piku] ");
            text.push_str(line);
            text.push('\n');
            lines += 1;
        }
        if lines > 0 {
            self.push(Chunk {
                stream: Stream::Note,
                text,
                lines,
            });
        }
    }

    /// Lines dropped since the sink was created because the writer could not keep up (or the
    /// file could not be written).
    pub fn dropped(&self) -> u64 {
        lock(&self.shared.queue).dropped_total
    }

    pub fn set_rotation(&self, rotation: Rotation) {
        lock(&self.shared.queue).rotation = rotation;
    }

    /// Returns when every line accepted before the call has been written.
    pub(super) async fn flush(&self) {
        let target = lock(&self.shared.queue).accepted;
        loop {
            let notified = self.shared.written_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if lock(&self.shared.queue).written >= target {
                return;
            }
            notified.await;
        }
    }

    /// Blocks the writer while the guard lives: a disk that does not answer.
    #[cfg(test)]
    pub(super) fn hold_writer(&self) -> std::sync::MutexGuard<'_, RotatingFile> {
        lock(&self.shared.file)
    }

    /// After the app is forgotten: close the file once the queue is empty.
    pub(super) fn close_when_idle(&self) {
        let start = {
            let mut queue = lock(&self.shared.queue);
            queue.close_when_idle = true;
            !std::mem::replace(&mut queue.writer_running, true)
        };
        if start {
            self.start_writer();
        }
    }

    /// Queues `chunk` without waiting, or drops and counts it when the budget is spent (an
    /// empty queue always takes a chunk, so a single big read is never refused).
    fn push(&self, chunk: Chunk) {
        let shared = &self.shared;
        let follow = shared.followed();
        let mut noted_gap = 0;
        let start = {
            let mut queue = lock(&shared.queue);
            let fits = chunk.stream == Stream::Note
                || queue.chunks.is_empty()
                || queue.cost + chunk.cost() <= shared.config.queue_bytes;
            if fits {
                // The first chunk accepted after a gap carries the gap's note in front of it
                // (notes bypass the budget, so this also places the note exactly before a
                // `[piku]` note that arrives while the queue is full).
                let dropped = std::mem::take(&mut queue.dropped_unreported);
                if dropped > 0 {
                    shared.enqueue(&mut queue, dropped_note(dropped), follow);
                    noted_gap = dropped;
                }
                shared.enqueue(&mut queue, chunk, follow);
            } else {
                queue.dropped_total += chunk.lines;
                queue.dropped_unreported += chunk.lines;
            }
            fits && !std::mem::replace(&mut queue.writer_running, true)
        };
        if noted_gap > 0 {
            shared.warn_dropped(noted_gap);
        }
        if start {
            self.start_writer();
        }
    }

    /// Runs `drain` off the async worker threads. Outside a runtime (a caller on a plain
    /// thread) a short-lived thread does the same job, or the caller itself if none can be had.
    fn start_writer(&self) {
        let shared = Arc::clone(&self.shared);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn_blocking(move || shared.drain());
            return;
        }
        let for_thread = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("piku-log-writer".into())
            .spawn(move || for_thread.drain());
        if spawned.is_err() {
            shared.drain();
        }
    }
}

impl Shared {
    fn enqueue(&self, queue: &mut Queue, chunk: Chunk, follow: bool) {
        if follow {
            self.broadcast(&chunk);
        }
        queue.cost += chunk.cost();
        queue.accepted += 1;
        queue.chunks.push_back(chunk);
    }

    /// The daemon's own log says it too, at most every `DROP_WARNING_EVERY` per sink (a
    /// child that outruns the disk for minutes would otherwise flood it).
    fn warn_dropped(&self, dropped: u64) {
        let mut warning = lock(&self.drop_warning);
        warning.unreported += dropped;
        if warning
            .last
            .is_none_or(|last| last.elapsed() >= DROP_WARNING_EVERY)
        {
            tracing::warn!(app = %self.app, process = %self.process, dropped = warning.unreported, "log lines dropped: the writer could not keep up");
            warning.unreported = 0;
            warning.last = Some(Instant::now());
        }
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

    /// The writer: takes the whole queue, writes it, repeats until the queue is empty.
    fn drain(&self) {
        let mut file = lock(&self.file);
        let mut batch: VecDeque<Chunk> = VecDeque::new();
        let mut scratch = Vec::new();
        loop {
            let (rotation, dropped) = {
                let mut queue = lock(&self.queue);
                if queue.chunks.is_empty() {
                    queue.writer_running = false;
                    // A burst may have grown the queue to thousands of slots; an idle sink
                    // should not keep them.
                    queue.chunks.shrink_to(16);
                    file.release_buffer();
                    if queue.close_when_idle {
                        file.close();
                    }
                    break;
                }
                std::mem::swap(&mut queue.chunks, &mut batch);
                queue.cost = 0;
                (
                    queue.rotation,
                    std::mem::take(&mut queue.dropped_unreported),
                )
            };
            let taken = batch.len() as u64;
            // Lines dropped after the last accepted chunk (a gap followed by an accepted chunk
            // is noted in `push`): the gap is right after this batch.
            if dropped > 0 {
                self.warn_dropped(dropped);
                let note = dropped_note(dropped);
                if self.followed() {
                    self.broadcast(&note);
                }
                batch.push_back(note);
            }
            let texts = batch.iter().map(|chunk| chunk.text.as_bytes());
            let lost = match file.write_chunks(texts, rotation) {
                Ok(()) => 0,
                Err(err) => {
                    tracing::warn!(app = %self.app, process = %self.process, %err, "log lines could not be written");
                    batch.iter().map(|chunk| chunk.lines).sum()
                }
            };
            if let Some(journal) = &self.journal {
                for chunk in &batch {
                    for line in chunk.lines() {
                        let entry = JournalEntry {
                            app: &self.app,
                            process: &self.process,
                            priority: chunk.stream.priority(),
                            message: line.as_bytes(),
                        };
                        journal.send(&entry, &mut scratch);
                    }
                }
            }
            batch.clear();
            {
                let mut queue = lock(&self.queue);
                queue.written += taken;
                queue.dropped_total += lost;
            }
            self.written_notify.notify_waiters();
            if !self.config.writer_pause.is_zero() {
                std::thread::sleep(self.config.writer_pause);
            }
        }
        drop(file);
        self.written_notify.notify_waiters();
    }
}
