//! Tokenization with the model's own files: `tokenizer.json` when the folder has one,
//! otherwise a BERT WordPiece tokenizer built from `vocab.txt`.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{EncodeInput, Tokenizer, TruncationParams};

use crate::core::error::{Error, Result};
use crate::models::families::bert::model::BatchTensors;

pub struct TextTokenizer {
    inner: Tokenizer,
    source: PathBuf,
}

/// A padded batch on the host: row-major `[batch, seq]` ids, token types and mask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedBatch {
    pub batch: usize,
    pub seq: usize,
    pub input_ids: Vec<i64>,
    pub token_type_ids: Vec<i64>,
    pub attention_mask: Vec<i64>,
}

impl EncodedBatch {
    pub fn to_tensors<B: Backend>(&self, device: &B::Device) -> BatchTensors<B> {
        let make = |v: &Vec<i64>| {
            Tensor::<B, 2, Int>::from_data(
                TensorData::new(v.clone(), [self.batch, self.seq]),
                device,
            )
        };
        BatchTensors {
            input_ids: make(&self.input_ids),
            token_type_ids: make(&self.token_type_ids),
            attention_mask: make(&self.attention_mask),
        }
    }

    /// Token ids of row `i` without padding.
    pub fn row_ids(&self, i: usize) -> Vec<i64> {
        let row = i * self.seq..(i + 1) * self.seq;
        self.input_ids[row.clone()]
            .iter()
            .zip(&self.attention_mask[row])
            .filter(|(_, m)| **m == 1)
            .map(|(id, _)| *id)
            .collect()
    }
}

impl TextTokenizer {
    /// Loads the tokenizer of a checkpoint folder.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        let vocab = dir.join("vocab.txt");
        let inner = if json.is_file() {
            Tokenizer::from_file(&json)
                .map_err(|e| Error::format(&json, format!("cannot load tokenizer: {e}")))?
        } else if vocab.is_file() {
            Self::wordpiece(dir, &vocab)?
        } else {
            return Err(Error::format(
                dir,
                "no tokenizer.json or vocab.txt in the checkpoint folder",
            ));
        };
        Ok(Self {
            inner,
            source: dir.to_path_buf(),
        })
    }

    /// BERT's tokenizer from `vocab.txt`; lower-cases unless `tokenizer_config.json` says
    /// `do_lower_case: false`.
    fn wordpiece(dir: &Path, vocab: &Path) -> Result<Tokenizer> {
        let lowercase = std::fs::read_to_string(dir.join("tokenizer_config.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("do_lower_case").and_then(|b| b.as_bool()))
            .unwrap_or(true);
        let model = WordPiece::from_file(&vocab.to_string_lossy())
            .unk_token("[UNK]".into())
            .build()
            .map_err(|e| Error::format(vocab, format!("cannot read vocabulary: {e}")))?;
        let id = |token: &str| {
            model_token_id(&model, token)
                .ok_or_else(|| Error::format(vocab, format!("vocabulary has no `{token}` token")))
        };
        let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
        let mut tokenizer = Tokenizer::new(model);
        tokenizer
            .with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase)))
            .with_pre_tokenizer(Some(BertPreTokenizer))
            .with_post_processor(Some(BertProcessing::new(
                ("[SEP]".into(), sep),
                ("[CLS]".into(), cls),
            )));
        Ok(tokenizer)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The folder the tokenizer was read from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Ids of the tokens the tokenizer marks special, and of those spelled as in
    /// `spellings` that it has.
    pub fn special_ids(&self, spellings: &[&str]) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| id)
            .chain(spellings.iter().filter_map(|s| self.inner.token_to_id(s)))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The ids of every input, with special tokens and without truncation.
    pub fn encode_untruncated<'s, E>(&self, inputs: Vec<E>) -> Result<Vec<Vec<u32>>>
    where
        E: Into<EncodeInput<'s>> + Send,
    {
        let mut tokenizer = self.inner.clone();
        tokenizer
            .with_truncation(None)
            .map_err(|e| Error::Invalid(format!("cannot lift truncation: {e}")))?
            .with_padding(None);
        let encodings = tokenizer
            .encode_batch(inputs, true)
            .map_err(|e| Error::format(&self.source, format!("tokenization failed: {e}")))?;
        Ok(encodings.iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// Encodes texts (or text pairs) with special tokens, truncated to `max_len` tokens and
    /// padded with `pad_id` to the longest row.
    pub fn encode_batch<'s, E>(
        &self,
        inputs: Vec<E>,
        max_len: usize,
        pad_id: i64,
    ) -> Result<EncodedBatch>
    where
        E: Into<EncodeInput<'s>> + Send,
    {
        let rows = self.encode_rows(inputs, max_len)?;
        Ok(collate(&rows.iter().collect::<Vec<_>>(), pad_id))
    }

    /// Tokenizes every input (truncated to `max_len`), without padding.
    pub fn encode_rows<'s, E>(&self, inputs: Vec<E>, max_len: usize) -> Result<Vec<TokenizedRow>>
    where
        E: Into<EncodeInput<'s>> + Send,
    {
        // Room for [CLS] and [SEP] at least; shorter makes empty rows.
        if max_len < 2 {
            return Err(Error::Invalid(format!("a maximum sequence length of {max_len} leaves no room for the special tokens (need at least 2)")));
        }
        // The file's own truncation and padding settings would fight ours.
        let mut tokenizer = self.inner.clone();
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                ..Default::default()
            }))
            .map_err(|e| Error::Invalid(format!("max length {max_len}: {e}")))?
            .with_padding(None);
        let encodings = tokenizer
            .encode_batch(inputs, true)
            .map_err(|e| Error::format(&self.source, format!("tokenization failed: {e}")))?;
        Ok(encodings
            .iter()
            .map(|e| TokenizedRow {
                input_ids: e.get_ids().iter().map(|&id| id as i64).collect(),
                token_type_ids: e.get_type_ids().iter().map(|&t| t as i64).collect(),
            })
            .collect())
    }
}

