//! The byte-level BPE tokenizer rebuilt from GGUF metadata, as transformers' GGUF conversion
//! builds it except where the model's real `tokenizer.json` differs.

use std::collections::HashSet;

use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use super::meta::Meta;
use crate::model::Arch;
use crate::tokenizer::{SpecialToken, TokenizerInfo};
use crate::{Error, Result};

/// Split regexes by `tokenizer.ggml.pre`, as transformers' GGUF loader and the models'
/// `tokenizer.json` files have them.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp's `llama_token_type`.
const TOKEN_CONTROL: u64 = 3;
const TOKEN_USER_DEFINED: u64 = 4;

pub(super) fn tokenizer_from_metadata(meta: &Meta, arch: Arch) -> Result<TokenizerInfo> {
    match meta.required_string("tokenizer.ggml.model")? {
        "gpt2" => {}
        "llama" => {
            return Err(meta.error(
                "SentencePiece GGUF tokenizers (tokenizer.ggml.model = \"llama\") are not supported yet; use the model's Hugging Face folder",
            ))
        }
        other => return Err(meta.error(format!("GGUF tokenizer model {other:?} is not supported; supported: gpt2 (byte-level BPE)"))),
    }
    let tokens = meta.strings("tokenizer.ggml.tokens")?;
    let types = meta.ints("tokenizer.ggml.token_type")?;
    let pre = meta.string("tokenizer.ggml.pre")?.unwrap_or("default");
    let mut tokenizer = byte_level_bpe(meta, &tokens)?;
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer(meta, pre)?));
    if QWEN2_PRES.contains(&pre) {
        // Qwen2's tokenizer.json normalizes to NFC (transformers' GGUF loader leaves it out).
        tokenizer
            .with_normalizer(Some(NFC))
            .map_err(|e| meta.error(format!("tokenizer: {e}")))?;
    }
    tokenizer.with_decoder(Some(ByteLevel::default()));
    add_marked_tokens(&mut tokenizer, &tokens, &types)
        .map_err(|e| meta.error(format!("tokenizer: {e}")))?;

    let special = |key: &str| -> Result<Option<SpecialToken>> {
        let Some(id) = meta.usize(key)? else {
            return Ok(None);
        };
        let text = tokens
            .get(id)
            .ok_or_else(|| meta.error(format!("{key} {id} is past the {} tokens", tokens.len())))?;
        Ok(Some(SpecialToken {
            text: text.to_string(),
            id: id as u32,
        }))
    };
    let eos = special("tokenizer.ggml.eos_token_id")?.ok_or_else(|| {
        meta.error("no tokenizer.ggml.eos_token_id: the trainer needs EOS to end completions")
    })?;
    // llama.cpp copies Qwen2's config.json `bos_token_id` (<|endoftext|>), but Qwen2's tokenizer
    // has no BOS and TRL must not add one.
    let bos = match arch {
        Arch::Qwen2 => None,
        Arch::Llama => special("tokenizer.ggml.bos_token_id")?,
    };
    let pad = special("tokenizer.ggml.padding_token_id")?;
    let mut specials: Vec<&SpecialToken> = [bos.as_ref(), Some(&eos), pad.as_ref()]
        .into_iter()
        .flatten()
        .collect();
    specials.dedup();
    tokenizer
        .add_special_tokens(
            specials
                .iter()
                .map(|t| AddedToken::from(t.text.clone(), true)),
        )
        .map_err(|e| meta.error(format!("tokenizer: {e}")))?;
    let add_bos = meta.bool("tokenizer.ggml.add_bos_token")?.unwrap_or(false);
    let add_eos = meta.bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
    if let Some(template) = bos_eos_template(
        bos.as_ref().filter(|_| add_bos),
        Some(&eos).filter(|_| add_eos),
    )? {
        tokenizer.with_post_processor(Some(template));
    }
    Ok(TokenizerInfo {
        tokenizer,
        pad_id: pad.as_ref().map_or(eos.id, |p| p.id),
        bos,
        eos,
        chat_template: meta.string("tokenizer.chat_template")?.map(str::to_string),
    })
}

const QWEN2_PRES: [&str; 3] = ["qwen2", "deepseek-r1-qwen", "megrez"];

fn pre_tokenizer(meta: &Meta, pre: &str) -> Result<PreTokenizerWrapper> {
    let split = match pre {
        // SmolLM2's tokenizer.json: every digit on its own, then GPT-2's regex (llama.cpp "smollm").
        "smollm" => {
            return Ok(Sequence::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ])
            .into())
        }
        "llama3" | "llama-v3" | "llama-bpe" | "smaug-bpe" | "falcon3" | "pixtral" | "dbrx"
        | "lfm2" => LLAMA3_SPLIT,
        "tekken" => TEKKEN_SPLIT,
        p if QWEN2_PRES.contains(&p) => QWEN2_SPLIT,
        "gpt2" | "default" => return Ok(ByteLevel::new(false, true, true).into()),
        other => {
            tracing::warn!(pre = other, "unknown tokenizer.ggml.pre; using GPT-2's split, token ids may differ from the original tokenizer");
            return Ok(ByteLevel::new(false, true, true).into());
        }
    };
    let split = Split::new(
        SplitPattern::Regex(split.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| meta.error(format!("tokenizer split regex: {e}")))?;
    Ok(Sequence::new(vec![
        split.into(),
        ByteLevel::new(false, true, false).into(),
    ])
    .into())
}

