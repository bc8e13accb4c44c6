//! One request can be followed through the JSON logs: a service's NATS publish with a trace id
//! shows its `nats_inbound` span (with the trace id) around the `publish` span (room, event).
//! Runs the `realtime` binary with debug JSON logs on the machine's NATS.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn a_trace_id_from_a_service_follows_its_publish_through_the_logs() {
    let port = free_port();
    let prefix = format!("trace{:08x}", rand::random::<u32>());
    let mut node = Node(
        Command::new(env!("CARGO_BIN_EXE_realtime"))
            .current_dir(std::env::temp_dir())
            .env("REALTIME_SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .env("REALTIME_DATABASE__URL", "sqlite::memory:")
            .env("REALTIME_NATS__URL", "nats://127.0.0.1:4222")
            .env("REALTIME_NATS__SUBJECT_PREFIX", &prefix)
            .env("REALTIME_NATS__QUEUE_GROUP", &prefix)
            .env("REALTIME_LOG__FORMAT", "json")
            .env("RUST_LOG", "realtime_core=debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the realtime binary starts"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while reqwest::get(format!("http://127.0.0.1:{port}/health"))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the node did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let nats = async_nats::connect("nats://127.0.0.1:4222").await.unwrap();
    // What the node publishes to the other nodes for this room (as a node with a member there
    // would receive it).
    let mut fanout = nats
        .subscribe(format!("{prefix}.fanout.room.chat:traced"))
        .await
        .unwrap();
    nats.flush().await.unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Trace-Id", "trace-4f2a");
    let reply = nats
        .request_with_headers(
            format!("{prefix}.room.chat:traced"),
            headers,
            r#"{"event":"match.update","data":{"score":[1,0]}}"#.into(),
        )
        .await
        .unwrap();
    let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(reply, serde_json::json!({"ok": true, "delivered": true}));
    let carried = tokio::time::timeout(
        Duration::from_secs(5),
        futures_util::StreamExt::next(&mut fanout),
    )
    .await
    .expect("the fan-out publish")
    .unwrap();
    let carried_id = carried
        .headers
        .as_ref()
        .and_then(|headers| headers.get("Trace-Id"))
        .map(|value| value.as_str().to_owned());
    assert_eq!(
        carried_id.as_deref(),
        Some("trace-4f2a"),
        "the trace id travels to the other nodes with the event"
    );

    // Read the log until the publish line shows up (or give up).
    let stdout = node.0.stdout.take().unwrap();
    let found = tokio::task::spawn_blocking(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return None };
            let Ok(entry) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if entry["fields"]["message"] == "published" {
                return Some(entry);
            }
        }
        None
    });
    let entry = tokio::time::timeout(Duration::from_secs(10), found)
        .await
        .expect("a `published` log line")
        .unwrap()
        .expect("a `published` log line");
    assert_eq!(entry["span"]["name"], "publish", "{entry}");
    assert_eq!(entry["span"]["room"], "chat:traced", "{entry}");
    assert_eq!(entry["span"]["event"], "match.update", "{entry}");
    let spans = entry["spans"].as_array().expect("the span list");
    let inbound = spans
        .iter()
        .find(|span| span["name"] == "nats_inbound")
        .unwrap_or_else(|| panic!("the publish runs inside the inbound span: {entry}"));
    assert_eq!(inbound["trace_id"], "trace-4f2a", "{entry}");
}
