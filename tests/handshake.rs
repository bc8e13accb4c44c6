//! Handshake: token sources, every way a token is refused, the connected frame, node_full.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use realtime_core::auth::unix_now_secs;
use realtime_tests::{Handshake, TestServer, handshake, sign_hs256};
use serde_json::{Value, json};

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

async fn refused(url: &str, authorization: Option<&str>) -> (u16, Value) {
    match handshake(url, authorization).await.unwrap() {
        Handshake::Refused { status, body } => (status, body),
        Handshake::Upgraded(_) => panic!("handshake should have been refused: {url}"),
    }
}

async fn assert_invalid_token(server: &TestServer, token: &str) {
    let (status, body) = refused(&server.ws_url(token), None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "invalid_token", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}

#[tokio::test]
async fn valid_token_gets_the_connected_frame() {
    let server = TestServer::start().await.unwrap();
    let token = server.token("alice");
    let Handshake::Upgraded(mut client) = handshake(&server.ws_url(&token), None).await.unwrap()
    else {
        panic!("valid token refused");
    };
    let hello = client.expect_connected().await.unwrap();
    assert_eq!(hello["user_id"], "alice");
    assert_eq!(hello["node"], server.server.node_id());
    assert!(hello["socket_id"].as_str().is_some_and(|id| !id.is_empty()));
    assert_eq!(
        hello["heartbeat_interval_ms"],
        server.settings.presence.heartbeat_interval_secs * 1000
    );
    let expires_at = hello["expires_at"].as_u64().unwrap();
    assert!(
        expires_at > unix_now_secs() + 3000,
        "expires_at is the token's exp"
    );
}

#[tokio::test]
async fn bearer_header_is_accepted() {
    let server = TestServer::start().await.unwrap();
    let url = format!("ws://{}/ws", server.addr);
    let header = format!("Bearer {}", server.token("bob"));
    let Handshake::Upgraded(mut client) = handshake(&url, Some(&header)).await.unwrap() else {
        panic!("bearer token refused");
    };
    assert_eq!(client.expect_connected().await.unwrap()["user_id"], "bob");
}

#[tokio::test]
async fn missing_token_is_refused_before_upgrade() {
    let server = TestServer::start().await.unwrap();
    let (status, body) = refused(&format!("ws://{}/ws", server.addr), None).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "invalid_token");
    let (status, _) = refused(&format!("ws://{}/ws", server.addr), Some("Basic abc")).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn bad_expired_and_premature_tokens_are_refused() {
    let server = TestServer::start().await.unwrap();
    let secret = server.settings.auth.jwt_secret.clone().unwrap();
    let now = unix_now_secs();
    assert_invalid_token(&server, "not-a-jwt").await;
    assert_invalid_token(
        &server,
        &sign_hs256(
            "a-different-secret-that-is-long-enough!",
            json!({"sub":"a","exp":now+60}),
        ),
    )
    .await;
    assert_invalid_token(
        &server,
        &sign_hs256(&secret, json!({"sub":"a","exp":now-10})),
    )
    .await;
    assert_invalid_token(
        &server,
        &sign_hs256(&secret, json!({"sub":"a","exp":now+600,"nbf":now+300})),
    )
    .await;
    assert_invalid_token(&server, &sign_hs256(&secret, json!({"exp":now+60}))).await;
    assert_invalid_token(
        &server,
        &sign_hs256(&secret, json!({"sub":"","exp":now+60})),
    )
    .await;
}

#[tokio::test]
async fn alg_none_other_algorithms_and_unknown_kid_are_refused() {
    let server = TestServer::start().await.unwrap();
    let secret = server.settings.auth.jwt_secret.clone().unwrap();
    let claims = json!({"sub":"mallory","exp":unix_now_secs()+60});
    let unsigned = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims.to_string().as_bytes())
    );
    assert_invalid_token(&server, &unsigned).await;
    let hs512 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    assert_invalid_token(&server, &hs512).await;
    let mut with_kid = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    with_kid.kid = Some("unknown".into());
    let kid_token = jsonwebtoken::encode(
        &with_kid,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    assert_invalid_token(&server, &kid_token).await;
}

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

