//! Cutting what a pipe gives into lines.
//!
//! Lines end at '\n' (which is dropped). A line longer than [`MAX_LINE`] is cut into pieces of
//! at most that size — preferably at a UTF-8 character boundary — so one runaway line cannot
//! hold unbounded memory; nothing is discarded. Bytes that are not UTF-8 are replaced lossily
//! (U+FFFD). A last line without '\n' is delivered at EOF.

/// Longest line kept whole (piku/uWSGI logs have no limit; 64 KiB covers stack traces and JSON
/// logs while bounding memory per pipe).
pub(super) const MAX_LINE: usize = 64 * 1024;

/// A partial line that needed more than this is given back to the allocator once it is done.
const SMALL_PARTIAL: usize = 4 * 1024;

/// Complete lines, each ending in '\n', in one buffer: one allocation per pipe read instead
/// of one per line.
#[derive(Default)]
pub(super) struct Lines {
    pub text: Vec<u8>,
    pub count: usize,
}

impl Lines {
    fn push_line(&mut self, line: &[u8]) {
        self.text.extend_from_slice(line);
        self.text.push(b'\n');
        self.count += 1;
    }
}

/// Accumulates bytes and yields complete lines.
#[derive(Default)]
pub(super) struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    /// Appends the complete lines found in `data` to `out`; keeps the rest for later.
    pub(super) fn feed(&mut self, mut data: &[u8], out: &mut Lines) {
        while !data.is_empty() {
            if self.partial.is_empty() {
                // Fast path: the run of complete lines of acceptable length is copied as is.
                let mut run = 0;
                for line in data.split_inclusive(|&b| b == b'\n') {
                    if line.last() != Some(&b'\n') || line.len() > MAX_LINE + 1 {
                        break;
                    }
                    run += line.len();
                    out.count += 1;
                }
                out.text.extend_from_slice(&data[..run]);
                data = &data[run..];
            }
            // An over-long line, or the start/end of a line that spans reads.
            match data.iter().position(|&b| b == b'\n') {
                Some(pos) => {
                    self.push_capped(&data[..pos], out);
                    out.push_line(&self.partial);
                    self.clear_partial();
                    data = &data[pos + 1..];
                }
                None => {
                    self.push_capped(data, out);
                    data = &[];
                }
            }
        }
    }

    /// A splitter that goes on from `partial`, the start of a line another one had read
    /// (handed over across an upgrade).
    pub(super) fn resume(partial: Vec<u8>) -> LineSplitter {
        LineSplitter { partial }
    }

    /// The start of a line read so far, taken out (to be handed over).
    pub(super) fn take_partial(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.partial)
    }

    /// Delivers the last unterminated line, if any (at EOF).
    pub(super) fn finish(&mut self, out: &mut Lines) {
        if !self.partial.is_empty() {
            out.push_line(&self.partial);
            self.clear_partial();
        }
    }

    /// Forgets the partial line, and the memory a very long one needed.
    fn clear_partial(&mut self) {
        self.partial.clear();
        if self.partial.capacity() > SMALL_PARTIAL {
            self.partial = Vec::new();
        }
    }

    /// Adds `data` to the partial line, emitting pieces of `MAX_LINE` bytes whenever it would
    /// grow beyond that.
    fn push_capped(&mut self, mut data: &[u8], out: &mut Lines) {
        while self.partial.len() + data.len() > MAX_LINE {
            let room = MAX_LINE - self.partial.len();
            self.partial.extend_from_slice(&data[..room]);
            data = &data[room..];
            let cut = char_boundary(&self.partial, data);
            out.push_line(&self.partial[..cut]);
            self.partial.drain(..cut);
        }
        self.partial.extend_from_slice(data);
    }
}

/// Where to cut a full `piece` (followed by `next`) so that a UTF-8 character is not split:
/// if `next` starts with a continuation byte, move the cut back to the start of that
/// character (at most 3 bytes). Non-UTF-8 data is cut at the full length.
fn char_boundary(piece: &[u8], next: &[u8]) -> usize {
    let is_continuation = |b: u8| b & 0b1100_0000 == 0b1000_0000;
    if !next.first().is_some_and(|&b| is_continuation(b)) {
        return piece.len();
    }
    for back in 1..=3.min(piece.len()) {
        let at = piece.len() - back;
        if !is_continuation(piece[at]) {
            // `at` is the lead byte of the split character; a piece of only that is pointless.
            return if at == 0 { piece.len() } else { at };
        }
    }
    piece.len()
}

/// The text of `bytes`, with anything that is not UTF-8 replaced by U+FFFD. Checked once per
/// read, not per line; a replacement never swallows a '\n', so the lines stay as they were.
pub(super) fn decode(bytes: Vec<u8>) -> String {
    match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(err) => String::from_utf8_lossy(err.as_bytes()).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<String> {
        let mut splitter = LineSplitter::default();
        let mut out = Lines::default();
        for chunk in chunks {
            splitter.feed(chunk, &mut out);
        }
        splitter.finish(&mut out);
        let text = decode(out.text);
        let lines: Vec<String> = text.split_terminator('\n').map(str::to_owned).collect();
        assert_eq!(
            lines.len(),
            out.count,
            "count matches the lines in {text:?}"
        );
        lines
    }

    #[test]
    fn lines_across_chunks_and_an_unterminated_last_line() {
        assert_eq!(split(&[b"a\nb", b"c\n\nd"]), vec!["a", "bc", "", "d"]);
    }

    #[test]
    fn invalid_utf8_is_replaced_not_dropped() {
        assert_eq!(
            split(&[b"ok \xff\xfe end\n"]),
            vec!["ok \u{fffd}\u{fffd} end"]
        );
    }

    #[test]
    fn long_lines_are_cut_into_pieces_without_losing_bytes() {
        let long = "x".repeat(MAX_LINE * 2 + 10);
        let input = format!("{long}\nshort\n");
        let out = split(&[input.as_bytes()]);
        assert_eq!(out.len(), 4);
        assert!(out[..3].iter().all(|piece| piece.len() <= MAX_LINE));
        assert_eq!(out[..3].concat(), long);
        assert_eq!(out[3], "short");
    }

    #[test]
    fn a_cut_does_not_split_a_utf8_character() {
        // 'é' is 2 bytes; place one across the MAX_LINE boundary.
        let mut text = "a".repeat(MAX_LINE - 1);
        text.push('é');
        text.push_str("tail");
        let out = split(&[text.as_bytes(), b"\n"]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0], "a".repeat(MAX_LINE - 1));
        assert_eq!(out[1], "étail");
    }

    #[test]
    fn one_byte_chunks_give_the_same_lines() {
        let input = b"first line\nsecond\n";
        let chunks: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(split(&chunks), vec!["first line", "second"]);
    }
}
