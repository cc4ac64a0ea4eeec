//! Wiping volumes with libvirt's algorithms (`virStorageVolWipeAlgorithm`), natively: the pass
//! sequences are the ones the `scrub` tool that libvirt runs uses for each algorithm name, with
//! no external program.
//!
//! | algorithm | passes |
//! |---|---|
//! | `ZERO` | 0x00 (a sparse file is truncated and re-extended instead: it reads as zeros and stays sparse) |
//! | `NNSA` | random, random, 0x00 read back and verified |
//! | `DOD` | random, 0x00, 0xff read back and verified |
//! | `BSI` | 0xff, 0xfe, 0xfd, 0xfb, 0xf7, 0xef, 0xdf, 0xbf, 0x7f |
//! | `GUTMANN` | 4 × random, 0x55, 0xaa, 0x92 49 24, 0x49 24 92, 0x24 92 49, 0x00 to 0xff by 0x11, 0x92 49 24, 0x49 24 92, 0x24 92 49, 0x6d b6 db, 0xb6 db 6d, 0xdb 6d b6, 4 × random (35) |
//! | `SCHNEIER` | 0x00, 0xff, 5 × random |
//! | `PFITZNER7` / `PFITZNER33` | 7 / 33 × random |
//! | `RANDOM` | random |
//! | `TRIM` | discard: `fallocate(PUNCH_HOLE)` on a file, `BLKDISCARD` on a block device |
//!
//! Every pass writes the whole volume (a sparse file becomes fully allocated, as with libvirt
//! and `scrub`) and is flushed to the device (`fdatasync`) before the next one starts. Multi-byte
//! patterns run continuously over the volume (byte `i` of the volume is `pattern[i % len]`).
//! Random data comes from the kernel's generator (`getrandom`).

use std::fs::{File, OpenOptions};
use std::io::{Seek as _, SeekFrom};
use std::os::unix::fs::{FileExt as _, FileTypeExt as _, MetadataExt as _};
use std::path::Path;

use rvirt_proto::v1::{ErrorCode, StorageVolWipeAlgorithm as Alg};

use crate::error::{Result, StorageError};

/// One pass over the volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// A repeated byte pattern.
    Fill(&'static [u8]),
    /// Random data.
    Random,
}

/// What an algorithm does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// These passes, in order; `verify` reads the last one back and compares it.
    Passes {
        /// The passes.
        passes: &'static [Pass],
        /// Read back the last pass.
        verify: bool,
    },
    /// Zeros, keeping a sparse file sparse.
    Zero,
    /// Discard the data.
    Trim,
}

use Pass::{Fill, Random};

const NNSA: &[Pass] = &[Random, Random, Fill(&[0x00])];
const DOD: &[Pass] = &[Random, Fill(&[0x00]), Fill(&[0xff])];
const BSI: &[Pass] = &[
    Fill(&[0xff]),
    Fill(&[0xfe]),
    Fill(&[0xfd]),
    Fill(&[0xfb]),
    Fill(&[0xf7]),
    Fill(&[0xef]),
    Fill(&[0xdf]),
    Fill(&[0xbf]),
    Fill(&[0x7f]),
];
const GUTMANN: &[Pass] = &[
    Random,
    Random,
    Random,
    Random,
    Fill(&[0x55]),
    Fill(&[0xaa]),
    Fill(&[0x92, 0x49, 0x24]),
    Fill(&[0x49, 0x24, 0x92]),
    Fill(&[0x24, 0x92, 0x49]),
    Fill(&[0x00]),
    Fill(&[0x11]),
    Fill(&[0x22]),
    Fill(&[0x33]),
    Fill(&[0x44]),
    Fill(&[0x55]),
    Fill(&[0x66]),
    Fill(&[0x77]),
    Fill(&[0x88]),
    Fill(&[0x99]),
    Fill(&[0xaa]),
    Fill(&[0xbb]),
    Fill(&[0xcc]),
    Fill(&[0xdd]),
    Fill(&[0xee]),
    Fill(&[0xff]),
    Fill(&[0x92, 0x49, 0x24]),
    Fill(&[0x49, 0x24, 0x92]),
    Fill(&[0x24, 0x92, 0x49]),
    Fill(&[0x6d, 0xb6, 0xdb]),
    Fill(&[0xb6, 0xdb, 0x6d]),
    Fill(&[0xdb, 0x6d, 0xb6]),
    Random,
    Random,
    Random,
    Random,
];
const SCHNEIER: &[Pass] = &[
    Fill(&[0x00]),
    Fill(&[0xff]),
    Random,
    Random,
    Random,
    Random,
    Random,
];
const PFITZNER7: &[Pass] = &[Random; 7];
const PFITZNER33: &[Pass] = &[Random; 33];
const RANDOM: &[Pass] = &[Random];

