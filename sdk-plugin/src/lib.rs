//! The plugin author's crate: implement [`Plugin`] and export it with [`export_plugin!`].
//!
//! ```
//! use realtime_sdk_plugin::serde_json;
//! use realtime_sdk_plugin::{Event, Outcome, Plugin, Subscription, export_plugin};
//!
//! struct Shout;
//!
//! impl Plugin for Shout {
//!     fn init(_config: serde_json::Value) -> Result<(Self, Subscription), String> {
//!         Ok((Shout, Subscription::events(["chat.message"])))
//!     }
//!     fn on_event(&mut self, event: &Event) -> Outcome {
//!         let text = event.payload["text"].as_str().unwrap_or_default().to_uppercase();
//!         Outcome::Replace(serde_json::json!({ "text": text }))
//!     }
//! }
//!
//! export_plugin!(Shout);
//! ```
//!
//! The same code compiles natively, so plugin logic is unit-tested with `cargo test`; only the
//! `wasm32-unknown-unknown` build carries the component bindings (WIT package
//! `realtime:plugin@0.1.0`, in `sdk-plugin/wit/`). See README.md for building and configuring.

// The generated bindings name this crate by its path, also from inside it.
extern crate self as realtime_sdk_plugin;

pub mod allocator;
pub mod testing;
// The payload reader serves `EventText::into_event` in every build.
mod json_read;
#[cfg_attr(not(target_family = "wasm"), allow(dead_code))]
mod json_text;

pub use allocator::SizeClassAllocator;

/// Small blocks from per-size free lists: a third of a plugin's work per event was the standard
/// allocator's (see [`allocator`]). Turn off the `size-class-allocator` feature to use another.
#[cfg(all(
    target_family = "wasm",
    not(target_feature = "atomics"),
    feature = "size-class-allocator"
))]
#[global_allocator]
static PLUGIN_ALLOCATOR: SizeClassAllocator = SizeClassAllocator::new();

pub use serde;
pub use serde_json;

/// One event on its way into a room, before fan-out.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Event name, e.g. `match.update`.
    pub name: String,
    /// The room, e.g. `competition:42`.
    pub room_id: String,
    /// The room's type, e.g. `competition`.
    pub room_type: String,
    /// The publishing user for client publishes; `None` for internal services.
    pub sender: Option<String>,
    /// When the server accepted the event, Unix milliseconds.
    pub timestamp_ms: u64,
    /// The event's `data`.
    pub payload: serde_json::Value,
}

impl Event {
    /// The payload as a typed value (any `serde::Deserialize` type); the error says what
    /// did not fit, ready to use as a drop or reject reason.
    pub fn payload_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        T::deserialize(&self.payload).map_err(|error| format!("unexpected payload: {error}"))
    }

    /// A test helper: an event with a payload and neutral other fields.
    pub fn new(name: &str, room_id: &str, payload: serde_json::Value) -> Event {
        Event {
            name: name.to_owned(),
            room_id: room_id.to_owned(),
            room_type: room_id.split(':').next().unwrap_or_default().to_owned(),
            sender: None,
            timestamp_ms: 0,
            payload,
        }
    }
}

/// One event with its payload still the JSON text the server passed, for
/// [`Plugin::on_event_text`]: a plugin that reads the payload into its own types with
/// [`EventText::payload_as`] (borrowing its strings) skips building a `serde_json::Value`, which is
/// most of what a small event costs a plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct EventText {
    /// Event name, e.g. `match.update`.
    pub name: String,
    /// The room, e.g. `competition:42`.
    pub room_id: String,
    /// The room's type, e.g. `competition`.
    pub room_type: String,
    /// The publishing user for client publishes; `None` for internal services.
    pub sender: Option<String>,
    /// When the server accepted the event, Unix milliseconds.
    pub timestamp_ms: u64,
    /// The event's `data` as JSON text (the server checked it is JSON).
    pub payload: String,
}

