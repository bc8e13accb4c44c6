//! Event plugins: WebAssembly components that filter or transform room events, configured per
//! room type as an ordered chain, run once per event before fan-out.
//!
//! - [`runtime`]: wasmtime (engine, instances, limits).
//! - [`cache`]: the on-disk compile cache (private directory, sealed files).
//! - [`trial`]: one plugin on one event without a server (`realtime plugin run`).
//! - here: loading from `[plugins.<name>]`, chains, the failure policy, a circuit breaker per
//!   plugin, metrics, and hot reload (file changes and `SIGHUP`; a version that fails to load or
//!   to `init` is refused and the old one keeps serving).

pub mod cache;
pub mod runtime;
pub mod trial;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Mutex, RwLock};
use serde_json::value::RawValue;

use crate::config::{FailurePolicy, PluginEntry, PluginRuntimeSettings, Settings};
use crate::metrics as names;
use runtime::{CallFailure, Instance, LoadError, PluginRuntime, Prepared, WasmEvent, WasmOutcome};

/// Idle instances kept per plugin version; more concurrent calls make (and then drop) extras.
const MAX_IDLE_INSTANCES: usize = 8;

/// A plugin that could not be loaded at startup (the key names it).
#[derive(Debug, thiserror::Error)]
#[error("configuration key `plugins.{name}`: {source}")]
pub struct PluginLoadError {
    pub name: String,
    pub source: LoadError,
}

/// The event a chain sees.
pub struct ChainEvent<'a> {
    pub name: &'a str,
    pub room_id: &'a str,
    pub room_type: &'a str,
    pub sender: Option<&'a str>,
    pub timestamp_ms: u64,
    /// JSON text.
    pub payload: &'a str,
}

/// What a chain decided.
#[derive(Debug, Clone)]
pub enum ChainResult {
    /// Deliver; `Some` is the replaced payload, already checked to be JSON (once, by the host,
    /// when the plugin returned it), `None` the original.
    Deliver(Option<Box<RawValue>>),
    Dropped {
        plugin: String,
        reason: String,
    },
    Rejected {
        plugin: String,
        message: String,
    },
    /// A plugin failed and the room type is `fail_closed`.
    Failed {
        plugin: String,
    },
}

/// Consecutive failures and the cool-down they trigger.
#[derive(Default)]
struct Breaker {
    consecutive_failures: u32,
    open_until: Option<Instant>,
}

/// When the file was last seen, to notice replacements cheaply.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
}

fn stamp(path: &PathBuf) -> Option<FileStamp> {
    let metadata = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: metadata.modified().ok(),
        len: metadata.len(),
    })
}

/// One loaded version of a plugin and its idle instances.
struct LoadedPlugin {
    name: Arc<str>,
    prepared: Prepared,
    config_json: String,
    /// Event names the plugin asked for; `None` = every event. Ordered, like the host's maps:
    /// a few names compared cost less than one hashed on every event.
    subscription: Option<BTreeSet<String>>,
    idle: Mutex<Vec<Instance>>,
    metrics: PluginMetrics,
}

/// The metric handles of one plugin, looked up once at load: finding a labelled metric in the
/// recorder hashes its name and labels, which on every call cost about as much as the
/// component-model call itself.
struct PluginMetrics {
    calls: metrics::Counter,
    call_seconds: metrics::Histogram,
    pass: metrics::Counter,
    drop: metrics::Counter,
    replace: metrics::Counter,
    reject: metrics::Counter,
}

impl PluginMetrics {
    fn of(name: &Arc<str>) -> PluginMetrics {
        let outcome = |label: &'static str| metrics::counter!(names::PLUGIN_OUTCOMES, "plugin" => name.to_string(), "outcome" => label);
        PluginMetrics {
            calls: metrics::counter!(names::PLUGIN_CALLS, "plugin" => name.to_string()),
            call_seconds: metrics::histogram!(names::PLUGIN_CALL_SECONDS, "plugin" => name.to_string()),
            pass: outcome("pass"),
            drop: outcome("drop"),
            replace: outcome("replace"),
            reject: outcome("reject"),
        }
    }