/// The method of `alg`.
pub fn method(alg: Alg) -> Method {
    let passes = |passes, verify| Method::Passes { passes, verify };
    match alg {
        Alg::Zero => Method::Zero,
        Alg::Nnsa => passes(NNSA, true),
        Alg::Dod => passes(DOD, true),
        Alg::Bsi => passes(BSI, false),
        Alg::Gutmann => passes(GUTMANN, false),
        Alg::Schneier => passes(SCHNEIER, false),
        Alg::Pfitzner7 => passes(PFITZNER7, false),
        Alg::Pfitzner33 => passes(PFITZNER33, false),
        Alg::Random => passes(RANDOM, false),
        Alg::Trim => Method::Trim,
    }
}

/// libvirt's name of `alg` (`GUTMANN`).
pub fn name(alg: Alg) -> &'static str {
    alg.as_str_name()
        .trim_start_matches("STORAGE_VOL_WIPE_ALGORITHM_")
}

/// The write size: a multiple of every pattern length (1 and 3) and of the page size.
pub const CHUNK: usize = 3 << 20;

/// Fills `buf` with `pattern` as it lies at volume offset `offset`.
pub fn fill_pattern(buf: &mut [u8], pattern: &[u8], offset: u64) {
    if pattern.is_empty() {
        return;
    }
    let len = pattern.len();
    let start = (offset % len as u64) as usize;
    for (i, b) in buf.iter_mut().enumerate() {
        *b = pattern[(start + i) % len];
    }
}

/// The size of an open volume: its length for a file, its size for a block device (whose
/// `st_size` is 0).
fn volume_size(file: &mut File, path: &Path) -> Result<(u64, bool, bool)> {
    let meta = file
        .metadata()
        .map_err(|e| StorageError::io(format!("Cannot stat {}", path.display()), &e))?;
    if meta.file_type().is_block_device() {
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|e| StorageError::io(format!("Cannot read the size of {}", path.display()), &e))?;
        Ok((size, true, false))
    } else {
        let sparse = meta.blocks() * 512 < meta.len();
        Ok((meta.len(), false, sparse))
    }
}

fn write_pass(file: &File, path: &Path, size: u64, pass: Pass, buf: &mut [u8]) -> Result<()> {
    let werr = |e: std::io::Error| StorageError::io(format!("Cannot wipe {}", path.display()), &e);
    if let Fill(pattern) = pass {
        fill_pattern(buf, pattern, 0);
    }
    let mut offset = 0u64;
    while offset < size {
        let n = (size - offset).min(buf.len() as u64) as usize;
        if pass == Random {
            getrandom::fill(&mut buf[..n]).map_err(|e| {
                StorageError::internal(format!(
                    "Cannot generate random data to wipe {}: {e}",
                    path.display()
                ))
            })?;
        }
        // Chunks start at multiples of CHUNK, where every pattern starts over.
        file.write_all_at(&buf[..n], offset).map_err(werr)?;
        offset += n as u64;
    }
    file.sync_data()
        .map_err(|e| StorageError::io(format!("Cannot sync {}", path.display()), &e))
}

fn verify_pass(file: &File, path: &Path, size: u64, pattern: &[u8], buf: &mut [u8]) -> Result<()> {
    let mut expected = vec![0u8; buf.len()];
    fill_pattern(&mut expected, pattern, 0);
    let mut offset = 0u64;
    while offset < size {
        let n = (size - offset).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], offset)
            .map_err(|e| StorageError::io(format!("Cannot read back {}", path.display()), &e))?;
        if buf[..n] != expected[..n] {
            return Err(StorageError::failed(format!(
                "Wipe verification failed: {} does not read back the last pattern near offset {offset}: the device may be failing",
                path.display()
            )));
        }
        offset += n as u64;
    }
    Ok(())
}

fn zero(file: &File, path: &Path, size: u64, sparse: bool, buf: &mut [u8]) -> Result<()> {
    if sparse {
        file.set_len(0)
            .and_then(|()| file.set_len(size))
            .map_err(|e| StorageError::io(format!("Cannot wipe {}", path.display()), &e))?;
        file.sync_data()
            .map_err(|e| StorageError::io(format!("Cannot sync {}", path.display()), &e))
    } else {
        write_pass(file, path, size, Fill(&[0]), buf)
    }
}

/// `BLKDISCARD` (`_IO(0x12, 119)`): discards a byte range `[start, len]` of a block device.
const BLKDISCARD: libc::c_ulong = 0x1277;

