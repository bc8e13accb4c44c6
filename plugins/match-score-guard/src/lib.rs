//! match-score-guard: for competition rooms. Drops `match.update` events whose `scores` are not
//! non-negative integers for exactly the match's `players`, and adds `leader` (the player with the
//! highest score, `null` on a tie).
//!
//! Payload: `{"matchId":"m1","players":["ana","ben"],"scores":{"ana":3,"ben":1}}`.
//! Config: `max_score` (optional): scores above it are rejected as implausible.

use realtime_sdk_plugin::serde_json::{Value, json};
use realtime_sdk_plugin::{Event, Outcome, Plugin, Subscription, export_plugin};

pub struct MatchScoreGuard {
    max_score: Option<u64>,
}

impl MatchScoreGuard {
    /// The validated scores in player order, or why the update is dropped. The names are
    /// borrowed from the payload: only the leader's is copied, into the payload.
    fn scores<'a>(&self, payload: &'a Value) -> Result<Vec<(&'a str, u64)>, String> {
        let players = payload["players"]
            .as_array()
            .filter(|players| !players.is_empty())
            .ok_or("`players` must be a non-empty list")?;
        let scores = payload["scores"]
            .as_object()
            .ok_or("`scores` must be an object")?;
        if scores.len() != players.len() {
            return Err("`scores` must have exactly one entry per player".to_owned());
        }
        players
            .iter()
            .map(|player| {
                let name = player.as_str().ok_or("player names must be strings")?;
                let score = scores
                    .get(name)
                    .ok_or_else(|| format!("no score for player {name}"))?
                    .as_u64()
                    .ok_or_else(|| format!("score of {name} is not a non-negative integer"))?;
                if self.max_score.is_some_and(|max| score > max) {
                    return Err(format!(
                        "score of {name} exceeds {}",
                        self.max_score.unwrap_or_default()
                    ));
                }
                Ok((name, score))
            })
            .collect()
    }
}

/// The single highest scorer, if there is one.
fn leader<'a>(scores: &[(&'a str, u64)]) -> Option<&'a str> {
    let best = scores.iter().map(|(_, score)| *score).max()?;
    let mut leaders = scores.iter().filter(|(_, score)| *score == best);
    let first = leaders.next()?;
    leaders.next().is_none().then_some(first.0)
}

impl Plugin for MatchScoreGuard {
    fn init(config: Value) -> Result<(Self, Subscription), String> {
        let max_score = match &config["max_score"] {
            Value::Null => None,
            value => Some(
                value
                    .as_u64()
                    .ok_or("`max_score` must be a non-negative integer")?,
            ),
        };
        Ok((
            MatchScoreGuard { max_score },
            Subscription::events(["match.update"]),
        ))
    }

    fn on_event(&mut self, event: &Event) -> Outcome {
        self.on_owned_event(event.clone())
    }

    /// Owns the event, so the leader is added to the payload in place, without a copy.
    fn on_owned_event(&mut self, mut event: Event) -> Outcome {
        let leader = match self.scores(&event.payload) {
            Err(reason) => return Outcome::Drop(reason),
            Ok(scores) => json!(leader(&scores)),
        };
        event.payload["leader"] = leader;
        Outcome::Replace(event.payload)
    }
}

export_plugin!(MatchScoreGuard);

#[cfg(test)]
mod tests {
    use super::*;

    fn run(payload: Value) -> Outcome {
        let (mut plugin, subscription) = MatchScoreGuard::init(json!({"max_score": 100})).unwrap();
        assert_eq!(subscription, Subscription::events(["match.update"]));
        plugin.on_event(&Event::new("match.update", "competition:1", payload))
    }

    #[test]
    fn adds_the_leader() {
        let outcome = run(json!({"players":["ana","ben"],"scores":{"ana":3,"ben":1}}));
        assert_eq!(
            outcome,
            Outcome::Replace(
                json!({"players":["ana","ben"],"scores":{"ana":3,"ben":1},"leader":"ana"})
            )
        );
        let tie = run(json!({"players":["ana","ben"],"scores":{"ana":2,"ben":2}}));
        assert!(matches!(tie, Outcome::Replace(payload) if payload["leader"].is_null()));
    }

    #[test]
    fn drops_bad_scores() {
        for bad in [
            json!({"players":["ana","ben"],"scores":{"ana":-1,"ben":1}}),
            json!({"players":["ana","ben"],"scores":{"ana":1.5,"ben":1}}),
            json!({"players":["ana","ben"],"scores":{"ana":"3","ben":1}}),
            json!({"players":["ana","ben"],"scores":{"ana":1}}),
            json!({"players":["ana","ben"],"scores":{"ana":1,"eve":1}}),
            json!({"players":["ana","ben"],"scores":{"ana":1,"ben":1,"eve":1}}),
            json!({"players":[],"scores":{}}),
            json!({"players":["ana"],"scores":{"ana":101}}),
            json!({"scores":{"ana":1}}),
        ] {
            assert!(matches!(run(bad.clone()), Outcome::Drop(_)), "{bad}");
        }
    }

    #[test]
    fn rejects_bad_config() {
        assert!(MatchScoreGuard::init(json!({"max_score": "lots"})).is_err());
    }
}
