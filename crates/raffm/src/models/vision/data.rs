//! Image datasets for the vision family: where the images come from, and how they become
//! the model's input.
//!
//! Sources: CIFAR-10 as BIG-bench stores it (`cifar10_classification/base64/task.json`:
//! base64 PNGs, the label the `target_scores` key with value 1), CIFAR-10's binary batches
//! (`data_batch_N.bin`, `test_batch.bin`: a label byte, then 32 x 32 red, green and blue
//! planes, per image), a folder of images per class (the ImageFolder layout: `root/<class>/<image>.png|jpg`, classes in sorted order),
//! and IDX files (Fashion-MNIST). PNG and JPEG decode through the `image` crate; grayscale
//! becomes RGB. Every error names the file (and the example) it is about.
//!
//! Input: resized to the model's input size (bilinear), scaled to [0, 1] and normalised
//! with the preprocessor's mean and std, `[channels, height, width]`. Training may add
//! seeded augmentation: a random crop of the image padded by an eighth of its size on
//! each side, and a horizontal flip half of the time.

use std::path::{Path, PathBuf};

use base64::Engine;
use image::imageops::FilterType;
use image::RgbImage;

use crate::core::error::{Error, Result};
use crate::core::rng::SplitMix64;

/// Labelled images in memory (CIFAR-10's 10,000 are 30 MB as RGB bytes).
#[derive(Debug, Clone)]
pub struct LabeledImages {
    pub images: Vec<RgbImage>,
    pub labels: Vec<usize>,
    pub classes: Vec<String>,
}

/// Decodes a PNG or JPEG; grayscale and alpha become plain RGB. `what` names the image in
/// errors.
pub fn decode(bytes: &[u8], what: &Path) -> Result<RgbImage> {
    let image = image::load_from_memory(bytes)
        .map_err(|e| Error::format(what, format!("not a readable PNG or JPEG image ({e})")))?;
    Ok(image.to_rgb8())
}

/// CIFAR-10 from BIG-bench's `task.json`. Every image must be `size x size` (32 for
/// CIFAR-10); the classes are the `target_scores` keys in the file's order.
pub fn cifar10_bigbench(path: &Path, size: u32) -> Result<LabeledImages> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let task: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::format(path, format!("invalid JSON: {e}")))?;
    let examples = task["examples"].as_array().ok_or_else(|| {
        Error::format(path, "no `examples` list (is this a BIG-bench task.json?)")
    })?;
    let mut out = LabeledImages {
        images: Vec::with_capacity(examples.len()),
        labels: Vec::with_capacity(examples.len()),
        classes: Vec::new(),
    };
    for (i, example) in examples.iter().enumerate() {
        let at = |m: String| Error::format(path, format!("example {i}: {m}"));
        let scores = example["target_scores"]
            .as_object()
            .ok_or_else(|| at("no `target_scores`".into()))?;
        if out.classes.is_empty() {
            out.classes = scores.keys().cloned().collect();
        }
        if scores.keys().ne(out.classes.iter()) {
            return Err(at("its classes differ from the first example's".into()));
        }
        let hot: Vec<usize> = scores
            .values()
            .enumerate()
            .filter(|(_, v)| v.as_f64() == Some(1.0))
            .map(|(k, _)| k)
            .collect();
        let [label] = hot[..] else {
            return Err(at(format!(
                "{} classes have score 1, expected one",
                hot.len()
            )));
        };
        let encoded = example["input"]
            .as_str()
            .ok_or_else(|| at("no base64 `input`".into()))?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| at(format!("invalid base64: {e}")))?;
        let image = decode(&png, &path.join(format!("example-{i}")))
            .map_err(|_| at("not a readable PNG".into()))?;
        if image.dimensions() != (size, size) {
            let (w, h) = image.dimensions();
            return Err(at(format!("the image is {w}x{h}, expected {size}x{size}")));
        }
        out.images.push(image);
        out.labels.push(label);
    }
    Ok(out)
}

/// CIFAR-10's class names, in label order, for batches without `batches.meta.txt`.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Bytes of one image in a CIFAR-10 binary batch: its label, then its three planes.
const CIFAR10_RECORD: usize = 1 + 3 * 32 * 32;

