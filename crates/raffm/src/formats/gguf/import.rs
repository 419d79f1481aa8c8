//! The import step: a LLaMA-architecture GGUF becomes an F32 HF folder (`config.json`,
//! `model.safetensors` under HF's `LlamaForCausalLM` names, `tokenizer.json`,
//! `tokenizer_config.json`). After it, pipelines see only the folder.
//!
//! Two things differ between llama.cpp's layout and HF's besides the names:
//! - llama.cpp's converter interleaves the two rotary halves of every Q and K head
//!   (rows `[0, d/2, 1, d/2 + 1, ...]` of a head become consecutive); the import puts them
//!   back, as HF's own GGUF loader does;
//! - the tokenizer is metadata (vocabulary, merges, token types, a pre-tokenizer name),
//!   from which the import builds a byte-level BPE `tokenizer.json`.

use std::collections::BTreeMap;

use serde_json::{json, Value as Json};
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

use super::GgufFile;
use crate::core::checkpoint::write_safetensors;
use crate::core::error::{Error, Result};
use crate::core::io::StagingDir;
use crate::core::tensor::HostTensor;

/// What an import wrote.
#[derive(Debug, Clone)]
pub struct Imported {
    pub config: Json,
    pub parameters: u64,
    pub tensors: usize,
    /// `tokenizer.ggml.pre`: the pre-tokenizer the vocabulary was trained with.
    pub pre_tokenizer: String,
}

/// llama.cpp's hyper-parameters of a `llama` file, as HF's `LlamaConfig` names them.
struct Hparams {
    layers: usize,
    hidden: usize,
    intermediate: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    vocab: usize,
    context: u64,
    rms_eps: f64,
    rope_theta: f64,
}

impl Hparams {
    fn read(g: &GgufFile) -> Result<Self> {
        let arch = g.require_str("general.architecture")?;
        if arch != "llama" {
            return Err(Error::format(
                g.path(),
                format!("architecture `{arch}` cannot be imported (supported: llama)"),
            ));
        }
        let n = |k: &str| g.require_u64(&format!("llama.{k}")).map(|v| v as usize);
        let heads = n("attention.head_count")?;
        let hidden = n("embedding_length")?;
        let kv_heads = match g.metadata.get("llama.attention.head_count_kv") {
            Some(_) => n("attention.head_count_kv")?,
            None => heads,
        };
        if heads == 0 || kv_heads == 0 || hidden % heads != 0 || heads % kv_heads != 0 {
            return Err(Error::format(
                g.path(),
                format!(
                    "{heads} heads, {kv_heads} KV heads and hidden size {hidden} do not divide"
                ),
            ));
        }
        let head_dim = hidden / heads;
        if head_dim % 2 != 0 {
            return Err(Error::format(
                g.path(),
                format!("head dimension {head_dim} is odd: rotary embeddings pair its halves"),
            ));
        }
        if let Some(rot) = g.metadata.get("llama.rope.dimension_count") {
            if rot.as_u64() != Some(head_dim as u64) {
                return Err(Error::format(
                    g.path(),
                    format!("rotary dimension {rot:?} is not the head dimension {head_dim} (partial rotary is not supported)"),
                ));
            }
        }
        let vocab = match g.metadata.get("llama.vocab_size") {
            Some(_) => n("vocab_size")?,
            None => g.require_strings("tokenizer.ggml.tokens")?.len(),
        };
        Ok(Self {
            layers: n("block_count")?,
            hidden,
            intermediate: n("feed_forward_length")?,
            heads,
            kv_heads,
            head_dim,
            vocab,
            context: g.require_u64("llama.context_length")?,
            rms_eps: g.require_f64("llama.attention.layer_norm_rms_epsilon")?,
            rope_theta: match g.metadata.get("llama.rope.freq_base") {
                Some(_) => g.require_f64("llama.rope.freq_base")?,
                None => 10_000.0,
            },
        })
    }
}

