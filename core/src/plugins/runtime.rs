//! The wasmtime side of plugins: one engine (pooling allocator, epoch interruption), compiling
//! with an on-disk cache keyed by the wasm's hash, and pools of initialised instances.
//!
//! Calls are synchronous and short: each runs under an epoch deadline (a runaway loop is cut
//! within `plugin_runtime.call_timeout_ms` plus one tick), a memory cap and a stack cap. After any
//! trap the instance is dropped (wasmtime will not enter it again) and a fresh one is made on
//! the next call.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits,
    StoreLimitsBuilder,
};

use crate::config::PluginRuntimeSettings;

wasmtime::component::bindgen!({
    path: "../sdk-plugin/wit",
    world: "plugin",
});

pub use realtime::plugin::types::{Event as WasmEvent, Outcome as WasmOutcome};

/// How often the epoch advances: the granularity of call deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(2);

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("not a usable plugin component: {0}")]
    Compile(String),
    #[error("instantiation failed: {0}")]
    Instantiate(String),
    #[error("init refused: {0}")]
    Init(String),
    #[error("{0}")]
    Cache(String),
}

/// Why one call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallFailure {
    #[error("timed out (epoch deadline)")]
    Timeout,
    #[error("trapped: {0}")]
    Trap(String),
    #[error("instance could not be made: {0}")]
    Instantiate(String),
}

/// Per-store state: the plugin's name for its log lines, and its limits.
pub struct HostState {
    plugin_name: Arc<str>,
    limits: StoreLimits,
}

impl realtime::plugin::host::Host for HostState {
    fn log(&mut self, level: realtime::plugin::host::Level, message: String) {
        use realtime::plugin::host::Level;
        // Plugin text is untrusted: cap it so a plugin cannot flood the log line by line.
        let message: String = message.chars().take(2048).collect();
        let plugin = &*self.plugin_name;
        match level {
            Level::Trace => tracing::trace!(plugin, "{message}"),
            Level::Debug => tracing::debug!(plugin, "{message}"),
            Level::Info => tracing::info!(plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin, "{message}"),
            Level::Error => tracing::error!(plugin, "{message}"),
        }
    }
}

impl realtime::plugin::types::Host for HostState {}

/// The shared engine, its linker and its compile cache.
pub struct PluginRuntime {
    engine: Engine,
    linker: Linker<HostState>,
    settings: PluginRuntimeSettings,
    cache_dir: PathBuf,
    /// Compiled components by cache key, so reloading a known version costs nothing.
    compiled: Mutex<HashMap<String, Component>>,
    stop_ticker: Arc<AtomicBool>,
}

impl Drop for PluginRuntime {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

/// How much address space each plugin memory reserves.
#[derive(Clone, Copy)]
enum MemoryReservation {
    /// wasm32's whole 4 GiB: no bounds checks in compiled code.
    Whole,
    /// `memory_limit_bytes`: bounds checks on every access, but little address space.
    Cap,
}

fn engine_config(
    settings: &PluginRuntimeSettings,
    reservation: MemoryReservation,
) -> wasmtime::Config {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(settings.max_instances)
        .total_core_instances(settings.max_instances * 4)
        .total_memories(settings.max_instances * 2)
        .total_tables(settings.max_instances * 4)
        .max_memory_size(settings.memory_limit_bytes);
    let mut config = wasmtime::Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .max_wasm_stack(settings.stack_limit_bytes)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    if let MemoryReservation::Cap = reservation {
        config.memory_reservation(settings.memory_limit_bytes as u64);
    }
    config
}

impl PluginRuntime {
    pub fn new(settings: &PluginRuntimeSettings) -> Result<PluginRuntime, LoadError> {
        let compile = |error: wasmtime::Error| LoadError::Compile(error.to_string());
        // Memories reserved at wasm32's whole 4 GiB let compiled plugins skip the bounds check on
        // every load and store (the guard pages catch what is out of bounds): a small event
        // costs 15% less, a 16 KiB one a third less (docs/benchmarks.md, "Plugins"). That is
        // address space only, nothing committed (~2 TiB for 256 instances; memories stay capped
        // at `memory_limit_bytes`). Where address space is limited (`ulimit -v`), reservations
        // the size of the cap still fit.
        let engine = match Engine::new(&engine_config(settings, MemoryReservation::Whole)) {
            Ok(engine) => engine,
            Err(error) => {
                tracing::warn!(%error, "plugin memories reserved at their cap only: plugins run with bounds checks");
                Engine::new(&engine_config(settings, MemoryReservation::Cap)).map_err(compile)?
            }
        };
        let mut linker = Linker::new(&engine);
        Plugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |state| state)
            .map_err(compile)?;
        let stop_ticker = Arc::new(AtomicBool::new(false));
        spawn_epoch_ticker(engine.clone(), stop_ticker.clone());
        let cache_dir = match settings.cache_dir.as_os_str().is_empty() {
            true => super::cache::default_dir(),
            false => settings.cache_dir.clone(),
        };
        super::cache::prepare_private_dir(&cache_dir).map_err(LoadError::Cache)?;
        Ok(PluginRuntime {
            engine,
            linker,
            settings: settings.clone(),
            cache_dir,
            compiled: Mutex::default(),
            stop_ticker,
        })
    }