impl EventText {
    /// The payload read into any `serde::Deserialize` type, which may borrow from the text
    /// (`&str`, or `Cow<str>` with `#[serde(borrow)]` for strings that may hold escapes); the
    /// error says what did not fit.
    pub fn payload_as<'text, T: serde::Deserialize<'text>>(&'text self) -> Result<T, String> {
        serde_json::from_str(&self.payload).map_err(|error| format!("unexpected payload: {error}"))
    }

    /// The event with its payload read into a `serde_json::Value`, as [`Plugin::on_event`] gets
    /// it.
    pub fn into_event(self) -> Result<Event, String> {
        // Read by `json_read`, which builds the common kinds of JSON directly and leaves the
        // rest to serde_json: the same value, in about half the work.
        let payload = json_read::parse(&self.payload)
            .map_err(|error| format!("payload is not JSON: {error}"))?;
        Ok(Event {
            name: self.name,
            room_id: self.room_id,
            room_type: self.room_type,
            sender: self.sender,
            timestamp_ms: self.timestamp_ms,
            payload,
        })
    }

    /// A test helper: an event with a payload text and neutral other fields.
    pub fn new(name: &str, room_id: &str, payload: &str) -> EventText {
        EventText {
            name: name.to_owned(),
            room_id: room_id.to_owned(),
            room_type: room_id.split(':').next().unwrap_or_default().to_owned(),
            sender: None,
            timestamp_ms: 0,
            payload: payload.to_owned(),
        }
    }
}

/// What happens to an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Deliver unchanged.
    Pass,
    /// Do not deliver; the reason goes to the server log and metrics.
    Drop(String),
    /// Deliver this payload instead.
    Replace(serde_json::Value),
    /// Deliver this JSON text as the payload instead: for plugins that write it themselves
    /// (see [`Plugin::on_event_text`]). The server checks it is JSON; if it is not, the call
    /// counts as a failure of the plugin.
    ReplaceText(String),
    /// Do not deliver; a client publisher gets an error with this message.
    Reject(String),
}

impl Outcome {
    /// `Replace` with any `serde::Serialize` value as the new payload.
    pub fn replace_with<T: serde::Serialize>(payload: &T) -> Outcome {
        match serde_json::to_value(payload) {
            Ok(payload) => Outcome::Replace(payload),
            Err(error) => Outcome::Drop(format!("replacement does not serialize: {error}")),
        }
    }
}

/// Which events a plugin wants. Others never reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub events: Vec<String>,
}

impl Subscription {
    pub fn events<I, S>(names: I) -> Subscription
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Subscription {
            events: names.into_iter().map(Into::into).collect(),
        }
    }

    /// Every event of the room types the plugin is configured for.
    pub fn all() -> Subscription {
        Subscription::events(["*"])
    }
}

/// An event plugin. One value lives per plugin instance; the host may run several instances and
/// discards an instance after any trap (panic, timeout, memory limit).
pub trait Plugin: Sized + 'static {
    /// Builds the plugin from its `config` table (JSON). An error refuses the plugin.
    fn init(config: serde_json::Value) -> Result<(Self, Subscription), String>;

    /// Decides what happens to one event. Must be quick: the host cuts calls after a few
    /// milliseconds (`plugins.call_timeout_ms`).
    fn on_event(&mut self, event: &Event) -> Outcome;

    /// The same decision with the event handed over: a plugin that changes the payload can
    /// change it in place and return `Outcome::Replace(event.payload)` instead of copying it
    /// (a copy was a tenth of a small event's cost). The default `on_event_text` calls this one;
    /// by default it calls [`Plugin::on_event`]. A plugin that overrides it usually implements `on_event` as
    /// `self.on_owned_event(event.clone())`, so both give the same answer.
    fn on_owned_event(&mut self, event: Event) -> Outcome {
        self.on_event(&event)
    }

    /// The same decision from the payload's JSON text, before the SDK reads it into a
    /// `serde_json::Value`. This is the method the server calls; by default it reads the payload
    /// and calls [`Plugin::on_owned_event`]. Reading a small payload into a `Value` (a map, a string per
    /// key) and writing it back is most of what a plugin costs per event: a plugin on a busy
    /// room type can override this, read the payload into its own types with
    /// [`EventText::payload_as`], and answer [`Outcome::Pass`], or [`Outcome::ReplaceText`] with
    /// text it wrote; for any event its fast path does not cover it falls back to
    /// [`on_event_text_default`], what this method does when not overridden.
    fn on_event_text(&mut self, event: EventText) -> Outcome {
        on_event_text_default(self, event)
    }
}

