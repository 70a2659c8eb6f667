//! Batching: length-bucketed batches padded to their longest row, optional
//! packing of several examples per row, deterministic per-epoch shuffling,
//! and a cursor that can be saved and restored.

use ft_config::rng::SplitMix64;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};

use crate::encode::EncodedExample;
use crate::error::{DataError, Result};

/// How examples are grouped into batches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BatchOptions {
    /// Rows (sequences) per batch.
    pub batch_size: usize,
    /// Seed of the per-epoch shuffles.
    pub seed: u64,
    /// Shuffle each epoch (off: input order, still length-bucketed).
    pub shuffle: bool,
    /// Length bucketing: rows are sorted by length inside windows of
    /// `bucket_window * batch_size` rows before being cut into batches, so a
    /// batch holds similar lengths and little padding. 0 turns it off;
    /// `usize::MAX` sorts the whole epoch.
    pub bucket_window: usize,
    /// Pack several examples into one row of at most `pack_len` tokens.
    pub packing: bool,
    /// Row length when packing (usually the encoder's `max_len`).
    pub pack_len: usize,
    /// Leave out the last, smaller batch of an epoch.
    pub drop_last: bool,
    /// Padding token id.
    pub pad_id: u32,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            batch_size: 4,
            seed: 0,
            shuffle: true,
            bucket_window: 16,
            packing: false,
            pack_len: 2048,
            drop_last: false,
            pad_id: 0,
        }
    }
}

/// One batch of token ids, ready to become arrays.
///
/// Every row is padded at its end to the batch's longest row (no fixed
/// multiple). `mask[r][t]` is true when token `t` of row `r` is a loss
/// target; it is false on padding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// Token ids, `[rows][width]`.
    pub ids: Vec<Vec<u32>>,
    /// Loss targets, `[rows][width]`.
    pub mask: Vec<Vec<bool>>,
    /// Real (unpadded) length of each row.
    pub lengths: Vec<usize>,
    /// Number of loss targets in the batch.
    pub target_tokens: usize,
    /// With packing: per token, 1-based index of its example within the row
    /// (0 on padding). Attention must stay within equal segment ids.
    pub segment_ids: Option<Vec<Vec<u32>>>,
    /// With packing: per token, its position within its own example.
    pub position_ids: Option<Vec<Vec<u32>>>,
    /// Dataset indices of the examples in each row.
    pub examples: Vec<Vec<usize>>,
}

impl Batch {
    /// Width (padded length) of the batch.
    pub fn width(&self) -> usize {
        self.ids.first().map_or(0, Vec::len)
    }

    /// Tokens including padding.
    pub fn padded_tokens(&self) -> usize {
        self.ids.len() * self.width()
    }

    /// Tokens excluding padding.
    pub fn real_tokens(&self) -> usize {
        self.lengths.iter().sum()
    }
}

/// Where a run is in the data: the epoch and the next batch within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Cursor {
    /// Epoch, from 0.
    pub epoch: u64,
    /// Index of the next batch within the epoch.
    pub position: usize,
    /// Fingerprint of the data and batch options; a cursor from other data
    /// is refused (0 skips the check).
    #[serde(default)]
    pub fingerprint: u64,
}

/// A batch plan: batches, each a list of rows, each a list of example indices.
pub type Plan = Vec<Vec<Vec<usize>>>;

/// Produces batches from encoded examples, epoch after epoch.
#[derive(Debug)]
pub struct Batcher<'d> {
    examples: &'d [EncodedExample],
    options: BatchOptions,
    fingerprint: u64,
    cached: Option<(u64, Plan)>,
}

impl<'d> Batcher<'d> {
    /// A batcher over `examples`.
    pub fn new(examples: &'d [EncodedExample], options: BatchOptions) -> Result<Self> {
        if options.batch_size == 0 {
            return Err(DataError::options("batch_size must be at least 1"));
        }
        if options.packing {
            if let Some(long) = examples.iter().find(|e| e.len() > options.pack_len) {
                return Err(DataError::options(format!(
                    "{}:{} has {} tokens, more than pack_len {}",
                    long.source.file,
                    long.source.line,
                    long.len(),
                    options.pack_len
                )));
            }
        }
        let fingerprint = fingerprint(examples, &options);
        Ok(Batcher {
            examples,
            options,
            fingerprint,
            cached: None,
        })
    }

    /// The options in use.
    pub fn options(&self) -> &BatchOptions {
        &self.options
    }

    /// A cursor at the start of training.
    pub fn start(&self) -> Cursor {
        Cursor {
            epoch: 0,
            position: 0,
            fingerprint: self.fingerprint,
        }
    }

