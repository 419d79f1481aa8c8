//! Small real inputs for tests and examples: a tiny BERT with its own WordPiece
//! vocabulary, and a labelled review set it can read. Generated, seeded, no downloads.

use std::path::{Path, PathBuf};

use crate::checkpoint::Checkpoint;
use crate::families::bert::{tiny_model, Variant};

/// The words of the fixture vocabulary: four positive, four negative, four filler.
pub const WORDS: [&str; 12] = [
    "good", "great", "fine", "fun", "bad", "awful", "dull", "poor", "film", "movie", "the", "a",
];

/// Writes a tiny random BERT (2 layers, hidden 32, 4 heads, FFN 64, no classification
/// head) with a 64-token `vocab.txt` into `dir`, and returns `dir`.
pub fn tiny_text_model(dir: &Path) -> PathBuf {
    Checkpoint::random(&tiny_model(Variant::Bert, 2, 32, 4, 64, false), 1)
        .save(dir)
        .expect("fixture model is written");
    write_vocabulary(dir);
    dir.to_path_buf()
}

/// Writes the fixture's 64-token `vocab.txt` into a model folder (of vocabulary 64).
pub fn write_vocabulary(dir: &Path) {
    let mut vocab: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .map(String::from)
        .to_vec();
    vocab.extend(WORDS.map(String::from));
    vocab.extend((vocab.len()..64).map(|i| format!("[unused{i}]")));
    std::fs::write(dir.join("vocab.txt"), vocab.join("\n") + "\n")
        .expect("fixture vocabulary is written");
}

/// Writes `n` one-sentence reviews as JSONL (label 1 for the positive words, alternating).
pub fn tiny_reviews(path: &Path, n: usize) {
    let lines: Vec<String> = (0..n)
        .map(|i| {
            let positive = i % 2 == 0;
            let word = if positive {
                WORDS[i % 4]
            } else {
                WORDS[4 + i % 4]
            };
            format!(
                "{{\"text\": \"the {} was {word}\", \"label\": {}}}",
                WORDS[8 + i % 2],
                positive as u8
            )
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").expect("fixture reviews are written");
}
