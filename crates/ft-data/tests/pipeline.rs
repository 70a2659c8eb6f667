//! End to end on the default model: files -> validated, encoded examples ->
//! batches (padded and packed) -> "what the model sees".

#![allow(clippy::unwrap_used)]

use ft_data::{
    estimate_epoch, BatchOptions, Cursor, DataOptions, Dataset, EncodeOptions, Format, LabelFilter,
};

mod common;

use common::{default_tokenizer, fixture};

#[test]
fn chat_file_to_batches_and_renders() {
    let Some(tokenizer) = default_tokenizer() else {
        return;
    };
    let data = Dataset::load(
        &[fixture("chat_small.jsonl")],
        &tokenizer,
        &DataOptions::default(),
    )
    .unwrap();
    assert!(data.report.is_ok());
    assert_eq!(data.examples.len(), 8);
    assert_eq!(data.stats.per_format.get(&Format::Chat), Some(&8));
    assert!(data.stats.target_tokens > 0 && data.stats.target_tokens < data.stats.tokens);

    // What the model sees: ChatML, the answers and their <|im_end|> as targets.
    let rendered = data.render(&tokenizer, 0..2).unwrap();
    assert!(rendered[0]
        .text
        .starts_with("<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\n"));
    assert_eq!(rendered[0].targets, vec!["Paris.<|im_end|>".to_string()]);
    assert_eq!(
        rendered[1].targets,
        vec![
            "Hi!<|im_end|>".to_string(),
            "Hi! Again.<|im_end|>".to_string()
        ]
    );
    assert_eq!(rendered[1].pieces.len(), rendered[1].ids.len());
    assert!(rendered[1].annotated().contains("[[Hi!<|im_end|>]]"));

    // Padded batches.
    let pad = tokenizer.special().pad_id();
    let options = BatchOptions {
        batch_size: 3,
        seed: 7,
        pad_id: pad,
        ..BatchOptions::default()
    };
    let mut batcher = data.batcher(options.clone()).unwrap();
    let mut cursor = batcher.start();
    let mut seen = Vec::new();
    for _ in 0..batcher.batches_in_epoch(0) {
        let batch = batcher.next_batch(&mut cursor).unwrap().unwrap();
        seen.extend(batch.examples.iter().flatten().copied());
        for (row, &len) in batch.ids.iter().zip(&batch.lengths) {
            assert_eq!(row.len(), batch.width());
            assert!(row[len..].iter().all(|&t| t == pad));
        }
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..8).collect::<Vec<_>>());
    assert_eq!(
        cursor,
        Cursor {
            epoch: 0,
            position: 3,
            fingerprint: cursor.fingerprint
        }
    );

    // Packed: fewer, fuller rows; segment ids keep examples apart.
    let packed = BatchOptions {
        packing: true,
        pack_len: 256,
        ..options.clone()
    };
    let estimate = estimate_epoch(&data.examples, &packed).unwrap();
    let plain = estimate_epoch(&data.examples, &options).unwrap();
    assert_eq!(estimate.tokens, plain.tokens);
    assert_eq!(estimate.target_tokens, plain.target_tokens);
    let batches = data.batcher(packed).unwrap().epoch_batches(0);
    let rows: usize = batches.iter().map(|b| b.ids.len()).sum();
    assert!(rows < 8, "packing should put several examples per row");
    let batch = &batches[0];
    let segments = batch.segment_ids.as_ref().unwrap();
    assert!(
        segments.iter().any(|row| row.contains(&2)),
        "rows should hold several examples"
    );
}

#[test]
fn preference_data_trains_on_desirable_by_default() {
    let Some(tokenizer) = default_tokenizer() else {
        return;
    };
    let data = Dataset::load(
        &[fixture("preference_small.jsonl")],
        &tokenizer,
        &DataOptions::default(),
    )
    .unwrap();
    let c = &data.report.counts;
    assert_eq!(
        (c.desirable, c.undesirable, c.skipped_by_label, c.kept),
        (3, 2, 2, 3)
    );
    assert!(data.examples.iter().all(|e| e.label == Some(true)));
    assert_eq!((data.stats.desirable, data.stats.undesirable), (3, 2));

    let all = DataOptions {
        encode: EncodeOptions {
            labels: LabelFilter::All,
            ..EncodeOptions::default()
        },
        ..DataOptions::default()
    };
    let data = Dataset::load(&[fixture("preference_small.jsonl")], &tokenizer, &all).unwrap();
    assert_eq!(data.examples.len(), 5);
}
