//! The load tool's own WebSocket client framing (RFC 6455): the upgrade request, server frames
//! parsed in place from a byte buffer, masked client frames.
//!
//! Hand-written rather than a WebSocket library because the tool shares the cores with the
//! servers it measures: a pass over a buffer per push is all it may cost, and the connections are
//! handed from the async connect phase to plain epoll readers with no bytes left behind in a
//! library's buffer.

use anyhow::{Context, bail, ensure};

pub const OPCODE_TEXT: u8 = 0x1;
pub const OPCODE_CLOSE: u8 = 0x8;
pub const OPCODE_PING: u8 = 0x9;
pub const OPCODE_PONG: u8 = 0xA;

/// Server frames above this are refused: the platform's pushes are a few KiB at most.
const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// The HTTP/1.1 upgrade request for `path` on `host`.
pub fn upgrade_request(host: &str, path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// The length of the upgrade response at the start of `received`, once it is complete: `None`
/// while its headers have not all arrived, an error when it is not `101 Switching Protocols`.
/// Bytes after it are already WebSocket frames.
pub fn upgrade_response_length(received: &[u8]) -> anyhow::Result<Option<usize>> {
    let Some(end) = received.windows(4).position(|window| window == b"\r\n\r\n") else {
        ensure!(received.len() < 16 * 1024, "upgrade response too long");
        return Ok(None);
    };
    let head = std::str::from_utf8(&received[..end]).context("upgrade response is not text")?;
    let status_line = head.lines().next().unwrap_or_default();
    if !status_line.starts_with("HTTP/1.1 101") {
        bail!("upgrade refused: {status_line}");
    }
    Ok(Some(end + 4))
}

/// One whole server frame at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct FrameAt {
    pub opcode: u8,
    /// Where the payload lies in the buffer.
    pub payload: std::ops::Range<usize>,
    /// Bytes the frame takes, header included.
    pub length: usize,
}

/// The frame at the start of `buffer`: `None` while it is incomplete, an error for a frame no
/// server may send (masked, fragmented, or too large).
pub fn frame_at(buffer: &[u8]) -> anyhow::Result<Option<FrameAt>> {
    let [first, second, ..] = *buffer else {
        return Ok(None);
    };
    ensure!(first & 0x80 != 0, "fragmented frames are not expected");
    ensure!(second & 0x80 == 0, "a server frame must not be masked");
    let (header, payload_length) = match second & 0x7F {
        126 if buffer.len() >= 4 => (4, u16::from_be_bytes([buffer[2], buffer[3]]) as usize),
        127 if buffer.len() >= 10 => {
            let length = u64::from_be_bytes(buffer[2..10].try_into().expect("8 bytes"));
            (10, usize::try_from(length).unwrap_or(usize::MAX))
        }
        126 | 127 => return Ok(None),
        short => (2, short as usize),
    };
    ensure!(
        payload_length <= MAX_FRAME_BYTES,
        "frame of {payload_length} bytes"
    );
    if buffer.len() < header + payload_length {
        return Ok(None);
    }
    Ok(Some(FrameAt {
        opcode: first & 0x0F,
        payload: header..header + payload_length,
        length: header + payload_length,
    }))
}

/// A client frame (clients must mask theirs) carrying `payload`.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    // Masking is for proxies that might cache the bytes, not secrecy; one fixed key is fine.
    const MASK: [u8; 4] = [0x37, 0xFA, 0x21, 0x3D];
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(0x80 | opcode);
    match payload.len() {
        short @ 0..=125 => frame.push(0x80 | short as u8),
        medium @ 126..=0xFFFF => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(medium as u16).to_be_bytes());
        }
        long => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(long as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&MASK);
    frame.extend(
        payload
            .iter()
            .zip(MASK.iter().cycle())
            .map(|(byte, mask)| byte ^ mask),
    );
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![0x80 | opcode];
        match payload.len() {
            short @ 0..=125 => frame.push(short as u8),
            medium @ 126..=0xFFFF => {
                frame.push(126);
                frame.extend_from_slice(&(medium as u16).to_be_bytes());
            }
            long => {
                frame.push(127);
                frame.extend_from_slice(&(long as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(payload);
        frame
    }

    #[test]
    fn frames_of_every_length_form_are_found_whole_and_only_whole() {
        for size in [0, 125, 126, 300, 65_535, 65_536] {
            let payload = vec![b'a'; size];
            let mut buffer = server_frame(OPCODE_TEXT, &payload);
            let whole = buffer.len();
            buffer.extend_from_slice(&server_frame(OPCODE_PING, b"p"));
            let frame = frame_at(&buffer).unwrap().expect("a whole frame");
            assert_eq!(frame.opcode, OPCODE_TEXT);
            assert_eq!(frame.length, whole);
            assert_eq!(&buffer[frame.payload], payload.as_slice());
            for cut in [1, whole / 2, whole - 1] {
                assert_eq!(
                    frame_at(&buffer[..cut]).unwrap(),
                    None,
                    "{size} cut at {cut}"
                );
            }
            let next = frame_at(&buffer[whole..]).unwrap().expect("the ping");
            assert_eq!(next.opcode, OPCODE_PING);
        }
    }

    #[test]
    fn masked_or_fragmented_server_frames_are_errors() {
        assert!(frame_at(&[0x81, 0x80 | 1, 0, 0, 0, 0, b'a']).is_err());
        assert!(frame_at(&[0x01, 1, b'a']).is_err());
    }

    #[test]
    fn client_frames_unmask_to_their_payload() {
        for size in [18, 200, 70_000] {
            let payload: Vec<u8> = (0..size).map(|index| (index % 251) as u8).collect();
            let frame = client_frame(OPCODE_TEXT, &payload);
            assert_eq!(frame[0], 0x80 | OPCODE_TEXT);
            assert_ne!(frame[1] & 0x80, 0, "masked");
            let header = match frame[1] & 0x7F {
                126 => 4,
                127 => 10,
                _ => 2,
            };
            let mask = &frame[header..header + 4];
            let unmasked: Vec<u8> = frame[header + 4..]
                .iter()
                .zip(mask.iter().cycle())
                .map(|(byte, mask)| byte ^ mask)
                .collect();
            assert_eq!(unmasked, payload);
        }
    }

    #[test]
    fn the_upgrade_response_ends_at_its_blank_line() {
        let response = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x01a";
        assert_eq!(upgrade_response_length(&response[..20]).unwrap(), None);
        assert_eq!(
            upgrade_response_length(response).unwrap(),
            Some(response.len() - 3)
        );
        let refused = b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n";
        assert!(upgrade_response_length(refused).is_err());
    }
}
