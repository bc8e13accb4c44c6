//! Typed configuration: every field, its default (in `config/default.toml`), layering and checks.
//!
//! Layers, later wins: the compiled-in `config/default.toml`, `./config/default.toml` when present,
//! the file named by `--config` or `REALTIME_CONFIG`, then `REALTIME_<SECTION>__<KEY>` variables.
//! Unknown keys and wrong types are rejected by serde (`deny_unknown_fields`); the checks in
//! [`Settings::validate`] name the offending key too.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Serialize};

/// The shipped defaults, compiled in so the binary runs from any directory.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// Environment variable that names an extra configuration file.
pub const CONFIG_FILE_ENV: &str = "REALTIME_CONFIG";

/// A configuration problem, always naming the key it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Parse(Box<figment::Error>),
    #[error("configuration key `{key}`: {problem}")]
    Invalid { key: &'static str, problem: String },
}

impl ConfigError {
    fn invalid(key: &'static str, problem: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key,
            problem: problem.into(),
        }
    }
}

/// The whole configuration. Field documentation and defaults live in `config/default.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub broker: BrokerChoice,
    pub server: ServerSettings,
    pub log: LogSettings,
    pub auth: AuthSettings,
    pub api: ApiSettings,
    pub limits: LimitSettings,
    pub presence: PresenceSettings,
    pub redis: RedisSettings,
    pub nats: NatsSettings,
    pub database: DatabaseSettings,
    pub notifications: NotificationSettings,
    pub graphql: GraphqlSettings,
    pub plugin_runtime: PluginRuntimeSettings,
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginEntry>,
    pub room_types: BTreeMap<String, RoomTypeSettings>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: String,
    pub max_connections: u32,
    pub acquire_timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationSettings {
    pub ack_wait_secs: u64,
    pub max_deliveries: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphqlSettings {
    pub max_depth: usize,
    pub max_complexity: usize,
    pub max_page_size: u32,
    pub connection_init_timeout_secs: u64,
    pub max_operations_per_socket: usize,
    pub rate_limits: GraphqlRateLimits,
}

/// Requests per user per minute, by operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphqlRateLimits {
    pub notifications: u32,
    pub mark_notification_read: u32,
    pub delete_notification: u32,
    pub mark_all_notifications_read: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginRuntimeSettings {
    pub call_timeout_ms: u64,
    pub memory_limit_bytes: usize,
    pub stack_limit_bytes: usize,
    pub max_instances: u32,
    pub breaker_failures: u32,
    pub breaker_cooldown_secs: u64,
    pub reload_interval_ms: u64,
    pub cache_dir: PathBuf,
}

/// One `[plugins.<name>]` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginEntry {
    pub path: PathBuf,
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// What happens to an event when a plugin in its chain fails (trap, timeout, breaker open).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// Skip the failing plugin and deliver.
    #[default]
    FailOpen,
    /// Drop the event; a client publisher gets `plugin_failed`.
    FailClosed,
}

/// Which broker carries events between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerChoice {
    /// NATS when `nats.url` is set, else memory.
    Auto,
    Memory,
    Nats,
    Redis,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentinel: Option<SentinelSettings>,
    pub key_prefix: String,
    pub command_timeout_ms: u64,
}

impl RedisSettings {
    pub fn is_configured(&self) -> bool {
        self.url.is_some() || self.sentinel.is_some()
    }

