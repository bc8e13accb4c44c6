//! Admission: the node's connection slots (`server.max_connections`) and how many of them one
//! user (`limits.max_connections_per_user`) or one client address
//! (`limits.max_connections_per_address`) may hold, so one token or one address cannot take
//! every slot of a node.
//!
//! Counted per node, like `max_connections` itself: the point is to keep a node's slots for
//! everyone. A slot is held from the handshake's check to the end of the connection's teardown,
//! by the [`ConnectionPermit`], whose drop gives everything back.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::protocol::{ErrorCode, WireError};

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NodeFull,
    TooManyForUser,
    TooManyForAddress,
}

impl Refusal {
    /// The coded error the handshake answers with.
    pub fn wire_error(self, limit: usize) -> WireError {
        match self {
            Refusal::NodeFull => WireError::new(
                ErrorCode::NodeFull,
                "this node holds its maximum of connections; retry another node",
            ),
            Refusal::TooManyForUser => WireError::new(
                ErrorCode::TooManyConnections,
                format!("this user holds {limit} connections on this node; close one first"),
            ),
            Refusal::TooManyForAddress => WireError::new(
                ErrorCode::TooManyConnections,
                format!("this address holds {limit} connections on this node"),
            ),
        }
    }
}

/// Counts per key (user id or address); a key's entry is removed when its count reaches zero,
/// so the map holds only keys with live connections.
struct Shares<K: Eq + Hash> {
    counts: Mutex<HashMap<K, usize>>,
}

impl<K: Eq + Hash + Clone> Shares<K> {
    fn new() -> Self {
        Shares {
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one for `key` unless it already holds `limit` (0 = no limit).
    fn try_take(&self, key: &K, limit: usize) -> bool {
        let mut counts = self.counts.lock();
        let count = counts.entry(key.clone()).or_insert(0);
        if limit != 0 && *count >= limit {
            if *count == 0 {
                counts.remove(key);
            }
            return false;
        }
        *count += 1;
        true
    }

    fn give_back(&self, key: &K) {
        let mut counts = self.counts.lock();
        if let Some(count) = counts.get_mut(key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(key);
            }
        }
    }
}

/// The node's admission state.
pub struct Admission {
    max_connections: usize,
    per_user_limit: usize,
    per_address_limit: usize,
    admitted: Arc<AtomicUsize>,
    per_user: Arc<Shares<Arc<str>>>,
    per_address: Arc<Shares<IpAddr>>,
}

/// Who asks for a slot: the user (when the handshake carried a valid token) and the address.
#[derive(Debug, Clone, Default)]
pub struct Applicant {
    pub user_id: Option<Arc<str>>,
    pub address: Option<IpAddr>,
}

impl Admission {
    pub fn new(max_connections: usize, per_user_limit: usize, per_address_limit: usize) -> Self {
        Admission {
            max_connections,
            per_user_limit,
            per_address_limit,
            admitted: Arc::new(AtomicUsize::new(0)),
            per_user: Arc::new(Shares::new()),
            per_address: Arc::new(Shares::new()),
        }
    }

    /// Connections holding a slot now (handshaking, connected or tearing down).
    pub fn admitted(&self) -> usize {
        self.admitted.load(Ordering::Acquire)
    }

    /// The limit a refusal refers to, for its message.
    pub fn limit_of(&self, refusal: Refusal) -> usize {
        match refusal {
            Refusal::NodeFull => self.max_connections,
            Refusal::TooManyForUser => self.per_user_limit,
            Refusal::TooManyForAddress => self.per_address_limit,
        }
    }

