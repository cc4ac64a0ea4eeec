//! [`Name`]: a name from QEMU's answers (a machine type, a CPU model, a CPU feature, a QOM type,
//! a command), stored once per daemon however often it appears.
//!
//! The capabilities of one binary hold some 12 000 such names, mostly repeats: the same feature
//! blocks dozens of CPU models, TCG and KVM list the same machine types, and `qemu-system-i386`
//! answers much as `qemu-system-x86_64` does. Kept as one `String` each they were about 0.8 MB
//! of an idle daemon's 8 MB (`docs/qemu-bench.md`); shared, each repeat is one pointer.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Every name handed out, so that equal names share their text.
static NAMES: LazyLock<Mutex<HashSet<Arc<str>>>> = LazyLock::new(Default::default);

/// A shared, immutable name; compares, hashes, orders and prints as its text.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(Arc<str>);

impl Name {
    /// The name `text`, sharing the text of an equal name handed out before.
    pub fn new(text: &str) -> Name {
        let mut names = NAMES.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(known) = names.get(text) {
            return Name(Arc::clone(known));
        }
        let name: Arc<str> = Arc::from(text);
        names.insert(Arc::clone(&name));
        Name(name)
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Forgets the names nothing holds any more: those only answers read during a probe held,
    /// and those of capabilities a new probe replaced (a QEMU binary upgraded under a running
    /// daemon). virtqemud calls it after every probe.
    pub fn forget_unused() {
        let mut names = NAMES.lock().unwrap_or_else(PoisonError::into_inner);
        names.retain(|name| Arc::strong_count(name) > 1);
        names.shrink_to_fit();
    }

    /// Whether `text` is a name something holds (or held since the last
    /// [`forget_unused`](Name::forget_unused)).
    pub fn is_known(text: &str) -> bool {
        NAMES
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(text)
    }
}

impl Default for Name {
    fn default() -> Name {
        Name::new("")
    }
}

impl Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Name {
    fn from(text: &str) -> Name {
        Name::new(text)
    }
}

impl From<String> for Name {
    fn from(text: String) -> Name {
        Name::new(&text)
    }
}

impl From<Name> for String {
    fn from(name: Name) -> String {
        name.as_str().to_owned()
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Name {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Name, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Name;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Name, E> {
                Ok(Name::new(text))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_names_share_their_text() {
        let a = Name::new("Skylake-Client-v1");
        let b: Name = serde_json::from_str("\"Skylake-Client-v1\"").expect("a string");
        assert_eq!(a, b);
        assert!(Arc::ptr_eq(&a.0, &b.0));
        assert_eq!(
            serde_json::to_string(&b).expect("serializes"),
            "\"Skylake-Client-v1\""
        );
    }

    #[test]
    fn names_compare_with_text_and_order_as_text() {
        let names: std::collections::BTreeSet<Name> = ["b", "a"].into_iter().map(Name::from).collect();
        assert!(names.contains("a"));
        assert_eq!(names.first().map(Name::as_str), Some("a"));
        assert_eq!(Name::from("pc"), "pc");
    }

    #[test]
    fn unused_names_are_forgotten() {
        let kept = Name::new("name-test-kept");
        drop(Name::new("name-test-dropped"));
        Name::forget_unused();
        assert!(Name::is_known("name-test-kept"));
        assert!(!Name::is_known("name-test-dropped"));
        drop(kept);
    }
}
