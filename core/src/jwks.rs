//! Token keys from an identity provider's JWKS endpoint (`auth.jwks_url`), the way the spec's
//! Auth Service publishes them.
//!
//! - The key set is fetched at startup (a node that cannot fetch it does not start), then again
//!   every `auth.jwks_refresh_secs`, and when a token names a `kid` the set does not hold, at
//!   most once per `auth.jwks_min_refetch_secs` (a flood of made-up kids costs one request per
//!   interval, and a rotated key is picked up on its first token).
//! - A failed fetch keeps the last good set: an identity provider outage does not log anyone out.
//! - Each key's algorithm is pinned when it is loaded: its `alg`, or for keys without one the
//!   algorithm its type implies (RSA: RS256; EC P-256: ES256, P-384: ES384; Ed25519: EdDSA). A
//!   token whose header names another algorithm is refused, so no key can be used with an
//!   algorithm it was not published for. Symmetric (`oct`) keys and encryption keys are skipped.
//! - Keys are cached under the issuer they were fetched for (`auth.issuer`) and their `kid`.

use std::collections::HashMap;
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use parking_lot::RwLock;
use tokio::time::Instant;

/// How long one fetch of the key set may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest key set accepted, bytes.
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// A key ready for verification, with the one algorithm it may be used with.
#[derive(Clone)]
pub struct PinnedKey {
    pub key: DecodingKey,
    pub algorithm: Algorithm,
}

/// Where a JWKS comes from and how often it is fetched.
#[derive(Debug, Clone)]
pub struct JwksSource {
    pub url: String,
    pub issuer: Option<String>,
    pub refresh_every: Duration,
    pub min_refetch: Duration,
}

/// The cached key set of one identity provider.
pub struct JwksCache {
    source: JwksSource,
    client: reqwest::Client,
    /// (issuer, kid) -> key.
    keys: RwLock<HashMap<(Option<String>, String), PinnedKey>>,
    /// One fetch at a time; holds when the last refetch for an unknown kid started.
    refetch: tokio::sync::Mutex<Option<Instant>>,
}

impl JwksCache {
    /// Fetches the key set once; fails when it cannot be fetched or holds no usable key.
    pub async fn start(source: JwksSource) -> Result<JwksCache, String> {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|error| error.to_string())?;
        let cache = JwksCache {
            source,
            client,
            keys: RwLock::default(),
            refetch: tokio::sync::Mutex::new(None),
        };
        cache.fetch().await?;
        Ok(cache)
    }

    pub fn source(&self) -> &JwksSource {
        &self.source
    }

    /// The key for `kid`, if the cached set holds it.
    pub fn key(&self, kid: &str) -> Option<PinnedKey> {
        self.keys
            .read()
            .get(&(self.source.issuer.clone(), kid.to_owned()))
            .cloned()
    }

    /// Fetches the set and replaces the cache with it; on any failure the cache is unchanged.
    /// Returns how many usable keys the set had.
    pub async fn fetch(&self) -> Result<usize, String> {
        let response = self
            .client
            .get(&self.source.url)
            .send()
            .await
            .map_err(|error| format!("cannot fetch {}: {error}", self.source.url))?;
        if !response.status().is_success() {
            return Err(format!(
                "{} answered {}",
                self.source.url,
                response.status()
            ));
        }
        let body = response
            .bytes()
            .await
            .map_err(|error| format!("cannot read {}: {error}", self.source.url))?;
        if body.len() > MAX_JWKS_BYTES {
            return Err(format!(
                "{} is over {MAX_JWKS_BYTES} bytes",
                self.source.url
            ));
        }
        let set: JwkSet = serde_json::from_slice(&body)
            .map_err(|error| format!("{} is not a JWK set: {error}", self.source.url))?;
        let keys: HashMap<_, _> = set
            .keys
            .iter()
            .filter_map(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                let pinned = pin(jwk)?;
                Some(((self.source.issuer.clone(), kid), pinned))
            })
            .collect();
        if keys.is_empty() {
            return Err(format!(
                "{} holds no signing key with a kid that this server can use",
                self.source.url
            ));
        }
        let count = keys.len();
        *self.keys.write() = keys;
        Ok(count)
    }

    /// After a token named an unknown `kid`: fetches again unless a refetch started less than
    /// `min_refetch` ago (then the caller waits for nothing). True when a fetch succeeded.
    pub async fn refetch_for_unknown_kid(&self) -> bool {
        let mut last = self.refetch.lock().await;
        if last.is_some_and(|started| started.elapsed() < self.source.min_refetch) {
            return false;
        }
        *last = Some(Instant::now());
        match self.fetch().await {
            Ok(_) => true,
            Err(error) => {
                tracing::warn!(%error, "JWKS refetch failed; keeping the last good key set");
                false
            }
        }
    }

    /// Refetches every `refresh_every` until `stop` is cancelled.
    pub fn spawn_refresher(
        cache: std::sync::Arc<JwksCache>,
        stop: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(cache.source.refresh_every) => {}
                }
                if let Err(error) = cache.fetch().await {
                    tracing::warn!(%error, "JWKS refresh failed; keeping the last good key set");
                }
            }
        })
    }
}

/// The key with its pinned algorithm, or `None` for keys this server does not verify with.
fn pin(jwk: &Jwk) -> Option<PinnedKey> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let implied = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(parameters) => match parameters.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(parameters) => match parameters.curve {
            EllipticCurve::Ed25519 => Algorithm::EdDSA,
            _ => return None,
        },
        // Symmetric keys have no place in a published key set; anything else is unknown.
        _ => return None,
    };
    let algorithm = match jwk.common.key_algorithm {
        Some(declared) => Algorithm::try_from(declared).ok()?,
        None => implied,
    };
    if matches!(
        algorithm,
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
    ) {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(PinnedKey { key, algorithm })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwk(json: serde_json::Value) -> Jwk {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn keys_are_pinned_to_their_declared_or_implied_algorithm() {
        let ec = jwk(serde_json::json!({"kty":"EC","crv":"P-256","kid":"e",
            "x":"hF7Fh6o9h1Ged4xDES9SPGV9iOo5rdDLsFM6H14U87E","y":"2O6LaA1wSuD4hNSZRUN3uBuLEBAl7Y_FVhsfj1yt7R0"}));
        assert_eq!(pin(&ec).unwrap().algorithm, Algorithm::ES256);
        let mut declared = ec.clone();
        declared.common.key_algorithm = Some(jsonwebtoken::jwk::KeyAlgorithm::ES256);
        assert_eq!(pin(&declared).unwrap().algorithm, Algorithm::ES256);
    }

    #[test]
    fn symmetric_and_encryption_keys_are_skipped() {
        let oct = jwk(serde_json::json!({"kty":"oct","kid":"s","k":"c2VjcmV0"}));
        assert!(pin(&oct).is_none());
        let mut encryption = jwk(serde_json::json!({"kty":"EC","crv":"P-256","kid":"e",
            "x":"hF7Fh6o9h1Ged4xDES9SPGV9iOo5rdDLsFM6H14U87E","y":"2O6LaA1wSuD4hNSZRUN3uBuLEBAl7Y_FVhsfj1yt7R0"}));
        encryption.common.public_key_use = Some(PublicKeyUse::Encryption);
        assert!(pin(&encryption).is_none());
    }
}
