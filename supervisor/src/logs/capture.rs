//! The capture thread: one thread per [`super::LogHub`] owns the read end of every instance's
//! stdout and stderr pipe, reads them with its own epoll (mio), cuts what they give into
//! lines and has each instance's sink write them (sink.rs).
//!
//! Why a thread of its own rather than a reader task per pipe on the runtime: a line read on
//! an async worker and written on the blocking pool cost several wake-ups of several threads
//! (the worker, a second worker it woke, the pool thread); here a wake-up reads every pipe
//! that is ready and writes what it read, once. Why one thread: supervisord and journald do
//! the same with one; a read and a page-cache write take microseconds, and a sink whose disk
//! is slow moves to a writer thread of its own (sink.rs), so one flooding instance never
//! holds up the others. The control socket, cron and the HTTP front run on the runtime and
//! never wait for this thread.
//!
//! When the thread reads each pipe is pace.rs's: at once (armed), every couple of
//! milliseconds while it floods (hot), or on the one-second tick while it is quiet.
//! Back-pressure: a sink whose writer has a full queue is not read (its child blocks in
//! write(2)) until the writer asks for more ([`Capture::resume`]), or until this thread has
//! written the queue itself (the disk was fast again); nothing is ever dropped.
//!
//! Issue 15 (handing the pipes to a successor daemon) finds every read end here, in
//! `Engine::pipes`.
//!
//! Over 500 lines on purpose: the epoll loop, line cutting and pacing share the thread's state;
//! the parts are one loop's steps and read best in order.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use tokio::sync::oneshot;

use super::journal::{self, Journal};
use super::lines::{LineSplitter, Lines, decode};
use super::lock;
use super::pace::{self, Mode, Pace};
use super::sink::{Chunk, Shared, Stream};

/// Size of the one read buffer: a hot pipe's whole content in one read.
const READ_BYTES: usize = 1024 * 1024;
/// A hot pipe is enlarged to this (from Linux's 64 KiB; 1 MiB is the most an unprivileged
/// user may ask for) so that its writer does not wait between two hot ticks: a writer at
/// ~90 MB/s (the benchmark's flood into /dev/null) fills it in ~11 ms, against a 2 ms tick.
/// With 256 KiB the writer waited often enough to lose a fifth of its rate. The pipe shrinks
/// back when it calms down, because a user's pipes share a budget
/// (`/proc/sys/fs/pipe-user-pages-soft`).
pub(super) const HOT_PIPE_BYTES: usize = 1024 * 1024;
const NORMAL_PIPE_BYTES: usize = 64 * 1024;
/// Reads of one pipe while a flush or a note waits for it (a child that keeps writing must
/// not keep the thread on it forever).
const DRAIN_READS: usize = 8;
/// Quiet pipes with data taken from their epoll per call (more take more calls).
const QUIET_EVENTS: usize = 256;

const WAKER: Token = Token(usize::MAX);

/// The handle sinks and the hub hold. The thread ends when the last handle is dropped
/// (pipes hold their sink, so never while a pipe is open).
#[derive(Clone)]
pub(super) struct Capture {
    inner: Arc<Inner>,
    _alive: Arc<Alive>,
}

/// Tells the thread to end when the last [`Capture`] goes.
struct Alive {
    inner: Arc<Inner>,
}

impl Drop for Alive {
    fn drop(&mut self) {
        self.inner.post(Command::Shutdown, true);
    }
}

struct Inner {
    /// The armed set's registry: `attach` registers a pipe from the caller's thread, so a
    /// spawn costs the capture thread no wake-up.
    registry: Registry,
    waker: Waker,
    mailbox: Mutex<Mailbox>,
    next_token: AtomicUsize,
}

#[derive(Default)]
struct Mailbox {
    commands: Vec<Command>,
    /// The thread waits without a deadline: anything posted must wake it.
    sleeping: bool,
}

enum Command {
    Attach(Box<Pipe>),
    /// Write the sink's queue (notes, a forgotten app's close); first read its pipes if notes
    /// are held for them.
    Settle(Arc<Shared>),
    Flush(Arc<Shared>, oneshot::Sender<u64>),
    /// The sink's writer took its queue: read its pipes again.
    Resume(Arc<Shared>),
    /// Give up every pipe, unread data left in it, for the next image (upgrade).
    HandOver(oneshot::Sender<Vec<HandedPipe>>),
    Shutdown,
}

/// A pipe's read end given up for an upgrade: whose it is and the line it was in.
pub struct HandedPipe {
    pub pid: u32,
    pub stream: Stream,
    pub fd: OwnedFd,
    pub partial: Vec<u8>,
}

