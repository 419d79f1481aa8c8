//! Client vocabularies: a client receives only the token-embedding rows of the tokens its
//! own data uses, and a tokenizer that holds just those tokens under new ids.
//!
//! WordPiece splits a word by greedy longest match. Every piece it picks for a client's
//! own text is kept, and no longer match existed in the full vocabulary, so the reduced
//! tokenizer splits the client's text exactly as the full one does; a word the client never
//! had may fall back to `[UNK]`. The token ids the reduced model sees are the full ids
//! mapped through the kept list, so on the client's data it computes exactly what the
//! full-vocabulary model computes.
//!
//! The kept set tells whoever extracts the sub-model which tokens occur in the client's
//! data. [`with_decoys`] pads it with random ids from a seeded stream, so that presence in
//! the set is no proof of use.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::core::error::{Error, Result};
use crate::core::rng::SplitMix64;
use crate::data::tokenizer::TextTokenizer;
use crate::data::{Dataset, Input};

/// Tokens a tokenizer treats as special whatever the data, by their usual spellings.
const SPECIAL_SPELLINGS: [&str; 10] = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<s>", "</s>", "<pad>", "<unk>", "<mask>",
];

/// Which vocabulary a client's sub-model gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VocabularyMode {
    /// Every token of the global model.
    #[default]
    Full,
    /// The tokens of the client's own data (and the special tokens).
    Client,
}

impl std::str::FromStr for VocabularyMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "full" => Ok(VocabularyMode::Full),
            "client" => Ok(VocabularyMode::Client),
            _ => Err(format!(
                "unknown vocabulary `{s}` (expected full or client)"
            )),
        }
    }
}

/// The random stream of a client's decoys. It depends on the client but not on the
/// round: decoys that changed every round would be told apart from the real tokens by
/// intersecting the rounds' sets.
pub fn decoy_stream(seed: u64, client: &str) -> SplitMix64 {
    SplitMix64::derive(seed, &format!("vocabulary-decoys/{client}"))
}

/// A client's vocabulary: the global token ids it keeps, in ascending order (new id `i`
/// is global id `kept[i]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientVocabulary {
    pub kept: Vec<usize>,
    /// Distinct tokens of the client's data, special tokens included.
    pub from_data: usize,
    /// Random ids added to hide which tokens the data uses.
    pub decoys: usize,
}

/// The token ids of the examples `ids` of `dataset` (whole, not truncated) and the
/// tokenizer's special tokens. A tokenizer with more tokens than the model has embedding
/// rows (`model_vocab`) does not belong to the model: an error.
pub fn data_tokens(
    tokenizer: &TextTokenizer,
    dataset: &Dataset,
    ids: &[usize],
    model_vocab: usize,
) -> Result<BTreeSet<usize>> {
    if tokenizer.vocab_size() > model_vocab {
        return Err(Error::format(
            tokenizer.source(),
            format!(
                "the tokenizer has {} tokens but the model's embedding has {model_vocab} rows: it is not this model's tokenizer",
                tokenizer.vocab_size()
            ),
        ));
    }
    let mut tokens: BTreeSet<usize> = tokenizer
        .special_ids(&SPECIAL_SPELLINGS)
        .into_iter()
        .map(|id| id as usize)
        .collect();
    let mut inputs: Vec<tokenizers::EncodeInput> = Vec::with_capacity(ids.len());
    for &id in ids {
        let example = dataset
            .get(id)
            .ok_or_else(|| Error::Invalid(format!("example id {id} is not in the dataset")))?;
        inputs.push(match &example.input {
            Input::Text(t) => t.as_str().into(),
            Input::Pair(a, b) => (a.as_str(), b.as_str()).into(),
            Input::Image(_) => {
                return Err(Error::Invalid(
                    "a client vocabulary needs text examples".into(),
                ))
            }
        });
    }
    for row in tokenizer.encode_untruncated(inputs)? {
        tokens.extend(row.into_iter().map(|id| id as usize));
    }
    Ok(tokens)
}

