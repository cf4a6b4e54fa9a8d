//! The bootstrap's write-back spool: the CRM keys of one lead window, written to disk as Bulk
//! Import files (`id,<CRM key field>`, CSV, each strictly below 10 MB) while the window is
//! applied, so that the engine holds none of them in memory whatever the window's size. The
//! files are then imported (`lookupField=id`) or, for a small window, read back and sent by REST.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use super::EngineError;
use crate::marketo::csv::{
    CsvError, DEFAULT_IMPORT_LIMIT_BYTES, FileFormat, ImportFileWriter, WriteOutcome,
};
use crate::model::{Fields, Value};

/// The spool of one window.
pub(crate) struct Spool {
    dir: PathBuf,
    stem: String,
    key_field: String,
    writer: Option<ImportFileWriter<BufWriter<File>>>,
    files: Vec<SpoolFile>,
    rows: u64,
    limit: u64,
}

/// One finished spool file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SpoolFile {
    /// Where it is.
    pub path: PathBuf,
    /// Its data rows.
    pub rows: u64,
}

fn io_error(path: &Path, e: std::io::Error) -> EngineError {
    EngineError::Marketo(crate::marketo::Error::io(path, e))
}

fn csv_error(path: &Path, e: CsvError) -> EngineError {
    match e {
        CsvError::Write { source } => io_error(path, source),
        other => io_error(path, std::io::Error::other(other.to_string())),
    }
}

impl Spool {
    /// Returns the path of spool file `n` of `stem`.
    pub fn path(dir: &Path, stem: &str, n: usize) -> PathBuf {
        dir.join(format!("{stem}.{n}.csv"))
    }

    /// Returns the spool files of `stem` on disk, in order (`0, 1, ...` up to the first gap).
    pub fn existing(dir: &Path, stem: &str) -> Vec<PathBuf> {
        (0..)
            .map(|n| Self::path(dir, stem, n))
            .take_while(|p| p.exists())
            .collect()
    }

    /// Returns an empty spool for `stem` in `dir`, after removing the files an earlier run of the
    /// same window left.
    pub fn create(dir: &Path, stem: &str, key_field: &str) -> Spool {
        Self::with_limit(dir, stem, key_field, DEFAULT_IMPORT_LIMIT_BYTES)
    }

    /// As [`Spool::create`], with files strictly below `limit` bytes.
    pub fn with_limit(dir: &Path, stem: &str, key_field: &str, limit: u64) -> Spool {
        for stale in Self::existing(dir, stem) {
            let _ = std::fs::remove_file(stale);
        }
        Spool {
            dir: dir.to_owned(),
            stem: stem.to_owned(),
            key_field: key_field.to_owned(),
            writer: None,
            files: Vec::new(),
            rows: 0,
            limit,
        }
    }

    /// Returns the rows spooled so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    fn current_path(&self) -> PathBuf {
        Self::path(&self.dir, &self.stem, self.files.len())
    }

    fn open(&self) -> Result<ImportFileWriter<BufWriter<File>>, EngineError> {
        let path = self.current_path();
        let file = File::create(&path).map_err(|e| io_error(&path, e))?;
        ImportFileWriter::with_limit(
            BufWriter::new(file),
            vec!["id".to_owned(), self.key_field.clone()],
            FileFormat::Csv,
            self.limit,
        )
        .map_err(|e| csv_error(&path, e))
    }

    fn close(&mut self) -> Result<(), EngineError> {
        if let Some(writer) = self.writer.take() {
            let path = self.current_path();
            let rows = writer.rows_written();
            writer.finish().map_err(|e| csv_error(&path, e))?;
            self.files.push(SpoolFile { path, rows });
        }
        Ok(())
    }

    /// Appends the CRM key of lead `id`, starting a new file when the current one is full.
    pub fn push(&mut self, id: &str, key: &str) -> Result<(), EngineError> {
        let mut row = Fields::new();
        row.insert("id".to_owned(), Value::Text(id.to_owned()));
        row.insert(self.key_field.clone(), Value::Text(key.to_owned()));
        loop {
            if self.writer.is_none() {
                self.writer = Some(self.open()?);
            }
            let path = self.current_path();
            let Some(writer) = self.writer.as_mut() else {
                continue;
            };
            match writer.write_row(&row).map_err(|e| csv_error(&path, e))? {
                WriteOutcome::Written => {
                    self.rows += 1;
                    return Ok(());
                }
                WriteOutcome::Full => self.close()?,
            }
        }
    }

    /// Closes the spool and returns its files (none when nothing was spooled).
    pub fn finish(mut self) -> Result<Vec<SpoolFile>, EngineError> {
        self.close()?;
        Ok(std::mem::take(&mut self.files))
    }
}

