//! Durable definition files at the cost of one disk flush: a write-ahead journal in front of a
//! directory of files.
//!
//! [`atomic::write_atomic`](crate::atomic::write_atomic) makes one file durable with two
//! journal commits of the filesystem (the file's fsync, then the directory's). A driver that
//! writes a definition per call pays both on every define. [`ConfigJournal`] pays one:
//!
//! 1. [`ConfigJournal::put`] writes the new contents to a temporary file beside the target,
//!    without syncing it;
//! 2. appends a checksummed record (name, mode, contents) to the journal and `fdatasync`s it:
//!    from here on the change survives a crash, and the call may return;
//! 3. renames the temporary over the target, so that readers of the directory see the new file
//!    at once.
//!
//! [`ConfigJournal::remove`] journals the removal the same way, then unlinks the file.
//!
//! A background thread *checkpoints*: when the journal holds many records, or the writes have
//! paused, it starts a new journal, makes the files and the directory durable (one `syncfs`), and
//! deletes the old journal. [`ConfigJournal::open`] recovers after a crash: it replays every
//! journal left in the directory, oldest first, writing each file durably, and only then deletes
//! them. A torn record at a journal's end (the crash came while it was written) fails its
//! checksum and is ignored: its call never returned.
//!
//! So, as with [`atomic`](crate::atomic), a crash at any instant leaves each file with its old
//! contents or its new ones, never torn, and every change a call reported done is kept. Between
//! a crash and the next open a file may be stale or torn on disk, and the journal holds what it
//! must be: only [`ConfigJournal::open`] may be used to read the directory back.
//!
//! Journals are hidden files (`.journal-<sequence>`) in the directory they protect; temporaries
//! are hidden too. Files are named by a plain file name (no `/`, not hidden).

use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::atomic::{remove_durable, remove_if_present, replace, sync_dir, temporary_path};

/// What a journal file starts with.
const MAGIC: &[u8; 16] = b"rvirt-journal 1\n";
/// Record kinds.
const PUT: u8 = 1;
const REMOVE: u8 = 2;
/// crc32 (4) + kind (1) + mode (4) + name length (2) + data length (4).
const HEADER: usize = 15;
/// The prefix of journal file names.
const JOURNAL_PREFIX: &str = ".journal-";
/// How much of a new journal is written with zeros ahead of use: a record that fits in it
/// changes no file size, so its `fdatasync` flushes data alone, with no filesystem journal
/// commit.
const PREALLOCATED: usize = 1 << 20;
/// How many empty temporary files are kept ready: creating a file (allocating an inode) is
/// the slowest step of a put on a busy ext4, so it is done between calls.
const SPARES: usize = 4;

/// When the background thread checkpoints.
#[derive(Debug, Clone, Copy)]
pub struct Checkpoints {
    /// After this many records...
    pub records: usize,
    /// ...or this many bytes of journal...
    pub bytes: u64,
    /// ...or once no write came for this long.
    pub idle: Duration,
}

impl Default for Checkpoints {
    fn default() -> Self {
        Checkpoints {
            records: 1024,
            bytes: 8 << 20,
            idle: Duration::from_millis(250),
        }
    }
}

/// A directory of files written through a write-ahead journal; see the module's documentation.
#[derive(Debug)]
pub struct ConfigJournal {
    shared: Arc<Shared>,
    checkpointer: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    policy: Checkpoints,
    state: Mutex<State>,
    /// Wakes the checkpointer.
    wake: Condvar,
    /// Held by the one checkpoint running.
    checkpointing: Mutex<()>,
    /// Empty temporary files made ahead of the puts that will fill them, with their mode.
    spares: Mutex<Vec<(PathBuf, File, u32)>>,
}

#[derive(Debug)]
struct State {
    journal: Journal,
    /// Journals replaced by a newer one whose files are not yet known to be durable, oldest
    /// first. They are deleted in this order, and never after a newer one.
    retired: Vec<PathBuf>,
    last_write: Instant,
    /// Checkpoints completed, for whoever waits for one.
    checkpoints: u64,
    stop: bool,
    /// Set when a failed append could not be cut off again: the journal may end in garbage,
    /// after which nothing more may be written to it.
    broken: Option<String>,
}