#[tokio::test]
async fn rs256_tokens_verify_and_algorithm_confusion_is_refused() {
    let server = TestServer::start_with(|settings| {
        settings.auth.jwt_secret = None;
        settings.auth.jwt_public_key_file = Some(fixture("rsa-public.pem"));
        settings.auth.issuer = Some("https://auth.test".into());
        settings.auth.audience = Some("realtime".into());
    })
    .await
    .unwrap();
    let private = std::fs::read(fixture("rsa-private.pem")).unwrap();
    let public = std::fs::read(fixture("rsa-public.pem")).unwrap();
    let now = unix_now_secs();
    let sign_rs = |claims: Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_rsa_pem(&private).unwrap(),
        )
        .unwrap()
    };
    let good =
        sign_rs(json!({"sub":"carol","exp":now+60,"iss":"https://auth.test","aud":"realtime"}));
    let Handshake::Upgraded(mut client) = handshake(&server.ws_url(&good), None).await.unwrap()
    else {
        panic!("RS256 token refused");
    };
    assert_eq!(client.expect_connected().await.unwrap()["user_id"], "carol");
    assert_invalid_token(
        &server,
        &sign_rs(json!({"sub":"carol","exp":now+60,"iss":"https://evil","aud":"realtime"})),
    )
    .await;
    assert_invalid_token(
        &server,
        &sign_rs(json!({"sub":"carol","exp":now+60,"iss":"https://auth.test","aud":"other"})),
    )
    .await;
    // Algorithm confusion: an HS256 token whose HMAC key is the server's public key.
    let confused = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub":"mallory","exp":now+60,"iss":"https://auth.test","aud":"realtime"}),
        &jsonwebtoken::EncodingKey::from_secret(&public),
    )
    .unwrap();
    assert_invalid_token(&server, &confused).await;
}

#[tokio::test]
async fn es256_tokens_verify() {
    let server = TestServer::start_with(|settings| {
        settings.auth.jwt_secret = None;
        settings.auth.jwt_public_key_file = Some(fixture("ec-public.pem"));
        settings.auth.key_id = Some("k1".into());
    })
    .await
    .unwrap();
    let private = std::fs::read(fixture("ec-private.pem")).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("k1".into());
    let token = jsonwebtoken::encode(
        &header,
        &json!({"sub":"dave","exp":unix_now_secs()+60}),
        &jsonwebtoken::EncodingKey::from_ec_pem(&private).unwrap(),
    )
    .unwrap();
    let Handshake::Upgraded(mut client) = handshake(&server.ws_url(&token), None).await.unwrap()
    else {
        panic!("ES256 token refused");
    };
    assert_eq!(client.expect_connected().await.unwrap()["user_id"], "dave");
}

#[tokio::test]
async fn over_max_connections_is_node_full_and_a_freed_slot_is_reusable() {
    let server = TestServer::start_with(|settings| settings.server.max_connections = 2)
        .await
        .unwrap();
    let first = server.connect("u1").await.unwrap();
    let _second = server.connect("u2").await.unwrap();
    let (status, body) = refused(&server.ws_url(&server.token("u3")), None).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "node_full");
    first.close().await.unwrap();
    let mut admitted = None;
    for _ in 0..50 {
        if let Handshake::Upgraded(client) = handshake(&server.ws_url(&server.token("u3")), None)
            .await
            .unwrap()
        {
            admitted = Some(client);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(admitted.is_some(), "a closed connection frees its slot");
}

#[tokio::test]
async fn a_request_that_is_not_a_websocket_upgrade_gets_a_coded_400() {
    let server = TestServer::start().await.unwrap();
    let url = format!("http://{}/ws?token={}", server.addr, server.token("carol"));
    let client = reqwest::Client::new();
    let plain = client.get(&url).send().await.unwrap();
    assert_eq!(plain.status(), 400);
    let body: Value = plain.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_request", "{body}");

    let wrong_version = client
        .get(&url)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "8")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_version.status(), 400);
    let body: Value = wrong_version.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|message| message.contains("13")),
        "{body}"
    );
    // The node is unharmed: a real client still connects.
    let Handshake::Upgraded(mut client) = handshake(&server.ws_url(&server.token("carol")), None)
        .await
        .unwrap()
    else {
        panic!("valid handshake refused after bad ones");
    };
    client.expect_connected().await.unwrap();
}

