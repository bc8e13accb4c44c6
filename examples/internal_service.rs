//! An internal service on NATS: starts a tournament, streams match scores into its room, and
//! prints every `user.offline` the platform reports.
//!
//! ```sh
//! cargo run -p realtime-examples --bin internal-service -- --room competition:42 --rounds 5
//! ```

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use futures_util::StreamExt;
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// NATS server the realtime nodes use.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// `nats.subject_prefix` of the deployment.
    #[arg(long, default_value = "realtime")]
    prefix: String,
    /// The competition room to publish into.
    #[arg(long, default_value = "competition:42")]
    room: String,
    /// How many `match.update` events to send, one per second.
    #[arg(long, default_value_t = 10)]
    rounds: u32,
}

/// Publishes `{"event":..,"data":..}` into a room and waits for the platform's answer, so a
/// refused event (bad room, bad name) is reported instead of lost.
async fn publish(
    client: &async_nats::Client,
    subject: &str,
    event: &str,
    data: serde_json::Value,
) -> anyhow::Result<()> {
    let body = json!({ "event": event, "data": data }).to_string();
    let reply = client
        .request(subject.to_owned(), body.into())
        .await
        .with_context(|| format!("no realtime node answered on {subject}"))?;
    let reply: serde_json::Value = serde_json::from_slice(&reply.payload)?;
    anyhow::ensure!(reply["ok"] == true, "{event} refused: {reply}");
    println!("published {event}");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = async_nats::connect(&args.nats)
        .await
        .context("connect to NATS")?;
    let mut offline = client
        .subscribe(format!("{}.events.user.offline", args.prefix))
        .await?;
    tokio::spawn(async move {
        while let Some(message) = offline.next().await {
            println!(
                "user.offline: {}",
                String::from_utf8_lossy(&message.payload)
            );
        }
    });

    let subject = format!("{}.room.{}", args.prefix, args.room);
    publish(
        &client,
        &subject,
        "tournament.start",
        json!({ "tournamentId": "spring-cup", "round": 1 }),
    )
    .await?;
    for round in 1..=args.rounds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let score = json!({ "matchId": "m-1", "players": ["ana", "ben"], "scores": { "ana": round, "ben": round / 2 } });
        publish(&client, &subject, "match.update", score).await?;
    }
    client.flush().await?;
    Ok(())
}