/// Reads a spool file back as `(lead id, CRM key)` batches (the REST path: a small window's
/// keys go back 300 a call), holding one batch at a time.
pub(crate) struct SpoolReader {
    path: PathBuf,
    records: csv::StringRecordsIntoIter<File>,
}

impl SpoolReader {
    /// Opens a spool file.
    pub fn open(path: &Path) -> Result<SpoolReader, EngineError> {
        let reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_path(path)
            .map_err(|e| io_error(path, std::io::Error::other(e.to_string())))?;
        Ok(SpoolReader {
            path: path.to_owned(),
            records: reader.into_records(),
        })
    }

    /// Returns the next batch of at most `max` rows; empty at the end of the file.
    pub fn next_batch(&mut self, max: usize) -> Result<Vec<(String, String)>, EngineError> {
        let mut out = Vec::with_capacity(max.min(1024));
        while out.len() < max {
            let Some(record) = self.records.next() else {
                break;
            };
            let record =
                record.map_err(|e| io_error(&self.path, std::io::Error::other(e.to_string())))?;
            if let (Some(id), Some(key)) = (record.get(0), record.get(1)) {
                out.push((id.to_owned(), key.to_owned()));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spool_writes_id_and_key_files_that_read_back_in_batches() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::create(dir.path(), "42.writeback", "crmContactId");
        for i in 0..7 {
            spool.push(&i.to_string(), &format!("c-{i}")).unwrap();
        }
        assert_eq!(spool.rows(), 7);
        let files = spool.finish().unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].rows, 7);
        let text = std::fs::read_to_string(&files[0].path).unwrap();
        assert!(text.starts_with("id,crmContactId\r\n0,c-0\r\n"), "{text}");
        let mut reader = SpoolReader::open(&files[0].path).unwrap();
        let mut batches = Vec::new();
        loop {
            let b = reader.next_batch(3).unwrap();
            if b.is_empty() {
                break;
            }
            batches.push(b);
        }
        assert_eq!(
            batches.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![3, 3, 1]
        );
        assert_eq!(batches[2][0], ("6".to_owned(), "c-6".to_owned()));
        assert_eq!(
            Spool::existing(dir.path(), "42.writeback"),
            vec![files[0].path.clone()]
        );
        // A new spool of the same window starts from nothing.
        let again = Spool::create(dir.path(), "42.writeback", "crmContactId");
        assert!(Spool::existing(dir.path(), "42.writeback").is_empty());
        assert!(again.finish().unwrap().is_empty());
    }

    #[test]
    fn a_full_file_continues_in_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        // Rows of 18 bytes (with CRLF) in files below 1,000 bytes (a 17-byte header): 54 a file.
        let mut spool = Spool::with_limit(dir.path(), "7.writeback", "crmContactId", 1_000);
        let n = 600u64;
        for i in 0..n {
            spool
                .push(&(10_000_000 + i).to_string(), &(1_000_000 + i).to_string())
                .unwrap();
        }
        let files = spool.finish().unwrap();
        assert_eq!(files.len(), 12, "{files:?}");
        assert_eq!(files.iter().map(|f| f.rows).sum::<u64>(), n);
        for f in &files {
            let len = std::fs::metadata(&f.path).unwrap().len();
            assert!(len < 1_000, "{len}");
        }
        assert_eq!(
            Spool::existing(dir.path(), "7.writeback"),
            files.iter().map(|f| f.path.clone()).collect::<Vec<_>>()
        );
        let mut read = 0;
        let mut last = None;
        for f in &files {
            let mut reader = SpoolReader::open(&f.path).unwrap();
            loop {
                let b = reader.next_batch(300).unwrap();
                if b.is_empty() {
                    break;
                }
                read += b.len();
                last = b.last().cloned();
            }
        }
        assert_eq!(read as u64, n);
        assert_eq!(
            last,
            Some((
                (10_000_000 + n - 1).to_string(),
                (1_000_000 + n - 1).to_string()
            ))
        );
    }
}
