//! my-plugin: a starting point. It tags every `chat.message` it sees with `"checkedBy"` and
//! drops messages whose `text` is empty.
//!
//! Config: `tag` (default "my-plugin").

use realtime_sdk_plugin::serde_json::{Value, json};
use realtime_sdk_plugin::{Event, Outcome, Plugin, Subscription, export_plugin};

pub struct MyPlugin {
    tag: String,
}

impl Plugin for MyPlugin {
    fn init(config: Value) -> Result<(Self, Subscription), String> {
        let tag = match &config["tag"] {
            Value::Null => "my-plugin".to_owned(),
            Value::String(tag) if !tag.is_empty() => tag.clone(),
            _ => return Err("`tag` must be a non-empty string".to_owned()),
        };
        Ok((MyPlugin { tag }, Subscription::events(["chat.message"])))
    }

    fn on_event(&mut self, event: &Event) -> Outcome {
        match event.payload["text"].as_str() {
            None | Some("") => Outcome::Drop("empty message".to_owned()),
            Some(text) => Outcome::Replace(json!({ "text": text, "checkedBy": self.tag })),
        }
    }
}

export_plugin!(MyPlugin);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_messages_and_drops_empty_ones() {
        let (mut plugin, _) = MyPlugin::init(json!({"tag": "mod"})).unwrap();
        let event = Event::new("chat.message", "chat:a", json!({"text": "hi"}));
        assert_eq!(
            plugin.on_event(&event),
            Outcome::Replace(json!({"text": "hi", "checkedBy": "mod"}))
        );
        let empty = Event::new("chat.message", "chat:a", json!({"text": ""}));
        assert!(matches!(plugin.on_event(&empty), Outcome::Drop(_)));
    }
}
