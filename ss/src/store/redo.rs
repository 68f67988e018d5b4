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
