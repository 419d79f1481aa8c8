//! Client vocabularies on the real MiniLM and a real client shard of Rotten Tomatoes: the
//! reduced tokenizer splits the client's text as the full one does, the sub-model computes
//! the full model's logits on it, and Python's `tokenizers` reads the reduced file.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::{assets_dir, max_abs_diff, minilm_dir};
use raffm::data::partition::{partition, Scheme};
use raffm::data::tokenizer::{collate, TextTokenizer, TokenizedRow};
use raffm::data::{DataSource, Dataset, Format, Input};
use raffm::fl::cost::{CostModel, TrainingShape};
use raffm::fl::extract::{extract_widths, ClientRequest, DepthPolicy, Strategy};
use raffm::fl::search::{Budget, Policy, SearchSpace};
use raffm::fl::vocab::{data_tokens, with_decoys, ClientVocabulary};
use raffm::models::families::bert::model::BertForSequenceClassification;
use raffm::{Axis, Checkpoint, CpuBackend};

/// The dataset and the examples of client c000 of a 20-client IID partition.
fn shard() -> (Dataset, Vec<usize>) {
    let source = DataSource {
        format: Format::RottenTomatoes,
        path: assets_dir().join("rotten_tomatoes/rotten_tomatoes_corpus_full.csv"),
        labels_path: None,
        validation: None,
    };
    let dataset = Dataset::load(&source).unwrap();
    let (train, _) = raffm::data::split(&dataset, 0.1, 0);
    let shards = partition(&dataset, &train, 20, Scheme::Iid, 0).unwrap();
    let examples = shards[0].examples.clone();
    (dataset, examples)
}

fn texts<'a>(dataset: &'a Dataset, ids: &[usize]) -> Vec<&'a str> {
    ids.iter()
        .map(|&i| match &dataset.get(i).unwrap().input {
            Input::Text(t) => t.as_str(),
            other => panic!("not text: {other:?}"),
        })
        .collect()
}

struct Setup {
    global: Checkpoint,
    vocabulary: ClientVocabulary,
    dir: tempfile::TempDir,
}

/// The global model, the client's vocabulary, and its sub-model with every other width
/// full, written to `dir/sub`.
fn setup(dataset: &Dataset, examples: &[usize]) -> Setup {
    let labels = vec!["rotten".to_string(), "fresh".to_string()];
    let global = Checkpoint::load(minilm_dir())
        .unwrap()
        .with_classification_head(&labels, 3);
    let tokenizer = TextTokenizer::from_dir(&minilm_dir()).unwrap();
    let tokens = data_tokens(&tokenizer, dataset, examples, 30522).unwrap();
    let vocabulary = with_decoys(&tokens, 30522, 0, &mut raffm::core::rng::SplitMix64::new(0));
    let cost_model = CostModel::for_checkpoint(&global, TrainingShape::default());
    let space = SearchSpace::per_layer();
    let request = ClientRequest {
        client: "c000",
        budget: Budget::default(),
        round: 1,
        seed: 0,
        strategy: Strategy::Salient,
        policy: Policy::Largest,
        depth_policy: DepthPolicy::Even,
        space: &space,
        cost_model: &cost_model,
        vocabulary: Some(&vocabulary),
    };
    let mut widths = global.config.widths();
    widths.global.set(Axis::Vocab, vocabulary.kept.len());
    let sub = extract_widths(&global, &request, &widths).unwrap();
    let dir = tempfile::tempdir().unwrap();
    sub.checkpoint.save(dir.path().join("sub")).unwrap();
    Setup {
        global,
        vocabulary,
        dir,
    }
}

