//! Volume upload and download: chunked, sparse-aware, resumable at an offset.
//!
//! Download reads the volume with `SEEK_DATA`/`SEEK_HOLE`: with `SPARSE_STREAM` a hole goes
//! out as one hole record, never as zeros. Upload writes data where the client says and, for a
//! hole record, punches a hole (`fallocate(PUNCH_HOLE)`) or leaves the range unwritten past
//! the end of the file, so a sparse image stays sparse. File I/O runs on a blocking thread fed
//! through a bounded channel, so the async runtime never blocks and memory stays bounded.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::FileExt as _;
use std::path::Path;

use rvirt_proto::v1::DownloadStorageVolResponse;
use rvirt_proto::v1::ErrorCode;
use rvirt_proto::v1::download_storage_vol_response::Chunk;

use crate::error::{Result, StorageError};

/// The largest data payload of one message (the proto's limit).
pub const CHUNK: usize = 1 << 20;

/// One piece of an upload after its start message.
#[derive(Debug)]
pub enum UploadPiece {
    /// Bytes to write.
    Data(Vec<u8>),
    /// A hole of this length.
    Hole(u64),
}

fn seek(fd: &File, offset: u64, whence: libc::c_int) -> std::io::Result<Option<u64>> {
    // SAFETY: lseek on an open descriptor owned by `fd`; no memory is passed.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), offset as libc::off_t, whence) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(r as u64))
}

/// Reads `n` bytes at `pos` into a new buffer, without zeroing it first (the buffer becomes a
/// message, so it cannot be reused; zeroing it would cost as much as a copy).
fn read_chunk(file: &File, pos: u64, n: usize) -> std::io::Result<Vec<u8>> {
    let mut buf: Vec<u8> = Vec::with_capacity(n);
    while buf.len() < n {
        let done = buf.len();
        let at = libc::off_t::try_from(pos + done as u64)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: the destination is the vector's spare capacity, `n - done` bytes starting at
        // `done`, and pread writes at most that many bytes there; the descriptor is open.
        let r = unsafe { libc::pread(file.as_raw_fd(), buf.as_mut_ptr().add(done).cast(), n - done, at) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        }
        // SAFETY: pread initialized the `r` bytes after `done`, within the capacity.
        unsafe { buf.set_len(done + r as usize) };
    }
    Ok(buf)
}

/// The range a download covers: from `offset`, `length` bytes (0: to the end).
pub fn download_range(size: u64, offset: u64, length: u64) -> Result<(u64, u64)> {
    if offset > size {
        return Err(StorageError::invalid_arg(format!(
            "Offset {offset} is past the end of the volume ({size} bytes)"
        )));
    }
    let end = if length == 0 {
        size
    } else {
        offset.saturating_add(length).min(size)
    };
    Ok((offset, end))
}

/// Streams `path` from `offset` for `length` bytes into `tx`, as data chunks and (with
/// `sparse`) hole records. Runs on a blocking thread; stops when the receiver goes away.
pub fn download(
    path: &Path,
    offset: u64,
    length: u64,
    sparse: bool,
    tx: tokio::sync::mpsc::Sender<Result<DownloadStorageVolResponse, tonic::Status>>,
) -> Result<()> {
    let file =
        File::open(path).map_err(|e| StorageError::io(format!("Cannot open {}", path.display()), &e))?;
    let size = file
        .metadata()
        .map_err(|e| StorageError::io(format!("Cannot stat {}", path.display()), &e))?
        .len();
    let (start, end) = download_range(size, offset, length)?;
    // A hint only (twice the read-ahead): a failure changes nothing.
    let _ = nix::fcntl::posix_fadvise(&file, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL);
    let total = end - start;
    let mut pos = start;
    let send = |msg: DownloadStorageVolResponse| tx.blocking_send(Ok(msg)).is_ok();
    while pos < end {
        let data_end = if sparse {
            let data = seek(&file, pos, libc::SEEK_DATA)
                .map_err(|e| StorageError::io(format!("Cannot read {}", path.display()), &e))?
                .unwrap_or(end)
                .min(end);
            if data > pos {
                let hole = data - pos;
                let msg = DownloadStorageVolResponse {
                    offset: pos,
                    chunk: Some(Chunk::HoleLength(hole)),
                    bytes_done: pos + hole - start,
                    bytes_total: total,
                };
                if !send(msg) {
                    return Ok(());
                }
                pos = data;
                continue;
            }
            seek(&file, pos, libc::SEEK_HOLE)
                .map_err(|e| StorageError::io(format!("Cannot read {}", path.display()), &e))?
                .unwrap_or(end)
                .min(end)
        } else {
            end
        };
        while pos < data_end {
            let n = ((data_end - pos) as usize).min(CHUNK);
            // A fresh buffer per chunk: it becomes the message without another copy.
            let buf = read_chunk(&file, pos, n)
                .map_err(|e| StorageError::io(format!("Cannot read {}", path.display()), &e))?;
            let msg = DownloadStorageVolResponse {
                offset: pos,
                chunk: Some(Chunk::Data(buf)),
                bytes_done: pos + n as u64 - start,
                bytes_total: total,
            };
            if !send(msg) {
                return Ok(());
            }
            pos += n as u64;
        }
    }
    Ok(())
}

/// What an upload wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UploadTotals {
    /// Data bytes written.
    pub data: u64,
    /// Bytes skipped as holes.
    pub holes: u64,
}