/// HF's name for a llama.cpp tensor name, if it is one of a LLaMA's.
fn hf_name(gguf: &str) -> Option<String> {
    let top = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(name) = top {
        return Some(name.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let part = match part {
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{part}"))
}

/// Undoes llama.cpp's rotary interleaving of the rows of a Q or K projection with
/// `heads` heads: within each head, row `2i + h` of the file is row `h * d/2 + i` of HF's.
fn unpermute_rotary_rows(t: &HostTensor, heads: usize) -> HostTensor {
    let (rows, cols) = (t.shape[0], t.shape[1]);
    let half = rows / heads / 2;
    let mut data = vec![0f32; rows * cols];
    for head in 0..heads {
        for i in 0..half {
            for h in 0..2 {
                let from = head * 2 * half + 2 * i + h; // [head, i, h] in the file
                let to = head * 2 * half + h * half + i; // [head, h, i] in HF's layout
                data[to * cols..(to + 1) * cols]
                    .copy_from_slice(&t.data[from * cols..(from + 1) * cols]);
            }
        }
    }
    HostTensor::new(vec![rows, cols], data)
}

/// The HF shape of every tensor of a LLaMA with these hyper-parameters (`lm_head.weight`
/// included; a tied model's file omits it).
fn expected_shapes(hp: &Hparams) -> BTreeMap<String, Vec<usize>> {
    let kv = hp.kv_heads * hp.head_dim;
    let mut want = BTreeMap::from([
        (
            "model.embed_tokens.weight".to_string(),
            vec![hp.vocab, hp.hidden],
        ),
        ("model.norm.weight".to_string(), vec![hp.hidden]),
        ("lm_head.weight".to_string(), vec![hp.vocab, hp.hidden]),
    ]);
    for l in 0..hp.layers {
        let p = |s: &str| format!("model.layers.{l}.{s}");
        want.extend([
            (p("self_attn.q_proj.weight"), vec![hp.hidden, hp.hidden]),
            (p("self_attn.k_proj.weight"), vec![kv, hp.hidden]),
            (p("self_attn.v_proj.weight"), vec![kv, hp.hidden]),
            (p("self_attn.o_proj.weight"), vec![hp.hidden, hp.hidden]),
            (p("mlp.gate_proj.weight"), vec![hp.intermediate, hp.hidden]),
            (p("mlp.up_proj.weight"), vec![hp.intermediate, hp.hidden]),
            (p("mlp.down_proj.weight"), vec![hp.hidden, hp.intermediate]),
            (p("input_layernorm.weight"), vec![hp.hidden]),
            (p("post_attention_layernorm.weight"), vec![hp.hidden]),
        ]);
    }
    want
}

/// Every tensor under its HF name, each checked against the shape the hyper-parameters
/// imply before it is dequantized, with Q/K rows in HF's rotary layout.
fn tensors(g: &GgufFile, hp: &Hparams) -> Result<BTreeMap<String, HostTensor>> {
    let bad = |message: String| Error::format(g.path(), message);
    // Each layer has 9 tensors: a block count the file cannot back is corrupt, and
    // refusing it bounds what is built from it.
    if hp.layers.checked_mul(9).is_none_or(|n| n > g.tensors.len()) {
        return Err(bad(format!(
            "{} layers, but the file has {} tensors",
            hp.layers,
            g.tensors.len()
        )));
    }
    let want = expected_shapes(hp);
    let mut out = BTreeMap::new();
    for info in &g.tensors {
        // llama.cpp may store precomputed rotary frequencies; HF recomputes them.
        if info.name == "rope_freqs.weight" {
            continue;
        }
        let name = hf_name(&info.name)
            .filter(|n| want.contains_key(n))
            .ok_or_else(|| {
                bad(format!(
                    "tensor {} is not part of a {}-layer LLaMA",
                    info.name, hp.layers
                ))
            })?;
        if info.shape() != want[&name] {
            return Err(bad(format!(
                "{name} has shape {:?}; the metadata implies {:?}",
                info.shape(),
                want[&name]
            )));
        }
        let values = g.tensor_f32(info)?;
        if let Some(i) = crate::core::tensor::first_non_finite(&values) {
            return Err(bad(format!(
                "tensor {} decodes to a non-finite value ({}) at element {i}: its data do not match its type",
                info.name, values[i]
            )));
        }
        let mut t = HostTensor::new(info.shape(), values);
        if name.ends_with("q_proj.weight") {
            t = unpermute_rotary_rows(&t, hp.heads);
        } else if name.ends_with("k_proj.weight") {
            t = unpermute_rotary_rows(&t, hp.kv_heads);
        }
        if out.insert(name.clone(), t).is_some() {
            return Err(bad(format!("two tensors map to {name}")));
        }
    }
    if let Some(missing) = want
        .keys()
        .find(|n| *n != "lm_head.weight" && !out.contains_key(*n))
    {
        return Err(bad(format!("tensor for {missing} is missing")));
    }
    Ok(out)
}

fn config(g: &GgufFile, hp: &Hparams, tied: bool) -> Result<Json> {
    let id = |k: &str| -> Result<Json> {
        Ok(match g.metadata.get(&format!("tokenizer.ggml.{k}")) {
            Some(_) => json!(g.require_u64(&format!("tokenizer.ggml.{k}"))?),
            None => Json::Null,
        })
    };
    // Both spellings of the rotary base: transformers 5 reads `rope_parameters`, older
    // readers (and candle) `rope_theta`.
    Ok(json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": hp.vocab,
        "hidden_size": hp.hidden,
        "intermediate_size": hp.intermediate,
        "num_hidden_layers": hp.layers,
        "num_attention_heads": hp.heads,
        "num_key_value_heads": hp.kv_heads,
        "head_dim": hp.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": hp.context,
        "rms_norm_eps": hp.rms_eps,
        "rope_theta": hp.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": hp.rope_theta},
        "attention_bias": false,
        "mlp_bias": false,
        "tie_word_embeddings": tied,
        "bos_token_id": id("bos_token_id")?,
        "eos_token_id": id("eos_token_id")?,
        "pad_token_id": id("padding_token_id")?,
        "dtype": "float32",
    }))
}

/// GPT-2's map from bytes to printable characters, in which byte-level vocabularies are
/// spelled.
fn byte_alphabet() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
        map[b as usize] = if printable {
            b as char
        } else {
            next += 1;
            char::from_u32(next - 1).expect("below the surrogates")
        };
    }
    map
}

