//! match-score-guard: for competition rooms. Drops `match.update` events whose `scores` are not
//! non-negative integers for exactly the match's `players`, and adds `leader` (the player with the
//! highest score, `null` on a tie).
//!
//! Payload: `{"matchId":"m1","players":["ana","ben"],"scores":{"ana":3,"ben":1}}`.
//! Config: `max_score` (optional): scores above it are rejected as implausible.

use std::collections::BTreeMap;

use realtime_sdk_plugin::serde_json::{Value, json};
use realtime_sdk_plugin::{
    Event, EventText, Outcome, Plugin, Subscription, export_plugin, on_event_text_default,
};
use serde::Deserialize;

pub struct MatchScoreGuard {
    max_score: Option<u64>,
}

/// A well-formed update, read straight from the payload text: names borrowed from it, scores as
/// the non-negative integers they must be, other fields skipped. Anything else (a wrong type, a
/// name with an escape, `players` or `scores` given twice, a `leader` already there) fails to
/// read, and the event takes the general path, which says what is wrong.
#[derive(Deserialize)]
struct WellFormedUpdate<'text> {
    #[serde(borrow)]
    players: Vec<&'text str>,
    /// A map, as in the general path's `Value`: a repeated name keeps its last score.
    #[serde(borrow)]
    scores: BTreeMap<&'text str, u64>,
    #[serde(default, rename = "leader", deserialize_with = "refuse_present")]
    _no_leader_yet: (),
}

/// Fails for a field that is present, whatever its value (`Option` would take `null` for
/// absent), so an update that already names a leader is handled by the general path.
fn refuse_present<'de, D: serde::Deserializer<'de>>(_: D) -> Result<(), D::Error> {
    Err(serde::de::Error::custom("`leader` is set by this plugin"))
}