/// Writes the pieces from `rx` into `path` from `offset`; `length` (0: unlimited) bounds what
/// the client may send. Holes need `sparse`. Runs on a blocking thread; flushes at the end.
pub fn upload(
    path: &Path,
    offset: u64,
    length: u64,
    sparse: bool,
    mut rx: tokio::sync::mpsc::Receiver<UploadPiece>,
) -> Result<UploadTotals> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| StorageError::io(format!("Cannot open {}", path.display()), &e))?;
    let mut size = file
        .metadata()
        .map_err(|e| StorageError::io(format!("Cannot stat {}", path.display()), &e))?
        .len();
    let mut pos = offset;
    let mut totals = UploadTotals::default();
    let limit = if length == 0 {
        u64::MAX
    } else {
        offset.saturating_add(length)
    };
    while let Some(piece) = rx.blocking_recv() {
        let n = match &piece {
            UploadPiece::Data(d) => d.len() as u64,
            UploadPiece::Hole(h) => *h,
        };
        if pos.saturating_add(n) > limit {
            return Err(StorageError::new(
                ErrorCode::InvalidStream,
                format!("The client sent more than the {length} bytes it announced"),
            ));
        }
        match piece {
            UploadPiece::Data(d) => {
                file.write_all_at(&d, pos)
                    .map_err(|e| StorageError::io(format!("Cannot write {}", path.display()), &e))?;
                totals.data += n;
                size = size.max(pos + n);
            }
            UploadPiece::Hole(h) => {
                if !sparse {
                    return Err(StorageError::new(
                        ErrorCode::InvalidStream,
                        "A hole record arrived in an upload without SPARSE_STREAM: set the flag to send holes",
                    ));
                }
                let inside = size.min(pos + h).saturating_sub(pos);
                if inside > 0 {
                    nix::fcntl::fallocate(
                        &file,
                        nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                            | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
                        pos as i64,
                        inside as i64,
                    )
                    .map_err(|e| {
                        StorageError::io(format!("Cannot punch a hole in {}", path.display()), &e.into())
                    })?;
                }
                totals.holes += h;
            }
        }
        pos += n;
    }
    if pos > size {
        // A trailing hole past the end: extend without writing.
        file.set_len(pos)
            .map_err(|e| StorageError::io(format!("Cannot extend {}", path.display()), &e))?;
    }
    file.sync_data()
        .map_err(|e| StorageError::io(format!("Cannot flush {}", path.display()), &e))?;
    Ok(totals)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    fn sparse_file(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("src");
        let f = File::create(&path).expect("create");
        f.set_len(64 << 20).expect("size");
        f.write_all_at(&[7u8; 4096], 0).expect("head");
        f.write_all_at(&[9u8; 8192], 32 << 20).expect("middle");
        path
    }

    async fn collect(path: &Path, offset: u64, length: u64, sparse: bool) -> Vec<DownloadStorageVolResponse> {
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let p = path.to_owned();
        let task = tokio::task::spawn_blocking(move || download(&p, offset, length, sparse, tx));
        let mut out = Vec::new();
        while let Some(m) = rx.recv().await {
            out.push(m.expect("message"));
        }
        task.await.expect("join").expect("download");
        out
    }

    #[tokio::test]
    async fn sparse_download_sends_holes_not_zeros() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = sparse_file(dir.path());
        let msgs = collect(&path, 0, 0, true).await;
        let data: u64 = msgs
            .iter()
            .filter_map(|m| match &m.chunk {
                Some(Chunk::Data(d)) => Some(d.len() as u64),
                _ => None,
            })
            .sum();
        assert!(data <= 1 << 20, "sent {data} data bytes for 12 KiB of data");
        assert!(msgs.iter().any(|m| matches!(m.chunk, Some(Chunk::HoleLength(_)))));
        let last = msgs.last().expect("messages");
        assert_eq!(last.bytes_done, 64 << 20);
        assert_eq!(last.bytes_total, 64 << 20);
    }

    #[tokio::test]
    async fn upload_of_a_download_recreates_holes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = sparse_file(dir.path());
        let dst = dir.path().join("dst");
        File::create(&dst).expect("dst");
        let msgs = collect(&src, 0, 0, true).await;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let d = dst.clone();
        let writer = tokio::task::spawn_blocking(move || upload(&d, 0, 0, true, rx));
        for m in msgs {
            let piece = match m.chunk.expect("chunk") {
                Chunk::Data(d) => UploadPiece::Data(d),
                Chunk::HoleLength(h) => UploadPiece::Hole(h),
            };
            tx.send(piece).await.expect("send");
        }
        drop(tx);
        writer.await.expect("join").expect("upload");
        assert_eq!(
            std::fs::read(&src).expect("src"),
            std::fs::read(&dst).expect("dst")
        );
        let blocks = std::fs::metadata(&dst).expect("meta").blocks();
        assert!(blocks * 512 < 1 << 20, "destination uses {} bytes", blocks * 512);
    }

    #[tokio::test]
    async fn download_resumes_at_an_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = sparse_file(dir.path());
        let msgs = collect(&path, 32 << 20, 8192, false).await;
        assert_eq!(msgs[0].offset, 32 << 20);
        let bytes: Vec<u8> = msgs
            .into_iter()
            .flat_map(|m| match m.chunk {
                Some(Chunk::Data(d)) => d,
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(bytes, vec![9u8; 8192]);
    }

    #[test]
    fn upload_past_announced_length_fails() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dst = dir.path().join("dst");
        File::create(&dst).expect("dst");
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.try_send(UploadPiece::Data(vec![1; 10])).expect("send");
        drop(tx);
        let err = upload(&dst, 0, 5, false, rx).expect_err("too much");
        assert_eq!(err.code, ErrorCode::InvalidStream);
    }

    #[test]
    fn hole_without_sparse_flag_fails() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dst = dir.path().join("dst");
        File::create(&dst).expect("dst");
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.try_send(UploadPiece::Hole(4096)).expect("send");
        drop(tx);
        assert!(upload(&dst, 0, 0, false, rx).is_err());
    }
}
