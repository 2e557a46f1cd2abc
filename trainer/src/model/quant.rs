//! Frozen weights kept block-quantized (GGUF's Q4_0 ... Q6_K): a [`QWeight`] holds a 2-D weight
//! as row tiles of candle `QTensor`s and hands out one dequantized tile at a time, so a model
//! trains with its quantized bytes plus one full-precision tile in memory, never a
//! full-precision copy of itself.
//!
//! Why rows: a quantized row is a whole number of blocks (GGUF and candle require the last
//! dimension to be a multiple of the block size), so rows are independent byte runs. A row
//! range is a byte range, a row permutation (llama.cpp's Q/K order) is exact on the bytes, and
//! a tile is its own `QTensor`, which is what candle's CUDA backend can dequantize.
//!
//! The callers' rule (docs/quantized-bases.md): a dequantized tile is used and dropped inside
//! the function that asked for it. It must never become an operand of a recorded graph op or be
//! captured by a backward closure: that would keep every layer's tile alive until the backward,
//! a full-precision copy of the model after all. Ops capture the `QWeight` (an `Arc`) and
//! dequantize again in the backward.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device, Result, Tensor};

/// The most bytes one dequantized f32 tile of a projection takes: big enough that a tile's
/// matmul is one efficient kernel (Llama 3 8B's 14336 x 4096 projections are 8 tiles).
pub const TILE_F32_BYTES: usize = 32 << 20;

/// The most bytes one dequantized f32 tile of the embedding and the output head takes. The CPU
/// head kernel holds one beside the logits of a chunk, at the end of the forward pass when
/// every activation is alive; smaller tiles keep that peak low, and as they are under glibc's
/// mmap threshold (32 MiB, `runtime`), each one reuses the heap block its predecessor freed.
/// Measured on SmolLM2 (vocabulary 49152): 32 MiB tiles put the head pass 24 MiB above the
/// estimate's other terms on small jobs; the matmuls of 8 MiB tiles are still large.
pub const HEAD_TILE_F32_BYTES: usize = 8 << 20;

/// The tile size for the frozen weight `name` (a Hugging Face tensor name).
pub fn tile_f32_bytes(name: &str) -> usize {
    match name {
        "model.embed_tokens.weight" | "lm_head.weight" => HEAD_TILE_F32_BYTES,
        _ => TILE_F32_BYTES,
    }
}

/// A frozen 2-D weight `[rows, cols]` (PyTorch's `[out, in]`), block-quantized, in row tiles.
#[derive(Debug)]
pub struct QWeight {
    dtype: GgmlDType,
    rows: usize,
    cols: usize,
    tile_rows: usize,
    tiles: Vec<QTensor>,
    device: Device,
}

impl QWeight {
    /// A weight from its quantized bytes as GGUF stores them (row-major, `rows` runs of
    /// `cols / block_size` blocks). `row_order[i]`, when given, is the stored row that becomes
    /// row `i` (the Q/K un-permutation of llama.cpp's layout).
    /// Tiles take at most `tile_f32_bytes` dequantized to f32 ([`tile_f32_bytes`]).
    pub fn from_bytes(
        bytes: &[u8],
        dtype: GgmlDType,
        (rows, cols): (usize, usize),
        row_order: Option<&[usize]>,
        device: &Device,
        tile_f32_bytes: usize,
    ) -> Result<QWeight> {
        let tile_rows = (tile_f32_bytes / (cols.max(1) * 4)).max(1);
        Self::tiled(bytes, dtype, (rows, cols), row_order, device, tile_rows)
    }

    /// Quantizes a dense `[rows, cols]` tensor (any float dtype, any device) to `dtype`.
    /// `cols` must be a multiple of the type's block size (see [`quantizable`]).
    pub fn quantize(
        t: &Tensor,
        dtype: GgmlDType,
        device: &Device,
        tile_f32_bytes: usize,
    ) -> Result<QWeight> {
        let (rows, cols) = t.dims2()?;
        let q = QTensor::quantize(&t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?, dtype)?;
        Self::from_bytes(
            &q.data()?,
            dtype,
            (rows, cols),
            None,
            device,
            tile_f32_bytes,
        )
    }

