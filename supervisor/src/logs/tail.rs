//! The last lines of an app's log files, as piku's `logs` prints them before following.
//!
//! piku globs `logs/<app>/<process>.*.log` and prints the last 20 lines of each file, file by
//! file. Here: every `<process>.log` in the app's directory whose process matches the filter
//! (none = all; a kind like "web" = every `web.<n>`; a full name like "web.2" = that file only;
//! never a prefix of another kind such as "webhook"), in name order with instance numbers
//! compared as numbers (web.2 before web.10). When `.log` holds fewer lines than asked (it was
//! just rotated), the rest comes from the end of its newest backup (`.log.old` or `.log.1`).
//!
//! Files are read backwards from the end in blocks, so the cost is the size of the lines
//! returned, not of the file.

use std::cmp::Ordering;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use piku_model::InstanceId;

use super::{LogLine, process_matches, with_suffix};

/// Size of the blocks read backwards from the end of a file.
const BLOCK: u64 = 64 * 1024;

/// The last `lines` lines of each matching log file in `dir` (an app's log directory). A
/// missing directory has no logs.
pub(super) fn tail_dir(dir: &Path, filter: Option<&str>, lines: usize) -> io::Result<Vec<LogLine>> {
    let mut processes = match list_processes(dir) {
        Ok(processes) => processes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    processes.retain(|process| filter.is_none_or(|filter| process_matches(process, filter)));
    processes.sort_by(|a, b| compare_process_names(a, b));

    let mut out = Vec::new();
    for process in processes {
        let current = dir.join(format!("{process}.log"));
        let mut text = last_lines(&current, lines)?;
        if text.len() < lines
            && let Some(backup) = newest_backup(&current)
        {
            let mut older = last_lines(&backup, lines - text.len())?;
            older.append(&mut text);
            text = older;
        }
        out.extend(text.into_iter().map(|line| LogLine {
            process: process.clone(),
            line,
        }));
    }
    Ok(out)
}

/// Process names ("web.1") of the `*.log` files in `dir`.
fn list_processes(dir: &Path) -> io::Result<Vec<String>> {
    let mut processes = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(process) = name.strip_suffix(".log")
            && !process.is_empty()
            && entry.file_type()?.is_file()
        {
            processes.push(process.to_owned());
        }
    }
    Ok(processes)
}

/// Orders instance names by kind, then by number (`web.2` before `web.10`); other names
/// after the kind they would sort as.
fn compare_process_names(a: &str, b: &str) -> Ordering {
    fn key(name: &str) -> (String, Option<u32>) {
        match name.parse::<InstanceId>() {
            Ok(id) => (id.kind, Some(id.index)),
            Err(_) => (name.to_owned(), None),
        }
    }
    key(a).cmp(&key(b)).then_with(|| a.cmp(b))
}

/// `.log.old` or `.log.1`, whichever exists and was written last.
fn newest_backup(current: &Path) -> Option<PathBuf> {
    [".old", ".1"]
        .into_iter()
        .map(|suffix| with_suffix(current, suffix))
        .filter_map(|path| {
            let modified = fs::metadata(&path).and_then(|meta| meta.modified()).ok()?;
            Some((modified, path))
        })
        .max_by_key(|(modified, _)| *modified)
        .map(|(_, path)| path)
}

