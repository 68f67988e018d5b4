//! WRITE sessions: a sentence lock, edits on a working copy, and ETIRW
//! splicing it into the file as one change.

use super::*;

impl Files {
    /// Locks sentence `index` of `file` for a new WRITE session.
    pub fn begin_write(
        self: &Arc<Self>,
        file: &str,
        index: i64,
    ) -> Result<WriteSession, WireError> {
        let entry = self.entry(file)?;
        let mut e = self.lock_current(file, &entry)?;
        if e.doc.is_none() {
            let text = self.store.read_content(file)?;
            e.doc = Some(Document::parse(&String::from_utf8_lossy(&text)));
            e.on_disk = Some(text);
        }
        let doc = e.doc.as_mut().expect("just parsed");
        let sentence = match doc.open(index) {
            Ok(sentence) => sentence,
            Err(err) => {
                if e.locks.is_empty() {
                    e.doc = None;
                    e.on_disk = None;
                }
                return Err(err);
            }
        };
        let words = doc.words(sentence);
        if e.locks.contains_key(&sentence) {
            return Err(WireError::new(
                ErrorCode::Locked,
                format!("sentence {index} of {file:?} is being written in another session (its lock is released at ETIRW, or when that session ends)"),
            ));
        }
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        e.locks.insert(sentence, session);
        drop(e);
        Ok(WriteSession {
            files: self.clone(),
            file: file.to_owned(),
            entry,
            sentence,
            words,
            open: true,
        })
    }
}

/// One open WRITE: a locked sentence and the working copy of its words.
/// Dropping it without [`WriteSession::commit`] releases the lock and loses the edits.
pub struct WriteSession {
    files: Arc<Files>,
    file: String,
    entry: EntryRef,
    sentence: SentenceId,
    words: Vec<String>,
    open: bool,
}

impl WriteSession {
    pub fn file(&self) -> &str {
        &self.file
    }

    pub fn word_count(&self) -> u64 {
        self.words.len() as u64
    }

    /// Applies one edit line to the working copy.
    pub fn edit(&mut self, word_index: i64, content: &str) -> Result<(), WireError> {
        let max = self.files.max_file_size();
        let working: u64 = self.words.iter().map(|w| w.len() as u64 + 1).sum();
        if working + content.len() as u64 > max {
            return Err(too_large(max));
        }
        insert_words(&mut self.words, word_index, content)
    }

    /// ETIRW: splices the working copy into the file as one change; returns
    /// the file as it now is (for the replication stream).
    pub fn commit(self) -> Result<Committed, WireError> {
        self.commit_announcing(|_| {})
    }

    /// [`WriteSession::commit`], calling `durable` with the change as soon
    /// as it is durable here (see [`crate::store::Store::commit_announcing`]),
    /// still under the file's lock: changes of a file are announced in the
    /// order they were made. It is called whenever this returns `Ok`.
    pub fn commit_announcing(
        mut self,
        durable: impl FnOnce(&Committed),
    ) -> Result<Committed, WireError> {
        let entry = self.entry.clone();
        let mut e = lock(&entry);
        if e.deleted {
            return Err(WireError::not_found(&format!("file {:?}", self.file)));
        }
        let Entry {
            doc,
            locks,
            meta,
            on_disk,
            ..
        } = &mut *e;
        let doc = doc.as_mut().expect("a locked file keeps its document");
        let before = doc.clone();
        doc.replace(self.sentence, &self.words, |s| {
            s != self.sentence && locks.contains_key(&s)
        });
        let content = doc.render();
        let max = self.files.max_file_size();
        if content.len() as u64 > max {
            *doc = before;
            return Err(too_large(max));
        }
        let mut new_meta = meta.clone();
        apply_content_stats(&mut new_meta.stats, content.as_bytes(), self.files.epoch());
        let committed = Committed {
            meta: new_meta,
            content: content.into_bytes(),
        };
        let mut durable = Some(durable);
        let mut announce = || {
            if let Some(durable) = durable.take() {
                durable(&committed);
            }
        };
        if let Err(err) = self.files.store.commit_announcing(
            &self.file,
            &committed.content,
            &committed.meta,
            // Taken, not copied: a commit that fails before its record
            // leaves the file as it was, and the next one reads it.
            on_disk.take(),
            &mut announce,
        ) {
            *doc = before;
            return Err(err.into());
        }
        *meta = committed.meta.clone();
        // Kept only for the other sessions: this one's release drops it.
        if locks.len() > 1 {
            *on_disk = Some(committed.content.clone());
        }
        self.release(&mut e);
        Ok(committed)
    }

    fn release(&mut self, e: &mut Entry) {
        if !self.open {
            return;
        }
        self.open = false;
        e.locks.remove(&self.sentence);
        if let Some(doc) = e.doc.as_mut() {
            doc.discard_if_empty(self.sentence);
        }
        if e.locks.is_empty() {
            e.doc = None;
            e.on_disk = None;
        }
    }
}

impl Drop for WriteSession {
    fn drop(&mut self) {
        if self.open {
            let entry = self.entry.clone();
            let mut e = lock(&entry);
            self.release(&mut e);
        }
    }
}