/// CIFAR-10's binary batches: one batch file (`test_batch.bin`, say), or a folder, read as
/// its training batches `data_batch_1.bin` to `data_batch_5.bin` in order (those present,
/// at least the first). Class names come from `batches.meta.txt` beside the batches when
/// it is there.
pub fn cifar10_binary(path: &Path) -> Result<LabeledImages> {
    let (folder, batches) = if path.is_dir() {
        let batches: Vec<PathBuf> = (1..=5)
            .map(|i| path.join(format!("data_batch_{i}.bin")))
            .take_while(|p| p.is_file())
            .collect();
        if batches.is_empty() {
            return Err(Error::format(
                path,
                "a CIFAR-10 folder needs data_batch_1.bin (and up to data_batch_5.bin)",
            ));
        }
        (path, batches)
    } else {
        (
            path.parent().unwrap_or(Path::new("")),
            vec![path.to_path_buf()],
        )
    };
    let classes = cifar10_class_names(&folder.join("batches.meta.txt"))?;
    let mut out = LabeledImages {
        images: Vec::new(),
        labels: Vec::new(),
        classes,
    };
    for batch in &batches {
        let bytes = std::fs::read(batch).map_err(|e| Error::io(batch, e))?;
        if bytes.is_empty() || bytes.len() % CIFAR10_RECORD != 0 {
            return Err(Error::format(
                batch,
                format!(
                    "{} bytes is not a whole number of {CIFAR10_RECORD}-byte CIFAR-10 records",
                    bytes.len()
                ),
            ));
        }
        for (i, record) in bytes.chunks_exact(CIFAR10_RECORD).enumerate() {
            let label = record[0] as usize;
            if label >= out.classes.len() {
                return Err(Error::format(
                    batch,
                    format!(
                        "image {i} has label {label}; there are {} classes",
                        out.classes.len()
                    ),
                ));
            }
            let planes = &record[1..]; // [channel, row, col]
            let image = RgbImage::from_fn(32, 32, |x, y| {
                let at = (y * 32 + x) as usize;
                image::Rgb([planes[at], planes[1024 + at], planes[2048 + at]])
            });
            out.images.push(image);
            out.labels.push(label);
        }
    }
    Ok(out)
}

/// `batches.meta.txt`: one class name per line; CIFAR-10's own names when it is absent.
fn cifar10_class_names(meta: &Path) -> Result<Vec<String>> {
    if !meta.is_file() {
        return Ok(CIFAR10_CLASSES.map(String::from).to_vec());
    }
    let text = std::fs::read_to_string(meta).map_err(|e| Error::io(meta, e))?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.is_empty() || names.len() > 256 {
        return Err(Error::format(
            meta,
            format!(
                "expected 1 to 256 class names, one per line, found {}",
                names.len()
            ),
        ));
    }
    Ok(names)
}

/// A folder with one subfolder of images per class (PNG or JPEG; other files are an
/// error, so that nothing is silently left out). Classes and files in sorted order.
pub fn image_folder(root: &Path) -> Result<LabeledImages> {
    let list = |dir: &Path| -> Result<Vec<PathBuf>> {
        let mut paths = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .map(|entry| entry.map(|e| e.path()).map_err(|e| Error::io(dir, e)))
            .collect::<Result<Vec<_>>>()?;
        paths.sort();
        Ok(paths)
    };
    let mut out = LabeledImages {
        images: Vec::new(),
        labels: Vec::new(),
        classes: Vec::new(),
    };
    for class_dir in list(root)?.into_iter().filter(|p| p.is_dir()) {
        let label = out.classes.len();
        out.classes.push(
            class_dir
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
        );
        let files = list(&class_dir)?;
        if files.is_empty() {
            return Err(Error::format(&class_dir, "a class folder without images"));
        }
        for file in files {
            let bytes = std::fs::read(&file).map_err(|e| Error::io(&file, e))?;
            out.images.push(decode(&bytes, &file)?);
            out.labels.push(label);
        }
    }
    if out.classes.is_empty() {
        return Err(Error::format(
            root,
            "no class folders (expected root/<class>/<image>)",
        ));
    }
    Ok(out)
}

/// How an image becomes the model's input.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocess {
    /// Side of the square input, in pixels.
    pub size: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// The preprocessor file of an HF vision model's folder.
pub const PREPROCESSOR_FILE: &str = "preprocessor_config.json";