    pub fn command_timeout(&self) -> Duration {
        Duration::from_millis(self.command_timeout_ms)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentinelSettings {
    pub master_name: String,
    pub addresses: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub subject_prefix: String,
    pub queue_group: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub max_connections: usize,
    pub node_id: String,
    pub shutdown_grace_secs: u64,
    pub fanout_yield_every: usize,
    pub allowed_origins: Vec<String>,
    pub trusted_proxies: Vec<String>,
    pub request_body_timeout_ms: u64,
    pub request_header_timeout_ms: u64,
    pub drain_window_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_public_key_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    pub leeway_secs: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Lets a node that listens beyond loopback start with the public development secret (demos).
    pub allow_development_secret: bool,
    /// An identity provider's JWKS endpoint; its keys verify tokens (see `jwks`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    pub jwks_refresh_secs: u64,
    pub jwks_min_refetch_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    pub max_frame_bytes: usize,
    pub requests_per_sec: u32,
    pub request_burst: u32,
    pub rate_limit_close_after: u32,
    pub outbox_frames: usize,
    pub max_rooms_per_connection: usize,
    pub max_connections_per_user: usize,
    pub max_connections_per_address: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceSettings {
    pub ttl_secs: u64,
    pub heartbeat_interval_secs: u64,
    pub sweep_interval_secs: u64,
    pub node_lease_secs: u64,
}

impl PresenceSettings {
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_secs)
    }
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(self.heartbeat_interval_secs)
    }
    pub fn sweep_interval(&self) -> Duration {
        Duration::from_secs(self.sweep_interval_secs)
    }
    /// How long a node's lease lasts without renewal (renewed every third of it).
    pub fn node_lease(&self) -> Duration {
        Duration::from_secs(self.node_lease_secs)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomTypeSettings {
    pub capacity: u32,
    pub client_publish: bool,
    pub presence: bool,
    /// How joins and leaves are pushed to the room: `true` one frame per change
    /// (`room.user_joined`, `room.user_left`), `"batched"` one `room.presence_diff` per interval,
    /// `false` not at all. Unset: `true` where `presence` is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<Announce>,
    /// How long a node gathers joins and leaves before it pushes them as one diff (`announce =
    /// "batched"`). Default 1000.
    #[serde(default = "default_announce_interval_ms")]
    pub announce_interval_ms: u64,
    pub join: JoinPolicy,
    #[serde(default)]
    pub plugins: Vec<String>,
    #[serde(default)]
    pub plugin_failure: FailurePolicy,
    /// Events kept per room for recovery and `history`; 0 = no history.
    #[serde(default)]
    pub history_size: usize,
    /// Kept events older than this are dropped; 0 = kept until `history_size` newer ones arrive.
    #[serde(default)]
    pub history_ttl_secs: u64,
}

/// Most events a room type may keep per room.
pub const MAX_HISTORY_SIZE: usize = 10_000;

impl RoomTypeSettings {
    /// The room type's history policy; `None` when it keeps none.
    pub fn history(&self) -> Option<crate::stores::HistoryPolicy> {
        (self.history_size > 0).then(|| crate::stores::HistoryPolicy {
            size: self.history_size,
            ttl: (self.history_ttl_secs > 0).then(|| Duration::from_secs(self.history_ttl_secs)),
        })
    }

    /// How joins and leaves are pushed to the room's members.
    pub fn announcement(&self) -> Announce {
        self.announce.unwrap_or(if self.presence {
            Announce::Each
        } else {
            Announce::Off
        })
    }

    pub fn announce_interval(&self) -> Duration {
        Duration::from_millis(self.announce_interval_ms)
    }
}

fn default_announce_interval_ms() -> u64 {
    1000
}

/// Bounds of `room_types.<type>.announce_interval_ms`: below, a diff is barely a batch; above,
/// member lists lag by more than a minute.
pub const ANNOUNCE_INTERVAL_MS: std::ops::RangeInclusive<u64> = 50..=60_000;

/// How a room type pushes joins and leaves to its members. In TOML: `false`, `true` or
/// `"batched"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announce {
    /// Nothing is pushed; members ask with `presence`.
    Off,
    /// One `room.user_joined` / `room.user_left` per change, to every member: a room of N filling
    /// up sends about N²/2 frames.
    Each,
    /// Each node gathers its members' joins and leaves per room and pushes one
    /// `room.presence_diff` per interval: frames per member grow with time, not with the room.
    Batched,
}

impl Serialize for Announce {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Announce::Off => serializer.serialize_bool(false),
            Announce::Each => serializer.serialize_bool(true),
            Announce::Batched => serializer.serialize_str("batched"),
        }
    }
}