    /// The plan of `epoch`: which examples go in which row of which batch.
    /// The same seed and epoch always give the same plan.
    pub fn plan(&self, epoch: u64) -> Plan {
        let mut rng = epoch_rng(self.options.seed, epoch);
        let mut order: Vec<usize> = (0..self.examples.len()).collect();
        if self.options.shuffle {
            rng.shuffle(&mut order);
        }
        let rows: Vec<Vec<usize>> = if self.options.packing {
            self.pack(&order)
        } else {
            order.into_iter().map(|i| vec![i]).collect()
        };
        let mut rows = rows;
        let window = self
            .options
            .bucket_window
            .saturating_mul(self.options.batch_size);
        if window > 0 {
            for chunk in rows.chunks_mut(window) {
                // Stable, so equal lengths keep their shuffled order.
                chunk.sort_by_key(|row| self.row_len(row));
            }
        }
        let mut batches: Plan = rows
            .chunks(self.options.batch_size)
            .map(<[Vec<usize>]>::to_vec)
            .collect();
        if self.options.drop_last
            && batches
                .last()
                .is_some_and(|b| b.len() < self.options.batch_size)
        {
            batches.pop();
        }
        if self.options.shuffle {
            rng.shuffle(&mut batches);
        }
        batches
    }

    /// Number of batches in `epoch` (constant without packing; with packing
    /// the number of rows can vary a little between epochs).
    pub fn batches_in_epoch(&mut self, epoch: u64) -> usize {
        self.cached_plan(epoch).len()
    }

    /// The batch the cursor points at, then advances the cursor (to the next
    /// epoch after the last batch). `None` only when there is no data.
    pub fn next_batch(&mut self, cursor: &mut Cursor) -> Result<Option<Batch>> {
        self.check(cursor)?;
        if self.examples.is_empty() {
            return Ok(None);
        }
        let mut guard = 0;
        while cursor.position >= self.cached_plan(cursor.epoch).len() {
            if cursor.position > self.cached_plan(cursor.epoch).len() {
                return Err(DataError::Cursor {
                    message: format!(
                        "position {} is past the {} batches of epoch {}",
                        cursor.position,
                        self.cached_plan(cursor.epoch).len(),
                        cursor.epoch
                    ),
                });
            }
            cursor.epoch += 1;
            cursor.position = 0;
            guard += 1;
            if guard > 2 {
                // Every example dropped by drop_last: no batch can ever come.
                return Ok(None);
            }
        }
        let rows = self.cached_plan(cursor.epoch)[cursor.position].clone();
        cursor.position += 1;
        cursor.fingerprint = self.fingerprint;
        Ok(Some(self.build(&rows)))
    }

    /// All batches of one epoch, in order.
    pub fn epoch_batches(&self, epoch: u64) -> Vec<Batch> {
        self.plan(epoch)
            .iter()
            .map(|rows| self.build(rows))
            .collect()
    }

    /// Assembles a batch from rows of example indices.
    pub fn build(&self, rows: &[Vec<usize>]) -> Batch {
        let width = rows.iter().map(|r| self.row_len(r)).max().unwrap_or(0);
        let packing = self.options.packing;
        let mut batch = Batch {
            ids: Vec::with_capacity(rows.len()),
            mask: Vec::with_capacity(rows.len()),
            lengths: Vec::with_capacity(rows.len()),
            target_tokens: 0,
            segment_ids: packing.then(Vec::new),
            position_ids: packing.then(Vec::new),
            examples: rows.to_vec(),
        };
        for row in rows {
            let mut ids = Vec::with_capacity(width);
            let mut mask = Vec::with_capacity(width);
            let mut segments = Vec::new();
            let mut positions = Vec::new();
            for (segment, &index) in row.iter().enumerate() {
                let example = &self.examples[index];
                ids.extend_from_slice(&example.ids);
                mask.extend_from_slice(&example.mask);
                if packing {
                    segments.extend(std::iter::repeat_n(segment as u32 + 1, example.len()));
                    positions.extend(0..example.len() as u32);
                }
            }
            let len = ids.len();
            batch.target_tokens += mask.iter().filter(|m| **m).count();
            ids.resize(width, self.options.pad_id);
            mask.resize(width, false);
            batch.ids.push(ids);
            batch.mask.push(mask);
            batch.lengths.push(len);
            if let (Some(all_segments), Some(all_positions)) =
                (&mut batch.segment_ids, &mut batch.position_ids)
            {
                segments.resize(width, 0);
                positions.resize(width, 0);
                all_segments.push(segments);
                all_positions.push(positions);
            }
        }
        batch
    }

