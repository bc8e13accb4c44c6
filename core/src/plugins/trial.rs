//! `realtime plugin run`: one plugin, one event, under the production host and limits (the same
//! runtime, time and memory caps, failure classification), without starting a server. What a
//! plugin author runs while writing a plugin, like `extism call`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};

use super::{ChainEvent, ChainResult, PluginHost, PluginLoadError};
use crate::config::{FailurePolicy, PluginEntry, PluginRuntimeSettings, Settings};

/// The event file: what the plugin sees as one published event.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrialEvent {
    /// Event name, e.g. `match.update`.
    pub name: String,
    /// Room id, e.g. `competition:42`; its type is the part before `:`.
    pub room: String,
    /// The publishing user, for a client publish.
    #[serde(default)]
    pub sender: Option<String>,
    /// When the server accepted the event (Unix ms); default: now.
    #[serde(default)]
    pub timestamp_ms: Option<u64>,
    pub payload: Value,
}

/// What one run gave.
#[derive(Debug)]
pub struct TrialReport {
    pub outcome: ChainResult,
    /// The plugin call alone (the plugin was loaded and initialised before).
    pub elapsed: Duration,
}

impl TrialReport {
    /// The report as JSON: `outcome` (`pass`, `replace`, `drop`, `reject`, `failed`) and its
    /// details, and `micros`.
    pub fn to_json(&self) -> Value {
        let micros = self.elapsed.as_micros() as u64;
        match &self.outcome {
            ChainResult::Deliver(None) => json!({"outcome": "pass", "micros": micros}),
            ChainResult::Deliver(Some(payload)) => json!({
                "outcome": "replace",
                "payload": serde_json::from_str::<Value>(payload.get()).unwrap_or_else(|_| Value::String(payload.get().to_owned())),
                "micros": micros
            }),
            ChainResult::Dropped { reason, .. } => {
                json!({"outcome": "drop", "reason": reason, "micros": micros})
            }
            ChainResult::Rejected { message, .. } => {
                json!({"outcome": "reject", "message": message, "micros": micros})
            }
            // Why (trap, timeout, memory, bad output) is in the warning the host logged.
            ChainResult::Failed { plugin } => {
                json!({"outcome": "failed", "plugin": plugin, "micros": micros})
            }
        }
    }
}

/// Loads `wasm` with `config` (its `init` runs), then runs it once on `event`.
pub fn run_plugin_once(
    runtime: &PluginRuntimeSettings,
    wasm: &Path,
    config: Value,
    event: &TrialEvent,
) -> Result<TrialReport, PluginLoadError> {
    const NAME: &str = "trial";
    let mut settings = Settings::defaults();
    settings.plugin_runtime = runtime.clone();
    settings.plugins = BTreeMap::from([(
        NAME.to_owned(),
        PluginEntry {
            path: wasm.to_path_buf(),
            config,
        },
    )]);
    let host = PluginHost::load(&settings)?.expect("one plugin is configured");
    let payload = event.payload.to_string();
    let room_type = event.room.split(':').next().unwrap_or_default();
    let timestamp_ms = event
        .timestamp_ms
        .unwrap_or_else(crate::protocol::unix_now_millis);
    let chain_event = ChainEvent {
        name: &event.name,
        room_id: &event.room,
        room_type,
        sender: event.sender.as_deref(),
        timestamp_ms,
        payload: &payload,
    };
    // Fail closed, so that a trap or a timeout is reported, not skipped.
    let started = Instant::now();
    let outcome = host.run_chain(&[NAME.to_owned()], FailurePolicy::FailClosed, &chain_event);
    Ok(TrialReport {
        outcome,
        elapsed: started.elapsed(),
    })
}
