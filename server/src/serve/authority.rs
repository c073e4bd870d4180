//! On the Unix socket, replaces an HTTP/2 `:authority` that is not a valid authority with
//! `localhost` before the HTTP/2 server sees it.
//!
//! gRPC core (Python, Ruby, C++), grpc-java and .NET send the socket's path as `:authority`,
//! which the HTTP/2 server refuses as malformed (RST_STREAM PROTOCOL_ERROR), so those clients
//! fail every call on a Unix socket unless their users override the authority. On a Unix socket
//! the authority means nothing, so it is repaired instead. TCP and TLS listeners do not use
//! this and keep refusing malformed authorities.
//!
//! How: the client's frames are read as they arrive. Every header block (HEADERS and its
//! CONTINUATION frames) is decoded with the client's HPACK state and encoded again with an
//! encoder of our own, so that the server's HPACK decoder stays in step with what it receives;
//! every other frame passes through unchanged.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, ReadBuf};

/// The HTTP/2 client preface's length.
const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The frame size every HTTP/2 peer accepts (SETTINGS_MAX_FRAME_SIZE's initial value).
const MAX_FRAME: usize = 16_384;
/// Most bytes of one header block; the server's own header list limit is far below it.
const MAX_BLOCK: usize = 1 << 20;
/// HPACK's initial dynamic table size, which the server advertises.
const TABLE_SIZE: usize = 4096;

/// A Unix socket connection whose `:authority` headers are repaired as they are read.
pub struct RepairAuthority<IO> {
    io: IO,
    /// Bytes read from the client, not yet processed.
    input: Vec<u8>,
    /// Bytes processed, not yet handed to the HTTP/2 server.
    output: Vec<u8>,
    preface_left: usize,
    /// A header block waiting for its CONTINUATION frames.
    pending: Option<PendingBlock>,
    decoder: loona_hpack::Decoder<'static>,
    encoder: loona_hpack::Encoder<'static>,
    eof: bool,
}

struct PendingBlock {
    stream: [u8; 4],
    flags: u8,
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
}

impl<IO> RepairAuthority<IO> {
    /// Wraps a newly accepted connection.
    pub fn new(io: IO) -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(TABLE_SIZE);
        Self {
            io,
            input: Vec::new(),
            output: Vec::new(),
            preface_left: PREFACE_LEN,
            pending: None,
            decoder,
            encoder: loona_hpack::Encoder::new(),
            eof: false,
        }
    }

    /// Moves every complete frame of `input` to `output`, header blocks rewritten.
    fn process(&mut self) -> io::Result<()> {
        if self.preface_left > 0 {
            let take = self.preface_left.min(self.input.len());
            self.output.extend(self.input.drain(..take));
            self.preface_left -= take;
            if self.preface_left > 0 {
                return Ok(());
            }
        }
        let mut at = 0;
        while self.input.len() - at >= FRAME_HEADER_LEN {
            let header = &self.input[at..at + FRAME_HEADER_LEN];
            let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            if self.input.len() - at < FRAME_HEADER_LEN + length {
                break;
            }
            let kind = header[3];
            let flags = header[4];
            let stream: [u8; 4] = header[5..9].try_into().expect("four bytes");
            let payload = at + FRAME_HEADER_LEN..at + FRAME_HEADER_LEN + length;
            match kind {
                HEADERS => {
                    if self.pending.is_some() {
                        return Err(malformed("a HEADERS frame inside a header block"));
                    }
                    let payload = &self.input[payload];
                    let (priority, fragment) = split_headers_payload(flags, payload)?;
                    self.pending = Some(PendingBlock {
                        stream,
                        flags,
                        priority,
                        block: fragment.to_vec(),
                    });
                }
                CONTINUATION => {
                    let Some(pending) = self.pending.as_mut().filter(|p| p.stream == stream) else {
                        return Err(malformed("a CONTINUATION frame outside a header block"));
                    };
                    pending.block.extend_from_slice(&self.input[payload]);
                }
                _ if self.pending.is_some() => {
                    return Err(malformed("a frame inside a header block"));
                }
                _ => self
                    .output
                    .extend_from_slice(&self.input[at..at + FRAME_HEADER_LEN + length]),
            }
            if self
                .pending
                .as_ref()
                .is_some_and(|p| p.block.len() > MAX_BLOCK)
            {
                return Err(malformed("a header block over 1 MiB"));
            }
            if matches!(kind, HEADERS | CONTINUATION) && flags & END_HEADERS != 0 {
                let pending = self.pending.take().expect("a pending block");
                self.emit(pending)?;
            }
            at += FRAME_HEADER_LEN + length;
        }
        self.input.drain(..at);
        Ok(())
    }

    /// Writes `pending`'s headers, repaired and encoded again, as HEADERS and CONTINUATION
    /// frames.
    fn emit(&mut self, pending: PendingBlock) -> io::Result<()> {
        let mut headers = self
            .decoder
            .decode(&pending.block)
            .map_err(|e| malformed(&format!("header block: {e:?}")))?;
        for (name, value) in &mut headers {
            if name.as_slice() == b":authority"
                && http::uri::Authority::try_from(&value[..]).is_err()
            {
                *value = b"localhost".to_vec();
            }
        }
        let block = self
            .encoder
            .encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));

        let priority_len = if pending.priority.is_some() { 5 } else { 0 };
        let first_room = MAX_FRAME - priority_len;
        let (first, rest) = block.split_at(block.len().min(first_room));
        let chunks: Vec<&[u8]> = std::iter::once(first)
            .chain(rest.chunks(MAX_FRAME))
            .collect();
        let last = chunks.len() - 1;
        for (index, chunk) in chunks.into_iter().enumerate() {
            let (kind, mut flags) = if index == 0 {
                (HEADERS, pending.flags & (END_STREAM | PRIORITY))
            } else {
                (CONTINUATION, 0)
            };
            if index == last {
                flags |= END_HEADERS;
            }
            let priority = if index == 0 { pending.priority } else { None };
            let length = chunk.len() + priority.map_or(0, |p| p.len());
            self.output
                .extend_from_slice(&(length as u32).to_be_bytes()[1..]);
            self.output.push(kind);
            self.output.push(flags);
            self.output.extend_from_slice(&pending.stream);
            if let Some(priority) = priority {
                self.output.extend_from_slice(&priority);
            }
            self.output.extend_from_slice(chunk);
        }
        Ok(())
    }
}