    fn check(&self, cursor: &Cursor) -> Result<()> {
        if cursor.fingerprint != 0 && cursor.fingerprint != self.fingerprint {
            return Err(DataError::Cursor {
                message: "the checkpoint was saved for other training data or batch settings \
                          (data files, data.max_seq_len, data.packing, training.batch_size, seed); \
                          resume with the run's own configuration: \
                          ft train --config RUN_DIR/config.toml --resume RUN_DIR"
                    .into(),
            });
        }
        Ok(())
    }

    fn cached_plan(&mut self, epoch: u64) -> &Plan {
        let plan = match self.cached.take() {
            Some((cached_epoch, plan)) if cached_epoch == epoch => plan,
            _ => self.plan(epoch),
        };
        &self.cached.insert((epoch, plan)).1
    }

    fn row_len(&self, row: &[usize]) -> usize {
        row.iter().map(|&i| self.examples[i].len()).sum()
    }

    /// Best-fit packing in the given order: each example goes to the open row
    /// with the least room that still fits it.
    fn pack(&self, order: &[usize]) -> Vec<Vec<usize>> {
        let capacity = self.options.pack_len;
        let mut rows: Vec<Vec<usize>> = Vec::new();
        // Remaining room -> rows with that room (in creation order).
        let mut room: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for &index in order {
            let len = self.examples[index].len();
            let fit = room.range(len..).next().map(|(r, rows)| (*r, rows[0]));
            let (row, left) = match fit {
                Some((left, row)) => {
                    if let Some(list) = room.get_mut(&left) {
                        list.remove(0);
                        if list.is_empty() {
                            room.remove(&left);
                        }
                    }
                    (row, left - len)
                }
                None => {
                    rows.push(Vec::new());
                    (rows.len() - 1, capacity.saturating_sub(len))
                }
            };
            rows[row].push(index);
            if left > 0 {
                room.entry(left).or_default().push(row);
            }
        }
        rows
    }
}