    /// [`Self::from_bytes`] with tiles of `tile_rows` rows (tests use small tiles).
    pub(crate) fn tiled(
        bytes: &[u8],
        dtype: GgmlDType,
        (rows, cols): (usize, usize),
        row_order: Option<&[usize]>,
        device: &Device,
        tile_rows: usize,
    ) -> Result<QWeight> {
        let block = dtype.block_size();
        if cols == 0 || cols % block != 0 {
            return Err(bad(format!(
                "{dtype:?} weight with {cols} columns: not a whole number of blocks of {block}"
            )));
        }
        let row_bytes = cols / block * dtype.type_size();
        if bytes.len() != rows * row_bytes {
            return Err(bad(format!(
                "{dtype:?} weight [{rows}, {cols}] needs {} bytes, got {}",
                rows * row_bytes,
                bytes.len()
            )));
        }
        if let Some(order) = row_order {
            if order.len() != rows || order.iter().any(|&r| r >= rows) {
                return Err(bad(format!(
                    "row order of {} rows for a weight of {rows}",
                    order.len()
                )));
            }
        }
        let tile_rows = tile_rows.clamp(1, rows.max(1));
        let mut tiles = Vec::with_capacity(rows.div_ceil(tile_rows));
        for start in (0..rows).step_by(tile_rows) {
            let end = (start + tile_rows).min(rows);
            let data: Cow<[u8]> = match row_order {
                None => Cow::Borrowed(&bytes[start * row_bytes..end * row_bytes]),
                Some(order) => Cow::Owned(
                    order[start..end]
                        .iter()
                        .flat_map(|&r| &bytes[r * row_bytes..(r + 1) * row_bytes])
                        .copied()
                        .collect(),
                ),
            };
            // `from_data` reads the bytes as blocks in place: give it its own (aligned) copy.
            let data = Cow::Owned(data.into_owned());
            let storage = QStorage::from_data(data, device, dtype)?;
            tiles.push(QTensor::new(storage, (end - start, cols))?);
        }
        Ok(QWeight {
            dtype,
            rows,
            cols,
            tile_rows,
            tiles,
            device: device.clone(),
        })
    }

    /// `[rows, cols]`.
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    pub fn dtype(&self) -> GgmlDType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Bytes of the quantized data.
    pub fn bytes(&self) -> usize {
        self.rows * self.cols / self.dtype.block_size() * self.dtype.type_size()
    }

    pub fn n_tiles(&self) -> usize {
        self.tiles.len()
    }

    /// The rows of tile `i`.
    pub fn tile_rows(&self, i: usize) -> Range<usize> {
        let start = i * self.tile_rows;
        start..(start + self.tile_rows).min(self.rows)
    }

    /// Tile `i` dequantized, `[tile rows, cols]` in `dtype`: used and dropped by the caller.
    pub fn dequantize_tile(&self, i: usize, dtype: DType) -> Result<Tensor> {
        self.tiles[i].dequantize(&self.device)?.to_dtype(dtype)
    }

