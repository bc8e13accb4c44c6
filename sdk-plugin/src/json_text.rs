//! Writes a replacement payload (`serde_json::Value`) as compact JSON text, the same text
//! `serde_json::to_string` writes, faster inside a plugin.
//!
//! Why: serde_json's serializer looks at every byte of every string on its own. Compiled to
//! wasm that was about 30 instructions per byte, two thirds of a plugin's work on a 16 KiB
//! payload (docs/benchmarks.md, "Plugins"). Here a string is checked a word at a time and, when
//! it needs no escape (almost always), written with one copy. Short copies are a few word moves:
//! in wasm a copy of unknown length is a call out of the sandbox into the engine
//! (`memory.copy`), which costs more than the copy itself for the short keys and values most
//! payloads are made of. Numbers are written by serde_json's own formatter.

use serde_json::Value;

/// `value` as compact JSON text; `capacity_hint` is the expected length (the incoming payload's
/// length is a good guess for a changed payload), to grow the text once rather than many times.
pub fn to_json_text(value: &Value, capacity_hint: usize) -> String {
    let mut text = Vec::with_capacity(capacity_hint);
    write_value(value, &mut text);
    // SAFETY: everything written is ASCII or a whole slice of a `str` cut at ASCII positions
    // (character boundaries), so the bytes are UTF-8.
    unsafe { String::from_utf8_unchecked(text) }
}

// Bytes, not a `String`: pushing one byte into a `Vec` is a store, where `String::push` goes
// through character encoding and `push_str` through a copy routine.
fn write_value(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        // serde_json's own formatter (itoa and ryu), straight into the text.
        Value::Number(number) => {
            serde_json::to_writer(&mut *out, number).expect("writing into a Vec cannot fail")
        }
        Value::String(text) => write_string(text, out),
        Value::Array(items) => {
            out.push(b'[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_value(item, out);
            }
            out.push(b']');
        }
        Value::Object(fields) => {
            out.push(b'{');
            for (index, (key, field)) in fields.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_string(key, out);
                out.push(b':');
                write_value(field, out);
            }
            out.push(b'}');
        }
    }
}

/// Appends `bytes`.
#[inline(always)]
pub(crate) fn append(out: &mut Vec<u8>, bytes: &[u8]) {
    out.reserve(bytes.len());
    // SAFETY: `reserve` made room for the bytes after the current end.
    unsafe {
        copy_short(bytes, out.as_mut_ptr().add(out.len()));
        out.set_len(out.len() + bytes.len());
    }
}

/// Copies `bytes` to `target`: up to 16 bytes as at most two overlapping words (or three single
/// bytes), with no call; longer runs as one copy.
///
/// # Safety
/// `target` must be valid for writing `bytes.len()` bytes and not overlap `bytes`.
#[inline(always)]
unsafe fn copy_short(bytes: &[u8], target: *mut u8) {
    let length = bytes.len();
    let source = bytes.as_ptr();
    // SAFETY: every read is inside `bytes` (the second word of a pair ends exactly at its end)
    // and every write inside the `length` bytes at `target`, which the caller vouches for.
    unsafe {
        match length {
            0 => {}
            1..=3 => {
                *target = *source;
                *target.add(length / 2) = *source.add(length / 2);
                *target.add(length - 1) = *source.add(length - 1);
            }
            4..=7 => {
                let head = source.cast::<u32>().read_unaligned();
                let tail = source.add(length - 4).cast::<u32>().read_unaligned();
                target.cast::<u32>().write_unaligned(head);
                target.add(length - 4).cast::<u32>().write_unaligned(tail);
            }
            8..=16 => {
                let head = source.cast::<u64>().read_unaligned();
                let tail = source.add(length - 8).cast::<u64>().read_unaligned();
                target.cast::<u64>().write_unaligned(head);
                target.add(length - 8).cast::<u64>().write_unaligned(tail);
            }
            _ => std::ptr::copy_nonoverlapping(source, target, length),
        }
    }
}

