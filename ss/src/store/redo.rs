//! The write-ahead log's redo: a record durable in the log is applied to
//! the files again at start-up, over whatever a crash left.

use super::*;

impl Store {
    /// Applies a logged change again, rewriting every file it touches,
    /// unless the file holds a newer version already.
    ///
    /// A newer version on disk is whole and was made durable after the
    /// record: a copy a sync installed after the record was logged (a
    /// sync's batch checkpoints the log before its first install, but the
    /// stream's changes go on being logged beside it), whose temp files
    /// were synced before they were named; or a later record's, which is
    /// redone next anyway. Redoing the older record would take the file
    /// back to a version its partner was told it has passed.
    pub(super) fn redo(&self, record: &WalRecord) -> Result<(), StoreError> {
        let (file, meta) = match record {
            WalRecord::Create { file, meta }
            | WalRecord::Commit { file, meta, .. }
            | WalRecord::Install { file, meta, .. } => (file, meta),
        };
        // Whatever a crash left unreadable is rewritten.
        if let Ok(Some(found)) = self.find(file) {
            if found.meta.stats.stamp() > meta.stats.stamp() {
                return Ok(());
            }
        }
        match record {
            WalRecord::Create { file, meta } => {
                remove_if_present(&self.path_in(UNDO, file)?)?;
                self.create_files(file, meta, Durable::Later)
            }
            WalRecord::Commit {
                file,
                content,
                previous,
                meta,
            } => {
                self.write_atomically(&self.path_in(UNDO, file)?, previous, false, Durable::Later)?;
                self.rewrite_content(file, content, meta)
            }
            WalRecord::Install {
                file,
                content,
                meta,
            } => self.rewrite_content(file, content, meta),
        }
    }

    /// Writes `file`'s content with its metadata, without fsyncs (the log
    /// holds them).
    fn rewrite_content(
        &self,
        file: &str,
        content: &[u8],
        meta: &FileMeta,
    ) -> Result<(), StoreError> {
        let mut temp = self.temp_file()?;
        temp.write_all(content)?;
        let separate = self.attach_meta(&mut temp, file, meta)?;
        let mut placed = Placements::default();
        self.place_with_meta(temp, separate, file, &mut placed)?;
        self.placed(placed, Durable::Later)
    }
}