    fn outcome(&self, outcome: &CheckedOutcome) -> &metrics::Counter {
        match outcome {
            CheckedOutcome::Pass => &self.pass,
            CheckedOutcome::Drop(_) => &self.drop,
            CheckedOutcome::Replace(_) => &self.replace,
            CheckedOutcome::Reject(_) => &self.reject,
        }
    }
}

/// A plugin's answer after the host's checks: a replacement is known to be JSON.
enum CheckedOutcome {
    Pass,
    Drop(String),
    Replace(Box<RawValue>),
    Reject(String),
}

impl LoadedPlugin {
    fn wants(&self, event_name: &str) -> bool {
        self.subscription
            .as_ref()
            .is_none_or(|names| names.contains(event_name))
    }

    /// Takes an idle instance or makes (and initialises) a new one.
    fn instance(&self, runtime: &PluginRuntime) -> Result<Instance, CallFailure> {
        if let Some(instance) = self.idle.lock().pop() {
            return Ok(instance);
        }
        let mut instance = runtime.instantiate(&self.name, &self.prepared)?;
        match runtime.init(&mut instance, &self.config_json)? {
            Ok(_) => Ok(instance),
            Err(message) => Err(CallFailure::Instantiate(format!("init refused: {message}"))),
        }
    }

    fn call(&self, runtime: &PluginRuntime, event: &WasmEvent) -> Result<WasmOutcome, CallFailure> {
        let mut instance = self.instance(runtime)?;
        let outcome = runtime.on_event(&mut instance, event)?;
        let mut idle = self.idle.lock();
        if idle.len() < MAX_IDLE_INSTANCES {
            idle.push(instance);
        }
        Ok(outcome)
    }
}

/// Every configured plugin, ready to run.
pub struct PluginHost {
    runtime: PluginRuntime,
    entries: BTreeMap<String, PluginEntry>,
    // Ordered maps for the two looked up on every call: a node has a handful of plugins, and
    // comparing a few short names costs less than hashing one with the default hasher.
    loaded: RwLock<BTreeMap<String, Arc<LoadedPlugin>>>,
    stamps: Mutex<HashMap<String, FileStamp>>,
    breakers: BTreeMap<String, Mutex<Breaker>>,
    settings: PluginRuntimeSettings,
}

impl PluginHost {
    /// Loads every `[plugins.<name>]`; `None` when none is configured.
    pub fn load(settings: &Settings) -> Result<Option<PluginHost>, PluginLoadError> {
        if settings.plugins.is_empty() {
            return Ok(None);
        }
        let runtime =
            PluginRuntime::new(&settings.plugin_runtime).map_err(|source| PluginLoadError {
                name: "<runtime>".into(),
                source,
            })?;
        let host = PluginHost {
            runtime,
            entries: settings.plugins.clone(),
            loaded: RwLock::default(),
            stamps: Mutex::default(),
            breakers: settings
                .plugins
                .keys()
                .map(|name| (name.clone(), Mutex::default()))
                .collect(),
            settings: settings.plugin_runtime.clone(),
        };
        for (name, entry) in &settings.plugins {
            let plugin = host
                .load_version(name, entry)
                .map_err(|source| PluginLoadError {
                    name: name.clone(),
                    source,
                })?;
            tracing::info!(plugin = %name, version = %short(&plugin.prepared.version), "plugin loaded");
            host.loaded.write().insert(name.clone(), Arc::new(plugin));
            if let Some(file) = stamp(&entry.path) {
                host.stamps.lock().insert(name.clone(), file);
            }
        }
        Ok(Some(host))
    }