/// The client's vocabulary: its tokens plus `decoys` ids drawn uniformly from the rest of
/// a vocabulary of `vocab_size`, from the stream `rng` (as many as there are, at most).
pub fn with_decoys(
    tokens: &BTreeSet<usize>,
    vocab_size: usize,
    decoys: usize,
    rng: &mut SplitMix64,
) -> ClientVocabulary {
    let mut kept = tokens.clone();
    let target = (tokens.len() + decoys).min(vocab_size);
    while kept.len() < target {
        kept.insert(rng.below(vocab_size));
    }
    ClientVocabulary {
        decoys: kept.len() - tokens.len(),
        from_data: tokens.len(),
        kept: kept.into_iter().collect(),
    }
}

/// Checks a kept-token list against a vocabulary of `vocab_size`: ascending, distinct, in
/// range, not empty.
pub fn check_kept(kept: &[usize], vocab_size: usize) -> Result<()> {
    if kept.is_empty() {
        return Err(Error::Invalid("a client vocabulary keeps no token".into()));
    }
    if let Some(&bad) = kept.iter().find(|&&id| id >= vocab_size) {
        return Err(Error::Invalid(format!(
            "token id {bad} is outside the vocabulary of {vocab_size} tokens"
        )));
    }
    if kept.windows(2).any(|w| w[0] >= w[1]) {
        return Err(Error::Invalid(
            "a client vocabulary must list distinct token ids in ascending order".into(),
        ));
    }
    Ok(())
}

/// The tokenizer files of `dir` reduced to the tokens `kept` (new id `i` for global id
/// `kept[i]`): `tokenizer.json` (a WordPiece model, its special and added tokens, its
/// post-processor and padding) and `vocab.txt`, where the folder has them.
pub fn reduced_tokenizer_files(dir: &Path, kept: &[usize]) -> Result<BTreeMap<String, Vec<u8>>> {
    let new_id: BTreeMap<usize, usize> = kept.iter().enumerate().map(|(i, &g)| (g, i)).collect();
    let mut files = BTreeMap::new();
    let json_path = dir.join("tokenizer.json");
    if json_path.is_file() {
        let text = std::fs::read_to_string(&json_path).map_err(|e| Error::io(&json_path, e))?;
        let mut value: Value = serde_json::from_str(&text)
            .map_err(|e| Error::format(&json_path, format!("invalid JSON: {e}")))?;
        reduce_tokenizer_json(&mut value, &new_id).map_err(|m| Error::format(&json_path, m))?;
        let text = serde_json::to_string_pretty(&value).expect("JSON serializes");
        files.insert("tokenizer.json".to_string(), text.into_bytes());
    }
    let vocab_path = dir.join("vocab.txt");
    if vocab_path.is_file() {
        let text = std::fs::read_to_string(&vocab_path).map_err(|e| Error::io(&vocab_path, e))?;
        let lines: Vec<&str> = text.lines().collect();
        let mut out = String::new();
        for &g in kept {
            let token = lines.get(g).ok_or_else(|| {
                Error::format(
                    &vocab_path,
                    format!("has {} tokens, no id {g}", lines.len()),
                )
            })?;
            out.push_str(token);
            out.push('\n');
        }
        files.insert("vocab.txt".to_string(), out.into_bytes());
    }
    if files.is_empty() {
        return Err(Error::format(
            dir,
            "no tokenizer.json or vocab.txt to reduce",
        ));
    }
    Ok(files)
}

