//! The legacy scp tap: decodes what `scp -O` sends to a remote `scp -t` (an
//! upload) or receives from a remote `scp -f` (a download) into one line per
//! file and directory, e.g. `scp upload etc/app.conf (1520 bytes, mode 0644)`.
//! A command's stdin is only kept up to `[ssh] command_input_limit`, so without
//! these lines a recording of a large upload would name only its first files;
//! a download's bytes are all kept, and its lines say what left the target.
//!
//! The sink protocol (OpenSSH `scp.c`): control lines `C<mode> <size> <name>`
//! (a file, followed by `size` bytes and a NUL), `D<mode> 0 <name>` (enter a
//! directory), `E` (leave it) and `T<mtime> 0 <atime> 0` (times of the next
//! entry), each ending in `\n`; the sink acknowledges each with a NUL byte.
//!
//! Architecture invariant: no IO; bytes in, lines out. The relay keeps
//! recording the raw input within its limit whatever happens here; once the
//! stream stops parsing as scp, decoding stops with one line saying so.

/// Longest control line accepted (a name is at most `NAME_MAX` bytes).
const MAX_LINE: usize = 4096;

/// Which way files go in a legacy scp command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScpDirection {
    /// `scp -t`: the target receives; the control lines come from the engineer.
    Upload,
    /// `scp -f`: the target sends; the control lines come from it.
    Download,
}

impl ScpDirection {
    /// The direction of `command`, when it runs scp's remote end.
    pub fn of(command: &str) -> Option<ScpDirection> {
        let mut words = command.split_whitespace();
        if words.next()?.rsplit('/').next() != Some("scp") {
            return None;
        }
        let flags: Vec<&str> = words
            .take_while(|w| *w != "--")
            .filter_map(|w| w.strip_prefix('-'))
            .filter(|f| f.chars().all(|c| c.is_ascii_alphabetic()))
            .collect();
        let has = |flag: char| flags.iter().any(|f| f.contains(flag));
        match (has('t'), has('f')) {
            (true, false) => Some(ScpDirection::Upload),
            (false, true) => Some(ScpDirection::Download),
            _ => None,
        }
    }
}

/// Decoding state of one transfer's control lines.
pub struct ScpStream {
    direction: ScpDirection,
    /// A control line in the making.
    line: Vec<u8>,
    /// Bytes of file data still to skip.
    skip: u64,
    /// A file's data just ended: a NUL follows, or an error line when the
    /// sender could not read all of it.
    after_data: bool,
    /// Directories entered with `D`, for the paths of what is inside.
    dirs: Vec<String>,
    /// Set once the stream stopped parsing; nothing more is decoded.
    stopped: bool,
}

impl ScpStream {
    pub fn new(direction: ScpDirection) -> Self {
        ScpStream {
            direction,
            line: Vec::new(),
            skip: 0,
            after_data: false,
            dirs: Vec::new(),
            stopped: false,
        }
    }

    /// Which side's bytes [`feed`](Self::feed) expects: the engineer's for an
    /// upload, the target's for a download.
    pub fn direction(&self) -> ScpDirection {
        self.direction
    }

    /// Feeds the sending side's bytes; returns the lines to record.
    pub fn feed(&mut self, mut data: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        while !data.is_empty() && !self.stopped {
            if self.skip > 0 {
                let take = self.skip.min(data.len() as u64);
                self.skip -= take;
                data = &data[take as usize..];
                continue;
            }
            if std::mem::take(&mut self.after_data) && data[0] == 0 {
                data = &data[1..];
                continue;
            }
            let Some(end) = data.iter().position(|&b| b == b'\n') else {
                self.extend_line(data, &mut lines);
                break;
            };
            self.extend_line(&data[..end], &mut lines);
            data = &data[end + 1..];
            if !self.stopped {
                let line = std::mem::take(&mut self.line);
                self.control(&String::from_utf8_lossy(&line), &mut lines);
            }
        }
        lines
    }

    fn extend_line(&mut self, part: &[u8], lines: &mut Vec<String>) {
        if self.line.len() + part.len() > MAX_LINE {
            self.stop("control line too long", lines);
        } else {
            self.line.extend_from_slice(part);
        }
    }

    fn stop(&mut self, why: &str, lines: &mut Vec<String>) {
        self.stopped = true;
        lines.push(format!(
            "scp stream not decodable ({why}); not decoding further"
        ));
    }