    /// The whole weight dequantized: a full-precision copy of this weight, for one pass of the
    /// output head (and exports and tests). On the CPU the tiles are written into one buffer,
    /// so the copy and one tile are alive, not the tiles and their concatenation.
    pub fn dequantize(&self, dtype: DType) -> Result<Tensor> {
        if self.device.is_cpu() {
            let mut all = Vec::with_capacity(self.rows * self.cols);
            for tile in &self.tiles {
                all.extend(
                    tile.dequantize(&self.device)?
                        .flatten_all()?
                        .to_vec1::<f32>()?,
                );
            }
            return Tensor::from_vec(all, (self.rows, self.cols), &self.device)?.to_dtype(dtype);
        }
        let tiles = (0..self.n_tiles())
            .map(|i| self.dequantize_tile(i, dtype))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&tiles, 0)
    }

    /// `x · Wᵀ`: `x [..., cols]` → `[..., rows]`, a tile of output columns at a time.
    pub fn matmul_t(&self, x: &Tensor) -> Result<Tensor> {
        let (lead, x2) = flatten(x, self.cols)?;
        let mut parts = Vec::with_capacity(self.n_tiles());
        for i in 0..self.n_tiles() {
            let w = self.dequantize_tile(i, x.dtype())?;
            parts.push(x2.matmul(&w.t()?)?);
        }
        let y = if parts.len() == 1 {
            parts.pop().expect("one tile")
        } else {
            Tensor::cat(&parts, 1)?
        };
        y.reshape([lead, vec![self.rows]].concat())
    }

    /// `g · W`: `g [..., rows]` → `[..., cols]` (the input's gradient of [`Self::matmul_t`]),
    /// summed over tiles.
    pub fn grad_input(&self, g: &Tensor) -> Result<Tensor> {
        let (lead, g2) = flatten(g, self.rows)?;
        let mut acc: Option<Tensor> = None;
        for i in 0..self.n_tiles() {
            let rows = self.tile_rows(i);
            let w = self.dequantize_tile(i, g.dtype())?;
            let part = g2.narrow(1, rows.start, rows.len())?.matmul(&w)?;
            acc = Some(match acc {
                None => part,
                Some(a) => (a + part)?,
            });
        }
        let acc = acc.expect("a weight has rows");
        acc.reshape([lead, vec![self.cols]].concat())
    }

    /// Rows `ids` (any shape of integer ids) → `[ids..., cols]` in f32, dequantizing only the
    /// rows asked for.
    pub fn embedding(&self, ids: &Tensor) -> Result<Tensor> {
        let shape = [ids.dims().to_vec(), vec![self.cols]].concat();
        let flat: Vec<u32> = ids.flatten_all()?.to_dtype(DType::U32)?.to_vec1()?;
        if let Some(&past) = flat.iter().find(|&&id| id as usize >= self.rows) {
            return Err(bad(format!(
                "token id {past} is past the table's {} rows",
                self.rows
            )));
        }
        if self.n_tiles() == 1 {
            let ids = Tensor::new(flat.as_slice(), &self.device)?;
            return self.tiles[0].embedding(&ids)?.reshape(shape);
        }
        // Each tile gathers its own ids; the pieces come out in tile order and are put back
        // in the ids' order with one index_select.
        let mut parts = Vec::new();
        let mut order = Vec::with_capacity(flat.len());
        for i in 0..self.n_tiles() {
            let rows = self.tile_rows(i);
            let (pos, local): (Vec<u32>, Vec<u32>) = flat
                .iter()
                .enumerate()
                .filter(|(_, &id)| rows.contains(&(id as usize)))
                .map(|(p, &id)| (p as u32, id - rows.start as u32))
                .unzip();
            if pos.is_empty() {
                continue;
            }
            parts.push(self.tiles[i].embedding(&Tensor::new(local.as_slice(), &self.device)?)?);
            order.extend(pos);
        }
        let mut inverse = vec![0u32; order.len()];
        for (k, &p) in order.iter().enumerate() {
            inverse[p as usize] = k as u32;
        }
        let gathered = Tensor::cat(&parts, 0)?;
        let inverse = Tensor::new(inverse.as_slice(), &self.device)?;
        gathered.index_select(&inverse, 0)?.reshape(shape)
    }
}

/// A frozen weight as the model's ops use it: a plain tensor, or a [`QWeight`] dequantized a
/// tile at a time. Cloning shares the data, so a backward closure may keep one (a quantized
/// weight stays quantized in it).
#[derive(Clone, Debug)]
pub enum Frozen {
    Dense(Tensor),
    Quant(Arc<QWeight>),
}

impl Frozen {
    /// `[rows, cols]` (PyTorch's `[out, in]`).
    pub fn dims2(&self) -> Result<(usize, usize)> {
        match self {
            Frozen::Dense(t) => t.dims2(),
            Frozen::Quant(q) => Ok(q.dims()),
        }
    }

    /// The plain tensor, when the weight is one.
    pub fn dense(&self) -> Option<&Tensor> {
        match self {
            Frozen::Dense(t) => Some(t),
            Frozen::Quant(_) => None,
        }
    }