/// Reduces a `tokenizer.json` in place; the error says what it could not map.
fn reduce_tokenizer_json(
    value: &mut Value,
    new_id: &BTreeMap<usize, usize>,
) -> std::result::Result<(), String> {
    let remap = |id: &Value| -> std::result::Result<Value, String> {
        let old = id.as_u64().ok_or("a token id is not a number")? as usize;
        new_id
            .get(&old)
            .map(|&n| Value::from(n))
            .ok_or_else(|| format!("token id {old} is used by the tokenizer but not kept"))
    };
    let model = value
        .get_mut("model")
        .and_then(Value::as_object_mut)
        .ok_or("no `model` section")?;
    let kind = model.get("type").and_then(Value::as_str).unwrap_or("");
    if kind != "WordPiece" {
        return Err(format!(
            "client vocabularies need a WordPiece tokenizer, and this one is `{kind}`"
        ));
    }
    let vocab = model
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or("the WordPiece model has no vocab")?;
    let reduced: serde_json::Map<String, Value> = vocab
        .iter()
        .filter_map(|(token, id)| {
            let n = new_id.get(&(id.as_u64()? as usize))?;
            Some((token.clone(), Value::from(*n)))
        })
        .collect();
    // In id order, as HF writes it.
    let mut entries: Vec<(String, Value)> = reduced.into_iter().collect();
    entries.sort_by_key(|(_, id)| id.as_u64());
    model.insert("vocab".into(), Value::Object(entries.into_iter().collect()));
    if let Some(added) = value.get_mut("added_tokens").and_then(Value::as_array_mut) {
        added.retain(|t| {
            t.get("id")
                .and_then(Value::as_u64)
                .is_some_and(|id| new_id.contains_key(&(id as usize)))
        });
        for t in added.iter_mut() {
            let id = remap(&t["id"])?;
            t["id"] = id;
        }
    }
    if let Some(processor) = value.get_mut("post_processor") {
        remap_processor(processor, &remap)?;
    }
    if let Some(padding) = value.get_mut("padding").and_then(Value::as_object_mut) {
        if let Some(id) = padding.get("pad_id") {
            let id = remap(id)?;
            padding.insert("pad_id".into(), id);
        }
    }
    Ok(())
}

/// Remaps the special-token ids of a post-processor: TemplateProcessing's
/// `special_tokens.*.ids`, BertProcessing's and RobertaProcessing's `cls`/`sep`, and the
/// processors of a Sequence.
fn remap_processor(
    processor: &mut Value,
    remap: &dyn Fn(&Value) -> std::result::Result<Value, String>,
) -> std::result::Result<(), String> {
    if let Some(specials) = processor
        .get_mut("special_tokens")
        .and_then(Value::as_object_mut)
    {
        for special in specials.values_mut() {
            if let Some(ids) = special.get_mut("ids").and_then(Value::as_array_mut) {
                for id in ids.iter_mut() {
                    *id = remap(id)?;
                }
            }
        }
    }
    for key in ["cls", "sep"] {
        if let Some(pair) = processor.get_mut(key).and_then(Value::as_array_mut) {
            if let Some(id) = pair.get_mut(1) {
                *id = remap(id)?;
            }
        }
    }
    if let Some(inner) = processor
        .get_mut("processors")
        .and_then(Value::as_array_mut)
    {
        for p in inner {
            remap_processor(p, remap)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoys_are_seeded_distinct_and_bounded() {
        let tokens: BTreeSet<usize> = [0, 5, 9].into();
        let a = with_decoys(&tokens, 100, 10, &mut SplitMix64::new(3));
        assert_eq!(a, with_decoys(&tokens, 100, 10, &mut SplitMix64::new(3)));
        assert_eq!((a.kept.len(), a.decoys, a.from_data), (13, 10, 3));
        assert!(tokens.iter().all(|t| a.kept.contains(t)));
        check_kept(&a.kept, 100).unwrap();
        let all = with_decoys(&tokens, 12, 100, &mut SplitMix64::new(3));
        assert_eq!(all.kept, (0..12).collect::<Vec<_>>());
    }

    #[test]
    fn bad_kept_lists_are_errors() {
        let e = check_kept(&[1, 2, 30522], 30522).unwrap_err().to_string();
        assert!(
            e.contains("token id 30522") && e.contains("30522 tokens"),
            "{e}"
        );
        assert!(check_kept(&[3, 2], 10).is_err());
        assert!(check_kept(&[], 10).is_err());
    }
}
