//! Room ids (`<type>:<name>`), JWT room grants (`type:*`), and the policy a room type carries.

use std::fmt;
use std::sync::Arc;

/// Longest room id accepted, in bytes (type, colon and name together).
pub const MAX_ROOM_ID_BYTES: usize = 128;

/// Why a string is not a room id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RoomIdError {
    #[error("room id must be <type>:<name> with [A-Za-z0-9_-] and at most 128 characters")]
    Malformed,
}

/// A validated room id. Cloning shares the string (ids travel with every event).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomId {
    full: Arc<str>,
    type_len: usize,
}

fn is_id_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-'
}

impl RoomId {
    pub fn parse(text: &str) -> Result<RoomId, RoomIdError> {
        if text.len() > MAX_ROOM_ID_BYTES {
            return Err(RoomIdError::Malformed);
        }
        let (room_type, name) = text.split_once(':').ok_or(RoomIdError::Malformed)?;
        let valid = |part: &str| !part.is_empty() && part.bytes().all(is_id_byte);
        if !valid(room_type) || !valid(name) {
            return Err(RoomIdError::Malformed);
        }
        Ok(RoomId {
            full: Arc::from(text),
            type_len: room_type.len(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The part before the colon: selects the room type configuration.
    pub fn room_type(&self) -> &str {
        &self.full[..self.type_len]
    }

    /// The part after the colon.
    pub fn name(&self) -> &str {
        &self.full[self.type_len + 1..]
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.full)
    }
}

impl fmt::Debug for RoomId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "RoomId({})", self.full)
    }
}

/// One entry of the JWT `rooms` claim: an exact room id or every room of a type (`type:*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomPattern {
    Exact(RoomId),
    AnyOfType(String),
}

impl RoomPattern {
    /// Parses a grant; entries that are neither form are ignored by the caller.
    pub fn parse(text: &str) -> Option<RoomPattern> {
        if let Some(room_type) = text.strip_suffix(":*") {
            let valid = !room_type.is_empty() && room_type.bytes().all(is_id_byte);
            return valid.then(|| RoomPattern::AnyOfType(room_type.to_owned()));
        }
        RoomId::parse(text).ok().map(RoomPattern::Exact)
    }

    pub fn matches(&self, room: &RoomId) -> bool {
        match self {
            RoomPattern::Exact(exact) => exact == room,
            RoomPattern::AnyOfType(room_type) => room.room_type() == room_type,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_ids_and_splits_the_type() {
        let room = RoomId::parse("competition:42").unwrap();
        assert_eq!(room.room_type(), "competition");
        assert_eq!(room.as_str(), "competition:42");
        assert!(RoomId::parse("chat:a-b_C9").is_ok());
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in [
            "",
            "chat",
            ":x",
            "chat:",
            "chat:a:b",
            "chat:a b",
            "chat:é",
            "chat:*",
            &format!("chat:{}", "x".repeat(124)),
        ] {
            assert_eq!(RoomId::parse(bad), Err(RoomIdError::Malformed), "{bad:?}");
        }
        assert!(RoomId::parse(&format!("chat:{}", "x".repeat(123))).is_ok());
    }

    #[test]
    fn patterns_match_exact_ids_and_whole_types() {
        let room = RoomId::parse("lesson:7").unwrap();
        assert!(RoomPattern::parse("lesson:*").unwrap().matches(&room));
        assert!(RoomPattern::parse("lesson:7").unwrap().matches(&room));
        assert!(!RoomPattern::parse("lesson:8").unwrap().matches(&room));
        assert!(!RoomPattern::parse("chat:*").unwrap().matches(&room));
        assert!(RoomPattern::parse("*").is_none());
        assert!(RoomPattern::parse("bad id:*").is_none());
    }
}
