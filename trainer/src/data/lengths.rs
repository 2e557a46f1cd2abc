//! The token lengths of a data set's rows, measured without keeping any ids: what the memory
//! estimate needs to size the longest micro-batch a job will really see, and what a submit
//! needs to refuse rows that truncation would leave without an answer.
//!
//! Lengths are measured before truncation ([`RowLengths`]), so one measurement serves every
//! `max_length` and batch size; the daemon keeps it with the data set per tokenizer and
//! template.

use std::io::BufRead;
use std::path::Path;

use orpo_api::JobSpec;
use serde::{Deserialize, Serialize};

use super::read::parse_raw_line;
use super::{apply_chat_template, row_lengths, split_eval, Problems, RowLengths, TokenizeOptions};
use crate::template::ChatTemplate;
use crate::tokenizer::TokenizerInfo;
use crate::{Error, Result};

/// One row's lengths before truncation, with its 1-based line in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineLengths {
    pub line: u32,
    #[serde(flatten)]
    pub lengths: RowLengths,
}

/// Reads `path` one line at a time and measures every row as training would tokenize it
/// (`template` for conversational rows). Bad rows are reported as [`crate::data::load_pairs`]
/// reports them; `shown` names the file in messages (the daemon shows a data set reference
/// rather than its storage path).
pub fn measure_file(
    path: &Path,
    shown: &Path,
    tok: &TokenizerInfo,
    template: Option<&ChatTemplate>,
) -> Result<Vec<LineLengths>> {
    use rayon::prelude::*;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = std::io::BufReader::new(file);
    let mut problems = Problems::default();
    let mut rows = Vec::new();
    let mut line = 0usize;
    let measure = |(line, raw): &(usize, Vec<u8>)| {
        parse_raw_line(*line, raw).map(|pair| {
            pair.and_then(|pair| {
                apply_chat_template(&pair, template).and_then(|text| row_lengths(&text, tok))
            })
        })
    };
    // Lines are read a chunk at a time and measured in parallel (templating and tokenizing
    // are the cost: a first plan of a large data set waits for them), in file order.
    let mut chunk: Vec<(usize, Vec<u8>)> = Vec::with_capacity(MEASURE_CHUNK);
    let mut done = false;
    while !done {
        chunk.clear();
        while chunk.len() < MEASURE_CHUNK {
            let mut raw = Vec::new();
            if reader
                .read_until(b'\n', &mut raw)
                .map_err(|e| Error::io(path, e))?
                == 0
            {
                done = true;
                break;
            }
            line += 1;
            if raw.last() == Some(&b'\n') {
                raw.pop();
            }
            chunk.push((line, raw));
        }
        let measured: Vec<_> = chunk.par_iter().map(measure).collect();
        for ((line, _), measured) in chunk.iter().zip(measured) {
            match measured {
                None => {}
                Some(Ok(lengths)) => rows.push(LineLengths {
                    line: u32::try_from(*line).unwrap_or(u32::MAX),
                    lengths,
                }),
                Some(Err(message)) => problems.push(*line, message),
            }
        }
    }
    if rows.is_empty() && problems.is_empty() {
        problems.push(1, "the file has no preference rows".into());
    }
    problems.into_result(shown, rows)
}

/// Lines measured at once by [`measure_file`].
const MEASURE_CHUNK: usize = 4096;

/// The micro-batches a job will see, from its data's lengths: the most pairs in one and the
/// tokens of its longest padded row, for training and for evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchShape {
    /// Training rows (pairs) after the eval split.
    pub train_rows: usize,
    /// Tokens of the longest training row the run trains on, after truncation (chosen or
    /// rejected, whichever is longer): a micro-batch that holds it is padded to this length.
    pub train_length: usize,
    pub eval_rows: usize,
    /// As `train_length`, over the evaluation rows; 0 when the job does not evaluate.
    pub eval_length: usize,
}