    /// `x · Wᵀ` for `x [..., cols]`, in `x`'s dtype.
    pub fn matmul_t(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Frozen::Dense(w) => x.broadcast_matmul(&w.t()?),
            Frozen::Quant(q) => q.matmul_t(x),
        }
    }

    /// `g · W` for `g [..., rows]`: the input gradient of [`Self::matmul_t`].
    pub fn grad_input(&self, g: &Tensor) -> Result<Tensor> {
        match self {
            Frozen::Dense(w) => g.broadcast_matmul(w),
            Frozen::Quant(q) => q.grad_input(g),
        }
    }

    /// Rows `ids` of an embedding table, `[ids..., cols]` in `dtype`.
    pub fn embedding(&self, ids: &Tensor, dtype: DType) -> Result<Tensor> {
        match self {
            Frozen::Dense(t) => {
                let flat = ids.flatten_all()?;
                let shape = [ids.dims().to_vec(), vec![t.dim(1)?]].concat();
                t.index_select(&flat, 0)?.reshape(shape)?.to_dtype(dtype)
            }
            Frozen::Quant(q) => q.embedding(ids)?.to_dtype(dtype),
        }
    }

    /// The whole weight in `dtype`: a full-precision copy of a quantized one (used and dropped
    /// by the caller, one weight at a time).
    pub fn to_dense(&self, dtype: DType) -> Result<Tensor> {
        match self {
            Frozen::Dense(t) => t.to_dtype(dtype),
            Frozen::Quant(q) => q.dequantize(dtype),
        }
    }

    /// The mean of the rows, `[cols]` in f32, a tile at a time.
    pub fn row_mean(&self) -> Result<Tensor> {
        match self {
            Frozen::Dense(t) => t.to_dtype(DType::F32)?.mean(0),
            Frozen::Quant(q) => {
                let mut sum: Option<Tensor> = None;
                for i in 0..q.n_tiles() {
                    let part = q.dequantize_tile(i, DType::F32)?.sum(0)?;
                    sum = Some(match sum {
                        None => part,
                        Some(s) => (s + part)?,
                    });
                }
                sum.expect("a weight has rows") / q.rows as f64
            }
        }
    }
}

/// The GGUF name of a block type, as `model.quantize` spells it.
pub fn ggml_name(dtype: GgmlDType) -> &'static str {
    match dtype {
        GgmlDType::Q4_0 => "q4_0",
        GgmlDType::Q4_1 => "q4_1",
        GgmlDType::Q5_0 => "q5_0",
        GgmlDType::Q5_1 => "q5_1",
        GgmlDType::Q8_0 => "q8_0",
        GgmlDType::Q8_1 => "q8_1",
        GgmlDType::Q2K => "q2_k",
        GgmlDType::Q3K => "q3_k",
        GgmlDType::Q4K => "q4_k",
        GgmlDType::Q5K => "q5_k",
        GgmlDType::Q6K => "q6_k",
        GgmlDType::Q8K => "q8_k",
        GgmlDType::F32 => "f32",
        GgmlDType::F16 => "f16",
        GgmlDType::BF16 => "bf16",
    }
}

fn bad(message: String) -> candle_core::Error {
    candle_core::Error::Msg(message)
}

/// `x [..., n]` as `[m, n]` with its leading dims.
fn flatten(x: &Tensor, n: usize) -> Result<(Vec<usize>, Tensor)> {
    let dims = x.dims();
    if dims.last() != Some(&n) {
        return Err(bad(format!(
            "expected a last dimension of {n}, got shape {:?}",
            dims
        )));
    }
    let lead = dims[..dims.len() - 1].to_vec();
    let m = lead.iter().product::<usize>();
    Ok((lead, x.contiguous()?.reshape((m, n))?))
}

/// The type a weight of `cols` columns is quantized to when `wanted` is asked: `wanted` when
/// `cols` is a whole number of its blocks; else, as llama.cpp's quantizer does, a 32-block type
/// of about the same precision (Q4_K→Q5_0, Q5_K→Q5_1, Q6_K→Q8_0); `None` when not even that
/// fits (the weight stays dense).
pub fn quantizable(wanted: GgmlDType, cols: usize) -> Option<GgmlDType> {
    if cols % wanted.block_size() == 0 {
        return Some(wanted);
    }
    let fallback = match wanted {
        GgmlDType::Q4K => GgmlDType::Q5_0,
        GgmlDType::Q5K => GgmlDType::Q5_1,
        GgmlDType::Q6K => GgmlDType::Q8_0,
        _ => return None,
    };
    (cols % fallback.block_size() == 0).then_some(fallback)
}