/// The last `n` lines of the file at `path` (an unterminated last line counts), oldest first,
/// decoded lossily. A missing file has no lines.
pub(super) fn last_lines(path: &Path, n: usize) -> io::Result<Vec<String>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let len = file.metadata()?.len();
    // `tail` holds the bytes from `start` to `len`.
    let mut start = len;
    let mut tail: Vec<u8> = Vec::new();
    loop {
        let body = tail.strip_suffix(b"\n").unwrap_or(&tail);
        let newlines = body.iter().filter(|&&b| b == b'\n').count();
        if newlines >= n || start == 0 {
            break;
        }
        let block = BLOCK.min(start);
        start -= block;
        let mut chunk = vec![0u8; block as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&tail);
        tail = chunk;
    }
    if tail.is_empty() {
        return Ok(Vec::new());
    }
    let body = tail.strip_suffix(b"\n").unwrap_or(&tail);
    let mut lines: Vec<String> = body
        .rsplit(|&b| b == b'\n')
        .take(n)
        .map(|line| String::from_utf8_lossy(line).into_owned())
        .collect();
    lines.reverse();
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbered(range: std::ops::Range<usize>) -> String {
        range.map(|i| format!("line {i}\n")).collect()
    }

    #[test]
    fn last_lines_of_a_big_file_across_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.log");
        fs::write(&path, numbered(0..100_000)).unwrap();
        let lines = last_lines(&path, 20).unwrap();
        let expected: Vec<String> = (99_980..100_000).map(|i| format!("line {i}")).collect();
        assert_eq!(lines, expected);
        // More lines than a block holds.
        assert_eq!(last_lines(&path, 30_000).unwrap().len(), 30_000);
        assert_eq!(last_lines(&path, 30_000).unwrap()[0], "line 70000");
    }

    #[test]
    fn last_lines_small_unterminated_empty_and_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.log");
        fs::write(&path, "a\nb\nc").unwrap();
        assert_eq!(last_lines(&path, 2).unwrap(), vec!["b", "c"]);
        assert_eq!(last_lines(&path, 10).unwrap(), vec!["a", "b", "c"]);
        fs::write(&path, "").unwrap();
        assert!(last_lines(&path, 5).unwrap().is_empty());
        fs::write(&path, "\n\n").unwrap();
        assert_eq!(last_lines(&path, 5).unwrap(), vec!["", ""]);
        assert!(
            last_lines(&dir.path().join("none.log"), 5)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn filters_match_a_kind_or_one_instance_never_a_prefix() {
        use super::super::process_matches;
        assert!(process_matches("web.1", "web"));
        assert!(process_matches("web.12", "web"));
        assert!(process_matches("web.2", "web.2"));
        assert!(!process_matches("web.2", "web.1"));
        assert!(!process_matches("webhook.1", "web"));
        assert!(!process_matches("web.1", "web."));
        assert!(!process_matches("worker.1", "web"));
    }

    #[test]
    fn tail_dir_orders_files_and_fills_from_the_backup() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(d.join("web.10.log"), "w10\n").unwrap();
        fs::write(d.join("web.2.log"), "w2a\nw2b\nw2c\n").unwrap();
        fs::write(d.join("webhook.1.log"), "hook\n").unwrap();
        fs::write(d.join("worker.1.log"), "k\n").unwrap();
        fs::write(d.join("worker.1.log.old"), "o1\no2\no3\n").unwrap();
        fs::write(d.join("notes.txt"), "not a log\n").unwrap();
        fs::write(d.join("cron1.1.log"), "").unwrap();
        fs::write(d.join("cron1.1.log.1"), "c1\nc2\n").unwrap();

        let pairs = |lines: Vec<LogLine>| -> Vec<(String, String)> {
            lines.into_iter().map(|l| (l.process, l.line)).collect()
        };
        let p = |a: &str, b: &str| (a.to_owned(), b.to_owned());

        assert_eq!(
            pairs(tail_dir(d, None, 2).unwrap()),
            vec![
                p("cron1.1", "c1"),
                p("cron1.1", "c2"),
                p("web.2", "w2b"),
                p("web.2", "w2c"),
                p("web.10", "w10"),
                p("webhook.1", "hook"),
                p("worker.1", "o3"),
                p("worker.1", "k"),
            ]
        );
        assert_eq!(
            pairs(tail_dir(d, Some("web"), 1).unwrap()),
            vec![p("web.2", "w2c"), p("web.10", "w10")]
        );
        assert_eq!(
            pairs(tail_dir(d, Some("web.10"), 5).unwrap()),
            vec![p("web.10", "w10")]
        );
        assert!(
            tail_dir(&d.join("no-such-app"), None, 20)
                .unwrap()
                .is_empty()
        );
    }
}