/// The [`BatchShape`] of `spec` on measured data: `train` (shown as `train_name`) and, when
/// the job has an eval file, `eval`; without one, `data.eval_fraction` of train is split off
/// with the seed exactly as training splits it.
///
/// Every row is checked against the job's lengths first: a row that truncation leaves with no
/// answer token is an error naming its file and line, as training would report it.
pub fn batch_shape(
    spec: &JobSpec,
    train: (&Path, &[LineLengths]),
    eval: Option<(&Path, &[LineLengths])>,
) -> Result<BatchShape> {
    let opts = TokenizeOptions::from_spec(&spec.data);
    let cut = |(name, rows): (&Path, &[LineLengths])| -> Result<Vec<usize>> {
        let mut problems = Problems::default();
        let mut lengths = Vec::with_capacity(rows.len());
        for row in rows {
            let cut = row.lengths.truncated(&opts);
            match cut.empty_answer(&opts) {
                Some(message) => problems.push(row.line as usize, message),
                None => lengths.push(cut.padded()),
            }
        }
        problems.into_result(name, lengths)
    };
    let (train, eval) = match eval {
        Some(eval) => match (cut(train), cut(eval)) {
            (Ok(t), Ok(e)) => (t, e),
            (Err(a), Err(b)) => return Err(Error::Config(format!("{a}\n{b}"))),
            (Err(e), _) | (_, Err(e)) => return Err(e),
        },
        None => split_eval(cut(train)?, spec.data.eval_fraction, spec.train.seed),
    };
    let longest = |rows: &[usize]| rows.iter().copied().max().unwrap_or(0);
    // A run that ends inside its first epoch sees only its first batches; a longer one sees
    // every row, and the longest in a full batch (the bound, met on almost every shuffle).
    let train_length = match crate::train::first_epoch_batches(spec, train.len()) {
        Some(batches) => batches
            .iter()
            .flat_map(|rows| rows.iter().map(|&i| train[i]))
            .max()
            .unwrap_or(0),
        None => longest(&train),
    };
    Ok(BatchShape {
        train_rows: train.len(),
        train_length,
        eval_rows: eval.len(),
        eval_length: longest(&eval),
    })
}

/// The [`BatchShape`] of `spec`: the tokenizer and chat template of its model (no weights are
/// loaded), and the lengths of `data.train` and, when set, `data.eval`, each got by
/// `measure(value, tokenizer, template)` (the daemon reads them from its cache). An error
/// names the key at fault, or the row.
pub fn job_batch_shape(
    spec: &JobSpec,
    measure: impl Fn(&str, &TokenizerInfo, Option<&ChatTemplate>) -> Result<Vec<LineLengths>>,
) -> Result<BatchShape> {
    fn keyed(key: &'static str) -> impl Fn(Error) -> Error {
        move |e| Error::Config(format!("{key}: {e}"))
    }
    let tok =
        crate::model::read_tokenizer(Path::new(&spec.model.base)).map_err(keyed("model.base"))?;
    let template = ChatTemplate::from_setting(&spec.data.chat_template, &tok)
        .map_err(keyed("data.chat_template"))?;
    let train = measure(&spec.data.train, &tok, template.as_ref()).map_err(keyed("data.train"))?;
    let eval = match spec.data.eval.as_str() {
        "" => None,
        eval => Some(measure(eval, &tok, template.as_ref()).map_err(keyed("data.eval"))?),
    };
    batch_shape(
        spec,
        (Path::new(&spec.data.train), &train),
        eval.as_deref().map(|e| (Path::new(&spec.data.eval), e)),
    )
}

