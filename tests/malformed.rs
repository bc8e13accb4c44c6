//! Bad input: coded errors, and the connection keeps working; floods are limited then closed.

use realtime_tests::{Ended, TestServer};
use serde_json::json;

#[tokio::test]
async fn malformed_frames_get_coded_errors_and_the_socket_still_works() {
    let server = TestServer::start_with(|settings| settings.limits.max_frame_bytes = 1024)
        .await
        .unwrap();
    let mut client = server.connect("fuzzy").await.unwrap();

    client.send_text("this is not json").await.unwrap();
    let reply = client.next_json().await.unwrap();
    assert_eq!(reply["ok"], false);
    assert_eq!(reply["id"], serde_json::Value::Null);
    assert_eq!(reply["error"]["code"], "malformed_frame");

    client.send_text("[1,2,3]").await.unwrap();
    assert_eq!(
        client.next_json().await.unwrap()["error"]["code"],
        "invalid_request"
    );

    assert_eq!(
        client
            .error_code(json!({"op":"teleport"}), 1)
            .await
            .unwrap(),
        "unknown_op"
    );
    assert_eq!(
        client.error_code(json!({"op":"join"}), 2).await.unwrap(),
        "invalid_request"
    );
    assert_eq!(
        client
            .error_code(json!({"op":"join","room":42}), 3)
            .await
            .unwrap(),
        "invalid_request"
    );
    assert_eq!(
        client.error_code(json!({"noop":true}), 4).await.unwrap(),
        "invalid_request"
    );
    assert_eq!(
        client
            .error_code(json!({"op":"publish","room":"chat:a","event":"e"}), 5)
            .await
            .unwrap(),
        "invalid_request"
    );

    client
        .send_text(format!(
            r#"{{"id":6,"op":"join","room":"chat:{}"}}"#,
            "x".repeat(2000)
        ))
        .await
        .unwrap();
    let reply = client.next_json().await.unwrap();
    assert_eq!(reply["error"]["code"], "frame_too_large");

    let reply = client.join("chat:still-works").await.unwrap();
    assert_eq!(reply["room"], "chat:still-works");
    let string_id = client
        .request(json!({"op":"heartbeat","id":"abc"}), 7)
        .await
        .unwrap();
    assert_eq!(string_id["ok"], true);
}

#[tokio::test]
async fn a_flooding_client_is_rate_limited_then_closed_with_4003() {
    let server = TestServer::start_with(|settings| {
        settings.limits.requests_per_sec = 1;
        settings.limits.request_burst = 3;
        settings.limits.rate_limit_close_after = 5;
    })
    .await
    .unwrap();
    let mut client = server.connect("flood").await.unwrap();
    for id in 0..3 {
        client.ok(json!({"op":"heartbeat"}), id).await.unwrap();
    }
    assert_eq!(
        client
            .error_code(json!({"op":"heartbeat"}), 10)
            .await
            .unwrap(),
        "rate_limited"
    );
    for id in 11..20 {
        client
            .send_text(json!({"op":"heartbeat","id":id}).to_string())
            .await
            .ok();
    }
    let mut limited = 1;
    let ended = loop {
        match client.next_json_or_end().await.unwrap() {
            Ok(reply) => {
                assert_eq!(reply["error"]["code"], "rate_limited", "{reply}");
                limited += 1;
            }
            Err(ended) => break ended,
        }
    };
    assert!(
        limited <= 6,
        "closed after at most rate_limit_close_after + 1 limited replies"
    );
    assert_eq!(
        ended,
        Ended::Closed {
            code: 4003,
            reason: "rate_limited".into()
        }
    );
}

#[tokio::test]
async fn oversized_frames_take_from_the_request_budget_and_a_flood_of_them_is_closed() {
    let server = TestServer::start_with(|settings| {
        settings.limits.max_frame_bytes = 1024;
        settings.limits.requests_per_sec = 1;
        settings.limits.request_burst = 3;
        settings.limits.rate_limit_close_after = 5;
    })
    .await
    .unwrap();
    let mut client = server.connect("big-flood").await.unwrap();
    let oversized = format!(r#"{{"op":"heartbeat","pad":"{}"}}"#, "x".repeat(2000));
    for _ in 0..3 {
        client.send_text(oversized.clone()).await.unwrap();
        assert_eq!(
            client.next_json().await.unwrap()["error"]["code"],
            "frame_too_large"
        );
    }
    client.send_text(oversized.clone()).await.unwrap();
    assert_eq!(
        client.next_json().await.unwrap()["error"]["code"],
        "rate_limited",
        "the burst was spent on oversized frames"
    );
    for _ in 0..10 {
        client.send_text(oversized.clone()).await.ok();
    }
    let ended = loop {
        match client.next_json_or_end().await.unwrap() {
            Ok(reply) => assert_eq!(reply["error"]["code"], "rate_limited", "{reply}"),
            Err(ended) => break ended,
        }
    };
    assert_eq!(
        ended,
        Ended::Closed {
            code: 4003,
            reason: "rate_limited".into()
        }
    );
}

#[tokio::test]
async fn binary_frames_close_with_4500() {
    let server = TestServer::start().await.unwrap();
    let mut client = server.connect("binary").await.unwrap();
    client.send_binary(vec![1, 2, 3]).await.unwrap();
    assert_eq!(
        client.expect_end().await.unwrap(),
        Ended::Closed {
            code: 4500,
            reason: "unsupported_data".into()
        }
    );
}

#[tokio::test]
async fn frames_beyond_the_hard_limit_end_the_connection_without_hurting_others() {
    let server = TestServer::start_with(|settings| settings.limits.max_frame_bytes = 1024)
        .await
        .unwrap();
    let mut bystander = server.connect("bystander").await.unwrap();
    let mut client = server.connect("huge").await.unwrap();
    client.send_text("x".repeat(10 * 1024)).await.unwrap();
    let ended = client.expect_end().await.unwrap();
    assert_eq!(
        ended,
        Ended::Closed {
            code: 1009,
            reason: "message_too_big".into()
        }
    );
    bystander.ok(json!({"op":"heartbeat"}), 1).await.unwrap();
}
