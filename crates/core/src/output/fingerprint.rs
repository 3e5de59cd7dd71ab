//! What identifies a run's output: every input and option that can change an output byte. The
//! journal of a resumable run starts with it ([`super::journal`]), and a shard's seal carries it
//! for `merge`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Everything that can change an output byte of a run, as `what -> value` in words, so that a
/// difference can be named ("chunk length: 500 in the journal, 300 now").
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Fingerprint(pub BTreeMap<String, String>);

impl Fingerprint {
    pub fn set(&mut self, what: &str, value: impl ToString) -> &mut Self {
        self.0.insert(what.to_string(), value.to_string());
        self
    }

    pub fn get(&self, what: &str) -> Option<&str> {
        self.0.get(what).map(String::as_str)
    }

    /// The entries that differ, in words; `skip` names entries not compared.
    pub fn differences(&self, now: &Fingerprint, skip: &[&str]) -> Vec<String> {
        let keys: std::collections::BTreeSet<&String> = self.0.keys().chain(now.0.keys()).collect();
        keys.into_iter()
            .filter(|k| !skip.contains(&k.as_str()))
            .filter_map(|k| {
                let (a, b) = (self.0.get(k), now.0.get(k));
                (a != b).then(|| {
                    format!(
                        "{k}: {} before, {} now",
                        a.map_or("(not set)", String::as_str),
                        b.map_or("(not set)", String::as_str)
                    )
                })
            })
            .collect()
    }
}