/// A byte-level BPE `tokenizer.json` from the file's tokenizer metadata.
fn tokenizer(g: &GgufFile) -> Result<(Tokenizer, String)> {
    let model = g.require_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(Error::format(
            g.path(),
            format!(
                "tokenizer model `{model}` cannot be imported (supported: gpt2, byte-level BPE)"
            ),
        ));
    }
    let pre = g
        .metadata
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.as_str())
        .unwrap_or("default")
        .to_string();
    // llama.cpp's pre-tokenizers this import reproduces: GPT-2's split, and SmolLM's
    // (and a few others'), which first isolates every digit.
    let split_digits = match pre.as_str() {
        "default" | "gpt2" => false,
        "smollm" | "starcoder" | "refact" | "codeshell" => true,
        other => {
            return Err(Error::format(
                g.path(),
                format!("pre-tokenizer `{other}` cannot be imported (supported: gpt2, smollm, starcoder, refact, codeshell)"),
            ))
        }
    };
    let tokens = g.require_strings("tokenizer.ggml.tokens")?;
    let types = g.require_ints("tokenizer.ggml.token_type")?;
    if types.len() != tokens.len() {
        return Err(Error::format(
            g.path(),
            format!("{} token types for {} tokens", types.len(), tokens.len()),
        ));
    }
    let alphabet = byte_alphabet();
    let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
    // Tokens are spelled in the byte alphabet; one that is not is respelled through its
    // UTF-8 bytes, as HF's GGUF loader does.
    let spelled: Vec<String> = tokens
        .iter()
        .map(|t| {
            if in_alphabet(t) {
                t.to_string()
            } else {
                t.bytes().map(|b| alphabet[b as usize]).collect()
            }
        })
        .collect();
    let vocab: Vocab = spelled
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let merges = g
        .require_strings("tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| Error::format(g.path(), format!("merge `{m}` is not two tokens")))
        })
        .collect::<Result<Vec<_>>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| {
            Error::format(
                g.path(),
                format!("the vocabulary and merges do not form a BPE model: {e}"),
            )
        })?;
    let mut tok = Tokenizer::new(bpe);
    let byte_level = ByteLevel::new(false, true, true);
    let mut steps: Vec<PreTokenizerWrapper> = Vec::new();
    if split_digits {
        steps.push(Digits::new(true).into());
    }
    steps.push(byte_level.into());
    tok.with_pre_tokenizer(Some(Sequence::new(steps)));
    tok.with_decoder(Some(ByteLevel::default()));
    tok.with_post_processor(Some(ByteLevel::default().trim_offsets(false)));
    // Control tokens (type 3: `<|im_start|>`) are special and never split; user-defined
    // ones (type 4) are matched whole but are not special.
    let added = |kind: i64, special: bool| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(&types)
            .filter(|(t, &ty)| ty == kind && in_alphabet(t))
            .map(|(t, _)| AddedToken::from(t.to_string(), special))
            .collect()
    };
    tok.add_special_tokens(&added(3, true));
    tok.add_tokens(&added(4, false));
    Ok((tok, pre))
}