#[test]
fn the_reduced_tokenizer_and_sub_model_agree_with_the_full_ones_on_the_clients_data() {
    let (dataset, examples) = shard();
    let s = setup(&dataset, &examples);
    let v = &s.vocabulary;
    eprintln!(
        "c000: {} examples, {} distinct tokens of 30522",
        examples.len(),
        v.kept.len()
    );
    assert!(v.kept.len() < 30522 / 3 && v.kept.len() > 1000);
    let sub = Checkpoint::load(s.dir.path().join("sub")).unwrap();
    assert_eq!(sub.config.vocab_size(), v.kept.len());
    assert_eq!(sub.config.pad_token_id(), 0, "[PAD] keeps id 0");
    let embedding = s.global.parameter_count() - sub.parameter_count();
    assert_eq!(embedding, 384 * (30522 - v.kept.len()) as u64);

    // Every example of the shard: the reduced ids are the full ids mapped through the kept
    // rows.
    let new_id: BTreeMap<usize, usize> = v.kept.iter().enumerate().map(|(i, &g)| (g, i)).collect();
    let full = TextTokenizer::from_dir(&minilm_dir()).unwrap();
    let reduced = TextTokenizer::from_dir(&s.dir.path().join("sub")).unwrap();
    let inputs = texts(&dataset, &examples);
    let full_ids = full.encode_untruncated(inputs.clone()).unwrap();
    let reduced_ids = reduced.encode_untruncated(inputs.clone()).unwrap();
    for (i, (f, r)) in full_ids.iter().zip(&reduced_ids).enumerate() {
        let mapped: Vec<u32> = f.iter().map(|&g| new_id[&(g as usize)] as u32).collect();
        assert_eq!(&mapped, r, "example {}: {:?}", examples[i], inputs[i]);
    }
    // A word the client never had is split into kept pieces where it can be; a character
    // the client never had is [UNK].
    let unseen = reduced.encode_untruncated(vec!["日本"]).unwrap();
    let unk = new_id[&100];
    assert!(unseen[0].contains(&(unk as u32)), "{unseen:?}");

    // The sub-model's logits on the shard equal the full model's.
    let device = Default::default();
    let logits = |c: &Checkpoint, rows: &[TokenizedRow]| -> Vec<f32> {
        let model =
            BertForSequenceClassification::<CpuBackend>::from_checkpoint(c, &device).unwrap();
        let mut out = Vec::new();
        for chunk in rows.chunks(64) {
            let batch = collate(&chunk.iter().collect::<Vec<_>>(), 0);
            let l = model.forward(&batch.to_tensors(&device));
            out.extend(l.into_data().into_vec::<f32>().unwrap());
        }
        out
    };
    let some: Vec<&str> = inputs[..192].to_vec();
    let (a, b) = (
        logits(&s.global, &full.encode_rows(some.clone(), 64).unwrap()),
        logits(&sub, &reduced.encode_rows(some, 64).unwrap()),
    );
    let diff = max_abs_diff(&a, &b);
    eprintln!("logits on 192 of the client's examples: max abs diff {diff:.2e}");
    assert!(diff < 1e-5, "{diff}");
}

#[test]
fn python_tokenizers_reads_the_reduced_tokenizer_and_gives_the_same_ids() {
    let python = std::env::var("RAFFM_PYTHON").unwrap_or_else(|_| "python3".into());
    let (dataset, examples) = shard();
    let examples = &examples[..200];
    let s = setup(&dataset, examples);
    let reduced = TextTokenizer::from_dir(&s.dir.path().join("sub")).unwrap();
    let inputs = texts(&dataset, examples);
    let ours = reduced.encode_untruncated(inputs.clone()).unwrap();
    let expected = serde_json::json!({"texts": inputs, "ids": ours});
    let expected_path = s.dir.path().join("expected.json");
    std::fs::write(&expected_path, expected.to_string()).unwrap();
    let script = r#"
import json, sys
from tokenizers import Tokenizer
tokenizer = Tokenizer.from_file(sys.argv[1])
tokenizer.no_padding()
tokenizer.no_truncation()
expected = json.load(open(sys.argv[2]))
got = [e.ids for e in tokenizer.encode_batch(expected["texts"])]
assert got == expected["ids"], next((i, a, b) for i, (a, b) in enumerate(zip(got, expected["ids"])) if a != b)
print(len(got), "examples, vocabulary", tokenizer.get_vocab_size())
"#;
    let out = Command::new(&python)
        .args(["-c", script])
        .arg(s.dir.path().join("sub/tokenizer.json"))
        .arg(&expected_path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e} (make test installs it in .venv)"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python check failed: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let want = format!("200 examples, vocabulary {}", s.vocabulary.kept.len());
    assert!(stdout.contains(&want), "{stdout}");
}

#[test]
fn a_tokenizer_that_does_not_match_the_model_and_ids_outside_the_vocabulary_are_errors() {
    let (dataset, examples) = shard();
    let tokenizer = TextTokenizer::from_dir(&minilm_dir()).unwrap();
    let e = data_tokens(&tokenizer, &dataset, &examples[..5], 1000)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("minilm") && e.contains("not this model's tokenizer"),
        "{e}"
    );

    let global = Checkpoint::load(minilm_dir()).unwrap();
    let cost_model = CostModel::for_checkpoint(&global, TrainingShape::default());
    let space = SearchSpace::per_layer();
    let outside = ClientVocabulary {
        kept: vec![0, 100, 101, 102, 30522],
        from_data: 5,
        decoys: 0,
    };
    let request = ClientRequest {
        client: "c9",
        budget: Budget::default(),
        round: 1,
        seed: 0,
        strategy: Strategy::Static,
        policy: Policy::Largest,
        depth_policy: DepthPolicy::Even,
        space: &space,
        cost_model: &cost_model,
        vocabulary: Some(&outside),
    };
    let e = raffm::fl::extract::extract_for_client(&global, &request)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("client c9") && e.contains("token id 30522 is outside"),
        "{e}"
    );
}
