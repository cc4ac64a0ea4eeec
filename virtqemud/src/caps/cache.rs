//! The emulator capability cache: what each QEMU binary said over QMP, in memory and as JSON
//! files in `<data dir>/capabilities/`, so that a daemon restart does not run QEMU again.
//!
//! An entry is valid while its [`CacheKey`] matches: the binary's path, size and modification
//! time, rvirt's version, whether KVM was usable, the kernel release and the CPU microcode
//! (libvirt invalidates on the same host changes). Concurrent lookups of one binary share one
//! probe. A probe that fails because QEMU was too slow to answer (a loaded host) is tried once
//! more, and if it fails again the next lookup probes anew; any other failure (a binary that
//! cannot start or describe itself) is remembered in memory for that key only, never written.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use super::emulator::{EmulatorCaps, EmulatorProber, ProbeError};

/// What a cached entry was made for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheKey {
    /// The binary.
    pub binary: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Its modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// The rvirt version that probed it.
    pub rvirt_version: String,
    /// Whether KVM was usable.
    pub kvm: bool,
    /// The kernel release.
    pub kernel: String,
    /// The host CPU's microcode revision.
    pub microcode: Option<u64>,
}

/// The host facts every key shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKey {
    /// Whether KVM is usable.
    pub kvm: bool,
    /// The kernel release.
    pub kernel: String,
    /// The CPU microcode revision.
    pub microcode: Option<u64>,
}

