//! Writing a bundle's `.tar.gz`: `events.jsonl` spooled and compressed on a thread of its own as
//! the stream is read, the other files' entries compressed two at a time, all joined as gzip
//! members one after the other.

use std::io::{Seek, Write};

use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::format::{EvidenceError, Line, FILES, MANIFEST};

/// `events.jsonl` as the export writes it: lines are batched here, then hashed and
/// gzip-compressed on a thread of its own into an anonymous temporary file, so the reading of the
/// stream and the compression run on two cores. The compressed data becomes a gzip member of its
/// own in the bundle (docs/evidence.md).
pub(super) struct EventsSpool {
    batch: Vec<u8>,
    sender: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    worker: Option<std::thread::JoinHandle<std::io::Result<CompressedEvents>>>,
}

/// What the compressing thread made of `events.jsonl`.
pub(super) struct CompressedEvents {
    file: std::fs::File,
    digest: [u8; 32],
    len: u64,
}

/// Bytes of lines handed to the compressing thread at a time.
const SPOOL_BATCH: usize = 1 << 20;
/// A batch's room: the batch and a quarter more, so the line that crosses `SPOOL_BATCH` fits
/// (growing the vector there copied every batch once more).
const SPOOL_ROOM: usize = SPOOL_BATCH + SPOOL_BATCH / 4;

impl EventsSpool {
    pub(super) fn new() -> std::io::Result<EventsSpool> {
        let file = tempfile_in_tmp()?;
        let (sender, receiver) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
        let worker = std::thread::Builder::new()
            .name("eucora-evidence-gzip".into())
            .spawn(move || {
                let mut hasher = Sha256::new();
                let mut len = 0u64;
                let mut gz = flate2::write::GzEncoder::new(
                    std::io::BufWriter::new(file),
                    flate2::Compression::fast(),
                );
                for batch in receiver {
                    hasher.update(&batch);
                    len += batch.len() as u64;
                    gz.write_all(&batch)?;
                }
                let mut file = gz
                    .finish()?
                    .into_inner()
                    .map_err(std::io::IntoInnerError::into_error)?;
                file.rewind()?;
                Ok(CompressedEvents {
                    file,
                    digest: hasher.finalize().into(),
                    len,
                })
            })?;
        Ok(EventsSpool {
            batch: Vec::with_capacity(SPOOL_ROOM),
            sender: Some(sender),
            worker: Some(worker),
        })
    }

    pub(super) fn line(&mut self, line: &Line) -> Result<(), EvidenceError> {
        line.write(&mut self.batch)
            .map_err(|e| EvidenceError::Export(e.to_string()))?;
        self.batch.push(b'\n');
        if self.batch.len() >= SPOOL_BATCH {
            self.send()?;
        }
        Ok(())
    }

    fn send(&mut self) -> Result<(), EvidenceError> {
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(SPOOL_ROOM));
        let gone = self
            .sender
            .as_ref()
            .is_none_or(|sender| sender.send(batch).is_err());
        if gone {
            // The thread stopped on an error: finishing says which.
            return Err(self.finish().err().unwrap_or_else(|| {
                EvidenceError::Export("the compressing thread stopped".into())
            }));
        }
        Ok(())
    }

    pub(super) fn finish(&mut self) -> Result<CompressedEvents, EvidenceError> {
        if !self.batch.is_empty() && self.sender.is_some() {
            let batch = std::mem::take(&mut self.batch);
            if let Some(sender) = &self.sender {
                let _ = sender.send(batch);
            }
        }
        self.sender = None;
        let worker = self
            .worker
            .take()
            .ok_or_else(|| EvidenceError::Export("the events were already written".into()))?;
        worker
            .join()
            .map_err(|_| EvidenceError::Export("the compressing thread panicked".into()))?
            .map_err(EvidenceError::Io)
    }
}