    fn control(&mut self, line: &str, lines: &mut Vec<String>) {
        let mut chars = line.chars();
        let kind = chars.next();
        let rest = chars.as_str();
        match kind {
            Some(kind @ ('C' | 'D')) => {
                let mut fields = rest.splitn(3, ' ');
                let (Some(mode), Some(size), Some(name)) =
                    (fields.next(), fields.next(), fields.next())
                else {
                    return self.stop("malformed entry", lines);
                };
                let Ok(size) = size.parse::<u64>() else {
                    return self.stop("malformed size", lines);
                };
                let path = self.path(name);
                if kind == 'C' {
                    let verb = match self.direction {
                        ScpDirection::Upload => "upload",
                        ScpDirection::Download => "download",
                    };
                    lines.push(format!("scp {verb} {path} ({size} bytes, mode {mode})"));
                    self.skip = size;
                    self.after_data = true;
                } else {
                    lines.push(format!("scp mkdir {path} (mode {mode})"));
                    self.dirs.push(name.to_string());
                }
            }
            Some('E') => {
                self.dirs.pop();
            }
            Some('T') => {}
            // The sender reporting a file it could not send.
            Some('\u{1}' | '\u{2}') => lines.push(format!("scp error: {rest}")),
            _ => self.stop("unknown control line", lines),
        }
    }

    fn path(&self, name: &str) -> String {
        let mut path = self.dirs.join("/");
        if !path.is_empty() {
            path.push('/');
        }
        path.push_str(name);
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_direction_comes_from_the_t_or_f_flag() {
        use ScpDirection::*;
        assert_eq!(ScpDirection::of("scp -t /tmp/"), Some(Upload));
        assert_eq!(ScpDirection::of("scp -r -p -t -- /srv"), Some(Upload));
        assert_eq!(ScpDirection::of("/usr/bin/scp -prt /srv"), Some(Upload));
        assert_eq!(ScpDirection::of("scp -f /etc/motd"), Some(Download));
        assert_eq!(ScpDirection::of("scp -v -r -f /etc"), Some(Download));
        assert_eq!(ScpDirection::of("scp -t -f /etc"), None);
        assert_eq!(ScpDirection::of("scp -- -t"), None);
        assert_eq!(ScpDirection::of("myscp -t /tmp"), None);
        assert_eq!(ScpDirection::of("cat > /tmp/scp -t"), None);
    }

    #[test]
    fn files_and_directories_become_lines_whatever_the_chunking() {
        let mut stream = Vec::new();
        stream.extend_from_slice(b"D0755 0 conf\nT1700000000 0 1700000000 0\n");
        stream.extend_from_slice(b"C0644 5 app.conf\nhello\0");
        stream.extend_from_slice(b"E\nC0600 3 key with space\nabc\0");
        stream.extend_from_slice(b"\x01scp: /root/x: Permission denied\n");
        // A file the sender could not read to the end: an error instead of the NUL.
        stream.extend_from_slice(b"C0644 2 gone\nab\x01scp: gone: Input/output error\n");
        stream.extend_from_slice(b"C0644 0 empty\n\0");
        let expected = vec![
            "scp mkdir conf (mode 0755)",
            "scp upload conf/app.conf (5 bytes, mode 0644)",
            "scp upload key with space (3 bytes, mode 0600)",
            "scp error: scp: /root/x: Permission denied",
            "scp upload gone (2 bytes, mode 0644)",
            "scp error: scp: gone: Input/output error",
            "scp upload empty (0 bytes, mode 0644)",
        ];
        for chunk in [1, 3, 7, stream.len()] {
            let mut tap = ScpStream::new(ScpDirection::Upload);
            let lines: Vec<String> = stream.chunks(chunk).flat_map(|c| tap.feed(c)).collect();
            assert_eq!(lines, expected, "chunks of {chunk}");
        }
    }

    #[test]
    fn a_stream_that_is_not_scp_stops_decoding_once() {
        let mut tap = ScpStream::new(ScpDirection::Download);
        let lines = tap.feed(b"GET / HTTP/1.1\nC0644 1 x\n");
        assert_eq!(
            lines,
            vec!["scp stream not decodable (unknown control line); not decoding further"]
        );
        assert!(tap.feed(b"C0644 1 y\nz\0").is_empty());
        let mut tap = ScpStream::new(ScpDirection::Upload);
        let long = vec![b'C'; MAX_LINE + 1];
        assert_eq!(tap.feed(&long).len(), 1);
        let mut tap = ScpStream::new(ScpDirection::Upload);
        assert_eq!(tap.feed(b"C0644 lots x\n").len(), 1);
        // A first byte that is not ASCII (nor UTF-8) is refused, not a panic.
        let mut tap = ScpStream::new(ScpDirection::Upload);
        assert_eq!(tap.feed(b"\xe2\x82C0644 1 x\n").len(), 1);
        let mut tap = ScpStream::new(ScpDirection::Upload);
        assert_eq!(tap.feed("é0644 1 x\n".as_bytes()).len(), 1);
    }
}