impl Preprocess {
    /// Reads the folder's `preprocessor_config.json`: mean and std (ImageNet's where it has
    /// none) and the input size (`crop_size` when it center-crops, else `size`), which
    /// `size` overrides. Without a size from either, an error.
    pub fn from_model_dir(dir: &Path, size: Option<u32>) -> Result<Self> {
        let path = dir.join(PREPROCESSOR_FILE);
        let (mut mean, mut std) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
        let mut stored_size = None;
        if path.is_file() {
            let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            let value: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|e| Error::format(&path, format!("invalid JSON: {e}")))?;
            let three = |key: &str| -> Result<Option<[f32; 3]>> {
                let Some(v) = value.get(key) else {
                    return Ok(None);
                };
                let v: Vec<f32> = v
                    .as_array()
                    .filter(|a| a.len() == 3)
                    .and_then(|a| a.iter().map(|x| x.as_f64().map(|x| x as f32)).collect())
                    .ok_or_else(|| {
                        Error::format(&path, format!("`{key}` must be three numbers"))
                    })?;
                Ok(Some([v[0], v[1], v[2]]))
            };
            mean = three("image_mean")?.unwrap_or(mean);
            std = three("image_std")?.unwrap_or(std);
            let crops = value["do_center_crop"].as_bool().unwrap_or(false);
            let side = if crops { "crop_size" } else { "size" };
            stored_size = ["height", "shortest_edge"]
                .iter()
                .find_map(|k| value[side][k].as_u64())
                .map(|s| s as u32);
        }
        if std.iter().any(|s| s.is_nan() || *s <= 0.0) {
            return Err(Error::format(&path, "`image_std` must be positive"));
        }
        let size = size
            .or(stored_size)
            .ok_or_else(|| Error::format(&path, "gives no input size (`size.height`); give one"))?;
        if size == 0 {
            return Err(Error::format(&path, "the input size must be positive"));
        }
        Ok(Self { size, mean, std })
    }

    /// As `preprocessor_config.json` (HF's `BitImageProcessor` fields): a square resize
    /// to `size` (bilinear, PIL's 2), no crop, then the normalisation.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "image_processor_type": "BitImageProcessor",
            "do_resize": true,
            "size": {"height": self.size, "width": self.size},
            "resample": 2,
            "do_center_crop": false,
            "do_rescale": true,
            "rescale_factor": 1.0 / 255.0,
            "do_normalize": true,
            "image_mean": self.mean,
            "image_std": self.std,
            "do_convert_rgb": true,
        })
    }

    /// One image as normalised `[3, size, size]` values; with `augment`, a seeded random
    /// padded crop and flip first.
    pub fn pixels(&self, image: &RgbImage, augment: Option<&mut SplitMix64>) -> Vec<f32> {
        // Copies only where something changes the image.
        let augmented = augment.map(|rng| crop_and_flip(image, rng));
        let image = augmented.as_ref().unwrap_or(image);
        let resized;
        let input = if image.dimensions() == (self.size, self.size) {
            image
        } else {
            resized = image::imageops::resize(image, self.size, self.size, FilterType::Triangle);
            &resized
        };
        let n = (self.size * self.size) as usize;
        let mut out = vec![0.0; 3 * n];
        for (i, pixel) in input.pixels().enumerate() {
            for c in 0..3 {
                out[c * n + i] = (pixel[c] as f32 / 255.0 - self.mean[c]) / self.std[c];
            }
        }
        out
    }

    /// A batch, `[batch, 3, size, size]` flattened.
    pub fn batch(&self, images: &[&RgbImage], mut augment: Option<&mut SplitMix64>) -> Vec<f32> {
        images
            .iter()
            .flat_map(|image| self.pixels(image, augment.as_deref_mut()))
            .collect()
    }
}

