//! The model core and prioritization on the real pre-trained all-MiniLM-L6-v2, against
//! HuggingFace transformers' outputs.

mod common;

use common::{max_abs_diff, minilm_dir, reference, sentences};
use raffm::core::tensor::Norm;
use raffm::data::tokenizer::{EncodedBatch, TextTokenizer};
use raffm::fl::prioritize::{is_prioritized, prioritize, salience};
use raffm::models::families::bert::model::{BertForSequenceClassification, BertModel};
use raffm::Axis;
use raffm::{Checkpoint, CpuBackend};

fn labels() -> Vec<String> {
    vec!["negative".into(), "positive".into()]
}

#[test]
fn tokenizer_gives_the_reference_ids() {
    let r = reference();
    let tokenizer = TextTokenizer::from_dir(&minilm_dir()).unwrap();
    let batch = tokenizer
        .encode_batch(r.sentences.iter().map(String::as_str).collect(), 128, 0)
        .unwrap();
    assert_eq!(batch.seq, r.input_ids[0].len());
    for i in 0..r.sentences.len() {
        let row = i * batch.seq..(i + 1) * batch.seq;
        assert_eq!(
            batch.input_ids[row.clone()],
            r.input_ids[i][..],
            "ids of {:?}",
            r.sentences[i]
        );
        assert_eq!(batch.attention_mask[row.clone()], r.attention_mask[i][..]);
        assert_eq!(batch.token_type_ids[row], r.token_type_ids[i][..]);
    }
}

#[test]
fn vocab_txt_tokenizer_agrees_with_tokenizer_json() {
    // A folder with only vocab.txt gets a WordPiece tokenizer built from it.
    let dir = tempfile::tempdir().unwrap();
    for f in ["vocab.txt", "tokenizer_config.json"] {
        std::fs::copy(minilm_dir().join(f), dir.path().join(f)).unwrap();
    }
    let texts: Vec<String> = sentences();
    let inputs = || texts.iter().map(String::as_str).collect::<Vec<_>>();
    let from_json = TextTokenizer::from_dir(&minilm_dir())
        .unwrap()
        .encode_batch(inputs(), 64, 0)
        .unwrap();
    let from_vocab = TextTokenizer::from_dir(dir.path())
        .unwrap()
        .encode_batch(inputs(), 64, 0)
        .unwrap();
    assert_eq!(from_json, from_vocab);
}

#[test]
fn encoder_matches_huggingface_hidden_states_and_pooler() {
    let r = reference();
    let (batch, seq) = (r.input_ids.len(), r.input_ids[0].len());
    let flat = |v: &Vec<Vec<i64>>| v.iter().flatten().copied().collect::<Vec<_>>();
    let encoded = EncodedBatch {
        batch,
        seq,
        input_ids: flat(&r.input_ids),
        token_type_ids: flat(&r.token_type_ids),
        attention_mask: flat(&r.attention_mask),
    };
    let device = Default::default();
    let checkpoint = Checkpoint::load(minilm_dir()).unwrap();
    assert_eq!(
        checkpoint.ignored,
        vec!["embeddings.position_ids".to_string()]
    );
    let model = BertModel::<CpuBackend>::from_checkpoint(&checkpoint, &device);
    let out = model.forward(&encoded.to_tensors(&device));
    assert_eq!(out.last_hidden_state.dims(), [batch, seq, 384]);
    let hidden = out.last_hidden_state.into_data().into_vec::<f32>().unwrap();
    let pooled = out
        .pooler_output
        .unwrap()
        .into_data()
        .into_vec::<f32>()
        .unwrap();
    let want_hidden: Vec<f32> = r
        .last_hidden_state
        .iter()
        .flatten()
        .flatten()
        .copied()
        .collect();
    let want_pooled: Vec<f32> = r.pooler_output.iter().flatten().copied().collect();
    let (dh, dp) = (
        max_abs_diff(&hidden, &want_hidden),
        max_abs_diff(&pooled, &want_pooled),
    );
    eprintln!("max abs diff vs HF: hidden {dh:.2e}, pooler {dp:.2e}");
    assert!(dh < 1e-4, "last hidden state differs from HF by {dh}");
    assert!(dp < 1e-4, "pooler output differs from HF by {dp}");
}

#[test]
fn prioritization_preserves_the_real_models_logits() {
    let tokenizer = TextTokenizer::from_dir(&minilm_dir()).unwrap();
    let texts = sentences();
    let batch = tokenizer
        .encode_batch(texts.iter().map(String::as_str).collect(), 64, 0)
        .unwrap();
    let device = Default::default();
    let checkpoint = Checkpoint::load(minilm_dir())
        .unwrap()
        .with_classification_head(&labels(), 42);
    let logits = |c: &Checkpoint| {
        let model =
            BertForSequenceClassification::<CpuBackend>::from_checkpoint(c, &device).unwrap();
        model
            .forward(&batch.to_tensors(&device))
            .into_data()
            .into_vec::<f32>()
            .unwrap()
    };
    let before = logits(&checkpoint);

    for norm in [Norm::L1, Norm::L2] {
        let (prioritized, permutations) = prioritize(&checkpoint, norm, |_| {});
        let after = logits(&prioritized);
        let diff = max_abs_diff(&before, &after);
        eprintln!("{norm:?}: logits max abs diff after prioritization {diff:.2e}");
        assert!(diff < 1e-4, "{norm:?}: logits moved by {diff}");

        // Every axis of every layer, and the hidden channels, were reordered.
        for p in &permutations {
            assert!(
                !p.is_identity(),
                "{norm:?}: {} of layer {:?} not reordered",
                p.axis,
                p.layer
            );
        }
        let hidden = permutations
            .iter()
            .find(|p| p.axis == Axis::Hidden)
            .unwrap();
        assert_eq!(hidden.order.len(), 384);
        // The hidden permutation moved every tensor it indexes (all but the biases of the
        // Q/K/V projections, the first FFN matrix and the classifier), except those whose
        // values are all equal (MiniLM's pooler bias is zero).
        for spec in checkpoint.config.tensors() {
            let t = &checkpoint.tensors[&spec.name];
            let moved = !t.bit_eq(&prioritized.tensors[&spec.name]);
            let constant = t.data.iter().all(|v| v.to_bits() == t.data[0].to_bits());
            if spec.has_axis(Axis::Hidden) && !constant {
                assert!(
                    moved,
                    "{norm:?}: {} is indexed by the hidden axis but did not move",
                    spec.name
                );
            }
        }

        // Salience recomputed from the permuted weights is non-increasing on every axis.
        assert!(
            is_prioritized(&salience(&prioritized, norm)),
            "{norm:?}: not ordered"
        );
        assert!(
            !is_prioritized(&salience(&checkpoint, norm)),
            "the pre-trained model was already ordered"
        );
    }
}