    /// Compiles, instantiates and initialises one version; refuses it on any failure.
    fn load_version(&self, name: &str, entry: &PluginEntry) -> Result<LoadedPlugin, LoadError> {
        let prepared = self.runtime.prepare(&entry.path)?;
        let config_json = entry.config.to_string();
        let plugin_name: Arc<str> = Arc::from(name);
        let mut first = self
            .runtime
            .instantiate(&plugin_name, &prepared)
            .map_err(|failure| LoadError::Instantiate(failure.to_string()))?;
        let events = self
            .runtime
            .init(&mut first, &config_json)
            .map_err(|failure| LoadError::Init(failure.to_string()))?
            .map_err(LoadError::Init)?;
        let subscription =
            (!events.iter().any(|event| event == "*")).then(|| events.into_iter().collect());
        Ok(LoadedPlugin {
            prepared,
            config_json,
            subscription,
            idle: Mutex::new(vec![first]),
            metrics: PluginMetrics::of(&plugin_name),
            name: plugin_name,
        })
    }

    /// Reloads plugins whose file changed (or all of them with `force`, as on `SIGHUP`). A new
    /// version that fails to load keeps the old one serving. Returns how many were swapped.
    pub fn reload(&self, force: bool) -> usize {
        let mut swapped = 0;
        for (name, entry) in &self.entries {
            let current = stamp(&entry.path);
            let known = self.stamps.lock().get(name).cloned();
            if !force && (current.is_none() || current == known) {
                continue;
            }
            if let Some(current) = current {
                // Remember the file either way: a broken version is not retried until it changes.
                self.stamps.lock().insert(name.clone(), current);
            }
            match self.load_version(name, entry) {
                Ok(plugin) => {
                    let unchanged = self
                        .loaded
                        .read()
                        .get(name)
                        .is_some_and(|old| old.prepared.version == plugin.prepared.version);
                    if !unchanged {
                        tracing::info!(plugin = %name, version = %short(&plugin.prepared.version), "plugin reloaded");
                        self.loaded.write().insert(name.clone(), Arc::new(plugin));
                        *self.breaker(name).lock() = Breaker::default();
                        swapped += 1;
                    }
                }
                Err(error) => {
                    metrics::counter!(names::PLUGIN_RELOAD_FAILURES, "plugin" => name.clone())
                        .increment(1);
                    tracing::error!(plugin = %name, %error, "new plugin version refused; the previous one keeps serving");
                }
            }
        }
        swapped
    }

    fn breaker(&self, name: &str) -> &Mutex<Breaker> {
        self.breakers
            .get(name)
            .expect("breakers exist for every configured plugin")
    }

    /// Runs `chain` (plugin names, in order) on one event.
    pub fn run_chain(
        &self,
        chain: &[String],
        policy: FailurePolicy,
        event: &ChainEvent<'_>,
    ) -> ChainResult {
        let _span = tracing::debug_span!(
            "plugin_chain",
            room = event.room_id,
            event = event.name,
            plugins = chain.len()
        )
        .entered();
        // Built once per chain, not per plugin.
        let mut wasm_event: Option<WasmEvent> = None;
        // The latest replacement, checked. The event's payload is brought up to date from it
        // only when another plugin is to see it (a copy), so the replacement reaches fan-out
        // without being checked a second time.
        let mut replacement: Option<Box<RawValue>> = None;
        let mut event_behind_replacement = false;
        for name in chain {
            let Some(plugin) = self.loaded.read().get(name).cloned() else {
                continue;
            };
            if !plugin.wants(event.name) {
                continue;
            }
            let wasm_event = wasm_event.get_or_insert_with(|| WasmEvent {
                name: event.name.to_owned(),
                room_id: event.room_id.to_owned(),
                room_type: event.room_type.to_owned(),
                sender: event.sender.map(str::to_owned),
                timestamp_ms: event.timestamp_ms,
                payload: event.payload.to_owned(),
            });
            if event_behind_replacement && let Some(replacement) = &replacement {
                wasm_event.payload.clear();
                wasm_event.payload.push_str(replacement.get());
                event_behind_replacement = false;
            }
            match self.call_guarded(&plugin, wasm_event) {
                Ok(CheckedOutcome::Pass) => {}
                Ok(CheckedOutcome::Replace(checked)) => {
                    replacement = Some(checked);
                    event_behind_replacement = true;
                }
                Ok(CheckedOutcome::Drop(reason)) => {
                    tracing::debug!(plugin = %name, %reason, event = event.name, "event dropped by plugin");
                    return ChainResult::Dropped {
                        plugin: name.clone(),
                        reason,
                    };
                }
                Ok(CheckedOutcome::Reject(message)) => {
                    return ChainResult::Rejected {
                        plugin: name.clone(),
                        message,
                    };
                }
                Err(()) if policy == FailurePolicy::FailClosed => {
                    return ChainResult::Failed {
                        plugin: name.clone(),
                    };
                }
                Err(()) => {}
            }
        }
        ChainResult::Deliver(replacement)
    }

