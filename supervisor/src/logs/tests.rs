//! Tests of the whole log path with real child processes: pipes → capture thread → sinks →
//! files / journal / followers, under rotation, a slow disk and write errors.

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use super::*;

const DEADLINE: Duration = Duration::from_secs(10);

fn spawn_sh(script: &str) -> Child {
    Command::new("sh")
        .args(["-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sh")
}

/// Attaches `child`'s pipes to `sink`, waits for the child and for both pipes to reach EOF.
async fn capture_until_eof(sink: &LogSink, mut child: Child) {
    let pid = child.id().unwrap();
    sink.attach(
        child.stdout.take().unwrap(),
        child.stderr.take().unwrap(),
        pid,
    );
    tokio::time::timeout(DEADLINE, async {
        child.wait().await.unwrap();
        sink.pipes_closed().await;
    })
    .await
    .expect("child output read within the deadline");
}

/// Like `capture_until_eof`, then waits for every line to be written.
async fn capture_to_end(sink: &LogSink, child: Child) {
    capture_until_eof(sink, child).await;
    tokio::time::timeout(DEADLINE, sink.flush())
        .await
        .expect("lines written within the deadline");
}

fn read_lines(path: &Path) -> Vec<String> {
    match fs::read_to_string(path) {
        Ok(text) => text.lines().map(str::to_owned).collect(),
        Err(_) => Vec::new(),
    }
}

fn hub(root: &Path, journal: Option<PathBuf>) -> LogHub {
    LogHub::with_journal(root.to_path_buf(), journal)
}

/// Numbers `first..` one per line, as they appear in `lines` (others are ignored); panics
/// unless they are exactly `first..=last` in order.
fn assert_sequence(lines: &[String], first: u64, last: u64) {
    let numbers: Vec<u64> = lines.iter().filter_map(|l| l.parse().ok()).collect();
    let expected: Vec<u64> = (first..=last).collect();
    assert!(
        numbers == expected,
        "{} numbers, expected {first}..={last}: lines missing, duplicated or reordered",
        numbers.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_of_a_fast_child_lands_once_across_rotations() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path(), None);
    // Enough backups to keep everything, so the test sees every line.
    let rotation = Rotation {
        max_bytes: 64 * 1024,
        backups: 100,
    };
    let sink = hub.sink("app", "worker.1", rotation);
    let total = 300_000;
    let started = Instant::now();
    capture_to_end(&sink, spawn_sh(&format!("exec seq 1 {total}"))).await;
    let elapsed = started.elapsed();
    eprintln!(
        "captured {total} lines in {elapsed:?}: {:.0} lines/s (debug build)",
        total as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(sink.dropped(), 0);

    let current = dir.path().join("app/worker.1.log");
    let mut all = Vec::new();
    for n in (1..=100).rev() {
        let backup = rotate::backup_path(&current, n, 100);
        if let Ok(meta) = fs::metadata(&backup) {
            assert!(meta.len() <= rotation.max_bytes, "{backup:?} too big");
        }
        all.extend(read_lines(&backup));
    }
    all.extend(read_lines(&current));
    let expected: Vec<String> = (1..=total).map(|n| n.to_string()).collect();
    assert!(all == expected, "lines missing, duplicated or reordered");
    assert!(
        rotate::backup_path(&current, 2, 100).exists(),
        "rotated several times"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piku_rotation_keeps_a_contiguous_tail_in_old_and_log() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path(), None);
    let rotation = Rotation {
        max_bytes: 64 * 1024,
        backups: 1,
    };
    let sink = hub.sink("app", "web.1", rotation);
    let total = 100_000;
    capture_to_end(&sink, spawn_sh(&format!("exec seq 1 {total}"))).await;

    let current = dir.path().join("app/web.1.log");
    let old = with_suffix(&current, ".old");
    assert!(fs::metadata(&old).unwrap().len() <= rotation.max_bytes);
    assert!(fs::metadata(&current).unwrap().len() <= rotation.max_bytes);
    let mut kept = read_lines(&old);
    kept.extend(read_lines(&current));
    let first: usize = kept[0].parse().unwrap();
    let expected: Vec<String> = (first..=total).map(|n| n.to_string()).collect();
    assert_eq!(kept, expected);
    // The backup was full: the next line would not have fitted.
    let old_len = fs::metadata(&old).unwrap().len();
    let next_line = read_lines(&current)[0].len() as u64 + 1;
    assert!(old_len + next_line > rotation.max_bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_disk_holds_back_its_own_child_only_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        queue_bytes: 64 * 1024,
        ..LogConfig::default()
    };
    let hub = LogHub::with_config(dir.path().to_path_buf(), config).unwrap();
    let rotation = Rotation {
        max_bytes: 256 * 1024,
        backups: 100,
    };
    let slow = hub.sink("app", "worker.1", rotation);
    // A disk that takes a second per write while the quiet child runs.
    slow.slow_down_writes(Duration::from_secs(1));
    let quiet = hub.sink("app", "web.1", rotation);

    // ≈ 15 MB: at most a few MiB (its pipe, enlarged to 1 MiB, and a read or two) get past
    // the slow disk before it is fast again, so the flood's writer cannot finish before; it
    // says when it has through a file.
    let total = 2_000_000;
    let done = dir.path().join("flood-done");
    let mut flood = spawn_sh(&format!(
        "seq 1 {total}; touch {}; exec sleep 60",
        done.display()
    ));
    let pid = flood.id().unwrap();
    slow.attach(
        flood.stdout.take().unwrap(),
        flood.stderr.take().unwrap(),
        pid,
    );
    let deadline = Instant::now() + DEADLINE;
    while slow.back_pressure().0 == 0 {
        assert!(Instant::now() < deadline, "the flood was never held back");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Meanwhile a quiet child writes a line every 20 ms: none of it waits for the flood.
    let quiet_child = spawn_sh("for i in $(seq 1 10); do echo $i; sleep 0.02; done");
    capture_until_eof(&quiet, quiet_child).await;
    tokio::time::timeout(DEADLINE, quiet.flush()).await.unwrap();
    assert!(
        !done.exists(),
        "the flood's writer was still held back when the quiet child's lines were written"
    );
    assert_sequence(&read_lines(&dir.path().join("app/web.1.log")), 1, 10);
    assert_eq!(quiet.back_pressure(), (0, false));

    slow.slow_down_writes(Duration::ZERO);
    let deadline = Instant::now() + DEADLINE;
    while !done.exists() {
        assert!(Instant::now() < deadline, "the flood never finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The writer is done, but up to a pipe's worth of its lines may still be unread: end it
    // and wait for EOF on both pipes (everything read) before waiting for the writes.
    flood.kill().await.unwrap();
    tokio::time::timeout(DEADLINE, slow.pipes_closed())
        .await
        .expect("the flood's pipes read to the end within the deadline");
    tokio::time::timeout(DEADLINE, slow.flush()).await.unwrap();
    assert_eq!(
        slow.dropped(),
        0,
        "write error: {}",
        slow.last_write_error()
    );
    let current = dir.path().join("app/worker.1.log");
    let mut all = Vec::new();
    for n in (1..=100).rev() {
        all.extend(read_lines(&rotate::backup_path(&current, n, 100)));
    }
    all.extend(read_lines(&current));
    assert_sequence(&all, 1, total);
}

/// Both pipes of a child flood into a sink whose queue one read overfills: the pipe read
/// second in a round finds the queue full and is not read. The disk is fast, so the capture
/// thread writes the queue itself (no writer thread to ask for more), and must then read
/// that pipe again; else its writer blocks for good and the pipe never reaches EOF.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipe_held_back_behind_its_sibling_is_read_again_after_an_inline_write() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        queue_bytes: 4 * 1024,
        ..LogConfig::default()
    };
    let hub = LogHub::with_config(dir.path().to_path_buf(), config).unwrap();
    let rotation = Rotation {
        max_bytes: 64 * 1024 * 1024,
        backups: 1,
    };
    let sink = hub.sink("app", "worker.1", rotation);
    let total = 100_000;
    let child = spawn_sh(&format!("seq -f e%.0f 1 {total} >&2 & seq 1 {total}; wait"));
    capture_to_end(&sink, child).await;
    assert!(
        sink.back_pressure().0 > 0,
        "no pipe was ever held back: the test did not test anything"
    );
    let lines = read_lines(&dir.path().join("app/worker.1.log"));
    assert_sequence(&lines, 1, total);
    let stderr: Vec<u64> = lines
        .iter()
        .filter_map(|line| line.strip_prefix('e')?.parse().ok())
        .collect();
    assert!(
        stderr == (1..=total).collect::<Vec<u64>>(),
        "{} stderr lines, expected 1..={total}",
        stderr.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_note_after_a_quiet_process_exits_comes_after_its_last_words() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path(), None);
    let sink = hub.sink("app", "worker.1", Rotation::PIKU);
    sink.note("started");
    // Silent long enough for its pipe to be checked only on the one-second tick; then it
    // says its last words and signals (through a file) that it did.
    let said = dir.path().join("said");
    let mut child = spawn_sh(&format!(
        "echo hello; sleep 3; echo last words; touch {}; exec sleep 30",
        said.display()
    ));
    let pid = child.id().unwrap();
    sink.attach(
        child.stdout.take().unwrap(),
        child.stderr.take().unwrap(),
        pid,
    );
    let path = dir.path().join("app/worker.1.log");
    let deadline = Instant::now() + DEADLINE;
    while !said.exists() {
        assert!(Instant::now() < deadline, "the child never finished");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // "last words" is in the pipe, almost always still unread (the next tick is up to a
    // second away): the note must wait for it.
    sink.note("exited");
    tokio::time::timeout(DEADLINE, sink.flush()).await.unwrap();
    assert_eq!(
        read_lines(&path),
        ["[piku] started", "hello", "last words", "[piku] exited"]
    );
    child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lines_are_cut_not_lost_and_bad_utf8_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path(), None);
    let sink = hub.sink("app", "web.1", Rotation::PIKU);
    let script = "head -c 150000 /dev/zero | tr '\\0' x; echo; printf 'bad \\377 byte\\n'; printf 'no newline'";
    capture_to_end(&sink, spawn_sh(script)).await;

    let lines = read_lines(&dir.path().join("app/web.1.log"));
    let n = lines.len();
    assert_eq!(lines[..n - 2].concat(), "x".repeat(150_000));
    assert!(lines[..n - 2].iter().all(|l| l.len() <= lines::MAX_LINE));
    assert_eq!(lines[n - 2], "bad \u{fffd} byte");
    assert_eq!(lines[n - 1], "no newline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_line_is_a_journal_datagram_with_app_and_process() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("journal.sock");
    let journald = UnixDatagram::bind(&socket_path).unwrap();
    journald.set_read_timeout(Some(DEADLINE)).unwrap();
    let hub = LogHub::with_journal(dir.path().join("logs"), Some(socket_path));
    let sink = hub.sink("shop", "web.1", Rotation::PIKU);
    capture_to_end(&sink, spawn_sh("echo to-stdout; echo to-stderr >&2")).await;
    sink.note("started pid 1");

    let mut received = Vec::new();
    let mut buf = vec![0u8; 65536];
    for _ in 0..3 {
        let n = journald.recv(&mut buf).unwrap();
        let text = String::from_utf8(buf[..n].to_vec()).unwrap();
        let fields: std::collections::BTreeMap<String, String> = text
            .lines()
            .map(|l| {
                let (k, v) = l.split_once('=').unwrap();
                (k.to_owned(), v.to_owned())
            })
            .collect();
        assert_eq!(fields["SYSLOG_IDENTIFIER"], "shop");
        assert_eq!(fields["PIKU_APP"], "shop");
        assert_eq!(fields["PIKU_PROCESS"], "web.1");
        received.push((fields["MESSAGE"].clone(), fields["PRIORITY"].clone()));
    }
    received.sort();
    assert_eq!(
        received,
        vec![
            ("[piku] started pid 1".to_owned(), "5".to_owned()),
            ("to-stderr".to_owned(), "3".to_owned()),
            ("to-stdout".to_owned(), "6".to_owned()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_that_is_gone_does_not_disturb_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let hub = LogHub::with_journal(dir.path().join("logs"), Some(dir.path().join("no.sock")));
    let sink = hub.sink("shop", "web.1", Rotation::PIKU);
    capture_to_end(&sink, spawn_sh("seq 1 1000")).await;
    assert_eq!(
        read_lines(&dir.path().join("logs/shop/web.1.log")).len(),
        1000
    );
    assert_eq!(sink.dropped(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_get_live_lines_and_notes() {
    let dir = tempfile::tempdir().unwrap();
    let hub = LogHub::with_journal(dir.path().to_path_buf(), None);
    let mut follower = hub.subscribe("app");
    let mut other_app = hub.subscribe("other");
    let sink = hub.sink("app", "web.2", Rotation::PIKU);
    sink.note("starting");
    let mut child = spawn_sh("echo live; echo also live >&2");
    let pid = child.id().unwrap();
    sink.attach(
        child.stdout.take().unwrap(),
        child.stderr.take().unwrap(),
        pid,
    );
    let mut got = Vec::new();
    for _ in 0..3 {
        let line = tokio::time::timeout(DEADLINE, follower.recv())
            .await
            .unwrap()
            .unwrap();
        got.push(line);
    }
    tokio::time::timeout(DEADLINE, child.wait())
        .await
        .unwrap()
        .unwrap();
    let line = |s: &str| LogLine {
        process: "web.2".to_owned(),
        line: s.to_owned(),
    };
    assert_eq!(got[0], line("[piku] starting"));
    got[1..].sort_by(|a, b| a.line.cmp(&b.line));
    assert_eq!(got[1..], [line("also live"), line("live")]);
    assert!(other_app.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_that_does_not_read_never_blocks_the_capture() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("journal.sock");
    // Bound but never read: its buffer fills and sends fail with EAGAIN.
    let _journald = UnixDatagram::bind(&socket_path).unwrap();
    let hub = hub(&dir.path().join("logs"), Some(socket_path));
    let sink = hub.sink("shop", "web.1", Rotation::PIKU);
    capture_to_end(&sink, spawn_sh("seq 1 20000")).await;
    assert_eq!(
        read_lines(&dir.path().join("logs/shop/web.1.log")).len(),
        20_000
    );
    assert_eq!(sink.dropped(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_journald_loses_part_of_its_copy_never_the_file_and_is_told_so() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("journal.sock");
    let journald = UnixDatagram::bind(&socket_path).unwrap();
    journald
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    // journald reads a datagram every 50 µs at most (sleeps make it slower): far slower than
    // the child writes.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let (mut messages, mut buf) = (Vec::new(), vec![0u8; 65536]);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(n) = journald.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    messages.extend(
                        text.lines()
                            .find_map(|l| l.strip_prefix("MESSAGE="))
                            .map(str::to_owned),
                    );
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
            messages
        }
    });
    // A small backlog (≈ 750 lines): journald here takes 10 datagrams per retry
    // (`net.unix.max_dgram_qlen` is 10 without systemd's 512), so a big one would take long.
    let config = LogConfig {
        journal: Some(socket_path),
        journal_backlog_bytes: 64 * 1024,
        ..LogConfig::default()
    };
    let hub = LogHub::with_config(dir.path().join("logs"), config).unwrap();
    let sink = hub.sink("shop", "worker.1", Rotation::PIKU);
    let total = 100_000;
    capture_to_end(&sink, spawn_sh(&format!("exec seq 1 {total}"))).await;
    // The file has every line, whatever journald did.
    let current = dir.path().join("logs/shop/worker.1.log");
    let mut kept = read_lines(&with_suffix(&current, ".old"));
    kept.extend(read_lines(&current));
    let first: u64 = kept[0].parse().unwrap();
    assert_sequence(&kept, first, total);
    assert_eq!(sink.dropped(), 0);
    // Once the backlog has drained journald is told how much it missed.
    let journal = hub.inner.journal.clone().unwrap();
    let deadline = Instant::now() + DEADLINE;
    while journal.behind() {
        assert!(Instant::now() < deadline, "journald never caught up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let messages = reader.join().unwrap();
    // journald's copy: the start of the output in order, the note where the backlog was
    // full, then (if the child was still writing when it had drained) the rest in order.
    let note_at = messages
        .iter()
        .position(|m| m.contains("lines were not sent to journald"))
        .expect("journald is told what it missed");
    let unsent: u64 = messages[note_at]
        .strip_prefix("[piku] ")
        .and_then(|m| m.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    let numbers =
        |lines: &[String]| -> Vec<u64> { lines.iter().map(|m| m.parse().unwrap()).collect() };
    let before = numbers(&messages[..note_at]);
    let after = numbers(&messages[note_at + 1..]);
    assert!(
        before.iter().copied().eq(1..=before.len() as u64),
        "the start is gap-free"
    );
    let resumed = before.len() as u64 + unsent + 1;
    assert!(
        after.iter().copied().eq(resumed..=total),
        "the end is gap-free"
    );
    assert!(unsent > 0 && !before.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_shows_notes_and_output_filtered_by_kind() {
    let dir = tempfile::tempdir().unwrap();
    let hub = LogHub::with_journal(dir.path().to_path_buf(), None);
    for process in ["web.1", "web.2", "webhook.1", "worker.1"] {
        let sink = hub.sink("app", process, Rotation::PIKU);
        capture_to_end(&sink, spawn_sh(&format!("echo out of {process}"))).await;
        sink.note("exited with status 0");
    }
    // No flush: tail writes what is queued first.
    let web = hub.tail("app", Some("web"), 20).await.unwrap();
    let text: Vec<String> = web
        .iter()
        .map(|l| format!("{} | {}", l.process, l.line))
        .collect();
    assert_eq!(
        text,
        vec![
            "web.1 | out of web.1",
            "web.1 | [piku] exited with status 0",
            "web.2 | out of web.2",
            "web.2 | [piku] exited with status 0",
        ]
    );
    assert_eq!(hub.tail("app", None, 1).await.unwrap().len(), 4);
    assert_eq!(
        hub.tail("app", Some("worker.1"), 20).await.unwrap().len(),
        2
    );
    assert!(hub.tail("nope", None, 20).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_is_reused_per_instance_and_forget_closes_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let hub = LogHub::with_journal(dir.path().to_path_buf(), None);
    let first = hub.sink("app", "web.1", Rotation::PIKU);
    first.note("one");
    let again = hub.sink("app", "web.1", Rotation::PIKU);
    again.note("two");
    hub.flush_all().await;
    let path = dir.path().join("app/web.1.log");
    assert_eq!(read_lines(&path), vec!["[piku] one", "[piku] two"]);

    hub.forget_app("app");
    let open_fd_to = |path: &Path| {
        fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|fd| fs::read_link(fd.ok()?.path()).ok())
            .any(|target| target == path)
    };
    let deadline = Instant::now() + DEADLINE;
    while open_fd_to(&path) {
        assert!(
            Instant::now() < deadline,
            "file still open after forget_app"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A late line from a stopping process still lands.
    first.note("late");
    first.flush().await;
    assert_eq!(read_lines(&path).last().unwrap(), "[piku] late");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_that_cannot_be_written_are_counted_then_noted_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the app's log directory should be: every write fails.
    let blocker = dir.path().join("app");
    fs::write(&blocker, "").unwrap();
    let hub = hub(dir.path(), None);
    let sink = hub.sink("app", "web.1", Rotation::PIKU);
    capture_to_end(&sink, spawn_sh("seq 1 10")).await;
    assert_eq!(sink.dropped(), 10);

    fs::remove_file(&blocker).unwrap();
    capture_to_end(&sink, spawn_sh("echo back")).await;
    let lines = read_lines(&dir.path().join("app/web.1.log"));
    assert_eq!(lines.len(), 2);
    assert!(
        lines[0].starts_with("[piku] 10 lines could not be written to this file ("),
        "{lines:?}"
    );
    assert_eq!(lines[1], "back");
    assert_eq!(sink.dropped(), 10);
}

#[test]
fn odd_names_stay_inside_the_logs_directory() {
    assert_eq!(path_component("web.1"), "web.1");
    assert_eq!(path_component("../etc"), "_.._etc");
    assert_eq!(path_component(".."), "_..");
    assert_eq!(path_component(""), "_");
}

#[test]
fn notes_from_a_thread_outside_the_runtime_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let hub = LogHub::with_journal(dir.path().to_path_buf(), None);
    let sink = hub.sink("app", "worker.1", Rotation::PIKU);
    sink.note("from a plain thread");
    let path = dir.path().join("app/worker.1.log");
    let deadline = Instant::now() + DEADLINE;
    while read_lines(&path) != ["[piku] from a plain thread"] {
        assert!(Instant::now() < deadline, "note not written");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_subscribes_after_the_sink_exists_gets_lines() {
    let dir = tempfile::tempdir().unwrap();
    let hub = LogHub::with_journal(dir.path().to_path_buf(), None);
    let sink = hub.sink("app", "worker.1", Rotation::PIKU);
    sink.note("before anyone follows");
    let mut follower = hub.subscribe("app");
    sink.note("after");
    let line = tokio::time::timeout(DEADLINE, follower.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(line.line, "[piku] after");
}