impl Inner {
    fn post(&self, command: Command, urgent: bool) {
        let wake = {
            let mut mailbox = lock(&self.mailbox);
            mailbox.commands.push(command);
            urgent || mailbox.sleeping
        };
        if wake {
            self.wake();
        }
    }

    fn wake(&self) {
        if let Err(err) = self.waker.wake() {
            tracing::error!(%err, "cannot wake the log capture thread");
        }
    }
}

impl Capture {
    /// Starts the thread.
    pub(super) fn start(journal: Option<Arc<Journal>>) -> io::Result<Capture> {
        let armed = Poll::new()?;
        let quiet = Poll::new()?;
        let waker = Waker::new(armed.registry(), WAKER)?;
        let inner = Arc::new(Inner {
            registry: armed.registry().try_clone()?,
            waker,
            mailbox: Mutex::default(),
            next_token: AtomicUsize::new(0),
        });
        let engine = Engine {
            inner: Arc::clone(&inner),
            armed,
            quiet,
            events: Events::with_capacity(256),
            pipes: HashMap::new(),
            ready: VecDeque::new(),
            hot: Vec::new(),
            dirty: Vec::new(),
            buf: vec![0; READ_BYTES].into_boxed_slice(),
            next_tick: Instant::now() + pace::TICK,
            next_hot: Instant::now(),
            largest_hot_read: 0,
            journal,
        };
        std::thread::Builder::new()
            .name("piku-logs".into())
            .spawn(move || {
                crate::handover::leave_signals_to_main_thread();
                engine.run()
            })?;
        Ok(Capture {
            _alive: Arc::new(Alive {
                inner: Arc::clone(&inner),
            }),
            inner,
        })
    }

    /// Hands a pipe's read end (of process `pid`) to the thread, armed; `partial` is the
    /// start of a line already read from it (handed over by a previous image).
    pub(super) fn attach(
        &self,
        fd: OwnedFd,
        stream: Stream,
        sink: Arc<Shared>,
        pid: u32,
        partial: Vec<u8>,
    ) -> io::Result<()> {
        let flags = OFlag::from_bits_retain(fcntl(&fd, FcntlArg::F_GETFL)?);
        fcntl(&fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        let token = Token(self.inner.next_token.fetch_add(1, Ordering::Relaxed));
        let pipe = Pipe {
            token,
            file: File::from(fd),
            stream,
            sink,
            pid,
            splitter: LineSplitter::resume(partial),
            pace: Pace::new(Instant::now()),
            paused: false,
            queued: false,
        };
        // Registered here, so that a spawn costs the thread no wake-up, and under the mailbox
        // lock: the thread takes its commands after each wait, so when it sees an event for
        // this pipe the Attach is already there to be taken (and reads the pipe once).
        // A pipe that cannot be registered is dropped after the lock is released (dropping
        // a sink may post).
        let fd = pipe.file.as_raw_fd();
        let (registered, wake) = {
            let mut mailbox = lock(&self.inner.mailbox);
            match self
                .inner
                .registry
                .register(&mut SourceFd(&fd), token, Interest::READABLE)
            {
                Ok(()) => {
                    mailbox.commands.push(Command::Attach(Box::new(pipe)));
                    (Ok(()), mailbox.sleeping)
                }
                Err(err) => (Err((err, pipe)), false),
            }
        };
        if wake {
            self.inner.wake();
        }
        registered.map_err(|(err, _unregistered)| err)
    }

    /// A note was queued (or held, `urgent`) for `sink`.
    pub(super) fn noted(&self, sink: Arc<Shared>, urgent: bool) {
        self.inner.post(Command::Settle(sink), urgent);
    }

    pub(super) fn settle(&self, sink: Arc<Shared>) {
        self.inner.post(Command::Settle(sink), true);
    }

    /// Reads `sink`'s pipes, writes (or hands over) its queue, then answers how many chunks
    /// it had queued by then.
    pub(super) fn flush(&self, sink: Arc<Shared>, reply: oneshot::Sender<u64>) {
        self.inner.post(Command::Flush(sink, reply), true);
    }

    pub(super) fn resume(&self, sink: Arc<Shared>) {
        self.inner.post(Command::Resume(sink), true);
    }

    /// Takes every pipe back from the thread, which reads none of them any more: what they
    /// hold stays in them for the next image.
    pub(super) fn hand_over(&self, reply: oneshot::Sender<Vec<HandedPipe>>) {
        self.inner.post(Command::HandOver(reply), true);
    }
}

/// A pipe's read end and what the thread knows about it.
struct Pipe {
    token: Token,
    file: File,
    stream: Stream,
    sink: Arc<Shared>,
    /// The process writing into it.
    pid: u32,
    splitter: LineSplitter,
    pace: Pace,
    /// Not read until its sink's writer asks for more.
    paused: bool,
    /// In `Engine::ready`.
    queued: bool,
}

/// The thread's state. Every field is touched by the thread only.
struct Engine {
    inner: Arc<Inner>,
    /// Armed pipes and the waker: what the thread sleeps on.
    armed: Poll,
    /// Quiet pipes: polled without waiting on each tick.
    quiet: Poll,
    events: Events,
    pipes: HashMap<Token, Pipe>,
    /// Pipes that may have data, read in turn (one read each per round, so a flood cannot
    /// starve the others).
    ready: VecDeque<Token>,
    hot: Vec<Token>,
    /// Sinks that got something since they were last settled.
    dirty: Vec<Arc<Shared>>,
    buf: Box<[u8]>,
    next_tick: Instant,
    next_hot: Instant,
    /// The most one read of a hot pipe gave in this round (sets the next hot tick).
    largest_hot_read: usize,
    journal: Option<Arc<Journal>>,
}

/// What a read of a pipe found.
enum Outcome {
    Data { full: bool },
    Empty,
    Closed,
    Skipped,
}

impl Engine {
    fn run(mut self) {
        loop {
            let mut timeout = self.timeout(Instant::now());
            if timeout.is_none() {
                // Under the mailbox lock, so that a post either is seen here or wakes us.
                let mut mailbox = lock(&self.inner.mailbox);
                if mailbox.commands.is_empty() {
                    mailbox.sleeping = true;
                } else {
                    timeout = Some(Duration::ZERO);
                }
            }
            if let Err(err) = self.armed.poll(&mut self.events, timeout) {
                if err.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(%err, "log capture: epoll failed");
                    std::thread::sleep(Duration::from_millis(100));
                }
                continue;
            }
            let tokens: Vec<Token> = self.events.iter().map(|event| event.token()).collect();
            for token in tokens {
                if token != WAKER {
                    self.mark_ready(token);
                }
            }
            let commands = {
                let mut mailbox = lock(&self.inner.mailbox);
                mailbox.sleeping = false;
                std::mem::take(&mut mailbox.commands)
            };
            for command in commands {
                if !self.handle(command) {
                    return;
                }
            }
            let now = Instant::now();
            let hot_due = now >= self.next_hot && !self.hot.is_empty();
            if hot_due {
                for token in self.hot.clone() {
                    self.mark_ready(token);
                }
            }
            if now >= self.next_tick {
                self.tick(now);
            }
            self.largest_hot_read = 0;
            self.read_round(now);
            if hot_due {
                self.next_hot = now + pace::hot_tick(self.largest_hot_read);
            }
            self.settle_dirty();
            if let Some(journal) = &self.journal
                && journal.behind()
            {
                journal.retry();
            }
        }
    }

