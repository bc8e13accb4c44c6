//! [`SmallSet`]: a few values in a vector, searched linearly.
//!
//! Used where there is one per connection or per user and it holds one to a handful of entries
//! (a socket's rooms, a user's sockets): a linear search is as fast as hashing at that size, and
//! a hash table would cost ~100-150 bytes more on every connection or user.

/// A few values in a vector; lookups are linear. Grows one slot at a time, because most hold
/// one or two values for their whole life.
#[derive(Debug)]
pub struct SmallSet<T>(Vec<T>);

impl<T> Default for SmallSet<T> {
    fn default() -> Self {
        SmallSet(Vec::new())
    }
}

impl<T> SmallSet<T> {
    pub fn one(value: T) -> Self {
        SmallSet(vec![value])
    }

    /// The first value that `matches`.
    pub fn find_mut(&mut self, mut matches: impl FnMut(&T) -> bool) -> Option<&mut T> {
        self.0.iter_mut().find(|value| matches(value))
    }

    pub fn any(&self, matches: impl FnMut(&T) -> bool) -> bool {
        self.0.iter().any(matches)
    }

    /// Adds a value without looking for an equal one (the caller has).
    pub fn push(&mut self, value: T) {
        self.0.reserve_exact(1);
        self.0.push(value);
    }

    /// Removes and returns the first value that `matches`; order is not kept.
    pub fn remove_where(&mut self, matches: impl FnMut(&T) -> bool) -> Option<T> {
        let index = self.0.iter().position(matches)?;
        Some(self.0.swap_remove(index))
    }

    pub fn retain(&mut self, keep: impl FnMut(&T) -> bool) {
        self.0.retain(keep);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.0.iter()
    }

    /// Empties the set, returning its values.
    pub fn take(&mut self) -> Vec<T> {
        std::mem::take(&mut self.0)
    }
}

impl<T: PartialEq> SmallSet<T> {
    pub fn contains(&self, value: &T) -> bool {
        self.0.contains(value)
    }

    /// Adds the value unless an equal one is there; true when added.
    pub fn insert(&mut self, value: T) -> bool {
        if self.contains(&value) {
            return false;
        }
        self.push(value);
        true
    }

    /// Removes the value; false when it was not there.
    pub fn remove(&mut self, value: &T) -> bool {
        self.remove_where(|held| held == value).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_each_value_once() {
        let mut set = SmallSet::default();
        assert!(set.insert("a"));
        assert!(!set.insert("a"));
        assert!(set.insert("b"));
        assert_eq!(set.len(), 2);
        assert!(set.remove(&"a"));
        assert!(!set.remove(&"a"));
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![&"b"]);
        assert_eq!(set.take(), vec!["b"]);
        assert!(set.is_empty());
    }

    #[test]
    fn finds_and_removes_by_key() {
        let mut set = SmallSet::one(("s1", 1));
        set.push(("s2", 2));
        *set.find_mut(|(id, _)| *id == "s2").unwrap() = ("s2", 20);
        assert!(set.any(|(_, value)| *value == 20));
        assert_eq!(set.remove_where(|(id, _)| *id == "s1"), Some(("s1", 1)));
        assert_eq!(set.remove_where(|(id, _)| *id == "s1"), None);
        set.retain(|(_, value)| *value > 100);
        assert!(set.is_empty());
    }
}
