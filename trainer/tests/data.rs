//! TRL parity of the data path alone (no model): the templated strings and the token ids of
//! every row, against `tests/fixtures/parity/<case>.json` as written by
//! `tests/parity/trl_reference.py` (TRL 1.16.0, transformers 5.24.0, tokenizers 0.23.3; the
//! SmolLM2 tokenizer and chat template of the tiny models; max_length 256, nothing truncated).

mod common;

use std::path::Path;

use common::{fixture, fixtures};
use orpo_trainer::data::{self, TokenizeOptions};
use orpo_trainer::template::ChatTemplate;
use orpo_trainer::tokenizer::TokenizerInfo;

const CASES: [&str; 3] = ["tiny_fresh", "tiny_ga_clip", "tiny_qwen2"];

#[test]
fn templated_text_and_ids_match_trl() {
    for case in CASES {
        let fx = fixture(case);
        let model = Path::new(fx["model_dir"].as_str().unwrap())
            .file_name()
            .unwrap();
        let tok = TokenizerInfo::from_hf_dir(&fixtures().join(model)).unwrap();
        let template = ChatTemplate::from_setting("auto", &tok).unwrap();
        let opts = TokenizeOptions {
            max_length: fx["orpo_config_kwargs"]["max_length"].as_u64().unwrap() as usize,
            max_prompt_length: None,
            ..TokenizeOptions::default()
        };
        for (file, key) in [
            ("train_file", "tokenized_train"),
            ("eval_file", "tokenized_eval"),
        ] {
            let path = fixtures().join(fx[file].as_str().unwrap());
            let rows = data::read_rows(&path).unwrap();
            let expected = fx[key].as_array().unwrap();
            assert_eq!(rows.len(), expected.len(), "{case} {key}: row count");
            for (row, trl) in rows.iter().zip(expected) {
                let what = format!("{case} {key} line {}", row.line);
                let text = data::apply_chat_template(&row.pair, template.as_ref()).unwrap();
                assert_eq!(
                    text.prompt,
                    trl["prompt"].as_str().unwrap(),
                    "{what}: prompt text"
                );
                assert_eq!(
                    text.chosen,
                    trl["chosen"].as_str().unwrap(),
                    "{what}: chosen text"
                );
                assert_eq!(
                    text.rejected,
                    trl["rejected"].as_str().unwrap(),
                    "{what}: rejected text"
                );
                let ours = data::tokenize_row(&text, &tok, &opts).unwrap();
                let ids = |k: &str| -> Vec<i64> { serde_json::from_value(trl[k].clone()).unwrap() };
                let wide = |v: &[u32]| v.iter().map(|&x| i64::from(x)).collect::<Vec<_>>();
                assert_eq!(
                    wide(&ours.prompt_ids),
                    ids("prompt_input_ids"),
                    "{what}: prompt ids"
                );
                assert_eq!(
                    wide(&ours.chosen_ids),
                    ids("chosen_input_ids"),
                    "{what}: chosen ids"
                );
                assert_eq!(
                    ours.chosen_labels,
                    ids("chosen_labels"),
                    "{what}: chosen labels"
                );
                assert_eq!(
                    wide(&ours.rejected_ids),
                    ids("rejected_input_ids"),
                    "{what}: rejected ids"
                );
                assert_eq!(
                    ours.rejected_labels,
                    ids("rejected_labels"),
                    "{what}: rejected labels"
                );
            }
        }
    }
}
