//! Tokens from an identity provider: keys from a JWKS endpoint (a small HTTP server in the test),
//! rotated under connected clients, refetched on unknown kids at most once per interval, and
//! kept when the endpoint fails.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use realtime_core::auth::unix_now_secs;
use realtime_tests::{Handshake, TestServer, handshake, unique};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures");

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap()
}

fn rsa_jwk() -> Value {
    serde_json::from_str(&fixture("rsa-public.jwk.json")).unwrap()
}

fn ec_jwk() -> Value {
    serde_json::from_str(&fixture("ec-public.jwk.json")).unwrap()
}

/// A JWKS endpoint whose answer the test changes, counting the requests it gets.
struct JwksEndpoint {
    url: String,
    answer: Arc<Mutex<(u16, String)>>,
    requests: Arc<AtomicUsize>,
}

impl JwksEndpoint {
    async fn start(keys: Vec<Value>) -> JwksEndpoint {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        let answer = Arc::new(Mutex::new((200, json!({ "keys": keys }).to_string())));
        let requests = Arc::new(AtomicUsize::new(0));
        let (shared_answer, counter) = (answer.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (answer, counter) = (shared_answer.clone(), counter.clone());
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(read) => request.extend_from_slice(&chunk[..read]),
                        }
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = answer.lock().clone();
                    let response = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        JwksEndpoint {
            url,
            answer,
            requests,
        }
    }

