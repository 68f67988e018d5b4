//! The sentence engine: a file's text as sentences of words, with stable
//! sentence identities so a write lock follows its sentence.
//!
//! A sentence ends at every `.`, `!` or `?`, even inside a word (`e.g.` ends
//! two sentences); a trailing piece without a delimiter is a sentence too.
//! Words are separated by whitespace. Each sentence remembers the whitespace
//! that preceded it, so rendering gives back the text it was parsed from.
//!
//! A WRITE locks one sentence by its id, edits a working copy of its words and
//! at ETIRW splices them back ([`Document::replace`]); the new text is split
//! into sentences again, and the ids of every other sentence are untouched,
//! so other open WRITEs still point at the sentences they locked.

use shared::{ErrorCode, WireError};

pub const DELIMITERS: [char; 3] = ['.', '!', '?'];

/// Identifies a sentence for as long as its document is in memory.
pub type SentenceId = u64;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Sentence {
    id: SentenceId,
    /// Whitespace before the sentence ("" for the first one or a glued one).
    separator: String,
    /// The sentence itself, ending with its delimiter if it has one.
    /// Empty only for a sentence being written at the end of the file.
    text: String,
}

impl Sentence {
    fn ends_with_delimiter(&self) -> bool {
        self.text.ends_with(DELIMITERS)
    }
}

/// A file's text, split into sentences.
#[derive(Debug, Clone, Default)]
pub struct Document {
    sentences: Vec<Sentence>,
    next_id: SentenceId,
}

/// Splits text into (separator, sentence) pieces; whitespace at the very end is dropped.
fn split_sentences(text: &str) -> Vec<(String, String)> {
    let mut pieces = Vec::new();
    let mut separator = String::new();
    let mut current = String::new();
    for c in text.chars() {
        if current.is_empty() && c.is_whitespace() {
            separator.push(c);
            continue;
        }
        current.push(c);
        if DELIMITERS.contains(&c) {
            pieces.push((std::mem::take(&mut separator), std::mem::take(&mut current)));
        }
    }
    if !current.is_empty() {
        let trimmed = current.trim_end().to_owned();
        pieces.push((separator, trimmed));
    }
    pieces
}

/// Word and character counts of a text, as VIEW -l and INFO show them.
pub fn count(text: &str) -> (u64, u64) {
    (
        text.split_whitespace().count() as u64,
        text.chars().count() as u64,
    )
}

impl Document {
    pub fn parse(text: &str) -> Self {
        let mut doc = Document::default();
        doc.sentences = split_sentences(text)
            .into_iter()
            .map(|(separator, text)| Sentence {
                id: doc.fresh_id(),
                separator,
                text,
            })
            .collect();
        doc
    }

    fn fresh_id(&mut self) -> SentenceId {
        self.next_id += 1;
        self.next_id
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for s in self.sentences.iter().filter(|s| !s.text.is_empty()) {
            if !out.is_empty() {
                out.push_str(&s.separator);
            }
            out.push_str(&s.text);
        }
        out
    }

    pub fn sentence_count(&self) -> usize {
        self.sentences.len()
    }

    fn position(&self, id: SentenceId) -> Option<usize> {
        self.sentences.iter().position(|s| s.id == id)
    }

    /// The id of sentence `index` for a WRITE. `index` equal to the sentence
    /// count opens a new, empty sentence at the end, allowed when the file is
    /// empty or its last sentence ends with a delimiter.
    pub fn open(&mut self, index: i64) -> Result<SentenceId, WireError> {
        let count = self.sentences.len();
        let out_of_range = || {
            WireError::new(
                ErrorCode::InvalidIndex,
                format!("sentence index {index} out of range (the file has {count} sentences)"),
            )
        };
        let index = usize::try_from(index).map_err(|_| out_of_range())?;
        if index < count {
            return Ok(self.sentences[index].id);
        }
        let may_append = self
            .sentences
            .last()
            .is_none_or(Sentence::ends_with_delimiter);
        if index == count && may_append {
            let id = self.fresh_id();
            let separator = if count == 0 { "" } else { " " }.to_owned();
            self.sentences.push(Sentence {
                id,
                separator,
                text: String::new(),
            });
            return Ok(id);
        }
        Err(out_of_range())
    }