const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
const HIGH_BITS: u64 = u64::from_ne_bytes([0x80; 8]);

/// The bytes of `word` (little-endian) that JSON escapes (control characters, `"` and `\`),
/// as their high bits; the lowest set bit marks the first such byte exactly. (The classic
/// test for a zero byte, `(x - 0x01..) & !x & 0x80..`, applied to the word itself for bytes below
/// 0x20 and to the word xor-ed with `"` and `\` for those. It can also flag a byte above a
/// flagged one, never one below, so "any" and "the first" are exact.)
pub(crate) fn escape_bytes(word: u64) -> u64 {
    let below_space = word.wrapping_sub(ONES * 0x20) & !word;
    let quote = word ^ (ONES * u64::from(b'"'));
    let quote = quote.wrapping_sub(ONES) & !quote;
    let backslash = word ^ (ONES * u64::from(b'\\'));
    let backslash = backslash.wrapping_sub(ONES) & !backslash;
    (below_space | quote | backslash) & HIGH_BITS
}

/// Whether any of the eight bytes needs an escape.
fn word_needs_escape(word: u64) -> bool {
    escape_bytes(word) != 0
}

/// Whether any byte of `bytes` needs an escape. Whole words, the last one overlapping the one
/// before it; a string under eight bytes is read into one word by the same overlapping moves as
/// [`copy_short`], padded with spaces (which JSON never escapes).
fn needs_escape(bytes: &[u8]) -> bool {
    let length = bytes.len();
    let source = bytes.as_ptr();
    // SAFETY: every read is inside `bytes`: words start at or before `length - 8` (or `- 4`),
    // and single bytes are below `length`.
    let word = unsafe {
        match length {
            0 => return false,
            1..=3 => {
                const SPACES_ABOVE_THREE_BYTES: u64 = 0x2020_2020_2000_0000;
                u64::from(*source)
                    | u64::from(*source.add(length / 2)) << 8
                    | u64::from(*source.add(length - 1)) << 16
                    | SPACES_ABOVE_THREE_BYTES
            }
            4..=7 => {
                let head = u32::from_le(source.cast::<u32>().read_unaligned());
                let tail = u32::from_le(source.add(length - 4).cast::<u32>().read_unaligned());
                u64::from(head) | u64::from(tail) << 32
            }
            _ => {
                let word_at =
                    |index: usize| u64::from_le(source.add(index).cast::<u64>().read_unaligned());
                let mut index = 0;
                while index + 8 < length {
                    if word_needs_escape(word_at(index)) {
                        return true;
                    }
                    index += 8;
                }
                word_at(length - 8)
            }
        }
    };
    word_needs_escape(word)
}

/// Which bytes need an escape: 0 none, `u` the `\u00XX` form, otherwise the escape's letter.
const ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = b'u';
        byte += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

/// Appends the escape serde_json writes for `byte` (one with an `ESCAPE` entry).
fn write_escape(byte: u8, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match ESCAPE[usize::from(byte)] {
        b'u' => out.extend_from_slice(&[
            b'\\',
            b'u',
            b'0',
            b'0',
            HEX[usize::from(byte >> 4)],
            HEX[usize::from(byte & 0xf)],
        ]),
        letter => out.extend_from_slice(&[b'\\', letter]),
    }
}

fn write_string(text: &str, out: &mut Vec<u8>) {
    let bytes = text.as_bytes();
    if needs_escape(bytes) {
        out.push(b'"');
        write_escaped(bytes, out);
        out.push(b'"');
        return;
    }
    // The usual case: the quotes and the text in one go, with one check for room.
    out.reserve(bytes.len() + 2);
    // SAFETY: `reserve` made room for the text and its two quotes after the current end.
    unsafe {
        let start = out.len();
        let target = out.as_mut_ptr().add(start);
        *target = b'"';
        copy_short(bytes, target.add(1));
        *target.add(1 + bytes.len()) = b'"';
        out.set_len(start + bytes.len() + 2);
    }
}

