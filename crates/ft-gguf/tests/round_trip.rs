//! Writer -> reader: every metadata value type (numbers at their extremes,
//! non-ASCII strings, empty and nested lists) and every tensor table the
//! writer takes comes back from the reader as it was written.

use std::collections::BTreeMap;

use ft_gguf::{GgmlType, GgufLayout, GgufMetadata, GgufTensorSpec, GgufValue, GgufWriter};
use proptest::prelude::*;

/// Floats that compare equal to themselves (NaN payloads are not the
/// point here; infinities, subnormals and -0.0 are).
fn f32s() -> impl Strategy<Value = f32> {
    use proptest::num::f32::{INFINITE, NEGATIVE, NORMAL, POSITIVE, SUBNORMAL, ZERO};
    POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO | INFINITE
}

fn f64s() -> impl Strategy<Value = f64> {
    use proptest::num::f64::{INFINITE, NEGATIVE, NORMAL, POSITIVE, SUBNORMAL, ZERO};
    POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO | INFINITE
}

/// Any string, ASCII or not (`\PC`: any char but controls; plus a few
/// controls and the SentencePiece space).
fn strings() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,24}",
        "[a-z\\n\\t\\x00▁<>|]{0,12}",
        Just("héllo ▁world 日本語 🦀".to_string()),
    ]
}

/// One scalar of the type with `index` 0..=11 (all but lists).
fn scalar_of(index: u8) -> BoxedStrategy<GgufValue> {
    match index {
        0 => any::<u8>().prop_map(GgufValue::U8).boxed(),
        1 => any::<i8>().prop_map(GgufValue::I8).boxed(),
        2 => any::<u16>().prop_map(GgufValue::U16).boxed(),
        3 => any::<i16>().prop_map(GgufValue::I16).boxed(),
        4 => any::<u32>().prop_map(GgufValue::U32).boxed(),
        5 => any::<i32>().prop_map(GgufValue::I32).boxed(),
        6 => any::<u64>().prop_map(GgufValue::U64).boxed(),
        7 => any::<i64>().prop_map(GgufValue::I64).boxed(),
        8 => f32s().prop_map(GgufValue::F32).boxed(),
        9 => f64s().prop_map(GgufValue::F64).boxed(),
        10 => any::<bool>().prop_map(GgufValue::Bool).boxed(),
        _ => strings().prop_map(GgufValue::String).boxed(),
    }
}

/// A list of one type: scalars of one kind, or lists (whose element types
/// may differ from each other, as GGUF allows), `depth` levels deep at most.
fn list(depth: u32) -> BoxedStrategy<GgufValue> {
    let scalars = (0..12_u8)
        .prop_flat_map(|index| prop::collection::vec(scalar_of(index), 0..6))
        .prop_map(GgufValue::Array);
    if depth == 0 {
        return scalars.boxed();
    }
    prop_oneof![
        3 => scalars,
        1 => prop::collection::vec(list(depth - 1), 1..4).prop_map(GgufValue::Array),
    ]
    .boxed()
}

fn value() -> BoxedStrategy<GgufValue> {
    // Lists nest up to ft_gguf::MAX_ARRAY_DEPTH levels: depth 3 below the top one.
    prop_oneof![(0..12_u8).prop_flat_map(scalar_of), list(3)].boxed()
}

fn metadata() -> impl Strategy<Value = BTreeMap<String, GgufValue>> {
    prop::collection::btree_map(
        prop_oneof!["[a-z_.]{1,20}", "\\PC{1,12}"]
            .prop_filter("alignment", |key| key != "general.alignment"),
        value(),
        0..12,
    )
}

/// Tensors with distinct names, dims whose innermost one is whole blocks.
fn tensors() -> impl Strategy<Value = Vec<GgufTensorSpec>> {
    let types = prop::sample::select(vec![
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q8_0,
        GgmlType::Q6_K,
    ]);
    let tensor = (types, 1..4_u64, prop::collection::vec(1..5_u64, 0..3));
    prop::collection::vec(tensor, 0..5).prop_map(|tensors| {
        tensors
            .into_iter()
            .enumerate()
            .map(|(index, (ggml_type, blocks, outer))| {
                let mut dims = vec![blocks * ggml_type.block_weights()];
                dims.extend(outer);
                GgufTensorSpec {
                    name: format!("blk.{index}.wé"),
                    dims,
                    ggml_type,
                }
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn what_is_written_reads_back(metadata in metadata(), tensors in tensors()) {
        let mut writer = GgufWriter::new(Vec::new(), &metadata, &tensors).expect("header");
        let mut sizes = Vec::new();
        for (index, tensor) in tensors.iter().enumerate() {
            let size = tensor.ggml_type.data_size(&tensor.dims).expect("size") as usize;
            writer.write_tensor(&vec![index as u8; size]).expect("data");
            sizes.push(size as u64);
        }
        let bytes = writer.finish().expect("finish");

        let read = GgufMetadata::read(bytes.as_slice(), bytes.len() as u64).expect("metadata");
        prop_assert_eq!(read.version, 3);
        prop_assert_eq!(read.tensor_count, tensors.len() as u64);
        prop_assert_eq!(&read.kv, &metadata);

        let layout = GgufLayout::read(bytes.as_slice(), bytes.len() as u64).expect("layout");
        prop_assert_eq!(&layout.metadata, &read);
        prop_assert_eq!(layout.data_start % 32, 0);
        prop_assert_eq!(layout.tensors.len(), tensors.len());
        for ((info, spec), size) in layout.tensors.iter().zip(&tensors).zip(&sizes) {
            prop_assert_eq!(&info.name, &spec.name);
            prop_assert_eq!(&info.dims, &spec.dims);
            prop_assert_eq!(info.ggml_type, spec.ggml_type);
            prop_assert_eq!(info.size, *size);
            prop_assert_eq!(info.offset % 32, 0);
            let start = (layout.data_start + info.offset) as usize;
            let index = layout.tensors.iter().position(|t| t.name == info.name).unwrap_or(0);
            prop_assert!(bytes[start..start + *size as usize].iter().all(|&b| b == index as u8));
        }
    }

    /// Any single-byte edit or cut of a written file is read or refused
    /// with a located error, never a panic or an unbounded allocation.
    #[test]
    fn damaged_files_are_refused_with_an_offset(
        metadata in metadata(),
        tensors in tensors(),
        edit in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        cut in any::<bool>(),
    ) {
        let mut writer = GgufWriter::new(Vec::new(), &metadata, &tensors).expect("header");
        for tensor in &tensors {
            let size = tensor.ggml_type.data_size(&tensor.dims).expect("size") as usize;
            writer.write_tensor(&vec![0; size]).expect("data");
        }
        let mut bytes = writer.finish().expect("finish");
        let at = edit.index(bytes.len());
        if cut {
            bytes.truncate(at);
        } else {
            bytes[at] = byte;
        }
        if let Err(error) = GgufLayout::read(bytes.as_slice(), bytes.len() as u64) {
            prop_assert!(error.offset().is_some(), "unlocated: {}", error);
        }
    }
}