/// What [`Plugin::on_event_text`] does unless overridden: reads the payload into a
/// `serde_json::Value` and calls [`Plugin::on_owned_event`]. An override calls it for the events
/// its own path does not cover.
pub fn on_event_text_default<P: Plugin>(plugin: &mut P, event: EventText) -> Outcome {
    match event.into_event() {
        Ok(event) => plugin.on_owned_event(event),
        Err(problem) => Outcome::Reject(problem),
    }
}

/// Levels for [`log`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Writes to the server log (tagged with the plugin's name). Natively: to stderr.
pub fn log(level: Level, message: &str) {
    #[cfg(target_family = "wasm")]
    {
        use bindings::realtime::plugin::host;
        let level = match level {
            Level::Trace => host::Level::Trace,
            Level::Debug => host::Level::Debug,
            Level::Info => host::Level::Info,
            Level::Warn => host::Level::Warn,
            Level::Error => host::Level::Error,
        };
        host::log(level, message);
    }
    #[cfg(not(target_family = "wasm"))]
    eprintln!("[{level:?}] {message}");
}

/// The component bindings (wasm only).
#[cfg(target_family = "wasm")]
// Generated code: the lowered `on-event` call takes the event's fields one by one.
#[allow(clippy::too_many_arguments)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "plugin",
        pub_export_macro: true,
        default_bindings_module: "realtime_sdk_plugin::bindings",
        runtime_path: "realtime_sdk_plugin::__private::wit_bindgen::rt",
    });
}

/// What `export_plugin!` expands to; not for direct use.
#[cfg(target_family = "wasm")]
#[doc(hidden)]
pub mod __private {
    use std::any::Any;
    use std::cell::RefCell;

    pub use wit_bindgen;

    use crate::bindings::realtime::plugin::types;
    use crate::{EventText, Level, Outcome, Plugin, log};

    thread_local! {
        /// The plugin value of this instance (wasm instances are single-threaded).
        static INSTANCE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }

    pub fn init<P: Plugin>(config: String) -> Result<types::Subscription, String> {
        // A panic becomes a trap the host handles; the message reaches the server log first.
        std::panic::set_hook(Box::new(|panic| {
            log(Level::Error, &format!("plugin panicked: {panic}"))
        }));
        let config: serde_json::Value = serde_json::from_str(&config)
            .map_err(|error| format!("config is not JSON: {error}"))?;
        let (plugin, subscription) = P::init(config)?;
        INSTANCE.with(|instance| *instance.borrow_mut() = Some(Box::new(plugin)));
        Ok(types::Subscription {
            events: subscription.events,
        })
    }

    pub fn on_event<P: Plugin>(event: types::Event) -> types::Outcome {
        let incoming_length = event.payload.len();
        let event = EventText {
            name: event.name,
            room_id: event.room_id,
            room_type: event.room_type,
            sender: event.sender,
            timestamp_ms: event.timestamp_ms,
            payload: event.payload,
        };
        let outcome = INSTANCE.with(|instance| {
            let mut instance = instance.borrow_mut();
            let plugin = instance
                .as_mut()
                .and_then(|plugin| plugin.downcast_mut::<P>())
                .expect("init ran before on-event");
            plugin.on_event_text(event)
        });
        match outcome {
            Outcome::Pass => types::Outcome::Pass,
            Outcome::Drop(reason) => types::Outcome::Drop(reason),
            // Written by `json_text`, which copies runs of string bytes whole (serde_json's
            // serializer looks at each byte on its own), into a buffer sized like the incoming
            // payload.
            Outcome::Replace(payload) => types::Outcome::Replace(crate::json_text::to_json_text(
                &payload,
                incoming_length + 64,
            )),
            Outcome::ReplaceText(text) => types::Outcome::Replace(text),
            Outcome::Reject(message) => types::Outcome::Reject(message),
        }
    }
}

