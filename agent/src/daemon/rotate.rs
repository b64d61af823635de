//! Output files of the daemon's jobs: `{output_dir}/{job}/{job}-{UTC time}.{ext}`, a new file
//! once the current one is `rotate_size` bytes or `rotate_age` old, and the closed ones
//! deleted beyond `keep` files or past `keep_age` (per job and kind of file).
//!
//! A [`Rotator`] names, creates and counts the files of one job and extension; [`Rotating`],
//! the wrapper of a sink that the jobs' outputs ([`super::outputs`]) put around each file's
//! sink, asks it when to close the current file (at a record boundary, so each file is
//! complete on its own). Files are created on the first record, so a job that records
//! nothing (or fails at once and is retried) leaves no empty files. The names sort in time
//! order; [`expired`] chooses the files retention deletes.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use super::config::Rotation;
use crate::{
    model::{
        Event,
        packet::{IfaceTotals, Owner, Packet},
    },
    output::{EventWriter, PacketWriter, num::civil_from_days},
};

/// `20231114T221320.123456Z` for `ts_ns` (nanoseconds since the epoch): sortable, and safe
/// in file names.
pub fn stamp(ts_ns: u64) -> String {
    let secs = ts_ns / 1_000_000_000;
    let micros = (ts_ns % 1_000_000_000) / 1000;
    let (y, m, d) = civil_from_days((secs / 86400) as i64);
    let rem = secs % 86400;
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}.{micros:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The name of a job's file made at `ts_ns`.
pub fn file_name(job: &str, ts_ns: u64, ext: &str) -> String {
    format!("{job}-{}.{ext}", stamp(ts_ns))
}

/// True when `name` is one of `job`'s files with extension `ext`.
pub fn is_job_file(name: &str, job: &str, ext: &str) -> bool {
    name.strip_prefix(job)
        .and_then(|r| r.strip_prefix('-'))
        .and_then(|r| r.strip_suffix(ext))
        .and_then(|r| r.strip_suffix('.'))
        .is_some_and(|s| {
            s.len() == 23
                && s.as_bytes()[8] == b'T'
                && s.ends_with('Z')
                && s.bytes().filter(u8::is_ascii_digit).count() == 20
        })
}

/// The closed files retention deletes: `files` are (name, age) of one job and extension
/// (the current file not among them); the newest `keep` stay (0: no limit), then those older
/// than `keep_age` go too.
pub fn expired(
    files: &[(String, Duration)],
    keep: usize,
    keep_age: Option<Duration>,
) -> Vec<String> {
    let mut sorted: Vec<&(String, Duration)> = files.iter().collect();
    // Newest first: the names sort in time order.
    sorted.sort_by(|a, b| b.0.cmp(&a.0));
    sorted
        .iter()
        .enumerate()
        .filter(|(i, (_, age))| (keep > 0 && *i >= keep) || keep_age.is_some_and(|max| *age > max))
        .map(|(_, (name, _))| name.clone())
        .collect()
}

/// A file that counts the bytes written into it.
pub struct CountingFile {
    file: File,
    written: Arc<AtomicU64>,
}

impl Write for CountingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let n = self.file.write_vectored(bufs)?;
        self.written.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Names, creates and measures the files of one job and extension.
pub struct Rotator {
    dir: PathBuf,
    job: String,
    ext: &'static str,
    rotation: Rotation,
    /// The current file, when one is open: its path, when it was opened, its byte count.
    current: Option<(PathBuf, Instant, Arc<AtomicU64>)>,
}

impl Rotator {
    /// Files of `job` with extension `ext` in `{output_dir}/{job}` (created when missing,
    /// mode 0700: records may hold secrets).
    pub fn new(
        output_dir: &Path,
        job: &str,
        ext: &'static str,
        rotation: Rotation,
    ) -> io::Result<Rotator> {
        let dir = output_dir.join(job);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        Ok(Rotator {
            dir,
            job: job.to_string(),
            ext,
            rotation,
            current: None,
        })
    }

    /// True when a file is open and must be closed before the next record (size or age).
    pub fn due(&self) -> bool {
        self.current.as_ref().is_some_and(|(_, opened, written)| {
            (self.rotation.max_bytes > 0
                && written.load(Ordering::Relaxed) >= self.rotation.max_bytes)
                || self.rotation.max_age.is_some_and(|a| opened.elapsed() >= a)
        })
    }

    pub fn is_open(&self) -> bool {
        self.current.is_some()
    }

    pub fn current(&self) -> Option<&Path> {
        self.current.as_ref().map(|(p, _, _)| p.as_path())
    }

    /// Creates the next file (mode 0600) and makes it the current one. The caller applies
    /// retention ([`Rotator::retain`]) once the previous file is closed.
    pub fn open_next(&mut self) -> io::Result<CountingFile> {
        let mut ts = crate::clock::wall_ns();
        let (path, file) = loop {
            let path = self.dir.join(file_name(&self.job, ts, self.ext));
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(f) => break (path, f),
                // Two files within the same microsecond: the next microsecond.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => ts += 1000,
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot create {}: {e}", path.display()),
                    ));
                }
            }
        };
        let written = Arc::new(AtomicU64::new(0));
        self.current = Some((path, Instant::now(), written.clone()));
        Ok(CountingFile { file, written })
    }

    /// The current file was closed.
    pub fn closed(&mut self) {
        self.current = None;
    }

    /// Deletes the closed files retention no longer keeps.
    pub fn retain(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let current = self
            .current()
            .and_then(Path::file_name)
            .map(|n| n.to_owned());
        let now = SystemTime::now();
        let files: Vec<(String, Duration)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                if !is_job_file(&name, &self.job, self.ext)
                    || current.as_deref() == Some(std::ffi::OsStr::new(&name))
                {
                    return None;
                }
                let modified = e.metadata().ok()?.modified().ok()?;
                Some((name, now.duration_since(modified).unwrap_or_default()))
            })
            .collect();
        for name in expired(&files, self.rotation.keep, self.rotation.keep_age) {
            let path = self.dir.join(&name);
            match fs::remove_file(&path) {
                Ok(()) => tracing::info!("retention: deleted {}", path.display()),
                Err(e) => tracing::warn!("retention: cannot delete {}: {e}", path.display()),
            }
        }
    }
}