#[tokio::test]
async fn one_user_or_one_address_cannot_take_every_slot_of_a_node() {
    let server = TestServer::start_with(|settings| {
        settings.limits.max_connections_per_user = 2;
        settings.limits.max_connections_per_address = 3;
    })
    .await
    .unwrap();
    let first = server.connect("hoarder").await.unwrap();
    let _second = server.connect("hoarder").await.unwrap();
    let (status, body) = refused(&server.ws_url(&server.token("hoarder")), None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("too_many_connections")),
        "{body}"
    );

    // Another user from the same address gets the address's last place, then the address is full.
    let _third = server.connect("neighbour").await.unwrap();
    let (status, body) = refused(&server.ws_url(&server.token("latecomer")), None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("too_many_connections")),
        "{body}"
    );

    // A closed connection gives its places back.
    first.close().await.unwrap();
    let mut again = None;
    for _ in 0..50 {
        if let Ok(client) = server.connect("hoarder").await {
            again = Some(client);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(again.is_some(), "the user's place came back after a close");
}

/// A handshake for `user` that says it comes through a proxy for `client`.
async fn handshake_forwarded_for(server: &TestServer, user: &str, client: &str) -> Handshake {
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            server.ws_url(&server.token(user)),
        )
        .unwrap();
    request
        .headers_mut()
        .insert("x-forwarded-for", client.parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => {
            drop(socket);
            Handshake::Refused {
                status: 101,
                body: Value::Null,
            }
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Handshake::Refused {
            status: response.status().as_u16(),
            body: Value::Null,
        },
        Err(error) => panic!("{error}"),
    }
}

#[tokio::test]
async fn behind_a_trusted_proxy_clients_are_counted_by_their_own_address() {
    fn status(handshake: Handshake) -> u16 {
        match handshake {
            Handshake::Refused { status, .. } => status,
            Handshake::Upgraded(_) => 101,
        }
    }
    // The test client is the "load balancer" at 127.0.0.1.
    let behind_proxy = TestServer::start_with(|settings| {
        settings.limits.max_connections_per_address = 1;
        settings.server.trusted_proxies = vec!["127.0.0.0/8".to_owned()];
    })
    .await
    .unwrap();
    let _first = behind_proxy.connect("placeholder").await;
    // `placeholder` took 127.0.0.1's place; forwarded clients are counted apart.
    let mut held = Vec::new();
    for (user, client) in [("u1", "203.0.113.1"), ("u2", "203.0.113.2")] {
        let mut request =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                behind_proxy.ws_url(&behind_proxy.token(user)),
            )
            .unwrap();
        request
            .headers_mut()
            .insert("x-forwarded-for", client.parse().unwrap());
        let (socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .unwrap_or_else(|error| panic!("{client} refused: {error}"));
        held.push(socket);
    }
    assert_eq!(
        status(handshake_forwarded_for(&behind_proxy, "u3", "203.0.113.1").await),
        429,
        "a second connection from the same client address is over its share"
    );

    // Without trusted proxies the header is ignored: everyone is 127.0.0.1.
    let direct = TestServer::start_with(|settings| {
        settings.limits.max_connections_per_address = 1;
    })
    .await
    .unwrap();
    let _only = direct.connect("first").await.unwrap();
    assert_eq!(
        status(handshake_forwarded_for(&direct, "second", "203.0.113.9").await),
        429,
        "a client cannot claim another address"
    );
}