/// The priority fields and the header block fragment of a HEADERS frame's payload.
fn split_headers_payload(flags: u8, payload: &[u8]) -> io::Result<(Option<[u8; 5]>, &[u8])> {
    let mut content = payload;
    if flags & PADDED != 0 {
        let (&pad, rest) = content
            .split_first()
            .ok_or_else(|| malformed("a padded HEADERS frame without its pad length"))?;
        content = rest
            .get(..rest.len().saturating_sub(pad as usize))
            .filter(|_| (pad as usize) <= rest.len())
            .ok_or_else(|| malformed("padding longer than the HEADERS frame"))?;
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        let fields: [u8; 5] = content
            .get(..5)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| malformed("a HEADERS frame too short for its priority"))?;
        priority = Some(fields);
        content = &content[5..];
    }
    Ok((priority, content))
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("HTTP/2 from a unix peer: {what}"),
    )
}

impl<IO: AsyncRead + Unpin> AsyncRead for RepairAuthority<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.output.is_empty() {
                let take = this.output.len().min(buf.remaining());
                buf.put_slice(&this.output[..take]);
                this.output.drain(..take);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // Whatever is left is an incomplete frame: the server sees the connection end.
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                this.eof = true;
                continue;
            }
            this.input.extend_from_slice(read.filled());
            this.process()?;
        }
    }
}

