//! A test-only plugin that misbehaves on purpose: on events named `trigger` it does what `mode`
//! says (`loop`, `alloc`, `panic`, `reject`, `broken_text`: a replacement that is not JSON);
//! every other event gets `tag` added to its payload under `"tags"` (to check chain order), or
//! passes when no tag is configured.

use realtime_sdk_plugin::serde_json::{Value, json};
use realtime_sdk_plugin::{Event, Outcome, Plugin, Subscription, export_plugin};

pub struct Misbehaving {
    mode: String,
    trigger: String,
    tag: Option<String>,
}

impl Plugin for Misbehaving {
    fn init(config: Value) -> Result<(Self, Subscription), String> {
        if config["fail_init"] == true {
            return Err("refusing to start (fail_init)".to_owned());
        }
        Ok((
            Misbehaving {
                mode: config["mode"].as_str().unwrap_or("pass").to_owned(),
                trigger: config["trigger"].as_str().unwrap_or("trigger").to_owned(),
                tag: config["tag"].as_str().map(str::to_owned),
            },
            Subscription::all(),
        ))
    }

    fn on_event(&mut self, event: &Event) -> Outcome {
        if event.name == self.trigger {
            match self.mode.as_str() {
                "loop" => loop {
                    std::hint::black_box(&event.name);
                },
                "alloc" => {
                    let mut hoard: Vec<Vec<u8>> = Vec::new();
                    loop {
                        hoard.push(vec![1; 1 << 20]);
                        std::hint::black_box(&hoard);
                    }
                }
                "panic" => panic!("misbehaving on purpose"),
                "reject" => return Outcome::Reject("rejected on purpose".to_owned()),
                "broken_text" => return Outcome::ReplaceText(r#"{"n": 1"#.to_owned()),
                _ => {}
            }
        }
        match &self.tag {
            None => Outcome::Pass,
            Some(tag) => {
                let mut payload = event.payload.clone();
                let mut tags = payload["tags"].as_array().cloned().unwrap_or_default();
                tags.push(json!(tag));
                payload["tags"] = Value::Array(tags);
                Outcome::Replace(payload)
            }
        }
    }
}

export_plugin!(Misbehaving);
