//! WebAssembly plugins through real clients: the three example plugins, chains, failures and
//! their policies, the circuit breaker, and hot reload.

use std::time::Duration;

use realtime_core::config::{FailurePolicy, Settings};
use realtime_tests::{TempDir, TestServer, add_plugin, plugin_wasm, unique};
use serde_json::json;

fn with_chain(settings: &mut Settings, room_type: &str, chain: &[&str], policy: FailurePolicy) {
    let room_type = settings.room_types.get_mut(room_type).unwrap();
    room_type.plugins = chain.iter().map(|name| name.to_string()).collect();
    room_type.plugin_failure = policy;
}

/// The chain `open` on `chat` with `fail_open`, and `closed` on `lesson` with `fail_closed`.
fn with_open_and_closed_chains(settings: &mut Settings, open: &[&str], closed: &[&str]) {
    with_chain(settings, "chat", open, FailurePolicy::FailOpen);
    with_chain(settings, "lesson", closed, FailurePolicy::FailClosed);
}

/// A reader in a new `chat` room and a new `lesson` room of `server`: (reader, chat, lesson).
async fn reader_in_open_and_closed_rooms(
    server: &TestServer,
    label: &str,
) -> (realtime_tests::Client, String, String) {
    let chat = unique(&format!("chat:{label}"));
    let lesson = unique(&format!("lesson:{label}"));
    let mut reader = server
        .connect_with_rooms("reader", &["lesson:*"])
        .await
        .unwrap();
    reader.join(&chat).await.unwrap();
    reader.join(&lesson).await.unwrap();
    (reader, chat, lesson)
}

/// Publishes a `trigger` with `data` into the `fail_open` room `chat`: it is delivered, and the
/// reader gets the original payload. Returns how long the publish took to answer.
async fn fail_open_delivers_the_original(
    server: &TestServer,
    reader: &mut realtime_tests::Client,
    chat: &str,
    data: serde_json::Value,
) -> Duration {
    let started = std::time::Instant::now();
    let (status, reply) = server
        .publish(json!({"room": chat, "event": "trigger", "data": data}))
        .await
        .unwrap();
    let answered_after = started.elapsed();
    assert_eq!(
        (status, &reply["delivered"]),
        (200, &json!(true)),
        "fail_open delivers the original: {reply}"
    );
    assert_eq!(
        reader.next_event_named("trigger").await.unwrap()["data"],
        data,
        "the member gets the original payload"
    );
    answered_after
}

/// Publishes a `trigger` into the `fail_closed` room `lesson`: it is refused with
/// `plugin_failed`.
async fn fail_closed_refuses(server: &TestServer, lesson: &str, data: serde_json::Value) {
    let (status, reply) = server
        .publish(json!({"room": lesson, "event": "trigger", "data": data}))
        .await
        .unwrap();
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (503, Some("plugin_failed")),
        "fail_closed drops and says so: {reply}"
    );
}