#[derive(Debug)]
struct Journal {
    file: File,
    path: PathBuf,
    seq: u64,
    len: u64,
    records: usize,
}

/// One record read back from a journal.
#[derive(Debug, PartialEq, Eq)]
enum Record {
    Put { name: String, mode: u32, data: Vec<u8> },
    Remove { name: String },
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, message)
}

fn check_name(name: &str) -> std::io::Result<()> {
    if name.is_empty() || name.starts_with('.') || name.contains('/') || name.contains('\0') {
        return Err(invalid(format!("'{name}' is not a plain, visible file name")));
    }
    if name.len() > usize::from(u16::MAX) {
        return Err(invalid("file name too long".to_owned()));
    }
    Ok(())
}

fn encode(kind: u8, name: &str, mode: u32, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let data_len = u32::try_from(data.len()).map_err(|_| invalid("contents over 4 GiB".to_owned()))?;
    let name_len = u16::try_from(name.len()).map_err(|_| invalid("file name too long".to_owned()))?;
    let mut buf = Vec::with_capacity(HEADER + name.len() + data.len());
    buf.extend_from_slice(&[0; 4]);
    buf.push(kind);
    buf.extend_from_slice(&mode.to_le_bytes());
    buf.extend_from_slice(&name_len.to_le_bytes());
    buf.extend_from_slice(&data_len.to_le_bytes());
    buf.extend_from_slice(name.as_bytes());
    buf.extend_from_slice(data);
    let crc = crc32fast::hash(&buf[4..]);
    buf[..4].copy_from_slice(&crc.to_le_bytes());
    Ok(buf)
}

/// The records of a journal's contents, up to the first one that is incomplete or fails its
/// checksum; the second value says whether anything was left after the last good record.
fn decode(bytes: &[u8]) -> (Vec<Record>, bool) {
    let mut records = Vec::new();
    let Some(mut rest) = bytes.strip_prefix(MAGIC.as_slice()) else {
        return (records, !bytes.is_empty());
    };
    while rest.len() >= HEADER {
        let crc = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let kind = rest[4];
        let mode = u32::from_le_bytes([rest[5], rest[6], rest[7], rest[8]]);
        let name_len = usize::from(u16::from_le_bytes([rest[9], rest[10]]));
        let data_len = u32::from_le_bytes([rest[11], rest[12], rest[13], rest[14]]) as usize;
        let Some(total) = HEADER.checked_add(name_len).and_then(|n| n.checked_add(data_len)) else {
            break;
        };
        if rest.len() < total || crc32fast::hash(&rest[4..total]) != crc {
            break;
        }
        let Ok(name) = std::str::from_utf8(&rest[HEADER..HEADER + name_len]) else {
            break;
        };
        if check_name(name).is_err() {
            break;
        }
        let name = name.to_owned();
        records.push(match kind {
            PUT => Record::Put {
                name,
                mode,
                data: rest[HEADER + name_len..total].to_vec(),
            },
            REMOVE => Record::Remove { name },
            _ => break,
        });
        rest = &rest[total..];
    }
    // A journal is preallocated with zeros: only something else is a torn record.
    (records, rest.iter().any(|b| *b != 0))
}

/// Creates an empty temporary file in `dir` with permissions `mode`.
fn create_temporary(dir: &Path, name: &str, mode: u32) -> std::io::Result<(PathBuf, File)> {
    let path = temporary_path(dir, name);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)?;
    Ok((path, file))
}

