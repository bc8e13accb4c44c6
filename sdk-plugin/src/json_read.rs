//! Reads an incoming payload into a `serde_json::Value`: the value `serde_json::from_str` makes,
//! faster inside a plugin.
//!
//! Why: in wasm, reading a small payload with serde_json was the largest part of a plugin's
//! work per event (docs/benchmarks.md, "Plugins"): its generic visitor goes through several
//! calls per token, and every string it copies is a call out of the sandbox (`memory.copy`).
//! Here a plain recursive reader takes the JSON that payloads are made of (objects, arrays,
//! strings without escapes, integers, `true`, `false`, `null`) and builds the value directly.
//!
//! Anything else makes it give up, and serde_json reads the payload from the start: a string
//! with an escape or a control character, a fraction or an exponent, an integer of twenty digits
//! or more, `-0` (serde_json makes some of those floats), deep nesting, and every error. So
//! values, numbers and error messages are always serde_json's own; the tests compare the two on
//! every case they generate.

use serde_json::{Map, Number, Value};

use crate::json_text::{append, escape_bytes};

/// Nesting beyond this is left to serde_json (which refuses it at 128).
const DEPTH_LIMIT: usize = 100;

/// The key serde_json (feature `raw_value`, which the SDK's build has) treats specially when it
/// is an object's first key; such objects are left to it.
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

/// `text` as a value, exactly as `serde_json::from_str::<Value>(text)` reads it.
pub fn parse(text: &str) -> Result<Value, serde_json::Error> {
    match Reader::new(text).document() {
        Some(value) => Ok(value),
        None => serde_json::from_str(text),
    }
}

/// The reader's position in the text. Every method returns `None` to give up.
struct Reader<'a> {
    text: &'a str,
    at: usize,
    depth: usize,
}

impl<'a> Reader<'a> {
    fn new(text: &'a str) -> Reader<'a> {
        Reader {
            text,
            at: 0,
            depth: 0,
        }
    }

    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.at).copied()
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// One value and nothing after it but whitespace.
    fn document(mut self) -> Option<Value> {
        let value = self.value()?;
        self.skip_whitespace();
        (self.at == self.text.len()).then_some(value)
    }

    fn value(&mut self) -> Option<Value> {
        self.skip_whitespace();
        match self.peek()? {
            b'{' => self.object(),
            b'[' => self.array(),
            b'"' => self.string().map(Value::String),
            b't' => self.literal("true", Value::Bool(true)),
            b'f' => self.literal("false", Value::Bool(false)),
            b'n' => self.literal("null", Value::Null),
            b'-' | b'0'..=b'9' => self.integer().map(Value::Number),
            _ => None,
        }
    }

    fn literal(&mut self, word: &str, value: Value) -> Option<Value> {
        self.bytes()[self.at..]
            .starts_with(word.as_bytes())
            .then(|| {
                self.at += word.len();
                value
            })
    }

    /// Integers as serde_json keeps them: non-negative ones as `u64`, negative ones as `i64`.
    fn integer(&mut self) -> Option<Number> {
        let negative = self.peek() == Some(b'-');
        if negative {
            self.at += 1;
        }
        let start = self.at;
        let mut magnitude: u64 = 0;
        while let Some(digit @ b'0'..=b'9') = self.peek() {
            // Twenty digits and more are left to serde_json (a checked multiplication would be
            // a 128-bit one in wasm), so the step below cannot overflow.
            if magnitude >= u64::MAX / 10 {
                return None;
            }
            magnitude = magnitude * 10 + u64::from(digit - b'0');
            self.at += 1;
        }
        let digits = self.at - start;
        let leading_zero = digits > 1 && self.bytes()[start] == b'0';
        if digits == 0 || leading_zero || matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        if !negative {
            return Some(Number::from(magnitude));
        }
        // serde_json reads `-0` and magnitudes beyond `i64::MIN` as floats.
        let i64_min_magnitude = 1u64 << 63;
        if magnitude == 0 || magnitude > i64_min_magnitude {
            return None;
        }
        Some(Number::from((magnitude as i64).wrapping_neg()))
    }