impl MatchScoreGuard {
    /// The validated scores in player order, or why the update is dropped. `players` yields
    /// each player's name (or why it is not one), `score_of` looks a name's score up, and
    /// `entries` counts the scores given. Names are borrowed from the payload.
    fn scores<'a>(
        &self,
        players: impl ExactSizeIterator<Item = Result<&'a str, String>>,
        entries: usize,
        score_of: impl Fn(&str) -> Result<u64, String>,
    ) -> Result<Vec<(&'a str, u64)>, String> {
        if players.len() == 0 {
            return Err("`players` must be a non-empty list".to_owned());
        }
        if entries != players.len() {
            return Err("`scores` must have exactly one entry per player".to_owned());
        }
        players
            .map(|name| {
                let name = name?;
                let score = score_of(name)?;
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

    /// [`Self::scores`] for a payload read into a `Value`.
    fn scores_of_value<'a>(&self, payload: &'a Value) -> Result<Vec<(&'a str, u64)>, String> {
        let players = payload["players"]
            .as_array()
            .filter(|players| !players.is_empty())
            .ok_or("`players` must be a non-empty list")?;
        let scores = payload["scores"]
            .as_object()
            .ok_or("`scores` must be an object")?;
        let names = players.iter().map(|player| {
            player
                .as_str()
                .ok_or_else(|| "player names must be strings".to_owned())
        });
        self.scores(names, scores.len(), |name| {
            scores
                .get(name)
                .ok_or_else(|| format!("no score for player {name}"))?
                .as_u64()
                .ok_or_else(|| format!("score of {name} is not a non-negative integer"))
        })
    }

    /// The payload text with `"leader"` added, when it reads as a [`WellFormedUpdate`] whose
    /// scores pass; `None` sends the event down the general path.
    fn leader_added_to_text(&self, payload: &str) -> Option<String> {
        if !payload.trim_start().starts_with('{') {
            return None; // serde reads a struct from an array too
        }
        let update: WellFormedUpdate = realtime_sdk_plugin::serde_json::from_str(payload).ok()?;
        let players = update.players.iter().map(|name| Ok(*name));
        let score_of = |name: &str| update.scores.get(name).copied().ok_or_else(String::new);
        let scores = self.scores(players, update.scores.len(), score_of).ok()?;
        // The payload is an object with at least `players`, so the field goes before its
        // closing brace, after a comma. A borrowed name held no escape in the payload, so its
        // bytes between quotes are valid JSON as they are.
        let body = payload.trim_end().strip_suffix('}')?;
        let mut text = String::with_capacity(payload.len() + 16);
        text.push_str(body);
        match leader(&scores) {
            Some(name) => {
                text.push_str(",\"leader\":\"");
                text.push_str(name);
                text.push_str("\"}");
            }
            None => text.push_str(",\"leader\":null}"),
        }
        Some(text)
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
        let leader = match self.scores_of_value(&event.payload) {
            Err(reason) => return Outcome::Drop(reason),
            Ok(scores) => json!(leader(&scores)),
        };
        event.payload["leader"] = leader;
        Outcome::Replace(event.payload)
    }

    /// A valid update, the usual case, is read into borrowed names and its text extended by the
    /// leader, without building a `Value` (about half the plugin's work per event); anything
    /// else takes the general path, so drops keep their reasons.
    fn on_event_text(&mut self, event: EventText) -> Outcome {
        if let Some(text) = self.leader_added_to_text(&event.payload) {
            return Outcome::ReplaceText(text);
        }
        on_event_text_default(self, event)
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

    /// What the server gets for `payload` through the text path, with a replacement read back
    /// into a `Value` so it compares with the general path's; and whether the text path wrote it.
    fn through_the_text_path(plugin: &mut MatchScoreGuard, payload: &str) -> (Outcome, bool) {
        match plugin.on_event_text(EventText::new("match.update", "competition:1", payload)) {
            Outcome::ReplaceText(text) => {
                let value = serde_json::from_str(&text)
                    .unwrap_or_else(|error| panic!("{text} is not JSON ({error}), from {payload}"));
                (Outcome::Replace(value), true)
            }
            other => (other, false),
        }
    }

    fn through_the_general_path(plugin: &mut MatchScoreGuard, payload: &str) -> Outcome {
        let payload = serde_json::from_str(payload).unwrap();
        plugin.on_owned_event(Event::new("match.update", "competition:1", payload))
    }

    /// The same answer from the text path as from the general path, for `payload`; returns
    /// whether the text path wrote the replacement itself.
    fn paths_agree(payload: &str) -> bool {
        let (mut plugin, _) = MatchScoreGuard::init(json!({"max_score": 100})).unwrap();
        let (fast, written_from_text) = through_the_text_path(&mut plugin, payload);
        assert_eq!(
            fast,
            through_the_general_path(&mut plugin, payload),
            "{payload}"
        );
        written_from_text
    }

    #[test]
    fn the_text_path_adds_the_leader_to_the_text_as_it_is() {
        let (mut plugin, _) = MatchScoreGuard::init(json!({})).unwrap();
        let payload = r#"{"matchId":"m1", "players":["ana","ben"],"scores":{"ana":3,"ben":1}} "#;
        assert_eq!(
            plugin.on_event_text(EventText::new("match.update", "competition:1", payload)),
            Outcome::ReplaceText(
                r#"{"matchId":"m1", "players":["ana","ben"],"scores":{"ana":3,"ben":1},"leader":"ana"}"#
                    .to_owned()
            )
        );
    }

    #[test]
    fn the_text_path_answers_as_the_general_path_and_leaves_it_what_it_does_not_cover() {
        let written_from_text = [
            r#"{"players":["ana","ben"],"scores":{"ana":3,"ben":1}}"#,
            r#"{"players":["ana","ben"],"scores":{"ana":2,"ben":2}}"#,
            r#" { "matchId" : "m-1" , "players" : [ "ana" ] , "scores" : { "ana" : 0 } } "#,
            r#"{"players":["ana","ana"],"scores":{"ana":1,"ben":2}}"#,
            r#"{"players":["ana","ben"],"scores":{"ana":1,"ben":7,"ana":9}}"#,
            r#"{"extra":{"leader":1,"nested":[{"x":"}"}]},"players":["é"],"scores":{"é":1}}"#,
        ];
        for payload in written_from_text {
            assert!(paths_agree(payload), "the text path wrote {payload}");
        }
        let left_to_the_general_path = [
            // already has a leader, even null: the general path replaces it
            r#"{"players":["ana"],"scores":{"ana":1},"leader":"eve"}"#,
            r#"{"players":["ana"],"scores":{"ana":1},"leader":null}"#,
            // a name with an escape cannot be borrowed
            r#"{"players":["a\"na"],"scores":{"a\"na":1}}"#,
            r#"{"players":["\u0061na"],"scores":{"ana":1}}"#,
            // a field given twice, an array, wrong types, drops
            r#"{"players":["ana"],"players":["ben"],"scores":{"ben":1}}"#,
            r#"[["ana"],{"ana":1}]"#,
            r#"{"players":["ana","ben"],"scores":{"ana":-1,"ben":1}}"#,
            r#"{"players":["ana","ben"],"scores":{"ana":1.5,"ben":1}}"#,
            r#"{"players":["ana","ben"],"scores":{"ana":"3","ben":1}}"#,
            r#"{"players":["ana","ben"],"scores":{"ana":1}}"#,
            r#"{"players":["ana","ben"],"scores":{"ana":1,"eve":1}}"#,
            r#"{"players":[],"scores":{}}"#,
            r#"{"players":["ana"],"scores":{"ana":101}}"#,
            r#"{"players":[1],"scores":{"1":1}}"#,
            r#"{"scores":{"ana":1}}"#,
            r#""just text""#,
        ];
        for payload in left_to_the_general_path {
            assert!(!paths_agree(payload), "the general path answered {payload}");
        }
    }

    /// Thousands of payloads near a valid update (characters inserted, removed or replaced):
    /// wherever the result is JSON, the text path answers as the general path does.
    #[test]
    fn mutated_updates_get_the_same_answer_on_both_paths() {
        const SEED: &str =
            r#"{"matchId":"m-1","players":["ana","ben"],"scores":{"ana":3,"ben":1}}"#;
        const ALPHABET: &[char] = &[
            '{', '}', '[', ']', '"', ':', ',', ' ', '\\', '-', '0', '1', '9', '.', 'a', 'n', 'l',
            'e', 'é',
        ];
        let (mut written_from_text, mut compared) = (0, 0);
        for text in realtime_sdk_plugin::testing::mutations(&[SEED], ALPHABET, 20_000) {
            // The server passes plugins JSON only.
            if serde_json::from_str::<serde::de::IgnoredAny>(&text).is_err() {
                continue;
            }
            compared += 1;
            written_from_text += usize::from(paths_agree(&text));
        }
        // Both kinds of answer are covered, not only one.
        assert!(
            compared > 2_000 && written_from_text > 500,
            "{compared} {written_from_text}"
        );
        assert!(
            written_from_text < compared,
            "{compared} {written_from_text}"
        );
    }

    #[test]
    fn rejects_bad_config() {
        assert!(MatchScoreGuard::init(json!({"max_score": "lots"})).is_err());
    }
}
