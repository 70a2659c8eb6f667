//! Dataset statistics: counts, token-length histogram, tokens per epoch.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::batch::{BatchOptions, Batcher};
use crate::diagnostic::ReportCounts;
use crate::encode::EncodedExample;
use crate::error::Result;
use crate::format::Format;

/// One bar of the length histogram: examples with `from..=to` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LengthBucket {
    /// Smallest length in the bucket.
    pub from: usize,
    /// Largest length in the bucket.
    pub to: usize,
    /// Examples in the bucket.
    pub count: usize,
}

/// What the data amounts to, in examples and tokens.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DataStats {
    /// Examples kept for training.
    pub examples: usize,
    /// Kept examples per format.
    pub per_format: BTreeMap<Format, usize>,
    /// Preference examples seen labelled desirable.
    pub desirable: usize,
    /// Preference examples seen labelled undesirable.
    pub undesirable: usize,
    /// Examples truncated.
    pub truncated: usize,
    /// Examples dropped.
    pub dropped: usize,
    /// Tokens in kept examples.
    pub tokens: usize,
    /// Loss targets in kept examples.
    pub target_tokens: usize,
    /// Shortest example, in tokens.
    pub min_len: usize,
    /// Longest example, in tokens.
    pub max_len: usize,
    /// Mean example length.
    pub mean_len: f64,
    /// Histogram of example lengths in power-of-two buckets.
    pub length_histogram: Vec<LengthBucket>,
    /// Chat examples seen that offer tools or call them.
    #[serde(default)]
    pub tool_examples: usize,
    /// Tool calls in the examples seen.
    #[serde(default)]
    pub tool_calls: usize,
}

impl DataStats {
    /// Statistics of `examples`, with the reading/encoding `counts`.
    pub fn new(examples: &[EncodedExample], counts: &ReportCounts) -> Self {
        let mut stats = DataStats {
            examples: examples.len(),
            desirable: counts.desirable,
            undesirable: counts.undesirable,
            truncated: counts.truncated,
            dropped: counts.dropped,
            tool_examples: counts.tool_examples,
            tool_calls: counts.tool_calls,
            min_len: examples.iter().map(EncodedExample::len).min().unwrap_or(0),
            max_len: examples.iter().map(EncodedExample::len).max().unwrap_or(0),
            ..DataStats::default()
        };
        let mut buckets: BTreeMap<u32, usize> = BTreeMap::new();
        for e in examples {
            *stats.per_format.entry(e.format).or_default() += 1;
            stats.tokens += e.len();
            stats.target_tokens += e.target_count();
            // Bucket k holds lengths in (2^(k-1), 2^k].
            let k = usize::BITS - e.len().saturating_sub(1).leading_zeros();
            *buckets.entry(k).or_default() += 1;
        }
        stats.mean_len = if examples.is_empty() {
            0.0
        } else {
            stats.tokens as f64 / examples.len() as f64
        };
        stats.length_histogram = buckets
            .into_iter()
            .map(|(k, count)| LengthBucket {
                from: if k == 0 { 0 } else { (1usize << (k - 1)) + 1 },
                to: 1usize << k,
                count,
            })
            .collect();
        stats
    }
}

/// What one epoch costs under given batch options.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochEstimate {
    /// Batches per epoch.
    pub batches: usize,
    /// Tokens the model processes, padding included.
    pub padded_tokens: usize,
    /// Real tokens.
    pub tokens: usize,
    /// Loss targets.
    pub target_tokens: usize,
}

impl EpochEstimate {
    /// Fraction of processed tokens that are padding.
    pub fn padding_fraction(&self) -> f64 {
        if self.padded_tokens == 0 {
            0.0
        } else {
            1.0 - self.tokens as f64 / self.padded_tokens as f64
        }
    }
}

/// Tokens per epoch, from the actual batch plan of epoch 0.
pub fn estimate_epoch(
    examples: &[EncodedExample],
    options: &BatchOptions,
) -> Result<EpochEstimate> {
    let batcher = Batcher::new(examples, options.clone())?;
    let mut estimate = EpochEstimate::default();
    for rows in batcher.plan(0) {
        let lengths: Vec<usize> = rows
            .iter()
            .map(|row| row.iter().map(|&i| examples[i].len()).sum())
            .collect();
        let width = lengths.iter().copied().max().unwrap_or(0);
        estimate.batches += 1;
        estimate.padded_tokens += width * rows.len();
        estimate.tokens += lengths.iter().sum::<usize>();
        estimate.target_tokens += rows
            .iter()
            .flatten()
            .map(|&i| examples[i].target_count())
            .sum::<usize>();
    }
    Ok(estimate)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::jsonl::Source;

    fn ex(len: usize) -> EncodedExample {
        EncodedExample {
            source: Source {
                file: "f".into(),
                line: 1,
            },
            format: Format::Text,
            label: None,
            ids: vec![5; len],
            mask: (0..len).map(|i| i > 0).collect(),
            truncated: false,
        }
    }

    #[test]
    fn histogram_and_estimate() {
        let examples: Vec<_> = [1, 2, 3, 4, 5, 8, 9, 100].into_iter().map(ex).collect();
        let counts = ReportCounts {
            tool_examples: 3,
            tool_calls: 5,
            ..ReportCounts::default()
        };
        let stats = DataStats::new(&examples, &counts);
        assert_eq!((stats.tool_examples, stats.tool_calls), (3, 5));
        assert_eq!((stats.min_len, stats.max_len, stats.tokens), (1, 100, 132));
        assert_eq!(stats.target_tokens, 132 - 8);
        let buckets: Vec<(usize, usize, usize)> = stats
            .length_histogram
            .iter()
            .map(|b| (b.from, b.to, b.count))
            .collect();
        assert_eq!(
            buckets,
            vec![
                (0, 1, 1),
                (2, 2, 1),
                (3, 4, 2),
                (5, 8, 2),
                (9, 16, 1),
                (65, 128, 1)
            ]
        );
        let est = estimate_epoch(
            &examples,
            &BatchOptions {
                batch_size: 2,
                bucket_window: usize::MAX,
                ..BatchOptions::default()
            },
        )
        .unwrap();
        assert_eq!((est.batches, est.tokens, est.target_tokens), (4, 132, 124));
        assert_eq!(est.padded_tokens, 2 * (2 + 4 + 8 + 100));
        assert!(est.padding_fraction() > 0.0);
    }
}
