//! JWT verification (handshake and `refresh`) and token minting for `realtime gentoken`.
//!
//! One key, one algorithm: HS256 for `auth.jwt_secret`, RS256 or ES256 for the PEM in
//! `auth.jwt_public_key_file`. The token header must name exactly that algorithm, so `alg: none`
//! and algorithm confusion (an HS256 token "signed" with the public key) fail. A `kid` header must
//! match `auth.key_id`; with no `key_id` configured any `kid` is unknown and rejected.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{AuthSettings, KeySource};
use crate::room::{RoomId, RoomPattern};

/// Why a token was refused. The text goes to the client; it never contains key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("no token: pass ?token= or Authorization: Bearer")]
    Missing,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
    #[error("token signature or algorithm is not accepted")]
    BadSignature,
    #[error("token key id (kid) is unknown")]
    UnknownKeyId,
    #[error("token issuer is not accepted")]
    BadIssuer,
    #[error("token audience is not accepted")]
    BadAudience,
    #[error("token is malformed or lacks a required claim ({0})")]
    Malformed(String),
}

/// Key material problems found at startup.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("configuration key `auth.jwt_public_key_file`: cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "configuration key `auth.jwt_public_key_file`: not an RSA or P-256 EC public key in PEM form"
    )]
    UnsupportedPem,
    #[error("configuration key `auth.jwt_secret`: no key material configured")]
    NoKey,
    #[error("signing key: {0}")]
    Signing(String),
}

/// The claims the server reads. Unknown claims are ignored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// RFC 7519 section 4.1.3: one audience, or an array of them (what Keycloak, Auth0 and
    /// most identity providers send). `auth.audience` must be one of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    /// Rooms this user may join where the room type has `join = "claims"`: exact ids or `type:*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rooms: Vec<String>,
}

/// The `aud` claim: a string or an array of strings (RFC 7519 section 4.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

/// A verified identity.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user_id: String,
    /// Expiry, seconds since the Unix epoch.
    pub expires_at: u64,
    room_grants: Vec<RoomPattern>,
}

impl Identity {
    /// Whether the `rooms` claim grants this room (exact id or `<type>:*`).
    pub fn may_join(&self, room: &RoomId) -> bool {
        self.room_grants.iter().any(|grant| grant.matches(room))
    }
}

/// Verifies tokens against the configured key, or the keys of a JWKS. Cheap to share; build
/// once at startup.
pub struct TokenVerifier {
    keys: Keys,
    /// Every rule but the algorithm, which comes with the key.
    validation: Validation,
}

/// Where verification keys come from.
enum Keys {
    /// One configured key; a token's `kid`, if any, must equal `auth.key_id`.
    Single {
        key: DecodingKey,
        algorithm: Algorithm,
        key_id: Option<String>,
    },
    /// An identity provider's key set: the token's `kid` picks the key and its pinned algorithm.
    Jwks(std::sync::Arc<crate::jwks::JwksCache>),
}

/// Longest user id (`sub`), bytes; notifications accept the same, so every user can get them.
pub const MAX_USER_ID_BYTES: usize = 256;

impl TokenVerifier {
    /// A verifier for a configured secret or public key file (not for `auth.jwks_url`: see
    /// [`TokenVerifier::with_jwks`]).
    pub fn from_settings(auth: &AuthSettings) -> Result<TokenVerifier, KeyError> {
        let source = auth.key_source().map_err(|_| KeyError::NoKey)?;
        let (key, algorithm) = match source {
            KeySource::Jwks(_) => return Err(KeyError::NoKey),
            KeySource::Secret(secret) => (
                DecodingKey::from_secret(secret.as_bytes()),
                Algorithm::HS256,
            ),
            KeySource::PublicKeyFile(path) => {
                let pem = std::fs::read(path).map_err(|source| KeyError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                    (key, Algorithm::ES256)
                } else if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                    (key, Algorithm::RS256)
                } else {
                    return Err(KeyError::UnsupportedPem);
                }
            }
        };
        Ok(TokenVerifier {
            keys: Keys::Single {
                key,
                algorithm,
                key_id: auth.key_id.clone(),
            },
            validation: validation_rules(auth),
        })
    }

    /// A verifier whose keys come from an identity provider's key set.
    pub fn with_jwks(auth: &AuthSettings, jwks: std::sync::Arc<crate::jwks::JwksCache>) -> Self {
        TokenVerifier {
            keys: Keys::Jwks(jwks),
            validation: validation_rules(auth),
        }
    }

    /// The key set, when keys come from one.
    pub fn jwks(&self) -> Option<&std::sync::Arc<crate::jwks::JwksCache>> {
        match &self.keys {
            Keys::Jwks(cache) => Some(cache),
            Keys::Single { .. } => None,
        }
    }

    /// The key for a token with this header, and the one algorithm it may be signed with.
    fn key_for(&self, header: &Header) -> Result<(DecodingKey, Algorithm), AuthError> {
        match &self.keys {
            Keys::Single {
                key,
                algorithm,
                key_id,
            } => {
                if header.kid.is_some() && header.kid != *key_id {
                    return Err(AuthError::UnknownKeyId);
                }
                Ok((key.clone(), *algorithm))
            }
            Keys::Jwks(cache) => {
                let kid = header.kid.as_deref().ok_or(AuthError::UnknownKeyId)?;
                let pinned = cache.key(kid).ok_or(AuthError::UnknownKeyId)?;
                Ok((pinned.key, pinned.algorithm))
            }
        }
    }

    /// Verifies signature, algorithm, `kid`, `exp`, `nbf`, `iss`, `aud` and `sub`.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::Malformed("header".to_owned()))?;
        let (key, algorithm) = self.key_for(&header)?;
        // One algorithm per key: anything else in the header is refused (no `none`, no
        // HS256 "signed" with a public key).
        let mut validation = self.validation.clone();
        validation.algorithms = vec![algorithm];
        let data =
            jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(map_jwt_error)?;
        let claims = data.claims;
        if claims.sub.is_empty() || claims.sub.len() > MAX_USER_ID_BYTES {
            return Err(AuthError::Malformed("sub".to_owned()));
        }
        Ok(Identity {
            user_id: claims.sub,
            expires_at: claims.exp,
            room_grants: claims
                .rooms
                .iter()
                .filter_map(|grant| RoomPattern::parse(grant))
                .collect(),
        })
    }
}

