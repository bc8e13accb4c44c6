//! The HTTP publish API: room and user targets, keys, and that nobody else receives.

use std::time::Duration;

use realtime_tests::TestServer;
use serde_json::json;

#[tokio::test]
async fn room_publish_reaches_members_and_no_one_else() {
    let server = TestServer::start().await.unwrap();
    let mut member = server
        .connect_with_rooms("m1", &["competition:*"])
        .await
        .unwrap();
    let mut other_member = server
        .connect_with_rooms("m2", &["competition:*"])
        .await
        .unwrap();
    let mut outsider = server
        .connect_with_rooms("o1", &["competition:*"])
        .await
        .unwrap();
    member.join("competition:42").await.unwrap();
    other_member.join("competition:42").await.unwrap();
    outsider.join("competition:43").await.unwrap();
    let (status, body) = server
        .publish(json!({"room":"competition:42","event":"match.update","data":{"score":[1,0]}}))
        .await
        .unwrap();
    assert_eq!((status, &body["ok"]), (200, &json!(true)), "{body}");
    for client in [&mut member, &mut other_member] {
        let event = client.next_event_named("match.update").await.unwrap();
        assert_eq!(event["type"], "event");
        assert_eq!(event["room"], "competition:42");
        assert_eq!(event["data"], json!({"score":[1,0]}));
        assert!(
            event.get("from").is_none(),
            "service publishes carry no sender"
        );
    }
    // The outsider's next event must be the one for its own room.
    server
        .publish(json!({"room":"competition:43","event":"match.update","data":{"score":[0,0]}}))
        .await
        .unwrap();
    let event = outsider.next_event_named("match.update").await.unwrap();
    assert_eq!(event["room"], "competition:43");
    outsider
        .expect_silence(Duration::from_millis(200))
        .await
        .unwrap();
}

#[tokio::test]
async fn user_publish_reaches_every_socket_of_that_user_only() {
    let server = TestServer::start().await.unwrap();
    let mut phone = server.connect("alice").await.unwrap();
    let mut laptop = server.connect("alice").await.unwrap();
    let mut bob = server.connect("bob").await.unwrap();
    let (status, _) = server
        .publish(json!({"user":"alice","event":"notification.new","data":{"id":"n1"}}))
        .await
        .unwrap();
    assert_eq!(status, 200);
    for socket in [&mut phone, &mut laptop] {
        let event = socket.next_event_named("notification.new").await.unwrap();
        assert!(event.get("room").is_none(), "user pushes have no room");
        assert_eq!(event["data"]["id"], "n1");
    }
    bob.expect_silence(Duration::from_millis(300))
        .await
        .unwrap();
}

#[tokio::test]
async fn wrong_key_missing_key_and_bad_bodies_are_refused_with_codes() {
    let server = TestServer::start().await.unwrap();
    let body = json!({"room":"chat:a","event":"x","data":{}});
    let (status, reply) = server
        .publish_with_key(body.clone(), Some("wrong"))
        .await
        .unwrap();
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, _) = server.publish_with_key(body, None).await.unwrap();
    assert_eq!(status, 401);
    for (bad, code) in [
        (json!({"event":"x","data":{}}), "invalid_request"),
        (
            json!({"room":"chat:a","user":"u","event":"x","data":{}}),
            "invalid_request",
        ),
        (
            json!({"room":"bad id","event":"x","data":{}}),
            "invalid_room_id",
        ),
        (
            json!({"room":"nosuch:a","event":"x","data":{}}),
            "unknown_room_type",
        ),
        (
            json!({"room":"chat:a","event":"has space","data":{}}),
            "invalid_event",
        ),
        (json!({"room":"chat:a","event":"x"}), "invalid_request"),
    ] {
        let (status, reply) = server.publish(bad.clone()).await.unwrap();
        assert_eq!(status, 400, "{bad}");
        assert_eq!(reply["error"]["code"], code, "{bad}");
    }
    let huge = json!({"room":"chat:a","event":"x","data":{"blob":"x".repeat(100_000)}});
    let (status, reply) = server.publish(huge).await.unwrap();
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (413, Some("payload_too_large"))
    );
}

#[tokio::test]
async fn the_api_is_off_without_a_key() {
    let server = TestServer::start_with(|settings| settings.api.key = None)
        .await
        .unwrap();
    let (status, reply) = server
        .publish_with_key(
            json!({"room":"chat:a","event":"x","data":{}}),
            Some("anything"),
        )
        .await
        .unwrap();
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (403, Some("api_disabled"))
    );
}