/// The block types a frozen base may keep (what GGUF files of Llama-family models use).
pub const KEPT_TYPES: [GgmlDType; 8] = [
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

#[cfg(test)]
mod tests {
    use super::*;

    /// A `[rows, cols]` weight with values of a real spread (not a constant a block codes
    /// exactly), from a fixed seed.
    fn weight(rows: usize, cols: usize) -> Tensor {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let v: Vec<f32> = (0..rows * cols)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect();
        Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    /// Every kept type: tiles (here of 3 rows, so tiles end mid-weight) dequantize to exactly
    /// what candle's whole-tensor dequantize gives, and a row order moves whole rows.
    #[test]
    fn tiles_and_row_orders_dequantize_exactly() {
        let (rows, cols) = (10, 512);
        let w = weight(rows, cols);
        for dtype in KEPT_TYPES {
            let q = QTensor::quantize(&w, dtype).unwrap();
            let whole = q.dequantize(&Device::Cpu).unwrap();
            let bytes = q.data().unwrap();
            let tiled = QWeight::tiled(&bytes, dtype, (rows, cols), None, &Device::Cpu, 3).unwrap();
            assert_eq!(tiled.n_tiles(), 4);
            assert_eq!(tiled.bytes(), bytes.len());
            let got = tiled.dequantize(DType::F32).unwrap();
            assert_eq!(max_diff(&got, &whole), 0.0, "{dtype:?}");
            let order: Vec<usize> = (0..rows).rev().collect();
            let flipped =
                QWeight::tiled(&bytes, dtype, (rows, cols), Some(&order), &Device::Cpu, 4).unwrap();
            let idx = Tensor::new(
                order
                    .iter()
                    .map(|&r| r as u32)
                    .collect::<Vec<_>>()
                    .as_slice(),
                &Device::Cpu,
            )
            .unwrap();
            let want = whole.index_select(&idx, 0).unwrap();
            assert_eq!(
                max_diff(&flipped.dequantize(DType::F32).unwrap(), &want),
                0.0
            );
        }
    }

    /// `x·Wᵀ`, `g·W` and row gathers over several tiles equal the dense ops on the dequantized
    /// weight (the same products, summed in another order: f32 rounding only).
    #[test]
    fn tiled_products_and_gathers_match_the_dense_weight() {
        let (rows, cols) = (13, 64);
        let w = weight(rows, cols);
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let qw = QWeight::tiled(
            &q.data().unwrap(),
            GgmlDType::Q8_0,
            (rows, cols),
            None,
            &Device::Cpu,
            5,
        )
        .unwrap();
        let dense = q.dequantize(&Device::Cpu).unwrap();
        let x = weight(2 * 3, cols).reshape((2, 3, cols)).unwrap();
        let want = x.broadcast_matmul(&dense.t().unwrap()).unwrap();
        let got = qw.matmul_t(&x).unwrap();
        assert_eq!(got.dims(), &[2, 3, rows]);
        assert!(max_diff(&got, &want) < 1e-5);
        let g = weight(2 * 3, rows).reshape((2, 3, rows)).unwrap();
        let want = g.broadcast_matmul(&dense).unwrap();
        let got = qw.grad_input(&g).unwrap();
        assert_eq!(got.dims(), &[2, 3, cols]);
        assert!(max_diff(&got, &want) < 1e-5);
        let ids = Tensor::new(&[[12u32, 0, 5], [7, 7, 11]], &Device::Cpu).unwrap();
        let want = dense
            .index_select(&ids.flatten_all().unwrap(), 0)
            .unwrap()
            .reshape((2, 3, cols))
            .unwrap();
        assert_eq!(max_diff(&qw.embedding(&ids).unwrap(), &want), 0.0);
        let bad = Tensor::new(&[13u32], &Device::Cpu).unwrap();
        assert!(qw
            .embedding(&bad)
            .unwrap_err()
            .to_string()
            .contains("past the table"));
    }

    #[test]
    fn k_quants_fall_back_where_rows_are_not_whole_super_blocks() {
        // SmolLM2: hidden 576 = 2.25 x 256; its MLP's 1536 = 6 x 256.
        assert_eq!(quantizable(GgmlDType::Q4K, 1536), Some(GgmlDType::Q4K));
        assert_eq!(quantizable(GgmlDType::Q4K, 576), Some(GgmlDType::Q5_0));
        assert_eq!(quantizable(GgmlDType::Q6K, 576), Some(GgmlDType::Q8_0));
        assert_eq!(quantizable(GgmlDType::Q8_0, 48), None);
        let w = weight(4, 576);
        let q = QWeight::quantize(
            &w,
            quantizable(GgmlDType::Q4K, 576).unwrap(),
            &Device::Cpu,
            TILE_F32_BYTES,
        )
        .unwrap();
        assert_eq!(q.dtype(), GgmlDType::Q5_0);
        // Q5_0 keeps about 5 bits: within a few percent of the value range (±0.5).
        assert!(max_diff(&q.dequantize(DType::F32).unwrap(), &w) < 0.05);
        let bad = QWeight::from_bytes(
            &[0; 10],
            GgmlDType::Q8_0,
            (1, 32),
            None,
            &Device::Cpu,
            TILE_F32_BYTES,
        );
        assert!(bad
            .unwrap_err()
            .to_string()
            .contains("needs 34 bytes, got 10"));
    }
}