/// Every rule a token must pass but its algorithm: `exp`, `nbf` (with the leeway), `sub`, and
/// `iss` / `aud` when configured.
fn validation_rules(auth: &AuthSettings) -> Validation {
    let mut validation = Validation {
        leeway: auth.leeway_secs,
        validate_nbf: true,
        ..Validation::default()
    };
    validation.set_required_spec_claims(&["exp", "sub"]);
    if let Some(issuer) = &auth.issuer {
        validation.set_issuer(&[issuer]);
    }
    match &auth.audience {
        Some(audience) => validation.set_audience(&[audience]),
        None => validation.validate_aud = false,
    }
    validation
}

fn map_jwt_error(error: jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::BadIssuer,
        ErrorKind::InvalidAudience => AuthError::BadAudience,
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::InvalidKeyFormat => AuthError::BadSignature,
        ErrorKind::MissingRequiredClaim(claim) => AuthError::Malformed(claim.clone()),
        _ => AuthError::Malformed("token".to_owned()),
    }
}

/// What `realtime checktoken` shows: the verdict, and the token's header and claims as sent
/// (decoded without verification, to show what a refused token says about itself).
#[derive(Debug)]
pub struct TokenCheck {
    pub verdict: Result<Identity, AuthError>,
    pub header: Option<serde_json::Value>,
    pub claims: Option<serde_json::Value>,
}

impl TokenCheck {
    /// Checks `token` with `verifier` and decodes its parts for display.
    pub fn of(verifier: &TokenVerifier, token: &str) -> TokenCheck {
        let part = |index: usize| -> Option<serde_json::Value> {
            use base64::Engine;
            let encoded = token.split('.').nth(index)?;
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(encoded.trim_end_matches('='))
                .ok()?;
            serde_json::from_slice(&bytes).ok()
        };
        TokenCheck {
            verdict: verifier.verify(token),
            header: part(0),
            claims: part(1),
        }
    }

    /// The report printed by `realtime checktoken`, as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let verdict = match &self.verdict {
            Ok(identity) => serde_json::json!({
                "valid": true,
                "user": identity.user_id,
                "expires_at": identity.expires_at,
                "expires_in_secs": identity.expires_at as i64 - unix_now_secs() as i64,
            }),
            Err(error) => serde_json::json!({"valid": false, "why": error.to_string()}),
        };
        serde_json::json!({"verdict": verdict, "header": self.header, "claims": self.claims})
    }
}

/// What `realtime gentoken` signs.
pub struct TokenRequest {
    pub user_id: String,
    pub ttl: Duration,
    pub rooms: Vec<String>,
}

/// Signs a token with the configured HS256 secret, or with a PEM private key for RS256/ES256.
pub fn mint_token(
    auth: &AuthSettings,
    private_key_pem: Option<&[u8]>,
    request: &TokenRequest,
) -> Result<String, KeyError> {
    let secret = match auth.key_source() {
        Ok(KeySource::Secret(secret)) => Some(secret),
        _ => None,
    };
    let (key, algorithm) = match (secret, private_key_pem) {
        (Some(secret), _) => (
            EncodingKey::from_secret(secret.as_bytes()),
            Algorithm::HS256,
        ),
        (None, Some(pem)) => {
            if let Ok(key) = EncodingKey::from_ec_pem(pem) {
                (key, Algorithm::ES256)
            } else {
                let key = EncodingKey::from_rsa_pem(pem)
                    .map_err(|error| KeyError::Signing(error.to_string()))?;
                (key, Algorithm::RS256)
            }
        }
        (None, None) => {
            return Err(KeyError::Signing(
                "auth uses a public key: pass --private-key FILE to sign".to_owned(),
            ));
        }
    };
    let now = unix_now_secs();
    let claims = Claims {
        sub: request.user_id.clone(),
        exp: now + request.ttl.as_secs(),
        nbf: None,
        iat: Some(now),
        iss: auth.issuer.clone(),
        aud: auth.audience.clone().map(Audience::One),
        rooms: request.rooms.clone(),
    };
    let mut header = Header::new(algorithm);
    header.kid = auth.key_id.clone();
    jsonwebtoken::encode(&header, &claims, &key)
        .map_err(|error| KeyError::Signing(error.to_string()))
}

