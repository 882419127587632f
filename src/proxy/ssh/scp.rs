//! The legacy scp tap: decodes what `scp -O` (and rsync-less scripts using
//! `scp -t`) sends to the remote sink into one line per file and directory,
//! e.g. `scp upload etc/app.conf (1520 bytes, mode 0644)`. A command's stdin is
//! only kept up to `[ssh] command_input_limit`, so without these lines a
//! recording of a large upload would name only its first files.
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

/// Whether `command` runs scp as the receiving end of an upload (`scp -t`).
pub fn is_upload_sink(command: &str) -> bool {
    let mut words = command.split_whitespace();
    let Some(program) = words.next() else {
        return false;
    };
    if program.rsplit('/').next() != Some("scp") {
        return false;
    }
    words.take_while(|w| *w != "--").any(|w| {
        w.starts_with('-') && w[1..].chars().all(|c| c.is_ascii_alphabetic()) && w.contains('t')
    })
}

/// Decoding state of one upload.
#[derive(Default)]
pub struct ScpUpload {
    /// A control line in the making.
    line: Vec<u8>,
    /// Bytes of file data (and its trailing NUL) still to skip.
    skip: u64,
    /// Directories entered with `D`, for the paths of what is inside.
    dirs: Vec<String>,
    /// Set once the stream stopped parsing; nothing more is decoded.
    stopped: bool,
}

impl ScpUpload {
    /// Feeds client → target bytes; returns the lines to record.
    pub fn input(&mut self, mut data: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        while !data.is_empty() && !self.stopped {
            if self.skip > 0 {
                let take = self.skip.min(data.len() as u64);
                self.skip -= take;
                data = &data[take as usize..];
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
        let (kind, rest) = line.split_at(line.len().min(1));
        match kind {
            "C" | "D" => {
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
                if kind == "C" {
                    lines.push(format!("scp upload {path} ({size} bytes, mode {mode})"));
                    // The data, then the NUL that ends it.
                    self.skip = size.saturating_add(1);
                } else {
                    lines.push(format!("scp mkdir {path} (mode {mode})"));
                    self.dirs.push(name.to_string());
                }
            }
            "E" => {
                self.dirs.pop();
            }
            "T" => {}
            // The source reporting a file it could not send.
            "\u{1}" | "\u{2}" => lines.push(format!("scp error from the client: {rest}")),
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
    fn the_sink_is_recognised_by_its_t_flag() {
        assert!(is_upload_sink("scp -t /tmp/"));
        assert!(is_upload_sink("scp -r -p -t -- /srv"));
        assert!(is_upload_sink("/usr/bin/scp -prt /srv"));
        assert!(!is_upload_sink("scp -f /etc/motd"));
        assert!(!is_upload_sink("scp -- -t"));
        assert!(!is_upload_sink("myscp -t /tmp"));
        assert!(!is_upload_sink("cat > /tmp/scp -t"));
    }

    #[test]
    fn files_and_directories_become_lines_whatever_the_chunking() {
        let mut stream = Vec::new();
        stream.extend_from_slice(b"D0755 0 conf\nT1700000000 0 1700000000 0\n");
        stream.extend_from_slice(b"C0644 5 app.conf\nhello\0");
        stream.extend_from_slice(b"E\nC0600 3 key with space\nabc\0");
        stream.extend_from_slice(b"\x01scp: /root/x: Permission denied\n");
        let expected = vec![
            "scp mkdir conf (mode 0755)",
            "scp upload conf/app.conf (5 bytes, mode 0644)",
            "scp upload key with space (3 bytes, mode 0600)",
            "scp error from the client: scp: /root/x: Permission denied",
        ];
        for chunk in [1, 3, 7, stream.len()] {
            let mut tap = ScpUpload::default();
            let lines: Vec<String> = stream.chunks(chunk).flat_map(|c| tap.input(c)).collect();
            assert_eq!(lines, expected, "chunks of {chunk}");
        }
    }

    #[test]
    fn a_stream_that_is_not_scp_stops_decoding_once() {
        let mut tap = ScpUpload::default();
        let lines = tap.input(b"GET / HTTP/1.1\nC0644 1 x\n");
        assert_eq!(
            lines,
            vec!["scp stream not decodable (unknown control line); not decoding further"]
        );
        assert!(tap.input(b"C0644 1 y\nz\0").is_empty());
        let mut tap = ScpUpload::default();
        let long = vec![b'C'; MAX_LINE + 1];
        assert_eq!(tap.input(&long).len(), 1);
        let mut tap = ScpUpload::default();
        assert_eq!(tap.input(b"C0644 lots x\n").len(), 1);
    }
}
