//! The little HTTP/1.1 both ends of the bench speak: heads read up to the blank line (parsed
//! with httparse), bodies always sized by `content-length`, no chunking, no request bodies.
//!
//! Written by hand rather than through hyper so that the client and the upstream cost the
//! same small, fixed amount for every target, and the differences in the table are the
//! proxies'.

use std::io;

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// Largest head either side accepts.
pub const MAX_HEAD: usize = 16 * 1024;

/// Reads one head, through the blank line, leaving any later bytes in `reader`.
///
/// Returns `None` on a clean end of stream before the first byte.
///
/// # Errors
///
/// I/O errors, an end of stream inside a head, a head over [`MAX_HEAD`].
pub async fn read_head<R: AsyncBufRead + Unpin>(reader: &mut R) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            if head.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "end of stream inside an HTTP head",
            ));
        }
        let before = head.len();
        // The terminator may straddle two reads: search from 3 bytes back.
        let from = before.saturating_sub(3);
        head.extend_from_slice(buf);
        if let Some(pos) = find_blank_line(&head[from..]) {
            let end = from + pos + 4;
            reader.consume(end - before);
            head.truncate(end);
            return Ok(Some(head));
        }
        let n = head.len() - before;
        reader.consume(n);
        if head.len() > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "HTTP head too large",
            ));
        }
    }
}

/// Reads and drops exactly `n` bytes.
///
/// # Errors
///
/// I/O errors, or an end of stream before `n` bytes.
pub async fn discard<R: AsyncBufRead + Unpin>(reader: &mut R, mut n: u64) -> io::Result<()> {
    while n > 0 {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "end of stream inside a body",
            ));
        }
        let take = usize::try_from(n).map_or(buf.len(), |n| n.min(buf.len()));
        reader.consume(take);
        n -= take as u64;
    }
    Ok(())
}

/// Reads and drops a `transfer-encoding: chunked` body (chunk extensions and trailers
/// ignored); returns the data bytes.
///
/// # Errors
///
/// I/O errors, an end of stream, a malformed chunk size line.
pub async fn discard_chunked<R: AsyncBufRead + Unpin>(reader: &mut R) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        let line = read_line(reader).await?;
        let size = line.split(|&b| b == b';').next().unwrap_or_default();
        let size = std::str::from_utf8(size)
            .ok()
            .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size line"))?;
        if size == 0 {
            // Trailers, up to the empty line.
            while !read_line(reader).await?.is_empty() {}
            return Ok(total);
        }
        discard(reader, size).await?;
        if !read_line(reader).await?.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "chunk not followed by CRLF",
            ));
        }
        total += size;
    }
}

/// One line without its CRLF (at most 4 KiB).
async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "end of stream inside a chunked body",
            ));
        }
        if let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            line.extend_from_slice(&buf[..pos]);
            reader.consume(pos + 1);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(line);
        }
        line.extend_from_slice(buf);
        let n = buf.len();
        reader.consume(n);
        if line.len() > 4096 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
        }
    }
}

/// Whether the message body is chunked.
pub fn is_chunked(headers: &[httparse::Header<'_>]) -> bool {
    header(headers, "transfer-encoding").is_some_and(|v| {
        v.split(|&b| b == b',')
            .next_back()
            .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
    })
}

/// The value of header `name` (case-insensitive) among `headers`.
pub fn header<'a>(headers: &'a [httparse::Header<'_>], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// Whether `headers` ask to close the connection after this message.
pub fn wants_close(headers: &[httparse::Header<'_>]) -> bool {
    header(headers, "connection").is_some_and(|v| v.eq_ignore_ascii_case(b"close"))
}

/// The `content-length` of a message, if present and valid.
pub fn content_length(headers: &[httparse::Header<'_>]) -> Option<u64> {
    std::str::from_utf8(header(headers, "content-length")?)
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn find_blank_line(bytes: &[u8]) -> Option<usize> {
    bytes.windows(4).position(|w| w == b"\r\n\r\n")
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, BufReader};

    use super::*;

    #[tokio::test]
    async fn head_is_read_across_small_reads_and_leaves_the_body() {
        let data = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabcNEXT";
        // A 5-byte buffer makes the terminator straddle reads.
        let mut reader = BufReader::with_capacity(5, &data[..]);
        let head = read_head(&mut reader).await.unwrap().unwrap();
        assert!(head.ends_with(b"\r\n\r\n"));
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut resp = httparse::Response::new(&mut headers);
        resp.parse(&head).unwrap();
        assert_eq!(content_length(resp.headers), Some(3));
        discard(&mut reader, 3).await.unwrap();
        let mut rest = String::new();
        reader.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "NEXT");
    }

    #[tokio::test]
    async fn chunked_bodies_are_read_to_their_end() {
        let data = b"5;ext=1\r\nhello\r\n3\r\nabc\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        let mut reader = BufReader::with_capacity(4, &data[..]);
        assert_eq!(discard_chunked(&mut reader).await.unwrap(), 8);
        let mut rest = String::new();
        reader.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "NEXT");
        let mut headers = [httparse::EMPTY_HEADER; 4];
        let mut resp = httparse::Response::new(&mut headers);
        resp.parse(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n")
            .unwrap();
        assert!(is_chunked(resp.headers));
    }

    #[tokio::test]
    async fn clean_eof_is_none_and_eof_inside_a_head_is_an_error() {
        let mut empty = BufReader::new(&b""[..]);
        assert!(read_head(&mut empty).await.unwrap().is_none());
        let mut cut = BufReader::new(&b"GET / HTTP/1.1\r\n"[..]);
        assert!(read_head(&mut cut).await.is_err());
    }
}