impl Drop for EventsSpool {
    fn drop(&mut self) {
        // An export that stopped early: let the thread end, and wait for it.
        self.sender = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// An anonymous temporary file (unlinked at once, so nothing is left behind).
pub fn tempfile_in_tmp() -> std::io::Result<std::fs::File> {
    let path = std::env::temp_dir().join(format!("eucora-evidence-{}", Uuid::new_v4().simple()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

/// A file's tar header, dated `mtime` (the export's time, in seconds since 1970).
fn tar_header(name: &str, len: u64, mtime: u64) -> std::io::Result<tar::Header> {
    let mut header = tar::Header::new_gnu();
    header.set_path(name)?;
    header.set_size(len);
    header.set_mode(0o644);
    header.set_mtime(mtime);
    header.set_cksum();
    Ok(header)
}

/// A file of the archive after `events.jsonl`: its tar entry (header, data, the padding to a
/// 512-byte block) compressed as a gzip member of its own, and the data's SHA-256 for the
/// manifest.
struct Entry {
    digest: [u8; 32],
    member: Vec<u8>,
}

/// Zeros enough for a tar entry's padding or the archive's end (two blocks).
const ZEROS: [u8; 1024] = [0u8; 1024];

/// The bytes after `len` bytes of data that fill its last 512-byte block.
fn padding(len: u64) -> &'static [u8] {
    &ZEROS[..((512 - len % 512) % 512) as usize]
}

/// `name`'s entry, with `after` appended to the member (the archive's end, for the last one).
fn entry(name: &str, data: &[u8], mtime: u64, after: &[u8]) -> std::io::Result<Entry> {
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4 + 1024),
        flate2::Compression::fast(),
    );
    gz.write_all(tar_header(name, data.len() as u64, mtime)?.as_bytes())?;
    gz.write_all(data)?;
    gz.write_all(padding(data.len() as u64))?;
    gz.write_all(after)?;
    Ok(Entry {
        digest: Sha256::digest(data).into(),
        member: gz.finish()?,
    })
}

/// `bytes` as a gzip member of its own.
fn member(out: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
    gz.write_all(bytes)?;
    gz.finish().map(drop)
}

/// The entries of `files`, in their order, made two at a time (this thread and one more, each
/// taking the largest left), so the tail of a large bundle is compressed on both cores.
fn entries(files: &[(&str, &[u8])], mtime: u64) -> std::io::Result<Vec<Entry>> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let mut order: Vec<usize> = (0..files.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(files[i].1.len()));
    let next = AtomicUsize::new(0);
    let work = || {
        let mut made = Vec::new();
        while let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) {
            let (name, data) = files[i];
            made.push((i, entry(name, data, mtime, &[])));
        }
        made
    };
    let mut made = std::thread::scope(|scope| {
        let other = scope.spawn(work);
        let mut made = work();
        made.extend(super::joined(other));
        made
    });
    made.sort_by_key(|(i, _)| *i);
    made.into_iter().map(|(_, entry)| entry).collect()
}

/// Writes the bundle to `out`: gzip members one after the other (RFC 1952 2.2; every gunzip
/// reads them as one stream): the tar header of `events.jsonl`, the events compressed as they were
/// read, the padding after them, each of `files` in its entry compressed on its own (two at a
/// time), and the manifest, which `signed` makes from every file's name and digest in the
/// archive's order, with the end of the archive.
pub(super) fn write_bundle(
    mut out: impl Write,
    events: &mut CompressedEvents,
    files: &[(&str, &[u8])],
    mtime: u64,
    signed: impl FnOnce(&[(&str, [u8; 32])]) -> Result<Vec<u8>, EvidenceError>,
) -> Result<(), EvidenceError> {
    let entries = entries(files, mtime)?;
    let digests: Vec<(&str, [u8; 32])> = [(FILES[0], events.digest)]
        .into_iter()
        .chain(
            files
                .iter()
                .zip(&entries)
                .map(|((name, _), e)| (*name, e.digest)),
        )
        .collect();
    let manifest = entry(MANIFEST, &signed(&digests)?, mtime, &ZEROS)?;
    member(
        &mut out,
        tar_header(FILES[0], events.len, mtime)?.as_bytes(),
    )?;
    std::io::copy(&mut events.file, &mut out)?;
    member(&mut out, padding(events.len))?;
    for entry in entries.iter().chain([&manifest]) {
        out.write_all(&entry.member)?;
    }
    out.flush()?;
    Ok(())
}
