//! Notifications: creation over HTTP and NATS JetStream, live pushes, GraphQL queries,
//! mutations, subscriptions, auth, rate limits and hostile queries.

use std::time::Duration;

use async_nats::jetstream;
use realtime_core::auth::unix_now_secs;
use realtime_tests::{
    GraphqlSubscriptionClient, KillableNode, NATS_URL, REDIS_URL, TestServer, cluster_settings,
    graphql_error_code, sign_hs256, unique,
};
use serde_json::{Value, json};

const LIST: &str = "query($first: Int, $after: String, $unread: Boolean) {
  notifications(first: $first, after: $after, unreadOnly: $unread) {
    edges { cursor node { id type content createdAt readAt read } }
    pageInfo { hasNextPage endCursor }
  }
}";

async fn create(server: &TestServer, user: &str, id: &str) -> Value {
    let (status, body) = server
        .create_notification(json!({"userId": user, "type": "lesson.completed", "content": {"lesson": id}, "id": id}))
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    body
}

fn ids(response: &Value) -> Vec<String> {
    response["data"]["notifications"]["edges"]
        .as_array()
        .unwrap_or_else(|| panic!("no edges: {response}"))
        .iter()
        .map(|edge| edge["node"]["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn an_http_notification_is_stored_once_and_pushed_to_every_socket_of_the_user() {
    let server = TestServer::start().await.unwrap();
    let user = unique("learner-");
    let mut phone = server.connect(&user).await.unwrap();
    let mut laptop = server.connect(&user).await.unwrap();
    let mut other = server.connect("someone-else").await.unwrap();
    let body = create(&server, &user, "n-1").await;
    assert_eq!(body["userId"], user.as_str());
    assert!(body["createdAt"].as_str().unwrap().ends_with('Z'));
    for socket in [&mut phone, &mut laptop] {
        let push = socket.next_event_named("notification.new").await.unwrap();
        assert_eq!(push["data"]["id"], "n-1");
        assert_eq!(push["data"]["type"], "lesson.completed");
        assert_eq!(push["data"]["content"], json!({"lesson":"n-1"}));
        assert_eq!(push["data"]["createdAt"], body["createdAt"]);
        assert!(push.get("room").is_none());
    }
    other
        .expect_silence(Duration::from_millis(200))
        .await
        .unwrap();

    let (status, again) = server
        .create_notification(json!({"userId": user, "type": "lesson.completed", "content": {"lesson": "changed"}, "id": "n-1"}))
        .await
        .unwrap();
    assert_eq!(status, 200, "a repeated id is not created again");
    assert_eq!(again["content"], json!({"lesson":"n-1"}));
    phone
        .expect_silence(Duration::from_millis(200))
        .await
        .unwrap();

    let (status, error) = server
        .create_notification(json!({"userId": user, "type": "x"}))
        .await
        .unwrap();
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (400, Some("invalid_request"))
    );
}

#[tokio::test]
async fn graphql_lists_pages_filters_counts_marks_and_deletes_only_the_callers_notifications() {
    let server = TestServer::start().await.unwrap();
    let user = unique("reader-");
    let token = server.token(&user);
    for n in 1..=5 {
        create(&server, &user, &format!("{user}-{n}")).await;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let intruder = unique("intruder-");
    create(&server, &intruder, "intruder-1").await;

    let page = server
        .graphql(Some(&token), LIST, json!({"first": 2}))
        .await
        .unwrap();
    assert_eq!(
        ids(&page),
        vec![format!("{user}-5"), format!("{user}-4")],
        "newest first: {page}"
    );
    assert_eq!(
        page["data"]["notifications"]["pageInfo"]["hasNextPage"],
        true
    );
    let cursor = page["data"]["notifications"]["pageInfo"]["endCursor"].clone();
    let rest = server
        .graphql(Some(&token), LIST, json!({"first": 10, "after": cursor}))
        .await
        .unwrap();
    assert_eq!(
        ids(&rest),
        (1..=3)
            .rev()
            .map(|n| format!("{user}-{n}"))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        rest["data"]["notifications"]["pageInfo"]["hasNextPage"],
        false
    );

    let count = "{ unreadNotificationCount }";
    assert_eq!(
        server
            .graphql(Some(&token), count, json!({}))
            .await
            .unwrap()["data"]["unreadNotificationCount"],
        5
    );

    let mark = "mutation($id: ID!) { markNotificationRead(id: $id) { id read readAt } }";
    let first = server
        .graphql(Some(&token), mark, json!({"id": format!("{user}-2")}))
        .await
        .unwrap();
    let read_at = first["data"]["markNotificationRead"]["readAt"].clone();
    assert_eq!(first["data"]["markNotificationRead"]["read"], true);
    assert!(read_at.is_string());
    let second = server
        .graphql(Some(&token), mark, json!({"id": format!("{user}-2")}))
        .await
        .unwrap();
    assert_eq!(
        second["data"]["markNotificationRead"]["readAt"], read_at,
        "readAt is set once"
    );
    assert_eq!(
        server
            .graphql(Some(&token), count, json!({}))
            .await
            .unwrap()["data"]["unreadNotificationCount"],
        4
    );
    let unread = server
        .graphql(Some(&token), LIST, json!({"unread": true}))
        .await
        .unwrap();
    assert!(
        !ids(&unread).contains(&format!("{user}-2")),
        "unreadOnly hides read ones"
    );
    assert_eq!(ids(&unread).len(), 4);

    let someone_elses = server
        .graphql(Some(&token), mark, json!({"id": "intruder-1"}))
        .await
        .unwrap();
    assert_eq!(graphql_error_code(&someone_elses), Some("NOT_FOUND"));
    let unknown = server
        .graphql(Some(&token), mark, json!({"id": "no-such-id"}))
        .await
        .unwrap();
    assert_eq!(graphql_error_code(&unknown), Some("NOT_FOUND"));
    assert_eq!(
        someone_elses["errors"][0]["message"], unknown["errors"][0]["message"],
        "nothing leaks"
    );

    let delete = "mutation($id: ID!) { deleteNotification(id: $id) }";
    let deleted = server
        .graphql(Some(&token), delete, json!({"id": format!("{user}-1")}))
        .await
        .unwrap();
    assert_eq!(deleted["data"]["deleteNotification"], true);
    let again = server
        .graphql(Some(&token), delete, json!({"id": format!("{user}-1")}))
        .await
        .unwrap();
    assert_eq!(graphql_error_code(&again), Some("NOT_FOUND"));
    let theirs = server
        .graphql(Some(&token), delete, json!({"id": "intruder-1"}))
        .await
        .unwrap();
    assert_eq!(graphql_error_code(&theirs), Some("NOT_FOUND"));

    let all = server
        .graphql(
            Some(&token),
            "mutation { markAllNotificationsRead }",
            json!({}),
        )
        .await
        .unwrap();
    assert_eq!(all["data"]["markAllNotificationsRead"], 3);
    assert_eq!(
        server
            .graphql(Some(&token), count, json!({}))
            .await
            .unwrap()["data"]["unreadNotificationCount"],
        0
    );
    let intruder = server.token(&intruder);
    assert_eq!(
        server
            .graphql(Some(&intruder), count, json!({}))
            .await
            .unwrap()["data"]["unreadNotificationCount"],
        1
    );
}

#[tokio::test]
async fn graphql_requires_a_valid_token_and_refuses_hostile_queries() {
    let server = TestServer::start_with(|settings| settings.graphql.max_complexity = 50)
        .await
        .unwrap();
    let secret = server.settings.auth.jwt_secret.clone().unwrap();
    let expired = sign_hs256(
        &secret,
        json!({"sub": "expired", "exp": unix_now_secs() - 10}),
    );
    for token in [None, Some("garbage"), Some(expired.as_str())] {
        let response = server
            .graphql(token, "{ unreadNotificationCount }", json!({}))
            .await
            .unwrap();
        assert_eq!(
            graphql_error_code(&response),
            Some("UNAUTHENTICATED"),
            "{token:?}: {response}"
        );
    }
    let token = server.token("hostile");
    let deep = "{ __schema { types { fields { type { ofType { ofType { ofType { ofType { ofType { ofType { name } } } } } } } } } } }";
    let response = server.graphql(Some(&token), deep, json!({})).await.unwrap();
    assert_eq!(
        graphql_error_code(&response),
        Some("GRAPHQL_VALIDATION_FAILED"),
        "{response}"
    );
    let complex = server
        .graphql(Some(&token), LIST, json!({"first": 100}))
        .await
        .unwrap();
    assert!(complex["data"].is_null(), "{complex}");
    assert_eq!(
        graphql_error_code(&complex),
        Some("GRAPHQL_VALIDATION_FAILED"),
        "{complex}"
    );
    let syntax = server
        .graphql(Some(&token), "{ notifications(", json!({}))
        .await
        .unwrap();
    assert_eq!(
        graphql_error_code(&syntax),
        Some("GRAPHQL_VALIDATION_FAILED")
    );
    let too_many = server
        .graphql(Some(&token), LIST, json!({"first": 0}))
        .await
        .unwrap();
    assert_eq!(graphql_error_code(&too_many), Some("BAD_USER_INPUT"));
    let bad_cursor = server
        .graphql(Some(&token), LIST, json!({"first": 1, "after": "nonsense"}))
        .await
        .unwrap();
    assert_eq!(graphql_error_code(&bad_cursor), Some("BAD_USER_INPUT"));
    let graphiql = reqwest::get(format!("http://{}/graphql", server.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(graphiql.to_lowercase().contains("graphiql"));
}

#[tokio::test]
async fn every_rate_limit_applies_per_user() {
    let server = TestServer::start_with(|settings| {
        let limits = &mut settings.graphql.rate_limits;
        limits.notifications = 3;
        limits.mark_notification_read = 2;
        limits.delete_notification = 2;
        limits.mark_all_notifications_read = 1;
    })
    .await
    .unwrap();
    let user = unique("busy-");
    let token = server.token(&user);
    for (query, limit) in [
        ("{ unreadNotificationCount }", 3),
        ("mutation { markNotificationRead(id: \"x\") { id } }", 2),
        ("mutation { deleteNotification(id: \"x\") }", 2),
        ("mutation { markAllNotificationsRead }", 1),
    ] {
        for _ in 0..limit {
            let response = server
                .graphql(Some(&token), query, json!({}))
                .await
                .unwrap();
            assert_ne!(
                graphql_error_code(&response),
                Some("RATE_LIMITED"),
                "{query}"
            );
        }
        let limited = server
            .graphql(Some(&token), query, json!({}))
            .await
            .unwrap();
        assert_eq!(
            graphql_error_code(&limited),
            Some("RATE_LIMITED"),
            "{query}: {limited}"
        );
        let retry_after = limited["errors"][0]["extensions"]["retryAfter"]
            .as_u64()
            .unwrap();
        assert!((1..=60).contains(&retry_after), "{retry_after}");
    }
    let other = server.token(&unique("calm-"));
    let response = server
        .graphql(Some(&other), "{ unreadNotificationCount }", json!({}))
        .await
        .unwrap();
    assert_eq!(
        response["data"]["unreadNotificationCount"], 0,
        "limits are per user"
    );
}

#[tokio::test]
async fn rate_limits_hold_across_two_nodes_with_redis() {
    let mut settings = cluster_settings(REDIS_URL, NATS_URL);
    settings.graphql.rate_limits.notifications = 3;
    let node_a = TestServer::start_node(&settings).await.unwrap();
    let node_b = TestServer::start_node(&settings).await.unwrap();
    let token = node_a.token(&unique("roaming-"));
    let query = "{ unreadNotificationCount }";
    for node in [&node_a, &node_b, &node_a] {
        let response = node.graphql(Some(&token), query, json!({})).await.unwrap();
        assert_eq!(response["data"]["unreadNotificationCount"], 0, "{response}");
    }
    let limited = node_b
        .graphql(Some(&token), query, json!({}))
        .await
        .unwrap();
    assert_eq!(
        graphql_error_code(&limited),
        Some("RATE_LIMITED"),
        "the fourth call, on another node"
    );
}

#[tokio::test]
async fn the_subscription_receives_new_notifications() {
    let server = TestServer::start().await.unwrap();
    let user = unique("watcher-");
    let mut subscription = GraphqlSubscriptionClient::connect(&server, &server.token(&user))
        .await
        .unwrap();
    subscription
        .send(json!({"id":"1","type":"subscribe","payload":{"query":"subscription { notificationAdded { id type content read } }"}}))
        .await
        .unwrap();
    // The subscription is registered asynchronously; create until it reports (bounded).
    let mut received = None;
    for attempt in 0..20 {
        create(&server, &user, &format!("live-{attempt}")).await;
        if let Ok(Ok(message)) =
            tokio::time::timeout(Duration::from_millis(250), subscription.next()).await
        {
            received = Some(message);
            break;
        }
    }
    let message = received.expect("the subscription delivered a notification");
    assert_eq!(message["type"], "next", "{message}");
    let added = &message["payload"]["data"]["notificationAdded"];
    assert!(added["id"].as_str().unwrap().starts_with("live-"));
    assert_eq!(added["type"], "lesson.completed");
    assert_eq!(added["read"], false);

    let anonymous = server
        .graphql(None, "subscription { notificationAdded { id } }", json!({}))
        .await
        .unwrap();
    assert!(
        anonymous["errors"].is_array(),
        "subscriptions are not served over POST: {anonymous}"
    );
}

async fn unread_count(server: &TestServer, user: &str) -> u64 {
    let response = server
        .graphql(
            Some(&server.token(user)),
            "{ unreadNotificationCount }",
            json!({}),
        )
        .await
        .unwrap();
    response["data"]["unreadNotificationCount"]
        .as_u64()
        .unwrap_or_else(|| panic!("{response}"))
}

#[tokio::test]
async fn notifications_from_nats_are_stored_and_pushed() {
    let settings = cluster_settings(REDIS_URL, NATS_URL);
    let server = TestServer::start_node(&settings).await.unwrap();
    let user = unique("nats-");
    let mut socket = server.connect(&user).await.unwrap();
    let jetstream = jetstream::new(server.nats_client().await.unwrap());
    let body = json!({"userId": user, "type": "match.won", "content": {"match": 7}});
    jetstream
        .publish(server.subject("notifications.new"), body.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let push = socket.next_event_named("notification.new").await.unwrap();
    assert_eq!(push["data"]["type"], "match.won");
    assert_eq!(push["data"]["content"], json!({"match": 7}));
    assert_eq!(unread_count(&server, &user).await, 1);
    let malformed = json!({"user": "missing fields"});
    jetstream
        .publish(
            server.subject("notifications.new"),
            malformed.to_string().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    jetstream
        .publish(server.subject("notifications.new"), body.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
    socket.next_event_named("notification.new").await.unwrap();
    assert_eq!(
        unread_count(&server, &user).await,
        2,
        "a malformed message does not block the next one"
    );
}

#[tokio::test]
async fn a_node_dying_during_ingest_loses_and_duplicates_nothing() {
    let mut settings = cluster_settings(REDIS_URL, NATS_URL);
    settings.notifications.ack_wait_secs = 2;
    let mut doomed = KillableNode::start(&settings).unwrap();
    let user = unique("bulk-");
    let jetstream = jetstream::new(async_nats::connect(NATS_URL).await.unwrap());
    let subject = format!("{}.notifications.new", settings.nats.subject_prefix);
    let total = 300;
    let mut acks = Vec::new();
    for n in 0..total {
        // Half carry their own id, half get the stream-sequence id.
        let mut body = json!({"userId": user, "type": "bulk", "content": {"n": n}});
        if n % 2 == 0 {
            body["id"] = json!(format!("{user}-{n}"));
        }
        acks.push(
            jetstream
                .publish(subject.clone(), body.to_string().into())
                .await
                .unwrap(),
        );
        if n == total / 3 {
            doomed.kill();
        }
    }
    for ack in acks {
        ack.await.unwrap();
    }
    let survivor = TestServer::start_node(&settings).await.unwrap();
    let mut stored = 0;
    for _ in 0..60 {
        stored = unread_count(&survivor, &user).await;
        if stored >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(stored, total, "every notification stored exactly once");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        unread_count(&survivor, &user).await,
        total,
        "redeliveries after the ack wait add nothing"
    );
}

/// The next message on the cluster's dead-letter subject: its reason header and payload.
async fn next_dead_letter(dead_letters: &mut async_nats::Subscriber) -> (String, Value) {
    use futures_util::StreamExt;
    let message = tokio::time::timeout(Duration::from_secs(20), dead_letters.next())
        .await
        .expect("a message reaches the dead-letter subject")
        .expect("subscription open");
    let reason = message
        .headers
        .as_ref()
        .and_then(|headers| headers.get("Realtime-Dead-Reason"))
        .map(|value| value.as_str().to_owned())
        .unwrap_or_default();
    (reason, serde_json::from_slice(&message.payload).unwrap())
}

#[tokio::test]
async fn a_notification_that_can_never_be_stored_is_refused_or_dead_lettered_not_retried_forever() {
    let settings = cluster_settings(REDIS_URL, NATS_URL);
    let server = TestServer::start_node(&settings).await.unwrap();
    let user_with_nul = format!("{}\u{0}x", unique("poison-"));
    let poison = json!({"userId": user_with_nul, "type": "t", "content": {}});

    let (status, body) = server.create_notification(poison.clone()).await.unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );

    let nats = server.nats_client().await.unwrap();
    let mut dead_letters = nats
        .subscribe(server.subject("notifications.dead"))
        .await
        .unwrap();
    let jetstream = jetstream::new(nats);
    jetstream
        .publish(
            server.subject("notifications.new"),
            poison.to_string().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let (reason, payload) = next_dead_letter(&mut dead_letters).await;
    assert!(reason.contains("control characters"), "{reason}");
    assert_eq!(payload, poison, "the dead letter is the original message");

    // The stream no longer holds it: nothing is redelivered, the next message goes through.
    let user = unique("after-poison-");
    let mut socket = server.connect(&user).await.unwrap();
    jetstream
        .publish(
            server.subject("notifications.new"),
            json!({"userId": user, "type": "t", "content": {}})
                .to_string()
                .into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    socket.next_event_named("notification.new").await.unwrap();
}

#[tokio::test]
async fn a_notification_that_keeps_failing_is_dead_lettered_after_max_deliveries() {
    // A database of its own whose table the test drops: every insert then fails, as in an outage
    // that never ends.
    let schema = unique("ingest_");
    let psql = |sql: &str| {
        let status = std::process::Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "test",
                "-qc",
                sql,
            ])
            .status()
            .expect("psql runs");
        assert!(status.success(), "psql {sql}");
    };
    psql(&format!("CREATE SCHEMA {schema}"));
    let mut settings = cluster_settings(REDIS_URL, NATS_URL);
    settings.database.url = format!(
        "{}?options=-c%20search_path%3D{schema}",
        realtime_tests::POSTGRES_URL
    );
    settings.notifications.max_deliveries = 2;
    let server = TestServer::start_node(&settings).await.unwrap();
    psql(&format!("DROP TABLE {schema}.notifications"));

    let nats = server.nats_client().await.unwrap();
    let mut dead_letters = nats
        .subscribe(server.subject("notifications.dead"))
        .await
        .unwrap();
    let message = json!({"userId": unique("unlucky-"), "type": "t", "content": {"n": 1}});
    jetstream::new(nats)
        .publish(
            server.subject("notifications.new"),
            message.to_string().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let (reason, payload) = next_dead_letter(&mut dead_letters).await;
    assert!(reason.contains("after 2 deliveries"), "{reason}");
    assert_eq!(payload, message);
    psql(&format!("DROP SCHEMA {schema} CASCADE"));
}

#[tokio::test]
async fn a_graphql_socket_ends_when_its_token_expires() {
    let server = TestServer::start().await.unwrap();
    let user = unique("expiring-");
    let mut socket = GraphqlSubscriptionClient::connect(&server, &server.token_with(&user, &[], 2))
        .await
        .unwrap();
    socket
        .send(json!({"id": "1", "type": "subscribe", "payload": {"query": "subscription { notificationAdded { id } }"}}))
        .await
        .unwrap();
    assert_eq!(
        socket.expect_close().await.unwrap(),
        (4401, "Unauthorized: the token expired".to_owned())
    );
}

#[tokio::test]
async fn a_graphql_socket_without_connection_init_is_closed_with_4408() {
    let server =
        TestServer::start_with(|settings| settings.graphql.connection_init_timeout_secs = 1)
            .await
            .unwrap();
    let mut socket = GraphqlSubscriptionClient::open(&server).await.unwrap();
    assert_eq!(socket.expect_close().await.unwrap().0, 4408);
}

#[tokio::test]
async fn graphql_socket_frames_are_capped_like_the_websocket_protocols() {
    let server = TestServer::start_with(|settings| settings.limits.max_frame_bytes = 4096)
        .await
        .unwrap();
    let mut socket = GraphqlSubscriptionClient::connect(&server, &server.token(&unique("big-")))
        .await
        .unwrap();
    let padding = "x".repeat(8192);
    socket
        .send_text(format!(
            r#"{{"id":"1","type":"subscribe","payload":{{"query":"{{ unreadNotificationCount }}","extensions":{{"pad":"{padding}"}}}}}}"#
        ))
        .await
        .unwrap();
    assert_eq!(socket.expect_close().await.unwrap().0, 1009);
}

#[tokio::test]
async fn a_graphql_socket_runs_at_most_its_operation_cap() {
    let server = TestServer::start_with(|settings| settings.graphql.max_operations_per_socket = 2)
        .await
        .unwrap();
    let user = unique("greedy-");
    let mut socket = GraphqlSubscriptionClient::connect(&server, &server.token(&user))
        .await
        .unwrap();
    let subscribe = |id: &str| json!({"id": id, "type": "subscribe", "payload": {"query": "subscription { notificationAdded { id } }"}});
    for id in ["1", "2", "3"] {
        socket.send(subscribe(id)).await.unwrap();
    }
    let refusal = socket.next().await.unwrap();
    assert_eq!(refusal["id"], "3");
    assert_eq!(refusal["type"], "error");
    assert_eq!(
        refusal["payload"][0]["extensions"]["code"],
        "TOO_MANY_OPERATIONS"
    );
    // Completing one frees its place.
    socket
        .send(json!({"id": "1", "type": "complete"}))
        .await
        .unwrap();
    socket.send(subscribe("4")).await.unwrap();
    create(&server, &user, "n-cap").await;
    let mut delivered_to = Vec::new();
    while delivered_to.len() < 2 {
        let message = socket.next().await.unwrap();
        if message == json!({"id": "1", "type": "complete"}) {
            continue; // async-graphql confirms the client's complete
        }
        assert_eq!(message["type"], "next", "{message}");
        delivered_to.push(message["id"].as_str().unwrap().to_owned());
    }
    delivered_to.sort();
    assert_eq!(delivered_to, ["2", "4"]);
}

#[tokio::test]
async fn graphql_sockets_count_toward_max_connections() {
    let server = TestServer::start_with(|settings| settings.server.max_connections = 1)
        .await
        .unwrap();
    let _graphql = GraphqlSubscriptionClient::connect(&server, &server.token("first"))
        .await
        .unwrap();
    match realtime_tests::handshake(&server.ws_url(&server.token("second")), None)
        .await
        .unwrap()
    {
        realtime_tests::Handshake::Refused { status, body } => {
            assert_eq!(
                (status, body["error"]["code"].as_str()),
                (503, Some("node_full"))
            );
        }
        realtime_tests::Handshake::Upgraded(_) => panic!("the node admitted a second connection"),
    }
}
