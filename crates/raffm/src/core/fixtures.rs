//! Small real inputs for tests and examples: a tiny BERT with its own WordPiece
//! vocabulary and a labelled review set it can read; a tiny DINOv2 and a folder of
//! labelled images. Generated, seeded, no downloads.

use std::path::{Path, PathBuf};

use crate::core::checkpoint::Checkpoint;
use crate::models::families::bert::{tiny_model, Variant};

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

/// Writes a tiny random DINOv2 (2 layers, hidden 24, 4 heads, FFN 48, 16 px images of
/// 4 px patches, LayerScale, no classification head) into `dir`, and returns `dir`.
pub fn tiny_vision_model(dir: &Path) -> PathBuf {
    use crate::models::families::vit::{tiny_config, Variant as VitVariant};
    let config = tiny_config(VitVariant::Dinov2, 2, 24, 4, 48, 16, 4);
    Checkpoint::random(&crate::ModelConfig::Vit(config), 1)
        .save(dir)
        .expect("fixture model is written");
    dir.to_path_buf()
}

/// Writes an image folder (`root/<class>/<i>.png`) of `per_class` 20 x 20 images for each
/// of three classes a tiny model can tell apart: reddish, greenish and bluish, shaded.
pub fn tiny_image_folder(root: &Path, per_class: usize) {
    let classes = [
        ("blue", [20u8, 40, 220]),
        ("green", [30, 200, 40]),
        ("red", [220, 30, 20]),
    ];
    for (class, colour) in classes {
        std::fs::create_dir_all(root.join(class)).expect("fixture folder is made");
        for i in 0..per_class {
            let image = image::RgbImage::from_fn(20, 20, |x, y| {
                let shade = ((x + y) as usize + 3 * i) % 30;
                image::Rgb(colour.map(|c| c.saturating_add(shade as u8)))
            });
            image
                .save(root.join(class).join(format!("{i}.png")))
                .expect("fixture image is written");
        }
    }
}

/// Writes a CIFAR-10 binary batch of one image per label in `labels`. Image `i`'s pixel at
/// column x, row y is red `i`, green `x`, blue `y`, so a reader's plane order can be checked.
pub fn tiny_cifar10_batch(path: &Path, labels: &[u8]) {
    let mut bytes = Vec::with_capacity(labels.len() * 3073);
    for (i, &label) in labels.iter().enumerate() {
        bytes.push(label);
        bytes.extend(std::iter::repeat_n(i as u8, 1024)); // red plane
        bytes.extend((0..1024).map(|at| (at % 32) as u8)); // green: the column
        bytes.extend((0..1024).map(|at| (at / 32) as u8)); // blue: the row
    }
    std::fs::write(path, bytes).expect("fixture batch is written");
}

/// Writes IDX images (`n` of `rows` x `cols`, image `i` filled with gray level `i`) and their
/// labels (`labels`, one per image) to `images` and `labels_path`.
pub fn tiny_idx(images: &Path, labels_path: &Path, rows: u32, cols: u32, labels: &[u8]) {
    let n = labels.len() as u32;
    let mut bytes = vec![0, 0, 8, 3];
    for dim in [n, rows, cols] {
        bytes.extend(dim.to_be_bytes());
    }
    for i in 0..labels.len() {
        bytes.extend(std::iter::repeat_n(i as u8, (rows * cols) as usize));
    }
    std::fs::write(images, bytes).expect("fixture images are written");
    let mut label_bytes = vec![0, 0, 8, 1];
    label_bytes.extend(n.to_be_bytes());
    label_bytes.extend(labels);
    std::fs::write(labels_path, label_bytes).expect("fixture labels are written");
}