    /// The words of a sentence (delimiters stay attached to their word).
    pub fn words(&self, id: SentenceId) -> Vec<String> {
        self.position(id)
            .map(|i| {
                self.sentences[i]
                    .text
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Forgets an empty sentence opened at the end by a WRITE that did not commit.
    pub fn discard_if_empty(&mut self, id: SentenceId) {
        if let Some(i) = self.position(id) {
            if self.sentences[i].text.is_empty() {
                self.sentences.remove(i);
            }
        }
    }

    /// Replaces sentence `id` by `words`, split into sentences again. A
    /// resulting last piece without a delimiter merges with the following
    /// sentence unless `is_locked` says that one is being written.
    pub fn replace(
        &mut self,
        id: SentenceId,
        words: &[String],
        is_locked: impl Fn(SentenceId) -> bool,
    ) {
        let Some(at) = self.position(id) else {
            return;
        };
        let old = self.sentences.remove(at);
        let text = words.join(" ");
        let mut pieces: Vec<Sentence> = split_sentences(&text)
            .into_iter()
            // A glued piece ("e.g." is "e." and "g.") keeps its empty separator.
            .map(|(separator, text)| Sentence {
                id: 0,
                separator,
                text,
            })
            .collect();
        for (i, piece) in pieces.iter_mut().enumerate() {
            piece.id = if i == 0 { old.id } else { self.fresh_id() };
        }
        if let Some(first) = pieces.first_mut() {
            first.separator = old.separator.clone();
        }
        let inserted = pieces.len();
        self.sentences.splice(at..at, pieces);
        if inserted == 0 {
            return;
        }
        let last = at + inserted - 1;
        let next = last + 1;
        if !self.sentences[last].ends_with_delimiter()
            && next < self.sentences.len()
            && !is_locked(self.sentences[next].id)
            && !self.sentences[next].text.is_empty()
        {
            let following = self.sentences.remove(next);
            let merged = &mut self.sentences[last];
            merged.text.push_str(&following.separator);
            merged.text.push_str(&following.text);
        }
    }
}

/// Inserts the words of `content` before word `index` of `words`.
pub fn insert_words(words: &mut Vec<String>, index: i64, content: &str) -> Result<(), WireError> {
    let len = words.len();
    let at = usize::try_from(index)
        .ok()
        .filter(|&i| i <= len)
        .ok_or_else(|| {
            WireError::new(
                ErrorCode::InvalidIndex,
                format!("word index {index} out of range (0 to {len})"),
            )
        })?;
    words.splice(at..at, content.split_whitespace().map(str::to_owned));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One whole WRITE: open, apply edit lines, commit.
    fn write(doc: &mut Document, sentence: i64, edits: &[(i64, &str)]) -> Result<(), WireError> {
        let id = doc.open(sentence)?;
        let mut words = doc.words(id);
        for (index, content) in edits {
            insert_words(&mut words, *index, content)?;
        }
        doc.replace(id, &words, |_| false);
        Ok(())
    }

    #[test]
    fn the_mouse_example() {
        let mut doc = Document::parse("");
        write(&mut doc, 0, &[(0, "Im just a mouse.")]).unwrap();
        assert_eq!(doc.render(), "Im just a mouse.");
        write(&mut doc, 1, &[(0, "I dont like PNS")]).unwrap();
        assert_eq!(doc.render(), "Im just a mouse. I dont like PNS");
        let err = write(&mut doc, 2, &[]).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidIndex);
        write(&mut doc, 1, &[(3, "T-T")]).unwrap();
        assert_eq!(doc.render(), "Im just a mouse. I dont like T-T PNS");
        write(
            &mut doc,
            0,
            &[
                (3, "deeply mistaken hollow lil gei-fwen"),
                (6, "pocket-sized"),
            ],
        )
        .unwrap();
        assert_eq!(
            doc.render(),
            "Im just a deeply mistaken hollow pocket-sized lil gei-fwen mouse. I dont like T-T PNS"
        );
    }

    #[test]
    fn every_delimiter_ends_a_sentence_even_inside_a_word() {
        let doc = Document::parse("Wait e.g. this! Really? yes");
        assert_eq!(doc.sentence_count(), 5);
        assert_eq!(doc.render(), "Wait e.g. this! Really? yes");
        let doc = Document::parse("Hi.  Two spaces.");
        assert_eq!(doc.render(), "Hi.  Two spaces.");
    }

    #[test]
    fn sentence_index_bounds() {
        let mut doc = Document::parse("");
        assert_eq!(doc.open(1).unwrap_err().code, ErrorCode::InvalidIndex);
        assert_eq!(doc.open(-1).unwrap_err().code, ErrorCode::InvalidIndex);
        let mut doc = Document::parse("One. Two.");
        assert!(
            doc.open(2).is_ok(),
            "the last sentence ends with a delimiter"
        );
        assert_eq!(doc.open(4).unwrap_err().code, ErrorCode::InvalidIndex);
        let mut doc = Document::parse("One. Two");
        assert_eq!(doc.open(2).unwrap_err().code, ErrorCode::InvalidIndex);
    }

    #[test]
    fn word_index_bounds() {
        let mut words = vec!["a".to_owned(), "b".to_owned()];
        assert_eq!(
            insert_words(&mut words, 3, "x").unwrap_err().code,
            ErrorCode::InvalidIndex
        );
        assert_eq!(
            insert_words(&mut words, -1, "x").unwrap_err().code,
            ErrorCode::InvalidIndex
        );
        insert_words(&mut words, 2, "c d").unwrap();
        assert_eq!(words, ["a", "b", "c", "d"]);
    }

    #[test]
    fn content_with_delimiters_splits_into_sentences() {
        let mut doc = Document::parse("Start.");
        write(&mut doc, 1, &[(0, "One. Two! Three")]).unwrap();
        assert_eq!(doc.render(), "Start. One. Two! Three");
        assert_eq!(doc.sentence_count(), 4);
        // Indices count across the working copy, delimiters and all.
        write(&mut doc, 0, &[(1, "Middle."), (2, "end")]).unwrap();
        assert_eq!(doc.render(), "Start. Middle. end One. Two! Three");
    }

    #[test]
    fn a_lock_follows_its_sentence_when_earlier_ones_split() {
        let mut doc = Document::parse("A one. B two. C three.");
        let locked_c = doc.open(2).unwrap();
        // Another writer splits sentence 0 into three.
        write(&mut doc, 0, &[(2, "x. y. z")]).unwrap();
        assert_eq!(doc.render(), "A one. x. y. z B two. C three.");
        // The open WRITE still edits "C three.", now sentence 4.
        let mut words = doc.words(locked_c);
        assert_eq!(words, ["C", "three."]);
        insert_words(&mut words, 1, "big").unwrap();
        doc.replace(locked_c, &words, |_| false);
        assert_eq!(doc.render(), "A one. x. y. z B two. C big three.");
    }

    #[test]
    fn removing_a_delimiter_merges_with_the_next_unlocked_sentence() {
        let mut doc = Document::parse("One. Two.");
        let id = doc.open(0).unwrap();
        doc.replace(id, &["Uno".to_owned()], |_| false);
        assert_eq!(doc.render(), "Uno Two.");
        assert_eq!(doc.sentence_count(), 1);

        let mut doc = Document::parse("One. Two.");
        let id = doc.open(0).unwrap();
        let locked = doc.open(1).unwrap();
        doc.replace(id, &["Uno".to_owned()], |s| s == locked);
        assert_eq!(doc.sentence_count(), 2, "the locked sentence stays apart");
        assert_eq!(doc.words(locked), ["Two."]);
    }

    #[test]
    fn an_abandoned_new_sentence_leaves_no_trace() {
        let mut doc = Document::parse("One.");
        let id = doc.open(1).unwrap();
        assert_eq!(doc.render(), "One.");
        doc.discard_if_empty(id);
        assert_eq!(doc.sentence_count(), 1);
        assert_eq!(doc.render(), "One.");
    }

    #[test]
    fn emptying_the_first_sentence() {
        let mut doc = Document::parse("One. Two.");
        let id = doc.open(0).unwrap();
        doc.replace(id, &[], |_| false);
        assert_eq!(doc.render(), "Two.");
    }

    #[test]
    fn a_written_word_with_inner_delimiters_stays_whole() {
        let mut doc = Document::parse("");
        write(&mut doc, 0, &[(0, "See e.g. this?!")]).unwrap();
        assert_eq!(doc.render(), "See e.g. this?!");
    }

    #[test]
    fn counts() {
        assert_eq!(count("Im just a mouse."), (4, 16));
        assert_eq!(count(""), (0, 0));
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        /// Text of words (some with delimiters, even inside) and spaces.
        fn text() -> impl Strategy<Value = String> {
            proptest::collection::vec("[a-z]{1,6}[.!?]?([a-z]{1,3})?", 0..30)
                .prop_map(|w| w.join(" "))
        }

        fn words(text: &str) -> Vec<String> {
            text.split_whitespace().map(str::to_owned).collect()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn parsing_keeps_every_word_and_splits_at_every_delimiter(t in text()) {
                let doc = Document::parse(&t);
                prop_assert_eq!(words(&doc.render()), words(&t));
                for i in 0..doc.sentence_count().saturating_sub(1) {
                    let id = doc.sentences[i].id;
                    let last_word = doc.words(id).pop().unwrap_or_default();
                    prop_assert!(last_word.ends_with(DELIMITERS), "sentence {} does not end a sentence", i);
                }
            }

            #[test]
            fn a_write_inserts_exactly_its_words_where_asked(
                t in text(),
                content in "[a-z.!? ]{0,40}",
                sentence_pick in any::<prop::sample::Index>(),
                word_pick in any::<prop::sample::Index>(),
            ) {
                let mut doc = Document::parse(&t);
                let count = doc.sentence_count();
                // The document's own words, sentence by sentence ("a.b" is two sentences).
                let mut expected: Vec<String> = (0..count).flat_map(|i| doc.words(doc.sentences[i].id)).collect();
                let index = if count == 0 { 0 } else { sentence_pick.index(count) };
                let before_sentence: usize = (0..index).map(|i| doc.words(doc.sentences[i].id).len()).sum();
                let id = doc.open(index as i64).unwrap();
                let mut working = doc.words(id);
                let at = word_pick.index(working.len() + 1);
                insert_words(&mut working, at as i64, &content).unwrap();
                doc.replace(id, &working, |_| false);
                let position = before_sentence + at;
                expected.splice(position..position, words(&content));
                // Whitespace aside, the text is exactly the old one with the words inserted.
                let squeeze = |s: &str| s.split_whitespace().collect::<String>();
                prop_assert_eq!(squeeze(&doc.render()), expected.concat());
            }

            #[test]
            fn out_of_range_indices_are_refused_and_change_nothing(t in text(), extra in 1i64..5, content in "[a-z ]{0,10}") {
                let mut doc = Document::parse(&t);
                let rendered = doc.render();
                let count = doc.sentence_count() as i64;
                prop_assert_eq!(doc.open(count + extra).unwrap_err().code, ErrorCode::InvalidIndex);
                prop_assert_eq!(doc.open(-extra).unwrap_err().code, ErrorCode::InvalidIndex);
                let mut w = vec!["a".to_owned()];
                prop_assert_eq!(insert_words(&mut w, 1 + extra, &content).unwrap_err().code, ErrorCode::InvalidIndex);
                prop_assert_eq!(doc.render(), rendered);
            }
        }
    }
}