    /// How long the next wait may last: not at all while pipes are ready; until the next
    /// hot or one-second tick while there are pipes; a short while when journald is behind;
    /// else until something is posted.
    fn timeout(&self, now: Instant) -> Option<Duration> {
        if !self.ready.is_empty() {
            return Some(Duration::ZERO);
        }
        let mut deadline: Option<Instant> = None;
        let mut earliest = |at: Instant| {
            deadline = Some(deadline.map_or(at, |d| d.min(at)));
        };
        if !self.pipes.is_empty() {
            earliest(self.next_tick);
        }
        if !self.hot.is_empty() {
            earliest(self.next_hot);
        }
        if self.journal.as_ref().is_some_and(|j| j.behind()) {
            earliest(now + journal::RETRY);
        }
        deadline.map(|at| at.saturating_duration_since(now))
    }

    /// Returns false on shutdown.
    fn handle(&mut self, command: Command) -> bool {
        match command {
            Command::Attach(pipe) => {
                let token = pipe.token;
                if self.pipes.is_empty() {
                    self.next_tick = Instant::now() + pace::TICK;
                }
                self.pipes.insert(token, *pipe);
                self.mark_ready(token);
            }
            Command::Settle(sink) => {
                if sink.has_held_notes() {
                    self.drain_pipes_of(&sink);
                    sink.release_notes();
                }
                self.dirty.push(sink);
            }
            Command::Flush(sink, reply) => {
                self.drain_pipes_of(&sink);
                sink.release_notes();
                self.settle(&sink);
                let _ = reply.send(sink.accepted());
            }
            Command::Resume(sink) => {
                self.resume(&sink);
            }
            Command::HandOver(reply) => {
                let tokens: Vec<Token> = self.pipes.keys().copied().collect();
                let mut handed = Vec::new();
                for token in tokens {
                    let Some(mut pipe) = self.pipes.remove(&token) else {
                        continue;
                    };
                    let _ = self.unregister(token, pipe.file.as_raw_fd(), pipe.pace.mode());
                    self.ready.retain(|t| *t != token);
                    handed.push(HandedPipe {
                        pid: pipe.pid,
                        stream: pipe.stream,
                        partial: pipe.splitter.take_partial(),
                        fd: OwnedFd::from(pipe.file),
                    });
                }
                let _ = reply.send(handed);
            }
            Command::Shutdown => return false,
        }
        true
    }