/// Hash of the example lengths/ids and the options that shape batches.
fn fingerprint(examples: &[EncodedExample], options: &BatchOptions) -> u64 {
    // FNV-1a: stable across Rust versions, unlike `DefaultHasher`.
    struct Fnv(u64);
    impl Hasher for Fnv {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 ^= u64::from(*b);
                self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    examples.len().hash(&mut h);
    for e in examples {
        e.ids.hash(&mut h);
    }
    (
        options.batch_size,
        options.seed,
        options.shuffle,
        options.bucket_window,
        options.packing,
        options.pack_len,
        options.drop_last,
        options.pad_id,
    )
        .hash(&mut h);
    h.finish().max(1)
}

/// The epoch's shuffling stream: the shared generator of `seed`, moved on
/// by `epoch`.
fn epoch_rng(seed: u64, epoch: u64) -> SplitMix64 {
    let mut rng = SplitMix64::new(seed);
    SplitMix64::from_state(rng.next_u64() ^ epoch.wrapping_mul(0xD1B5_4A32_D192_ED03))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::format::Format;
    use crate::jsonl::Source;
    use proptest::prelude::*;

    fn example(line: usize, len: usize) -> EncodedExample {
        EncodedExample {
            source: Source {
                file: "f".into(),
                line,
            },
            format: Format::Text,
            label: None,
            ids: (0..len as u32)
                .map(|i| 10 + i + line as u32 * 1000)
                .collect(),
            mask: (0..len).map(|i| i > 0 && (i + line) % 3 != 1).collect(),
            truncated: false,
        }
    }

    fn check_epoch(examples: &[EncodedExample], options: &BatchOptions, batches: &[Batch]) {
        let mut seen = vec![0usize; examples.len()];
        for batch in batches {
            assert!(batch.ids.len() <= options.batch_size);
            let width = batch.width();
            assert_eq!(width, *batch.lengths.iter().max().unwrap());
            for (r, row) in batch.examples.iter().enumerate() {
                let mut expected_ids = Vec::new();
                let mut expected_mask = Vec::new();
                for &i in row {
                    seen[i] += 1;
                    expected_ids.extend_from_slice(&examples[i].ids);
                    expected_mask.extend_from_slice(&examples[i].mask);
                }
                let len = batch.lengths[r];
                assert_eq!(len, expected_ids.len());
                assert_eq!(batch.ids[r][..len], expected_ids[..]);
                assert_eq!(batch.mask[r][..len], expected_mask[..]);
                // Padding only at the end, never a target.
                assert!(batch.ids[r][len..].iter().all(|&t| t == options.pad_id));
                assert!(batch.mask[r][len..].iter().all(|m| !m));
                if options.packing {
                    assert!(len <= options.pack_len);
                    let seg = &batch.segment_ids.as_ref().unwrap()[r];
                    let pos = &batch.position_ids.as_ref().unwrap()[r];
                    let mut at = 0;
                    for (s, &i) in row.iter().enumerate() {
                        for p in 0..examples[i].len() {
                            assert_eq!((seg[at], pos[at]), (s as u32 + 1, p as u32));
                            at += 1;
                        }
                    }
                    assert!(seg[len..].iter().all(|&s| s == 0));
                }
            }
            let targets: usize = batch.mask.iter().flatten().filter(|m| **m).count();
            assert_eq!(targets, batch.target_tokens);
        }
        if !options.drop_last {
            assert!(seen.iter().all(|&n| n == 1), "{seen:?}");
        } else {
            assert!(seen.iter().all(|&n| n <= 1));
        }
    }

    proptest! {
        #[test]
        fn batching_invariants(
            lens in prop::collection::vec(1usize..40, 0..60),
            batch_size in 1usize..7,
            seed in any::<u64>(),
            packing in any::<bool>(),
            shuffle in any::<bool>(),
            bucket_window in 0usize..4,
            drop_last in any::<bool>(),
        ) {
            let examples: Vec<_> = lens.iter().enumerate().map(|(i, &l)| example(i + 1, l)).collect();
            let options = BatchOptions {
                batch_size, seed, shuffle, bucket_window, packing, pack_len: 48, drop_last, pad_id: 7,
            };
            let batcher = Batcher::new(&examples, options.clone()).unwrap();
            for epoch in 0..2 {
                check_epoch(&examples, &options, &batcher.epoch_batches(epoch));
            }
        }
    }

    #[test]
    fn deterministic_and_resumable() {
        let examples: Vec<_> = (0..23).map(|i| example(i + 1, 1 + (i * 7) % 13)).collect();
        let options = BatchOptions {
            batch_size: 3,
            seed: 42,
            ..BatchOptions::default()
        };
        let mut a = Batcher::new(&examples, options.clone()).unwrap();
        let mut b = Batcher::new(&examples, options.clone()).unwrap();
        assert_eq!(a.plan(0), b.plan(0));
        assert_ne!(a.plan(0), a.plan(1), "epochs should differ");
        let other_seed = Batcher::new(
            &examples,
            BatchOptions {
                seed: 43,
                ..options.clone()
            },
        )
        .unwrap();
        assert_ne!(a.plan(0), other_seed.plan(0));

        // Run 11 batches, save the cursor, resume in a new batcher: same stream.
        let mut cursor = a.start();
        for _ in 0..11 {
            a.next_batch(&mut cursor).unwrap().unwrap();
        }
        assert_eq!((cursor.epoch, cursor.position), (1, 3));
        let saved = serde_json::to_string(&cursor).unwrap();
        let mut restored: Cursor = serde_json::from_str(&saved).unwrap();
        for _ in 0..10 {
            assert_eq!(
                a.next_batch(&mut cursor).unwrap(),
                b.next_batch(&mut restored).unwrap()
            );
        }
        assert_eq!(cursor, restored);

        // A cursor from other data is refused.
        let fewer = &examples[..20];
        let mut c = Batcher::new(fewer, options).unwrap();
        assert!(c.next_batch(&mut restored).is_err());
        assert!(c
            .next_batch(&mut Cursor {
                epoch: 0,
                position: 99,
                fingerprint: 0
            })
            .is_err());
    }

    #[test]
    fn bucketing_reduces_padding() {
        let examples: Vec<_> = (0..64).map(|i| example(i + 1, 1 + (i * 37) % 50)).collect();
        let padded = |bucket_window| {
            let options = BatchOptions {
                batch_size: 4,
                bucket_window,
                ..BatchOptions::default()
            };
            let b = Batcher::new(&examples, options).unwrap();
            b.epoch_batches(0)
                .iter()
                .map(Batch::padded_tokens)
                .sum::<usize>()
        };
        assert!(padded(usize::MAX) < padded(0));
    }

    #[test]
    fn empty_data_gives_no_batch() {
        let mut b = Batcher::new(&[], BatchOptions::default()).unwrap();
        let mut cursor = b.start();
        assert_eq!(b.next_batch(&mut cursor).unwrap(), None);
    }
}