fn tokenizer_config(g: &GgufFile, hp: &Hparams) -> Result<Json> {
    let tokens = g.require_strings("tokenizer.ggml.tokens")?;
    let special = |k: &str| -> Result<Json> {
        let key = format!("tokenizer.ggml.{k}");
        Ok(match g.metadata.get(&key) {
            None => Json::Null,
            Some(_) => {
                let id = g.require_u64(&key)? as usize;
                let token = tokens.get(id).ok_or_else(|| {
                    Error::format(g.path(), format!("{key} {id} is outside the vocabulary"))
                })?;
                json!(token)
            }
        })
    };
    let flag = |k: &str| match g.metadata.get(&format!("tokenizer.ggml.{k}")) {
        Some(super::Value::Bool(b)) => *b,
        _ => false,
    };
    let mut config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": special("bos_token_id")?,
        "eos_token": special("eos_token_id")?,
        "unk_token": special("unknown_token_id")?,
        "pad_token": special("padding_token_id")?,
        "add_bos_token": flag("add_bos_token"),
        "add_eos_token": flag("add_eos_token"),
        "model_max_length": hp.context,
    });
    if let Some(template) = g
        .metadata
        .get("tokenizer.chat_template")
        .and_then(|v| v.as_str())
    {
        config["chat_template"] = json!(template);
    }
    Ok(config)
}

/// Writes the HF folder of a LLaMA GGUF into `out`.
pub fn import_llama(g: &GgufFile, out: &mut StagingDir) -> Result<Imported> {
    let hp = Hparams::read(g)?;
    let tensors = tensors(g, &hp)?;
    let tied = !tensors.contains_key("lm_head.weight");
    let config = config(g, &hp, tied)?;
    let (tokenizer, pre_tokenizer) = tokenizer(g)?;
    if tokenizer.get_vocab_size(true) != hp.vocab {
        return Err(Error::format(
            g.path(),
            format!(
                "the tokenizer has {} tokens, the model {}",
                tokenizer.get_vocab_size(true),
                hp.vocab
            ),
        ));
    }
    let tokenizer_json = tokenizer
        .to_string(false)
        .map_err(|e| Error::format(g.path(), format!("tokenizer: {e}")))?;
    out.write(
        "config.json",
        &serde_json::to_vec_pretty(&config).expect("json"),
    )?;
    out.write("tokenizer.json", tokenizer_json.as_bytes())?;
    out.write(
        "tokenizer_config.json",
        &serde_json::to_vec_pretty(&tokenizer_config(g, &hp)?).expect("json"),
    )?;
    let ordered: Vec<(String, &HostTensor)> = tensors.iter().map(|(n, t)| (n.clone(), t)).collect();
    out.write_with("model.safetensors", |w| write_safetensors(w, &ordered))?;
    Ok(Imported {
        parameters: tensors.values().map(|t| t.numel() as u64).sum(),
        tensors: tensors.len(),
        config,
        pre_tokenizer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_cpp_names_map_to_hf_names() {
        assert_eq!(
            hf_name("token_embd.weight").unwrap(),
            "model.embed_tokens.weight"
        );
        assert_eq!(
            hf_name("blk.29.attn_output.weight").unwrap(),
            "model.layers.29.self_attn.o_proj.weight"
        );
        assert_eq!(
            hf_name("blk.0.ffn_norm.weight").unwrap(),
            "model.layers.0.post_attention_layernorm.weight"
        );
        assert_eq!(hf_name("blk.x.attn_q.weight"), None);
        assert_eq!(hf_name("blk.0.attn_q.bias"), None);
    }

    #[test]
    fn rotary_rows_go_back_to_halves_per_head() {
        // 2 heads of dimension 4, one column: the file holds each head as [0, 2, 1, 3].
        let file = HostTensor::new(vec![8, 1], vec![0., 2., 1., 3., 10., 12., 11., 13.]);
        let hf = unpermute_rotary_rows(&file, 2);
        assert_eq!(hf.data, [0., 1., 2., 3., 10., 11., 12., 13.]);
        // llama.cpp's forward permutation, written out independently, is its inverse.
        let permute = |t: &HostTensor, heads: usize| {
            let half = t.shape[0] / heads / 2;
            let mut d = t.data.clone();
            for head in 0..heads {
                for h in 0..2 {
                    for i in 0..half {
                        d[head * 2 * half + 2 * i + h] = t.data[head * 2 * half + h * half + i];
                    }
                }
            }
            HostTensor::new(t.shape.clone(), d)
        };
        let x = HostTensor::new(vec![12, 1], (0..12).map(|v| v as f32).collect());
        assert_eq!(unpermute_rotary_rows(&permute(&x, 3), 3).data, x.data);
    }

    #[test]
    fn the_byte_alphabet_is_gpt2s() {
        let a = byte_alphabet();
        assert_eq!(a[b' ' as usize], 'Ġ');
        assert_eq!(a[b'\n' as usize], 'Ċ');
        assert_eq!(a[b'a' as usize], 'a');
        let distinct: std::collections::HashSet<char> = a.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
    }
}