    /// Reads `sink`'s held-back pipes again: its queue was taken (by its writer thread, or
    /// written by this thread).
    fn resume(&mut self, sink: &Arc<Shared>) {
        for token in self.tokens_of(sink) {
            if let Some(pipe) = self.pipes.get_mut(&token) {
                pipe.paused = false;
            }
            self.mark_ready(token);
        }
    }

    /// Writes `sink`'s queue (see [`Shared::settle`]), reading its held-back pipes again
    /// when that frees their sink.
    fn settle(&mut self, sink: &Arc<Shared>) {
        if sink.settle() {
            self.resume(sink);
        }
    }

    fn tokens_of(&self, sink: &Arc<Shared>) -> Vec<Token> {
        self.pipes
            .values()
            .filter(|pipe| Arc::ptr_eq(&pipe.sink, sink))
            .map(|pipe| pipe.token)
            .collect()
    }

    fn mark_ready(&mut self, token: Token) {
        if let Some(pipe) = self.pipes.get_mut(&token)
            && !pipe.queued
        {
            pipe.queued = true;
            self.ready.push_back(token);
        }
    }

    /// The one-second tick: quiet pipes with data are read; armed ones silent for long enough
    /// become quiet.
    fn tick(&mut self, now: Instant) {
        self.next_tick = now + pace::TICK;
        let mut events = Events::with_capacity(QUIET_EVENTS);
        loop {
            match self.quiet.poll(&mut events, Some(Duration::ZERO)) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    tracing::error!(%err, "log capture: epoll of quiet pipes failed");
                    break;
                }
            }
            let found: Vec<Token> = events.iter().map(|event| event.token()).collect();
            for &token in &found {
                self.mark_ready(token);
            }
            if found.len() < QUIET_EVENTS {
                break;
            }
        }
        let quieted: Vec<Token> = self
            .pipes
            .values_mut()
            .filter_map(|pipe| {
                let serving = pipe.sink.serves_requests();
                (pipe.pace.tick(now, serving) == Some(Mode::Quiet)).then_some(pipe.token)
            })
            .collect();
        for token in quieted {
            self.moved(token, Mode::Armed, Mode::Quiet);
        }
    }

    /// One read of every ready pipe, in turn.
    fn read_round(&mut self, now: Instant) {
        for _ in 0..self.ready.len() {
            let Some(token) = self.ready.pop_front() else {
                break;
            };
            let Some(pipe) = self.pipes.get_mut(&token) else {
                continue;
            };
            pipe.queued = false;
            match self.read_once(token) {
                Outcome::Data { full } => {
                    let Some(pipe) = self.pipes.get_mut(&token) else {
                        continue;
                    };
                    let from = pipe.pace.mode();
                    if let Some(to) = pipe.pace.data(now) {
                        self.moved(token, from, to);
                    }
                    if full {
                        self.mark_ready(token);
                    }
                }
                Outcome::Empty => {
                    if let Some(pipe) = self.pipes.get_mut(&token) {
                        let from = pipe.pace.mode();
                        if let Some(to) = pipe.pace.empty() {
                            self.moved(token, from, to);
                        }
                    }
                }
                Outcome::Closed => self.close(token),
                Outcome::Skipped => {}
            }
        }
    }

    /// Reads once from the pipe into its sink's queue.
    fn read_once(&mut self, token: Token) -> Outcome {
        let Some(pipe) = self.pipes.get_mut(&token) else {
            return Outcome::Skipped;
        };
        if pipe.paused {
            return Outcome::Skipped;
        }
        if !pipe.sink.accepts_more() {
            pipe.paused = true;
            return Outcome::Skipped;
        }
        let n = loop {
            match pipe.file.read(&mut self.buf) {
                Ok(n) => break n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Outcome::Empty,
                Err(err) => {
                    tracing::warn!(process = %pipe.sink.process(), %err, "reading a child's output failed; capture of this pipe ends");
                    return Outcome::Closed;
                }
            }
        };
        if n == 0 {
            return Outcome::Closed;
        }
        if pipe.pace.mode() == Mode::Hot {
            self.largest_hot_read = self.largest_hot_read.max(n);
        }
        let mut lines = Lines {
            text: Vec::with_capacity(n + n / 8),
            count: 0,
        };
        pipe.splitter.feed(&self.buf[..n], &mut lines);
        deliver(pipe, lines);
        self.dirty.push(Arc::clone(&pipe.sink));
        Outcome::Data {
            full: n == self.buf.len(),
        }
    }

    /// Reads what `sink`'s pipes hold now (a flush, or notes that must come after it).
    fn drain_pipes_of(&mut self, sink: &Arc<Shared>) {
        for token in self.tokens_of(sink) {
            for _ in 0..DRAIN_READS {
                match self.read_once(token) {
                    Outcome::Data { full: true } => continue,
                    Outcome::Closed => self.close(token),
                    Outcome::Data { full: false } | Outcome::Empty | Outcome::Skipped => {}
                }
                break;
            }
        }
    }

    /// Moves a pipe between the armed set, the hot list and the quiet set.
    fn moved(&mut self, token: Token, from: Mode, to: Mode) {
        let Some(pipe) = self.pipes.get(&token) else {
            return;
        };
        if to == Mode::Hot {
            resize_pipe(&pipe.file, HOT_PIPE_BYTES);
        } else if from == Mode::Hot {
            resize_pipe(&pipe.file, NORMAL_PIPE_BYTES);
        }
        let sink = Arc::clone(&pipe.sink);
        let fd = pipe.file.as_raw_fd();
        if let Err(err) = self
            .unregister(token, fd, from)
            .and_then(|()| self.register(token, fd, to))
        {
            // Unreachable in practice (the fd is ours and open); reading it on every hot
            // tick is the safe fallback.
            tracing::error!(%err, "log capture: cannot move a pipe between poll sets");
            if !self.hot.contains(&token) {
                self.hot.push(token);
            }
        }
        if (from == Mode::Armed) != (to == Mode::Armed) {
            sink.pipe_armed(to == Mode::Armed);
        }
    }

    fn register(&mut self, token: Token, fd: RawFd, mode: Mode) -> io::Result<()> {
        match mode {
            Mode::Armed => {
                self.armed
                    .registry()
                    .register(&mut SourceFd(&fd), token, Interest::READABLE)
            }
            Mode::Quiet => {
                self.quiet
                    .registry()
                    .register(&mut SourceFd(&fd), token, Interest::READABLE)
            }
            Mode::Hot => {
                self.hot.push(token);
                Ok(())
            }
        }
    }

    fn unregister(&mut self, token: Token, fd: RawFd, mode: Mode) -> io::Result<()> {
        match mode {
            Mode::Armed => self.armed.registry().deregister(&mut SourceFd(&fd)),
            Mode::Quiet => self.quiet.registry().deregister(&mut SourceFd(&fd)),
            Mode::Hot => {
                self.hot.retain(|t| *t != token);
                Ok(())
            }
        }
    }

    /// EOF (or a read error): the last unterminated line is delivered and the read end closed.
    fn close(&mut self, token: Token) {
        let Some(mut pipe) = self.pipes.remove(&token) else {
            return;
        };
        let mode = pipe.pace.mode();
        // Closing the fd removes it from epoll anyway; this keeps the hot list right.
        let _ = self.unregister(token, pipe.file.as_raw_fd(), mode);
        let mut lines = Lines::default();
        pipe.splitter.finish(&mut lines);
        deliver(&mut pipe, lines);
        pipe.sink.pipe_closed(mode == Mode::Armed);
        self.dirty.push(Arc::clone(&pipe.sink));
    }

    fn settle_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for (i, sink) in dirty.iter().enumerate() {
            // A sink read from both pipes is listed twice; once is enough.
            if dirty[..i].iter().any(|seen| Arc::ptr_eq(seen, sink)) {
                continue;
            }
            self.settle(sink);
        }
    }
}

/// Queues a read's complete lines in the pipe's sink.
fn deliver(pipe: &mut Pipe, lines: Lines) {
    if lines.count > 0 {
        pipe.sink.queue_read(Chunk {
            stream: pipe.stream,
            text: decode(lines.text),
            lines: lines.count as u64,
        });
    }
}

/// Best effort: a pipe keeps its size when the kernel refuses (the user's pipe budget is
/// spent, or it holds more than the smaller size).
fn resize_pipe(pipe: &File, bytes: usize) {
    let _ = fcntl(pipe, FcntlArg::F_SETPIPE_SZ(bytes as i32));
}