fn trim(file: &File, path: &Path, size: u64, block: bool) -> Result<()> {
    use std::os::fd::AsRawFd as _;
    let refused = |e: std::io::Error| {
        if matches!(
            e.raw_os_error(),
            Some(libc::EOPNOTSUPP | libc::ENOTTY | libc::EINVAL)
        ) {
            StorageError::unsupported(format!(
                "Wipe algorithm TRIM is not supported for {}: the storage cannot discard ({e}); use ZERO or RANDOM",
                path.display()
            ))
        } else {
            StorageError::io(format!("Cannot discard {}", path.display()), &e)
        }
    };
    if size == 0 {
        return Ok(());
    }
    if block {
        let range: [u64; 2] = [0, size];
        // SAFETY: BLKDISCARD reads two u64s (start, length) from the pointer, which points to
        // `range`, alive for the whole call; the descriptor is open.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKDISCARD as _, range.as_ptr()) };
        if rc != 0 {
            return Err(refused(std::io::Error::last_os_error()));
        }
    } else {
        let len = i64::try_from(size).map_err(|_| StorageError::internal("Volume too large to discard"))?;
        nix::fcntl::fallocate(
            file,
            nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
            0,
            len,
        )
        .map_err(|e| refused(e.into()))?;
    }
    file.sync_data()
        .map_err(|e| StorageError::io(format!("Cannot sync {}", path.display()), &e))
}

/// Wipes the file or block device at `path` with `alg` (blocking: run it off the runtime).
pub fn wipe_blocking(path: &Path, alg: Alg) -> Result<()> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| StorageError::io(format!("Cannot open {}", path.display()), &e))?;
    let (size, block, sparse) = volume_size(&mut file, path)?;
    match method(alg) {
        Method::Trim => trim(&file, path, size, block),
        Method::Zero => {
            let mut buf = vec![0u8; CHUNK.min(size as usize).max(1)];
            zero(&file, path, size, sparse && !block, &mut buf)
        }
        Method::Passes { passes, verify } => {
            let mut buf = vec![0u8; CHUNK.min(size as usize).max(1)];
            for pass in passes {
                write_pass(&file, path, size, *pass, &mut buf)?;
            }
            if verify && let Some(Fill(pattern)) = passes.last() {
                verify_pass(&file, path, size, pattern, &mut buf)?;
            }
            Ok(())
        }
    }
}

/// Wipes `path` with `alg` on a blocking thread.
pub async fn wipe(path: &Path, alg: Alg) -> Result<()> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || wipe_blocking(&path, alg))
        .await
        .map_err(|e| StorageError::internal(format!("Wipe task failed: {e}")))?
}