/// Exports a [`Plugin`] as the component's `init` and `on-event` (wasm builds only).
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[cfg(target_family = "wasm")]
        const _: () = {
            struct RealtimePluginExport;

            impl $crate::bindings::Guest for RealtimePluginExport {
                fn init(
                    config: ::std::string::String,
                ) -> ::std::result::Result<
                    $crate::bindings::realtime::plugin::types::Subscription,
                    ::std::string::String,
                > {
                    $crate::__private::init::<$plugin>(config)
                }

                fn on_event(
                    event: $crate::bindings::realtime::plugin::types::Event,
                ) -> $crate::bindings::realtime::plugin::types::Outcome {
                    $crate::__private::on_event::<$plugin>(event)
                }
            }

    $crate::bindings::export!(RealtimePluginExport with_types_in $crate::bindings);
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(serde::Deserialize, serde::Serialize, PartialEq, Debug)]
    struct Score {
        home: u32,
        away: u32,
    }

    #[test]
    fn typed_payload_helpers_round_trip() {
        let event = Event::new(
            "match.update",
            "competition:1",
            json!({"home": 2, "away": 1}),
        );
        let score: Score = event.payload_as().unwrap();
        assert_eq!(score, Score { home: 2, away: 1 });
        assert!(
            event
                .payload_as::<Vec<u8>>()
                .unwrap_err()
                .contains("unexpected payload")
        );
        assert_eq!(
            Outcome::replace_with(&score),
            Outcome::Replace(json!({"home": 2, "away": 1}))
        );
    }

    #[derive(serde::Deserialize, PartialEq, Debug)]
    struct Borrowed<'text> {
        player: &'text str,
        score: u32,
    }

    #[test]
    fn event_text_reads_into_borrowing_types_and_into_a_value() {
        let text = EventText::new(
            "match.update",
            "competition:1",
            r#"{"player":"ana","score":3}"#,
        );
        let borrowed: Borrowed = text.payload_as().unwrap();
        assert_eq!(
            borrowed,
            Borrowed {
                player: "ana",
                score: 3
            }
        );
        assert!(
            text.payload_as::<Score>()
                .unwrap_err()
                .contains("unexpected payload")
        );
        let event = text.clone().into_event().unwrap();
        assert_eq!(
            (
                event.name.as_str(),
                event.room_type.as_str(),
                &event.payload
            ),
            (
                "match.update",
                "competition",
                &json!({"player": "ana", "score": 3})
            )
        );
        let broken = EventText::new("match.update", "competition:1", "{");
        assert!(broken.into_event().unwrap_err().contains("not JSON"));
    }

    /// A plugin that only implements `on_event`: what the server calls reaches it, payload read.
    struct Echo;

    impl Plugin for Echo {
        fn init(_config: serde_json::Value) -> Result<(Self, Subscription), String> {
            Ok((Echo, Subscription::all()))
        }
        fn on_event(&mut self, event: &Event) -> Outcome {
            Outcome::Replace(json!({ "seen": event.payload, "room": event.room_id }))
        }
    }

    #[test]
    fn on_event_text_by_default_reads_the_payload_and_calls_on_event() {
        let (mut plugin, _) = Echo::init(json!({})).unwrap();
        let text = EventText::new("chat.message", "chat:1", r#"{"text":"hi"}"#);
        assert_eq!(
            plugin.on_event_text(text),
            Outcome::Replace(json!({"seen": {"text": "hi"}, "room": "chat:1"}))
        );
        let broken = EventText::new("chat.message", "chat:1", "[1,");
        assert!(
            matches!(plugin.on_event_text(broken), Outcome::Reject(problem) if problem.contains("not JSON"))
        );
    }
}