/// Seconds since the Unix epoch (wall clock: JWT times are wall-clock times).
pub fn unix_now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn settings() -> AuthSettings {
        Settings::defaults().auth
    }

    fn token_with(claims: serde_json::Value, header: Header, secret: &str) -> String {
        jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn minted_token_verifies_and_carries_room_grants() {
        let auth = settings();
        let token = mint_token(
            &auth,
            None,
            &TokenRequest {
                user_id: "alice".into(),
                ttl: Duration::from_secs(60),
                rooms: vec!["competition:*".into(), "lesson:7".into()],
            },
        )
        .unwrap();
        let identity = TokenVerifier::from_settings(&auth)
            .unwrap()
            .verify(&token)
            .unwrap();
        assert_eq!(identity.user_id, "alice");
        assert!(identity.may_join(&RoomId::parse("competition:42").unwrap()));
        assert!(identity.may_join(&RoomId::parse("lesson:7").unwrap()));
        assert!(!identity.may_join(&RoomId::parse("lesson:8").unwrap()));
    }

    #[test]
    fn wrong_secret_expired_and_missing_sub_are_refused() {
        let auth = settings();
        let verifier = TokenVerifier::from_settings(&auth).unwrap();
        let exp = unix_now_secs() + 60;
        let forged = token_with(
            serde_json::json!({"sub":"a","exp":exp}),
            Header::new(Algorithm::HS256),
            "another-secret-of-sufficient-length-000",
        );
        assert_eq!(
            verifier.verify(&forged).unwrap_err(),
            AuthError::BadSignature
        );
        let secret = auth.jwt_secret.as_deref().unwrap();
        let expired = token_with(
            serde_json::json!({"sub":"a","exp":unix_now_secs() - 3600}),
            Header::new(Algorithm::HS256),
            secret,
        );
        assert_eq!(verifier.verify(&expired).unwrap_err(), AuthError::Expired);
        let no_sub = token_with(
            serde_json::json!({"exp":exp}),
            Header::new(Algorithm::HS256),
            secret,
        );
        assert!(matches!(
            verifier.verify(&no_sub).unwrap_err(),
            AuthError::Malformed(_)
        ));
    }

    #[test]
    fn an_audience_array_is_accepted_when_one_element_matches() {
        let mut auth = settings();
        auth.audience = Some("realtime".into());
        let verifier = TokenVerifier::from_settings(&auth).unwrap();
        let secret = auth.jwt_secret.as_deref().unwrap();
        let exp = unix_now_secs() + 60;
        let token = |aud: serde_json::Value| {
            token_with(
                serde_json::json!({"sub": "a", "exp": exp, "aud": aud}),
                Header::new(Algorithm::HS256),
                secret,
            )
        };
        let keycloak_style = token(serde_json::json!(["account", "realtime"]));
        assert_eq!(verifier.verify(&keycloak_style).unwrap().user_id, "a");
        assert!(
            verifier
                .verify(&token(serde_json::json!("realtime")))
                .is_ok()
        );
        assert_eq!(
            verifier
                .verify(&token(serde_json::json!(["account", "billing"])))
                .unwrap_err(),
            AuthError::BadAudience
        );
        assert_eq!(
            verifier
                .verify(&token(serde_json::json!("billing")))
                .unwrap_err(),
            AuthError::BadAudience
        );
        // Without `auth.audience`, any `aud` is accepted, arrays included.
        let open = TokenVerifier::from_settings(&settings()).unwrap();
        assert!(open.verify(&keycloak_style).is_ok());
    }

    #[test]
    fn unknown_kid_and_other_algorithms_are_refused() {
        let auth = settings();
        let verifier = TokenVerifier::from_settings(&auth).unwrap();
        let secret = auth.jwt_secret.as_deref().unwrap();
        let claims = serde_json::json!({"sub":"a","exp":unix_now_secs() + 60});
        let mut with_kid = Header::new(Algorithm::HS256);
        with_kid.kid = Some("someone-elses-key".into());
        assert_eq!(
            verifier
                .verify(&token_with(claims.clone(), with_kid, secret))
                .unwrap_err(),
            AuthError::UnknownKeyId
        );
        let hs512 = token_with(claims, Header::new(Algorithm::HS512), secret);
        assert_eq!(
            verifier.verify(&hs512).unwrap_err(),
            AuthError::BadSignature
        );
    }
}