/// Makes the sink of a new file: from the previous file's sink when there is one, which it
/// finishes (flushes it, or goes on with its streams in the new file).
pub type OpenSink<W> = Box<dyn FnMut(Option<W>, CountingFile) -> io::Result<W> + Send>;

/// A sink whose records go to rotating files: the rotation as a wrapper around the sink of
/// one file. The first file is created at the first record; a file is closed at a record
/// boundary once its [`Rotator`] says so: events before the next record, packets at the
/// next kernel counters (the file then ends with its statistics).
pub struct Rotating<W> {
    rot: Rotator,
    w: Option<W>,
    open: OpenSink<W>,
}

impl<W> Rotating<W> {
    pub fn new(rot: Rotator, open: OpenSink<W>) -> Rotating<W> {
        Rotating { rot, w: None, open }
    }

    /// The sink of the current file, the next file opened first when `rotate` (or none is
    /// open).
    fn current(&mut self, rotate: bool) -> io::Result<&mut W> {
        let w = match self.w.take() {
            Some(w) if !rotate => w,
            prev => {
                let f = self.rot.open_next()?;
                let w = (self.open)(prev, f)?;
                // The previous file is complete: retention may delete it now.
                self.rot.retain();
                w
            }
        };
        Ok(self.w.insert(w))
    }
}

impl<W: EventWriter> EventWriter for Rotating<W> {
    fn write_event(&mut self, ev: &Event) -> io::Result<()> {
        let due = self.rot.due();
        self.current(due)?.write_event(ev)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.w.as_mut().map_or(Ok(()), EventWriter::flush)
    }

    fn tick(&mut self) -> io::Result<()> {
        self.w.as_mut().map_or(Ok(()), EventWriter::tick)
    }
}