/// Fills the empty temporary `file` at `path` with `data` and permissions `mode`, not synced;
/// removes it on failure. `has` is the file's mode if known.
fn fill_temporary(
    path: &Path,
    mut file: File,
    has: Option<u32>,
    data: &[u8],
    mode: u32,
) -> std::io::Result<()> {
    let filled = (|| {
        // The umask may have taken bits away, or a spare was made for another mode.
        let has = match has {
            Some(has) => has,
            None => file.metadata()?.permissions().mode(),
        };
        if has & 0o7777 != mode & 0o7777 {
            file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        file.write_all(data)
    })();
    if filled.is_err() {
        let _ = std::fs::remove_file(path);
    }
    filled
}

/// Writes `data` to a new temporary file beside `dir/name`, not synced; returns its path.
fn write_temporary(dir: &Path, name: &str, data: &[u8], mode: u32) -> std::io::Result<PathBuf> {
    let (path, file) = create_temporary(dir, name, mode)?;
    fill_temporary(&path, file, None, data, mode)?;
    Ok(path)
}

impl Journal {
    fn path_of(dir: &Path, seq: u64) -> PathBuf {
        dir.join(format!("{JOURNAL_PREFIX}{seq:020}"))
    }

    /// Creates journal `seq`, durably (its directory entry included).
    fn create(dir: &Path, seq: u64) -> std::io::Result<Journal> {
        let path = Self::path_of(dir, seq);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        file.write_all(MAGIC)?;
        file.write_all(&vec![0; PREALLOCATED])?;
        file.sync_all()?;
        sync_dir(dir)?;
        Ok(Journal {
            file,
            path,
            seq,
            len: MAGIC.len() as u64,
            records: 0,
        })
    }
}

impl State {
    /// Appends one record and flushes it to the disk.
    fn append(&mut self, record: &[u8]) -> std::io::Result<()> {
        if let Some(why) = &self.broken {
            return Err(std::io::Error::other(format!(
                "the definitions journal is damaged ({why}); restart the daemon to recover it"
            )));
        }
        let journal = &mut self.journal;
        let appended = journal
            .file
            .write_all_at(record, journal.len)
            .and_then(|()| journal.file.sync_data());
        if let Err(e) = appended {
            // Cut the journal back, so that the next record follows the last good one.
            if let Err(cut) = journal
                .file
                .set_len(journal.len)
                .and_then(|()| journal.file.sync_data())
            {
                self.broken = Some(format!("{e}, then {cut}"));
            }
            return Err(e);
        }
        journal.len += record.len() as u64;
        journal.records += 1;
        self.last_write = Instant::now();
        Ok(())
    }

    fn wants_checkpoint(&self, policy: &Checkpoints) -> bool {
        self.journal.records >= policy.records || self.journal.len >= policy.bytes
    }
}

impl ConfigJournal {
    /// Opens the journaled directory `dir` (creating it), recovering what a crash left: every
    /// journal is replayed onto the files, oldest first, and the files are made durable before
    /// the journals go. Then starts the checkpointing thread.
    pub fn open(dir: &Path) -> std::io::Result<ConfigJournal> {
        Self::open_with(dir, Checkpoints::default())
    }

    /// [`ConfigJournal::open`] with its own checkpoint policy.
    pub fn open_with(dir: &Path, policy: Checkpoints) -> std::io::Result<ConfigJournal> {
        std::fs::create_dir_all(dir)?;
        let last = recover(dir)?;
        let journal = Journal::create(dir, last + 1)?;
        let shared = Arc::new(Shared {
            dir: dir.to_owned(),
            policy,
            state: Mutex::new(State {
                journal,
                retired: Vec::new(),
                last_write: Instant::now(),
                checkpoints: 0,
                stop: false,
                broken: None,
            }),
            wake: Condvar::new(),
            checkpointing: Mutex::new(()),
            spares: Mutex::new(Vec::new()),
        });
        let checkpointer = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("journal-checkpoint".to_owned())
                .spawn(move || shared.run_checkpoints())?
        };
        let journal = ConfigJournal {
            shared,
            checkpointer: Some(checkpointer),
        };
        journal.prepare();
        Ok(journal)
    }

    /// Makes the empty temporary files the next puts will fill, so that they need not create
    /// one while their caller waits. Best called when a put has returned its result and before
    /// the next comes; [`ConfigJournal::put`] works without it.
    pub fn prepare(&self) {
        let missing = SPARES.saturating_sub(self.shared.spares().len());
        for _ in 0..missing {
            let spare = create_temporary(&self.shared.dir, "spare", 0o600).and_then(|(path, file)| {
                let mode = file.metadata()?.permissions().mode();
                Ok((path, file, mode))
            });
            match spare {
                Ok(spare) => self.shared.spares().push(spare),
                Err(e) => {
                    tracing::debug!(dir = %self.shared.dir.display(), error = %e, "cannot make a spare temporary file");
                    return;
                }
            }
        }
    }

    /// The directory this journal protects.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Replaces (or creates) file `name` with `data` and permissions `mode`, durably; blocks
    /// for one disk flush.
    pub fn put(&self, name: &str, data: &[u8], mode: u32) -> std::io::Result<()> {
        check_name(name)?;
        let record = encode(PUT, name, mode, data)?;
        let dir = &self.shared.dir;
        let spare = self.shared.spares().pop();
        let tmp = match spare {
            Some((path, file, has)) => {
                fill_temporary(&path, file, Some(has), data, mode)?;
                path
            }
            None => write_temporary(dir, name, data, mode)?,
        };
        let mut state = self.shared.lock();
        if let Err(e) = state.append(&record) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        if let Err(e) = std::fs::rename(&tmp, dir.join(name)) {
            let _ = std::fs::remove_file(&tmp);
            self.undo(&mut state, name);
            return Err(e);
        }
        self.shared.nudge(&state);
        Ok(())
    }

    /// Removes file `name`, durably; a missing file is not an error.
    pub fn remove(&self, name: &str) -> std::io::Result<()> {
        check_name(name)?;
        let record = encode(REMOVE, name, 0, &[])?;
        let path = self.shared.dir.join(name);
        let mut state = self.shared.lock();
        match std::fs::symlink_metadata(&path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        state.append(&record)?;
        if let Err(e) = remove_if_present(&path) {
            self.undo(&mut state, name);
            return Err(e);
        }
        self.shared.nudge(&state);
        Ok(())
    }

    /// A journaled change could not be carried out on the file: journal the file as it is, so
    /// that a replay does not bring about what the caller was told failed.
    fn undo(&self, state: &mut State, name: &str) {
        let path = self.shared.dir.join(name);
        let record = match std::fs::read(&path) {
            Ok(data) => {
                let mode = std::fs::metadata(&path).map_or(0o600, |m| m.permissions().mode() & 0o7777);
                encode(PUT, name, mode, &data)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => encode(REMOVE, name, 0, &[]),
            Err(e) => Err(e),
        };
        if let Err(e) = record.and_then(|r| state.append(&r)) {
            tracing::error!(file = %path.display(), error = %e, "cannot journal the undoing of a failed change; a restart may replay it");
        }
    }

    /// Makes every file durable and empties the journal now, rather than in the background.
    pub fn checkpoint(&self) -> std::io::Result<()> {
        self.shared.checkpoint()
    }
}

impl Drop for ConfigJournal {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.checkpointer.take() {
            let _ = thread.join();
        }
        for (path, _, _) in self.shared.spares().drain(..) {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn spares(&self) -> MutexGuard<'_, Vec<(PathBuf, File, u32)>> {
        self.spares.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the checkpointer when the journal has grown enough (the idle timer it keeps
    /// itself).
    fn nudge(&self, state: &State) {
        if state.journal.records == 1 || state.wants_checkpoint(&self.policy) {
            self.wake.notify_one();
        }
    }

    fn run_checkpoints(&self) {
        let mut state = self.lock();
        // After a failed checkpoint, the next try waits for a quiet period whatever the size.
        let mut failed_at: Option<Instant> = None;
        loop {
            if state.stop {
                return;
            }
            let pending = state.journal.records > 0 || !state.retired.is_empty();
            if !pending {
                state = self.wake.wait(state).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            let since = match failed_at {
                Some(at) => at.max(state.last_write),
                None => state.last_write,
            };
            let quiet_for = since.elapsed();
            let full = failed_at.is_none() && state.wants_checkpoint(&self.policy);
            if full || quiet_for >= self.policy.idle {
                drop(state);
                let done = self.checkpoint();
                state = self.lock();
                match done {
                    Ok(()) => failed_at = None,
                    Err(e) => {
                        tracing::error!(dir = %self.dir.display(), error = %e, "cannot checkpoint the definitions journal; it is kept and tried again");
                        failed_at = Some(Instant::now());
                    }
                }
                continue;
            }
            let wait = self.policy.idle.saturating_sub(quiet_for);
            state = self
                .wake
                .wait_timeout(state, wait)
                .map(|(s, _)| s)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    fn checkpoint(&self) -> std::io::Result<()> {
        let _one = self.checkpointing.lock().unwrap_or_else(|p| p.into_inner());
        let (records, seq) = {
            let state = self.lock();
            (state.journal.records, state.journal.seq)
        };
        // Made before the lock is taken, so that puts go on meanwhile; only checkpoints change
        // the journal, and this is the only one running.
        let next = if records > 0 {
            Some(Journal::create(&self.dir, seq + 1)?)
        } else {
            None
        };
        let retired: Vec<PathBuf> = {
            let mut state = self.lock();
            if let Some(next) = next {
                let old = std::mem::replace(&mut state.journal, next);
                state.retired.push(old.path);
            }
            state.retired.clone()
        };
        if retired.is_empty() {
            return Ok(());
        }
        // Whatever the files hold now is at least as new as what the retired journals say. One
        // `syncfs` makes them (and the directory) durable with one flush of the filesystem,
        // where an fsync per file would cost a filesystem journal commit each.
        let dir = File::open(&self.dir)?;
        nix::unistd::syncfs(&dir).map_err(std::io::Error::from)?;
        // Oldest first, and never a newer journal while an older one is left.
        for path in &retired {
            remove_durable(path)?;
            self.lock().retired.retain(|r| r != path);
        }
        self.lock().checkpoints += 1;
        self.wake.notify_all();
        Ok(())
    }
}

/// The journals in `dir`, oldest first.
fn journals(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_prefix(JOURNAL_PREFIX))
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        found.push((seq, entry.path()));
    }
    found.sort();
    Ok(found)
}

/// Replays every journal of `dir` onto its files, durably, then deletes the journals and the
/// temporaries a crash left; returns the highest journal sequence number seen (0 if none).
fn recover(dir: &Path) -> std::io::Result<u64> {
    let found = journals(dir)?;
    for (_, path) in &found {
        let bytes = std::fs::read(path)?;
        let (records, trailing) = decode(&bytes);
        if trailing {
            tracing::warn!(journal = %path.display(), records = records.len(), "the definitions journal ends in an incomplete record (a write the crash interrupted); it is ignored");
        }
        for record in records {
            match record {
                // The directory is synced once, below.
                Record::Put { name, mode, data } => replace(&dir.join(&name), &data, mode)?,
                Record::Remove { name } => remove_if_present(&dir.join(&name))?,
            }
        }
    }
    // Temporaries of puts that never completed.
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name
            .to_str()
            .is_some_and(|n| n.starts_with('.') && n.contains(".tmp-"))
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    sync_dir(dir)?;
    for (_, path) in &found {
        std::fs::remove_file(path)?;
    }
    if !found.is_empty() {
        sync_dir(dir)?;
    }
    Ok(found.last().map_or(0, |(seq, _)| *seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never() -> Checkpoints {
        Checkpoints {
            records: usize::MAX,
            bytes: u64::MAX,
            idle: Duration::from_secs(3600),
        }
    }

    fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut all: Vec<_> = std::fs::read_dir(dir)
            .expect("ls")
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                (!name.starts_with('.')).then(|| (name, std::fs::read(e.path()).expect("read")))
            })
            .collect();
        all.sort();
        all
    }

    /// The journals in `dir`.
    fn hidden(dir: &Path) -> Vec<String> {
        let mut all: Vec<_> = std::fs::read_dir(dir)
            .expect("ls")
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(JOURNAL_PREFIX))
            .collect();
        all.sort();
        all
    }

    /// Stops a journal the way a crash would: no checkpoint, no cleanup.
    fn crash(journal: ConfigJournal) {
        journal.shared.lock().stop = true;
        journal.shared.wake.notify_all();
        std::mem::forget(journal);
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_is_ignored() {
        let mut bytes = MAGIC.to_vec();
        bytes.extend(encode(PUT, "a.xml", 0o600, b"<a/>").expect("encode"));
        bytes.extend(encode(REMOVE, "b.xml", 0, &[]).expect("encode"));
        let whole = bytes.len();
        bytes.extend(encode(PUT, "c.xml", 0o644, b"<c>long enough</c>").expect("encode"));
        let (records, trailing) = decode(&bytes);
        assert!(!trailing);
        assert_eq!(
            records,
            vec![
                Record::Put {
                    name: "a.xml".into(),
                    mode: 0o600,
                    data: b"<a/>".to_vec()
                },
                Record::Remove { name: "b.xml".into() },
                Record::Put {
                    name: "c.xml".into(),
                    mode: 0o644,
                    data: b"<c>long enough</c>".to_vec()
                },
            ]
        );
        for cut in whole..bytes.len() {
            let (records, trailing) = decode(&bytes[..cut]);
            assert_eq!(records.len(), 2, "cut at {cut}");
            assert_eq!(trailing, cut > whole);
        }
        let mut flipped = bytes.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 0x20;
        assert_eq!(decode(&flipped).0.len(), 2, "a damaged record is not replayed");
        assert!(decode(b"something else").0.is_empty());
        let mut preallocated = bytes.clone();
        preallocated.extend([0; 64]);
        assert_eq!(
            decode(&preallocated),
            (records, false),
            "zeros are not a torn record"
        );
    }

    #[test]
    fn files_are_written_at_once_and_come_back_after_a_crash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = ConfigJournal::open_with(dir.path(), never()).expect("open");
        journal.put("a.xml", b"one", 0o600).expect("put");
        journal.put("b.xml", b"two", 0o644).expect("put");
        journal.put("a.xml", b"three", 0o600).expect("put again");
        journal.remove("b.xml").expect("remove");
        journal
            .remove("missing.xml")
            .expect("removing a missing file is fine");
        assert_eq!(files(dir.path()), vec![("a.xml".to_owned(), b"three".to_vec())]);
        let mode = std::fs::metadata(dir.path().join("a.xml"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        crash(journal);

        // What a crash could do to files that were never synced: torn, or back as they were.
        std::fs::write(dir.path().join("a.xml"), b"th").expect("tear");
        std::fs::write(dir.path().join("b.xml"), b"two").expect("resurrect");
        std::fs::write(dir.path().join(".a.xml.tmp-1-1"), b"junk").expect("temporary");
        let journal = ConfigJournal::open_with(dir.path(), never()).expect("reopen");
        assert_eq!(files(dir.path()), vec![("a.xml".to_owned(), b"three".to_vec())]);
        assert_eq!(
            hidden(dir.path()),
            vec![".journal-00000000000000000002".to_owned()]
        );
        assert!(
            !dir.path().join(".a.xml.tmp-1-1").exists(),
            "a crash's temporary is cleaned up"
        );
        journal.put("c.xml", b"four", 0o600).expect("put after recovery");
        assert_eq!(files(dir.path()).len(), 2);
        drop(journal);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.contains(".tmp-"))
            .collect();
        assert!(left.is_empty(), "spare temporaries left: {left:?}");
    }

    #[test]
    fn puts_fill_spare_temporaries_made_ahead() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = ConfigJournal::open_with(dir.path(), never()).expect("open");
        assert_eq!(journal.shared.spares().len(), SPARES);
        journal.put("a.xml", b"one", 0o644).expect("put");
        assert_eq!(journal.shared.spares().len(), SPARES - 1);
        let mode = std::fs::metadata(dir.path().join("a.xml"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644, "a spare takes the put's mode");
        journal.prepare();
        assert_eq!(journal.shared.spares().len(), SPARES);
        assert_eq!(files(dir.path()), vec![("a.xml".to_owned(), b"one".to_vec())]);
    }

    #[test]
    fn a_torn_last_record_is_not_replayed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = ConfigJournal::open_with(dir.path(), never()).expect("open");
        journal.put("a.xml", b"kept", 0o600).expect("put");
        let (path, len) = {
            let state = journal.shared.lock();
            (state.journal.path.clone(), state.journal.len)
        };
        crash(journal);
        // The next record, cut short where the crash came.
        let mut torn = encode(PUT, "a.xml", 0o600, b"never acknowledged").expect("encode");
        torn.truncate(torn.len() - 4);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open journal");
        file.write_all_at(&torn, len).expect("write");
        drop(file);
        std::fs::write(dir.path().join("a.xml"), b"").expect("tear");
        let _journal = ConfigJournal::open_with(dir.path(), never()).expect("reopen");
        assert_eq!(files(dir.path()), vec![("a.xml".to_owned(), b"kept".to_vec())]);
    }

    #[test]
    fn a_checkpoint_keeps_the_files_and_empties_the_journal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = ConfigJournal::open_with(dir.path(), never()).expect("open");
        journal.put("a.xml", b"one", 0o600).expect("put");
        journal.put("b.xml", b"two", 0o600).expect("put");
        journal.remove("b.xml").expect("remove");
        journal.checkpoint().expect("checkpoint");
        assert_eq!(
            hidden(dir.path()),
            vec![".journal-00000000000000000002".to_owned()]
        );
        journal.checkpoint().expect("an empty checkpoint does nothing");
        assert_eq!(
            hidden(dir.path()),
            vec![".journal-00000000000000000002".to_owned()]
        );
        journal.put("c.xml", b"three", 0o600).expect("put");
        crash(journal);
        // A replay of the newer journal only: the checkpointed files stay as they are.
        let _journal = ConfigJournal::open_with(dir.path(), never()).expect("reopen");
        assert_eq!(
            files(dir.path()),
            vec![
                ("a.xml".to_owned(), b"one".to_vec()),
                ("c.xml".to_owned(), b"three".to_vec())
            ]
        );
    }

    #[test]
    fn journals_are_replayed_oldest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = ConfigJournal::open_with(dir.path(), never()).expect("open");
        journal.put("a.xml", b"old", 0o600).expect("put");
        // A checkpoint that retired journal 1 but crashed before deleting it.
        {
            let mut state = journal.shared.lock();
            let next = Journal::create(dir.path(), 2).expect("create");
            let old = std::mem::replace(&mut state.journal, next);
            state.retired.push(old.path);
        }
        journal.put("a.xml", b"new", 0o600).expect("put");
        crash(journal);
        let _journal = ConfigJournal::open_with(dir.path(), never()).expect("reopen");
        assert_eq!(files(dir.path()), vec![("a.xml".to_owned(), b"new".to_vec())]);
        assert_eq!(
            hidden(dir.path()),
            vec![".journal-00000000000000000003".to_owned()]
        );
    }

    #[test]
    fn the_background_thread_checkpoints_when_writes_pause() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = ConfigJournal::open_with(
            dir.path(),
            Checkpoints {
                records: 3,
                bytes: u64::MAX,
                idle: Duration::from_millis(20),
            },
        )
        .expect("open");
        for i in 0..7 {
            journal.put(&format!("{i}.xml"), b"x", 0o600).expect("put");
        }
        // Checkpoints when the third record comes, and when the writes stop.
        let state = journal.shared.lock();
        let (state, timeout) = journal
            .shared
            .wake
            .wait_timeout_while(state, Duration::from_secs(10), |s| {
                s.journal.records > 0 || !s.retired.is_empty() || s.checkpoints == 0
            })
            .expect("lock");
        assert!(!timeout.timed_out(), "no checkpoint: {:?}", hidden(dir.path()));
        drop(state);
        assert_eq!(hidden(dir.path()).len(), 1, "{:?}", hidden(dir.path()));
        assert_eq!(files(dir.path()).len(), 7);
    }

    #[test]
    fn names_must_be_plain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = ConfigJournal::open_with(dir.path(), never()).expect("open");
        for bad in ["", ".hidden", "a/b", "../x"] {
            assert_eq!(
                journal.put(bad, b"x", 0o600).expect_err(bad).kind(),
                std::io::ErrorKind::InvalidInput
            );
        }
    }
}