#[tokio::test]
async fn pushes_and_replies_arrive_whole_and_in_order() {
    let server = TestServer::start().await.unwrap();
    let mut client = server
        .connect_with_rooms("reader", &["competition:*"])
        .await
        .unwrap();
    client.join("competition:7").await.unwrap();
    client.next_event_named("room.presence_diff").await.unwrap();
    const EVENTS: u64 = 200;
    // 200 pushes of 60 KB, 12 MB, while the client reads nothing: more than the loopback socket
    // buffers take, so most of them wait in the socket's backlog on the server.
    let blob = "y".repeat(60_000);
    for seq in 0..EVENTS {
        let event =
            json!({"room":"competition:7","event":"match.update","data":{"seq":seq,"blob":blob}});
        let (status, body) = server.publish(event).await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    // The reply to a request sent now comes after every push already accepted for the socket.
    client.ok(json!({"op":"heartbeat"}), 1).await.unwrap();
    assert_eq!(
        client.pending_event_count(),
        EVENTS as usize,
        "every push arrived before the reply"
    );
    for seq in 0..EVENTS {
        let event = client.next_event_named("match.update").await.unwrap();
        assert_eq!(event["data"]["seq"], seq, "pushes keep their order");
        assert_eq!(event["data"]["blob"].as_str().map(str::len), Some(60_000));
    }
}

#[tokio::test]
async fn a_body_that_trickles_in_is_refused_after_the_body_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = realtime_tests::TestServer::start_with(|settings| {
        settings.server.request_body_timeout_ms = 300;
    })
    .await
    .unwrap();
    for path in ["/api/publish", "/graphql"] {
        let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nX-API-Key: {}\r\nContent-Type: application/json\r\n\
             Content-Length: 100\r\n\r\n{{",
            server.addr,
            realtime_tests::API_KEY
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        // ... and the other 99 bytes never come.
        let mut answer = vec![0u8; 4096];
        let read = tokio::time::timeout(realtime_tests::STEP_TIMEOUT, tcp.read(&mut answer))
            .await
            .unwrap_or_else(|_| panic!("{path}: no answer to a stalled body"))
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..read]);
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
        assert!(
            answer.contains("request_body_timeout_ms"),
            "{path}: {answer}"
        );
    }
}

#[tokio::test]
async fn headers_that_trickle_in_close_the_connection_after_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = realtime_tests::TestServer::start_with(|settings| {
        settings.server.request_header_timeout_ms = 300;
    })
    .await
    .unwrap();
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // A request line and one header, and the blank line that ends the headers never comes.
    tcp.write_all(format!("GET /health HTTP/1.1\r\nHost: {}\r\n", server.addr).as_bytes())
        .await
        .unwrap();
    let mut answer = vec![0u8; 1024];
    let closed = tokio::time::timeout(realtime_tests::STEP_TIMEOUT, async {
        loop {
            match tcp.read(&mut answer).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => continue,
            }
        }
    })
    .await
    .unwrap_or(false);
    assert!(
        closed,
        "the server closes a connection whose headers do not arrive in time"
    );
}

#[tokio::test]
async fn open_http_connections_are_capped_below_the_descriptor_table() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The cap is server.max_connections + 512: 513 here.
    let server = realtime_tests::TestServer::start_with(|settings| {
        settings.server.max_connections = 1;
    })
    .await
    .unwrap();
    let mut idle = Vec::new();
    for _ in 0..513 {
        idle.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    // Let the server accept them all.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut late = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    late.write_all(format!("GET /health HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr).as_bytes())
        .await
        .unwrap();
    let mut answer = vec![0u8; 1024];
    let served_at_once =
        tokio::time::timeout(Duration::from_millis(1000), late.read(&mut answer)).await;
    assert!(
        served_at_once.is_err(),
        "a connection over the cap waits for a free place"
    );
    idle.truncate(500);
    let read = tokio::time::timeout(realtime_tests::STEP_TIMEOUT, late.read(&mut answer))
        .await
        .expect("served once connections closed")
        .unwrap();
    assert!(String::from_utf8_lossy(&answer[..read]).starts_with("HTTP/1.1 200"));
}