impl<W: PacketWriter> Rotating<W> {
    /// Ends the current file, if one is open, with the kernel's counters.
    fn close(&mut self, totals: &[IfaceTotals], filtering: bool) -> io::Result<()> {
        if let Some(mut w) = self.w.take() {
            w.finish(totals, filtering)?;
            self.rot.closed();
        }
        Ok(())
    }
}

impl<W: PacketWriter> PacketWriter for Rotating<W> {
    fn write_packet(
        &mut self,
        p: &Packet<'_>,
        ts_ns: u64,
        owner: Option<&Owner>,
    ) -> io::Result<()> {
        self.current(false)?.write_packet(p, ts_ns, owner)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.w.as_mut().map_or(Ok(()), PacketWriter::flush)
    }

    fn tick(&mut self) -> io::Result<()> {
        self.w.as_mut().map_or(Ok(()), PacketWriter::tick)
    }

    /// The current file is due: it is closed at the next counters.
    fn wants_totals(&self) -> bool {
        self.w
            .as_ref()
            .is_some_and(|w| self.rot.due() || w.wants_totals())
    }

    fn totals(&mut self, totals: &[IfaceTotals], filtering: bool) -> io::Result<()> {
        match &mut self.w {
            Some(_) if self.rot.due() => self.close(totals, filtering),
            Some(w) => w.totals(totals, filtering),
            None => Ok(()),
        }
    }

    fn finish(&mut self, totals: &[IfaceTotals], filtering: bool) -> io::Result<()> {
        self.close(totals, filtering)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_in_time_order_and_are_recognised() {
        let a = file_name("lo", 1_700_000_000_123_456_789, "pcapng");
        assert_eq!(a, "lo-20231114T221320.123456Z.pcapng");
        let b = file_name("lo", 1_700_000_001_000_000_000, "pcapng");
        assert!(a < b);
        assert!(is_job_file(&a, "lo", "pcapng"));
        assert!(!is_job_file(&a, "l", "pcapng"));
        assert!(!is_job_file(&a, "lo", "jsonl"));
        assert!(!is_job_file("lo-notes.pcapng", "lo", "pcapng"));
        // A job whose name is another's prefix does not take its files.
        assert!(!is_job_file(
            "lo-x-20231114T221320.123456Z.pcapng",
            "lo",
            "pcapng"
        ));
    }

    #[test]
    fn retention_by_count_and_age() {
        let h = |n: u64| Duration::from_secs(n * 3600);
        let files: Vec<(String, Duration)> = (0..5)
            .map(|i| {
                (
                    file_name("j", 1_700_000_000_000_000_000 + i * 1_000_000_000, "log"),
                    h(5 - i),
                )
            })
            .collect();
        // Newest are i=4 (1 h old), i=3 (2 h)...
        let mut e = expired(&files, 2, None);
        e.sort();
        assert_eq!(
            e,
            vec![files[0].0.clone(), files[1].0.clone(), files[2].0.clone()]
        );
        let mut e = expired(&files, 0, Some(h(3)));
        e.sort();
        assert_eq!(e, vec![files[0].0.clone(), files[1].0.clone()]);
        assert!(expired(&files, 0, None).is_empty());
        assert_eq!(expired(&files, 4, Some(h(10))), vec![files[0].0.clone()]);
    }

    #[test]
    fn rotates_by_size_and_keeps_the_newest() {
        let dir = std::env::temp_dir().join(format!("capagent-rotate-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let rotation = Rotation {
            max_bytes: 10,
            max_age: None,
            keep: 2,
            keep_age: None,
        };
        let mut r = Rotator::new(&dir, "job", "log", rotation).unwrap();
        assert!(!r.due() && !r.is_open());
        for _ in 0..5 {
            let mut f = r.open_next().unwrap();
            assert!(!r.due());
            r.retain();
            f.write_all(b"0123456789").unwrap();
            assert!(r.due());
            r.closed();
        }
        let names: Vec<String> = fs::read_dir(dir.join("job"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        // The last file opened plus the 2 closed before it.
        assert_eq!(names.len(), 3, "{names:?}");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(dir.join("job")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        fs::remove_dir_all(&dir).unwrap();
    }
}