/// Turns a wire algorithm number into an algorithm, refusing unknown numbers.
pub fn algorithm(value: i32) -> Result<Alg> {
    Alg::try_from(value).map_err(|_| {
        StorageError::new(
            ErrorCode::InvalidArg,
            format!("Unknown wipe algorithm {value}: use one of ZERO, NNSA, DOD, BSI, GUTMANN, SCHNEIER, PFITZNER7, PFITZNER33, RANDOM, TRIM"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passes(alg: Alg) -> (&'static [Pass], bool) {
        match method(alg) {
            Method::Passes { passes, verify } => (passes, verify),
            other => panic!("{alg:?} is {other:?}"),
        }
    }

    fn pattern_of(pass: Pass) -> Option<Vec<u8>> {
        match pass {
            Fill(p) => Some(p.to_vec()),
            Random => None,
        }
    }

    #[test]
    fn pass_counts_are_scrubs() {
        for (alg, count) in [
            (Alg::Nnsa, 3),
            (Alg::Dod, 3),
            (Alg::Bsi, 9),
            (Alg::Gutmann, 35),
            (Alg::Schneier, 7),
            (Alg::Pfitzner7, 7),
            (Alg::Pfitzner33, 33),
            (Alg::Random, 1),
        ] {
            assert_eq!(passes(alg).0.len(), count, "{alg:?}");
        }
    }

    #[test]
    fn nnsa_and_dod_verify_a_fixed_last_pass() {
        assert_eq!(passes(Alg::Nnsa), (NNSA, true));
        assert_eq!(passes(Alg::Nnsa).0.last(), Some(&Fill(&[0x00])));
        assert_eq!(passes(Alg::Dod).0, [Random, Fill(&[0x00]), Fill(&[0xff])]);
        assert!(passes(Alg::Dod).1);
        assert!(!passes(Alg::Bsi).1);
    }

    #[test]
    fn bsi_clears_one_bit_per_pass() {
        let (p, _) = passes(Alg::Bsi);
        assert_eq!(p[0], Fill(&[0xff]));
        for (i, pass) in p[1..].iter().enumerate() {
            assert_eq!(pattern_of(*pass), Some(vec![!(1u8 << i)]), "pass {}", i + 2);
        }
    }

    #[test]
    fn gutmann_has_random_ends_and_the_sixteen_nibble_passes() {
        let (p, _) = passes(Alg::Gutmann);
        assert!(p[..4].iter().chain(&p[31..]).all(|x| *x == Random));
        assert!(p[4..31].iter().all(|x| *x != Random));
        for (i, pass) in p[9..25].iter().enumerate() {
            assert_eq!(pattern_of(*pass), Some(vec![0x11 * i as u8]));
        }
        assert_eq!(p[28], Fill(&[0x6d, 0xb6, 0xdb]));
    }

    #[test]
    fn schneier_is_zeros_ones_then_random() {
        let (p, _) = passes(Alg::Schneier);
        assert_eq!(&p[..2], &[Fill(&[0x00]), Fill(&[0xff])]);
        assert!(p[2..].iter().all(|x| *x == Random));
    }

    #[test]
    fn three_byte_patterns_run_on_across_offsets() {
        let mut a = [0u8; 7];
        fill_pattern(&mut a, &[1, 2, 3], 0);
        assert_eq!(a, [1, 2, 3, 1, 2, 3, 1]);
        fill_pattern(&mut a, &[1, 2, 3], 4);
        assert_eq!(a, [2, 3, 1, 2, 3, 1, 2]);
        assert_eq!(CHUNK % 3, 0, "every chunk starts a pattern over");
        assert_eq!(CHUNK % 4096, 0);
    }

    #[test]
    fn names_are_libvirts() {
        assert_eq!(name(Alg::Pfitzner33), "PFITZNER33");
        assert_eq!(name(Alg::Trim), "TRIM");
        assert_eq!(algorithm(99).map_err(|e| e.code), Err(ErrorCode::InvalidArg));
    }

    fn scribbled(len: usize) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), vec![0x5a; len]).expect("write");
        file
    }

    #[test]
    fn a_wiped_file_holds_the_last_pass_of_bsi() {
        // Not a multiple of the chunk, so the last write is short.
        let file = scribbled(CHUNK + 12345);
        wipe_blocking(file.path(), Alg::Bsi).expect("wipe");
        let data = std::fs::read(file.path()).expect("read");
        assert_eq!(data.len(), CHUNK + 12345);
        assert!(data.iter().all(|b| *b == 0x7f));
    }

    #[test]
    fn a_wiped_file_holds_the_last_pass_of_dod_and_is_verified() {
        let file = scribbled(100_000);
        wipe_blocking(file.path(), Alg::Dod).expect("wipe");
        let data = std::fs::read(file.path()).expect("read");
        assert!(data.iter().all(|b| *b == 0xff));
    }

    #[test]
    fn random_wipe_overwrites_and_keeps_the_size() {
        let file = scribbled(1 << 20);
        wipe_blocking(file.path(), Alg::Random).expect("wipe");
        let data = std::fs::read(file.path()).expect("read");
        assert_eq!(data.len(), 1 << 20);
        let left = data.iter().filter(|b| **b == 0x5a).count();
        // Random bytes equal 0x5a about 1 time in 256.
        assert!(left < (1 << 20) / 128, "{left} bytes kept the old value");
    }

    #[test]
    fn a_sparse_file_becomes_allocated_by_a_pattern_wipe() {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        file.as_file().set_len(4 << 20).expect("sparse");
        wipe_blocking(file.path(), Alg::Schneier).expect("wipe");
        let meta = std::fs::metadata(file.path()).expect("stat");
        assert_eq!(meta.len(), 4 << 20);
        assert!(
            meta.blocks() * 512 >= 4 << 20,
            "allocated: {}",
            meta.blocks() * 512
        );
    }

    #[test]
    fn zero_keeps_a_sparse_file_sparse() {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        file.as_file().set_len(4 << 20).expect("sparse");
        file.as_file().write_all_at(&[7u8; 8192], 1 << 20).expect("data");
        wipe_blocking(file.path(), Alg::Zero).expect("wipe");
        let meta = std::fs::metadata(file.path()).expect("stat");
        assert_eq!(meta.len(), 4 << 20);
        assert!(meta.blocks() * 512 < 4 << 20);
        assert!(std::fs::read(file.path()).expect("read").iter().all(|b| *b == 0));
    }

    #[test]
    fn trim_discards_a_file_or_is_refused_as_unsupported() {
        let file = scribbled(1 << 20);
        match wipe_blocking(file.path(), Alg::Trim) {
            Ok(()) => {
                let data = std::fs::read(file.path()).expect("read");
                assert_eq!(data.len(), 1 << 20);
                assert!(data.iter().all(|b| *b == 0));
            }
            Err(e) => {
                assert_eq!(e.code, ErrorCode::OperationUnsupported);
                assert!(e.message.contains("TRIM"), "{}", e.message);
            }
        }
    }
}