    /// Epoch ticks a call may run: the timeout rounded up, plus the tick in progress.
    fn deadline_ticks(&self) -> u64 {
        self.settings
            .call_timeout_ms
            .div_ceil(EPOCH_TICK.as_millis() as u64)
            + 1
    }

    /// Reads, compiles (or loads from the cache) and pre-links a plugin file.
    pub fn prepare(&self, path: &Path) -> Result<Prepared, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let component_bytes = componentize(&bytes)?;
        let key = self.cache_key(&component_bytes);
        let component = self.component(&key, &component_bytes)?;
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|error| LoadError::Compile(error.to_string()))?;
        let pre =
            PluginPre::new(instance_pre).map_err(|error| LoadError::Compile(error.to_string()))?;
        Ok(Prepared { pre, version: key })
    }

    fn cache_key(&self, component_bytes: &[u8]) -> String {
        let mut compatibility = DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut compatibility);
        let digest = Sha256::digest(component_bytes);
        let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
        format!("{hex}-{:016x}", compatibility.finish())
    }

    /// The compiled component: from memory, from the disk cache, or compiled now (and cached).
    fn component(&self, key: &str, component_bytes: &[u8]) -> Result<Component, LoadError> {
        if let Some(component) = self.compiled.lock().get(key) {
            return Ok(component.clone());
        }
        // SAFETY: the bytes are a file this runtime serialized with this engine configuration:
        // the key includes its compatibility hash, the seal ties the contents to the key, and
        // the directory and file are private to this user (see `cache`).
        let loaded = super::cache::read(&self.cache_dir, key)
            .map(|bytes| unsafe { Component::deserialize(&self.engine, &bytes) });
        let component = match loaded {
            Some(Ok(component)) => component,
            _ => {
                let component = Component::new(&self.engine, component_bytes)
                    .map_err(|error| LoadError::Compile(format!("{error:#}")))?;
                if let Err(error) = self.write_cache(key, &component) {
                    tracing::warn!(%error, dir = %self.cache_dir.display(), "plugin compile cache not written");
                }
                component
            }
        };
        self.compiled
            .lock()
            .insert(key.to_owned(), component.clone());
        Ok(component)
    }

    fn write_cache(&self, key: &str, component: &Component) -> Result<(), String> {
        let bytes = component.serialize().map_err(|error| error.to_string())?;
        super::cache::write(&self.cache_dir, key, &bytes)
    }

    /// A new store and instance with the deadline already running (it also bounds instantiation).
    pub fn instantiate(
        &self,
        name: &Arc<str>,
        prepared: &Prepared,
    ) -> Result<Instance, CallFailure> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.settings.memory_limit_bytes)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(
            &self.engine,
            HostState {
                plugin_name: name.clone(),
                limits,
            },
        );
        store.limiter(|state| &mut state.limits);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(self.deadline_ticks());
        let bindings = prepared
            .pre
            .instantiate(&mut store)
            .map_err(|error| classify(&error, CallFailure::Instantiate))?;
        Ok(Instance { store, bindings })
    }

    /// Runs `init`; the instance is usable only if this returns `Ok`.
    pub fn init(
        &self,
        instance: &mut Instance,
        config_json: &str,
    ) -> Result<Result<Vec<String>, String>, CallFailure> {
        instance.store.set_epoch_deadline(self.deadline_ticks());
        let result = instance
            .bindings
            .call_init(&mut instance.store, config_json)
            .map_err(|error| classify(&error, CallFailure::Trap))?;
        Ok(result.map(|subscription| subscription.events))
    }

    /// Runs `on-event` under the deadline.
    pub fn on_event(
        &self,
        instance: &mut Instance,
        event: &WasmEvent,
    ) -> Result<WasmOutcome, CallFailure> {
        instance.store.set_epoch_deadline(self.deadline_ticks());
        instance
            .bindings
            .call_on_event(&mut instance.store, event)
            .map_err(|error| classify(&error, CallFailure::Trap))
    }
}

/// A compiled, pre-linked plugin version.
pub struct Prepared {
    pre: PluginPre<HostState>,
    /// The cache key: identifies the exact code.
    pub version: String,
}

/// One instantiated plugin with its store.
pub struct Instance {
    store: Store<HostState>,
    bindings: Plugin,
}

fn classify(error: &wasmtime::Error, otherwise: fn(String) -> CallFailure) -> CallFailure {
    match error.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => CallFailure::Timeout,
        _ => otherwise(format!("{error:#}").chars().take(512).collect()),
    }
}

/// Core modules (what `cargo build --target wasm32-unknown-unknown` emits) are turned into
/// components here, from the component type that wit-bindgen embeds; components pass through.
fn componentize(bytes: &[u8]) -> Result<Vec<u8>, LoadError> {
    const CORE_MODULE: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
    if !bytes.starts_with(&CORE_MODULE) {
        return Ok(bytes.to_vec());
    }
    wit_component::ComponentEncoder::default()
        .module(bytes)
        .and_then(|encoder| encoder.validate(true).encode())
        .map_err(|error| {
            LoadError::Compile(format!("core module is not a realtime plugin: {error:#}"))
        })
}

/// Advances the engine's epoch every tick until `stop` is set.
fn spawn_epoch_ticker(engine: Engine, stop: Arc<AtomicBool>) {
    std::thread::Builder::new()
        .name("plugin-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            }
        })
        .expect("the epoch ticker thread starts");
}