write_through!(RepairAuthority);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        out.push(kind);
        out.push(flags);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// Sends `client_bytes` through the repair and decodes the header blocks that come out.
    async fn repaired(client_bytes: Vec<u8>) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        client.write_all(&client_bytes).await.unwrap();
        drop(client);
        let mut repaired = Vec::new();
        RepairAuthority::new(server)
            .read_to_end(&mut repaired)
            .await
            .unwrap();
        assert_eq!(&repaired[..PREFACE.len()], PREFACE);
        let mut decoder = loona_hpack::Decoder::new();
        let mut blocks = Vec::new();
        let mut rest = &repaired[PREFACE.len()..];
        let mut block = Vec::new();
        while !rest.is_empty() {
            let length = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            let (kind, flags) = (rest[3], rest[4]);
            let payload = &rest[9..9 + length];
            if kind == HEADERS || kind == CONTINUATION {
                let start = if flags & PRIORITY != 0 { 5 } else { 0 };
                block.extend_from_slice(&payload[start..]);
                if flags & END_HEADERS != 0 {
                    blocks.push(decoder.decode(&std::mem::take(&mut block)).unwrap());
                }
            }
            rest = &rest[9 + length..];
        }
        blocks
    }

    fn authority(headers: &[(Vec<u8>, Vec<u8>)]) -> String {
        let value = &headers.iter().find(|(n, _)| n == b":authority").unwrap().1;
        String::from_utf8(value.clone()).unwrap()
    }

    #[tokio::test]
    async fn a_socket_path_authority_becomes_localhost_across_continuations_and_padding() {
        let mut encoder = loona_hpack::Encoder::new();
        let request = |authority: &'static [u8]| {
            vec![
                (&b":method"[..], &b"POST"[..]),
                (b":scheme", b"http"),
                (b":path", b"/audit.v1.AuditService/Record"),
                (b":authority", authority),
                (b"te", b"trailers"),
            ]
        };
        let first = encoder.encode(request(b"/tmp/run/audit.sock"));
        // The second request refers to the first's entries in the client's dynamic table.
        let second = encoder.encode(request(b"/tmp/run/audit.sock"));
        let valid = encoder.encode(request(b"audit.example:443"));
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(0x4, 0, 0, &[])); // SETTINGS passes through
        // The first block split over HEADERS (padded) and CONTINUATION.
        let (a, b) = first.split_at(first.len() / 2);
        let mut padded = vec![3u8];
        padded.extend_from_slice(a);
        padded.extend_from_slice(&[0, 0, 0]);
        bytes.extend(frame(HEADERS, PADDED, 1, &padded));
        bytes.extend(frame(CONTINUATION, END_HEADERS, 1, b));
        let mut with_priority = vec![0, 0, 0, 0, 16];
        with_priority.extend_from_slice(&second);
        bytes.extend(frame(
            HEADERS,
            END_HEADERS | PRIORITY | END_STREAM,
            3,
            &with_priority,
        ));
        bytes.extend(frame(HEADERS, END_HEADERS, 5, &valid));
        let blocks = repaired(bytes).await;
        assert_eq!(blocks.len(), 3);
        assert_eq!(authority(&blocks[0]), "localhost");
        assert_eq!(authority(&blocks[1]), "localhost");
        assert_eq!(authority(&blocks[2]), "audit.example:443");
        assert_eq!(blocks[0].len(), 5, "other headers are kept");
    }

    #[tokio::test]
    async fn a_frame_inside_a_header_block_is_refused() {
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(HEADERS, 0, 1, &[0x82]));
        bytes.extend(frame(0x0, 0, 1, b"data"));
        let (mut client, server) = tokio::io::duplex(1 << 16);
        client.write_all(&bytes).await.unwrap();
        drop(client);
        let mut out = Vec::new();
        let error = RepairAuthority::new(server)
            .read_to_end(&mut out)
            .await
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }
}
