//! The operator overrides on disk (`serve-weights --state-file`), so that a
//! drain made during an incident survives a restart of the server.
//!
//! JSON ([`Overrides`]), replaced atomically (written to a temporary file in
//! the same directory, synced, then renamed over the old one): a crash
//! mid-write leaves the previous file, never half of one. Health flags are
//! not stored — the discovery that set them sees the clusters again.

use super::state::Overrides;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// One overrides file; saves are serialised so the last save is the latest state.
#[derive(Debug)]
pub struct OverridesFile {
    path: PathBuf,
    saving: Mutex<()>,
}

impl OverridesFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            saving: Mutex::new(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored overrides; none when the file does not exist yet.
    pub fn load(&self) -> anyhow::Result<Overrides> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Overrides::default()),
            Err(e) => anyhow::bail!("reading --state-file {}: {e}", self.path.display()),
        };
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("--state-file {}: not JSON: {e}", self.path.display()))?;
        crate::load::from_value(&value, "")
            .map_err(|e| anyhow::anyhow!("--state-file {}: {e}", self.path.display()))
    }

    /// Store `current()` — read under the save lock, so that of two
    /// concurrent saves the later one writes the newer state.
    pub fn save(&self, current: impl FnOnce() -> Overrides) -> std::io::Result<()> {
        let _one_at_a_time = self.saving.lock().unwrap_or_else(|e| e.into_inner());
        let overrides = current();
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut tmp = tempfile_in(dir, &self.path)?;
        let text = serde_json::to_vec_pretty(&overrides).map_err(std::io::Error::other)?;
        tmp.1.write_all(&text)?;
        tmp.1.sync_all()?;
        std::fs::rename(&tmp.0, &self.path)
    }
}

fn tempfile_in(dir: &Path, target: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "overrides".into());
    let path = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let file = std::fs::File::create(&path)?;
    Ok((path, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_names_a_bad_file() {
        let dir = std::env::temp_dir().join(format!("tideway-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = OverridesFile::new(dir.join("overrides.json"));
        assert_eq!(file.load().unwrap(), Overrides::default());
        let mut o = Overrides::default();
        o.drained_clusters.insert("east".into());
        file.save(|| o.clone()).unwrap();
        assert_eq!(file.load().unwrap(), o);
        std::fs::write(file.path(), "{\"drainedClusterz\": []}").unwrap();
        let e = file.load().unwrap_err().to_string();
        assert!(
            e.contains("drainedClusterz") && e.contains("overrides.json"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
