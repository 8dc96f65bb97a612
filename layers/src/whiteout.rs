//! OCI whiteout names (image-spec `layer.md`, "Whiteouts").
//!
//! * `.wh.NAME` in a directory: NAME from lower layers is removed. NAME must be a real
//!   name: not empty, not `.` or `..`.
//! * `.wh..wh..opq` in a directory: everything the lower layers put in that directory is
//!   removed (entries of the same layer stay).
//! * Any other `.wh..wh.` name is reserved (AUFS internals such as `.wh..wh.plnk`): it is
//!   refused rather than guessed at, as is a whiteout name used as a directory.

/// The prefix of every whiteout name.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// The opaque-directory marker.
pub const OPAQUE: &[u8] = b".wh..wh..opq";

/// What a file name means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Whiteout<'a> {
    /// An ordinary name.
    None,
    /// `.wh.NAME`: remove NAME.
    Remove(&'a [u8]),
    /// `.wh..wh..opq`.
    Opaque,
}

/// Classifies the last component of an entry path. `Err` explains a malformed whiteout.
pub fn classify(name: &[u8]) -> Result<Whiteout<'_>, String> {
    let Some(rest) = name.strip_prefix(WHITEOUT_PREFIX) else { return Ok(Whiteout::None) };
    if name == OPAQUE {
        return Ok(Whiteout::Opaque);
    }
    if rest.starts_with(WHITEOUT_PREFIX) {
        return Err(format!("reserved whiteout name {:?}", String::from_utf8_lossy(name)));
    }
    match rest {
        b"" => Err("whiteout with an empty name (\".wh.\")".into()),
        b"." | b".." => Err(format!("whiteout of {:?}", String::from_utf8_lossy(rest))),
        _ => Ok(Whiteout::Remove(rest)),
    }
}

/// Whether a name starts with the whiteout prefix (not allowed as a directory on the way
/// to an entry).
pub fn is_whiteout_name(name: &[u8]) -> bool {
    name.starts_with(WHITEOUT_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_names() {
        assert_eq!(classify(b"a"), Ok(Whiteout::None));
        assert_eq!(classify(b".wh"), Ok(Whiteout::None));
        assert_eq!(classify(b".whx"), Ok(Whiteout::None));
        assert_eq!(classify(b".wh.a"), Ok(Whiteout::Remove(b"a")));
        assert_eq!(classify(b".wh..a"), Ok(Whiteout::Remove(b".a")));
        assert_eq!(classify(b".wh..wh..opq"), Ok(Whiteout::Opaque));
        assert!(classify(b".wh.").unwrap_err().contains("empty"));
        assert!(classify(b".wh..").unwrap_err().contains("\".\""));
        assert!(classify(b".wh...").unwrap_err().contains("\"..\""));
        assert!(classify(b".wh..wh.plnk").unwrap_err().contains("reserved"));
        assert!(classify(b".wh..wh..opqx").unwrap_err().contains("reserved"));
    }
}