impl<'de> Deserialize<'de> for Announce {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AnnounceVisitor;
        impl serde::de::Visitor<'_> for AnnounceVisitor {
            type Value = Announce;
            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str(r#"true, false or "batched""#)
            }
            fn visit_bool<E: serde::de::Error>(self, value: bool) -> Result<Announce, E> {
                Ok(if value { Announce::Each } else { Announce::Off })
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Announce, E> {
                match value {
                    "batched" => Ok(Announce::Batched),
                    // Environment variables arrive as text.
                    "true" => Ok(Announce::Each),
                    "false" => Ok(Announce::Off),
                    other => Err(E::invalid_value(serde::de::Unexpected::Str(other), &self)),
                }
            }
        }
        deserializer.deserialize_any(AnnounceVisitor)
    }
}

/// Who may join a room of a type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JoinPolicy {
    /// Any authenticated user.
    Open,
    /// Only users whose JWT `rooms` claim lists the room id or `<type>:*`.
    Claims,
}

/// The development secret shipped in `config/default.toml`. It is public, so a node that listens
/// beyond loopback refuses to start with it unless `auth.allow_development_secret` says so; and it
/// yields to a public key configured in any layer (a layer cannot unset a key).
pub const DEVELOPMENT_JWT_SECRET: &str = "dev-only-secret-change-me-0123456789abcdef";

/// Where token keys come from, after the layering rule: a public key file configured in any
/// layer replaces the shipped development secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource<'a> {
    Secret(&'a str),
    PublicKeyFile(&'a Path),
    /// An identity provider's key set (`auth.jwks_url`).
    Jwks(&'a str),
}

impl AuthSettings {
    /// The key source in effect, or the conflict: both a real secret and a public key file.
    pub fn key_source(&self) -> Result<KeySource<'_>, ConfigError> {
        if let Some(url) = self.jwks_url.as_deref() {
            return match (self.jwt_secret.as_deref(), &self.jwt_public_key_file) {
                (None | Some(DEVELOPMENT_JWT_SECRET), None) => Ok(KeySource::Jwks(url)),
                _ => Err(ConfigError::invalid(
                    "auth.jwks_url",
                    "set one key source: auth.jwks_url, auth.jwt_secret or auth.jwt_public_key_file",
                )),
            };
        }
        match (
            self.jwt_secret.as_deref(),
            self.jwt_public_key_file.as_deref(),
        ) {
            (None, None) => Err(ConfigError::invalid(
                "auth.jwt_secret",
                "no key material: set auth.jwt_secret or auth.jwt_public_key_file",
            )),
            (Some(secret), None) => Ok(KeySource::Secret(secret)),
            (None, Some(file)) => Ok(KeySource::PublicKeyFile(file)),
            (Some(DEVELOPMENT_JWT_SECRET), Some(file)) => Ok(KeySource::PublicKeyFile(file)),
            (Some(_), Some(_)) => Err(ConfigError::invalid(
                "auth.jwt_public_key_file",
                "set either auth.jwt_secret or auth.jwt_public_key_file, not both",
            )),
        }
    }
}

/// Shortest HS256 secret accepted: RFC 7518 asks for a key as long as the hash output.
const MIN_SECRET_BYTES: usize = 32;

/// Room type names follow the same alphabet as room names.
fn is_valid_room_type_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
}