    /// One call with the breaker, limits, metrics and output checks. `Err` = the plugin failed
    /// (details already logged and counted).
    fn call_guarded(
        &self,
        plugin: &LoadedPlugin,
        wasm_event: &WasmEvent,
    ) -> Result<CheckedOutcome, ()> {
        let name: &str = &plugin.name;
        let breaker = self.breaker(name);
        {
            let breaker = breaker.lock();
            if breaker
                .open_until
                .is_some_and(|until| Instant::now() < until)
            {
                metrics::counter!(names::PLUGIN_OUTCOMES, "plugin" => name.to_owned(), "outcome" => "skipped_breaker_open").increment(1);
                return Err(());
            }
        }
        let started = Instant::now();
        let result = plugin.call(&self.runtime, wasm_event);
        plugin
            .metrics
            .call_seconds
            .record(started.elapsed().as_secs_f64());
        plugin.metrics.calls.increment(1);
        let result =
            result
                .map_err(|failure| failure.to_string())
                .and_then(|outcome| match outcome {
                    WasmOutcome::Pass => Ok(CheckedOutcome::Pass),
                    WasmOutcome::Drop(reason) => Ok(CheckedOutcome::Drop(reason)),
                    WasmOutcome::Reject(message) => Ok(CheckedOutcome::Reject(message)),
                    // A replacement must be JSON: anything else would reach clients as broken
                    // frames. Checked here once; the checked text is what fan-out sends.
                    WasmOutcome::Replace(text) => RawValue::from_string(text)
                        .map(CheckedOutcome::Replace)
                        .map_err(|_| "replaced the payload with text that is not JSON".to_owned()),
                });
        match result {
            Ok(outcome) => {
                breaker.lock().consecutive_failures = 0;
                plugin.metrics.outcome(&outcome).increment(1);
                Ok(outcome)
            }
            Err(problem) => {
                self.record_failure(name, &problem);
                Err(())
            }
        }
    }

    fn record_failure(&self, name: &str, problem: &str) {
        let kind = if problem.starts_with("timed out") {
            metrics::counter!(names::PLUGIN_TIMEOUTS, "plugin" => name.to_owned()).increment(1);
            "timeout"
        } else {
            metrics::counter!(names::PLUGIN_TRAPS, "plugin" => name.to_owned()).increment(1);
            "trap"
        };
        metrics::counter!(names::PLUGIN_OUTCOMES, "plugin" => name.to_owned(), "outcome" => kind)
            .increment(1);
        tracing::warn!(plugin = name, %problem, "plugin call failed");
        let mut breaker = self.breaker(name).lock();
        breaker.consecutive_failures += 1;
        if breaker.consecutive_failures >= self.settings.breaker_failures {
            let cooldown = Duration::from_secs(self.settings.breaker_cooldown_secs);
            breaker.open_until = Some(Instant::now() + cooldown);
            metrics::counter!(names::PLUGIN_BREAKER_OPENED, "plugin" => name.to_owned())
                .increment(1);
            tracing::error!(
                plugin = name,
                failures = breaker.consecutive_failures,
                ?cooldown,
                "plugin disabled for a cool-down"
            );
        }
    }
}

fn short(version: &str) -> &str {
    &version[..version.len().min(12)]
}
