//! Files a crash must never leave half-written (checkpoint pointers, the spool offset, the run
//! record): written to a temp file beside them and renamed over them, so a reader sees the old
//! content or the new.

use std::path::Path;

/// Replaces `path` with `contents` atomically (on one file system, as a rename is).
pub(crate) fn write(path: &Path, contents: impl AsRef<[u8]>) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_new_content_replaces_the_old_and_no_temp_file_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latest.json");
        super::write(&path, "{\"step\":1}").unwrap();
        super::write(&path, "{\"step\":2}").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"step\":2}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
