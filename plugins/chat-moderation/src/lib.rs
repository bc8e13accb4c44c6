//! chat-moderation: for chat rooms. Masks configured words in `chat.message` texts (whole words,
//! any case, replaced by `*`s) and rejects messages longer than `max_length` characters, so the
//! sender gets the plugin's error.
//!
//! Payload: `{"text":"..."}`. Config: `banned_words` (list of strings), `max_length` (default 500).

use realtime_sdk_plugin::serde_json::Value;
use realtime_sdk_plugin::{Event, Outcome, Plugin, Subscription, export_plugin};

pub struct ChatModeration {
    banned_words: Vec<String>,
    max_length: usize,
}

impl ChatModeration {
    fn mask(&self, text: &str) -> String {
        let mut masked = String::with_capacity(text.len());
        let mut word = String::new();
        let flush = |word: &mut String, masked: &mut String| {
            let lowered = word.to_lowercase();
            if self.banned_words.contains(&lowered) {
                masked.extend(std::iter::repeat_n('*', word.chars().count()));
            } else {
                masked.push_str(word);
            }
            word.clear();
        };
        for character in text.chars() {
            if character.is_alphanumeric() || character == '\'' {
                word.push(character);
            } else {
                flush(&mut word, &mut masked);
                masked.push(character);
            }
        }
        flush(&mut word, &mut masked);
        masked
    }
}

impl Plugin for ChatModeration {
    fn init(config: Value) -> Result<(Self, Subscription), String> {
        let banned_words = match &config["banned_words"] {
            Value::Null => Vec::new(),
            Value::Array(words) => words
                .iter()
                .map(|word| {
                    word.as_str()
                        .map(str::to_lowercase)
                        .ok_or("`banned_words` must be strings")
                })
                .collect::<Result<_, _>>()?,
            _ => return Err("`banned_words` must be a list of strings".to_owned()),
        };
        let max_length = match &config["max_length"] {
            Value::Null => 500,
            value => value
                .as_u64()
                .filter(|length| *length > 0)
                .ok_or("`max_length` must be a positive integer")? as usize,
        };
        Ok((
            ChatModeration {
                banned_words,
                max_length,
            },
            Subscription::events(["chat.message"]),
        ))
    }

    fn on_event(&mut self, event: &Event) -> Outcome {
        self.on_owned_event(event.clone())
    }

    /// Owns the event, so a masked text replaces the original in place, without a copy.
    fn on_owned_event(&mut self, mut event: Event) -> Outcome {
        let Some(text) = event.payload["text"].as_str() else {
            return Outcome::Reject("a chat message needs a `text` string".to_owned());
        };
        if text.chars().count() > self.max_length {
            return Outcome::Reject(format!(
                "message longer than {} characters",
                self.max_length
            ));
        }
        let masked = self.mask(text);
        if masked == text {
            return Outcome::Pass;
        }
        event.payload["text"] = Value::String(masked);
        Outcome::Replace(event.payload)
    }
}

export_plugin!(ChatModeration);

#[cfg(test)]
mod tests {
    use super::*;
    use realtime_sdk_plugin::serde_json::json;

    fn plugin() -> ChatModeration {
        ChatModeration::init(json!({"banned_words": ["darn", "Heck"], "max_length": 20}))
            .unwrap()
            .0
    }

    fn message(text: &str) -> Event {
        Event::new("chat.message", "chat:lobby", json!({"text": text}))
    }

    #[test]
    fn masks_whole_words_in_any_case() {
        assert_eq!(
            plugin().on_event(&message("Darn, heck!")),
            Outcome::Replace(json!({"text": "****, ****!"}))
        );
        assert_eq!(plugin().on_event(&message("darned hecker")), Outcome::Pass);
    }

    #[test]
    fn rejects_long_or_textless_messages() {
        assert!(
            matches!(plugin().on_event(&message(&"x".repeat(21))), Outcome::Reject(message) if message.contains("20"))
        );
        assert!(matches!(
            plugin().on_event(&Event::new("chat.message", "chat:a", json!({}))),
            Outcome::Reject(_)
        ));
    }

    #[test]
    fn config_is_checked() {
        assert!(ChatModeration::init(json!({"banned_words": "darn"})).is_err());
        assert!(ChatModeration::init(json!({"max_length": 0})).is_err());
        assert_eq!(ChatModeration::init(json!({})).unwrap().0.max_length, 500);
    }
}
