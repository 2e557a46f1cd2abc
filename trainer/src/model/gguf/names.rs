//! Tensor names between llama.cpp and Hugging Face, and llama.cpp's Q/K rope permutation.

use candle_core::Tensor;

/// Whole-model tensors: (llama.cpp name, Hugging Face name).
const MODEL_TENSORS: [(&str, &str); 3] = [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// Per-layer modules: (llama.cpp `blk.N.` module, Hugging Face `model.layers.N.` module).
const LAYER_MODULES: [(&str, &str); 9] = [
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
];

/// llama.cpp's tensor name to Hugging Face's (`blk.0.attn_q.weight` ->
/// `model.layers.0.self_attn.q_proj.weight`); `None` for tensors the trainer does not model.
pub fn hf_name(gguf: &str) -> Option<String> {
    rename(gguf, "blk.", "model.layers.", |(g, h)| (g, h))
}

/// Hugging Face's tensor name to llama.cpp's, the inverse of [`hf_name`].
pub fn gguf_name(hf: &str) -> Option<String> {
    rename(hf, "model.layers.", "blk.", |(g, h)| (h, g))
}

/// Renames through the tables; `orient` picks which column is the source.
fn rename(
    name: &str,
    from_layer: &str,
    to_layer: &str,
    orient: fn((&'static str, &'static str)) -> (&'static str, &'static str),
) -> Option<String> {
    if let Some((_, to)) = MODEL_TENSORS
        .map(orient)
        .into_iter()
        .find(|(from, _)| *from == name)
    {
        return Some(to.to_string());
    }
    let (layer, rest) = name.strip_prefix(from_layer)?.split_once('.')?;
    layer.parse::<usize>().ok()?;
    let (module, kind) = rest.rsplit_once('.')?;
    let (_, to) = LAYER_MODULES
        .map(orient)
        .into_iter()
        .find(|(from, _)| *from == module)?;
    matches!(kind, "weight" | "bias").then(|| format!("{to_layer}{layer}.{to}.{kind}"))
}

/// Undoes llama.cpp's `LlamaModel.permute` of q/k rows (weights or biases): llama.cpp pairs
/// rotary dims (2i, 2i+1) within a head, HF pairs (i, i + head_dim/2).
pub fn unpermute(t: &Tensor, n_head: usize, head_dim: usize) -> candle_core::Result<Tensor> {
    let dims = t.dims().to_vec();
    let cols: usize = dims[1..].iter().product();
    t.reshape((n_head, head_dim / 2, 2, cols))?
        .transpose(1, 2)?
        .reshape(dims)
}

/// [`unpermute`] as a row order: row `i` of the Hugging Face layout is stored row
/// `order[i]`. Rows are whole quantized blocks, so this is exact on a quantized tensor's bytes.
pub fn unpermute_rows(n_head: usize, head_dim: usize) -> Vec<usize> {
    let half = head_dim / 2;
    let mut order = Vec::with_capacity(n_head * head_dim);
    for h in 0..n_head {
        for a in 0..2 {
            for j in 0..half {
                order.push(h * head_dim + 2 * j + a);
            }
        }
    }
    order
}

/// llama.cpp's `LlamaModel.permute` (`w.reshape(n_head, 2, hd/2, in).swapaxes(1, 2)`), for
/// writing llama-arch GGUF files; the inverse of [`unpermute`].
pub fn permute(t: &Tensor, n_head: usize, head_dim: usize) -> candle_core::Result<Tensor> {
    let dims = t.dims().to_vec();
    let cols: usize = dims[1..].iter().product();
    t.reshape((n_head, 2, head_dim / 2, cols))?
        .transpose(1, 2)?
        .reshape(dims)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn unpermute_rows_is_unpermute() {
        let (heads, hd, cols) = (3, 8, 2);
        let t = Tensor::arange(0f32, (heads * hd * cols) as f32, &Device::Cpu)
            .unwrap()
            .reshape((heads * hd, cols))
            .unwrap();
        let idx: Vec<u32> = unpermute_rows(heads, hd)
            .iter()
            .map(|&r| r as u32)
            .collect();
        let by_rows = t
            .index_select(&Tensor::new(idx.as_slice(), &Device::Cpu).unwrap(), 0)
            .unwrap();
        let want = unpermute(&t, heads, hd).unwrap();
        assert_eq!(
            by_rows.to_vec2::<f32>().unwrap(),
            want.to_vec2::<f32>().unwrap()
        );
    }

    #[test]
    fn names_map_both_ways() {
        let pairs = [
            ("token_embd.weight", "model.embed_tokens.weight"),
            ("output.weight", "lm_head.weight"),
            (
                "blk.12.attn_q.bias",
                "model.layers.12.self_attn.q_proj.bias",
            ),
            (
                "blk.0.ffn_norm.weight",
                "model.layers.0.post_attention_layernorm.weight",
            ),
        ];
        for (g, h) in pairs {
            assert_eq!(hf_name(g).as_deref(), Some(h));
            assert_eq!(gguf_name(h).as_deref(), Some(g));
        }
        assert_eq!(hf_name("blk.0.attn_q_norm.weight"), None);
        assert_eq!(hf_name("blk.x.attn_q.weight"), None);
    }

    #[test]
    fn permute_round_trips_and_interleaves_rotary_pairs() {
        // One head, head_dim 4, one input column: HF rows (0, 1, 2, 3) pair (0, 2) and (1, 3);
        // llama.cpp keeps pairs adjacent: (0, 2, 1, 3).
        let hf = Tensor::new(&[[0f32], [1.], [2.], [3.]], &Device::Cpu).unwrap();
        let ggml = permute(&hf, 1, 4).unwrap();
        assert_eq!(
            ggml.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [0., 2., 1., 3.]
        );
        let back = unpermute(&ggml, 1, 4).unwrap();
        assert_eq!(
            back.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [0., 1., 2., 3.]
        );
    }
}