    fn serve(&self, status: u16, keys: Vec<Value>) {
        *self.answer.lock() = (status, json!({ "keys": keys }).to_string());
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// A token as the identity provider signs it: RS256 with the RSA fixture or ES256 with the EC
/// one, `aud` as an array (as Keycloak sends it).
fn provider_token(algorithm: Algorithm, kid: &str, user: &str, rooms: &[&str]) -> String {
    let key = match algorithm {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(fixture("rsa-private.pem").as_bytes()),
        Algorithm::ES256 => EncodingKey::from_ec_pem(fixture("ec-private.pem").as_bytes()),
        other => panic!("no fixture for {other:?}"),
    }
    .unwrap();
    let mut header = Header::new(algorithm);
    header.kid = Some(kid.to_owned());
    let claims = json!({
        "sub": user, "exp": unix_now_secs() + 600, "iss": "https://idp.test/realms/school",
        "aud": ["account", "realtime"], "rooms": rooms
    });
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

async fn start_with_jwks(
    endpoint: &JwksEndpoint,
    min_refetch_secs: u64,
    refresh_secs: u64,
) -> TestServer {
    let url = endpoint.url.clone();
    TestServer::start_with(move |settings| {
        settings.auth.jwks_url = Some(url);
        settings.auth.issuer = Some("https://idp.test/realms/school".into());
        settings.auth.audience = Some("realtime".into());
        settings.auth.jwks_min_refetch_secs = min_refetch_secs;
        settings.auth.jwks_refresh_secs = refresh_secs;
    })
    .await
    .unwrap()
}

async fn refusal_code(server: &TestServer, token: &str) -> Option<String> {
    match handshake(&server.ws_url(token), None).await.unwrap() {
        Handshake::Refused { body, .. } => Some(body["error"]["code"].as_str()?.to_owned()),
        Handshake::Upgraded(_) => None,
    }
}

#[tokio::test]
async fn a_key_rotation_at_the_identity_provider_needs_no_restart_and_drops_no_one() {
    let endpoint = JwksEndpoint::start(vec![rsa_jwk()]).await;
    let server = start_with_jwks(&endpoint, 1, 300).await;
    let room = unique("chat:rotation");
    let mut alice = realtime_tests::Client::connect(&server.ws_url(&provider_token(
        Algorithm::RS256,
        "rsa-2026",
        "alice",
        &[],
    )))
    .await
    .unwrap();
    alice.join(&room).await.unwrap();

    // The provider rotates to a new key and stops publishing the old one.
    endpoint.serve(200, vec![ec_jwk()]);
    let fetched_before = endpoint.requests();
    let mut bob = realtime_tests::Client::connect(&server.ws_url(&provider_token(
        Algorithm::ES256,
        "ec-2026",
        "bob",
        &[],
    )))
    .await
    .expect("a token signed with the new key is accepted on its first use");
    assert_eq!(
        endpoint.requests(),
        fetched_before + 1,
        "one refetch for the new kid"
    );
    bob.join(&room).await.unwrap();

    // Alice, connected with the old key, still receives and can move to a new token.
    let (status, _) = server
        .publish(json!({"room": room, "event": "after.rotation", "data": {}}))
        .await
        .unwrap();
    assert_eq!(status, 200);
    alice.next_event_named("after.rotation").await.unwrap();
    bob.next_event_named("after.rotation").await.unwrap();
    let renewed = provider_token(Algorithm::ES256, "ec-2026", "alice", &[]);
    alice
        .ok(json!({"op": "refresh", "token": renewed}), 1)
        .await
        .unwrap();

    // The retired key no longer opens new connections.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let retired = provider_token(Algorithm::RS256, "rsa-2026", "carol", &[]);
    assert_eq!(
        refusal_code(&server, &retired).await.as_deref(),
        Some("invalid_token")
    );
}

#[tokio::test]
async fn only_the_published_keys_with_their_own_algorithms_verify() {
    let endpoint = JwksEndpoint::start(vec![rsa_jwk(), ec_jwk()]).await;
    let server = start_with_jwks(&endpoint, 60, 300).await;
    assert!(
        refusal_code(
            &server,
            &provider_token(Algorithm::ES256, "ec-2026", "u", &[])
        )
        .await
        .is_none()
    );
    // The development secret means nothing once keys come from the provider.
    let dev_signed = realtime_tests::sign_hs256(
        realtime_core::config::DEVELOPMENT_JWT_SECRET,
        json!({"sub": "mallory", "exp": unix_now_secs() + 600, "iss": "https://idp.test/realms/school", "aud": "realtime"}),
    );
    assert_eq!(
        refusal_code(&server, &dev_signed).await.as_deref(),
        Some("invalid_token")
    );
    // An RSA-signed token that names the EC key: the key is pinned to ES256.
    let confused = provider_token(Algorithm::RS256, "ec-2026", "mallory", &[]);
    assert_eq!(
        refusal_code(&server, &confused).await.as_deref(),
        Some("invalid_token")
    );
}

#[tokio::test]
async fn unknown_kids_refetch_at_most_once_per_interval_and_a_failing_endpoint_keeps_the_last_set()
{
    let endpoint = JwksEndpoint::start(vec![rsa_jwk()]).await;
    let server = start_with_jwks(&endpoint, 60, 1).await;
    // Periodic refreshes (every second) may run meanwhile; count from a fixed point and allow them.
    let before = endpoint.requests();
    let started = tokio::time::Instant::now();
    for attempt in 0..20 {
        let made_up = provider_token(Algorithm::RS256, &format!("made-up-{attempt}"), "u", &[]);
        assert_eq!(
            refusal_code(&server, &made_up).await.as_deref(),
            Some("invalid_token")
        );
    }
    let periodic = started.elapsed().as_secs() as usize + 1;
    assert!(
        endpoint.requests() - before <= 1 + periodic,
        "20 unknown kids caused {} fetches",
        endpoint.requests() - before
    );

    // The provider fails; refreshes keep failing; the last good set still verifies.
    endpoint.serve(500, vec![]);
    let failing_since = endpoint.requests();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(endpoint.requests() > failing_since, "the node kept trying");
    assert!(
        refusal_code(
            &server,
            &provider_token(Algorithm::RS256, "rsa-2026", "u", &[])
        )
        .await
        .is_none(),
        "tokens of the last good set still verify while the provider is down"
    );
}

#[tokio::test]
async fn a_node_that_cannot_fetch_the_key_set_does_not_start() {
    let mut settings = realtime_tests::test_settings();
    settings.auth.jwks_url = Some("http://127.0.0.1:9/.well-known/jwks.json".into());
    let error = match TestServer::start_node(&settings).await {
        Ok(_) => panic!("started without a key set"),
        Err(error) => format!("{error:#}"),
    };
    assert!(error.contains("auth.jwks_url"), "{error}");
}
