//! The seeded train/eval split, stable across machines and releases.

/// Splits `items` into `(train, eval)` for `data.eval_fraction`, the same way for the same
/// seed on every machine and release. The rule: `n_eval = ceil(fraction * n)` (as
/// `datasets`' `train_test_split`), at least 1 and at most `n - 1`; the eval rows are the first
/// `n_eval` positions of a Fisher-Yates shuffle of `0..n` drawn from SplitMix64 seeded with
/// `seed`. Both parts keep file order. A fraction of 0, or fewer than 2 items, gives no eval rows.
pub fn split_eval<T>(items: Vec<T>, fraction: f64, seed: u64) -> (Vec<T>, Vec<T>) {
    let n = items.len();
    if fraction <= 0.0 || n < 2 {
        return (items, Vec::new());
    }
    let n_eval = ((fraction * n as f64).ceil() as usize).clamp(1, n - 1);
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix64(seed);
    for i in (1..n).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let mut is_eval = vec![false; n];
    for &i in &order[..n_eval] {
        is_eval[i] = true;
    }
    let (mut train, mut eval) = (Vec::with_capacity(n - n_eval), Vec::with_capacity(n_eval));
    for (item, to_eval) in items.into_iter().zip(is_eval) {
        if to_eval {
            eval.push(item);
        } else {
            train.push(item);
        }
    }
    (train, eval)
}

/// SplitMix64 (Steele, Lea & Flood 2014): a fixed, documented generator, so a split never
/// changes with a `rand` upgrade. Also what `orpod calibrate` draws its data sets from.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (multiply-shift; the bias is below 2^-40 for any data set size).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eval_split_is_seeded_and_keeps_file_order() {
        let items: Vec<u32> = (0..100).collect();
        let (train, eval) = split_eval(items.clone(), 0.05, 42);
        assert_eq!((train.len(), eval.len()), (95, 5));
        assert!(eval.windows(2).all(|w| w[0] < w[1]) && train.windows(2).all(|w| w[0] < w[1]));
        let mut all = [train.clone(), eval.clone()].concat();
        all.sort();
        assert_eq!(all, items);
        assert_eq!(split_eval(items.clone(), 0.05, 42), (train, eval.clone()));
        assert_ne!(split_eval(items.clone(), 0.05, 7).1, eval);
        // ceil, at least one eval row and at least one train row.
        assert_eq!(split_eval(items.clone(), 0.001, 1).1.len(), 1);
        assert_eq!(split_eval(vec![1, 2], 0.99, 1).0.len(), 1);
        assert_eq!(split_eval(vec![1], 0.5, 1), (vec![1], vec![]));
        assert_eq!(split_eval(items.clone(), 0.0, 1).0, items);
    }
}
