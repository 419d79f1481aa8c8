//! Tasks for the decoder, as text: a prompt and the completions it is scored or trained on.
//!
//! Every task is multiple choice: a prompt, its options and the right one. Training takes
//! the loss on the right option's tokens only; evaluation scores each option by its
//! log-likelihood after the prompt, so nothing is generated. A free-form
//! `{"prompt", "completion"}` record is a task with one option.

use std::path::Path;

use serde_json::Value;

use crate::data::{DataSource, Dataset, Format, Input};
use crate::error::{Error, Result};

/// One example: a prompt, its candidate completions, and the index of the right one.
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceExample {
    pub prompt: String,
    pub options: Vec<String>,
    pub answer: usize,
}

/// The built-in tasks and the user's own files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskFormat {
    /// Rotten Tomatoes' CSV as an instruction: "Review: ... Sentiment:" then " positive" or
    /// " negative".
    RottenTomatoes,
    /// BIG-bench's `task.json` (`examples`: `input` and `target_scores`), as MathQA's
    /// `elementary_math_qa/question_only` has it.
    BigBench,
    /// JSON lines: `{"prompt", "completion"}` or `{"prompt", "options", "answer"}`.
    Jsonl,
}

impl std::str::FromStr for TaskFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "rotten-tomatoes" => Ok(TaskFormat::RottenTomatoes),
            "bigbench" => Ok(TaskFormat::BigBench),
            "jsonl" => Ok(TaskFormat::Jsonl),
            _ => Err(format!(
                "unknown task format `{s}` (expected rotten-tomatoes, bigbench or jsonl)"
            )),
        }
    }
}

/// Rotten Tomatoes' options, by label (0 rotten, 1 fresh).
pub const SENTIMENT_OPTIONS: [&str; 2] = [" negative", " positive"];

/// The instruction prompt of a review.
pub fn sentiment_prompt(review: &str) -> String {
    format!("Review: {review}\nSentiment:")
}

/// The prompt of a multiple-choice question: the question, then "Answer:".
pub fn question_prompt(question: &str) -> String {
    format!("{}\nAnswer:", question.trim_end())
}

/// Reads a task file.
pub fn load(format: TaskFormat, path: &Path) -> Result<Vec<ChoiceExample>> {
    match format {
        TaskFormat::RottenTomatoes => load_rotten_tomatoes(path),
        TaskFormat::BigBench => load_bigbench(path),
        TaskFormat::Jsonl => load_jsonl(path),
    }
}

fn load_rotten_tomatoes(path: &Path) -> Result<Vec<ChoiceExample>> {
    let dataset = Dataset::load(&DataSource {
        format: Format::RottenTomatoes,
        path: path.to_path_buf(),
        labels_path: None,
    })?;
    dataset
        .examples
        .iter()
        .map(|e| match &e.input {
            Input::Text(review) => Ok(ChoiceExample {
                prompt: sentiment_prompt(review),
                options: SENTIMENT_OPTIONS.map(String::from).to_vec(),
                answer: e.label as usize,
            }),
            _ => Err(Error::format(path, "expected text reviews")),
        })
        .collect()
}

fn load_bigbench(path: &Path) -> Result<Vec<ChoiceExample>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::format(path, format!("invalid JSON: {e}")))?;
    let examples = value
        .get("examples")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::format(path, "no `examples` list"))?;
    examples
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let bad = |m: &str| Error::format(path, format!("example {i}: {m}"));
            let input = e
                .get("input")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("no `input` text"))?;
            let scores = e
                .get("target_scores")
                .and_then(Value::as_object)
                .filter(|s| s.len() >= 2)
                .ok_or_else(|| bad("`target_scores` must map at least two options to scores"))?;
            let mut options = Vec::with_capacity(scores.len());
            let mut answer = None;
            for (option, score) in scores {
                let score = score
                    .as_f64()
                    .ok_or_else(|| bad("a score is not a number"))?;
                if score == 1.0 {
                    if answer.is_some() {
                        return Err(bad("more than one option scores 1"));
                    }
                    answer = Some(options.len());
                }
                options.push(format!(" {}", option.trim()));
            }
            Ok(ChoiceExample {
                prompt: question_prompt(input),
                options,
                answer: answer.ok_or_else(|| bad("no option scores 1"))?,
            })
        })
        .collect()
}

