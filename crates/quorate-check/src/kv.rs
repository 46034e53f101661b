//! The simulator's replicated state machine: a key-value map with put, delete and
//! compare-and-set, encoded as log commands.

use std::collections::BTreeMap;

/// A command carried in a log entry.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum KvCommand {
    /// Set `key` to `value`.
    Put {
        /// Key.
        key: String,
        /// Value.
        value: String,
    },
    /// Remove `key`.
    Delete {
        /// Key.
        key: String,
    },
    /// Set `key` to `value` if it currently holds `expected`.
    Cas {
        /// Key.
        key: String,
        /// Required current value.
        expected: String,
        /// New value.
        value: String,
    },
}

/// Largest encoded command accepted by [`KvCommand::decode`].
pub const COMMAND_BYTES_MAX: usize = 64 * 1024;

impl KvCommand {
    /// Encodes as tab-separated text (keys and values must not contain tabs).
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let s = match self {
            KvCommand::Put { key, value } => format!("P\t{key}\t{value}"),
            KvCommand::Delete { key } => format!("D\t{key}"),
            KvCommand::Cas { key, expected, value } => format!("C\t{key}\t{expected}\t{value}"),
        };
        debug_assert!(s.split('\t').count() <= 4);
        s.into_bytes()
    }

    /// Decodes a command; `None` for anything malformed.
    #[must_use]
    pub fn decode(bytes: &[u8]) -> Option<KvCommand> {
        if bytes.len() > COMMAND_BYTES_MAX {
            return None;
        }
        let s = std::str::from_utf8(bytes).ok()?;
        let parts: Vec<&str> = s.split('\t').collect();
        match parts.as_slice() {
            ["P", k, v] => Some(KvCommand::Put { key: (*k).into(), value: (*v).into() }),
            ["D", k] => Some(KvCommand::Delete { key: (*k).into() }),
            ["C", k, e, v] => Some(KvCommand::Cas { key: (*k).into(), expected: (*e).into(), value: (*v).into() }),
            _ => None,
        }
    }

    /// The key the command touches.
    #[must_use]
    pub fn key(&self) -> &str {
        match self {
            KvCommand::Put { key, .. } | KvCommand::Delete { key } | KvCommand::Cas { key, .. } => key,
        }
    }
}

/// The key-value state machine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvStore {
    map: BTreeMap<String, String>,
}

impl KvStore {
    /// Applies a command; returns whether it took effect (false only for a failed cas).
    pub fn apply(&mut self, cmd: &KvCommand) -> bool {
        match cmd {
            KvCommand::Put { key, value } => {
                self.map.insert(key.clone(), value.clone());
                true
            }
            KvCommand::Delete { key } => {
                self.map.remove(key);
                true
            }
            KvCommand::Cas { key, expected, value } => match self.map.get_mut(key) {
                Some(v) if v == expected => {
                    value.clone_into(v);
                    true
                }
                _ => false,
            },
        }
    }

    /// The value of `key`.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&str> {
        self.map.get(key).map(String::as_str)
    }

    /// Number of keys.
    #[must_use]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the map is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        for c in [
            KvCommand::Put { key: "k".into(), value: "v".into() },
            KvCommand::Delete { key: "k".into() },
            KvCommand::Cas { key: "k".into(), expected: "a".into(), value: "b".into() },
        ] {
            assert_eq!(KvCommand::decode(&c.encode()), Some(c));
        }
        assert_eq!(KvCommand::decode(b"X\tk"), None);
        assert_eq!(KvCommand::decode(&[0xff, 0xfe]), None);
    }

    #[test]
    fn cas_only_swaps_on_match() {
        let mut kv = KvStore::default();
        let cas = KvCommand::Cas { key: "k".into(), expected: "a".into(), value: "b".into() };
        assert!(!kv.apply(&cas));
        kv.apply(&KvCommand::Put { key: "k".into(), value: "a".into() });
        assert!(kv.apply(&cas));
        assert_eq!(kv.get("k"), Some("b"));
    }
}