/// The image padded by an eighth of its size on each side (zeros), cropped back to its
/// size at a random offset, and flipped left-right half of the time.
fn crop_and_flip(image: &RgbImage, rng: &mut SplitMix64) -> RgbImage {
    let (w, h) = image.dimensions();
    let pad = (w.min(h) / 8).max(1);
    let dx = (rng.next_u64() % (2 * pad as u64 + 1)) as i64 - pad as i64;
    let dy = (rng.next_u64() % (2 * pad as u64 + 1)) as i64 - pad as i64;
    let flip = rng.next_u64() % 2 == 1;
    RgbImage::from_fn(w, h, |x, y| {
        let sx = x as i64 + dx;
        let sy = y as i64 + dy;
        if sx < 0 || sy < 0 || sx >= w as i64 || sy >= h as i64 {
            return image::Rgb([0, 0, 0]);
        }
        let sx = if flip { w as i64 - 1 - sx } else { sx };
        *image.get_pixel(sx as u32, sy as u32)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(image: &image::DynamicImage) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        image.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn rgb(w: u32, h: u32, seed: u8) -> image::DynamicImage {
        image::DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([x as u8 * 7 + seed, y as u8 * 5, seed])
        }))
    }

    fn task(dir: &Path, images: &[Vec<u8>], labels: &[usize]) -> PathBuf {
        let classes = ["cat", "dog"];
        let examples: Vec<serde_json::Value> = images
            .iter()
            .zip(labels)
            .map(|(bytes, &label)| {
                let scores: serde_json::Map<String, serde_json::Value> = classes
                    .iter()
                    .enumerate()
                    .map(|(k, c)| (c.to_string(), serde_json::json!(i32::from(k == label))))
                    .collect();
                serde_json::json!({
                    "input": base64::engine::general_purpose::STANDARD.encode(bytes),
                    "target_scores": scores,
                })
            })
            .collect();
        let path = dir.join("task.json");
        std::fs::write(&path, serde_json::json!({"examples": examples}).to_string()).unwrap();
        path
    }

    #[test]
    fn cifar_style_tasks_load_and_bad_images_name_their_example() {
        let dir = tempfile::tempdir().unwrap();
        let gray = image::DynamicImage::ImageLuma8(image::GrayImage::from_fn(4, 4, |x, _| {
            image::Luma([x as u8 * 60])
        }));
        let good = [png(&rgb(4, 4, 1)), png(&gray)];
        let loaded = cifar10_bigbench(&task(dir.path(), &good, &[1, 0]), 4).unwrap();
        assert_eq!(loaded.classes, ["cat", "dog"]);
        assert_eq!(loaded.labels, [1, 0]);
        // Grayscale becomes RGB with equal channels.
        let p = loaded.images[1].get_pixel(2, 0);
        assert_eq!((p[0], p[1], p[2]), (120, 120, 120));

        let mut corrupt = png(&rgb(4, 4, 2));
        corrupt.truncate(corrupt.len() / 2);
        let err = cifar10_bigbench(&task(dir.path(), &[good[0].clone(), corrupt], &[0, 1]), 4)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("task.json") && err.contains("example 1") && err.contains("PNG"),
            "{err}"
        );
        let err = cifar10_bigbench(&task(dir.path(), &[png(&rgb(5, 4, 3))], &[0]), 4)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("example 0") && err.contains("5x4, expected 4x4"),
            "{err}"
        );
    }

    #[test]
    fn image_folders_load_by_class_and_refuse_empty_classes_and_corrupt_files() {
        let dir = tempfile::tempdir().unwrap();
        for (class, n) in [("b_dog", 2), ("a_cat", 1)] {
            std::fs::create_dir(dir.path().join(class)).unwrap();
            for i in 0..n {
                std::fs::write(
                    dir.path().join(class).join(format!("{i}.png")),
                    png(&rgb(6, 3, i)),
                )
                .unwrap();
            }
        }
        let jpeg = {
            let mut out = std::io::Cursor::new(Vec::new());
            rgb(6, 3, 9)
                .write_to(&mut out, image::ImageFormat::Jpeg)
                .unwrap();
            out.into_inner()
        };
        std::fs::write(dir.path().join("a_cat").join("9.jpg"), jpeg).unwrap();
        let loaded = image_folder(dir.path()).unwrap();
        assert_eq!(loaded.classes, ["a_cat", "b_dog"]);
        assert_eq!(loaded.labels, [0, 0, 1, 1]);

        std::fs::write(
            dir.path().join("b_dog").join("bad.png"),
            b"\x89PNG\r\n\x1a\nnot really",
        )
        .unwrap();
        let err = image_folder(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("bad.png") && err.contains("not a readable"),
            "{err}"
        );
        std::fs::remove_file(dir.path().join("b_dog").join("bad.png")).unwrap();
        std::fs::create_dir(dir.path().join("c_empty")).unwrap();
        let err = image_folder(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("c_empty") && err.contains("without images"),
            "{err}"
        );
    }

    #[test]
    fn preprocessing_normalises_resizes_and_augments_with_a_seed() {
        let p = Preprocess {
            size: 4,
            mean: [0.5, 0.5, 0.5],
            std: [0.5, 0.25, 0.5],
        };
        let white = RgbImage::from_pixel(4, 4, image::Rgb([255, 255, 0]));
        let x = p.pixels(&white, None);
        assert_eq!(x.len(), 48);
        assert_eq!((x[0], x[16], x[32]), (1.0, 2.0, -1.0));
        // A larger image is resized to the input size.
        assert_eq!(p.pixels(&RgbImage::new(9, 7), None).len(), 48);
        // Augmentation is seeded: the same seed gives the same batch, another seed another.
        let image = rgb(8, 8, 3).to_rgb8();
        let aug = |seed| p.batch(&[&image, &image], Some(&mut SplitMix64::new(seed)));
        assert_eq!(aug(1), aug(1));
        assert_ne!(aug(1), aug(2));
        assert_ne!(aug(1), p.batch(&[&image, &image], None));
    }
}
