//! The write-ahead log's redo: a record durable in the log is applied to
//! the files again at start-up, over whatever a crash left.

use super::*;

impl Store {
    /// Applies a logged change again, rewriting every file it touches.
    pub(super) fn redo(&self, record: &WalRecord) -> Result<(), StoreError> {
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
                self.write_atomically(&self.content_path(file)?, content, false, Durable::Later)?;
                self.write_meta_files(file, meta, Durable::Later)
            }
            WalRecord::Install {
                file,
                content,
                meta,
            } => {
                self.write_atomically(&self.content_path(file)?, content, false, Durable::Later)?;
                self.write_meta_files(file, meta, Durable::Later)
            }
        }
    }
}
