//! Reading an export file on a blocking thread and handing its rows to async code in batches.

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{ActivityReader, CsvError, ExportReader, ProgramMemberReader, ReadStats};

/// The blocking task of [`spawn_file_reader`]: it returns the final counters or why reading
/// stopped.
pub type ReaderTask = JoinHandle<Result<ReadStats, CsvError>>;

/// A reader of rows that counts what it read: [`ExportReader`], [`ActivityReader`],
/// [`ProgramMemberReader`].
pub trait RowSource: Iterator {
    /// Returns the counters so far.
    fn stats(&self) -> ReadStats;
}

impl<R: Read> RowSource for ExportReader<R> {
    fn stats(&self) -> ReadStats {
        ExportReader::stats(self)
    }
}

impl<R: Read> RowSource for ActivityReader<R> {
    fn stats(&self) -> ReadStats {
        ActivityReader::stats(self)
    }
}

impl<R: Read> RowSource for ProgramMemberReader<R> {
    fn stats(&self) -> ReadStats {
        ProgramMemberReader::stats(self)
    }
}

/// Reads a downloaded export file in `spawn_blocking` and sends its rows in batches of up to
/// `batch_rows` (row errors included, in file order) through a channel holding at most two
/// batches, so memory stays bounded however large the file and however slow the consumer.
///
/// `open` builds the reader from the opened file, e.g.
/// `|f| ExportReader::new(f, FileFormat::Csv)` or `|f| ActivityReader::new(f, FileFormat::Csv)`.
/// Reading stops early, quietly, when the receiver is dropped, and with
/// [`CsvError::Cancelled`] when `cancel` fires. The task returns the final counters.
///
/// Must be called inside a tokio runtime.
///
/// # Errors
///
/// The task returns [`CsvError::Open`] when the file cannot be opened, the error of `open`
/// (an empty file, a bad header...), [`CsvError::Read`] when reading fails, or
/// [`CsvError::Cancelled`].
pub fn spawn_file_reader<S, F>(
    path: PathBuf,
    open: F,
    batch_rows: usize,
    cancel: CancellationToken,
) -> (mpsc::Receiver<Vec<S::Item>>, ReaderTask)
where
    S: RowSource,
    S::Item: Send + 'static,
    F: FnOnce(File) -> Result<S, CsvError> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(2);
    let batch_rows = batch_rows.max(1);
    let handle = tokio::task::spawn_blocking(move || {
        let file = File::open(&path).map_err(|source| CsvError::Open {
            path: path.clone(),
            source,
        })?;
        let mut reader = open(file)?;
        let mut batch = Vec::with_capacity(batch_rows);
        loop {
            if cancel.is_cancelled() {
                return Err(CsvError::Cancelled);
            }
            let Some(item) = reader.next() else {
                break;
            };
            batch.push(item);
            if batch.len() == batch_rows {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(batch_rows));
                if tx.blocking_send(full).is_err() {
                    return Ok(reader.stats());
                }
            }
        }
        if !batch.is_empty() {
            // A dropped receiver only means nobody wants the rest.
            let _ = tx.blocking_send(batch);
        }
        let stats = reader.stats();
        tracing::debug!(
            rows = stats.rows,
            errors = stats.errors,
            bytes = stats.bytes_read,
            nul_bytes = stats.nul_bytes_removed,
            "export file read"
        );
        Ok(stats)
    });
    (rx, handle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::marketo::csv::{ExportRow, FileFormat};
    use std::io::Write;

    fn temp_export(rows: usize) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "id,name").unwrap();
        for i in 0..rows {
            writeln!(file, "{i},name {i}").unwrap();
        }
        writeln!(file, "bad").unwrap();
        file.flush().unwrap();
        file
    }

    #[tokio::test]
    async fn sends_every_row_in_bounded_batches() {
        let file = temp_export(25);
        let (mut rx, handle) = spawn_file_reader(
            file.path().to_owned(),
            |f| ExportReader::new(f, FileFormat::Csv),
            10,
            CancellationToken::new(),
        );
        let mut sizes = Vec::new();
        let mut rows: Vec<ExportRow> = Vec::new();
        let mut errors = 0;
        while let Some(batch) = rx.recv().await {
            sizes.push(batch.len());
            for item in batch {
                match item {
                    Ok(row) => rows.push(row),
                    Err(e) => {
                        assert!(e.as_row_error().is_some());
                        errors += 1;
                    }
                }
            }
        }
        assert_eq!(sizes, vec![10, 10, 6]);
        assert_eq!(rows.len(), 25);
        assert_eq!(errors, 1);
        assert_eq!(rows[24].fields["name"], "name 24".into());
        let stats = handle.await.unwrap().unwrap();
        assert_eq!((stats.rows, stats.errors), (25, 1));
    }

    #[tokio::test]
    async fn stops_when_cancelled() {
        let file = temp_export(100);
        let cancel = CancellationToken::new();
        cancel.cancel();
        let (mut rx, handle) = spawn_file_reader(
            file.path().to_owned(),
            |f| ExportReader::new(f, FileFormat::Csv),
            10,
            cancel,
        );
        assert!(rx.recv().await.is_none());
        assert!(matches!(handle.await.unwrap(), Err(CsvError::Cancelled)));
    }

    #[tokio::test]
    async fn reports_a_missing_file_and_a_bad_header() {
        let (mut rx, handle) = spawn_file_reader(
            PathBuf::from("/nonexistent/export.csv"),
            |f| ExportReader::new(f, FileFormat::Csv),
            10,
            CancellationToken::new(),
        );
        assert!(rx.recv().await.is_none());
        let err = handle.await.unwrap().unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot open export file /nonexistent/export.csv"
        );
        let empty = tempfile::NamedTempFile::new().unwrap();
        let (_rx, handle) = spawn_file_reader(
            empty.path().to_owned(),
            |f| ActivityReader::new(f, FileFormat::Csv),
            10,
            CancellationToken::new(),
        );
        assert!(matches!(handle.await.unwrap(), Err(CsvError::EmptyFile)));
    }
}