/// The BPE model. Tokens outside the byte-level alphabet (a few GGUFs store added tokens as raw
/// text) are respelled byte by byte, as transformers does, so the merges find them.
fn byte_level_bpe(meta: &Meta, tokens: &[&str]) -> Result<Tokenizer> {
    let spelling = byte_level_alphabet();
    let alphabet: HashSet<char> = spelling.iter().copied().collect();
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| {
            let spelled = match t.chars().all(|c| alphabet.contains(&c)) {
                true => t.to_string(),
                false => t.bytes().map(|b| spelling[b as usize]).collect(),
            };
            (spelled, id as u32)
        })
        .collect();
    let merges = meta
        .strings("tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| meta.error(format!("bad merge {m:?} in tokenizer.ggml.merges")))
        })
        .collect::<Result<Vec<_>>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| meta.error(format!("tokenizer: {e}")))?;
    Ok(Tokenizer::new(bpe))
}

/// GPT-2's `bytes_to_unicode`: the printable character standing for each byte.
pub(crate) fn byte_level_alphabet() -> [char; 256] {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut out = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        out[b as usize] = if printable(b) {
            char::from(b)
        } else {
            next += 1;
            char::from_u32(next - 1).expect("256..324 are valid chars")
        };
    }
    out
}

/// Control tokens become special added tokens and user-defined ones plain added tokens, so both
/// are matched whole in text (transformers' `add_gguf_special_tokens`). A control token outside
/// the byte-level alphabet is a llama.cpp mislabel and is skipped, as transformers does.
fn add_marked_tokens(
    tokenizer: &mut Tokenizer,
    tokens: &[&str],
    types: &[u64],
) -> tokenizers::Result<()> {
    let alphabet: HashSet<char> = byte_level_alphabet().into_iter().collect();
    let marked = |kind: u64| {
        tokens
            .iter()
            .zip(types)
            .filter(move |(_, t)| **t == kind)
            .map(|(tok, _)| *tok)
    };
    let control: Vec<AddedToken> = marked(TOKEN_CONTROL)
        .filter(|t| t.chars().all(|c| alphabet.contains(&c)))
        .map(|t| AddedToken::from(t, true))
        .collect();
    tokenizer.add_special_tokens(control)?;
    let user: Vec<AddedToken> = marked(TOKEN_USER_DEFINED)
        .filter(|t| tokenizer.token_to_id(t).is_some())
        .map(|t| AddedToken::from(t, false).normalized(false))
        .collect();
    tokenizer.add_tokens(user)?;
    Ok(())
}

/// The post-processor for `add_bos_token` / `add_eos_token`, as transformers builds it.
fn bos_eos_template(
    bos: Option<&SpecialToken>,
    eos: Option<&SpecialToken>,
) -> Result<Option<TemplateProcessing>> {
    if bos.is_none() && eos.is_none() {
        return Ok(None);
    }
    let piece = |t: Option<&SpecialToken>, type_id: u8| t.map(|t| format!("{}:{type_id}", t.text));
    let single: Vec<String> = [piece(bos, 0), Some("$A:0".into()), piece(eos, 0)]
        .into_iter()
        .flatten()
        .collect();
    let second: Vec<String> = [piece(bos, 1), Some("$B:1".into()), piece(eos, 1)]
        .into_iter()
        .flatten()
        .collect();
    let pair: Vec<String> = single.iter().chain(&second).cloned().collect();
    let specials: Vec<(String, u32)> = [bos, eos]
        .into_iter()
        .flatten()
        .map(|t| (t.text.clone(), t.id))
        .collect();
    let err = |e: String| Error::Tokenizer(format!("BOS/EOS template: {e}"));
    let template = TemplateProcessing::builder()
        .try_single(single)
        .map_err(err)?
        .try_pair(pair)
        .map_err(err)?
        .special_tokens(specials)
        .build()
        .map_err(|e| err(e.to_string()))?;
    Ok(Some(template))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::model::gguf::meta::test_meta as meta;

    #[test]
    fn split_regexes_compile_with_fancy_regex() {
        let md = HashMap::new();
        for pre in ["llama-bpe", "qwen2", "tekken", "smollm", "gpt2"] {
            pre_tokenizer(&meta(&md), pre).unwrap();
        }
    }
}
