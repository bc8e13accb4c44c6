//! tournament-start-enricher: normalises `tournament.start` events. `startsAt` becomes RFC 3339
//! in UTC with milliseconds (accepted as RFC 3339 with any offset, or Unix seconds or
//! milliseconds); when missing it is the event time plus `default_lead_secs`. `countdownSecs`
//! (whole seconds from the event until the start, never negative) is added.
//!
//! Config: `default_lead_secs` (default 60).

use realtime_sdk_plugin::serde_json::{Value, json};
use realtime_sdk_plugin::{Event, Outcome, Plugin, Subscription, export_plugin};

pub struct TournamentStartEnricher {
    default_lead_secs: u64,
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The civil date of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Formats Unix milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn format_rfc3339(unix_ms: i64) -> String {
    let (days, ms_of_day) = (
        unix_ms.div_euclid(86_400_000),
        unix_ms.rem_euclid(86_400_000),
    );
    let (year, month, day) = civil_from_days(days);
    let (hours, minutes) = (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60);
    let (seconds, millis) = (ms_of_day / 1000 % 60, ms_of_day % 1000);
    format!("{year:04}-{month:02}-{day:02}T{hours:02}:{minutes:02}:{seconds:02}.{millis:03}Z")
}

fn digits(text: &str, range: std::ops::Range<usize>) -> Option<u32> {
    let part = text.get(range)?;
    part.bytes()
        .all(|byte| byte.is_ascii_digit())
        .then(|| part.parse().ok())?
}

/// Parses RFC 3339 (`2026-11-25T10:00:00Z`, `...T10:00:00.5+01:00`) to Unix milliseconds.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    if bytes.len() < 20
        || bytes[4] != b'-'
        || bytes[7] != b'-'
        || !matches!(bytes[10], b'T' | b't' | b' ')
        || bytes[13] != b':'
        || bytes[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (
        digits(text, 0..4)?,
        digits(text, 5..7)?,
        digits(text, 8..10)?,
    );
    let (hours, minutes, seconds) = (
        digits(text, 11..13)?,
        digits(text, 14..16)?,
        digits(text, 17..19)?,
    );
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hours > 23
        || minutes > 59
        || seconds > 60
    {
        return None;
    }
    let mut rest = &text[19..];
    let mut millis = 0i64;
    if let Some(fraction) = rest.strip_prefix('.') {
        let length = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if length == 0 {
            return None;
        }
        let padded = format!("{:0<3}", &fraction[..length.min(3)]);
        millis = padded.parse().ok()?;
        rest = &fraction[length..];
    }
    let offset_minutes = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            sign * i64::from(digits(rest, 1..3)? * 60 + digits(rest, 4..6)?)
        }
        _ => return None,
    };
    let days = days_from_civil(i64::from(year), month, day);
    let seconds_of_day = i64::from(hours * 3600 + minutes * 60 + seconds);
    Some((days * 86_400 + seconds_of_day - offset_minutes * 60) * 1000 + millis)
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
        if !event.payload.is_object() {
            return Outcome::Drop("tournament.start data must be an object".to_owned());
        }
        match self.starts_at_ms(event) {
            Err(reason) => Outcome::Drop(reason),
            Ok(starts_at) => {
                let countdown_ms = (starts_at - event.timestamp_ms as i64).max(0);
                let mut payload = event.payload.clone();
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
        assert!(matches!(run(json!("text"), 0), Outcome::Drop(_)));
    }
}
