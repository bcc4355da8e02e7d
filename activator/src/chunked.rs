//! Following the framing of a chunked body (RFC 9112 7.1) without changing it: where it ends,
//! or that it is malformed. The relay follows pods' chunked answers with it, the hand-off to
//! hyper (`handoff`) clients' chunked requests.

/// Where a chunked body stands (RFC 9112 7.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum ChunkState {
    #[default]
    Size,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    EndLf,
    Done,
}

/// Follows the framing of a chunked body without changing it.
#[derive(Debug, Default)]
pub(crate) struct Chunks {
    state: ChunkState,
    size: u64,
    digits: u32,
    trailer_bytes: usize,
}

/// The most trailer bytes accepted.
const MAX_TRAILER_BYTES: usize = 16 * 1024;

impl Chunks {
    /// Feeds the next bytes; `Some(i)`: the body ends after `data[..i]`.
    pub(crate) fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, ()> {
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            match self.state {
                ChunkState::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (b as char).to_digit(16).ok_or(())? as u64;
                        self.digits += 1;
                        if self.digits > 15 {
                            return Err(());
                        }
                        self.size = self.size * 16 + d;
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => self.state = ChunkState::Ext,
                    b'\r' if self.digits > 0 => self.state = ChunkState::SizeLf,
                    _ => return Err(()),
                },
                ChunkState::Ext => match b {
                    b'\r' => self.state = ChunkState::SizeLf,
                    b'\n' => return Err(()),
                    _ => {}
                },
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    self.state = if self.size == 0 {
                        ChunkState::TrailerStart
                    } else {
                        ChunkState::Data
                    };
                }
                ChunkState::Data => {
                    let n = (self.size.min((data.len() - i) as u64)) as usize;
                    self.size -= n as u64;
                    i += n;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return Err(());
                    }
                    self.state = ChunkState::DataLf;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    self.state = ChunkState::Size;
                    self.digits = 0;
                }
                ChunkState::TrailerStart => {
                    self.state = if b == b'\r' {
                        ChunkState::EndLf
                    } else {
                        ChunkState::Trailer
                    };
                    self.trailer_bytes += 1;
                }
                ChunkState::Trailer => {
                    self.trailer_bytes += 1;
                    if self.trailer_bytes > MAX_TRAILER_BYTES {
                        return Err(());
                    }
                    if b == b'\n' {
                        self.state = ChunkState::TrailerStart;
                    }
                }
                ChunkState::EndLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    self.state = ChunkState::Done;
                    return Ok(Some(i + 1));
                }
                ChunkState::Done => return Ok(Some(i)),
            }
            i += 1;
        }
        Ok((self.state == ChunkState::Done).then_some(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&[u8]]) -> Result<Option<usize>, ()> {
        let mut c = Chunks::default();
        let mut total = 0;
        for p in parts {
            if let Some(end) = c.feed(p)? {
                return Ok(Some(total + end));
            }
            total += p.len();
        }
        Ok(None)
    }

    #[test]
    fn a_chunked_body_ends_after_its_last_chunk_and_trailers() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n";
        assert_eq!(chunks(&[body]), Ok(Some(body.len())));
        // Split at every byte: the same end.
        let parts: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(chunks(&parts), Ok(Some(body.len())));
        // Trailers, then bytes after the end (the next answer) are not part of it.
        let t = b"A\r\n0123456789\r\n0\r\nx-checksum: 1\r\n\r\nHTTP/1.1";
        assert_eq!(chunks(&[t]), Ok(Some(t.len() - 8)));
        // Not yet complete.
        assert_eq!(chunks(&[b"5\r\nhel"]), Ok(None));
        assert_eq!(chunks(&[b"0\r\n"]), Ok(None));
    }

    #[test]
    fn a_malformed_chunked_body_is_an_error() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\r\nhelloXX",
            b"5\nhello",
            b"1234567890abcdef0\r\n",
        ] {
            assert_eq!(
                chunks(&[bad]),
                Err(()),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
