//! Writes a replacement payload (`serde_json::Value`) as compact JSON text, the same text
//! `serde_json::to_string` writes, faster inside a plugin.
//!
//! Why: serde_json's serializer looks at every byte of every string on its own. Compiled to
//! wasm that was about 30 instructions per byte, two thirds of a plugin's work on a 16 KiB
//! payload (docs/benchmarks.md, "Plugins"). Here eight bytes are checked at once and a run that
//! needs no escape is copied whole. Numbers are written by `serde_json::Number` itself.

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
        Value::Number(number) => match number.as_u64() {
            Some(unsigned) => write_unsigned(unsigned, out),
            // `Number`'s Display is the serializer's own output (itoa and the float formatter).
            None => out.extend_from_slice(number.to_string().as_bytes()),
        },
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

/// Counts, scores and ids: most numbers in payloads are small non-negative integers.
fn write_unsigned(mut number: u64, out: &mut Vec<u8>) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (number % 10) as u8;
        number /= 10;
        if number == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
const HIGH_BITS: u64 = u64::from_ne_bytes([0x80; 8]);

/// Whether any of the eight bytes is a control character, `"` or `\`: the bytes JSON escapes.
/// (The classic test for a zero byte, `(x - 0x01..) & !x & 0x80..`, applied to the word itself
/// for bytes below 0x20 and to the word xor-ed with `"` and `\` for those: exact for "any".)
fn word_needs_escape(word: u64) -> bool {
    let below_space = word.wrapping_sub(ONES * 0x20) & !word;
    let quote = word ^ (ONES * u64::from(b'"'));
    let quote = quote.wrapping_sub(ONES) & !quote;
    let backslash = word ^ (ONES * u64::from(b'\\'));
    let backslash = backslash.wrapping_sub(ONES) & !backslash;
    (below_space | quote | backslash) & HIGH_BITS != 0
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
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    // `run_start..index` is text not yet written that needs no escape.
    let mut run_start = 0;
    let mut index = 0;
    while index < bytes.len() {
        // Eight at a time while whole words remain and none of their bytes needs an escape.
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
    out.push(b'"');
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