impl Settings {
    /// Loads every layer. `explicit_file` is `--config`; without it `REALTIME_CONFIG` is used.
    pub fn load(explicit_file: Option<&Path>) -> Result<Settings, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        let local_defaults = Path::new("config/default.toml");
        if local_defaults.is_file() {
            figment = figment.merge(Toml::file(local_defaults));
        }
        let named_file = explicit_file
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os(CONFIG_FILE_ENV).map(PathBuf::from));
        if let Some(file) = named_file {
            if !file.is_file() {
                return Err(ConfigError::invalid(
                    "--config",
                    format!("file {} does not exist", file.display()),
                ));
            }
            figment = figment.merge(Toml::file(file));
        }
        figment = figment.merge(Env::prefixed("REALTIME_").split("__").ignore(&["config"]));
        Self::from_figment(figment)
    }

    /// Only the built-in defaults: what tests start from.
    pub fn defaults() -> Settings {
        Self::from_figment(Figment::from(Toml::string(DEFAULT_TOML)))
            .expect("the compiled-in config/default.toml is valid")
    }

    /// Extracts and validates a prepared figment (also used by tests with their own layers).
    pub fn from_figment(figment: Figment) -> Result<Settings, ConfigError> {
        let settings: Settings = figment
            .extract()
            .map_err(|error| ConfigError::Parse(Box::new(error)))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks that serde cannot express: ranges, key material, cross-field rules.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.server.max_connections == 0 {
            return Err(ConfigError::invalid(
                "server.max_connections",
                "must be at least 1",
            ));
        }
        for proxy in &self.server.trusted_proxies {
            crate::transport::check_proxy_entry(proxy)
                .map_err(|problem| ConfigError::invalid("server.trusted_proxies", problem))?;
        }
        for origin in &self.server.allowed_origins {
            crate::transport::check_origin_entry(origin)
                .map_err(|problem| ConfigError::invalid("server.allowed_origins", problem))?;
        }
        if let KeySource::Secret(secret) = self.auth.key_source()? {
            if secret.len() < MIN_SECRET_BYTES {
                return Err(ConfigError::invalid(
                    "auth.jwt_secret",
                    format!("must be at least {MIN_SECRET_BYTES} bytes"),
                ));
            }
            let reachable_from_elsewhere = !self.server.listen.ip().is_loopback();
            if secret == DEVELOPMENT_JWT_SECRET
                && reachable_from_elsewhere
                && !self.auth.allow_development_secret
            {
                return Err(ConfigError::invalid(
                    "auth.jwt_secret",
                    format!(
                        "the built-in development secret is public, so anyone could sign tokens \
                         for any user, and server.listen = {} is reachable from other machines: \
                         set REALTIME_AUTH__JWT_SECRET (32+ random bytes) or \
                         REALTIME_AUTH__JWT_PUBLIC_KEY_FILE, or, for a demo only, \
                         REALTIME_AUTH__ALLOW_DEVELOPMENT_SECRET=true",
                        self.server.listen
                    ),
                ));
            }
        }
        if self.api.key.as_deref().is_some_and(str::is_empty) {
            return Err(ConfigError::invalid(
                "api.key",
                "must not be empty when set",
            ));
        }
        if self.limits.max_frame_bytes < 256 {
            return Err(ConfigError::invalid(
                "limits.max_frame_bytes",
                "must be at least 256",
            ));
        }
        if self.limits.requests_per_sec == 0 || self.limits.request_burst == 0 {
            return Err(ConfigError::invalid(
                "limits.requests_per_sec",
                "requests_per_sec and request_burst must be at least 1",
            ));
        }
        if self.limits.outbox_frames == 0 {
            return Err(ConfigError::invalid(
                "limits.outbox_frames",
                "must be at least 1",
            ));
        }
        if self.presence.ttl_secs == 0 || self.presence.sweep_interval_secs == 0 {
            return Err(ConfigError::invalid(
                "presence.ttl_secs",
                "ttl_secs and sweep_interval_secs must be at least 1",
            ));
        }
        if self.presence.node_lease_secs < 3 {
            return Err(ConfigError::invalid(
                "presence.node_lease_secs",
                "must be at least 3 (the lease is renewed every third of it)",
            ));
        }
        if self.presence.heartbeat_interval_secs == 0
            || self.presence.heartbeat_interval_secs >= self.presence.ttl_secs
        {
            return Err(ConfigError::invalid(
                "presence.heartbeat_interval_secs",
                "must be at least 1 and below presence.ttl_secs",
            ));
        }
        self.validate_cluster()?;
        self.validate_notifications()?;
        self.validate_plugins()?;
        if self.room_types.is_empty() {
            return Err(ConfigError::invalid(
                "room_types",
                "define at least one room type",
            ));
        }
        for (name, room_type) in &self.room_types {
            if !is_valid_room_type_name(name) {
                return Err(ConfigError::invalid(
                    "room_types",
                    format!("type name {name:?} must be 1-32 characters of [A-Za-z0-9_-]"),
                ));
            }
            if room_type.capacity == 0 {
                return Err(ConfigError::invalid(
                    "room_types.<type>.capacity",
                    format!("room type {name:?}: capacity must be at least 1"),
                ));
            }
            if !ANNOUNCE_INTERVAL_MS.contains(&room_type.announce_interval_ms) {
                return Err(ConfigError::invalid(
                    "room_types.<type>.announce_interval_ms",
                    format!(
                        "room type {name:?}: must be {}-{} ms",
                        ANNOUNCE_INTERVAL_MS.start(),
                        ANNOUNCE_INTERVAL_MS.end()
                    ),
                ));
            }
            if room_type.history_size > MAX_HISTORY_SIZE {
                return Err(ConfigError::invalid(
                    "room_types.<type>.history_size",
                    format!("room type {name:?}: at most {MAX_HISTORY_SIZE} events per room"),
                ));
            }
        }
        Ok(())
    }

    fn validate_plugins(&self) -> Result<(), ConfigError> {
        let runtime = &self.plugin_runtime;
        if runtime.call_timeout_ms == 0
            || runtime.max_instances == 0
            || runtime.breaker_failures == 0
        {
            return Err(ConfigError::invalid(
                "plugin_runtime.call_timeout_ms",
                "call_timeout_ms, max_instances and breaker_failures must be at least 1",
            ));
        }
        if runtime.memory_limit_bytes < 1 << 20 || runtime.stack_limit_bytes < 64 << 10 {
            return Err(ConfigError::invalid(
                "plugin_runtime.memory_limit_bytes",
                "memory_limit_bytes must be at least 1 MiB and stack_limit_bytes at least 64 KiB",
            ));
        }
        if runtime.reload_interval_ms == 0 {
            return Err(ConfigError::invalid(
                "plugin_runtime.reload_interval_ms",
                "must be at least 1",
            ));
        }
        for (room_type, settings) in &self.room_types {
            if let Some(unknown) = settings
                .plugins
                .iter()
                .find(|name| !self.plugins.contains_key(*name))
            {
                return Err(ConfigError::invalid(
                    "room_types.<type>.plugins",
                    format!(
                        "room type {room_type:?} names plugin {unknown:?}, which has no [plugins.{unknown}]"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate_notifications(&self) -> Result<(), ConfigError> {
        let url = &self.database.url;
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(ConfigError::invalid(
                "database.url",
                "must start with sqlite:, postgres:// or postgresql://",
            ));
        }
        if self.database.max_connections == 0 || self.database.acquire_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "database.max_connections",
                "max_connections and acquire_timeout_ms must be at least 1",
            ));
        }
        if self.notifications.max_deliveries < 2 {
            return Err(ConfigError::invalid(
                "notifications.max_deliveries",
                "must be at least 2",
            ));
        }
        if self.notifications.ack_wait_secs == 0 {
            return Err(ConfigError::invalid(
                "notifications.ack_wait_secs",
                "must be at least 1",
            ));
        }
        let graphql = &self.graphql;
        if graphql.max_depth == 0 || graphql.max_complexity == 0 || graphql.max_page_size == 0 {
            return Err(ConfigError::invalid(
                "graphql.max_depth",
                "max_depth, max_complexity and max_page_size must be at least 1",
            ));
        }
        let limits = &graphql.rate_limits;
        if [
            limits.notifications,
            limits.mark_notification_read,
            limits.delete_notification,
            limits.mark_all_notifications_read,
        ]
        .contains(&0)
        {
            return Err(ConfigError::invalid(
                "graphql.rate_limits",
                "every limit must be at least 1",
            ));
        }
        Ok(())
    }

    fn validate_cluster(&self) -> Result<(), ConfigError> {
        if self.redis.url.is_some() && self.redis.sentinel.is_some() {
            return Err(ConfigError::invalid(
                "redis.sentinel",
                "set either redis.url or redis.sentinel, not both",
            ));
        }
        if let Some(sentinel) = &self.redis.sentinel
            && (sentinel.master_name.is_empty() || sentinel.addresses.is_empty())
        {
            return Err(ConfigError::invalid(
                "redis.sentinel",
                "needs master_name and at least one address",
            ));
        }
        let prefix_ok = !self.nats.subject_prefix.is_empty()
            && self.nats.subject_prefix.split('.').all(|token| {
                !token.is_empty()
                    && token
                        .bytes()
                        .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
            });
        if !prefix_ok {
            return Err(ConfigError::invalid(
                "nats.subject_prefix",
                "must be dot-separated tokens of [A-Za-z0-9_-]",
            ));
        }
        if self.nats.queue_group.is_empty() {
            return Err(ConfigError::invalid(
                "nats.queue_group",
                "must not be empty",
            ));
        }
        if self.redis.command_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "redis.command_timeout_ms",
                "must be at least 1",
            ));
        }
        match self.broker {
            BrokerChoice::Nats if self.nats.url.is_none() => {
                Err(ConfigError::invalid("broker", "\"nats\" needs nats.url"))
            }
            BrokerChoice::Redis if !self.redis.is_configured() => Err(ConfigError::invalid(
                "broker",
                "\"redis\" needs redis.url or redis.sentinel",
            )),
            _ => Ok(()),
        }
    }

    /// The broker actually used, with `auto` resolved.
    pub fn effective_broker(&self) -> BrokerChoice {
        match self.broker {
            BrokerChoice::Auto if self.nats.url.is_some() => BrokerChoice::Nats,
            BrokerChoice::Auto => BrokerChoice::Memory,
            chosen => chosen,
        }
    }

    /// Whether the shipped development secret is what signs tokens.
    pub fn uses_development_secret(&self) -> bool {
        self.auth.key_source().ok() == Some(KeySource::Secret(DEVELOPMENT_JWT_SECRET))
    }

    /// The effective configuration as TOML, with every secret replaced by `"***"`.
    pub fn to_masked_toml(&self) -> String {
        let mut masked = self.clone();
        let mask = |value: &mut Option<String>| {
            if value.is_some() {
                *value = Some("***".to_owned());
            }
        };
        mask(&mut masked.auth.jwt_secret);
        mask(&mut masked.api.key);
        // URLs may carry credentials (redis://:password@host).
        let mask_credentials = |url: &mut Option<String>| {
            if let Some(value) = url
                && let Some((scheme, rest)) = value.split_once("://")
                && let Some((_, host)) = rest.rsplit_once('@')
            {
                *value = format!("{scheme}://***@{host}");
            }
        };
        mask_credentials(&mut masked.redis.url);
        let mut database_url = Some(masked.database.url.clone());
        mask_credentials(&mut database_url);
        masked.database.url = database_url.unwrap_or_default();
        mask_credentials(&mut masked.nats.url);
        toml::to_string_pretty(&masked).unwrap_or_else(|error| format!("# cannot render: {error}"))
    }

    /// The node name: configured, or `<hostname>-<random>` so two local nodes never collide.
    pub fn resolved_node_id(&self) -> String {
        if !self.server.node_id.is_empty() {
            return self.server.node_id.clone();
        }
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "node".to_owned());
        format!("{host}-{:06x}", rand::random::<u32>() & 0xff_ffff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::providers::Serialized;

    fn with(key: &str, value: impl Serialize) -> Result<Settings, ConfigError> {
        Settings::from_figment(
            Figment::from(Toml::string(DEFAULT_TOML)).merge(Serialized::default(key, value)),
        )
    }

    #[test]
    fn announce_reads_true_false_and_batched_and_names_the_choices_otherwise() {
        let key = "room_types.chat.announce";
        let announce_of = |value: serde_json::Value| {
            with(key, value).map(|settings| settings.room_types["chat"].announcement())
        };
        assert_eq!(
            announce_of(serde_json::json!(true)).unwrap(),
            Announce::Each
        );
        assert_eq!(
            announce_of(serde_json::json!(false)).unwrap(),
            Announce::Off
        );
        assert_eq!(
            announce_of(serde_json::json!("batched")).unwrap(),
            Announce::Batched
        );
        // Environment variables are text.
        assert_eq!(
            announce_of(serde_json::json!("false")).unwrap(),
            Announce::Off
        );
        let error = announce_of(serde_json::json!("sometimes"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(r#"true, false or "batched""#),
            "unhelpful error: {error}"
        );
        let interval = with("room_types.chat.announce_interval_ms", 10).unwrap_err();
        assert!(interval.to_string().contains("announce_interval_ms"));
    }

    #[test]
    fn the_shipped_competition_rooms_batch_their_announcements_and_chat_sends_each() {
        let settings = Settings::defaults();
        assert_eq!(
            settings.room_types["competition"].announcement(),
            Announce::Batched
        );
        assert_eq!(settings.room_types["chat"].announcement(), Announce::Each);
    }

    const RSA_PUBLIC_KEY: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/rsa-public.pem"
    );

    #[test]
    fn a_public_key_file_in_a_later_layer_replaces_the_development_secret() {
        // What REALTIME_AUTH__JWT_PUBLIC_KEY_FILE does: one more layer over the shipped defaults.
        let settings = with("auth.jwt_public_key_file", RSA_PUBLIC_KEY).unwrap();
        assert_eq!(
            settings.auth.key_source().unwrap(),
            KeySource::PublicKeyFile(Path::new(RSA_PUBLIC_KEY))
        );
        assert!(!settings.uses_development_secret());
    }

    #[test]
    fn a_real_secret_and_a_public_key_file_together_are_refused() {
        let error = Settings::from_figment(
            Figment::from(Toml::string(DEFAULT_TOML))
                .merge(Serialized::default(
                    "auth.jwt_secret",
                    "a-real-secret-of-at-least-32-bytes!!",
                ))
                .merge(Serialized::default(
                    "auth.jwt_public_key_file",
                    RSA_PUBLIC_KEY,
                )),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("not both"), "{error}");
    }

    #[test]
    fn the_development_secret_is_refused_beyond_loopback_unless_allowed() {
        let error = with("server.listen", "0.0.0.0:8080")
            .unwrap_err()
            .to_string();
        assert!(error.contains("auth.jwt_secret"), "{error}");
        assert!(error.contains("ALLOW_DEVELOPMENT_SECRET"), "{error}");
        let demo = Settings::from_figment(
            Figment::from(Toml::string(DEFAULT_TOML))
                .merge(Serialized::default("server.listen", "0.0.0.0:8080"))
                .merge(Serialized::default("auth.allow_development_secret", true)),
        );
        assert!(demo.is_ok(), "{:?}", demo.err());
        let real = Settings::from_figment(
            Figment::from(Toml::string(DEFAULT_TOML))
                .merge(Serialized::default("server.listen", "0.0.0.0:8080"))
                .merge(Serialized::default(
                    "auth.jwt_secret",
                    "a-real-secret-of-at-least-32-bytes!!",
                )),
        );
        assert!(real.is_ok(), "{:?}", real.err());
        assert!(
            with("server.listen", "[::1]:8080").is_ok(),
            "loopback is fine"
        );
    }

    /// Keys `config/default.toml` sets or shows commented, with their values: `section.key` as
    /// the docs name them (`room_types.<type>.…`, `plugins.<name>.…`).
    fn keys_in_default_toml() -> Vec<(String, Option<String>)> {
        // A commented `# [table]` shows an example table: it holds the commented keys after it,
        // while real keys still belong to the last real `[table]`.
        let (mut section, mut example_section) = (String::new(), None::<String>);
        let mut keys = Vec::new();
        for line in DEFAULT_TOML.lines() {
            let (commented, text) = match line.strip_prefix('#') {
                Some(rest) => (true, rest.trim()),
                None => (false, line.trim()),
            };
            if let Some(header) = text
                .strip_prefix('[')
                .and_then(|rest| rest.strip_suffix(']'))
            {
                let name = if header.starts_with("room_types.") {
                    "room_types.<type>".to_owned()
                } else if header.starts_with("plugins.") {
                    "plugins.<name>".to_owned()
                } else {
                    header.to_owned()
                };
                if commented {
                    example_section = Some(name);
                } else {
                    (section, example_section) = (name, None);
                }
                continue;
            }
            let Some((key, value)) = text.split_once(" = ") else {
                continue;
            };
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                continue;
            }
            let table = match (&example_section, commented) {
                (Some(example), true) => example.as_str(),
                _ => section.as_str(),
            };
            let full = if table.is_empty() {
                key.to_owned()
            } else {
                format!("{table}.{key}")
            };
            keys.push((full, (!commented).then(|| value.trim().to_owned())));
        }
        keys
    }

    /// The configuration table of docs/operations.md: key -> default cell.
    fn keys_in_the_configuration_reference() -> std::collections::BTreeMap<String, String> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/operations.md");
        let docs = std::fs::read_to_string(path).expect("docs/operations.md");
        docs.lines()
            .filter_map(|line| {
                let mut cells = line.strip_prefix("| `")?.splitn(2, "` |");
                let key = cells.next()?;
                let is_key = key == "broker"
                    || (key.contains('.')
                        && key
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b"._<>".contains(&b)));
                let default = cells.next()?.split(" | ").next()?.trim().to_owned();
                is_key.then(|| (key.to_owned(), default))
            })
            .collect()
    }

    /// The configuration reference (docs/operations.md) and config/default.toml cannot disagree:
    /// the same keys, and each shipped default shown as shipped.
    #[test]
    fn the_configuration_reference_lists_every_key_with_its_shipped_default() {
        let documented = keys_in_the_configuration_reference();
        let shipped = keys_in_default_toml();
        for (key, value) in &shipped {
            let default = documented.get(key).unwrap_or_else(|| {
                panic!("`{key}` is in config/default.toml but not in docs/operations.md")
            });
            let checked = !key.starts_with("room_types.")
                && !key.starts_with("plugins.")
                && key != "auth.jwt_secret";
            if let (true, Some(value)) = (checked, value) {
                let shown = value.trim_matches('"');
                assert!(
                    default.contains(shown),
                    "`{key}`: docs/operations.md says `{default}`, config/default.toml ships {value}"
                );
            }
        }
        let toml_text = DEFAULT_TOML;
        for key in documented.keys() {
            let last = key.rsplit('.').next().unwrap();
            assert!(
                shipped.iter().any(|(shipped_key, _)| shipped_key == key)
                    || toml_text.contains(&format!("#   {last} ")),
                "`{key}` is in docs/operations.md but config/default.toml neither sets nor documents it"
            );
        }
    }

    #[test]
    fn shipped_defaults_are_valid_and_define_the_three_room_types() {
        let settings = Settings::defaults();
        assert_eq!(settings.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(settings.server.max_connections, 10_000);
        assert_eq!(settings.server.fanout_yield_every, 0);
        for name in ["chat", "competition", "lesson"] {
            assert!(settings.room_types.contains_key(name), "missing {name}");
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let error = Settings::from_figment(
            Figment::from(Toml::string(DEFAULT_TOML))
                .merge(Toml::string("[server]\nlisten_on = 1")),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("listen_on"), "{error}");
    }

    #[test]
    fn wrong_type_is_named() {
        let error = with("server.max_connections", "lots")
            .unwrap_err()
            .to_string();
        assert!(error.contains("max_connections"), "{error}");
    }

    #[test]
    fn short_secret_is_rejected_by_name() {
        let error = with("auth.jwt_secret", "short").unwrap_err().to_string();
        assert!(error.contains("auth.jwt_secret"), "{error}");
    }

    #[test]
    fn missing_key_material_is_rejected() {
        let mut settings = Settings::defaults();
        settings.auth.jwt_secret = None;
        let error = settings.validate().unwrap_err().to_string();
        assert!(error.contains("no key material"), "{error}");
    }

    #[test]
    fn heartbeat_must_be_below_ttl() {
        let error = with("presence.heartbeat_interval_secs", 600)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("presence.heartbeat_interval_secs"),
            "{error}"
        );
    }

    #[test]
    fn broker_choice_needs_its_backend() {
        let error = with("broker", "nats").unwrap_err().to_string();
        assert!(error.contains("`broker`"), "{error}");
        let error = with("broker", "redis").unwrap_err().to_string();
        assert!(error.contains("`broker`"), "{error}");
        let settings = with("nats.url", "nats://127.0.0.1:4222").unwrap();
        assert_eq!(settings.effective_broker(), BrokerChoice::Nats);
        assert_eq!(
            Settings::defaults().effective_broker(),
            BrokerChoice::Memory
        );
    }

    #[test]
    fn masked_output_hides_secrets() {
        let mut settings = Settings::defaults();
        settings.api.key = Some("api-secret-value".to_owned());
        let shown = settings.to_masked_toml();
        assert!(!shown.contains("api-secret-value"));
        assert!(!shown.contains(DEVELOPMENT_JWT_SECRET));
        assert!(shown.contains("***"));
    }
}