fn load_jsonl(path: &Path) -> Result<Vec<ChoiceExample>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |m: String| Error::format(path, format!("line {}: {m}", n + 1));
        let v: Value = serde_json::from_str(line).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let text_of = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let prompt = text_of("prompt").ok_or_else(|| bad("no `prompt` text".into()))?;
        let example = if let Some(completion) = text_of("completion") {
            ChoiceExample {
                prompt,
                options: vec![completion],
                answer: 0,
            }
        } else {
            let options: Vec<String> = v
                .get("options")
                .and_then(Value::as_array)
                .and_then(|a| a.iter().map(|o| o.as_str().map(str::to_string)).collect())
                .ok_or_else(|| {
                    bad("needs `completion`, or `options` (a list of texts) and `answer`".into())
                })?;
            let answer = v
                .get("answer")
                .and_then(Value::as_u64)
                .map(|a| a as usize)
                .filter(|&a| a < options.len())
                .ok_or_else(|| bad(format!("`answer` must index the {} options", options.len())))?;
            ChoiceExample {
                prompt,
                options,
                answer,
            }
        };
        if example.options.iter().any(String::is_empty) {
            return Err(bad("an empty completion".into()));
        }
        out.push(example);
    }
    if out.is_empty() {
        return Err(Error::format(path, "no examples"));
    }
    Ok(out)
}

/// Which examples of a task a command uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Selection {
    /// `true` for the held-out validation examples, `false` for the training ones.
    pub validation: bool,
    /// The share of the examples held out, drawn with `seed`.
    pub validation_fraction: f64,
    pub seed: u64,
    /// Client `i` of `n`: every n-th training example from the i-th (IID shards).
    pub shard: Option<(usize, usize)>,
    /// At most this many (the first ones).
    pub limit: Option<usize>,
}

impl Selection {
    /// The indices of the examples of a task of `n`, in a seeded order.
    pub fn indices(&self, n: usize) -> Result<Vec<usize>> {
        if !(0.0..1.0).contains(&self.validation_fraction) {
            return Err(Error::Invalid(format!(
                "--validation-fraction must be in [0, 1), got {}",
                self.validation_fraction
            )));
        }
        let mut ids: Vec<usize> = (0..n).collect();
        crate::rng::SplitMix64::derive(self.seed, "split").shuffle(&mut ids);
        let held = ((n as f64) * self.validation_fraction).round() as usize;
        let mut ids = if self.validation {
            ids[..held].to_vec()
        } else {
            ids[held..].to_vec()
        };
        if let Some((i, count)) = self.shard {
            if count == 0 || i >= count {
                return Err(Error::Invalid(format!(
                    "--shard {i}/{count}: expected I/N with I < N"
                )));
            }
            ids = ids.into_iter().skip(i).step_by(count).collect();
        }
        if let Some(limit) = self.limit {
            ids.truncate(limit);
        }
        if ids.is_empty() {
            return Err(Error::Invalid("the selection has no examples".into()));
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_training_examples_and_never_touch_validation() {
        let select = |validation, shard| Selection {
            validation,
            validation_fraction: 0.2,
            seed: 3,
            shard,
            limit: None,
        };
        let validation = select(true, None).indices(100).unwrap();
        assert_eq!(validation.len(), 20);
        let mut all: Vec<usize> = (0..3)
            .flat_map(|i| select(false, Some((i, 3))).indices(100).unwrap())
            .collect();
        all.extend(&validation);
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert!(select(false, Some((3, 3))).indices(100).is_err());
    }

    #[test]
    fn reads_bigbench_and_jsonl_and_names_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let bb = dir.path().join("task.json");
        std::fs::write(
            &bb,
            r#"{"examples": [{"input": "What is 2 + 3?", "target_scores": {"4": 0, "5": 1, "6": 0}}]}"#,
        )
        .unwrap();
        let got = load(TaskFormat::BigBench, &bb).unwrap();
        assert_eq!(got[0].prompt, "What is 2 + 3?\nAnswer:");
        assert_eq!(got[0].options, [" 4", " 5", " 6"]);
        assert_eq!(got[0].answer, 1);

        let jl = dir.path().join("data.jsonl");
        std::fs::write(
            &jl,
            "{\"prompt\": \"Q: hi\", \"completion\": \" there\"}\n\n{\"prompt\": \"Q\", \"options\": [\" a\", \" b\"], \"answer\": 1}\n",
        )
        .unwrap();
        let got = load(TaskFormat::Jsonl, &jl).unwrap();
        assert_eq!((got[0].options.len(), got[1].answer), (1, 1));

        std::fs::write(
            &jl,
            "{\"prompt\": \"Q\", \"options\": [\" a\"], \"answer\": 3}\n",
        )
        .unwrap();
        let err = load(TaskFormat::Jsonl, &jl).unwrap_err().to_string();
        assert!(
            err.contains("data.jsonl") && err.contains("line 1") && err.contains("answer"),
            "{err}"
        );
    }
}