impl HostKey {
    /// The key of `binary` as it is now on disk.
    pub fn key_for(&self, binary: &Path) -> Result<CacheKey, ProbeError> {
        let meta = std::fs::metadata(binary).map_err(|e| ProbeError::Binary {
            binary: binary.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(CacheKey {
            binary: binary.to_owned(),
            size: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            rvirt_version: env!("CARGO_PKG_VERSION").to_owned(),
            kvm: self.kvm,
            kernel: self.kernel.clone(),
            microcode: self.microcode,
        })
    }
}

/// A cache file: read as `CacheFile<EmulatorCaps>`, written from borrowed parts.
#[derive(Serialize, Deserialize)]
struct CacheFile<K, C> {
    key: K,
    caps: C,
}

type Probed = Result<Arc<EmulatorCaps>, ProbeError>;

struct Slot {
    key: CacheKey,
    value: OnceCell<Probed>,
}

/// Where an entry came from, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// This process already had it.
    Memory,
    /// Read from the cache file.
    Disk,
    /// QEMU was run.
    Probe,
}

/// The cache.
pub struct EmulatorCache {
    dir: PathBuf,
    host: HostKey,
    prober: Arc<dyn EmulatorProber>,
    slots: Mutex<HashMap<PathBuf, Arc<Slot>>>,
}

impl std::fmt::Debug for EmulatorCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatorCache")
            .field("dir", &self.dir)
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

/// A stable 64-bit FNV-1a hash: the cache file name must not change between builds.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl EmulatorCache {
    /// A cache keeping its files in `dir`.
    pub fn new(dir: PathBuf, host: HostKey, prober: Arc<dyn EmulatorProber>) -> EmulatorCache {
        EmulatorCache {
            dir,
            host,
            prober,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// The cache file of `binary`: its file name and a hash of its full path.
    pub fn file_for(&self, binary: &Path) -> PathBuf {
        use std::os::unix::ffi::OsStrExt as _;
        let name = binary
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "qemu".into());
        self.dir.join(format!(
            "{name}-{:016x}.json",
            fnv1a(binary.as_os_str().as_bytes())
        ))
    }

    /// The capabilities of `binary`, probing it only when neither memory nor disk holds a
    /// valid entry.
    pub async fn get(&self, binary: &Path) -> Result<Arc<EmulatorCaps>, ProbeError> {
        self.get_with_source(binary).await.map(|(caps, _)| caps)
    }

    /// [`EmulatorCache::get`], also telling where the answer came from.
    pub async fn get_with_source(&self, binary: &Path) -> Result<(Arc<EmulatorCaps>, Source), ProbeError> {
        let key = self.host.key_for(binary)?;
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            match slots.get(binary) {
                Some(slot) if slot.key == key => Arc::clone(slot),
                _ => {
                    let slot = Arc::new(Slot {
                        key: key.clone(),
                        value: OnceCell::new(),
                    });
                    slots.insert(binary.to_owned(), Arc::clone(&slot));
                    slot
                }
            }
        };
        let mut source = Source::Memory;
        let value = slot
            .value
            .get_or_init(|| async {
                if let Some(caps) = self.load(&key).await {
                    source = Source::Disk;
                    return Ok(Arc::new(caps));
                }
                source = Source::Probe;
                let started = std::time::Instant::now();
                let mut probed = self.prober.probe(binary, key.kvm).await;
                if let Err(e) = &probed
                    && e.is_transient()
                {
                    tracing::warn!(binary = %binary.display(), error = %e, "QEMU was too slow to describe itself; probing it again");
                    probed = self.prober.probe(binary, key.kvm).await;
                }
                let caps = match probed {
                    Ok(caps) => caps,
                    Err(e) => {
                        tracing::warn!(binary = %binary.display(), error = %e, "cannot probe QEMU; it is left out");
                        return Err(e);
                    }
                };
                tracing::info!(
                    binary = %binary.display(),
                    version = %caps.version,
                    kvm = caps.kvm.is_some(),
                    ms = started.elapsed().as_millis() as u64,
                    "probed QEMU"
                );
                let caps = Arc::new(caps);
                self.store(&key, &caps).await;
                Ok(caps)
            })
            .await
            .clone();
        if matches!(source, Source::Probe) {
            // The names only the probe's answers held are free now, and those of an older
            // answer for this binary that the probe replaced (QEMU upgraded under the daemon).
            crate::qmp::name::Name::forget_unused();
        }
        if let Err(e) = &value
            && e.is_transient()
        {
            // Forget it, so that the next lookup probes again (unless a newer slot replaced it).
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            if slots.get(binary).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                slots.remove(binary);
            }
        }
        value.map(|caps| (caps, source))
    }

    /// The entry on disk for `key`, read and parsed on a blocking thread (a file of a few
    /// hundred KB: the daemon's worker goes on serving calls meanwhile).
    async fn load(&self, key: &CacheKey) -> Option<EmulatorCaps> {
        let path = self.file_for(&key.binary);
        let key = key.clone();
        tokio::task::spawn_blocking(move || load(&path, &key))
            .await
            .ok()
            .flatten()
    }

    /// Writes the entry of `key`, durably, on a blocking thread: an fsync on a busy disk can
    /// take long, and must not hold up the daemon's worker.
    async fn store(&self, key: &CacheKey, caps: &Arc<EmulatorCaps>) {
        let path = self.file_for(&key.binary);
        let dir = self.dir.clone();
        let (key, caps, target) = (key.clone(), Arc::clone(caps), path.clone());
        let written = rvirt_daemon::atomic::off_worker(move || {
            std::fs::create_dir_all(&dir)?;
            let file = CacheFile {
                key: &key,
                caps: &*caps,
            };
            let json = serde_json::to_vec(&file).map_err(std::io::Error::other)?;
            rvirt_daemon::atomic::write_atomic(&target, &json, 0o644)
        })
        .await;
        if let Err(e) = written {
            // The cache only saves time: the next start probes again.
            tracing::warn!(path = %path.display(), error = %e, "cannot write the capability cache");
        }
    }
}

fn load(path: &Path, key: &CacheKey) -> Option<EmulatorCaps> {
    let text = std::fs::read(path).ok()?;
    match serde_json::from_slice::<CacheFile<CacheKey, EmulatorCaps>>(&text) {
        Ok(file) if file.key == *key => Some(file.caps),
        Ok(_) => {
            tracing::debug!(path = %path.display(), "capability cache entry is stale");
            None
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable capability cache entry");
            None
        }
    }
}