fn model_token_id(model: &WordPiece, token: &str) -> Option<u32> {
    use tokenizers::Model;
    model.token_to_id(token)
}

/// The sequence length to tokenize to: `--max-seq-len` if given, which must fit the
/// model's `max_positions` position embeddings, else 64 or the model's positions if fewer.
pub fn resolve_max_seq_len(given: Option<usize>, max_positions: usize) -> Result<usize> {
    match given {
        Some(n) if n > max_positions => Err(Error::Invalid(format!(
            "--max-seq-len {n} is longer than the model's {max_positions} positions"
        ))),
        Some(n) => Ok(n),
        None => Ok(64.min(max_positions)),
    }
}

/// Checks that no row is longer than the model's `max_positions` position embeddings.
pub fn check_positions(rows: &[TokenizedRow], max_positions: usize) -> Result<()> {
    match rows.iter().map(|r| r.input_ids.len()).max() {
        Some(longest) if longest > max_positions => Err(Error::Invalid(format!(
            "rows of {longest} tokens are longer than the model's {max_positions} positions: lower --max-seq-len to {max_positions} or less"
        ))),
        _ => Ok(()),
    }
}

/// One tokenized example, unpadded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedRow {
    pub input_ids: Vec<i64>,
    pub token_type_ids: Vec<i64>,
}

/// Checks that every token id fits the model's embedding table (a tokenizer from another
/// model would otherwise fail deep inside the embedding lookup).
pub fn check_vocab(rows: &[TokenizedRow], vocab_size: usize) -> Result<()> {
    let too_large = rows
        .iter()
        .flat_map(|r| &r.input_ids)
        .find(|&&id| id < 0 || id as usize >= vocab_size);
    match too_large {
        Some(id) => Err(Error::Invalid(format!(
            "token id {id} is outside the model's vocabulary of {vocab_size}: the tokenizer does not belong to this model"
        ))),
        None => Ok(()),
    }
}

/// Pads rows to the longest of them with `pad_id`.
pub fn collate(rows: &[&TokenizedRow], pad_id: i64) -> EncodedBatch {
    let seq = rows.iter().map(|r| r.input_ids.len()).max().unwrap_or(0);
    let batch = rows.len();
    let mut out = EncodedBatch {
        batch,
        seq,
        input_ids: vec![pad_id; batch * seq],
        token_type_ids: vec![0; batch * seq],
        attention_mask: vec![0; batch * seq],
    };
    for (i, r) in rows.iter().enumerate() {
        let n = r.input_ids.len();
        out.input_ids[i * seq..i * seq + n].copy_from_slice(&r.input_ids);
        out.token_type_ids[i * seq..i * seq + n].copy_from_slice(&r.token_type_ids);
        out.attention_mask[i * seq..i * seq + n]
            .iter_mut()
            .for_each(|m| *m = 1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collate_pads_and_check_vocab_catches_foreign_ids() {
        let a = TokenizedRow {
            input_ids: vec![2, 7, 3],
            token_type_ids: vec![0, 0, 0],
        };
        let b = TokenizedRow {
            input_ids: vec![2, 3],
            token_type_ids: vec![0, 1],
        };
        let batch = collate(&[&a, &b], 9);
        assert_eq!(batch.input_ids, vec![2, 7, 3, 2, 3, 9]);
        assert_eq!(batch.attention_mask, vec![1, 1, 1, 1, 1, 0]);
        assert_eq!(batch.token_type_ids, vec![0, 0, 0, 0, 1, 0]);
        assert_eq!(batch.row_ids(1), vec![2, 3]);
        assert!(check_vocab(std::slice::from_ref(&a), 8).is_ok());
        let e = check_vocab(&[a], 7).unwrap_err().to_string();
        assert!(
            e.contains("token id 7") && e.contains("vocabulary of 7"),
            "{e}"
        );
    }

    #[test]
    fn a_sequence_length_below_two_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let model = crate::core::fixtures::tiny_text_model(dir.path());
        let tokenizer = TextTokenizer::from_dir(&model).unwrap();
        let rows = tokenizer.encode_rows(vec!["the film was good"], 2).unwrap();
        assert_eq!(rows[0].input_ids.len(), 2);
        let e = tokenizer
            .encode_rows(vec!["the film"], 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("maximum sequence length of 1"), "{e}");
    }
}
