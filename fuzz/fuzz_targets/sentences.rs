//! Any text through the sentence engine, and a WRITE on it: the words are
//! kept (whitespace aside) and indices out of range are refused.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ss::document::{insert_words, Document};

fuzz_target!(|input: (String, String, u8, u8)| {
    let (text, content, sentence, word) = input;
    let mut doc = Document::parse(&text);
    let squeeze = |s: &str| s.split_whitespace().collect::<String>();
    assert_eq!(squeeze(&doc.render()), squeeze(&text));
    let Ok(id) = doc.open(i64::from(sentence)) else { return };
    let mut words = doc.words(id);
    if insert_words(&mut words, i64::from(word), &content).is_ok() {
        doc.replace(id, &words, |_| false);
        let _ = doc.render();
    }
});
