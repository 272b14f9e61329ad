//! Decoding a response body: HTTP/1.1 chunked transfer coding, and the SSE
//! stream inside it split into lines.

/// A minimal decoder of HTTP/1.1 chunked transfer coding.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Chunked {
    #[default]
    Size,
    SizeDigits(usize),
    /// Skipping a chunk extension or the CR before the LF of the size line.
    SizeLine(usize),
    Data(usize),
    DataCr,
    DataLf,
    Done,
}

impl Chunked {
    /// Decodes `input`, passing data to `out`; true once the last chunk came.
    pub(crate) fn feed(&mut self, mut input: &[u8], out: &mut impl FnMut(&[u8])) -> bool {
        let after_size = |size| {
            if size == 0 {
                Chunked::Done
            } else {
                Chunked::Data(size)
            }
        };
        while !input.is_empty() {
            match *self {
                Chunked::Size => *self = Chunked::SizeDigits(0),
                Chunked::SizeDigits(size) => {
                    let byte = input[0];
                    input = &input[1..];
                    *self = match (byte as char).to_digit(16) {
                        Some(digit) => Chunked::SizeDigits(size * 16 + digit as usize),
                        None if byte == b'\n' => after_size(size),
                        None => Chunked::SizeLine(size),
                    };
                }
                Chunked::SizeLine(size) => {
                    let byte = input[0];
                    input = &input[1..];
                    if byte == b'\n' {
                        *self = after_size(size);
                    }
                }
                Chunked::Data(left) => {
                    let take = left.min(input.len());
                    out(&input[..take]);
                    input = &input[take..];
                    *self = if take == left {
                        Chunked::DataCr
                    } else {
                        Chunked::Data(left - take)
                    };
                }
                Chunked::DataCr => {
                    input = &input[1..];
                    *self = Chunked::DataLf;
                }
                Chunked::DataLf => {
                    input = &input[1..];
                    *self = Chunked::Size;
                }
                Chunked::Done => return true,
            }
        }
        *self == Chunked::Done
    }
}

/// Splits a byte stream into lines without keeping them: each complete line
/// is handed on as its first `N` bytes (the whole line when it is no
/// longer) and its full length, without its LF (a CR before it stays).
pub(crate) struct Lines<const N: usize> {
    /// Length and first bytes of the line read so far.
    len: usize,
    head: [u8; N],
}

impl<const N: usize> Default for Lines<N> {
    fn default() -> Self {
        Self {
            len: 0,
            head: [0; N],
        }
    }
}

impl<const N: usize> Lines<N> {
    /// Feeds bytes; `line(head, len)` for every line they complete.
    pub(crate) fn feed(&mut self, data: &[u8], mut line: impl FnMut(&[u8], usize)) {
        let mut start = 0;
        for newline in memchr::memchr_iter(b'\n', data) {
            let part = &data[start..newline];
            if self.len == 0 {
                line(&part[..part.len().min(N)], part.len());
            } else {
                self.take(part);
                let len = std::mem::take(&mut self.len);
                line(&self.head[..len.min(N)], len);
            }
            start = newline + 1;
        }
        self.take(&data[start..]);
    }

    fn take(&mut self, part: &[u8]) {
        if self.len < N {
            let copy = (N - self.len).min(part.len());
            self.head[self.len..self.len + copy].copy_from_slice(&part[..copy]);
        }
        self.len += part.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(pieces: &[&[u8]]) -> (Vec<u8>, bool) {
        let mut chunked = Chunked::default();
        let (mut out, mut done) = (Vec::new(), false);
        for piece in pieces {
            done = chunked.feed(piece, &mut |data| out.extend_from_slice(data));
        }
        (out, done)
    }

    #[test]
    fn chunks_split_anywhere_decode_alike() {
        let body = b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n";
        for split in 0..body.len() {
            let (out, done) = decode(&[&body[..split], &body[split..]]);
            assert_eq!(out, b"helloabcdefghijklmnopqrstuvwxyz", "split at {split}");
            assert!(done, "split at {split}");
        }
        let (out, done) = decode(&[b"3\r\nabc\r\n"]);
        assert_eq!((out.as_slice(), done), (&b"abc"[..], false));
    }

    #[test]
    fn lines_keep_their_head_and_length_across_reads() {
        let text = b"data: 0123456789\r\n\r\n: comment\nx\n";
        for split in 0..text.len() {
            let mut lines = Lines::<8>::default();
            let mut seen = Vec::new();
            for piece in [&text[..split], &text[split..]] {
                lines.feed(piece, |head, len| seen.push((head.to_vec(), len)));
            }
            let expected: Vec<(Vec<u8>, usize)> = vec![
                (b"data: 01".to_vec(), 17),
                (b"\r".to_vec(), 1),
                (b": commen".to_vec(), 9),
                (b"x".to_vec(), 1),
            ];
            assert_eq!(seen, expected, "split at {split}");
        }
    }
}
