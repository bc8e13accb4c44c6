//! tournament-start-enricher: normalises `tournament.start` events. `startsAt` becomes RFC 3339
//! in UTC with milliseconds (accepted as RFC 3339 with any offset, or Unix seconds or
//! milliseconds); when missing it is the event time plus `default_lead_secs`. `countdownSecs`
//! (whole seconds from the event until the start, never negative) is added.
//!
//! Config: `default_lead_secs` (default 60).

use realtime_sdk_plugin::serde_json::{Value, json};
use realtime_sdk_plugin::{Event, Outcome, Plugin, Subscription, export_plugin};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub struct TournamentStartEnricher {
    default_lead_secs: u64,
}

/// Formats Unix milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn format_rfc3339(unix_ms: i64) -> String {
    let nanos = i128::from(unix_ms) * 1_000_000;
    match OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(moment) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            moment.year(),
            u8::from(moment.month()),
            moment.day(),
            moment.hour(),
            moment.minute(),
            moment.second(),
            moment.millisecond()
        ),
        // Outside the years `time` represents (±9999): not a tournament start.
        Err(_) => String::new(),
    }
}

/// Parses RFC 3339 (`2026-11-25T10:00:00Z`, `...T10:00:00.5+01:00`) to Unix milliseconds, with
/// a real calendar: `2026-02-31` or `2026-13-01` is not a date. The `time` crate does the
/// parsing; plugin authors copy these examples, so they should not copy a hand-written parser.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let moment = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    i64::try_from(moment.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Unix time in seconds below this is read as seconds, above as milliseconds (year 5138).
const SECONDS_OR_MILLIS: u64 = 100_000_000_000;

impl TournamentStartEnricher {
    fn starts_at_ms(&self, event: &Event) -> Result<i64, String> {
        match &event.payload["startsAt"] {
            Value::Null => Ok(event.timestamp_ms as i64 + self.default_lead_secs as i64 * 1000),
            Value::String(text) => {
                parse_rfc3339(text).ok_or_else(|| format!("startsAt {text:?} is not RFC 3339"))
            }
            Value::Number(number) => match number.as_u64() {
                Some(seconds) if seconds < SECONDS_OR_MILLIS => Ok(seconds as i64 * 1000),
                Some(millis) => Ok(millis as i64),
                None => Err("startsAt must be a non-negative integer Unix time".to_owned()),
            },
            _ => Err("startsAt must be RFC 3339 text or Unix time".to_owned()),
        }
    }
}

impl Plugin for TournamentStartEnricher {
    fn init(config: Value) -> Result<(Self, Subscription), String> {
        let default_lead_secs = match &config["default_lead_secs"] {
            Value::Null => 60,
            value => value
                .as_u64()
                .ok_or("`default_lead_secs` must be a non-negative integer")?,
        };
        Ok((
            TournamentStartEnricher { default_lead_secs },
            Subscription::events(["tournament.start"]),
        ))
    }

    fn on_event(&mut self, event: &Event) -> Outcome {
        self.on_owned_event(event.clone())
    }

    /// Owns the event, so the start time is added to the payload in place, without a copy.
    fn on_owned_event(&mut self, event: Event) -> Outcome {
        if !event.payload.is_object() {
            return Outcome::Drop("tournament.start data must be an object".to_owned());
        }
        match self.starts_at_ms(&event) {
            Err(reason) => Outcome::Drop(reason),
            Ok(starts_at) => {
                let countdown_ms = (starts_at - event.timestamp_ms as i64).max(0);
                let mut payload = event.payload;
                payload["startsAt"] = json!(format_rfc3339(starts_at));
                payload["countdownSecs"] = json!((countdown_ms + 999) / 1000);
                Outcome::Replace(payload)
            }
        }
    }
}

export_plugin!(TournamentStartEnricher);

#[cfg(test)]
mod tests {
    use super::*;

    fn run(payload: Value, timestamp_ms: u64) -> Outcome {
        let (mut plugin, _) =
            TournamentStartEnricher::init(json!({"default_lead_secs": 30})).unwrap();
        let mut event = Event::new("tournament.start", "competition:1", payload);
        event.timestamp_ms = timestamp_ms;
        plugin.on_event(&event)
    }

    #[test]
    fn formats_and_parses_rfc3339() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_rfc3339(1_795_643_627_123),
            "2026-11-25T21:53:47.123Z"
        );
        assert_eq!(
            parse_rfc3339("2026-11-25T21:53:47.123Z"),
            Some(1_795_643_627_123)
        );
        assert_eq!(
            parse_rfc3339("2026-11-25T22:53:47.123+01:00"),
            Some(1_795_643_627_123)
        );
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00Z"), Some(951_782_400_000));
        assert_eq!(parse_rfc3339("2026-13-01T00:00:00Z"), None);
        assert_eq!(
            parse_rfc3339("2026-02-31T00:00:00Z"),
            None,
            "February has no 31st"
        );
        assert_eq!(
            parse_rfc3339("2026-02-29T00:00:00Z"),
            None,
            "2026 is not a leap year"
        );
        assert_eq!(parse_rfc3339("2026-04-31T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2026-11-25T24:00:00Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn normalises_starts_at_and_adds_the_countdown() {
        let now = 1_795_643_600_000;
        let expected = |starts: &str, countdown: u64| {
            Outcome::Replace(json!({"name": "Cup", "startsAt": starts, "countdownSecs": countdown}))
        };
        assert_eq!(
            run(
                json!({"name": "Cup", "startsAt": "2026-11-25T22:53:40+01:00"}),
                now
            ),
            expected("2026-11-25T21:53:40.000Z", 20)
        );
        assert_eq!(
            run(json!({"name": "Cup", "startsAt": 1_795_643_620}), now),
            expected("2026-11-25T21:53:40.000Z", 20)
        );
        assert_eq!(
            run(
                json!({"name": "Cup", "startsAt": 1_795_643_620_000u64}),
                now
            ),
            expected("2026-11-25T21:53:40.000Z", 20)
        );
        assert_eq!(
            run(json!({"name": "Cup"}), now),
            expected("2026-11-25T21:53:50.000Z", 30)
        );
        assert_eq!(
            run(
                json!({"name": "Cup", "startsAt": "2020-01-01T00:00:00Z"}),
                now
            ),
            expected("2020-01-01T00:00:00.000Z", 0)
        );
    }

    #[test]
    fn drops_what_cannot_be_normalised() {
        assert!(matches!(
            run(json!({"startsAt": "soon"}), 0),
            Outcome::Drop(_)
        ));
        assert!(matches!(run(json!({"startsAt": -5}), 0), Outcome::Drop(_)));
        assert!(matches!(
            run(json!({"startsAt": "2026-02-31T10:00:00Z"}), 0),
            Outcome::Drop(_)
        ));
        assert!(matches!(run(json!("text"), 0), Outcome::Drop(_)));
    }
}