    /// Reserves a slot for `applicant`, or says which limit refuses it. Every step taken is
    /// given back when a later one refuses.
    pub fn try_admit(&self, applicant: &Applicant) -> Result<ConnectionPermit, Refusal> {
        let limit = self.max_connections;
        self.admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
                (current < limit).then_some(current + 1)
            })
            .map_err(|_| Refusal::NodeFull)?;
        let mut permit = ConnectionPermit {
            admitted: self.admitted.clone(),
            user: None,
            address: None,
        };
        if let Some(user_id) = &applicant.user_id {
            if !self.per_user.try_take(user_id, self.per_user_limit) {
                return Err(Refusal::TooManyForUser);
            }
            permit.user = Some((self.per_user.clone(), user_id.clone()));
        }
        if let Some(address) = applicant.address {
            if !self.per_address.try_take(&address, self.per_address_limit) {
                return Err(Refusal::TooManyForAddress);
            }
            permit.address = Some((self.per_address.clone(), address));
        }
        Ok(permit)
    }
}

/// One share taken: the counts it was taken from and its key.
type Share<K> = (Arc<Shares<K>>, K);

/// Keeps a connection slot (and the user's and address's shares) until dropped.
pub struct ConnectionPermit {
    admitted: Arc<AtomicUsize>,
    user: Option<Share<Arc<str>>>,
    address: Option<Share<IpAddr>>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        if let Some((shares, user_id)) = &self.user {
            shares.give_back(user_id);
        }
        if let Some((shares, address)) = &self.address {
            shares.give_back(address);
        }
        self.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applicant(user: &str, address: [u8; 4]) -> Applicant {
        Applicant {
            user_id: Some(Arc::from(user)),
            address: Some(IpAddr::from(address)),
        }
    }

    #[test]
    fn one_user_cannot_take_more_than_their_share() {
        let admission = Admission::new(100, 2, 0);
        let first = admission.try_admit(&applicant("u", [10, 0, 0, 1])).unwrap();
        let _second = admission.try_admit(&applicant("u", [10, 0, 0, 2])).unwrap();
        assert_eq!(
            admission.try_admit(&applicant("u", [10, 0, 0, 3])).err(),
            Some(Refusal::TooManyForUser)
        );
        assert!(
            admission
                .try_admit(&applicant("other", [10, 0, 0, 3]))
                .is_ok()
        );
        drop(first);
        assert!(
            admission.try_admit(&applicant("u", [10, 0, 0, 3])).is_ok(),
            "a closed one frees its share"
        );
    }

    #[test]
    fn one_address_cannot_take_more_than_its_share() {
        let admission = Admission::new(100, 0, 2);
        let _a = admission.try_admit(&applicant("a", [10, 0, 0, 1])).unwrap();
        let _b = admission.try_admit(&applicant("b", [10, 0, 0, 1])).unwrap();
        assert_eq!(
            admission.try_admit(&applicant("c", [10, 0, 0, 1])).err(),
            Some(Refusal::TooManyForAddress)
        );
        assert!(admission.try_admit(&applicant("c", [10, 0, 0, 2])).is_ok());
    }

    #[test]
    fn a_refused_applicant_gives_back_every_step_it_took() {
        let admission = Admission::new(100, 5, 1);
        let _held = admission.try_admit(&applicant("a", [10, 0, 0, 1])).unwrap();
        assert_eq!(
            admission.try_admit(&applicant("b", [10, 0, 0, 1])).err(),
            Some(Refusal::TooManyForAddress)
        );
        assert_eq!(admission.admitted(), 1, "the node slot was given back");
        assert_eq!(
            admission.per_user.counts.lock().get("b"),
            None,
            "and the user's share"
        );
    }

    #[test]
    fn the_node_limit_comes_first_and_zero_means_no_share_limit() {
        let admission = Admission::new(2, 0, 0);
        let _a = admission.try_admit(&applicant("u", [10, 0, 0, 1])).unwrap();
        let _b = admission.try_admit(&applicant("u", [10, 0, 0, 1])).unwrap();
        assert_eq!(
            admission.try_admit(&applicant("u", [10, 0, 0, 1])).err(),
            Some(Refusal::NodeFull)
        );
    }
}