/// The rare string with something to escape: runs between escapes are copied whole, and
/// words with nothing to escape are skipped eight bytes at a time.
#[cold]
fn write_escaped(bytes: &[u8], out: &mut Vec<u8>) {
    // `run_start..index` is text not yet written that needs no escape.
    let mut run_start = 0;
    let mut index = 0;
    while index < bytes.len() {
        if let Some(word) = bytes.get(index..index + 8)
            && !word_needs_escape(u64::from_le_bytes(word.try_into().expect("eight bytes")))
        {
            index += 8;
            continue;
        }
        // Then one at a time to the end of the word (or of a short tail).
        let stop = bytes.len().min(index + 8);
        while index < stop {
            let byte = bytes[index];
            if ESCAPE[usize::from(byte)] != 0 {
                out.extend_from_slice(&bytes[run_start..index]);
                write_escape(byte, out);
                run_start = index + 1;
            }
            index += 1;
        }
    }
    out.extend_from_slice(&bytes[run_start..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn same_as_serde_json(value: Value) {
        let expected = serde_json::to_string(&value).unwrap();
        assert_eq!(to_json_text(&value, 0), expected);
    }

    #[test]
    fn every_kind_of_value_is_written_as_serde_json_writes_it() {
        same_as_serde_json(json!(null));
        same_as_serde_json(json!(true));
        same_as_serde_json(json!([
            false,
            0,
            -7,
            u64::MAX,
            i64::MIN,
            1.5,
            -0.0,
            1e300,
            2.5e-8
        ]));
        same_as_serde_json(json!({}));
        same_as_serde_json(json!([]));
        same_as_serde_json(json!({
            "matchId": "m-1", "players": ["ana", "ben"], "scores": {"ana": 3, "ben": 1},
            "nested": [{"a": [[], {}]}, null], "leader": null
        }));
    }

    #[test]
    fn every_byte_that_json_escapes_is_escaped_wherever_it_falls_in_a_word() {
        let mut specials: Vec<char> = (0u8..0x20).map(char::from).collect();
        specials.extend(['"', '\\', '/', '\u{7f}', 'é', '€', '😀']);
        for special in specials {
            // Every position relative to the eight-byte words, and runs on both sides.
            for before in 0..17 {
                let text = format!("{}{special}{}", "a".repeat(before), "b".repeat(9));
                same_as_serde_json(json!(text));
                same_as_serde_json(json!({ text.clone(): text }));
            }
        }
    }

    #[test]
    fn strings_of_every_short_length_are_written_whole_or_escaped_at_every_position() {
        for length in 0..=24 {
            same_as_serde_json(json!("k".repeat(length)));
            for position in 0..length {
                for special in ['"', '\\', '\n', '\u{1}', '\u{1f}', ' ', '~', '\u{7f}'] {
                    let mut text: Vec<char> = "k".repeat(length).chars().collect();
                    text[position] = special;
                    let text: String = text.into_iter().collect();
                    same_as_serde_json(json!(text));
                    same_as_serde_json(json!([{ text.clone(): text }, 12345678901u64]));
                }
            }
        }
    }

    #[test]
    fn long_text_with_escapes_and_multibyte_characters_round_trips() {
        let text =
            "plain words, \"quoted\", a\\path, tab\there, line\nbreak, ünïcödé €, 😀 ".repeat(300);
        same_as_serde_json(json!({ "commentary": text }));
        let written = to_json_text(&json!({ "commentary": text }), 16);
        let parsed: Value = serde_json::from_str(&written).unwrap();
        assert_eq!(parsed["commentary"], text);
    }

    #[test]
    fn the_word_test_finds_exactly_the_bytes_json_escapes() {
        for byte in 0..=u8::MAX {
            for position in 0..8 {
                let mut word = [b'x'; 8];
                word[position] = byte;
                assert_eq!(
                    word_needs_escape(u64::from_le_bytes(word)),
                    ESCAPE[usize::from(byte)] != 0,
                    "byte {byte:#04x} at {position}"
                );
            }
        }
    }
}
