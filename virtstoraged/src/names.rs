//! Volume names: a volume name is a file name inside its pool, never a path.

use crate::error::{Result, StorageError};

/// The longest file name Linux allows.
const NAME_MAX: usize = 255;

/// Refuses names that are empty, `.`, `..`, contain `/` or NUL, or are longer than a file name
/// may be: anything that could escape the pool's directory or name something else.
pub fn check_vol_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("is empty")
    } else if name == "." || name == ".." {
        Some("names a directory")
    } else if name.contains('/') {
        Some("contains '/'")
    } else if name.contains('\0') {
        Some("contains a NUL character")
    } else if name.len() > NAME_MAX {
        Some("is longer than 255 bytes")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(why) => Err(StorageError::invalid_arg(format!(
            "Volume name {name:?} {why}: a volume name is a file name inside its pool, not a path"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_specials_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "/etc/passwd",
            "a/b",
            "a\0b",
            &"x".repeat(256),
        ] {
            let err = check_vol_name(bad).expect_err(bad);
            assert_eq!(err.code, rvirt_proto::v1::ErrorCode::InvalidArg, "{bad}");
        }
    }

    #[test]
    fn ordinary_file_names_pass() {
        for good in ["disk.qcow2", "..hidden", "a..b", "ümlaut", "x y"] {
            check_vol_name(good).expect(good);
        }
    }
}
