//! The shipped Grafana dashboard and Prometheus alert rules (docs/monitoring/) reference only
//! metrics a live node exports: a renamed metric would otherwise leave a blank panel or an
//! alert that never fires.

use std::collections::BTreeSet;

use realtime_tests::TestServer;
use serde_json::json;

/// Every `realtime_*` name in `text`, histogram suffixes folded into the histogram's name.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut start = 0;
    while let Some(found) = text[start..].find("realtime_") {
        let begin = start + found;
        let preceded_by_name =
            begin > 0 && (bytes[begin - 1].is_ascii_alphanumeric() || bytes[begin - 1] == b'_');
        let end = text[begin..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |offset| begin + offset);
        if !preceded_by_name && end > begin + "realtime_".len() {
            let name = &text[begin..end];
            let name = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            names.insert(name.to_owned());
        }
        start = end;
    }
    names
}

#[tokio::test]
async fn the_dashboard_and_alerts_use_only_metrics_a_live_node_exports() {
    let server = TestServer::start().await.unwrap();
    // Traffic that moves the labelled metrics: a handshake, a join, requests, an error reply, a
    // publish, a notification and a server close.
    let mut client = server.connect("watcher").await.unwrap();
    client.join("chat:monitoring").await.unwrap();
    // A join into a room with history (competition keeps it) moves the history metrics.
    let mut scorer = server
        .connect_with_rooms("scorer", &["competition:*"])
        .await
        .unwrap();
    scorer.join("competition:monitoring").await.unwrap();
    client.send_text("not json").await.unwrap();
    client.next_json().await.unwrap();
    server
        .publish(json!({"room": "chat:monitoring", "event": "tick", "data": {}}))
        .await
        .unwrap();
    server
        .create_notification(json!({"userId": "watcher", "type": "t", "content": {}}))
        .await
        .unwrap();
    server
        .graphql(
            Some(&server.token("watcher")),
            "{ unreadNotificationCount }",
            json!({}),
        )
        .await
        .unwrap();
    client.send_binary(vec![1, 2, 3]).await.unwrap();
    client.expect_end().await.unwrap();

    let exported = reqwest::get(format!("http://{}/metrics", server.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let exported = metric_names(&exported);
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/monitoring");
    for file in ["grafana-dashboard.json", "alerts.yml"] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        let used = metric_names(&text);
        assert!(used.len() >= 5, "{file} uses {used:?}");
        let missing: Vec<&String> = used.difference(&exported).collect();
        assert!(
            missing.is_empty(),
            "{file} uses metrics a node does not export: {missing:?}\nexported: {exported:?}"
        );
    }
}