/// [`job_batch_shape`] with the files read straight from the paths the job names (nothing is
/// cached): for `orpod calibrate` and jobs run outside the daemon.
pub fn measure_job(spec: &JobSpec) -> Result<BatchShape> {
    job_batch_shape(spec, |value, tok, template| {
        let path = Path::new(value);
        measure_file(path, path, tok, template)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_support::llama;
    use crate::data::{load_job_data, TokenizedPair};

    const ROWS: &str = concat!(
        "{\"prompt\":\"hello\",\"chosen\":\" yes\",\"rejected\":\" no\"}\n",
        "\n",
        "{\"prompt\":\"a b c d e\",\"chosen\":\" yes\",\"rejected\":\" no f g\"}\n",
        "{\"prompt\":\"a b\",\"chosen\":\" yes f g\",\"rejected\":\" no\"}\n",
        "{\"prompt\":\"hello\",\"chosen\":\" no\",\"rejected\":\" yes\"}\n",
    );

    fn spec_for(path: &Path, max_length: usize, eval_fraction: f64) -> JobSpec {
        let mut spec = JobSpec::default();
        spec.model.base = "m".into();
        spec.data.train = path.to_string_lossy().into_owned();
        spec.data.chat_template = "none".into();
        spec.data.max_length = max_length;
        spec.data.eval_fraction = eval_fraction;
        spec
    }

    fn longest(pairs: &[TokenizedPair]) -> usize {
        pairs
            .iter()
            .map(|p| p.chosen_ids.len().max(p.rejected_ids.len()))
            .max()
            .unwrap_or(0)
    }

    /// The shape from lengths is the shape of the pairs training builds, for every split and
    /// truncation: the estimate sizes exactly the batches the worker will pad.
    #[test]
    fn the_shape_is_that_of_the_tokenized_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prefs.jsonl");
        std::fs::write(&path, ROWS).unwrap();
        let tok = llama();
        let rows = measure_file(&path, &path, &tok, None).unwrap();
        assert_eq!(
            rows.iter().map(|r| r.line).collect::<Vec<_>>(),
            [1, 3, 4, 5]
        );
        for (max_length, fraction) in [(1024, 0.0), (1024, 0.5), (8, 0.0), (8, 0.25), (7, 0.5)] {
            let spec = spec_for(&path, max_length, fraction);
            let shape = batch_shape(&spec, (&path, &rows), None).unwrap();
            let (train, eval) = load_job_data(&spec, &tok).unwrap();
            assert_eq!(
                shape,
                BatchShape {
                    train_rows: train.len(),
                    train_length: longest(&train),
                    eval_rows: eval.len(),
                    eval_length: longest(&eval),
                },
                "max_length {max_length}, eval_fraction {fraction}"
            );
        }
    }

    /// A trial run of a few steps is sized on the batches it trains on, not on rows it never
    /// reaches; from one epoch on, on the longest row.
    #[test]
    fn a_run_shorter_than_an_epoch_is_sized_on_its_own_batches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prefs.jsonl");
        std::fs::write(&path, ROWS).unwrap();
        let rows = measure_file(&path, &path, &llama(), None).unwrap();
        let mut spec = spec_for(&path, 1024, 0.0);
        spec.data.shuffle = false;
        spec.train.batch_size = 1;
        spec.train.max_steps = 1;
        let padded: Vec<usize> = rows.iter().map(|r| r.lengths.padded()).collect();
        let shape = |spec: &JobSpec| batch_shape(spec, (&path, &rows), None).unwrap();
        assert_eq!(shape(&spec).train_length, padded[0]);
        spec.train.max_steps = 2;
        assert_eq!(shape(&spec).train_length, padded[0].max(padded[1]));
        spec.train.max_steps = 4;
        assert_eq!(shape(&spec).train_length, *padded.iter().max().unwrap());
        assert!(padded[0] < padded[1], "{padded:?}");
    }

    #[test]
    fn a_row_left_without_an_answer_is_named_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prefs.jsonl");
        std::fs::write(&path, ROWS).unwrap();
        let rows = measure_file(&path, Path::new("sha256:ab"), &llama(), None).unwrap();
        // Row 3's prompt is [<s> a b c d e]: 6 tokens fill max_length 6.
        let err = batch_shape(
            &spec_for(&path, 6, 0.0),
            (Path::new("sha256:ab"), &rows),
            None,
        )
        .unwrap_err();
        match err {
            Error::Data {
                path,
                line,
                message,
            } => {
                assert_eq!((path.to_str(), line), (Some("sha256:ab"), 3));
                assert!(
                    message.contains("prompt alone fills max_length"),
                    "{message}"
                );
            }
            other => panic!("{other}"),
        }
    }

    /// Rows measured a chunk at a time in parallel keep file order and their lines, across
    /// chunk boundaries and blank lines.
    #[test]
    fn large_files_keep_order_and_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prefs.jsonl");
        let mut text = String::new();
        for i in 0..2 * MEASURE_CHUNK + 7 {
            if i % 1000 == 999 {
                text.push('\n');
            }
            let answer = " yes".repeat(1 + i % 5);
            text.push_str(&format!(
                "{{\"prompt\":\"q{i}\",\"chosen\":\"{answer}\",\"rejected\":\" no\"}}\n"
            ));
        }
        std::fs::write(&path, &text).unwrap();
        let tok = llama();
        let rows = measure_file(&path, &path, &tok, None).unwrap();
        let pairs =
            crate::data::load_pairs(&path, &tok, None, &TokenizeOptions::default()).unwrap();
        assert_eq!(rows.len(), 2 * MEASURE_CHUNK + 7);
        assert_eq!(rows.len(), pairs.len());
        for (row, pair) in rows.iter().zip(&pairs) {
            assert_eq!(
                row.lengths.padded(),
                pair.chosen_ids.len().max(pair.rejected_ids.len()),
                "line {}",
                row.line
            );
        }
        let lines: Vec<usize> = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.is_empty())
            .map(|(i, _)| i + 1)
            .collect();
        assert_eq!(
            rows.iter().map(|r| r.line as usize).collect::<Vec<_>>(),
            lines
        );
    }

    #[test]
    fn bad_rows_are_reported_as_training_reports_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prefs.jsonl");
        std::fs::write(&path, "{\"prompt\":\"p\",\"chosen\":\" c\"}\nnot json\n").unwrap();
        let err = measure_file(&path, &path, &llama(), None).unwrap_err();
        let Error::Data { line, message, .. } = err else {
            panic!("{err}")
        };
        assert_eq!(line, 1);
        assert!(message.contains(":2:"), "{message}");
    }
}