async fn metric(server: &TestServer, line_start: &str) -> f64 {
    let text = reqwest::get(format!("http://{}/metrics", server.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|line| line.starts_with(line_start))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn match_score_guard_drops_bad_scores_and_adds_the_leader() {
    let server = TestServer::start_with(|settings| {
        add_plugin(
            settings,
            "match-score-guard",
            plugin_wasm("match-score-guard"),
            json!({"max_score": 100}),
        );
        with_chain(
            settings,
            "competition",
            &["match-score-guard"],
            FailurePolicy::FailOpen,
        );
    })
    .await
    .unwrap();
    let room = unique("competition:g");
    let mut fan = server
        .connect_with_rooms("fan", &["competition:*"])
        .await
        .unwrap();
    fan.join(&room).await.unwrap();
    let bad = json!({"room": room, "event": "match.update", "data": {"players":["ana","ben"],"scores":{"ana":-3,"ben":1}}});
    let (status, reply) = server.publish(bad).await.unwrap();
    assert_eq!(
        (status, &reply["delivered"]),
        (200, &json!(false)),
        "{reply}"
    );
    assert!(reply["reason"].as_str().unwrap().contains("ana"));
    let good = json!({"room": room, "event": "match.update", "data": {"matchId":"m1","players":["ana","ben"],"scores":{"ana":3,"ben":1}}});
    let (_, reply) = server.publish(good).await.unwrap();
    assert_eq!(reply["delivered"], true);
    let event = fan.next_event_named("match.update").await.unwrap();
    assert_eq!(
        event["data"]["scores"]["ana"], 3,
        "the dropped update never arrived; this is the good one"
    );
    assert_eq!(event["data"]["leader"], "ana");
    assert_eq!(
        event["data"]["matchId"], "m1",
        "the rest of the payload is kept"
    );
    // Other events of the room type are not the plugin's business.
    server
        .publish(json!({"room": room, "event": "match.comment", "data": {"text": "x"}}))
        .await
        .unwrap();
    assert_eq!(
        fan.next_event_named("match.comment").await.unwrap()["data"],
        json!({"text":"x"})
    );
}

#[tokio::test]
async fn tournament_start_enricher_normalises_the_start() {
    let server = TestServer::start_with(|settings| {
        add_plugin(
            settings,
            "enricher",
            plugin_wasm("tournament-start-enricher"),
            json!({"default_lead_secs": 120}),
        );
        with_chain(
            settings,
            "competition",
            &["enricher"],
            FailurePolicy::FailOpen,
        );
    })
    .await
    .unwrap();
    let room = unique("competition:t");
    let mut player = server
        .connect_with_rooms("player", &["competition:*"])
        .await
        .unwrap();
    player.join(&room).await.unwrap();
    server.publish(json!({"room": room, "event": "tournament.start", "data": {"name": "Cup", "startsAt": "2020-01-01T01:00:00+01:00"}})).await.unwrap();
    let event = player.next_event_named("tournament.start").await.unwrap();
    assert_eq!(
        event["data"],
        json!({"name": "Cup", "startsAt": "2020-01-01T00:00:00.000Z", "countdownSecs": 0})
    );
    server
        .publish(json!({"room": room, "event": "tournament.start", "data": {"name": "Later"}}))
        .await
        .unwrap();
    let event = player.next_event_named("tournament.start").await.unwrap();
    assert_eq!(
        event["data"]["countdownSecs"], 120,
        "missing startsAt: event time + default_lead_secs"
    );
}

#[tokio::test]
async fn chat_moderation_masks_words_and_rejects_long_messages_to_the_sender() {
    let server = TestServer::start_with(|settings| {
        add_plugin(
            settings,
            "moderation",
            plugin_wasm("chat-moderation"),
            json!({"banned_words": ["darn"], "max_length": 40}),
        );
        with_chain(settings, "chat", &["moderation"], FailurePolicy::FailOpen);
    })
    .await
    .unwrap();
    let room = unique("chat:mod");
    let mut sender = server.connect("sender").await.unwrap();
    let mut reader = server.connect("reader").await.unwrap();
    sender.join(&room).await.unwrap();
    reader.join(&room).await.unwrap();
    let reply = sender
        .ok(
            json!({"op":"publish","room":room,"event":"chat.message","data":{"text":"Darn it"}}),
            1,
        )
        .await
        .unwrap();
    assert_eq!(reply["delivered"], true);
    assert_eq!(
        reader.next_event_named("chat.message").await.unwrap()["data"]["text"],
        "**** it"
    );
    let long =
        json!({"op":"publish","room":room,"event":"chat.message","data":{"text":"x".repeat(41)}});
    let rejected = sender.request(long, 2).await.unwrap();
    assert_eq!(rejected["error"]["code"], "plugin_rejected");
    assert!(
        rejected["error"]["message"]
            .as_str()
            .unwrap()
            .contains("longer than 40"),
        "{rejected}"
    );
    reader
        .expect_silence(Duration::from_millis(200))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_chain_applies_in_order() {
    let wasm = plugin_wasm("misbehaving-plugin");
    let server = TestServer::start_with(|settings| {
        add_plugin(settings, "first", wasm.clone(), json!({"tag": "first"}));
        add_plugin(settings, "second", wasm.clone(), json!({"tag": "second"}));
        with_chain(
            settings,
            "chat",
            &["first", "second"],
            FailurePolicy::FailOpen,
        );
    })
    .await
    .unwrap();
    let room = unique("chat:chain");
    let mut reader = server.connect("reader").await.unwrap();
    reader.join(&room).await.unwrap();
    server
        .publish(json!({"room": room, "event": "chat.message", "data": {"tags": ["origin"]}}))
        .await
        .unwrap();
    assert_eq!(
        reader.next_event_named("chat.message").await.unwrap()["data"]["tags"],
        json!(["origin", "first", "second"])
    );
}

#[tokio::test]
async fn runaway_plugins_are_cut_and_policies_apply_while_the_server_keeps_serving() {
    let wasm = plugin_wasm("misbehaving-plugin");
    let server = TestServer::start_with(|settings| {
        settings.plugin_runtime.breaker_failures = 100;
        add_plugin(settings, "looping", wasm.clone(), json!({"mode": "loop"}));
        add_plugin(settings, "hoarding", wasm.clone(), json!({"mode": "alloc"}));
        add_plugin(
            settings,
            "panicking",
            wasm.clone(),
            json!({"mode": "panic"}),
        );
        with_open_and_closed_chains(
            settings,
            &["looping", "hoarding", "panicking"],
            &["panicking"],
        );
    })
    .await
    .unwrap();
    let (mut reader, chat, lesson) = reader_in_open_and_closed_rooms(&server, "fail").await;

    let answered_after =
        fail_open_delivers_the_original(&server, &mut reader, &chat, json!({"n": 1})).await;
    assert!(
        answered_after < Duration::from_secs(2),
        "the loop was cut: {answered_after:?}"
    );
    fail_closed_refuses(&server, &lesson, json!({})).await;

    // The failed instances were discarded; the next calls work on fresh ones.
    for n in 2..5 {
        server
            .publish(json!({"room": chat, "event": "trigger", "data": {"n": n}}))
            .await
            .unwrap();
        assert_eq!(
            reader.next_event_named("trigger").await.unwrap()["data"]["n"],
            n
        );
    }
    server
        .publish(json!({"room": lesson, "event": "progress.updated", "data": {"ok": true}}))
        .await
        .unwrap();
    assert_eq!(
        reader.next_event_named("progress.updated").await.unwrap()["data"]["ok"],
        true,
        "non-trigger events pass"
    );
    let other = unique("competition:calm");
    let mut calm = server
        .connect_with_rooms("calm", &["competition:*"])
        .await
        .unwrap();
    calm.join(&other).await.unwrap();
    server
        .publish(json!({"room": other, "event": "match.update", "data": {}}))
        .await
        .unwrap();
    calm.next_event_named("match.update").await.unwrap();

    assert!(
        metric(
            &server,
            "realtime_plugin_timeouts_total{plugin=\"looping\"}"
        )
        .await
            >= 4.0
    );
    // Allocating 16 MiB takes about as long as the deadline in a debug build: either cut counts.
    let hoarding_failures = metric(&server, "realtime_plugin_traps_total{plugin=\"hoarding\"}")
        .await
        + metric(
            &server,
            "realtime_plugin_timeouts_total{plugin=\"hoarding\"}",
        )
        .await;
    assert!(hoarding_failures >= 4.0, "{hoarding_failures}");
    assert!(metric(&server, "realtime_plugin_traps_total{plugin=\"panicking\"}").await >= 4.0);
    assert!(
        metric(
            &server,
            "realtime_plugin_call_duration_seconds_count{plugin=\"looping\"}"
        )
        .await
            >= 4.0
    );
}

/// A plugin may write its replacement as text (`Outcome::ReplaceText`); text that is not JSON
/// never reaches a member: it counts as a failure of the plugin and the policy applies.
#[tokio::test]
async fn a_replacement_that_is_not_json_is_a_failure_and_never_reaches_members() {
    let wasm = plugin_wasm("misbehaving-plugin");
    let server = TestServer::start_with(|settings| {
        add_plugin(settings, "scribbler", wasm, json!({"mode": "broken_text"}));
        with_open_and_closed_chains(settings, &["scribbler"], &["scribbler"]);
    })
    .await
    .unwrap();
    let (mut reader, chat, lesson) = reader_in_open_and_closed_rooms(&server, "scribbled").await;

    fail_open_delivers_the_original(&server, &mut reader, &chat, json!({"n": 7})).await;
    fail_closed_refuses(&server, &lesson, json!({"n": 8})).await;
    assert_eq!(
        metric(&server, "realtime_plugin_traps_total{plugin=\"scribbler\"}").await,
        2.0,
        "each broken replacement counts as a failure"
    );
}

#[tokio::test]
async fn a_plugin_that_keeps_failing_is_disabled_for_a_cool_down() {
    let server = TestServer::start_with(|settings| {
        settings.plugin_runtime.breaker_failures = 2;
        settings.plugin_runtime.breaker_cooldown_secs = 60;
        add_plugin(
            settings,
            "fragile",
            plugin_wasm("misbehaving-plugin"),
            json!({"mode": "panic"}),
        );
        with_chain(settings, "chat", &["fragile"], FailurePolicy::FailOpen);
    })
    .await
    .unwrap();
    let room = unique("chat:breaker");
    for _ in 0..5 {
        server
            .publish(json!({"room": room, "event": "trigger", "data": {}}))
            .await
            .unwrap();
    }
    assert_eq!(
        metric(&server, "realtime_plugin_traps_total{plugin=\"fragile\"}").await,
        2.0,
        "only two real calls"
    );
    assert_eq!(
        metric(
            &server,
            "realtime_plugin_breaker_opened_total{plugin=\"fragile\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &server,
            "realtime_plugin_outcomes_total{plugin=\"fragile\",outcome=\"skipped_breaker_open\"}"
        )
        .await,
        3.0
    );
}

#[tokio::test]
async fn hot_reload_swaps_versions_under_a_connected_client_and_refuses_broken_ones() {
    let directory = TempDir::new("plugins").unwrap();
    let live = directory.0.join("live.wasm");
    std::fs::copy(plugin_wasm("chat-moderation"), &live).unwrap();
    let server = TestServer::start_with(|settings| {
        settings.plugin_runtime.reload_interval_ms = 100;
        add_plugin(
            settings,
            "live",
            live.clone(),
            json!({"banned_words": ["darn"]}),
        );
        with_chain(settings, "chat", &["live"], FailurePolicy::FailOpen);
    })
    .await
    .unwrap();
    let room = unique("chat:reload");
    let mut client = server.connect("steady").await.unwrap();
    client.join(&room).await.unwrap();
    let say = |text: &str| json!({"room": room, "event": "chat.message", "data": {"text": text}});
    server.publish(say("darn")).await.unwrap();
    assert_eq!(
        client.next_event_named("chat.message").await.unwrap()["data"]["text"],
        "****"
    );

    // A new version: the tagging test plugin in place of the moderation one.
    std::fs::copy(
        plugin_wasm("misbehaving-plugin"),
        directory.0.join("next.wasm"),
    )
    .unwrap();
    std::fs::rename(directory.0.join("next.wasm"), &live).unwrap();
    assert_eq!(
        server.server.reload_plugins().await,
        1,
        "the new version is swapped in"
    );
    server.publish(say("darn")).await.unwrap();
    assert_eq!(
        client.next_event_named("chat.message").await.unwrap()["data"]["text"],
        "darn",
        "the new version serves"
    );

    // A broken file is refused; the previous version keeps serving the same client.
    std::fs::write(&live, b"not wasm at all").unwrap();
    assert_eq!(server.server.reload_plugins().await, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.publish(say("still here")).await.unwrap();
    assert_eq!(
        client.next_event_named("chat.message").await.unwrap()["data"]["text"],
        "still here"
    );
    assert!(
        metric(
            &server,
            "realtime_plugin_reload_failures_total{plugin=\"live\"}"
        )
        .await
            >= 1.0
    );
    client.ok(json!({"op":"heartbeat"}), 9).await.unwrap();
}

#[tokio::test]
async fn a_plugin_that_fails_to_load_or_init_stops_startup_with_its_name() {
    let broken = TempDir::new("broken").unwrap();
    let garbage = broken.0.join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm garbage").unwrap();
    let error = TestServer::start_with(|settings| {
        add_plugin(settings, "garbage", garbage.clone(), json!({}))
    })
    .await
    .err()
    .expect("a broken plugin refuses startup")
    .to_string();
    assert!(error.contains("plugins.garbage"), "{error}");
    let refusing = TestServer::start_with(|settings| {
        add_plugin(
            settings,
            "refusing",
            plugin_wasm("misbehaving-plugin"),
            json!({"fail_init": true}),
        )
    })
    .await
    .err()
    .expect("a plugin whose init fails refuses startup")
    .to_string();
    assert!(
        refusing.contains("plugins.refusing") && refusing.contains("fail_init"),
        "{refusing}"
    );
}
