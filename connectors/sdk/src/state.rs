//! Durable local state for sources whose position lives nowhere else (files).
//! Kafka keeps offsets in the broker and Postgres in the replication slot; a file
//! has no such home, so its offset is kept here.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Serialize, de::DeserializeOwned};

/// One JSON document per key in a directory, replaced atomically: written to a
/// temporary file, synced, renamed over the old one, and the directory synced, so a
/// crash at any point leaves either the old or the new document.
#[derive(Clone, Debug)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StateStore { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, key: &str) -> PathBuf {
        let safe: String =
            key.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
        self.dir.join(format!("{safe}.json"))
    }

    pub fn load<T: DeserializeOwned>(&self, key: &str) -> io::Result<Option<T>> {
        match fs::read(self.path(key)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(io::Error::other),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The file [`StateStore::lock`] locks for `key`.
    pub fn lock_path(&self, key: &str) -> PathBuf {
        self.path(key).with_extension("lock")
    }

    /// Locks `<key>.lock` in the directory for as long as the returned file is
    /// open; `ErrorKind::WouldBlock` when another process (or another open of
    /// the same key) holds it. The lock is the kernel's, so a killed holder
    /// frees it.
    pub fn lock(&self, key: &str) -> io::Result<File> {
        crate::files::private_dir(&self.dir)?;
        let file = crate::files::private_file().create(true).truncate(false).write(true).open(self.lock_path(key))?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(fs::TryLockError::WouldBlock) => Err(io::ErrorKind::WouldBlock.into()),
            Err(fs::TryLockError::Error(e)) => Err(e),
        }
    }

    pub fn save<T: Serialize>(&self, key: &str, value: &T) -> io::Result<()> {
        crate::files::private_dir(&self.dir)?;
        // A fresh name, created exclusively (0600): a file or link planted
        // where the temporary file goes is never followed or overwritten.
        let mut tmp = tempfile::Builder::new().prefix(".state").suffix(".tmp").tempfile_in(&self.dir)?;
        tmp.write_all(&serde_json::to_vec(value).map_err(io::Error::other)?)?;
        tmp.as_file().sync_all()?;
        tmp.persist(self.path(key)).map_err(|e| e.error)?;
        File::open(&self.dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path().join("nested"));
        assert_eq!(store.load::<u64>("a/b").unwrap(), None);
        store.save("a/b", &41u64).unwrap();
        store.save("a/b", &42u64).unwrap();
        assert_eq!(store.load::<u64>("a/b").unwrap(), Some(42));
        let names: Vec<_> = fs::read_dir(store.dir()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["a_b.json"]);
    }

    #[test]
    fn files_are_private_and_planted_links_are_not_followed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path().join("state"));
        fs::create_dir_all(store.dir()).unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, "keep").unwrap();
        // The temporary name the store once used, planted as a link.
        std::os::unix::fs::symlink(&victim, store.dir().join("p.json.tmp")).unwrap();
        store.save("p", &1u64).unwrap();
        let _lock = store.lock("p").unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&store.path("p")), 0o600);
        assert_eq!(mode(&store.lock_path("p")), 0o600);
    }

    #[test]
    fn a_key_is_locked_once_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path().join("nested"));
        let held = store.lock("p").unwrap();
        assert_eq!(store.lock("p").unwrap_err().kind(), io::ErrorKind::WouldBlock);
        assert!(store.lock("q").is_ok());
        drop(held);
        assert!(store.lock("p").is_ok());
    }
}