    /// A string without escapes or control characters (those are serde_json's to read).
    fn string(&mut self) -> Option<String> {
        self.at += 1; // the opening quote
        let start = self.at;
        let bytes = self.bytes();
        // Words with no quote, backslash or control character are skipped whole; in the word
        // with one, the first such byte is found from the word's bits.
        while let Some(word) = bytes.get(self.at..self.at + 8) {
            let found = escape_bytes(u64::from_le_bytes(word.try_into().expect("eight bytes")));
            if found != 0 {
                self.at += (found.trailing_zeros() / 8) as usize;
                break;
            }
            self.at += 8;
        }
        // The first such byte, in a word or in a tail of under eight bytes, must be the quote.
        loop {
            match self.peek()? {
                b'"' => break,
                b'\\' | 0..0x20 => return None,
                _ => self.at += 1,
            }
        }
        // Both ends are at ASCII quotes, so on character boundaries.
        let content = self.text.get(start..self.at)?;
        self.at += 1; // the closing quote
        let mut owned = Vec::with_capacity(content.len());
        append(&mut owned, content.as_bytes());
        // SAFETY: the bytes were copied whole from a `str`.
        Some(unsafe { String::from_utf8_unchecked(owned) })
    }

    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        self.at += 1; // the opening bracket
        (self.depth < DEPTH_LIMIT).then_some(())
    }

    /// Skips whitespace and then `byte` if it comes next; whether it did.
    fn eat(&mut self, byte: u8) -> bool {
        self.skip_whitespace();
        let next = self.peek() == Some(byte);
        if next {
            self.at += 1;
        }
        next
    }

    /// After an item of a container closed by `close`: `Some(true)` after a comma (another
    /// item follows), `Some(false)` after `close`.
    fn another_item(&mut self, close: u8) -> Option<bool> {
        self.skip_whitespace();
        let next = self.peek()?;
        self.at += 1;
        match next {
            b',' => Some(true),
            _ => (next == close).then_some(false),
        }
    }

    fn array(&mut self) -> Option<Value> {
        self.enter()?;
        let mut items = Vec::new();
        if !self.eat(b']') {
            loop {
                items.push(self.value()?);
                if !self.another_item(b']')? {
                    break;
                }
            }
        }
        self.depth -= 1;
        Some(Value::Array(items))
    }

    fn object(&mut self) -> Option<Value> {
        self.enter()?;
        let mut fields = Map::new();
        if !self.eat(b'}') {
            loop {
                self.skip_whitespace();
                if self.peek()? != b'"' {
                    return None;
                }
                let key = self.string()?;
                if fields.is_empty() && key == RAW_VALUE_TOKEN {
                    return None;
                }
                if !self.eat(b':') {
                    return None;
                }
                let value = self.value()?;
                // A repeated key keeps its last value, as with serde_json.
                fields.insert(key, value);
                if !self.another_item(b'}')? {
                    break;
                }
            }
        }
        self.depth -= 1;
        Some(Value::Object(fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the reader makes of `text` on its own (`None`: it gave up).
    fn read_alone(text: &str) -> Option<Value> {
        Reader::new(text).document()
    }

    /// The reader either gives up or makes exactly serde_json's value; `parse` always agrees
    /// with serde_json, errors included.
    fn agrees_with_serde_json(text: &str) {
        let expected = serde_json::from_str::<Value>(text);
        if let Some(value) = read_alone(text) {
            let expected = expected
                .as_ref()
                .unwrap_or_else(|error| panic!("read {text:?}, serde_json refuses: {error}"));
            assert_eq!(&value, expected, "{text:?}");
            // Same kind of number too (`PartialEq` on numbers already tells u64, i64 and f64
            // apart; this says so where it matters).
            assert_eq!(value.to_string(), expected.to_string(), "{text:?}");
        }
        match (parse(text), expected) {
            (Ok(value), Ok(expected)) => assert_eq!(value, expected, "{text:?}"),
            (Err(error), Err(expected)) => assert_eq!(error.to_string(), expected.to_string()),
            (ours, theirs) => panic!("{text:?}: {ours:?} but serde_json {theirs:?}"),
        }
    }

    #[test]
    fn payloads_made_of_the_common_kinds_are_read_without_serde_json() {
        for text in [
            r#"{"matchId":"m-1","players":["ana","ben"],"scores":{"ana":3,"ben":1}}"#,
            r#" { "a" : [ 1 , -2 , true , false , null , { } , [ ] ] , "b" : "" } "#,
            "\t\r\n[0, 1844674407370955160, -9223372036854775808, -1]",
            r#"{"text":"plain words with ünïcödé € and 😀 and / not escaped","n":12345678901234}"#,
            "\"a string alone\"",
            "7",
            "-7",
            "null",
        ] {
            assert!(read_alone(text).is_some(), "gave up on {text:?}");
            agrees_with_serde_json(text);
        }
    }

    #[test]
    fn what_the_reader_does_not_take_is_left_to_serde_json() {
        for text in [
            // Floats, and integers serde_json makes floats.
            "1.5",
            "1e3",
            "2E-3",
            "-0",
            "-0.0",
            "18446744073709551616",
            "-9223372036854775809",
            // Twenty digits, even within u64.
            "18446744073709551615",
            // Escapes and control characters.
            r#""a\nb""#,
            r#""\u00e9\ud83d\ude00""#,
            "\"tab\tinside\"",
            // serde_json's special first key (feature raw_value).
            r#"{"$serde_json::private::RawValue":"[1,2]"}"#,
        ] {
            assert!(read_alone(text).is_none(), "read {text:?}");
            agrees_with_serde_json(text);
        }
        let deep = format!("{}{}", "[".repeat(DEPTH_LIMIT), "]".repeat(DEPTH_LIMIT));
        assert!(read_alone(&deep).is_none());
        agrees_with_serde_json(&deep);
        let too_deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        agrees_with_serde_json(&too_deep);
    }

    #[test]
    fn malformed_text_gets_serde_jsons_own_error() {
        for text in [
            "",
            " ",
            "{",
            "}",
            "[1,]",
            "[,1]",
            "{,}",
            r#"{"a":1,}"#,
            r#"{"a" 1}"#,
            r#"{a:1}"#,
            r#"{"a":1 "b":2}"#,
            "01",
            "-",
            "-a",
            "1-",
            "[1 2]",
            "tru",
            "truex",
            "nul",
            "[true1]",
            "\"open",
            "1 2",
            "[1]]",
            r#"{"a":1}}"#,
            "[\"a\"x]",
            "+1",
            ".5",
        ] {
            assert!(read_alone(text).is_none(), "read {text:?}");
            agrees_with_serde_json(text);
            assert!(parse(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn a_repeated_key_keeps_its_last_value() {
        agrees_with_serde_json(r#"{"a":1,"b":2,"a":[3]}"#);
        assert_eq!(
            read_alone(r#"{"a":1,"b":2,"a":[3]}"#).unwrap()["a"],
            serde_json::json!([3])
        );
    }

    /// Thousands of near-JSON texts: seeds with random bytes inserted, removed or replaced.
    #[test]
    fn mutated_payloads_are_read_as_serde_json_reads_them() {
        const SEEDS: [&str; 4] = [
            r#"{"matchId":"m-1","players":["ana","ben"],"scores":{"ana":3,"ben":1},"leader":null}"#,
            r#"[{"a":[[],{}],"b":-12,"c":"x y z"},true,false,0,"é€"]"#,
            r#"{"commentary":"a long enough string to cross several words","n":[1,22,333]}"#,
            r#"  {"k" : { "k" : { "k" : [ 9 , 8 ] } } }  "#,
        ];
        const ALPHABET: &[char] = &[
            '{', '}', '[', ']', '"', ':', ',', ' ', '\n', '\\', '-', '0', '1', '9', '.', 'e', 'E',
            't', 'r', 'u', 'n', 'l', 'f', 'a', 's', '$', 'é', '\u{1}',
        ];
        let mut read_by_the_reader = 0;
        for text in crate::testing::mutations(&SEEDS, ALPHABET, 20_000) {
            if read_alone(&text).is_some() {
                read_by_the_reader += 1;
            }
            agrees_with_serde_json(&text);
        }
        // Many mutations keep the text valid (a changed digit or letter inside a string), so
        // the comparison covers values the reader made, not only give-ups.
        assert!(read_by_the_reader > 1_000, "{read_by_the_reader}");
    }
}
